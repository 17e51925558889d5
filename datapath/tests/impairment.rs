//! Loss, corruption and black holes, deterministically: the in-memory network's impairment
//! hook with a seeded generator, the virtual clock, real quinn-proto on both sides.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, RngCore, SeedableRng};
use xdp_quic::backend::mem::{MemNetwork, MemPacket, MemSteering, Verdict};
use xdp_quic::testing::{run_clients, run_until, Drive, Node};
use xdp_quic::{tls, EngineBuilder, TransportConfig, VarInt};
use xdp_quic_examples::echo::{self, EchoClient, EchoServer};
use xdp_quic_examples::perf::{self, Budget, PerfClient, PerfClientConfig, PerfServer};

/// An idle timeout long enough for handshakes whose flights are lost many times in a row
/// (probe timeouts back off exponentially: five losses take about 30 s, quinn-proto's
/// default idle timeout; seeds 9384737857322014739 and 12914931951187659020 lose one client's
/// flights long enough to pass 120 s and 590 s).
fn patient() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_idle_timeout(Some(VarInt::from_u32(1_200_000).into()));
    t
}

fn server(net: &MemNetwork, at: SocketAddr) -> Node<EchoServer> {
    let id = tls::Identity::self_signed_ed25519(&["localhost"]).unwrap();
    let b = EngineBuilder::default()
        .workers(2)
        .transport(patient())
        .server(tls::server_config(id, &[echo::ALPN]).unwrap());
    Node::new(b, net, at, MemSteering::Hash, |_| EchoServer::default()).unwrap()
}

fn client(net: &MemNetwork, at: SocketAddr, to: SocketAddr, payload: Bytes) -> Node<EchoClient> {
    let b = EngineBuilder::default()
        .transport(patient())
        .client(tls::client_config(tls::Trust::InsecureAnyCertificate, &[echo::ALPN]).unwrap());
    let c = Node::new(b, net, at, MemSteering::Hash, move |_| {
        EchoClient::new(to, "localhost", vec![payload.clone()], vec![], 0)
    })
    .unwrap();
    c.handle
        .post(0, |h, ctx| h.start(ctx))
        .expect("the worker is running");
    c
}

fn payload(len: usize, seed: u64) -> Bytes {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v.into()
}

/// Drops `drop` and corrupts `corrupt` of all datagrams, at random (seeded).
fn impair(net: &MemNetwork, seed: u64, drop: f64, corrupt: f64) -> Arc<Mutex<(u64, u64)>> {
    let counts = Arc::new(Mutex::new((0u64, 0u64)));
    let c = counts.clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    net.set_impairment(move |p: &mut MemPacket| {
        if rng.gen_bool(drop) {
            c.lock().unwrap().0 += 1;
            return Verdict::Drop;
        }
        if rng.gen_bool(corrupt) && !p.data.is_empty() {
            let i = rng.gen_range(0..p.data.len());
            p.data[i] ^= 1 << rng.gen_range(0..8);
            c.lock().unwrap().1 += 1;
        }
        Verdict::Deliver
    });
    counts
}

fn echo_10mb(server_at: &str, client_at: &str, loss: f64, corrupt: f64) {
    let net = MemNetwork::new(Duration::from_millis(10));
    let (s, c) = (server_at.parse().unwrap(), client_at.parse().unwrap());
    let mut srv = server(&net, s);
    let mut cli = [client(&net, c, s, payload(10_000_000, 1))];
    let counts = impair(&net, net.seed(), loss, corrupt);
    let mut nodes: Vec<&mut dyn Drive> = vec![&mut srv, &mut cli[0]];
    run_clients(&net, &mut nodes, Duration::from_secs(600)).expect("transfer ends");
    drop(nodes);
    let h = cli[0].handler(0);
    assert!(h.all_ok(), "{:?} {:?}", h.results, h.error);
    let (dropped, corrupted) = *counts.lock().unwrap();
    assert!(dropped > 0 || corrupted > 0, "the impairment did something");
    assert_eq!(srv.total().handshakes, 1);
}

#[test]
fn ten_mb_byte_exact_under_2_percent_loss() {
    echo_10mb("10.1.0.1:4433", "10.1.0.2:5000", 0.02, 0.0);
}

#[test]
fn ten_mb_byte_exact_under_1_percent_corruption() {
    echo_10mb("10.1.0.1:4433", "10.1.0.2:5000", 0.0, 0.01);
}

#[test]
fn ten_mb_byte_exact_under_loss_and_corruption_over_ipv6() {
    echo_10mb("[fd00::1]:4433", "[fd00::2]:5000", 0.02, 0.01);
}

#[test]
fn fifty_handshakes_under_30_percent_loss() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let s: SocketAddr = "10.2.0.1:4433".parse().unwrap();
    let mut srv = server(&net, s);
    let mut clients: Vec<_> = (0..50)
        .map(|i| {
            let at = format!("10.2.1.{}:{}", i + 1, 6000 + i).parse().unwrap();
            client(&net, at, s, payload(2_000, i))
        })
        .collect();
    impair(&net, net.seed(), 0.30, 0.0);
    let mut nodes: Vec<&mut dyn Drive> = vec![&mut srv];
    nodes.extend(clients.iter_mut().map(|c| c as &mut dyn Drive));
    run_clients(&net, &mut nodes, Duration::from_secs(3600)).expect("clients end");
    drop(nodes);
    for (i, c) in clients.iter().enumerate() {
        let h = c.handler(0);
        assert!(h.all_ok(), "client {i}: {:?} {:?}", h.results, h.error);
    }
    assert_eq!(srv.total().handshakes, 50);
}

#[test]
fn a_transfer_survives_a_two_second_black_hole() {
    let net = MemNetwork::new(Duration::from_millis(10));
    let s: SocketAddr = "10.3.0.1:4433".parse().unwrap();
    let mut srv = server(&net, s);
    let mut cli = [client(
        &net,
        "10.3.0.2:5000".parse().unwrap(),
        s,
        payload(4_000_000, 3),
    )];
    // The hole opens after the first 500 kB are echoed and closes 2 s (virtual) later.
    let hole = Arc::new(AtomicBool::new(false));
    let h2 = hole.clone();
    let dropped = Arc::new(Mutex::new(0u64));
    let d2 = dropped.clone();
    net.set_impairment(move |_| {
        if h2.load(Ordering::Relaxed) {
            *d2.lock().unwrap() += 1;
            Verdict::Drop
        } else {
            Verdict::Deliver
        }
    });
    while srv.workers.iter().map(|w| w.handler().echoed).sum::<u64>() < 500_000 {
        xdp_quic::testing::step(&net, &mut [&mut srv, &mut cli[0]]).unwrap();
    }
    hole.store(true, Ordering::Relaxed);
    let opened = net.now();
    while net.now() - opened < Duration::from_secs(2) {
        xdp_quic::testing::step(&net, &mut [&mut srv, &mut cli[0]]).unwrap();
    }
    hole.store(false, Ordering::Relaxed);
    let mut nodes: Vec<&mut dyn Drive> = vec![&mut srv, &mut cli[0]];
    run_clients(&net, &mut nodes, Duration::from_secs(120)).expect("transfer ends");
    drop(nodes);
    let h = cli[0].handler(0);
    assert!(h.all_ok(), "{:?} {:?}", h.results, h.error);
    assert!(
        *dropped.lock().unwrap() > 0,
        "the black hole swallowed packets"
    );
    assert_eq!(
        srv.total().conns_accepted,
        1,
        "the same connection all along"
    );
}

/// One run of 1 MB echoed under 2% loss on a network seeded with `seed`: how long it took in
/// virtual time, the server's and the client's counters, and what the loss hook did.
fn seeded_run(seed: u64) -> (Duration, xdp_quic::Counters, xdp_quic::Counters, (u64, u64)) {
    let net = MemNetwork::with_seed(Duration::from_millis(10), seed);
    let (s, c) = (
        "10.1.0.1:4433".parse().unwrap(),
        "10.1.0.2:7000".parse().unwrap(),
    );
    let mut srv = server(&net, s);
    let mut cli = [client(&net, c, s, payload(1_000_000, seed))];
    let counts = impair(&net, net.seed(), 0.02, 0.0);
    let mut nodes: Vec<&mut dyn Drive> = vec![&mut srv, &mut cli[0]];
    let took = run_clients(&net, &mut nodes, Duration::from_secs(600)).expect("transfer ends");
    drop(nodes);
    assert!(cli[0].handler(0).all_ok(), "seed {seed}");
    let impaired = *counts.lock().unwrap();
    (took, srv.total(), cli[0].total(), impaired)
}

/// A seed replays a whole run: the engine's and quinn-proto's random choices, the loss
/// pattern and the virtual clock come out the same, down to every counter.
#[test]
fn a_seed_replays_the_run_exactly() {
    // The environment's seed as it is (`XDPQUIC_SEED`, else the default): each run's network
    // prints it if the test panics, and replaying with that value must give this very run.
    let seed = MemNetwork::new(Duration::ZERO).seed();
    let first = seeded_run(seed);
    let again = seeded_run(seed);
    eprintln!(
        "seed {seed}: {:?} {} {}",
        first.0, first.1.rx_packets, first.1.tx_packets
    );
    assert_eq!(first, again, "seed {seed} did not replay");
    assert!(first.3 .0 > 0, "the run lost packets: {:?}", first.3);
}

/// A 4 MB upload to a server that reads and drops it (the perf server: the application keeps
/// nothing), whose datagrams are lost every `lose_every`th (or never), with a server worker
/// that keeps at most `limit` receive chunks; returns the most chunks it kept at once and
/// the datagrams it gave buffers of their own.
fn upload_with_chunk_limit(limit: usize, lose_every: Option<u64>) -> (u64, u64) {
    const UPLOAD: u64 = 4_000_000;
    let net = MemNetwork::new(Duration::from_millis(10));
    let s: SocketAddr = "10.4.0.1:4433".parse().unwrap();
    let id = tls::Identity::self_signed_ed25519(&["localhost"]).unwrap();
    let b = EngineBuilder::default()
        .transport(patient())
        .receive_chunks(limit)
        .server(tls::server_config(id, &[perf::ALPN]).unwrap());
    let mut srv = Node::new(b, &net, s, MemSteering::Hash, |_| PerfServer::default()).unwrap();
    let cfg = Arc::new(PerfClientConfig {
        remote: s,
        server_name: "localhost".into(),
        connections: 1,
        streams: 1,
        requests: Some(1),
        duration: None,
        upload: UPLOAD,
        download: 0,
    });
    let budget = Budget::new(cfg.requests);
    let b = EngineBuilder::default()
        .transport(patient())
        .client(tls::client_config(tls::Trust::InsecureAnyCertificate, &[perf::ALPN]).unwrap());
    let mut cli = Node::new(
        b,
        &net,
        "10.4.0.2:5000".parse().unwrap(),
        MemSteering::Hash,
        |w| PerfClient::new(cfg.clone(), budget.clone(), w, 1),
    )
    .unwrap();
    cli.handle
        .post(0, |h, ctx| h.start(ctx))
        .expect("the worker is running");
    let mut sent = 0u64;
    net.set_impairment(move |p: &mut MemPacket| {
        if p.to == s {
            sent += 1;
            if lose_every.is_some_and(|n| sent.is_multiple_of(n)) {
                return Verdict::Drop;
            }
        }
        Verdict::Deliver
    });
    let handle = srv.handle.clone();
    let mut most = 0;
    let mut nodes: Vec<&mut dyn Drive> = vec![&mut srv, &mut cli];
    run_until(&net, &mut nodes, Duration::from_secs(600), |n| {
        most = most.max(handle.counters()[0].rx_chunks);
        n[1].is_done()
    })
    .unwrap_or_else(|e| panic!("seed {}: {e}", net.seed()));
    drop(nodes);
    let stats = &cli.handler(0).stats;
    assert_eq!(
        (stats.requests, stats.failed),
        (1, 0),
        "seed {}: {:?}",
        net.seed(),
        stats.errors
    );
    // The 8-octet request header, then the upload.
    assert_eq!(srv.handler(0).received, 8 + UPLOAD, "seed {}", net.seed());
    assert!(
        most <= limit as u64,
        "seed {}: {most} chunks kept",
        net.seed()
    );
    // A worker that stops lets its chunks go and keeps its count of own buffers (a
    // counter: it never goes back).
    let own = srv.total().rx_own_buffers;
    srv.handle.shutdown(VarInt::from_u32(0), b"done");
    let mut nodes: Vec<&mut dyn Drive> = vec![&mut srv, &mut cli];
    run_until(&net, &mut nodes, Duration::from_secs(60), |n| {
        n[0].is_done()
    })
    .unwrap_or_else(|e| panic!("seed {}: the server did not stop: {e}", net.seed()));
    drop(nodes);
    let t = srv.total();
    assert_eq!(
        (t.rx_chunks, t.rx_own_buffers),
        (0, own),
        "seed {}",
        net.seed()
    );
    (most, own)
}

/// Every 500th datagram to the server is lost, so the datagrams after each gap wait out of
/// order in quinn-proto, each keeping the receive chunk it came in. The server's worker keeps
/// no more chunks than its limit: once they are all held, datagrams get buffers of their own,
/// and the upload still arrives whole. Without the loss, the same limit is never reached (a
/// full receive batch, 64 datagrams, fits in 6 chunks; this run's peak is 12).
#[test]
fn data_kept_out_of_order_holds_at_most_the_receive_chunk_limit() {
    const LIMIT: usize = 16;
    let (most, own) = upload_with_chunk_limit(LIMIT, None);
    assert_eq!(own, 0, "without loss: {most} chunks at most");
    let (most, own) = upload_with_chunk_limit(LIMIT, Some(500));
    assert!(
        own > 0,
        "the limit was never reached ({most} chunks at most)"
    );
}
