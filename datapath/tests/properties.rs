//! Property tests of what network input reaches first: the frame parser, the QUIC header
//! peek, the CID codec and the routing decision. Any input: no panic, and the invariants hold.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use proptest::prelude::*;
use xdp_quic::cid::CidLayout;
use xdp_quic::packet::frame::{self, L2};
use xdp_quic::packet::quic;
use xdp_quic::route::{route, Destination};

fn addr(v6: bool) -> impl Strategy<Value = SocketAddr> {
    (any::<[u8; 16]>(), any::<u16>()).prop_map(move |(b, port)| {
        let ip = if v6 {
            IpAddr::V6(Ipv6Addr::from(b))
        } else {
            IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3]))
        };
        SocketAddr::new(ip, port)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2_000, ..ProptestConfig::default() })]

    /// Arbitrary bytes: parse returns, with and without checksum verification.
    #[test]
    fn frame_parse_never_panics(data in proptest::collection::vec(any::<u8>(), 0..2_000), verify: bool) {
        let _ = frame::parse(&data, verify);
    }

    /// What `write` builds, `parse` reads back exactly, checksums included; every
    /// truncation of it is refused.
    #[test]
    fn frame_write_then_parse_round_trips(
        (src, dst) in prop::bool::ANY.prop_flat_map(|v6| (addr(v6), addr(v6))),
        vlan in proptest::option::of(0u16..4096),
        ecn in 0u8..4,
        payload in proptest::collection::vec(any::<u8>(), 0..1_400),
        macs: ([u8; 6], [u8; 6]),
    ) {
        let l2 = L2 { src_mac: macs.0, dst_mac: macs.1, vlan: vlan.map(|t| (0x8100, t)) };
        let mut buf = vec![0u8; 2048];
        let n = frame::write(&mut buf, &l2, src, dst, ecn, &payload).unwrap();
        let f = frame::parse(&buf[..n], true).unwrap();
        prop_assert_eq!(f.src, src);
        prop_assert_eq!(f.dst, dst);
        prop_assert_eq!(f.ecn, ecn);
        prop_assert_eq!(f.payload, &payload[..]);
        prop_assert_eq!(f.l2, l2);
        for cut in 0..n.min(70) {
            prop_assert!(frame::parse(&buf[..cut], true).is_err());
        }
    }

    /// Every CID a layout writes decodes to its worker; the header peek finds it in a
    /// short header of any content.
    #[test]
    fn cids_round_trip_through_short_headers(
        sid in proptest::collection::vec(any::<u8>(), 0..8),
        extra in 0usize..6,
        workers in 1usize..=256,
        worker_pick: usize,
        rest in proptest::collection::vec(any::<u8>(), 0..100),
        seed: u64,
    ) {
        let len = 1 + sid.len() + 1 + 4 + extra;
        prop_assume!(len <= 20);
        let layout = CidLayout::new(len, 0, &sid, workers).unwrap();
        let w = worker_pick % workers;
        let mut cid = vec![0u8; len];
        let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(seed);
        layout.write(w, &mut rng, &mut cid);
        prop_assert_eq!(layout.decode(&cid), Some(w));
        let mut packet = vec![0x40];
        packet.extend_from_slice(&cid);
        packet.extend_from_slice(&rest);
        prop_assert_eq!(quic::peek(&packet, len), Ok(quic::Header::Short { dcid: &cid[..] }));
        for me in [0, w, workers - 1] {
            let r = route(&layout, me, &packet);
            if me == w {
                prop_assert_eq!(r, Destination::Local);
            } else {
                prop_assert_eq!(r, Destination::Worker(w));
            }
        }
    }

    /// Any datagram: routing never panics and only ever names a worker that exists and is
    /// not the one deciding.
    #[test]
    fn routing_is_total_and_names_only_other_existing_workers(
        data in proptest::collection::vec(any::<u8>(), 0..1_500),
        workers in 1usize..=16,
        me_pick: usize,
    ) {
        let layout = CidLayout::for_workers(workers).unwrap();
        let me = me_pick % workers;
        match route(&layout, me, &data) {
            Destination::Worker(w) | Destination::Opened(w) => prop_assert!(w < workers && w != me),
            Destination::Stray => prop_assert!(data[0] & 0x80 == 0, "only short headers stray"),
            Destination::Local | Destination::Drop(_) => {}
        }
    }
}
