//! Results: per measurement, per row (workload × server × workers × client) median and
//! spread, ratios; the targets of the issue checked against the medians; written as JSON, a
//! markdown report and SVG plots.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::app::AppStats;
use crate::load::Outcome;
use crate::server::Kind;
use crate::sys::CpuJiffies;
use crate::{Loader, Workload, CLIENT_CPU, MAIN_WORKERS, SERVER_CPU};

/// What the bench reads at each edge of a measured span.
#[derive(Debug, Clone)]
pub struct Sample {
    pub server_cpu_s: f64,
    /// CPU time of the bench process: the client (and the bench's own few samples).
    pub client_cpu_s: f64,
    pub cpus: Vec<CpuJiffies>,
    pub server_rss_kib: u64,
    /// CPU seconds of the kernel threads ([`crate::sys::kernel_threads_cpu_seconds`]).
    pub kthreads_cpu_s: f64,
    /// CPU ticks of every other process, by pid ([`crate::sys::other_processes_ticks`]).
    pub others_ticks: std::collections::HashMap<u32, u64>,
    /// The server application's counters.
    pub app: AppStats,
}

/// A client core busier than this over a workload may have limited it: flagged.
pub const SATURATED: f64 = 0.95;

/// Other work on the machine (cores, averaged over the span) above which a measurement is
/// taken again (at most twice), and flagged if it stays above.
pub const NOISY: f64 = 0.15;

/// One measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measure {
    /// The headline figure: Gbit/s, requests/s, streams/s, handshakes/s, or p50 latency in ms.
    pub value: f64,
    pub unit: &'static str,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    /// Server process CPU seconds, to the nanosecond (its CPU-time clock,
    /// [`crate::sys::cpu_seconds`]).
    pub server_cpu_s: f64,
    /// Busy CPU seconds of every core (/proc/stat user, nice, system, irq, softirq): on veth
    /// the receiver's stack runs in the sender's context, so a server's cost is partly on the
    /// client's core and the other way round.
    pub machine_cpu_s: f64,
    /// CPU seconds of the bench process (the client).
    pub client_cpu_s: f64,
    /// Machine CPU left over: other processes and kernel work charged to no process of ours.
    pub rest_cpu_s: f64,
    /// Kernel work: kernel threads (ksoftirqd, kworkers) and irq/softirq time (part of which
    /// is inside the server's and the client's own times).
    pub kernel_cpu_s: f64,
    /// Other processes of the machine (noise): their own CPU time over the span.
    pub others_cpu_s: f64,
    /// `others_cpu_s` over the span was above [`NOISY`] cores.
    pub noisy: bool,
    /// Times this measurement was taken (more than 1: the earlier ones were noisy).
    pub tries: u32,
    /// Time the hypervisor took from both cores.
    pub steal_s: f64,
    /// Busy fraction of the server's and the client's core.
    pub server_core_busy: f64,
    pub client_core_busy: f64,
    /// The client's core was at least [`SATURATED`] busy.
    pub client_saturated: bool,
    pub server_cpu_per_unit: f64,
    pub machine_cpu_per_unit: f64,
    pub cpu_unit: &'static str,
    /// Server resident memory (VmRSS) at the end of the span, and before the workload's
    /// connections were opened.
    pub server_rss_mib: f64,
    pub server_rss_before_mib: f64,
    /// xdp-quic servers: their workers' busy time (turns that moved packets).
    pub server_busy_s: f64,
    /// What the server's application counted over the workload.
    pub server_app: AppStats,
    pub outcome: Outcome,
}

fn percentile(v: &[f64], p: f64) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    Some(s[i.min(s.len() - 1)] * 1e3)
}

impl Measure {
    pub fn new(
        w: Workload,
        o: &Outcome,
        before: &Sample,
        after: &Sample,
        rss_before_kib: u64,
        busy_s: f64,
        app: AppStats,
    ) -> Self {
        let hz = crate::sys::hz();
        let secs = o.elapsed_s.max(1e-9);
        let server = after.server_cpu_s - before.server_cpu_s;
        let client = after.client_cpu_s - before.client_cpu_s;
        let d = |i: usize, f: fn(&CpuJiffies) -> u64| -> f64 {
            match (before.cpus.get(i), after.cpus.get(i)) {
                (Some(b), Some(a)) => f(a).saturating_sub(f(b)) as f64,
                _ => 0.0,
            }
        };
        // The two cores the server and the client are pinned to (a larger host's others
        // are not this measurement's).
        let both = [crate::SERVER_CPU, crate::CLIENT_CPU];
        let machine: f64 = both.iter().map(|&i| d(i, |c| c.busy)).sum::<f64>() / hz;
        let steal: f64 = both.iter().map(|&i| d(i, |c| c.steal)).sum::<f64>() / hz;
        let irq: f64 = both.iter().map(|&i| d(i, |c| c.irq)).sum::<f64>() / hz;
        let kernel = irq + (after.kthreads_cpu_s - before.kthreads_cpu_s).max(0.0);
        let rest = (machine - server - client).max(0.0);
        // The other processes' own CPU over the span (one that started during it counts
        // from its start). Not `rest - kernel`: irq and softirq time that interrupted the
        // server or the client is in their own times already, so that difference hid most
        // of the noise.
        let others = after
            .others_ticks
            .iter()
            .map(|(pid, t)| t.saturating_sub(before.others_ticks.get(pid).copied().unwrap_or(0)))
            .sum::<u64>() as f64
            / hz;
        // Of the time the core was given (steal is time the hypervisor gave to others: a
        // client that ran all it was given is saturated).
        let busy = |i: usize| d(i, |c| c.busy) / (d(i, |c| c.total) - d(i, |c| c.steal)).max(1.0);
        let (value, unit, work, cpu_unit) = match w {
            Workload::BulkDown1 | Workload::BulkDown16 | Workload::BulkUp1 => {
                let bytes = (o.downloaded + o.uploaded) as f64;
                (bytes * 8.0 / secs / 1e9, "Gbit/s", bytes / 1e9, "CPU-s/GB")
            }
            Workload::Requests | Workload::Scale(_) => (
                o.completed as f64 / secs,
                "req/s",
                o.completed as f64 / 1e6,
                "CPU-µs/req",
            ),
            Workload::Latency => (
                percentile(&o.latencies, 50.0).unwrap_or(f64::NAN),
                "ms p50",
                o.completed as f64 / 1e6,
                "CPU-µs/req",
            ),
            Workload::Ingest => (
                o.completed as f64 / secs,
                "streams/s",
                o.completed as f64 / 1e6,
                "CPU-µs/stream",
            ),
            Workload::Handshakes | Workload::HandshakesRetry => (
                o.completed as f64 / secs,
                "handshakes/s",
                o.completed as f64 / 1e3,
                "CPU-ms/handshake",
            ),
        };
        let work = work.max(1e-12);
        let client_core_busy = busy(CLIENT_CPU);
        Self {
            value,
            unit,
            p50_ms: percentile(&o.latencies, 50.0),
            p99_ms: percentile(&o.latencies, 99.0),
            p999_ms: percentile(&o.latencies, 99.9),
            server_cpu_s: server,
            machine_cpu_s: machine,
            client_cpu_s: client,
            rest_cpu_s: rest,
            kernel_cpu_s: kernel,
            others_cpu_s: others,
            noisy: others / secs > NOISY,
            tries: 1,
            steal_s: steal,
            server_core_busy: busy(SERVER_CPU),
            client_core_busy,
            client_saturated: client_core_busy >= SATURATED,
            server_cpu_per_unit: server / work,
            machine_cpu_per_unit: machine / work,
            cpu_unit,
            server_rss_mib: after.server_rss_kib as f64 / 1024.0,
            server_rss_before_mib: rss_before_kib as f64 / 1024.0,
            server_busy_s: busy_s,
            server_app: app,
            outcome: o.clone(),
        }
    }
}

/// All repetitions of one workload on one server with a worker count and a client.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub workload: String,
    #[serde(skip)]
    pub kind: Workload,
    pub server: Kind,
    pub workers: usize,
    pub client: Loader,
    pub reps: Vec<Measure>,
}

/// Offloads of one end of a testbed.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Offloads {
    pub queues: u32,
    pub end: &'static str,
    pub iface: String,
    pub features: Vec<(String, String)>,
}

/// What the report says about the run besides the rows.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Meta {
    pub quick: bool,
    pub reps: usize,
    pub ceiling_gbps: f64,
    pub offloads: Vec<Offloads>,
    /// The server RX queue of each client socket on the 2-queue testbed.
    pub socket_queues: Vec<usize>,
    pub duration_s: f64,
    /// The async servers' application: a task per stream or per connection.
    pub app_tasks: crate::server::AppTasks,
    /// The servers' memory allocator.
    pub allocator: &'static str,
}

/// (median, min, max) of `f` over the repetitions.
pub fn stats(reps: &[Measure], f: impl Fn(&Measure) -> f64) -> (f64, f64, f64) {
    let mut v: Vec<f64> = reps.iter().map(f).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let med = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    (med, v[0], v[v.len() - 1])
}

/// `f(x) / f(base)` over the repetitions: the median and spread of the ratios of each
/// repetition's pair (every repetition measures every server in turn, so a slow spell of the
/// shared machine that lasts through it moves both sides of its ratio), or, when the two
/// rows have not the same repetitions, the ratio of their medians (`paired` false).
#[derive(Debug, Clone, Copy)]
pub struct Ratio {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub paired: bool,
}

pub fn ratio(x: &Row, base: &Row, f: impl Fn(&Measure) -> f64) -> Ratio {
    let xs: Vec<f64> = x.reps.iter().map(&f).collect();
    let bs: Vec<f64> = base.reps.iter().map(&f).collect();
    Ratio::of(&xs, &bs)
}

impl Ratio {
    /// The ratio of `xs` to `bases`, repetition by repetition when they pair up.
    pub fn of(xs: &[f64], bases: &[f64]) -> Ratio {
        let median = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            if v.len() % 2 == 1 {
                v[v.len() / 2]
            } else {
                (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
            }
        };
        if xs.len() == bases.len() && !xs.is_empty() {
            let mut v: Vec<f64> = xs
                .iter()
                .zip(bases)
                .map(|(a, b)| a / b.max(1e-12))
                .collect();
            let m = median(&mut v);
            return Ratio {
                median: m,
                min: v[0],
                max: v[v.len() - 1],
                paired: true,
            };
        }
        let (mut a, mut b) = (xs.to_vec(), bases.to_vec());
        let r = if a.is_empty() || b.is_empty() {
            f64::NAN
        } else {
            median(&mut a) / median(&mut b).max(1e-12)
        };
        Ratio {
            median: r,
            min: r,
            max: r,
            paired: false,
        }
    }
}

impl std::fmt::Display for Ratio {
    /// `×median [min–max]` (the spread only for paired ratios of several repetitions).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "×{:.2}", self.median)?;
        if self.paired && self.max > self.min {
            write!(f, " [{:.2}–{:.2}]", self.min, self.max)?;
        }
        Ok(())
    }
}

fn fmt(v: f64) -> String {
    if !v.is_finite() {
        "–".into()
    } else if v >= 1000.0 {
        let s = format!("{v:.0}");
        // Thousands separators.
        let mut out = String::new();
        for (i, c) in s.chars().enumerate() {
            if i > 0 && (s.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

/// The servers, in table order.
pub const ORDER: [Kind; 7] = [
    Kind::Quinn,
    Kind::Udp,
    Kind::XdpKernel,
    Kind::XdpXsk,
    Kind::XdpSkb,
    Kind::AsyncRt,
    Kind::AsyncTpc,
];

/// The columns of the async-API tables (issue 15): quinn, the callback engine, both modes.
pub const ASYNC_ORDER: [Kind; 4] = [Kind::Quinn, Kind::Udp, Kind::AsyncRt, Kind::AsyncTpc];

fn find<'a>(rows: &'a [Row], w: &str, k: Kind, workers: usize, client: Loader) -> Option<&'a Row> {
    rows.iter()
        .find(|r| r.workload == w && r.server == k && r.workers == workers && r.client == client)
}

/// (workload name, workload, workers) of the rows of `client`, in first-seen order.
fn keys(rows: &[Row], client: Loader) -> Vec<(String, Workload, usize)> {
    let mut keys: Vec<(String, Workload, usize)> = Vec::new();
    for r in rows.iter().filter(|r| r.client == client) {
        if !keys.iter().any(|k| k.0 == r.workload && k.2 == r.workers) {
            keys.push((r.workload.clone(), r.kind, r.workers));
        }
    }
    // Workload order, then workers (2 before 1).
    let rank = |w: Workload| match w {
        Workload::BulkDown1 => 0,
        Workload::BulkDown16 => 1,
        Workload::BulkUp1 => 2,
        Workload::Requests => 3,
        Workload::Latency => 4,
        Workload::Handshakes => 5,
        Workload::HandshakesRetry => 6,
        Workload::Ingest => 7,
        Workload::Scale(n) => 8 + n,
    };
    keys.sort_by_key(|k| (rank(k.1), std::cmp::Reverse(k.2)));
    keys
}

/// One table: a line per workload (and worker count), a column per server, each cell
/// `median [min–max]`, `×ratio` to the server `base` (the median of the repetitions'
/// ratios, [`ratio`]), and ‡ where the client's core was saturated in some repetition.
fn table(
    rows: &[Row],
    kinds: &[Kind],
    client: Loader,
    unit: impl Fn(&Measure) -> &'static str,
    f: impl Fn(&Measure) -> f64 + Copy,
    base: Kind,
    include: impl Fn(Workload) -> bool,
) -> String {
    let mut out = String::from("| workload | workers | unit |");
    for k in kinds {
        out.push_str(&format!(" {} |", k.label()));
    }
    out.push_str("\n|---|---|---|");
    out.push_str(&"---|".repeat(kinds.len()));
    out.push('\n');
    for (name, w, workers) in keys(rows, client) {
        if !include(w) {
            continue;
        }
        let Some(any) = kinds
            .iter()
            .find_map(|&k| find(rows, &name, k, workers, client))
        else {
            continue;
        };
        let b = find(rows, &name, base, workers, client);
        out.push_str(&format!("| {name} | {workers} | {} |", unit(&any.reps[0])));
        for &k in kinds {
            match find(rows, &name, k, workers, client) {
                None => out.push_str(" – |"),
                Some(r) => {
                    let (m, lo, hi) = stats(&r.reps, f);
                    let ratio = match b {
                        Some(b) if k != base && stats(&b.reps, f).0 > 0.0 => {
                            format!(" ×{:.2}", ratio(r, b, f).median)
                        }
                        _ => String::new(),
                    };
                    let flag = marks(&[r]);
                    let spread = if r.reps.len() > 1 {
                        format!(" [{}–{}]", fmt(lo), fmt(hi))
                    } else {
                        String::new()
                    };
                    out.push_str(&format!(" {}{spread}{ratio}{flag} |", fmt(m)));
                }
            }
        }
        out.push('\n');
    }
    out
}

/// " ‡" where the client's core was saturated, " §" where the machine was noisy, in some
/// repetition of one of `rows`.
fn marks(rows: &[&Row]) -> String {
    let mut flag = String::new();
    if rows
        .iter()
        .any(|r| r.reps.iter().any(|m| m.client_saturated))
    {
        flag.push_str(" ‡");
    }
    if rows.iter().any(|r| r.reps.iter().any(|m| m.noisy)) {
        flag.push_str(" §");
    }
    flag
}

/// The targets of the issue, checked against the medians of this run; a verdict on rows
/// where the client's core was saturated (‡) or the machine noisy (§) says so: it may be the
/// client's or the noise's, not the servers'.
fn targets(rows: &[Row]) -> String {
    let mut out =
        String::from("| target | workload | figures (medians; ×: median [min–max] of the repetitions' ratios) | met |\n|---|---|---|---|\n");
    let med = |r: &Row, f: fn(&Measure) -> f64| stats(&r.reps, f).0;
    let yes = |ok: bool| if ok { "yes" } else { "**no**" };
    for (name, w, workers) in keys(rows, Loader::Ours) {
        let (Some(x), Some(u)) = (
            find(rows, &name, Kind::XdpKernel, workers, Loader::Ours),
            find(rows, &name, Kind::Udp, workers, Loader::Ours),
        ) else {
            continue;
        };
        let (xv, uv) = (med(x, |m| m.value), med(u, |m| m.value));
        let rate = ratio(x, u, |m| m.value);
        // Latency: lower is better.
        let rate_ok = if w == Workload::Latency {
            rate.median <= 1.0
        } else {
            rate.median >= 1.0
        };
        out.push_str(&format!(
            "| AF_XDP (tx auto = kernel on veth) rate ≥ UDP's | {name}{} | {} vs {} {} ({rate}){} | {} |\n",
            workers_note(workers),
            fmt(xv),
            fmt(uv),
            x.reps[0].unit,
            marks(&[x, u]),
            yes(rate_ok)
        ));
        let (xc, uc) = (
            med(x, |m| m.machine_cpu_per_unit),
            med(u, |m| m.machine_cpu_per_unit),
        );
        let cpu = ratio(x, u, |m| m.machine_cpu_per_unit);
        out.push_str(&format!(
            "| AF_XDP machine CPU per unit ≤ UDP's | {name}{} | {} vs {} {} ({cpu}){} | {} |\n",
            workers_note(workers),
            fmt(xc),
            fmt(uc),
            x.reps[0].cpu_unit,
            marks(&[x, u]),
            yes(cpu.median <= 1.0)
        ));
    }
    for w in [Workload::BulkDown1, Workload::BulkDown16] {
        let name = w.name();
        if let (Some(u), Some(q)) = (
            find(rows, &name, Kind::Udp, MAIN_WORKERS, Loader::Ours),
            find(rows, &name, Kind::Quinn, MAIN_WORKERS, Loader::Ours),
        ) {
            let (uc, qc) = (
                med(u, |m| m.server_cpu_per_unit),
                med(q, |m| m.server_cpu_per_unit),
            );
            let r = ratio(u, q, |m| m.server_cpu_per_unit);
            out.push_str(&format!(
                "| UDP server CPU per GB ≤ 0.67 × quinn's | {name} | {} vs {} CPU-s/GB ({r}){} | {} |\n",
                fmt(uc),
                fmt(qc),
                marks(&[u, q]),
                yes(r.median <= 0.67)
            ));
        }
    }
    let name = Workload::Ingest.name();
    // A paced ingest (`--ingest-rate`) measures a given load, not what a core can take in.
    let paced = crate::INGEST_RATE.get().is_some();
    for k in [Kind::Udp, Kind::XdpKernel, Kind::XdpXsk]
        .into_iter()
        .filter(|_| !paced)
    {
        if let Some(r) = find(rows, &name, k, MAIN_WORKERS, Loader::Ours) {
            let per_core = med(r, |m| 1e6 / m.server_cpu_per_unit.max(1e-12));
            out.push_str(&format!(
                "| ingest ≥ 270k streams/s per server core | {name}, {} | {} streams per server CPU-second ({} streams/s on the one server core){} | {} |\n",
                k.label(),
                fmt(per_core),
                fmt(med(r, |m| m.value)),
                marks(&[r]),
                yes(per_core >= 270_000.0)
            ));
        }
    }
    out
}

/// Issue 15: the async API (`xdp_quic::tokio`) in both modes beside the callback engine
/// (xdp-quic UDP) and quinn, on the workloads measured for it; ratios to the callback engine.
fn async_section(rows: &[Row]) -> String {
    let kinds: Vec<Kind> = ASYNC_ORDER
        .iter()
        .copied()
        .filter(|k| rows.iter().any(|r| r.server == *k))
        .collect();
    let measured: Vec<String> = rows
        .iter()
        .filter(|r| r.server.is_async())
        .map(|r| r.workload.clone())
        .collect();
    let only = |w: Workload| measured.contains(&w.name());
    let mut out = String::from(
        "\n## The async API (issue 15)\n\nxdp-quic's `xdp_quic::tokio` over kernel UDP, running \
         the same application source as the quinn server: in the application's runtime (a \
         tokio runtime of its own threads; requests handed to the engine's worker in batches) \
         and thread-per-core (the tasks on the worker's thread). Ratios to the callback \
         engine (xdp-quic UDP).\n\nRate:\n\n",
    );
    let w = MAIN_WORKERS;
    let ours = Loader::Ours;
    out.push_str(&table(
        rows,
        &kinds,
        ours,
        |m| m.unit,
        |m| m.value,
        Kind::Udp,
        only,
    ));
    out.push_str("\nServer process CPU per unit:\n\n");
    out.push_str(&table(
        rows,
        &kinds,
        ours,
        |m| m.cpu_unit,
        |m| m.server_cpu_per_unit,
        Kind::Udp,
        only,
    ));
    out.push_str("\nMachine CPU per unit:\n\n");
    out.push_str(&table(
        rows,
        &kinds,
        ours,
        |m| m.cpu_unit,
        |m| m.machine_cpu_per_unit,
        Kind::Udp,
        only,
    ));
    out.push_str(
        "\nIssue 15's targets (medians, and the median [min–max] of the ratios of each \
         repetition; requests per server core = requests per second of server process \
         CPU):\n\n| target | figures | met |\n|---|---|---|\n",
    );
    let name = Workload::Requests.name();
    let row = |k: Kind| find(rows, &name, k, w, ours);
    let cpu: fn(&Measure) -> f64 = |m| m.server_cpu_per_unit;
    let med = |r: &Row| stats(&r.reps, cpu).0;
    let yes = |ok: bool| if ok { "yes" } else { "**no**" };
    if let (Some(t), Some(c)) = (row(Kind::AsyncTpc), row(Kind::Udp)) {
        let r = ratio(t, c, cpu);
        out.push_str(&format!(
            "| thread-per-core CPU per request within 10% of the callback engine's | {} vs {} server CPU-µs/req ({r}){} | {} |\n",
            fmt(med(t)),
            fmt(med(c)),
            marks(&[t, c]),
            yes(r.median <= 1.10)
        ));
    }
    for k in [Kind::AsyncTpc, Kind::AsyncRt] {
        if let (Some(x), Some(q)) = (row(k), row(Kind::Quinn)) {
            if med(x) <= 0.0 || med(q) <= 0.0 {
                out.push_str(&format!(
                    "| {} requests per server core ≥ 3 × quinn's | span too short for the CPU clock | – |\n",
                    k.label()
                ));
                continue;
            }
            // Requests per server CPU-second: the inverse of CPU per request, so the ratio
            // is quinn's CPU per request over this one's.
            let r = ratio(q, x, cpu);
            out.push_str(&format!(
                "| {} requests per server core ≥ 3 × quinn's | {} vs {} req per server CPU-s ({r}){} | {} |\n",
                k.label(),
                fmt(1e6 / med(x)),
                fmt(1e6 / med(q)),
                marks(&[x, q]),
                yes(r.median >= 3.0)
            ));
        }
    }
    out
}

fn workers_note(workers: usize) -> String {
    if workers == MAIN_WORKERS {
        String::new()
    } else {
        format!(" ({workers} workers)")
    }
}

/// The markdown report.
pub fn markdown(rows: &[Row], meta: &Meta) -> String {
    let kinds: Vec<Kind> = ORDER
        .iter()
        .copied()
        .filter(|k| !k.is_async() && rows.iter().any(|r| r.server == *k))
        .collect();
    let mut out = format!(
        "# xdp-quic-bench, {} on {}{}\n\n\
         Kernel {}, {} CPUs. Every server runs pinned to CPU {SERVER_CPU} with {MAIN_WORKERS} \
         worker (rows marked 2: two workers on that one core, on a 2-queue testbed), the \
         client pinned to CPU {CLIENT_CPU}, each at nice -15; {} repetition(s), each going \
         through every server: median [min–max], ×ratio to quinn's server (the median of \
         the repetitions' ratios, each repetition's pair measured in the same pass). Client: \
         **xdp-quic's client engine** (quinn-proto over kernel UDP, one worker per server RX \
         queue, each with a socket chosen to land on its own queue: {:?} on the 2-queue \
         testbed); quinn's own client runs as a cross-check (last table). Cipher AES-128-GCM, \
         one ECDSA P-256 certificate, quinn-proto's default transport parameters on every \
         server. Duration-bound workloads measure {:.1} s after their connections are up. \
         ‡: the client's core was ≥{:.0}% busy in at least one repetition (the client may have \
         set the pace). §: other processes of the machine used more than {:.2} cores during \
         at least one repetition, taken three times (the machine is shared). Local ceiling: AES-128-GCM sealing of 1,200-octet packets on one core, \
         {:.2} Gbit/s.\n\n",
        crate::sys::today(),
        crate::sys::hostname(),
        if meta.quick {
            " (quick: sizes too small to compare)"
        } else {
            ""
        },
        std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .unwrap_or_default()
            .trim(),
        // The machine's, not this thread's: the bench pins itself to the client's core.
        // SAFETY: sysconf takes no pointers.
        unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(0),
        meta.reps,
        meta.socket_queues,
        meta.duration_s,
        SATURATED * 100.0,
        NOISY,
        meta.ceiling_gbps,
    );
    out.push_str(&format!(
        "Memory allocator of every server: {}. ",
        meta.allocator
    ));
    out.push_str(match meta.app_tasks {
        crate::server::AppTasks::Stream => {
            "The async servers' application (quinn's, and xdp-quic's async API: one source) \
             spawns a task per stream, as quinn's perf server does.\n\n"
        }
        crate::server::AppTasks::Connection => {
            "The async servers' application (quinn's, and xdp-quic's async API: one source) \
             serves each connection's streams in turn in one task per connection (and one \
             for its unidirectional streams), as issue 15's example does \
             (`--app-tasks connection`).\n\n"
        }
    });
    out.push_str(
        "Offloads (`ethtool -k`) of the veth testbeds: the server's end keeps its defaults, \
         as a real NIC would (checksum offload, so the kernel's UDP path does GSO); only the \
         client's end has TX checksum offload off, so that AF_XDP reads full checksums.\n\n",
    );
    for o in &meta.offloads {
        let f: Vec<String> = o.features.iter().map(|(k, v)| format!("{k} {v}")).collect();
        out.push_str(&format!(
            "- {}-queue testbed, {} end ({}): {}\n",
            o.queues,
            o.end,
            o.iface,
            f.join(", ")
        ));
    }
    out.push('\n');
    let all = |_: Workload| true;
    out.push_str("## Rate\n\n");
    out.push_str(&table(
        rows,
        &kinds,
        Loader::Ours,
        |m| m.unit,
        |m| m.value,
        Kind::Quinn,
        all,
    ));
    out.push_str(
        "\n## Server process CPU per unit of work\n\n\
         CPU time of the server process, to the nanosecond (its CPU-time clock: the run \
         time of all its threads).\n\n",
    );
    out.push_str(&table(
        rows,
        &kinds,
        Loader::Ours,
        |m| m.cpu_unit,
        |m| m.server_cpu_per_unit,
        Kind::Quinn,
        |w| w != Workload::Latency,
    ));
    out.push_str(
        "\n## Machine CPU per unit of work\n\n\
         Busy time of both cores (/proc/stat), client and kernel included: on veth the \
         receiver's stack runs in the sender's context, so part of a server's cost lands on \
         the client's core and the other way round. This is the fair total.\n\n",
    );
    out.push_str(&table(
        rows,
        &kinds,
        Loader::Ours,
        |m| m.cpu_unit,
        |m| m.machine_cpu_per_unit,
        Kind::Quinn,
        |w| w != Workload::Latency,
    ));
    out.push_str("\n## Server memory at scale\n\nVmRSS of the server process with every connection open, MiB (a fresh server per connection count).\n\n");
    out.push_str(&table(
        rows,
        &kinds,
        Loader::Ours,
        |_| "MiB",
        |m| m.server_rss_mib,
        Kind::Quinn,
        |w| matches!(w, Workload::Scale(_)),
    ));
    out.push_str("\n## Busy fraction of the client's core\n\n");
    out.push_str(&table(
        rows,
        &kinds,
        Loader::Ours,
        |_| "%",
        |m| m.client_core_busy * 100.0,
        Kind::Quinn,
        all,
    ));
    out.push_str("\n## Latency of one outstanding 1 KB request (ms)\n\n| server | p50 | p99 | p999 |\n|---|---|---|---|\n");
    for &k in &kinds {
        if let Some(r) = find(
            rows,
            &Workload::Latency.name(),
            k,
            MAIN_WORKERS,
            Loader::Ours,
        ) {
            let p = |f: fn(&Measure) -> Option<f64>| {
                fmt(stats(&r.reps, |m| f(m).unwrap_or(f64::NAN)).0)
            };
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                k.label(),
                p(|m| m.p50_ms),
                p(|m| m.p99_ms),
                p(|m| m.p999_ms)
            ));
        }
    }
    out.push_str(
        "\nThe latency is measured by the client around each request and includes its own \
         scheduling.\n\n## Targets\n\n",
    );
    out.push_str(&targets(rows));
    if rows.iter().any(|r| r.server.is_async()) {
        out.push_str(&async_section(rows));
    }
    if rows.iter().any(|r| r.client == Loader::Quinn) {
        out.push_str(
            "\n## Cross-check: quinn's client\n\nThe same workloads driven by quinn 0.11's \
             client (tokio, one thread on the client's core), ratio to quinn's server.\n\n",
        );
        out.push_str(&table(
            rows,
            &kinds,
            Loader::Quinn,
            |m| m.unit,
            |m| m.value,
            Kind::Quinn,
            all,
        ));
        out.push_str("\nBusy fraction of the client's core under quinn's client (%):\n\n");
        out.push_str(&table(
            rows,
            &kinds,
            Loader::Quinn,
            |_| "%",
            |m| m.client_core_busy * 100.0,
            Kind::Quinn,
            all,
        ));
    }
    let (rest, steal): (Vec<f64>, Vec<f64>) = rows
        .iter()
        .flat_map(|r| r.reps.iter())
        .map(|m| {
            (
                m.others_cpu_s / m.outcome.elapsed_s.max(1e-9),
                m.steal_s / m.outcome.elapsed_s.max(1e-9),
            )
        })
        .unzip();
    let retaken: u32 = rows
        .iter()
        .flat_map(|r| r.reps.iter())
        .map(|m| m.tries - 1)
        .sum();
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    out.push_str(&format!(
        "\nNoise: other processes of the machine (their own CPU time: every process but \
         the server, the bench and kernel threads) averaged {:.2} cores over the measured spans \
         (max {:.2}), hypervisor steal {:.3} cores (max {:.3}); {retaken} measurement(s) \
         taken again for noise; per measurement in the JSON (`others_cpu_s`, `kernel_cpu_s`, \
         `steal_s`, `tries`).\n",
        mean(&rest),
        rest.iter().copied().fold(0.0, f64::max),
        mean(&steal),
        steal.iter().copied().fold(0.0, f64::max),
    ));
    out
}

/// One bar of a chart: the server, the median and the spread.
type Bar = (Kind, f64, f64, f64);
/// One panel of a chart: title, unit, bars.
type Panel = (String, String, Vec<Bar>);

/// Grouped bar charts with min–max whiskers, one panel per group.
fn chart(path: &Path, title: &str, panels: &[Panel]) -> anyhow::Result<()> {
    let cols = panels.len().clamp(1, 3);
    let rows_n = panels.len().div_ceil(cols).max(1);
    let root =
        SVGBackend::new(path, (430 * cols as u32, 320 * rows_n as u32 + 40)).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(40);
    head.titled(title, ("sans-serif", 20))?;
    let colors = [
        RGBColor(90, 90, 90),
        RGBColor(52, 120, 200),
        RGBColor(220, 110, 40),
        RGBColor(240, 180, 90),
        RGBColor(150, 90, 170),
        RGBColor(60, 170, 110),
        RGBColor(20, 110, 70),
    ];
    for (area, (name, unit, bars)) in body.split_evenly((rows_n, cols)).iter().zip(panels) {
        let ymax = bars.iter().map(|b| b.3).fold(0.0, f64::max).max(1e-9) * 1.15;
        let mut c = ChartBuilder::on(area)
            .caption(name, ("sans-serif", 13))
            .margin(8)
            .x_label_area_size(40)
            .y_label_area_size(75)
            .build_cartesian_2d(0f64..bars.len() as f64, 0f64..ymax)?;
        let labels: Vec<&str> = bars.iter().map(|b| b.0.short()).collect();
        c.configure_mesh()
            .disable_x_mesh()
            .x_labels(bars.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 0.26 {
                    labels.get(i).copied().unwrap_or("").to_string()
                } else {
                    String::new()
                }
            })
            .y_desc(unit.as_str())
            .draw()?;
        for (i, (k, med, lo, hi)) in bars.iter().enumerate() {
            let color = colors[ORDER.iter().position(|o| o == k).unwrap_or(0)];
            let x = i as f64;
            c.draw_series(std::iter::once(Rectangle::new(
                [(x + 0.15, 0.0), (x + 0.85, *med)],
                color.filled(),
            )))?;
            c.draw_series(std::iter::once(PathElement::new(
                vec![(x + 0.5, *lo), (x + 0.5, *hi)],
                BLACK.stroke_width(2),
            )))?;
        }
    }
    root.present()?;
    Ok(())
}

/// Writes `<stem>.json`, `.md` and the SVG plots into `dir`; returns their paths (JSON and
/// markdown first).
pub fn write(dir: &Path, stem: &str, rows: &[Row], meta: &Meta) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let json = dir.join(format!("{stem}.json"));
    std::fs::write(
        &json,
        serde_json::to_string_pretty(&serde_json::json!({
            "date": crate::sys::today(),
            "host": crate::sys::hostname(),
            "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
            "server_cpu": SERVER_CPU,
            "client_cpu": CLIENT_CPU,
            "meta": meta,
            "rows": rows,
        }))?,
    )?;
    let md = dir.join(format!("{stem}.md"));
    std::fs::write(&md, markdown(rows, meta))?;

    let panel = |w: Workload, workers: usize, f: fn(&Measure) -> f64, unit: Option<&str>| {
        let name = w.name();
        let bars: Vec<Bar> = ORDER
            .iter()
            .filter_map(|&k| find(rows, &name, k, workers, Loader::Ours))
            .map(|r| {
                let (m, lo, hi) = stats(&r.reps, f);
                (r.server, m, lo, hi)
            })
            .collect();
        let first = find_any(rows, &name)?;
        let unit = unit.unwrap_or(first.reps[0].unit).to_string();
        (!bars.is_empty()).then(|| (format!("{name}, {workers} workers"), unit, bars))
    };
    let mut out = vec![json, md];
    let mut plot = |file: &str, title: &str, panels: Vec<Panel>| -> anyhow::Result<()> {
        if panels.is_empty() {
            return Ok(());
        }
        let p = dir.join(format!("{stem}-{file}.svg"));
        chart(&p, title, &panels)?;
        out.push(p);
        Ok(())
    };
    let value: fn(&Measure) -> f64 = |m| m.value;
    plot(
        "throughput",
        "Throughput (median, min–max)",
        [Workload::BulkDown1, Workload::BulkDown16, Workload::BulkUp1]
            .into_iter()
            .filter_map(|w| panel(w, MAIN_WORKERS, value, None))
            .collect(),
    )?;
    plot(
        "rates",
        "Requests, ingest streams and handshakes per second (median, min–max)",
        [
            Workload::Requests,
            Workload::Ingest,
            Workload::Handshakes,
            Workload::HandshakesRetry,
        ]
        .into_iter()
        .filter_map(|w| panel(w, MAIN_WORKERS, value, None))
        .collect(),
    )?;
    plot(
        "latency",
        "Latency of one outstanding request, p50 (median, min–max)",
        [Workload::Latency]
            .into_iter()
            .filter_map(|w| panel(w, MAIN_WORKERS, value, None))
            .collect(),
    )?;
    let machine: fn(&Measure) -> f64 = |m| m.machine_cpu_per_unit;
    let cpu_panels: Vec<Panel> = [
        Workload::BulkDown1,
        Workload::BulkUp1,
        Workload::Requests,
        Workload::Ingest,
    ]
    .into_iter()
    .filter_map(|w| {
        let unit = find_any(rows, &w.name())?.reps[0].cpu_unit;
        panel(w, MAIN_WORKERS, machine, Some(unit))
    })
    .collect();
    plot(
        "cpu",
        "Machine CPU (both cores) per unit of work, lower is better",
        cpu_panels,
    )?;
    let mut scale: Vec<Workload> = rows
        .iter()
        .filter_map(|r| match r.kind {
            Workload::Scale(n) => Some(Workload::Scale(n)),
            _ => None,
        })
        .collect();
    scale.sort_by_key(|w| match w {
        Workload::Scale(n) => *n,
        _ => 0,
    });
    scale.dedup();
    let rss: fn(&Measure) -> f64 = |m| m.server_rss_mib;
    let mut scale_panels: Vec<Panel> = scale
        .iter()
        .filter_map(|&w| panel(w, MAIN_WORKERS, value, None))
        .collect();
    scale_panels.extend(
        scale
            .iter()
            .filter_map(|&w| panel(w, MAIN_WORKERS, rss, Some("server RSS, MiB"))),
    );
    plot(
        "scale",
        "Connection scale: requests/s, then server RSS (median, min–max)",
        scale_panels,
    )?;
    Ok(out)
}

fn find_any<'a>(rows: &'a [Row], name: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.workload == name)
}

#[cfg(test)]
mod tests {
    use super::Ratio;

    #[test]
    fn ratios_pair_the_repetitions() {
        // A slow second repetition moves both servers: the paired ratio stays, where the
        // ratio of the medians would not.
        let r = Ratio::of(&[2.0, 4.0, 2.2], &[1.0, 2.0, 1.0]);
        assert!(r.paired);
        assert_eq!((r.median, r.min, r.max), (2.0, 2.0, 2.2));
        assert_eq!(r.to_string(), "×2.00 [2.00–2.20]");
        let even = Ratio::of(&[1.0, 3.0], &[1.0, 1.0]);
        assert_eq!(even.median, 2.0);
        // Unpaired: the ratio of the medians, shown without a spread.
        let u = Ratio::of(&[2.0, 4.0, 6.0], &[2.0]);
        assert!(!u.paired);
        assert_eq!(u.median, 2.0);
        assert_eq!(u.to_string(), "×2.00");
        assert!(Ratio::of(&[], &[1.0]).median.is_nan());
    }
}
