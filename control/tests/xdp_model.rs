//! The XDP program against a userspace model of its rules, on thousands of packets: valid
//! UDP frames (IPv4/IPv6, with and without a VLAN tag, service and other ports), non-UDP,
//! fragments, and random truncations and byte flips of all of them. For each packet the
//! verdict and the counter that moved (the reason) must be what the model says.
//! BPF_PROG_TEST_RUN: no interface, but root (CAP_BPF); with CI set a missing privilege fails.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use rand::{Rng, SeedableRng};
use xdp_quic::packet::frame::{self, L2};
use xdp_quic_control::testing::privileged;
use xdp_quic_control::xdp::test_run::{TestProgram, XDP_DROP, XDP_PASS};
use xdp_quic_control::xdp::ServiceConfig;

const PORT: u16 = 4433;
const MIN_QUIC_PAYLOAD: usize = 21;

fn be16(p: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([p[at], p[at + 1]])
}

/// What the program should do with `p`: the verdict and the reason counter. No AF_XDP
/// socket is registered in a test run, so a packet to steer passes as `no_socket`.
fn model(p: &[u8], addrs: &[IpAddr]) -> (u32, String) {
    let pass = |c: &str| (XDP_PASS, c.to_string());
    if p.len() < 14 {
        return pass("passed_bad_header");
    }
    let (mut proto, mut off) = (be16(p, 12), 14);
    if proto == 0x8100 || proto == 0x88a8 {
        if p.len() < 18 {
            return pass("passed_bad_header");
        }
        proto = be16(p, 16);
        off = 18;
    }
    let (fam, udp, dst): (&str, usize, IpAddr) = match proto {
        0x0800 => {
            let ip = &p[off..];
            if ip.len() < 20 || ip[0] >> 4 != 4 || ip[0] & 0xf < 5 {
                return pass("passed_bad_header");
            }
            if be16(ip, 6) & 0x3fff != 0 {
                return pass("v4.passed_fragment");
            }
            if ip[9] != 17 {
                return pass("v4.passed_not_udp");
            }
            let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
            ("v4", off + usize::from(ip[0] & 0xf) * 4, dst)
        }
        0x86dd => {
            let ip = &p[off..];
            if ip.len() < 40 || ip[0] >> 4 != 6 {
                return pass("passed_bad_header");
            }
            if ip[6] == 44 {
                return pass("v6.passed_fragment");
            }
            if ip[6] != 17 {
                return pass("v6.passed_not_udp");
            }
            let mut d = [0u8; 16];
            d.copy_from_slice(&ip[24..40]);
            ("v6", off + 40, IpAddr::V6(Ipv6Addr::from(d)))
        }
        _ => return pass("passed_not_ip"),
    };
    if p.len() < udp + 8 {
        return pass("passed_bad_header");
    }
    if be16(p, udp + 2) != PORT {
        return pass(&format!("{fam}.passed_other_port"));
    }
    if !addrs.is_empty() && !addrs.contains(&dst) {
        return pass(&format!("{fam}.passed_other_addr"));
    }
    let ulen = usize::from(be16(p, udp + 4));
    if ulen < 8 + MIN_QUIC_PAYLOAD || udp + ulen > p.len() {
        return (XDP_DROP, format!("{fam}.dropped_malformed"));
    }
    pass(&format!("{fam}.passed_no_socket"))
}

/// A valid UDP frame, then perhaps made not-UDP, fragmented, truncated or flipped.
fn packet(rng: &mut impl Rng) -> Vec<u8> {
    let v6 = rng.gen_bool(0.5);
    let ip = |rng: &mut dyn rand::RngCore, server: bool| -> IpAddr {
        let last = if server { 1 } else { rng.next_u32() as u8 };
        if v6 {
            IpAddr::V6(Ipv6Addr::new(0xfd00, 0x63, 0, 0, 0, 0, 0, u16::from(last)))
        } else {
            IpAddr::V4(Ipv4Addr::new(10, 99, 0, last))
        }
    };
    let dport = match rng.gen_range(0..4) {
        0 => 53,
        1 => PORT + 1,
        _ => PORT,
    };
    let src = SocketAddr::new(ip(rng, false), rng.gen());
    let to_server = rng.gen_bool(0.8);
    let dst = SocketAddr::new(ip(rng, to_server), dport);
    let vlan = rng
        .gen_bool(0.3)
        .then(|| (if rng.gen_bool(0.5) { 0x8100 } else { 0x88a8 }, 7));
    let l2 = L2 {
        src_mac: [2; 6],
        dst_mac: [4; 6],
        vlan,
    };
    let payload: Vec<u8> = (0..rng.gen_range(0..300)).map(|_| rng.gen()).collect();
    let mut buf = vec![0u8; 2048];
    let n = frame::write(&mut buf, &l2, src, dst, 0, &payload).unwrap();
    buf.truncate(n);
    let l3 = if vlan.is_some() { 18 } else { 14 };
    match rng.gen_range(0..10) {
        0 => buf[l3 + if v6 { 6 } else { 9 }] = 6, // TCP
        1 if !v6 => buf[l3 + 6] |= 0x20,           // IPv4 more fragments
        1 => buf[l3 + 6] = 44,                     // IPv6 fragment header
        // BPF_PROG_TEST_RUN takes no frame shorter than an Ethernet header (nor does a NIC
        // deliver one).
        2 => buf.truncate(rng.gen_range(14..=buf.len())),
        3 | 4 => {
            for _ in 0..rng.gen_range(1..4) {
                let i = rng.gen_range(0..buf.len().min(80));
                buf[i] = rng.gen();
            }
        }
        5 => buf.extend((0..rng.gen_range(1..40)).map(|_| 0u8)), // Ethernet padding
        _ => {}
    }
    buf
}

fn run_against_model(addrs: &[IpAddr], seed: u64) {
    let service = ServiceConfig {
        ports: [PORT].into(),
        addrs: addrs.iter().copied().collect(),
    };
    let mut prog = TestProgram::load(&service).expect("load the program");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut reasons = std::collections::BTreeMap::<String, u32>::new();
    for i in 0..3_000 {
        let p = packet(&mut rng);
        let before = prog.counters().unwrap();
        let out = prog.run(&p).unwrap();
        let after = prog.counters().unwrap();
        let moved: Vec<String> = after
            .delta(&before)
            .named()
            .into_iter()
            .filter(|(n, v)| *v > 0 && n != "packets" && !n.ends_with(".seen"))
            .map(|(n, _)| n)
            .collect();
        let (verdict, reason) = model(&p, addrs);
        assert_eq!(
            (out.retval, moved.clone()),
            (verdict, vec![reason.clone()]),
            "packet {i} ({} octets): {p:02x?}",
            p.len()
        );
        *reasons.entry(reason).or_default() += 1;
    }
    // The generator reached every outcome of the rules.
    for r in [
        "passed_not_ip",
        "passed_bad_header",
        "v4.passed_fragment",
        "v6.passed_fragment",
        "v4.passed_not_udp",
        "v6.passed_not_udp",
        "v4.passed_other_port",
        "v6.passed_other_port",
        "v4.dropped_malformed",
        "v4.passed_no_socket",
        "v6.passed_no_socket",
    ] {
        assert!(
            reasons.get(r).copied().unwrap_or(0) > 0,
            "no packet exercised {r}: {reasons:?}"
        );
    }
}

#[test]
fn verdicts_match_the_model_on_random_packets() {
    if privileged("verdicts_match_the_model_on_random_packets") {
        run_against_model(&[], 1);
    }
}

#[test]
fn verdicts_match_the_model_with_an_address_filter() {
    if privileged("verdicts_match_the_model_with_an_address_filter") {
        run_against_model(
            &["10.99.0.1".parse().unwrap(), "fd00:63::1".parse().unwrap()],
            2,
        );
    }
}
