//! Which IPv4 addresses a reply cannot go out from: broadcast addresses of the host (a
//! subnet's directed broadcast, 10.0.0.255 on a /24, loopback's 127.255.255.255, any the
//! local routing table lists as `broadcast`). A datagram can be sent to one (the kernel
//! delivers it to a socket bound to the unspecified address), but Linux refuses a send from
//! it (IP_PKTINFO) with EINVAL, which quinn-udp takes for a NIC without segmentation offload
//! and without ECN, and turns both off for the socket's life. So a worker drops such
//! datagrams, asking [`LocalAddrs::answerable_from`] per datagram.
//!
//! Only the kernel's routing table knows (an interface's prefix alone misses loopback's
//! broadcast address, and the network address where a route makes it a broadcast one).
//! Asked without netlink: connecting a socket that may not broadcast to a broadcast address
//! fails with EACCES, and to any other address succeeds. No packet is sent. The question is
//! asked in the calling thread's network namespace, which must be the sockets' (a worker's
//! thread is where its engine was started); from another namespace, the answer is always
//! "answerable", as without this check, never the reverse.
//!
//! Answers are cached, so a worker asks once per address it sees, not per datagram; and
//! the questions are budgeted, so a flood of frames to ever new addresses (over AF_XDP) costs
//! no syscall per packet: past the budget, an address not in the caches is taken for
//! answerable (no check, as before it), until the caches are emptied and the budget renewed.
//!
//! Not asked: whether the address is the host's at all. Over AF_XDP a frame may name any
//! destination; a reply from an address not the host's fails the same way. (Binding a
//! socket to the address would tell, but only in the sockets' namespace, which a worker's
//! thread need not be in: a client engine's sockets may be made in another.)

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Socket, Type};

/// Addresses cached per answer. A host has few addresses of its own.
const CACHED: usize = 64;

/// Lookups after which the caches are emptied and the budget renewed, so that an address
/// that changed roles (the host renumbered) is asked again.
const REFRESH_EVERY: u32 = 1 << 16;

/// Questions to the kernel per [`REFRESH_EVERY`] lookups (at most 1 in 256 datagrams).
const QUESTIONS: u32 = 256;

/// The answers of one worker.
#[derive(Debug, Default)]
pub struct LocalAddrs {
    /// Made at the first question, on the calling thread (so in its network namespace):
    /// connected to each address asked. `None` before, or where IPv4 sockets cannot be made
    /// (then every address is taken for answerable, as without this check).
    probe: Option<Socket>,
    unavailable: bool,
    /// Addresses a reply can go out from.
    own: Vec<Ipv4Addr>,
    /// Broadcast addresses.
    others: Vec<Ipv4Addr>,
    lookups: u32,
    questions: u32,
}

impl LocalAddrs {
    /// Whether a reply can go out from `ip` (the local address a datagram was sent to)
    /// through a kernel socket in this thread's network namespace: not a broadcast address.
    /// Answers from the caches; asks the kernel (one syscall, within the budget) for an
    /// address they do not hold.
    pub fn answerable_from(&mut self, ip: Ipv4Addr) -> bool {
        self.lookups += 1;
        if self.lookups >= REFRESH_EVERY {
            self.lookups = 0;
            self.questions = 0;
            self.own.clear();
            self.others.clear();
        }
        if self.own.contains(&ip) || ip.is_loopback() {
            return true;
        }
        if self.others.contains(&ip) {
            return false;
        }
        if self.questions >= QUESTIONS {
            // Rather answer than drop what may be the host's own traffic.
            return true;
        }
        self.questions += 1;
        let Some(answer) = self.ask(ip) else {
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

    /// The kernel's answer for `ip`; `None` if it could not be asked.
    fn ask(&mut self, ip: Ipv4Addr) -> Option<bool> {
        if self.unavailable {
            return None;
        }
        if self.probe.is_none() {
            match Socket::new(Domain::IPV4, Type::DGRAM, None) {
                Ok(s) => self.probe = Some(s),
                Err(e) => {
                    tracing::warn!(
                        "no IPv4 socket to tell the host's addresses with ({e}): datagrams \
                         sent to a broadcast address are not recognised"
                    );
                    self.unavailable = true;
                    return None;
                }
            }
        }
        // Port 9 (discard): any port does, nothing is sent.
        let at = |port| SocketAddr::V4(SocketAddrV4::new(ip, port));
        let probe = self.probe.as_ref()?;
        match probe.connect(&at(9).into()) {
            Ok(()) => Some(true),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Some(false),
            Err(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loopback's addresses and an address the host does not have (TEST-NET-3) are
    /// answerable; 255.255.255.255 is not; answers are cached and asked again after a
    /// refresh.
    #[test]
    fn the_kernel_tells_broadcast_addresses_and_answers_are_cached() {
        let mut b = LocalAddrs::default();
        let other = Ipv4Addr::new(203, 0, 113, 7);
        assert!(b.answerable_from(Ipv4Addr::LOCALHOST));
        assert!(!b.answerable_from(Ipv4Addr::BROADCAST));
        assert!(b.answerable_from(other));
        assert_eq!(b.others, [Ipv4Addr::BROADCAST]);
        assert_eq!(b.questions, 2, "loopback needs no question");
        // From the caches: no new question.
        assert!(!b.answerable_from(Ipv4Addr::BROADCAST));
        assert!(b.answerable_from(other));
        assert_eq!(b.questions, 2);
        b.lookups = REFRESH_EVERY - 1;
        assert!(b.answerable_from(Ipv4Addr::LOCALHOST));
        assert!(
            b.others.is_empty() && b.questions == 0,
            "emptied, budget renewed"
        );
    }

    /// The caches and the questions are bounded: past the budget, an address the caches
    /// do not hold is answered without a syscall.
    #[test]
    fn the_caches_and_the_questions_are_bounded() {
        let mut b = LocalAddrs::default();
        for i in 0..QUESTIONS {
            assert!(b.answerable_from(Ipv4Addr::from(0xcb00_7100 + i)));
        }
        assert_eq!(b.own.len(), CACHED);
        assert_eq!(b.questions, QUESTIONS);
        assert!(
            b.answerable_from(Ipv4Addr::BROADCAST),
            "over budget: not asked"
        );
        assert_eq!(b.questions, QUESTIONS);
    }
}
