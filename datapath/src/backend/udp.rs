//! The kernel UDP backend: one socket per worker, all bound to one address with SO_REUSEPORT.
//!
//! quinn-udp gives it batching (recvmmsg, GSO sendmsg), GRO, ECN and the local address
//! (IP_PKTINFO). A classic-BPF reuseport program ([`reuseport_program`]) makes the kernel pick
//! the socket of a short-header packet from the worker octet of its destination CID, so a
//! client that changes port or address still lands on its connection's worker; for anything
//! else the kernel's 4-tuple hash picks. Where the program cannot be attached the workers hand
//! misrouted packets over to their owner instead ([`crate::route`]).

use std::io::{self, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd};

use std::time::Instant;

use quinn_udp::{RecvMeta, UdpSockRef, UdpSocketState, BATCH_SIZE};
use socket2::{Domain, Protocol, Socket, Type};

use super::{Backend, RxBatch, SendError, Transmit};
use crate::cid::CidLayout;
use crate::waker::Waker;

/// SO_MEMINFO (not in every libc target's constants) and the index of the drop counter in
/// its answer (`SK_MEMINFO_DROPS`).
const SO_MEMINFO: libc::c_int = 55;
const SK_MEMINFO_DROPS: usize = 8;
const SK_MEMINFO_VARS: usize = 9;

/// Receive buffer per recvmmsg slot: one GRO super-datagram is at most 64 KiB.
const SLOT: usize = 64 * 1024;
/// Segments of one GSO send: 44 × 1,472 octets stay under the 65,507 one send can carry.
const MAX_GSO_SEGMENTS: usize = 44;

/// How the kernel chooses among the sockets of a reuseport group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Steering {
    /// The classic-BPF program reads the worker from the destination CID.
    CidProgram,
    /// The kernel's 4-tuple hash; the workers hand misrouted packets over.
    Hash,
}

/// One worker's socket.
pub struct UdpBackend {
    socket: UdpSocket,
    state: UdpSocketState,
    /// The recvmmsg slots, allocated at the first receive (a socket that only sends, the
    /// kernel transmit path of AF_XDP, never needs them).
    buf: Vec<u8>,
    meta: [RecvMeta; BATCH_SIZE],
    pending: Pending,
    local_addrs: super::local_addrs::LocalAddrs,
    renewal: Renewal,
}

/// When the socket's state may be made afresh again: at most once a second, so that a flood
/// of refused replies costs a rebuild a second, not one per reply.
#[derive(Debug, Default, Clone, Copy)]
struct Renewal {
    /// No rebuild before this instant.
    not_before: Option<Instant>,
    /// A rebuild was held back by `not_before`: the next send past it makes it.
    due: bool,
    /// A send failed in a way that speaks of the NIC or the path (EIO, or an EINVAL of a GSO
    /// batch from an address a reply can go out from): quinn-udp's GSO is off for a reason
    /// a rebuild would only bring back to fail again. No more rebuilds.
    never: bool,
}

/// The shortest time between two rebuilds of a socket's state.
const RENEWAL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Datagrams of the last recvmmsg not yet handed out: message `msg` of `msgs`, from octet
/// `offset` of its slot.
#[derive(Debug, Default, Clone, Copy)]
struct Pending {
    msgs: usize,
    msg: usize,
    offset: usize,
}

impl std::fmt::Debug for UdpBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UdpBackend")
            .field("local", &self.socket.local_addr().ok())
            .finish()
    }
}

impl UdpBackend {
    /// Wraps a bound, non-blocking socket.
    pub fn new(socket: UdpSocket) -> io::Result<Self> {
        socket.set_nonblocking(true)?;
        let state = UdpSocketState::new(UdpSockRef::from(&socket))?;
        // Generous buffers: bulk transfers and busy workers burst far past the defaults.
        super::sockbuf::grow(&socket, super::sockbuf::SOCKET_BUFFER);
        Ok(Self {
            renewal: Renewal::default(),
            local_addrs: super::local_addrs::LocalAddrs::beside(&socket),
            socket,
            state,
            buf: Vec::new(),
            meta: [RecvMeta::default(); BATCH_SIZE],
            pending: Pending::default(),
        })
    }

    /// The socket.
    pub fn socket(&self) -> &UdpSocket {
        &self.socket
    }

    /// A send refused with EINVAL or EIO. quinn-udp takes either for a NIC without
    /// segmentation offload and turns GSO off (and, on the first EINVAL, IPv4 ECN marks) for
    /// the socket's life; but an EINVAL may come from the source address, one a reply cannot
    /// go out from that the local-address check let through (past its budget, or an address
    /// the host gave up within the second its answer is kept), or from another cause of that
    /// one datagram. Then the socket's state is made afresh (GSO and ECN back, the socket's
    /// options set again), so that such datagrams cannot slow the socket for good, and a
    /// refused source is known for what it is. Only the failures that speak of the NIC or
    /// the path end the rebuilds ([`Renewal::never`]): an EIO, or an EINVAL of a GSO batch
    /// from an address the kernel says a reply can go out from.
    ///
    /// Costs a probe per failed send with a source address, and a rebuild (about 17 syscalls
    /// and quinn-udp's log line) at most once a second ([`RENEWAL_INTERVAL`]): a rebuild held
    /// back is made by the first send past the second.
    fn after_failure(&mut self, errno: i32, t: &Transmit<'_>, now: Instant) {
        let gso = t.segment_size.is_some_and(|s| s < t.contents.len());
        // The socket's own address (no source given) is one a reply goes out from.
        let refused = match t.src_ip {
            None => Some(false),
            Some(ip) => self.local_addrs.refuses(ip.to_canonical()),
        };
        if errno == libc::EIO || (errno == libc::EINVAL && gso && refused == Some(false)) {
            self.renewal.never = true;
            self.renewal.due = false;
            return;
        }
        if self.renewal.never {
            return;
        }
        self.renewal.due = true;
        self.renew_if_due(now);
    }

    /// Makes a rebuild that is due, if its time has come (one that fails stays due, tried
    /// again a second later).
    fn renew_if_due(&mut self, now: Instant) {
        if self.renewal.not_before.is_some_and(|t| now < t) {
            return;
        }
        self.renewal.not_before = Some(now + RENEWAL_INTERVAL);
        match UdpSocketState::new(UdpSockRef::from(&self.socket)) {
            Ok(state) => {
                self.state = state;
                self.renewal.due = false;
            }
            Err(e) => tracing::warn!("cannot renew the UDP socket's state: {e}"),
        }
    }

    /// Datagrams to IPv6 link-local addresses are taken from interface `ifindex` (AF_XDP's,
    /// whose frames may name any address): the local-address check asks there.
    pub(crate) fn link_local_on(&mut self, ifindex: u32) {
        self.local_addrs = std::mem::take(&mut self.local_addrs).on_link(ifindex);
    }
}

/// Datagrams the kernel dropped at `socket` (receive buffer full, bad checksum): the
/// socket's drop counter (SO_MEMINFO, `SK_MEMINFO_DROPS`). One syscall.
pub fn kernel_drops(socket: &impl AsRawFd) -> io::Result<u64> {
    let mut info = [0u32; SK_MEMINFO_VARS];
    let mut len = std::mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` octets into the live array.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_MEMINFO,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from(info[SK_MEMINFO_DROPS]))
}

/// Binds `workers` sockets to `addr` with SO_REUSEPORT, in worker order (the kernel's
/// reuseport index of socket `i` is `i`), and tries to attach the CID steering program.
///
/// Port 0 picks a free port for the first socket and binds the rest to the same one. An
/// unspecified IPv6 address is dual-stack.
pub fn bind_group(
    addr: SocketAddr,
    workers: usize,
    layout: &CidLayout,
) -> io::Result<(Vec<UdpBackend>, Steering)> {
    let sockets = bind_reuseport(addr, workers)?;
    let steering = if workers > 1 && attach_reuseport_program(&sockets[0], layout).is_ok() {
        Steering::CidProgram
    } else {
        Steering::Hash
    };
    let backends = sockets
        .into_iter()
        .map(UdpBackend::new)
        .collect::<io::Result<Vec<_>>>()?;
    Ok((backends, steering))
}

/// Binds `n` sockets to `addr` with SO_REUSEPORT (port 0: a free port, the same for all),
/// non-blocking, dual-stack for an unspecified IPv6 address, and checks on the bound sockets
/// that no other socket shares the port: SO_REUSEPORT lets any socket of the same user join
/// the group, and it would take a share of the packets.
///
/// With port 0 the kernel may pick a port that another SO_REUSEPORT socket of the same user
/// holds (for the kernel that is no conflict): such a port is not free, so another is tried,
/// up to [`PORT_ZERO_TRIES`] times.
pub fn bind_reuseport(addr: SocketAddr, n: usize) -> io::Result<Vec<UdpSocket>> {
    let mut tries = 0;
    loop {
        tries += 1;
        match bind_reuseport_once(addr, n) {
            Err(e)
                if e.kind() == io::ErrorKind::AddrInUse
                    && addr.port() == 0
                    && tries < PORT_ZERO_TRIES => {}
            other => return other,
        }
    }
}

/// How many ports a bind to port 0 tries before it gives up (see [`bind_reuseport`]).
pub const PORT_ZERO_TRIES: usize = 16;

fn bind_reuseport_once(addr: SocketAddr, n: usize) -> io::Result<Vec<UdpSocket>> {
    let mut addr = addr;
    let mut sockets = Vec::with_capacity(n);
    for _ in 0..n {
        let domain = Domain::for_address(addr);
        let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
        if addr.is_ipv6() && addr.ip().is_unspecified() {
            s.set_only_v6(false)?;
        }
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&addr.into())
            .map_err(|e| io::Error::new(e.kind(), format!("cannot bind UDP {addr}: {e}")))?;
        let socket: UdpSocket = s.into();
        addr = socket.local_addr()?;
        sockets.push(socket);
    }
    if let Some(foreign) = foreign_sockets(addr, &sockets)?.into_iter().next() {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            format!(
                "UDP {addr} is already bound by another socket ({foreign}) with SO_REUSEPORT: \
                 refusing to join its group and take a share of its packets; stop the other \
                 server or choose another port"
            ),
        ));
    }
    Ok(sockets)
}

/// Reads a /proc/net table in as few read(2) calls as it takes to fill a large buffer. The
/// kernel walks the table afresh from a line index at each call, so sockets closed by other
/// threads between small reads (what `read_to_string` does) shift the index and hide
/// entries; within one call it walks on without losing its place.
fn read_proc_table(path: &str) -> io::Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    String::from_utf8(buf).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// The sockets bound to `addr`'s port (on an overlapping address) that are not `ours`, as
/// `socket inode N, held by PID (COMM)` where the holder can be found, from
/// /proc/thread-self/net/udp{,6}.
fn foreign_sockets(addr: SocketAddr, ours: &[UdpSocket]) -> io::Result<Vec<String>> {
    use std::os::unix::fs::MetadataExt;
    let mut own = Vec::with_capacity(ours.len());
    for s in ours {
        // A socket's inode number is its identity in /proc/net/udp.
        let fd = s.as_fd().try_clone_to_owned()?;
        own.push(std::fs::File::from(fd).metadata()?.ino());
    }
    let mut foreign = Vec::new();
    for table in ["/proc/thread-self/net/udp", "/proc/thread-self/net/udp6"] {
        let Ok(text) = read_proc_table(table) else {
            continue;
        };
        for (ip, port, inode) in text.lines().skip(1).filter_map(parse_udp_line) {
            let overlaps = ip.is_unspecified() || addr.ip().is_unspecified() || ip == addr.ip();
            if port == addr.port() && overlaps && !own.contains(&inode) && inode != 0 {
                foreign.push(match crate::procfs::socket_holder(inode) {
                    crate::procfs::Holder::Pid(pid) => format!(
                        "socket inode {inode}, held by {}",
                        crate::procfs::describe(pid)
                    ),
                    _ => format!("socket inode {inode}"),
                });
            }
        }
    }
    Ok(foreign)
}

/// (local address, local port, inode) of a line of /proc/net/udp or udp6.
fn parse_udp_line(line: &str) -> Option<(std::net::IpAddr, u16, u64)> {
    let mut f = line.split_whitespace();
    let local = f.nth(1)?;
    let inode: u64 = f.nth(7)?.parse().ok()?;
    let (hex_ip, hex_port) = local.split_once(':')?;
    let port = u16::from_str_radix(hex_port, 16).ok()?;
    // The kernel prints the address as 32-bit words in host order.
    let words: Vec<u32> = (0..hex_ip.len() / 8)
        .map(|i| u32::from_str_radix(&hex_ip[i * 8..i * 8 + 8], 16))
        .collect::<Result<_, _>>()
        .ok()?;
    let ip = match words.as_slice() {
        [w] => std::net::IpAddr::from(w.to_ne_bytes()),
        [a, b, c, d] => {
            let mut o = [0u8; 16];
            for (i, w) in [a, b, c, d].into_iter().enumerate() {
                o[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
            }
            let v6 = std::net::Ipv6Addr::from(o);
            v6.to_ipv4_mapped().map_or(v6.into(), Into::into)
        }
        _ => return None,
    };
    Some((ip, port, inode))
}

/// Binds one socket per worker to `addr`, each on its own port when `addr`'s port is 0: a
/// client engine's workers then have distinct 4-tuples, which servers spread over their
/// workers.
pub fn bind_each(addr: SocketAddr, workers: usize) -> io::Result<Vec<UdpBackend>> {
    (0..workers)
        .map(|_| {
            let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
            if addr.is_ipv6() && addr.ip().is_unspecified() {
                s.set_only_v6(false)?;
            }
            s.bind(&addr.into())
                .map_err(|e| io::Error::new(e.kind(), format!("cannot bind UDP {addr}: {e}")))?;
            UdpBackend::new(s.into())
        })
        .collect()
}

/// The classic-BPF reuseport program for `layout`. It runs with the UDP payload at offset 0
/// and returns the index of the socket to use; an index past the group makes the kernel fall
/// back to its hash. A datagram too short to hold the worker octet goes to the hash too (a
/// load past its end would end the program with 0: socket 0 for every runt).
///
/// ```text
/// ld len                 ; the payload's length
/// jge #3 + sid_len, +0, hash
/// ldb [0]                ; first byte
/// jset #0x80, hash       ; long header: hash
/// ldb [1]                ; first octet of the DCID
/// jeq #first_octet, +0, hash
/// ldb [2 + sid_len]      ; worker octet
/// ret a
/// hash: ret #0xffffffff
/// ```
pub fn reuseport_program(layout: &CidLayout) -> [libc::sock_filter; 9] {
    const LD_LEN: u16 = (libc::BPF_LD | libc::BPF_W | libc::BPF_LEN) as u16;
    const JGE: u16 = (libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K) as u16;
    const LDB_ABS: u16 = (libc::BPF_LD | libc::BPF_B | libc::BPF_ABS) as u16;
    const JSET: u16 = (libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K) as u16;
    const JEQ: u16 = (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16;
    const RET_A: u16 = (libc::BPF_RET | libc::BPF_A) as u16;
    const RET_K: u16 = (libc::BPF_RET | libc::BPF_K) as u16;
    let op = |code, jt, jf, k| libc::sock_filter { code, jt, jf, k };
    let worker_at = 1 + layout.worker_offset() as u32;
    [
        op(LD_LEN, 0, 0, 0),
        op(JGE, 0, 6, worker_at + 1),
        op(LDB_ABS, 0, 0, 0),
        op(JSET, 4, 0, 0x80),
        op(LDB_ABS, 0, 0, 1),
        op(JEQ, 0, 2, u32::from(layout.first_octet())),
        op(LDB_ABS, 0, 0, worker_at),
        op(RET_A, 0, 0, 0),
        op(RET_K, 0, 0, u32::MAX),
    ]
}

fn attach_reuseport_program(socket: &UdpSocket, layout: &CidLayout) -> io::Result<()> {
    let mut prog = reuseport_program(layout);
    let fprog = libc::sock_fprog {
        len: prog.len() as u16,
        filter: prog.as_mut_ptr(),
    };
    // SAFETY: `fprog` points at `prog`, which outlives the call; the kernel copies the program.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&fprog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

impl UdpBackend {
    /// Moves received datagrams not yet handed out into `batch`; returns how many.
    fn drain_pending(&mut self, batch: &mut RxBatch) -> usize {
        let mut added = 0;
        let p = &mut self.pending;
        while p.msg < p.msgs && !batch.is_full() {
            let meta = &self.meta[p.msg];
            let slot = &self.buf[p.msg * SLOT..p.msg * SLOT + meta.len];
            let ecn = meta
                .ecn
                .and_then(|e| quinn_proto::EcnCodepoint::from_bits(e as u8));
            if slot.is_empty() {
                // An empty datagram: the router counts and drops it.
                batch.push(meta.addr, meta.dst_ip, ecn, &[]);
                added += 1;
                p.msg += 1;
                continue;
            }
            let stride = meta.stride.max(1);
            while p.offset < slot.len() && !batch.is_full() {
                let end = (p.offset + stride).min(slot.len());
                batch.push(meta.addr, meta.dst_ip, ecn, &slot[p.offset..end]);
                added += 1;
                p.offset = end;
            }
            if p.offset >= slot.len() {
                p.msg += 1;
                p.offset = 0;
            }
        }
        if p.msg >= p.msgs {
            *p = Pending::default();
        }
        added
    }
}

impl Backend for UdpBackend {
    /// At most 44 segments: 44 datagrams of 1,472 octets (the largest of a 1,500-octet path)
    /// fit one UDP send. The worker caps further by the connection's current MTU.
    fn max_segments(&self) -> usize {
        self.state.max_gso_segments().min(MAX_GSO_SEGMENTS)
    }

    fn recv(&mut self, batch: &mut RxBatch) -> io::Result<usize> {
        let mut added = 0;
        let mut drained = false;
        loop {
            // First what an earlier call left over (a GRO slot can hold more segments than
            // the batch had room for), then a fresh recvmmsg, unless the last one found the
            // socket's queue empty: a second would only say EAGAIN.
            added += self.drain_pending(batch);
            if batch.is_full() || self.pending.msgs > 0 || drained {
                return Ok(added);
            }
            if self.buf.is_empty() {
                self.buf.resize(SLOT * BATCH_SIZE, 0);
            }
            let mut chunks = self.buf.chunks_mut(SLOT);
            let mut slices: [IoSliceMut<'_>; BATCH_SIZE] =
                std::array::from_fn(|_| IoSliceMut::new(chunks.next().unwrap_or_default()));
            let n =
                match self
                    .state
                    .recv(UdpSockRef::from(&self.socket), &mut slices, &mut self.meta)
                {
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(added),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    // What the earlier slots gave goes first (the worker would leave it in
                    // the batch until more came).
                    Err(_) if added > 0 => return Ok(added),
                    Err(e) => return Err(e),
                };
            self.pending = Pending {
                msgs: n,
                msg: 0,
                offset: 0,
            };
            if n == 0 {
                return Ok(added);
            }
            // Fewer messages than slots: the queue was empty then.
            drained = n < BATCH_SIZE;
        }
    }

    fn send(&mut self, t: &Transmit<'_>) -> Result<(), SendError> {
        if self.renewal.due {
            self.renew_if_due(Instant::now());
        }
        let transmit = quinn_udp::Transmit {
            destination: t.destination,
            ecn: t
                .ecn
                .and_then(|e| quinn_udp::EcnCodepoint::from_bits(e as u8)),
            contents: t.contents,
            segment_size: t.segment_size,
            src_ip: t.src_ip,
        };
        // try_send: errors reach the worker's counters (send() would swallow them).
        match self
            .state
            .try_send(UdpSockRef::from(&self.socket), &transmit)
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Err(SendError::Blocked),
            Err(e) => {
                if let Some(errno @ (libc::EINVAL | libc::EIO)) = e.raw_os_error() {
                    self.after_failure(errno, t, Instant::now());
                }
                Err(SendError::Failed(e))
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn answerable_from(&mut self, ip: std::net::IpAddr, now: Instant) -> bool {
        self.local_addrs.answerable_from(ip, now)
    }

    fn wait(
        &mut self,
        deadline: Option<Instant>,
        want_write: bool,
        waker: &Waker,
    ) -> io::Result<()> {
        poll_fds(
            &mut [
                pollfd(self.socket.as_fd().as_raw_fd(), want_write),
                pollfd(waker.fd().as_raw_fd(), false),
            ],
            deadline,
        )
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    fn maps_ipv4(&self) -> bool {
        self.socket.local_addr().is_ok_and(|a| a.is_ipv6())
    }

    fn readiness(&self) -> Option<super::Readiness> {
        let fd = self.socket.as_fd().as_raw_fd();
        Some(super::Readiness {
            read: fd,
            write: fd,
        })
    }

    fn kernel_drops(&mut self) -> Option<u64> {
        kernel_drops(&self.socket).ok()
    }
}

/// A `pollfd` waiting for `fd` to be readable, and writable too when `want_write`.
pub(crate) fn pollfd(fd: std::os::fd::RawFd, want_write: bool) -> libc::pollfd {
    let events = if want_write {
        libc::POLLIN | libc::POLLOUT
    } else {
        libc::POLLIN
    };
    libc::pollfd {
        fd,
        events,
        revents: 0,
    }
}

/// `ppoll` until one of `fds` is ready or `deadline` passes (nanosecond precision).
pub(crate) fn poll_fds(fds: &mut [libc::pollfd], deadline: Option<Instant>) -> io::Result<()> {
    let ts = deadline.map(|d| {
        let left = d.saturating_duration_since(Instant::now());
        libc::timespec {
            tv_sec: left.as_secs() as libc::time_t,
            tv_nsec: left.subsec_nanos() as libc::c_long,
        }
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `fds` is a live slice of pollfd and `ts_ptr` is null or points at `ts`, which
    // lives until the call returns.
    let rc = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            ts_ptr,
            std::ptr::null(),
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the kernel's classic-BPF interpreter does with the opcodes of
    /// [`reuseport_program`], over a UDP payload: a load past its end ends the program
    /// with 0.
    fn run_cbpf(prog: &[libc::sock_filter], payload: &[u8]) -> u32 {
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = prog[pc];
            pc += 1;
            match u32::from(i.code) {
                c if c == libc::BPF_LD | libc::BPF_W | libc::BPF_LEN => a = payload.len() as u32,
                c if c == libc::BPF_LD | libc::BPF_B | libc::BPF_ABS => {
                    match payload.get(i.k as usize) {
                        Some(&b) => a = u32::from(b),
                        None => return 0,
                    }
                }
                c if c == libc::BPF_JMP | libc::BPF_JGE | libc::BPF_K => {
                    pc += usize::from(if a >= i.k { i.jt } else { i.jf })
                }
                c if c == libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K => {
                    pc += usize::from(if a == i.k { i.jt } else { i.jf })
                }
                c if c == libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K => {
                    pc += usize::from(if a & i.k != 0 { i.jt } else { i.jf })
                }
                c if c == libc::BPF_RET | libc::BPF_A => return a,
                c if c == libc::BPF_RET | libc::BPF_K => return i.k,
                other => panic!("opcode {other:#x} not in the program's set"),
            }
        }
    }

    /// The steering program picks the socket a short header's CID names, and leaves to the
    /// kernel's hash long headers, CIDs of another layout, and datagrams too short to hold
    /// the worker octet (they went to socket 0 before: a load past the end returns 0).
    #[test]
    fn the_reuseport_program_steers_by_cid_and_hashes_the_rest() {
        let layout = CidLayout::new(8, 0, &[0xaa, 0xbb], 4).unwrap();
        let prog = reuseport_program(&layout);
        let mut rng = rand::thread_rng();
        for worker in 0..4 {
            let mut cid = [0u8; 8];
            layout.write(worker, &mut rng, &mut cid);
            let mut short = vec![0x40];
            short.extend_from_slice(&cid);
            short.extend_from_slice(&[0; 20]);
            assert_eq!(run_cbpf(&prog, &short), worker as u32);
            // Just long enough: the first octet, the CID's octet 0, the server id, the
            // worker octet.
            assert_eq!(run_cbpf(&prog, &short[..5]), worker as u32);
            assert_eq!(run_cbpf(&prog, &short[..4]), u32::MAX, "too short");
        }
        let hash = u32::MAX;
        assert_eq!(run_cbpf(&prog, &[]), hash);
        assert_eq!(run_cbpf(&prog, &[0x40]), hash);
        assert_eq!(run_cbpf(&prog, &[0xc0; 40]), hash, "long header");
        assert_eq!(
            run_cbpf(&prog, &[0x40, 0x17, 0, 0, 2, 0]),
            hash,
            "another layout"
        );
    }

    /// A send from an address not the host's (one the local-address check let through)
    /// fails with EINVAL, and quinn-udp turns GSO off for the socket; the backend puts it
    /// back, and takes the address for one a reply cannot go out from. (Before, GSO stayed
    /// off for the socket's life.)
    #[test]
    fn a_send_refused_for_its_source_address_does_not_cost_the_socket_gso() {
        // IPv6: Linux refuses a foreign source with EINVAL even towards loopback (IPv4
        // says ENETUNREACH there, which quinn-udp lets be).
        let socket = UdpSocket::bind("[::1]:0").unwrap();
        let to = socket.local_addr().unwrap();
        let mut b = UdpBackend::new(socket).unwrap();
        let segments = b.max_segments();
        assert!(segments > 1, "GSO on this machine");
        let foreign: std::net::IpAddr = "2001:db8::7".parse().unwrap();
        let payload = [0u8; 2400];
        let t = transmit(to, Some(foreign), Some(1200), &payload);
        match b.send(&t) {
            Err(SendError::Failed(e)) => assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{e}"),
            other => panic!("a send from {foreign}: {other:?}"),
        }
        assert_eq!(b.max_segments(), segments, "GSO as it was");
        assert!(!b.answerable_from(foreign, Instant::now()), "known now");
        // And a send from the socket's own address goes, in GSO batches still.
        let own = Transmit { src_ip: None, ..t };
        assert!(b.send(&own).is_ok());
        assert_eq!(b.max_segments(), segments);

        // A flood of refused replies rebuilds the state once a second, not once a reply:
        // the second address within the second leaves GSO off (the second made long, so
        // that a slow machine does not see it pass)...
        b.renewal.not_before = Some(Instant::now() + std::time::Duration::from_secs(3600));
        let other: std::net::IpAddr = "2001:db8::8".parse().unwrap();
        let t2 = Transmit {
            src_ip: Some(other),
            ..t
        };
        assert!(matches!(b.send(&t2), Err(SendError::Failed(_))));
        assert_eq!(b.max_segments(), 1, "no second rebuild within the second");
        assert!(b.renewal.due);
        assert!(b.send(&own).is_ok());
        assert_eq!(b.max_segments(), 1, "still within the second");
        // ...until the first send past it, which makes the rebuild held back.
        b.renewal.not_before = Some(Instant::now() - std::time::Duration::from_millis(1));
        assert!(b.send(&own).is_ok());
        assert_eq!(b.max_segments(), segments, "GSO back past the second");
        assert!(!b.renewal.due);

        // A send that fails for another cause (EIO here stands for a NIC that refuses GSO)
        // ends the rebuilds: GSO is off for a reason a rebuild would only bring back.
        b.after_failure(libc::EIO, &own, Instant::now());
        assert!(b.renewal.never);
        b.renewal.not_before = None;
        assert!(matches!(b.send(&t2), Err(SendError::Failed(_))));
        assert_eq!(b.max_segments(), 1, "no rebuild once GSO failed on its own");
        assert!(!b.renewal.due);
    }

    /// A transmit of `contents` to `destination`, from `src_ip` (none: the socket's own).
    fn transmit<'a>(
        destination: SocketAddr,
        src_ip: Option<std::net::IpAddr>,
        segment_size: Option<usize>,
        contents: &'a [u8],
    ) -> Transmit<'a> {
        Transmit {
            destination,
            src_ip,
            ecn: None,
            segment_size,
            contents,
            link: None,
        }
    }

    /// A refused reply of one datagram (no GSO asked) renews the state too: the EINVAL turned
    /// quinn-udp's IPv4 ECN marks off as well as GSO, whether the socket had GSO or not.
    #[test]
    fn a_refused_reply_of_one_datagram_renews_the_state() {
        let socket = UdpSocket::bind("[::1]:0").unwrap();
        let to = socket.local_addr().unwrap();
        let mut b = UdpBackend::new(socket).unwrap();
        let segments = b.max_segments();
        let payload = [0u8; 100];
        let t = transmit(to, Some("2001:db8::9".parse().unwrap()), None, &payload);
        assert!(matches!(b.send(&t), Err(SendError::Failed(_))));
        assert_eq!(b.max_segments(), segments, "GSO as it was");
        assert!(!b.renewal.due && !b.renewal.never);
        // A datagram the kernel refuses for another cause than its source (here: to port 0
        // of a peer, which IPv6 refuses with EINVAL too) is not taken for a NIC's failure:
        // it renews the state (once a second), it does not end the renewals.
        b.renewal.not_before = None;
        let to_port_0 = Transmit {
            destination: SocketAddr::new(to.ip(), 0),
            src_ip: None,
            ..t
        };
        match b.send(&to_port_0) {
            Err(SendError::Failed(e)) => assert_eq!(e.raw_os_error(), Some(libc::EINVAL)),
            other => panic!("a send to port 0: {other:?}"),
        }
        assert!(!b.renewal.never);
        assert_eq!(b.max_segments(), segments, "GSO back");
    }

    #[test]
    fn group_binds_one_port_and_steers_by_cid() {
        let layout = CidLayout::for_workers(3).unwrap();
        let (group, steering) = bind_group("127.0.0.1:0".parse().unwrap(), 3, &layout).unwrap();
        let port = group[0].local_addr().unwrap().port();
        assert!(group.iter().all(|b| b.local_addr().unwrap().port() == port));
        assert_eq!(steering, Steering::CidProgram);
    }

    #[test]
    fn a_group_refuses_a_port_another_reuseport_socket_holds() {
        // Another server (here: a socket of this process we do not count as ours) bound the
        // port with SO_REUSEPORT: joining its group would split its packets with it.
        let other = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
        other.set_reuse_port(true).unwrap();
        other
            .bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into())
            .unwrap();
        let port = other.local_addr().unwrap().as_socket().unwrap().port();
        let layout = CidLayout::for_workers(2).unwrap();
        for addr in [format!("127.0.0.1:{port}"), format!("0.0.0.0:{port}")] {
            let err = bind_group(addr.parse().unwrap(), 2, &layout).unwrap_err();
            let msg = err.to_string();
            assert_eq!(err.kind(), io::ErrorKind::AddrInUse, "{msg}");
            assert!(msg.contains("already bound by another socket"), "{msg}");
            assert!(
                msg.contains(&format!("pid {}", std::process::id())),
                "{msg}"
            );
        }
        drop(other);
        // Free again: the group binds, and its own sockets are not foreign to it.
        let (group, _) =
            bind_group(format!("127.0.0.1:{port}").parse().unwrap(), 2, &layout).unwrap();
        assert_eq!(group.len(), 2);
    }

    #[test]
    fn proc_net_udp_lines_parse() {
        let v4 = "  123: 0100007F:115C 00000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 424242 2 0000000000000000 0";
        assert_eq!(
            parse_udp_line(v4),
            Some(("127.0.0.1".parse().unwrap(), 4444, 424242))
        );
        let v6 = "  5: 00000000000000000000000000000000:115C 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 77 2 0000000000000000 0";
        assert_eq!(parse_udp_line(v6), Some(("::".parse().unwrap(), 4444, 77)));
        assert_eq!(parse_udp_line("garbage"), None);
    }

    #[test]
    fn the_kernel_drop_counter_counts_a_full_receive_buffer() {
        let rx = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket2::SockRef::from(&rx).set_recv_buffer_size(1).unwrap();
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(kernel_drops(&rx).unwrap(), 0);
        for _ in 0..64 {
            tx.send_to(&[0u8; 1200], rx.local_addr().unwrap()).unwrap();
        }
        // Loopback delivers synchronously inside send: the drops are counted by now.
        assert!(kernel_drops(&rx).unwrap() > 0);
    }

    #[test]
    fn bind_conflict_is_a_clear_error() {
        let taken = UdpSocket::bind("127.0.0.1:0").unwrap();
        let layout = CidLayout::for_workers(1).unwrap();
        let err = bind_group(taken.local_addr().unwrap(), 1, &layout).unwrap_err();
        assert!(err.to_string().contains("cannot bind UDP"), "{err}");
    }
}
