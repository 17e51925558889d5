//! `route`: the routing decision (`route::route`, with `packet::quic::peek` under it) made
//! before quinn-proto's `Endpoint::handle`. Input format: `RouteInput` in `src/lib.rs` (any
//! valid CID layout, 1..=256 workers, the deciding worker, a serves flag the rules no longer
//! read, a packet to build and an arbitrary datagram).
//!
//! For the arbitrary datagram:
//! * `route` returns (no panic) and is total; `Worker(w)` only ever names an existing worker
//!   other than the deciding one;
//! * `peek` is checked against the bytes (empty → `Empty`; short header → DCID = the
//!   `len` octets after the first; long header → DCID = the octets its length octet announces
//!   at offset 6, version 1 and drafts typed by bits 4-5, others `Other`; too short →
//!   `Truncated`);
//! * the decision follows the documented rules from that header and `CidLayout::decode`.
//!
//! For a packet built around a CID of worker `owner` (short header, long header of each type in
//! version 1 and a draft, an unknown version, a DCID of another length), the decision is the
//! one the rules prescribe, worked out independently of the header parser.

#![no_main]

use libfuzzer_sys::fuzz_target;
use xdp_quic::cid::CidLayout;
use xdp_quic::packet::quic::{self, Header, HeaderError, LongType};
use xdp_quic::route::{route, Destination};
use xdp_quic_fuzz::{Built, ByteRng, RouteInput};

fuzz_target!(|data: &[u8]| {
    let input = RouteInput::decode(data);
    arbitrary_datagram(&input);
    built_packet(&input);
});

fn by_cid(layout: &CidLayout, me: usize, dcid: &[u8]) -> Destination {
    match layout.decode(dcid) {
        Some(w) if w != me => Destination::Worker(w),
        _ => Destination::Local,
    }
}

/// As [`by_cid`], for the packets a server sends first (Initial, 0-RTT from a client, Retry,
/// Version Negotiation): handed over only to a worker that opened connections to the sender,
/// which the worker checks.
fn opened_by(layout: &CidLayout, me: usize, dcid: &[u8]) -> Destination {
    match by_cid(layout, me, dcid) {
        Destination::Worker(w) => Destination::Opened(w),
        d => d,
    }
}

fn arbitrary_datagram(input: &RouteInput<'_>) {
    let (layout, me, d) = (&input.layout, input.me, input.datagram);
    let workers = layout.workers();
    let r = route(layout, me, d);
    if let Destination::Worker(w) | Destination::Opened(w) = r {
        assert!(w < workers, "worker {w} of {workers}");
        assert_ne!(w, me, "hand-over to oneself");
    }

    // The header, checked against the bytes.
    let peeked = quic::peek(d, layout.len());
    let Some(&first) = d.first() else {
        assert_eq!(peeked, Err(HeaderError::Empty));
        assert_eq!(r, Destination::Drop(HeaderError::Empty));
        return;
    };
    if first & 0x80 == 0 {
        if d.len() < 1 + layout.len() {
            assert_eq!(peeked, Err(HeaderError::Truncated));
        } else {
            let dcid = &d[1..1 + layout.len()];
            assert_eq!(peeked, Ok(Header::Short { dcid }));
        }
    } else if d.len() < 6 || d.len() < 6 + usize::from(d[5]) {
        assert_eq!(peeked, Err(HeaderError::Truncated));
    } else {
        let version = u32::from_be_bytes([d[1], d[2], d[3], d[4]]);
        if version == 0 {
            let dcid = &d[6..6 + usize::from(d[5])];
            assert_eq!(peeked, Ok(Header::VersionNegotiation { dcid }));
        } else if version == 1 || version >> 24 == 0xff {
            let dcid = &d[6..6 + usize::from(d[5])];
            let ty = [
                LongType::Initial,
                LongType::ZeroRtt,
                LongType::Handshake,
                LongType::Retry,
            ][usize::from((first >> 4) & 3)];
            assert_eq!(peeked, Ok(Header::Long { ty, dcid }));
        } else {
            assert_eq!(peeked, Ok(Header::Other));
        }
    }
    if let Ok(Header::Short { dcid } | Header::Long { dcid, .. }) = peeked {
        // Borrowed from the datagram, not copied.
        let at = dcid.as_ptr() as usize - d.as_ptr() as usize;
        assert!(at + dcid.len() <= d.len());
    }

    // The decision, from the rules.
    let want = match peeked {
        Err(e) => Destination::Drop(e),
        // A short header whose CID is not of our layout: a peer's stateless reset, or junk.
        Ok(Header::Short { dcid }) if layout.decode(dcid).is_none() => Destination::Stray,
        Ok(Header::Short { dcid }) => by_cid(layout, me, dcid),
        // Handshake packets carry the CID the server chose: by CID.
        Ok(Header::Long {
            ty: LongType::Handshake,
            dcid,
        }) => by_cid(layout, me, dcid),
        // The others by CID only to a worker that opened connections to the sender: a
        // client's Initial carries a CID of its own, which may look like ours (by chance or
        // made so).
        Ok(Header::Long { dcid, .. }) => opened_by(layout, me, dcid),
        // Version Negotiation echoes the CID a connection of ours chose.
        Ok(Header::VersionNegotiation { dcid }) => opened_by(layout, me, dcid),
        Ok(Header::Other) => Destination::Local,
    };
    assert_eq!(r, want);
}

fn built_packet(input: &RouteInput<'_>) {
    let layout = &input.layout;
    let (me, owner) = (input.me, input.owner);
    let mut cid = [0u8; 20];
    let cid = &mut cid[..layout.len()];
    layout.write(owner, &mut ByteRng::new(input.nonce), cid);
    assert_eq!(layout.decode(cid), Some(owner));
    let ours = if owner == me {
        Destination::Local
    } else {
        Destination::Worker(owner)
    };
    let bits = input.bits;
    let long = |ty: u8, version: u32, dcid: &[u8]| {
        let mut p = vec![0xc0 | (ty << 4) | (bits & 0x0f)];
        p.extend_from_slice(&version.to_be_bytes());
        p.push(dcid.len() as u8);
        p.extend_from_slice(dcid);
        p
    };
    // Handshake packets (type 2) go by CID; the other types (Initials too: from a server,
    // they carry ours) by CID to a worker that opened connections to the sender.
    let opened = match ours {
        Destination::Worker(w) => Destination::Opened(w),
        d => d,
    };
    let by_type = |ty: u8| if ty & 3 == 2 { ours } else { opened };
    let draft = 0xff00_0000 | u32::from(input.version);
    let (mut p, want) = match input.built {
        Built::Short => {
            let mut p = vec![0x40 | (bits & 0x3f)];
            p.extend_from_slice(cid);
            (p, ours)
        }
        Built::V1(ty) => (long(ty, 1, cid), by_type(ty)),
        Built::Draft(ty) => (long(ty, draft, cid), by_type(ty)),
        Built::Unknown => {
            // Neither 1 nor 0xff......: 0x00......, or 0x01...... and up to 0xfe.......
            let v = (u32::from(input.version % 0xff) << 24) | 0x2 | u32::from(bits);
            (long(bits >> 6, v, cid), Destination::Local)
        }
        Built::ForeignLen => {
            // A DCID of another length (0..=20 octets) is never ours: it stays local.
            let mut n = usize::from(bits % 21);
            if n == layout.len() {
                n = (n + 1) % 21;
            }
            let dcid: Vec<u8> = cid.iter().copied().cycle().take(n).collect();
            (long(input.version & 3, 1, &dcid), Destination::Local)
        }
    };
    p.extend_from_slice(input.datagram);
    assert_eq!(
        route(layout, me, &p),
        want,
        "{:?} me {me} owner {owner}",
        input.built
    );
    // Cut inside the header: dropped as truncated.
    let header = p.len() - input.datagram.len();
    p.truncate(header - 1);
    assert_eq!(
        route(layout, me, &p),
        Destination::Drop(HeaderError::Truncated)
    );
}
