//! What a peer can make the server hold: the memory of idle connections, of one hostile
//! connection that never reads, and the memory given back after a burst. The server is the
//! `xdp-quic` binary (its RSS is read from /proc); the clients are engines of this process.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use std::sync::atomic::AtomicU64;

use xdp_quic::{tls, Conn, ConnId, ConnectionError, Ctx, EngineBuilder, Handler, StreamId};
use xdp_quic_control::testing::wait_until;

const BIN: &str = env!("CARGO_BIN_EXE_xdp-quic");
const HANG: Duration = Duration::from_secs(120);

struct Server {
    child: Child,
    addr: SocketAddr,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut line = String::new();
        while !line.contains("serving") {
            line.clear();
            assert!(err.read_line(&mut line).unwrap() > 0, "server exited");
        }
        let addr = line
            .split(" on ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap();
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        Server { child, addr }
    }

    /// Resident memory of the server process, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Opens connections when told to and leaves them idle.
struct Idle {
    to: SocketAddr,
    up: Arc<AtomicUsize>,
}

impl Handler for Idle {
    fn connected(&mut self, _conn: &mut Conn<'_>) {
        self.up.fetch_add(1, Ordering::Relaxed);
    }
    fn closed(&mut self, _ctx: &mut Ctx<'_>, _id: ConnId, r: &ConnectionError) {
        eprintln!("idle connection closed: {r}");
    }
}

fn client_builder(alpn: &[u8], workers: usize) -> EngineBuilder {
    EngineBuilder::default()
        .workers(workers)
        .client(tls::client_config(tls::Trust::InsecureAnyCertificate, &[alpn]).unwrap())
        .drain_timeout(Duration::from_millis(300))
}

/// Waits until `value()` has not changed for 10 reads 100 ms apart, and returns it.
fn settled(what: &str, mut value: impl FnMut() -> u64) -> u64 {
    let end = Instant::now() + HANG;
    let (mut last, mut same) = (value(), 0);
    while same < 10 {
        assert!(Instant::now() < end, "{what}: still moving after {HANG:?}");
        std::thread::sleep(Duration::from_millis(100));
        let v = value();
        // RSS moves by a page or two without anything happening.
        if v.abs_diff(last) <= last / 200 {
            same += 1;
        } else {
            same = 0;
        }
        last = v;
    }
    last
}

/// Idle connections cost at most 32 KiB each, and the server gives the memory back once they
/// close.
#[test]
fn idle_connections_cost_at_most_32_kib_each_and_the_memory_returns() {
    let server = Server::start(&["--app", "echo", "--workers", "2"]);
    let before = settled("server RSS at start", || server.rss_kib());
    let up = Arc::new(AtomicUsize::new(0));
    const N: usize = 3000;
    let u = up.clone();
    let to = server.addr;
    let client = client_builder(b"echo", 2)
        .start_udp_client("127.0.0.1:0".parse().unwrap(), move |_| Idle {
            to,
            up: u.clone(),
        })
        .unwrap();
    // In waves of 200, as clients arrive over time (a burst of 3,000 concurrent handshakes
    // would measure the handshakes' transient memory instead).
    for wave in 1..=N / 200 {
        for w in 0..2 {
            client
                .handle()
                .post(w, |h: &mut Idle, ctx| {
                    for _ in 0..100 {
                        ctx.connect(h.to, "localhost").unwrap();
                    }
                })
                .expect("the worker is running");
        }
        wait_until("a wave of connections up", HANG, || {
            up.load(Ordering::Relaxed) == wave * 200
        });
    }
    let with = settled("server RSS with idle connections", || server.rss_kib());
    let per = (with.saturating_sub(before)) * 1024 / N as u64;
    eprintln!("server RSS {before} KiB -> {with} KiB with {N} idle connections: {per} B each");
    assert!(per <= 32 * 1024, "{per} octets per idle connection");

    client.shutdown(0u32.into(), b"bye").unwrap();
    // The server trims once its connection count has fallen.
    let grown = with - before;
    wait_until("memory given back", HANG, || {
        eprintln!("rss {}", server.rss_kib());
        server.rss_kib() <= before + grown / 4
    });
    eprintln!("after they closed: {} KiB", server.rss_kib());
}

/// Opens as many bidirectional streams as the server allows and writes on each until flow
/// control stops it; never reads.
struct NeverReads {
    to: SocketAddr,
    written: Arc<AtomicU64>,
}

impl NeverReads {
    fn fill(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        let zeros = [0u8; 16 * 1024];
        while let Ok(n) = conn.write(s, &zeros) {
            if n == 0 {
                break;
            }
            self.written.fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    fn open_all(&mut self, conn: &mut Conn<'_>) {
        while let Some(s) = conn.open_bi() {
            self.fill(conn, s);
        }
    }
}

impl Handler for NeverReads {
    fn connected(&mut self, conn: &mut Conn<'_>) {
        self.open_all(conn);
    }
    fn streams_available(&mut self, conn: &mut Conn<'_>) {
        self.open_all(conn);
    }
    fn stream_writable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        self.fill(conn, s);
    }
    fn closed(&mut self, _ctx: &mut Ctx<'_>, _id: ConnId, r: &ConnectionError) {
        eprintln!("the hostile connection closed: {r}");
    }
}

/// One connection that sends on every stream it may open and never reads what comes back
/// pins at most 64 MiB of the server.
#[test]
fn a_connection_that_never_reads_pins_at_most_64_mib() {
    let server = Server::start(&["--app", "echo"]);
    let before = settled("server RSS at start", || server.rss_kib());
    let written = Arc::new(AtomicU64::new(0));
    let w = written.clone();
    let to = server.addr;
    let client = client_builder(b"echo", 1)
        .start_udp_client("127.0.0.1:0".parse().unwrap(), move |_| NeverReads {
            to,
            written: w.clone(),
        })
        .unwrap();
    client
        .handle()
        .post(0, |h: &mut NeverReads, ctx| {
            ctx.connect(h.to, "localhost").unwrap();
        })
        .expect("the worker is running");
    wait_until("the upload starts", HANG, || {
        written.load(Ordering::Relaxed) > 0
    });
    let sent = settled("the client blocked by flow control", || {
        written.load(Ordering::Relaxed)
    });
    let with = settled("server RSS", || server.rss_kib());
    let grown = with.saturating_sub(before);
    eprintln!(
        "client wrote {} MiB and is blocked; server RSS {before} KiB -> {with} KiB (+{} MiB)",
        sent >> 20,
        grown >> 10
    );
    assert!(grown <= 64 * 1024, "one connection pinned {grown} KiB");
    client.shutdown(0u32.into(), b"bye").unwrap();
}
