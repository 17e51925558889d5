//! The steering program run on crafted packets through `BPF_PROG_TEST_RUN`: verdicts
//! and counters. No interface needed (root only: loading BPF programs; in CI a missing
//! privilege fails instead of skipping).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
