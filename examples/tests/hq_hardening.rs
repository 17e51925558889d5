//! The hq-interop file server under attack: entries of its root renamed under it (symbolic
//! links to secrets and to directories outside, FIFOs), and clients that open many streams
//! and read none. Plus the safe open itself, both resolvers, on every kind of file.
//!
//! Our server engine on 127.0.0.1, quinn clients. Waits poll the server's state with the
//! hang guard of `common` as the only deadline; no timing thresholds. The tests of this file
//! run one at a time (they count the process's descriptors).
//!
//! Run: `cargo test -p xdp-quic-examples --test hq_hardening`

mod common;

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use xdp_quic::{Engine, EngineHandle, TransportConfig, VarInt};
use xdp_quic_examples::files::{FileRoot, Resolver};
use xdp_quic_examples::hq::{self, HqLimits, HqServer, HqState};

/// Descriptors the process may open besides the files being served, while a test samples.
const SLACK: usize = 8;

static SERIAL: Mutex<()> = Mutex::new(());

/// One test at a time: the descriptor counts are per process.
fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `test` on a runtime of its own (two threads), alone.
fn on_runtime(test: impl std::future::Future<Output = ()>) {
    let _alone = serial();
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
        .block_on(test)
}

/// A directory of its own, removed when the test ends (passed or failed).
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "xq-hq-hardening-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Removes links, not what they point to.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn c_path(p: &Path) -> CString {
    CString::new(p.as_os_str().as_bytes()).unwrap()
}

fn mkfifo(p: &Path) {
    let c = c_path(p);
    // SAFETY: a NUL-terminated path that outlives the call.
    let r = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(
        r,
        0,
        "mkfifo {}: {}",
        p.display(),
        io::Error::last_os_error()
    );
}

/// Swaps the names `a` and `b` atomically (whatever they are: file, link, directory, FIFO).
fn exchange(a: &Path, b: &Path) {
    let (ca, cb) = (c_path(a), c_path(b));
    // SAFETY: two NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            ca.as_ptr(),
            libc::AT_FDCWD,
            cb.as_ptr(),
            libc::RENAME_EXCHANGE,
        )
    };
    assert_eq!(r, 0, "renameat2: {}", io::Error::last_os_error());
}

/// A thread that swaps pairs of names in a loop, an even number of times per pair (so they
/// end as they began), until stopped or dropped.
struct Swapper {
    stop: Arc<AtomicBool>,
    rounds: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Swapper {
    fn start(pairs: Vec<(PathBuf, PathBuf)>) -> Swapper {
        let stop = Arc::new(AtomicBool::new(false));
        let rounds = Arc::new(AtomicU64::new(0));
        let (s, r) = (stop.clone(), rounds.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                for _ in 0..2 {
                    for (a, b) in &pairs {
                        exchange(a, b);
                    }
                }
                r.fetch_add(1, Ordering::Relaxed);
            }
        });
        Swapper {
            stop,
            rounds,
            thread: Some(thread),
        }
    }

    fn rounds(&self) -> u64 {
        self.rounds.load(Ordering::Relaxed)
    }

    /// Stops the thread; returns its rounds (the names are as they began).
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.join().expect("swapper thread");
        }
        self.rounds()
    }
}

impl Drop for Swapper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Descriptors this process has open.
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Our hq server on loopback, one worker (so every request meets the same caps), up to
/// `streams` concurrent streams per connection.
fn server(
    www: &Path,
    limits: HqLimits,
    streams: u32,
) -> (Engine<HqServer>, rustls::pki_types::CertificateDer<'static>) {
    let (b, cert) = our_server(1, hq::ALPN);
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(streams));
    let www = www.to_path_buf();
    let engine = b
        .transport(t)
        .start_udp("127.0.0.1:0".parse().unwrap(), move |_| {
            HqServer::with_limits(&www, limits).unwrap()
        })
        .unwrap();
    (engine, cert)
}

/// A quinn client endpoint whose connections have `stream_window` octets of receive window
/// per stream (a client that does not read holds that much per stream).
fn client(
    cert: rustls::pki_types::CertificateDer<'static>,
    stream_window: Option<u32>,
) -> quinn::Endpoint {
    let (mut cfg, _) = quinn_client_config_with(cert, hq::ALPN, ClientTls::default());
    let mut t = quinn_transport();
    if let Some(w) = stream_window {
        t.stream_receive_window(VarInt::from_u32(w));
    }
    cfg.transport_config(Arc::new(t));
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(cfg);
    ep
}

/// What `read` reads of worker 0's server.
async fn read_server<T: Send + 'static>(
    engine: &Engine<HqServer>,
    read: impl FnOnce(&HqServer) -> T + Send + 'static,
) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel();
    engine
        .handle()
        .post(0, move |s, _| {
            let _ = tx.send(read(s));
        })
        .expect("the worker is running");
    guard("the server's answer", rx).await.unwrap()
}

/// The server's state (summed over its workers).
async fn state(h: &EngineHandle<HqServer>) -> HqState {
    let mut sum = HqState::default();
    for w in 0..h.workers() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        h.post(w, move |s, _| {
            let _ = tx.send(s.state());
        })
        .expect("the worker is running");
        let s = guard("server state", rx).await.expect("worker answers");
        sum.open += s.open;
        sum.waiting += s.waiting;
        sum.streams += s.streams;
        sum.connections += s.connections;
    }
    sum
}

/// Polls the server's state until `ok` holds (hang guard: [`HANG`]).
async fn wait_state(
    h: &EngineHandle<HqServer>,
    what: &str,
    ok: impl Fn(&HqState) -> bool,
) -> HqState {
    let deadline = Instant::now() + HANG;
    loop {
        let s = state(h).await;
        if ok(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {s:?} after {HANG:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[derive(Debug, PartialEq, Eq)]
enum Got {
    Body(Vec<u8>),
    Reset(VarInt),
    Failed(String),
}

/// Sends `GET path` on a new stream of `conn` and reads the answer to its end.
async fn get(conn: &quinn::Connection, path: &str) -> Got {
    let (mut send, recv) = match conn.open_bi().await {
        Ok(s) => s,
        Err(e) => return Got::Failed(e.to_string()),
    };
    // A refusal may stop our side as it is written: what counts is the answer.
    let _ = send.write_all(format!("GET {path}\r\n").as_bytes()).await;
    let _ = send.finish();
    read_answer(recv).await
}

async fn read_answer(mut recv: quinn::RecvStream) -> Got {
    match recv.read_to_end(usize::MAX).await {
        Ok(b) => Got::Body(b),
        Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => Got::Reset(code),
        Err(e) => Got::Failed(e.to_string()),
    }
}

/// Sends `GET path` on a new stream and returns the stream without reading it.
async fn request_unread(
    conn: &quinn::Connection,
    path: &str,
) -> (quinn::SendStream, quinn::RecvStream) {
    let (mut send, recv) = guard("open a stream", conn.open_bi()).await.unwrap();
    send.write_all(format!("GET {path}\r\n").as_bytes())
        .await
        .unwrap();
    send.finish().unwrap();
    (send, recv)
}

/// Runs `n` GETs over `conn`, `parallel` at a time, cycling through `paths`; returns
/// (path index, answer) of each.
async fn get_many(
    conn: &quinn::Connection,
    paths: &[&'static str],
    n: usize,
    parallel: usize,
) -> Vec<(usize, Got)> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..parallel {
        let (conn, next, paths) = (conn.clone(), next.clone(), paths.to_vec());
        tasks.spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return out;
                }
                let p = i % paths.len();
                out.push((p, get(&conn, paths[p]).await));
            }
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = guard("requests", tasks.join_next()).await {
        all.extend(r.unwrap());
    }
    all
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------
// The safe open
// ---------------------------------------------------------------------------------------------

/// A root with one of everything, and a secret beside it.
fn zoo() -> TempDir {
    let t = TempDir::new("zoo");
    let www = t.join("www");
    std::fs::create_dir_all(www.join("sub/deeper")).unwrap();
    std::fs::create_dir_all(t.join("outside")).unwrap();
    std::fs::write(www.join("a.txt"), b"a").unwrap();
    std::fs::write(www.join("sub/deeper/b.txt"), b"b").unwrap();
    std::fs::write(t.join("secret"), b"secret").unwrap();
    std::fs::write(t.join("outside/x"), b"secret").unwrap();
    let link = |to: &str, name: &str| std::os::unix::fs::symlink(to, www.join(name)).unwrap();
    link("a.txt", "in-link");
    link("sub", "in-dir-link");
    link(t.join("secret").to_str().unwrap(), "out-link");
    link("../secret", "out-rel-link");
    link(t.join("outside").to_str().unwrap(), "out-dir-link");
    link("/dev/null", "devnull");
    link("/proc/self/root/etc/passwd", "magic");
    mkfifo(&www.join("fifo"));
    t
}

#[test]
fn safe_open_serves_regular_files_only_and_follows_no_link() {
    let _g = serial();
    let t = zoo();
    let www = t.join("www");
    // A device node and a socket inside the root, where this test may make them (root, and
    // a file system that allows device nodes; otherwise opening it fails anyway).
    let dev = www.join("null-dev");
    let c = c_path(&dev);
    // SAFETY: a NUL-terminated path that outlives the call.
    let _ = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o666, libc::makedev(1, 3)) };
    let _sock = std::os::unix::net::UnixListener::bind(www.join("sock")).unwrap();

    let probed = FileRoot::open(&www).unwrap();
    eprintln!("this kernel: {:?}", probed.resolver());
    for resolver in [Resolver::Openat2, Resolver::Walk] {
        if resolver == Resolver::Openat2 && probed.resolver() != Resolver::Openat2 {
            eprintln!("openat2 unavailable here: only the walk is checked");
            continue;
        }
        let root = FileRoot::with_resolver(&www, resolver).unwrap();
        let read = |p: &str| {
            let mut f = root.open_beneath(Path::new(p))?;
            let mut s = String::new();
            io::Read::read_to_string(&mut f, &mut s)?;
            io::Result::Ok(s)
        };
        assert_eq!(read("a.txt").unwrap(), "a", "{resolver:?}");
        assert_eq!(read("sub/deeper/b.txt").unwrap(), "b", "{resolver:?}");
        assert_eq!(read("sub//deeper/b.txt/").unwrap(), "b", "{resolver:?}");
        for (p, kind) in [
            ("../secret", io::ErrorKind::InvalidInput),
            ("sub/../../secret", io::ErrorKind::InvalidInput),
            ("/etc/passwd", io::ErrorKind::InvalidInput),
            ("./a.txt", io::ErrorKind::InvalidInput),
            ("", io::ErrorKind::InvalidInput),
            ("fifo", io::ErrorKind::InvalidData),
            ("sub", io::ErrorKind::InvalidData),
            ("sock", io::ErrorKind::Other),
            ("nope", io::ErrorKind::NotFound),
        ] {
            let e = read(p).expect_err(p);
            if kind != io::ErrorKind::Other {
                assert_eq!(e.kind(), kind, "{resolver:?} {p}: {e}");
            }
        }
        // Every link is refused, wherever it points, as the last component or on the way.
        for p in [
            "in-link",
            "in-dir-link/deeper/b.txt",
            "out-link",
            "out-rel-link",
            "out-dir-link/x",
            "devnull",
            "magic",
        ] {
            let e = read(p).expect_err(p);
            assert!(
                matches!(e.raw_os_error(), Some(libc::ELOOP) | Some(libc::ENOTDIR)),
                "{resolver:?} {p}: {e}"
            );
        }
        if dev.exists() {
            assert!(read("null-dev").is_err(), "{resolver:?}: a device node");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Races: names swapped under a running server
// ---------------------------------------------------------------------------------------------

#[test]
fn symlinks_swapped_in_never_serve_outside_the_root() {
    on_runtime(symlinks_swapped_in_never_serve_outside_the_root_body());
}

async fn symlinks_swapped_in_never_serve_outside_the_root_body() {
    const SECRET: &[u8] = b"SECRET-SHADOW-LINE";
    let t = TempDir::new("swap-links");
    let www = t.join("www");
    let outside = t.join("outside");
    std::fs::create_dir_all(www.join("d")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    let real_f = payload(1, 3000);
    let real_x = payload(2, 70_000); // two chunks
    std::fs::write(www.join("f"), &real_f).unwrap();
    std::fs::write(www.join("g"), &real_f).unwrap();
    std::fs::write(www.join("d/x"), &real_x).unwrap();
    std::fs::write(outside.join("secret"), SECRET.repeat(100)).unwrap();
    std::fs::write(outside.join("x"), SECRET.repeat(100)).unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), www.join("f.alt")).unwrap();
    std::os::unix::fs::symlink("../outside/secret", www.join("g.alt")).unwrap();
    std::os::unix::fs::symlink(&outside, www.join("d.alt")).unwrap();

    let (engine, cert) = server(&www, HqLimits::default(), 256);
    let h = engine.handle();
    let ep = client(cert, None);
    let conn = quinn_connect(&ep, engine.local_addr()).await;

    let swapper = Swapper::start(vec![
        (www.join("f"), www.join("f.alt")),
        (www.join("g"), www.join("g.alt")),
        (www.join("d"), www.join("d.alt")),
    ]);
    while swapper.rounds() == 0 {
        tokio::task::yield_now().await;
    }
    const N: usize = 3000;
    let paths = ["/f", "/g", "/d/x"];
    let answers = get_many(&conn, &paths, N, 32).await;
    let rounds = swapper.finish();

    let mut ok = [0usize; 3];
    let mut refused = 0;
    for (p, got) in &answers {
        match got {
            Got::Body(b) => {
                assert!(!contains(b, SECRET), "{} served the secret", paths[*p]);
                let want: &[u8] = if *p == 2 { &real_x } else { &real_f };
                assert_same(paths[*p], b, want);
                ok[*p] += 1;
            }
            Got::Reset(code) => {
                assert_eq!(*code, hq::NOT_FOUND, "{}", paths[*p]);
                refused += 1;
            }
            Got::Failed(e) => panic!("{}: {e}", paths[*p]),
        }
    }
    eprintln!("{N} requests during {rounds} swap rounds: served {ok:?}, refused {refused}");
    assert_eq!(answers.len(), N);
    assert!(ok.iter().sum::<usize>() > 0, "no request got the real file");

    // Swaps over, names as they began: every path serves its file.
    for (p, want) in paths.iter().zip([&real_f, &real_f, &real_x]) {
        match get(&conn, p).await {
            Got::Body(b) => assert_same(p, &b, want),
            other => panic!("{p}: {other:?}"),
        }
    }
    wait_state(&h, "every slot free", |s| s.open == 0 && s.waiting == 0).await;
    conn.close(VarInt::from_u32(0), b"done");
    guard("client idle", ep.wait_idle()).await;
    let handlers = shutdown(engine).await;
    assert_eq!(handlers[0].refused, refused as u64);
    assert_eq!(handlers[0].served, (N - refused + 3) as u64);
}

#[test]
fn fifos_swapped_in_never_block_a_worker() {
    on_runtime(fifos_swapped_in_never_block_a_worker_body());
}

async fn fifos_swapped_in_never_block_a_worker_body() {
    let t = TempDir::new("swap-fifo");
    let www = t.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let real = payload(3, 5000);
    std::fs::write(www.join("p"), &real).unwrap();
    mkfifo(&www.join("p.alt"));
    mkfifo(&www.join("fifo"));
    // Nobody ever opens these FIFOs for writing: an open that waited for a writer, or a read
    // that waited for data, would never return.
    let limits = HqLimits {
        pool_threads: 1,
        ..HqLimits::default()
    };
    let (engine, cert) = server(&www, limits, 256);
    let h = engine.handle();
    let ep = client(cert.clone(), None);
    let conn = quinn_connect(&ep, engine.local_addr()).await;

    let swapper = Swapper::start(vec![(www.join("p"), www.join("p.alt"))]);
    while swapper.rounds() == 0 {
        tokio::task::yield_now().await;
    }
    const N: usize = 2000;
    let paths = ["/p", "/fifo"];
    let answers = get_many(&conn, &paths, N, 32).await;
    let rounds = swapper.finish();
    let mut served = 0;
    for (p, got) in &answers {
        match got {
            Got::Body(b) => {
                assert_eq!(*p, 0, "the FIFO itself was served");
                assert_same(paths[*p], b, &real);
                served += 1;
            }
            Got::Reset(code) => assert_eq!(*code, hq::NOT_FOUND, "{}", paths[*p]),
            Got::Failed(e) => panic!("{}: {e}", paths[*p]),
        }
    }
    eprintln!("{N} requests during {rounds} swap rounds: {served} served");
    assert_eq!(answers.len(), N);

    // The worker and its pool still answer: a new connection handshakes and is served.
    let ep2 = client(cert, None);
    let conn2 = quinn_connect(&ep2, engine.local_addr()).await;
    match guard("after the race", get(&conn2, "/p")).await {
        Got::Body(b) => assert_same("/p", &b, &real),
        other => panic!("/p: {other:?}"),
    }
    wait_state(&h, "every slot free", |s| s.open == 0 && s.waiting == 0).await;
    conn.close(VarInt::from_u32(0), b"done");
    conn2.close(VarInt::from_u32(0), b"done");
    guard("client idle", ep.wait_idle()).await;
    guard("client idle", ep2.wait_idle()).await;
    // And the engine stops (the shutdown helper fails the test if it hangs).
    let handlers = shutdown(engine).await;
    assert_eq!(handlers[0].served, served as u64 + 1);
}

// ---------------------------------------------------------------------------------------------
// Descriptors: caps, waiting, freeing
// ---------------------------------------------------------------------------------------------

/// Samples the process's descriptor count until stopped; returns the highest seen.
struct FdSampler {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<usize>>,
}

impl FdSampler {
    fn start() -> FdSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut max = 0;
            while !s.load(Ordering::Relaxed) {
                // The sample's own directory descriptor is counted: the baseline counts it too.
                max = max.max(open_fds());
                std::thread::sleep(Duration::from_millis(1));
            }
            max
        });
        FdSampler {
            stop,
            thread: Some(thread),
        }
    }

    fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for FdSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The big file of the cap tests: larger than the hostile client's stream window plus what
/// the server buffers (two chunks), so an unread stream keeps its file open.
const BIG: usize = 256 * 1024;
/// The hostile client's receive window per stream.
const HOSTILE_WINDOW: u32 = 16 * 1024;

fn cap_site(name: &str) -> (TempDir, PathBuf, Bytes, Bytes) {
    let t = TempDir::new(name);
    let www = t.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let big = payload(10, BIG);
    let small = payload(11, 10_000);
    std::fs::write(www.join("big"), &big).unwrap();
    std::fs::write(www.join("small"), &small).unwrap();
    (t, www, big, small)
}

#[test]
fn a_flood_of_unread_streams_holds_at_most_the_connection_cap() {
    on_runtime(a_flood_of_unread_streams_holds_at_most_the_connection_cap_body());
}

async fn a_flood_of_unread_streams_holds_at_most_the_connection_cap_body() {
    let (_t, www, big, small) = cap_site("fd-conn");
    let limits = HqLimits {
        files_per_connection: 16,
        files_per_worker: 64,
        pool_threads: 2,
        ..HqLimits::default()
    };
    let (engine, cert) = server(&www, limits, 1024);
    let h = engine.handle();
    let hostile_ep = client(cert.clone(), Some(HOSTILE_WINDOW));
    let legit_ep = client(cert, None);
    let addr = engine.local_addr();
    let hostile = [
        quinn_connect(&hostile_ep, addr).await,
        quinn_connect(&hostile_ep, addr).await,
        quinn_connect(&hostile_ep, addr).await,
    ];
    let legit = quinn_connect(&legit_ep, addr).await;
    let baseline = open_fds();
    let sampler = FdSampler::start();

    // 1,000 requests for the big file, none read.
    const PER: [usize; 3] = [100, 450, 450];
    let mut unread: Vec<Vec<(quinn::SendStream, quinn::RecvStream)>> = Vec::new();
    for (c, n) in hostile.iter().zip(PER) {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(request_unread(c, "/big").await);
        }
        unread.push(v);
    }
    let held = 3 * limits.files_per_connection;
    let s = wait_state(&h, "the flood arrived", |s| s.open + s.waiting == 1000).await;
    assert_eq!(s.open, held, "{s:?}");

    // Meanwhile a client that reads is served, byte for byte.
    for (p, want) in [("/small", &small), ("/big", &big)] {
        match guard("legit request", get(&legit, p)).await {
            Got::Body(b) => assert_same(p, &b, want),
            other => panic!("{p}: {other:?}"),
        }
    }
    let s = state(&h).await;
    assert_eq!((s.open, s.waiting), (held, 1000 - held), "{s:?}");

    // The first hostile connection reads after all: its waiting requests are served in turn.
    let mut reads = tokio::task::JoinSet::new();
    for (_send, recv) in unread.remove(0) {
        reads.spawn(read_answer(recv));
    }
    while let Some(r) = guard("hostile reads", reads.join_next()).await {
        match r.unwrap() {
            Got::Body(b) => assert_same("/big", &b, &big),
            other => panic!("/big: {other:?}"),
        }
    }
    let s = wait_state(&h, "first connection done", |s| s.open == 2 * 16).await;
    assert_eq!(s.waiting, 900 - 2 * 16, "{s:?}");

    // The other two disconnect: their files close, their waiting requests go.
    for c in &hostile[1..] {
        c.close(VarInt::from_u32(0), b"bye");
    }
    wait_state(&h, "disconnected", |s| {
        s.open == 0 && s.waiting == 0 && s.connections <= 2
    })
    .await;
    let max = sampler.finish();
    eprintln!("descriptors: baseline {baseline}, highest {max}, cap {held} + 2");
    assert!(
        max <= baseline + held + 2 + SLACK,
        "{max} descriptors open, baseline {baseline}: more than the {held} + 2 files allowed"
    );
    drop(unread);
    legit.close(VarInt::from_u32(0), b"done");
    hostile[0].close(VarInt::from_u32(0), b"done");
    guard("client idle", legit_ep.wait_idle()).await;
    guard("client idle", hostile_ep.wait_idle()).await;
    wait_state(&h, "all gone", |s| *s == HqState::default()).await;
    let handlers = shutdown(engine).await;
    assert_eq!(handlers[0].served, 2 + 100);
    assert_eq!(handlers[0].refused, 0);
}

#[test]
fn requests_past_the_worker_cap_wait_and_are_served_when_files_close() {
    on_runtime(requests_past_the_worker_cap_wait_and_are_served_when_files_close_body());
}

async fn requests_past_the_worker_cap_wait_and_are_served_when_files_close_body() {
    let (_t, www, big, small) = cap_site("fd-worker");
    let limits = HqLimits {
        files_per_connection: 4,
        files_per_worker: 8,
        pool_threads: 2,
        ..HqLimits::default()
    };
    let (engine, cert) = server(&www, limits, 1024);
    let h = engine.handle();
    let hostile_ep = client(cert.clone(), Some(HOSTILE_WINDOW));
    let legit_ep = client(cert, None);
    let addr = engine.local_addr();
    let a = quinn_connect(&hostile_ep, addr).await;
    let b = quinn_connect(&hostile_ep, addr).await;
    let legit = quinn_connect(&legit_ep, addr).await;
    let baseline = open_fds();
    let sampler = FdSampler::start();

    let mut a_streams = Vec::new();
    let mut b_streams = Vec::new();
    for _ in 0..50 {
        a_streams.push(request_unread(&a, "/big").await);
        b_streams.push(request_unread(&b, "/big").await);
    }
    wait_state(&h, "the flood arrived", |s| s.open == 8 && s.waiting == 92).await;

    // The worker is full: a legitimate request waits (it is not refused)...
    let legit_req = {
        let legit = legit.clone();
        tokio::spawn(async move { get(&legit, "/small").await })
    };
    wait_state(&h, "legit request waiting", |s| s.waiting == 93).await;
    assert!(!legit_req.is_finished());

    // ...until a hostile connection goes: its files close, its requests are dropped, and the
    // legitimate one is served.
    a.close(VarInt::from_u32(0), b"bye");
    match guard("legit request", legit_req).await.unwrap() {
        Got::Body(got) => assert_same("/small", &got, &small),
        other => panic!("/small: {other:?}"),
    }
    let s = wait_state(&h, "a's state gone", |s| s.open == 4).await;
    assert_eq!(s.waiting, 46, "{s:?}");

    // The other one reads: all of its 50 requests are served, 4 at a time.
    let mut reads = tokio::task::JoinSet::new();
    for (_send, recv) in b_streams.drain(..) {
        reads.spawn(read_answer(recv));
    }
    while let Some(r) = guard("hostile reads", reads.join_next()).await {
        match r.unwrap() {
            Got::Body(got) => assert_same("/big", &got, &big),
            other => panic!("/big: {other:?}"),
        }
    }
    wait_state(&h, "all served", |s| s.open == 0 && s.waiting == 0).await;
    let max = sampler.finish();
    eprintln!("descriptors: baseline {baseline}, highest {max}, cap 8");
    assert!(
        max <= baseline + limits.files_per_worker + SLACK,
        "{max} descriptors open, baseline {baseline}: more than the 8 files allowed"
    );
    drop(a_streams);
    b.close(VarInt::from_u32(0), b"done");
    legit.close(VarInt::from_u32(0), b"done");
    guard("client idle", legit_ep.wait_idle()).await;
    guard("client idle", hostile_ep.wait_idle()).await;
    wait_state(&h, "all gone", |s| *s == HqState::default()).await;
    let handlers = shutdown(engine).await;
    assert_eq!(handlers[0].served, 1 + 50);
    assert_eq!(handlers[0].refused, 0);
}

// ---------------------------------------------------------------------------------------------
// Wrapped servers
// ---------------------------------------------------------------------------------------------

/// A handler around an [`HqServer`], as tests and applications write them: it attaches the
/// server through [`HqServer::attach_via`] if `forward`, else not at all.
struct Wrapper {
    inner: HqServer,
    forward: bool,
}

impl xdp_quic::Handler for Wrapper {
    fn attached(&mut self, engine: &EngineHandle<Self>) {
        if self.forward {
            self.inner.attach_via(engine, |w| &mut w.inner);
        }
    }
    fn stream_opened(&mut self, conn: &mut xdp_quic::Conn<'_>, s: xdp_quic::StreamId) {
        self.inner.stream_opened(conn, s)
    }
    fn stream_readable(&mut self, conn: &mut xdp_quic::Conn<'_>, s: xdp_quic::StreamId) {
        self.inner.stream_readable(conn, s)
    }
    fn stream_writable(&mut self, conn: &mut xdp_quic::Conn<'_>, s: xdp_quic::StreamId) {
        self.inner.stream_writable(conn, s)
    }
    fn stream_stopped(&mut self, conn: &mut xdp_quic::Conn<'_>, s: xdp_quic::StreamId, c: VarInt) {
        self.inner.stream_stopped(conn, s, c)
    }
    fn closed(
        &mut self,
        ctx: &mut xdp_quic::Ctx<'_>,
        id: xdp_quic::ConnId,
        reason: &xdp_quic::ConnectionError,
    ) {
        self.inner.closed(ctx, id, reason)
    }
}

#[test]
fn wrapped_servers_serve_whether_attached_or_not() {
    on_runtime(wrapped_servers_serve_whether_attached_or_not_body());
}

async fn wrapped_servers_serve_whether_attached_or_not_body() {
    let (_t, www, big, small) = cap_site("wrapped");
    mkfifo(&www.join("fifo"));
    for forward in [true, false] {
        let (b, cert) = our_server(1, hq::ALPN);
        let w = www.clone();
        let engine = b
            .start_udp("127.0.0.1:0".parse().unwrap(), move |_| Wrapper {
                inner: HqServer::new(&w).unwrap(),
                forward,
            })
            .unwrap();
        let ep = client(cert, None);
        let conn = quinn_connect(&ep, engine.local_addr()).await;
        // More requests than the per-connection cap: the rest wait, then are served.
        let answers = get_many(&conn, &["/big", "/small", "/fifo"], 60, 60).await;
        for (p, got) in answers {
            match (p, got) {
                (0, Got::Body(b)) => assert_same("/big", &b, &big),
                (1, Got::Body(b)) => assert_same("/small", &b, &small),
                (2, Got::Reset(code)) => assert_eq!(code, hq::NOT_FOUND),
                other => panic!("forward {forward}: {other:?}"),
            }
        }
        conn.close(VarInt::from_u32(0), b"done");
        guard("client idle", ep.wait_idle()).await;
        let handlers = blocking("engine shutdown", move || {
            engine.shutdown(VarInt::from_u32(0), b"bye").unwrap()
        })
        .await;
        let s = &handlers[0].inner;
        assert_eq!((s.served, s.refused), (40, 20), "forward {forward}");
        assert_eq!(s.state(), HqState::default(), "forward {forward}");
    }
}

/// Clients that end their request stream only after reading the answer (the FIN comes
/// late, after the request line was taken as complete): the server reads that late end, so
/// quinn-proto frees each stream and the client's stream credit comes back. Against a limit
/// of 8 streams, 40 requests in a row on one connection all get their file. (Before, the
/// late end was never read, and the ninth request waited forever.)
#[test]
fn requests_whose_end_comes_late_free_their_streams() {
    on_runtime(requests_whose_end_comes_late_free_their_streams_body());
}

async fn requests_whose_end_comes_late_free_their_streams_body() {
    let (_t, www, _big, small) = cap_site("late-fin");
    let (engine, cert) = server(&www, HqLimits::default(), 8);
    let ep = client(cert, None);
    let conn = quinn_connect(&ep, engine.local_addr()).await;
    for i in 0..40 {
        let (mut send, recv) = guard("an open", conn.open_bi()).await.unwrap();
        send.write_all(b"GET /small\r\n").await.unwrap();
        let got = guard("the answer", read_answer(recv)).await;
        assert_eq!(got, Got::Body(small.to_vec()), "request {i}");
        send.finish().unwrap();
    }
    conn.close(VarInt::from_u32(0), b"done");
    guard("client idle", ep.wait_idle()).await;
    shutdown(engine).await;
}

/// Requests the client resets before their line is whole are abandoned both ways: the
/// server resets its side with the client's code, quinn-proto frees each stream and the
/// client's credit comes back. Against a limit of 2 streams, 6 cancelled requests and then a
/// whole one all end. (Before, the server forgot the request but left its own side open:
/// the stream was never freed, and after 2 cancellations the connection could open none.)
#[test]
fn requests_the_client_cancels_give_their_credit_back() {
    on_runtime(requests_the_client_cancels_give_their_credit_back_body());
}

async fn requests_the_client_cancels_give_their_credit_back_body() {
    let (_t, www, _big, small) = cap_site("cancelled");
    let (engine, cert) = server(&www, HqLimits::default(), 2);
    let ep = client(cert, None);
    let conn = quinn_connect(&ep, engine.local_addr()).await;
    for round in 0..6 {
        let (mut send, recv) = guard("an open", conn.open_bi()).await.unwrap();
        send.write_all(b"GET /sm").await.unwrap();
        send.reset(VarInt::from_u32(7)).unwrap();
        let got = guard("the server's reset", read_answer(recv)).await;
        assert_eq!(got, Got::Reset(VarInt::from_u32(7)), "round {round}");
    }
    let got = guard("a whole request after them", get(&conn, "/small")).await;
    assert_eq!(got, Got::Body(small.to_vec()));
    wait_state(&engine.handle(), "streams forgotten", |s| s.streams == 0).await;
    conn.close(VarInt::from_u32(0), b"done");
    guard("client idle", ep.wait_idle()).await;
    shutdown(engine).await;
}

/// Our hq client holds at most its budget of bodies, whatever a server sends: the body that
/// would pass it is stopped and its path failed; the paths within it are fetched whole.
#[test]
fn the_hq_client_takes_in_at_most_its_budget() {
    on_runtime(the_hq_client_takes_in_at_most_its_budget_body());
}

async fn the_hq_client_takes_in_at_most_its_budget_body() {
    let (_t, www, big, small) = cap_site("client-budget");
    assert!(big.len() > small.len());
    let (engine, cert) = server(&www, HqLimits::default(), 8);
    let addr = engine.local_addr();
    // A budget of exactly the small file: that one is fetched whole, the big one fails.
    for path in ["/small", "/big"] {
        let paths = vec![path.to_string()];
        let b = our_client(1, cert.clone(), hq::ALPN);
        let budget = small.len();
        let (mut hs, _) = blocking("the client", move || {
            xdp_quic_examples::client::run(
                b,
                "127.0.0.1:0".parse().unwrap(),
                move |_| {
                    hq::HqClient::new(addr, "localhost", paths.clone()).with_body_budget(budget)
                },
                |h: &mut hq::HqClient, ctx| h.start(ctx),
            )
            .unwrap()
        })
        .await;
        let got = hs.pop().unwrap().results.pop().unwrap();
        match (path, got) {
            ("/small", Some(hq::Fetched::Body(b))) => assert_eq!(b, small),
            ("/big", Some(hq::Fetched::Failed(why))) => assert!(why.contains("budget"), "{why}"),
            (_, other) => panic!("{path}: {other:?}"),
        }
    }
    shutdown(engine).await;
}

/// A server whose streams take 8 octets of a request at a time: our hq client writes the
/// rest of its request line as the window opens and ends the stream only after it (it
/// wrote 8 octets and ended the stream, so that the server looked up `/sma`).
#[test]
fn the_hq_client_sends_its_whole_request_through_a_small_window() {
    on_runtime(the_hq_client_sends_its_whole_request_through_a_small_window_body());
}

async fn the_hq_client_sends_its_whole_request_through_a_small_window_body() {
    let (_t, www, _big, small) = cap_site("client-window");
    let (b, cert) = our_server(1, hq::ALPN);
    let mut t = TransportConfig::default();
    t.stream_receive_window(VarInt::from_u32(8));
    let root = www.clone();
    let engine = b
        .transport(t)
        .start_udp("127.0.0.1:0".parse().unwrap(), move |_| {
            HqServer::with_limits(&root, HqLimits::default()).unwrap()
        })
        .unwrap();
    let addr = engine.local_addr();
    let paths = vec!["/small".to_string()];
    assert!(format!("GET {}\r\n", paths[0]).len() > 8);
    let c = our_client(1, cert, hq::ALPN);
    let (mut hs, _) = blocking("the client", move || {
        xdp_quic_examples::client::run(
            c,
            "127.0.0.1:0".parse().unwrap(),
            move |_| hq::HqClient::new(addr, "localhost", paths.clone()),
            |h: &mut hq::HqClient, ctx| h.start(ctx),
        )
        .unwrap()
    })
    .await;
    match hs.pop().unwrap().results.pop().unwrap() {
        Some(hq::Fetched::Body(b)) => assert_eq!(b, small),
        other => panic!("/small: {other:?}"),
    }
    shutdown(engine).await;
}

/// An hq server with one file slot per connection and a 300 ms send stall, and a connection
/// to it of a client whose streams' windows hold 16 KiB; with the small file's content.
async fn one_slot_stalling_server(
    name: &str,
) -> (
    TempDir,
    Bytes,
    Engine<HqServer>,
    quinn::Endpoint,
    quinn::Connection,
) {
    let (t, www, _big, small) = cap_site(name);
    let limits = HqLimits {
        files_per_connection: 1,
        send_stall: Duration::from_millis(300),
        ..HqLimits::default()
    };
    let (engine, cert) = server(&www, limits, 16);
    let ep = client(cert, Some(HOSTILE_WINDOW));
    let conn = quinn_connect(&ep, engine.local_addr()).await;
    (t, small, engine, ep, conn)
}

/// A client that stops reading an answer gives its slot back after `send_stall`: its answer
/// is reset with STALLED, and its request waiting for that slot is served. (Before, a client
/// that never read, yet kept its connection alive, held its slots for good.)
#[test]
fn a_client_that_stops_reading_gives_its_slot_back_after_the_stall() {
    on_runtime(a_client_that_stops_reading_gives_its_slot_back_after_the_stall_body());
}

async fn a_client_that_stops_reading_gives_its_slot_back_after_the_stall_body() {
    let (_t, small, engine, ep, conn) = one_slot_stalling_server("stall").await;
    // The one slot: an answer this client will not read (its window holds 16 KiB).
    let (_send, unread) = request_unread(&conn, "/big").await;
    // Waits for that slot, and gets it once the stalled answer is reset.
    assert_eq!(
        guard("the second request", get(&conn, "/small")).await,
        Got::Body(small.to_vec())
    );
    assert_eq!(
        guard("the stalled answer", read_answer(unread)).await,
        Got::Reset(hq::STALLED)
    );
    let stalled = read_server(&engine, |s| s.stalled).await;
    assert_eq!(stalled, 1);
    conn.close(VarInt::from_u32(0), b"done");
    guard("client idle", ep.wait_idle()).await;
    shutdown(engine).await;
}

/// A client that reads an answer a trickle at a time (1 KiB every 50 ms, so the server
/// sees progress far more often than every `send_stall`) gives its slot back all the same:
/// it never takes a whole chunk within the stall, so its answer is reset with STALLED and
/// its request waiting for that slot is served. (Before, any octet taken restarted the
/// clock, and such a client held its slots for good.)
#[test]
fn a_client_that_reads_a_trickle_gives_its_slot_back_after_the_stall() {
    on_runtime(a_client_that_reads_a_trickle_gives_its_slot_back_after_the_stall_body());
}

async fn a_client_that_reads_a_trickle_gives_its_slot_back_after_the_stall_body() {
    let (_t, small, engine, ep, conn) = one_slot_stalling_server("trickle").await;
    // The one slot: an answer this client reads 1 KiB at a time.
    let (_send, mut trickled) = request_unread(&conn, "/big").await;
    let trickle = tokio::spawn(async move {
        let mut got = 0usize;
        let mut buf = [0u8; 1024];
        loop {
            match trickled.read(&mut buf).await {
                Ok(Some(n)) => got += n,
                Ok(None) => return (got, Got::Body(Vec::new())),
                Err(quinn::ReadError::Reset(code)) => return (got, Got::Reset(code)),
                Err(e) => return (got, Got::Failed(e.to_string())),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
    // Waits for that slot, and gets it once the trickled answer is reset.
    assert_eq!(
        guard("the second request", get(&conn, "/small")).await,
        Got::Body(small.to_vec())
    );
    let (got, end) = guard("the trickled answer", trickle).await.unwrap();
    assert_eq!(end, Got::Reset(hq::STALLED), "after {got} octets");
    assert!(got > 0 && got < BIG, "the trickle took {got} octets");
    let stalled = read_server(&engine, |s| s.stalled).await;
    assert_eq!(stalled, 1);
    conn.close(VarInt::from_u32(0), b"done");
    guard("client idle", ep.wait_idle()).await;
    shutdown(engine).await;
}

/// A request line that never comes whole (sent in part, never ended) is refused with
/// REQUEST_TIMED_OUT once `request_timeout` has passed, and counted; the connection's other
/// requests are served meanwhile and after. (Before, such a request held its stream and
/// buffer for the connection's life.)
#[test]
fn a_request_that_never_comes_whole_is_refused_when_its_time_is_up() {
    on_runtime(a_request_that_never_comes_whole_is_refused_when_its_time_is_up_body());
}

async fn a_request_that_never_comes_whole_is_refused_when_its_time_is_up_body() {
    let (_t, www, _big, small) = cap_site("request-timeout");
    let limits = HqLimits {
        request_timeout: Duration::from_millis(300),
        ..HqLimits::default()
    };
    let (engine, cert) = server(&www, limits, 16);
    let ep = client(cert, None);
    let conn = quinn_connect(&ep, engine.local_addr()).await;
    let (mut send, slow) = guard("open a stream", conn.open_bi()).await.unwrap();
    send.write_all(b"GET /sm").await.unwrap();
    assert_eq!(
        guard("a request meanwhile", get(&conn, "/small")).await,
        Got::Body(small.to_vec())
    );
    assert_eq!(
        guard("the unended request", read_answer(slow)).await,
        Got::Reset(hq::REQUEST_TIMED_OUT)
    );
    assert_eq!(
        guard("a request after", get(&conn, "/small")).await,
        Got::Body(small.to_vec())
    );
    let timed_out = read_server(&engine, |s| s.timed_out).await;
    assert_eq!(timed_out, 1);
    conn.close(VarInt::from_u32(0), b"done");
    guard("client idle", ep.wait_idle()).await;
    shutdown(engine).await;
}
