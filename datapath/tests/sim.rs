//! Deterministic engine tests: server and client engines over the in-memory network, driven
//! by a virtual clock. No sockets, no threads, no wall-clock dependence.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::{RngCore, SeedableRng};
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
    let id = tls::Identity::self_signed(&["localhost"]).unwrap();
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
    let c = Node::new(client_builder(1), net, addr(at), MemSteering::Hash, move |_| {
        EchoClient::new(addr(SERVER), "localhost", payloads.clone(), datagrams.clone(), n)
    })
    .unwrap();
    c.handle.post(0, |h, ctx| h.start(ctx));
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

fn assert_all_ok(clients: &[Node<EchoClient>]) {
    for (i, c) in clients.iter().enumerate() {
        let h = c.handler(0);
        assert!(h.all_ok(), "client {i}: results {:?} error {:?}", h.results, h.error);
    }
}

#[test]
fn handshake_streams_and_datagrams() {
    let net = MemNetwork::new(Duration::from_millis(10));
    let mut server = echo_server(&net, server_builder(1), MemSteering::Hash);
    let payloads = (0..8).map(|i| payload(i, 1000 + 37_000 * i as usize)).collect();
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
    let per_worker: Vec<u64> = server
        .workers
        .iter()
        .map(|w| w.counters().conns_accepted)
        .collect();
    assert_eq!(per_worker.iter().sum::<u64>(), 24);
    assert!(per_worker.iter().filter(|&&n| n > 0).count() >= 3, "{per_worker:?}");
    // The 4-tuple hash keeps every packet of a connection on its worker: nothing handed over.
    assert_eq!(server.total().handover_out, 0);
    assert_eq!(server.total().resets_sent, 0);
}

#[test]
fn misrouted_packets_are_handed_over_never_reset() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let mut server = echo_server(&net, server_builder(4), MemSteering::Hash);
    let mut clients = vec![echo_client(&net, "10.0.2.1:7000", vec![payload(9, 2_000_000)], vec![])];

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
    assert_eq!(server.workers[owner].counters().handover_in, server.workers[wrong].counters().handover_out);
    assert_eq!(t.handover_dropped, 0);
    assert_eq!(t.resets_sent, 0, "a misrouted packet provoked a stateless reset");
}

#[test]
fn the_cid_steering_program_model_needs_no_hand_over() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let layout = Arc::new(CidLayout::for_workers(4).unwrap());
    let mut server = echo_server(&net, server_builder(4), MemSteering::Cid(layout));
    let mut clients: Vec<_> = (0..8)
        .map(|i| echo_client(&net, &format!("10.0.3.{}:7100", i + 1), vec![payload(i, 50_000)], vec![]))
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
        let mut clients = vec![echo_client(&net, "10.0.4.1:7200", vec![payload(3, 3_000_000)], vec![])];
        // Part of the transfer on the first path...
        while server.handler_total_echoed() < 500_000 {
            step(&net, &mut [&mut server, &mut clients[0]]).unwrap();
        }
        // NAT rebinding: same client, new address and port.
        net.rebind(&mut clients[0].io[0], addr("10.0.4.2:7201")).unwrap();
        run(&net, &mut server, &mut clients);
        assert_all_ok(&clients);
        assert_eq!(server.total().conns_accepted, 1, "{steering}");
        if steering == "cid" {
            assert_eq!(server.total().handover_out, 0, "the program routes by CID");
        }
    }
}
