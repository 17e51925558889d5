//! The `xdp-quic` binary end to end over loopback: `serve` and `client` for every
//! application, `demo`, and the errors an operator can run into.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};

use xdp_quic_control::testing::{dies_with_test, privileged, unique_name};

const BIN: &str = env!("CARGO_BIN_EXE_xdp-quic");

/// A running `xdp-quic serve`, killed on drop if the test did not stop it.
struct Server {
    child: Option<Child>,
    addr: SocketAddr,
    stderr: Box<dyn BufRead + Send>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut all = vec!["--listen", "127.0.0.1:0"];
        all.extend_from_slice(args);
        Self::start_with(&all).0
    }

    /// Starts `xdp-quic serve ARGS`; also returns the "serving ..." line.
    fn start_with(args: &[&str]) -> (Server, String) {
        let mut cmd = Command::new(BIN);
        cmd.arg("serve").args(args);
        let mut server = Server::spawn(cmd);
        // Skip what comes before the "serving ..." line (e.g. a fallback notice).
        let line = server.wait_for("serving");
        // "serving Perf on 127.0.0.1:PORT with N UDP worker(s), ..."
        server.addr = line
            .split(" on ")
            .nth(1)
            .and_then(|s| s.split_whitespace().next())
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"));
        (server, line)
    }

    /// Spawns `cmd` (a server command line), its stderr piped for [`Server::wait_for`].
    fn spawn(mut cmd: Command) -> Server {
        let mut child = dies_with_test(&mut cmd)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the server");
        let stderr = BufReader::new(child.stderr.take().unwrap());
        Server {
            child: Some(child),
            addr: "0.0.0.0:0".parse().unwrap(),
            stderr: Box::new(stderr),
        }
    }

    /// Ctrl-C, then the exit status and everything it printed on stderr.
    fn stop(mut self) -> (bool, String) {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill(2) with a pid we spawned and still own (not yet waited for).
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = child.wait().unwrap();
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest).unwrap();
        (status.success(), rest)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn client(addr: SocketAddr, args: &[&str]) -> Output {
    Command::new(BIN)
        .arg("client")
        .args(["--connect", &addr.to_string()])
        .args(args)
        .output()
        .expect("run xdp-quic client")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn echo_server_and_client() {
    // --cpus parses as one list (a regression: clap once wanted a value per CPU and panicked).
    let server = Server::start(&["--app", "echo", "--workers", "2", "--cpus", "0-1"]);
    let out = client(
        server.addr,
        &[
            "--app",
            "echo",
            "--insecure",
            "--message",
            "hello",
            "--message",
            "world",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "hello\nworld\n");
    let (ok, stderr) = server.stop();
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("worker 0:") && stderr.contains("worker 1:"),
        "{stderr}"
    );
}

#[test]
fn perf_server_and_client_with_json() {
    let server = Server::start(&["--app", "perf", "--workers", "2", "--retry"]);
    let out = client(
        server.addr,
        &[
            "--app",
            "perf",
            "--insecure",
            "--download",
            "2M",
            "--upload",
            "100k",
            "--requests",
            "20",
            "--connections",
            "3",
            "--streams",
            "2",
            "--workers",
            "2",
            "--json",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(v["requests"], 20);
    assert_eq!(v["failed"], 0);
    assert_eq!(v["connections"], 3);
    assert_eq!(v["downloaded_bytes"], 40_000_000);
    assert_eq!(v["uploaded_bytes"], 2_000_000);
    assert!(v["latency_ms"]["p50"].as_f64().unwrap() > 0.0);
    let (ok, stderr) = server.stop();
    assert!(ok, "{stderr}");
}

fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("xdpquic-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn hq_serves_files_and_nothing_outside_its_root() {
    let dir = temp_dir("hq");
    let www = dir.join("www");
    std::fs::create_dir_all(&www).unwrap();
    let body: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(www.join("data.bin"), &body).unwrap();
    std::fs::write(dir.join("secret"), b"not for you").unwrap();
    let out_dir = dir.join("out");
    std::fs::create_dir_all(&out_dir).unwrap();

    let server = Server::start(&["--app", "hq", "--root", www.to_str().unwrap()]);
    let out = client(
        server.addr,
        &[
            "--app",
            "hq",
            "--insecure",
            "--path",
            "/data.bin",
            "--out",
            out_dir.to_str().unwrap(),
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(std::fs::read(out_dir.join("data.bin")).unwrap(), body);
    // A file already there is not overwritten, and two paths of one name are refused,
    // before anything is fetched (it wrote over both, keeping the last body).
    std::fs::write(out_dir.join("data.bin"), b"mine").unwrap();
    let again = |paths: &[&str]| {
        let mut args = vec![
            "--app",
            "hq",
            "--insecure",
            "--out",
            out_dir.to_str().unwrap(),
        ];
        for p in paths {
            args.extend(["--path", p]);
        }
        client(server.addr, &args)
    };
    let out = again(&["/data.bin"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("exists (it is not overwritten)"));
    assert_eq!(std::fs::read(out_dir.join("data.bin")).unwrap(), b"mine");
    let out = again(&["/a/b", "/a_b"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("two of the fetches would be written to"));
    assert!(text(&out.stdout).is_empty(), "nothing fetched");

    let out = client(
        server.addr,
        &[
            "--app",
            "hq",
            "--insecure",
            "--path",
            "/../secret",
            "--path",
            "/nope",
        ],
    );
    assert!(!out.status.success());
    let stdout = text(&out.stdout);
    assert!(
        stdout.contains("/../secret: refused by the server"),
        "{stdout}"
    );
    assert!(stdout.contains("/nope: refused by the server"), "{stdout}");
    assert!(text(&out.stderr).contains("2 of 2 requests failed"));
    let (ok, stderr) = server.stop();
    assert!(ok, "{stderr}");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn demo_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(BIN)
        .arg("demo")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("JSON")
}

fn check_run(run: &serde_json::Value, workers: usize) {
    assert_eq!(run["bulk"]["downloaded_bytes"], 30_000_000);
    assert_eq!(run["bulk"]["failed"], 0);
    assert_eq!(run["requests"]["requests"], 500);
    assert_eq!(run["requests"]["failed"], 0);
    // Two bulk requests of 15 MB, then 500 requests.
    assert_eq!(run["server_requests"], 502);
    let w = run["server_workers"].as_array().unwrap();
    assert_eq!(w.len(), workers);
    let accepted: u64 = w
        .iter()
        .map(|w| w["conns_accepted"].as_u64().unwrap())
        .sum();
    assert_eq!(accepted, 8, "4 connections per phase");
}

#[test]
fn demo_over_udp_on_loopback() {
    let v = demo_json(&["--backend", "udp", "--bytes", "30M", "--requests", "500"]);
    let runs = v["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 1);
    assert!(runs[0]["server"]
        .as_str()
        .unwrap()
        .starts_with("UDP on loopback"));
    check_run(&runs[0], 2);
}

fn netns_list() -> String {
    let o = Command::new("ip").args(["netns", "list"]).output().unwrap();
    text(&o.stdout)
}

#[test]
fn demo_over_af_xdp_side_by_side_with_udp_and_cleans_up() {
    if !privileged("demo_over_af_xdp_side_by_side_with_udp_and_cleans_up") {
        return;
    }
    let v = demo_json(&[
        "--backend",
        "xdp",
        "--bytes",
        "30M",
        "--requests",
        "500",
        "--rounds",
        "2",
    ]);
    let runs = v["runs"].as_array().unwrap();
    // Two rounds, each AF_XDP then UDP (whichever ran first).
    assert_eq!(runs.len(), 4);
    for (i, run) in runs.iter().enumerate() {
        let label = run["server"].as_str().unwrap();
        let want = if i % 2 == 0 { "AF_XDP" } else { "UDP" };
        assert!(label.starts_with(want), "run {i}: {label}");
        check_run(run, 4);
    }
    // The summary: each round's ratios, and their median.
    let s = &v["af_xdp_over_udp"];
    let rounds = s["rounds"].as_array().unwrap();
    assert_eq!(rounds.len(), 2);
    let each: Vec<f64> = rounds
        .iter()
        .map(|r| r["requests_per_s_ratio"].as_f64().unwrap())
        .collect();
    let x = |i: usize| runs[i]["requests"]["requests_per_s"].as_f64().unwrap();
    assert!((each[0] - x(0) / x(1)).abs() < 1e-9, "{each:?}");
    assert!((each[1] - x(2) / x(3)).abs() < 1e-9, "{each:?}");
    let median = s["requests_per_s_ratio"].as_f64().unwrap();
    assert!(
        (median - (each[0] + each[1]) / 2.0).abs() < 1e-9,
        "{median} {each:?}"
    );
    let queues = runs[0]["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 4);
    for q in queues {
        assert_eq!(
            q["canary_packets"], 0,
            "the XDP path took every service packet"
        );
        assert_eq!(q["rx_bad_checksum"], 0);
    }
    // Every datagram the AF_XDP workers got was redirected by the program.
    let received: u64 = runs[0]["server_workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["rx_packets"].as_u64().unwrap())
        .sum();
    let redirected = runs[0]["xdp_program"]["v4.redirected"].as_u64().unwrap();
    assert!(
        received > 0 && redirected >= received,
        "{redirected} < {received}"
    );
}

#[test]
fn demo_interrupted_removes_its_testbed() {
    if !privileged("demo_interrupted_removes_its_testbed") {
        return;
    }
    let mut cmd = Command::new(BIN);
    cmd.args(["demo", "--backend", "xdp", "--bytes", "100G"]);
    let mut demo = Server::spawn(cmd);
    let pid = demo.child.as_ref().unwrap().id();
    let ns = format!("xqd{}s", pid % 1_000_000);
    // Whatever happens, nothing of the demo's testbed outlives the test.
    let _cleanup = NetnsCleanup(vec![ns.clone(), format!("xqd{}c", pid % 1_000_000)]);
    // The demo names its testbed once it is complete (and so registered for removal on a
    // signal); then Ctrl-C.
    demo.wait_for("xdp-quic demo: testbed");
    let made = netns_list().contains(&ns);
    // SAFETY: kill(2) on the child we spawned and have not waited for.
    unsafe { libc::kill(pid as i32, libc::SIGINT) };
    let status = demo.child.take().unwrap().wait().unwrap();
    assert!(made, "the demo made no testbed");
    assert_eq!(status.code(), Some(130));
    assert!(!netns_list().contains(&ns), "testbed left behind");
    let ifaces = Command::new("ip").args(["-o", "link"]).output().unwrap();
    assert!(!text(&ifaces.stdout).contains(&ns));
}

/// Deletes these network namespaces on drop, where they exist.
struct NetnsCleanup(Vec<String>);

impl Drop for NetnsCleanup {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn fails_with(args: &[&str], message: &str) {
    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} succeeded");
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains(message),
        "{args:?}: expected {message:?} in {stderr:?}"
    );
}

#[test]
fn operator_errors_are_clear() {
    // A name that would leave the pin root, and ranges too large to expand.
    fails_with(&["detach", ".."], "is not an interface name");
    fails_with(&["stats", "a/b"], "is not an interface name");
    fails_with(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--cpus",
            "0-18446744073709551615",
        ],
        "at most 8191",
    );
    fails_with(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "xdp",
            "--iface",
            "lo",
            "--queues",
            "0-4294967295",
        ],
        "at most 4095",
    );
    fails_with(
        &["client", "--connect", "127.0.0.1:9", "--app", "echo"],
        "give --ca FILE, or --insecure",
    );
    // Fewer CPUs than workers would put two workers on a CPU without a word.
    fails_with(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "3",
            "--cpus",
            "0-1",
        ],
        "give one CPU per worker",
    );
    // An argument mistake is an error with --backend auto too, not a fall-back to UDP.
    fails_with(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--backend",
            "auto",
            "--iface",
            "lo",
            "--workers",
            "2",
        ],
        "over AF_XDP there is one worker per queue",
    );
    fails_with(
        &["serve", "--listen", "127.0.0.1:0", "--app", "hq"],
        "--app hq needs --root DIR",
    );
    fails_with(
        &[
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--app",
            "hq",
            "--root",
            "/nonexistent-dir",
        ],
        "--root /nonexistent-dir",
    );
    fails_with(
        &["serve", "--listen", "127.0.0.1:0", "--workers", "0"],
        "--workers must be between 1 and 256",
    );
    fails_with(
        &["serve", "--listen", "127.0.0.1:0", "--cert", "/tmp/x.pem"],
        "--cert and --key go together",
    );
    fails_with(
        &["serve", "--listen", "not-an-address"],
        "invalid value 'not-an-address'",
    );
    fails_with(
        &[
            "client",
            "--connect",
            "127.0.0.1:9",
            "--insecure",
            "--download",
            "5X",
        ],
        "unknown size unit",
    );
    fails_with(
        &["serve", "--listen", "127.0.0.1:0", "--max-connections", "0"],
        "--max-connections must be at least 1",
    );
    for bad in ["0", "86401", "x"] {
        fails_with(
            &["serve", "--listen", "127.0.0.1:0", "--stats-every", bad],
            "--stats-every",
        );
    }
    let taken = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    fails_with(&["serve", "--listen", &addr], "cannot bind UDP");
}

#[test]
fn serve_auto_falls_back_to_udp_and_says_why() {
    let (server, line) = Server::start_with(&[
        "--listen",
        "127.0.0.1:0",
        "--backend",
        "auto",
        "--iface",
        "no-such-if0",
        "--app",
        "echo",
    ]);
    assert!(line.contains("UDP worker"), "{line}");
    let out = client(
        server.addr,
        &["--app", "echo", "--insecure", "--message", "fallback"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (ok, stderr) = server.stop();
    assert!(ok, "{stderr}");
}

#[test]
fn serve_over_af_xdp_on_a_pinned_attachment() {
    if !privileged("serve_over_af_xdp_on_a_pinned_attachment") {
        return;
    }
    let name = unique_name("xc");
    let tb = xdp_quic_control::testbed::Testbed::create(&name, 2, 215).unwrap();
    let xq = |args: &[&str]| Command::new(BIN).args(args).output().unwrap();
    let pins = PinnedAttach::new(&tb);

    let (server, line) = Server::start_with(&[
        "--netns",
        &tb.server_ns,
        "--listen",
        "0.0.0.0:4433",
        "--backend",
        "xdp",
        "--iface",
        &tb.server_if,
        "--queues",
        "0-1",
        "--app",
        "echo",
    ]);
    assert!(line.contains("2 AF_XDP worker(s)"), "{line}");
    assert!(line.contains("pinned by xdp-quic attach"), "{line}");

    let st = status_of(&tb);
    let sockets: Vec<bool> = st["queues"]
        .as_array()
        .unwrap()
        .iter()
        .map(|q| q["socket"].as_bool().unwrap())
        .collect();
    assert_eq!(sockets, vec![true, true], "{st}");

    let addr = format!("{}:4433", tb.server_v4);
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &tb.client_ns,
            BIN,
            "client",
            "--connect",
            &addr,
        ])
        .args(["--insecure", "--app", "echo", "--message", "over-af-xdp"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "over-af-xdp\n");

    // A second server on a port the attachment does not steer is refused, saying why.
    let out = xq(&[
        "serve",
        "--netns",
        &tb.server_ns,
        "--listen",
        "0.0.0.0:4999",
        "--backend",
        "xdp",
        "--iface",
        &tb.server_if,
        "--app",
        "echo",
    ]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("steers port(s) 4433"),
        "{}",
        text(&out.stderr)
    );

    let (ok, stderr) = server.stop();
    assert!(ok, "{stderr}");
    assert!(
        stderr.contains("queue 0: copy mode") && stderr.contains("canary 0"),
        "{stderr}"
    );
    let st = status_of(&tb);
    assert!(
        st["queues"]
            .as_array()
            .unwrap()
            .iter()
            .all(|q| q["socket"] == false),
        "{st}"
    );
    // The HTTP/3 server uses the pinned attachment too (before, it tried to attach its own
    // and failed on the pinned program).
    let root = std::env::temp_dir().join(format!("xq-h3-pinned-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let (h3, line) = Server::start_with(&[
        "--netns",
        &tb.server_ns,
        "--listen",
        "0.0.0.0:4433",
        "--backend",
        "xdp",
        "--iface",
        &tb.server_if,
        "--queues",
        "0-1",
        "--app",
        "h3",
        "--root",
        root.to_str().unwrap(),
    ]);
    assert!(line.contains("pinned by xdp-quic attach"), "{line}");
    let (ok, stderr) = h3.stop();
    std::fs::remove_dir_all(&root).unwrap();
    assert!(ok, "{stderr}");
    pins.detach();
}

/// `xdp-quic client --backend xdp --iface IF` from the testbed's client namespace, against
/// servers over kernel UDP in the server's, IPv4 (echo, byte-exact) and IPv6 (perf): the
/// client says which path it took, its replies come through its AF_XDP sockets (the
/// program's redirect counter), and the program it attached for its port is gone when it
/// exits. Without `--iface` it is a clear error.
#[test]
fn client_over_af_xdp_from_the_command_line() {
    use xdp_quic_control::testing::xdp_prog_on;
    if !privileged("client_over_af_xdp_from_the_command_line") {
        return;
    }
    let tb = xdp_quic_control::testbed::Testbed::create(&unique_name("xk"), 2, 241).unwrap();
    // The client reads what the server's side sends: full checksums from there.
    tb.full_checksums_from_server().unwrap();
    let serve = |listen: &str, app: &str| {
        Server::start_with(&["--netns", &tb.server_ns, "--listen", listen, "--app", app]).0
    };
    let echo = serve("0.0.0.0:4433", "echo");
    let perf = serve("[::]:4434", "perf");
    let client = |addr: SocketAddr, args: &[&str]| -> Output {
        let out = Command::new("ip")
            .args(["netns", "exec", &tb.client_ns, BIN, "client"])
            .args(["--connect", &addr.to_string(), "--insecure"])
            .args(["--backend", "xdp", "--iface", &tb.client_if])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
        let stderr = text(&out.stderr);
        assert!(
            stderr.contains(&format!("AF_XDP on {} queue(s) 0,1", tb.client_if)),
            "{stderr}"
        );
        let redirected: u64 = stderr
            .split("redirected ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no redirect count in {stderr}"));
        assert!(redirected > 0, "{stderr}");
        assert_eq!(
            xdp_prog_on(&tb.client_ns, &tb.client_if),
            None,
            "the client's program is detached at its exit"
        );
        out
    };

    let message = "through-the-client's-af-xdp-sockets";
    let out = client(
        SocketAddr::new(tb.server_v4.into(), 4433),
        &["--app", "echo", "--message", message],
    );
    assert_eq!(text(&out.stdout), format!("{message}\n"));

    let out = client(
        SocketAddr::new(tb.server_v6.into(), 4434),
        &[
            "--app",
            "perf",
            "--download",
            "3M",
            "--requests",
            "6",
            "--streams",
            "3",
            "--json",
        ],
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON report");
    assert_eq!(v["requests"], 6, "{v}");
    assert_eq!(v["failed"], 0, "{v}");
    assert_eq!(v["downloaded_bytes"], 18_000_000, "{v}");

    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &tb.client_ns,
            BIN,
            "client",
            "--backend",
            "xdp",
        ])
        .args(["--connect", &format!("{}:4433", tb.server_v4), "--insecure"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--backend xdp needs --iface"),
        "{}",
        text(&out.stderr)
    );
    for server in [echo, perf] {
        let (ok, stderr) = server.stop();
        assert!(ok, "{stderr}");
    }
}

/// Without CAP_IPC_LOCK and with a small RLIMIT_MEMLOCK the UMEM cannot be registered: the
/// operator gets the reason and the remedies, not a bare ENOBUFS, and nothing stays attached.
#[test]
fn umem_over_the_memlock_limit_is_a_clear_error() {
    if !privileged("umem_over_the_memlock_limit_is_a_clear_error") {
        return;
    }
    let name = unique_name("xm");
    let tb = xdp_quic_control::testbed::Testbed::create(&name, 1, 216).unwrap();
    let out = Command::new("prlimit")
        .args([
            "--memlock=1048576",
            "setpriv",
            "--inh-caps=-ipc_lock",
            "--bounding-set=-ipc_lock",
        ])
        .args([
            BIN,
            "serve",
            "--netns",
            &tb.server_ns,
            "--listen",
            "0.0.0.0:4433",
        ])
        .args([
            "--backend",
            "xdp",
            "--iface",
            &tb.server_if,
            "--app",
            "echo",
        ])
        .output()
        .expect("prlimit and setpriv (util-linux)");
    assert!(!out.status.success());
    let stderr = text(&out.stderr);
    for needle in [
        "RLIMIT_MEMLOCK",
        "CAP_IPC_LOCK",
        "ulimit -l",
        "fewer frames",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing from {stderr}");
    }
    let links = Command::new("ip")
        .args(["-n", &tb.server_ns, "-o", "link"])
        .output()
        .unwrap();
    assert!(
        !text(&links.stdout).contains(" xdp"),
        "the program stayed attached"
    );
}

#[test]
fn stats_reads_a_daemons_metrics_endpoint() {
    let (mut server, _) = Server::start_with(&[
        "--listen",
        "127.0.0.1:0",
        "--app",
        "echo",
        "--workers",
        "2",
        "--metrics",
        "127.0.0.1:0",
    ]);
    let mut line = String::new();
    server.stderr.read_line(&mut line).unwrap();
    let metrics = line
        .trim()
        .strip_prefix("metrics on http://")
        .and_then(|s| s.strip_suffix("/metrics"))
        .unwrap_or_else(|| panic!("no metrics address in {line:?}"))
        .to_string();
    let out = client(
        server.addr,
        &["--app", "echo", "--insecure", "--message", "counted"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));

    // One report: rates over a second (none: the client is gone), totals per worker.
    let out = Command::new(BIN)
        .args(["stats", "lo", "--daemon", &metrics, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["interval_secs"].as_f64().unwrap() >= 1.0, "{v}");
    let queues = v["queues"].as_array().unwrap();
    assert_eq!(queues.len(), 2);
    assert_eq!(
        queues
            .iter()
            .map(|q| q["rx_pps"].as_f64().unwrap())
            .sum::<f64>(),
        0.0,
        "rates, not the totals since start: {v}"
    );
    assert_eq!(
        queues
            .iter()
            .map(|q| q["drops"].as_f64().unwrap())
            .sum::<f64>(),
        0.0
    );

    // Watch mode: one line of rates, and the text table.
    let out = Command::new(BIN)
        .args([
            "stats", "lo", "--daemon", &metrics, "--watch", "0.2", "--count", "1", "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(v["interval_secs"].as_f64().unwrap() > 0.0);
    assert_eq!(v["queues"].as_array().unwrap().len(), 2);
    let out = Command::new(BIN)
        .args([
            "stats", "lo", "--daemon", &metrics, "--watch", "0.2", "--count", "1",
        ])
        .output()
        .unwrap();
    assert!(text(&out.stdout).contains("busy%"), "{}", text(&out.stdout));
    let (ok, stderr) = server.stop();
    assert!(ok, "{stderr}");
}

/// SIGTERM (what service managers send) stops the server like Ctrl-C: connections closed
/// with a code, counters printed, exit 0.
#[test]
fn sigterm_shuts_the_server_down_gracefully() {
    let (mut server, _) = Server::start_with(&["--listen", "127.0.0.1:0", "--app", "echo"]);
    let out = client(
        server.addr,
        &["--app", "echo", "--insecure", "--message", "before-term"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mut child = server.child.take().unwrap();
    // SAFETY: kill(2) on the child we spawned and have not waited for.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    let mut rest = String::new();
    server.stderr.read_to_string(&mut rest).unwrap();
    assert!(status.success(), "{status}: {rest}");
    assert!(
        rest.contains("shutting down") && rest.contains("worker 0:"),
        "{rest}"
    );
}

/// A server whose stderr was a pipe that closed (its reader gone, as `| tee` goes with a
/// Ctrl-C) stops on SIGINT, and cleanly. Before, the signal handler's message panicked its
/// thread before the stop: the server went on serving, and no later signal stopped it.
#[test]
fn a_server_whose_stderr_closed_stops_on_ctrl_c() {
    let dir = temp_dir("closed-stderr");
    let root = dir.to_str().unwrap();
    for app in [&["--app", "echo"][..], &["--app", "h3", "--root", root]] {
        let mut server = Server::start(app);
        // The pipe's reading end closes: every later write to it fails (EPIPE).
        server.stderr = Box::new(std::io::empty());
        let _done = server.watchdog();
        let mut child = server.child.take().unwrap();
        // SAFETY: kill(2) with a pid we spawned and still own (not yet waited for).
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = child.wait().unwrap();
        assert!(status.success(), "{app:?}: {status}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

impl Server {
    /// Reads stderr until a line contains `needle` and returns it; fails (killing the server)
    /// if none does within a minute (a hang guard, not a performance bound).
    fn wait_for(&mut self, needle: &str) -> String {
        let done = self.watchdog();
        let mut seen = String::new();
        loop {
            let mut line = String::new();
            if self.stderr.read_line(&mut line).unwrap() == 0 {
                panic!("serve ended without printing {needle:?}:\n{seen}");
            }
            seen.push_str(&line);
            if line.contains(needle) {
                let _ = done.send(());
                return line;
            }
        }
    }

    /// Kills the server unless the returned sender is used (or dropped) within a minute.
    fn watchdog(&self) -> std::sync::mpsc::Sender<()> {
        let pid = self.child.as_ref().unwrap().id() as i32;
        let (done, watchdog) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                watchdog.recv_timeout(std::time::Duration::from_secs(60))
            {
                // SAFETY: kill(2) on the child's pid; the test still owns it (not waited).
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        done
    }

    /// Waits for the server to exit by itself; returns its status and the rest of stderr.
    fn wait_exit(mut self) -> (std::process::ExitStatus, String) {
        let _done = self.watchdog();
        let mut child = self.child.take().unwrap();
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest).unwrap();
        (child.wait().unwrap(), rest)
    }
}

/// A pinned attachment made by `xdp-quic attach` in a testbed's server namespace, detached
/// (and its pins removed) on drop, whatever happened.
struct PinnedAttach<'a> {
    tb: &'a xdp_quic_control::testbed::Testbed,
}

impl<'a> PinnedAttach<'a> {
    fn new(tb: &'a xdp_quic_control::testbed::Testbed) -> Self {
        Self::with(tb, &[])
    }

    /// `attach` with `extra` arguments.
    fn with(tb: &'a xdp_quic_control::testbed::Testbed, extra: &[&str]) -> Self {
        let out = Command::new(BIN)
            .args(["attach", &tb.server_if, "--netns", &tb.server_ns])
            .args(["--port", "4433"])
            .args(extra)
            .output()
            .unwrap();
        // The guard first: an attach that failed half-way is cleaned up too.
        let guard = Self { tb };
        assert!(out.status.success(), "{}", text(&out.stderr));
        guard
    }

    fn detach(&self) {
        let out = Command::new(BIN)
            .args(["detach", &self.tb.server_if, "--netns", &self.tb.server_ns])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
}

impl Drop for PinnedAttach<'_> {
    fn drop(&mut self) {
        let _ = Command::new(BIN)
            .args(["detach", &self.tb.server_if, "--netns", &self.tb.server_ns])
            .output();
        let _ = std::fs::remove_dir_all(format!("/sys/fs/bpf/xdp-quic/{}", self.tb.server_if));
    }
}

/// `xdp-quic status --json` of the testbed's server interface.
fn status_of(tb: &xdp_quic_control::testbed::Testbed) -> serde_json::Value {
    let out = Command::new(BIN)
        .args(["status", "--netns", &tb.server_ns, "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["iface"] == tb.server_if.as_str())
        .cloned()
        .expect("our interface in status")
}

/// `xdp-quic client` from the testbed's client namespace; returns what it echoed.
fn client_in(tb: &xdp_quic_control::testbed::Testbed, message: &str) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", &tb.client_ns, BIN, "client"])
        .args(["--connect", &format!("{}:4433", tb.server_v4)])
        .args(["--insecure", "--app", "echo", "--message", message])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout)
}

fn serve_xdp_in(tb: &xdp_quic_control::testbed::Testbed, backend: &str) -> (Server, String) {
    Server::start_with(&[
        "--netns",
        &tb.server_ns,
        "--listen",
        "0.0.0.0:4433",
        "--backend",
        backend,
        "--iface",
        &tb.server_if,
        "--app",
        "echo",
    ])
}

/// The interface goes down and up under a server: it says so, and serves on. Then the
/// program is detached from under it: it says so, closes its AF_XDP connections and, in
/// `--backend auto`, serves on over kernel UDP.
#[test]
fn auto_falls_back_to_udp_when_the_program_is_detached_from_under_it() {
    if !privileged("auto_falls_back_to_udp_when_the_program_is_detached_from_under_it") {
        return;
    }
    let tb = xdp_quic_control::testbed::Testbed::create(&unique_name("xd"), 1, 223).unwrap();
    let pins = PinnedAttach::new(&tb);
    let (mut server, line) = serve_xdp_in(&tb, "auto");
    assert!(line.contains("AF_XDP worker"), "{line}");
    assert_eq!(client_in(&tb, "before"), "before\n");

    let ip = |state: &str| {
        let out = Command::new("ip")
            .args(["-n", &tb.server_ns, "link", "set", &tb.server_if, state])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    };
    ip("down");
    server.wait_for("went down");
    ip("up");
    server.wait_for("is up again");
    assert_eq!(client_in(&tb, "after-down-up"), "after-down-up\n");

    pins.detach();
    let why = server.wait_for("error:");
    assert!(why.contains("the XDP program was detached"), "{why}");
    server.wait_for("falling back to kernel UDP");
    let line = server.wait_for("serving");
    assert!(line.contains("UDP worker"), "{line}");
    assert_eq!(client_in(&tb, "over-udp-now"), "over-udp-now\n");
    let (ok, stderr) = server.stop();
    assert!(ok, "{stderr}");
}

/// `--backend xdp` does not fall back: losing the program is an error exit that says what
/// happened and what to do.
#[test]
fn xdp_backend_exits_with_an_error_when_the_program_is_detached() {
    if !privileged("xdp_backend_exits_with_an_error_when_the_program_is_detached") {
        return;
    }
    let tb = xdp_quic_control::testbed::Testbed::create(&unique_name("xe"), 1, 224).unwrap();
    let pins = PinnedAttach::new(&tb);
    let (server, line) = serve_xdp_in(&tb, "xdp");
    assert!(line.contains("AF_XDP worker"), "{line}");
    assert_eq!(client_in(&tb, "hello"), "hello\n");
    pins.detach();
    let (status, stderr) = server.wait_exit();
    assert_eq!(status.code(), Some(1), "{stderr}");
    for needle in [
        "the XDP program was detached",
        "--backend auto",
        "worker 0:",
    ] {
        assert!(stderr.contains(needle), "{needle:?} missing from {stderr}");
    }
}

/// `serve --app h3` (on the async API, not under the supervisor) watches its program too:
/// detached from under it, it says so and exits with an error (before, it went deaf and
/// served on).
#[test]
fn h3_over_af_xdp_exits_with_an_error_when_the_program_is_detached() {
    if !privileged("h3_over_af_xdp_exits_with_an_error_when_the_program_is_detached") {
        return;
    }
    let tb = xdp_quic_control::testbed::Testbed::create(&unique_name("xj"), 1, 235).unwrap();
    let pins = PinnedAttach::new(&tb);
    let root = temp_dir("h3-lost");
    let (server, line) = Server::start_with(&[
        "--netns",
        &tb.server_ns,
        "--listen",
        "0.0.0.0:4433",
        "--backend",
        "xdp",
        "--iface",
        &tb.server_if,
        "--app",
        "h3",
        "--root",
        root.to_str().unwrap(),
    ]);
    assert!(line.contains("AF_XDP worker"), "{line}");
    pins.detach();
    let (status, stderr) = server.wait_exit();
    let _ = std::fs::remove_dir_all(&root);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("the XDP program was detached"), "{stderr}");
}

/// After `xdp-quic attach` (root), the server runs with CAP_NET_RAW, CAP_IPC_LOCK and CAP_BPF
/// only: no CAP_NET_ADMIN, no CAP_SYS_ADMIN (the README's recipe, `setpriv` here, systemd's
/// `AmbientCapabilities=` in production), and serves over AF_XDP.
#[test]
fn serve_after_attach_needs_only_net_raw_ipc_lock_and_bpf() {
    if !privileged("serve_after_attach_needs_only_net_raw_ipc_lock_and_bpf") {
        return;
    }
    serve_least_privileged(Some(&[]), "xp", 225);
}

/// A server that attaches the program for its own life (no `xdp-quic attach`) needs
/// CAP_NET_ADMIN, CAP_BPF and CAP_PERFMON besides, not CAP_SYS_ADMIN: it registers its
/// sockets through descriptors of its own on the maps it loaded. Before, it opened them
/// again by id (`BPF_MAP_GET_FD_BY_ID`, CAP_SYS_ADMIN only) and failed to start.
#[test]
fn a_server_attaching_for_itself_needs_no_cap_sys_admin() {
    if !privileged("a_server_attaching_for_itself_needs_no_cap_sys_admin") {
        return;
    }
    serve_least_privileged(None, "xa", 243);
}

/// The same over an attachment with the shield on (`attach --shield`): the server engages
/// it (its CID layout, the pressure monitor) through the descriptors it opened from the
/// pins. Before, the monitor opened the maps again by id, which needs CAP_SYS_ADMIN, and the
/// server failed to start.
#[test]
fn a_least_privileged_server_engages_an_operators_shield() {
    if !privileged("a_least_privileged_server_engages_an_operators_shield") {
        return;
    }
    serve_least_privileged(Some(&["--shield"]), "xr", 237);
}

/// A server with only the capabilities it needs serves an echo: over an attachment `xdp-quic
/// attach` pinned with `attach` (CAP_NET_RAW, CAP_IPC_LOCK, CAP_BPF), or, for `None`, over
/// the program it attaches for itself (CAP_NET_ADMIN and CAP_PERFMON besides).
fn serve_least_privileged(attach: Option<&[&str]>, prefix: &str, net: u8) {
    let tb = xdp_quic_control::testbed::Testbed::create(&unique_name(prefix), 1, net).unwrap();
    let pins = attach.map(|a| PinnedAttach::with(&tb, a));
    let attach = attach.unwrap_or_default();
    let (caps, want) = match &pins {
        // CAP_NET_RAW 13, CAP_IPC_LOCK 14, CAP_BPF 39: nothing else.
        Some(_) => (
            "-all,+net_raw,+ipc_lock,+bpf",
            (1 << 13) | (1 << 14) | (1 << 39),
        ),
        // And CAP_NET_ADMIN 12, CAP_PERFMON 38 (for the verifier).
        None => (
            "-all,+net_raw,+ipc_lock,+bpf,+net_admin,+perfmon",
            (1 << 12) | (1 << 13) | (1 << 14) | (1 << 38) | (1 << 39),
        ),
    };
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--net=/run/netns/{}", tb.server_ns))
        .args(["setpriv", "--inh-caps", caps, "--ambient-caps", caps])
        .args(["--bounding-set", caps, BIN, "serve"])
        .args(["--listen", "0.0.0.0:4433", "--backend", "xdp"])
        .args(["--iface", &tb.server_if, "--app", "echo"]);
    let mut server = Server::spawn(cmd);
    let line = server.wait_for("serving");
    assert!(line.contains("AF_XDP worker"), "{line}");
    assert!(
        line.contains("16384 UMEM frames a queue, 32 MiB locked"),
        "{line}"
    );
    let pid = server.child.as_ref().unwrap().id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
        .unwrap();
    assert_eq!(eff, want, "{status}");
    if attach.contains(&"--shield") {
        let on = server.wait_for("XDP shield on");
        assert!(on.contains("under pressure, tokenless Initials"), "{on}");
        // The server's CID layout is on the shield (written through its descriptors).
        let me = status_of(&tb);
        let layout = me["shield"]["cid_layout"].as_str().unwrap_or_default();
        assert!(
            layout.contains("8 octets") && layout.contains(", 1 workers"),
            "{me}"
        );
    }
    assert_eq!(client_in(&tb, "least-privilege"), "least-privilege\n");
    let (ok, stderr) = server.stop();
    assert!(ok, "{stderr}");
}

#[test]
fn a_second_server_on_the_same_port_is_refused() {
    let first = Server::start(&["--app", "echo", "--workers", "2"]);
    let port = first.addr.port();
    for listen in [format!("127.0.0.1:{port}"), format!("0.0.0.0:{port}")] {
        let out = Command::new(BIN)
            .args(["serve", "--app", "echo", "--listen", &listen])
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{listen}: {err}");
        assert!(err.contains("already bound by another socket"), "{err}");
        assert!(err.contains("xdp-quic"), "names the holder: {err}");
    }
    // The first server was not disturbed: it still answers every request.
    for i in 0..10 {
        let out = client(
            first.addr,
            &["--insecure", "--app", "echo", "--message", &format!("m{i}")],
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let (ok, log) = first.stop();
    assert!(ok, "{log}");
    assert!(log.contains("resets 0"), "no stateless resets: {log}");
}

/// `serve --xdp-shield` over AF_XDP (the program attached by the server for itself): the
/// shield comes on with the engine's CID layout (`status` shows it), a client echoes through
/// it, and at stop the program goes with the server. Over kernel UDP the option is refused.
#[test]
fn serve_with_the_xdp_shield() {
    if !privileged("serve_with_the_xdp_shield") {
        return;
    }
    let out = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--backend", "udp"])
        .args(["--app", "echo", "--xdp-shield"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--xdp-shield needs the AF_XDP backend"),
        "{}",
        text(&out.stderr)
    );

    let name = unique_name("xh");
    let tb = xdp_quic_control::testbed::Testbed::create(&name, 2, 230).unwrap();
    let (mut server, line) = Server::start_with(&[
        "--netns",
        &tb.server_ns,
        "--listen",
        "0.0.0.0:4433",
        "--backend",
        "xdp",
        "--iface",
        &tb.server_if,
        "--queues",
        "0-1",
        "--app",
        "echo",
        "--retry-above",
        "16",
        "--xdp-shield",
    ]);
    assert!(line.contains("2 AF_XDP worker(s)"), "{line}");
    let on = server.wait_for("XDP shield on");
    assert!(
        on.contains(&tb.server_if) && on.contains("under pressure, tokenless Initials 64/s"),
        "{on}"
    );
    let me = status_of(&tb);
    assert_eq!(me["pinned"], false, "{me}");
    let layout = me["shield"]["cid_layout"].as_str().unwrap_or_default();
    assert!(
        layout.contains("8 octets") && layout.contains("2 workers"),
        "{me}"
    );

    let addr = format!("{}:4433", tb.server_v4);
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &tb.client_ns,
            BIN,
            "client",
            "--connect",
            &addr,
        ])
        .args([
            "--insecure",
            "--app",
            "echo",
            "--message",
            "through-the-shield",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "through-the-shield\n");

    let (ok, stderr) = server.stop();
    assert!(ok, "{stderr}");
    assert_eq!(
        xdp_quic_control::testing::xdp_prog_on(&tb.server_ns, &tb.server_if),
        None
    );
}

/// Without `--queues`, `serve --backend xdp` serves the queues the interface has active
/// (its channels, after `ethtool -L`), not every queue its driver allocated: AF_XDP cannot
/// bind the others. A `--workers` that disagrees with the queues is refused.
#[test]
fn serve_over_af_xdp_serves_the_active_queues() {
    if !privileged("serve_over_af_xdp_serves_the_active_queues") {
        return;
    }
    let name = unique_name("xa");
    let tb = xdp_quic_control::testbed::Testbed::create(&name, 4, 216).unwrap();
    // 4 queues allocated, 2 in use.
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &tb.server_ns,
            "ethtool",
            "-L",
            &tb.server_if,
        ])
        .args(["rx", "2", "tx", "2"])
        .output()
        .unwrap();
    assert!(out.status.success(), "ethtool -L: {}", text(&out.stderr));
    let base = [
        "--netns",
        tb.server_ns.as_str(),
        "--listen",
        "0.0.0.0:4433",
        "--backend",
        "xdp",
        "--iface",
        tb.server_if.as_str(),
        "--app",
        "echo",
    ];
    let mut refused = vec!["serve"];
    refused.extend_from_slice(&base);
    refused.extend_from_slice(&["--workers", "3"]);
    let out = Command::new(BIN).args(&refused).output().unwrap();
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("--workers 3")
            && err.contains("one worker per queue")
            && err.contains("[0, 1]"),
        "{err}"
    );
    // Values the workers would refuse are the operator's error before anything is attached:
    // `--backend auto` says so instead of falling back to UDP as for a host without AF_XDP.
    for (extra, says) in [
        (&["--queues", "3"][..], "--queues lists queue 3"),
        (&["--umem-frames", "1000"][..], "UMEM frames 1000"),
        (
            &["--busy-poll", "3000000000"][..],
            "busy-poll time 3000000000",
        ),
    ] {
        let mut args = vec!["serve"];
        args.extend_from_slice(&base);
        args.extend_from_slice(extra);
        let auto = args.iter().position(|a| *a == "xdp").unwrap();
        args[auto] = "auto";
        // A server that fell back to UDP would serve until killed.
        let out = Command::new("timeout")
            .arg("60")
            .arg(BIN)
            .args(&args)
            .output()
            .unwrap();
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{extra:?} served: {err}");
        assert!(
            err.contains(says) && !err.contains("falling back"),
            "{extra:?}: {err}"
        );
    }

    let (server, line) = Server::start_with(&base);
    assert!(
        line.contains("2 AF_XDP worker(s)") && line.contains("queues [0, 1]"),
        "{line}"
    );
    let (ok, stderr) = server.stop();
    assert!(ok, "{stderr}");
}

/// AF_XDP options given to a server that serves over kernel UDP (`--backend udp`, or `auto`
/// without `--iface`) are refused before anything is done, naming them; before, they were
/// ignored without a word.
#[test]
fn af_xdp_options_over_kernel_udp_are_refused() {
    for (backend, extra, named) in [
        (
            "udp",
            &["--queues", "0-1", "--huge-pages"][..],
            "--queues, --huge-pages are",
        ),
        ("udp", &["--iface", "lo"][..], "--iface is an"),
        (
            "auto",
            &["--umem-frames", "8192"][..],
            "--umem-frames is an",
        ),
        (
            "auto",
            &["--xdp-shield"][..],
            "--xdp-shield needs the AF_XDP backend",
        ),
    ] {
        let out = Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--backend", backend])
            .args(["--app", "echo"])
            .args(extra)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{backend} {extra:?}");
        assert!(
            text(&out.stderr).contains(named),
            "{backend} {extra:?}: {}",
            text(&out.stderr)
        );
    }
}

/// A RUST_LOG the log filter cannot read is an error naming it; before, the CLI went on with
/// `warn` and the operator never saw the logs asked for.
#[test]
fn an_invalid_rust_log_is_refused() {
    let out = Command::new(BIN)
        .arg("status")
        .env("RUST_LOG", "xdp_quic=verbose")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("RUST_LOG=\"xdp_quic=verbose\""),
        "{}",
        text(&out.stderr)
    );
}

/// Options the client's backend or application would ignore are refused, naming them, before
/// anything is done; before, `--iface` over kernel UDP, `--workers` for echo or `--path` for
/// perf went unused without a word.
#[test]
fn client_options_its_run_would_ignore_are_refused() {
    for (extra, named) in [
        (
            &["--app", "echo", "--iface", "lo", "--queues", "0"][..],
            "--iface, --queues are AF_XDP options",
        ),
        (&["--app", "echo", "--workers", "2"][..], "--workers not used by --app echo"),
        (&["--app", "perf", "--path", "/x"][..], "--path not used by --app perf"),
        (
            &["--app", "hq", "--path", "/x", "--streams", "4"][..],
            "--download, --upload, --requests, --duration, --connections, --streams not used by --app hq",
        ),
        (&["--app", "echo", "--json"][..], "--json not used by --app echo"),
        (
            &["--app", "perf", "--backend", "xdp", "--iface", "lo", "--workers", "2"][..],
            "--workers not used by --app perf over AF_XDP",
        ),
    ] {
        let mut args = vec!["client", "--connect", "127.0.0.1:9", "--insecure"];
        args.extend_from_slice(extra);
        fails_with(&args, named);
    }
}

/// `serve` and `demo` refuse options their run would not use, naming them: `--root` for the
/// echo and perf servers, the AF_XDP side's options for the UDP demo.
#[test]
fn serve_and_demo_options_their_run_would_ignore_are_refused() {
    for (args, named) in [
        (
            &[
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--app",
                "echo",
                "--root",
                "/tmp",
            ][..],
            "--root not used by --app echo",
        ),
        (
            &["demo", "--backend", "udp", "--tx", "xsk", "--spin", "5"][..],
            "--tx, --spin not used by the UDP demo",
        ),
    ] {
        fails_with(args, named);
    }
}

/// `stats IFACE --daemon ADDR` of an interface that is not there fails naming it (before, the
/// daemon's table was printed under that name, without end with `--watch`).
#[test]
fn stats_of_a_missing_interface_through_a_daemon_fails() {
    let out = Command::new(BIN)
        .args([
            "stats",
            "xqnosuch0",
            "--daemon",
            "127.0.0.1:9",
            "--watch",
            "1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no interface named \"xqnosuch0\""),
        "{}",
        text(&out.stderr)
    );
}
