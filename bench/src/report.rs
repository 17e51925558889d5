//! Results: per measurement, per row (workload × server × workers) median and spread, ratios
//! to quinn; written as JSON, a markdown table and SVG plots.

use std::path::{Path, PathBuf};

use plotters::prelude::*;

use crate::client::Outcome;
use crate::server::Kind;
use crate::Workload;

/// One measurement.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Measure {
    /// The headline figure: Gbit/s, requests/s, handshakes/s, or p50 latency in ms.
    pub value: f64,
    pub unit: &'static str,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub p999_ms: Option<f64>,
    /// Server process CPU seconds during the workload (user + system, /proc).
    pub server_cpu_s: f64,
    /// Wall time of the workers' turns that did work (ours; spin excluded; workers sharing a
    /// core each count the whole turn), else the process CPU.
    pub server_busy_s: f64,
    /// Server process CPU per unit of work: per GB, per 1,000 requests, or per handshake.
    pub cpu_per_unit: f64,
    pub cpu_unit: &'static str,
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
    pub fn new(w: Workload, o: &Outcome, cpu_s: f64, busy_s: f64) -> Self {
        let secs = o.elapsed_s.max(1e-9);
        // Process CPU for every server: the same yardstick (AF_XDP's adaptive spin is a real
        // cost of that backend, and busy wall time double-counts workers sharing a core).
        let cpu = cpu_s;
        let (value, unit, cpu_per_unit, cpu_unit) = match w {
            Workload::BulkDown1 | Workload::BulkDown16 | Workload::BulkUp1 => (
                o.bytes as f64 * 8.0 / secs / 1e9,
                "Gbit/s",
                cpu / (o.bytes as f64 / 1e9).max(1e-9),
                "CPU-s/GB",
            ),
            Workload::Requests => (
                o.requests as f64 / secs,
                "req/s",
                cpu / (o.requests as f64 / 1e3).max(1e-9),
                "CPU-s/1k req",
            ),
            Workload::Latency => (
                percentile(&o.latencies, 50.0).unwrap_or(f64::NAN),
                "ms p50",
                cpu / (o.requests as f64 / 1e3).max(1e-9),
                "CPU-s/1k req",
            ),
            Workload::Handshakes | Workload::HandshakesRetry => (
                o.handshakes as f64 / secs,
                "handshakes/s",
                cpu * 1e3 / (o.handshakes as f64).max(1e-9),
                "CPU-ms/handshake",
            ),
        };
        Self {
            value,
            unit,
            p50_ms: percentile(&o.latencies, 50.0),
            p99_ms: percentile(&o.latencies, 99.0),
            p999_ms: percentile(&o.latencies, 99.9),
            server_cpu_s: cpu_s,
            server_busy_s: busy_s,
            cpu_per_unit,
            cpu_unit,
            outcome: o.clone(),
        }
    }
}

/// All repetitions of one workload on one server with a worker count.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Row {
    pub workload: &'static str,
    pub server: Kind,
    pub workers: usize,
    pub reps: Vec<Measure>,
}

/// (median, min, max) of `f` over the repetitions.
fn stats(reps: &[Measure], f: impl Fn(&Measure) -> f64) -> (f64, f64, f64) {
    let mut v: Vec<f64> = reps.iter().map(f).collect();
    v.sort_by(|a, b| a.total_cmp(b));
    let med = if v.len() % 2 == 1 {
        v[v.len() / 2]
    } else {
        (v[v.len() / 2 - 1] + v[v.len() / 2]) / 2.0
    };
    (med, v[0], v[v.len() - 1])
}

fn fmt(v: f64) -> String {
    if v >= 1000.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    }
}

const ORDER: [Kind; 4] = [Kind::Quinn, Kind::Udp, Kind::XdpNative, Kind::XdpSkb];

/// The markdown table: every figure, its spread and its ratio to quinn.
pub fn markdown(rows: &[Row], ceiling: f64, quick: bool, reps: usize) -> String {
    let mut out = format!(
        "# xdp-quic-bench, {} on {}{}\n\n\
         Kernel {}, {} CPUs; server pinned to CPU 0, client to CPU 1, each at nice -15; \
         {reps} repetition(s): median [min–max] (×ratio to quinn, same workers). Client: quinn \
         0.11 over kernel UDP in the peer namespace of veth testbeds (as many queues as \
         workers; copy-mode AF_XDP). Cipher AES-128-GCM, one ECDSA P-256 certificate, default transport \
         parameters. Local ceiling: AES-128-GCM sealing of 1,200-octet packets on one core, \
         {ceiling:.2} Gbit/s.\n\n",
        crate::sys::today(),
        crate::sys::hostname(),
        if quick { " (quick: sizes too small to compare)" } else { "" },
        std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
    );
    let mut keys: Vec<(&str, usize)> = Vec::new();
    for r in rows {
        if !keys.contains(&(r.workload, r.workers)) {
            keys.push((r.workload, r.workers));
        }
    }
    for (title, pick, unit_of) in [
        ("Throughput and rates", 0usize, "unit"),
        (
            "Server CPU per unit of work (process user + system time, 10 ms resolution)",
            1,
            "cpu",
        ),
    ] {
        let _ = unit_of;
        out.push_str(&format!("## {title}\n\n| workload | workers | unit |"));
        for k in ORDER {
            out.push_str(&format!(" {} |", k.label()));
        }
        out.push_str("\n|---|---|---|---|---|---|---|\n");
        for &(w, workers) in &keys {
            let get = |k: Kind| {
                rows.iter()
                    .find(|r| r.workload == w && r.workers == workers && r.server == k)
            };
            let Some(any) = ORDER.iter().find_map(|&k| get(k)) else {
                continue;
            };
            let unit = if pick == 0 {
                any.reps[0].unit
            } else {
                any.reps[0].cpu_unit
            };
            let f = |m: &Measure| if pick == 0 { m.value } else { m.cpu_per_unit };
            let base = get(Kind::Quinn).map(|r| stats(&r.reps, f).0);
            out.push_str(&format!("| {w} | {workers} | {unit} |"));
            for k in ORDER {
                match get(k) {
                    None => out.push_str(" – |"),
                    Some(r) => {
                        let (m, lo, hi) = stats(&r.reps, f);
                        let ratio = match base {
                            Some(b) if k != Kind::Quinn && b > 0.0 => format!(" (×{:.2})", m / b),
                            _ => String::new(),
                        };
                        out.push_str(&format!(" {} [{}–{}]{ratio} |", fmt(m), fmt(lo), fmt(hi)));
                    }
                }
            }
            out.push('\n');
        }
        out.push('\n');
    }
    out.push_str("## Latency of one outstanding 1 KB request (ms)\n\n| server | p50 | p99 | p999 |\n|---|---|---|---|\n");
    for k in ORDER {
        if let Some(r) = rows
            .iter()
            .find(|r| r.workload == Workload::Latency.name() && r.server == k && r.workers == 2)
        {
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
        "\nThe request latency includes the client's own scheduling; quinn-proto's ACK delay \
         (25 ms max_ack_delay) does not shape it, as every response carries the ACK of its \
         request.\n",
    );
    out
}

/// One bar of a chart: the server, the median and the spread.
type Bar = (Kind, f64, f64, f64);
/// One panel of a chart: title, unit, bars.
type Panel = (String, String, Vec<Bar>);

/// Grouped bar charts with min–max whiskers, one panel per group.
fn chart(path: &Path, title: &str, panels: &[Panel]) -> anyhow::Result<()> {
    let cols = panels.len().clamp(1, 3);
    let rows_n = panels.len().div_ceil(cols);
    let root =
        SVGBackend::new(path, (380 * cols as u32, 320 * rows_n as u32 + 40)).into_drawing_area();
    root.fill(&WHITE)?;
    let (head, body) = root.split_vertically(40);
    head.titled(title, ("sans-serif", 20))?;
    let colors = [
        RGBColor(90, 90, 90),
        RGBColor(52, 120, 200),
        RGBColor(220, 110, 40),
        RGBColor(240, 180, 90),
    ];
    for (area, (name, unit, bars)) in body.split_evenly((rows_n, cols)).iter().zip(panels) {
        let ymax = bars.iter().map(|b| b.3).fold(0.0, f64::max).max(1e-9) * 1.15;
        let mut c = ChartBuilder::on(area)
            .caption(name, ("sans-serif", 13))
            .margin(8)
            .x_label_area_size(40)
            .y_label_area_size(75)
            .build_cartesian_2d(0f64..bars.len() as f64, 0f64..ymax)?;
        let labels: Vec<&str> = bars.iter().map(|b| short(b.0)).collect();
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

fn short(k: Kind) -> &'static str {
    match k {
        Kind::Quinn => "quinn",
        Kind::Udp => "UDP",
        Kind::XdpNative => "AF_XDP",
        Kind::XdpSkb => "AF_XDP skb",
    }
}

/// Writes `<date>-<host>.json`, `.md` and the SVG plots into `dir`; returns their paths.
pub fn write(
    dir: &Path,
    rows: &[Row],
    ceiling: f64,
    quick: bool,
    reps: usize,
) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let stem = format!("{}-{}", crate::sys::today(), crate::sys::hostname());
    let json = dir.join(format!("{stem}.json"));
    std::fs::write(
        &json,
        serde_json::to_string_pretty(&serde_json::json!({
            "date": crate::sys::today(),
            "host": crate::sys::hostname(),
            "quick": quick,
            "repetitions": reps,
            "aes128gcm_ceiling_gbps": ceiling,
            "rows": rows,
        }))?,
    )?;
    let md = dir.join(format!("{stem}.md"));
    std::fs::write(&md, markdown(rows, ceiling, quick, reps))?;

    let panel = |w: Workload, workers: usize| -> Option<Panel> {
        let bars: Vec<_> = ORDER
            .iter()
            .filter_map(|&k| {
                rows.iter()
                    .find(|r| r.workload == w.name() && r.server == k && r.workers == workers)
            })
            .map(|r| {
                let (m, lo, hi) = stats(&r.reps, |m| m.value);
                (r.server, m, lo, hi)
            })
            .collect();
        let unit = rows.iter().find(|r| r.workload == w.name())?.reps[0]
            .unit
            .to_string();
        (!bars.is_empty()).then(|| (format!("{}, {} workers", w.name(), workers), unit, bars))
    };
    let mut out = vec![json, md];
    let throughput = dir.join(format!("{stem}-throughput.svg"));
    let p: Vec<_> = [Workload::BulkDown1, Workload::BulkDown16, Workload::BulkUp1]
        .into_iter()
        .filter_map(|w| panel(w, 2))
        .collect();
    chart(&throughput, "Throughput (median, min–max)", &p)?;
    out.push(throughput);
    let rates = dir.join(format!("{stem}-rates.svg"));
    let p: Vec<_> = [
        Workload::Requests,
        Workload::Handshakes,
        Workload::HandshakesRetry,
    ]
    .into_iter()
    .filter_map(|w| panel(w, 2))
    .collect();
    chart(
        &rates,
        "Requests and handshakes per second (median, min–max)",
        &p,
    )?;
    out.push(rates);
    let latency = dir.join(format!("{stem}-latency.svg"));
    let p: Vec<_> = [Workload::Latency]
        .into_iter()
        .filter_map(|w| panel(w, 2))
        .collect();
    chart(
        &latency,
        "Latency of one outstanding request, p50 (median, min–max)",
        &p,
    )?;
    out.push(latency);
    Ok(out)
}
