//! Which shard a received datagram belongs to.
//!
//! The rules (docs/ARCHITECTURE.md, "Routing"):
//! 1. Short header, or long-header Handshake: the destination CID was issued by this host and
//!    names its worker. Another worker's CID goes to that worker (hand-over); it must never
//!    reach this shard's endpoint, which would answer with a stateless reset.
//! 2. Initial and 0-RTT sent by a client carry a CID the client chose: on an engine that
//!    serves they stay on the worker that got them; the 4-tuple keeps the rest of the
//!    handshake there. On a client-only engine every Initial comes from a server and carries
//!    a CID this host issued: it is routed by CID like the rest.
//! 3. Retry goes only from servers to clients and carries our CID: routed by CID.
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
    /// Drop it: it cannot be a QUIC packet for us.
    Drop(HeaderError),
}

/// The routing decision for `datagram` received by worker `me` of an engine that `serves`
/// (has a server configuration) or not.
pub fn route(layout: &CidLayout, me: usize, serves: bool, datagram: &[u8]) -> Destination {
    let by_cid = |dcid: &[u8]| match layout.decode(dcid) {
        Some(w) if w != me => Destination::Worker(w),
        _ => Destination::Local,
    };
    match quic::peek(datagram, layout.len()) {
        Err(e) => Destination::Drop(e),
        Ok(Header::Short { dcid }) => by_cid(dcid),
        Ok(Header::Long { ty, dcid }) => match ty {
            LongType::Handshake | LongType::Retry => by_cid(dcid),
            LongType::Initial | LongType::ZeroRtt if serves => Destination::Local,
            LongType::Initial | LongType::ZeroRtt => by_cid(dcid),
        },
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
                assert_eq!(route(&l, me, true, &p), want);
            }
        }
    }

    #[test]
    fn initial_stays_even_when_dcid_looks_like_another_workers() {
        let l = layout();
        let mut cid = [0u8; 8];
        l.write(3, &mut rand::thread_rng(), &mut cid);
        let mut p = vec![0xc3, 0, 0, 0, 1, 8];
        p.extend_from_slice(&cid);
        p.resize(1200, 0);
        assert_eq!(route(&l, 0, true, &p), Destination::Local);
        // On a client-only engine, an Initial comes from a server and carries our CID.
        assert_eq!(route(&l, 0, false, &p), Destination::Worker(3));
        // The same CID in a Handshake or Retry packet is ours to route.
        p[0] = 0xe3;
        assert_eq!(route(&l, 0, true, &p), Destination::Worker(3));
        p[0] = 0xf3;
        assert_eq!(route(&l, 0, true, &p), Destination::Worker(3));
    }

    #[test]
    fn foreign_cids_stay_local_and_garbage_is_dropped() {
        let l = layout();
        let mut p = short_for(2);
        p[1] = 0xff; // first octet of another layout
        assert_eq!(route(&l, 0, true, &p), Destination::Local);
        assert_eq!(
            route(&l, 0, true, &[]),
            Destination::Drop(HeaderError::Empty)
        );
        assert_eq!(
            route(&l, 0, true, &[0x40, 1]),
            Destination::Drop(HeaderError::Truncated)
        );
    }
}
