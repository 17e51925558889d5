//! `xdp-quic-h3-bench`: HTTP/3 requests/s of 1 KB and 100 KB responses, side by side in one
//! run: quinn + h3-quinn against xdp-quic's async API through `xdp-quic-h3`, over kernel UDP
//! and AF_XDP, in the application's runtime and thread-per-core. Every server runs the same
//! HTTP/3 application ([`serve_h3`], generic over h3's QUIC traits: only the QUIC stack
//! differs).
//!
//! The testbed is the bench's: two network namespaces joined by a veth pair (1 queue),
//! native XDP, the server's offloads on, the client's TX checksum offload off. The server is a
//! child process pinned to CPU 0 with one worker; the load comes from xdp-quic's async HTTP/3
//! client pinned to CPU 1 (16 connections × 16 requests in flight, each answered in full and
//! counted). Per run: requests/s, server process CPU per request and machine CPU per request
//! (/proc/stat, both cores); the busy fraction of the client's core, flagged when it was
//! ≥95% in any run (the client may have set the pace).
//! Repeated (servers interleaved), medians with min–max.
//!
//! ```text
//! cargo run --release -p xdp-quic-bench --bin xdp-quic-h3-bench -- [--quick] [--repeat 3] [--secs 5] [--json FILE]
//! ```
//! Needs root (network namespaces, XDP).

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, SocketAddr};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use xdp_quic::{tls, EngineBuilder, XdpSetup};
use xdp_quic_control::testbed::Testbed;

// The main bench's pinning and CPU accounting (only part of it is used here).
#[allow(dead_code)]
#[path = "../sys.rs"]
mod sys;

const PORT: u16 = 4433;
const SERVER_CPU: usize = 0;
const CLIENT_CPU: usize = 1;
const CONNS: usize = 16;
const STREAMS: usize = 16;
const SIZES: [usize; 2] = [1_000, 100_000];
static ZEROS: [u8; 100_000] = [0; 100_000];

#[derive(Debug, Parser)]
#[command(about = "HTTP/3 requests/s: quinn + h3-quinn vs xdp-quic's async API")]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// A short run (1 repetition of 1 s): checks that every server works.
    #[arg(long)]
    quick: bool,
    /// Repetitions of each measurement.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Seconds of load per measurement.
    #[arg(long, default_value_t = 5.0)]
    secs: f64,
    /// Also write the results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// (internal) one server under test; prints "ready", serves until stdin closes.
    #[command(hide = true)]
    Server {
        #[arg(long, value_enum)]
        kind: Kind,
        #[arg(long)]
        iface: String,
        #[arg(long)]
        cert: std::path::PathBuf,
        #[arg(long)]
        key: std::path::PathBuf,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Kind {
    Quinn,
    UdpRt,
    UdpTpc,
    XdpRt,
    XdpTpc,
}

impl Kind {
    const ALL: [Kind; 5] = [
        Kind::Quinn,
        Kind::UdpRt,
        Kind::UdpTpc,
        Kind::XdpRt,
        Kind::XdpTpc,
    ];

    fn label(self) -> &'static str {
        match self {
            Kind::Quinn => "quinn + h3-quinn",
            Kind::UdpRt => "xdp-quic UDP, app runtime",
            Kind::UdpTpc => "xdp-quic UDP, thread-per-core",
            Kind::XdpRt => "xdp-quic AF_XDP, app runtime",
            Kind::XdpTpc => "xdp-quic AF_XDP, thread-per-core",
        }
    }

    fn arg(self) -> &'static str {
        match self {
            Kind::Quinn => "quinn",
            Kind::UdpRt => "udp-rt",
            Kind::UdpTpc => "udp-tpc",
            Kind::XdpRt => "xdp-rt",
            Kind::XdpTpc => "xdp-tpc",
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Cmd::Server {
        kind,
        iface,
        cert,
        key,
    }) = args.cmd
    {
        return server(kind, &iface, &cert, &key);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the HTTP/3 bench needs root (network namespaces, XDP)");
    }
    let (repeat, secs) = if args.quick {
        (1, 1.0)
    } else {
        (args.repeat.max(1), args.secs)
    };
    let dir = std::env::temp_dir().join(format!("xq-h3-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveDir(dir.clone());
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, ck.cert.pem())?;
    std::fs::write(&key, ck.key_pair.serialize_pem())?;
    Testbed::remove_all_on_signal()?;
    let tb = Testbed::create(&format!("xh3b{}", std::process::id() % 10_000), 1, 232)?;
    println!(
        "# HTTP/3, {CONNS} connections × {STREAMS} requests in flight, {secs} s per run, {repeat} \
         repetition(s); server on CPU {SERVER_CPU} (1 worker), client on CPU {CLIENT_CPU}; \
         veth, native XDP, server offloads on, client TX checksum off"
    );
    let mut results: Vec<(Kind, usize, Vec<Run>)> = Vec::new();
    for size in SIZES {
        for kind in Kind::ALL {
            results.push((kind, size, Vec::new()));
        }
    }
    for r in 0..repeat {
        for size in SIZES {
            for kind in Kind::ALL {
                let run = measure(&tb, kind, size, secs, &cert, &key)
                    .with_context(|| format!("{} at {size} octets", kind.label()))?;
                eprintln!(
                    "run {}/{repeat}: {} {size} B: {:.0} req/s",
                    r + 1,
                    kind.label(),
                    run.rps
                );
                results
                    .iter_mut()
                    .find(|(k, s, _)| *k == kind && *s == size)
                    .expect("made above")
                    .2
                    .push(run);
            }
        }
    }
    report(&results);
    if let Some(path) = args.json {
        let json: Vec<serde_json::Value> = results
            .iter()
            .map(|(k, s, runs)| {
                serde_json::json!({
                    "server": k.label(), "response_octets": s,
                    "runs": runs.iter().map(|r| serde_json::json!({
                        "requests_per_s": r.rps, "server_cpu_us_per_request": r.server_us,
                        "machine_cpu_us_per_request": r.machine_us,
                        "client_core_busy": r.client_share,
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        std::fs::write(path, serde_json::to_string_pretty(&json)?)?;
    }
    Ok(())
}

struct RemoveDir(std::path::PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One measurement.
#[derive(Debug, Clone, Copy)]
struct Run {
    rps: f64,
    server_us: f64,
    machine_us: f64,
    /// The busy fraction of the client's core over the run (/proc/stat, steal excluded).
    client_share: f64,
}

/// The server child, killed on drop.
struct ServerChild(Child);

impl Drop for ServerChild {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn measure(
    tb: &Testbed,
    kind: Kind,
    size: usize,
    secs: f64,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<Run> {
    let exe = std::env::current_exe()?;
    let mut child = Command::new("ip")
        .args(["netns", "exec", &tb.server_ns, "taskset", "-c"])
        .arg(SERVER_CPU.to_string())
        // At the client's priority (it runs at nice -15): noise lands on neither side more.
        .args(["nice", "-n", "-15"])
        .arg(exe)
        .args([
            "server",
            "--kind",
            kind.arg(),
            "--iface",
            &tb.server_if,
            "--cert",
        ])
        .arg(cert)
        .arg("--key")
        .arg(key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().expect("piped");
    let mut server = ServerChild(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line)?;
    if line.trim() != "ready" {
        bail!("the server did not start: {line:?}");
    }
    let pid = server.0.id();
    let remote = SocketAddr::new(IpAddr::V4(tb.server_v4), PORT);
    let cert_der = tls::certs_from_pem_file(cert)?;
    let dur = Duration::from_secs_f64(secs);
    let (cpu0, jiffies0) = (sys::cpu_seconds(pid)?, sys::cpu_jiffies()?);
    let t0 = Instant::now();
    let done = tb.in_client(move || load(remote, cert_der, size, dur))??;
    let elapsed = t0.elapsed().as_secs_f64();
    let (cpu1, jiffies1) = (sys::cpu_seconds(pid)?, sys::cpu_jiffies()?);
    // Closing its stdin stops the server, which detaches its XDP program on the way out;
    // killed only if it does not.
    drop(server.0.stdin.take());
    let stopping = Instant::now();
    while server.0.try_wait()?.is_none() && stopping.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    drop(server);
    if done == 0 {
        bail!("no request completed");
    }
    let per = |secs: f64| secs * 1e6 / done as f64;
    // Jiffies of CPU `i` over the run.
    let d = |i: usize, f: fn(&sys::CpuJiffies) -> u64| -> f64 {
        match (jiffies0.get(i), jiffies1.get(i)) {
            (Some(a), Some(b)) => f(b).saturating_sub(f(a)) as f64,
            _ => 0.0,
        }
    };
    let machine = (d(SERVER_CPU, |c| c.busy) + d(CLIENT_CPU, |c| c.busy)) / sys::hz();
    Ok(Run {
        rps: done as f64 / elapsed,
        server_us: per(cpu1 - cpu0),
        machine_us: per(machine),
        // As the main bench counts it: of the time the core was given (steal excluded), the
        // receive work softirqs do on it included.
        client_share: d(CLIENT_CPU, |c| c.busy)
            / (d(CLIENT_CPU, |c| c.total) - d(CLIENT_CPU, |c| c.steal)).max(1.0),
    })
}

/// The load: [`CONNS`] connections of xdp-quic's async HTTP/3 client, [`STREAMS`] requests
/// in flight on each, for `dur`; the requests answered in full (each body checked for its
/// length).
fn load(
    remote: SocketAddr,
    cert: Vec<rustls::pki_types::CertificateDer<'static>>,
    size: usize,
    dur: Duration,
) -> anyhow::Result<u64> {
    sys::pin_and_prioritize(CLIENT_CPU)?;
    let client = tls::client_config(tls::Trust::Roots(cert), &[xdp_quic_h3::ALPN])?;
    let engine = EngineBuilder::default()
        .workers(1)
        .pin_cpus(vec![CLIENT_CPU])
        .client(client);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let ep = xdp_quic::tokio::Builder::new(engine).bind_udp("0.0.0.0:0".parse()?)?;
        let done = Arc::new(AtomicU64::new(0));
        let deadline = tokio::time::Instant::now() + dur;
        let mut conns = tokio::task::JoinSet::new();
        for _ in 0..CONNS {
            let (ep, done) = (ep.clone(), done.clone());
            conns.spawn(async move {
                let conn = ep.connect(remote, "localhost")?.await?;
                let (mut driver, send) =
                    h3::client::new(xdp_quic_h3::Connection::new(conn.clone())).await?;
                let drive = tokio::spawn(async move {
                    let _ = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
                });
                let mut streams = tokio::task::JoinSet::new();
                for _ in 0..STREAMS {
                    let (mut send, done) = (send.clone(), done.clone());
                    streams.spawn(async move {
                        while tokio::time::Instant::now() < deadline {
                            let req =
                                http::Request::get(format!("https://localhost/{size}")).body(())?;
                            let mut s = send.send_request(req).await?;
                            xdp_quic_examples::h3_files::finish_request(&mut s).await?;
                            let resp = s.recv_response().await?;
                            anyhow::ensure!(resp.status() == 200, "status {}", resp.status());
                            let mut got = 0;
                            while let Some(chunk) = s.recv_data().await? {
                                got += bytes::Buf::remaining(&chunk);
                            }
                            anyhow::ensure!(got == size, "{got} octets of {size}");
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        anyhow::Ok(())
                    });
                }
                while let Some(r) = streams.join_next().await {
                    r??;
                }
                drop(send);
                conn.close(xdp_quic::VarInt::from_u32(0x100), b"");
                drive.abort();
                anyhow::Ok(())
            });
        }
        while let Some(r) = conns.join_next().await {
            r??;
        }
        let n = done.load(Ordering::Relaxed);
        ep.close(xdp_quic::VarInt::from_u32(0x100), b"");
        anyhow::Ok(n)
    })
}

/// The HTTP/3 application of every server: `GET /N` answers N zero octets (N ≤ 100,000).
async fn serve_h3<C>(conn: C)
where
    C: h3::quic::Connection<Bytes> + 'static,
    <C as h3::quic::OpenStreams<Bytes>>::BidiStream: Send + 'static,
{
    let Ok(mut h3) = h3::server::Connection::<C, Bytes>::new(conn).await else {
        return;
    };
    while let Ok(Some(resolver)) = h3.accept().await {
        tokio::spawn(async move {
            let Ok((req, mut stream)) = resolver.resolve_request().await else {
                return;
            };
            let n: usize = req.uri().path()[1..].parse().unwrap_or(0).min(ZEROS.len());
            let resp = http::Response::builder()
                .status(200)
                .header("content-length", n)
                .body(())
                .expect("valid");
            if stream.send_response(resp).await.is_ok()
                && stream
                    .send_data(Bytes::from_static(&ZEROS[..n]))
                    .await
                    .is_ok()
            {
                let _ = stream.finish().await;
            }
        });
    }
}

/// The child: serves until its stdin closes.
fn server(
    kind: Kind,
    iface: &str,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let identity = tls::Identity::from_pem_files(cert, key)?;
    let listen: SocketAddr = format!("0.0.0.0:{PORT}").parse()?;
    let _keep = rt.block_on(async {
        let keep: Box<dyn std::any::Any> = match kind {
            Kind::Quinn => {
                let mut tls = rustls::ServerConfig::builder_with_provider(tls::provider())
                    .with_protocol_versions(&[&rustls::version::TLS13])?
                    .with_no_client_auth()
                    .with_single_cert(identity.chain, identity.key)?;
                tls.alpn_protocols = vec![xdp_quic_h3::ALPN.to_vec()];
                // As ours (`tls::server_config`): tickets allow early data, the connection's
                // receive window is bounded the same, and the socket asks for the same 8 MiB
                // buffers (`UdpBackend::new`).
                tls.max_early_data_size = u32::MAX;
                let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
                let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
                let mut transport = quinn::TransportConfig::default();
                transport.receive_window(xdp_quic::VarInt::from_u32(
                    xdp_quic::engine::DEFAULT_RECEIVE_WINDOW,
                ));
                config.transport_config(Arc::new(transport));
                let socket = std::net::UdpSocket::bind(listen)?;
                // The socket buffers ours get (`UdpBackend::new`).
                xdp_quic::backend::sockbuf::grow(
                    &socket,
                    xdp_quic::backend::sockbuf::SOCKET_BUFFER,
                );
                let ep = quinn::Endpoint::new(
                    quinn::EndpointConfig::default(),
                    Some(config),
                    socket,
                    Arc::new(quinn::TokioRuntime),
                )?;
                let accept = ep.clone();
                tokio::spawn(async move {
                    while let Some(incoming) = accept.accept().await {
                        tokio::spawn(async move {
                            if let Ok(conn) = incoming.await {
                                serve_h3(h3_quinn::Connection::new(conn)).await;
                            }
                        });
                    }
                });
                Box::new(ep)
            }
            _ => {
                let engine = EngineBuilder::default()
                    .workers(1)
                    .server(tls::server_config(identity, &[xdp_quic_h3::ALPN])?);
                let mut b = xdp_quic::tokio::Builder::new(engine);
                let tpc = matches!(kind, Kind::UdpTpc | Kind::XdpTpc);
                if tpc {
                    b = b.thread_per_core(|ep: xdp_quic::tokio::Endpoint| accept_loop(ep));
                }
                let (ep, attachment): (_, Option<Box<dyn std::any::Any>>) = match kind {
                    Kind::UdpRt | Kind::UdpTpc => (b.bind_udp(listen)?, None),
                    _ => {
                        use xdp_quic_control::xdp;
                        let service = xdp::ServiceConfig {
                            ports: [PORT].into(),
                            addrs: Default::default(),
                        };
                        let a = xdp::attach_embedded(iface, &service, xdp::AttachMode::Native)?;
                        let steering = xdp::socket_map::ServerSteering::with_registry(
                            a.xsks()?,
                            "h3-bench",
                            a.prog_id(),
                        );
                        let setup = XdpSetup::new(iface, listen, vec![0]);
                        (b.bind_xdp(&setup, Box::new(steering))?, Some(Box::new(a)))
                    }
                };
                if !tpc {
                    tokio::spawn(accept_loop(ep.clone()));
                }
                Box::new((ep, attachment))
            }
        };
        anyhow::Ok(keep)
    })?;
    println!("ready");
    std::io::stdout().flush()?;
    // Serve until the bench closes our stdin (or kills us).
    rt.block_on(async {
        let _ = tokio::task::spawn_blocking(|| {
            let mut line = String::new();
            let _ = std::io::stdin().read_line(&mut line);
        })
        .await;
    });
    Ok(())
}

async fn accept_loop(ep: xdp_quic::tokio::Endpoint) {
    while let Some(incoming) = ep.accept().await {
        tokio::spawn(async move {
            if let Ok(conn) = incoming.await {
                serve_h3(xdp_quic_h3::Connection::new(conn)).await;
            }
        });
    }
}

/// Median (the mean of the middle two for an even count), minimum and maximum.
fn median_spread(v: &mut [f64]) -> (f64, f64, f64) {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

fn report(results: &[(Kind, usize, Vec<Run>)]) {
    for size in SIZES {
        println!("\n## {size}-octet responses\n");
        println!("| server | req/s (min–max) | × quinn | server CPU µs/req | machine CPU µs/req | × quinn (machine) | client core busy |");
        println!("|---|---|---|---|---|---|---|");
        let med = |k: Kind, f: fn(&Run) -> f64| -> (f64, f64, f64) {
            let runs = &results
                .iter()
                .find(|(kk, s, _)| *kk == k && *s == size)
                .expect("every pair measured")
                .2;
            let mut v: Vec<f64> = runs.iter().map(f).collect();
            median_spread(&mut v)
        };
        let (q_rps, _, _) = med(Kind::Quinn, |r| r.rps);
        let (q_mach, _, _) = med(Kind::Quinn, |r| r.machine_us);
        for k in Kind::ALL {
            let (rps, lo, hi) = med(k, |r| r.rps);
            let (srv, _, _) = med(k, |r| r.server_us);
            let (mach, _, _) = med(k, |r| r.machine_us);
            let (client, _, _) = med(k, |r| r.client_share);
            // As the main bench flags it: the client's core ≥95% busy in any run.
            let saturated = results
                .iter()
                .filter(|(kk, s, _)| *kk == k && *s == size)
                .flat_map(|(_, _, runs)| runs)
                .any(|r| r.client_share >= 0.95);
            let flag = if saturated { " (saturated)" } else { "" };
            println!(
                "| {} | {rps:.0} ({lo:.0}–{hi:.0}) | ×{:.2} | {srv:.1} | {mach:.1} | ×{:.2} | {client:.2}{flag} |",
                k.label(),
                rps / q_rps,
                mach / q_mach
            );
        }
    }
}
