//! `xdp-quic demo`: the perf protocol end to end, with figures.
//!
//! As root it builds a private testbed (two network namespaces, a multi-queue veth pair),
//! attaches the XDP program to the server's side, runs the perf server over AF_XDP (one
//! worker per queue) in one namespace and a perf client over kernel UDP in the other: a bulk
//! phase (default 1 GB) and a request phase (default 10,000 requests of 1 KB). Then it runs
//! the same over the UDP backend in the same testbed, for `--rounds` rounds (the order of the
//! two alternating), prints both side by side with the median ratios, and removes everything
//! it made (Ctrl-C too). Without the privileges it says so and runs the UDP demo on loopback.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context};
use xdp_quic::backend::xsk::{PollMode, XskSnapshot};
use xdp_quic::{tls, Counters, Engine, EngineBuilder, VarInt, XdpSetup};
use xdp_quic_examples::perf::{PerfReport, PerfServer};

use super::args::{self, App};
use super::client::{perf, report_json, Launch, PerfArgs};
use super::serve::{summary, transport, xsk_summary};
use xdp_quic_control::testbed::Testbed;

/// Which demo to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoBackend {
    /// AF_XDP in a private testbed when running as root, else UDP on loopback.
    Auto,
    /// AF_XDP (and UDP, side by side) in a private testbed; fails without root.
    Xdp,
    /// UDP on loopback only.
    Udp,
}

/// Arguments of `xdp-quic demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Octets the bulk phase downloads in all (at least; rounded up to equal requests).
    #[arg(long, default_value = "1G", value_parser = args::parse_size)]
    pub bytes: u64,
    /// Requests of the request phase (1 KB each).
    #[arg(long, default_value_t = 50_000)]
    pub requests: u64,
    /// Rounds of AF_XDP and UDP, side by side (each round runs both, in turn first): the
    /// summary gives the median of the rounds' ratios and their spread, since one round on a
    /// shared machine moves by ±20%.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=50))]
    pub rounds: u32,
    /// Queues of the testbed's veth pair: AF_XDP workers (and UDP workers).
    #[arg(long, default_value_t = 4)]
    pub queues: u32,
    /// Client connections.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Which demo.
    #[arg(long, value_enum, default_value_t = DemoBackend::Auto)]
    pub backend: DemoBackend,
    /// AF_XDP: how the queues transmit (`auto`: the TX ring on zero-copy sockets, the
    /// kernel's UDP path with GSO otherwise, as on the testbed's veth).
    #[arg(long, value_enum, default_value_t = args::TxArg::Auto)]
    pub tx: args::TxArg,
    /// AF_XDP: how an idle worker waits (`busy` spins on the rings and keeps its core; the
    /// demo's client shares the same cores, so `adaptive` sleeps after `--spin`). Measured
    /// on the 2-core VM with 10,000 requests, AF_XDP / UDP medians of the summary line over
    /// 19 rounds (busy: 6): busy ×0.59 bulk, ×0.54 requests/s; adaptive 0 µs ×0.98 / ×0.98,
    /// 10 µs ×0.97 / ×0.98 (14 rounds), 25 µs ×0.99 / ×1.01, 50 µs (serve's default) ×0.96 /
    /// ×0.94. With 50,000 requests, 15 rounds each, alternating: 0 µs ×0.99 / ×1.03 (IQR of
    /// requests/s 0.96–1.04), 25 µs ×1.01 / ×0.94 (0.92–0.98): 0 µs is the default. (These
    /// were fixed spins; a spin now shrinks when it catches nothing, `backend::spin`.)
    #[arg(long, value_enum, default_value_t = args::PollArg::Adaptive)]
    pub poll: args::PollArg,
    /// AF_XDP, adaptive polling: microseconds an idle worker spins before it sleeps.
    #[arg(long, default_value_t = DEMO_SPIN_US, value_name = "USECS")]
    pub spin: u64,
    /// Print the figures as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The demo's adaptive spin: the best of 0, 10, 25 and 50 µs by measurement (see `--poll`).
/// Client and server share the two cores of the demo's machine, so a worker that spins
/// takes the client's time.
const DEMO_SPIN_US: u64 = 0;

/// Figures of one server run.
struct Run {
    label: String,
    bulk: PerfReport,
    requests: PerfReport,
    served: u64,
    workers: Vec<Counters>,
    queues: Vec<XskSnapshot>,
    xdp: Option<xdp_quic_control::xdp::Counters>,
}

pub fn run(a: &DemoArgs) -> anyhow::Result<()> {
    if a.connections == 0 || a.queues == 0 || a.queues > 64 {
        bail!("--connections must be at least 1 and --queues between 1 and 64");
    }
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let xdp = match a.backend {
        DemoBackend::Udp => false,
        DemoBackend::Xdp => true,
        DemoBackend::Auto => root,
    };
    if !xdp {
        // Also under --backend auto without root: refused, not silently dropped.
        let set = [
            ("--tx", a.tx != args::TxArg::Auto),
            ("--poll", a.poll != args::PollArg::Adaptive),
            ("--spin", a.spin != DEMO_SPIN_US),
            ("--rounds", a.rounds != 3),
        ];
        let why = if a.backend == DemoBackend::Auto {
            " (the AF_XDP demo needs root)"
        } else {
            ""
        };
        args::refuse_given(&set, |named, _| {
            format!(
                "{named} not used by the UDP demo{why} (they set the AF_XDP side and its \
                 rounds against UDP): leave them out, or run --backend xdp as root"
            )
        })?;
    }
    if a.backend == DemoBackend::Auto && !root {
        eprintln!(
            "xdp-quic demo: the AF_XDP demo needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF, \
             CAP_NET_RAW, CAP_IPC_LOCK) to build its testbed; running the UDP demo on loopback"
        );
    }
    let runs = if xdp {
        testbed_runs(a)?
    } else {
        vec![loopback_run(a)?]
    };
    print(a, &runs);
    Ok(())
}

fn phases(a: &DemoArgs) -> (PerfArgs, PerfArgs) {
    // Requests of at most 25 MB, equal in size, adding up to at least --bytes.
    let bytes = a.bytes.max(1);
    let requests = bytes.div_ceil(25_000_000);
    let bulk = PerfArgs {
        download: bytes.div_ceil(requests),
        upload: 0,
        requests: Some(requests),
        duration: None,
        connections: a.connections,
        streams: 1,
    };
    let rr = PerfArgs {
        download: 1000,
        upload: 0,
        requests: Some(a.requests),
        duration: None,
        connections: a.connections,
        streams: 16,
    };
    (bulk, rr)
}

fn server_builder(identity: tls::Identity, workers: usize) -> anyhow::Result<EngineBuilder> {
    Ok(EngineBuilder::default()
        .workers(workers)
        .server(tls::server_config(identity, &[App::Perf.alpn()])?)
        .transport(transport()))
}

/// Runs both phases against `server` from the current namespace and stops the server.
fn client_phases(
    a: &DemoArgs,
    label: String,
    server: Engine<PerfServer>,
    addr: SocketAddr,
    trust: Vec<rustls_cert::Cert>,
    xdp: Option<&dyn Fn() -> anyhow::Result<xdp_quic_control::xdp::Counters>>,
    client_ns: Option<&str>,
) -> anyhow::Result<Run> {
    let (bulk, rr) = phases(a);
    // One client worker (and source port) per connection, up to 4: distinct 4-tuples,
    // which the kernel (UDP) or the sender's TX queue choice (veth) spreads over workers.
    let client_workers = a.connections.min(4);
    let client = || -> anyhow::Result<EngineBuilder> {
        Ok(EngineBuilder::default()
            .client(tls::client_config(
                tls::Trust::Roots(trust.clone()),
                &[App::Perf.alpn()],
            )?)
            .transport(transport())
            .drain_timeout(Duration::from_secs(1)))
    };
    eprintln!(
        "{label}: bulk, {} requests of {} octets",
        bulk.requests.unwrap_or(0),
        bulk.download
    );
    let work = || -> anyhow::Result<(PerfReport, PerfReport)> {
        let b = perf(
            client()?,
            addr,
            "localhost",
            &bulk,
            client_workers,
            &Launch::Udp,
        )?;
        eprintln!(
            "{label}: {} requests of 1 KB, 16 in flight per connection",
            rr.requests.unwrap_or(0)
        );
        let r = perf(
            client()?,
            addr,
            "localhost",
            &rr,
            client_workers,
            &Launch::Udp,
        )?;
        Ok((b, r))
    };
    let reports = match client_ns {
        Some(ns) => xdp_quic_control::testbed::in_netns(ns, work).and_then(|r| r),
        None => work(),
    };
    let queues = server.xsk_queues().iter().map(|q| q.snapshot()).collect();
    let xdp = xdp.map(|f| f()).transpose()?;
    let handle = server.handle();
    let handlers = server
        .shutdown(VarInt::from_u32(0), b"demo done")
        .context("stopping the server")?;
    let (bulk, requests) = reports?;
    Ok(Run {
        label,
        bulk,
        requests,
        served: handlers.iter().map(|h| h.requests).sum(),
        workers: handle.counters(),
        queues,
        xdp,
    })
}

mod rustls_cert {
    pub type Cert = rustls::pki_types::CertificateDer<'static>;
}

fn loopback_run(a: &DemoArgs) -> anyhow::Result<Run> {
    let identity = tls::Identity::self_signed(&["localhost"])?;
    let cert = identity.chain.clone();
    let workers = a.queues.min(2) as usize;
    let server = server_builder(identity, workers)?
        .start_udp("127.0.0.1:0".parse()?, |_| PerfServer::default())
        .context("starting the perf server on loopback")?;
    let addr = server.local_addr();
    let label = format!("UDP on loopback, {workers} workers");
    eprintln!("xdp-quic demo: perf server on {addr} ({label}), client in the same process");
    client_phases(a, label, server, addr, cert, None, None)
}

fn testbed_runs(a: &DemoArgs) -> anyhow::Result<Vec<Run>> {
    Testbed::remove_all_on_signal()?;
    let name = format!("xqd{}", std::process::id() % 1_000_000);
    let tb = Testbed::create(&name, a.queues, 213).context("building the demo testbed")?;
    let queues: Vec<u32> = (0..a.queues).collect();
    let port = 4433;
    let listen: SocketAddr = format!("[::]:{port}").parse()?;
    let addr = SocketAddr::new(tb.server_ip(false), port);
    eprintln!(
        "xdp-quic demo: testbed {} ({}, {}) <-> {} ({}, {}), {} queues",
        tb.server_ns,
        tb.server_if,
        tb.server_v4,
        tb.client_ns,
        tb.client_if,
        tb.client_v4,
        a.queues
    );
    let ctx = TestbedCtx {
        a,
        tb: &tb,
        queues: &queues,
        listen,
        addr,
    };
    let mut runs = Vec::new();
    for round in 0..a.rounds {
        // Each side goes first in turn, so that a drift of the shared machine over a round
        // does not always favour the same one.
        let (x, u) = if round % 2 == 0 {
            let x = xdp_run(&ctx)?;
            (x, udp_run(&ctx)?)
        } else {
            let u = udp_run(&ctx)?;
            (xdp_run(&ctx)?, u)
        };
        runs.push(x);
        runs.push(u);
    }
    drop(tb);
    eprintln!("testbed removed");
    Ok(runs)
}

/// What every run in the demo's testbed shares.
struct TestbedCtx<'a> {
    a: &'a DemoArgs,
    tb: &'a Testbed,
    queues: &'a [u32],
    listen: SocketAddr,
    addr: SocketAddr,
}

/// AF_XDP: the program attached for the run, one worker per queue.
fn xdp_run(c: &TestbedCtx<'_>) -> anyhow::Result<Run> {
    let identity = tls::Identity::self_signed(&["localhost"])?;
    let cert = identity.chain.clone();
    let mut setup = XdpSetup::new(&c.tb.server_if, c.listen, c.queues.to_vec());
    setup.tx = c.a.tx.into();
    setup.poll = poll_mode(c.a);
    let builder = server_builder(identity, c.queues.len())?;
    let (server, attachment) = c.tb.serve_xdp(
        builder,
        &setup,
        xdp_quic_control::xdp::AttachMode::Auto,
        |_| PerfServer::default(),
    )?;
    let mode = attachment.mode().name();
    let zc = server.xsk_queues().iter().all(|q| q.zero_copy);
    let tx: Vec<_> = server.xsk_queues().iter().map(|q| q.tx).collect();
    let label = format!(
        "AF_XDP, {} XDP, {} mode, transmit {}, {} polling, {} queues",
        mode,
        if zc { "zero-copy" } else { "copy" },
        super::serve::tx_summary(c.queues, &tx),
        match setup.poll {
            PollMode::Busy => "busy".to_string(),
            PollMode::Adaptive { spin } => format!("adaptive ({} µs spin)", spin.as_micros()),
        },
        c.queues.len()
    );
    let counters = || attachment.counters();
    let run = client_phases(
        c.a,
        label,
        server,
        c.addr,
        cert,
        Some(&counters),
        Some(&c.tb.client_ns),
    );
    drop(attachment);
    run
}

/// UDP in the same testbed, program detached: the baseline.
fn udp_run(c: &TestbedCtx<'_>) -> anyhow::Result<Run> {
    let identity = tls::Identity::self_signed(&["localhost"])?;
    let cert = identity.chain.clone();
    let builder = server_builder(identity, c.queues.len())?;
    let server =
        c.tb.in_server(|| builder.start_udp(c.listen, |_| PerfServer::default()))??;
    let label = format!("UDP, SO_REUSEPORT, {} workers", c.queues.len());
    client_phases(
        c.a,
        label,
        server,
        c.addr,
        cert,
        None,
        Some(&c.tb.client_ns),
    )
}

/// The AF_XDP workers' polling of `a`.
fn poll_mode(a: &DemoArgs) -> PollMode {
    match a.poll {
        args::PollArg::Busy => PollMode::Busy,
        args::PollArg::Adaptive => PollMode::Adaptive {
            spin: Duration::from_micros(a.spin),
        },
    }
}

fn run_json(r: &Run) -> serde_json::Value {
    let workers: Vec<_> = r
        .workers
        .iter()
        .map(|c| {
            c.fields()
                .iter()
                .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
                .collect::<serde_json::Map<_, _>>()
        })
        .collect();
    let queues: Vec<_> = r
        .queues
        .iter()
        .map(|q| {
            serde_json::json!({
                "queue": q.queue, "zero_copy": q.zero_copy,
                "tx": q.tx.map(|t| t.to_string()), "rx_parse_errors": q.rx_parse_errors,
                "rx_bad_checksum": q.rx_bad_checksum, "rx_martians": q.rx_martians, "tx_no_route": q.tx_no_route,
                "tx_no_frame": q.tx_no_frame, "tx_ring_full": q.tx_ring_full, "kicks": q.kicks,
                "canary_packets": q.canary_packets, "kernel_rx_dropped": q.kernel.rx_dropped,
                "kernel_rx_ring_full": q.kernel.rx_ring_full,
                "kernel_fill_ring_empty": q.kernel.rx_fill_ring_empty,
            })
        })
        .collect();
    serde_json::json!({
        "server": r.label,
        "bulk": report_json(&r.bulk),
        "requests": report_json(&r.requests),
        "server_requests": r.served,
        "server_workers": workers,
        "queues": queues,
        "xdp_program": r.xdp.as_ref().map(|c| serde_json::to_value(xdp_quic_control::xdp::CountersJson::from(c)).unwrap_or_default()),
    })
}

/// AF_XDP's figures over UDP's: bulk throughput, requests/s, request p50 latency.
fn ratios(x: &Run, u: &Run) -> (f64, f64, f64) {
    (
        x.bulk.download_mbps / u.bulk.download_mbps.max(1e-9),
        x.requests.requests_per_s / u.requests.requests_per_s.max(1e-9),
        x.requests.p50_ms / u.requests.p50_ms.max(1e-9),
    )
}

/// Median, least and greatest of `v` (not empty).
fn spread(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    (median, v[0], v[n - 1])
}

/// The ratios of every round (`runs` holds AF_XDP then UDP for each); empty without AF_XDP.
fn round_ratios(runs: &[Run]) -> Vec<(f64, f64, f64)> {
    if runs.len() < 2 {
        return Vec::new();
    }
    runs.chunks_exact(2).map(|r| ratios(&r[0], &r[1])).collect()
}

fn print(a: &DemoArgs, runs: &[Run]) {
    let rounds = round_ratios(runs);
    let column = |f: fn(&(f64, f64, f64)) -> f64| spread(rounds.iter().map(f).collect());
    if a.json {
        let v: Vec<_> = runs.iter().map(run_json).collect();
        let summary = if rounds.is_empty() {
            serde_json::Value::Null
        } else {
            let each: Vec<_> = rounds
                .iter()
                .map(|(bulk, rps, p50)| {
                    serde_json::json!({
                        "bulk_throughput_ratio": bulk,
                        "requests_per_s_ratio": rps,
                        "request_p50_latency_ratio": p50,
                    })
                })
                .collect();
            let (bulk, rps, p50) = (column(|r| r.0), column(|r| r.1), column(|r| r.2));
            serde_json::json!({
                "bulk_throughput_ratio": bulk.0,
                "requests_per_s_ratio": rps.0,
                "request_p50_latency_ratio": p50.0,
                "spread": {
                    "bulk_throughput_ratio": [bulk.1, bulk.2],
                    "requests_per_s_ratio": [rps.1, rps.2],
                    "request_p50_latency_ratio": [p50.1, p50.2],
                },
                "rounds": each,
            })
        };
        println!(
            "{}",
            serde_json::json!({ "runs": v, "af_xdp_over_udp": summary })
        );
        return;
    }
    // The details of the first round; the others are in the ratios below (and `--json`).
    for r in runs.iter().take(2) {
        println!("== {} ==", r.label);
        println!("bulk download: {}", r.bulk);
        println!("requests:      {}", r.requests);
        for (i, c) in r.workers.iter().enumerate() {
            println!("  worker {i}: {}", summary(c));
        }
        for q in &r.queues {
            println!("  queue {}: {}", q.queue, xsk_summary(q));
        }
        if let Some(x) = &r.xdp {
            let named = x.named();
            let nonzero: Vec<_> = named.iter().filter(|(_, v)| *v > 0).collect();
            println!("  XDP program: {nonzero:?}");
        }
        println!("  server answered {} requests\n", r.served);
    }
    if rounds.is_empty() {
        return;
    }
    if rounds.len() > 1 {
        for (i, (bulk, rps, p50)) in rounds.iter().enumerate() {
            println!(
                "round {}: AF_XDP / UDP bulk throughput ×{bulk:.2}, requests/s ×{rps:.2}, request p50 latency ×{p50:.2}",
                i + 1
            );
        }
    }
    let (bulk, rps, p50) = (column(|r| r.0), column(|r| r.1), column(|r| r.2));
    println!(
        "AF_XDP / UDP: bulk throughput ×{:.2} [{:.2}–{:.2}], requests/s ×{:.2} [{:.2}–{:.2}], request p50 latency ×{:.2} [{:.2}–{:.2}] (median [min–max] of {} round{})",
        bulk.0, bulk.1, bulk.2, rps.0, rps.1, rps.2, p50.0, p50.1, p50.2,
        rounds.len(),
        if rounds.len() == 1 { "" } else { "s" }
    );
}
