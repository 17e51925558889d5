//! Which shard a received datagram belongs to.
//!
//! The rules (docs/ARCHITECTURE.md, "Routing"):
//! 1. Short header, or long-header Handshake: the destination CID was issued by this host and
//!    names its worker. Another worker's CID goes to that worker (hand-over); it must never
//!    reach this shard's endpoint, which would answer with a stateless reset.
//! 2. Initial and 0-RTT, Retry and Version Negotiation whose DCID is of our layout and names
//!    another worker: [`Destination::Opened`]. From a server (to a connection this host
//!    opened, on an engine that may serve as well) they carry a CID this host issued, which
//!    names the worker that owns the connection; the worker hands them over when that worker
//!    has connections open to the sender (`peers.rs`). Otherwise the CID is one a
//!    client chose that looks like ours (by chance, or made so: the layout is no secret, and
//!    a client could otherwise pick the worker that derives the keys of its every Initial):
//!    it stays on the worker that got it, which the 4-tuple keeps the rest of the handshake
//!    on. A client's CID not of our layout stays too.
//! 3. A short header whose DCID this host did not issue is a stateless reset from a peer, or
//!    junk: [`Destination::Stray`], which the worker hands to the workers that opened
//!    connections to its sender ([`crate::peers`]), or else judges itself.
//! 4. Anything else is the local endpoint's to judge (it drops what is not QUIC).

use crate::cid::CidLayout;
use crate::packet::quic::{self, Header, HeaderError, LongType};

/// Where a datagram goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination {
    /// Feed it to this worker's endpoint.
    Local,
    /// Hand it to worker `n`.
    Worker(usize),
    /// An Initial, 0-RTT, Retry or Version Negotiation packet whose DCID names worker `n`
    /// (not this one): hand it to `n` if `n` opened connections to its sender (a server's
    /// answer), else feed it to this worker's endpoint (a client's CID that looks like ours).
    Opened(usize),
    /// A short header whose destination CID is not of this host's layout: a stateless
    /// reset from a peer (its CID is random), or junk. Only an endpoint holding a connection
    /// to its sender can tell: the worker finds out which ([`crate::peers`]) and otherwise
    /// feeds it to its own endpoint, which drops it.
    Stray,
    /// Drop it: it cannot be a QUIC packet for us.
    Drop(HeaderError),
}

/// The routing decision for `datagram` received by worker `me`.
pub fn route(layout: &CidLayout, me: usize, datagram: &[u8]) -> Destination {
    let by_cid = |dcid: &[u8]| match layout.decode(dcid) {
        Some(w) if w != me => Destination::Worker(w),
        _ => Destination::Local,
    };
    let opened_by = |dcid: &[u8]| match by_cid(dcid) {
        Destination::Worker(w) => Destination::Opened(w),
        d => d,
    };
    match quic::peek(datagram, layout.len()) {
        Err(e) => Destination::Drop(e),
        Ok(Header::Short { dcid }) => match layout.decode(dcid) {
            None => Destination::Stray,
            Some(w) if w != me => Destination::Worker(w),
            Some(_) => Destination::Local,
        },
        Ok(Header::Long { ty, dcid }) => match ty {
            LongType::Handshake => by_cid(dcid),
            LongType::Retry | LongType::Initial | LongType::ZeroRtt => opened_by(dcid),
        },
        Ok(Header::VersionNegotiation { dcid }) => opened_by(dcid),
        Ok(Header::Other) => Destination::Local,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> CidLayout {
        CidLayout::for_workers(4).unwrap()
    }

    fn short_for(worker: usize) -> Vec<u8> {
        let l = layout();
        let mut p = vec![0x41; 1 + l.len() + 20];
        l.write(worker, &mut rand::thread_rng(), &mut p[1..1 + l.len()]);
        p
    }

    #[test]
    fn short_headers_go_to_their_owner() {
        let l = layout();
        for owner in 0..4 {
            let p = short_for(owner);
            for me in 0..4 {
                let want = if owner == me {
                    Destination::Local
                } else {
                    Destination::Worker(owner)
                };
                assert_eq!(route(&l, me, &p), want);
            }
        }
    }

    #[test]
    fn initials_go_by_dcid_when_it_is_ours_and_stay_otherwise() {
        let l = layout();
        let mut cid = [0u8; 8];
        l.write(3, &mut rand::thread_rng(), &mut cid);
        let mut p = vec![0xc3, 0, 0, 0, 1, 8];
        p.extend_from_slice(&cid);
        p.resize(1200, 0);
        // A server's Initial to a connection worker 3 opened carries worker 3's CID; so
        // could a client's: the worker asks whether 3 opened connections to the sender.
        assert_eq!(route(&l, 0, &p), Destination::Opened(3));
        assert_eq!(route(&l, 3, &p), Destination::Local);
        // Handshake packets carry the CID the server chose: to its worker.
        p[0] = 0xe3;
        assert_eq!(route(&l, 0, &p), Destination::Worker(3));
        // A Retry, as an Initial.
        p[0] = 0xf3;
        assert_eq!(route(&l, 0, &p), Destination::Opened(3));
        // And a Version Negotiation (version 0) answering it.
        p[0] = 0x80;
        p[1..5].copy_from_slice(&[0; 4]);
        assert_eq!(route(&l, 0, &p), Destination::Opened(3));
        p[1..5].copy_from_slice(&[0, 0, 0, 1]);
        p[0] = 0xd3; // 0-RTT, as an Initial
        assert_eq!(route(&l, 0, &p), Destination::Opened(3));
        // A client's Initial carries a CID it chose: not of our layout, it stays.
        p[0] = 0xc3;
        p[6] = l.first_octet() ^ 0x80;
        assert_eq!(route(&l, 0, &p), Destination::Local);
        p[0] = 0xd3; // 0-RTT, the same
        assert_eq!(route(&l, 0, &p), Destination::Local);
    }

    #[test]
    fn foreign_cids_are_strays_and_garbage_is_dropped() {
        let l = layout();
        let mut p = short_for(2);
        p[1] = 0xff; // first octet of another layout
        assert_eq!(route(&l, 0, &p), Destination::Stray);
        // A long header with a foreign CID stays (a client's Initial, say).
        let mut long = vec![0xc3, 0, 0, 0, 1, 8, 0xff];
        long.resize(1200, 0);
        assert_eq!(route(&l, 0, &long), Destination::Local);
        assert_eq!(route(&l, 0, &[]), Destination::Drop(HeaderError::Empty));
        assert_eq!(
            route(&l, 0, &[0x40, 1]),
            Destination::Drop(HeaderError::Truncated)
        );
    }
}
