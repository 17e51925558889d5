//! Floods, deterministically: spoofed Initials and short headers with unknown CIDs injected
//! into the in-memory network while legitimate clients work, under the virtual clock.
//!
//! A tap on the network (its impairment hook, which sees every datagram) adds up the octets
//! each spoofed address sent and was sent, so the anti-amplification limit is checked per
//! address on the wire, retransmissions included.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{RngCore, SeedableRng};
use xdp_quic::backend::mem::{MemNetwork, MemPacket, MemSteering, Verdict};
use xdp_quic::cid::CidLayout;
use xdp_quic::testing::{step, Drive, Node};
use xdp_quic::{tls, EngineBuilder, RetryPolicy};
use xdp_quic_examples::echo::{self, EchoClient, EchoServer};

const THRESHOLD: usize = 16;
const WORKERS: usize = 2;

/// Octets on the wire per spoofed address: (from it, to it), and Retry packets to it.
#[derive(Default, Clone, Copy)]
struct Wire {
    from: u64,
    to: u64,
    retries: u64,
}

/// Taps every datagram from or to an address in `spoofed` (10.66.0.0/16).
fn tap(net: &MemNetwork) -> Arc<Mutex<HashMap<IpAddr, Wire>>> {
    let seen = Arc::new(Mutex::new(HashMap::<IpAddr, Wire>::new()));
    let s = seen.clone();
    net.set_impairment(move |p: &mut MemPacket| {
        let mut seen = s.lock().unwrap();
        if is_spoofed(p.from.ip()) {
            seen.entry(p.from.ip()).or_default().from += p.data.len() as u64;
        }
        if is_spoofed(p.to.ip()) {
            let w = seen.entry(p.to.ip()).or_default();
            w.to += p.data.len() as u64;
            // A v1 long header of type Retry.
            if p.data.first().is_some_and(|b| b & 0xf0 == 0xf0) {
                w.retries += 1;
            }
        }
        Verdict::Deliver
    });
    seen
}

fn is_spoofed(ip: IpAddr) -> bool {
    matches!(ip, IpAddr::V4(v4) if v4.octets()[..2] == [10, 66])
}

fn spoofed(i: u32) -> SocketAddr {
    SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(10, 66, (i >> 8) as u8, i as u8)),
        20_000 + (i % 40_000) as u16,
    )
}

/// Real client Initials (a TLS ClientHello each, padded to 1200 octets), made by a
/// quinn-proto client endpoint that is then forgotten: nobody will answer for them.
struct InitialForge {
    endpoint: quinn_proto::Endpoint,
    config: quinn_proto::ClientConfig,
    buf: Vec<u8>,
}

impl InitialForge {
    fn new() -> Self {
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &[7; 32]);
        let config = quinn_proto::EndpointConfig::new(Arc::new(key));
        Self {
            endpoint: quinn_proto::Endpoint::new(Arc::new(config), None, false, None),
            config: tls::client_config(tls::Trust::InsecureAnyCertificate, &[echo::ALPN]).unwrap(),
            buf: Vec::new(),
        }
    }

    fn initial(&mut self, now: Instant, to: SocketAddr) -> &[u8] {
        let (_, mut conn) = self
            .endpoint
            .connect(now, self.config.clone(), to, "localhost")
            .unwrap();
        self.buf.clear();
        let t = conn
            .poll_transmit(now, 1, &mut self.buf)
            .expect("an Initial");
        &self.buf[..t.size]
    }
}

fn server(net: &MemNetwork, at: SocketAddr, b: EngineBuilder) -> Node<EchoServer> {
    let id = tls::Identity::self_signed_ed25519(&["localhost"]).unwrap();
    let b = b
        .workers(WORKERS)
        .server(tls::server_config(id, &[echo::ALPN]).unwrap());
    Node::new(b, net, at, MemSteering::Hash, |_| EchoServer::default()).unwrap()
}

fn client(net: &MemNetwork, at: SocketAddr, to: SocketAddr, payload: Bytes) -> Node<EchoClient> {
    let b = EngineBuilder::default()
        .client(tls::client_config(tls::Trust::InsecureAnyCertificate, &[echo::ALPN]).unwrap());
    Node::new(b, net, at, MemSteering::Hash, move |_| {
        EchoClient::new(to, "localhost", vec![payload.clone()], vec![], 0)
    })
    .unwrap()
}

fn payload(len: usize, seed: u64) -> Bytes {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v.into()
}

/// 2,000 spoofed Initials over 2 s (virtual) while 20 clients connect and echo: the server
/// keeps at most THRESHOLD pending handshakes per worker (plus the validated legitimate
/// ones), answers the rest with Retry, never sends a spoofed address more than 3x what it
/// received from it, and frees every spoofed handshake when it times out.
#[test]
fn spoofed_initial_flood_is_met_with_retry_and_bounded_state() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let s: SocketAddr = "10.5.0.1:4433".parse().unwrap();
    let mut srv = server(
        &net,
        s,
        EngineBuilder::default().retry(RetryPolicy::AbovePendingHandshakes(THRESHOLD)),
    );
    let wire = tap(&net);
    let mut legit: Vec<_> = (0..20)
        .map(|i| {
            let at = format!("10.5.1.{}:{}", i + 1, 7000 + i).parse().unwrap();
            client(&net, at, s, payload(50_000, i))
        })
        .collect();
    let mut forge = InitialForge::new();

    const FLOOD: u32 = 2_000;
    let start = net.now();
    let mut sent = 0u32;
    let mut max_pending = 0usize;
    let mut max_alive = 0usize;
    let mut started = 0usize;
    while sent < FLOOD || legit.iter().any(|c| !c.is_done()) {
        // 10 spoofed Initials every 10 ms of virtual time.
        let due = ((net.now() - start).as_millis() as u32 / 10 + 1) * 10;
        while sent < due.min(FLOOD) {
            let from = spoofed(sent);
            let initial = forge.initial(net.now(), s).to_vec();
            net.inject(from, s, &initial);
            sent += 1;
        }
        // The legitimate clients arrive once the flood is under way, one per 50 ms.
        let wanted = ((net.now() - start).as_millis() as usize).saturating_sub(200) / 50;
        while started < wanted.min(legit.len()) {
            legit[started]
                .handle
                .post(0, |h, ctx| h.start(ctx))
                .expect("the worker is running");
            started += 1;
        }
        let mut nodes: Vec<&mut dyn Drive> = vec![&mut srv];
        nodes.extend(legit.iter_mut().map(|c| c as &mut dyn Drive));
        step(&net, &mut nodes).unwrap();
        for w in &srv.workers {
            max_pending = max_pending.max(w.counters().conns_handshaking as usize);
        }
        max_alive = max_alive.max(srv.connections());
        assert!(
            net.now() - start < Duration::from_secs(120),
            "flood test ran away"
        );
    }
    for (i, c) in legit.iter().enumerate() {
        let h = c.handler(0);
        assert!(
            h.all_ok(),
            "legitimate client {i}: {:?} {:?}",
            h.results,
            h.error
        );
    }
    // Let every spoofed handshake time out (quinn-proto's 30 s idle timeout), so the
    // amplification check covers every retransmission.
    let quiet = net.now();
    while net.now() - quiet < Duration::from_secs(60) {
        step(&net, &mut [&mut srv]).unwrap();
        for w in &srv.workers {
            max_pending = max_pending.max(w.counters().conns_handshaking as usize);
        }
    }
    let t = srv.total();
    assert_eq!(
        t.handshakes,
        legit.len() as u64,
        "only the legitimate clients finish"
    );
    assert!(
        max_pending <= THRESHOLD + legit.len(),
        "pending handshakes per worker stayed bounded: at most {max_pending}"
    );
    assert!(
        max_alive <= WORKERS * THRESHOLD + legit.len(),
        "connections alive stayed bounded: at most {max_alive}"
    );
    let flood_retries: u64 = wire.lock().unwrap().values().map(|w| w.retries).sum();
    assert!(
        flood_retries >= u64::from(FLOOD) - (WORKERS * THRESHOLD) as u64,
        "the flood beyond the threshold got Retry: {flood_retries}"
    );
    assert!(t.retries_sent >= flood_retries);

    assert_eq!(srv.connections(), 0, "every spoofed handshake was freed");
    assert!(srv.total().closed_timed_out >= (WORKERS * THRESHOLD) as u64 / 2);

    let wire = wire.lock().unwrap();
    assert_eq!(wire.len(), FLOOD as usize);
    let mut worst = 0.0f64;
    for (ip, w) in wire.iter() {
        assert!(
            w.to <= 3 * w.from,
            "{ip} was sent {} octets after sending {}: more than 3x",
            w.to,
            w.from
        );
        worst = worst.max(w.to as f64 / w.from as f64);
    }
    println!(
        "{FLOOD} spoofed Initials: {flood_retries} Retry, at most {max_pending} pending \
         handshakes on a worker, {max_alive} connections alive, worst amplification {worst:.2}x"
    );
}

/// A connection moves 2 MB while 20,000 short headers with unknown CIDs arrive from a
/// spoofed address over 2 s (virtual): half random, half forged in this server's CID layout
/// (valid worker octet, unknown nonce): only those pass the shard's CID validation and could
/// earn a reset. The transfer is untouched, no state is created, and the server sends at most
/// one stateless reset per worker per `min_reset_interval`.
#[test]
fn unknown_cid_flood_gets_only_rate_limited_resets() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let s: SocketAddr = "10.6.0.1:4433".parse().unwrap();
    let interval = Duration::from_millis(50);
    let mut srv = server(
        &net,
        s,
        EngineBuilder::default().min_reset_interval(interval),
    );
    let wire = tap(&net);
    let mut legit = client(
        &net,
        "10.6.1.1:7000".parse().unwrap(),
        s,
        payload(2_000_000, 9),
    );
    legit
        .handle
        .post(0, |h, ctx| h.start(ctx))
        .expect("the worker is running");
    let attacker = spoofed(1);
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    let mut packet = [0u8; 120];
    let layout = CidLayout::for_workers(WORKERS).unwrap();

    const FLOOD: u32 = 20_000;
    let start = net.now();
    let mut sent = 0u32;
    while sent < FLOOD || !legit.is_done() {
        // 100 every 10 ms.
        let due = ((net.now() - start).as_millis() as u32 / 10 + 1) * 100;
        while sent < due.min(FLOOD) {
            rng.fill_bytes(&mut packet);
            packet[0] = 0x40 | (packet[0] & 0x3f); // short header, fixed bit set
            if sent.is_multiple_of(2) {
                let worker = (sent as usize / 2) % WORKERS;
                layout.write(worker, &mut rng, &mut packet[1..1 + layout.len()]);
            }
            net.inject(attacker, s, &packet);
            sent += 1;
        }
        step(&net, &mut [&mut srv, &mut legit]).unwrap();
        assert!(
            net.now() - start < Duration::from_secs(60),
            "flood test ran away"
        );
    }
    let flood_time = net.now() - start;
    let h = legit.handler(0);
    assert!(h.all_ok(), "{:?} {:?}", h.results, h.error);

    let t = srv.total();
    let w = wire.lock().unwrap()[&attacker.ip()];
    assert_eq!(t.conns_accepted, 1, "the flood created no connection");
    assert!(
        t.resets_sent >= WORKERS as u64,
        "forged CIDs got resets: {}",
        t.resets_sent
    );
    let cap = WORKERS as u64 * (flood_time.as_millis() / interval.as_millis() + 1) as u64;
    assert!(
        t.resets_sent <= cap,
        "{} resets in {flood_time:?}: more than one per worker per {interval:?}",
        t.resets_sent
    );
    assert!(
        w.to < w.from / 20,
        "the attacker got back {} of {} octets",
        w.to,
        w.from
    );
    println!(
        "{FLOOD} unknown-CID short headers in {flood_time:?}: {} stateless resets ({} octets \
         back for {} sent)",
        t.resets_sent, w.to, w.from
    );
}

/// A datagram from port 0 is dropped unanswered (counted malformed): Linux refuses a send to
/// port 0 with EINVAL, which quinn-udp takes for a NIC without GSO, turning GSO (and ECN
/// marks) off for the socket's life; one such datagram slowed every connection of a worker.
/// The same datagram from another port is answered (a stateless reset).
#[test]
fn datagrams_from_port_zero_are_dropped_unanswered() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let s: SocketAddr = "10.6.0.1:4433".parse().unwrap();
    let mut srv = server(&net, s, EngineBuilder::default());
    let wire = tap(&net);
    let mut rng = rand::rngs::StdRng::seed_from_u64(6);
    let mut packet = [0u8; 120];
    rng.fill_bytes(&mut packet);
    packet[0] = 0x40 | (packet[0] & 0x3f); // short header, fixed bit set
    let layout = CidLayout::for_workers(WORKERS).unwrap();
    layout.write(0, &mut rng, &mut packet[1..1 + layout.len()]);
    let zero = SocketAddr::new(spoofed(1).ip(), 0);
    let nine = SocketAddr::new(spoofed(2).ip(), 9);
    net.inject(zero, s, &packet);
    net.inject(nine, s, &packet);
    let start = net.now();
    while srv.total().resets_sent + srv.total().rx_malformed < 2 {
        step(&net, &mut [&mut srv]).unwrap();
        assert!(
            net.now() - start < Duration::from_secs(5),
            "{:?}",
            srv.total()
        );
    }
    // Whatever is on its way is delivered.
    while net.next_delivery().is_some() {
        step(&net, &mut [&mut srv]).unwrap();
    }
    let t = srv.total();
    assert_eq!((t.resets_sent, t.rx_malformed), (1, 1));
    let w = wire.lock().unwrap();
    assert!(
        w.get(&nine.ip()).is_some_and(|w| w.to > 0),
        "the reset went out"
    );
    assert_eq!(
        w.get(&zero.ip()).map_or(0, |w| w.to),
        0,
        "nothing to port 0"
    );
}
