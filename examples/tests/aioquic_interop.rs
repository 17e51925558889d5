//! Interop with aioquic, an independent QUIC implementation (Python), in the test cases of
//! the QUIC interop runner, with hq-interop (HTTP/0.9) as the application:
//! aioquic's client against our server (over UDP, and over AF_XDP as root), and our client
//! against aioquic's server. The aioquic peers are `scripts/interop/aioquic_*.py`; each
//! prints facts (resumed, 0-RTT accepted, version, cipher suite, key updates) that the
//! tests check.
//!
//! Run: `cargo test -p xdp-quic-examples --test aioquic_interop`

mod common;

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use common::{
    aioquic, command_in, quinn_client_config_with, run_rounds, ClientTls, Observed, Round,
    RoundsClient,
};
use rand::{RngCore, SeedableRng};
use xdp_quic::{tls, Counters, Engine, EngineBuilder, RetryPolicy, VarInt};
use xdp_quic_examples::hq::{self, Fetched, HqClient, HqServer};

const CLIENT_PY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../scripts/interop/aioquic_client.py"
);
const SERVER_PY: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../scripts/interop/aioquic_server.py"
);

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

/// Our hq-interop server's builder for `site` (every client validates its address first if
/// `retry`).
fn our_builder(site: &Site, retry: bool) -> EngineBuilder {
    let b = EngineBuilder::default()
        .server(tls::server_config(site.identity(), &[hq::ALPN]).unwrap())
        .drain_timeout(Duration::from_millis(300));
    if retry {
        b.retry(RetryPolicy::Always)
    } else {
        b
    }
}

fn our_server(site: &Site, retry: bool) -> Engine<Observed<HqServer>> {
    let www = site.www();
    our_builder(site, retry)
        .workers(2)
        .start_udp("127.0.0.1:0".parse().unwrap(), move |_| {
            Observed::new(HqServer::new(&www).unwrap())
        })
        .unwrap()
}

/// Runs aioquic's client for `case` against `addr` (inside `netns` if given; `rebind_ip` is
/// where the rebind-addr case moves to); returns its facts line.
fn aioquic_client(
    site: &Site,
    addr: SocketAddr,
    case: &str,
    netns: Option<&str>,
    rebind_ip: IpAddr,
) -> String {
    let mut cmd = command_in(netns, "python3");
    let out = cmd
        .arg(CLIENT_PY)
        .args([
            "--host",
            &addr.ip().to_string(),
            "--port",
            &addr.port().to_string(),
        ])
        .args(["--rebind-ip", &rebind_ip.to_string()])
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

/// The files each case fetches: (large files of ~3 MB, small files).
fn files_for(case: &str) -> (usize, usize) {
    match case {
        "transfer" => (2, 0),
        "multiplexing" => (0, 1000),
        "keyupdate" | "rebind-port" | "rebind-addr" => (1, 3),
        "chacha20" => (1, 2),
        "handshake" => (0, 1),
        _ => (0, 6),
    }
}

/// Checks what `case` must show besides the files arriving intact: aioquic's facts line, our
/// server's counters, and what its handlers saw (`client_ip` is where the client started,
/// `moved_ip` where the rebind-addr case moves).
fn check_case(
    case: &str,
    facts: &str,
    t: &Counters,
    seen: &[Observed<HqServer>],
    client_ip: IpAddr,
    moved_ip: IpAddr,
) {
    let has = |f: &str| facts.split_whitespace().any(|w| w == f);
    let conns = if matches!(case, "resumption" | "zerortt") {
        2
    } else {
        1
    };
    assert_eq!(
        (t.conns_accepted, t.handshakes),
        (conns, conns),
        "{case}: {t:?}"
    );
    let remotes: BTreeSet<SocketAddr> = seen.iter().flat_map(|h| h.remotes.clone()).collect();
    let ips: BTreeSet<IpAddr> = remotes.iter().map(|a| a.ip()).collect();
    let mut zero_rtt: Vec<bool> = seen.iter().flat_map(|h| h.zero_rtt.clone()).collect();
    zero_rtt.sort();
    match case {
        "handshake" | "transfer" | "multiplexing" => {}
        "retry" => assert_eq!(
            t.retries_sent, 1,
            "our server made the client validate its address"
        ),
        // (aioquic's resumed ClientHello asks for early data whenever the ticket allows it,
        // even when it sends none: so our server's 0-RTT flags are not checked here.)
        "resumption" => assert!(has("resumed=True"), "{facts}"),
        "zerortt" => {
            assert!(
                has("resumed=True") && has("early_data_accepted=True"),
                "{facts}"
            );
            assert_eq!(zero_rtt, [false, true], "our server accepted 0-RTT once");
        }
        "chacha20" => assert!(has("cipher=CHACHA20_POLY1305_SHA256"), "{facts}"),
        "keyupdate" => assert!(
            has("key_updated=True") && !has("local_key_updates=0"),
            "{facts}"
        ),
        "rebind-port" => {
            assert!(has("rebound=True"), "{facts}");
            assert!(remotes.len() >= 2, "our server saw one port: {remotes:?}");
            assert_eq!(ips, BTreeSet::from([client_ip]), "{remotes:?}");
        }
        "rebind-addr" => {
            assert!(has("rebound=True"), "{facts}");
            assert_eq!(
                ips,
                BTreeSet::from([client_ip, moved_ip]),
                "our server followed the client to its new address"
            );
        }
        "v2" => {
            assert!(has("version=0x1") && has("after_vn=True"), "{facts}");
            assert_eq!(
                t.version_negotiations, 1,
                "our server answered the v2 Initial with Version Negotiation"
            );
        }
        other => panic!("no checks for case {other}"),
    }
}

/// aioquic's client runs `case` against our server on loopback; every file must arrive
/// intact and the case's facts hold. Returns aioquic's facts line.
fn aioquic_against_ours(case: &str) -> String {
    let (big, small) = files_for(case);
    let site = Site::new(big, small);
    let engine = our_server(&site, case == "retry");
    let handle = engine.handle();
    let lo: IpAddr = "127.0.0.1".parse().unwrap();
    let moved: IpAddr = "127.0.0.2".parse().unwrap();
    let facts = aioquic_client(&site, engine.local_addr(), case, None, moved);
    site.check_out();
    let t = handle.total();
    let seen = engine.shutdown(VarInt::from_u32(0), b"").unwrap();
    check_case(case, &facts, &t, &seen, lo, moved);
    facts
}

#[test]
fn aioquic_client_handshake() {
    if aioquic() {
        aioquic_against_ours("handshake");
    }
}

#[test]
fn aioquic_client_transfer() {
    if aioquic() {
        aioquic_against_ours("transfer");
    }
}

#[test]
fn aioquic_client_multiplexing() {
    if aioquic() {
        aioquic_against_ours("multiplexing");
    }
}

#[test]
fn aioquic_client_retry() {
    if aioquic() {
        aioquic_against_ours("retry");
    }
}

#[test]
fn aioquic_client_resumption() {
    if aioquic() {
        aioquic_against_ours("resumption");
    }
}

#[test]
fn aioquic_client_zerortt() {
    if aioquic() {
        aioquic_against_ours("zerortt");
    }
}

#[test]
fn aioquic_client_chacha20() {
    if aioquic() {
        aioquic_against_ours("chacha20");
    }
}

#[test]
fn aioquic_client_keyupdate() {
    if aioquic() {
        aioquic_against_ours("keyupdate");
    }
}

#[test]
fn aioquic_client_rebind_port() {
    if aioquic() {
        aioquic_against_ours("rebind-port");
    }
}

#[test]
fn aioquic_client_rebind_addr() {
    if aioquic() {
        aioquic_against_ours("rebind-addr");
    }
}

/// aioquic offers QUIC v2 first; quinn-proto 0.11, under our server, speaks v1 only, so the
/// server answers with Version Negotiation and aioquic starts again in v1.
#[test]
fn aioquic_client_v2() {
    if aioquic() {
        aioquic_against_ours("v2");
    }
}

/// aioquic's server, for our client.
struct AioquicServer {
    child: std::process::Child,
    addr: SocketAddr,
    /// The server's lines after "ready": one per ended connection.
    lines: std::sync::mpsc::Receiver<String>,
}

impl AioquicServer {
    /// Starts it on a free loopback port; every client validates its address first if
    /// `retry`.
    fn start(site: &Site, retry: bool) -> AioquicServer {
        Self::start_at(site, retry, "127.0.0.1".parse().unwrap(), None)
    }

    /// Starts it on `host` (inside network namespace `netns` if given; port 4434 there, a
    /// port it picks itself, and reports, otherwise).
    fn start_at(
        site: &Site,
        retry: bool,
        host: std::net::IpAddr,
        netns: Option<&str>,
    ) -> AioquicServer {
        let port = match netns {
            Some(_) => 4434,
            None => 0,
        };
        let mut cmd = command_in(netns, "python3");
        cmd.arg(SERVER_PY)
            .args([
                "--host",
                &host.to_string(),
                "--port",
                &port.to_string(),
                "--cert",
            ])
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
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufRead::lines(std::io::BufReader::new(stdout)) {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut server = AioquicServer {
            child,
            addr: SocketAddr::new(host, port),
            lines,
        };
        let ready = server.next_line();
        let bound: u16 = ready
            .strip_prefix("ready port=")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("aioquic server: unexpected first line: {ready}"));
        assert!(
            port == 0 || bound == port,
            "asked for port {port}, got {bound}"
        );
        server.addr.set_port(bound);
        server
    }

    /// The next line the server prints (waiting at most [`common::HANG`]).
    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(common::HANG)
            .expect("aioquic server: no line within the hang guard")
    }

    /// The facts lines of the next `n` connections to end, in the order they ended.
    fn connections(&self, n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let l = self.next_line();
                assert!(l.starts_with("conn "), "unexpected line: {l}");
                l
            })
            .collect()
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
    let facts = server.connections(1);
    assert!(
        has(&facts[0], &format!("served={}", site.files.len())),
        "{facts:?}"
    );
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

/// Our [`RoundsClient`] fetches over hq-interop from aioquic's server: `rounds[i]` names
/// the site's files (by index) that connection `i` requests; `config` is our client's TLS
/// configuration (`xdp_quic::tls::client_config` if `None`); `key_update_every` and `early`
/// apply to every round. Checks every file arrived intact; returns the client and the
/// server's facts lines (in the order the connections ended).
fn ours_rounds_against_aioquic(
    site: &Site,
    config: Option<quinn::ClientConfig>,
    rounds: &[&[usize]],
    early: &[bool],
    key_update_every: Option<usize>,
) -> (RoundsClient, Vec<String>) {
    let server = AioquicServer::start(site, false);
    let cert = tls::certs_from_pem_file(&site.dir.join("cert.pem")).unwrap();
    let config = config.unwrap_or_else(|| {
        tls::client_config(tls::Trust::Roots(cert.clone()), &[hq::ALPN]).unwrap()
    });
    let b = EngineBuilder::default()
        .client(config)
        .drain_timeout(Duration::from_millis(300));
    let plan: Vec<Round> = rounds
        .iter()
        .zip(early)
        .map(|(files, &early)| Round {
            requests: files
                .iter()
                .map(|&i| Bytes::from(format!("GET /{}\r\n", site.files[i].0)))
                .collect(),
            early,
            key_update_every,
        })
        .collect();
    let (c, _) = run_rounds(b, server.addr, plan);
    for (r, files) in rounds.iter().enumerate() {
        for (k, &i) in files.iter().enumerate() {
            let (name, body) = &site.files[i];
            match &c.responses[r][k] {
                Some(Ok(got)) => assert!(got[..] == body[..], "round {r}: {name} differs"),
                other => panic!("round {r}: {name}: {other:?} ({:?})", c.facts[r]),
            }
        }
    }
    let facts = server.connections(rounds.len());
    (c, facts)
}

fn has(line: &str, fact: &str) -> bool {
    line.split_whitespace().any(|w| w == fact)
}

#[test]
fn our_client_against_aioquic_server_chacha20() {
    if !aioquic() {
        return;
    }
    let site = Site::new(1, 2);
    // Our client offers TLS_CHACHA20_POLY1305_SHA256 alone.
    let cert = tls::certs_from_pem_file(&site.dir.join("cert.pem")).unwrap();
    let tls = ClientTls {
        chacha20_only: true,
        ..Default::default()
    };
    let config = quinn_client_config_with(cert[0].clone(), hq::ALPN, tls).0;
    let (_, facts) =
        ours_rounds_against_aioquic(&site, Some(config), &[&[0, 1, 2]], &[false], None);
    assert!(
        has(&facts[0], "cipher=CHACHA20_POLY1305_SHA256"),
        "{facts:?}"
    );
}

#[test]
fn our_client_against_aioquic_server_keyupdate() {
    if !aioquic() {
        return;
    }
    let site = Site::new(1, 2);
    // The big file six times (18 MB), a key update forced every 512 KiB. quinn-proto makes
    // at most one update of its own in a connection (early, to exercise the peer; after any
    // update the next falls due at AES-GCM's confidentiality limit, 2^23 packets), and
    // ignores a forced one while the last is under way (three PTOs): so aioquic counting two
    // or more proves that our forced updates took effect. (With 9 MB, a transfer that ran
    // within a few PTOs of the first update under CI's load saw only one.)
    let (c, facts) = ours_rounds_against_aioquic(
        &site,
        None,
        &[&[0, 0, 0, 0, 0, 0, 1]],
        &[false],
        Some(512 * 1024),
    );
    assert!(c.facts[0].key_updates_forced >= 17, "{:?}", c.facts[0]);
    let updates = facts[0]
        .split_whitespace()
        .find_map(|w| w.strip_prefix("key_updates="))
        .and_then(|n| n.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("no key_updates= in {facts:?}"));
    assert!(updates >= 2, "aioquic saw {updates} key updates: {facts:?}");
}

#[test]
fn our_client_against_aioquic_server_resumption() {
    if !aioquic() {
        return;
    }
    let site = Site::new(0, 6);
    let (c, facts) = ours_rounds_against_aioquic(
        &site,
        None,
        &[&[0, 1, 2], &[3, 4, 5]],
        &[false, false],
        None,
    );
    assert!(c.facts.iter().all(|f| f.connected), "{:?}", c.facts);
    let resumed: Vec<bool> = facts.iter().map(|l| has(l, "resumed=True")).collect();
    assert!(
        resumed.contains(&true) && resumed.contains(&false),
        "one full handshake, one resumed: {facts:?}"
    );
}

#[test]
fn our_client_against_aioquic_server_zerortt() {
    if !aioquic() {
        return;
    }
    let site = Site::new(0, 6);
    let (c, facts) =
        ours_rounds_against_aioquic(&site, None, &[&[0, 1, 2], &[3, 4, 5]], &[false, true], None);
    let f = &c.facts[1];
    assert!(f.had_0rtt, "our client held no 0-RTT keys: {f:?}");
    assert_eq!(f.sent_early, 3, "every request went out as 0-RTT: {f:?}");
    assert!(f.accepted_0rtt, "aioquic refused our 0-RTT data: {f:?}");
    assert!(
        facts
            .iter()
            .any(|l| has(l, "early_data=True") && has(l, "resumed=True")),
        "{facts:?}"
    );
}

/// The cases of the aioquic client against our server over AF_XDP, in a testbed.
const AF_XDP_CASES: [&str; 11] = [
    "handshake",
    "transfer",
    "multiplexing",
    "retry",
    "resumption",
    "zerortt",
    "chacha20",
    "keyupdate",
    "rebind-port",
    "rebind-addr",
    "v2",
];

/// aioquic's client in the peer namespace against our server over AF_XDP, every case in one
/// testbed (the client namespace gets a second address for rebind-addr).
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
    let tb = Testbed::create(&xdp_quic_control::testing::unique_name("xa"), 2, 220).unwrap();
    let moved = std::net::Ipv4Addr::new(10, 220, 0, 3);
    let out = Command::new("ip")
        .args(["-n", &tb.client_ns, "addr", "add", &format!("{moved}/24")])
        .args(["dev", &tb.client_if])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for case in AF_XDP_CASES {
        let (big, small) = match case {
            "multiplexing" => (0, 500),
            c => files_for(c),
        };
        let site = Site::new(big, small);
        let b = our_builder(&site, case == "retry");
        let setup =
            xdp_quic::XdpSetup::new(&tb.server_if, "[::]:4433".parse().unwrap(), vec![0, 1]);
        let www = site.www();
        let (engine, _attachment) = tb
            .serve_xdp(
                b,
                &setup,
                xdp_quic_control::xdp::AttachMode::Native,
                move |_| Observed::new(HqServer::new(&www).unwrap()),
            )
            .unwrap();
        let handle = engine.handle();
        let addr = SocketAddr::new(tb.server_v4.into(), 4433);
        let facts = aioquic_client(&site, addr, case, Some(&tb.client_ns), moved.into());
        eprintln!("AF_XDP {case}: {facts}");
        site.check_out();
        let t = handle.total();
        let seen = engine.shutdown(VarInt::from_u32(0), b"").unwrap();
        check_case(case, &facts, &t, &seen, tb.client_v4.into(), moved.into());
    }
}

/// Our hq client over AF_XDP (its interface in the client namespace, the program attached
/// for its port, transmitting through the kernel) fetches aioquic's files byte-exact, IPv4
/// and IPv6.
#[test]
fn our_client_over_af_xdp_against_aioquic_server() {
    if !aioquic()
        || !xdp_quic_control::testing::privileged("our_client_over_af_xdp_against_aioquic_server")
    {
        return;
    }
    use xdp_quic_control::testbed::Testbed;
    let tb = Testbed::create(&xdp_quic_control::testing::unique_name("xo"), 2, 226).unwrap();
    // Our AF_XDP reader is on the client's side: full checksums from the server's.
    tb.full_checksums_from_server().unwrap();
    let site = Site::new(1, 200);
    for v6 in [false, true] {
        let server = AioquicServer::start_at(&site, false, tb.server_ip(v6), Some(&tb.server_ns));
        let trust =
            tls::Trust::Roots(tls::certs_from_pem_file(&site.dir.join("cert.pem")).unwrap());
        let b = EngineBuilder::default().client(tls::client_config(trust, &[hq::ALPN]).unwrap());
        let (addr, paths) = (server.addr, site.paths());
        let iface = tb.client_if.clone();
        let h = tb
            .in_client(move || {
                let setup = xdp_quic::XdpSetup::new(
                    &iface,
                    xdp_quic_examples::client::any_local_for(addr),
                    vec![0, 1],
                );
                let (x, _port) = xdp_quic_control::serve::start_xdp_client(
                    b,
                    &setup,
                    xdp_quic_control::xdp::AttachMode::Native,
                    move |_| HqClient::new(addr, "localhost", paths.clone()),
                )
                .unwrap();
                assert!(
                    x.engine
                        .xsk_queues()
                        .iter()
                        .all(|q| q.tx == xdp_quic::backend::xsk::TxPath::Kernel),
                    "a client transmits through the kernel"
                );
                let (hs, _) =
                    xdp_quic_examples::client::run_on_first(x.engine, |h, ctx| h.start(ctx))
                        .unwrap();
                hs.into_iter().next().unwrap()
            })
            .unwrap();
        for ((name, body), r) in site.files.iter().zip(&h.results) {
            match r {
                Some(Fetched::Body(b)) => assert!(b[..] == body[..], "{name} differs (v6 {v6})"),
                other => panic!("{name} (v6 {v6}): {other:?}"),
            }
        }
        let facts = server.connections(1);
        assert!(
            has(&facts[0], &format!("served={}", site.files.len())),
            "{facts:?}"
        );
    }
}
