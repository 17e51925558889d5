//! The async API ([`xdp_quic::tokio`]) against aioquic, an independent QUIC implementation,
//! both directions and both modes, over kernel UDP and over AF_XDP: 10 MB echoed byte-exact,
//! 1,000 concurrent streams, datagrams, close codes both ways. The aioquic peer is
//! `scripts/interop/aioquic_echo.py`. And quinn's client against the async server over
//! AF_XDP: 10 MB each way, dropped read futures losing nothing, endpoint shutdown.
//!
//! Run: `cargo test -p xdp-quic-examples --test async_interop`

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use tokio::sync::mpsc;
use xdp_quic::tokio::{Builder, Connection, ConnectionError, Endpoint};
use xdp_quic::{tls, EngineBuilder, VarInt, XdpSetup};
use xdp_quic_examples::async_echo;

const ECHO_PY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../scripts/interop/aioquic_echo.py"
);

/// The two ways to run the async API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    AppRuntime,
    ThreadPerCore,
}

const MODES: [Mode; 2] = [Mode::AppRuntime, Mode::ThreadPerCore];

/// A certificate for "localhost" and its key as PEM files, removed on drop.
struct Pem {
    dir: PathBuf,
}

impl Pem {
    fn new() -> Pem {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "xq-async-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), ck.key_pair.serialize_pem()).unwrap();
        Pem { dir }
    }

    fn cert(&self) -> PathBuf {
        self.dir.join("cert.pem")
    }

    fn identity(&self) -> tls::Identity {
        tls::Identity::from_pem_files(&self.cert(), &self.dir.join("key.pem")).unwrap()
    }

    fn trust(&self) -> tls::Trust {
        tls::Trust::Roots(tls::certs_from_pem_file(&self.cert()).unwrap())
    }
}

impl Drop for Pem {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Room for the 1,000 concurrent streams of the tests.
fn transport() -> xdp_quic::TransportConfig {
    let mut t = xdp_quic::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(1000))
        .datagram_receive_buffer_size(Some(1 << 20))
        .max_idle_timeout(Some(Duration::from_secs(30).try_into().unwrap()));
    t
}

/// The server of these tests: echo, except that a stream reading exactly "close N" closes
/// the connection with code N and reason "bye"; how each connection ended goes to `ended`.
async fn closing_echo(ep: Endpoint, ended: mpsc::UnboundedSender<ConnectionError>) {
    while let Some(incoming) = ep.accept().await {
        let ended = ended.clone();
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            let datagrams = conn.clone();
            tokio::spawn(async move {
                while let Ok(d) = datagrams.read_datagram().await {
                    let _ = datagrams.send_datagram(d);
                }
            });
            let watch = conn.clone();
            tokio::spawn(async move {
                let _ = ended.send(watch.closed().await);
            });
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                let conn = conn.clone();
                tokio::spawn(async move {
                    let Ok(Some(first)) = recv.read_chunk(64 << 10, true).await else {
                        return;
                    };
                    if let Some(code) = first.bytes.strip_prefix(b"close ") {
                        let code = std::str::from_utf8(code).unwrap().parse().unwrap();
                        conn.close(VarInt::from_u32(code), b"bye");
                        return;
                    }
                    if send.write_chunk(first.bytes).await.is_ok() {
                        let _ = async_echo::echo_stream(send, recv).await;
                    }
                });
            }
        });
    }
}

/// Starts our async server in `mode` on `ep`'s builder: `bind` binds it (UDP or AF_XDP).
fn start_server(
    mode: Mode,
    pem: &Pem,
    workers: usize,
    bind: impl FnOnce(Builder) -> Endpoint,
) -> (Endpoint, mpsc::UnboundedReceiver<ConnectionError>) {
    let engine = EngineBuilder::default()
        .workers(workers)
        .server(tls::server_config(pem.identity(), &[async_echo::ALPN]).unwrap())
        .transport(transport())
        .drain_timeout(DRAIN);
    let (tx, rx) = mpsc::unbounded_channel();
    let b = Builder::new(engine);
    let ep = match mode {
        Mode::AppRuntime => {
            let ep = bind(b);
            tokio::spawn(closing_echo(ep.clone(), tx));
            ep
        }
        Mode::ThreadPerCore => bind(b.thread_per_core(move |ep| closing_echo(ep, tx.clone()))),
    };
    (ep, rx)
}

/// Runs aioquic's echo client against `addr` (inside `netns` if given) and returns its facts
/// line.
fn aioquic_client(ca: &std::path::Path, addr: SocketAddr, netns: Option<&str>) -> String {
    let mut cmd = command_in(netns, "python3");
    let out = cmd
        .arg(ECHO_PY)
        .args(["client", "--ask-close"])
        .args(["--host", &addr.ip().to_string()])
        .args(["--port", &addr.port().to_string()])
        .arg("--ca")
        .arg(ca)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "aioquic echo client: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Checks aioquic's facts and how our side saw its two connections end.
async fn check_aioquic_client_run(
    what: &str,
    facts: &str,
    ended: &mut mpsc::UnboundedReceiver<ConnectionError>,
) {
    assert!(facts.contains("bulk=ok streams=1000 "), "{what}: {facts}");
    assert!(
        !facts.contains("datagrams=0 "),
        "{what}: no datagram came back: {facts}"
    );
    assert!(facts.contains("server_close=42:bye"), "{what}: {facts}");
    let mut seen = Vec::new();
    for _ in 0..2 {
        seen.push(guard(what, ended.recv()).await.unwrap());
    }
    assert!(
        seen.iter()
            .any(|e| matches!(e, ConnectionError::ApplicationClosed(c)
            if c.error_code == VarInt::from_u32(7) && &c.reason[..] == b"done")),
        "{what}: the client's close code did not arrive: {seen:?}"
    );
    assert!(
        seen.iter()
            .any(|e| matches!(e, ConnectionError::LocallyClosed)),
        "{what}: the server's own close: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aioquic_client_against_the_async_server() {
    if !aioquic() {
        return;
    }
    for mode in MODES {
        let pem = Pem::new();
        let (ep, mut ended) = start_server(mode, &pem, 2, |b| {
            b.bind_udp("127.0.0.1:0".parse().unwrap()).unwrap()
        });
        let addr = ep.local_addr().unwrap();
        let ca = pem.cert();
        let facts = blocking("aioquic client", move || aioquic_client(&ca, addr, None)).await;
        eprintln!("{mode:?}: {facts}");
        check_aioquic_client_run(&format!("{mode:?}"), &facts, &mut ended).await;
        ep.close(VarInt::from_u32(0), b"");
    }
}

/// aioquic's echo server on a loopback port (or in `netns` on `host`), with what it prints.
struct AioquicServer {
    child: std::process::Child,
    addr: SocketAddr,
    lines: std_mpsc::Receiver<String>,
}

impl AioquicServer {
    fn start(pem: &Pem, host: std::net::IpAddr, netns: Option<&str>) -> AioquicServer {
        let mut cmd = command_in(netns, "python3");
        let mut child = cmd
            .arg(ECHO_PY)
            .arg("server")
            .args(["--host", &host.to_string(), "--port", "0", "--cert"])
            .arg(pem.cert())
            .arg("--key")
            .arg(pem.dir.join("key.pem"))
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let ready = lines.recv_timeout(HANG).expect("aioquic echo server ready");
        let port: u16 = ready
            .strip_prefix("ready port=")
            .unwrap_or_else(|| panic!("unexpected first line {ready:?}"))
            .parse()
            .unwrap();
        AioquicServer {
            child,
            addr: SocketAddr::new(host, port),
            lines,
        }
    }

    /// Waits for the line of the next ended connection.
    fn closed(&self) -> String {
        loop {
            let line = self.lines.recv_timeout(HANG).expect("a connection ended");
            if line.starts_with("closed ") {
                return line;
            }
        }
    }
}

impl Drop for AioquicServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Our async client's side of the exchange with an echo server at `addr`: 10 MB echoed,
/// 1,000 concurrent streams, datagrams, closing with code 7; then a second connection that
/// the server closes with code 42.
async fn client_exchange(ep: Endpoint, addr: SocketAddr) -> (usize, ConnectionError) {
    let conn = ep.connect(addr, "localhost").unwrap().await.unwrap();
    let data = payload(11, 10_000_000);
    let back = echo_on(&conn, data.clone()).await;
    assert_same("10 MB echo", &back, &data);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..1000u64 {
        let conn = conn.clone();
        tasks.spawn_local(async move {
            let data = payload(1000 + i, 1024);
            let back = echo_on(&conn, data.clone()).await;
            assert_same("stream echo", &back, &data);
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap();
    }
    for i in 0..20u32 {
        conn.send_datagram(Bytes::from(i.to_be_bytes().repeat(25)))
            .unwrap();
    }
    let mut datagrams = 0;
    while datagrams < 20 {
        match tokio::time::timeout(Duration::from_secs(2), conn.read_datagram()).await {
            Ok(Ok(_)) => datagrams += 1,
            _ => break,
        }
    }
    conn.close(VarInt::from_u32(7), b"done");
    let asked = ep.connect(addr, "localhost").unwrap().await.unwrap();
    let (mut send, _recv) = asked.open_bi().await.unwrap();
    send.write_all(b"close 42").await.unwrap();
    send.finish().unwrap();
    (datagrams, asked.closed().await)
}

async fn echo_on(conn: &Connection, data: Bytes) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let writer = tokio::task::spawn_local(async move {
        send.write_chunk(data).await.unwrap();
        send.finish().unwrap();
    });
    let back = recv.read_to_end(usize::MAX).await.unwrap();
    writer.await.unwrap();
    back
}

/// Runs [`client_exchange`] on our async client in `mode`, bound by `bind`.
async fn run_our_client(
    mode: Mode,
    pem: &Pem,
    addr: SocketAddr,
    bind: impl FnOnce(Builder) -> Endpoint,
) -> (usize, ConnectionError) {
    let client = tls::client_config(pem.trust(), &[async_echo::ALPN]).unwrap();
    let engine = EngineBuilder::default()
        .workers(1)
        .client(client)
        .transport(transport())
        .drain_timeout(DRAIN);
    let (tx, mut rx) = mpsc::unbounded_channel();
    // Thread-per-core runs this on every worker (two over AF_XDP): one of them is the client.
    let taken = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let run = move |ep: Endpoint| {
        let tx = tx.clone();
        let first = !taken.swap(true, Ordering::AcqRel);
        async move {
            if first {
                let _ = tx.send(client_exchange(ep, addr).await);
            }
        }
    };
    let _ep = match mode {
        Mode::AppRuntime => {
            let ep = bind(Builder::new(engine));
            let local = tokio::task::LocalSet::new();
            local.spawn_local(run(ep.clone()));
            local.await;
            ep
        }
        Mode::ThreadPerCore => bind(Builder::new(engine).thread_per_core(run)),
    };
    guard("our client", rx.recv())
        .await
        .expect("the client ran")
}

fn check_our_client_run(
    what: &str,
    (datagrams, closed): (usize, ConnectionError),
    server: &AioquicServer,
) {
    assert!(datagrams > 0, "{what}: no datagram came back");
    assert!(
        matches!(&closed, ConnectionError::ApplicationClosed(c)
            if c.error_code == VarInt::from_u32(42) && &c.reason[..] == b"bye"),
        "{what}: the server's close: {closed:?}"
    );
    // Both connections ended on the server; in either order (draining periods differ).
    let lines = [server.closed(), server.closed()];
    assert!(
        lines.iter().any(|l| l == "closed code=7 reason=done"),
        "{what}: our close code did not arrive: {lines:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_async_client_against_aioquic() {
    if !aioquic() {
        return;
    }
    for mode in MODES {
        let pem = Pem::new();
        let server = AioquicServer::start(&pem, "127.0.0.1".parse().unwrap(), None);
        let got = run_our_client(mode, &pem, server.addr, |b| {
            b.bind_udp("127.0.0.1:0".parse().unwrap()).unwrap()
        })
        .await;
        check_our_client_run(&format!("{mode:?}"), got, &server);
    }
}

/// Binds `b` over AF_XDP on both queues of the testbed's server interface, port 4433, with
/// the program attached for this endpoint (native mode); keep the attachment as long as the
/// endpoint.
fn bind_over_xdp(
    tb: &xdp_quic_control::testbed::Testbed,
    b: Builder,
) -> (Endpoint, xdp_quic_control::xdp::EmbeddedAttachment) {
    let setup = XdpSetup::new(&tb.server_if, "[::]:4433".parse().unwrap(), vec![0, 1]);
    let service = xdp_quic_control::xdp::ServiceConfig {
        ports: [4433].into(),
        addrs: Default::default(),
    };
    tb.in_server(|| {
        let a = xdp_quic_control::xdp::attach_embedded(
            &tb.server_if,
            &service,
            xdp_quic_control::xdp::AttachMode::Native,
        )
        .unwrap();
        let steering = xdp_quic_control::xdp::socket_map::ServerSteering::with_registry(
            a.xsks().unwrap(),
            "async-test",
            a.prog_id(),
        );
        let ep = b.bind_xdp(&setup, Box::new(steering)).unwrap();
        (ep, a)
    })
    .unwrap()
}

/// aioquic's client in the peer namespace against our async server over AF_XDP, both modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aioquic_client_against_the_async_server_over_af_xdp() {
    if !aioquic() || !xdp_quic_control::testing::privileged("async server over AF_XDP") {
        return;
    }
    use xdp_quic_control::testbed::Testbed;
    let tb = Testbed::create(&xdp_quic_control::testing::unique_name("xy"), 2, 221).unwrap();
    for mode in MODES {
        let pem = Pem::new();
        let mut attachment = None;
        let (ep, mut ended) = start_server(mode, &pem, 2, |b| {
            let (ep, a) = bind_over_xdp(&tb, b);
            attachment = Some(a);
            ep
        });
        let addr = SocketAddr::new(tb.server_v4.into(), 4433);
        let (ns, ca) = (tb.client_ns.clone(), pem.cert());
        let facts = blocking("aioquic client", move || {
            aioquic_client(&ca, addr, Some(&ns))
        })
        .await;
        eprintln!("AF_XDP {mode:?}: {facts}");
        check_aioquic_client_run(&format!("AF_XDP {mode:?}"), &facts, &mut ended).await;
        ep.close(VarInt::from_u32(0), b"");
        guard("idle", ep.wait_idle()).await;
        drop(ep);
        drop(attachment);
    }
}

/// Our async client over AF_XDP (the program attached for its own port, transmitting
/// through the kernel) against aioquic's echo server in the peer namespace, both modes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_async_client_over_af_xdp_against_aioquic() {
    if !aioquic() || !xdp_quic_control::testing::privileged("async client over AF_XDP") {
        return;
    }
    use xdp_quic_control::testbed::Testbed;
    let tb = Testbed::create(&xdp_quic_control::testing::unique_name("xz"), 2, 222).unwrap();
    // Our AF_XDP reader is on the client's side: full checksums from the server's.
    tb.full_checksums_from_server().unwrap();
    for mode in MODES {
        let pem = Pem::new();
        let server = AioquicServer::start(&pem, tb.server_v4.into(), Some(&tb.server_ns));
        let iface = tb.client_if.clone();
        let bind = |b: Builder| {
            tb.in_client(|| {
                let mut setup = XdpSetup::new(&iface, "0.0.0.0:0".parse().unwrap(), vec![0, 1]);
                let services = xdp_quic::engine::bind_services(setup.listen, 2).unwrap();
                setup
                    .listen
                    .set_port(services[0].local_addr().unwrap().port());
                setup.tx = xdp_quic::backend::xsk::TxMode::Kernel;
                let steering = xdp_quic_control::xdp::socket_map::ServerSteering::attach_own(
                    &iface,
                    setup.listen,
                    xdp_quic_control::xdp::AttachMode::Native,
                )
                .unwrap();
                b.bind_xdp_on(&setup, Box::new(steering), services).unwrap()
            })
            .unwrap()
        };
        let got = run_our_client(mode, &pem, server.addr, bind).await;
        check_our_client_run(&format!("AF_XDP {mode:?}"), got, &server);
        // The endpoint's engine, and with it the program it attached, goes on a thread of
        // its own once the last handle is dropped: the next mode attaches once it is gone.
        let (ns, iface) = (tb.client_ns.clone(), iface.clone());
        tokio::task::spawn_blocking(move || {
            xdp_quic_control::testing::wait_until(
                "the first client's program detached",
                Duration::from_secs(30),
                || xdp_quic_control::testing::xdp_prog_on(&ns, &iface).is_none(),
            )
        })
        .await
        .unwrap();
    }
}

/// Read futures the server of [`quinn_client_against_the_async_server_over_af_xdp`] has
/// dropped (the client waits for the first before it trickles the rest).
static DROPPED_READS: AtomicU32 = AtomicU32::new(0);

/// What the server of [`quinn_client_against_the_async_server_over_af_xdp`] does with a
/// stream, by its first octet: `E` echo; `D` wait for the first octet of the data, then read
/// the rest with a short timeout around every read (dropping read futures while the client
/// trickles: all after data arrived, none on a stream with nothing yet sent), then answer the
/// number of dropped reads and the data.
async fn echo_or_drop_reads(ep: Endpoint) {
    // (The read futures it drops are counted in `DROPPED_READS`.)
    while let Some(incoming) = ep.accept().await {
        tokio::spawn(async move {
            let Ok(conn) = incoming.await else { return };
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tokio::spawn(async move {
                    let mut kind = [0u8; 1];
                    if recv.read_exact(&mut kind).await.is_err() {
                        return;
                    }
                    if kind[0] == b'E' {
                        let _ = async_echo::echo_stream(send, recv).await;
                        return;
                    }
                    let mut first = [0u8; 1];
                    if recv.read_exact(&mut first).await.is_err() {
                        return;
                    }
                    let Ok((rest, dropped)) =
                        read_dropping_futures(&mut recv, &DROPPED_READS).await
                    else {
                        return;
                    };
                    let got = [&first[..], &rest[..]].concat();
                    let _ = send.write_all(&dropped.to_be_bytes()).await;
                    let _ = send.write_all(&got).await;
                    let _ = send.finish();
                    let _ = send.stopped().await;
                });
            }
        });
    }
}

/// quinn's client in the peer namespace against our async server over AF_XDP, both modes:
/// 10 MB each way byte-exact, a read future dropped again and again losing no data, and the
/// endpoint's shutdown reaching the client with its code. (The same cases over kernel UDP:
/// `async_api.rs`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quinn_client_against_the_async_server_over_af_xdp() {
    if !xdp_quic_control::testing::privileged("quinn client, async server over AF_XDP") {
        return;
    }
    use xdp_quic_control::testbed::Testbed;
    let tb = Testbed::create(&xdp_quic_control::testing::unique_name("xw"), 2, 242).unwrap();
    for mode in MODES {
        let pem = Pem::new();
        let engine = EngineBuilder::default()
            .workers(2)
            .server(tls::server_config(pem.identity(), &[async_echo::ALPN]).unwrap())
            .transport(transport())
            .drain_timeout(DRAIN);
        let b = Builder::new(engine);
        let b = match mode {
            Mode::AppRuntime => b,
            Mode::ThreadPerCore => b.thread_per_core(echo_or_drop_reads),
        };
        let (ep, attachment) = bind_over_xdp(&tb, b);
        if mode == Mode::AppRuntime {
            tokio::spawn(echo_or_drop_reads(ep.clone()));
        }
        let addr = SocketAddr::new(tb.server_v4.into(), 4433);
        let cert = tls::certs_from_pem_file(&pem.cert()).unwrap().remove(0);
        // The client runs on a runtime of its own inside the peer namespace; it reports the
        // connection's end once the server has closed it.
        let (go_close, closing) = std_mpsc::channel::<()>();
        let ep2 = ep.clone();
        let closer = tokio::spawn(async move {
            let _ = blocking("the client's go", move || closing.recv()).await;
            ep2.close(VarInt::from_u32(9), b"shutdown");
        });
        let ns = tb.client_ns.clone();
        let (echoed, dropped, trickled, end) = blocking("quinn client", move || {
            xdp_quic_control::testbed::in_netns(&ns, move || {
                tokio::runtime::Runtime::new()
                    .unwrap()
                    .block_on(async move {
                        let mut client =
                            quinn::Endpoint::client("0.0.0.0:0".parse().unwrap()).unwrap();
                        client
                            .set_default_client_config(quinn_client_config(cert, async_echo::ALPN));
                        let conn = quinn_connect(&client, addr).await;
                        let data = payload(21, 10 << 20);
                        let mut tagged = b"E".to_vec();
                        tagged.extend_from_slice(&data);
                        let echoed = quinn_echo(&conn, Bytes::from(tagged)).await.unwrap();
                        let echoed = echoed[..] == data[..];
                        let (mut send, mut recv) = conn.open_bi().await.unwrap();
                        let slow = payload(22, 300_000);
                        // Reset before the stream carries anything: every drop counted is
                        // the server's, on this stream, after the first piece's data came.
                        DROPPED_READS.store(0, Ordering::Release);
                        for (i, piece) in slow.chunks(3_000).enumerate() {
                            if i == 0 {
                                // The tag goes with the first piece.
                                send.write_all(&[b"D", piece].concat()).await.unwrap();
                                // The server times out waiting for more: a read future
                                // dropped, for sure, with the rest still to come.
                                wait_for_a_dropped_read(&DROPPED_READS).await;
                            } else {
                                send.write_all(piece).await.unwrap();
                            }
                            // Trickle, so that the server's reads time out in between.
                            tokio::time::sleep(Duration::from_millis(1)).await;
                        }
                        send.finish().unwrap();
                        let back = recv.read_to_end(usize::MAX).await.unwrap();
                        let dropped = u32::from_be_bytes(back[..4].try_into().unwrap());
                        let trickled = back[4..] == slow[..];
                        go_close.send(()).unwrap();
                        let end = conn.closed().await;
                        (echoed, dropped, trickled, end)
                    })
            })
            .unwrap()
        })
        .await;
        closer.await.unwrap();
        assert!(echoed, "{mode:?}: 10 MB echoed byte-exact over AF_XDP");
        assert!(
            dropped > 0,
            "{mode:?}: no read future was dropped: proves nothing"
        );
        assert!(
            trickled,
            "{mode:?}: data intact after {dropped} dropped reads"
        );
        assert!(
            matches!(&end, quinn::ConnectionError::ApplicationClosed(c)
                if c.error_code == VarInt::from_u32(9) && &c.reason[..] == b"shutdown"),
            "{mode:?}: {end:?}"
        );
        guard("idle", ep.wait_idle()).await;
        drop(ep);
        drop(attachment);
    }
}
