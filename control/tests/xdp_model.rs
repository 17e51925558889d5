//! The XDP program against a userspace model of its rules, on thousands of packets: valid
//! UDP frames (IPv4/IPv6, with and without a VLAN tag, service and other ports), non-UDP,
//! fragments, and random truncations and byte flips of all of them. For each packet the
//! verdict and the counters that moved (the reason, and what the shield let through) must be
//! what the model says; with the shield on, the payloads are also QUIC-shaped (short headers
//! with our CIDs or others, long headers of spoken and other versions around 1,200 octets,
//! with and without tokens, from a few source prefixes) and the pressure flag comes and goes,
//! and at the end the program's token buckets must be the model's.
//! BPF_PROG_TEST_RUN: no interface, but root (CAP_BPF); with CI set a missing privilege fails.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use rand::{Rng, SeedableRng};
use xdp_quic::cid::CidLayout;
use xdp_quic::packet::frame::{self, L2};
use xdp_quic_control::testing::privileged;
use xdp_quic_control::xdp::test_run::{TestProgram, XDP_DROP, XDP_PASS};
use xdp_quic_control::xdp::{ServiceConfig, ShieldConfig};
use xdp_quic_ebpf::Rate;

const PORT: u16 = 4433;
const MIN_QUIC_PAYLOAD: usize = 21;
const MIN_INITIAL: usize = 1200;
const V1: u32 = 1;
const DRAFT_29: u32 = 0xff00_001d;
const V2: u32 = 0x6b33_43cf;

fn be16(p: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([p[at], p[at + 1]])
}

/// The shield as the model keeps it: its configuration (refill rates 0, so that what the
/// buckets hold depends on the packets alone), the pressure flag of queue 0, and the buckets.
struct Shield {
    config: ShieldConfig,
    layout: CidLayout,
    pressure: bool,
    /// (kind, family, prefix, masked address) → tokens left.
    buckets: BTreeMap<(u8, u8, u8, [u8; 16]), u32>,
}

impl Shield {
    /// Takes a token of `kind` for `src`'s prefix.
    fn take(&mut self, kind: u8, src: IpAddr, rate: Rate) -> bool {
        let (family, prefix, octets) = match src {
            IpAddr::V4(a) => (4, self.config.prefix_v4, a.octets().to_vec()),
            IpAddr::V6(a) => (6, self.config.prefix_v6, a.octets().to_vec()),
        };
        let mut addr = [0u8; 16];
        for (i, o) in octets.iter().enumerate() {
            let bits = usize::from(prefix).saturating_sub(8 * i).min(8);
            addr[i] = if bits == 0 {
                0
            } else {
                o & (0xffu8 << (8 - bits))
            };
        }
        let tokens = self
            .buckets
            .entry((kind, family, prefix, addr))
            .or_insert(rate.burst);
        if *tokens == 0 {
            return false;
        }
        *tokens -= 1;
        true
    }

    /// What the shield does with the QUIC payload `p` (`len` octets of UDP payload, at least
    /// 21) from `src`: the reason it drops it, or none, and the counters besides the outcome
    /// that move.
    fn verdict(&mut self, p: &[u8], src: IpAddr) -> (Option<&'static str>, Vec<&'static str>) {
        let len = p.len();
        if p[0] & 0x80 == 0 {
            let ours = self.layout.decode(&p[1..1 + self.layout.len()]).is_some();
            return ((!ours).then_some("dropped_foreign_cid"), Vec::new());
        }
        let version = u32::from_be_bytes([p[1], p[2], p[3], p[4]]);
        // A long header's DCID, where the program reads it (26 octets at least), with our
        // length octet.
        let ours_long = p.len() >= 26
            && usize::from(p[5]) == self.layout.len()
            && self.layout.decode(&p[6..6 + self.layout.len()]).is_some();
        if version == 0 {
            // Version negotiation: only an answer to a connection of ours.
            return (
                (!ours_long).then_some("dropped_unknown_version"),
                Vec::new(),
            );
        }
        if !self.config.versions.contains(&version) {
            if len < MIN_INITIAL {
                return (Some("dropped_unknown_version"), Vec::new());
            }
            if !self.take(2, src, self.config.version_negotiation) {
                return (Some("dropped_version_rate"), Vec::new());
            }
            return (None, vec!["shield_version_passed"]);
        }
        if p[0] & 0x20 != 0 {
            // Handshake and Retry: the DCID is ours.
            return ((!ours_long).then_some("dropped_foreign_cid"), Vec::new());
        }
        if p[0] & 0x30 == 0x10 {
            // 0-RTT: a DCID of at most 20 octets, the client's first (8 or more) or ours;
            // under pressure, ours only.
            if p[5] > 20 {
                return (Some("dropped_malformed"), Vec::new());
            }
            let pressed = self.config.admit_under_pressure && self.pressure;
            if (p[5] < 8 || pressed) && !ours_long {
                return (Some("dropped_foreign_cid"), Vec::new());
            }
            return (None, Vec::new());
        }
        if ours_long {
            // An Initial to our CID is no new attempt: no size rule, no token.
            return (None, Vec::new());
        }
        if len < MIN_INITIAL {
            return (Some("dropped_short_initial"), Vec::new());
        }
        if !self.config.admit_under_pressure || !self.pressure {
            return (None, Vec::new());
        }
        if has_token(p) {
            return (None, vec!["shield_with_token"]);
        }
        if !self.take(1, src, self.config.initial) {
            return (Some("dropped_initial_rate"), Vec::new());
        }
        (None, vec!["shield_admitted"])
    }
}

/// Whether a long header (at least 1,200 octets) carries a token: CIDs of at most 20
/// octets, then a nonzero token length.
fn has_token(p: &[u8]) -> bool {
    let dcid = usize::from(p[5]);
    if dcid > 20 {
        return false;
    }
    let scid = usize::from(p[6 + dcid]);
    if scid > 20 {
        return false;
    }
    let q = &p[7 + dcid + scid..];
    let n = 1 << (q[0] >> 6);
    q[0] & 0x3f != 0 || q[1..n].iter().any(|&b| b != 0)
}

/// What the program should do with `p`: the verdict and the counters that move besides
/// `packets` and `*.seen` (the outcome first). No AF_XDP socket is registered in a test
/// run, so a packet to steer passes as `no_socket`.
fn model(p: &[u8], addrs: &[IpAddr], shield: Option<&mut Shield>) -> (u32, Vec<String>) {
    let pass = |c: &str| (XDP_PASS, vec![c.to_string()]);
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
    // (family, UDP header offset, source, destination, IP payload length)
    let (fam, udp, src, dst, l4len): (&str, usize, IpAddr, IpAddr, usize) = match proto {
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
            let src = IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]));
            let dst = IpAddr::V4(Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]));
            let hlen = usize::from(ip[0] & 0xf) * 4;
            let l4len = usize::from(be16(ip, 2)).saturating_sub(hlen);
            ("v4", off + hlen, src, dst, l4len)
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
            let (mut s, mut d) = ([0u8; 16], [0u8; 16]);
            s.copy_from_slice(&ip[8..24]);
            d.copy_from_slice(&ip[24..40]);
            let (s, d) = (Ipv6Addr::from(s).into(), Ipv6Addr::from(d).into());
            ("v6", off + 40, s, d, usize::from(be16(ip, 4)))
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
    if ulen < 8 + MIN_QUIC_PAYLOAD || udp + ulen > p.len() || ulen != l4len {
        return (XDP_DROP, vec![format!("{fam}.dropped_malformed")]);
    }
    let (drop, besides) = match shield {
        Some(s) => s.verdict(&p[udp + 8..udp + ulen], src),
        None => (None, Vec::new()),
    };
    let (verdict, outcome) = match drop {
        Some(reason) => (XDP_DROP, reason),
        None => (XDP_PASS, "passed_no_socket"),
    };
    let mut moved = vec![format!("{fam}.{outcome}")];
    moved.extend(besides.into_iter().map(String::from));
    (verdict, moved)
}

/// A QUIC-shaped payload: a short header (our CID, a foreign one) or a long header (spoken
/// or other version, any type, CIDs of 0 to 22 octets, token lengths in every encoding),
/// sized around 1,200 octets.
fn quic_payload(rng: &mut impl Rng, layout: &CidLayout) -> Vec<u8> {
    let len = match rng.gen_range(0..6) {
        0 => rng.gen_range(21..200),
        1 => MIN_INITIAL - 1,
        2 => MIN_INITIAL,
        3 => MIN_INITIAL + 1,
        _ => rng.gen_range(1150..1300),
    };
    let mut p: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
    if rng.gen_bool(0.3) {
        p[0] = 0x40 | (p[0] & 0x3f);
        if rng.gen_bool(0.6) {
            let w = rng.gen_range(0..layout.workers() + 1).min(255);
            let mut cid = vec![0u8; layout.len()];
            layout.write(0, rng, &mut cid);
            cid[layout.worker_offset()] = w as u8;
            p[1..1 + cid.len()].copy_from_slice(&cid);
        }
        return p;
    }
    let ty = if rng.gen_bool(0.7) {
        0
    } else {
        rng.gen_range(1..4)
    };
    p[0] = 0xc0 | (ty << 4) | (p[0] & 0x0f);
    let version = match rng.gen_range(0..6) {
        0 | 1 => V1,
        2 => DRAFT_29,
        3 => V2,
        4 => 0,
        _ => rng.gen(),
    };
    p[1..5].copy_from_slice(&version.to_be_bytes());
    let cid_len = |rng: &mut dyn rand::RngCore| -> u8 {
        match rng.next_u32() % 8 {
            0 => 0,
            1 => 21 + (rng.next_u32() % 2) as u8,
            _ => 8 + (rng.next_u32() % 13) as u8,
        }
    };
    let mut dcid = cid_len(rng);
    if rng.gen_bool(0.4) && 6 + layout.len() <= p.len() {
        // One of our CIDs (a Handshake, a Retry or a version negotiation to us), of a
        // worker that may be beyond the count.
        let w = rng.gen_range(0..layout.workers() + 1).min(255);
        let mut cid = vec![0u8; layout.len()];
        layout.write(0, rng, &mut cid);
        cid[layout.worker_offset()] = w as u8;
        p[6..6 + cid.len()].copy_from_slice(&cid);
        dcid = cid.len() as u8;
    }
    p[5] = dcid;
    let at = 6 + usize::from(dcid);
    if at >= p.len() {
        return p;
    }
    let scid = cid_len(rng);
    p[at] = scid;
    let at = at + 1 + usize::from(scid);
    let token: &[u8] = match rng.gen_range(0..8) {
        0..=3 => &[0],
        4 => &[0x05],
        5 => &[0x40, 0x00],
        6 => &[0x40, 0x20],
        _ => &[0xc0, 0, 0, 0, 0, 0, 0, 0],
    };
    if at + token.len() <= p.len() {
        p[at..at + token.len()].copy_from_slice(token);
    }
    p
}

/// A valid UDP frame, then perhaps made not-UDP, fragmented, truncated or flipped.
fn packet(rng: &mut impl Rng, quic: Option<&CidLayout>) -> Vec<u8> {
    let v6 = rng.gen_bool(0.5);
    // Clients from 4 prefixes (of the shield's /24 and /56), any host in them.
    let ip = |rng: &mut dyn rand::RngCore, server: bool| -> IpAddr {
        let (net, host) = if server {
            (0, 1)
        } else {
            ((rng.next_u32() % 4) as u8, rng.next_u32() as u8)
        };
        if v6 {
            let sub = if server {
                0
            } else {
                (u16::from(net) << 8) | u16::from(host)
            };
            IpAddr::V6(Ipv6Addr::new(
                0xfd00,
                0x63,
                0,
                sub,
                0,
                0,
                0,
                u16::from(host),
            ))
        } else {
            IpAddr::V4(Ipv4Addr::new(10, 99, net, host))
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
    let payload: Vec<u8> = match quic {
        Some(layout) if rng.gen_bool(0.8) => quic_payload(rng, layout),
        _ => (0..rng.gen_range(0..300)).map(|_| rng.gen()).collect(),
    };
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

fn run_against_model(addrs: &[IpAddr], shield: Option<ShieldConfig>, seed: u64) {
    let service = ServiceConfig {
        ports: [PORT].into(),
        addrs: addrs.iter().copied().collect(),
    };
    let mut prog = TestProgram::load(&service).expect("load the program");
    let layout = CidLayout::new(9, 2, &[0x5e], 3).unwrap();
    let mut model_shield = shield.map(|config| {
        let mut maps = prog.shield().unwrap();
        maps.set_config(Some(&config)).unwrap();
        maps.set_layout(Some(&layout)).unwrap();
        Shield {
            config,
            layout: layout.clone(),
            pressure: false,
            buckets: BTreeMap::new(),
        }
    });
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut reasons = BTreeMap::<String, u32>::new();
    let n = if model_shield.is_some() { 6_000 } else { 3_000 };
    for i in 0..n {
        if let Some(s) = model_shield.as_mut() {
            // The pressure comes and goes.
            if i % 250 == 0 {
                s.pressure = rng.gen_bool(0.6);
                prog.shield().unwrap().set_pressure(0, s.pressure).unwrap();
            }
        }
        let p = packet(&mut rng, model_shield.as_ref().map(|s| &s.layout));
        let before = prog.counters().unwrap();
        let out = prog.run(&p).unwrap();
        let after = prog.counters().unwrap();
        let mut moved: Vec<String> = after
            .delta(&before)
            .named()
            .into_iter()
            .filter(|(n, v)| *v > 0 && n != "packets" && !n.ends_with(".seen"))
            .map(|(n, _)| n)
            .collect();
        let (verdict, mut want) = model(&p, addrs, model_shield.as_mut());
        *reasons.entry(want[0].clone()).or_default() += 1;
        for w in &want[1..] {
            *reasons.entry(w.clone()).or_default() += 1;
        }
        moved.sort();
        want.sort();
        assert_eq!(
            (out.retval, moved),
            (verdict, want),
            "packet {i} ({} octets): {p:02x?}",
            p.len()
        );
    }
    // The generator reached every outcome of the rules.
    let mut expected: Vec<String> = [
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
    ]
    .map(String::from)
    .to_vec();
    if let Some(s) = &model_shield {
        for fam in ["v4", "v6"] {
            for r in [
                "dropped_short_initial",
                "dropped_unknown_version",
                "dropped_version_rate",
                "dropped_foreign_cid",
                "dropped_initial_rate",
            ] {
                expected.push(format!("{fam}.{r}"));
            }
        }
        expected.extend(
            [
                "shield_admitted",
                "shield_with_token",
                "shield_version_passed",
            ]
            .map(String::from),
        );
        // The program's buckets are the model's.
        let mut have: Vec<_> = prog
            .buckets()
            .unwrap()
            .into_iter()
            .map(|(k, b)| ((k.kind, k.family, k.prefix, k.addr), b.tokens))
            .collect();
        have.sort();
        let want: Vec<_> = s.buckets.iter().map(|(k, v)| (*k, *v)).collect();
        assert_eq!(have, want, "the token buckets");
    }
    for r in expected {
        assert!(
            reasons.get(&r).copied().unwrap_or(0) > 0,
            "no packet exercised {r}: {reasons:?}"
        );
    }
}

#[test]
fn verdicts_match_the_model_on_random_packets() {
    if privileged("verdicts_match_the_model_on_random_packets") {
        run_against_model(&[], None, 1);
    }
}

#[test]
fn verdicts_match_the_model_with_an_address_filter() {
    if privileged("verdicts_match_the_model_with_an_address_filter") {
        run_against_model(
            &["10.99.0.1".parse().unwrap(), "fd00:63::1".parse().unwrap()],
            None,
            2,
        );
    }
}

/// The shield on: buckets that never refill (so that the model is exact), small bursts so
/// that they run out, prefixes /24 and /56.
fn model_shield() -> ShieldConfig {
    ShieldConfig {
        initial: Rate {
            per_sec: 0,
            burst: 6,
        },
        version_negotiation: Rate {
            per_sec: 0,
            burst: 4,
        },
        ..ShieldConfig::default()
    }
}

#[test]
fn verdicts_match_the_model_with_the_shield_on() {
    if privileged("verdicts_match_the_model_with_the_shield_on") {
        run_against_model(&[], Some(model_shield()), 3);
    }
}

#[test]
fn verdicts_match_the_model_with_the_shield_on_only_v1_and_wider_prefixes() {
    if privileged("verdicts_match_the_model_with_the_shield_on_only_v1_and_wider_prefixes") {
        let config = ShieldConfig {
            versions: vec![V1],
            prefix_v4: 20,
            prefix_v6: 52,
            ..model_shield()
        };
        run_against_model(
            &["10.99.0.1".parse().unwrap(), "fd00:63::1".parse().unwrap()],
            Some(config),
            4,
        );
    }
}
