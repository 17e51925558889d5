//! `xdp-quic-bench`: quinn, xdp-quic over UDP and xdp-quic over AF_XDP (both transmit
//! paths), side by side in one run, on the same testbed, cores, certificate, cipher and
//! client. See bench/README.md.

/// With feature `mimalloc`, every server of the bench allocates with it (one binary runs
/// them all, quinn's included).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The allocator of this build's servers (the results say it).
const ALLOCATOR: &str = if cfg!(feature = "mimalloc") {
    "mimalloc (feature `mimalloc`)"
} else {
    "glibc's malloc"
};

mod app;
mod client;
mod crypto;
mod load;
mod report;
mod server;
mod sys;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use xdp_quic_control::testbed::{in_netns, Testbed};

use app::AppStats;
use load::{Job, Outcome, Probe};
use report::{Measure, Row, Sample};
use server::{Kind, ServerArgs, ServerStats};

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
    /// Only these servers (default: all).
    #[arg(long, value_enum, value_delimiter = ',')]
    servers: Vec<Kind>,
    /// Only workloads whose name contains this (repeat for more; default: all).
    #[arg(long)]
    only: Vec<String>,
    /// Seconds each duration-bound workload (ingest, connection scale) measures.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Where the JSON, markdown and SVG results go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Before each server, wait up to this many seconds for the machine to be quiet (other
    /// processes using under 0.2 cores over half a second).
    #[arg(long, default_value_t = 120.0)]
    quiet_wait: f64,
    /// Stem of the result files (default `<date>-<host>`).
    #[arg(long)]
    name: Option<String>,
    /// Requests per measurement of the request workloads (longer spans: finer CPU figures).
    #[arg(long, default_value_t = 200_000)]
    requests: u64,
    /// Ingest: offer this many streams per second (all connections together) instead of as
    /// many as each server's flow control grants, so that every server's CPU per stream is
    /// measured at the same load (below the slowest one's saturation).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    ingest_rate: Option<u64>,
    /// The async servers' application (quinn, async-rt, async-tpc): a task per stream, or a
    /// task per connection serving its streams in turn.
    #[arg(long, value_enum, default_value_t)]
    app_tasks: server::AppTasks,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// (internal) run one server under test.
    #[command(hide = true)]
    Server(ServerArgs),
}

/// A workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    BulkDown1,
    BulkDown16,
    BulkUp1,
    Requests,
    Latency,
    Handshakes,
    HandshakesRetry,
    Ingest,
    /// Connection scale: this many connections.
    Scale(usize),
}

/// Connections and requests in flight per connection of the request workload.
pub const REQ_CONNS: usize = 16;
pub const REQ_STREAMS: usize = 64;
/// Server workers of the main rows: the server has one core, and one worker per core is how
/// xdp-quic is deployed (two workers on one core are an extra row: sharding's cost).
pub const MAIN_WORKERS: usize = 1;
/// Connections of the ingest workload.
pub const INGEST_CONNS: usize = 64;

/// The ingest workload's offered streams per second (`--ingest-rate`); unset: as many as the
/// server grants.
static INGEST_RATE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

impl Workload {
    pub fn name(self) -> String {
        match self {
            Workload::BulkDown1 => "bulk download, 1 connection".into(),
            Workload::BulkDown16 => "bulk download, 16 connections".into(),
            Workload::BulkUp1 => "bulk upload, 1 connection".into(),
            Workload::Requests => {
                format!("1 KB requests, {REQ_STREAMS} streams × {REQ_CONNS} connections")
            }
            Workload::Latency => "1 KB request, one outstanding".into(),
            Workload::Handshakes => "new connection per request".into(),
            Workload::HandshakesRetry => "new connection per request, Retry".into(),
            Workload::Ingest => match INGEST_RATE.get() {
                Some(r) => format!(
                    "ingest, 1 KB uni streams on {INGEST_CONNS} connections, {r} offered per second"
                ),
                None => format!("ingest, 1 KB uni streams on {INGEST_CONNS} connections"),
            },
            Workload::Scale(n) => format!("{n} connections, 1 KB requests in a loop"),
        }
    }
}

/// Which client drives a measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Loader {
    /// xdp-quic's client engine: the load generator of every table.
    Ours,
    /// quinn's client: a cross-check.
    Quinn,
}

struct Sizes {
    bulk: u64,
    upload: u64,
    requests: u64,
    latency: u64,
    handshakes: u64,
    scale: [usize; 3],
    duration: Duration,
    guard: Duration,
}

pub const SERVER_CPU: usize = 0;
pub const CLIENT_CPU: usize = 1;
const PORT: u16 = 4433;
/// How long the ingest check waits for the server's application to take in the streams its
/// transport acknowledged.
const INGEST_SETTLE: Duration = Duration::from_secs(10);

/// One server instance and what runs against it.
struct Step {
    kind: Kind,
    workers: usize,
    retry: bool,
    work: Vec<(Workload, Loader)>,
}

fn plan(kinds: &[Kind], scale: [usize; 3]) -> Vec<Step> {
    use Loader::*;
    use Workload::*;
    let mut plan = Vec::new();
    for &k in kinds {
        if k.is_async() {
            // Issue 15: the async API beside the callback engine and quinn.
            plan.push(Step {
                kind: k,
                workers: MAIN_WORKERS,
                retry: false,
                work: vec![(BulkDown1, Ours), (Requests, Ours), (Ingest, Ours)],
            });
            continue;
        }
        if k == Kind::XdpSkb {
            plan.push(Step {
                kind: k,
                workers: MAIN_WORKERS,
                retry: false,
                work: vec![(BulkDown1, Ours), (Requests, Ours), (Ingest, Ours)],
            });
            continue;
        }
        plan.push(Step {
            kind: k,
            workers: MAIN_WORKERS,
            retry: false,
            work: vec![
                (BulkDown1, Ours),
                (BulkDown16, Ours),
                (BulkUp1, Ours),
                (Requests, Ours),
                (Latency, Ours),
                (Handshakes, Ours),
                (Ingest, Ours),
                (BulkDown1, Quinn),
                (Requests, Quinn),
            ],
        });
        plan.push(Step {
            kind: k,
            workers: MAIN_WORKERS,
            retry: true,
            work: vec![(HandshakesRetry, Ours)],
        });
        // A fresh server per connection count, so that its memory is that count's.
        for n in scale {
            plan.push(Step {
                kind: k,
                workers: MAIN_WORKERS,
                retry: false,
                work: vec![(Scale(n), Ours)],
            });
        }
        plan.push(Step {
            kind: k,
            workers: 2,
            retry: false,
            work: vec![(BulkDown16, Ours), (Requests, Ours), (Ingest, Ours)],
        });
    }
    plan
}

/// What every measurement shares.
struct Bench {
    client: quinn::ClientConfig,
    sizes: Sizes,
    cert: PathBuf,
    key: PathBuf,
    app_tasks: server::AppTasks,
}

/// A testbed with the client's sockets, one per server RX queue.
struct Bed {
    tb: Testbed,
    sockets: Vec<UdpSocket>,
    /// The server RX queue each socket's datagrams land on.
    socket_queues: Vec<usize>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Cmd::Server(a)) = &cli.cmd {
        return server::run(a);
    }
    if let Some(r) = cli.ingest_rate {
        INGEST_RATE.set(r).expect("set once, here");
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
            scale: [10, 100, 1_000],
            duration: Duration::from_millis(300),
            guard: Duration::from_secs(120),
        }
    } else {
        Sizes {
            bulk: 4_000_000_000,
            upload: 2_000_000_000,
            requests: cli.requests.max(1),
            latency: 20_000,
            handshakes: 3_000,
            scale: [10, 1_000, 10_000],
            duration: Duration::from_secs_f64(cli.duration.max(0.1)),
            guard: Duration::from_secs(600),
        }
    };
    let reps = if cli.quick { 1 } else { cli.reps };
    let kinds: Vec<Kind> = if cli.servers.is_empty() {
        vec![
            Kind::Quinn,
            Kind::Udp,
            Kind::XdpKernel,
            Kind::XdpXsk,
            Kind::XdpSkb,
            Kind::AsyncRt,
            Kind::AsyncTpc,
        ]
    } else {
        cli.servers.clone()
    };
    let mut steps = plan(&kinds, sizes.scale);
    if !cli.only.is_empty() {
        for s in &mut steps {
            s.work
                .retain(|(w, _)| cli.only.iter().any(|o| w.name().contains(o.as_str())));
        }
        steps.retain(|s| !s.work.is_empty());
    }
    let dir = tempdir()?;
    let (cert, cert_path, key_path) = certificate(&dir)?;
    let bench = Bench {
        client: client::config(cert)?,
        sizes,
        cert: cert_path,
        key: key_path,
        app_tasks: cli.app_tasks,
    };

    // The bench's own thread (sampling, /proc walks, the servers' stats) runs on the
    // client's core, where its CPU is counted.
    sys::pin_and_prioritize(CLIENT_CPU)?;
    Testbed::remove_all_on_signal()?;
    // AF_XDP serves one queue per worker: the runs with N workers use a testbed of N queues
    // (for every server, so that they compare on the same ground).
    let pid = std::process::id() % 10_000;
    let mut beds = Vec::new();
    for (queues, net) in [(1u32, 219u8), (2, 218)] {
        let tb = Testbed::create(&format!("xqb{pid}q{queues}"), queues, net)?;
        let (sockets, socket_queues) = client_sockets(&tb)?;
        beds.push(Bed {
            tb,
            sockets,
            socket_queues,
        });
    }
    let mut offloads = Vec::new();
    for bed in &beds {
        let tb = &bed.tb;
        for (end, ns, dev) in [
            ("server", &tb.server_ns, &tb.server_if),
            ("client", &tb.client_ns, &tb.client_if),
        ] {
            let o =
                sys::offloads(ns, dev).unwrap_or_else(|e| vec![("ethtool".into(), e.to_string())]);
            offloads.push(report::Offloads {
                queues: tb.queues,
                end,
                iface: dev.clone(),
                features: o,
            });
        }
    }
    eprintln!(
        "testbeds of 1 and 2 queues; server on CPU {SERVER_CPU}, client on CPU {CLIENT_CPU}; \
         client sockets land on server RX queues {:?}",
        beds[1].socket_queues
    );
    let meta = report::Meta {
        quick: cli.quick,
        reps,
        ceiling_gbps: 0.0,
        offloads,
        socket_queues: beds[1].socket_queues.clone(),
        duration_s: bench.sizes.duration.as_secs_f64(),
        app_tasks: cli.app_tasks,
        allocator: ALLOCATOR,
    };

    let out = if cli.quick {
        dir.join("results")
    } else {
        cli.out.clone()
    };
    let stem = cli
        .name
        .clone()
        .unwrap_or_else(|| format!("{}-{}", sys::today(), sys::hostname()));
    let mut rows: Vec<Row> = Vec::new();
    let total: usize = reps * steps.iter().map(|s| s.work.len()).sum::<usize>();
    let mut done = 0;
    let began = Instant::now();
    for rep in 0..reps {
        // Each repetition starts with another server: a slow spell of the shared machine
        // does not always hit the same one.
        let n = kinds.len();
        let mut order: Vec<&Step> = Vec::new();
        for i in 0..n {
            let k = kinds[(i + rep) % n];
            order.extend(steps.iter().filter(|s| s.kind == k));
        }
        for step in order {
            if !cli.quick {
                wait_quiet(Duration::from_secs_f64(cli.quiet_wait));
            }
            let bed = &beds[step.workers - 1];
            let mut srv = ServerProc::start(&bed.tb, step, &bench)?;
            for &(w, loader) in &step.work {
                done += 1;
                eprint!(
                    "\r[{done}/{total}, {:.0} min] rep {} {:<26} {} worker(s), {:<5} client: {:<52}",
                    began.elapsed().as_secs_f64() / 60.0,
                    rep + 1,
                    step.kind.label(),
                    step.workers,
                    match loader {
                        Loader::Ours => "our",
                        Loader::Quinn => "quinn",
                    },
                    w.name()
                );
                let what = || {
                    format!(
                        "{} on {} ({} workers, {loader:?} client)",
                        w.name(),
                        step.kind.label(),
                        step.workers
                    )
                };
                let mut m = measure(&bench, bed, &mut srv, w, loader).with_context(what)?;
                // Another process of the shared machine took CPU: once the machine is quiet
                // again, measure again (at most twice); what stays noisy is flagged. Not the
                // connection-scale workloads: a fresh server per count is what their memory
                // figure needs.
                while m.noisy && !cli.quick && m.tries < 3 && !matches!(w, Workload::Scale(_)) {
                    wait_quiet(Duration::from_secs_f64(cli.quiet_wait));
                    let tries = m.tries;
                    m = measure(&bench, bed, &mut srv, w, loader).with_context(what)?;
                    m.tries = tries + 1;
                }
                let key = (w.name(), step.kind, step.workers, loader);
                match rows
                    .iter_mut()
                    .find(|r| (r.workload.clone(), r.server, r.workers, r.client) == key)
                {
                    Some(r) => r.reps.push(m),
                    None => rows.push(Row {
                        workload: w.name(),
                        kind: w,
                        server: step.kind,
                        workers: step.workers,
                        client: loader,
                        reps: vec![m],
                    }),
                }
            }
            srv.stop()?;
        }
        if !cli.quick && rep + 1 < reps {
            // Partial results, in case a long run is cut short.
            report::write(&out, &stem, &rows, &meta)?;
        }
    }
    eprintln!();
    drop(beds);

    // Every measurement produced numbers (the data was checked as it arrived).
    for r in &rows {
        for m in &r.reps {
            if !(m.value.is_finite() && m.value > 0.0) {
                bail!("{} on {}: no figure", r.workload, r.server.label());
            }
        }
    }
    let meta = report::Meta {
        ceiling_gbps: crypto::aes128gcm_gbps(Duration::from_millis(if cli.quick {
            100
        } else {
            1000
        })),
        ..meta
    };
    let written = report::write(&out, &stem, &rows, &meta)?;
    for p in &written {
        eprintln!("wrote {}", p.display());
    }
    println!("{}", std::fs::read_to_string(&written[1])?);
    if cli.quick {
        println!("bench: {} passed, 0 failed", rows.len());
    }
    Ok(())
}

/// Waits until the server's and the client's cores are quiet (under 0.2 busy cores over
/// 0.5 s), at most `max`; a shared machine's other work would otherwise land in the
/// measurements.
fn wait_quiet(max: Duration) {
    let start = Instant::now();
    let mut said = false;
    loop {
        let busy = |c: &[sys::CpuJiffies]| {
            [SERVER_CPU, CLIENT_CPU]
                .iter()
                .filter_map(|&i| c.get(i))
                .map(|c| c.busy)
                .sum::<u64>()
        };
        let Ok(a) = sys::cpu_jiffies() else { return };
        std::thread::sleep(Duration::from_millis(500));
        let Ok(b) = sys::cpu_jiffies() else { return };
        let cores = (busy(&b) - busy(&a)) as f64 / sys::hz() / 0.5;
        if cores < 0.2 {
            return;
        }
        if start.elapsed() >= max {
            eprintln!("\nthe machine is still busy ({cores:.2} cores): measuring anyway");
            return;
        }
        if !said {
            eprint!("\nwaiting for the machine to be quiet ({cores:.2} cores busy)... ");
            said = true;
        }
    }
}

/// A UDP socket per RX queue of the server in the client namespace, chosen so that on a
/// multi-queue testbed their datagrams land on distinct RX queues of the server (veth has no RSS: the queue is the
/// sender's TX queue, picked by a hash of the 4-tuple). Found by probing with GRO on at the
/// server's end, where veth counts packets per RX queue; GRO is put back as it was.
fn client_sockets(tb: &Testbed) -> anyhow::Result<(Vec<UdpSocket>, Vec<usize>)> {
    let bind = || -> anyhow::Result<UdpSocket> {
        Ok(in_netns(&tb.client_ns, || UdpSocket::bind("0.0.0.0:0"))??)
    };
    if tb.queues == 1 {
        return Ok((vec![bind()?], vec![0]));
    }
    let remote = SocketAddr::new(tb.server_v4.into(), PORT);
    let (ns, dev) = (&tb.server_ns, &tb.server_if);
    let gro = sys::offloads(ns, dev)?
        .into_iter()
        .find(|(k, _)| k == "generic-receive-offload")
        .map(|(_, v)| v.starts_with("on"))
        .unwrap_or(false);
    sys::ethtool(ns, &["-K", dev, "gro", "on"])?;
    let found = (|| -> anyhow::Result<Vec<(UdpSocket, usize)>> {
        // The first datagram resolves the neighbour.
        let warm = bind()?;
        warm.send_to(&[0u8; 16], remote)?;
        std::thread::sleep(Duration::from_millis(50));
        let mut chosen: Vec<(UdpSocket, usize)> = Vec::new();
        for _ in 0..64 {
            let s = bind()?;
            let before = sys::rx_queue_packets(ns, dev)?;
            for _ in 0..8 {
                s.send_to(&[0u8; 16], remote)?;
            }
            let mut q = None;
            for _ in 0..50 {
                let after = sys::rx_queue_packets(ns, dev)?;
                let moved: Vec<usize> = (0..after.len())
                    .filter(|&i| after[i] >= before.get(i).copied().unwrap_or(0) + 8)
                    .collect();
                if let [one] = moved[..] {
                    q = Some(one);
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            if let Some(q) = q {
                if chosen.iter().all(|(_, c)| *c != q) {
                    chosen.push((s, q));
                }
            }
            if chosen.len() == tb.queues as usize {
                break;
            }
        }
        Ok(chosen)
    })();
    if !gro {
        sys::ethtool(ns, &["-K", dev, "gro", "off"])?;
    }
    let mut found = found?;
    if found.len() < tb.queues as usize {
        bail!("could not find client ports landing on each RX queue of {dev}");
    }
    found.sort_by_key(|(_, q)| *q);
    Ok(found.into_iter().unzip())
}

/// A server child: its stdin takes commands, its stdout answers.
/// The longest a server may take to say it is ready (a hang guard).
const SERVER_START_TIMEOUT: Duration = Duration::from_secs(60);

struct ServerProc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl ServerProc {
    fn start(tb: &Testbed, step: &Step, b: &Bench) -> anyhow::Result<Self> {
        let exe = std::env::current_exe()?;
        let mut cmd = Command::new(exe);
        cmd.arg("server")
            .args(["--kind", step.kind.arg()])
            .args(["--netns", &tb.server_ns, "--iface", &tb.server_if])
            .args(["--listen", &format!("0.0.0.0:{PORT}")])
            .args(["--workers", &step.workers.to_string()])
            .args(["--cpu", &SERVER_CPU.to_string()])
            .args(["--app-tasks", b.app_tasks.arg()])
            .arg("--cert")
            .arg(&b.cert)
            .arg("--key")
            .arg(&b.key)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .process_group(0);
        if step.retry {
            cmd.arg("--retry");
        }
        let mut child = cmd.spawn().context("starting a server")?;
        let stdin = child.stdin.take().expect("piped");
        let mut stdout = BufReader::new(child.stdout.take().expect("piped"));
        let mut line = String::new();
        // A server that hangs before it is ready is killed (its stdout then ends), not
        // waited for without end.
        let pid = child.id() as i32;
        let (started, watchdog) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                watchdog.recv_timeout(SERVER_START_TIMEOUT)
            {
                // SAFETY: kill(2) on our child, which is not reaped before the answer this
                // thread ends (the read below returns, then `started` is sent, then `wait`):
                // its pid cannot be another process's.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        let read = stdout.read_line(&mut line);
        let _ = started.send(());
        if read.is_err() || line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{} did not start (within {SERVER_START_TIMEOUT:?})",
                step.kind.label()
            );
        }
        Ok(Self {
            child,
            stdin,
            stdout,
        })
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn stats(&mut self) -> anyhow::Result<ServerStats> {
        writeln!(self.stdin, "stats")?;
        self.stdin.flush()?;
        let mut line = String::new();
        self.stdout.read_line(&mut line)?;
        serde_json::from_str(&line).with_context(|| format!("server stats {line:?}"))
    }

    fn stop(mut self) -> anyhow::Result<()> {
        writeln!(self.stdin, "stop")?;
        self.stdin.flush()?;
        let status = self.child.wait()?;
        if !status.success() {
            bail!("a server exited with {status}");
        }
        Ok(())
    }
}

impl Drop for ServerProc {
    /// A server left running by an error: killed and reaped before the testbed goes, so that
    /// nothing keeps its namespace (and the veth pair, and the XDP program) alive.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Samples the server (its CPU time, memory and application counters), the machine and the
/// client around the measured span.
struct Sampler<'a> {
    srv: &'a mut ServerProc,
    before: Option<Sample>,
    after: Option<Sample>,
}

impl Sampler<'_> {
    /// A sample around the span's edge: the slow walks of /proc (kernel threads, other
    /// processes: the noise figures) away from it, and the figures the results divide (the
    /// server's application counters and CPU, the machine's jiffies) at it, so that the
    /// work counted and the CPU counted cover the same span. `start`: the edge comes after
    /// this sample (before the work); else before it.
    fn take(&mut self, start: bool) -> anyhow::Result<Sample> {
        let pid = self.srv.pid();
        let me = std::process::id();
        let noise = || {
            (
                sys::kernel_threads_cpu_seconds(),
                sys::other_processes_ticks(&[pid, me]),
            )
        };
        let cpu = || -> anyhow::Result<_> {
            Ok((
                sys::cpu_seconds(pid)?,
                sys::cpu_jiffies()?,
                sys::cpu_seconds(me)?,
            ))
        };
        // Before the work: noise, CPU, counters; after it: counters, CPU, noise.
        let ((kthreads_cpu_s, others_ticks), (server_cpu_s, cpus, client_cpu_s), app) = if start {
            let n = noise();
            let c = cpu()?;
            (n, c, self.srv.stats()?.app)
        } else {
            let app = self.srv.stats()?.app;
            let c = cpu()?;
            (noise(), c, app)
        };
        Ok(Sample {
            server_cpu_s,
            cpus,
            client_cpu_s,
            server_rss_kib: sys::rss_kib(pid)?,
            kthreads_cpu_s,
            others_ticks,
            app,
        })
    }
}

impl Probe for Sampler<'_> {
    fn before(&mut self) -> anyhow::Result<()> {
        self.before = Some(self.take(true)?);
        Ok(())
    }
    fn after(&mut self) -> anyhow::Result<()> {
        self.after = Some(self.take(false)?);
        Ok(())
    }
}

fn measure(
    b: &Bench,
    bed: &Bed,
    srv: &mut ServerProc,
    w: Workload,
    loader: Loader,
) -> anyhow::Result<Measure> {
    let s = &b.sizes;
    let remote = SocketAddr::new(bed.tb.server_v4.into(), PORT);
    let stats0 = srv.stats()?;
    let rss0 = sys::rss_kib(srv.pid())?;
    let mut probe = Sampler {
        srv,
        before: None,
        after: None,
    };
    let mut outcome: Outcome = match loader {
        Loader::Ours => {
            let job = match w {
                Workload::BulkDown1 => Job::Download {
                    conns: 1,
                    each: s.bulk,
                },
                Workload::BulkDown16 => Job::Download {
                    conns: 16,
                    each: s.bulk / 16,
                },
                Workload::BulkUp1 => Job::Upload { bytes: s.upload },
                Workload::Requests => Job::Requests {
                    conns: REQ_CONNS,
                    streams: REQ_STREAMS,
                    total: s.requests,
                    size: 1000,
                },
                Workload::Latency => Job::Requests {
                    conns: 1,
                    streams: 1,
                    total: s.latency,
                    size: 1000,
                },
                Workload::Handshakes | Workload::HandshakesRetry => Job::Handshakes {
                    total: s.handshakes,
                },
                Workload::Ingest => Job::Ingest {
                    conns: INGEST_CONNS,
                    rate: INGEST_RATE.get().copied(),
                },
                Workload::Scale(n) => Job::Scale {
                    conns: n,
                    size: 1000,
                },
            };
            load::run(
                b.client.clone(),
                &bed.sockets,
                CLIENT_CPU,
                remote,
                job,
                load::Timing {
                    duration: s.duration,
                    guard: s.guard,
                },
                &mut probe,
            )?
        }
        Loader::Quinn => {
            let job = match w {
                Workload::BulkDown1 => client::QuinnJob::Download {
                    conns: 1,
                    total: s.bulk,
                },
                Workload::Requests => client::QuinnJob::Requests {
                    conns: REQ_CONNS,
                    streams: REQ_STREAMS,
                    total: s.requests,
                    size: 1000,
                },
                other => bail!("no quinn-client run of {}", other.name()),
            };
            client::run(
                b.client.clone(),
                &bed.sockets,
                CLIENT_CPU,
                remote,
                job,
                s.guard,
                &mut probe,
            )?
        }
    };
    let (Some(before), Some(after)) = (probe.before, probe.after) else {
        bail!("the workload ended without its samples");
    };
    let mut stats1 = srv.stats()?;
    if w == Workload::Ingest {
        // Every stream the server's transport acknowledged whole must reach its application
        // intact. The async API's tasks may still be reading the last ones: wait for them
        // (each ends taken in or found corrupt; streams cut by the client's close at the end
        // were not acknowledged and do not count), for a bounded time.
        let wait_until = Instant::now() + INGEST_SETTLE;
        while stats1.app.since(&stats0.app).ingest_taken() < outcome.acknowledged
            && Instant::now() < wait_until
        {
            std::thread::sleep(Duration::from_millis(10));
            stats1 = srv.stats()?;
        }
    }
    let app = stats1.app.since(&stats0.app);
    if w != Workload::Ingest {
        outcome.acknowledged = outcome.completed;
    }
    if w == Workload::Ingest {
        // What the server's application took in within the span: the async API acknowledges
        // a stream once its worker queued it for a task, which may read it later.
        outcome.completed = after.app.ingested - before.app.ingested;
    }
    check(w, &outcome, &app, s)?;
    Ok(Measure::new(
        w,
        &outcome,
        &before,
        &after,
        rss0,
        stats1.busy_s - stats0.busy_s,
        app,
    ))
}

/// What the server saw agrees with what the client did.
fn check(w: Workload, o: &Outcome, app: &AppStats, s: &Sizes) -> anyhow::Result<()> {
    let ok = match w {
        Workload::BulkDown1 => o.downloaded == s.bulk && app.requests == 1,
        Workload::BulkDown16 => o.downloaded == s.bulk / 16 * 16 && app.requests == 16,
        Workload::BulkUp1 => app.received == s.upload + 8 && o.uploaded == s.upload,
        Workload::Requests
        | Workload::Latency
        | Workload::Handshakes
        | Workload::HandshakesRetry => app.requests == o.completed,
        // `completed` is what the application took in within the span, `acknowledged` every
        // stream the client saw acknowledged whole, through the end of the run (what the
        // server takes in after the span counts too): each of those must have been taken
        // in.
        Workload::Ingest => app.ingested >= o.completed && app.ingested >= o.acknowledged,
        Workload::Scale(_) => app.requests >= o.completed,
    };
    if !ok || o.completed == 0 || app.ingest_bad != 0 {
        bail!(
            "{}: the server's account {app:?} does not match the client's \
             (completed {}, acknowledged {}, downloaded {}, uploaded {})",
            w.name(),
            o.completed,
            o.acknowledged,
            o.downloaded,
            o.uploaded
        );
    }
    Ok(())
}

/// The bench's scratch directory (certificate, quick results), removed when dropped: on
/// success and on failure alike.
struct TempDir(PathBuf);

impl TempDir {
    fn join(&self, p: &str) -> PathBuf {
        self.0.join(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn tempdir() -> anyhow::Result<TempDir> {
    let d = std::env::temp_dir().join(format!("xdp-quic-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(TempDir(d))
}

/// One ECDSA P-256 certificate for every server, as PEM files.
fn certificate(
    dir: &TempDir,
) -> anyhow::Result<(rustls::pki_types::CertificateDer<'static>, PathBuf, PathBuf)> {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
    let (c, k) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&c, ck.cert.pem())?;
    std::fs::write(&k, ck.key_pair.serialize_pem())?;
    Ok((ck.cert.der().clone(), c, k))
}
