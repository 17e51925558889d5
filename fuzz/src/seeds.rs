//! Seed corpus generator: meaningful inputs for every target, written into `corpus/<target>/`
//! as `seed-<name>` files. Run it from the repository root with
//!
//! ```text
//! cargo test --manifest-path fuzz/Cargo.toml --lib -- --ignored write_seeds
//! ```
//!
//! Seeds: Ethernet (untagged, 802.1Q, 802.1ad) + IPv4 (with and without options, zero UDP
//! checksum) / IPv6 (including IPv4-mapped addresses) + UDP frames carrying QUIC v1 Initial,
//! 0-RTT, Handshake, Retry and short-header packets, version negotiation and a draft version;
//! CID layouts with and without server id; routing inputs for every packet kind; client
//! Initials of quinn-proto with rustls (opened, so that the target seals them again) and
//! ClientHellos built from descriptions, whole, cut, reordered or cut short.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use std::sync::Arc;
use std::time::Instant;

use quinn_proto::{Endpoint, EndpointConfig};
use xdp_quic::cid::CidLayout;
use xdp_quic::packet::checksum;
use xdp_quic::packet::client_hello::testing::{crypto_frame, Initial};
use xdp_quic::packet::client_hello::{peek, ClientHelloInfo, PeekError};
use xdp_quic::packet::frame::{self, L2};
use xdp_quic::tls;

use crate::{
    encode_frame_write, Built, ByteRng, CidInput, ClientHelloInput, HelloPayload, HelloSpec,
    RouteInput,
};

const PLAIN: L2 = L2 {
    src_mac: [0x02, 0, 0, 0, 0, 1],
    dst_mac: [0x02, 0, 0, 0, 0, 2],
    vlan: None,
};
const DOT1Q: L2 = L2 {
    vlan: Some((0x8100, 0x6005)),
    ..PLAIN
};
const DOT1AD: L2 = L2 {
    vlan: Some((0x88a8, 10)),
    ..PLAIN
};

fn v4() -> (SocketAddr, SocketAddr) {
    (
        "192.0.2.1:50123".parse().unwrap(),
        "198.51.100.7:4433".parse().unwrap(),
    )
}

fn v6() -> (SocketAddr, SocketAddr) {
    (
        "[2001:db8::1]:50123".parse().unwrap(),
        "[2001:db8:ffff::2]:443".parse().unwrap(),
    )
}

/// A CID of `worker` in the default 4-worker layout, nonce from `nonce`.
fn our_cid(layout: &CidLayout, worker: usize, nonce: &[u8]) -> Vec<u8> {
    let mut cid = vec![0u8; layout.len()];
    layout.write(worker, &mut ByteRng::new(nonce), &mut cid);
    cid
}

/// A QUIC v1 long header packet: type, DCID, SCID, then (for Initial) an empty token, a
/// 2-octet length, a 1-octet packet number and `body` octets of (fake) protected payload.
fn long(ty: u8, version: u32, dcid: &[u8], scid: &[u8], body: usize) -> Vec<u8> {
    let mut p = vec![0xc0 | (ty << 4)];
    p.extend_from_slice(&version.to_be_bytes());
    p.push(dcid.len() as u8);
    p.extend_from_slice(dcid);
    p.push(scid.len() as u8);
    p.extend_from_slice(scid);
    if ty == 3 {
        // Retry: token and integrity tag.
        p.extend_from_slice(b"retry-token-0123");
        p.extend_from_slice(&[0x5a; 16]);
        return p;
    }
    if ty == 0 {
        p.push(0); // token length
    }
    let len = (body + 1) as u16 | 0x4000; // 2-octet varint
    p.extend_from_slice(&len.to_be_bytes());
    p.push(0); // packet number
    p.extend((0..body).map(|i| (i * 7) as u8));
    p
}

fn short(dcid: &[u8], body: usize) -> Vec<u8> {
    let mut p = vec![0x43];
    p.extend_from_slice(dcid);
    p.extend((0..body).map(|i| (i * 13) as u8));
    p
}

/// Version negotiation: version 0, then the supported versions.
fn version_negotiation(dcid: &[u8], scid: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 0, 0, 0, 0, dcid.len() as u8];
    p.extend_from_slice(dcid);
    p.push(scid.len() as u8);
    p.extend_from_slice(scid);
    p.extend_from_slice(&1u32.to_be_bytes());
    p.extend_from_slice(&0xff00_001du32.to_be_bytes());
    p
}

/// The QUIC datagrams of the seeds, by name.
fn datagrams() -> Vec<(&'static str, Vec<u8>)> {
    let layout = CidLayout::for_workers(4).unwrap();
    let ours = our_cid(&layout, 2, b"\x11\x22\x33\x44\x55\x66");
    let client = [0xc1, 0x1e, 0x47, 0x00, 0xde, 0xad, 0xbe, 0xef];
    vec![
        ("initial", long(0, 1, &client, &client[..5], 60)),
        ("zero-rtt", long(1, 1, &client, &ours, 40)),
        ("handshake", long(2, 1, &ours, &client, 50)),
        ("retry", long(3, 1, &client, &ours, 0)),
        ("short", short(&ours, 40)),
        ("version-negotiation", version_negotiation(&client, &ours)),
        (
            "draft29-handshake",
            long(2, 0xff00_001d, &ours, &client, 20),
        ),
    ]
}

fn write_frame(l2: &L2, (src, dst): (SocketAddr, SocketAddr), ecn: u8, payload: &[u8]) -> Vec<u8> {
    let mut buf = vec![0u8; 2048];
    let n = frame::write(&mut buf, l2, src, dst, ecn, payload).unwrap();
    buf.truncate(n);
    assert!(frame::parse(&buf, true).is_ok());
    buf
}

fn be16(v: usize) -> [u8; 2] {
    (v as u16).to_be_bytes()
}

/// The frames of the `frame` target.
fn frames() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, dgram) in datagrams() {
        out.push((format!("v4-{name}"), write_frame(&PLAIN, v4(), 0, &dgram)));
        out.push((format!("v6-{name}"), write_frame(&PLAIN, v6(), 2, &dgram)));
    }
    let short_dgram = datagrams()[4].1.clone();
    assert_eq!(datagrams()[4].0, "short");
    out.push((
        "v4-dot1q".into(),
        write_frame(&DOT1Q, v4(), 1, &short_dgram),
    ));
    out.push((
        "v6-dot1ad".into(),
        write_frame(&DOT1AD, v6(), 3, &short_dgram),
    ));
    out.push(("v4-empty".into(), write_frame(&PLAIN, v4(), 0, &[])));

    // A full-size Initial (clients pad them to 1200 octets).
    let mut initial = datagrams()[0].1.clone();
    initial.resize(1200, 0);
    out.push((
        "v6-initial-1200".into(),
        write_frame(&DOT1Q, v6(), 0, &initial),
    ));

    // IPv4 with one option word (IHL 6): rebuild lengths and header checksum.
    let mut f = write_frame(&PLAIN, v4(), 0, &short_dgram);
    f.splice(34..34, [0x94, 0x04, 0, 0]); // router alert
    f[14] = 0x46;
    let total = f.len() - 14;
    f[16..18].copy_from_slice(&be16(total));
    f[24..26].fill(0);
    let c = checksum::ipv4_header(&f[14..38]);
    f[24..26].copy_from_slice(&c.to_be_bytes());
    assert!(frame::parse(&f, true).is_ok());
    out.push(("v4-ip-options".into(), f));

    // IPv4, UDP checksum 0 (none), Ethernet padding after a tiny datagram.
    let mut f = write_frame(&PLAIN, v4(), 0, b"hi");
    f[40..42].fill(0);
    f.resize(60, 0);
    assert!(frame::parse(&f, true).is_ok());
    out.push(("v4-no-udp-checksum-padded".into(), f));

    // IPv6 frame whose addresses are IPv4-mapped (write unmaps them, so patch them in).
    let mut f = write_frame(&PLAIN, v6(), 0, &short_dgram);
    let src = Ipv4Addr::new(192, 0, 2, 1).to_ipv6_mapped();
    let dst = Ipv4Addr::new(198, 51, 100, 7).to_ipv6_mapped();
    f[22..38].copy_from_slice(&src.octets());
    f[38..54].copy_from_slice(&dst.octets());
    f[60..62].fill(0);
    let c = checksum::udp_v6(&src, &dst, &f[54..]);
    f[60..62].copy_from_slice(&if c == 0 { 0xffff } else { c }.to_be_bytes());
    assert!(frame::parse(&f, true).is_ok());
    out.push(("v6-mapped-addresses".into(), f));

    // One mapped address only (rewrite must refuse: mixed families).
    let mut f = write_frame(&PLAIN, v6(), 0, b"x");
    f[22..38].copy_from_slice(&src.octets());
    let ip6: Ipv6Addr = "2001:db8:ffff::2".parse().unwrap();
    f[60..62].fill(0);
    let c = checksum::udp_v6(&src, &ip6, &f[54..]);
    f[60..62].copy_from_slice(&if c == 0 { 0xffff } else { c }.to_be_bytes());
    assert!(frame::parse(&f, true).is_ok());
    out.push(("v6-one-mapped-address".into(), f));
    out
}

fn dir(target: &str) -> PathBuf {
    let d = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn save(target: &str, name: &str, bytes: &[u8]) {
    std::fs::write(dir(target).join(format!("seed-{name}")), bytes).unwrap();
}

#[test]
#[ignore = "writes the seed corpus; run explicitly"]
fn write_seeds() {
    // frame
    for (name, f) in frames() {
        save("frame", &name, &f);
    }

    // frame_write
    for (name, dgram) in datagrams().into_iter().take(5) {
        save(
            "frame_write",
            &format!("v4-{name}"),
            &encode_frame_write(&PLAIN, v4().0, v4().1, 1, 16, &dgram, None),
        );
        let input = encode_frame_write(&DOT1AD, v4().0, v4().1, 3, 0, &dgram, None);
        assert_eq!(crate::FrameWriteInput::decode(&input).l2, DOT1AD);
        save("frame_write", &format!("v4-dot1ad-{name}"), &input);
        save(
            "frame_write",
            &format!("v6-dot1q-{name}"),
            &encode_frame_write(&DOT1Q, v6().0, v6().1, 2, 0, &dgram, None),
        );
    }
    let odd_tpid = L2 {
        vlan: Some((0x9100, 7)),
        ..PLAIN
    };
    save(
        "frame_write",
        "odd-tpid",
        &encode_frame_write(&odd_tpid, v4().0, v4().1, 0, 0, b"quic", None),
    );
    // Payloads at and just past the limits of the IP/UDP length fields.
    for (name, (src, dst), n) in [
        ("v4-65507", v4(), 65_507),
        ("v4-65508", v4(), 65_508),
        ("v6-65527", v6(), 65_527),
        ("v6-65528", v6(), 65_528),
    ] {
        let input = encode_frame_write(&PLAIN, src, dst, 0, 0, b"big", Some(n));
        assert_eq!(crate::FrameWriteInput::decode(&input).payload.len(), n);
        save("frame_write", name, &input);
    }

    // cid
    let nonce: &[u8] = b"\x01\x23\x45\x67\x89\xab\xcd\xef";
    let cids: [(&str, usize, u8, &[u8], usize); 5] = [
        ("default-4-workers", 8, 0, &[], 4),
        ("server-id-256-workers", 12, 3, &[0xab, 0xcd, 0xef], 256),
        (
            "max-len",
            20,
            6,
            &[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14],
            1,
        ),
        ("min-len", 6, 1, &[], 2),
        ("too-short-for-sid", 7, 0, &[1, 2], 8),
    ];
    for (name, len, cr, sid, workers) in cids {
        let layout = CidLayout::new(len, cr, sid, workers).ok();
        let candidate = match &layout {
            Some(l) => our_cid(l, workers - 1, b"\x42"),
            None => vec![0; len],
        };
        let input = CidInput {
            len,
            config_rotation: cr,
            server_id: sid,
            workers,
            pick: 3,
            mask: 0x01,
            nonce,
            candidate: &candidate,
        };
        assert_eq!(CidInput::decode(&input.encode()), input);
        save("cid", name, &input.encode());
    }

    // client_hello
    for (name, input) in hello_seeds() {
        save("client_hello", &name, &input);
    }

    // route
    let layouts = [
        ("4w", CidLayout::for_workers(4).unwrap()),
        ("sid-16w", CidLayout::new(10, 2, &[0x5e, 0x7e], 16).unwrap()),
    ];
    let kinds = [
        ("short", Built::Short),
        ("initial", Built::V1(0)),
        ("handshake", Built::V1(2)),
        ("retry", Built::V1(3)),
        ("draft-0rtt", Built::Draft(1)),
        ("unknown-version", Built::Unknown),
        ("foreign-len", Built::ForeignLen),
    ];
    let dgrams = datagrams();
    for (lname, layout) in &layouts {
        let nonce: Vec<u8> = (1..=(layout.len() - layout.worker_offset() - 1) as u8).collect();
        for (i, (kname, built)) in kinds.iter().enumerate() {
            let (dname, dgram) = &dgrams[i % dgrams.len()];
            let input = RouteInput {
                layout: layout.clone(),
                me: 1,
                serves: i % 2 == 0,
                owner: 3,
                built: *built,
                bits: 0x11,
                version: 0x1d,
                nonce: &nonce,
                datagram: dgram,
            };
            assert_eq!(RouteInput::decode(&input.encode()), input);
            save(
                "route",
                &format!("{lname}-{kname}-{dname}"),
                &input.encode(),
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// client_hello
// ---------------------------------------------------------------------------------------------

/// The datagrams of a quinn-proto client's first flight to `server_name`, offering `alpn`
/// (rustls with ring, as this datapath's clients).
fn quinn_first_flight(server_name: &str, alpn: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut endpoint = Endpoint::new(Arc::new(EndpointConfig::default()), None, false, None);
    let config = tls::client_config(tls::Trust::InsecureAnyCertificate, alpn).unwrap();
    let now = Instant::now();
    let (_, mut conn) = endpoint
        .connect(now, config, "192.0.2.1:4433".parse().unwrap(), server_name)
        .unwrap();
    let mut datagrams = Vec::new();
    let mut buf = Vec::new();
    while let Some(transmit) = conn.poll_transmit(now, 1, &mut buf) {
        datagrams.push(buf[..transmit.size].to_vec());
        buf.clear();
    }
    datagrams
}

/// The quinn-proto Initials of the seeds: name, first datagram, what `peek` reads from it.
fn quinn_initials() -> Vec<(&'static str, Vec<u8>, Result<ClientHelloInfo, PeekError>)> {
    let info = |name: Option<&str>, alpn: &[&[u8]]| {
        Ok(ClientHelloInfo {
            server_name: name.map(Into::into),
            alpn: alpn.iter().map(|a| a.to_vec()).collect(),
        })
    };
    let h3: &[&[u8]] = &[b"h3"];
    let two: &[&[u8]] = &[b"h3", b"hq-interop"];
    let long_names: Vec<Vec<u8>> = (0..60)
        .map(|i| format!("proto-{i:02}-{}", "x".repeat(12)).into_bytes())
        .collect();
    let long: Vec<&[u8]> = long_names.iter().map(Vec::as_slice).collect();
    let flight = |name, alpn| quinn_first_flight(name, alpn).remove(0);
    vec![
        (
            "quinn-sni-h3",
            flight("example.com", h3),
            info(Some("example.com"), h3),
        ),
        (
            "quinn-sni-two-alpn",
            flight("server.example", two),
            info(Some("server.example"), two),
        ),
        ("quinn-ip-no-sni", flight("192.0.2.1", two), info(None, two)),
        (
            "quinn-no-alpn",
            flight("server.example", &[]),
            info(Some("server.example"), &[]),
        ),
        (
            "quinn-two-initials",
            flight("server.example", &long),
            Err(PeekError::Incomplete),
        ),
    ]
}

/// The `client_hello` input that seals `initial` again (its payload as the frames).
fn input_of(initial: &Initial) -> ClientHelloInput<'_> {
    ClientHelloInput {
        dcid: &initial.dcid,
        scid: &initial.scid,
        token: &initial.token,
        pn: initial.pn,
        pn_len: initial.pn_len,
        reserved: initial.reserved,
        trailer: false,
        flip: None,
        pad: false,
        payload: HelloPayload::Frames(&initial.payload),
    }
}

fn hello_seeds() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for (name, datagram, want) in quinn_initials() {
        assert_eq!(peek(&datagram), want, "{name}");
        let initial = Initial::open(&datagram).unwrap();
        let input = input_of(&initial);
        assert_eq!(ClientHelloInput::decode(&input.encode()), input);
        // The target seals it again: the same answer.
        assert_eq!(peek(&input.initial().seal()), want, "{name} sealed again");
        out.push((name.to_string(), input.encode()));
        if name == "quinn-sni-h3" {
            let variants = [
                (
                    "trailer",
                    ClientHelloInput {
                        trailer: true,
                        ..input.clone()
                    },
                ),
                (
                    "flip-payload",
                    ClientHelloInput {
                        flip: Some(600),
                        ..input.clone()
                    },
                ),
                (
                    "flip-dcid",
                    ClientHelloInput {
                        flip: Some(7),
                        ..input.clone()
                    },
                ),
                (
                    "reserved",
                    ClientHelloInput {
                        reserved: 2,
                        ..input.clone()
                    },
                ),
                (
                    "pn-len-1",
                    ClientHelloInput {
                        pn_len: 1,
                        ..input.clone()
                    },
                ),
            ];
            for (v, i) in variants {
                out.push((format!("{name}-{v}"), i.encode()));
            }
        }
    }

    let dcid = [0x83, 0x94, 0xc8, 0xf0, 0x3e, 0x51, 0x57, 0x08];
    let scid = [0xc1, 0x1e, 0x47];
    let spec = |name: Option<&str>, alpn: &[&[u8]], grease, order, cuts, keep| HelloSpec {
        server_name: name.map(Into::into),
        alpn: alpn.iter().map(|a| a.to_vec()).collect(),
        grease,
        order,
        cuts,
        keep,
    };
    let h3: &[&[u8]] = &[b"h3", b"h3-29", b"hq-interop"];
    let specs = [
        ("whole", spec(Some("example.com"), h3, 0, 0, [0; 3], 0)),
        ("no-sni", spec(None, h3, 40, 2, [0; 3], 0)),
        ("no-alpn", spec(Some("a.example"), &[], 100, 1, [0; 3], 0)),
        ("nothing", spec(None, &[], 0, 0x80, [0; 3], 0)),
        (
            "cut-reversed",
            spec(Some("server.example"), h3, 300, 0x05, [50, 120, 200], 0),
        ),
        (
            "cut-rotated-dup-ping",
            spec(Some("x.example"), &[b"h3"], 20, 0x78, [30, 95, 160], 0),
        ),
        (
            "prefix-both-read",
            spec(Some("example.com"), &[b"h3"], 500, 0x00, [200, 0, 0], 1),
        ),
        (
            "prefix-incomplete",
            spec(Some("example.com"), &[b"h3"], 500, 0x02, [150, 0, 0], 1),
        ),
    ];
    for (name, spec) in specs {
        let built = spec.build();
        let input = ClientHelloInput {
            dcid: &dcid,
            scid: &scid,
            token: b"",
            pn: 0,
            pn_len: 4,
            reserved: 0,
            trailer: false,
            flip: None,
            pad: true,
            payload: HelloPayload::Built(spec.clone()),
        };
        assert_eq!(ClientHelloInput::decode(&input.encode()), input);
        assert_eq!(peek(&input.initial().seal()), built.expected, "{name}");
        out.push((format!("built-{name}"), input.encode()));
    }

    // Frames in clear of every kind an Initial may carry, around a ClientHello in two pieces.
    let built = spec(Some("example.com"), &[b"h3"], 0, 0, [0; 3], 0).build();
    let m = &built.message;
    let mut frames = vec![0x01]; // PING
    frames.extend_from_slice(&[0x02, 5, 0, 1, 0, 0, 1]); // ACK, one more range
    frames.extend_from_slice(&[0x03, 5, 0, 0, 0, 1, 2, 3]); // ACK with ECN counts
    frames.extend(crypto_frame(40, &m[40..]));
    frames.extend_from_slice(&[0x1c, 0, 0, 3, b'b', b'y', b'e']); // CONNECTION_CLOSE
    frames.extend(crypto_frame(0, &m[..40]));
    frames.extend_from_slice(&[0; 20]); // PADDING
    let input = ClientHelloInput {
        dcid: &dcid,
        scid: &scid,
        token: b"token",
        pn: 2,
        pn_len: 2,
        reserved: 0,
        trailer: false,
        flip: None,
        pad: false,
        payload: HelloPayload::Frames(&frames),
    };
    assert_eq!(peek(&input.initial().seal()), built.expected);
    out.push(("frames-every-kind".into(), input.encode()));
    out
}

/// A ClientHello built by quinn-proto and rustls, opened and sealed again the way the
/// `client_hello` target does, reads as the server name and protocols the client was given;
/// so do the built seeds.
#[test]
fn client_hello_seeds_read_back() {
    assert!(hello_seeds().len() > 10);
}

#[test]
#[ignore = "writes the seed corpus of the client_hello target only; run explicitly"]
fn write_client_hello_seeds() {
    for (name, input) in hello_seeds() {
        save("client_hello", &name, &input);
    }
}
