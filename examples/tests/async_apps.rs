//! The applications on the async API: the `async-echo` binary (kernel UDP in both modes, and
//! AF_XDP in a testbed, driven by aioquic's echo client) and the async hq-interop server
//! ([`xdp_quic_examples::async_hq`]: files byte-exact, errors, links not followed).
//!
//! Run: `cargo test -p xdp-quic-examples --test async_apps`

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc as std_mpsc;

use bytes::Bytes;
use common::*;
use xdp_quic::tokio::Builder;
use xdp_quic::{tls, EngineBuilder, VarInt};
use xdp_quic_examples::async_hq::{self, AsyncHq, HqLimits};

const BIN: &str = env!("CARGO_BIN_EXE_async-echo");
const ECHO_PY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../scripts/interop/aioquic_echo.py"
);

/// A scratch directory, removed on drop.
struct Scratch(std::path::PathBuf);

impl Scratch {
    fn new(what: &str) -> Scratch {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("xq-{what}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The `async-echo` binary, killed on drop if it is still running.
struct Server {
    child: Child,
    lines: std_mpsc::Receiver<String>,
    /// The address it says it serves on (the port it was given, or the one it picked).
    addr: SocketAddr,
}

impl Server {
    /// Starts it with `args` (inside `netns` if given), writing its certificate to
    /// `cert_out`; returns once it says it serves, and where.
    fn start(args: &[&str], cert_out: &std::path::Path, netns: Option<&str>) -> Server {
        let mut cmd = command_in(netns, BIN);
        let mut child = cmd
            .args(args)
            .arg("--cert-out")
            .arg(cert_out)
            .stdin(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, lines) = std_mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut s = Server {
            child,
            lines,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        // "async-echo: serving ADDR over BACKEND[, thread-per-core]"
        let line = s.wait_for("async-echo: serving ");
        s.addr = line
            .split("async-echo: serving ")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("async-echo: no address in {line:?}"));
        s
    }

    fn wait_for(&self, what: &str) -> String {
        loop {
            let line = self
                .lines
                .recv_timeout(HANG)
                .unwrap_or_else(|_| panic!("async-echo never said {what:?}"));
            if line.contains(what) {
                return line;
            }
        }
    }

    /// Ctrl-C; the exit status.
    fn interrupt(mut self) -> std::process::ExitStatus {
        // SAFETY: kill has no memory preconditions; the pid is our child's, not yet reaped.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        self.wait_for("async-echo: closing");
        self.child.wait().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// aioquic's echo client (10 MB, 1,000 streams, datagrams) against `addr`, in `netns` if
/// given; its facts line.
fn aioquic_client(ca: &std::path::Path, addr: SocketAddr, netns: Option<&str>) -> String {
    let mut cmd = command_in(netns, "python3");
    let out = cmd
        .args([ECHO_PY, "client", "--host", &addr.ip().to_string()])
        .args(["--port", &addr.port().to_string(), "--ca"])
        .arg(ca)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let facts = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "aioquic echo client: {facts} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    facts
}

#[test]
fn the_async_echo_binary_serves_in_both_modes_and_stops_on_ctrl_c() {
    if !aioquic() {
        return;
    }
    for tpc in [false, true] {
        let dir = Scratch::new("async-echo");
        let cert = dir.0.join("cert.pem");
        // It picks a free port itself and says which.
        let mut args = vec!["--listen", "127.0.0.1:0", "--workers", "2"];
        if tpc {
            args.push("--thread-per-core");
        }
        let server = Server::start(&args, &cert, None);
        let addr = server.addr;
        assert!(
            addr.ip().is_loopback() && addr.port() != 0,
            "serving on {addr}"
        );
        let facts = aioquic_client(&cert, addr, None);
        assert!(facts.contains("bulk=ok streams=1000 "), "{facts}");
        assert!(!facts.contains("datagrams=0"), "{facts}");
        let status = server.interrupt();
        assert!(status.success(), "thread-per-core {tpc}: {status}");
    }
}

#[test]
fn the_async_echo_binary_refuses_bad_arguments() {
    for (args, want) in [
        (
            &["--listen", "127.0.0.1:0", "--backend", "xdp"][..],
            "--iface",
        ),
        (
            &["--listen", "127.0.0.1:0", "--iface", "lo"][..],
            "--iface is for --backend xdp",
        ),
        (
            &[
                "--listen",
                "127.0.0.1:4433",
                "--backend",
                "xdp",
                "--iface",
                "no-such-if0",
            ][..],
            "no interface",
        ),
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// `async-echo --backend xdp` in a testbed's server namespace, aioquic's client in the peer
/// namespace; the program is gone after Ctrl-C.
#[test]
fn the_async_echo_binary_serves_over_af_xdp() {
    if !aioquic() || !xdp_quic_control::testing::privileged("async-echo over AF_XDP") {
        return;
    }
    use xdp_quic_control::testbed::Testbed;
    let tb = Testbed::create(&xdp_quic_control::testing::unique_name("xk"), 2, 223).unwrap();
    for tpc in [false, true] {
        let dir = Scratch::new("async-echo-xdp");
        let cert = dir.0.join("cert.pem");
        let mut args = vec![
            "--listen",
            "0.0.0.0:4433",
            "--backend",
            "xdp",
            "--iface",
            &tb.server_if,
        ];
        if tpc {
            args.push("--thread-per-core");
        }
        let server = Server::start(&args, &cert, Some(&tb.server_ns));
        assert!(
            xdp_quic_control::testing::xdp_prog_on(&tb.server_ns, &tb.server_if).is_some(),
            "the XDP program is attached while it serves"
        );
        let addr = SocketAddr::new(tb.server_v4.into(), 4433);
        let facts = aioquic_client(&cert, addr, Some(&tb.client_ns));
        assert!(facts.contains("bulk=ok streams=1000 "), "{facts}");
        let status = server.interrupt();
        assert!(status.success(), "thread-per-core {tpc}: {status}");
        assert_eq!(
            xdp_quic_control::testing::xdp_prog_on(&tb.server_ns, &tb.server_if),
            None,
            "the program is removed at exit"
        );
    }
}

/// A site for the hq server: files, a link out of the root, a FIFO.
fn site() -> (Scratch, Vec<(String, Bytes)>) {
    let dir = Scratch::new("async-hq");
    let www = dir.0.join("www");
    std::fs::create_dir_all(www.join("sub")).unwrap();
    let files = vec![
        ("big.bin".to_string(), payload(1, 3_000_000)),
        ("sub/small.txt".to_string(), payload(2, 700)),
        ("empty".to_string(), Bytes::new()),
    ];
    for (name, body) in &files {
        std::fs::write(www.join(name), body).unwrap();
    }
    std::fs::write(dir.0.join("secret"), b"outside the root").unwrap();
    std::os::unix::fs::symlink(dir.0.join("secret"), www.join("link")).unwrap();
    let fifo = std::ffi::CString::new(www.join("fifo").to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    (dir, files)
}

/// One hq request over quinn: the body, or the reset code.
async fn get(conn: &quinn::Connection, request: &[u8]) -> Result<Vec<u8>, u64> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    send.write_all(request).await.unwrap();
    send.finish().unwrap();
    match recv.read_to_end(usize::MAX).await {
        Ok(body) => Ok(body),
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => Err(code.into_inner()),
        Err(e) => panic!("{e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_async_hq_server_serves_files_and_refuses_what_it_must() {
    let (dir, files) = site();
    for tpc in [false, true] {
        let (id, cert) = identity();
        let engine = EngineBuilder::default()
            .workers(2)
            .server(tls::server_config(id, &[async_hq::ALPN]).unwrap())
            .drain_timeout(DRAIN);
        let limits = HqLimits {
            files_per_connection: 2,
            request_timeout: std::time::Duration::from_millis(300),
            ..HqLimits::default()
        };
        let hq = AsyncHq::new(&dir.0.join("www"), limits).unwrap();
        let any = "127.0.0.1:0".parse().unwrap();
        let ep = if tpc {
            let hq = hq.clone();
            Builder::new(engine)
                .thread_per_core(move |ep| hq.clone().serve(ep))
                .bind_udp(any)
                .unwrap()
        } else {
            let ep = Builder::new(engine).bind_udp(any).unwrap();
            tokio::spawn(hq.serve(ep.clone()));
            ep
        };
        let client = quinn_client(cert, async_hq::ALPN);
        let conn = quinn_connect(&client, ep.local_addr().unwrap()).await;
        // More requests at once than the connection's slots: they wait, none is refused.
        let mut all = tokio::task::JoinSet::new();
        for round in 0..3 {
            for (name, body) in files.clone() {
                let conn = conn.clone();
                all.spawn(async move {
                    let got = get(&conn, format!("GET /{name}\r\n").as_bytes()).await;
                    assert_same(&format!("{name} round {round}"), &got.unwrap(), &body);
                });
            }
        }
        while let Some(r) = guard("hq requests", all.join_next()).await {
            r.unwrap();
        }
        let refused: [(&[u8], VarInt); 6] = [
            (b"GET /missing\r\n", async_hq::NOT_FOUND),
            (b"GET /link\r\n", async_hq::NOT_FOUND),
            (b"GET /fifo\r\n", async_hq::NOT_FOUND),
            (b"GET /../secret\r\n", async_hq::NOT_FOUND),
            (b"POST /big.bin\r\n", async_hq::BAD_REQUEST),
            (&[b'G'; async_hq::MAX_REQUEST + 1], async_hq::BAD_REQUEST),
        ];
        for (request, code) in refused {
            let got = guard("refused request", get(&conn, request)).await;
            assert_eq!(
                got,
                Err(code.into_inner()),
                "{:?}",
                String::from_utf8_lossy(&request[..request.len().min(40)])
            );
        }
        // A whole line is a request, as in the callback server, though the client leaves its
        // stream open (it was answered only at the stream's end, after the request timeout).
        let (name, body) = files[0].clone();
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(format!("GET /{name}\r\n").as_bytes())
            .await
            .unwrap();
        let got = guard("a line on an open stream", recv.read_to_end(usize::MAX)).await;
        assert_same(&format!("{name} on an open stream"), &got.unwrap(), &body);
        drop(send);
        // A request line that never ends is refused once its time is up.
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"GET /big.bin").await.unwrap();
        let got = guard("a request that never ends", recv.read_to_end(usize::MAX)).await;
        assert!(
            matches!(
                got,
                Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code)))
                    if code == async_hq::REQUEST_TIMED_OUT
            ),
            "{got:?}"
        );
        conn.close(VarInt::from_u32(0), b"");
        ep.close(VarInt::from_u32(0), b"");
        guard("idle", ep.wait_idle()).await;
    }
}

/// A client that does not take an answer's end gives its slot back after `send_stall`, its
/// answer reset with STALLED, though the whole answer fit in the stream's queue: the slot is
/// held until the end is acknowledged. (Before, a file smaller than the queue released its
/// slot once queued, so a client that never read held up to the queue's size per stream, with
/// no deadline.) Its next request, waiting for that slot, is served.
/// An async hq server of one file slot per connection, answers reset after `stall` without
/// progress, serving `mid` and `small`; and a quinn client connected to it whose streams have
/// 16 KB of window (it cannot take `mid` whole without reading), on `transport`.
async fn one_slot_server(
    name: &str,
    mid: &[u8],
    small: &[u8],
    stall: std::time::Duration,
    mut transport: quinn::TransportConfig,
) -> (
    Scratch,
    xdp_quic::tokio::Endpoint,
    quinn::Endpoint,
    quinn::Connection,
) {
    let dir = Scratch::new(name);
    let www = dir.0.join("www");
    std::fs::create_dir_all(&www).unwrap();
    std::fs::write(www.join("mid"), mid).unwrap();
    std::fs::write(www.join("small"), small).unwrap();
    let (id, cert) = identity();
    let engine = EngineBuilder::default()
        .server(tls::server_config(id, &[async_hq::ALPN]).unwrap())
        .drain_timeout(DRAIN);
    let limits = HqLimits {
        files_per_connection: 1,
        send_stall: stall,
        ..HqLimits::default()
    };
    let hq = AsyncHq::new(&www, limits).unwrap();
    let ep = Builder::new(engine)
        .bind_udp("127.0.0.1:0".parse().unwrap())
        .unwrap();
    tokio::spawn(hq.serve(ep.clone()));
    let mut config = quinn_client_config(cert, async_hq::ALPN);
    transport.stream_receive_window(VarInt::from_u32(16_000));
    config.transport_config(std::sync::Arc::new(transport));
    let mut client = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    client.set_default_client_config(config);
    let conn = quinn_connect(&client, ep.local_addr().unwrap()).await;
    (dir, ep, client, conn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_async_hq_server_takes_back_the_slot_of_an_answer_not_taken() {
    let (mid, small) = (payload(3, 100_000), payload(4, 700));
    let (_dir, ep, _client, conn) = one_slot_server(
        "async-hq-stall",
        &mid,
        &small,
        std::time::Duration::from_millis(300),
        quinn_transport(),
    )
    .await;
    // Its answer has begun: it holds the one slot (a little is read here, the rest not).
    let mut unread = begin_unread_answer(&conn).await;
    // Waits for the one slot, which the unread answer holds until its stall.
    let got = guard("the request after it", get(&conn, b"GET /small\r\n")).await;
    assert_same("small", &got.unwrap(), &small);
    let got = guard("the unread answer", unread.read_to_end(usize::MAX)).await;
    assert!(
        matches!(
            got,
            Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code)))
                if code == async_hq::STALLED
        ),
        "{got:?}"
    );
    conn.close(VarInt::from_u32(0), b"");
    ep.close(VarInt::from_u32(0), b"");
    guard("idle", ep.wait_idle()).await;
}

/// Requests waiting for a file slot end when the peer stops their streams: their tasks do not
/// stay parked behind slots others hold (hq drops such a request at once). Before, each
/// stopped request kept a task and its stream until a slot came, however many there were.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_async_hq_server_drops_waiting_requests_the_peer_stopped() {
    // Alive however long the requests wait (the idle timeout would end them all), and the
    // unread answer holds its slot past any wait of this test (no stall reset).
    let mut t = quinn_transport();
    t.keep_alive_interval(Some(std::time::Duration::from_secs(1)));
    let (_dir, ep, _client, conn) = one_slot_server(
        "async-hq-waiting",
        &payload(3, 100_000),
        &payload(4, 700),
        std::time::Duration::from_secs(3600),
        t,
    )
    .await;
    // An answer not read holds the connection's one slot.
    let _unread = begin_unread_answer(&conn).await;
    let tasks = || {
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks()
    };
    let before = tasks();
    // 20 requests wait for the slot, a task each...
    let mut waiting = Vec::new();
    for _ in 0..20 {
        let (mut send, recv) = conn.open_bi().await.unwrap();
        send.write_all(b"GET /small\r\n").await.unwrap();
        send.finish().unwrap();
        waiting.push(recv);
    }
    guard("the waiting requests' tasks", async {
        while tasks() < before + 20 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    // ...until the peer stops them: at least those 20 end (counted from the peak: the
    // holder's answer may start or end a task of its own meanwhile).
    let peak = tasks();
    for recv in &mut waiting {
        recv.stop(VarInt::from_u32(7)).unwrap();
    }
    guard("the stopped requests' tasks end", async {
        while tasks() + 20 > peak {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    conn.close(VarInt::from_u32(0), b"");
    ep.close(VarInt::from_u32(0), b"");
    guard("idle", ep.wait_idle()).await;
}

/// Asks for `/mid` on `conn` and reads the first chunk of its answer, no more: the answer
/// has begun and holds its file slot. Returns the rest, unread.
async fn begin_unread_answer(conn: &quinn::Connection) -> quinn::RecvStream {
    let (mut send, mut unread) = conn.open_bi().await.unwrap();
    send.write_all(b"GET /mid\r\n").await.unwrap();
    send.finish().unwrap();
    let first = guard("the answer's start", unread.read_chunk(1_000, true)).await;
    assert!(first.unwrap().is_some_and(|c| !c.bytes.is_empty()));
    unread
}
