//! An emulated kernel side for AF_XDP sockets, so that the socket and the backend above it
//! are tested without privileges, a NIC or a veth: the test plays the kernel over ring memory
//! of its own and the socket's UMEM, following the same index protocol as the kernel.
//!
//! ```text
//! let (sock, mut kernel) = emulated::socket(&cfg, umem, prefill)?;
//! kernel.deliver(&frame)?;          // a packet arrives: fill ring frame → RX ring
//! let sent = kernel.transmit(64);   // the "NIC" sends: TX ring → octets → completion ring
//! ```
//!
//! Like the kernel, it checks the descriptors the user side gives it (a frame address past
//! the UMEM, a length past the frame) and counts what it refuses.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::Arc;

use super::ring::{ConsRing, ProdRing, TestRing};
use super::socket::{XskConfig, XskSocket};
use super::umem::{Area, Umem};
use super::Desc;

/// The memory of the four rings.
pub(crate) struct Rings {
    pub fill: TestRing<u64>,
    pub rx: TestRing<Desc>,
    pub tx: TestRing<Desc>,
    pub comp: TestRing<u64>,
}

/// Why [`EmulatedKernel::deliver`] dropped a packet (the kernel would count it too).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// No frame in the fill ring (`rx_fill_ring_empty_descs`).
    FillRingEmpty,
    /// The RX ring is full (`rx_ring_full`).
    RxRingFull,
    /// The packet does not fit a frame.
    TooLarge,
}

/// The kernel's side of one emulated socket.
pub struct EmulatedKernel {
    fill: ConsRing<u64>,
    rx: ProdRing<Desc>,
    tx: ConsRing<Desc>,
    comp: ProdRing<u64>,
    area: Arc<Area>,
    frame_size: u32,
    headroom: u32,
    /// Sent frames whose completion was not pushed yet (the completion ring was full, or
    /// completions are held).
    pending: Vec<u64>,
    hold_completions: bool,
    /// Frames taken from the fill ring, not yet used for a packet.
    spare: Vec<u64>,
    /// Descriptors the user side gave that the kernel would refuse.
    pub invalid_descs: u64,
    /// Written to wake a poller of the socket's descriptor.
    event: OwnedFd,
    rings: Arc<Rings>,
}

// SAFETY: the ring sides and the area are used only through `&mut self`; the socket on the
// other side shares them through the rings' index protocol only.
unsafe impl Send for EmulatedKernel {}

/// A socket over emulated rings of `cfg`'s sizes, and the kernel side that the test plays.
/// `prefill` frames are lent to the fill ring at once, as [`XskSocket::open`] does.
pub fn socket(
    cfg: &XskConfig,
    umem: Umem,
    prefill: u32,
) -> io::Result<(XskSocket, EmulatedKernel)> {
    let rings = Arc::new(Rings {
        fill: TestRing::new(cfg.fill_size, 0),
        rx: TestRing::new(cfg.rx_size, 0),
        tx: TestRing::new(cfg.tx_size, 0),
        comp: TestRing::new(cfg.comp_size, 0),
    });
    // SAFETY: eventfd(2) takes no pointers; the result is checked.
    let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor nothing else owns.
    let event = unsafe { OwnedFd::from_raw_fd(raw) };
    let area = umem.area().clone();
    let frame_size = umem.config().frame_size;
    let headroom = umem.config().headroom;
    let mut sock = XskSocket::emulated(cfg, umem, rings.clone(), event.try_clone()?)?;
    sock.refill(prefill);
    // SAFETY: the ring memory lives in `rings`, which the kernel side keeps; it is the only
    // kernel side of each ring.
    let (fill, rx, tx, comp) = unsafe {
        (
            ConsRing::new(rings.fill.parts()),
            ProdRing::new(rings.rx.parts()),
            ConsRing::new(rings.tx.parts()),
            ProdRing::new(rings.comp.parts()),
        )
    };
    Ok((
        sock,
        EmulatedKernel {
            fill,
            rx,
            tx,
            comp,
            area,
            frame_size,
            headroom,
            pending: Vec::new(),
            hold_completions: false,
            spare: Vec::new(),
            invalid_descs: 0,
            event,
            rings,
        },
    ))
}

impl EmulatedKernel {
    /// The frame-sized window of the UMEM at `addr`'s frame from `addr` on, if `addr` lies in
    /// the area.
    fn frame_at(&mut self, addr: u64) -> Option<&mut [u8]> {
        let (ptr, len) = self.area.raw();
        let start = usize::try_from(addr).ok()?;
        let frame_end = (start / self.frame_size as usize + 1) * self.frame_size as usize;
        if frame_end > len {
            return None;
        }
        // SAFETY: `start..frame_end` lies inside the area. The frame was lent to the kernel
        // (the user side pushed its address on the fill or TX ring and keeps no reference to
        // it until the kernel gives it back through the RX or completion ring), so this is
        // the only reference to those octets while it lives; `&mut self` keeps it unique on
        // this side.
        Some(unsafe { std::slice::from_raw_parts_mut(ptr.add(start), frame_end - start) })
    }

    /// A packet arrives: written into a frame from the fill ring after the UMEM headroom and
    /// the kernel's own (`XDP_PACKET_HEADROOM`, 256 octets), as the kernel writes it, and its
    /// descriptor pushed on the RX ring, published at once.
    pub fn deliver(&mut self, packet: &[u8]) -> Result<(), Dropped> {
        if self.rx.free(1) == 0 {
            return Err(Dropped::RxRingFull);
        }
        let addr = match self.spare.pop() {
            Some(a) => a,
            None => {
                let a = self.fill.pop();
                self.fill.release();
                a.ok_or(Dropped::FillRingEmpty)?
            }
        };
        let headroom = self.headroom as usize + super::umem::XDP_PACKET_HEADROOM as usize;
        let Some(frame) = self.frame_at(addr) else {
            self.invalid_descs += 1;
            return Err(Dropped::FillRingEmpty);
        };
        if headroom + packet.len() > frame.len() {
            self.spare.push(addr);
            return Err(Dropped::TooLarge);
        }
        frame[headroom..headroom + packet.len()].copy_from_slice(packet);
        self.rx.push(Desc {
            addr: addr + headroom as u64,
            len: packet.len() as u32,
            options: 0,
        });
        self.rx.submit();
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 octets from a live buffer to our eventfd.
        let _ = unsafe { libc::write(self.event.as_raw_fd(), one.as_ptr().cast(), 8) };
        Ok(())
    }

    /// The "NIC" sends up to `max` frames from the TX ring: their octets, in order. Their
    /// addresses go to the completion ring (unless completions are held, or it is full: then
    /// they wait for [`EmulatedKernel::complete`]). An invalid descriptor is counted and
    /// skipped, never completed, as the kernel does (its frame stays with the kernel).
    pub fn transmit(&mut self, max: usize) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(d) = self.tx.pop() else { break };
            let len = d.len as usize;
            match self.frame_at(d.addr) {
                Some(frame) if len <= frame.len() => out.push(frame[..len].to_vec()),
                _ => {
                    self.invalid_descs += 1;
                    continue;
                }
            }
            self.pending.push(d.addr);
        }
        self.tx.release();
        if !self.hold_completions {
            self.complete(usize::MAX);
        }
        out
    }

    /// Holds completions back (`true`), as a slow NIC would, or lets them flow again.
    pub fn hold_completions(&mut self, hold: bool) {
        self.hold_completions = hold;
    }

    /// Pushes up to `max` held completions; returns how many.
    pub fn complete(&mut self, max: usize) -> usize {
        let mut n = 0;
        while n < max && !self.pending.is_empty() {
            if !self.comp.push(self.pending[0]) {
                break;
            }
            self.pending.remove(0);
            n += 1;
        }
        if n > 0 {
            self.comp.submit();
        }
        n
    }

    /// Frames the kernel holds for receiving: in the fill ring or taken from it.
    pub fn rx_frames(&mut self) -> usize {
        self.rings.fill.queued() + self.spare.len()
    }

    /// Descriptors waiting in the RX ring for the user.
    pub fn rx_queued(&self) -> usize {
        self.rings.rx.queued()
    }

    /// Frames published on the TX ring, sent, or completed, that the user has not taken
    /// back yet.
    pub fn tx_frames(&mut self) -> usize {
        self.rings.tx.queued() + self.pending.len() + self.rings.comp.queued()
    }

    /// Pushes `desc` on the RX ring as it is, as a faulty kernel would (to test that the
    /// user side refuses what it did not lend).
    ///
    /// # Safety
    ///
    /// `desc` must not name a frame lent to this emulated kernel's side in any way: in the
    /// fill ring, taken for transmit, or waiting on the RX or completion ring already (a
    /// second descriptor of a frame on the RX ring would be taken back after the first was
    /// freed and lent again). The user side would accept it as received and hand it out
    /// while this kernel may still write into it (`deliver`), two writers of one frame.
    /// Frames the user side holds, and addresses outside the UMEM, are what such a test
    /// pushes: those it refuses.
    pub unsafe fn push_raw_rx(&mut self, desc: Desc) -> bool {
        let pushed = self.rx.push(desc);
        self.rx.submit();
        pushed
    }

    /// Sets or clears XDP_RING_NEED_WAKEUP on the fill and TX rings.
    pub fn set_need_wakeup(&self, on: bool) {
        self.rings.fill.set_need_wakeup(on);
        self.rings.tx.set_need_wakeup(on);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::xsk::umem::UmemConfig;

    /// The emulated kernel leaves the kernel's 256 octets in front of a packet, as the real
    /// one does: the largest packet a frame takes is its size less both headrooms, and the
    /// socket reads it at the descriptor's address, whatever the offset.
    #[test]
    fn packets_land_behind_both_headrooms() {
        let umem = UmemConfig {
            frames: 16,
            headroom: 64,
            ..Default::default()
        };
        let room = (umem.frame_size - umem.headroom - 256) as usize;
        let (mut sock, mut k) = socket(&XskConfig::new(1, 0), Umem::new(umem).unwrap(), 8).unwrap();
        let packet: Vec<u8> = (0..room).map(|i| i as u8).collect();
        k.deliver(&packet).unwrap();
        assert_eq!(
            k.deliver(&vec![0u8; room + 1]),
            Err(Dropped::TooLarge),
            "one octet more than the room"
        );
        let mut got = Vec::new();
        assert_eq!(sock.recv(8, |b| got.push(b.to_vec())), 1);
        assert_eq!(got, [packet]);
    }
}
