//! Which workers have opened connections to which peers, so that a stateless reset from a
//! peer reaches the worker that can recognise it, and a server's first packets (Initial,
//! Retry, Version Negotiation) the worker that opened the connection.
//!
//! A stateless reset (RFC 9000 §10.3) looks like a short-header packet whose destination CID
//! is random: nothing in it names the worker that owns the connection, so it lands on
//! whichever worker the kernel's hash (or the NIC's RSS) picks. For connections a peer opened
//! that is the owner (the 4-tuple that brought their Initial brings the reset too). For
//! connections a worker opened from a port its engine shares (`Ctx::connect` on a serving
//! engine), it is any worker; only the owner's endpoint holds the reset token, so elsewhere
//! the reset was dropped and the connection waited for its idle timeout.
//!
//! Each worker records here the remote address of each connection it opened, for as long as
//! the connection lives (and forgets them all when it ends). A worker that receives a short
//! header whose CID this host did not issue ([`crate::route::Destination::Stray`]) from such
//! an address hands a copy to the workers that opened connections to it, and gives it to its
//! own endpoint too (a connection that peer opened to this worker may be the reset's). An
//! Initial, Retry or Version Negotiation whose CID names another worker
//! ([`crate::route::Destination::Opened`]) goes to that worker only if it opened connections
//! to the sender; otherwise it is a client's, whose CID looks like ours, and stays where it
//! landed.
//!
//! Entries are made by the application's own `connect`s (a peer cannot add any), one per
//! open connection. The lock is taken only on those cold paths: for a stray short header
//! while outgoing connections exist, for a long header naming another worker while that
//! worker has outgoing connections, and when outgoing connections open and end; the counts
//! (of all, and per worker) let every other packet skip it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::RwLock;

/// The workers that have connections open to each remote address (connections they opened).
pub(crate) struct OutgoingPeers {
    /// Connections recorded, all addresses.
    count: AtomicUsize,
    /// Connections recorded per worker.
    per_worker: Box<[AtomicUsize]>,
    /// Per address: (worker, its connections to the address).
    map: RwLock<HashMap<SocketAddr, Vec<(usize, u32)>>>,
}

impl OutgoingPeers {
    /// None recorded, for `workers` workers.
    pub fn new(workers: usize) -> Self {
        Self {
            count: AtomicUsize::new(0),
            per_worker: (0..workers).map(|_| AtomicUsize::new(0)).collect(),
            map: RwLock::default(),
        }
    }

    /// Records a connection of `worker` to `remote`. Pair with [`OutgoingPeers::remove`].
    pub fn add(&self, remote: SocketAddr, worker: usize) {
        debug_assert!(
            worker < self.per_worker.len(),
            "worker {worker} out of range"
        );
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let owners = map.entry(remote).or_default();
        match owners.iter_mut().find(|(w, _)| *w == worker) {
            Some((_, n)) => *n += 1,
            None => owners.push((worker, 1)),
        }
        if let Some(c) = self.per_worker.get(worker) {
            c.fetch_add(1, Ordering::Release);
        }
        self.count.fetch_add(1, Ordering::Release);
    }

    /// Forgets a connection [`OutgoingPeers::add`] recorded.
    pub fn remove(&self, remote: SocketAddr, worker: usize) {
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let Some(owners) = map.get_mut(&remote) else {
            return;
        };
        let Some(i) = owners.iter().position(|(w, _)| *w == worker) else {
            return;
        };
        owners[i].1 -= 1;
        if owners[i].1 == 0 {
            owners.swap_remove(i);
        }
        if owners.is_empty() {
            map.remove(&remote);
        }
        if let Some(c) = self.per_worker.get(worker) {
            c.fetch_sub(1, Ordering::Release);
        }
        self.count.fetch_sub(1, Ordering::Release);
    }

    /// Forgets every connection of `worker`, which has ended (one that failed may not have
    /// removed its connections one by one).
    pub fn forget_worker(&self, worker: usize) {
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut map = self.map.write().unwrap_or_else(|p| p.into_inner());
        let mut gone = 0usize;
        map.retain(|_, owners| {
            owners.retain(|&(w, n)| {
                if w == worker {
                    gone += n as usize;
                }
                w != worker
            });
            !owners.is_empty()
        });
        if let Some(c) = self.per_worker.get(worker) {
            c.fetch_sub(gone, Ordering::Release);
        }
        self.count.fetch_sub(gone, Ordering::Release);
    }

    /// Whether `worker` has connections open to `remote`. Takes no lock while `worker` has
    /// none recorded (a peer can send any number of long headers whose CID names a worker).
    pub fn opened(&self, remote: SocketAddr, worker: usize) -> bool {
        if self
            .per_worker
            .get(worker)
            .is_none_or(|c| c.load(Ordering::Acquire) == 0)
        {
            return false;
        }
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        map.get(&remote)
            .is_some_and(|owners| owners.iter().any(|&(w, _)| w == worker))
    }

    /// The workers other than `me` with connections open to `remote` (into `others`,
    /// emptied first). Takes no lock while no connection is recorded.
    pub fn others(&self, remote: SocketAddr, me: usize, others: &mut Vec<usize>) {
        others.clear();
        if self.count.load(Ordering::Acquire) == 0 {
            return;
        }
        let map = self.map.read().unwrap_or_else(|p| p.into_inner());
        others.extend(
            map.get(&remote)
                .into_iter()
                .flatten()
                .map(|&(w, _)| w)
                .filter(|&w| w != me),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owners_are_counted_per_connection_and_forgotten_with_the_last() {
        let p = OutgoingPeers::new(4);
        let a: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let b: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let mut others = Vec::new();
        p.others(a, 0, &mut others);
        assert!(others.is_empty());

        p.add(a, 1);
        p.add(a, 1);
        p.add(a, 2);
        p.add(b, 0);
        p.others(a, 0, &mut others);
        others.sort();
        assert_eq!(others, [1, 2]);
        p.others(a, 1, &mut others);
        assert_eq!(others, [2]);
        p.others(b, 3, &mut others);
        assert_eq!(others, [0]);

        // Worker 1 had two connections to `a`: it stays an owner until both have ended.
        p.remove(a, 1);
        p.others(a, 0, &mut others);
        others.sort();
        assert_eq!(others, [1, 2]);
        p.remove(a, 1);
        p.others(a, 0, &mut others);
        assert_eq!(others, [2]);
        assert!(p.opened(a, 2) && !p.opened(a, 3) && !p.opened(b, 2));
        p.remove(a, 2);
        p.remove(b, 0);
        assert_eq!(p.count.load(Ordering::Relaxed), 0);
        assert!(p.per_worker.iter().all(|c| c.load(Ordering::Relaxed) == 0));
        assert!(p.map.read().unwrap().is_empty(), "nothing left behind");

        // Removing what was never added changes nothing.
        p.remove(a, 3);
        assert_eq!(p.count.load(Ordering::Relaxed), 0);
    }

    #[test]
    fn a_worker_that_ended_is_forgotten_whole() {
        let p = OutgoingPeers::new(3);
        let a: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let b: SocketAddr = "192.0.2.2:443".parse().unwrap();
        p.add(a, 1);
        p.add(a, 1);
        p.add(a, 2);
        p.add(b, 1);
        p.forget_worker(1);
        let mut others = Vec::new();
        p.others(a, 0, &mut others);
        assert_eq!(others, [2]);
        p.others(b, 0, &mut others);
        assert!(others.is_empty());
        assert_eq!(p.count.load(Ordering::Relaxed), 1);
        assert_eq!(p.per_worker[1].load(Ordering::Relaxed), 0);
        assert!(!p.opened(a, 1) && p.opened(a, 2));
        p.remove(a, 2);
        assert_eq!(p.count.load(Ordering::Relaxed), 0);
        assert!(p.map.read().unwrap().is_empty());
    }
}
