//! Which local IPv4 addresses are broadcast addresses: a subnet's directed broadcast
//! (10.0.0.255 on a /24), loopback's 127.255.255.255, any the local routing table lists as
//! `broadcast`. A datagram can be sent to one (the kernel delivers it to a socket bound to
//! the unspecified address), but no answer can come from one: Linux refuses a send from it
//! with EINVAL, which quinn-udp takes for a NIC without segmentation offload and without
//! ECN, and turns both off for the socket's life. So a worker drops such datagrams, asking
//! [`Broadcasts::is_broadcast`] per datagram.
//!
//! Only the kernel's routing table knows (an interface's prefix alone misses loopback's and
//! the network address where a route makes it one). The probe asks it without netlink:
//! connecting a UDP socket that may not broadcast to a broadcast address fails with EACCES,
//! and to any other address succeeds (no packet is sent). Answers are cached, so a worker
//! makes the syscall once per local address it sees, not per datagram. The probe is one
//! descriptor per worker, made at the first question; connecting binds it to an ephemeral
//! port, where it reads nothing.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use socket2::{Domain, Socket, Type};

/// Addresses cached per answer. A host has few local addresses, and only those (and their
/// broadcast addresses, and multicast groups, which the worker drops anyway) reach its
/// sockets; beyond this, the rest are asked each time.
const CACHED: usize = 64;

/// Lookups after which the caches are emptied, so that an address that changed roles (the
/// host renumbered) is asked again.
const REFRESH_EVERY: u32 = 1 << 16;

/// The probe of one worker, with its caches.
#[derive(Debug, Default)]
pub struct Broadcasts {
    /// Made at the first question, on the calling thread (so in its network namespace: a
    /// worker's thread is in its sockets'). `None` before, or where IPv4 sockets cannot be
    /// made (then nothing is taken for a broadcast address).
    probe: Option<Socket>,
    /// The probe could not be made: asked no more.
    unavailable: bool,
    unicast: Vec<Ipv4Addr>,
    broadcast: Vec<Ipv4Addr>,
    lookups: u32,
}

impl Broadcasts {
    /// Whether `ip`, the local address a datagram was sent to, is a broadcast address in
    /// this thread's network namespace. Answers from the caches; asks the kernel (one
    /// syscall) for an address they do not hold.
    pub fn is_broadcast(&mut self, ip: Ipv4Addr) -> bool {
        self.lookups += 1;
        if self.lookups >= REFRESH_EVERY {
            self.lookups = 0;
            self.unicast.clear();
            self.broadcast.clear();
        }
        if self.unicast.contains(&ip) {
            return false;
        }
        if self.broadcast.contains(&ip) {
            return true;
        }
        let Some(answer) = self.ask(ip) else {
            return false;
        };
        let cache = if answer {
            &mut self.broadcast
        } else {
            &mut self.unicast
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
                        "no IPv4 socket to tell broadcast addresses with ({e}): datagrams \
                         sent to one are not recognised"
                    );
                    self.unavailable = true;
                    return None;
                }
            }
        }
        let probe = self.probe.as_ref()?;
        // Port 9 (discard): any port does, nothing is sent.
        let to = SocketAddr::V4(SocketAddrV4::new(ip, 9));
        match probe.connect(&to.into()) {
            Ok(()) => Some(false),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => Some(true),
            // No route (an address the host does not have any more): not a broadcast one.
            Err(_) => Some(false),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loopback's own address is not a broadcast address; 255.255.255.255 always is (the
    /// worker drops it by itself, but the kernel's answer must agree); answers are cached
    /// and asked again after a refresh.
    #[test]
    fn the_kernel_tells_broadcast_addresses_and_answers_are_cached() {
        let mut b = Broadcasts::default();
        assert!(!b.is_broadcast(Ipv4Addr::LOCALHOST));
        assert!(b.is_broadcast(Ipv4Addr::BROADCAST));
        assert_eq!(b.unicast, [Ipv4Addr::LOCALHOST]);
        assert_eq!(b.broadcast, [Ipv4Addr::BROADCAST]);
        // From the caches: no new entry.
        assert!(!b.is_broadcast(Ipv4Addr::LOCALHOST));
        assert!(b.is_broadcast(Ipv4Addr::BROADCAST));
        assert_eq!((b.unicast.len(), b.broadcast.len()), (1, 1));
        b.lookups = REFRESH_EVERY - 1;
        assert!(!b.is_broadcast(Ipv4Addr::LOCALHOST));
        assert!(b.broadcast.is_empty(), "emptied, then asked again");
        assert_eq!(b.unicast, [Ipv4Addr::LOCALHOST]);
    }

    /// The caches are bounded: addresses past `CACHED` are asked each time, not kept.
    #[test]
    fn the_caches_are_bounded() {
        let mut b = Broadcasts::default();
        for i in 0..(CACHED as u32 + 8) {
            assert!(!b.is_broadcast(Ipv4Addr::from(0x7f00_0001 + i)));
        }
        assert_eq!(b.unicast.len(), CACHED);
    }
}
