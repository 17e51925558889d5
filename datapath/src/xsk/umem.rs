//! The UMEM: one mmap'd area cut into equal frames, and the user's list of free frames.

use std::io;
use std::ptr::NonNull;

/// Frame sizes the kernel accepts for an aligned UMEM.
pub const FRAME_SIZES: [u32; 2] = [2048, 4096];

/// How to lay out a UMEM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UmemConfig {
    /// Octets per frame: 2048 or 4096.
    pub frame_size: u32,
    /// Number of frames.
    pub frames: u32,
    /// Octets the kernel leaves free at the start of each frame (XDP_UMEM_REG headroom).
    pub headroom: u32,
    /// Back the area with huge pages (fails if none are reserved).
    pub huge_pages: bool,
}

impl Default for UmemConfig {
    fn default() -> Self {
        Self {
            frame_size: 2048,
            frames: 4096,
            headroom: 0,
            huge_pages: false,
        }
    }
}

impl UmemConfig {
    /// Octets of memory the UMEM takes (counted against RLIMIT_MEMLOCK when registered).
    pub fn bytes(&self) -> usize {
        self.frame_size as usize * self.frames as usize
    }

    fn check(&self) -> io::Result<()> {
        let bad = |m: String| Err(io::Error::new(io::ErrorKind::InvalidInput, m));
        if !FRAME_SIZES.contains(&self.frame_size) {
            return bad(format!(
                "UMEM frame size {} (2048 or 4096)",
                self.frame_size
            ));
        }
        if self.frames == 0 || !self.frames.is_power_of_two() {
            return bad(format!("UMEM frames {} (a power of two)", self.frames));
        }
        if self.headroom >= self.frame_size / 2 {
            return bad(format!("UMEM headroom {} too large", self.headroom));
        }
        Ok(())
    }
}

/// The memory of a UMEM and its free frames.
pub struct Umem {
    area: NonNull<u8>,
    len: usize,
    cfg: UmemConfig,
    free: Vec<u64>,
}

// SAFETY: the area is plain memory owned by this value; the kernel accesses frames only while
// they are in its rings, which the owner of the Umem controls.
unsafe impl Send for Umem {}

impl Umem {
    /// Maps the area; every frame starts free.
    pub fn new(cfg: UmemConfig) -> io::Result<Self> {
        cfg.check()?;
        let len = cfg.bytes();
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
        if cfg.huge_pages {
            flags |= libc::MAP_HUGETLB;
        }
        // SAFETY: an anonymous private mapping; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(
                e.kind(),
                format!(
                    "cannot map a {len}-octet UMEM{}: {e}",
                    if cfg.huge_pages {
                        " on huge pages (are any reserved?)"
                    } else {
                        ""
                    }
                ),
            ));
        }
        let free = (0..u64::from(cfg.frames))
            .rev()
            .map(|i| i * u64::from(cfg.frame_size))
            .collect();
        Ok(Self {
            area: NonNull::new(p.cast()).expect("mmap returned non-null"),
            len,
            cfg,
            free,
        })
    }

    /// The layout.
    pub fn config(&self) -> &UmemConfig {
        &self.cfg
    }

    /// Start and length of the area, for XDP_UMEM_REG.
    pub fn area(&self) -> (*mut u8, usize) {
        (self.area.as_ptr(), self.len)
    }

    /// Takes a free frame (its address in the UMEM).
    pub fn alloc(&mut self) -> Option<u64> {
        self.free.pop()
    }

    /// Returns a frame to the free list.
    pub fn release(&mut self, addr: u64) {
        debug_assert!(addr < self.len as u64);
        self.free.push(self.frame_start(addr));
    }

    /// Free frames.
    pub fn free_frames(&self) -> usize {
        self.free.len()
    }

    /// The start of the frame that holds `addr` (descriptors may point past the headroom).
    pub fn frame_start(&self, addr: u64) -> u64 {
        addr & !(u64::from(self.cfg.frame_size) - 1)
    }

    /// The octets `[addr, addr + len)`, which must lie inside one frame the caller owns.
    /// `None` if they do not (a descriptor the kernel should never give).
    pub fn bytes(&self, addr: u64, len: u32) -> Option<&[u8]> {
        let (start, end) = self.span(addr, len)?;
        // SAFETY: `start..end` lies inside the mapped area (checked by `span`), and the frame is
        // the caller's: the kernel does not write it while it is out of the kernel's rings.
        Some(unsafe { std::slice::from_raw_parts(self.area.as_ptr().add(start), end - start) })
    }

    /// The writable octets of the frame at `addr` from `addr` to the frame's end.
    pub fn frame_mut(&mut self, addr: u64) -> Option<&mut [u8]> {
        let end_of_frame = self.frame_start(addr) + u64::from(self.cfg.frame_size);
        let len = u32::try_from(end_of_frame.checked_sub(addr)?).ok()?;
        let (start, end) = self.span(addr, len)?;
        // SAFETY: as in `bytes`, and `&mut self` makes the borrow unique.
        Some(unsafe { std::slice::from_raw_parts_mut(self.area.as_ptr().add(start), end - start) })
    }

    fn span(&self, addr: u64, len: u32) -> Option<(usize, usize)> {
        let start = usize::try_from(addr).ok()?;
        let end = start.checked_add(len as usize)?;
        let frame_end = self.frame_start(addr) as usize + self.cfg.frame_size as usize;
        (end <= self.len && end <= frame_end).then_some((start, end))
    }
}

impl Drop for Umem {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the area mapped in `new`; the sockets using it were dropped
        // before (they borrow it for their life, see `XskSocket`).
        unsafe { libc::munmap(self.area.as_ptr().cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_handed_out_once_and_bounds_hold() {
        let mut u = Umem::new(UmemConfig {
            frames: 8,
            ..Default::default()
        })
        .unwrap();
        let mut got: Vec<u64> = std::iter::from_fn(|| u.alloc()).collect();
        assert_eq!(got.len(), 8);
        got.sort();
        got.dedup();
        assert_eq!(got, (0..8).map(|i| i * 2048).collect::<Vec<_>>());
        let f = u.frame_mut(2048 + 100).unwrap();
        assert_eq!(f.len(), 2048 - 100);
        f[0] = 7;
        assert_eq!(u.bytes(2148, 1).unwrap(), &[7]);
        assert!(u.bytes(2048 + 2000, 100).is_none(), "crosses a frame end");
        assert!(u.bytes(8 * 2048, 1).is_none(), "past the area");
        u.release(2148);
        assert_eq!(u.alloc(), Some(2048), "a frame returns by its start");
    }

    #[test]
    fn bad_layouts_are_refused() {
        for cfg in [
            UmemConfig {
                frame_size: 1000,
                ..Default::default()
            },
            UmemConfig {
                frames: 3,
                ..Default::default()
            },
            UmemConfig {
                headroom: 1024,
                ..Default::default()
            },
        ] {
            assert!(Umem::new(cfg).is_err(), "{cfg:?}");
        }
    }
}
