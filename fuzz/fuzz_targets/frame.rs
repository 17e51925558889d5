//! `frame`: the L2-L4 parser (`packet::frame::parse`) over arbitrary frames.
//!
//! Whatever the input:
//! * `parse` returns (no panic), with and without checksum verification, and verification
//!   only ever adds `BadChecksum` (it never accepts what the unverified parse refuses, nor
//!   changes a result otherwise);
//! * an accepted frame is what its bytes say: MACs, VLAN tag, EtherType, IP version,
//!   protocol, addresses, ECN, ports, UDP length and the payload's offset are checked against
//!   the raw bytes, and every offset lies within the buffer;
//! * the checksum module equals a textbook RFC 1071 reference (`src/lib.rs`) over the whole
//!   input, and over the UDP datagram of an accepted frame; a frame accepted with
//!   verification has, by the reference, a valid IPv4 header checksum and a valid (or, over
//!   IPv4, absent) UDP checksum;
//! * re-writing the parsed fields with `frame::write` gives a frame that parses back to the
//!   same fields (IPv4-mapped IPv6 addresses come back as IPv4; one mapped address alone is
//!   refused as mixed families), of exactly `header_len + payload` octets, refused with
//!   `TooLarge` in a buffer one octet short, with the Ethernet header, ports and addresses
//!   at the same place as in the input when the input has no IP options.

#![no_main]

use std::net::{SocketAddr, SocketAddrV6};

use libfuzzer_sys::fuzz_target;
use xdp_quic::packet::checksum;
use xdp_quic::packet::frame::{self, BuildError, ParseError, UdpFrame};
use xdp_quic_fuzz::{ref_checksum, ref_udp_checksum};

fuzz_target!(|data: &[u8]| {
    check_checksum_module(data);

    let unverified = frame::parse(data, false);
    let verified = frame::parse(data, true);

    assert_ne!(
        unverified,
        Err(ParseError::BadChecksum),
        "no verification asked"
    );
    if verified != Err(ParseError::BadChecksum) {
        assert_eq!(verified, unverified, "verification only adds BadChecksum");
    }

    if let Ok(f) = unverified {
        check_against_bytes(data, &f, verified.is_ok());
        check_rewrite(data, &f);
    }
});

/// The datapath's checksum (native-endian 32-bit words) equals the textbook RFC 1071 one, over
/// the whole input and summed in two pieces (the first of even length).
fn check_checksum_module(data: &[u8]) {
    let want = ref_checksum(data);
    assert_eq!(checksum::ipv4_header(data), want);
    let split = (data.len() / 2) & !1;
    let (a, b) = data.split_at(split);
    let two = checksum::Sum::new().add_bytes(a).add_bytes(b);
    assert_eq!(two.checksum(), want);
    assert_eq!(two.fold(), !want);
}

fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

/// Offset of `inner` inside `outer`, asserting it is a sub-slice.
fn offset_in(outer: &[u8], inner: &[u8]) -> usize {
    let o = outer.as_ptr() as usize;
    let i = inner.as_ptr() as usize;
    assert!(i >= o, "payload starts before the frame");
    let off = i - o;
    assert!(
        off <= outer.len() && inner.len() <= outer.len() - off,
        "payload [{off}, +{}) outside the {}-octet frame",
        inner.len(),
        outer.len()
    );
    off
}

fn check_against_bytes(data: &[u8], f: &UdpFrame<'_>, checksums_verified: bool) {
    assert!(f.ecn <= 3);
    assert_eq!(
        f.src.is_ipv4(),
        f.dst.is_ipv4(),
        "src and dst of one family"
    );

    // Ethernet.
    assert_eq!(f.l2.dst_mac, data[0..6]);
    assert_eq!(f.l2.src_mac, data[6..12]);
    let eth_len = match f.l2.vlan {
        None => 14,
        Some((tpid, tci)) => {
            assert!(tpid == 0x8100 || tpid == 0x88a8, "TPID {tpid:#x}");
            assert_eq!(be16(data, 12), tpid);
            assert_eq!(be16(data, 14), tci);
            18
        }
    };
    let ethertype = be16(data, eth_len - 2);
    assert!(f.l2.vlan.is_some() || (ethertype != 0x8100 && ethertype != 0x88a8));

    let off = offset_in(data, f.payload);
    let ip = &data[eth_len..];
    match (f.src, f.dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            assert_eq!(ethertype, 0x0800);
            assert_eq!(ip[0] >> 4, 4);
            let ihl = usize::from(ip[0] & 0x0f) * 4;
            assert!(ihl >= 20);
            let total = usize::from(be16(ip, 2));
            assert!(
                eth_len + total <= data.len(),
                "IP total length beyond the frame"
            );
            assert_eq!(be16(ip, 6) & 0x3fff, 0, "fragment accepted");
            assert_eq!(ip[9], 17);
            assert_eq!(f.ecn, ip[1] & 3);
            assert_eq!(s.ip().octets(), ip[12..16]);
            assert_eq!(d.ip().octets(), ip[16..20]);
            let udp_at = eth_len + ihl;
            assert_eq!(off, udp_at + 8, "payload right after the UDP header");
            check_udp(data, udp_at, eth_len + total, f);
            let datagram = &data[udp_at..off + f.payload.len()];
            let udp_sum = ref_udp_checksum(f.src.ip(), f.dst.ip(), datagram);
            assert_eq!(checksum::udp_v4(*s.ip(), *d.ip(), datagram), udp_sum);
            if checksums_verified {
                assert_eq!(
                    ref_checksum(&ip[..ihl]),
                    0,
                    "bad IPv4 header checksum accepted"
                );
                if be16(data, udp_at + 6) != 0 {
                    assert_eq!(udp_sum, 0, "bad UDP checksum accepted");
                }
            }
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            assert_eq!(ethertype, 0x86dd);
            assert_eq!(ip[0] >> 4, 6);
            assert_eq!(ip[6], 17, "UDP right after the fixed header");
            assert_eq!(f.ecn, (ip[1] >> 4) & 3);
            assert_eq!(s.ip().octets(), ip[8..24]);
            assert_eq!(d.ip().octets(), ip[24..40]);
            assert_eq!(
                (s.flowinfo(), s.scope_id(), d.flowinfo(), d.scope_id()),
                (0, 0, 0, 0)
            );
            let end = eth_len + 40 + usize::from(be16(ip, 4));
            assert!(end <= data.len(), "IPv6 payload length beyond the frame");
            let udp_at = eth_len + 40;
            assert_eq!(off, udp_at + 8, "payload right after the UDP header");
            check_udp(data, udp_at, end, f);
            let datagram = &data[udp_at..off + f.payload.len()];
            let udp_sum = ref_udp_checksum(f.src.ip(), f.dst.ip(), datagram);
            assert_eq!(checksum::udp_v6(s.ip(), d.ip(), datagram), udp_sum);
            if checksums_verified {
                assert_ne!(be16(data, udp_at + 6), 0, "zero UDP checksum over IPv6");
                assert_eq!(udp_sum, 0, "bad UDP checksum accepted");
            }
        }
        _ => unreachable!("checked above"),
    }
}

/// The UDP header at `udp_at` (inside an IP payload ending at `ip_end`) matches `f`.
fn check_udp(data: &[u8], udp_at: usize, ip_end: usize, f: &UdpFrame<'_>) {
    assert_eq!(be16(data, udp_at), f.src.port());
    assert_eq!(be16(data, udp_at + 2), f.dst.port());
    let udp_len = usize::from(be16(data, udp_at + 4));
    assert_eq!(udp_len, 8 + f.payload.len(), "payload = UDP length - 8");
    assert!(
        udp_at + udp_len <= ip_end,
        "UDP datagram beyond the IP payload"
    );
}

fn unmapped(a: SocketAddr) -> SocketAddr {
    let a = frame::unmap(a);
    // What parse gives back: IPv6 with flow info and scope id 0.
    match a {
        SocketAddr::V6(v6) => SocketAddr::V6(SocketAddrV6::new(*v6.ip(), v6.port(), 0, 0)),
        v4 => v4,
    }
}

fn check_rewrite(data: &[u8], f: &UdpFrame<'_>) {
    let (src, dst) = (unmapped(f.src), unmapped(f.dst));
    let mut buf = vec![0u8; frame::header_len(&f.l2, true) + f.payload.len() + 1];
    let r = frame::write(&mut buf, &f.l2, f.src, f.dst, f.ecn, f.payload);
    if src.is_ipv4() != dst.is_ipv4() {
        // Only one of two IPv6 addresses is IPv4-mapped.
        assert_eq!(r, Err(BuildError::MixedFamilies));
        return;
    }
    let v6 = src.is_ipv6();
    if !v6 && f.payload.len() > 65_507 {
        // An IPv6 datagram of IPv4-mapped addresses too big for IPv4.
        assert_eq!(r, Err(BuildError::TooLarge));
        return;
    }
    let need = frame::header_len(&f.l2, v6) + f.payload.len();
    assert_eq!(r, Ok(need));
    assert!(need <= data.len(), "rewrite longer than the input");

    let again = frame::parse(&buf[..need], true).expect("a written frame parses");
    let want = UdpFrame {
        l2: f.l2,
        src,
        dst,
        ecn: f.ecn,
        payload: f.payload,
    };
    assert_eq!(again, want);

    let eth_len = if f.l2.vlan.is_some() { 18 } else { 14 };
    if f.src.is_ipv6() == v6 {
        // Same family: same Ethernet header.
        assert_eq!(buf[..eth_len], data[..eth_len]);
    }
    let ihl = usize::from(data[eth_len] & 0x0f) * 4;
    if f.src.is_ipv6() == v6 && (v6 || ihl == 20) {
        // No IP options: addresses, ports and payload at the same offsets as in the input.
        let addrs = if v6 { 8..40 } else { 12..20 };
        let ip = eth_len..;
        assert_eq!(buf[ip.clone()][addrs.clone()], data[ip][addrs]);
        let udp_at = need - f.payload.len() - 8;
        assert_eq!(buf[udp_at..udp_at + 6], data[udp_at..udp_at + 6]);
        assert_eq!(buf[udp_at + 8..need], *f.payload);
    }

    // One octet short: refused.
    assert_eq!(
        frame::write(&mut buf[..need - 1], &f.l2, f.src, f.dst, f.ecn, f.payload),
        Err(BuildError::TooLarge)
    );
}
