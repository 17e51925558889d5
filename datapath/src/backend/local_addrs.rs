//! Which local addresses a reply can go out from through a kernel socket: the host's own
//! addresses, and no broadcast address (a subnet's directed broadcast, 10.0.0.255 on a /24,
//! loopback's 127.255.255.255). A datagram can be sent to a broadcast address (the kernel
//! delivers it to a socket bound to the unspecified address), and over AF_XDP a frame may
//! name any destination at all (any sender on the link can make one); but Linux refuses a
//! send from such an address (IP_PKTINFO, IPV6_PKTINFO) with EINVAL, which quinn-udp takes
//! for a NIC without segmentation offload and without ECN, and turns both off for the
//! socket's life. So a worker drops such datagrams, asking [`LocalAddrs::answerable_from`]
//! per datagram.
//!
//! Only the kernel knows (an interface's prefix alone misses loopback's broadcast address,
//! secondary addresses, and a network address that a route makes a broadcast one). Asked
//! without netlink and without sending anything: a `sendmsg` with `MSG_PROBE` (route and
//! checks, no packet) from the address (in IP_PKTINFO / IPV6_PKTINFO) to itself fails for
//! exactly the addresses a reply could not go out from.
//!
//! The question must be asked in the network namespace of the sockets that send the replies,
//! which a worker's thread need not be in (a client engine's sockets may be made in another
//! namespace than the thread that starts it). So the probe sockets are made when the backend
//! is, [`LocalAddrs::beside`] its socket: in that socket's namespace (a socket stays in the
//! namespace it was made in).
//!
//! Answers are cached, so a worker asks once per address it sees, not per datagram; and
//! the questions are budgeted, so a flood of frames to ever new addresses (over AF_XDP) costs
//! a question for 1 in 256 of its datagrams at most, not one per packet: past the budget of
//! 256, an address not in the caches is taken for answerable (no check, as before it), until
//! the caches are emptied and the budget renewed, every second or every 65,536 datagrams,
//! whichever comes first (so an address that became the host's, a service address moved
//! back, is answered again within a second). A reply that goes out from such an address
//! anyway (past the budget) fails with EINVAL, a syscall spent on a reply that could not go;
//! the UDP backend then asks about its source ([`LocalAddrs::refuses`], one more) and, if
//! that was the cause, renews the socket's state (GSO and ECN back), at most once a second:
//! such replies cost themselves, not the socket.
//! An IPv6 link-local address is asked on its interface where the backend names one
//! ([`LocalAddrs::on_link`]: AF_XDP's queue's interface, where a frame may name any such
//! address); elsewhere it is answerable (the kernel delivers a datagram to one only if it is
//! the host's).

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV6};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, Socket, Type};

/// Addresses cached per answer. A host has few addresses of its own.
const CACHED: usize = 64;

/// Lookups after which the caches are emptied and the budget renewed, so that an address
/// that changed roles (the host renumbered) is asked again.
const REFRESH_EVERY: u32 = 1 << 16;

/// Time after which the caches are emptied and the budget renewed, whatever the lookups.
const REFRESH_AFTER: Duration = Duration::from_secs(1);

/// Questions to the kernel per refresh: at most 1 in 256 datagrams (a refresh every 65,536
/// of them), and 256 a second when fewer come.
const QUESTIONS: u32 = 256;

/// `sendmsg(2)` flag: route and check, send nothing (linux/socket.h; not in the libc
/// crate).
const MSG_PROBE: libc::c_int = 0x10;

/// `getsockopt(2)` option: the socket's network namespace cookie (asm-generic/socket.h).
const SO_NETNS_COOKIE: libc::c_int = 71;

/// `ioctl(2)` request for a descriptor of a socket's network namespace (linux/sockios.h).
const SIOCGSKNS: libc::c_ulong = 0x894C;

/// The answers of one worker.
#[derive(Debug, Default)]
pub struct LocalAddrs {
    /// Made in the namespace of the sockets whose replies are asked about. `None` where
    /// that family's sockets cannot be made there (then its addresses are taken for
    /// answerable, as without this check).
    v4: Option<Socket>,
    v6: Option<Socket>,
    /// Addresses a reply can go out from.
    own: Vec<IpAddr>,
    /// Addresses it cannot.
    others: Vec<IpAddr>,
    lookups: u32,
    questions: u32,
    /// When the caches were last emptied (`None`: not yet).
    refreshed: Option<Instant>,
    /// The interface IPv6 link-local addresses are asked on (`None`: they are answerable).
    link: Option<u32>,
}

impl LocalAddrs {
    /// Probes made in the calling thread's network namespace.
    pub fn here() -> Self {
        let probe = |domain| {
            let s = Socket::new(domain, Type::DGRAM, None).ok()?;
            if domain == Domain::IPV6 {
                s.set_only_v6(true).ok()?;
            }
            // It never reads: whatever reaches the port it takes at its first probe is
            // dropped once this (the smallest) buffer is full.
            let _ = s.set_recv_buffer_size(0);
            Some(s)
        };
        let v4 = probe(Domain::IPV4);
        if v4.is_none() {
            tracing::warn!(
                "no IPv4 socket to tell the host's addresses with: datagrams sent to an \
                 address a reply cannot go out from are not recognised"
            );
        }
        Self {
            v4,
            v6: probe(Domain::IPV6),
            ..Self::default()
        }
    }

    /// Probes made in `socket`'s network namespace: in the calling thread's when it is that
    /// one, else on a short-lived thread that enters it (CAP_SYS_ADMIN; without it, no
    /// probes: every address is answerable). The namespaces are told apart by their cookies
    /// (`SO_NETNS_COOKIE`, Linux 5.14, no privilege needed), else by the namespace itself
    /// (`SIOCGSKNS`, CAP_NET_ADMIN); where neither tells, the thread's is taken.
    pub fn beside(socket: &impl AsFd) -> Self {
        let here = Self::here();
        let Some(mine) = here.v4.as_ref().or(here.v6.as_ref()) else {
            return here;
        };
        let same = match (netns_cookie(mine), netns_cookie(socket)) {
            (Some(a), Some(b)) => Some(a == b),
            _ => match (netns_of(mine), netns_of(socket)) {
                (Some((_, a)), Some((_, b))) => Some(a == b),
                // Nothing tells: probes in the wrong namespace would drop the host's own
                // traffic, so none.
                (None, None) => None,
                // Allowed in one namespace and not the other: not the same one.
                _ => Some(false),
            },
        };
        match same {
            Some(true) => return here,
            None => {
                tracing::warn!(
                    "cannot tell whether the sockets' network namespace is this thread's \
                     (Linux before 5.14, no CAP_NET_ADMIN): datagrams sent to an address a \
                     reply cannot go out from are not recognised"
                );
                return Self::default();
            }
            Some(false) => {}
        }
        let Some((ns, _)) = netns_of(socket) else {
            tracing::warn!(
                "the sockets' network namespace is not this thread's and cannot be entered \
                 (CAP_NET_ADMIN): datagrams sent to an address a reply cannot go out from are \
                 not recognised"
            );
            return Self::default();
        };
        std::thread::scope(|s| {
            match std::thread::Builder::new().spawn_scoped(s, || Self::entering(&ns)) {
                Ok(t) => t.join().unwrap_or_default(),
                Err(e) => {
                    tracing::warn!(
                        "cannot start a thread to enter the sockets' network namespace \
                         ({e}): datagrams sent to an address a reply cannot go out from are \
                         not recognised"
                    );
                    Self::default()
                }
            }
        })
    }

    /// IPv6 link-local addresses are asked on interface `ifindex` (where they are taken
    /// from, over AF_XDP), rather than taken for answerable.
    pub fn on_link(mut self, ifindex: u32) -> Self {
        self.link = Some(ifindex);
        self
    }

    /// On a thread of its own: enters `ns` (that thread stays there until it ends) and makes
    /// the probes there.
    fn entering(ns: &OwnedFd) -> Self {
        // SAFETY: `ns` is an open namespace descriptor; setns changes only this thread's
        // namespace, and this thread ends after making the probes.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            let e = io::Error::last_os_error();
            tracing::warn!(
                "cannot enter the sockets' network namespace ({e}): datagrams sent to an \
                 address a reply cannot go out from are not recognised"
            );
            return Self::default();
        }
        Self::here()
    }

    /// Whether a reply can go out from `ip` (the local address a datagram was sent to)
    /// through a kernel socket of the probes' network namespace: one of the host's own
    /// addresses, not a broadcast address. Answers from the caches; asks the kernel (one
    /// syscall, within the budget) for an address they do not hold. `now` is the caller's
    /// clock (the worker's turn): no clock is read here.
    pub fn answerable_from(&mut self, ip: IpAddr, now: Instant) -> bool {
        self.lookups += 1;
        let due = self
            .refreshed
            .is_none_or(|at| now.saturating_duration_since(at) >= REFRESH_AFTER);
        if self.lookups >= REFRESH_EVERY || due {
            self.lookups = 0;
            self.questions = 0;
            self.own.clear();
            self.others.clear();
            self.refreshed = Some(now);
        }
        if answerable_unasked(ip) || (is_link_local(ip) && self.link.is_none()) {
            return true;
        }
        if self.own.contains(&ip) {
            return true;
        }
        if self.others.contains(&ip) {
            return false;
        }
        if self.questions >= QUESTIONS {
            // Rather answer than drop what may be the host's own traffic.
            return true;
        }
        let Some(probe) = self.probe_for(ip) else {
            // Not asked, not counted.
            return true;
        };
        let probed = probe_from(probe, ip, self.link);
        self.questions += 1;
        let Some(answer) = verdict(probed) else {
            return true;
        };
        let cache = if answer {
            &mut self.own
        } else {
            &mut self.others
        };
        if cache.len() < CACHED {
            cache.push(ip);
        }
        answer
    }

    /// Whether the kernel says a reply cannot go out from `ip` (`Some(true)`, cached so) or
    /// can (`Some(false)`), asked now whatever the budget (after a send from it failed: one
    /// question per failed send); `None` where it cannot be asked: no probe for the family,
    /// loopback, a link-local address without the interface to ask it on (the probe would
    /// refuse any for want of one), or a probe that tells nothing.
    pub fn refuses(&mut self, ip: IpAddr) -> Option<bool> {
        if answerable_unasked(ip) || (is_link_local(ip) && self.link.is_none()) {
            return None;
        }
        let probe = self.probe_for(ip)?;
        if verdict(probe_from(probe, ip, self.link))? {
            return Some(false);
        }
        self.own.retain(|&a| a != ip);
        if !self.others.contains(&ip) && self.others.len() < CACHED {
            self.others.push(ip);
        }
        Some(true)
    }

    /// The probe socket of `ip`'s family, if there is one.
    fn probe_for(&self, ip: IpAddr) -> Option<&Socket> {
        match ip {
            IpAddr::V4(_) => self.v4.as_ref(),
            IpAddr::V6(_) => self.v6.as_ref(),
        }
    }
}

/// The kernel's answer from a probe; `None` if it tells nothing.
fn verdict(probed: io::Result<()>) -> Option<bool> {
    match probed {
        Ok(()) => Some(true),
        Err(e) => match e.raw_os_error() {
            // Not the host's (EINVAL, ENETUNREACH, EADDRNOTAVAIL, by family and kernel
            // version), or a broadcast address (EACCES: the probe may not broadcast).
            Some(
                libc::EINVAL
                | libc::ENETUNREACH
                | libc::EHOSTUNREACH
                | libc::EADDRNOTAVAIL
                | libc::EACCES,
            ) => Some(false),
            _ => None,
        },
    }
}

/// Loopback's addresses, which a reply can go out from without asking: all of 127.0.0.0/8
/// but its broadcast address, 127.255.255.255 (asked, as any other), and ::1.
fn answerable_unasked(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => a.is_loopback() && a != Ipv4Addr::new(127, 255, 255, 255),
        IpAddr::V6(a) => a.is_loopback(),
    }
}

/// Whether `ip` is an IPv6 link-local unicast address (fe80::/10), which names no link of
/// its own: a reply from one must be given its interface.
pub(crate) fn is_link_local(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V6(a) if a.is_unicast_link_local())
}

/// Sends nothing from `ip` to `ip` port 9 on `probe` (of `ip`'s family) with `MSG_PROBE`:
/// the kernel routes and checks the source address as for a reply, and sends no packet. An
/// IPv6 link-local address is asked on interface `link` (both ends scoped to it).
fn probe_from(probe: &Socket, ip: IpAddr, link: Option<u32>) -> io::Result<()> {
    let scope = match ip {
        IpAddr::V6(a) if is_link_local(ip) => link.map(|i| (a, i)),
        _ => None,
    };
    let to = SockAddr::from(match scope {
        Some((a, i)) => SocketAddr::V6(SocketAddrV6::new(a, 9, 0, i)),
        None => SocketAddr::new(ip, 9),
    });
    let ifindex = scope.map_or(0, |(_, i)| i);
    // Room for one control message of either family, aligned for `cmsghdr`.
    let mut control = [0u64; 8];
    let (level, kind, info_len) = match ip {
        IpAddr::V4(_) => (
            libc::IPPROTO_IP,
            libc::IP_PKTINFO,
            std::mem::size_of::<libc::in_pktinfo>(),
        ),
        IpAddr::V6(_) => (
            libc::IPPROTO_IPV6,
            libc::IPV6_PKTINFO,
            std::mem::size_of::<libc::in6_pktinfo>(),
        ),
    };
    // SAFETY: an all-zero msghdr is valid (no name, no buffers, no control).
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_name = to.as_ptr() as *mut libc::c_void;
    msg.msg_namelen = to.len();
    msg.msg_control = control.as_mut_ptr().cast();
    // SAFETY: CMSG_SPACE only computes.
    msg.msg_controllen = unsafe { libc::CMSG_SPACE(info_len as u32) } as usize;
    debug_assert!(msg.msg_controllen <= std::mem::size_of_val(&control));
    // SAFETY: `msg_control` points at `control`, 64 octets aligned for `cmsghdr`, and
    // `msg_controllen` (at most 40 octets) fits in it, so the first header and its data
    // (`info_len` octets) are inside `control`; the data is written unaligned.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = level;
        (*c).cmsg_type = kind;
        (*c).cmsg_len = libc::CMSG_LEN(info_len as u32) as usize;
        let data = libc::CMSG_DATA(c);
        match ip {
            IpAddr::V4(a) => data
                .cast::<libc::in_pktinfo>()
                .write_unaligned(libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from_ne_bytes(a.octets()),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                }),
            IpAddr::V6(a) => data
                .cast::<libc::in6_pktinfo>()
                .write_unaligned(libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: a.octets(),
                    },
                    ipi6_ifindex: ifindex,
                }),
        }
    }
    // SAFETY: `msg` and everything it points at (`to`, `control`) live across the call; no
    // buffer is read (no iovec).
    let rc = unsafe { libc::sendmsg(probe.as_raw_fd(), &msg, MSG_PROBE) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The cookie of `socket`'s network namespace (unique for the system's life); `None` on
/// kernels before 5.14.
fn netns_cookie(socket: &impl AsFd) -> Option<u64> {
    let mut cookie = 0u64;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` octets into the live `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_fd().as_raw_fd(),
            libc::SOL_SOCKET,
            SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize == std::mem::size_of::<u64>()).then_some(cookie)
}

/// A descriptor of `socket`'s network namespace and its identity (device, inode); `None`
/// if the kernel does not tell (no CAP_NET_ADMIN, or a kernel before 4.9).
fn netns_of(socket: &impl AsFd) -> Option<(OwnedFd, (u64, u64))> {
    let fd: BorrowedFd<'_> = socket.as_fd();
    // SAFETY: SIOCGSKNS takes no argument and returns a new descriptor, or -1.
    let ns = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCGSKNS as _) };
    if ns < 0 {
        return None;
    }
    // SAFETY: `ns` is a descriptor the kernel just opened for us, owned by nobody else.
    let ns = unsafe { OwnedFd::from_raw_fd(ns) };
    // SAFETY: an all-zero stat is valid; fstat fills it.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `ns` is open and `st` is a live, writable stat.
    if unsafe { libc::fstat(ns.as_raw_fd(), &mut st) } != 0 {
        return None;
    }
    Some((ns, (st.st_dev, st.st_ino)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn start() -> Instant {
        Instant::now()
    }

    /// Loopback's addresses are answerable without a question; 255.255.255.255 and an
    /// address the host does not have (TEST-NET-3, documentation's IPv6 prefix) are not;
    /// answers are cached and asked again after a refresh.
    #[test]
    fn the_kernel_tells_foreign_and_broadcast_addresses_and_answers_are_cached() {
        let now = start();
        let mut b = LocalAddrs::here();
        let other = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 7));
        let other6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 7));
        let bcast = IpAddr::V4(Ipv4Addr::BROADCAST);
        assert!(b.answerable_from(Ipv4Addr::LOCALHOST.into(), now));
        assert!(b.answerable_from(Ipv6Addr::LOCALHOST.into(), now));
        assert_eq!(b.questions, 0, "loopback needs no question");
        // But for its broadcast address, which the kernel refuses a reply from.
        let lo_bcast = IpAddr::V4(Ipv4Addr::new(127, 255, 255, 255));
        assert!(!b.answerable_from(lo_bcast, now));
        assert_eq!(b.questions, 1);
        assert_eq!(b.refuses(lo_bcast), Some(true));
        b.others.retain(|&a| a != lo_bcast);
        b.questions = 0;
        assert!(!b.answerable_from(bcast, now));
        assert!(!b.answerable_from(other, now));
        if b.v6.is_some() {
            assert!(!b.answerable_from(other6, now));
        }
        assert_eq!(&b.others[..2], [bcast, other]);
        let asked = b.questions;
        // From the caches: no new question.
        assert!(!b.answerable_from(bcast, now));
        assert!(!b.answerable_from(other, now));
        assert_eq!(b.questions, asked);
        b.lookups = REFRESH_EVERY - 1;
        assert!(b.answerable_from(Ipv4Addr::LOCALHOST.into(), now));
        assert!(
            b.others.is_empty() && b.questions == 0,
            "emptied, budget renewed"
        );
    }

    /// An address of the host's (whichever this machine's interfaces have: the probe's
    /// source towards TEST-NET-3, if it has a route there) is answerable.
    #[test]
    fn the_hosts_own_address_is_answerable() {
        let now = start();
        let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
        if s.connect("203.0.113.7:9").is_err() {
            return; // no route off this host: nothing but loopback to ask about
        }
        let mine = s.local_addr().unwrap().ip();
        let mut b = LocalAddrs::beside(&s);
        assert!(b.answerable_from(mine, now), "{mine}");
        assert_eq!(b.own, [mine]);
    }

    /// The caches and the questions are bounded: past the budget, an address the caches
    /// do not hold is answered without a syscall.
    #[test]
    fn the_caches_and_the_questions_are_bounded() {
        let now = start();
        let mut b = LocalAddrs::here();
        for i in 0..QUESTIONS {
            assert!(!b.answerable_from(Ipv4Addr::from(0xcb00_7100 + i).into(), now));
        }
        assert_eq!(b.others.len(), CACHED);
        assert_eq!(b.questions, QUESTIONS);
        assert!(
            b.answerable_from(Ipv4Addr::BROADCAST.into(), now),
            "over budget: not asked"
        );
        assert_eq!(b.questions, QUESTIONS);
    }

    /// The caches are emptied and the budget renewed a second after the last refresh,
    /// whatever the lookups: an address that was not the host's is asked again (a service
    /// address moved back to this host is answered within a second).
    #[test]
    fn answers_are_asked_again_after_a_second() {
        let now = start();
        let mut b = LocalAddrs::here();
        let other = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));
        assert!(!b.answerable_from(other, now));
        assert_eq!(b.questions, 1);
        assert!(!b.answerable_from(other, now + REFRESH_AFTER / 2));
        assert_eq!(b.questions, 1, "cached within the second");
        assert!(!b.answerable_from(other, now + REFRESH_AFTER));
        assert_eq!((b.questions, b.lookups), (1, 0), "emptied, asked again");
    }

    /// An address of a family without a probe socket is answerable, and spends no budget.
    #[test]
    fn a_family_without_a_probe_spends_no_budget() {
        let now = start();
        let mut b = LocalAddrs::here();
        b.v6 = None;
        let other6 = IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 9));
        for _ in 0..QUESTIONS + 1 {
            assert!(b.answerable_from(other6, now));
        }
        assert_eq!(b.questions, 0);
    }

    /// A link-local address is answerable without a question unless the backend names its
    /// interface; then it is asked there: loopback has no link-local address, so one is not
    /// the host's on it.
    #[test]
    fn link_local_addresses_are_asked_on_the_named_interface() {
        let now = start();
        let ll = IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0x99));
        let mut b = LocalAddrs::here();
        assert!(b.answerable_from(ll, now));
        assert_eq!(b.questions, 0);
        // Nor does a failed send from one blame its source: without an interface the probe
        // would refuse any link-local address.
        assert_eq!(b.refuses(ll), None);
        assert!(b.answerable_from(ll, now));
        if b.v6.is_none() {
            return; // no IPv6 here
        }
        let lo = 1; // loopback's index
        let mut b = LocalAddrs::here().on_link(lo);
        assert!(!b.answerable_from(ll, now), "not an address of loopback");
        assert_eq!(b.questions, 1);
        assert_eq!(b.refuses(ll), Some(true), "asked on the interface");
    }
}
