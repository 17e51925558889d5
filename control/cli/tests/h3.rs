//! `xdp-quic serve --app h3` and `client --app h3` end to end, against independent HTTP/3
//! stacks: aioquic's client and server (`scripts/interop/aioquic_h3.py`) and ngtcp2's client
//! (`gtlsclient`, Debian package ngtcp2-client: ngtcp2 + nghttp3). Files byte-exact (1 KB,
//! 10 MB, 500 small ones on one connection) over kernel UDP and AF_XDP, IPv4 and IPv6; 404,
//! 405, HEAD; paths outside the root refused; GOAWAY on SIGTERM with a request in flight.
//!
//! Run: `cargo test -p xdp-quic-cli --test h3`

use std::io::{BufRead, BufReader, Read};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use rand::{RngCore, SeedableRng};
use xdp_quic_control::testing::dies_with_test;

const BIN: &str = env!("CARGO_BIN_EXE_xdp-quic");
const H3_PY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../scripts/interop/aioquic_h3.py"
);

fn have(what: &str, probe: &mut Command) -> bool {
    let ok = probe.output().is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "{what} is missing and CI is set (scripts/setup.sh installs it)"
        );
        eprintln!("skipped: {what} is missing (scripts/setup.sh)");
    }
    ok
}

fn aioquic() -> bool {
    have(
        "aioquic",
        Command::new("python3").args(["-c", "import aioquic"]),
    )
}

fn ngtcp2() -> bool {
    have(
        "gtlsclient (ngtcp2-client)",
        Command::new("sh").args(["-c", "command -v gtlsclient"]),
    )
}

/// A directory of files to serve, removed on drop.
struct Site {
    dir: PathBuf,
    files: Vec<(String, Vec<u8>)>,
}

impl Site {
    fn new(small: usize) -> Site {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("xq-h3-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("www")).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(16);
        let mut files = Vec::new();
        for (name, len) in [
            ("one-kb.bin".to_string(), 1024),
            ("ten-mb.bin".into(), 10_000_000),
        ]
        .into_iter()
        .chain((0..small).map(|i| (format!("s{i}.txt"), 20 + i * 7 % 900)))
        {
            let mut b = vec![0u8; len];
            rng.fill_bytes(&mut b);
            files.push((name, b));
        }
        for (name, body) in &files {
            std::fs::write(dir.join("www").join(name), body).unwrap();
        }
        std::fs::write(dir.join("secret"), b"outside the root").unwrap();
        std::os::unix::fs::symlink(dir.join("secret"), dir.join("www").join("link")).unwrap();
        Site { dir, files }
    }

    fn www(&self) -> PathBuf {
        self.dir.join("www")
    }

    /// A fresh, empty download directory.
    fn out(&self, name: &str) -> PathBuf {
        let d = self.dir.join(name);
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn paths(&self) -> Vec<String> {
        self.files.iter().map(|(n, _)| format!("/{n}")).collect()
    }

    /// Every file is in `out`, byte for byte.
    fn check(&self, out: &Path, who: &str) {
        for (name, body) in &self.files {
            let got =
                std::fs::read(out.join(name)).unwrap_or_else(|_| panic!("{who}: {name} missing"));
            assert!(&got == body, "{who}: {name} differs");
        }
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running `xdp-quic serve --app h3`, killed on drop if still running.
struct Server {
    child: Option<Child>,
    port: u16,
    stderr: BufReader<std::process::ChildStderr>,
}

impl Server {
    fn start(site: &Site, args: &[&str]) -> Server {
        let mut child = dies_with_test(&mut Command::new(BIN))
            .args(["serve", "--app", "h3", "--root"])
            .arg(site.www())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let pid = child.id() as i32;
        let (done, watchdog) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                watchdog.recv_timeout(std::time::Duration::from_secs(60))
            {
                // SAFETY: kill(2) on our child's pid, not yet waited for.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        let mut line = String::new();
        loop {
            line.clear();
            assert!(
                stderr.read_line(&mut line).unwrap() > 0,
                "serve ended before serving"
            );
            if line.starts_with("serving H3 on ") {
                break;
            }
        }
        let _ = done.send(());
        let port = line
            .split_whitespace()
            .nth(3)
            .and_then(|a| a.parse::<SocketAddr>().ok())
            .unwrap_or_else(|| panic!("no address in {line:?}"))
            .port();
        Server {
            child: Some(child),
            port,
            stderr,
        }
    }

    /// Sends `signal`, waits for the exit; the status and the rest of stderr.
    fn stop(mut self, signal: i32) -> (std::process::ExitStatus, String) {
        let mut child = self.child.take().unwrap();
        // SAFETY: kill(2) on our child's pid, not yet waited for.
        unsafe { libc::kill(child.id() as i32, signal) };
        let status = child.wait().unwrap();
        let mut rest = String::new();
        self.stderr.read_to_string(&mut rest).unwrap();
        (status, rest)
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

/// `cmd` run inside `netns` if given.
fn command(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => Command::new(program),
    }
}

/// aioquic's HTTP/3 client: requests `paths` with `method` on one connection to `ip:port`,
/// saving bodies into `out`; its output lines.
fn aioquic_get(
    ip: IpAddr,
    port: u16,
    method: &str,
    paths: &[String],
    out: Option<&Path>,
    netns: Option<&str>,
) -> String {
    let mut cmd = command(netns, "python3");
    cmd.args([H3_PY, "client", "--host", &ip.to_string()])
        .args(["--port", &port.to_string(), "--method", method])
        .args(paths);
    if let Some(out) = out {
        cmd.arg("--out").arg(out);
    }
    let o = cmd.stdin(Stdio::null()).output().unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        o.status.success(),
        "aioquic h3 client: {stdout}\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    stdout
}

/// ngtcp2's client: fetches `paths` on one connection, into `out`.
fn ngtcp2_get(ip: IpAddr, port: u16, paths: &[String], out: &Path, netns: Option<&str>) {
    let host = match ip {
        IpAddr::V6(_) => format!("[{ip}]"),
        IpAddr::V4(_) => ip.to_string(),
    };
    let o = command(netns, "gtlsclient")
        .args(["--quiet", "--exit-on-all-streams-close", "--timeout=30s"])
        .args(["--max-streams-bidi=1000", "--download"])
        .arg(out)
        .args([&ip.to_string(), &port.to_string()])
        .args(paths.iter().map(|p| format!("https://{host}:{port}{p}")))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "gtlsclient: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Fetches every file of `site` from `port` with both clients, IPv4 and IPv6.
fn both_clients_fetch_everything(site: &Site, port: u16, ips: [IpAddr; 2], netns: Option<&str>) {
    for ip in ips {
        let out = site.out("aioquic");
        let lines = aioquic_get(ip, port, "GET", &site.paths(), Some(&out), netns);
        assert_eq!(
            lines.lines().filter(|l| l.starts_with("done ")).count(),
            site.files.len()
        );
        site.check(&out, &format!("aioquic over {ip}"));
        let out = site.out("ngtcp2");
        ngtcp2_get(ip, port, &site.paths(), &out, netns);
        site.check(&out, &format!("ngtcp2 over {ip}"));
    }
}

#[test]
fn independent_clients_fetch_files_over_udp_ipv4_and_ipv6() {
    if !aioquic() || !ngtcp2() {
        return;
    }
    let site = Site::new(500);
    let server = Server::start(&site, &["--listen", "[::]:0", "--workers", "2"]);
    both_clients_fetch_everything(
        &site,
        server.port,
        ["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
        None,
    );
    let (status, rest) = server.stop(libc::SIGINT);
    assert!(status.success(), "{rest}");
}

#[test]
fn errors_methods_and_paths_outside_the_root() {
    if !aioquic() {
        return;
    }
    let site = Site::new(0);
    let server = Server::start(&site, &["--listen", "127.0.0.1:0"]);
    let ip: IpAddr = "127.0.0.1".parse().unwrap();
    let asked: Vec<String> = [
        "/missing",
        "/link",
        "/../secret",
        "/%2e%2e/secret",
        "/one-kb.bin",
    ]
    .map(String::from)
    .into();
    let lines = aioquic_get(ip, server.port, "GET", &asked, None, None);
    for (path, want) in [
        ("/missing", "404 0"),
        ("/link", "404 0"),
        ("/../secret", "404 0"),
        ("/%2e%2e/secret", "404 0"),
        (
            "/one-kb.bin",
            "200 1024 content-length=1024 content-type=application/octet-stream",
        ),
    ] {
        let line = format!("done {path} {want}");
        assert!(lines.contains(&line), "{line:?} not in\n{lines}");
    }
    let lines = aioquic_get(ip, server.port, "POST", &["/one-kb.bin".into()], None, None);
    assert!(lines.contains("done /one-kb.bin 405 0"), "{lines}");
    let lines = aioquic_get(ip, server.port, "HEAD", &["/ten-mb.bin".into()], None, None);
    assert!(
        lines.contains("done /ten-mb.bin 200 0 content-length=10000000"),
        "HEAD: the length GET would have, no body: {lines}"
    );
}

#[test]
fn our_h3_client_against_aioquic_server() {
    if !aioquic() {
        return;
    }
    let site = Site::new(20);
    let pem = site.dir.join("pem");
    std::fs::create_dir_all(&pem).unwrap();
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    std::fs::write(pem.join("cert.pem"), ck.cert.pem()).unwrap();
    std::fs::write(pem.join("key.pem"), ck.key_pair.serialize_pem()).unwrap();
    for host in ["127.0.0.1", "::1"] {
        let mut child = Command::new("python3")
            .args([H3_PY, "server", "--host", host, "--port", "0", "--cert"])
            .arg(pem.join("cert.pem"))
            .arg("--key")
            .arg(pem.join("key.pem"))
            .arg("--root")
            .arg(site.www())
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        struct Kill(Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let mut ready = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut ready)
            .unwrap();
        let _server = Kill(child);
        let port: u16 = ready
            .trim()
            .strip_prefix("ready port=")
            .unwrap_or_else(|| panic!("{ready:?}"))
            .parse()
            .unwrap();
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        let out = site.out("ours");
        let mut cmd = Command::new(BIN);
        cmd.args(["client", "--app", "h3", "--ca"])
            .arg(pem.join("cert.pem"))
            .args(["--server-name", "localhost", "--out"])
            .arg(&out);
        for p in site.paths() {
            cmd.args(["--url", &format!("https://{authority}{p}")]);
        }
        let o = cmd.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        site.check(&out, &format!("our client over {host}"));
        // A missing file: the status is printed and the exit status says so.
        let o = Command::new(BIN)
            .args(["client", "--app", "h3", "--insecure"])
            .args(["--url", &format!("https://{authority}/missing")])
            .output()
            .unwrap();
        assert!(!o.status.success());
        assert!(
            String::from_utf8_lossy(&o.stdout).contains("/missing: 404"),
            "{}",
            String::from_utf8_lossy(&o.stdout)
        );
    }
}

#[test]
fn sigterm_sends_goaway_and_lets_the_request_in_flight_finish() {
    if !aioquic() {
        return;
    }
    let site = Site::new(0);
    let server = Server::start(&site, &["--listen", "127.0.0.1:0"]);
    let out = site.out("goaway");
    let mut client = Command::new("python3")
        .args([H3_PY, "client", "--host", "127.0.0.1"])
        .args(["--port", &server.port.to_string(), "--out"])
        .arg(&out)
        .arg("/ten-mb.bin")
        .stdout(Stdio::piped())
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(client.stdout.take().unwrap());
    let mut line = String::new();
    lines.read_line(&mut line).unwrap();
    assert!(line.starts_with("headers /ten-mb.bin 200"), "{line:?}");
    // The response has begun: stop the server under it.
    let (status, rest) = server.stop(libc::SIGTERM);
    let mut tail = String::new();
    lines.read_to_string(&mut tail).unwrap();
    let client_status = client.wait().unwrap();
    assert!(client_status.success(), "the client: {tail}");
    assert!(tail.contains("done /ten-mb.bin 200 10000000"), "{tail}");
    let got = std::fs::read(out.join("ten-mb.bin")).unwrap();
    assert!(got == site.files[1].1, "the body in flight arrived whole");
    assert!(status.success(), "{rest}");
    assert!(rest.contains("GOAWAY sent"), "{rest}");
}

#[test]
fn independent_clients_fetch_files_over_af_xdp_ipv4_and_ipv6() {
    if !aioquic() || !ngtcp2() || !xdp_quic_control::testing::privileged("h3 over AF_XDP") {
        return;
    }
    let tb = xdp_quic_control::testbed::Testbed::create(
        &xdp_quic_control::testing::unique_name("xh"),
        2,
        224,
    )
    .unwrap();
    let site = Site::new(500);
    let server = Server::start(
        &site,
        &[
            "--netns",
            &tb.server_ns,
            "--listen",
            "[::]:4433",
            "--backend",
            "xdp",
            "--iface",
            &tb.server_if,
        ],
    );
    both_clients_fetch_everything(
        &site,
        server.port,
        [tb.server_ip(false), tb.server_ip(true)],
        Some(&tb.client_ns),
    );
    let (status, rest) = server.stop(libc::SIGINT);
    assert!(status.success(), "{rest}");
}
