//! The AF_XDP backend: one socket per NIC queue, its own UMEM, frames parsed and built here.
//!
//! Per turn the worker calls `recv` (reap completions, refill the fill ring, take RX
//! descriptors, parse Ethernet/VLAN/IPv4/IPv6/UDP, copy each payload once into the batch,
//! return the frame), `send` per transmit (one free frame per GSO segment, headers written in
//! front of the payload: the one copy out), and `flush` (publish the TX ring, kick once when
//! the kernel asks, reap completions).
//!
//! Replies reach the client because the backend learns, from each received frame, the link
//! layer of its sender: a reply to IP `a` goes out with the MAC addresses swapped from the last
//! frame received from `a` and its VLAN tag. A transmit to an address never heard from fails
//! (`tx_no_route`); this backend serves, it does not resolve neighbours.
//!
//! The UMEM is split: at most half of its frames wait in the fill ring for the kernel, the
//! rest are for transmits. When the frames run out, sends push back (the worker retries) and
//! the kernel drops receives (counted by XDP_STATISTICS); both recover as frames return.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::udp::{poll_fds, pollfd};
use super::{Backend, Datagram, RxBatch, SendError, Transmit};
use crate::packet::frame::{self, ParseError, L2};
use crate::waker::Waker;
use crate::xsk::socket::{XskConfig, XskSocket, XskStats};
use crate::xsk::umem::{Umem, UmemConfig};
use crate::xsk::Desc;

/// How an idle worker waits for packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PollMode {
    /// Never sleep: spin on the rings (lowest latency, one core per worker).
    Busy,
    /// Spin for `spin`, then sleep in poll(2) until the socket is readable or a timer is due.
    Adaptive { spin: Duration },
}

impl Default for PollMode {
    fn default() -> Self {
        PollMode::Adaptive {
            spin: Duration::from_micros(50),
        }
    }
}

/// Remote peers whose link layer is remembered, at most (a spoofed flood cannot grow it
/// further: the table starts over, and live peers are learned again from their next packet).
const MAX_ROUTES: usize = 65_536;
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
    /// Transmits to an address never heard from (no link layer known).
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
    pub rx_parse_errors: u64,
    pub rx_bad_checksum: u64,
    pub rx_other_port: u64,
    pub tx_no_route: u64,
    pub tx_no_frame: u64,
    pub tx_ring_full: u64,
    pub kicks: u64,
    pub canary_packets: u64,
    pub kernel: XskStats,
}

/// What other threads keep of a queue's backend: its counters and a duplicate of its socket
/// descriptor to read the kernel's statistics.
#[derive(Debug)]
pub struct XskQueueInfo {
    pub queue: u32,
    pub zero_copy: bool,
    pub counters: Arc<XskCounters>,
    fd: OwnedFd,
}

impl XskQueueInfo {
    /// Counters now, with the kernel's XDP_STATISTICS.
    pub fn snapshot(&self) -> XskSnapshot {
        let c = &self.counters;
        XskSnapshot {
            queue: self.queue,
            zero_copy: self.zero_copy,
            rx_parse_errors: c.rx_parse_errors.load(Relaxed),
            rx_bad_checksum: c.rx_bad_checksum.load(Relaxed),
            rx_other_port: c.rx_other_port.load(Relaxed),
            tx_no_route: c.tx_no_route.load(Relaxed),
            tx_no_frame: c.tx_no_frame.load(Relaxed),
            tx_ring_full: c.tx_ring_full.load(Relaxed),
            kicks: c.kicks.load(Relaxed),
            canary_packets: c.canary_packets.load(Relaxed),
            kernel: crate::xsk::socket::statistics(&self.fd).unwrap_or_default(),
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
    /// The most segments one transmit may carry (AF_XDP has no GSO: each is a frame).
    pub max_segments: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Route {
    /// Link layer of a reply: our MAC as source, the peer's as destination, its VLAN tag.
    l2: L2,
    /// The local address the peer sent to (source of replies without an explicit one).
    local_ip: IpAddr,
}

/// Local counters, published to [`XskCounters`] at each flush.
#[derive(Debug, Default, Clone, Copy)]
struct Local {
    rx_parse_errors: u64,
    rx_bad_checksum: u64,
    rx_other_port: u64,
    tx_no_route: u64,
    tx_no_frame: u64,
    tx_ring_full: u64,
    kicks: u64,
    canary_packets: u64,
}

/// One queue's AF_XDP port.
pub struct XskBackend {
    // Drop order: the socket (and its ring mappings) before the UMEM it registered.
    sock: XskSocket,
    umem: Umem,
    cfg: XskBackendConfig,
    /// Frames in the fill ring or with the kernel for receiving.
    in_fill: u32,
    fill_target: u32,
    /// Frames in the TX ring or in flight, not yet completed.
    in_tx: u32,
    tx_unsubmitted: u32,
    routes: HashMap<IpAddr, Route>,
    local: Local,
    counters: Arc<XskCounters>,
    canary: Option<UdpSocket>,
    canary_countdown: u32,
}

impl XskBackend {
    /// Maps the UMEM, opens and binds the socket, and fills the fill ring.
    pub fn open(cfg: XskBackendConfig) -> io::Result<Self> {
        let umem = Umem::new(cfg.umem)?;
        let sock = XskSocket::open(&cfg.socket, &umem)?;
        let fill_target = (cfg.umem.frames / 2).min(cfg.socket.fill_size);
        let mut b = Self {
            sock,
            umem,
            in_fill: 0,
            fill_target,
            in_tx: 0,
            tx_unsubmitted: 0,
            routes: HashMap::new(),
            local: Local::default(),
            counters: Arc::new(XskCounters::default()),
            canary: None,
            canary_countdown: CANARY_EVERY,
            cfg,
        };
        b.refill();
        Ok(b)
    }

    /// Watches `socket`, an ordinary UDP socket bound to the service port: what reaches it
    /// missed the XDP path and is counted as `canary_packets`.
    pub fn set_canary(&mut self, socket: UdpSocket) -> io::Result<()> {
        socket.set_nonblocking(true)?;
        self.canary = Some(socket);
        Ok(())
    }

    /// The socket descriptor (to register in the XSKMAP).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.sock.fd()
    }

    /// Whether the socket runs in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.sock.zero_copy()
    }

    /// What other threads need to watch this queue.
    pub fn info(&self) -> io::Result<XskQueueInfo> {
        Ok(XskQueueInfo {
            queue: self.cfg.socket.queue,
            zero_copy: self.sock.zero_copy(),
            counters: self.counters.clone(),
            fd: self.sock.fd().try_clone_to_owned()?,
        })
    }

    /// Frames currently free in the UMEM (for tests of exhaustion and recovery).
    pub fn free_frames(&self) -> usize {
        self.umem.free_frames()
    }

    /// Gives free frames to the kernel, up to the fill target.
    fn refill(&mut self) {
        let mut pushed = false;
        while self.in_fill < self.fill_target {
            let Some(addr) = self.umem.alloc() else { break };
            if !self.sock.fill.push(addr) {
                self.umem.release(addr);
                break;
            }
            self.in_fill += 1;
            pushed = true;
        }
        if pushed {
            self.sock.fill.submit();
        }
    }

    /// Takes back the frames the kernel has sent.
    fn reap_completions(&mut self) {
        let mut any = false;
        while let Some(addr) = self.sock.comp.pop() {
            self.umem.release(addr);
            self.in_tx = self.in_tx.saturating_sub(1);
            any = true;
        }
        if any {
            self.sock.comp.release();
        }
    }

    fn learn(&mut self, peer: IpAddr, route: Route) {
        match self.routes.get_mut(&peer) {
            Some(r) if *r == route => {}
            Some(r) => *r = route,
            None => {
                if self.routes.len() >= MAX_ROUTES {
                    self.routes.clear();
                }
                self.routes.insert(peer, route);
            }
        }
    }

    fn check_canary(&mut self) {
        let Some(c) = &self.canary else { return };
        let mut buf = [0u8; 64];
        while c.recv_from(&mut buf).is_ok() {
            self.local.canary_packets += 1;
        }
    }

    fn publish(&self) {
        let c = &self.counters;
        let l = &self.local;
        c.rx_parse_errors.store(l.rx_parse_errors, Relaxed);
        c.rx_bad_checksum.store(l.rx_bad_checksum, Relaxed);
        c.rx_other_port.store(l.rx_other_port, Relaxed);
        c.tx_no_route.store(l.tx_no_route, Relaxed);
        c.tx_no_frame.store(l.tx_no_frame, Relaxed);
        c.tx_ring_full.store(l.tx_ring_full, Relaxed);
        c.kicks.store(l.kicks, Relaxed);
        c.canary_packets.store(l.canary_packets, Relaxed);
    }
}

impl Backend for XskBackend {
    fn max_segments(&self) -> usize {
        self.cfg.max_segments.max(1)
    }

    fn recv(&mut self, batch: &mut RxBatch) -> io::Result<usize> {
        self.reap_completions();
        self.refill();
        self.canary_countdown -= 1;
        if self.canary_countdown == 0 {
            self.canary_countdown = CANARY_EVERY;
            self.check_canary();
        }
        let mut added = 0;
        let mut popped = 0;
        while !batch.is_full() {
            let Some(Desc { addr, len, .. }) = self.sock.rx.pop() else {
                break;
            };
            popped += 1;
            self.in_fill = self.in_fill.saturating_sub(1);
            let learned = match self.umem.bytes(addr, len) {
                None => {
                    self.local.rx_parse_errors += 1;
                    None
                }
                Some(bytes) => match frame::parse(bytes, self.cfg.verify_checksum) {
                    Ok(f) if f.dst.port() != self.cfg.port => {
                        self.local.rx_other_port += 1;
                        None
                    }
                    Ok(f) => {
                        let ecn = quinn_proto::EcnCodepoint::from_bits(f.ecn);
                        let reply = L2 {
                            src_mac: f.l2.dst_mac,
                            dst_mac: f.l2.src_mac,
                            vlan: f.l2.vlan,
                        };
                        batch.push_linked(f.src, Some(f.dst.ip()), ecn, Some(reply), f.payload);
                        added += 1;
                        Some((
                            f.src.ip(),
                            Route {
                                l2: reply,
                                local_ip: f.dst.ip(),
                            },
                        ))
                    }
                    Err(ParseError::BadChecksum) => {
                        self.local.rx_bad_checksum += 1;
                        None
                    }
                    Err(_) => {
                        self.local.rx_parse_errors += 1;
                        None
                    }
                },
            };
            self.umem.release(addr);
            if let Some((peer, route)) = learned {
                self.learn(peer, route);
            }
        }
        if popped > 0 {
            self.sock.rx.release();
            self.refill();
        }
        Ok(added)
    }

    fn adopt(&mut self, d: &Datagram) {
        if let (Some(l2), Some(local_ip)) = (d.link, d.local_ip) {
            self.learn(frame::unmap(d.remote).ip(), Route { l2, local_ip });
        }
    }

    fn send(&mut self, t: &Transmit<'_>) -> Result<(), SendError> {
        let dst = frame::unmap(t.destination);
        let Some(route) = self.routes.get(&dst.ip()).copied() else {
            self.local.tx_no_route += 1;
            return Err(SendError::Failed(io::ErrorKind::HostUnreachable.into()));
        };
        let src_ip = t
            .src_ip
            .map(|ip| frame::unmap(SocketAddr::new(ip, 0)).ip())
            .filter(|ip| ip.is_ipv4() == dst.is_ipv4())
            .unwrap_or(route.local_ip);
        let src = SocketAddr::new(src_ip, self.cfg.port);
        let segments = t.segments().len() as u32;
        if self.umem.free_frames() < segments as usize {
            self.reap_completions();
            if self.umem.free_frames() < segments as usize {
                self.local.tx_no_frame += 1;
                return Err(SendError::Blocked);
            }
        }
        if self.sock.tx.free(segments) < segments {
            self.local.tx_ring_full += 1;
            return Err(SendError::Blocked);
        }
        let ecn = t.ecn.map_or(0, |e| e as u8);
        for seg in t.segments() {
            let addr = self.umem.alloc().expect("counted above");
            let written = self
                .umem
                .frame_mut(addr)
                .ok_or(frame::BuildError::TooLarge)
                .and_then(|buf| frame::write(buf, &route.l2, src, dst, ecn, seg));
            match written {
                Ok(len) => {
                    let pushed = self.sock.tx.push(Desc {
                        addr,
                        len: len as u32,
                        options: 0,
                    });
                    debug_assert!(pushed, "TX ring space was checked");
                    self.in_tx += 1;
                    self.tx_unsubmitted += 1;
                }
                Err(_) => {
                    self.umem.release(addr);
                    return Err(SendError::Failed(io::ErrorKind::InvalidInput.into()));
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.tx_unsubmitted > 0 {
            self.sock.tx.submit();
            self.tx_unsubmitted = 0;
        }
        // Kick until the kernel has taken the whole TX ring: in copy mode each call sends at
        // most 32 frames, and what stays in the ring would wait a turn (or be lost at exit).
        // In copy mode only sendto moves the ring, whatever its need-wakeup flag says.
        let must_kick =
            !self.sock.zero_copy() || !self.cfg.socket.need_wakeup || self.sock.tx.needs_wakeup();
        let mut rounds = self.sock.tx.size() / 16 + 2;
        while self.in_tx > 0 && must_kick && !self.sock.tx.is_drained() && rounds > 0 {
            self.local.kicks += 1;
            rounds -= 1;
            let more = self.sock.kick_tx()?;
            self.reap_completions();
            if !more {
                break;
            }
        }
        self.reap_completions();
        if self.cfg.socket.need_wakeup && self.sock.fill.needs_wakeup() {
            self.sock.wake_rx()?;
        }
        self.publish();
        Ok(())
    }

    fn wait(
        &mut self,
        deadline: Option<Instant>,
        want_write: bool,
        waker: &Waker,
    ) -> io::Result<()> {
        let spin = match self.cfg.poll {
            PollMode::Busy => return Ok(()),
            PollMode::Adaptive { spin } => spin,
        };
        let until = Instant::now() + spin;
        while Instant::now() < until {
            if self.sock.rx.available() > 0 || deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(());
            }
            std::hint::spin_loop();
        }
        self.check_canary();
        self.publish();
        // A negative fd (no canary) is ignored by poll.
        let mut fds = [
            pollfd(self.sock.fd().as_raw_fd(), want_write),
            pollfd(waker.fd().as_raw_fd(), false),
            pollfd(self.canary.as_ref().map_or(-1, |c| c.as_raw_fd()), false),
        ];
        // In flight transmits complete without waking us: come back soon to reap them.
        let deadline = if self.in_tx > 0 {
            let soon = Instant::now() + Duration::from_millis(1);
            Some(deadline.map_or(soon, |d| d.min(soon)))
        } else {
            deadline
        };
        poll_fds(&mut fds, deadline)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(SocketAddr::new(
            IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
            self.cfg.port,
        ))
    }
}
