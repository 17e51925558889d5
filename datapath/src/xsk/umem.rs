//! The UMEM: one mmap'd area cut into equal frames, and who holds each frame.
//!
//! A frame is, at any time, the user's (free, or being read or written by this process) or
//! lent to the kernel (in the fill ring or receiving into it; in the TX ring or being sent).
//! [`Umem`] records which for every frame, and hands frames out as `Frame` tokens: a token
//! is neither `Copy` nor `Clone`, only `Umem::alloc` and `Umem::take_back` make one, and
//! `Umem::release` and `Umem::lend` consume it. So the frame bytes that safe code can
//! reach (through a token) are never the kernel's at the same time. (A token of another
//! UMEM could name a free frame here and be released into its free list twice; every
//! access and every `lend` checks the record again, so that stays sound, and tokens never
//! leave the socket whose UMEM made them.) A descriptor the kernel returns is checked
//! against the record before it
//! becomes a token again: an address that names no frame lent for that purpose is refused.
//!
//! The area lives as long as its last holder ([`Umem`], and in tests the emulated kernel);
//! the socket that registers it owns its `Umem` (see [`crate::xsk::socket::XskSocket`]).

use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

/// Frame sizes the kernel accepts for an aligned UMEM.
pub const FRAME_SIZES: [u32; 2] = [2048, 4096];

/// The headroom the kernel keeps in front of received data, besides the UMEM's own
/// (`XDP_PACKET_HEADROOM`).
pub(crate) const XDP_PACKET_HEADROOM: u32 = 256;

/// The least room a frame must leave for a packet: a 1,500-octet IP packet (the MTU
/// Ethernet paths have) behind an Ethernet header with one VLAN tag.
const MIN_FRAME_ROOM: u32 = 1500 + 18;

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

/// Frames of a UMEM by default: 16,384 of 2 KiB (32 MiB). An engine's RX and fill rings
/// have one entry per frame, so that many packets can wait for a worker that is behind,
/// about what a kernel UDP socket's 8 MiB receive buffer holds of small packets: with 2,048
/// RX entries a closed loop of 10,000 connections lost 10% of its packets to the server at
/// the full ring, and each loss cost a retransmission and more acknowledgements.
pub const DEFAULT_FRAMES: u32 = 16384;

impl Default for UmemConfig {
    fn default() -> Self {
        Self {
            frame_size: 2048,
            frames: DEFAULT_FRAMES,
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

    /// Refuses a layout [`Umem::new`] cannot make (it checks the same first).
    pub fn check(&self) -> io::Result<()> {
        let bad = |m: String| Err(io::Error::new(io::ErrorKind::InvalidInput, m));
        if !FRAME_SIZES.contains(&self.frame_size) {
            return bad(format!(
                "UMEM frame size {} (2048 or 4096)",
                self.frame_size
            ));
        }
        if self.frames == 0 || !self.frames.is_power_of_two() || self.frames > 1 << 24 {
            return bad(format!(
                "UMEM frames {} (a power of two, at most 2^24)",
                self.frames
            ));
        }
        // The kernel puts received data after the headroom and its own XDP headroom: what
        // is left must hold the largest frame a QUIC peer may send us whole.
        let room = self
            .frame_size
            .saturating_sub(self.headroom)
            .saturating_sub(XDP_PACKET_HEADROOM);
        if room < MIN_FRAME_ROOM {
            return bad(format!(
                "UMEM headroom {} too large: {room} octets of a {}-octet frame are left for \
                 a packet, under the {MIN_FRAME_ROOM} a 1,500-octet IP packet with Ethernet \
                 and VLAN headers needs",
                self.headroom, self.frame_size
            ));
        }
        Ok(())
    }
}

/// The mapped memory of a UMEM; unmapped when its last holder drops it.
#[derive(Debug)]
pub(crate) struct Area {
    ptr: NonNull<u8>,
    /// The octets of the frames.
    len: usize,
    /// The octets mapped: `len` rounded up to the huge page size on huge pages (munmap of a
    /// hugetlb mapping needs whole pages, and fails otherwise, leaking them).
    mapped: usize,
}

// SAFETY: `Area` is an address range; every access to its bytes goes through `Umem` (whose
// frame record decides who may touch which frame) or the emulated kernel of the tests, which
// touches only frames lent to it.
unsafe impl Send for Area {}
// SAFETY: as above; shared references give out no bytes by themselves.
unsafe impl Sync for Area {}

impl Area {
    /// Start and length.
    pub(crate) fn raw(&self) -> (*mut u8, usize) {
        (self.ptr.as_ptr(), self.len)
    }
}

impl Drop for Area {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range mapped in `Umem::new`; no `Umem` or emulated
        // kernel refers to it any more (this is the last `Arc`). A kernel socket that had it
        // registered may not have finished releasing it (the kernel defers a UMEM's teardown
        // to a work queue), but it holds its own pins on the pages (XDP_UMEM_REG pins them
        // and the kernel reaches them through its own mapping), never this address range.
        let rc = unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.mapped) };
        debug_assert_eq!(rc, 0, "munmap of the UMEM: {}", io::Error::last_os_error());
    }
}

/// The default huge page size (`Hugepagesize` of /proc/meminfo): what `MAP_HUGETLB` maps
/// without a size flag.
fn huge_page_size() -> io::Result<usize> {
    let meminfo = std::fs::read_to_string("/proc/meminfo")?;
    meminfo
        .lines()
        .find_map(|l| l.strip_prefix("Hugepagesize:"))
        .and_then(|v| v.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<usize>().ok())
        .filter(|kb| *kb > 0)
        .map(|kb| kb * 1024)
        .ok_or_else(|| io::Error::other("no Hugepagesize in /proc/meminfo"))
}

/// Who holds a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Holder {
    /// This process: on the free list, or behind a [`Frame`] token.
    User,
    /// The kernel, to receive into (fill ring, then RX ring).
    KernelRx,
    /// The kernel, to send (TX ring, then completion ring).
    KernelTx,
}

/// A frame of the UMEM that this process holds. Only [`Umem`] makes and takes tokens.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Frame(u32);

impl Frame {
    /// The frame's index in its UMEM.
    #[cfg(test)]
    pub(crate) fn index(&self) -> u32 {
        self.0
    }
}

/// The memory of a UMEM and the record of who holds each frame.
#[derive(Debug)]
pub struct Umem {
    area: Arc<Area>,
    cfg: UmemConfig,
    free: Vec<u32>,
    holder: Vec<Holder>,
    lent_rx: u32,
    lent_tx: u32,
}

impl Umem {
    /// Maps the area (touching every page, so that it is allocated now, on the calling
    /// thread's NUMA node); every frame starts free.
    pub fn new(cfg: UmemConfig) -> io::Result<Self> {
        cfg.check()?;
        let len = cfg.bytes();
        let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE;
        let mut mapped = len;
        if cfg.huge_pages {
            flags |= libc::MAP_HUGETLB;
            mapped = len.next_multiple_of(huge_page_size()?);
        }
        // SAFETY: an anonymous private mapping; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapped,
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
        let area = Arc::new(Area {
            ptr: NonNull::new(p.cast()).expect("mmap returned non-null"),
            len,
            mapped,
        });
        // Not inherited by a child (`fork`, as `Command` does before `exec`): on kernels
        // before 5.9, a write by this process after a fork copied its pages away from those
        // the kernel pinned, and the frames then read and sent stale bytes.
        // SAFETY: advice on the range mapped above; the result is checked.
        if unsafe { libc::madvise(p, mapped, libc::MADV_DONTFORK) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::other(format!(
                "madvise(MADV_DONTFORK) of the UMEM: {e}"
            )));
        }
        Ok(Self {
            area,
            cfg,
            free: (0..cfg.frames).rev().collect(),
            holder: vec![Holder::User; cfg.frames as usize],
            lent_rx: 0,
            lent_tx: 0,
        })
    }

    /// The layout.
    pub fn config(&self) -> &UmemConfig {
        &self.cfg
    }

    /// The area, for XDP_UMEM_REG and the emulated kernel.
    pub(crate) fn area(&self) -> &Arc<Area> {
        &self.area
    }

    /// Frames on the free list.
    pub fn free_frames(&self) -> usize {
        self.free.len()
    }

    /// Frames lent to the kernel to receive into.
    pub fn lent_rx(&self) -> u32 {
        self.lent_rx
    }

    /// Frames lent to the kernel to send.
    pub fn lent_tx(&self) -> u32 {
        self.lent_tx
    }

    /// Takes a free frame.
    pub(crate) fn alloc(&mut self) -> Option<Frame> {
        self.free.pop().map(Frame)
    }

    /// Puts a frame back on the free list.
    pub(crate) fn release(&mut self, frame: Frame) {
        // A real check (one octet): a token of another UMEM whose index this one lent to the
        // kernel would otherwise put a kernel-held frame on the free list.
        assert_eq!(
            self.holder[frame.0 as usize],
            Holder::User,
            "a frame token of another UMEM"
        );
        self.free.push(frame.0);
    }

    /// The address of `frame` in the UMEM (plus `offset`), for a descriptor.
    pub(crate) fn addr(&self, frame: &Frame, offset: u32) -> u64 {
        u64::from(frame.0) * u64::from(self.cfg.frame_size) + u64::from(offset)
    }

    /// Records that `frame` goes to the kernel for `to` ([`Holder::KernelRx`] or
    /// [`Holder::KernelTx`]) and returns its address; the token is gone. Call it only when
    /// the descriptor will be pushed (the ring has room).
    pub(crate) fn lend(&mut self, frame: Frame, to: Holder, offset: u32) -> u64 {
        debug_assert_ne!(to, Holder::User);
        // As in `release`: a token of another UMEM must not lend a frame this one holds
        // elsewhere (lent, or on its free list and soon lent again).
        assert_eq!(
            self.holder[frame.0 as usize],
            Holder::User,
            "a frame token of another UMEM"
        );
        let addr = self.addr(&frame, offset);
        self.holder[frame.0 as usize] = to;
        match to {
            Holder::KernelRx => self.lent_rx += 1,
            Holder::KernelTx => self.lent_tx += 1,
            Holder::User => {}
        }
        addr
    }

    /// The token of the frame that holds `addr`, if the kernel had it `from` (a descriptor
    /// of the RX ring: [`Holder::KernelRx`]; of the completion ring: [`Holder::KernelTx`]).
    /// `None` for an address that names no frame the kernel had for that purpose: such a
    /// descriptor must be ignored (the record stays as it was).
    pub(crate) fn take_back(&mut self, addr: u64, from: Holder) -> Option<Frame> {
        let index = addr / u64::from(self.cfg.frame_size);
        let i = usize::try_from(index).ok()?;
        if self.holder.get(i) != Some(&from) {
            return None;
        }
        self.holder[i] = Holder::User;
        match from {
            Holder::KernelRx => self.lent_rx -= 1,
            Holder::KernelTx => self.lent_tx -= 1,
            Holder::User => {}
        }
        Some(Frame(index as u32))
    }

    /// The octets `[offset, offset + len)` of `frame`; `None` if they leave the frame.
    pub(crate) fn bytes(&self, frame: &Frame, offset: u32, len: u32) -> Option<&[u8]> {
        let end = offset.checked_add(len)?;
        if end > self.cfg.frame_size {
            return None;
        }
        self.check_held(frame);
        let start = self.addr(frame, offset) as usize;
        // SAFETY: `start..start + len` lies inside the area (`check_held`: frame index <
        // frames; end within the frame, checked above), and this process holds the frame
        // (`check_held`), so the kernel does not write it. The slice borrows `self`, so no
        // `bytes_mut` (which needs `&mut self`) runs while it lives.
        Some(unsafe { std::slice::from_raw_parts(self.area.ptr.as_ptr().add(start), len as usize) })
    }

    /// The writable octets of `frame` from `offset` to its end.
    pub(crate) fn bytes_mut(&mut self, frame: &mut Frame, offset: u32) -> &mut [u8] {
        self.check_held(frame);
        let offset = offset.min(self.cfg.frame_size);
        let start = self.addr(frame, offset) as usize;
        let len = (self.cfg.frame_size - offset) as usize;
        // SAFETY: inside the area and held by this process, as in `bytes`; the slice
        // borrows `self` mutably, so it is the only reference into the area while it lives.
        unsafe { std::slice::from_raw_parts_mut(self.area.ptr.as_ptr().add(start), len) }
    }

    /// Panics unless this UMEM has `frame` and this process holds it: a token of another
    /// UMEM must not reach into this one's area, or into a frame its kernel holds.
    fn check_held(&self, frame: &Frame) {
        assert!(
            self.holder.get(frame.0 as usize) == Some(&Holder::User),
            "frame {} is not one this UMEM lent to its user",
            frame.0
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A UMEM on huge pages smaller than one huge page maps (and unmaps) whole pages: before,
    /// its munmap failed and the reserved page stayed taken. Reserves one huge page for
    /// the test (root; put back after).
    #[test]
    fn a_small_umem_on_huge_pages_gives_its_page_back() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            assert!(std::env::var_os("CI").is_none(), "needs root and CI is set");
            eprintln!("skipped: needs root (to reserve a huge page)");
            return;
        }
        let page = huge_page_size().unwrap();
        assert!(page >= 2 << 20 && page.is_power_of_two(), "{page}");
        let free = || -> usize {
            let m = std::fs::read_to_string("/proc/meminfo").unwrap();
            m.lines()
                .find_map(|l| l.strip_prefix("HugePages_Free:"))
                .unwrap()
                .trim()
                .parse()
                .unwrap()
        };
        const NR: &str = "/proc/sys/vm/nr_hugepages";
        struct Restore(String);
        impl Drop for Restore {
            fn drop(&mut self) {
                let _ = std::fs::write(NR, &self.0);
            }
        }
        let before = std::fs::read_to_string(NR).unwrap();
        let _restore = Restore(before.clone());
        let n: usize = before.trim().parse().unwrap();
        // Compacting first makes a free 2 MiB extent likely even on a fragmented host.
        let _ = std::fs::write("/proc/sys/vm/compact_memory", "1");
        std::fs::write(NR, (n + 1).to_string()).unwrap();
        let free_before = free();
        if free_before == 0 {
            // Not a privilege but memory: still, CI must not pass without the test.
            assert!(
                std::env::var_os("CI").is_none(),
                "the kernel could not reserve a huge page (CI is set: not skipped)"
            );
            eprintln!("skipped: the kernel could not reserve a huge page");
            return;
        }
        let u = Umem::new(UmemConfig {
            frames: 512,
            huge_pages: true,
            ..Default::default()
        })
        .unwrap();
        assert_eq!(u.area.len, 512 * 2048);
        assert_eq!(u.area.mapped, page);
        assert_eq!(free(), free_before - 1);
        drop(u);
        assert_eq!(free(), free_before, "the huge page was given back");
    }

    #[test]
    fn frames_are_handed_out_once_and_bounds_hold() {
        let mut u = Umem::new(UmemConfig {
            frames: 8,
            ..Default::default()
        })
        .unwrap();
        let mut got: Vec<Frame> = std::iter::from_fn(|| u.alloc()).collect();
        assert_eq!(got.len(), 8);
        let mut idx: Vec<u32> = got.iter().map(Frame::index).collect();
        idx.sort();
        idx.dedup();
        assert_eq!(idx, (0..8).collect::<Vec<_>>());
        let mut f = got.pop().unwrap();
        let buf = u.bytes_mut(&mut f, 100);
        assert_eq!(buf.len(), 2048 - 100);
        buf[0] = 7;
        assert_eq!(u.bytes(&f, 100, 1).unwrap(), &[7]);
        assert!(u.bytes(&f, 2000, 100).is_none(), "crosses the frame end");
        u.release(f);
        assert_eq!(u.free_frames(), 1);
    }

    #[test]
    fn the_kernel_gives_back_only_what_it_was_lent() {
        let mut u = Umem::new(UmemConfig {
            frames: 4,
            ..Default::default()
        })
        .unwrap();
        let a = u.alloc().unwrap();
        let b = u.alloc().unwrap();
        let addr_a = u.lend(a, Holder::KernelRx, 0);
        let addr_b = u.lend(b, Holder::KernelTx, 0);
        assert_eq!((u.lent_rx(), u.lent_tx()), (1, 1));
        assert!(
            u.take_back(addr_a, Holder::KernelTx).is_none(),
            "lent for RX"
        );
        assert!(
            u.take_back(99 * 2048, Holder::KernelRx).is_none(),
            "past the area"
        );
        let free = u.free_frames() as u64;
        assert!(
            u.take_back(free * 2048, Holder::KernelRx).is_none(),
            "never lent"
        );
        // An RX descriptor points past the headroom: its frame comes back by its start.
        let a = u.take_back(addr_a + 256, Holder::KernelRx).unwrap();
        assert!(
            u.take_back(addr_a, Holder::KernelRx).is_none(),
            "returned twice"
        );
        let b = u.take_back(addr_b, Holder::KernelTx).unwrap();
        assert_eq!((u.lent_rx(), u.lent_tx()), (0, 0));
        u.release(a);
        u.release(b);
        assert_eq!(u.free_frames(), 4);
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
            // 2048 - 300 - 256 = 1492 octets: too few for a 1,500-octet packet.
            UmemConfig {
                headroom: 300,
                ..Default::default()
            },
        ] {
            assert!(Umem::new(cfg).is_err(), "{cfg:?}");
        }
    }

    #[test]
    fn layouts_with_room_for_a_full_packet_are_taken() {
        for cfg in [
            UmemConfig::default(),
            UmemConfig {
                headroom: 2048 - 256 - 1518,
                ..Default::default()
            },
            UmemConfig {
                frame_size: 4096,
                headroom: 1024,
                ..Default::default()
            },
        ] {
            assert!(Umem::new(cfg).is_ok(), "{cfg:?}");
        }
    }
}
