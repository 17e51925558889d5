//! Whole frames as the AF_XDP backend sees them: Ethernet (+ one VLAN tag) + IPv4/IPv6 + UDP.
//!
//! [`parse`] takes a received frame apart without copying; [`write`](fn@write) builds one in a
//! UMEM frame. Both are allocation-free and total (no panics for any input).

use std::net::{IpAddr, SocketAddr, SocketAddrV4, SocketAddrV6};

use super::checksum::{self, PROTO_UDP};
use super::{eth, ipv4, ipv6, udp};

/// Link-layer addressing of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct L2 {
    /// Source MAC address.
    pub src_mac: [u8; 6],
    /// Destination MAC address.
    pub dst_mac: [u8; 6],
    /// 802.1Q/802.1ad tag: (TPID, TCI). [`parse`] recognises TPIDs 0x8100 and 0x88a8 only,
    /// so a frame written with another TPID does not parse back.
    pub vlan: Option<(u16, u16)>,
}

/// A parsed UDP datagram inside an Ethernet frame; `payload` borrows the frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpFrame<'a> {
    /// Link-layer addressing as received.
    pub l2: L2,
    /// Source address and port. IPv6 addresses come with flow info and scope id 0.
    pub src: SocketAddr,
    /// Destination address and port (same family as `src`).
    pub dst: SocketAddr,
    /// ECN bits (0..=3) of the IP header
    pub ecn: u8,
    /// The UDP payload (UDP length − 8 octets).
    pub payload: &'a [u8],
}

impl UdpFrame<'_> {
    /// Sent to a multicast or broadcast MAC address. Linux takes unicast IP in such frames
    /// (CLUSTERIP, NLB), and so does a reply through the kernel; a reply on the TX ring would
    /// leave from that group address, so that path drops them.
    pub fn to_group_mac(&self) -> bool {
        self.l2.dst_mac[0] & 1 == 1
    }

    /// Whether no reply may go back the way this frame came (a martian, which the kernel's
    /// stack drops): a multicast or broadcast source (MAC or IP), source port 0, an
    /// unspecified or loopback address at either end, or a multicast or limited-broadcast
    /// destination address.
    /// Replies are built from the frame's own addresses (the source MAC becomes the
    /// destination, the destination IP the source): answering such a frame would send to a
    /// whole segment, or from an address that cannot be ours.
    pub fn is_martian(&self) -> bool {
        // The group bit: multicast, and broadcast (ff:ff:ff:ff:ff:ff). And source port 0: no
        // reply can go there (Linux refuses the send, which quinn-udp takes for a NIC without
        // GSO). (A group destination MAC is for the transmit path to judge: see
        // `UdpFrame::to_group_mac`.)
        if self.l2.src_mac[0] & 1 == 1 || self.src.port() == 0 {
            return true;
        }
        let unroutable = |ip: IpAddr| match ip {
            // 0.0.0.0/8 whole: "this network", never a source or destination on the wire.
            IpAddr::V4(a) => a.octets()[0] == 0 || a.is_loopback() || a.is_multicast(),
            IpAddr::V6(a) => {
                a.is_unspecified()
                    || a.is_loopback()
                    || a.is_multicast()
                    || a.to_ipv4_mapped().is_some()
            }
        };
        let broadcast = |ip: IpAddr| matches!(ip, IpAddr::V4(a) if a.is_broadcast());
        let (src, dst) = (self.src.ip(), self.dst.ip());
        unroutable(src) || broadcast(src) || unroutable(dst) || broadcast(dst)
    }
}

/// Why a frame is not a UDP datagram this datapath takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParseError {
    /// The frame ends before a header, or before the length an IP header announces.
    Truncated,
    /// The EtherType (after at most one VLAN tag) is neither IPv4 nor IPv6.
    NotIp,
    /// The IP payload is not UDP (IPv4 protocol or IPv6 next header ≠ 17; this includes any
    /// IPv6 extension header).
    NotUdp,
    /// An IPv4 fragment (MF set or nonzero fragment offset).
    Fragment,
    /// Inconsistent IP header: wrong version, IPv4 IHL < 5 or total length < IHL × 4.
    BadIpHeader,
    /// UDP length field < 8 or greater than the IP payload.
    BadLength,
    /// Wrong IPv4 header or UDP checksum, or a zero UDP checksum over IPv6.
    BadChecksum,
}

/// Why [`write`](fn@write) could not build a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildError {
    /// the buffer cannot hold headers + payload (or the payload exceeds what the IP and UDP
    /// length fields can express)
    TooLarge,
    /// src and dst are of different families (an IPv4-mapped IPv6 address counts as IPv4;
    /// [`write`](fn@write) unmaps both first)
    MixedFamilies,
}

/// Parses an Ethernet frame carrying UDP over IPv4 (any IHL, no fragments) or IPv6 (UDP as
/// next header; extension headers → [`ParseError::NotUdp`]).
///
/// Checks IP version/IHL/total length against the frame (Ethernet padding after the IP packet
/// is allowed and ignored), UDP length against the IP payload (octets of the IP payload after
/// the UDP length are ignored, as Linux does), and — when `verify_checksum` — the IPv4 header
/// checksum and the UDP checksum (IPv4 zero checksum = none, accepted; IPv6 zero checksum =
/// invalid). Turn verification off only where the NIC or the kernel has verified already, or
/// where senders on the same host leave partial (offloaded) checksums. Never panics on any
/// input.
pub fn parse(frame: &[u8], verify_checksum: bool) -> Result<UdpFrame<'_>, ParseError> {
    let (eth, rest) = eth::parse(frame)?;
    let l2 = L2 {
        src_mac: eth.src,
        dst_mac: eth.dst,
        vlan: eth.vlan,
    };
    match eth.ethertype {
        eth::ETHERTYPE_IPV4 => {
            let (ip, segment) = ipv4::parse(rest, verify_checksum)?;
            if ip.protocol != PROTO_UDP {
                return Err(ParseError::NotUdp);
            }
            let (h, datagram, payload) = udp::parse(segment)?;
            if verify_checksum && h.checksum != 0 && checksum::udp_v4(ip.src, ip.dst, datagram) != 0
            {
                return Err(ParseError::BadChecksum);
            }
            Ok(UdpFrame {
                l2,
                src: SocketAddr::V4(SocketAddrV4::new(ip.src, h.src_port)),
                dst: SocketAddr::V4(SocketAddrV4::new(ip.dst, h.dst_port)),
                ecn: ip.ecn,
                payload,
            })
        }
        eth::ETHERTYPE_IPV6 => {
            let (ip, segment) = ipv6::parse(rest)?;
            if ip.next_header != PROTO_UDP {
                return Err(ParseError::NotUdp);
            }
            let (h, datagram, payload) = udp::parse(segment)?;
            if verify_checksum
                && (h.checksum == 0 || checksum::udp_v6(&ip.src, &ip.dst, datagram) != 0)
            {
                return Err(ParseError::BadChecksum);
            }
            Ok(UdpFrame {
                l2,
                src: SocketAddr::V6(SocketAddrV6::new(ip.src, h.src_port, 0, 0)),
                dst: SocketAddr::V6(SocketAddrV6::new(ip.dst, h.dst_port, 0, 0)),
                ecn: ip.ecn,
                payload,
            })
        }
        _ => Err(ParseError::NotIp),
    }
}

/// Bytes of headers `write` puts before the payload for this L2 and address family.
#[inline]
pub fn header_len(l2: &L2, ipv6: bool) -> usize {
    let ip = if ipv6 {
        ipv6::HEADER_LEN
    } else {
        ipv4::HEADER_LEN
    };
    eth::header_len(l2.vlan.is_some()) + ip + udp::HEADER_LEN
}

/// Turns an IPv4-mapped IPv6 socket address (`[::ffff:a.b.c.d]:port`) into the IPv4 one;
/// returns any other address unchanged.
#[inline]
pub fn unmap(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, a.port())),
            None => addr,
        },
        SocketAddr::V4(_) => addr,
    }
}

/// Writes Ethernet (+VLAN) + IPv4/IPv6 + UDP headers and copies `payload` after them into
/// `buf`; returns the frame length ([`header_len`] + `payload.len()`). Bytes of `buf` past it
/// are untouched.
///
/// IPv4: TTL/hop limit 64, DF set, id 0, header checksum; UDP checksum always computed (0 →
/// 0xffff per RFC 768). `ecn` (0..=3; higher bits are ignored) goes into the TOS/traffic
/// class low bits; DSCP 0; IPv6 flow label 0. Both addresses are [`unmap`]ped first.
///
/// Errors: [`BuildError::MixedFamilies`]; [`BuildError::TooLarge`] when `buf` is shorter than
/// the frame or the UDP/IP length fields cannot express it (payload > 65507 octets over IPv4,
/// > 65527 over IPv6). On error `buf` may have been partly written.
pub fn write(
    buf: &mut [u8],
    l2: &L2,
    src: SocketAddr,
    dst: SocketAddr,
    ecn: u8,
    payload: &[u8],
) -> Result<usize, BuildError> {
    let (src, dst) = (unmap(src), unmap(dst));
    let ipv6 = match (src, dst) {
        (SocketAddr::V4(_), SocketAddr::V4(_)) => false,
        (SocketAddr::V6(_), SocketAddr::V6(_)) => true,
        _ => return Err(BuildError::MixedFamilies),
    };
    let ip_header = if ipv6 { 0 } else { ipv4::HEADER_LEN };
    if ip_header + udp::HEADER_LEN + payload.len() > usize::from(u16::MAX) {
        return Err(BuildError::TooLarge);
    }
    let total = header_len(l2, ipv6) + payload.len();
    let frame = buf.get_mut(..total).ok_or(BuildError::TooLarge)?;
    let ethertype = if ipv6 {
        eth::ETHERTYPE_IPV6
    } else {
        eth::ETHERTYPE_IPV4
    };
    let n = eth::write(frame, &l2.dst_mac, &l2.src_mac, l2.vlan, ethertype)
        .ok_or(BuildError::TooLarge)?;
    let rest = frame.get_mut(n..).ok_or(BuildError::TooLarge)?;
    let udp_len = udp::HEADER_LEN + payload.len();
    let (pseudo, rest) = match (src, dst) {
        (SocketAddr::V4(s), SocketAddr::V4(d)) => {
            let (h, rest) = rest
                .split_first_chunk_mut::<{ ipv4::HEADER_LEN }>()
                .ok_or(BuildError::TooLarge)?;
            ipv4::write(h, *s.ip(), *d.ip(), ecn, PROTO_UDP, udp_len);
            let pseudo = checksum::pseudo_v4(*s.ip(), *d.ip(), PROTO_UDP, udp_len as u16);
            (pseudo, rest)
        }
        (SocketAddr::V6(s), SocketAddr::V6(d)) => {
            let (h, rest) = rest
                .split_first_chunk_mut::<{ ipv6::HEADER_LEN }>()
                .ok_or(BuildError::TooLarge)?;
            ipv6::write(h, s.ip(), d.ip(), ecn, PROTO_UDP, udp_len);
            let pseudo = checksum::pseudo_v6(s.ip(), d.ip(), PROTO_UDP, udp_len as u32);
            (pseudo, rest)
        }
        _ => return Err(BuildError::MixedFamilies),
    };
    let (h, data) = rest
        .split_first_chunk_mut::<{ udp::HEADER_LEN }>()
        .ok_or(BuildError::TooLarge)?;
    udp::write(h, src.port(), dst.port(), payload.len(), 0);
    let data = data.get_mut(..payload.len()).ok_or(BuildError::TooLarge)?;
    data.copy_from_slice(payload);
    let sum = pseudo.add_bytes(h).add_bytes(payload).checksum();
    udp::set_checksum(h, sum);
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{rngs::StdRng, Rng, SeedableRng};
    use std::net::{Ipv4Addr, Ipv6Addr};

    const PLAIN: L2 = L2 {
        src_mac: [2, 0, 0, 0, 0, 1],
        dst_mac: [2, 0, 0, 0, 0, 2],
        vlan: None,
    };
    const TAGGED: L2 = L2 {
        vlan: Some((eth::TPID_8021Q, 0x6005)),
        ..PLAIN
    };

    fn v4() -> (SocketAddr, SocketAddr) {
        (
            "192.0.2.1:1234".parse().unwrap(),
            "198.51.100.7:4433".parse().unwrap(),
        )
    }

    fn v6() -> (SocketAddr, SocketAddr) {
        (
            "[2001:db8::1]:1234".parse().unwrap(),
            "[2001:db8:ffff::2]:4433".parse().unwrap(),
        )
    }

    fn build(l2: &L2, (src, dst): (SocketAddr, SocketAddr), ecn: u8, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; 2048];
        let n = write(&mut buf, l2, src, dst, ecn, payload).unwrap();
        buf.truncate(n);
        buf
    }

    /// Offset of the IP header.
    fn ip_at(l2: &L2) -> usize {
        eth::header_len(l2.vlan.is_some())
    }

    /// Recomputes the IPv4 header checksum of a frame after an edit.
    fn fix_ipv4(frame: &mut [u8], l2: &L2) {
        let at = ip_at(l2);
        frame[at + 10..at + 12].fill(0);
        let c = checksum::ipv4_header(&frame[at..at + 20]);
        frame[at + 10..at + 12].copy_from_slice(&c.to_be_bytes());
    }

    #[test]
    fn round_trip_all_combinations() {
        let mut rng = StdRng::seed_from_u64(0xf4a3e);
        let mut payload = vec![0u8; 1500];
        for (addrs, ipv6) in [(v4(), false), (v6(), true)] {
            for l2 in [PLAIN, TAGGED] {
                for ecn in 0..4u8 {
                    for len in 0..=1500 {
                        rng.fill(&mut payload[..len]);
                        let payload = &payload[..len];
                        let mut buf = [0u8; 1600];
                        let n = write(&mut buf, &l2, addrs.0, addrs.1, ecn, payload).unwrap();
                        assert_eq!(n, header_len(&l2, ipv6) + len);
                        let f = parse(&buf[..n], true).unwrap();
                        let expect = UdpFrame {
                            l2,
                            src: addrs.0,
                            dst: addrs.1,
                            ecn,
                            payload,
                        };
                        assert_eq!(f, expect);
                    }
                }
            }
        }
    }

    #[test]
    fn known_frame_bytes() {
        // UDP checksums of this datagram computed once with a Python reference.
        let payload = b"hello, quic!?";
        let f = build(&PLAIN, v4(), 0, payload);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(&f[14..24], &[0x45, 0, 0, 41, 0, 0, 0x40, 0, 64, 17]);
        assert_eq!(checksum::ipv4_header(&f[14..34]), 0);
        assert_eq!(&f[34..42], &[0x04, 0xd2, 0x11, 0x51, 0, 21, 0x81, 0x6a]);
        let f = build(&PLAIN, v6(), 3, payload);
        assert_eq!(&f[14..22], &[0x60, 0x30, 0, 0, 0, 21, 17, 64]);
        assert_eq!(&f[54..62], &[0x04, 0xd2, 0x11, 0x51, 0, 21, 0x12, 0x32]);
    }

    #[test]
    fn zero_checksum_is_sent_as_ffff() {
        // Find a payload whose computed checksum is 0 by adjusting its last word.
        let (src, dst) = v4();
        let mut payload = [0u8; 2];
        let f = build(&PLAIN, (src, dst), 0, &payload);
        let c = u16::from_be_bytes([f[40], f[41]]);
        // Adding `c` to the data makes the one's complement sum 0xffff, the checksum 0.
        payload = c.to_be_bytes();
        let f = build(&PLAIN, (src, dst), 0, &payload);
        assert_eq!(&f[40..42], &[0xff, 0xff]);
        assert!(parse(&f, true).is_ok());
    }

    #[test]
    fn truncation_at_every_length() {
        let payload = [0x5a; 100];
        for addrs in [v4(), v6()] {
            for l2 in [PLAIN, TAGGED] {
                let f = build(&l2, addrs, 1, &payload);
                for cut in 0..f.len() {
                    assert_eq!(
                        parse(&f[..cut], true),
                        Err(ParseError::Truncated),
                        "cut {cut}"
                    );
                    assert_eq!(
                        parse(&f[..cut], false),
                        Err(ParseError::Truncated),
                        "cut {cut}"
                    );
                }
            }
        }
    }

    #[test]
    fn ethernet_padding_is_ignored() {
        for addrs in [v4(), v6()] {
            for l2 in [PLAIN, TAGGED] {
                let mut f = build(&l2, addrs, 2, b"hi");
                f.resize(f.len().max(60) + 7, 0xee);
                let p = parse(&f, true).unwrap();
                assert_eq!(p.payload, b"hi");
            }
        }
    }

    #[test]
    fn ipv4_fragments() {
        for word in [0x2000u16, 0x0001, 0x00b9, 0x3fff] {
            let mut f = build(&PLAIN, v4(), 0, &[1; 40]);
            f[20..22].copy_from_slice(&word.to_be_bytes());
            fix_ipv4(&mut f, &PLAIN);
            assert_eq!(parse(&f, true), Err(ParseError::Fragment), "{word:#x}");
        }
    }

    #[test]
    fn ipv6_extension_headers_are_not_udp() {
        for next in [0u8, 43, 44, 60, 6, 58] {
            let mut f = build(&TAGGED, v6(), 0, &[1; 40]);
            f[ip_at(&TAGGED) + 6] = next;
            assert_eq!(parse(&f, false), Err(ParseError::NotUdp), "{next}");
        }
        // A real fragment header (RFC 8200 §4.5) in front of the UDP header.
        let mut f = build(&PLAIN, v6(), 0, &[1; 40]);
        f[20] = 44;
        f[18..20].copy_from_slice(&(48u16 + 8).to_be_bytes());
        f.splice(54..54, [17u8, 0, 0, 0, 0, 0, 0, 1]);
        assert_eq!(parse(&f, true), Err(ParseError::NotUdp));
    }

    #[test]
    fn non_udp_and_non_ip() {
        let mut f = build(&PLAIN, v4(), 0, &[1; 40]);
        f[23] = 6;
        fix_ipv4(&mut f, &PLAIN);
        assert_eq!(parse(&f, true), Err(ParseError::NotUdp));
        let mut f = build(&PLAIN, v4(), 0, &[1; 40]);
        f[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        assert_eq!(parse(&f, true), Err(ParseError::NotIp));
        // Version nibble disagreeing with the EtherType.
        let mut f = build(&PLAIN, v6(), 0, &[1; 40]);
        f[12..14].copy_from_slice(&eth::ETHERTYPE_IPV4.to_be_bytes());
        assert_eq!(parse(&f, false), Err(ParseError::BadIpHeader));
    }

    #[test]
    fn double_vlan_tag_is_not_ip() {
        let outer = L2 {
            vlan: Some((eth::TPID_8021AD, 10)),
            ..PLAIN
        };
        let mut f = build(&outer, v4(), 0, &[1; 40]);
        f.splice(16..16, [0x81, 0x00, 0x00, 0x14]);
        assert_eq!(parse(&f, true), Err(ParseError::NotIp));
    }

    #[test]
    fn checksums_verified_only_when_asked() {
        for addrs in [v4(), v6()] {
            for l2 in [PLAIN, TAGGED] {
                let mut f = build(&l2, addrs, 0, &[7; 33]);
                let last = f.len() - 1;
                f[last] ^= 0x10;
                assert_eq!(parse(&f, true), Err(ParseError::BadChecksum));
                assert_eq!(parse(&f, false).unwrap().payload[32], 7 ^ 0x10);
            }
        }
        // Zero UDP checksum: "none" over IPv4, invalid over IPv6.
        let mut f = build(&PLAIN, v4(), 0, &[7; 33]);
        f[40..42].fill(0);
        assert!(parse(&f, true).is_ok());
        let mut f = build(&PLAIN, v6(), 0, &[7; 33]);
        f[60..62].fill(0);
        assert_eq!(parse(&f, true), Err(ParseError::BadChecksum));
        assert!(parse(&f, false).is_ok());
        // IPv4 header checksum.
        let mut f = build(&PLAIN, v4(), 0, &[7; 33]);
        f[22] = 1; // TTL
        assert_eq!(parse(&f, true), Err(ParseError::BadChecksum));
        assert!(parse(&f, false).is_ok());
    }

    #[test]
    fn udp_length_against_ip_payload() {
        for (addrs, udp_at) in [(v4(), 34), (v6(), 54)] {
            let mut f = build(&PLAIN, addrs, 0, &[3; 20]);
            f[udp_at + 4..udp_at + 6].copy_from_slice(&29u16.to_be_bytes());
            assert_eq!(parse(&f, false), Err(ParseError::BadLength));
            f[udp_at + 4..udp_at + 6].copy_from_slice(&7u16.to_be_bytes());
            assert_eq!(parse(&f, false), Err(ParseError::BadLength));
            // Shorter than the IP payload: the rest is ignored (and not checksummed).
            let mut f = build(&PLAIN, addrs, 0, &[3; 20]);
            f[udp_at + 4..udp_at + 6].copy_from_slice(&20u16.to_be_bytes());
            assert_eq!(parse(&f, false).unwrap().payload, &[3; 12]);
        }
    }

    #[test]
    fn build_errors() {
        let payload = [9u8; 300];
        for (addrs, ipv6) in [(v4(), false), (v6(), true)] {
            for l2 in [PLAIN, TAGGED] {
                let need = header_len(&l2, ipv6) + payload.len();
                let mut buf = vec![0u8; need];
                for short in 0..need {
                    let r = write(&mut buf[..short], &l2, addrs.0, addrs.1, 0, &payload);
                    assert_eq!(r, Err(BuildError::TooLarge));
                }
                assert_eq!(
                    write(&mut buf, &l2, addrs.0, addrs.1, 0, &payload),
                    Ok(need)
                );
            }
        }
        let mut buf = vec![0u8; 70_000];
        let big = vec![0u8; 65_535 - 28 + 1];
        assert_eq!(
            write(&mut buf, &PLAIN, v4().0, v4().1, 0, &big),
            Err(BuildError::TooLarge)
        );
        let n = write(&mut buf, &PLAIN, v4().0, v4().1, 0, &big[1..]).unwrap();
        assert_eq!(parse(&buf[..n], true).unwrap().payload.len(), 65_507);
        let big = vec![0u8; 65_535 - 8 + 1];
        assert_eq!(
            write(&mut buf, &PLAIN, v6().0, v6().1, 0, &big),
            Err(BuildError::TooLarge)
        );
        let n = write(&mut buf, &PLAIN, v6().0, v6().1, 0, &big[1..]).unwrap();
        assert_eq!(parse(&buf[..n], true).unwrap().payload.len(), 65_527);
        let r = write(&mut buf, &PLAIN, v4().0, v6().1, 0, b"x");
        assert_eq!(r, Err(BuildError::MixedFamilies));
        let mapped: SocketAddr = "[::ffff:192.0.2.9]:99".parse().unwrap();
        let r = write(&mut buf, &PLAIN, mapped, v6().1, 0, b"x");
        assert_eq!(r, Err(BuildError::MixedFamilies));
    }

    #[test]
    fn mapped_addresses_are_unmapped() {
        let mapped: SocketAddr = "[::ffff:192.0.2.9]:99".parse().unwrap();
        let plain: SocketAddr = "192.0.2.9:99".parse().unwrap();
        assert_eq!(unmap(mapped), plain);
        assert_eq!(unmap(plain), plain);
        assert_eq!(unmap(v6().0), v6().0);
        let f = build(&PLAIN, (mapped, v4().1), 1, b"x");
        let p = parse(&f, true).unwrap();
        assert_eq!((p.src, p.dst, p.ecn), (plain, v4().1, 1));
        // Higher ECN bits are ignored.
        let f = build(&PLAIN, v4(), 0xfe, b"x");
        assert_eq!(parse(&f, true).unwrap().ecn, 2);
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = StdRng::seed_from_u64(20_000);
        let mut buf = [0u8; 256];
        for i in 0..20_000 {
            let len = rng.gen_range(0..buf.len());
            rng.fill(&mut buf[..len]);
            // Steer a share of the frames past the EtherType and IP version checks.
            if len >= 15 && i % 2 == 0 {
                let (et, ver) = [(0x0800u16, 0x45u8), (0x86dd, 0x60), (0x8100, 0x45)][i % 3];
                buf[12..14].copy_from_slice(&et.to_be_bytes());
                buf[14] = ver;
            }
            for verify in [false, true] {
                if let Ok(f) = parse(&buf[..len], verify) {
                    assert!(f.payload.len() <= len);
                }
            }
        }
    }

    #[test]
    fn mutated_frames_never_panic() {
        let mut rng = StdRng::seed_from_u64(0xbad_f00d);
        let mut valid = Vec::new();
        for (addrs, l2) in [(v4(), PLAIN), (v4(), TAGGED), (v6(), PLAIN), (v6(), TAGGED)] {
            let payload: Vec<u8> = (0..rng.gen_range(0..200)).map(|_| rng.gen()).collect();
            valid.push(build(&l2, addrs, rng.gen_range(0..4), &payload));
        }
        let mut ok = 0;
        for i in 0..20_000 {
            let mut f = valid[i % valid.len()].clone();
            for _ in 0..rng.gen_range(1..=4) {
                let at = rng.gen_range(0..f.len());
                match rng.gen_range(0..4) {
                    0 => f[at] ^= 1 << rng.gen_range(0..8),
                    1 => f[at] = rng.gen(),
                    2 => f.truncate(at),
                    _ => f.extend((0..rng.gen_range(1..40)).map(|_| rng.gen::<u8>())),
                }
                if f.is_empty() {
                    break;
                }
            }
            for verify in [false, true] {
                if parse(&f, verify).is_ok() {
                    ok += 1;
                }
            }
        }
        // Some mutations (padding, ECN, MACs, unverified payload) keep frames valid.
        assert!(ok > 0);
    }

    #[test]
    fn ipv4_and_ipv6_addresses_round_trip() {
        let src = SocketAddr::from((Ipv4Addr::new(255, 255, 255, 255), 0));
        let dst = SocketAddr::from((Ipv4Addr::UNSPECIFIED, 65535));
        let f = build(&PLAIN, (src, dst), 0, &[]);
        assert_eq!(
            (parse(&f, true).unwrap().src, parse(&f, true).unwrap().dst),
            (src, dst)
        );
        let src = SocketAddr::from((Ipv6Addr::LOCALHOST, 1));
        let dst = SocketAddr::from((Ipv6Addr::from([0xff; 16]), 2));
        let f = build(&TAGGED, (src, dst), 3, &[]);
        let p = parse(&f, true).unwrap();
        assert_eq!((p.src, p.dst, p.ecn, p.l2), (src, dst, 3, TAGGED));
    }

    #[test]
    fn martians_are_told_apart() {
        let frame = |src: &str, dst: &str, src_mac: [u8; 6]| UdpFrame {
            l2: L2 { src_mac, ..PLAIN },
            src: src.parse().unwrap(),
            dst: dst.parse().unwrap(),
            ecn: 0,
            payload: &[],
        };
        let mac = PLAIN.src_mac;
        for (src, dst) in [
            ("192.0.2.1:1", "192.0.2.2:4433"),
            ("[2001:db8::1]:1", "[2001:db8::2]:4433"),
        ] {
            assert!(!frame(src, dst, mac).is_martian(), "{src} -> {dst}");
        }
        for (src, dst) in [
            ("0.0.0.0:1", "192.0.2.2:4433"),
            ("0.1.2.3:1", "192.0.2.2:4433"),
            ("192.0.2.1:1", "0.1.2.3:4433"),
            ("255.255.255.255:1", "192.0.2.2:4433"),
            ("224.0.0.1:1", "192.0.2.2:4433"),
            ("127.0.0.1:1", "192.0.2.2:4433"),
            ("192.0.2.1:1", "255.255.255.255:4433"),
            ("192.0.2.1:1", "239.1.2.3:4433"),
            ("192.0.2.1:1", "0.0.0.0:4433"),
            ("192.0.2.1:1", "127.0.0.1:4433"),
            ("[::]:1", "[2001:db8::2]:4433"),
            ("[ff02::1]:1", "[2001:db8::2]:4433"),
            ("[::1]:1", "[2001:db8::2]:4433"),
            ("[::ffff:192.0.2.1]:1", "[2001:db8::2]:4433"),
            ("[2001:db8::1]:1", "[ff02::1]:4433"),
            ("[2001:db8::1]:1", "[::1]:4433"),
            ("192.0.2.1:0", "192.0.2.2:4433"),
            ("[2001:db8::1]:0", "[2001:db8::2]:4433"),
        ] {
            assert!(frame(src, dst, mac).is_martian(), "{src} -> {dst}");
        }
        for src_mac in [
            [0xff; 6],
            [0x01, 0x00, 0x5e, 0, 0, 1],
            [0x33, 0x33, 0, 0, 0, 1],
        ] {
            let f = frame("192.0.2.1:1", "192.0.2.2:4433", src_mac);
            assert!(f.is_martian(), "{src_mac:02x?}");
            let mut f = frame("192.0.2.1:1", "192.0.2.2:4433", mac);
            assert!(!f.to_group_mac());
            f.l2.dst_mac = src_mac;
            assert!(!f.is_martian() && f.to_group_mac(), "to {src_mac:02x?}");
        }
    }
}
