//! Deterministic engine tests: server and client engines over the in-memory network, driven
//! by a virtual clock. No sockets, no threads, no wall-clock dependence.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::{Rng, RngCore, SeedableRng};
use xdp_quic::backend::mem::{MemNetwork, MemSteering};
use xdp_quic::cid::CidLayout;
use xdp_quic::testing::{run_clients, step, Drive, Node};
use xdp_quic::{tls, ConnectionError, EngineBuilder, RetryPolicy, TransportConfig, VarInt};
use xdp_quic_examples::echo::{self, EchoClient, EchoServer};

const SERVER: &str = "10.0.0.1:4433";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn server_builder(workers: usize) -> EngineBuilder {
    let id = tls::Identity::self_signed_ed25519(&["localhost"]).unwrap();
    EngineBuilder::default()
        .workers(workers)
        .server(tls::server_config(id, &[echo::ALPN]).unwrap())
        .drain_timeout(Duration::from_millis(500))
}

fn client_builder(workers: usize) -> EngineBuilder {
    EngineBuilder::default()
        .workers(workers)
        .client(tls::client_config(tls::Trust::InsecureAnyCertificate, &[echo::ALPN]).unwrap())
        .drain_timeout(Duration::from_millis(500))
}

fn payload(seed: u64, len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v.into()
}

fn echo_client(
    net: &MemNetwork,
    at: &str,
    payloads: Vec<Bytes>,
    datagrams: Vec<Bytes>,
) -> Node<EchoClient> {
    let n = datagrams.len();
    let c = Node::new(
        client_builder(1),
        net,
        addr(at),
        MemSteering::Hash,
        move |_| {
            EchoClient::new(
                addr(SERVER),
                "localhost",
                payloads.clone(),
                datagrams.clone(),
                n,
            )
        },
    )
    .unwrap();
    c.handle
        .post(0, |h, ctx| h.start(ctx))
        .expect("the worker is running");
    c
}

trait Echoed {
    fn handler_total_echoed(&self) -> u64;
}
impl Echoed for Node<EchoServer> {
    fn handler_total_echoed(&self) -> u64 {
        self.workers.iter().map(|w| w.handler().echoed).sum()
    }
}

fn echo_server(net: &MemNetwork, b: EngineBuilder, steering: MemSteering) -> Node<EchoServer> {
    Node::new(b, net, addr(SERVER), steering, |_| EchoServer::default()).unwrap()
}

/// Runs `server` and `clients` until every client has stopped (or 60 s of virtual time).
fn run(net: &MemNetwork, server: &mut dyn Drive, clients: &mut [Node<EchoClient>]) {
    let mut nodes: Vec<&mut dyn Drive> = vec![server];
    nodes.extend(clients.iter_mut().map(|c| c as &mut dyn Drive));
    run_clients(net, &mut nodes, Duration::from_secs(60)).expect("clients finish");
}

/// Connections each worker of `server` accepted.
fn accepted_per_worker(server: &Node<EchoServer>) -> Vec<u64> {
    server
        .workers
        .iter()
        .map(|w| w.counters().conns_accepted)
        .collect()
}

fn assert_all_ok(clients: &[Node<EchoClient>]) {
    for (i, c) in clients.iter().enumerate() {
        let h = c.handler(0);
        assert!(
            h.all_ok(),
            "client {i}: results {:?} error {:?}",
            h.results,
            h.error
        );
    }
}

#[test]
fn handshake_streams_and_datagrams() {
    let net = MemNetwork::new(Duration::from_millis(10));
    let mut server = echo_server(&net, server_builder(1), MemSteering::Hash);
    let payloads = (0..8)
        .map(|i| payload(i, 1000 + 37_000 * i as usize))
        .collect();
    let grams = (0..5u8).map(|i| Bytes::from(vec![i; 100])).collect();
    let mut clients = vec![echo_client(&net, "10.0.0.2:5000", payloads, grams)];
    run(&net, &mut server, &mut clients);

    assert_all_ok(&clients);
    assert_eq!(clients[0].handler(0).datagrams_back, 5);
    assert_eq!(server.handler(0).datagrams, 5);
    let s = server.total();
    assert_eq!(s.conns_accepted, 1);
    assert_eq!(s.handshakes, 1);
    assert_eq!(s.resets_sent, 0);
    assert!(s.rx_packets > 0 && s.tx_packets > 0);
    assert_eq!(clients[0].total().conns_opened, 1);
}

#[test]
fn connections_spread_over_shards_and_stay_there() {
    let net = MemNetwork::new(Duration::from_millis(2));
    let mut server = echo_server(&net, server_builder(4), MemSteering::Hash);
    let mut clients: Vec<_> = (0..24)
        .map(|i| {
            let at = format!("10.0.1.{}:{}", i + 1, 6000 + i);
            echo_client(&net, &at, vec![payload(i, 20_000)], vec![])
        })
        .collect();
    run(&net, &mut server, &mut clients);

    assert_all_ok(&clients);
    let per_worker = accepted_per_worker(&server);
    assert_eq!(per_worker.iter().sum::<u64>(), 24);
    assert!(
        per_worker.iter().filter(|&&n| n > 0).count() >= 3,
        "{per_worker:?}"
    );
    // The 4-tuple hash keeps every packet of a connection on its worker: nothing handed over.
    assert_eq!(server.total().handover_out, 0);
    assert_eq!(server.total().resets_sent, 0);
}

#[test]
fn misrouted_packets_are_handed_over_never_reset() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let mut server = echo_server(&net, server_builder(4), MemSteering::Hash);
    let mut clients = vec![echo_client(
        &net,
        "10.0.2.1:7000",
        vec![payload(9, 2_000_000)],
        vec![],
    )];

    // Handshake on the worker the hash picks...
    while server.total().handshakes == 0 {
        step(&net, &mut [&mut server, &mut clients[0]]).unwrap();
    }
    let owner = server
        .workers
        .iter()
        .position(|w| w.connections() == 1)
        .expect("one worker owns the connection");
    // ...then every later datagram lands on another one.
    let wrong = (owner + 1) % 4;
    net.set_steering(addr(SERVER), MemSteering::Fixed(wrong));
    run(&net, &mut server, &mut clients);

    assert_all_ok(&clients);
    let t = server.total();
    assert!(server.workers[wrong].counters().handover_out > 0);
    assert_eq!(
        server.workers[owner].counters().handover_in,
        server.workers[wrong].counters().handover_out
    );
    assert_eq!(t.handover_dropped, 0);
    assert_eq!(
        t.resets_sent, 0,
        "a misrouted packet provoked a stateless reset"
    );
}

/// A client's Initial whose destination CID looks like one of ours, naming another worker
/// (the layout is no secret: a client can pick the worker that derives the keys of its every
/// Initial), stays on the worker it reached: only a worker that opened connections to the
/// sender gets such an Initial handed over. Before, every worker handed it to the named one.
#[test]
fn a_client_cannot_pick_the_worker_of_its_initial_by_its_cid() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let mut server = echo_server(&net, server_builder(4), MemSteering::Fixed(0));
    let mut cid = [0u8; 8];
    let layout = CidLayout::for_workers(4).unwrap();
    layout.write(3, &mut rand::rngs::StdRng::seed_from_u64(7), &mut cid);
    let mut config = tls::client_config(tls::Trust::InsecureAnyCertificate, &[echo::ALPN]).unwrap();
    config.initial_dst_cid_provider(Arc::new(move || quinn_proto::ConnectionId::new(&cid)));
    let builder = EngineBuilder::default()
        .client(config)
        .drain_timeout(Duration::from_millis(500));
    let p = payload(31, 50_000);
    let client = Node::new(
        builder,
        &net,
        addr("10.0.2.7:7000"),
        MemSteering::Hash,
        move |_| EchoClient::new(addr(SERVER), "localhost", vec![p.clone()], vec![], 0),
    )
    .unwrap();
    client
        .handle
        .post(0, |h, ctx| h.start(ctx))
        .expect("the worker is running");
    let mut clients = vec![client];
    run(&net, &mut server, &mut clients);
    assert_all_ok(&clients);
    let per_worker = accepted_per_worker(&server);
    assert_eq!(per_worker, [1, 0, 0, 0], "served where it landed");
    assert_eq!(server.total().handover_out, 0);
}

/// Each datagram in a worker's hand-over queue holds at most one receive chunk (16 KiB):
/// that is what bounds the queue's memory (README). A datagram larger than a chunk (and
/// than the endpoint's `max_udp_payload_size`, 1,472 here), which has a buffer of its own
/// size, is dropped on arrival and counted malformed, before any hand-over; one that fits
/// is handed over.
#[test]
fn datagrams_larger_than_a_receive_chunk_are_not_handed_over() {
    use xdp_quic::backend::rx::POOL_CHUNK;
    let net = MemNetwork::new(Duration::from_millis(5));
    let mut server = echo_server(&net, server_builder(2), MemSteering::Fixed(0));
    // A Handshake packet naming worker 1, which reaches worker 0.
    let layout = CidLayout::for_workers(2).unwrap();
    let mut cid = vec![0u8; layout.len()];
    layout.write(
        1,
        &mut rand::rngs::StdRng::seed_from_u64(net.seed()),
        &mut cid,
    );
    let handshake = |len: usize| {
        let mut p = vec![0xe0, 0, 0, 0, 1, cid.len() as u8];
        p.extend_from_slice(&cid);
        p.push(0);
        p.resize(len, 0);
        p
    };
    let attacker = addr("10.0.9.9:9999");
    net.inject(attacker, addr(SERVER), &handshake(1_200));
    net.inject(attacker, addr(SERVER), &handshake(POOL_CHUNK + 1));
    net.inject(attacker, addr(SERVER), &handshake(60_000));
    let mut seen = 0;
    while seen < 3 {
        step(&net, &mut [&mut server]).unwrap();
        let c = server.workers[0].counters();
        seen = c.handover_out + c.handover_dropped + c.rx_malformed;
    }
    let c = server.workers[0].counters();
    assert_eq!(
        (c.handover_out, c.rx_malformed, c.handover_dropped),
        (1, 2, 0),
        "{c:?}"
    );
}

#[test]
fn the_cid_steering_program_model_needs_no_hand_over() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let layout = Arc::new(CidLayout::for_workers(4).unwrap());
    let mut server = echo_server(&net, server_builder(4), MemSteering::Cid(layout));
    let mut clients: Vec<_> = (0..8)
        .map(|i| {
            echo_client(
                &net,
                &format!("10.0.3.{}:7100", i + 1),
                vec![payload(i, 50_000)],
                vec![],
            )
        })
        .collect();
    run(&net, &mut server, &mut clients);
    assert_all_ok(&clients);
    assert_eq!(server.total().handover_out, 0);
}

#[test]
fn client_rebinding_mid_transfer_keeps_its_connection() {
    for steering in ["hash", "cid"] {
        let net = MemNetwork::new(Duration::from_millis(5));
        let s = match steering {
            "hash" => MemSteering::Hash,
            _ => MemSteering::Cid(Arc::new(CidLayout::for_workers(4).unwrap())),
        };
        let mut server = echo_server(&net, server_builder(4), s);
        let mut clients = vec![echo_client(
            &net,
            "10.0.4.1:7200",
            vec![payload(3, 3_000_000)],
            vec![],
        )];
        // Part of the transfer on the first path...
        while server.handler_total_echoed() < 500_000 {
            step(&net, &mut [&mut server, &mut clients[0]]).unwrap();
        }
        // NAT rebinding: same client, new address and port.
        net.rebind(&mut clients[0].io[0], addr("10.0.4.2:7201"))
            .unwrap();
        run(&net, &mut server, &mut clients);
        assert_all_ok(&clients);
        assert_eq!(server.total().conns_accepted, 1, "{steering}");
        if steering == "cid" {
            assert_eq!(server.total().handover_out, 0, "the program routes by CID");
        }
    }
}

#[test]
fn retry_required_by_the_server() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let mut server = echo_server(
        &net,
        server_builder(2).retry(RetryPolicy::Always),
        MemSteering::Hash,
    );
    let mut clients: Vec<_> = (0..3)
        .map(|i| {
            echo_client(
                &net,
                &format!("10.0.5.{}:7300", i + 1),
                vec![payload(i, 10_000)],
                vec![],
            )
        })
        .collect();
    run(&net, &mut server, &mut clients);
    assert_all_ok(&clients);
    let t = server.total();
    assert_eq!(t.retries_sent, 3, "one Retry per client");
    assert_eq!(t.conns_accepted, 3);
}

/// A handler that connects and then stays silent, recording when and why it was closed.
#[derive(Default)]
struct Silent {
    closed: Option<(std::time::Instant, ConnectionError)>,
    connected_at: Option<std::time::Instant>,
}
impl xdp_quic::Handler for Silent {
    fn connected(&mut self, conn: &mut xdp_quic::Conn<'_>) {
        self.connected_at = Some(conn.ctx().now());
    }
    fn closed(&mut self, ctx: &mut xdp_quic::Ctx<'_>, _id: xdp_quic::ConnId, r: &ConnectionError) {
        self.closed = Some((ctx.now(), r.clone()));
        ctx.stop_worker();
    }
}

/// A handler that counts its connections' `connected` and `closed` calls.
#[derive(Default)]
struct Tally {
    connected: usize,
    closed: Vec<ConnectionError>,
}
impl xdp_quic::Handler for Tally {
    fn connected(&mut self, _conn: &mut xdp_quic::Conn<'_>) {
        self.connected += 1;
    }
    fn closed(&mut self, _ctx: &mut xdp_quic::Ctx<'_>, _id: xdp_quic::ConnId, r: &ConnectionError) {
        self.closed.push(r.clone());
    }
}

/// A worker that fails (an I/O error, or a panic outside the application's callbacks)
/// still calls `closed` once for each of its connections, as its handler did nothing wrong:
/// `Handler::closed` is once per connection. (Before, the worker and its handler were
/// dropped with their connections unreported.)
#[test]
fn a_failing_worker_reports_each_of_its_connections_closed() {
    let net = MemNetwork::new(Duration::from_millis(10));
    let mut server = Node::new(
        server_builder(1),
        &net,
        addr(SERVER),
        MemSteering::Hash,
        |_| Tally::default(),
    )
    .unwrap();
    let mut client = Node::new(
        client_builder(1),
        &net,
        addr("10.0.6.9:7400"),
        MemSteering::Hash,
        |_| Tally::default(),
    )
    .unwrap();
    for _ in 0..2 {
        client
            .handle
            .post(0, |_, ctx| {
                ctx.connect(addr(SERVER), "localhost").unwrap();
            })
            .expect("the worker is running");
    }
    while server.handler(0).connected < 2 || client.handler(0).connected < 2 {
        step(&net, &mut [&mut server, &mut client]).unwrap();
    }
    let now = net.now();
    server.workers[0].fail(&mut server.io[0], now, "a test failure");
    assert_eq!(
        server.handler(0).closed,
        vec![ConnectionError::LocallyClosed; 2],
        "each connection reported closed, once"
    );
    assert_eq!(server.connections(), 0);
    assert_eq!(server.total().conns_closed, 2, "counted once each");
}

#[test]
fn idle_timers_fire_at_their_deadline_on_both_sides() {
    let net = MemNetwork::new(Duration::from_millis(10));
    let mut t = TransportConfig::default();
    t.max_idle_timeout(Some(VarInt::from_u32(2_000).into()));
    let mut server = Node::new(
        server_builder(1).transport(t),
        &net,
        addr(SERVER),
        MemSteering::Hash,
        |_| Silent::default(),
    )
    .unwrap();
    let mut t = TransportConfig::default();
    t.max_idle_timeout(Some(VarInt::from_u32(2_000).into()));
    let mut client = Node::new(
        client_builder(1).transport(t),
        &net,
        addr("10.0.6.1:7400"),
        MemSteering::Hash,
        |_| Silent::default(),
    )
    .unwrap();
    client
        .handle
        .post(0, |_, ctx| {
            ctx.connect(addr(SERVER), "localhost").unwrap();
        })
        .expect("the worker is running");
    let mut nodes: Vec<&mut dyn Drive> = vec![&mut server, &mut client];
    run_clients(&net, &mut nodes, Duration::from_secs(30)).unwrap();
    drop(nodes);

    let c = client.handler(0);
    let (closed_at, reason) = c.closed.clone().expect("client closed");
    assert_eq!(reason, ConnectionError::TimedOut);
    let idle = closed_at - c.connected_at.expect("connected");
    // The idle timer is armed by the last packet (at or after `connected`), and fires once:
    // 2 s after it, within the few round trips the handshake's last packets take.
    assert!(
        idle >= Duration::from_secs(2) && idle < Duration::from_millis(2_100),
        "{idle:?}"
    );
    // The server's connection times out too, and is drained.
    while server.total().conns_closed == 0 {
        step(&net, &mut [&mut server]).unwrap();
    }
    assert_eq!(
        server.handler(0).closed.as_ref().map(|c| c.1.clone()),
        Some(ConnectionError::TimedOut)
    );
    assert_eq!(server.connections(), 0);
}

#[test]
fn shutdown_closes_every_connection_with_its_code_and_drains() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let mut server = Node::new(
        server_builder(2),
        &net,
        addr(SERVER),
        MemSteering::Hash,
        |_| Silent::default(),
    )
    .unwrap();
    let mut clients: Vec<_> = (0..6)
        .map(|i| {
            let c = Node::new(
                client_builder(1),
                &net,
                addr(&format!("10.0.7.{}:7500", i + 1)),
                MemSteering::Hash,
                |_| Silent::default(),
            )
            .unwrap();
            c.handle
                .post(0, |_, ctx| {
                    ctx.connect(addr(SERVER), "localhost").unwrap();
                })
                .expect("the worker is running");
            c
        })
        .collect();
    while server.total().handshakes < 6 {
        let mut nodes: Vec<&mut dyn Drive> = vec![&mut server];
        nodes.extend(clients.iter_mut().map(|c| c as &mut dyn Drive));
        step(&net, &mut nodes).unwrap();
    }
    server.handle.shutdown(VarInt::from_u32(42), b"maintenance");
    let mut nodes: Vec<&mut dyn Drive> = vec![&mut server];
    nodes.extend(clients.iter_mut().map(|c| c as &mut dyn Drive));
    xdp_quic::testing::run_until(&net, &mut nodes, Duration::from_secs(10), |n| {
        n.iter().all(|x| x.is_done())
    })
    .expect("server and clients stop");
    drop(nodes);
    assert_eq!(server.connections(), 0);
    assert_eq!(server.total().conns_closed, 6);
    for c in &clients {
        match &c.handler(0).closed {
            Some((_, ConnectionError::ApplicationClosed(close))) => {
                assert_eq!(close.error_code, VarInt::from_u32(42));
                assert_eq!(&close.reason[..], b"maintenance");
            }
            other => panic!("client closed with {other:?}"),
        }
    }
}

#[test]
fn hostile_input_during_a_transfer_is_counted_and_dropped() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let mut server = echo_server(&net, server_builder(4), MemSteering::Hash);
    let mut clients = vec![echo_client(
        &net,
        "10.0.8.1:7600",
        vec![payload(5, 1_000_000)],
        vec![],
    )];
    let layout = CidLayout::for_workers(4).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(99);
    let attacker = addr("10.0.8.66:666");
    let mut sent = 0;
    let limit = net.now() + Duration::from_secs(60);
    while !clients[0].is_done() {
        assert!(net.now() < limit, "transfer did not finish");
        if sent < 2_000 {
            for _ in 0..10 {
                let kind = sent % 5;
                let d: Vec<u8> = match kind {
                    0 => (0..rng.gen_range(0..1500)).map(|_| rng.gen()).collect(),
                    1 => vec![],
                    2 => vec![0xc0, 0, 0, 0, 1, 20, 1, 2], // long header cut short
                    3 => vec![0u8; 65_000],                // oversized
                    _ => {
                        // Forged short header with another shard's CID format.
                        let mut p = vec![0x40 | rng.gen::<u8>() & 0x3f; 60];
                        layout.write(rng.gen_range(0..4), &mut rng, &mut p[1..9]);
                        p
                    }
                };
                net.inject(attacker, addr(SERVER), &d);
                sent += 1;
            }
        }
        step(&net, &mut [&mut server, &mut clients[0]]).unwrap();
    }
    assert_all_ok(&clients);
    let t = server.total();
    assert!(t.rx_malformed >= 400, "{t:?}");
    assert!(t.rx_ignored > 0, "{t:?}");
    assert!(
        t.handover_out > 0,
        "forged CIDs of other workers are handed to them: {t:?}"
    );
    assert_eq!(t.conns_accepted, 1);
}

#[test]
fn shutdown_during_transfers_reaches_every_client() {
    let net = MemNetwork::new(Duration::from_millis(1));
    let mut server = echo_server(&net, server_builder(2), MemSteering::Hash);
    let mut clients: Vec<_> = (0..4)
        .map(|i| {
            let at = format!("10.0.9.{}:7700", i + 1);
            echo_client(&net, &at, vec![payload(i, 1_000_000)], vec![])
        })
        .collect();
    while server.total().handshakes < 4 {
        let mut nodes: Vec<&mut dyn Drive> = vec![&mut server];
        nodes.extend(clients.iter_mut().map(|c| c as &mut dyn Drive));
        step(&net, &mut nodes).unwrap();
    }
    // A few more steps: the uploads are under way.
    for _ in 0..3 {
        let mut nodes: Vec<&mut dyn Drive> = vec![&mut server];
        nodes.extend(clients.iter_mut().map(|c| c as &mut dyn Drive));
        step(&net, &mut nodes).unwrap();
    }
    server.handle.shutdown(VarInt::from_u32(77), b"maintenance");
    let mut nodes: Vec<&mut dyn Drive> = vec![&mut server];
    nodes.extend(clients.iter_mut().map(|c| c as &mut dyn Drive));
    run_clients(&net, &mut nodes, Duration::from_secs(60)).unwrap();
    drop(nodes);
    for c in &clients {
        let e = c.handler(0).error.clone().unwrap_or_default();
        assert!(e.contains("maintenance"), "client saw {e:?}");
    }
}

/// An echo server whose callbacks panic for one client (port 6666).
#[derive(Default)]
struct Fragile(EchoServer);
impl xdp_quic::Handler for Fragile {
    fn stream_readable(&mut self, conn: &mut xdp_quic::Conn<'_>, s: xdp_quic::StreamId) {
        if conn.remote_address().port() == 6666 {
            panic!("application bug (deliberate, in a test)");
        }
        self.0.stream_readable(conn, s)
    }
    fn stream_writable(&mut self, conn: &mut xdp_quic::Conn<'_>, s: xdp_quic::StreamId) {
        self.0.stream_writable(conn, s)
    }
    fn closed(&mut self, ctx: &mut xdp_quic::Ctx<'_>, id: xdp_quic::ConnId, r: &ConnectionError) {
        self.0.closed(ctx, id, r)
    }
}

#[test]
fn a_panicking_handler_closes_its_workers_connections_and_the_others_go_on() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let mut server = Node::new(
        server_builder(2),
        &net,
        addr(SERVER),
        MemSteering::Hash,
        |_| Fragile::default(),
    )
    .unwrap();
    let mut clients = vec![echo_client(
        &net,
        "10.0.10.66:6666",
        vec![payload(1, 10_000)],
        vec![],
    )];
    for i in 0..10 {
        let at = format!("10.0.10.{}:{}", i + 1, 7000 + i);
        clients.push(echo_client(&net, &at, vec![payload(i, 300_000)], vec![]));
    }
    run(&net, &mut server, &mut clients);

    let failed: Vec<usize> = (0..2)
        .filter(|&w| server.workers[w].handler_failed())
        .collect();
    assert_eq!(
        failed.len(),
        1,
        "exactly the worker of the bad connection failed"
    );
    let bad = failed[0];
    assert_eq!(server.workers[bad].counters().handler_panics, 1);
    assert_eq!(
        server.workers[bad].connections(),
        0,
        "its connections were closed"
    );
    assert_eq!(server.workers[1 - bad].counters().handler_panics, 0);
    let evil = clients[0].handler(0).error.clone().unwrap_or_default();
    assert!(evil.contains("code 1"), "{evil}");
    let mut ok = 0;
    for c in &clients[1..] {
        let h = c.handler(0);
        if h.all_ok() {
            ok += 1;
        } else {
            // Clients of the failed worker are told why.
            assert!(
                h.error.as_deref().unwrap_or("").contains("code 1"),
                "{:?}",
                h.error
            );
        }
    }
    assert!(ok > 0, "the other worker went on serving");
}

/// Clients that move to a new IPv4 address mid-upload hear the server's close although its
/// congestion window is full and echo data is queued: quinn-proto builds a new congestion
/// controller for a path to a new address, and the close must not wait behind that
/// controller's window (without the fix in `Slot::handle_event` every client here ends by
/// idle timeout).
#[test]
fn shutdown_after_a_move_to_a_new_address_reaches_every_client() {
    let net = MemNetwork::new(Duration::from_millis(2));
    let mut server = Node::new(
        server_builder(2),
        &net,
        addr("10.0.10.1:4433"),
        MemSteering::Hash,
        |_| EchoServer::default(),
    )
    .unwrap();
    let mut clients: Vec<_> = (0..4u64)
        .map(|i| {
            let at = format!("10.0.11.{}:7800", i + 1);
            let p = vec![payload(i, 20_000_000)];
            let c = Node::new(
                client_builder(1),
                &net,
                addr(&at),
                MemSteering::Hash,
                move |_| EchoClient::new(addr("10.0.10.1:4433"), "localhost", p.clone(), vec![], 0),
            )
            .unwrap();
            c.handle
                .post(0, |h, ctx| h.start(ctx))
                .expect("the worker is running");
            c
        })
        .collect();
    let step_all = |server: &mut Node<EchoServer>, clients: &mut Vec<Node<EchoClient>>| {
        let mut nodes: Vec<&mut dyn Drive> = vec![server];
        nodes.extend(clients.iter_mut().map(|c| c as &mut dyn Drive));
        step(&net, &mut nodes).unwrap();
    };
    while server.handler_total_echoed() < 2_000_000 {
        step_all(&mut server, &mut clients);
    }
    for (i, c) in clients.iter_mut().enumerate() {
        net.rebind(&mut c.io[0], addr(&format!("10.0.12.{}:7801", i + 1)))
            .unwrap();
    }
    let moved = server.handler_total_echoed();
    while server.handler_total_echoed() < moved + 2_000_000 {
        step_all(&mut server, &mut clients);
    }
    server.handle.shutdown(VarInt::from_u32(77), b"maintenance");
    let mut nodes: Vec<&mut dyn Drive> = vec![&mut server];
    nodes.extend(clients.iter_mut().map(|c| c as &mut dyn Drive));
    run_clients(&net, &mut nodes, Duration::from_secs(60)).unwrap();
    drop(nodes);
    for (i, c) in clients.iter().enumerate() {
        let e = c.handler(0).error.clone().unwrap_or_default();
        assert!(e.contains("maintenance"), "client {i} saw {e:?}");
    }
}

/// Asks a perf server for `size` octets and reads them, recording how the connection ended.
struct Downloader {
    server: SocketAddr,
    size: u64,
    received: u64,
    ended: Option<ConnectionError>,
}

impl xdp_quic::Handler for Downloader {
    fn connected(&mut self, conn: &mut xdp_quic::Conn<'_>) {
        let s = conn.open_bi().unwrap();
        conn.write(s, &self.size.to_be_bytes()).unwrap();
        conn.finish(s).unwrap();
    }
    fn stream_readable(&mut self, conn: &mut xdp_quic::Conn<'_>, s: xdp_quic::StreamId) {
        let mut got = 0;
        let _ = conn.read(s, |b| got += b.len() as u64);
        self.received += got;
    }
    fn closed(&mut self, ctx: &mut xdp_quic::Ctx<'_>, _: xdp_quic::ConnId, r: &ConnectionError) {
        self.ended = Some(r.clone());
        ctx.stop_worker();
    }
}

/// Clients that move mid-download, to a new IPv4 address or to a new IPv6 address (where
/// quinn-proto builds a new controller on any move), hear the server's close code.
#[test]
fn shutdown_after_a_migration_reaches_every_client() {
    use xdp_quic_examples::perf::{self, PerfServer};
    let cases = [
        ("10.0.10.1:4433", "10.0.11.{}:7800", "10.0.12.{}:7801"),
        ("[fd00::1]:4433", "[fd00::11:{}]:7800", "[fd00::12:{}]:7801"),
    ];
    for (server_at, from, to) in cases {
        let net = MemNetwork::new(Duration::from_millis(2));
        let id = tls::Identity::self_signed_ed25519(&["localhost"]).unwrap();
        let builder = EngineBuilder::default()
            .workers(2)
            .server(tls::server_config(id, &[perf::ALPN]).unwrap())
            .drain_timeout(Duration::from_millis(500));
        let mut server = Node::new(builder, &net, addr(server_at), MemSteering::Hash, |_| {
            PerfServer::default()
        })
        .unwrap();
        let mut clients: Vec<_> = (0..4u64)
            .map(|i| {
                let at = addr(&from.replace("{}", &(i + 1).to_string()));
                let target = addr(server_at);
                let client = EngineBuilder::default()
                    .client(
                        tls::client_config(tls::Trust::InsecureAnyCertificate, &[perf::ALPN])
                            .unwrap(),
                    )
                    .drain_timeout(Duration::from_millis(500));
                let c = Node::new(client, &net, at, MemSteering::Hash, move |_| Downloader {
                    server: target,
                    size: 1 << 30,
                    received: 0,
                    ended: None,
                })
                .unwrap();
                c.handle
                    .post(0, |h, ctx| {
                        ctx.connect(h.server, "localhost").unwrap();
                    })
                    .expect("the worker is running");
                c
            })
            .collect();
        let step_all = |server: &mut Node<PerfServer>, clients: &mut Vec<Node<Downloader>>| {
            let mut nodes: Vec<&mut dyn Drive> = vec![server];
            nodes.extend(clients.iter_mut().map(|c| c as &mut dyn Drive));
            step(&net, &mut nodes).unwrap();
        };
        let received = |clients: &Vec<Node<Downloader>>| -> u64 {
            clients.iter().map(|c| c.handler(0).received).min().unwrap()
        };
        while received(&clients) < 2_000_000 {
            step_all(&mut server, &mut clients);
        }
        for (i, c) in clients.iter_mut().enumerate() {
            let to = addr(&to.replace("{}", &(i + 1).to_string()));
            net.rebind(&mut c.io[0], to).unwrap();
        }
        // The downloads go on over the new paths once the server validated them (until then
        // it may send only three times what it received there, and the clients send only
        // acknowledgements). The new paths' controllers start from their initial window, so
        // the server is held by it, with data queued, when it closes.
        let moved = received(&clients);
        while received(&clients) < moved + 100_000 {
            step_all(&mut server, &mut clients);
        }
        server.handle.shutdown(VarInt::from_u32(77), b"maintenance");
        let mut nodes: Vec<&mut dyn Drive> = vec![&mut server];
        nodes.extend(clients.iter_mut().map(|c| c as &mut dyn Drive));
        run_clients(&net, &mut nodes, Duration::from_secs(60)).unwrap();
        drop(nodes);
        for (i, c) in clients.iter().enumerate() {
            match &c.handler(0).ended {
                Some(ConnectionError::ApplicationClosed(close)) => {
                    assert_eq!(
                        close.error_code,
                        VarInt::from_u32(77),
                        "{server_at} client {i}"
                    );
                }
                other => panic!("{server_at} client {i} ended with {other:?}"),
            }
        }
    }
}

/// A worker holds at most `max_connections`: the next client is refused at once (not left to
/// time out), and a client is served again once a connection has closed.
#[test]
fn connections_past_the_maximum_are_refused() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let mut server = echo_server(
        &net,
        server_builder(1).max_connections(2),
        MemSteering::Hash,
    );
    let mut first: Vec<_> = (0..2)
        .map(|i| {
            let at = format!("10.0.13.{}:7900", i + 1);
            echo_client(&net, &at, vec![payload(i, 3_000_000)], vec![])
        })
        .collect();
    while server.connections() < 2 {
        let mut nodes: Vec<&mut dyn Drive> = vec![&mut server];
        nodes.extend(first.iter_mut().map(|c| c as &mut dyn Drive));
        step(&net, &mut nodes).unwrap();
    }
    let mut third = vec![echo_client(
        &net,
        "10.0.13.9:7900",
        vec![payload(9, 1000)],
        vec![],
    )];
    run(&net, &mut server, &mut third);
    let e = third[0].handler(0).error.clone().unwrap_or_default();
    assert!(e.contains("refused"), "the third client saw {e:?}");
    assert_eq!(server.total().conns_refused, 1);
    // The first two finish; then there is room again.
    run(&net, &mut server, &mut first);
    assert_all_ok(&first);
    let mut later = vec![echo_client(
        &net,
        "10.0.13.10:7900",
        vec![payload(10, 1000)],
        vec![],
    )];
    run(&net, &mut server, &mut later);
    assert_all_ok(&later);
}

/// With a CID lifetime, a worker retires the CIDs it issued and issues fresh ones: a long
/// transfer reaches the server under several destination CIDs, every one naming the
/// connection's worker, and the data arrives intact.
#[test]
fn connection_ids_rotate_and_keep_naming_their_worker() {
    use std::collections::BTreeSet;
    use xdp_quic::backend::mem::{MemPacket, Verdict};
    let net = MemNetwork::new(Duration::from_millis(5));
    let layout = CidLayout::for_workers(2).unwrap();
    let seen = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let s = seen.clone();
    let server_addr = addr(SERVER);
    net.set_impairment(move |p: &mut MemPacket| {
        // Short headers from the client: octets 1..9 are the server's CID (8 octets).
        if p.to == server_addr && p.data.len() > 9 && p.data[0] & 0x80 == 0 {
            s.lock().unwrap().insert(p.data[1..9].to_vec());
        }
        Verdict::Deliver
    });
    let mut server = echo_server(
        &net,
        server_builder(2).cid_lifetime(Some(Duration::from_millis(40))),
        MemSteering::Hash,
    );
    let mut clients = vec![echo_client(
        &net,
        "10.0.14.1:8000",
        vec![payload(14, 4_000_000)],
        vec![],
    )];
    let mut nodes: Vec<&mut dyn Drive> = vec![&mut server, &mut clients[0]];
    let took = run_clients(&net, &mut nodes, Duration::from_secs(60)).unwrap();
    drop(nodes);
    assert_all_ok(&clients);
    let seen = seen.lock().unwrap();
    let workers: BTreeSet<_> = seen.iter().map(|c| layout.decode(c)).collect();
    assert_eq!(workers.len(), 1, "every CID names one worker: {workers:?}");
    assert!(workers.iter().all(Option::is_some));
    assert!(
        seen.len() >= 3,
        "{} destination CIDs over {took:?} with a 40 ms lifetime",
        seen.len()
    );
}

/// Where a connection's replies go (its link layer, for AF_XDP) changes only with a packet
/// the connection authenticated: spoofed frames from the client's address with another MAC
/// (a replayed packet, a forged one with the connection's CID) and a flood from spoofed
/// sources leave it alone, and a real move of the client takes it along.
#[test]
fn forged_frames_never_redirect_a_connections_replies() {
    use std::collections::BTreeSet;
    use xdp_quic::backend::mem::{mac_of, MemPacket, Verdict};
    let net = MemNetwork::new(Duration::from_millis(5));
    let client_at = addr("10.0.15.1:8100");
    let moved_to = addr("10.0.15.2:8101");
    let attacker_mac = [0x02, 0xee, 0xee, 0xee, 0xee, 0xee];
    // Every destination MAC the server used toward each client address, and the client's
    // packets (to replay and to forge from).
    let macs = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let captured = Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    let (m, c) = (macs.clone(), captured.clone());
    let server_addr = addr(SERVER);
    net.set_impairment(move |p: &mut MemPacket| {
        if p.from.port() == server_addr.port() {
            if let Some(l) = p.link {
                m.lock().unwrap().insert((p.to, l.dst_mac));
            }
        } else if p.to == server_addr && p.data[0] & 0x80 == 0 {
            c.lock().unwrap().push(p.data.clone());
        }
        Verdict::Deliver
    });
    let mut server = echo_server(&net, server_builder(1), MemSteering::Hash);
    let mut clients = vec![echo_client(
        &net,
        "10.0.15.1:8100",
        vec![payload(15, 4_000_000)],
        vec![],
    )];
    while server.handler_total_echoed() < 1_000_000 {
        step(&net, &mut [&mut server, &mut clients[0]]).unwrap();
    }
    // The attack: the client's own packets replayed, forged ones with its CID, from its
    // address but another MAC; and a flood of short headers from 2,000 spoofed sources.
    let packets = captured.lock().unwrap().clone();
    let mut rng = rand::rngs::StdRng::seed_from_u64(net.seed());
    for p in packets.iter().rev().take(50) {
        net.inject_from_mac(client_at, attacker_mac, server_addr, p);
        let mut forged = p.clone();
        rng.fill_bytes(&mut forged[9..]);
        net.inject_from_mac(client_at, attacker_mac, server_addr, &forged);
    }
    for i in 0..2000u32 {
        let from = SocketAddr::new(std::net::Ipv4Addr::from(0x0a63_0000 + i).into(), 9000);
        let mut forged = packets[packets.len() - 1].clone();
        rng.fill_bytes(&mut forged[9..]);
        net.inject_from_mac(from, attacker_mac, server_addr, &forged);
    }
    let echoed = server.handler_total_echoed();
    while server.handler_total_echoed() < echoed + 1_000_000 {
        step(&net, &mut [&mut server, &mut clients[0]]).unwrap();
    }
    // A real move: the client's packets now come from a new address and its MAC.
    net.rebind(&mut clients[0].io[0], moved_to).unwrap();
    run(&net, &mut server, &mut clients);
    assert_all_ok(&clients);
    let macs = macs.lock().unwrap();
    let toward = |a: SocketAddr| -> BTreeSet<[u8; 6]> {
        macs.iter()
            .filter(|(to, _)| *to == a)
            .map(|(_, m)| *m)
            .collect()
    };
    assert_eq!(toward(client_at), BTreeSet::from([mac_of(client_at)]));
    assert_eq!(toward(moved_to), BTreeSet::from([mac_of(moved_to)]));
    assert!(
        macs.iter().all(|(_, m)| *m != attacker_mac),
        "the server sent toward the attacker's MAC: {macs:?}"
    );
}

/// Two moves in a row replayed by an on-link attacker (two fresh packets of the client,
/// held back and sent from two spoofed addresses with the attacker's MAC) do not leave the
/// client's own address without its link layer: quinn-proto goes back to the address it had
/// validated when the moves fail validation, and the replies toward it keep the client's
/// MAC. (Before, a connection kept the link layers of two addresses and fell back to its
/// latest for any other: after the revert, replies to the client went to the attacker's
/// MAC.)
#[test]
fn two_replayed_moves_do_not_send_the_clients_replies_elsewhere() {
    use std::collections::BTreeSet;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use xdp_quic::backend::mem::{mac_of, MemPacket, Verdict};
    let net = MemNetwork::new(Duration::from_millis(5));
    let client_at = addr("10.0.16.1:8200");
    let spoofed = [addr("10.0.16.7:8201"), addr("10.0.16.8:8202")];
    let attacker_mac = [0x02, 0xee, 0xee, 0xee, 0xee, 0x16];
    let server_addr = addr(SERVER);
    let macs = Arc::new(std::sync::Mutex::new(BTreeSet::new()));
    let held = Arc::new(std::sync::Mutex::new(Vec::<Vec<u8>>::new()));
    // How many of the client's short-header packets to hold back, and whether to drop the
    // client's packets (it falls silent while the server gives up on the spoofed paths).
    let hold = Arc::new(AtomicUsize::new(0));
    let silent = Arc::new(AtomicBool::new(false));
    let (m, h, n, quiet) = (macs.clone(), held.clone(), hold.clone(), silent.clone());
    net.set_impairment(move |p: &mut MemPacket| {
        if p.from.port() == server_addr.port() {
            // What the TX ring would use; `None` is a reply it would not send (the
            // in-memory network delivers it anyway).
            m.lock().unwrap().insert((p.to, p.link.map(|l| l.dst_mac)));
            return Verdict::Deliver;
        }
        if p.from != client_at || p.to != server_addr {
            return Verdict::Deliver;
        }
        if p.data[0] & 0x80 == 0 && n.load(Ordering::SeqCst) > 0 {
            n.fetch_sub(1, Ordering::SeqCst);
            h.lock().unwrap().push(p.data.clone());
            return Verdict::Drop;
        }
        if quiet.load(Ordering::SeqCst) {
            Verdict::Drop
        } else {
            Verdict::Deliver
        }
    });
    let mut server = echo_server(&net, server_builder(1), MemSteering::Hash);
    let mut clients = vec![echo_client(
        &net,
        "10.0.16.1:8200",
        vec![payload(16, 4_000_000)],
        vec![],
    )];
    while server.handler_total_echoed() < 1_000_000 {
        step(&net, &mut [&mut server, &mut clients[0]]).unwrap();
    }
    // The client's next two packets are held back, and it falls silent after them; they
    // arrive from the spoofed addresses, in order, each moving the connection (authentic,
    // and the newest the server has).
    silent.store(true, Ordering::SeqCst);
    hold.store(2, Ordering::SeqCst);
    while held.lock().unwrap().len() < 2 {
        step(&net, &mut [&mut server, &mut clients[0]]).unwrap();
    }
    for (from, p) in spoofed.iter().zip(held.lock().unwrap().iter()) {
        net.inject_from_mac(*from, attacker_mac, server_addr, p);
    }
    // Long enough for the server to give up validating the spoofed paths and go back to
    // the client's on its path validation timer (three probe timeouts of the new path, whose
    // round-trip time starts at quinn-proto's initial 333 ms: about 3 s of virtual time).
    let until = net.now() + Duration::from_secs(5);
    while net.now() < until {
        step(&net, &mut [&mut server, &mut clients[0]]).unwrap();
    }
    silent.store(false, Ordering::SeqCst);
    run(&net, &mut server, &mut clients);
    assert_all_ok(&clients);
    let macs = macs.lock().unwrap();
    let toward_client: BTreeSet<Option<[u8; 6]>> = macs
        .iter()
        .filter(|(to, _)| *to == client_at)
        .map(|(_, m)| *m)
        .collect();
    assert_eq!(
        toward_client,
        BTreeSet::from([Some(mac_of(client_at))]),
        "every reply to the client's address went to its MAC, none without a link layer \
         (seed {})",
        net.seed()
    );
    assert!(
        macs.iter().any(|(to, _)| spoofed.contains(to)),
        "the replayed packets did move the connection: {macs:?}"
    );
}

/// Answers between turns, as the tasks of the async API's thread-per-core mode do: reads each
/// stream to its end in its callbacks, writes it back when the test posts [`LateEcho::answer`].
#[derive(Default)]
struct LateEcho {
    read: std::collections::HashMap<(xdp_quic::ConnId, xdp_quic::StreamId), (Vec<Bytes>, bool)>,
}

impl xdp_quic::Handler for LateEcho {
    fn stream_readable(&mut self, conn: &mut xdp_quic::Conn<'_>, s: xdp_quic::StreamId) {
        let e = self.read.entry((conn.id(), s)).or_default();
        if let Ok(xdp_quic::ReadStatus::Finished) = conn.read(s, |b| e.0.push(b)) {
            e.1 = true;
        }
    }
}

impl LateEcho {
    /// Echoes every stream read to its end.
    fn answer(&mut self, ctx: &mut xdp_quic::Ctx<'_>) {
        let done: Vec<_> = self
            .read
            .iter()
            .filter(|(_, (_, fin))| *fin)
            .map(|(k, _)| *k)
            .collect();
        for (id, s) in done {
            let (chunks, _) = self.read.remove(&(id, s)).expect("listed above");
            ctx.with_conn(id, |conn| {
                for mut c in chunks {
                    // Well within the stream's flow-control window.
                    let n = conn.write_chunk(s, &mut c).expect("writable");
                    assert!(c.is_empty(), "{n} octets taken of a chunk");
                }
                conn.finish(s).expect("open");
            });
        }
    }
}

/// Echoes 8 streams of 200 octets for each of 8 clients through a [`LateEcho`] server
/// answering between turns; returns the packets the server sent.
fn late_echo(hold: bool) -> u64 {
    let net = MemNetwork::new(Duration::from_millis(5));
    let mut server = Node::new(
        server_builder(1),
        &net,
        addr(SERVER),
        MemSteering::Hash,
        |_| LateEcho::default(),
    )
    .unwrap();
    server.workers[0].hold_transmits(hold);
    let mut clients = echo_clients(&net, LATE_CLIENTS, 8, 200);
    let start = net.now();
    while !clients.iter().all(|c| c.is_done()) {
        assert!(
            net.now() - start < Duration::from_secs(60),
            "hold {hold}: the clients did not finish in 60 s of virtual time"
        );
        let mut nodes: Vec<&mut dyn Drive> = vec![&mut server];
        nodes.extend(clients.iter_mut().map(|c| c as &mut dyn Drive));
        step(&net, &mut nodes).unwrap();
        // The application's turn, between two of the worker's.
        server
            .handle
            .post(0, |h, ctx| h.answer(ctx))
            .expect("the worker runs");
    }
    assert_all_ok(&clients);
    server.total().tx_packets
}

const LATE_CLIENTS: u64 = 8;

/// `n` echo clients (10.0.0.2 and up), each with `streams` streams of `len` octets.
fn echo_clients(net: &MemNetwork, n: u64, streams: u64, len: usize) -> Vec<Node<EchoClient>> {
    (0..n)
        .map(|i| {
            let payloads = (0..streams).map(|j| payload(i * 10 + j, len)).collect();
            echo_client(net, &format!("10.0.0.{}:5000", i + 2), payloads, vec![])
        })
        .collect()
}

#[test]
fn held_transmits_leave_with_what_the_application_answers_between_turns() {
    // Without holding, each connection's requests are acknowledged in a packet of their
    // own, and the answers follow in the next turn; held, the ACK leaves with the answers.
    let (held, plain) = (late_echo(true), late_echo(false));
    assert!(
        held + LATE_CLIENTS <= plain,
        "held: {held} packets sent, not held: {plain}: an ACK-only packet per connection \
         should have been saved"
    );

    // A handler that answers in its callbacks completes too: a held transmit goes at the
    // next turn without anything else happening.
    let net = MemNetwork::new(Duration::from_millis(5));
    let mut server = echo_server(&net, server_builder(2), MemSteering::Hash);
    for w in &mut server.workers {
        w.hold_transmits(true);
    }
    let mut clients = echo_clients(&net, 4, 4, 50_000);
    run(&net, &mut server, &mut clients);
    assert_all_ok(&clients);
}

/// An engine that serves and also opens connections (a proxy, say), with 4 workers behind
/// hash steering: each worker's connection is answered on whichever worker the 4-tuple
/// hashes to, and the server's Initials (which carry the opening worker's CID) are routed
/// to it. (Before, Initials on a serving engine stayed where they landed, taken there for a
/// new client's attempt, and three connections in four timed out.)
#[test]
fn an_engine_that_serves_and_connects_reaches_servers_from_every_worker() {
    let net = MemNetwork::new(Duration::from_millis(2));
    let mut server = echo_server(&net, server_builder(1), MemSteering::Hash);
    let id = tls::Identity::self_signed_ed25519(&["localhost"]).unwrap();
    let both = server_builder(4)
        .server(tls::server_config(id, &[echo::ALPN]).unwrap())
        .client(tls::client_config(tls::Trust::InsecureAnyCertificate, &[echo::ALPN]).unwrap());
    let mut proxy = Node::new(both, &net, addr("10.0.9.1:4433"), MemSteering::Hash, |w| {
        EchoClient::new(
            addr(SERVER),
            "localhost",
            vec![payload(900 + w as u64, 20_000)],
            vec![],
            0,
        )
    })
    .unwrap();
    for w in 0..4 {
        proxy
            .handle
            .post(w, |h, ctx| h.start(ctx))
            .expect("the worker is running");
    }
    let mut nodes: Vec<&mut dyn Drive> = vec![&mut server, &mut proxy];
    run_clients(&net, &mut nodes, Duration::from_secs(60)).expect("every worker's client ends");
    drop(nodes);
    for w in 0..4 {
        let h = proxy.handler(w);
        assert!(h.all_ok(), "worker {w}: {:?} {:?}", h.results, h.error);
    }
    assert_eq!(server.total().conns_accepted, 4);
    assert!(
        proxy.total().handover_out > 0,
        "the hash moved some: the test proves something"
    );
}

/// A turn looks for datagrams again only after a batch came back full: a batch left with room
/// means the backend found nothing more (`Backend::recv`), and another look could only find
/// nothing (on the UDP backend, a `recvmmsg` answered EAGAIN).
#[test]
fn a_turn_looks_for_datagrams_again_only_after_a_full_batch() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let mut server = echo_server(&net, server_builder(1), MemSteering::Hash);
    let (s, from) = (addr(SERVER), addr("10.0.9.9:5000"));
    // The worker's batch holds 64 datagrams (the builder's default).
    for (sent, looks) in [(3u64, 1u64), (64, 2), (150, 3), (0, 1)] {
        for i in 0..sent {
            // Short headers of a CID no connection has: received, counted, dropped.
            net.inject(from, s, &[0x40 | (i as u8 & 0x3f); 30]);
        }
        if let Some(at) = net.next_delivery() {
            net.advance_to(at);
        }
        let (looks_before, rx_before) = (server.io[0].recv_calls(), server.total().rx_packets);
        server.turn(net.now()).unwrap();
        assert_eq!(
            server.io[0].recv_calls() - looks_before,
            looks,
            "looks for {sent} datagrams"
        );
        assert_eq!(server.total().rx_packets - rx_before, sent, "all received");
    }
}
