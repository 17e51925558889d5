//! `packet::client_hello::peek` on the Initials a real client builds: quinn-proto with
//! rustls (ring), as this datapath's clients do. The peek reads what the client offered, on
//! the very datagram a quinn-proto server reports as a new connection; random changes to
//! that datagram, before or under its packet protection, never make it panic.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use quinn_proto::{DatagramEvent, Endpoint, EndpointConfig};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use xdp_quic::packet::client_hello::testing::Initial;
use xdp_quic::packet::client_hello::{peek, peek_with, ClientHelloInfo, PeekError, Scratch};
use xdp_quic::tls;

const SERVER: &str = "192.0.2.1:4433";
const CLIENT: &str = "198.51.100.7:50000";

/// The datagrams of a fresh client's first flight to `server_name`, offering `alpn`.
fn first_flight(server_name: &str, alpn: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut endpoint = Endpoint::new(Arc::new(EndpointConfig::default()), None, false, None);
    let config = tls::client_config(tls::Trust::InsecureAnyCertificate, alpn).unwrap();
    let now = Instant::now();
    let (_, mut conn) = endpoint
        .connect(now, config, SERVER.parse().unwrap(), server_name)
        .unwrap();
    let mut datagrams = Vec::new();
    let mut buf = Vec::new();
    while let Some(transmit) = conn.poll_transmit(now, 1, &mut buf) {
        datagrams.push(buf[..transmit.size].to_vec());
        buf.clear();
    }
    assert!(!datagrams.is_empty(), "no Initial sent");
    datagrams
}

fn owned(server_name: Option<&str>, alpn: &[&[u8]]) -> ClientHelloInfo {
    ClientHelloInfo {
        server_name: server_name.map(Into::into),
        alpn: alpn.iter().map(|a| a.to_vec()).collect(),
    }
}

/// The first datagram of a connection attempt as a quinn-proto server sees it: a new
/// connection, and the peek reads the server name and protocols of the client.
#[test]
fn quinn_client_hello_names_server_and_alpn() {
    let alpn: &[&[u8]] = &[b"h3", b"hq-interop"];
    let datagram = first_flight("server.example", alpn).remove(0);

    let identity = tls::Identity::self_signed(&["server.example"]).unwrap();
    let server_config = tls::server_config(identity, &[b"h3"]).unwrap();
    let mut server = Endpoint::new(
        Arc::new(EndpointConfig::default()),
        Some(Arc::new(server_config)),
        false,
        None,
    );
    let client: SocketAddr = CLIENT.parse().unwrap();
    let event = server.handle(
        Instant::now(),
        client,
        None,
        None,
        BytesMut::from(&datagram[..]),
        &mut Vec::new(),
    );
    let Some(DatagramEvent::NewConnection(incoming)) = event else {
        panic!("not a new connection for quinn-proto");
    };

    assert_eq!(
        peek(&datagram),
        Ok(owned(Some("server.example"), &[b"h3", b"hq-interop"]))
    );
    let mut scratch = Box::new(Scratch::new());
    let hello = peek_with(&datagram, &mut scratch).unwrap();
    assert_eq!(hello.server_name, Some("server.example"));
    assert!(hello.alpn.contains(b"hq-interop"));
    assert_eq!(hello.alpn.iter().collect::<Vec<_>>(), alpn);
    server.ignore(incoming);
}

/// A client connecting to an IP address sends no server_name extension.
#[test]
fn ip_address_server_name_sends_no_sni() {
    for name in ["192.0.2.1", "2001:db8::1"] {
        let datagram = first_flight(name, &[b"h3", b"hq-interop"]).remove(0);
        assert_eq!(
            peek(&datagram),
            Ok(owned(None, &[b"h3", b"hq-interop"])),
            "{name}"
        );
    }
}

#[test]
fn no_alpn_offered() {
    let datagram = first_flight("server.example", &[]).remove(0);
    assert_eq!(peek(&datagram), Ok(owned(Some("server.example"), &[])));
}

/// An ALPN list longer than one datagram: the ClientHello spans two Initials, and neither
/// tells the whole list.
#[test]
fn client_hello_over_two_initials_is_incomplete() {
    let names: Vec<Vec<u8>> = (0..60)
        .map(|i| format!("proto-{i:02}-{}", "x".repeat(12)).into_bytes())
        .collect();
    let alpn: Vec<&[u8]> = names.iter().map(Vec::as_slice).collect();
    let flight = first_flight("server.example", &alpn);
    assert!(flight.len() >= 2, "the ClientHello fits one datagram");
    for datagram in &flight {
        assert_eq!(peek(datagram), Err(PeekError::Incomplete));
    }
}

/// Random changes never panic: to the protected datagram (mostly refused by the AEAD), and to
/// the payload in clear then sealed again, so that the frame walk and the ClientHello parse
/// see them.
#[test]
fn random_mutations_never_panic() {
    let seed = std::env::var("XDPQUIC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x5eed_c1e7_u64);
    let mut rng = StdRng::seed_from_u64(seed);
    let datagram = first_flight("server.example", &[b"h3", b"hq-interop"]).remove(0);
    let initial = Initial::open(&datagram).unwrap();
    assert_eq!(initial.seal().len(), datagram.len());
    let crypto_end = crypto_extent(&initial.payload);

    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    let mut record = |r: Result<ClientHelloInfo, PeekError>| {
        let key = match r {
            Ok(_) => "Ok".to_string(),
            Err(PeekError::UnsupportedVersion(_)) => "UnsupportedVersion".to_string(),
            Err(e) => format!("{e:?}"),
        };
        *outcomes.entry(key).or_default() += 1;
    };

    for _ in 0..3_000 {
        let mut d = datagram.clone();
        mutate(&mut rng, &mut d, 0..datagram.len());
        record(peek(&d));
    }
    for _ in 0..6_000 {
        let mut i = initial.clone();
        // Mostly inside the frames that carry the ClientHello, sometimes anywhere.
        let span = if rng.gen_bool(0.8) {
            0..crypto_end
        } else {
            0..i.payload.len()
        };
        mutate(&mut rng, &mut i.payload, span);
        record(peek(&i.seal()));
    }
    eprintln!("seed {seed}: {outcomes:?}");
    for kind in ["Ok", "Malformed", "Decrypt"] {
        assert!(
            outcomes.contains_key(kind),
            "no {kind} outcome: {outcomes:?}"
        );
    }
}

/// Where the CRYPTO frames of a payload end (the padding follows them).
fn crypto_extent(payload: &[u8]) -> usize {
    payload.len() - payload.iter().rev().take_while(|&&b| b == 0).count()
}

/// One to four random edits within `span`: a byte flipped, set or removed, bytes inserted,
/// or the buffer cut.
fn mutate(rng: &mut StdRng, buf: &mut Vec<u8>, span: std::ops::Range<usize>) {
    for _ in 0..rng.gen_range(1..=4) {
        let end = span.end.min(buf.len());
        if end == 0 {
            return;
        }
        let at = rng.gen_range(span.start.min(end - 1)..end);
        match rng.gen_range(0..5) {
            0 => buf[at] ^= 1 << rng.gen_range(0..8),
            1 => buf[at] = rng.gen(),
            2 => {
                buf.remove(at);
            }
            3 => {
                let n = rng.gen_range(1..8);
                for _ in 0..n {
                    buf.insert(at, rng.gen());
                }
            }
            _ => buf.truncate(at),
        }
    }
}
