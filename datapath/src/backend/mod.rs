//! The I/O port of a worker: one small trait, three implementations.
//!
//! * [`udp::UdpBackend`]: a kernel UDP socket (SO_REUSEPORT, one per worker), quinn-udp for
//!   GSO/GRO/ECN/pktinfo;
//! * `mem::MemBackend` (feature `testing`): an in-memory network with a virtual clock, for
//!   deterministic tests;
//! * [`xsk::XskBackend`]: an AF_XDP socket per NIC queue, its own UMEM and rings.
//!
//! The worker calls, per turn: [`Backend::recv`] until a batch comes back with room (at most
//! 8 batches, so that timers and transmits get their turn under load), [`Backend::send`] for
//! each datagram (or GSO batch) it produces, [`Backend::flush`] once at the end, and, when it
//! has nothing to do, [`Backend::wait`].

pub mod local_addrs;
#[cfg(any(test, feature = "testing"))]
pub mod mem;
pub mod rx;
pub mod sockbuf;
pub mod spin;
pub mod udp;
pub mod xsk;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

pub use quinn_proto::EcnCodepoint;
pub use rx::{Datagram, RxBatch};

use crate::packet::frame::L2;

use crate::waker::Waker;

/// One outgoing UDP datagram, or a GSO batch of `contents.len() / segment_size` datagrams of
/// `segment_size` octets each (the last may be shorter), all to `destination`.
#[derive(Debug, Clone, Copy)]
pub struct Transmit<'a> {
    pub destination: SocketAddr,
    pub src_ip: Option<IpAddr>,
    pub ecn: Option<EcnCodepoint>,
    pub segment_size: Option<usize>,
    pub contents: &'a [u8],
    /// The link layer of the reply, for a backend that builds frames itself (AF_XDP with
    /// transmits on its ring): the one the connection's peer reached us with, as the
    /// connection knows it (set when it was accepted, changed only by a packet that moved the
    /// connection to a new address, which quinn-proto authenticated first), or the one of
    /// the datagram a stateless answer replies to. `None` for connections this host opened
    /// and over kernel sockets, which resolve next hops themselves.
    pub link: Option<L2>,
}

impl Transmit<'_> {
    /// The datagrams of this transmit, one slice each.
    pub fn segments(&self) -> std::slice::Chunks<'_, u8> {
        let seg = self.segment_size.unwrap_or(self.contents.len()).max(1);
        self.contents.chunks(seg)
    }
}

/// Why a [`Backend::send`] did not take a transmit.
#[derive(Debug)]
pub enum SendError {
    /// No room now (socket buffer or TX ring full): retry after the backend is writable. The
    /// worker keeps the transmit and waits with `want_write`.
    Blocked,
    /// Failed for good; the datagram is dropped (QUIC's loss recovery resends its frames).
    Failed(io::Error),
}

/// What a runtime watches to wake a worker ([`Backend::readiness`]). Both descriptors live
/// as long as the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Readiness {
    /// Readable when a datagram may be received.
    pub read: std::os::fd::RawFd,
    /// Writable when a send the backend pushed back may go on (may equal `read`).
    pub write: std::os::fd::RawFd,
}

/// The I/O port of one worker.
pub trait Backend {
    /// The most datagrams one [`Transmit`] may carry (1 where there is no segmentation offload).
    fn max_segments(&self) -> usize;

    /// Moves received datagrams into `batch` until it is full or nothing is pending; returns
    /// how many were added. Never blocks. A call that leaves the batch with room found
    /// nothing more pending: the worker calls again (in the same turn) only after a call
    /// that filled it, so a backend need not look twice to say it is empty. An error is
    /// returned only when nothing was added (what was is returned first; the error may come
    /// again on the next call).
    fn recv(&mut self, batch: &mut RxBatch) -> io::Result<usize>;

    /// Sends one transmit, or queues it for [`Backend::flush`]. Never blocks.
    fn send(&mut self, transmit: &Transmit<'_>) -> Result<(), SendError>;

    /// Pushes what [`Backend::send`] queued out (one kick per batch where the backend needs one).
    fn flush(&mut self) -> io::Result<()>;

    /// Blocks until a datagram may be received, `want_write` and the backend can take more,
    /// `waker` is woken, or `deadline` passes. Spurious returns are allowed.
    fn wait(
        &mut self,
        deadline: Option<Instant>,
        want_write: bool,
        waker: &Waker,
    ) -> io::Result<()>;

    /// Whether [`Backend::wait`] returns at once, always (busy polling): the worker then
    /// polls its queues every turn and never parks, so that nobody writes or reads its
    /// eventfd (no syscall per loop on either side).
    fn busy_polls(&self) -> bool {
        false
    }

    /// The local address datagrams are received on.
    fn local_addr(&self) -> io::Result<SocketAddr>;

    /// Whether the backend reports IPv4 peers as IPv4-mapped IPv6 addresses (a dual-stack
    /// IPv6 socket): connections it opens to IPv4 peers must then name them so too, or the
    /// replies, from the mapped address, would not be recognised as their peer's.
    fn maps_ipv4(&self) -> bool {
        false
    }

    /// Whether a reply can go out from `ip`, the local address a datagram was sent to
    /// (IPv4 ones unmapped), through a kernel socket: one of the host's own addresses, not
    /// a broadcast address ([`local_addrs`]). Called per datagram: answers from a cache.
    /// `true` where replies do not go through the kernel.
    fn answerable_from(&mut self, _ip: std::net::IpAddr, _now: Instant) -> bool {
        true
    }

    /// For runtimes that wait by themselves instead of calling [`Backend::wait`] (the async
    /// thread-per-core mode, [`crate::tokio`]): the descriptors to watch. `None`: this
    /// backend is waited on by `wait` only (the in-memory network).
    fn readiness(&self) -> Option<Readiness> {
        None
    }

    /// Called by such a runtime before it sleeps, for the housekeeping [`Backend::wait`]
    /// does; returns when to come back at the latest (`deadline`, or sooner).
    fn before_sleep(&mut self, deadline: Option<Instant>) -> Option<Instant> {
        deadline
    }

    /// Datagrams the kernel dropped before this backend could receive them (a kernel
    /// socket's full receive buffer), since it was opened; `None` where there is no such
    /// counter. The worker reads it about once a second, never per packet.
    fn kernel_drops(&mut self) -> Option<u64> {
        None
    }
}
