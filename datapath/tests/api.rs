//! The callback API a daemon needs, in the deterministic simulation: the accept hook,
//! engine-owned connection and stream state, acting on other connections from a callback,
//! calls with replies, the transport and controller the application chose, `closed` once per
//! connection, and a server configuration replaced while serving.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use xdp_quic::backend::mem::{MemNetwork, MemSteering};
use xdp_quic::testing::{run_clients, run_until, step, Drive, Node};
use xdp_quic::{
    tls, Conn, ConnId, ConnectionError, Ctx, Decision, EngineBuilder, Handler, Incoming,
    ReadStatus, RetryPolicy, StreamId, TransportConfig, VarInt,
};
use xdp_quic_examples::echo::{self, EchoClient, EchoServer};

const SERVER: &str = "10.7.0.1:4433";

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn identity() -> tls::Identity {
    tls::Identity::self_signed_ed25519(&["localhost"]).unwrap()
}

fn server_config() -> quinn_proto::ServerConfig {
    tls::server_config(identity(), &[echo::ALPN]).unwrap()
}

/// A server of [`server_config`] that drains for 300 ms at most.
fn server_builder() -> EngineBuilder {
    EngineBuilder::default()
        .server(server_config())
        .drain_timeout(Duration::from_millis(300))
}

fn client_builder() -> EngineBuilder {
    EngineBuilder::default()
        .client(tls::client_config(tls::Trust::InsecureAnyCertificate, &[echo::ALPN]).unwrap())
        .drain_timeout(Duration::from_millis(300))
}

/// An echo client at `at` that asks for server name `name`.
fn client(net: &MemNetwork, at: &str, name: &str, payload: &[u8]) -> Node<EchoClient> {
    let name = name.to_string();
    let p = Bytes::copy_from_slice(payload);
    let c = Node::new(
        client_builder(),
        net,
        addr(at),
        MemSteering::Hash,
        move |_| EchoClient::new(addr(SERVER), &name, vec![p.clone()], vec![], 0),
    )
    .unwrap();
    c.handle
        .post(0, |h, ctx| h.start(ctx))
        .expect("the worker is running");
    c
}

fn run(net: &MemNetwork, server: &mut dyn Drive, clients: &mut [Node<EchoClient>]) {
    let mut nodes: Vec<&mut dyn Drive> = vec![server];
    nodes.extend(clients.iter_mut().map(|c| c as &mut dyn Drive));
    run_clients(net, &mut nodes, Duration::from_secs(60)).expect("clients finish");
}

/// What the accept hook saw of an attempt: remote, server name, ALPNs, validated.
type Seen = (SocketAddr, Option<String>, Vec<Vec<u8>>, bool);

/// Echo behind an accept hook that refuses a name and an address and retries another name.
#[derive(Default)]
struct Gatekeeper {
    echo: EchoServer,
    seen: Vec<Seen>,
}

impl Handler for Gatekeeper {
    fn incoming(&mut self, _ctx: &mut Ctx<'_>, i: &Incoming<'_>) -> Decision {
        self.seen.push((
            i.remote_address(),
            i.server_name().map(str::to_string),
            i.alpn().to_vec(),
            i.address_validated(),
        ));
        match i.server_name() {
            _ if i.remote_address().ip() == addr("10.7.1.66:0").ip() => Decision::Refuse,
            Some("blocked.example") => Decision::Refuse,
            Some("retry.example") => Decision::Retry,
            Some("silent.example") => Decision::Ignore,
            _ => Decision::Accept,
        }
    }
    fn stream_readable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        self.echo.stream_readable(conn, s)
    }
    fn stream_writable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        self.echo.stream_writable(conn, s)
    }
}

#[test]
fn the_accept_hook_refuses_retries_ignores_and_accepts_by_name_and_address() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let b = server_builder();
    let mut server = Node::new(b, &net, addr(SERVER), MemSteering::Hash, |_| {
        Gatekeeper::default()
    })
    .unwrap();
    let mut clients = vec![
        client(&net, "10.7.1.1:5000", "localhost", b"fine"),
        client(&net, "10.7.1.2:5000", "blocked.example", b"no"),
        client(&net, "10.7.1.3:5000", "retry.example", b"after a retry"),
        client(&net, "10.7.1.66:5000", "localhost", b"bad address"),
        // The name in other case: the hook sees it canonical, in lower case, as the TLS
        // stack takes it (it saw it as sent, which passed the policy).
        client(&net, "10.7.1.5:5000", "Blocked.EXAMPLE", b"no either"),
    ];
    run(&net, &mut server, &mut clients);
    let ok = |i: usize| clients[i].handler(0).all_ok();
    let error = |i: usize| clients[i].handler(0).error.clone().unwrap_or_default();
    assert!(ok(0), "{}", error(0));
    assert!(error(1).contains("refused"), "blocked name: {}", error(1));
    assert!(ok(2), "retried then accepted: {}", error(2));
    assert!(
        error(3).contains("refused"),
        "blocked address: {}",
        error(3)
    );
    assert!(
        error(4).contains("refused"),
        "blocked name in upper case: {}",
        error(4)
    );
    let t = server.total();
    assert_eq!(t.retries_sent, 1);
    assert_eq!(t.conns_accepted, 2);
    let seen = &server.handler(0).seen;
    // The retried client came twice: unvalidated, then validated.
    let retried: Vec<bool> = seen
        .iter()
        .filter(|s| s.1.as_deref() == Some("retry.example"))
        .map(|s| s.3)
        .collect();
    assert_eq!(retried, vec![false, true]);
    assert!(
        seen.iter().all(|s| s.2 == vec![echo::ALPN.to_vec()]),
        "{seen:?}"
    );

    // Ignored: no answer at all, the client times out.
    let mut silent = vec![client(&net, "10.7.1.4:5000", "silent.example", b"...")];
    run(&net, &mut server, &mut silent);
    let e = silent[0].handler(0).error.clone().unwrap_or_default();
    assert!(e.contains("timed out"), "{e}");
}

/// Counts drops: a stand-in for an application's per-connection and per-stream state.
struct Tracked(Arc<AtomicUsize>);

impl Drop for Tracked {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// Echo whose per-stream and per-connection state live in the engine.
struct Stateful {
    stream_drops: Arc<AtomicUsize>,
    conn_drops: Arc<AtomicUsize>,
}

#[derive(Default)]
struct StreamBuf {
    data: Vec<u8>,
    tracked: Option<Tracked>,
}

#[derive(Default)]
struct ConnState {
    streams: usize,
    tracked: Option<Tracked>,
}

impl Handler for Stateful {
    fn connected(&mut self, conn: &mut Conn<'_>) {
        conn.state::<ConnState>().tracked = Some(Tracked(self.conn_drops.clone()));
    }
    fn stream_opened(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        conn.state::<ConnState>().streams += 1;
        conn.stream_state::<StreamBuf>(s).tracked = Some(Tracked(self.stream_drops.clone()));
    }
    fn stream_readable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        let mut got = Vec::new();
        let status = conn.read(s, |b| got.extend_from_slice(&b));
        conn.stream_state::<StreamBuf>(s).data.extend(got);
        if status == Ok(ReadStatus::Finished) {
            let data = std::mem::take(&mut conn.stream_state::<StreamBuf>(s).data);
            // Small replies: they fit the stream's window at once.
            let _ = conn.write(s, &data);
            let _ = conn.finish(s);
        }
    }
}

#[test]
fn connection_and_stream_state_are_dropped_exactly_once() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let (stream_drops, conn_drops) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (s, c) = (stream_drops.clone(), conn_drops.clone());
    let b = server_builder();
    let mut server = Node::new(b, &net, addr(SERVER), MemSteering::Hash, move |_| {
        Stateful {
            stream_drops: s.clone(),
            conn_drops: c.clone(),
        }
    })
    .unwrap();
    let payloads: Vec<Bytes> = (0..40u8)
        .map(|i| Bytes::from(vec![i; 100 + i as usize]))
        .collect();
    let p = payloads.clone();
    let mut clients = vec![Node::new(
        client_builder(),
        &net,
        addr("10.7.2.1:5000"),
        MemSteering::Hash,
        move |_| EchoClient::new(addr(SERVER), "localhost", p.clone(), vec![], 0),
    )
    .unwrap()];
    clients[0]
        .handle
        .post(0, |h, ctx| h.start(ctx))
        .expect("the worker is running");
    run(&net, &mut server, &mut clients);
    assert!(clients[0].handler(0).all_ok());
    // Each stream's state went when both its sides were over; the connection's with it.
    let mut nodes: Vec<&mut dyn Drive> = vec![&mut server];
    run_until(&net, &mut nodes, Duration::from_secs(10), |_| {
        conn_drops.load(Ordering::SeqCst) == 1
    })
    .expect("the connection ends");
    drop(nodes);
    assert_eq!(stream_drops.load(Ordering::SeqCst), payloads.len());
    assert_eq!(conn_drops.load(Ordering::SeqCst), 1);
    server.handle.shutdown(0u32.into(), b"");
    let mut nodes: Vec<&mut dyn Drive> = vec![&mut server];
    run_until(&net, &mut nodes, Duration::from_secs(10), |n| {
        n[0].is_done()
    })
    .unwrap();
    drop(nodes);
    assert_eq!(
        stream_drops.load(Ordering::SeqCst),
        payloads.len(),
        "not twice"
    );
    assert_eq!(conn_drops.load(Ordering::SeqCst), 1, "not twice");
}

/// Gathers each unidirectional stream the peer opens in its stream state, read by read,
/// and takes it whole at the end: a handler whose messages span packets.
struct Gatherer {
    created: Arc<AtomicUsize>,
    drops: Arc<AtomicUsize>,
    whole: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Handler for Gatherer {
    fn stream_readable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        let mut got = Vec::new();
        let status = conn.read(s, |b| got.extend_from_slice(&b));
        let st = conn.stream_state::<StreamBuf>(s);
        if st.tracked.is_none() {
            st.tracked = Some(Tracked(self.drops.clone()));
            self.created.fetch_add(1, Ordering::SeqCst);
        }
        st.data.extend(got);
        if status == Ok(ReadStatus::Finished) {
            let data = std::mem::take(&mut conn.stream_state::<StreamBuf>(s).data);
            self.whole.lock().unwrap().push(data);
        }
    }
}

/// Opens a unidirectional stream per payload once connected and writes it whole, as the
/// streams take it.
struct UniSender {
    payloads: Vec<Bytes>,
    left: BTreeMap<StreamId, Bytes>,
}

impl Handler for UniSender {
    fn connected(&mut self, conn: &mut Conn<'_>) {
        for p in std::mem::take(&mut self.payloads) {
            let s = conn.open_uni().expect("stream credit");
            self.left.insert(s, p);
            self.stream_writable(conn, s);
        }
    }
    fn stream_writable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        let Some(data) = self.left.get_mut(&s) else {
            return;
        };
        while !data.is_empty() {
            if conn.write_chunk(s, data).unwrap() == 0 {
                return;
            }
        }
        conn.finish(s).unwrap();
        self.left.remove(&s);
    }
}

/// A stream over on both sides when its last read returns (one the peer opened one-way) keeps
/// its state until the callback returns: the handler can still add to it and take it whole,
/// and it is dropped then, once. Before, the read dropped it: the data gathered on earlier
/// reads was lost, and the state the handler made again after the read stayed until the
/// connection ended (a long connection's one-way streams grew it without bound).
#[test]
fn a_stream_over_in_a_read_keeps_its_state_until_the_callback_returns() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let (created, drops) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let whole = Arc::new(Mutex::new(Vec::new()));
    let (c, d, w) = (created.clone(), drops.clone(), whole.clone());
    let b = server_builder();
    let mut server = Node::new(b, &net, addr(SERVER), MemSteering::Hash, move |_| {
        Gatherer {
            created: c.clone(),
            drops: d.clone(),
            whole: w.clone(),
        }
    })
    .unwrap();
    // Long enough to come in many reads.
    let payloads: Vec<Bytes> = (0..8u8)
        .map(|i| Bytes::from(vec![i; 200_000 + i as usize]))
        .collect();
    let p = payloads.clone();
    let client = Node::new(
        client_builder(),
        &net,
        addr("10.7.4.1:5000"),
        MemSteering::Hash,
        move |_| UniSender {
            payloads: p.clone(),
            left: BTreeMap::new(),
        },
    )
    .unwrap();
    connect_to_server(&client);
    let mut client = client;
    let mut nodes: Vec<&mut dyn Drive> = vec![&mut server, &mut client];
    run_until(&net, &mut nodes, Duration::from_secs(30), |_| {
        whole.lock().unwrap().len() == payloads.len()
    })
    .expect("every stream read to its end");
    drop(nodes);
    let mut got = whole.lock().unwrap().clone();
    got.sort();
    let want: Vec<Vec<u8>> = payloads.iter().map(|p| p.to_vec()).collect();
    assert!(
        got == want,
        "the streams came whole: got lengths {:?}",
        got.iter().map(Vec::len).collect::<Vec<_>>()
    );
    // The connection is still open: each stream's state was made once and is gone.
    assert_eq!(server.connections(), 1);
    assert_eq!(created.load(Ordering::SeqCst), payloads.len());
    assert_eq!(drops.load(Ordering::SeqCst), payloads.len(), "none held");
}

/// Tries every call of the side a unidirectional stream lacks, and records the results:
/// the sending calls on one the peer opened (then reads it), the receiving calls on one it
/// opened itself (then writes and finishes it).
#[derive(Default)]
struct WrongWay {
    results: Arc<Mutex<Vec<Result<(), xdp_quic::StreamError>>>>,
    read: Arc<Mutex<Vec<u8>>>,
}

impl Handler for WrongWay {
    fn connected(&mut self, conn: &mut Conn<'_>) {
        if conn.side() == quinn_proto::Side::Server {
            return;
        }
        let s = conn.open_uni().expect("stream credit");
        let mut r = self.results.lock().unwrap();
        r.push(conn.read(s, |_| {}).map(drop));
        r.push(conn.read_chunk(s, 10).map(drop));
        r.push(conn.stop(s, VarInt::from_u32(1)));
        assert_eq!(conn.write(s, b"one way").unwrap(), 7);
        conn.finish(s).unwrap();
    }
    fn stream_readable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        {
            let mut r = self.results.lock().unwrap();
            r.push(conn.write(s, b"back").map(drop));
            r.push(
                conn.write_chunk(s, &mut Bytes::from_static(b"back"))
                    .map(drop),
            );
            r.push(conn.finish(s));
            r.push(conn.reset(s, VarInt::from_u32(1)));
        }
        let mut read = self.read.lock().unwrap();
        let _ = conn.read(s, |b| read.extend_from_slice(&b));
    }
}

/// Calls for a side a unidirectional stream does not have here (writing to one the peer
/// opened, reading one this side opened) fail with `Closed`; quinn-proto would panic on
/// them, which poisoned the handler and closed every connection of its worker.
#[test]
fn calls_for_the_side_a_one_way_stream_lacks_fail_without_a_panic() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let (server_side, client_side) = (WrongWay::default(), WrongWay::default());
    let (sr, sread) = (server_side.results.clone(), server_side.read.clone());
    let cr = client_side.results.clone();
    let mut server = Node::new(server_builder(), &net, addr(SERVER), MemSteering::Hash, {
        let mut h = Some(server_side);
        move |_| h.take().expect("one worker")
    })
    .unwrap();
    let mut client = Node::new(
        client_builder(),
        &net,
        addr("10.7.5.1:5000"),
        MemSteering::Hash,
        {
            let mut h = Some(client_side);
            move |_| h.take().expect("one worker")
        },
    )
    .unwrap();
    connect_to_server(&client);
    let mut nodes: Vec<&mut dyn Drive> = vec![&mut server, &mut client];
    run_until(&net, &mut nodes, Duration::from_secs(30), |_| {
        sread.lock().unwrap().as_slice() == b"one way"
    })
    .expect("the one-way stream is read");
    drop(nodes);
    let closed = Err(xdp_quic::StreamError::Closed);
    assert_eq!(*cr.lock().unwrap(), [closed; 3], "read, read_chunk, stop");
    let r = sr.lock().unwrap();
    assert!(r.len() >= 4 && r.iter().all(|x| *x == closed), "{r:?}");
    assert_eq!(server.total().handler_panics, 0);
    assert_eq!(client.total().handler_panics, 0);
    assert_eq!(server.connections(), 1, "the connection lives on");
}

/// Relays what one client sends to every other connection of the worker, from the
/// callback, on a new unidirectional stream each: `Ctx::with_conn`.
#[derive(Default)]
struct Relay {
    conns: Vec<ConnId>,
}

impl Handler for Relay {
    fn connected(&mut self, conn: &mut Conn<'_>) {
        self.conns.push(conn.id());
    }
    fn stream_readable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        let mut msg = Vec::new();
        if conn.read(s, |b| msg.extend_from_slice(&b)) != Ok(ReadStatus::Finished) {
            conn.stream_state::<Vec<u8>>(s).extend(msg);
            return;
        }
        let mut whole = conn.take_stream_state::<Vec<u8>>(s).unwrap_or_default();
        whole.extend(msg);
        let me = conn.id();
        for &other in self.conns.iter().filter(|&&c| c != me) {
            let relayed = conn.ctx().with_conn(other, |o| {
                let u = o.open_uni().expect("stream credit");
                o.write(u, &whole).unwrap();
                o.finish(u).unwrap();
            });
            assert!(relayed.is_some(), "{other} is alive on this worker");
        }
        let _ = conn.finish(s);
    }
    fn closed(&mut self, _ctx: &mut Ctx<'_>, id: ConnId, _r: &ConnectionError) {
        self.conns.retain(|c| *c != id);
    }
}

/// Sends `msg` (if any) once connected, then collects what arrives on unidirectional
/// streams until it has `want` messages.
struct Listener {
    msg: Option<Vec<u8>>,
    want: usize,
    got: Vec<Vec<u8>>,
    partial: BTreeMap<StreamId, Vec<u8>>,
}

impl Handler for Listener {
    fn connected(&mut self, conn: &mut Conn<'_>) {
        if let Some(m) = self.msg.take() {
            let s = conn.open_bi().unwrap();
            conn.write(s, &m).unwrap();
            conn.finish(s).unwrap();
        }
    }
    fn stream_readable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        let buf = self.partial.entry(s).or_default();
        if let Ok(ReadStatus::Finished) = conn.read(s, |b| buf.extend_from_slice(&b)) {
            if s.dir() == xdp_quic::Dir::Uni {
                self.got.push(self.partial.remove(&s).unwrap());
            }
        }
        if self.got.len() >= self.want {
            conn.close(0u32.into(), b"done");
        }
    }
    fn closed(&mut self, ctx: &mut Ctx<'_>, _id: ConnId, _r: &ConnectionError) {
        ctx.stop_worker();
    }
}

#[test]
fn a_callback_acts_on_other_connections_of_its_worker() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let b = server_builder();
    let mut server = Node::new(b, &net, addr(SERVER), MemSteering::Hash, |_| {
        Relay::default()
    })
    .unwrap();
    let listener = |at: &str, msg: Option<&[u8]>, want: usize| {
        let msg = msg.map(<[u8]>::to_vec);
        let c = Node::new(
            client_builder(),
            &net,
            addr(at),
            MemSteering::Hash,
            move |_| Listener {
                msg: msg.clone(),
                want,
                got: Vec::new(),
                partial: BTreeMap::new(),
            },
        )
        .unwrap();
        c.handle
            .post(0, |_, ctx| {
                ctx.connect(addr(SERVER), "localhost").unwrap();
            })
            .expect("the worker is running");
        c
    };
    let mut a = listener("10.7.3.1:5000", None, 2);
    let mut b_ = listener("10.7.3.2:5000", None, 2);
    // Both listeners connected before the speakers talk.
    while server.connections() < 2 {
        step(&net, &mut [&mut server, &mut a, &mut b_]).unwrap();
    }
    let mut s1 = listener("10.7.3.3:5000", Some(b"one"), 1);
    let mut s2 = listener("10.7.3.4:5000", Some(b"two"), 1);
    let mut nodes: Vec<&mut dyn Drive> = vec![&mut server, &mut a, &mut b_, &mut s1, &mut s2];
    run_until(&net, &mut nodes, Duration::from_secs(30), |n| {
        n[1].is_done() && n[2].is_done()
    })
    .expect("the listeners hear both");
    drop(nodes);
    for l in [&a, &b_] {
        let mut got = l.handler(0).got.clone();
        got.sort();
        assert_eq!(got, vec![b"one".to_vec(), b"two".to_vec()]);
    }
}

/// Counts the controllers it builds (then builds NewReno): the controller the application
/// chose is the one connections use.
struct CountingFactory(Arc<AtomicUsize>);

impl quinn_proto::congestion::ControllerFactory for CountingFactory {
    fn build(
        self: Arc<Self>,
        now: Instant,
        mtu: u16,
    ) -> Box<dyn quinn_proto::congestion::Controller> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Arc::new(quinn_proto::congestion::NewRenoConfig::default()).build(now, mtu)
    }
}

#[test]
fn calls_reply_and_the_applications_transport_and_controller_are_used() {
    let net = MemNetwork::new(Duration::from_millis(5));
    // The server's own transport (2 concurrent streams) is kept: no `.transport()` here.
    let mut config = server_config();
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(2));
    config.transport_config(Arc::new(t));
    let built = Arc::new(AtomicUsize::new(0));
    let b = EngineBuilder::default()
        .server(config)
        .drain_timeout(Duration::from_millis(300));
    let mut server = Node::new(b, &net, addr(SERVER), MemSteering::Hash, |_| {
        Recorder::default()
    })
    .unwrap();
    // The client's controller: chosen with `.congestion`, gated by the engine.
    let cb = client_builder().congestion(Arc::new(CountingFactory(built.clone())));
    let open = Arc::new(Mutex::new(Vec::new()));
    let o = open.clone();
    struct Opener(Arc<Mutex<Vec<StreamId>>>);
    impl Handler for Opener {
        fn connected(&mut self, conn: &mut Conn<'_>) {
            while let Some(s) = conn.open_bi() {
                self.0.lock().unwrap().push(s);
            }
        }
    }
    let mut client = Node::new(
        cb,
        &net,
        addr("10.7.4.1:5000"),
        MemSteering::Hash,
        move |_| Opener(o.clone()),
    )
    .unwrap();
    connect_to_server(&client);
    let mut nodes: Vec<&mut dyn Drive> = vec![&mut server, &mut client];
    run_until(&net, &mut nodes, Duration::from_secs(30), |_| {
        !open.lock().unwrap().is_empty()
    })
    .unwrap();
    drop(nodes);
    assert_eq!(
        open.lock().unwrap().len(),
        2,
        "the server's limit of 2 streams held"
    );
    client.handle.shutdown(0u32.into(), b"counted");
    let mut nodes: Vec<&mut dyn Drive> = vec![&mut server, &mut client];
    run_until(&net, &mut nodes, Duration::from_secs(30), |n| {
        n[1].is_done()
    })
    .unwrap();
    drop(nodes);
    while server.connections() > 0 {
        step(&net, &mut [&mut server]).unwrap();
    }
    assert!(
        built.load(Ordering::SeqCst) >= 1,
        "the chosen controller was used"
    );
    let reply = server
        .handle
        .call(0, |_h, ctx| (ctx.worker(), ctx.now()))
        .expect("queued");
    step(&net, &mut [&mut server]).unwrap();
    let (worker, _) = reply.wait().expect("the worker ran it");
    assert_eq!(worker, 0);
    // A call that never runs (its connection is gone) replies Gone.
    let ended = server.handler(0).ids[0];
    let gone = server
        .handle
        .call_conn(ended, |_h, c| c.id())
        .expect("queued");
    step(&net, &mut [&mut server]).unwrap();
    assert!(gone.wait().is_err());
}

/// Records the ids of its connections, and every `closed` call.
#[derive(Default)]
struct Recorder {
    ids: Vec<ConnId>,
    closed: Vec<ConnId>,
}

impl Handler for Recorder {
    fn connected(&mut self, conn: &mut Conn<'_>) {
        self.ids.push(conn.id());
    }
    fn closed(&mut self, _ctx: &mut Ctx<'_>, id: ConnId, _r: &ConnectionError) {
        self.closed.push(id);
    }
}

/// Connections still alive at the drain deadline (their peers went silent) are abandoned,
/// and the handler hears `closed` once for each of them too.
#[test]
fn closed_comes_once_for_every_connection_even_past_the_drain_deadline() {
    use xdp_quic::backend::mem::{MemPacket, Verdict};
    let net = MemNetwork::new(Duration::from_millis(5));
    let b = EngineBuilder::default()
        .server(server_config())
        .drain_timeout(Duration::from_millis(200));
    let mut server = Node::new(b, &net, addr(SERVER), MemSteering::Hash, |_| {
        Recorder::default()
    })
    .unwrap();
    let mut clients: Vec<_> = (0..3)
        .map(|i| {
            let c = Node::new(
                client_builder(),
                &net,
                addr(&format!("10.7.5.{}:5000", i + 1)),
                MemSteering::Hash,
                |_| Recorder::default(),
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
    while server.handler(0).ids.len() < 3 {
        let mut nodes: Vec<&mut dyn Drive> = vec![&mut server];
        nodes.extend(clients.iter_mut().map(|c| c as &mut dyn Drive));
        step(&net, &mut nodes).unwrap();
    }
    // The clients go silent: nothing reaches the server any more.
    let server_addr = addr(SERVER);
    net.set_impairment(move |p: &mut MemPacket| {
        if p.to == server_addr {
            Verdict::Drop
        } else {
            Verdict::Deliver
        }
    });
    server.handle.shutdown(7u32.into(), b"bye");
    let mut nodes: Vec<&mut dyn Drive> = vec![&mut server];
    run_until(&net, &mut nodes, Duration::from_secs(10), |n| {
        n[0].is_done()
    })
    .unwrap();
    drop(nodes);
    let h = server.handler(0);
    let mut closed = h.closed.clone();
    closed.sort();
    let mut ids = h.ids.clone();
    ids.sort();
    assert_eq!(closed, ids, "once each");
}

/// Reconnects from `closed`, and records what `connect` said and every `closed`.
#[derive(Default)]
struct Reconnector {
    opened: Vec<ConnId>,
    refused: Vec<String>,
    closed: Vec<ConnId>,
}

impl Handler for Reconnector {
    fn closed(&mut self, ctx: &mut Ctx<'_>, id: ConnId, _r: &ConnectionError) {
        self.closed.push(id);
        match ctx.connect(addr(SERVER), "localhost") {
            Ok(id) => self.opened.push(id),
            Err(e) => self.refused.push(e.to_string()),
        }
    }
}

/// A handler that reconnects from `closed` cannot open connections once its worker stops:
/// `connect` fails, so none escapes the drain, the worker ends as soon as its connections
/// have closed, and every connection it opened hears `closed`. (Before, each `closed` opened
/// a new connection that nothing closed: the worker waited out its drain timeout, and the
/// last ones never heard `closed`.)
#[test]
fn connections_cannot_be_opened_once_the_worker_stops() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let mut server = Node::new(
        EngineBuilder::default().server(server_config()),
        &net,
        addr(SERVER),
        MemSteering::Hash,
        |_| EchoServer::default(),
    )
    .unwrap();
    let mut client = Node::new(
        client_builder().drain_timeout(Duration::from_secs(30)),
        &net,
        addr("10.7.9.1:5000"),
        MemSteering::Hash,
        |_| Reconnector::default(),
    )
    .unwrap();
    let first = client
        .handle
        .call(0, |h, ctx| {
            let id = ctx.connect(addr(SERVER), "localhost").unwrap();
            h.opened.push(id);
        })
        .unwrap();
    step(&net, &mut [&mut server, &mut client]).unwrap();
    first.wait().unwrap();
    let begun = net.now();
    while server.connections() < 1 {
        step(&net, &mut [&mut server, &mut client]).unwrap();
        assert!(net.now() - begun < Duration::from_secs(5), "not connected");
    }
    let start = net.now();
    client.handle.shutdown(0u32.into(), b"bye");
    run_until(
        &net,
        &mut [&mut server, &mut client],
        Duration::from_secs(60),
        |n| n[1].is_done(),
    )
    .unwrap();
    assert!(
        net.now() - start < Duration::from_secs(30),
        "the worker waited out its drain timeout"
    );
    let h = client.handler(0);
    assert_eq!(h.opened.len(), 1, "{:?}", h.refused);
    assert_eq!(h.closed, h.opened, "closed once for each");
    assert_eq!(h.refused.len(), 1);
    assert!(h.refused[0].contains("stopping"), "{:?}", h.refused);
}

/// Clones of a builder share its transport (quinn-proto's cannot be copied), and with it
/// the controller it names: the first engine built fixes it, a clone built with the same
/// choice is fine, and one that asks for another controller is refused, rather than given
/// the first one's or changing the first one's connections.
#[test]
fn clones_of_a_builder_cannot_give_its_transport_two_controllers() {
    let bbr: xdp_quic::congestion::AnyFactory =
        Arc::new(quinn_proto::congestion::BbrConfig::default());
    let base = EngineBuilder::default()
        .server(server_config())
        .transport(TransportConfig::default());
    let build = |b: EngineBuilder| b.build(|_| EchoServer::default()).map(|_| ());
    build(base.clone().congestion(bbr.clone())).expect("the first fixes it");
    build(base.clone().congestion(bbr.clone())).expect("the same controller again");
    let other: xdp_quic::congestion::AnyFactory =
        Arc::new(quinn_proto::congestion::NewRenoConfig::default());
    for (what, b) in [
        ("another controller", base.clone().congestion(other)),
        ("none named after one was", base.clone()),
    ] {
        match build(b) {
            Err(xdp_quic::EngineError::Config(m)) => assert!(m.contains("transport"), "{m}"),
            other => panic!("{what}: {:?}", other.map(|_| ())),
        }
    }
    // A fresh transport on the clone is its own.
    build(base.transport(TransportConfig::default())).expect("a transport of its own");
}

/// Work posted to a worker that ends before running it is dropped, and a call's reply says
/// so (`Gone`) instead of waiting for good: here calls queued after the worker stopped and
/// before it was dropped. What is posted after that is refused.
#[test]
fn calls_left_queued_when_their_worker_ends_reply_gone() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let mut server = Node::new(
        EngineBuilder::default().server(server_config()),
        &net,
        addr(SERVER),
        MemSteering::Hash,
        |_| EchoServer::default(),
    )
    .unwrap();
    let stop = server.handle.call(0, |_, ctx| ctx.stop_worker()).unwrap();
    run_until(&net, &mut [&mut server], Duration::from_secs(5), |n| {
        n[0].is_done()
    })
    .unwrap();
    stop.wait().unwrap();
    let left: Vec<_> = (0..10)
        .map(|i| server.handle.call(0, move |_, _| i).unwrap())
        .collect();
    let handle = server.handle.clone();
    drop(server);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for r in left {
            let _ = tx.send(r.wait());
        }
    });
    for i in 0..10 {
        let got = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("reply {i} still waiting (hang guard)"));
        assert_eq!(got, Err(xdp_quic::Gone), "reply {i}");
    }
    assert!(matches!(
        handle.call(0, |_, _| ()),
        Err(xdp_quic::PostError::Stopped)
    ));
}

/// Gives the engine of `handle` a server configuration of a new identity; returns its
/// certificate.
fn new_certificate<H: Handler>(handle: &xdp_quic::EngineHandle<H>) -> Vec<u8> {
    let id = identity();
    let cert = id.chain[0].to_vec();
    handle
        .set_server_config(tls::server_config(id, &[echo::ALPN]).unwrap())
        .unwrap();
    cert
}

/// A client that notes the server's certificate, closes and stops.
struct CertSeen(Option<Vec<u8>>);

impl Handler for CertSeen {
    fn connected(&mut self, conn: &mut Conn<'_>) {
        self.0 = conn.peer_certificates().map(|c| c[0].to_vec());
        conn.close(0u32.into(), b"seen");
    }
    fn closed(&mut self, ctx: &mut Ctx<'_>, _: ConnId, _: &ConnectionError) {
        ctx.stop_worker();
    }
}

/// A new server configuration (another certificate) takes effect for new connections while
/// the engine serves; the connections alive keep theirs.
#[test]
fn a_server_configuration_is_replaced_while_serving() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let first = identity();
    let first_cert = first.chain[0].clone();
    let b = EngineBuilder::default()
        .server(tls::server_config(first, &[echo::ALPN]).unwrap())
        .drain_timeout(Duration::from_millis(300));
    let mut server = Node::new(b, &net, addr(SERVER), MemSteering::Hash, |_| {
        EchoServer::default()
    })
    .unwrap();
    let seen = |at: &str, server: &mut Node<EchoServer>| -> Vec<u8> {
        let mut c = Node::new(client_builder(), &net, addr(at), MemSteering::Hash, |_| {
            CertSeen(None)
        })
        .unwrap();
        c.handle
            .post(0, |_, ctx| {
                ctx.connect(addr(SERVER), "localhost").unwrap();
            })
            .expect("the worker is running");
        let mut nodes: Vec<&mut dyn Drive> = vec![server, &mut c];
        run_clients(&net, &mut nodes, Duration::from_secs(30)).unwrap();
        drop(nodes);
        c.handler(0).0.clone().expect("a certificate")
    };
    assert_eq!(seen("10.7.6.1:5000", &mut server), first_cert.to_vec());
    let second_cert = new_certificate(&server.handle);
    assert_eq!(seen("10.7.6.2:5000", &mut server), second_cert);
}

/// Attempts awaiting a decision: id and server name.
type Waiting = Arc<Mutex<Vec<(xdp_quic::AttemptId, Option<String>)>>>;

/// Echo whose accept hook defers every decision: the test decides from outside the hook.
#[derive(Default)]
struct Deferring {
    echo: EchoServer,
    waiting: Waiting,
}

impl Handler for Deferring {
    fn incoming(&mut self, _ctx: &mut Ctx<'_>, i: &Incoming<'_>) -> Decision {
        let seen = (i.id(), i.server_name().map(str::to_string));
        self.waiting.lock().unwrap().push(seen);
        Decision::Defer
    }
    fn stream_readable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        self.echo.stream_readable(conn, s)
    }
    fn stream_writable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        self.echo.stream_writable(conn, s)
    }
}

/// A server whose accept hook defers every attempt, and the attempts it saw.
fn deferring_server(net: &MemNetwork) -> (Node<Deferring>, Waiting) {
    deferring_server_with(net, EngineBuilder::default())
}

fn deferring_server_with(net: &MemNetwork, b: EngineBuilder) -> (Node<Deferring>, Waiting) {
    let b = b
        .server(server_config())
        .drain_timeout(Duration::from_millis(300));
    let waiting = Waiting::default();
    let w = waiting.clone();
    let server = Node::new(b, net, addr(SERVER), MemSteering::Hash, move |_| {
        Deferring {
            waiting: w.clone(),
            ..Default::default()
        }
    })
    .unwrap();
    (server, waiting)
}

#[test]
fn a_deferred_decision_is_taken_later_by_posted_work() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let (mut server, waiting) = deferring_server(&net);
    let mut clients = vec![
        client(&net, "10.7.2.1:5000", "accept.example", b"accepted later"),
        client(&net, "10.7.2.2:5000", "refuse.example", b"refused later"),
    ];
    {
        let mut nodes: Vec<&mut dyn Drive> = vec![&mut server];
        nodes.extend(clients.iter_mut().map(|c| c as &mut dyn Drive));
        run_until(&net, &mut nodes, Duration::from_secs(5), |_| {
            waiting.lock().unwrap().len() == 2
        })
        .expect("both attempts reach the hook");
    }
    let held = waiting.lock().unwrap().clone();
    let mut decided = Vec::new();
    for &(id, ref name) in &held {
        let decision = match name.as_deref() {
            Some("accept.example") => Decision::Accept,
            _ => Decision::Refuse,
        };
        let reply = server
            .handle
            .call(0, move |_, ctx| ctx.decide(id, decision))
            .unwrap();
        decided.push(reply);
    }
    run(&net, &mut server, &mut clients);
    let outcomes: Vec<_> = decided.into_iter().map(|r| r.wait().unwrap()).collect();
    assert!(
        outcomes[0].as_ref().is_ok_and(|c| c.is_some()),
        "{outcomes:?}"
    );
    assert_eq!(outcomes[1], Ok(None));
    assert!(clients[0].handler(0).all_ok());
    let e = clients[1].handler(0).error.clone().unwrap_or_default();
    assert!(e.contains("refused"), "{e}");
    // Decided once: a second decision finds nothing.
    let first = held[0].0;
    let again = server
        .handle
        .call(0, move |_, ctx| ctx.decide(first, Decision::Accept))
        .unwrap();
    step(&net, &mut [&mut server]).unwrap();
    assert_eq!(again.wait().unwrap(), Err(xdp_quic::Gone));
    let t = server.total();
    assert_eq!((t.conns_accepted, t.conns_refused), (1, 1));
}

/// An attempt that waited for a deferred decision while the server configuration changed is
/// accepted with the new one, as every connection accepted after the change. Before, it got
/// the configuration it arrived under (quinn-proto's `Incoming` keeps it).
#[test]
fn an_attempt_deferred_across_a_configuration_change_is_accepted_with_the_new_one() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let (mut server, waiting) = deferring_server(&net);
    let mut c = Node::new(
        client_builder(),
        &net,
        addr("10.7.2.9:5000"),
        MemSteering::Hash,
        |_| CertSeen(None),
    )
    .unwrap();
    c.handle
        .post(0, |_, ctx| {
            ctx.connect(addr(SERVER), "localhost").unwrap();
        })
        .expect("the worker is running");
    {
        let mut nodes: Vec<&mut dyn Drive> = vec![&mut server, &mut c];
        run_until(&net, &mut nodes, Duration::from_secs(5), |_| {
            waiting.lock().unwrap().len() == 1
        })
        .expect("the attempt reaches the hook");
    }
    let second_cert = new_certificate(&server.handle);
    let id = waiting.lock().unwrap()[0].0;
    let reply = server
        .handle
        .call(0, move |_, ctx| ctx.decide(id, Decision::Accept))
        .unwrap();
    let mut nodes: Vec<&mut dyn Drive> = vec![&mut server, &mut c];
    run_clients(&net, &mut nodes, Duration::from_secs(30)).unwrap();
    drop(nodes);
    assert!(reply.wait().unwrap().is_ok_and(|c| c.is_some()));
    assert_eq!(c.handler(0).0.clone(), Some(second_cert));
}

/// Attempts awaiting a decision count towards the Retry threshold: with two of them held,
/// a third client is asked to prove its address first, and comes back validated.
#[test]
fn deferred_attempts_count_towards_the_retry_threshold() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let (mut server, waiting) = deferring_server_with(
        &net,
        EngineBuilder::default().retry(RetryPolicy::AbovePendingHandshakes(2)),
    );
    let mut clients = vec![
        client(&net, "10.7.8.1:5000", "one.example", b"first"),
        client(&net, "10.7.8.2:5000", "two.example", b"second"),
    ];
    {
        let mut nodes: Vec<&mut dyn Drive> = vec![&mut server];
        nodes.extend(clients.iter_mut().map(|c| c as &mut dyn Drive));
        run_until(&net, &mut nodes, Duration::from_secs(5), |_| {
            waiting.lock().unwrap().len() == 2
        })
        .expect("both attempts reach the hook");
    }
    assert_eq!(server.total().retries_sent, 0, "below the threshold");
    assert_eq!(server.total().attempts_deferred, 2);
    clients.push(client(&net, "10.7.8.3:5000", "three.example", b"third"));
    {
        let mut nodes: Vec<&mut dyn Drive> = vec![&mut server];
        nodes.extend(clients.iter_mut().map(|c| c as &mut dyn Drive));
        run_until(&net, &mut nodes, Duration::from_secs(5), |_| {
            waiting.lock().unwrap().len() == 3
        })
        .expect("the third attempt reaches the hook after its Retry");
    }
    assert_eq!(server.total().retries_sent, 1, "two attempts held: Retry");
    let held = waiting.lock().unwrap().clone();
    assert_eq!(held[2].1.as_deref(), Some("three.example"));
    let decided: Vec<_> = held
        .iter()
        .map(|&(id, _)| {
            server
                .handle
                .call(0, move |_, ctx| ctx.decide(id, Decision::Accept))
                .unwrap()
        })
        .collect();
    run(&net, &mut server, &mut clients);
    for r in decided {
        assert!(r.wait().unwrap().is_ok_and(|c| c.is_some()));
    }
    for (i, c) in clients.iter().enumerate() {
        assert!(
            c.handler(0).all_ok(),
            "client {i}: {:?}",
            c.handler(0).error
        );
    }
    let t = server.total();
    assert_eq!((t.conns_accepted, t.attempts_deferred), (3, 0));
}

#[test]
fn a_deferred_attempt_without_a_decision_is_ignored_when_its_time_is_up() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let (mut server, waiting) = deferring_server(&net);
    let mut clients = vec![client(&net, "10.7.3.1:5000", "late.example", b"never")];
    run(&net, &mut server, &mut clients);
    let e = clients[0].handler(0).error.clone().unwrap_or_default();
    assert!(e.contains("timed out"), "{e}");
    let id = waiting.lock().unwrap()[0].0;
    let late = server
        .handle
        .call(0, move |_, ctx| ctx.decide(id, Decision::Accept))
        .unwrap();
    step(&net, &mut [&mut server]).unwrap();
    assert_eq!(late.wait().unwrap(), Err(xdp_quic::Gone));
    assert_eq!(server.total().conns_accepted, 0);
}

/// Serves one connection at a time: later attempts wait (deferred) until the current one
/// closes, and `closed` accepts the oldest of them.
#[derive(Default)]
struct OneAtATime {
    echo: EchoServer,
    live: bool,
    waiting: std::collections::VecDeque<xdp_quic::AttemptId>,
    accepted_in_closed: Vec<Result<Option<ConnId>, xdp_quic::Gone>>,
}

impl Handler for OneAtATime {
    fn incoming(&mut self, _ctx: &mut Ctx<'_>, i: &Incoming<'_>) -> Decision {
        if self.live {
            self.waiting.push_back(i.id());
            return Decision::Defer;
        }
        self.live = true;
        Decision::Accept
    }
    fn closed(&mut self, ctx: &mut Ctx<'_>, _id: ConnId, _reason: &ConnectionError) {
        self.live = false;
        if let Some(next) = self.waiting.pop_front() {
            self.live = true;
            let accepted = ctx.decide(next, Decision::Accept);
            self.accepted_in_closed.push(accepted);
        }
    }
    fn stream_readable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        self.echo.stream_readable(conn, s)
    }
    fn stream_writable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        self.echo.stream_writable(conn, s)
    }
}

/// A client that connects and says nothing more.
struct Quiet(Arc<AtomicUsize>);
impl Handler for Quiet {
    fn connected(&mut self, _conn: &mut Conn<'_>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A connection accepted from `closed` of one that timed out: quinn-proto drains a timed-out
/// connection and reports it lost in the same drive, and the endpoint hands the freed handle
/// to the next connection it makes. The new connection lives and is served (before, the dead
/// slot was put back over it: it was never driven, and the worker's counts leaked).
#[test]
fn a_connection_accepted_while_another_closes_is_served() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let mut t = TransportConfig::default();
    t.max_idle_timeout(Some(VarInt::from_u32(2_000).into()));
    let b = EngineBuilder::default()
        .server(server_config())
        .transport(t)
        .drain_timeout(Duration::from_millis(300));
    let mut server = Node::new(b, &net, addr(SERVER), MemSteering::Hash, |_| {
        OneAtATime::default()
    })
    .unwrap();
    let connected = Arc::new(AtomicUsize::new(0));
    let c = connected.clone();
    let mut quiet = Node::new(
        client_builder(),
        &net,
        addr("10.7.9.1:5000"),
        MemSteering::Hash,
        move |_| Quiet(c.clone()),
    )
    .unwrap();
    connect_to_server(&quiet);
    {
        let mut nodes: Vec<&mut dyn Drive> = vec![&mut server, &mut quiet];
        run_until(&net, &mut nodes, Duration::from_secs(5), |_| {
            connected.load(Ordering::SeqCst) == 1
        })
        .expect("the quiet client connects");
        // The second attempt comes late in the quiet one's 2 s: it waits less than its own
        // idle timeout (quinn-proto counts it from the attempt's first packet).
        let late = net.now() + Duration::from_millis(1_500);
        run_until(&net, &mut nodes, Duration::from_secs(5), |_| {
            net.now() >= late
        })
        .unwrap();
    }
    let mut echo = client(
        &net,
        "10.7.9.2:5000",
        "localhost",
        b"served after the quiet one",
    );
    {
        let mut nodes: Vec<&mut dyn Drive> = vec![&mut server, &mut quiet, &mut echo];
        run_until(&net, &mut nodes, Duration::from_secs(30), |n| {
            n[2].is_done()
        })
        .expect("the second client is served");
    }
    let h = server.handler(0);
    assert!(
        echo.handler(0).all_ok(),
        "{:?}; decided in closed: {:?}; {:?}",
        echo.handler(0).error,
        h.accepted_in_closed,
        server.total()
    );
    assert_eq!(h.accepted_in_closed.len(), 1);
    assert!(
        matches!(h.accepted_in_closed[0], Ok(Some(_))),
        "{:?}",
        h.accepted_in_closed
    );
    let t = server.total();
    assert_eq!(t.conns_accepted, 2);
    // Both ended (the quiet one timed out, the echo client closed): nothing leaked.
    while server.connections() > 0 {
        step(&net, &mut [&mut server]).unwrap();
    }
    assert_eq!(server.total().conns_active, 0);
    assert_eq!(server.total().conns_handshaking, 0);
}

/// Deferred attempts are found whatever order decisions come in: one decided to wait
/// again (`Defer` from `decide`) and one deferred after it leave the others findable.
/// (Before, the table was searched as if sorted, and deciding the second attempt answered
/// `Gone` while it was still held.)
#[test]
fn deferred_attempts_are_found_in_any_order() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let (mut server, waiting) = deferring_server(&net);
    let mut clients: Vec<Node<EchoClient>> = (1..=3)
        .map(|i| {
            client(
                &net,
                &format!("10.7.8.{i}:5000"),
                "localhost",
                b"in any order",
            )
        })
        .collect();
    let reach = |server: &mut Node<Deferring>, clients: &mut [Node<EchoClient>], n: usize| {
        let mut nodes: Vec<&mut dyn Drive> = vec![server];
        nodes.extend(clients.iter_mut().map(|c| c as &mut dyn Drive));
        run_until(&net, &mut nodes, Duration::from_secs(5), |_| {
            waiting.lock().unwrap().len() == n
        })
        .unwrap_or_else(|e| panic!("{n} attempts: {e}; {:?}", waiting.lock().unwrap()));
    };
    reach(&mut server, &mut clients, 3);
    let ids: Vec<_> = waiting.lock().unwrap().iter().map(|w| w.0).collect();
    let decide = |server: &mut Node<Deferring>, id, d: Decision| {
        let reply = server
            .handle
            .call(0, move |_, ctx| ctx.decide(id, d))
            .unwrap();
        // One turn, the clock standing still (a step would jump to the attempts' deadline).
        server.turn(net.now()).unwrap();
        reply.wait().unwrap()
    };
    // The first waits again; a fourth attempt comes after it.
    assert_eq!(decide(&mut server, ids[0], Decision::Defer), Ok(None));
    clients.push(client(&net, "10.7.8.4:5000", "localhost", b"in any order"));
    reach(&mut server, &mut clients, 4);
    let fourth = waiting.lock().unwrap()[3].0;
    for id in [ids[1], ids[2], fourth, ids[0]] {
        let got = decide(&mut server, id, Decision::Accept);
        assert!(
            matches!(got, Ok(Some(_))),
            "attempt {id:?} still held: {got:?}"
        );
    }
    run(&net, &mut server, &mut clients);
    assert!(clients.iter().all(|c| c.handler(0).all_ok()));
    assert_eq!(server.total().conns_accepted, 4);
}

/// Accepts every attempt and records the server name it asked for; echoes.
#[derive(Default)]
struct NameSeen {
    echo: EchoServer,
    names: Vec<Option<String>>,
}

impl Handler for NameSeen {
    fn incoming(&mut self, _ctx: &mut Ctx<'_>, i: &Incoming<'_>) -> Decision {
        self.names.push(i.server_name().map(str::to_string));
        Decision::Accept
    }
    fn stream_readable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        self.echo.stream_readable(conn, s)
    }
    fn stream_writable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        self.echo.stream_writable(conn, s)
    }
}

/// An engine built without a server configuration and given one later shows the accept hook
/// the client's hello like any server. (Before, only engines built with one kept it: the
/// hook saw no server name.)
#[test]
fn an_engine_given_a_server_configuration_later_shows_the_hook_the_hello() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let mut server = Node::new(
        client_builder(),
        &net,
        addr(SERVER),
        MemSteering::Hash,
        |_| NameSeen::default(),
    )
    .unwrap();
    server.handle.set_server_config(server_config()).unwrap();
    let mut clients = vec![client(&net, "10.7.10.1:5000", "late.example", b"hello")];
    run(&net, &mut server, &mut clients);
    assert!(clients[0].handler(0).all_ok());
    assert_eq!(
        server.handler(0).names,
        vec![Some("late.example".to_string())]
    );
}

/// Durations the engine adds to instants are bounded at build, so that `Duration::MAX` (a
/// natural way to ask for "never") is a clear error rather than an overflow in a worker.
#[test]
fn durations_that_would_overflow_and_queues_too_large_are_refused_at_build() {
    let net = MemNetwork::new(Duration::from_millis(5));
    for (b, name) in [
        (
            EngineBuilder::default().min_reset_interval(Duration::MAX),
            "min_reset_interval",
        ),
        (
            EngineBuilder::default().drain_timeout(Duration::MAX),
            "drain_timeout",
        ),
        // Queues whose slots could not be allocated (an abort, not an error, before).
        (
            EngineBuilder::default().handover_capacity(usize::MAX / 2),
            "handover capacity",
        ),
        (
            EngineBuilder::default().command_capacity(1 << 40),
            "command capacity",
        ),
    ] {
        let b = b.server(server_config());
        let built = Node::new(b, &net, addr(SERVER), MemSteering::Hash, |_| {
            EchoServer::default()
        });
        let Err(e) = built else {
            panic!("{name} out of range was taken");
        };
        assert!(e.to_string().contains(name), "{e}");
    }
}

/// Records every `closed` it hears.
#[derive(Default)]
struct Watcher {
    closed: Vec<(ConnId, String)>,
}

impl Handler for Watcher {
    fn closed(&mut self, _ctx: &mut Ctx<'_>, id: ConnId, reason: &ConnectionError) {
        self.closed.push((id, reason.to_string()));
    }
}

/// Steps both nodes until `done`, failing after `limit` of virtual time.
fn step_until(
    net: &MemNetwork,
    server: &mut Node<EchoServer>,
    client: &mut Node<Watcher>,
    limit: Duration,
    what: &str,
    done: impl Fn(&Node<EchoServer>, &Node<Watcher>) -> bool,
) {
    let begun = net.now();
    while !done(server, client) {
        assert!(net.now() - begun < limit, "{what}");
        step(net, &mut [&mut *server, &mut *client]).unwrap();
    }
}

/// An echo server at [`SERVER`] and, at `at`, a client engine whose handler records every
/// `closed` (with `drain` as its drain timeout).
fn server_and_watcher(
    net: &MemNetwork,
    at: &str,
    drain: Duration,
) -> (Node<EchoServer>, Node<Watcher>) {
    let server = Node::new(
        EngineBuilder::default().server(server_config()),
        net,
        addr(SERVER),
        MemSteering::Hash,
        |_| EchoServer::default(),
    )
    .unwrap();
    let client = Node::new(
        client_builder().drain_timeout(drain),
        net,
        addr(at),
        MemSteering::Hash,
        |_| Watcher::default(),
    )
    .unwrap();
    (server, client)
}

/// A connection a call opens is in its place at once: the same call reaches it with
/// `with_conn`, and closing it there closes it. (Before, it joined the worker's connections
/// at the end of the turn: `with_conn`, posts to it and a stop in that turn missed it, and an
/// async endpoint closed in the turn of a connect left that connection open.)
#[test]
fn a_connection_a_call_opens_is_reachable_in_the_same_turn() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let (mut server, mut client) =
        server_and_watcher(&net, "10.7.11.1:5000", Duration::from_millis(300));
    let reply = client
        .handle
        .call(0, |_, ctx| {
            let id = ctx.connect(addr(SERVER), "localhost").unwrap();
            let seen = ctx.with_conn(id, |c| {
                c.close(VarInt::from_u32(7), b"at once");
                c.id()
            });
            (id, seen)
        })
        .unwrap();
    step(&net, &mut [&mut server, &mut client]).unwrap();
    let (id, seen) = reply.wait().unwrap();
    assert_eq!(seen, Some(id), "the connection was not reachable");
    step_until(
        &net,
        &mut server,
        &mut client,
        Duration::from_secs(10),
        "the connection closed in its first turn never ended",
        |_, c| !c.handler(0).closed.is_empty(),
    );
    let closed = &client.handler(0).closed;
    assert_eq!(closed.len(), 1, "{closed:?}");
    assert_eq!(closed[0].0, id);
    assert!(closed[0].1.contains("closed"), "{closed:?}");
    assert_eq!(client.workers[0].counters().conns_opened, 1);
}

/// A handler that panics inside `with_conn` poisons its worker, which closes every
/// connection, the one `with_conn` held included: its peer hears the close at once instead
/// of waiting out its idle timeout. (Before, that connection's slot was dropped while the
/// panic unwound: never closed, and the worker's stop waited out its drain timeout.)
#[test]
fn a_panic_inside_with_conn_still_closes_that_connection() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let (mut server, mut client) =
        server_and_watcher(&net, "10.7.11.2:5000", Duration::from_secs(60));
    let ids = client
        .handle
        .call(0, |_, ctx| {
            [
                ctx.connect(addr(SERVER), "localhost").unwrap(),
                ctx.connect(addr(SERVER), "localhost").unwrap(),
            ]
        })
        .unwrap();
    step(&net, &mut [&mut server, &mut client]).unwrap();
    let [victim, _other] = ids.wait().unwrap();
    step_until(
        &net,
        &mut server,
        &mut client,
        Duration::from_secs(10),
        "not connected",
        |s, _| s.connections() == 2,
    );
    client
        .handle
        .post(0, move |_, ctx| {
            ctx.with_conn(victim, |_| {
                panic!("application bug (deliberate, in a test)")
            });
        })
        .unwrap();
    // Far below the idle timeout (30 s) and the client's drain timeout (60 s).
    step_until(
        &net,
        &mut server,
        &mut client,
        Duration::from_secs(5),
        "a connection stayed open on the server",
        |s, _| s.connections() == 0,
    );
    step_until(
        &net,
        &mut server,
        &mut client,
        Duration::from_secs(5),
        "the poisoned worker did not end",
        |_, c| c.is_done(),
    );
    assert_eq!(client.workers[0].counters().handler_panics, 1);
    assert_eq!(client.workers[0].connections(), 0);
}

/// Once the handler heard `closed`, the connection's id is stale: calls and posts to it are
/// not run (the reply is `Gone`), although quinn-proto keeps the connection a while to drain.
/// (Before, they ran on the draining connection and could make state for it again.)
#[test]
fn a_connection_is_out_of_reach_once_closed_was_heard() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let (mut server, mut client) =
        server_and_watcher(&net, "10.7.11.3:5000", Duration::from_millis(300));
    let id = client
        .handle
        .call(0, |_, ctx| ctx.connect(addr(SERVER), "localhost").unwrap())
        .unwrap();
    step(&net, &mut [&mut server, &mut client]).unwrap();
    let id = id.wait().unwrap();
    step_until(
        &net,
        &mut server,
        &mut client,
        Duration::from_secs(10),
        "not connected",
        |s, _| s.connections() == 1,
    );
    server.handle.shutdown(VarInt::from_u32(3), b"bye");
    step_until(
        &net,
        &mut server,
        &mut client,
        Duration::from_secs(10),
        "the client never heard the close",
        |_, c| !c.handler(0).closed.is_empty(),
    );
    assert_eq!(client.connections(), 1, "still draining");
    let reply = client.handle.call_conn(id, |_, c| c.id()).unwrap();
    step(&net, &mut [&mut server, &mut client]).unwrap();
    assert_eq!(reply.wait(), Err(xdp_quic::Gone));
}

/// Attempts awaiting a decision, with the worker that holds each.
type WaitingOn = Arc<Mutex<Vec<(xdp_quic::AttemptId, usize)>>>;

/// Defers every attempt, noting its worker.
struct DeferringOn(WaitingOn);

impl Handler for DeferringOn {
    fn incoming(&mut self, ctx: &mut Ctx<'_>, i: &Incoming<'_>) -> Decision {
        self.0.lock().unwrap().push((i.id(), ctx.worker()));
        Decision::Defer
    }
}

/// An attempt's id names it in the whole engine: decided on another worker it is `Gone`,
/// never that worker's attempt of the same number. (Before, every worker counted its
/// attempts from 1, and a decision sent to the wrong worker settled another client's.)
#[test]
fn an_attempt_decided_on_another_worker_is_gone() {
    let net = MemNetwork::new(Duration::from_millis(5));
    let waiting = WaitingOn::default();
    let w = waiting.clone();
    let b = EngineBuilder::default()
        .workers(2)
        .server(server_config())
        .drain_timeout(Duration::from_millis(300));
    let mut server = Node::new(b, &net, addr(SERVER), MemSteering::Hash, move |_| {
        DeferringOn(w.clone())
    })
    .unwrap();
    let mut clients: Vec<Node<EchoClient>> = Vec::new();
    for i in 1..=64 {
        let on = |w| waiting.lock().unwrap().iter().any(|e| e.1 == w);
        if on(0) && on(1) {
            break;
        }
        let at = format!("10.7.12.{i}:5000");
        clients.push(client(&net, &at, "localhost", b"x"));
        let n = clients.len();
        let mut nodes: Vec<&mut dyn Drive> = vec![&mut server];
        nodes.extend(clients.iter_mut().map(|c| c as &mut dyn Drive));
        run_until(&net, &mut nodes, Duration::from_secs(5), |_| {
            waiting.lock().unwrap().len() == n
        })
        .expect("the attempt reaches the hook");
    }
    let held = waiting.lock().unwrap().clone();
    assert!(
        held.iter().any(|e| e.1 == 0) && held.iter().any(|e| e.1 == 1),
        "64 clients all on one worker: {held:?}"
    );
    for &(id, on) in &held {
        for worker in 0..2 {
            // `Defer` again: found, it waits on (no client is settled by the test).
            let reply = server
                .handle
                .call(worker, move |_, ctx| ctx.decide(id, Decision::Defer))
                .unwrap();
            server.turn(net.now()).unwrap();
            let got = reply.wait().unwrap();
            if worker == on {
                assert_eq!(got, Ok(None), "{id:?} on its worker {on}");
            } else {
                assert_eq!(
                    got,
                    Err(xdp_quic::Gone),
                    "{id:?} of worker {on} on {worker}"
                );
            }
        }
    }
}

/// Asks worker 0 of `client` to connect to [`SERVER`].
fn connect_to_server<H: xdp_quic::Handler>(client: &Node<H>) {
    client
        .handle
        .post(0, |_, ctx| {
            ctx.connect(addr(SERVER), "localhost").unwrap();
        })
        .expect("the worker is running");
}
