//! Shared by the xdp_* integration tests: privilege gate, network namespaces and veth
//! pairs with Drop guards, running the `xdp-quic` binary, sending traffic.
#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name unique to this process and call: `<prefix><pid><n>`, at most 15 bytes.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let name = format!("{prefix}{}{n}", std::process::id() % 100_000);
    assert!(name.len() <= 15, "{name} too long for an interface name");
    name
}

/// True when the test may run: root. Without root, skips locally but panics in CI.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("{test}: needs root (netns, veth, XDP), and CI is set: refusing to skip");
    }
    eprintln!("{test}: skipped: needs root");
    false
}

/// Runs a command, panicking with its output if it fails.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace, deleted on drop (with the interfaces in it).
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new() -> Self {
        let name = unique("xqt");
        sh(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        sh(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Server and client namespaces joined by a veth pair with `queues` queues each way: the
/// library's testbed (`xdp_quic_control::testbed`), under the names these tests use.
/// Server: 10.99.0.1/24, fd00:63::1/64 on `server_if`; client: .2 / ::2.
pub struct Testbed {
    pub server: NsName,
    pub client: NsName,
    pub server_if: String,
    pub client_if: String,
    _inner: xdp_quic_control::testbed::Testbed,
}

/// A namespace's name.
pub struct NsName {
    pub name: String,
}

pub const SERVER4: &str = "10.99.0.1";
pub const CLIENT4: &str = "10.99.0.2";
pub const SERVER6: &str = "fd00:63::1";
pub const CLIENT6: &str = "fd00:63::2";

impl Testbed {
    pub fn new(queues: u32) -> Self {
        let inner = xdp_quic_control::testbed::Testbed::create(&unique("xt"), queues, 99)
            .expect("creating the testbed");
        assert_eq!(inner.server_v4.to_string(), SERVER4);
        assert_eq!(inner.server_v6.to_string(), SERVER6);
        Self {
            server: NsName {
                name: inner.server_ns.clone(),
            },
            client: NsName {
                name: inner.client_ns.clone(),
            },
            server_if: inner.server_if.clone(),
            client_if: inner.client_if.clone(),
            _inner: inner,
        }
    }
}

/// Removes xdp-quic's pins of an interface on drop (the netns guards remove the
/// interfaces; pins live on the host's bpffs and would outlive them).
pub struct PinGuard(pub String);

impl Drop for PinGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/xdp-quic/{}", self.0));
        let _ = std::fs::remove_dir("/sys/fs/bpf/xdp-quic");
    }
}

/// Runs `xdp-quic <args>`.
pub fn xq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xdp-quic"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("spawn xdp-quic")
}

/// Runs `xdp-quic <args>` and returns stdout, panicking with stderr on failure.
pub fn xq_ok(args: &[&str]) -> String {
    let out = xq(args);
    assert!(
        out.status.success(),
        "xdp-quic {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `xdp-quic <args>`, asserts it fails with exit code 1..=255 and that stderr
/// contains `needle`; returns stderr.
pub fn xq_err(args: &[&str], needle: &str) -> String {
    let out = xq(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "xdp-quic {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "no exit code: {}",
        out.status
    );
    assert!(
        err.contains(needle),
        "xdp-quic {args:?}: stderr lacks {needle:?}:\n{err}"
    );
    err
}

/// Runs `f` on a thread moved into network namespace `ns`.
pub fn in_netns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).expect("open netns");
        // SAFETY: `file` is an open netns file; setns moves only this new thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("netns thread panicked")
}

/// Sends `n` UDP datagrams of `len` bytes from namespace `ns` to `to`.
pub fn send_udp(ns: &str, to: SocketAddr, n: usize, len: usize) {
    in_netns(ns, move || {
        let bind: SocketAddr = if to.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let s = UdpSocket::bind(bind).unwrap();
        for _ in 0..n {
            s.send_to(&vec![0x40u8; len], to).unwrap();
        }
    });
}

/// Binds a UDP socket in `ns` at `at`, then sends one datagram from `from_ns`; returns
/// whether the socket got it within 2 s.
pub fn udp_reaches_kernel(server_ns: &str, from_ns: &str, at: SocketAddr) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    let server_ns = server_ns.to_string();
    let receiver = std::thread::spawn(move || {
        in_netns(&server_ns, move || {
            let s = UdpSocket::bind(at).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            tx.send(()).unwrap();
            let mut buf = [0u8; 2048];
            s.recv_from(&mut buf).is_ok_and(|(n, _)| n == 64)
        })
    });
    rx.recv().unwrap();
    send_udp(from_ns, at, 1, 64);
    receiver.join().unwrap()
}

/// Pings `addr` once from `ns`.
pub fn ping(ns: &str, addr: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-W", "2", addr])
        .output()
        .expect("spawn ping")
        .status
        .success()
}

/// `xdp-quic stats <iface> --json` counters.
pub fn stats(ns: &str, iface: &str) -> serde_json::Value {
    let out = xq_ok(&["stats", iface, "--netns", ns, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["counters"].clone()
}

/// The XDP program id on `iface` in `ns` (from `ip -j link`), if any.
pub fn xdp_prog_on(ns: &str, iface: &str) -> Option<u64> {
    let out = Command::new("ip")
        .args(["-n", ns, "-j", "-d", "link", "show", "dev", iface])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v[0]["xdp"]["prog"]["id"]
        .as_u64()
        .or_else(|| v[0]["xdp"]["attached"][0]["prog"]["id"].as_u64())
}

/// A quinn client endpoint on a fresh socket of the current thread's namespace.
pub fn quinn_endpoint(
    certs: &[rustls::pki_types::CertificateDer<'static>],
    v6: bool,
) -> quinn::Endpoint {
    quinn_endpoint_with(certs, v6, false, false)
}

/// [`quinn_endpoint`], offering only TLS_CHACHA20_POLY1305_SHA256 when `chacha20_only`, and
/// sending 0-RTT data on resumed sessions when `early_data` (the endpoint keeps its tickets).
pub fn quinn_endpoint_with(
    certs: &[rustls::pki_types::CertificateDer<'static>],
    v6: bool,
    chacha20_only: bool,
    early_data: bool,
) -> quinn::Endpoint {
    let bind: SocketAddr = if v6 { "[::]:0" } else { "0.0.0.0:0" }.parse().unwrap();
    let socket = std::net::UdpSocket::bind(bind).unwrap();
    let mut ep = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        None,
        socket,
        std::sync::Arc::new(quinn::TokioRuntime),
    )
    .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in certs {
        roots.add(c.clone()).unwrap();
    }
    let mut provider = rustls::crypto::ring::default_provider();
    if chacha20_only {
        provider.cipher_suites =
            vec![rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256];
    }
    let mut tls = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(provider))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![xdp_quic_examples::echo::ALPN.to_vec()];
    tls.enable_early_data = early_data;
    // Initial packets always use AES-128-GCM (RFC 9001), whatever the client offers.
    let initial = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .and_then(|s| s.quic_suite())
        .expect("AES-128-GCM has a QUIC suite");
    let quic =
        quinn::crypto::rustls::QuicClientConfig::with_initial(std::sync::Arc::new(tls), initial)
            .unwrap();
    let mut cfg = quinn::ClientConfig::new(std::sync::Arc::new(quic));
    let mut t = quinn::TransportConfig::default();
    t.datagram_receive_buffer_size(Some(1 << 20));
    cfg.transport_config(std::sync::Arc::new(t));
    ep.set_default_client_config(cfg);
    ep
}

/// A running `xdp-quic serve`, its stderr read line by line; killed on drop unless stopped.
pub struct ServeProcess {
    child: Option<std::process::Child>,
    stderr: std::io::BufReader<std::process::ChildStderr>,
    seen: String,
    serving: String,
}

impl ServeProcess {
    /// Starts `xdp-quic serve ARGS` and waits for its "serving ..." line.
    pub fn start(args: &[&str]) -> Self {
        let mut all = vec!["serve"];
        all.extend_from_slice(args);
        Self::start_program(env!("CARGO_BIN_EXE_xdp-quic"), &all)
    }

    /// Starts `program ARGS`, which runs (or execs) `xdp-quic serve`, and waits for its
    /// "serving ..." line.
    pub fn start_program(program: &str, args: &[&str]) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn xdp-quic serve");
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut s = Self {
            child: Some(child),
            stderr,
            seen: String::new(),
            serving: String::new(),
        };
        s.serving = s.wait_for("serving");
        s
    }

    /// The "serving ..." line.
    pub fn serving_line(&self) -> &str {
        &self.serving
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Reads stderr until a line contains `needle`; returns it. A server that has not printed
    /// it within a minute is killed and the test fails (a hang guard, not a performance
    /// bound).
    pub fn wait_for(&mut self, needle: &str) -> String {
        use std::io::BufRead as _;
        let pid = self.pid() as i32;
        let (done, watchdog) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                watchdog.recv_timeout(Duration::from_secs(60))
            {
                // SAFETY: kill(2) on the child's pid, which the test owns and has not waited.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        loop {
            let mut line = String::new();
            if self.stderr.read_line(&mut line).unwrap() == 0 {
                panic!("serve ended without printing {needle:?}:\n{}", self.seen);
            }
            self.seen.push_str(&line);
            if line.contains(needle) {
                let _ = done.send(());
                return line;
            }
        }
    }

    /// Ctrl-C; returns whether it exited with status 0, and all it printed on stderr.
    pub fn stop(mut self) -> (bool, String) {
        use std::io::Read as _;
        let mut child = self.child.take().unwrap();
        // SAFETY: kill(2) on the child we spawned and have not waited for.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = child.wait().unwrap();
        let mut rest = std::mem::take(&mut self.seen);
        self.stderr.read_to_string(&mut rest).unwrap();
        (status.success(), rest)
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `xdp-quic <args>` under `ip netns exec NS` (a private mount namespace without
/// bpffs at /sys/fs/bpf).
pub fn xq_under_ip_netns_exec(ns: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_xdp-quic")])
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("spawn ip netns exec xdp-quic")
}
