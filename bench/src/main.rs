//! `xdp-quic-bench`: quinn, xdp-quic over UDP and xdp-quic over AF_XDP, side by side in one
//! run, on the same testbed, cores, certificate, cipher and client. See bench/README.md.

mod client;
mod crypto;
mod report;
mod server;
mod sys;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use xdp_quic_control::testbed::{in_netns, Testbed};

use report::{Measure, Row};
use server::{Kind, ServerArgs};

/// Side-by-side benchmarks of xdp-quic against quinn (run as root).
#[derive(Debug, Parser)]
#[command(name = "xdp-quic-bench", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    /// Every workload briefly (CI): checks that each produces numbers and intact data.
    #[arg(long)]
    quick: bool,
    /// Repetitions of every measurement (median and spread are reported).
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Where the JSON, markdown and SVG results go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// (internal) run one server under test.
    #[command(hide = true)]
    Server(ServerArgs),
}

/// A workload and its size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    BulkDown1,
    BulkDown16,
    BulkUp1,
    Requests,
    Latency,
    Handshakes,
    HandshakesRetry,
}

impl Workload {
    pub fn name(self) -> &'static str {
        match self {
            Workload::BulkDown1 => "bulk download, 1 connection",
            Workload::BulkDown16 => "bulk download, 16 connections",
            Workload::BulkUp1 => "bulk upload, 1 connection",
            Workload::Requests => "1 KB requests, 64 streams on 16 connections",
            Workload::Latency => "1 KB request, one outstanding",
            Workload::Handshakes => "new connection per request",
            Workload::HandshakesRetry => "new connection per request, Retry",
        }
    }
}

struct Sizes {
    bulk: u64,
    upload: u64,
    requests: u64,
    latency: u64,
    handshakes: u64,
}

const SERVER_CPU: usize = 0;
const CLIENT_CPU: usize = 1;
const PORT: u16 = 4433;
const METRICS: &str = "127.0.0.1:9465";

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Cmd::Server(a)) = &cli.cmd {
        return server::run(a);
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("xdp-quic-bench builds network namespaces and attaches XDP: run it as root");
    }
    if cli.reps == 0 {
        bail!("--reps must be at least 1");
    }
    let sizes = if cli.quick {
        Sizes {
            bulk: 8_000_000,
            upload: 4_000_000,
            requests: 300,
            latency: 50,
            handshakes: 10,
        }
    } else {
        Sizes {
            bulk: 500_000_000,
            upload: 200_000_000,
            requests: 20_000,
            latency: 2_000,
            handshakes: 300,
        }
    };
    let reps = if cli.quick { 1 } else { cli.reps };
    let kinds = [Kind::Quinn, Kind::Udp, Kind::XdpNative, Kind::XdpSkb];
    let dir = tempdir()?;
    let (cert, cert_path, key_path) = certificate(&dir)?;

    Testbed::remove_all_on_signal()?;
    // AF_XDP serves one queue per worker: the runs with N workers use a testbed of N queues
    // (for every server, so that they compare on the same ground).
    let pid = std::process::id() % 10_000;
    let beds = [
        Testbed::create(&format!("xqb{pid}q1"), 1, 219)?,
        Testbed::create(&format!("xqb{pid}q2"), 2, 218)?,
    ];
    let clients = beds
        .iter()
        .map(|tb| client::Client::new(cert.clone(), SocketAddr::new(tb.server_v4.into(), PORT)))
        .collect::<anyhow::Result<Vec<_>>>()?;
    eprintln!("testbeds of 1 and 2 queues; server on CPU {SERVER_CPU}, client on CPU {CLIENT_CPU}");

    // (server kind, workers, retry) -> workloads run against that instance.
    let mut plan: Vec<(Kind, usize, bool, Vec<Workload>)> = Vec::new();
    for &k in &kinds {
        let main: Vec<Workload> = if k == Kind::XdpSkb {
            vec![Workload::BulkDown16, Workload::Requests]
        } else {
            vec![
                Workload::BulkDown1,
                Workload::BulkDown16,
                Workload::BulkUp1,
                Workload::Requests,
                Workload::Latency,
                Workload::Handshakes,
            ]
        };
        plan.push((k, 2, false, main));
        if k != Kind::XdpSkb {
            plan.push((k, 1, false, vec![Workload::BulkDown16, Workload::Requests]));
            plan.push((k, 2, true, vec![Workload::HandshakesRetry]));
        }
    }

    let mut rows: Vec<Row> = Vec::new();
    let total_steps: usize = reps * plan.iter().map(|p| p.3.len()).sum::<usize>();
    let mut step = 0;
    for rep in 0..reps {
        for (kind, workers, retry, workloads) in &plan {
            let (tb, client) = (&beds[*workers - 1], &clients[*workers - 1]);
            let mut srv = start_server(tb, *kind, *workers, *retry, &cert_path, &key_path)?;
            for &w in workloads {
                step += 1;
                eprint!(
                    "\r[{step}/{total_steps}] rep {} {:<24} {} worker(s): {:<44}",
                    rep + 1,
                    kind.label(),
                    workers,
                    w.name()
                );
                let before = cpu(tb, *kind, srv.id())?;
                let c = client.clone();
                let s = &sizes;
                let outcome = in_netns(&tb.client_ns, move || run_workload(&c, w, s))??;
                let after = cpu(tb, *kind, srv.id())?;
                let m = Measure::new(w, &outcome, after.0 - before.0, after.1 - before.1);
                match rows
                    .iter_mut()
                    .find(|r| r.workload == w.name() && r.server == *kind && r.workers == *workers)
                {
                    Some(r) => r.reps.push(m),
                    None => rows.push(Row {
                        workload: w.name(),
                        server: *kind,
                        workers: *workers,
                        reps: vec![m],
                    }),
                }
            }
            stop_server(&mut srv)?;
        }
    }
    eprintln!();
    drop(beds);

    // Every measurement produced numbers and its data arrived intact (run_workload checks).
    for r in &rows {
        for m in &r.reps {
            if !(m.value.is_finite() && m.value > 0.0) {
                bail!("{} on {}: no figure", r.workload, r.server.label());
            }
        }
    }
    let ceiling = crypto::aes128gcm_gbps(Duration::from_millis(if cli.quick { 100 } else { 1000 }));
    let out = if cli.quick {
        dir.join("results")
    } else {
        cli.out.clone()
    };
    let written = report::write(&out, &rows, ceiling, cli.quick, reps)?;
    for p in &written {
        eprintln!("wrote {}", p.display());
    }
    println!("{}", std::fs::read_to_string(&written[1])?);
    if cli.quick {
        std::fs::remove_dir_all(&dir)?;
        println!("bench: {} passed, 0 failed", rows.len());
    }
    Ok(())
}

fn run_workload(c: &client::Client, w: Workload, s: &Sizes) -> anyhow::Result<client::Outcome> {
    sys::pin_and_prioritize(CLIENT_CPU)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let guard = Duration::from_secs(if s.requests < 1000 { 60 } else { 600 });
        let f = async {
            match w {
                Workload::BulkDown1 => c.bulk_download(1, s.bulk).await,
                Workload::BulkDown16 => c.bulk_download(16, s.bulk).await,
                Workload::BulkUp1 => c.bulk_upload(s.upload).await,
                Workload::Requests => c.requests(16, 4, s.requests, 1000).await,
                Workload::Latency => c.requests(1, 1, s.latency, 1000).await,
                Workload::Handshakes | Workload::HandshakesRetry => {
                    c.handshakes(s.handshakes).await
                }
            }
        };
        tokio::time::timeout(guard, f)
            .await
            .context("workload hang guard")?
    })
}

/// (process CPU seconds, worker busy seconds if ours).
fn cpu(tb: &Testbed, kind: Kind, pid: u32) -> anyhow::Result<(f64, f64)> {
    let proc_cpu = sys::cpu_seconds(pid)?;
    if !kind.is_ours() {
        return Ok((proc_cpu, proc_cpu));
    }
    let addr: SocketAddr = METRICS.parse()?;
    let body = in_netns(&tb.server_ns, || xdp_quic_control::metrics::scrape(addr))??;
    let busy = xdp_quic_control::metrics::parse(&body)
        .iter()
        .filter(|s| s.name == "xdpquic_worker_busy_seconds_total")
        .map(|s| s.value)
        .sum();
    Ok((proc_cpu, busy))
}

fn start_server(
    tb: &Testbed,
    kind: Kind,
    workers: usize,
    retry: bool,
    cert: &std::path::Path,
    key: &std::path::Path,
) -> anyhow::Result<Child> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    cmd.arg("server")
        .args([
            "--kind",
            match kind {
                Kind::Quinn => "quinn",
                Kind::Udp => "udp",
                Kind::XdpNative => "xdp-native",
                Kind::XdpSkb => "xdp-skb",
            },
        ])
        .args(["--netns", &tb.server_ns, "--iface", &tb.server_if])
        .args([
            "--listen",
            &format!("0.0.0.0:{PORT}"),
            "--workers",
            &workers.to_string(),
        ])
        .args(["--metrics", METRICS, "--cpu", &SERVER_CPU.to_string()])
        .arg("--cert")
        .arg(cert)
        .arg("--key")
        .arg(key)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .process_group(0);
    if retry {
        cmd.arg("--retry");
    }
    let mut child = cmd.spawn().context("starting a server")?;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line)?;
    if line.trim() != "ready" {
        let _ = child.kill();
        bail!("{} did not start", kind.label());
    }
    Ok(child)
}

fn stop_server(child: &mut Child) -> anyhow::Result<()> {
    // SAFETY: kill(2) on our child, not yet waited for.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait()?;
    if !status.success() {
        bail!("a server exited with {status}");
    }
    Ok(())
}

fn tempdir() -> anyhow::Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("xdp-quic-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

/// One ECDSA P-256 certificate for every server, as PEM files.
fn certificate(
    dir: &std::path::Path,
) -> anyhow::Result<(rustls::pki_types::CertificateDer<'static>, PathBuf, PathBuf)> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, ck.cert.pem())?;
    std::fs::write(&k, ck.key_pair.serialize_pem())?;
    Ok((ck.cert.der().clone(), c, k))
}
