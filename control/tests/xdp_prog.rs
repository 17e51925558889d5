//! The steering program run on crafted packets through `BPF_PROG_TEST_RUN`: verdicts
//! and counters. No interface needed (root only: loading BPF programs; in CI a missing
//! privilege fails instead of skipping).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use xdp_quic_control::testing::privileged;
use xdp_quic_control::xdp::test_run::{TestProgram, XDP_DROP, XDP_PASS};
use xdp_quic_control::xdp::{Counters, ServiceConfig};
use xdp_quic_ebpf::{Counter, Family, FamilyCounter};

const V4_DST: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const V6_DST: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 1);

fn eth(ethertype: u16, vlan: &[u16]) -> Vec<u8> {
    let mut p = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
    for &tpid in vlan {
        p.extend_from_slice(&tpid.to_be_bytes());
        p.extend_from_slice(&100u16.to_be_bytes());
    }
    p.extend_from_slice(&ethertype.to_be_bytes());
    p
}

fn udp(dport: u16, payload: usize, len_override: Option<u16>) -> Vec<u8> {
    let len = len_override.unwrap_or((8 + payload) as u16);
    let mut u = Vec::new();
    u.extend_from_slice(&40000u16.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&len.to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend(std::iter::repeat_n(0x40u8, payload));
    u
}

/// IPv4 with `opts` bytes of options (multiple of 4), `frag` = flags/offset field.
fn ipv4(proto: u8, l4: &[u8], opts: usize, frag: u16, dst: Ipv4Addr) -> Vec<u8> {
    let ihl = (20 + opts) / 4;
    let total = (20 + opts + l4.len()) as u16;
    let mut h = vec![0x40 | ihl as u8, 0];
    h.extend_from_slice(&total.to_be_bytes());
    h.extend_from_slice(&[0, 1]);
    h.extend_from_slice(&frag.to_be_bytes());
    h.extend_from_slice(&[64, proto, 0, 0]);
    h.extend_from_slice(&[10, 99, 0, 2]);
    h.extend_from_slice(&dst.octets());
    h.extend(std::iter::repeat_n(1u8, opts)); // NOP options
    h.extend_from_slice(l4);
    h
}

fn ipv6(next: u8, l4: &[u8], dst: Ipv6Addr) -> Vec<u8> {
    let mut h = vec![0x60, 0, 0, 0];
    h.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    h.extend_from_slice(&[next, 64]);
    h.extend_from_slice(&Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 2).octets());
    h.extend_from_slice(&dst.octets());
    h.extend_from_slice(l4);
    h
}

fn v4_pkt(vlan: &[u16], l3: Vec<u8>) -> Vec<u8> {
    let mut p = eth(0x0800, vlan);
    p.extend(l3);
    p
}

fn v6_pkt(vlan: &[u16], l3: Vec<u8>) -> Vec<u8> {
    let mut p = eth(0x86dd, vlan);
    p.extend(l3);
    p
}

fn service(ports: &[u16], addrs: &[IpAddr]) -> ServiceConfig {
    ServiceConfig {
        ports: ports.iter().copied().collect(),
        addrs: addrs.iter().copied().collect(),
    }
}

/// Runs `pkt`, asserts the verdict, and that exactly `expect` counters moved by one
/// (plus `packets`).
fn check(p: &mut TestProgram, pkt: &[u8], verdict: u32, expect: &[Counter]) {
    let before = p.counters().unwrap();
    let out = p.run(pkt).unwrap();
    assert_eq!(out.retval, verdict, "verdict for {expect:?}");
    assert_eq!(out.data, pkt, "the program must not modify the packet");
    let after = p.counters().unwrap();
    let d = after.delta(&before);
    for c in Counter::all() {
        let want = u64::from(c == Counter::Packets || expect.contains(&c));
        assert_eq!(d.get(c), want, "counter {} after {expect:?}", c.name());
    }
    invariants(&after);
}

fn invariants(c: &Counters) {
    let fam = |f: Family| {
        FamilyCounter::ALL[1..]
            .iter()
            .map(|&x| c.get(Counter::Family(f, x)))
            .sum::<u64>()
    };
    let seen = |f: Family| c.get(Counter::Family(f, FamilyCounter::Seen));
    assert_eq!(seen(Family::V4), fam(Family::V4));
    assert_eq!(seen(Family::V6), fam(Family::V6));
    assert_eq!(
        c.get(Counter::Packets),
        c.get(Counter::PassNotIp)
            + c.get(Counter::PassBadHeader)
            + seen(Family::V4)
            + seen(Family::V6)
    );
}

fn f4(x: FamilyCounter) -> [Counter; 2] {
    [
        Counter::Family(Family::V4, FamilyCounter::Seen),
        Counter::Family(Family::V4, x),
    ]
}
fn f6(x: FamilyCounter) -> [Counter; 2] {
    [
        Counter::Family(Family::V6, FamilyCounter::Seen),
        Counter::Family(Family::V6, x),
    ]
}

#[test]
fn verdicts_and_counters() {
    if !privileged("verdicts_and_counters") {
        return;
    }
    use FamilyCounter::*;
    let mut p = TestProgram::load(&service(&[4433, 443], &[])).unwrap();
    const UDP: u8 = 17;

    // IPv4 to a service port: no socket on queue 0 → kernel
    check(
        &mut p,
        &v4_pkt(&[], ipv4(UDP, &udp(4433, 100, None), 0, 0, V4_DST)),
        XDP_PASS,
        &f4(NoSocket),
    );
    // second service port, IPv4 options (ihl 8)
    check(
        &mut p,
        &v4_pkt(&[], ipv4(UDP, &udp(443, 100, None), 12, 0, V4_DST)),
        XDP_PASS,
        &f4(NoSocket),
    );
    // 802.1Q and 802.1ad tags
    check(
        &mut p,
        &v4_pkt(&[0x8100], ipv4(UDP, &udp(4433, 100, None), 0, 0, V4_DST)),
        XDP_PASS,
        &f4(NoSocket),
    );
    check(
        &mut p,
        &v6_pkt(&[0x88a8], ipv6(UDP, &udp(4433, 100, None), V6_DST)),
        XDP_PASS,
        &f6(NoSocket),
    );
    // two tags: not parsed further
    check(
        &mut p,
        &v4_pkt(
            &[0x88a8, 0x8100],
            ipv4(UDP, &udp(4433, 100, None), 0, 0, V4_DST),
        ),
        XDP_PASS,
        &[Counter::PassNotIp],
    );
    // IPv6 to a service port
    check(
        &mut p,
        &v6_pkt(&[], ipv6(UDP, &udp(443, 100, None), V6_DST)),
        XDP_PASS,
        &f6(NoSocket),
    );
    // other port
    check(
        &mut p,
        &v4_pkt(&[], ipv4(UDP, &udp(53, 100, None), 0, 0, V4_DST)),
        XDP_PASS,
        &f4(OtherPort),
    );
    check(
        &mut p,
        &v6_pkt(&[], ipv6(UDP, &udp(53, 100, None), V6_DST)),
        XDP_PASS,
        &f6(OtherPort),
    );
    // fragments: MF set, or an offset; IPv6 fragment header
    check(
        &mut p,
        &v4_pkt(&[], ipv4(UDP, &udp(4433, 100, None), 0, 0x2000, V4_DST)),
        XDP_PASS,
        &f4(Fragment),
    );
    check(
        &mut p,
        &v4_pkt(&[], ipv4(UDP, &udp(4433, 100, None), 0, 0x0010, V4_DST)),
        XDP_PASS,
        &f4(Fragment),
    );
    check(
        &mut p,
        &v6_pkt(&[], ipv6(44, &[17, 0, 0, 1, 0, 0, 0, 1], V6_DST)),
        XDP_PASS,
        &f6(Fragment),
    );
    // DF alone is not a fragment
    check(
        &mut p,
        &v4_pkt(&[], ipv4(UDP, &udp(4433, 100, None), 0, 0x4000, V4_DST)),
        XDP_PASS,
        &f4(NoSocket),
    );
    // not UDP: TCP, ICMPv6, an IPv6 extension header
    check(
        &mut p,
        &v4_pkt(&[], ipv4(6, &[0u8; 20], 0, 0, V4_DST)),
        XDP_PASS,
        &f4(NotUdp),
    );
    check(
        &mut p,
        &v6_pkt(&[], ipv6(58, &[128, 0, 0, 0, 0, 0, 0, 0], V6_DST)),
        XDP_PASS,
        &f6(NotUdp),
    );
    check(
        &mut p,
        &v6_pkt(&[], ipv6(0, &[17, 0, 1, 4, 0, 0, 0, 0], V6_DST)),
        XDP_PASS,
        &f6(NotUdp),
    );
    // malformed service packets: UDP length past the end, or payload too short for QUIC
    check(
        &mut p,
        &v4_pkt(&[], ipv4(UDP, &udp(4433, 100, Some(400)), 0, 0, V4_DST)),
        XDP_DROP,
        &f4(Malformed),
    );
    check(
        &mut p,
        &v6_pkt(&[], ipv6(UDP, &udp(4433, 100, Some(400)), V6_DST)),
        XDP_DROP,
        &f6(Malformed),
    );
    check(
        &mut p,
        &v4_pkt(&[], ipv4(UDP, &udp(4433, 20, None), 0, 0, V4_DST)),
        XDP_DROP,
        &f4(Malformed),
    );
    check(
        &mut p,
        &v4_pkt(&[], ipv4(UDP, &udp(4433, 100, Some(4)), 0, 0, V4_DST)),
        XDP_DROP,
        &f4(Malformed),
    );
    // 21 bytes of payload is the shortest accepted
    check(
        &mut p,
        &v4_pkt(&[], ipv4(UDP, &udp(4433, 21, None), 0, 0, V4_DST)),
        XDP_PASS,
        &f4(NoSocket),
    );
    // not IP: ARP
    check(
        &mut p,
        &{
            let mut a = eth(0x0806, &[]);
            a.extend([0u8; 28]);
            a
        },
        XDP_PASS,
        &[Counter::PassNotIp],
    );
    // truncated headers before the port: to the kernel, counted as bad header
    let mut cut = v4_pkt(&[], ipv4(UDP, &udp(4433, 100, None), 0, 0, V4_DST));
    cut.truncate(14 + 20 + 3);
    check(&mut p, &cut, XDP_PASS, &[Counter::PassBadHeader]);
    let mut cut6 = v6_pkt(&[], ipv6(UDP, &udp(4433, 100, None), V6_DST));
    cut6.truncate(14 + 30);
    check(&mut p, &cut6, XDP_PASS, &[Counter::PassBadHeader]);
    // (BPF_PROG_TEST_RUN needs at least an Ethernet header, so no shorter frame here.)
    check(
        &mut p,
        &eth(0x0800, &[]),
        XDP_PASS,
        &[Counter::PassBadHeader],
    );
    let mut cut_vlan = eth(0x8100, &[]);
    cut_vlan.extend([0, 100]);
    check(&mut p, &cut_vlan, XDP_PASS, &[Counter::PassBadHeader]);
}

#[test]
fn address_filter_and_runtime_changes() {
    if !privileged("address_filter") {
        return;
    }
    use FamilyCounter::*;
    const UDP: u8 = 17;
    let mut p = TestProgram::load(&service(&[4433], &[IpAddr::V4(V4_DST)])).unwrap();
    let to = |dst: Ipv4Addr, port: u16| v4_pkt(&[], ipv4(UDP, &udp(port, 100, None), 0, 0, dst));
    let to6 = |dst: Ipv6Addr| v6_pkt(&[], ipv6(UDP, &udp(4433, 100, None), dst));
    check(&mut p, &to(V4_DST, 4433), XDP_PASS, &f4(NoSocket));
    check(
        &mut p,
        &to(Ipv4Addr::new(10, 99, 0, 7), 4433),
        XDP_PASS,
        &f4(OtherAddr),
    );
    // a filter with only IPv4 addresses steers no IPv6
    check(&mut p, &to6(V6_DST), XDP_PASS, &f6(OtherAddr));
    // change at run time: new port, IPv6 address added
    p.set_service(&service(&[9000], &[IpAddr::V4(V4_DST), IpAddr::V6(V6_DST)]))
        .unwrap();
    check(&mut p, &to(V4_DST, 4433), XDP_PASS, &f4(OtherPort));
    check(&mut p, &to(V4_DST, 9000), XDP_PASS, &f4(NoSocket));
    check(
        &mut p,
        &v6_pkt(&[], ipv6(UDP, &udp(9000, 100, None), V6_DST)),
        XDP_PASS,
        &f6(NoSocket),
    );
    // no addresses: any address
    p.set_service(&service(&[9000], &[])).unwrap();
    check(
        &mut p,
        &to(Ipv4Addr::new(192, 0, 2, 1), 9000),
        XDP_PASS,
        &f4(NoSocket),
    );
}

#[test]
fn bad_service_config_is_refused() {
    if !privileged("bad_service_config") {
        return;
    }
    assert!(TestProgram::load(&service(&[], &[])).is_err());
    assert!(TestProgram::load(&service(&[0], &[])).is_err());
    let many: Vec<u16> = (1..=65).collect();
    let err = TestProgram::load(&service(&many, &[]))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("at most 64 ports"), "{err}");
}

// ---- The shield ------------------------------------------------------------------------

use xdp_quic::cid::CidLayout;
use xdp_quic_control::xdp::ShieldConfig;
use xdp_quic_ebpf::Rate;

const V1: u32 = 1;
const DRAFT_29: u32 = 0xff00_001d;
const V2: u32 = 0x6b33_43cf;

/// A long header (`ty`: v1's packet type, 0 Initial) of `version`, with the CIDs and, for an
/// Initial, the token length `token_len` (a varint as given) and token; padded to `len`
/// octets of UDP payload.
fn long(ty: u8, version: u32, dcid: &[u8], scid: &[u8], token_len: &[u8], len: usize) -> Vec<u8> {
    let mut p = vec![0xc0 | (ty << 4)];
    p.extend_from_slice(&version.to_be_bytes());
    p.push(dcid.len() as u8);
    p.extend_from_slice(dcid);
    p.push(scid.len() as u8);
    p.extend_from_slice(scid);
    p.extend_from_slice(token_len);
    assert!(
        p.len() <= len,
        "a {len}-octet datagram cannot hold this header"
    );
    p.resize(len, 0x5a);
    p
}

fn initial(version: u32, len: usize) -> Vec<u8> {
    long(0, version, &[7; 8], &[9; 8], &[0], len)
}

/// A short header with `dcid`, `len` octets.
fn short(dcid: &[u8], len: usize) -> Vec<u8> {
    let mut p = vec![0x41];
    p.extend_from_slice(dcid);
    p.resize(len, 0x33);
    p
}

/// UDP to port 4433 carrying `payload`.
fn quic_udp(payload: &[u8]) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&40000u16.to_be_bytes());
    u.extend_from_slice(&4433u16.to_be_bytes());
    u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    u.extend_from_slice(&[0, 0]);
    u.extend_from_slice(payload);
    u
}

/// IPv4 from `src` to V4_DST carrying `payload` in UDP to the service port.
fn quic4(src: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
    let mut l3 = ipv4(17, &quic_udp(payload), 0, 0, V4_DST);
    l3[12..16].copy_from_slice(&src.octets());
    v4_pkt(&[], l3)
}

/// IPv6 from `src` to V6_DST.
fn quic6(src: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
    let mut l3 = ipv6(17, &quic_udp(payload), V6_DST);
    l3[8..24].copy_from_slice(&src.octets());
    v6_pkt(&[], l3)
}

/// The counters of an outcome, and one more.
fn plus([a, b]: [Counter; 2], x: Counter) -> [Counter; 3] {
    [a, b, x]
}

const SRC4: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);
const SRC6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x99, 0, 0, 0, 0, 0, 2);

fn shield_program(config: ShieldConfig, layout: Option<&CidLayout>) -> TestProgram {
    let p = TestProgram::load(&service(&[4433], &[])).unwrap();
    let mut maps = p.shield().unwrap();
    maps.set_config(Some(&config)).unwrap();
    maps.set_layout(layout).unwrap();
    p
}

#[test]
fn shield_off_lets_everything_through_as_before() {
    if !privileged("shield_off_lets_everything_through_as_before") {
        return;
    }
    use FamilyCounter::*;
    let mut p = TestProgram::load(&service(&[4433], &[])).unwrap();
    // A layout alone does nothing while the shield is off.
    let layout = CidLayout::for_workers(2).unwrap();
    let mut maps = p.shield().unwrap();
    maps.set_layout(Some(&layout)).unwrap();
    maps.set_pressure(0, true).unwrap();
    for payload in [initial(V1, 100), initial(V2, 100), short(&[0xee; 8], 100)] {
        check(&mut p, &quic4(SRC4, &payload), XDP_PASS, &f4(NoSocket));
    }
    // Turned on, then off again: as before.
    maps.set_config(Some(&ShieldConfig::default())).unwrap();
    check(
        &mut p,
        &quic4(SRC4, &initial(V1, 100)),
        XDP_DROP,
        &f4(ShortInitial),
    );
    maps.set_config(None).unwrap();
    check(
        &mut p,
        &quic4(SRC4, &initial(V1, 100)),
        XDP_PASS,
        &f4(NoSocket),
    );
    assert!(p.buckets().unwrap().is_empty());
}

#[test]
fn shield_drops_initials_in_short_datagrams() {
    if !privileged("shield_drops_initials_in_short_datagrams") {
        return;
    }
    use FamilyCounter::*;
    let mut p = shield_program(ShieldConfig::default(), None);
    for (payload, verdict, c4, c6) in [
        (
            initial(V1, 1199),
            XDP_DROP,
            f4(ShortInitial),
            f6(ShortInitial),
        ),
        (
            initial(DRAFT_29, 1199),
            XDP_DROP,
            f4(ShortInitial),
            f6(ShortInitial),
        ),
        (
            long(0, V1, &[7; 8], &[], &[0], 21),
            XDP_DROP,
            f4(ShortInitial),
            f6(ShortInitial),
        ),
        (initial(V1, 1200), XDP_PASS, f4(NoSocket), f6(NoSocket)),
        (
            initial(DRAFT_29, 1350),
            XDP_PASS,
            f4(NoSocket),
            f6(NoSocket),
        ),
        // 0-RTT, Handshake and Retry may be small.
        (
            long(1, V1, &[7; 8], &[9; 8], &[], 100),
            XDP_PASS,
            f4(NoSocket),
            f6(NoSocket),
        ),
        (
            long(2, V1, &[7; 8], &[9; 8], &[], 100),
            XDP_PASS,
            f4(NoSocket),
            f6(NoSocket),
        ),
        (
            long(3, V1, &[7; 8], &[9; 8], &[], 100),
            XDP_PASS,
            f4(NoSocket),
            f6(NoSocket),
        ),
    ] {
        check(&mut p, &quic4(SRC4, &payload), verdict, &c4);
        check(&mut p, &quic6(SRC6, &payload), verdict, &c6);
    }
    // Shorter than a QUIC packet: malformed first.
    check(
        &mut p,
        &quic4(SRC4, &long(0, V1, &[7; 8], &[], &[0], 20)),
        XDP_DROP,
        &f4(Malformed),
    );
    // The UDP length counts, not the frame: Ethernet padding does not make it 1,200.
    let mut padded = quic4(SRC4, &initial(V1, 1100));
    padded.extend([0u8; 200]);
    check(&mut p, &padded, XDP_DROP, &f4(ShortInitial));
    // Nor a UDP length past the IP payload's (the IP header says 1,100 octets of QUIC, the
    // UDP header 1,200, the frame is padded to hold them).
    let mut lying = quic4(SRC4, &initial(V1, 1200));
    let tot = (20 + 8 + 1100u16).to_be_bytes();
    lying[14 + 2..14 + 4].copy_from_slice(&tot);
    check(&mut p, &lying, XDP_DROP, &f4(Malformed));
    let mut lying6 = quic6(SRC6, &initial(V1, 1200));
    let plen = (8 + 1100u16).to_be_bytes();
    lying6[14 + 4..14 + 6].copy_from_slice(&plen);
    check(&mut p, &lying6, XDP_DROP, &f6(Malformed));
    // 0-RTT: a DCID over 20 octets is malformed; without a CID layout a short one passes.
    let over = long(1, V1, &[7; 21], &[9; 8], &[], 100);
    check(&mut p, &quic4(SRC4, &over), XDP_DROP, &f4(Malformed));
    let short_dcid = long(1, V1, &[7; 4], &[9; 8], &[], 100);
    check(&mut p, &quic4(SRC4, &short_dcid), XDP_PASS, &f4(NoSocket));
}

#[test]
fn shield_drops_small_unknown_versions_and_rate_limits_large_ones() {
    if !privileged("shield_drops_small_unknown_versions_and_rate_limits_large_ones") {
        return;
    }
    use FamilyCounter::*;
    let config = ShieldConfig {
        // Only v1 spoken: draft 29 counts as unknown here.
        versions: vec![V1],
        version_negotiation: Rate {
            per_sec: 0,
            burst: 2,
        },
        ..ShieldConfig::default()
    };
    let mut p = shield_program(config, None);
    let passed = Counter::VersionPassed;
    // Too small for version negotiation: v2, a draft not spoken, a VN packet (version 0).
    for v in [V2, DRAFT_29, 0, 0x1a2a_3a4a] {
        check(
            &mut p,
            &quic4(SRC4, &initial(v, 1199)),
            XDP_DROP,
            &f4(UnknownVersion),
        );
        check(
            &mut p,
            &quic6(SRC6, &initial(v, 600)),
            XDP_DROP,
            &f6(UnknownVersion),
        );
    }
    // Any packet type of another version (the type bits are v1's only).
    let hs = long(2, V2, &[1; 8], &[2; 8], &[], 100);
    check(&mut p, &quic4(SRC4, &hs), XDP_DROP, &f4(UnknownVersion));
    // Version negotiation (version 0) is only ever an answer to a connection of ours: at
    // any size, not rate limited like other versions (no layout here, so no CID is ours).
    let vn = long(0, 0, &[1; 8], &[2; 8], &[0, 0, 0, 1], 1250);
    check(&mut p, &quic4(SRC4, &vn), XDP_DROP, &f4(UnknownVersion));
    check(&mut p, &quic6(SRC6, &vn), XDP_DROP, &f6(UnknownVersion));
    // Large enough: 2 per /24, then dropped.
    let big = initial(V2, 1200);
    for _ in 0..2 {
        check(
            &mut p,
            &quic4(SRC4, &big),
            XDP_PASS,
            &plus(f4(NoSocket), passed),
        );
    }
    check(&mut p, &quic4(SRC4, &big), XDP_DROP, &f4(VersionRate));
    // Same /24, another host: the same bucket.
    check(
        &mut p,
        &quic4(Ipv4Addr::new(10, 99, 0, 200), &big),
        XDP_DROP,
        &f4(VersionRate),
    );
    // Another /24: its own.
    let other = Ipv4Addr::new(10, 99, 1, 2);
    check(
        &mut p,
        &quic4(other, &big),
        XDP_PASS,
        &plus(f4(NoSocket), passed),
    );
    // IPv6: per /56.
    for _ in 0..2 {
        check(
            &mut p,
            &quic6(SRC6, &big),
            XDP_PASS,
            &plus(f6(NoSocket), passed),
        );
    }
    let same56 = Ipv6Addr::new(0xfd00, 0x99, 0, 0xff, 1, 2, 3, 4);
    check(&mut p, &quic6(same56, &big), XDP_DROP, &f6(VersionRate));
    let other56 = Ipv6Addr::new(0xfd00, 0x99, 0, 0x100, 0, 0, 0, 2);
    check(
        &mut p,
        &quic6(other56, &big),
        XDP_PASS,
        &plus(f6(NoSocket), passed),
    );
    // One bucket per prefix and kind, the address masked.
    let mut keys: Vec<_> = p
        .buckets()
        .unwrap()
        .into_iter()
        .map(|(k, b)| (k.kind, k.family, k.prefix, k.addr, b.tokens))
        .collect();
    keys.sort();
    let a4 = |a: [u8; 3]| {
        let mut x = [0u8; 16];
        x[..3].copy_from_slice(&a);
        x
    };
    let a6 = |a: [u8; 7]| {
        let mut x = [0u8; 16];
        x[..7].copy_from_slice(&a);
        x
    };
    assert_eq!(
        keys,
        vec![
            (2, 4, 24, a4([10, 99, 0]), 0),
            (2, 4, 24, a4([10, 99, 1]), 1),
            (2, 6, 56, a6([0xfd, 0, 0, 0x99, 0, 0, 0]), 0),
            (2, 6, 56, a6([0xfd, 0, 0, 0x99, 0, 0, 1]), 1),
        ]
    );
}

#[test]
fn shield_drops_short_headers_whose_cid_is_not_ours() {
    // And Handshake, Retry and version negotiation long headers (below).
    if !privileged("shield_drops_short_headers_whose_cid_is_not_ours") {
        return;
    }
    use FamilyCounter::*;
    let layout = CidLayout::new(10, 3, &[0xab, 0xcd], 4).unwrap();
    let mut p = shield_program(ShieldConfig::default(), Some(&layout));
    // Any nonces do; fixed, so that a failure replays.
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0x5eed_c1d5);
    let cid = |w: usize, rng: &mut rand::rngs::StdRng| {
        let mut c = [0u8; 10];
        layout.write(w, rng, &mut c);
        c
    };
    for w in 0..4 {
        let c = cid(w, &mut rng);
        check(
            &mut p,
            &quic4(SRC4, &short(&c, 60)),
            XDP_PASS,
            &f4(NoSocket),
        );
        check(
            &mut p,
            &quic6(SRC6, &short(&c, 21)),
            XDP_PASS,
            &f6(NoSocket),
        );
    }
    let good = cid(1, &mut rng);
    let mut bad = Vec::new();
    let mut worker = good;
    worker[3] = 4; // a worker beyond the count
    bad.push(worker);
    let mut first = good;
    first[0] ^= 0x20; // another config rotation
    bad.push(first);
    let mut len = good;
    len[0] = (3 << 5) | 7; // another length
    bad.push(len);
    for i in 1..3 {
        let mut sid = good;
        sid[i] ^= 1; // another server id
        bad.push(sid);
    }
    bad.push([0x40; 10]);
    // A 0-RTT packet's DCID under 8 octets can only be ours (a client's first has 8 or
    // more): a foreign one is dropped; one of 8 or more passes, whatever it is.
    check(
        &mut p,
        &quic4(SRC4, &long(1, V1, &[7; 4], &[9; 8], &[], 100)),
        XDP_DROP,
        &f4(ForeignCid),
    );
    check(
        &mut p,
        &quic4(SRC4, &long(1, V1, &[7; 8], &[9; 8], &[], 100)),
        XDP_PASS,
        &f4(NoSocket),
    );
    for c in &bad {
        check(
            &mut p,
            &quic4(SRC4, &short(c, 100)),
            XDP_DROP,
            &f4(ForeignCid),
        );
        check(
            &mut p,
            &quic6(SRC6, &short(c, 100)),
            XDP_DROP,
            &f6(ForeignCid),
        );
    }
    // Long headers whose DCID must be ours too: Handshake (sent once the client has our
    // CID), Retry (only to a connection of ours), version negotiation (likewise). Initial
    // and 0-RTT may carry a client's random DCID.
    for (ty, version) in [(2, V1), (3, V1), (2, DRAFT_29), (0, 0)] {
        for w in 0..4 {
            let c = cid(w, &mut rng);
            check(
                &mut p,
                &quic4(SRC4, &long(ty, version, &c, &[9; 8], &[], 60)),
                XDP_PASS,
                &f4(NoSocket),
            );
        }
        let foreign = if version == 0 {
            UnknownVersion
        } else {
            ForeignCid
        };
        for c in bad.iter().chain([&[7u8; 10]]) {
            check(
                &mut p,
                &quic4(SRC4, &long(ty, version, c, &[9; 8], &[], 60)),
                XDP_DROP,
                &f4(foreign),
            );
            check(
                &mut p,
                &quic6(SRC6, &long(ty, version, c, &[9; 8], &[], 1300)),
                XDP_DROP,
                &f6(foreign),
            );
        }
        // Too short to hold a CID where the program reads it: not ours.
        let c = cid(0, &mut rng);
        check(
            &mut p,
            &quic4(SRC4, &long(ty, version, &c, &[], &[], 25)),
            XDP_DROP,
            &f4(foreign),
        );
    }
    for ty in [0, 1] {
        check(
            &mut p,
            &quic4(SRC4, &long(ty, V1, &[7; 8], &[9; 8], &[0], 1200)),
            XDP_PASS,
            &f4(NoSocket),
        );
    }
    // 256 workers: every worker octet is ours; no server id.
    let all = CidLayout::new(8, 0, &[], 256).unwrap();
    p.shield().unwrap().set_layout(Some(&all)).unwrap();
    let mut c = [0u8; 8];
    all.write(255, &mut rng, &mut c);
    check(
        &mut p,
        &quic4(SRC4, &short(&c, 100)),
        XDP_PASS,
        &f4(NoSocket),
    );
    // No layout: short headers, Handshake and Retry are not checked.
    p.shield().unwrap().set_layout(None).unwrap();
    check(
        &mut p,
        &quic4(SRC4, &short(&[0x40; 10], 100)),
        XDP_PASS,
        &f4(NoSocket),
    );
    for ty in [2, 3] {
        check(
            &mut p,
            &quic4(SRC4, &long(ty, V1, &[0x40; 10], &[9; 8], &[], 60)),
            XDP_PASS,
            &f4(NoSocket),
        );
    }
}

#[test]
fn shield_admits_tokenless_initials_per_prefix_under_pressure() {
    if !privileged("shield_admits_tokenless_initials_per_prefix_under_pressure") {
        return;
    }
    use FamilyCounter::*;
    let config = ShieldConfig {
        initial: Rate {
            per_sec: 0,
            burst: 3,
        },
        prefix_v4: 16,
        prefix_v6: 48,
        ..ShieldConfig::default()
    };
    let mut p = shield_program(config.clone(), None);
    let mut maps = p.shield().unwrap();
    let tokenless = initial(V1, 1200);
    let admitted4 = plus(f4(NoSocket), Counter::Admitted);
    let admitted6 = plus(f6(NoSocket), Counter::Admitted);
    let with_token4 = plus(f4(NoSocket), Counter::WithToken);
    // No pressure: every Initial passes, no bucket is made.
    for _ in 0..5 {
        check(&mut p, &quic4(SRC4, &tokenless), XDP_PASS, &f4(NoSocket));
    }
    // Pressure on another queue only: not this one's business.
    maps.set_pressure(1, true).unwrap();
    check(&mut p, &quic4(SRC4, &tokenless), XDP_PASS, &f4(NoSocket));
    assert!(p.buckets().unwrap().is_empty());
    // Pressure on queue 0: 3 per /16, then dropped.
    maps.set_pressure(0, true).unwrap();
    for _ in 0..3 {
        check(&mut p, &quic4(SRC4, &tokenless), XDP_PASS, &admitted4);
    }
    check(&mut p, &quic4(SRC4, &tokenless), XDP_DROP, &f4(InitialRate));
    check(
        &mut p,
        &quic4(Ipv4Addr::new(10, 99, 77, 1), &tokenless),
        XDP_DROP,
        &f4(InitialRate),
    );
    check(
        &mut p,
        &quic4(Ipv4Addr::new(10, 98, 0, 2), &tokenless),
        XDP_PASS,
        &admitted4,
    );
    // Initials that carry a token pass, whatever the bucket: a Retry token, a NEW_TOKEN one,
    // in 1-, 2-, 4- and 8-octet length encodings.
    for token_len in [
        &[0x01][..],
        &[0x3f],
        &[0x40, 0x01],
        &[0x41, 0x00],
        &[0x80, 0, 0, 0x10],
        &[0xc0, 0, 0, 0, 0, 0, 0, 0x01],
    ] {
        let t = long(0, V1, &[7; 8], &[9; 8], token_len, 1200);
        check(&mut p, &quic4(SRC4, &t), XDP_PASS, &with_token4);
        let t = long(0, DRAFT_29, &[7; 20], &[], token_len, 1252);
        check(&mut p, &quic4(SRC4, &t), XDP_PASS, &with_token4);
    }
    // A zero token length in a longer encoding is no token; nor is a header whose CIDs
    // cannot be read (longer than 20 octets).
    for t in [
        long(0, V1, &[7; 8], &[9; 8], &[0x40, 0x00], 1200),
        long(0, V1, &[7; 8], &[9; 8], &[0xc0, 0, 0, 0, 0, 0, 0, 0], 1200),
        long(0, V1, &[7; 21], &[9; 8], &[0x05], 1200),
        long(0, V1, &[7; 8], &[9; 21], &[0x05], 1200),
    ] {
        check(&mut p, &quic4(SRC4, &t), XDP_DROP, &f4(InitialRate));
    }
    // Other packet types are not limited.
    let hs = long(2, V1, &[7; 8], &[9; 8], &[], 1200);
    check(&mut p, &quic4(SRC4, &hs), XDP_PASS, &f4(NoSocket));
    // IPv6, per /48.
    for _ in 0..3 {
        check(&mut p, &quic6(SRC6, &tokenless), XDP_PASS, &admitted6);
    }
    let same48 = Ipv6Addr::new(0xfd00, 0x99, 0, 0xffff, 0, 0, 0, 9);
    check(
        &mut p,
        &quic6(same48, &tokenless),
        XDP_DROP,
        &f6(InitialRate),
    );
    // Pressure gone: everything passes again (the buckets stay, unused).
    maps.set_pressure(0, false).unwrap();
    check(&mut p, &quic4(SRC4, &tokenless), XDP_PASS, &f4(NoSocket));
    // Admission off: pressure is ignored.
    maps.set_pressure(0, true).unwrap();
    maps.set_config(Some(&ShieldConfig {
        admit_under_pressure: false,
        ..config
    }))
    .unwrap();
    check(&mut p, &quic4(SRC4, &tokenless), XDP_PASS, &f4(NoSocket));
}

#[test]
fn shield_buckets_refill_at_their_rate() {
    if !privileged("shield_buckets_refill_at_their_rate") {
        return;
    }
    use FamilyCounter::*;
    let config = ShieldConfig {
        initial: Rate {
            per_sec: 20,
            burst: 2,
        },
        ..ShieldConfig::default()
    };
    let mut p = shield_program(config, None);
    p.shield().unwrap().set_pressure(0, true).unwrap();
    let pkt = quic4(SRC4, &initial(V1, 1200));
    let admitted = plus(f4(NoSocket), Counter::Admitted);
    let start = std::time::Instant::now();
    check(&mut p, &pkt, XDP_PASS, &admitted);
    check(&mut p, &pkt, XDP_PASS, &admitted);
    // Empty now: the next token comes 50 ms after the bucket was made, never sooner.
    let mut refused = 0;
    let mut refilled = None;
    xdp_quic_control::testing::wait_until("a token refilled", Duration::from_secs(30), || {
        let out = p.run(&pkt).unwrap();
        if out.retval == XDP_PASS {
            refilled = Some(start.elapsed());
            return true;
        }
        refused += 1;
        false
    });
    let refilled = refilled.unwrap();
    assert!(
        refilled >= Duration::from_millis(50),
        "a token after {refilled:?}, sooner than 1/20 s"
    );
    let c = p.counters().unwrap();
    assert_eq!(c.get(Counter::Family(Family::V4, InitialRate)), refused);
    assert_eq!(c.get(Counter::Admitted), 3);
    invariants(&c);
}

/// A bucket idle for long earns what its rate gives and no more: before, one idle for 2^40
/// ns (18 minutes) was made full whatever its rate. The bucket is backdated to the clock's
/// start (the machine's boot), so the test shows the old rule only where the machine has
/// been up for more than 18 minutes; the refill it checks holds everywhere.
#[test]
fn a_long_idle_bucket_earns_its_rate_not_its_burst() {
    if !privileged("a_long_idle_bucket_earns_its_rate_not_its_burst") {
        return;
    }
    use FamilyCounter::*;
    const BURST: u32 = 4_000_000_000;
    let config = ShieldConfig {
        initial: Rate {
            per_sec: 3,
            burst: BURST,
        },
        ..ShieldConfig::default()
    };
    let mut p = shield_program(config, None);
    p.shield().unwrap().set_pressure(0, true).unwrap();
    let pkt = quic4(SRC4, &initial(V1, 1200));
    let admitted = plus(f4(NoSocket), Counter::Admitted);
    check(&mut p, &pkt, XDP_PASS, &admitted);
    let buckets = p.buckets().unwrap();
    assert_eq!(buckets.len(), 1, "one bucket: {buckets:?}");
    let key = buckets[0].0;
    assert_eq!(
        buckets[0].1.tokens,
        BURST - 1,
        "a new bucket is full less one"
    );
    // Empty, last filled at the clock's start (CLOCK_MONOTONIC: bpf_ktime_get_ns and
    // Instant read the same clock).
    let empty = xdp_quic_ebpf::Bucket {
        stamp_ns: 0,
        tokens: 0,
        reserved: 0,
    };
    p.set_bucket(&key, &empty).unwrap();
    let before = monotonic_ns();
    check(&mut p, &pkt, XDP_PASS, &admitted);
    let after = monotonic_ns();
    let b = p.buckets().unwrap()[0].1;
    // 3 tokens a second since the clock's start, less the one taken.
    let earned = |ns: u64| ns / 1_000_000_000 * 3 + ns % 1_000_000_000 * 3 / 1_000_000_000;
    let (least, most) = (earned(before) - 1, earned(after) - 1);
    assert!(
        (least..=most).contains(&u64::from(b.tokens)),
        "{} tokens after {before}..{after} ns idle at 3/s: expected {least}..={most}",
        b.tokens
    );
    // The fraction of a token earned is kept: the stamp is the time of the last whole
    // token, less than a token's time (1/3 s) before the packet.
    assert!(
        b.stamp_ns <= after && b.stamp_ns + 1_000_000_000 / 3 >= before,
        "stamp {} for a packet within {before}..{after}",
        b.stamp_ns
    );
}

/// CLOCK_MONOTONIC in nanoseconds.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime");
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// An Initial whose DCID is ours is no new connection attempt: a client's second one (its
/// ACK, with its Finished coalesced behind), or a server's small ACK-only one to a
/// connection this host opened. Under pressure it takes no admission token (before, the
/// client's second Initial was dropped once its prefix had spent its tokens, stalling its
/// handshake a whole PTO), and it may be shorter than 1200 octets. A long header's DCID is
/// ours only with our length octet.
#[test]
fn shield_lets_initials_whose_cid_is_ours_pass_without_a_token() {
    if !privileged("shield_lets_initials_whose_cid_is_ours_pass_without_a_token") {
        return;
    }
    use FamilyCounter::*;
    let layout = CidLayout::new(10, 3, &[0xab, 0xcd], 4).unwrap();
    let config = ShieldConfig {
        initial: Rate {
            per_sec: 0,
            burst: 1,
        },
        ..ShieldConfig::default()
    };
    let mut p = shield_program(config, Some(&layout));
    p.shield().unwrap().set_pressure(0, true).unwrap();
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0x1417_1a15);
    let mut ours = [0u8; 10];
    layout.write(2, &mut rng, &mut ours);
    // The client's first Initial (its own random DCID) takes the prefix's only token.
    check(
        &mut p,
        &quic4(SRC4, &initial(V1, 1200)),
        XDP_PASS,
        &plus(f4(NoSocket), Counter::Admitted),
    );
    check(
        &mut p,
        &quic4(SRC4, &initial(V1, 1200)),
        XDP_DROP,
        &f4(InitialRate),
    );
    // Its next one, to our CID, passes without a token; so does a small one to our CID.
    for len in [1200, 200] {
        check(
            &mut p,
            &quic4(SRC4, &long(0, V1, &ours, &[9; 8], &[0], len)),
            XDP_PASS,
            &f4(NoSocket),
        );
    }
    check(
        &mut p,
        &quic4(SRC4, &long(0, V1, &[7; 8], &[9; 8], &[0], 200)),
        XDP_DROP,
        &f4(ShortInitial),
    );
    // Our CID's octets behind another length octet are not our CID.
    let mut longer = ours.to_vec();
    longer.push(0);
    check(
        &mut p,
        &quic4(SRC4, &long(2, V1, &longer, &[9; 8], &[], 60)),
        XDP_DROP,
        &f4(ForeignCid),
    );
}

/// Under pressure, a 0-RTT packet passes only to our CID: a client's first 0-RTT (its own
/// random DCID of 8 to 20 octets) can be forged at any rate and size, and a client whose
/// 0-RTT is lost sends the data again in 1-RTT; after a Retry its 0-RTT goes to our CID.
/// Without pressure, or with admission off, the first 0-RTT passes as before. (Before, a
/// flood of small forged 0-RTT packets passed the shield at any rate.)
#[test]
fn shield_drops_foreign_zero_rtt_under_pressure() {
    if !privileged("shield_drops_foreign_zero_rtt_under_pressure") {
        return;
    }
    use FamilyCounter::*;
    let layout = CidLayout::new(10, 3, &[0xab, 0xcd], 4).unwrap();
    let config = ShieldConfig::default();
    let mut p = shield_program(config.clone(), Some(&layout));
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(0x0a77_0001);
    let mut ours = [0u8; 10];
    layout.write(1, &mut rng, &mut ours);
    let first4 = quic4(SRC4, &long(1, V1, &[7; 8], &[9; 8], &[], 100));
    let first6 = quic6(SRC6, &long(1, V1, &[7; 20], &[9; 8], &[], 100));
    let to_us = quic4(SRC4, &long(1, V1, &ours, &[9; 8], &[], 100));
    check(&mut p, &first4, XDP_PASS, &f4(NoSocket));
    check(&mut p, &first6, XDP_PASS, &f6(NoSocket));
    p.shield().unwrap().set_pressure(0, true).unwrap();
    check(&mut p, &first4, XDP_DROP, &f4(ForeignCid));
    check(&mut p, &first6, XDP_DROP, &f6(ForeignCid));
    check(&mut p, &to_us, XDP_PASS, &f4(NoSocket));
    // Admission off: pressure is ignored.
    p.shield()
        .unwrap()
        .set_config(Some(&ShieldConfig {
            admit_under_pressure: false,
            ..config.clone()
        }))
        .unwrap();
    check(&mut p, &first4, XDP_PASS, &f4(NoSocket));
    // Pressure gone: the first 0-RTT passes again.
    p.shield().unwrap().set_config(Some(&config)).unwrap();
    p.shield().unwrap().set_pressure(0, false).unwrap();
    check(&mut p, &first4, XDP_PASS, &f4(NoSocket));
}
