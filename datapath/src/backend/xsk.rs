//! The AF_XDP backend: one socket per NIC queue, its own UMEM, frames parsed and built here.
//!
//! Per turn the worker calls `recv` (reap completions, refill the fill ring, take RX
//! descriptors, parse Ethernet/VLAN/IPv4/IPv6/UDP, copy each payload once into the batch,
//! return the frame), `send` per transmit (one free frame per GSO segment, headers written in
//! front of the payload: the one copy out), and `flush` (publish the TX ring; kick when the
//! kernel asks, and always in copy mode, where each kick takes at most 32 frames, until it
//! has taken the ring; reap completions).
//!
//! Transmits take one of two paths per queue ([`TxPath`]):
//!
//! * `xsk`: frames built here and pushed on the socket's TX ring. A reply goes out with the
//!   link layer the worker keeps for its connection ([`crate::backend::Transmit::link`]: the
//!   MACs of the frame that opened or last moved the connection, swapped, and its VLAN tag);
//!   a transmit without one fails (`tx_no_route`). At most half the UMEM waits in the fill
//!   ring, the rest carries transmits (a transmit carries no more segments than that rest). The right path where the driver does zero-copy.
//! * `kernel`: sent through the queue's UDP socket on the service port with quinn-udp (GSO,
//!   ECN, the source address by IP_PKTINFO), the kernel resolving next hops; the TX ring
//!   stays unused and every frame serves receive. In copy mode (veth, drivers without
//!   zero-copy) the kernel builds an skb per TX-ring frame anyway, so one per GSO batch of up
//!   to 44 datagrams is far cheaper.
//!
//! When the frames run out, sends push back (the worker retries) and the kernel drops receives
//! (counted by XDP_STATISTICS); both recover as frames return. The queue's UDP socket is also
//! the canary: datagrams that reach it missed the XDP path.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::udp::UdpBackend;
use super::udp::{poll_fds, pollfd};
use super::{Backend, RxBatch, SendError, Transmit};
use crate::packet::frame::{self, ParseError, L2};
use crate::waker::Waker;
use crate::xsk::socket::{StatsSource, TxError, XskConfig, XskSocket, XskStats};
use crate::xsk::umem::{Umem, UmemConfig};

/// How an idle worker waits for packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollMode {
    /// Never sleep: spin on the rings (lowest latency, one core per worker).
    Busy,
    /// Spin for up to `spin` (less after spins that caught no frame: [`super::spin`]),
    /// then sleep in poll(2) until the socket is readable or a timer is due.
    Adaptive { spin: Duration },
}

impl Default for PollMode {
    fn default() -> Self {
        PollMode::Adaptive {
            spin: Duration::from_micros(50),
        }
    }
}

/// Receive calls between two looks at the canary socket.
const CANARY_EVERY: u32 = 1024;

/// Counters of one AF_XDP backend, published at each flush, readable from any thread.
#[derive(Debug, Default)]
pub struct XskCounters {
    /// Frames that were not UDP over IP, or malformed (parse errors).
    pub rx_parse_errors: AtomicU64,
    /// Frames whose UDP checksum was wrong.
    pub rx_bad_checksum: AtomicU64,
    /// Frames for another UDP port than the service's.
    pub rx_other_port: AtomicU64,
    /// Frames no reply may answer, dropped: martians (a multicast or broadcast source, an
    /// unspecified, loopback or multicast address; `UdpFrame::is_martian`) and, on the `xsk`
    /// transmit path, frames sent to a multicast or broadcast MAC (`UdpFrame::to_group_mac`),
    /// whose reply would leave from a group address.
    pub rx_martians: AtomicU64,
    /// Transmits on the TX ring without a link layer or local address (a connection this
    /// host opened: the xsk path answers peers, the kernel path opens connections).
    pub tx_no_route: AtomicU64,
    /// Sends pushed back for want of a free frame.
    pub tx_no_frame: AtomicU64,
    /// Sends pushed back because the TX ring was full.
    pub tx_ring_full: AtomicU64,
    /// TX wake-up syscalls.
    pub kicks: AtomicU64,
    /// Datagrams that reached the ordinary UDP socket of the service port: the XDP path
    /// missed them (program detached, queue without socket, wrong port...).
    pub canary_packets: AtomicU64,
}

/// A snapshot of [`XskCounters`] plus the kernel's statistics of the socket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskSnapshot {
    pub queue: u32,
    pub zero_copy: bool,
    pub tx: Option<TxPath>,
    pub rx_parse_errors: u64,
    pub rx_bad_checksum: u64,
    pub rx_other_port: u64,
    pub rx_martians: u64,
    pub tx_no_route: u64,
    pub tx_no_frame: u64,
    pub tx_ring_full: u64,
    pub kicks: u64,
    pub canary_packets: u64,
    pub kernel: XskStats,
}

/// What other threads keep of a queue's backend: its counters, and where to read the
/// kernel's statistics of its socket while the socket is open. Holding it does not keep
/// the socket open (bound to its queue and in the XSKMAP) once the backend is gone.
#[derive(Debug)]
pub struct XskQueueInfo {
    pub queue: u32,
    pub zero_copy: bool,
    /// The path transmits take.
    pub tx: TxPath,
    pub counters: Arc<XskCounters>,
    stats: StatsSource,
    /// The kernel's statistics as last read: what a snapshot shows once the socket is gone.
    last: std::sync::Mutex<XskStats>,
}

impl XskQueueInfo {
    /// Counters now, with the kernel's XDP_STATISTICS.
    pub fn snapshot(&self) -> XskSnapshot {
        let c = &self.counters;
        XskSnapshot {
            queue: self.queue,
            zero_copy: self.zero_copy,
            tx: Some(self.tx),
            rx_parse_errors: c.rx_parse_errors.load(Relaxed),
            rx_bad_checksum: c.rx_bad_checksum.load(Relaxed),
            rx_other_port: c.rx_other_port.load(Relaxed),
            rx_martians: c.rx_martians.load(Relaxed),
            tx_no_route: c.tx_no_route.load(Relaxed),
            tx_no_frame: c.tx_no_frame.load(Relaxed),
            tx_ring_full: c.tx_ring_full.load(Relaxed),
            kicks: c.kicks.load(Relaxed),
            canary_packets: c.canary_packets.load(Relaxed),
            kernel: self.kernel(),
        }
    }
}

impl XskQueueInfo {
    /// The kernel's statistics of the socket now, or as last read once it is closed.
    fn kernel(&self) -> XskStats {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(now) = self.stats.read() {
            *last = now;
        }
        *last
    }
}

/// Which path a queue's transmits take (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxPath {
    /// Frames built here, on the AF_XDP socket's TX ring.
    Xsk,
    /// The queue's UDP socket, with GSO.
    Kernel,
}

impl std::fmt::Display for TxPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TxPath::Xsk => "xsk",
            TxPath::Kernel => "kernel",
        })
    }
}

/// How to choose a queue's [`TxPath`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TxMode {
    /// `xsk` where the socket runs zero-copy, `kernel` otherwise: in copy mode the kernel
    /// builds an skb per TX-ring frame, and its UDP path with GSO one per 44 datagrams.
    #[default]
    Auto,
    /// Always the TX ring.
    Xsk,
    /// Always the kernel's UDP path.
    Kernel,
}

impl TxMode {
    /// The path for a socket that runs zero-copy or not.
    pub fn resolve(self, zero_copy: bool) -> TxPath {
        match self {
            TxMode::Xsk => TxPath::Xsk,
            TxMode::Kernel => TxPath::Kernel,
            TxMode::Auto if zero_copy => TxPath::Xsk,
            TxMode::Auto => TxPath::Kernel,
        }
    }
}

/// Configuration of one queue's backend.
#[derive(Debug, Clone)]
pub struct XskBackendConfig {
    pub socket: XskConfig,
    pub umem: UmemConfig,
    /// The service's UDP port: frames to other ports are dropped (and counted), and replies
    /// leave from it.
    pub port: u16,
    pub poll: PollMode,
    /// Check the UDP checksum of received frames (turn off only where the NIC checks it).
    pub verify_checksum: bool,
    /// The most segments one transmit may carry on the TX ring (AF_XDP has no GSO: each is
    /// a frame).
    pub max_segments: usize,
    /// How to choose the transmit path.
    pub tx: TxMode,
}

/// Local counters, published to [`XskCounters`] at each flush.
#[derive(Debug, Default, Clone, Copy)]
struct Local {
    rx_parse_errors: u64,
    rx_bad_checksum: u64,
    rx_other_port: u64,
    rx_martians: u64,
    tx_no_route: u64,
    tx_no_frame: u64,
    tx_ring_full: u64,
    kicks: u64,
    canary_packets: u64,
}

/// One queue's AF_XDP port.
pub struct XskBackend {
    sock: XskSocket,
    cfg: XskBackendConfig,
    tx: TxPath,
    /// Frames kept lent to the kernel for receiving.
    fill_target: u32,
    /// The last transmit refused waits for room on the TX ring (which makes the socket
    /// writable), not for frames (which come back with completions, and wake nothing).
    blocked_on_ring: bool,
    /// The queue's UDP socket on the service port: the canary, and the kernel transmit path.
    service: Option<UdpBackend>,
    local: Local,
    counters: Arc<XskCounters>,
    canary_countdown: u32,
    /// The spin before each sleep, in adaptive poll mode ([`super::spin`]).
    spin: super::spin::Spin,
}

impl XskBackend {
    /// Opens the socket over `umem`, fills the fill ring and binds; `service` is the queue's
    /// UDP socket on the service port (needed for the kernel transmit path).
    pub fn open(
        mut cfg: XskBackendConfig,
        umem: Umem,
        service: Option<UdpSocket>,
    ) -> io::Result<Self> {
        cfg.umem = *umem.config();
        let sock = XskSocket::open(&cfg.socket, umem, Self::fill_target(&cfg, TxPath::Xsk))?;
        Self::with_socket(sock, cfg, service)
    }

    /// Frames kept in the fill ring: half the UMEM with transmits on the TX ring, all of it
    /// otherwise (at most the fill ring's size).
    fn fill_target(cfg: &XskBackendConfig, tx: TxPath) -> u32 {
        let frames = match tx {
            TxPath::Xsk => cfg.umem.frames / 2,
            TxPath::Kernel => cfg.umem.frames,
        };
        frames.min(cfg.socket.fill_size)
    }

    /// The backend over a socket opened already (by [`XskBackend::open`], or over an
    /// emulated kernel in tests).
    pub fn with_socket(
        sock: XskSocket,
        mut cfg: XskBackendConfig,
        service: Option<UdpSocket>,
    ) -> io::Result<Self> {
        // The layout is the socket's UMEM's, whatever `cfg` said.
        cfg.umem = *sock.umem().config();
        let tx = cfg.tx.resolve(sock.zero_copy());
        if tx == TxPath::Kernel && service.is_none() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the kernel transmit path needs the queue's UDP socket",
            ));
        }
        let mut b = Self {
            sock,
            fill_target: Self::fill_target(&cfg, tx),
            blocked_on_ring: false,
            tx,
            service: service.map(UdpBackend::new).transpose()?,
            local: Local::default(),
            counters: Arc::new(XskCounters::default()),
            canary_countdown: CANARY_EVERY,
            spin: super::spin::Spin::new(match cfg.poll {
                PollMode::Adaptive { spin } => spin,
                PollMode::Busy => Duration::ZERO,
            }),
            cfg,
        };
        if let Some(s) = &mut b.service {
            s.link_local_on(b.cfg.socket.ifindex);
        }
        b.sock.refill(b.fill_target);
        Ok(b)
    }

    /// The socket descriptor (to register in the XSKMAP).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sock.fd()
    }

    /// Whether the socket runs in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.sock.zero_copy()
    }

    /// The path transmits take.
    pub fn tx_path(&self) -> TxPath {
        self.tx
    }

    /// What other threads need to watch this queue.
    pub fn info(&self) -> io::Result<XskQueueInfo> {
        Ok(XskQueueInfo {
            queue: self.cfg.socket.queue,
            zero_copy: self.sock.zero_copy(),
            tx: self.tx,
            counters: self.counters.clone(),
            stats: self.sock.stats_source(),
            last: Default::default(),
        })
    }

    /// Frames currently free in the UMEM (for tests of exhaustion and recovery).
    pub fn free_frames(&self) -> usize {
        self.sock.umem().free_frames()
    }

    /// The socket (frame accounting, for tests).
    pub fn socket(&self) -> &XskSocket {
        &self.sock
    }

    fn check_canary(&mut self) {
        let Some(c) = &self.service else { return };
        let mut buf = [0u8; 64];
        while c.socket().recv_from(&mut buf).is_ok() {
            self.local.canary_packets += 1;
        }
    }

    fn publish(&self) {
        let c = &self.counters;
        let l = &self.local;
        c.rx_parse_errors.store(l.rx_parse_errors, Relaxed);
        c.rx_bad_checksum.store(l.rx_bad_checksum, Relaxed);
        c.rx_other_port.store(l.rx_other_port, Relaxed);
        c.rx_martians.store(l.rx_martians, Relaxed);
        c.tx_no_route.store(l.tx_no_route, Relaxed);
        c.tx_no_frame.store(l.tx_no_frame, Relaxed);
        c.tx_ring_full.store(l.tx_ring_full, Relaxed);
        c.kicks.store(l.kicks, Relaxed);
        c.canary_packets.store(l.canary_packets, Relaxed);
    }

    /// Builds the transmit's frames on the TX ring: whole or not at all.
    fn send_on_ring(&mut self, t: &Transmit<'_>) -> Result<(), SendError> {
        let dst = frame::unmap(t.destination);
        let src_ip = t
            .src_ip
            .map(|ip| frame::unmap(SocketAddr::new(ip, 0)).ip())
            .filter(|ip| ip.is_ipv4() == dst.is_ipv4());
        let (Some(l2), Some(src_ip)) = (t.link, src_ip) else {
            self.local.tx_no_route += 1;
            return Err(SendError::Failed(io::Error::new(
                io::ErrorKind::HostUnreachable,
                "no link layer or local address for this peer (the xsk transmit path \
                 answers peers it has heard from; use the kernel path to open connections)",
            )));
        };
        let src = SocketAddr::new(src_ip, self.cfg.port);
        // Refused whole before any frame is written: a transmit goes out entirely or not.
        let room = self.cfg.umem.frame_size - self.cfg.umem.headroom;
        let largest = t.segments().map(<[u8]>::len).max().unwrap_or(0);
        if frame::header_len(&l2, dst.is_ipv6()) + largest > room as usize {
            return Err(SendError::Failed(io::Error::new(
                io::ErrorKind::InvalidInput,
                "datagram larger than a UMEM frame",
            )));
        }
        let segments = t.segments().len() as u32;
        if self.sock.tx_room() < segments {
            self.sock.reap();
            if self.sock.tx_room() < segments {
                self.blocked_on_ring = self.sock.umem().free_frames() >= segments as usize;
                if self.blocked_on_ring {
                    self.local.tx_ring_full += 1;
                } else {
                    self.local.tx_no_frame += 1;
                }
                return Err(SendError::Blocked);
            }
        }
        let ecn = t.ecn.map_or(0, |e| e as u8);
        for seg in t.segments() {
            match self
                .sock
                .send(|buf| frame::write(buf, &l2, src, dst, ecn, seg))
            {
                Ok(()) => {}
                // Room and size were checked above; a family mismatch is the caller's error.
                Err(TxError::NoRoom | TxError::Write(_) | TxError::TooShort | TxError::TooLong) => {
                    return Err(SendError::Failed(io::ErrorKind::InvalidInput.into()));
                }
            }
        }
        Ok(())
    }

    /// Publishes the TX ring and kicks until the kernel has taken it: in copy mode each call
    /// sends at most 32 frames, and what stays in the ring would wait a turn (or be lost at
    /// exit).
    fn flush_ring(&mut self) -> io::Result<()> {
        self.sock.submit_tx();
        // With busy polling the device sends only inside our calls (see `recv`).
        let must_kick = self.sock.tx_needs_kick() || self.cfg.socket.busy_poll.is_some();
        let mut rounds = self.sock.tx_ring_size() / 16 + 2;
        while self.sock.tx_in_flight() > 0
            && must_kick
            && !self.sock.tx_ring_drained()
            && rounds > 0
        {
            self.local.kicks += 1;
            rounds -= 1;
            let more = self.sock.kick_tx()?;
            self.sock.reap();
            if !more {
                break;
            }
        }
        self.sock.reap();
        Ok(())
    }
}

impl Backend for XskBackend {
    fn max_segments(&self) -> usize {
        match (&self.service, self.tx) {
            (Some(s), TxPath::Kernel) => s.max_segments(),
            // No more than the frames left to transmits can ever hold: a larger transmit
            // would be refused for lack of frames forever.
            _ => {
                let tx_share = (self.cfg.umem.frames - self.fill_target) as usize;
                self.cfg.max_segments.min(tx_share).max(1)
            }
        }
    }

    fn recv(&mut self, batch: &mut RxBatch) -> io::Result<usize> {
        self.sock.reap();
        self.sock.refill(self.fill_target);
        self.canary_countdown -= 1;
        if self.canary_countdown == 0 {
            self.canary_countdown = CANARY_EVERY;
            self.check_canary();
        }
        let mut added = 0;
        let (local, port, verify) = (&mut self.local, self.cfg.port, self.cfg.verify_checksum);
        let ifindex = self.cfg.socket.ifindex;
        let ring_tx = self.tx == TxPath::Xsk;
        let mut taken = 0;
        // Until the batch is full or the ring had fewer frames than asked for: frames dropped
        // here take no room, and a batch left with room must mean an empty ring
        // (`Backend::recv`).
        let drained = loop {
            let room = batch.room();
            let took = self
                .sock
                .recv(room, |octets| match frame::parse(octets, verify) {
                    Ok(f) if f.dst.port() != port => local.rx_other_port += 1,
                    Ok(f) if f.is_martian() || (ring_tx && f.to_group_mac()) => {
                        local.rx_martians += 1
                    }
                    Ok(f) => {
                        let ecn = quinn_proto::EcnCodepoint::from_bits(f.ecn);
                        let reply = L2 {
                            src_mac: f.l2.dst_mac,
                            dst_mac: f.l2.src_mac,
                            vlan: f.l2.vlan,
                        };
                        let from = scoped(f.src, ifindex);
                        batch.push_linked(from, Some(f.dst.ip()), ecn, Some(reply), f.payload);
                        added += 1;
                    }
                    Err(ParseError::BadChecksum) => local.rx_bad_checksum += 1,
                    Err(_) => local.rx_parse_errors += 1,
                });
            taken += took;
            if took < room {
                break true;
            }
            if batch.is_full() {
                break false;
            }
        };
        if taken > 0 {
            self.sock.refill(self.fill_target);
        }
        if drained && self.cfg.socket.busy_poll.is_some() {
            // Preferred busy polling runs the device's NAPI only inside the application's
            // calls: a look that empties the ring makes one (as libxdp's xdpsock does), or
            // nothing would ever fill it without the interrupts busy polling turned off. Its
            // frames are taken at the next call. A failure with frames added comes again then.
            if let Err(e) = self.sock.wake_rx() {
                if added == 0 {
                    return Err(e);
                }
            }
        }
        Ok(added)
    }

    fn send(&mut self, t: &Transmit<'_>) -> Result<(), SendError> {
        match (self.tx, &mut self.service) {
            (TxPath::Kernel, Some(s)) => s.send(t),
            _ => self.send_on_ring(t),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.tx == TxPath::Xsk {
            self.flush_ring()?;
        }
        if self.sock.fill_needs_wakeup() {
            self.sock.wake_rx()?;
        }
        self.publish();
        Ok(())
    }

    fn busy_polls(&self) -> bool {
        self.cfg.poll == PollMode::Busy
    }

    fn answerable_from(&mut self, ip: std::net::IpAddr, now: Instant) -> bool {
        // Frames built here go out from any address; the kernel's path takes only the
        // host's own (on the ring, frames to a group MAC, as broadcasts are, never reach
        // the worker).
        match (&mut self.service, self.tx) {
            (Some(s), TxPath::Kernel) => s.answerable_from(ip, now),
            _ => true,
        }
    }

    fn wait(
        &mut self,
        deadline: Option<Instant>,
        want_write: bool,
        waker: &Waker,
    ) -> io::Result<()> {
        if self.cfg.poll == PollMode::Busy {
            return Ok(());
        }
        let began = Instant::now();
        let spin = self.spin.next();
        if !spin.is_zero() {
            let until = began + spin;
            loop {
                let now = Instant::now();
                if self.sock.rx_available() > 0 || deadline.is_some_and(|d| now >= d) {
                    return Ok(());
                }
                if now >= until {
                    break;
                }
                std::hint::spin_loop();
            }
            self.spin.missed();
        }
        let deadline = self.before_sleep(deadline);
        // A negative fd (no service socket) is ignored by poll. Writability is the TX ring's
        // or the service socket's, by the transmit path.
        // Waiting for frames rather than ring room: the 1 ms deadline of `before_sleep` reaps
        // the completions (POLLOUT would be ready at once, and the wait a spin).
        let kernel_tx = self.tx == TxPath::Kernel;
        let mut fds = [
            pollfd(
                self.sock.fd().as_raw_fd(),
                want_write && !kernel_tx && self.blocked_on_ring,
            ),
            pollfd(waker.fd().as_raw_fd(), false),
            pollfd(
                self.service.as_ref().map_or(-1, |c| c.socket().as_raw_fd()),
                want_write && kernel_tx,
            ),
        ];
        poll_fds(&mut fds, deadline)?;
        if self.sock.rx_available() > 0 {
            // Since the wait began: whether a full spin would have caught the frames.
            self.spin.woke_to_frames(began.elapsed());
        }
        Ok(())
    }

    fn readiness(&self) -> Option<super::Readiness> {
        let read = self.sock.fd().as_raw_fd();
        let write = match (&self.service, self.tx) {
            (Some(s), TxPath::Kernel) => s.socket().as_raw_fd(),
            _ => read,
        };
        Some(super::Readiness { read, write })
    }

    fn before_sleep(&mut self, deadline: Option<Instant>) -> Option<Instant> {
        self.check_canary();
        self.publish();
        // In flight transmits complete without waking us: come back soon to reap them.
        if self.sock.tx_in_flight() > 0 {
            let soon = Instant::now() + Duration::from_millis(1);
            Some(deadline.map_or(soon, |d| d.min(soon)))
        } else {
            deadline
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::new(
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            self.cfg.port,
        ))
    }
}

/// `addr` with the scope of interface `ifindex` if it is an IPv6 link-local address: a reply
/// through a kernel socket to a link-local peer needs it (the kernel refuses one without:
/// EINVAL), and it names the peer the same way on every datagram.
fn scoped(addr: SocketAddr, ifindex: u32) -> SocketAddr {
    match addr {
        SocketAddr::V6(mut a) if a.ip().is_unicast_link_local() => {
            a.set_scope_id(ifindex);
            SocketAddr::V6(a)
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    //! The backend over an emulated kernel: frames are conserved (every frame of the UMEM is
    //! free, lent for RX or lent for TX, and the kernel side agrees) through receive, refill,
    //! transmit, completion, exhaustion, refused transmits and bad descriptors.
    use super::*;
    use crate::xsk::emulated::{self, EmulatedKernel};
    use crate::xsk::Desc;

    const FRAMES: u32 = 64;
    const SERVER: &str = "10.9.0.1:4433";
    const CLIENT: &str = "10.9.0.2:5555";
    const SERVER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const CLIENT_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn backend() -> (XskBackend, EmulatedKernel) {
        let mut socket = XskConfig::new(1, 0);
        socket.rx_size = 16;
        socket.tx_size = 16;
        socket.comp_size = 16;
        socket.fill_size = 32;
        let cfg = XskBackendConfig {
            socket,
            umem: UmemConfig {
                frames: FRAMES,
                ..Default::default()
            },
            port: 4433,
            poll: PollMode::Busy,
            verify_checksum: true,
            max_segments: 8,
            tx: TxMode::Xsk,
        };
        let umem = Umem::new(cfg.umem).unwrap();
        let (sock, kernel) = emulated::socket(
            &cfg.socket,
            umem,
            XskBackend::fill_target(&cfg, TxPath::Xsk),
        )
        .unwrap();
        (XskBackend::with_socket(sock, cfg, None).unwrap(), kernel)
    }

    const REPLY: L2 = L2 {
        src_mac: SERVER_MAC,
        dst_mac: CLIENT_MAC,
        vlan: None,
    };

    /// Every frame is in exactly one place, and both sides count the same (at a flush
    /// boundary: nothing pushed and unpublished).
    #[track_caller]
    fn assert_conserved(b: &XskBackend, k: &mut EmulatedKernel) {
        let u = b.socket().umem();
        assert_eq!(
            u.free_frames() as u32 + u.lent_rx() + u.lent_tx(),
            FRAMES,
            "a frame went missing or was counted twice"
        );
        assert_eq!(
            u.lent_rx() as usize,
            k.rx_frames() + k.rx_queued(),
            "RX frames"
        );
        assert_eq!(u.lent_tx() as usize, k.tx_frames(), "TX frames");
    }

    fn packet(payload: &[u8], to_port: u16) -> Vec<u8> {
        let l2 = L2 {
            src_mac: CLIENT_MAC,
            dst_mac: SERVER_MAC,
            vlan: None,
        };
        let mut to: SocketAddr = SERVER.parse().unwrap();
        to.set_port(to_port);
        let mut buf = vec![0u8; 2048];
        let n = frame::write(&mut buf, &l2, CLIENT.parse().unwrap(), to, 0, payload).unwrap();
        buf.truncate(n);
        buf
    }

    fn transmit<'a>(contents: &'a [u8], segment_size: Option<usize>) -> Transmit<'a> {
        Transmit {
            destination: CLIENT.parse().unwrap(),
            src_ip: Some(SERVER.parse::<SocketAddr>().unwrap().ip()),
            ecn: None,
            segment_size,
            contents,
            link: Some(REPLY),
        }
    }

    #[test]
    fn receive_refill_transmit_complete() {
        let (mut b, mut k) = backend();
        assert_eq!(
            b.socket().umem().lent_rx(),
            FRAMES / 2,
            "half the UMEM to receive"
        );
        assert_conserved(&b, &mut k);

        // Receive: every datagram once, in order; frames return and are lent again.
        let mut batch = RxBatch::new(64);
        for round in 0..5u8 {
            for i in 0..10u8 {
                k.deliver(&packet(&[round, i, 7], 4433)).unwrap();
            }
            k.deliver(&packet(b"not ours", 53)).unwrap();
            let mut bad = packet(b"corrupt", 4433);
            *bad.last_mut().unwrap() ^= 0xff;
            k.deliver(&bad).unwrap();
            assert_conserved(&b, &mut k);
            assert_eq!(b.recv(&mut batch).unwrap(), 10);
            let got: Vec<Vec<u8>> = batch.drain().map(|d| d.data.to_vec()).collect();
            let want: Vec<Vec<u8>> = (0..10u8).map(|i| vec![round, i, 7]).collect();
            assert_eq!(got, want);
            assert_conserved(&b, &mut k);
        }
        assert_eq!(b.local.rx_other_port, 5);
        assert_eq!(b.local.rx_bad_checksum, 5);
        assert_eq!(b.socket().umem().lent_rx(), FRAMES / 2, "refilled");

        // Transmit a GSO batch of 4 segments over the link layer of the peer.
        let contents: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
        b.send(&transmit(&contents, Some(1200))).unwrap();
        b.flush().unwrap();
        assert_conserved(&b, &mut k);
        let sent = k.transmit(64);
        assert_eq!(sent.len(), 4);
        for (frame_octets, seg) in sent.iter().zip(contents.chunks(1200)) {
            let f = frame::parse(frame_octets, true).unwrap();
            assert_eq!(f.payload, seg);
            assert_eq!(f.dst, CLIENT.parse::<SocketAddr>().unwrap());
            assert_eq!(f.src, SERVER.parse::<SocketAddr>().unwrap());
            assert_eq!((f.l2.src_mac, f.l2.dst_mac), (SERVER_MAC, CLIENT_MAC));
        }
        assert_conserved(&b, &mut k);
        b.flush().unwrap(); // reaps the completions
        assert_eq!(b.socket().umem().lent_tx(), 0);
        assert_conserved(&b, &mut k);
    }

    /// Frames dropped here (for another port) take no room in the batch: one `recv` reads on
    /// past them until the batch is full or the ring is empty, so that a batch left with room
    /// means an empty ring (`Backend::recv`; the worker then looks no more this turn). Before,
    /// a batch's worth of dropped frames ended the call with nothing, ahead of valid ones.
    #[test]
    fn dropped_frames_take_no_room_in_the_batch() {
        let (mut b, mut k) = backend();
        let mut batch = RxBatch::new(4);
        for _ in 0..6 {
            k.deliver(&packet(b"not ours", 53)).unwrap();
        }
        for i in 0..3u8 {
            k.deliver(&packet(&[i], 4433)).unwrap();
        }
        assert_eq!(b.recv(&mut batch).unwrap(), 3);
        let got: Vec<Vec<u8>> = batch.drain().map(|d| d.data.to_vec()).collect();
        assert_eq!(got, vec![vec![0], vec![1], vec![2]]);
        assert_eq!(b.local.rx_other_port, 6);
        assert_eq!(b.recv(&mut batch).unwrap(), 0, "the ring is empty");
        assert_conserved(&b, &mut k);
    }

    /// A link-local IPv6 peer is named with the interface's scope (the socket's ifindex, 1
    /// here), so that a reply through the kernel can reach it; other addresses have none.
    #[test]
    fn link_local_peers_get_the_interfaces_scope() {
        let (mut b, mut k) = backend();
        let mut batch = RxBatch::new(64);
        let l2 = L2 {
            src_mac: CLIENT_MAC,
            dst_mac: SERVER_MAC,
            vlan: None,
        };
        for (from, to) in [
            ("[fe80::1]:5000", "[fe80::2]:4433"),
            ("[2001:db8::1]:5000", "[2001:db8::2]:4433"),
        ] {
            let mut buf = vec![0u8; 2048];
            let n = frame::write(
                &mut buf,
                &l2,
                from.parse().unwrap(),
                to.parse().unwrap(),
                0,
                b"x",
            )
            .unwrap();
            k.deliver(&buf[..n]).unwrap();
        }
        assert_eq!(b.recv(&mut batch).unwrap(), 2);
        let scopes: Vec<u32> = batch
            .drain()
            .map(|d| match d.remote {
                SocketAddr::V6(a) => a.scope_id(),
                SocketAddr::V4(_) => panic!("an IPv4 peer"),
            })
            .collect();
        assert_eq!(scopes, [1, 0]);
        assert_conserved(&b, &mut k);
    }

    /// Martians are dropped and counted, never handed to the endpoint (whose reply would go
    /// to a whole segment or from an address not ours); their frames go back to the kernel.
    #[test]
    fn martians_are_dropped_and_counted() {
        let (mut b, mut k) = backend();
        let mut batch = RxBatch::new(64);
        let server: SocketAddr = SERVER.parse().unwrap();
        let mut multicast_to = server;
        multicast_to.set_ip("224.0.0.1".parse().unwrap());
        let martians = [
            // A broadcast source MAC.
            (
                L2 {
                    src_mac: [0xff; 6],
                    dst_mac: SERVER_MAC,
                    vlan: None,
                },
                CLIENT.parse().unwrap(),
                server,
            ),
            // To the broadcast MAC (this backend transmits on the ring: its reply would
            // leave from that address).
            (
                L2 {
                    src_mac: CLIENT_MAC,
                    dst_mac: [0xff; 6],
                    vlan: None,
                },
                CLIENT.parse().unwrap(),
                server,
            ),
            // A broadcast source address.
            (
                L2 {
                    src_mac: CLIENT_MAC,
                    dst_mac: SERVER_MAC,
                    vlan: None,
                },
                "255.255.255.255:5000".parse().unwrap(),
                server,
            ),
            // A multicast destination address.
            (
                L2 {
                    src_mac: CLIENT_MAC,
                    dst_mac: SERVER_MAC,
                    vlan: None,
                },
                CLIENT.parse().unwrap(),
                multicast_to,
            ),
        ];
        for (l2, from, to) in martians {
            let mut buf = vec![0u8; 2048];
            let n = frame::write(&mut buf, &l2, from, to, 0, b"martian").unwrap();
            k.deliver(&buf[..n]).unwrap();
        }
        k.deliver(&packet(b"ours", 4433)).unwrap();
        assert_eq!(b.recv(&mut batch).unwrap(), 1, "only the ordinary datagram");
        let got: Vec<Vec<u8>> = batch.drain().map(|d| d.data.to_vec()).collect();
        assert_eq!(got, vec![b"ours".to_vec()]);
        assert_eq!(b.local.rx_martians, 4);
        assert_eq!(b.socket().umem().lent_rx(), FRAMES / 2, "refilled");
        assert_conserved(&b, &mut k);
    }

    #[test]
    fn exhaustion_pushes_back_whole_transmits_and_recovers() {
        let (mut b, mut k) = backend();
        k.deliver(&packet(b"hello", 4433)).unwrap();
        let mut batch = RxBatch::new(8);
        assert_eq!(b.recv(&mut batch).unwrap(), 1);
        batch.drain().for_each(drop);

        // A slow NIC: completions held, so frames stay lent for TX.
        k.hold_completions(true);
        let contents = vec![9u8; 8 * 1000];
        let mut accepted = 0;
        let blocked = loop {
            match b.send(&transmit(&contents, Some(1000))) {
                Ok(()) => {
                    accepted += 1;
                    b.flush().unwrap();
                    k.transmit(usize::MAX);
                }
                Err(SendError::Blocked) => break true,
                Err(SendError::Failed(e)) => panic!("{e}"),
            }
            assert!(accepted < 100, "never pushed back");
        };
        assert!(blocked && accepted > 0);
        assert_conserved(&b, &mut k);
        let in_flight = b.socket().umem().lent_tx();
        assert_eq!(
            in_flight,
            accepted * 8,
            "refused whole: no partial transmit"
        );
        assert_eq!(b.local.tx_no_frame, 1);

        // Completions flow again: the same transmit goes out.
        k.hold_completions(false);
        k.complete(usize::MAX);
        b.send(&transmit(&contents, Some(1000))).unwrap();
        b.flush().unwrap();
        assert_eq!(k.transmit(usize::MAX).len(), 8);
        // The completion ring (16 entries) takes back the rest over a few rounds.
        for _ in 0..FRAMES {
            k.complete(usize::MAX);
            b.flush().unwrap();
            if b.socket().umem().lent_tx() == 0 {
                break;
            }
        }
        assert_eq!(b.socket().umem().lent_tx(), 0);
        assert_conserved(&b, &mut k);

        // A datagram larger than a frame is refused before any frame is taken.
        let big = vec![1u8; 3000];
        assert!(matches!(
            b.send(&transmit(&big, None)),
            Err(SendError::Failed(_))
        ));
        assert_conserved(&b, &mut k);
        // Without a link layer (a connection this host opened): refused, nothing taken.
        let mut t = transmit(b"x", None);
        t.link = None;
        assert!(matches!(b.send(&t), Err(SendError::Failed(_))));
        assert_eq!(b.local.tx_no_route, 1);
        assert_conserved(&b, &mut k);
    }

    #[test]
    fn descriptors_for_frames_not_lent_are_refused() {
        let (mut b, mut k) = backend();
        // Frame 63 is free (the fill ring took the first frames off the free list's end).
        let free_addr = u64::from(FRAMES - 1) * 2048;
        // SAFETY: frame 63 is on the user side's free list, not held by the emulated kernel.
        assert!(unsafe {
            k.push_raw_rx(Desc {
                addr: free_addr,
                len: 60,
                options: 0,
            })
        });
        // SAFETY: past the end of the UMEM: no frame at all.
        assert!(unsafe {
            k.push_raw_rx(Desc {
                addr: u64::from(FRAMES) * 2048 + 5,
                len: 60,
                options: 0,
            })
        });
        let mut batch = RxBatch::new(8);
        assert_eq!(b.recv(&mut batch).unwrap(), 0);
        assert_eq!(b.socket().invalid_descs(), 2);
        assert_conserved(&b, &mut k);
        // Normal traffic goes on.
        k.deliver(&packet(b"after", 4433)).unwrap();
        assert_eq!(b.recv(&mut batch).unwrap(), 1);
        assert_conserved(&b, &mut k);
    }

    /// A frame written shorter than an Ethernet header is refused and kept: the kernel
    /// would skip its descriptor without completing it, and the frame would be lost. So is
    /// one the writer says is longer than its frame.
    #[test]
    fn a_frame_shorter_than_a_header_is_not_lent_to_the_kernel() {
        let (mut b, mut k) = backend();
        let free = b.socket().umem().free_frames();
        let sent = b.sock.send(|_buf| Ok::<usize, ()>(0));
        assert!(matches!(sent, Err(TxError::TooShort)), "{sent:?}");
        let sent = b.sock.send(|_buf| Ok::<usize, ()>(13));
        assert!(matches!(sent, Err(TxError::TooShort)), "{sent:?}");
        // Nor one longer than its frame (a writer's bug): cut, it would lie about its lengths.
        let sent = b.sock.send(|buf| Ok::<usize, ()>(buf.len() + 1));
        assert!(matches!(sent, Err(TxError::TooLong)), "{sent:?}");
        assert_eq!(b.socket().umem().free_frames(), free);
        assert_eq!(b.socket().tx_in_flight(), 0);
        assert_conserved(&b, &mut k);
    }

    #[test]
    fn a_final_flush_leaves_nothing_in_the_tx_ring() {
        let (mut b, mut k) = backend();
        k.deliver(&packet(b"hello", 4433)).unwrap();
        let mut batch = RxBatch::new(8);
        b.recv(&mut batch).unwrap();
        let contents = vec![3u8; 16 * 500];
        b.send(&transmit(&contents, Some(500))).unwrap();
        b.flush().unwrap();
        assert!(b.sock.tx_ring_drained() || k.transmit(usize::MAX).len() == 16);
        drop(b);
        // The kernel side outlives the socket: the UMEM area is still mapped for it.
        assert_eq!(k.transmit(usize::MAX).len(), 0);
    }

    /// A small UMEM bounds the transmit: no more segments than the frames left to transmits
    /// (a larger one would be refused for lack of frames forever), whatever the
    /// configuration claims the UMEM is; and a transmit of that many goes out whole.
    #[test]
    fn a_transmit_fits_the_frames_left_to_transmits() {
        let mut socket = XskConfig::new(1, 0);
        socket.tx_size = 64;
        socket.comp_size = 64;
        let real = UmemConfig {
            frames: 16,
            ..Default::default()
        };
        let cfg = XskBackendConfig {
            socket,
            // Not the socket's UMEM: the socket's layout wins.
            umem: UmemConfig {
                frames: 1024,
                ..Default::default()
            },
            port: 4433,
            poll: PollMode::Busy,
            verify_checksum: true,
            max_segments: 32,
            tx: TxMode::Xsk,
        };
        let fill = 8; // half of the 16 frames
        let (sock, mut k) = emulated::socket(&cfg.socket, Umem::new(real).unwrap(), fill).unwrap();
        let mut b = XskBackend::with_socket(sock, cfg, None).unwrap();
        assert_eq!(b.max_segments(), 8, "16 frames, 8 in the fill ring");
        let contents = vec![7u8; 8 * 100];
        b.send(&transmit(&contents, Some(100))).unwrap();
        b.flush().unwrap();
        assert_eq!(k.transmit(usize::MAX).len(), 8, "every segment left");
    }

    /// The kernel transmit path: GSO batches leave through the queue's UDP socket, whole,
    /// and every frame of the UMEM serves receive.
    #[test]
    fn the_kernel_path_sends_through_the_service_socket() {
        let mut socket = XskConfig::new(1, 0);
        socket.fill_size = 64;
        let cfg = XskBackendConfig {
            socket,
            umem: UmemConfig {
                frames: FRAMES,
                ..Default::default()
            },
            port: 4433,
            poll: PollMode::Busy,
            verify_checksum: true,
            max_segments: 8,
            tx: TxMode::Auto,
        };
        let service = UdpSocket::bind("127.0.0.1:0").unwrap();
        let peer = UdpSocket::bind("127.0.0.1:0").unwrap();
        let umem = Umem::new(cfg.umem).unwrap();
        let (sock, mut k) = emulated::socket(
            &cfg.socket,
            umem,
            XskBackend::fill_target(&cfg, TxPath::Kernel),
        )
        .unwrap();
        let mut b = XskBackend::with_socket(sock, cfg, Some(service)).unwrap();
        assert_eq!(b.tx_path(), TxPath::Kernel, "copy mode: the kernel path");
        assert_eq!(
            b.socket().umem().lent_rx(),
            FRAMES,
            "every frame serves receive"
        );
        assert!(b.max_segments() > 8, "GSO batches: {}", b.max_segments());
        let contents: Vec<u8> = (0..3000u32).map(|i| i as u8).collect();
        let t = Transmit {
            destination: peer.local_addr().unwrap(),
            src_ip: None,
            ecn: None,
            segment_size: Some(1000),
            contents: &contents,
            link: None,
        };
        b.send(&t).unwrap();
        b.flush().unwrap();
        let mut buf = [0u8; 2000];
        for seg in contents.chunks(1000) {
            let (n, _) = peer.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..n], seg);
        }
        assert_eq!(k.transmit(usize::MAX).len(), 0, "nothing on the TX ring");
        assert_conserved_kernel(&b, &mut k);
    }

    #[track_caller]
    fn assert_conserved_kernel(b: &XskBackend, k: &mut EmulatedKernel) {
        let u = b.socket().umem();
        assert_eq!(u.free_frames() as u32 + u.lent_rx() + u.lent_tx(), FRAMES);
        assert_eq!(u.lent_rx() as usize, k.rx_frames() + k.rx_queued());
    }
}
