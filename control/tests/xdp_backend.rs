//! QUIC over AF_XDP, for real: each test builds its own testbed (two network namespaces, a
//! multi-queue veth pair), attaches the XDP program to the server's side, serves over AF_XDP
//! there, and drives an independent client (the quinn crate, over kernel UDP) from the other
//! namespace. Root is needed; with `CI` set a missing privilege fails the test.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use support::{quinn_endpoint, quinn_endpoint_with};
use xdp_quic::backend::xsk::{TxMode, TxPath};
use xdp_quic::{tls, Engine, EngineBuilder, TransportConfig, VarInt, XdpSetup};
use xdp_quic_control::testbed::Testbed;
use xdp_quic_control::testing::{privileged, sh, unique_name, wait_until};
use xdp_quic_control::xdp::{AttachMode, EmbeddedAttachment};
use xdp_quic_examples::echo::{self, EchoServer};

const PORT: u16 = 4433;
/// A hang guard, never a performance bound.
const GUARD: Duration = Duration::from_secs(120);

/// An echo server's builder, with its certificate.
fn echo_builder() -> (
    EngineBuilder,
    Vec<rustls::pki_types::CertificateDer<'static>>,
) {
    let id = tls::Identity::self_signed(&["localhost"]).unwrap();
    let cert = id.chain.clone();
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(1100));
    t.datagram_receive_buffer_size(Some(1 << 20));
    let builder = EngineBuilder::default()
        .server(tls::server_config(id, &[echo::ALPN]).unwrap())
        .transport(t)
        .drain_timeout(Duration::from_secs(2));
    (builder, cert)
}

/// A server over AF_XDP in its own testbed.
struct Rig {
    engine: Option<Engine<EchoServer>>,
    attachment: Option<EmbeddedAttachment>,
    cert: Vec<rustls::pki_types::CertificateDer<'static>>,
    tb: Testbed,
}

impl Rig {
    fn new(queues: u32, serve: &[u32], mode: AttachMode, tune: impl FnOnce(&mut XdpSetup)) -> Rig {
        let tb = Testbed::create(&unique_name("xb"), queues, 214).expect("testbed");
        let (builder, cert) = echo_builder();
        let mut setup = XdpSetup::new(
            &tb.server_if,
            format!("[::]:{PORT}").parse().unwrap(),
            serve.to_vec(),
        );
        tune(&mut setup);
        let (engine, attachment) = tb
            .serve_xdp(builder, &setup, mode, |_| EchoServer::default())
            .expect("serve over AF_XDP");
        Rig {
            engine: Some(engine),
            attachment: Some(attachment),
            cert,
            tb,
        }
    }

    /// Serves on the testbed again (after [`Rig::stop`]), on `serve`.
    fn restart(&mut self, serve: &[u32]) {
        self.attachment.take();
        let (builder, cert) = echo_builder();
        let setup = XdpSetup::new(
            &self.tb.server_if,
            format!("[::]:{PORT}").parse().unwrap(),
            serve.to_vec(),
        );
        let (engine, attachment) = self
            .tb
            .serve_xdp(builder, &setup, AttachMode::Native, |_| {
                EchoServer::default()
            })
            .expect("serving again on the same queues");
        self.engine = Some(engine);
        self.attachment = Some(attachment);
        self.cert = cert;
    }

    fn addr(&self, v6: bool) -> SocketAddr {
        SocketAddr::new(self.tb.server_ip(v6), PORT)
    }

    fn engine(&self) -> &Engine<EchoServer> {
        self.engine.as_ref().unwrap()
    }

    /// Runs `f` in the client namespace on a tokio runtime.
    fn client<T: Send>(&self, f: impl AsyncFnOnce() -> T + Send) -> T {
        self.tb
            .in_client(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap()
                    .block_on(async { tokio::time::timeout(GUARD, f()).await.expect("hang guard") })
            })
            .unwrap()
    }

    /// Stops the server and returns its handlers.
    fn stop(&mut self) -> Vec<EchoServer> {
        self.engine
            .take()
            .unwrap()
            .shutdown(VarInt::from_u32(0), b"test done")
            .unwrap()
    }

    fn program_counter(&self, name: &str) -> u64 {
        let c = self.attachment.as_ref().unwrap().counters().unwrap();
        c.named()
            .into_iter()
            .find(|(n, _)| n == name)
            .map_or(0, |(_, v)| v)
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if let Some(e) = self.engine.take() {
            let _ = e.shutdown(VarInt::from_u32(0), b"");
        }
        self.attachment.take();
    }
}

fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v
}

/// Sends `data` on a new bidirectional stream and returns what comes back.
async fn echo_stream(conn: &quinn::Connection, data: &[u8]) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let (_, back) = tokio::join!(
        async {
            send.write_all(data).await.unwrap();
            send.finish().unwrap();
        },
        async { recv.read_to_end(usize::MAX).await.unwrap() }
    );
    back
}

/// One quinn client: connects to `addr`, echoes `len` random octets (seeded by `seed`) on
/// one stream, checks them, closes and waits until the close went out.
async fn echo_once(
    cert: &[rustls::pki_types::CertificateDer<'static>],
    addr: SocketAddr,
    len: usize,
    seed: u64,
) {
    let ep = quinn_endpoint(cert, addr.is_ipv6());
    let conn = ep
        .connect(addr, "localhost")
        .unwrap()
        .await
        .expect("handshake");
    let d = random(len, seed);
    assert!(
        echo_stream(&conn, &d).await == d,
        "{len} octets echoed intact"
    );
    conn.close(0u32.into(), b"");
    ep.wait_idle().await;
}

/// Handshake, 50 MB echoed byte for byte, 1,000 concurrent streams, datagrams.
fn full_exchange(mode: AttachMode, v6: bool, tx: TxMode) {
    if !privileged("full_exchange") {
        return;
    }
    let mut rig = Rig::new(2, &[0, 1], mode, |s| s.tx = tx);
    let want = match tx {
        TxMode::Xsk => TxPath::Xsk,
        // veth is copy mode: `auto` takes the kernel's path.
        TxMode::Kernel | TxMode::Auto => TxPath::Kernel,
    };
    assert!(
        rig.engine().xsk_queues().iter().all(|q| q.tx == want),
        "{tx:?} on veth transmits on {want}"
    );
    let addr = rig.addr(v6);
    let cert = rig.cert.clone();
    rig.client(async move || {
        let ep = quinn_endpoint(&cert, v6);
        let conn = ep
            .connect(addr, "localhost")
            .unwrap()
            .await
            .expect("handshake");

        let big = random(50_000_000, 1);
        assert!(echo_stream(&conn, &big).await == big, "50 MB echoed intact");

        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..1000u64 {
            let conn = conn.clone();
            tasks.spawn(async move {
                let d = random(1000 + i as usize, i);
                echo_stream(&conn, &d).await == d
            });
        }
        let mut ok = 0;
        while let Some(r) = tasks.join_next().await {
            ok += usize::from(r.unwrap());
        }
        assert_eq!(ok, 1000, "1,000 concurrent streams echoed intact");

        for i in 0..10u8 {
            conn.send_datagram(vec![i; 500].into()).unwrap();
        }
        let mut got = Vec::new();
        while got.len() < 10 {
            got.push(conn.read_datagram().await.unwrap()[0]);
        }
        got.sort();
        assert_eq!(got, (0..10).collect::<Vec<u8>>());
        conn.close(0u32.into(), b"bye");
        ep.wait_idle().await;
    });
    let handlers = rig.stop();
    assert_eq!(handlers.iter().map(|h| h.datagrams).sum::<u64>(), 10);
    assert!(rig.program_counter(if v6 { "v6.redirected" } else { "v4.redirected" }) > 10_000);
}

#[test]
fn native_xdp_ipv4_full_exchange_transmitting_on_the_ring() {
    full_exchange(AttachMode::Native, false, TxMode::Xsk);
}

#[test]
fn skb_xdp_ipv6_full_exchange_transmitting_on_the_ring() {
    full_exchange(AttachMode::Skb, true, TxMode::Xsk);
}

/// `auto` on veth (copy mode): transmits through the queues' UDP sockets, with GSO.
#[test]
fn native_xdp_ipv4_full_exchange_transmitting_through_the_kernel() {
    full_exchange(AttachMode::Native, false, TxMode::Auto);
}

#[test]
fn native_xdp_ipv6_full_exchange_transmitting_through_the_kernel() {
    full_exchange(AttachMode::Native, true, TxMode::Kernel);
}

/// The other two mode/family pairs: handshake and an echo.
#[test]
fn native_ipv6_and_skb_ipv4_echo() {
    if !privileged("native_ipv6_and_skb_ipv4_echo") {
        return;
    }
    for (mode, v6) in [(AttachMode::Native, true), (AttachMode::Skb, false)] {
        let mut rig = Rig::new(1, &[0], mode, |_| {});
        let addr = rig.addr(v6);
        let cert = rig.cert.clone();
        rig.client(async move || echo_once(&cert, addr, 300_000, 7).await);
        rig.stop();
    }
}

/// Four queues, four workers: clients (each its own socket, so its own TX queue on the veth)
/// are added until every worker has served one; every connection echoes intact.
#[test]
fn four_queues_every_worker_serves_connections() {
    if !privileged("four_queues_every_worker_serves_connections") {
        return;
    }
    let mut rig = Rig::new(4, &[0, 1, 2, 3], AttachMode::Native, |_| {});
    let addr = rig.addr(false);
    let cert = rig.cert.clone();
    let handle = rig.engine().handle();
    let clients = rig.client(async move || {
        let mut n = 0;
        // Each new socket picks a TX queue by its flow hash: 64 tries leave a queue out with
        // a probability below 1e-7.
        while n < 64 && handle.counters().iter().any(|c| c.conns_accepted == 0) {
            let ep = quinn_endpoint(&cert, false);
            let conn = ep
                .connect(addr, "localhost")
                .unwrap()
                .await
                .expect("handshake");
            let d = random(20_000, n);
            assert!(echo_stream(&conn, &d).await == d);
            conn.close(0u32.into(), b"");
            ep.wait_idle().await;
            n += 1;
        }
        n
    });
    let per_worker: Vec<u64> = rig
        .engine()
        .handle()
        .counters()
        .iter()
        .map(|c| c.conns_accepted)
        .collect();
    assert!(
        per_worker.iter().all(|&n| n > 0),
        "{per_worker:?} after {clients} clients"
    );
    assert_eq!(per_worker.iter().sum::<u64>(), clients);
    for q in rig.engine().xsk_queues() {
        assert_eq!(
            q.snapshot().canary_packets,
            0,
            "the canary sees nothing in a correct setup"
        );
    }
    rig.stop();
}

/// Moves a quinn client (over IPv6 if `v6`) to a new socket (`bind(round)`) in the middle of
/// a 200 kB echo, round after round, until a new path's packets arrive on another queue
/// (seen as hand-overs), checking every stream; then checks the server kept one connection
/// and answered every path.
fn migrate_until_another_queue(
    rig: &mut Rig,
    v6: bool,
    rounds: usize,
    bind: impl Fn(usize) -> std::net::UdpSocket + Send,
) {
    let addr = rig.addr(v6);
    let cert = rig.cert.clone();
    let handle = rig.engine().handle();
    // The rig may have served before: what this call adds is what counts.
    let before = handle.total();
    let moved_from = before.handover_out;
    rig.client(async move || {
        let ep = quinn_endpoint(&cert, v6);
        let conn = ep
            .connect(addr, "localhost")
            .unwrap()
            .await
            .expect("handshake");
        let mut round = 0;
        while handle.total().handover_out == moved_from {
            assert!(round < rounds, "no new path reached another queue");
            let d = random(200_000, round as u64);
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let echo = async {
                send.write_all(&d[..100_000]).await.unwrap();
                ep.rebind(bind(round)).unwrap();
                send.write_all(&d[100_000..]).await.unwrap();
                send.finish().unwrap();
            };
            let (_, back) =
                tokio::join!(echo, async { recv.read_to_end(usize::MAX).await.unwrap() });
            assert!(back == d, "stream intact across move {round}");
            round += 1;
        }
        conn.close(0u32.into(), b"");
        ep.wait_idle().await;
    });
    let t = rig.engine().handle().total();
    assert_eq!(
        t.conns_accepted - before.conns_accepted,
        1,
        "one connection all along (v6 {v6})"
    );
    assert!(t.handover_out > before.handover_out && t.handover_dropped == 0);
    let no_route: u64 = rig
        .engine()
        .xsk_queues()
        .iter()
        .map(|q| q.snapshot().tx_no_route)
        .sum();
    assert_eq!(no_route, 0, "every worker could answer the moved client");
}

/// A client that moves to a new source port mid-transfer keeps its connection, also when the
/// new path lands on another queue (and so another worker, which hands the packets over):
/// both transmit paths, IPv4 and IPv6.
#[test]
fn migration_to_another_queue_keeps_the_connection() {
    if !privileged("migration_to_another_queue_keeps_the_connection") {
        return;
    }
    for tx in [TxMode::Xsk, TxMode::Kernel] {
        let mut rig = Rig::new(4, &[0, 1, 2, 3], AttachMode::Native, |s| s.tx = tx);
        for v6 in [false, true] {
            let any = if v6 { "[::]:0" } else { "0.0.0.0:0" };
            migrate_until_another_queue(&mut rig, v6, 64, |_| {
                std::net::UdpSocket::bind(any).unwrap()
            });
        }
        rig.stop();
    }
}

/// A client that moves to a new IP address (rebind-addr) mid-transfer keeps its connection,
/// also when the new address's packets arrive on another queue: the hand-over carries the
/// new peer's link layer to the owner worker, which keeps it for the connection once the
/// packet moved it, and answers on the TX ring (a bug before: `tx_no_route`, and the
/// connection timed out).
#[test]
fn migration_to_another_address_on_another_queue_keeps_the_connection() {
    if !privileged("migration_to_another_address_on_another_queue_keeps_the_connection") {
        return;
    }
    let mut rig = Rig::new(4, &[0, 1, 2, 3], AttachMode::Native, |s| s.tx = TxMode::Xsk);
    let extra: Vec<std::net::Ipv4Addr> = (10..42)
        .map(|i| std::net::Ipv4Addr::new(10, 214, 0, i))
        .collect();
    for ip in &extra {
        let (ns, dev, cidr) = (&rig.tb.client_ns, &rig.tb.client_if, format!("{ip}/24"));
        sh(&["ip", "-n", ns, "addr", "add", &cidr, "dev", dev]);
    }
    migrate_until_another_queue(&mut rig, false, extra.len(), |round| {
        std::net::UdpSocket::bind((extra[round], 0)).unwrap()
    });
    rig.stop();
}

/// The server's interface goes down for a second and comes back: AF_XDP sockets stay bound,
/// the connection survives (QUIC retransmits what was lost) and new ones are served.
#[test]
fn interface_down_and_up_keeps_connections() {
    if !privileged("interface_down_and_up_keeps_connections") {
        return;
    }
    let mut rig = Rig::new(2, &[0, 1], AttachMode::Native, |_| {});
    let addr = rig.addr(false);
    let cert = rig.cert.clone();
    let (ns, dev) = (rig.tb.server_ns.clone(), rig.tb.server_if.clone());
    let set = move |state: &str| sh(&["ip", "-n", &ns, "link", "set", &dev, state]);
    rig.client(async move || {
        let ep = quinn_endpoint(&cert, false);
        let conn = ep
            .connect(addr, "localhost")
            .unwrap()
            .await
            .expect("handshake");
        let d = random(300_000, 1);
        assert!(echo_stream(&conn, &d).await == d);
        set("down");
        tokio::time::sleep(Duration::from_secs(1)).await;
        set("up");
        let d = random(300_000, 2);
        assert!(echo_stream(&conn, &d).await == d, "intact after down/up");
        conn.close(0u32.into(), b"");
        ep.wait_idle().await;
        echo_once(&cert, addr, 50_000, 3).await;
    });
    let t = rig.engine().handle().total();
    assert_eq!(t.conns_accepted, 2, "the first connection lived through it");
    rig.stop();
}

/// The interop runner's TLS-level cases with quinn as the client over AF_XDP: chacha20 (the
/// client offers nothing else), keyupdate (forced mid-connection), resumption and zerortt (a
/// second connection sends its stream in 0-RTT on the first one's ticket, and the server
/// accepts it). Every echo byte-exact.
#[test]
fn quinn_tls_cases_over_af_xdp() {
    if !privileged("quinn_tls_cases_over_af_xdp") {
        return;
    }
    let mut rig = Rig::new(2, &[0, 1], AttachMode::Native, |_| {});
    let addr = rig.addr(false);
    let cert = rig.cert.clone();
    rig.client(async move || {
        // chacha20, then keyupdate on the same connection.
        let ep = quinn_endpoint_with(&cert, false, true, false);
        let conn = ep
            .connect(addr, "localhost")
            .unwrap()
            .await
            .expect("chacha20 handshake");
        let d = random(200_000, 7);
        assert!(echo_stream(&conn, &d).await == d, "chacha20 echo");
        conn.force_key_update();
        let d = random(200_000, 8);
        assert!(echo_stream(&conn, &d).await == d, "echo after a key update");
        conn.close(0u32.into(), b"");
        ep.wait_idle().await;

        // resumption and zerortt.
        let ep = quinn_endpoint_with(&cert, false, false, true);
        let conn = ep
            .connect(addr, "localhost")
            .unwrap()
            .await
            .expect("handshake");
        let d = random(10_000, 9);
        assert!(
            echo_stream(&conn, &d).await == d,
            "first echo (the ticket arrives)"
        );
        conn.close(0u32.into(), b"");
        let Ok((conn, accepted)) = ep.connect(addr, "localhost").unwrap().into_0rtt() else {
            panic!("no 0-RTT keys: the session was not resumed");
        };
        let d = random(5_000, 10);
        assert!(echo_stream(&conn, &d).await == d, "0-RTT echo");
        assert!(accepted.await, "the server refused the 0-RTT data");
        conn.close(0u32.into(), b"");
        ep.wait_idle().await;
    });
    assert_eq!(rig.engine().handle().total().conns_accepted, 3);
    rig.stop();
}

/// Our own client over the UDP backend against our server over AF_XDP.
#[test]
fn our_udp_client_against_our_xdp_server() {
    if !privileged("our_udp_client_against_our_xdp_server") {
        return;
    }
    let mut rig = Rig::new(2, &[0, 1], AttachMode::Auto, |_| {});
    let addr = rig.addr(false);
    let trust = tls::Trust::Roots(rig.cert.clone());
    let payloads: Vec<bytes::Bytes> = (0..8).map(|i| random(500_000, i).into()).collect();
    let grams = vec![bytes::Bytes::from_static(b"ping")];
    let client = EngineBuilder::default()
        .workers(1)
        .client(tls::client_config(trust, &[echo::ALPN]).unwrap());
    let (handlers, _) = rig
        .tb
        .in_client(|| {
            xdp_quic_examples::client::run(
                client,
                "0.0.0.0:0".parse().unwrap(),
                |_| echo::EchoClient::new(addr, "localhost", payloads.clone(), grams.clone(), 1),
                |h: &mut echo::EchoClient, ctx| h.start(ctx),
            )
        })
        .unwrap()
        .unwrap();
    assert!(
        handlers[0].all_ok(),
        "{:?} {:?}",
        handlers[0].results,
        handlers[0].error
    );
    assert_eq!(handlers[0].datagrams_back, 1);
    rig.stop();
}

/// A 20 MB upload through a queue whose UMEM is too small for the load (64 frames, and as
/// many RX ring entries): the kernel drops what finds no frame, QUIC resends, nothing is
/// lost.
#[test]
fn starved_fill_ring_drops_and_recovers() {
    if !privileged("starved_fill_ring_drops_and_recovers") {
        return;
    }
    let mut rig = Rig::new(1, &[0], AttachMode::Native, |s| s.umem.frames = 64);
    let addr = rig.addr(false);
    let cert = rig.cert.clone();
    rig.client(async move || echo_once(&cert, addr, 20_000_000, 3).await);
    let k = rig.engine().xsk_queues()[0].snapshot().kernel;
    assert!(
        k.rx_fill_ring_empty + k.rx_dropped > 0,
        "the fill ring ran dry at least once: {k:?}"
    );
    rig.stop();
}

/// A TX ring of 8 entries: sends push back every turn, the worker retries, nothing is lost.
#[test]
fn full_tx_ring_pushes_back_and_recovers() {
    if !privileged("full_tx_ring_pushes_back_and_recovers") {
        return;
    }
    let mut rig = Rig::new(1, &[0], AttachMode::Native, |s| {
        s.ring_size = 8;
        s.tx = TxMode::Xsk;
    });
    let addr = rig.addr(false);
    let cert = rig.cert.clone();
    rig.client(async move || echo_once(&cert, addr, 10_000_000, 4).await);
    let s = rig.engine().xsk_queues()[0].snapshot();
    assert!(s.tx_ring_full > 0, "the TX ring filled up: {s:?}");
    assert!(rig.engine().handle().total().tx_blocked > 0);
    rig.stop();
}

/// Shutdown while transfers run: every connection is closed with the code, and the queues'
/// sockets leave the map (service packets then reach the kernel: `no socket on queue`),
/// even while the queues' infos (what a metrics endpoint keeps) are still held.
#[test]
fn shutdown_during_transfers_closes_connections_and_unregisters() {
    if !privileged("shutdown_during_transfers_closes_connections_and_unregisters") {
        return;
    }
    let mut rig = Rig::new(2, &[0, 1], AttachMode::Native, |_| {});
    let addr = rig.addr(false);
    let cert = rig.cert.clone();
    let engine = rig.engine.take().unwrap();
    let handle = engine.handle();
    let infos = engine.xsk_queues().to_vec();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let stopper = std::thread::spawn(move || {
        rx.recv().unwrap();
        handle.shutdown(VarInt::from_u32(77), b"maintenance");
        engine.join().unwrap()
    });
    let codes = rig.client(async move || {
        let mut conns = Vec::new();
        let mut eps = Vec::new();
        for _ in 0..4 {
            let ep = quinn_endpoint(&cert, false);
            conns.push(
                ep.connect(addr, "localhost")
                    .unwrap()
                    .await
                    .expect("handshake"),
            );
            eps.push(ep);
        }
        let mut streams = Vec::new();
        for c in &conns {
            let (mut send, recv) = c.open_bi().await.unwrap();
            send.write_all(&random(1_000_000, 5)).await.unwrap();
            streams.push((send, recv));
        }
        tx.send(()).unwrap();
        let mut codes = Vec::new();
        for c in &conns {
            match c.closed().await {
                quinn::ConnectionError::ApplicationClosed(a) => {
                    codes.push(a.error_code.into_inner())
                }
                other => {
                    let o = std::process::Command::new("cat")
                        .arg("/proc/net/snmp")
                        .output()
                        .unwrap();
                    let o2 = std::process::Command::new("ip")
                        .args(["-s", "link"])
                        .output()
                        .unwrap();
                    panic!(
                        "closed with {other}\n{}\n{}",
                        String::from_utf8_lossy(&o.stdout),
                        String::from_utf8_lossy(&o2.stdout)
                    )
                }
            }
        }
        codes
    });
    assert_eq!(codes, vec![77; 4]);
    stopper.join().unwrap();
    // The sockets are out of the map: service packets now pass to the kernel.
    let before = rig.program_counter("v4.passed_no_socket");
    rig.client(async move || {
        let s = tokio::net::UdpSocket::bind("0.0.0.0:0").await.unwrap();
        for _ in 0..5 {
            s.send_to(&[0x40; 100], addr).await.unwrap();
        }
    });
    // Counted as the kernel takes them in (softirq), maybe after the sends returned.
    wait_until("5 datagrams passed for want of a socket", GUARD, || {
        rig.program_counter("v4.passed_no_socket") - before >= 5
    });
    assert_eq!(rig.program_counter("v4.passed_no_socket") - before, 5);
    // The queues are free for a new server of this process (a socket left open would hold
    // its queue: EBUSY), though their infos are still held.
    rig.restart(&[0, 1]);
    let cert = rig.cert.clone();
    rig.client(async move || echo_once(&cert, addr, 100_000, 1).await);
    let old: Vec<_> = infos.iter().map(|i| i.snapshot()).collect();
    assert!(
        old.iter().all(|s| s.kernel.rx_invalid_descs == 0),
        "the last figures read: {old:?}"
    );
    drop(infos);
    rig.stop();
}

/// A misconfiguration the canary reveals: the server serves queue 0 only, so service
/// packets arriving on the other queues reach the kernel's UDP socket of the port.
#[test]
fn canary_counts_what_misses_the_xdp_path() {
    if !privileged("canary_counts_what_misses_the_xdp_path") {
        return;
    }
    let mut rig = Rig::new(4, &[0], AttachMode::Native, |_| {});
    let addr = rig.addr(false);
    let canary = |rig: &Rig| -> u64 {
        rig.engine()
            .xsk_queues()
            .iter()
            .map(|q| q.snapshot().canary_packets)
            .sum()
    };
    let sent = rig.client(async move || {
        let mut sent = 0u64;
        // Sockets until one lands on a queue without an AF_XDP socket (bounded).
        for _ in 0..64 {
            let s = std::net::UdpSocket::bind("0.0.0.0:0").unwrap();
            for _ in 0..3 {
                s.send_to(&[0x40; 100], addr).unwrap();
                sent += 1;
            }
        }
        sent
    });
    let missed = rig.program_counter("v4.passed_no_socket");
    assert!(missed > 0, "some of {sent} datagrams arrived on queues 1-3");
    // The canary is read when the worker idles: wait until it has read them all.
    wait_until("the canary read every datagram that missed", GUARD, || {
        canary(&rig) >= missed
    });
    assert_eq!(
        canary(&rig),
        missed,
        "the canary saw every datagram that missed AF_XDP"
    );
    rig.stop();
}

/// Busy polling (workers spin on their rings) with the busy-poll socket options set.
#[test]
fn busy_polling_with_busy_poll_socket_options() {
    if !privileged("busy_polling_with_busy_poll_socket_options") {
        return;
    }
    let mut rig = Rig::new(2, &[0, 1], AttachMode::Native, |s| {
        s.poll = xdp_quic::backend::xsk::PollMode::Busy;
        s.busy_poll = Some(xdp_quic::xsk::socket::BusyPoll {
            usecs: 50,
            budget: 64,
            prefer: true,
        });
    });
    let addr = rig.addr(false);
    let cert = rig.cert.clone();
    rig.client(async move || echo_once(&cert, addr, 2_000_000, 9).await);
    rig.stop();
}

/// The MAC address of `dev` in namespace `ns`.
fn mac_of(ns: &str, dev: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["-n", ns, "link", "show", "dev", dev])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace()
        .skip_while(|w| *w != "link/ether")
        .nth(1)
        .unwrap_or_else(|| panic!("no MAC for {dev} in {text:?}"))
        .to_string()
}

/// Over AF_XDP with the kernel's transmit path, connection attempts sent to an address that
/// is not the server host's (any sender on the link can make such frames: here the client
/// has a neighbour entry sending 10.214.0.99, fd00:d6::99 and the link-local fe80::dead to
/// the server's MAC, and the XDP program steers by port) are dropped unanswered, IPv4 and
/// IPv6. Answering would go out from that address, which Linux refuses (EINVAL), and
/// quinn-udp would turn GSO and ECN off for the queue's socket. Then connections to the
/// server's own addresses, its link-local one too, work, and no send failed. (Before: the
/// attempts were accepted, and every answer failed, `tx_errors`; the link-local one until
/// link-local addresses were asked on the queue's interface.)
#[test]
fn attempts_to_an_address_not_the_hosts_are_dropped_over_af_xdp() {
    if !privileged("attempts_to_an_address_not_the_hosts_are_dropped_over_af_xdp") {
        return;
    }
    let rig = Rig::new(1, &[0], AttachMode::Native, |s| s.tx = TxMode::Kernel);
    let mac = mac_of(&rig.tb.server_ns, &rig.tb.server_if);
    let foreign: [std::net::IpAddr; 3] = [
        "10.214.0.99".parse().unwrap(),
        "fd00:d6::99".parse().unwrap(),
        "fe80::dead".parse().unwrap(),
    ];
    // A link-local peer is named with its interface; the client sends from its own
    // link-local address, once it may.
    link_local_of(&rig.tb.client_ns, &rig.tb.client_if);
    let client_if = rig
        .tb
        .in_client(|| xdp_quic::engine::ifindex(&rig.tb.client_if))
        .unwrap()
        .unwrap();
    for ip in foreign {
        let (ns, dev, ip) = (&rig.tb.client_ns, &rig.tb.client_if, ip.to_string());
        sh(&[
            "ip", "-n", ns, "neigh", "replace", &ip, "lladdr", &mac, "dev", dev,
        ]);
    }
    let cert = rig.cert.clone();
    let handle = rig.engine().handle();
    // The server's own addresses, its link-local one too (asked on its interface).
    let own_ll = link_local_of(&rig.tb.server_ns, &rig.tb.server_if);
    let own = [
        rig.addr(false),
        rig.addr(true),
        SocketAddr::V6(std::net::SocketAddrV6::new(own_ll, PORT, 0, client_if)),
    ];
    rig.client(async move || {
        for ip in foreign {
            let ep = quinn_endpoint(&cert, ip.is_ipv6());
            // Never answered: the attempt is left to time out when the endpoint goes.
            let seen = handle.total().rx_packets;
            let to = match ip {
                std::net::IpAddr::V6(a) if a.is_unicast_link_local() => {
                    SocketAddr::V6(std::net::SocketAddrV6::new(a, PORT, 0, client_if))
                }
                _ => SocketAddr::new(ip, PORT),
            };
            let _attempt = ep.connect(to, "localhost").unwrap();
            while handle.total().rx_packets == seen {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let t = handle.total();
            assert_eq!(
                t.rx_malformed, t.rx_packets,
                "{ip}: every one dropped: {t:?}"
            );
            assert_eq!(t.conns_accepted, 0, "{ip}: {t:?}");
            assert_eq!(t.tx_errors, 0, "{ip}: nothing was sent from it: {t:?}");
            // Nothing more from this attempt: the next address's datagram is its own.
            ep.close(0u32.into(), b"");
            ep.wait_idle().await;
        }
        for (i, addr) in own.into_iter().enumerate() {
            echo_once(&cert, addr, 100_000, i as u64).await;
        }
    });
    let t = rig.engine().handle().total();
    assert_eq!(t.conns_accepted, 3, "{t:?}");
    assert_eq!(t.tx_errors, 0, "{t:?}");
}

/// The link-local address of interface `dev` of namespace `ns`, once it is usable (past
/// duplicate address detection, which the testbed's link-local addresses go through).
fn link_local_of(ns: &str, dev: &str) -> std::net::Ipv6Addr {
    let look = || {
        let out = std::process::Command::new("ip")
            .args([
                "-n", ns, "-6", "-o", "addr", "show", "dev", dev, "scope", "link",
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        if text.contains("tentative") {
            return None;
        }
        text.split_whitespace()
            .find_map(|w| w.split('/').next()?.parse::<std::net::Ipv6Addr>().ok())
    };
    let mut found = None;
    wait_until(
        &format!("the link-local address of {dev}, past DAD"),
        GUARD,
        || {
            found = look();
            found.is_some()
        },
    );
    found.unwrap()
}

/// The answers come from the namespace of the sockets that send the replies, also when the
/// asking thread is in another one (a client engine started outside the namespace its
/// sockets were made in): the testbed server's addresses are answerable from its socket, a
/// neighbour's address and the subnet's broadcast address are not. (Before, the question was
/// asked in the thread's namespace, where the server's addresses are foreign.)
#[test]
fn local_addresses_are_asked_in_the_sockets_namespace() {
    if !privileged("local_addresses_are_asked_in_the_sockets_namespace") {
        return;
    }
    use xdp_quic::backend::local_addrs::LocalAddrs;
    let tb = Testbed::create(&unique_name("xl"), 1, 215).expect("testbed");
    let socket = tb
        .in_server(|| std::net::UdpSocket::bind("[::]:0").unwrap())
        .unwrap();
    let mut asked = LocalAddrs::beside(&socket);
    let now = std::time::Instant::now();
    assert!(asked.answerable_from(tb.server_v4.into(), now));
    assert!(asked.answerable_from(tb.server_v6.into(), now));
    assert!(!asked.answerable_from(tb.client_v4.into(), now));
    assert!(!asked.answerable_from(tb.client_v6.into(), now));
    let broadcast = std::net::Ipv4Addr::new(10, 215, 0, 255);
    assert!(!asked.answerable_from(broadcast.into(), now));

    // IPv6 link-local addresses, asked on the interface an AF_XDP queue takes them from:
    // the server's own is answerable, another is not (a reply from it fails with EINVAL).
    // Without an interface named, they are answerable unasked.
    let ifindex = tb
        .in_server(|| xdp_quic::engine::ifindex(&tb.server_if))
        .unwrap()
        .unwrap();
    let own_ll = link_local_of(&tb.server_ns, &tb.server_if);
    let foreign_ll: std::net::Ipv6Addr = "fe80::dead".parse().unwrap();
    assert!(asked.answerable_from(foreign_ll.into(), now), "unasked");
    let mut on_link = LocalAddrs::beside(&socket).on_link(ifindex);
    assert!(on_link.answerable_from(own_ll.into(), now), "{own_ll}");
    assert!(!on_link.answerable_from(foreign_ll.into(), now));
}
