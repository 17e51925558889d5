//! Interop with aioquic, an independent QUIC implementation (Python), in the test cases of
//! the QUIC interop runner, with hq-interop (HTTP/0.9) as the application:
//! aioquic's client against our server (over UDP, and over AF_XDP as root), and our client
//! against aioquic's server. The aioquic peers are `scripts/interop/aioquic_*.py`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use rand::{RngCore, SeedableRng};
use xdp_quic::{tls, Engine, EngineBuilder, RetryPolicy, VarInt};
use xdp_quic_examples::hq::{self, Fetched, HqClient, HqServer};

const CLIENT_PY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../scripts/interop/aioquic_client.py"
);
const SERVER_PY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../scripts/interop/aioquic_server.py"
);

fn aioquic() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import aioquic"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "aioquic is missing and CI is set (scripts/setup.sh installs it)"
        );
        eprintln!("skipped: python3 -m pip install aioquic");
    }
    ok
}

/// A directory of files to serve, the certificate, and where fetched files go.
struct Site {
    dir: PathBuf,
    files: Vec<(String, Vec<u8>)>,
}

impl Site {
    fn new(big: usize, small: usize) -> Site {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "xq-aioquic-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("www")).unwrap();
        std::fs::create_dir_all(dir.join("out")).unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(9);
        let mut files = Vec::new();
        for i in 0..big {
            let mut b = vec![0u8; 3_000_000 + i];
            rng.fill_bytes(&mut b);
            files.push((format!("big{i}.bin"), b));
        }
        for i in 0..small {
            let mut b = vec![0u8; 32 + (i * 37) % 1000];
            rng.fill_bytes(&mut b);
            files.push((format!("s{i}.txt"), b));
        }
        for (name, body) in &files {
            std::fs::write(dir.join("www").join(name), body).unwrap();
        }
        let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(dir.join("cert.pem"), ck.cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), ck.key_pair.serialize_pem()).unwrap();
        Site { dir, files }
    }

    fn www(&self) -> PathBuf {
        self.dir.join("www")
    }

    fn paths(&self) -> Vec<String> {
        self.files.iter().map(|(n, _)| format!("/{n}")).collect()
    }

    /// Every file arrived in `out`, byte for byte.
    fn check_out(&self) {
        for (name, body) in &self.files {
            let got = std::fs::read(self.dir.join("out").join(name))
                .unwrap_or_else(|_| panic!("{name} missing"));
            assert!(&got == body, "{name} differs");
        }
    }

    fn identity(&self) -> tls::Identity {
        tls::Identity::from_pem_files(&self.dir.join("cert.pem"), &self.dir.join("key.pem"))
            .unwrap()
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn our_server(site: &Site, retry: bool) -> Engine<HqServer> {
    let mut b = EngineBuilder::default()
        .workers(2)
        .server(tls::server_config(site.identity(), &[hq::ALPN]).unwrap())
        .drain_timeout(Duration::from_millis(300));
    if retry {
        b = b.retry(RetryPolicy::Always);
    }
    let www = site.www();
    b.start_udp("127.0.0.1:0".parse().unwrap(), move |_| {
        HqServer::new(&www).unwrap()
    })
    .unwrap()
}

/// Runs aioquic's client for `case` against `addr` (inside `netns` if given); returns its
/// facts line.
fn aioquic_client(site: &Site, addr: SocketAddr, case: &str, netns: Option<&str>) -> String {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "python3"]);
            c
        }
        None => Command::new("python3"),
    };
    let out = cmd
        .arg(CLIENT_PY)
        .args([
            "--host",
            &addr.ip().to_string(),
            "--port",
            &addr.port().to_string(),
        ])
        .args(["--case", case, "--out"])
        .arg(site.dir.join("out"))
        .args(site.paths())
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "aioquic client, case {case}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn aioquic_against_ours(
    case: &str,
    big: usize,
    small: usize,
    retry: bool,
) -> (String, xdp_quic::Counters) {
    let site = Site::new(big, small);
    let engine = our_server(&site, retry);
    let facts = aioquic_client(&site, engine.local_addr(), case, None);
    site.check_out();
    let handle = engine.handle();
    engine.shutdown(VarInt::from_u32(0), b"").unwrap();
    (facts, handle.total())
}

#[test]
fn aioquic_client_handshake() {
    if aioquic() {
        let (_, t) = aioquic_against_ours("handshake", 0, 1, false);
        assert_eq!(t.handshakes, 1);
    }
}

#[test]
fn aioquic_client_transfer() {
    if aioquic() {
        aioquic_against_ours("transfer", 2, 0, false);
    }
}

#[test]
fn aioquic_client_multiplexing() {
    if aioquic() {
        aioquic_against_ours("multiplexing", 0, 1000, false);
    }
}

#[test]
fn aioquic_client_retry() {
    if aioquic() {
        let (_, t) = aioquic_against_ours("retry", 0, 5, true);
        assert_eq!(
            t.retries_sent, 1,
            "our server made the client validate its address"
        );
    }
}

#[test]
fn aioquic_client_resumption() {
    if aioquic() {
        let (facts, t) = aioquic_against_ours("resumption", 0, 6, false);
        assert!(facts.contains("resumed=True"), "{facts}");
        assert_eq!(t.handshakes, 2);
    }
}

#[test]
fn aioquic_client_zerortt() {
    if aioquic() {
        let (facts, _) = aioquic_against_ours("zerortt", 0, 6, false);
        assert!(
            facts.contains("resumed=True") && facts.contains("zero_rtt=True"),
            "{facts}"
        );
    }
}

#[test]
fn aioquic_client_chacha20() {
    if aioquic() {
        aioquic_against_ours("chacha20", 1, 2, false);
    }
}

#[test]
fn aioquic_client_keyupdate() {
    if aioquic() {
        let (facts, _) = aioquic_against_ours("keyupdate", 1, 2, false);
        assert!(facts.contains("key_updated=True"), "{facts}");
    }
}

#[test]
fn aioquic_client_rebind_port() {
    if aioquic() {
        let (facts, t) = aioquic_against_ours("rebind-port", 1, 3, false);
        assert!(facts.contains("rebound=True"), "{facts}");
        assert_eq!(
            t.conns_accepted, 1,
            "the rebound client kept its connection"
        );
    }
}

/// aioquic's server, for our client.
struct AioquicServer {
    child: std::process::Child,
    addr: SocketAddr,
}

impl AioquicServer {
    fn start(site: &Site, retry: bool) -> AioquicServer {
        let port = std::net::UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut cmd = Command::new("python3");
        cmd.arg(SERVER_PY)
            .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--cert"])
            .arg(site.dir.join("cert.pem"))
            .arg("--key")
            .arg(site.dir.join("key.pem"))
            .arg("--root")
            .arg(site.www())
            .stdout(Stdio::piped());
        if retry {
            cmd.arg("--retry");
        }
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        std::io::BufRead::read_line(
            &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
            &mut line,
        )
        .unwrap();
        assert_eq!(line.trim(), "ready");
        AioquicServer {
            child,
            addr: format!("127.0.0.1:{port}").parse().unwrap(),
        }
    }
}

impl Drop for AioquicServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn ours_against_aioquic(big: usize, small: usize, retry: bool) {
    let site = Site::new(big, small);
    let server = AioquicServer::start(&site, retry);
    let trust = tls::Trust::Roots(tls::certs_from_pem_file(&site.dir.join("cert.pem")).unwrap());
    let b = EngineBuilder::default().client(tls::client_config(trust, &[hq::ALPN]).unwrap());
    let (addr, paths) = (server.addr, site.paths());
    let (mut hs, _) = xdp_quic_examples::client::run(
        b,
        "127.0.0.1:0".parse().unwrap(),
        move |_| HqClient::new(addr, "localhost", paths.clone()),
        |h: &mut HqClient, ctx| h.start(ctx),
    )
    .unwrap();
    let h = hs.pop().unwrap();
    for ((name, body), r) in site.files.iter().zip(&h.results) {
        match r {
            Some(Fetched::Body(b)) => assert!(b[..] == body[..], "{name} differs"),
            other => panic!("{name}: {other:?}"),
        }
    }
}

#[test]
fn our_client_against_aioquic_server_handshake_and_transfer() {
    if aioquic() {
        ours_against_aioquic(2, 1, false);
    }
}

#[test]
fn our_client_against_aioquic_server_multiplexing() {
    if aioquic() {
        ours_against_aioquic(0, 1000, false);
    }
}

#[test]
fn our_client_against_aioquic_server_retry() {
    if aioquic() {
        ours_against_aioquic(0, 5, true);
    }
}

/// aioquic's client in the peer namespace against our server over AF_XDP.
#[test]
fn aioquic_client_against_our_server_over_af_xdp() {
    if !aioquic() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        assert!(std::env::var_os("CI").is_none(), "needs root and CI is set");
        return;
    }
    use xdp_quic_control::testbed::Testbed;
    let tb = Testbed::create(&format!("xa{}", std::process::id() % 100_000), 2, 220).unwrap();
    for case in ["handshake", "transfer", "multiplexing", "rebind-port"] {
        let site = match case {
            "transfer" => Site::new(2, 0),
            "multiplexing" => Site::new(0, 500),
            _ => Site::new(1, 2),
        };
        let b = EngineBuilder::default()
            .server(tls::server_config(site.identity(), &[hq::ALPN]).unwrap())
            .drain_timeout(Duration::from_millis(300));
        let setup =
            xdp_quic::XdpSetup::new(&tb.server_if, "[::]:4433".parse().unwrap(), vec![0, 1]);
        let www = site.www();
        let (engine, _attachment) = tb
            .serve_xdp(
                b,
                &setup,
                xdp_quic_control::xdp::AttachMode::Native,
                move |_| HqServer::new(&www).unwrap(),
            )
            .unwrap();
        let addr = SocketAddr::new(tb.server_v4.into(), 4433);
        aioquic_client(&site, addr, case, Some(&tb.client_ns));
        site.check_out();
        engine.shutdown(VarInt::from_u32(0), b"").unwrap();
    }
}
