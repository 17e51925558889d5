//! The Prometheus collector of one engine.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::exemplar::Exemplar;
use prometheus_client::metrics::MetricType;
use xdp_quic::backend::xsk::XskQueueInfo;
use xdp_quic::metrics::{Counters, Histogram, WorkerMetrics, COUNTER_HELP};

use crate::xdp::pressure::PressureView;
use crate::xdp::CountersReader;

/// Gauges among the worker counters (everything else only grows).
const GAUGES: &[&str] = &[
    "conns_active",
    "conns_handshaking",
    "attempts_deferred",
    "rx_chunks",
    "failed",
];
/// Counters kept in nanoseconds, exported in seconds.
const NANOS: &[&str] = &["busy_ns", "idle_ns"];

/// Reads one engine's metrics at each scrape.
#[derive(Debug)]
pub struct EngineCollector {
    backend: &'static str,
    iface: Option<String>,
    workers: Vec<Arc<WorkerMetrics>>,
    /// Queue of worker i (AF_XDP only).
    queues: Vec<Arc<XskQueueInfo>>,
    program: Option<Mutex<CountersReader>>,
    /// The XDP shield's pressure monitor, when it runs.
    pressure: Option<Arc<PressureView>>,
}

impl EngineCollector {
    /// A collector of `workers` (and, for AF_XDP, their `queues` on `iface` and the XDP
    /// program's counters).
    pub fn new(
        backend: &'static str,
        iface: Option<String>,
        workers: Vec<Arc<WorkerMetrics>>,
        queues: Vec<Arc<XskQueueInfo>>,
        program: Option<CountersReader>,
    ) -> Self {
        Self {
            backend,
            iface,
            workers,
            queues,
            program: program.map(Mutex::new),
            pressure: None,
        }
    }

    /// Also exports the pressure flags of the XDP shield's monitor
    /// (`xdpquic_xdp_pressure`, `xdpquic_xdp_pressure_episodes_total`, per queue).
    pub fn with_pressure(mut self, view: Arc<PressureView>) -> Self {
        self.pressure = Some(view);
        self
    }

    fn labels(&self, worker: usize) -> Vec<(&'static str, String)> {
        let mut l = vec![("worker", worker.to_string())];
        if let (Some(iface), Some(q)) = (&self.iface, self.queues.get(worker)) {
            l.push(("iface", iface.clone()));
            l.push(("queue", q.queue.to_string()));
        }
        l
    }
}

type NoExemplars = HashMap<usize, Exemplar<NoLabelSet, f64>>;
/// A per-queue AF_XDP metric: name, help, how to read it from a snapshot.
type QueueMetric = (
    &'static str,
    &'static str,
    fn(&xdp_quic::backend::xsk::XskSnapshot) -> u64,
);

fn histogram(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    rows: &[(Vec<(&'static str, String)>, &Histogram)],
) -> std::fmt::Result {
    let mut fam = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, h) in rows {
        fam.encode_family(labels)?.encode_histogram::<NoLabelSet>(
            h.sum(),
            h.count(),
            &h.cumulative(),
            None::<&NoExemplars>,
        )?;
    }
    Ok(())
}

impl Collector for EngineCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> std::fmt::Result {
        {
            let mut fam = enc.encode_descriptor(
                "xdpquic_backend_info",
                "The I/O backend of the workers (value 1).",
                None,
                MetricType::Gauge,
            )?;
            let mut l = vec![("backend", self.backend.to_string())];
            if let Some(i) = &self.iface {
                l.push(("iface", i.clone()));
            }
            fam.encode_family(&l)?.encode_gauge(&1u64)?;
        }

        let snaps: Vec<Counters> = self.workers.iter().map(|w| w.snapshot()).collect();
        for (i, (name, help)) in COUNTER_HELP.iter().enumerate() {
            let value = |c: &Counters| c.fields()[i].1;
            if NANOS.contains(name) {
                let base = name.trim_end_matches("_ns");
                let metric = format!("xdpquic_worker_{base}_seconds");
                let mut fam =
                    enc.encode_descriptor(&metric, help.trim(), None, MetricType::Counter)?;
                for (w, c) in snaps.iter().enumerate() {
                    let secs = value(c) as f64 / 1e9;
                    let labels = self.labels(w);
                    fam.encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, f64>(&secs, None)?;
                }
                continue;
            }
            let gauge = GAUGES.contains(name);
            let ty = if gauge {
                MetricType::Gauge
            } else {
                MetricType::Counter
            };
            let metric = format!("xdpquic_worker_{name}");
            let mut fam = enc.encode_descriptor(&metric, help.trim(), None, ty)?;
            for (w, c) in snaps.iter().enumerate() {
                let labels = self.labels(w);
                let mut m = fam.encode_family(&labels)?;
                if gauge {
                    m.encode_gauge(&value(c))?;
                } else {
                    m.encode_counter::<NoLabelSet, _, f64>(&value(c), None)?;
                }
            }
        }

        let hists: Vec<_> = self.workers.iter().map(|w| w.histograms()).collect();
        let rows = |pick: fn(&xdp_quic::metrics::Histograms) -> &Histogram| {
            hists
                .iter()
                .enumerate()
                .map(|(w, h)| (self.labels(w), pick(h)))
                .collect::<Vec<_>>()
        };
        histogram(
            &mut enc,
            "xdpquic_rx_batch_size",
            "Datagrams per non-empty receive call.",
            &rows(|h| &h.rx_batch),
        )?;
        histogram(
            &mut enc,
            "xdpquic_connection_rtt_seconds",
            "Smoothed round-trip time of each connection when it ended.",
            &rows(|h| &h.rtt),
        )?;
        histogram(
            &mut enc,
            "xdpquic_handshake_seconds",
            "Time from a connection's first packet to its completed handshake.",
            &rows(|h| &h.handshake),
        )?;

        if !self.queues.is_empty() {
            let snaps: Vec<_> = self.queues.iter().map(|q| q.snapshot()).collect();
            {
                let mut fam = enc.encode_descriptor(
                    "xdpquic_xsk_info",
                    "Each AF_XDP queue's mode (zero-copy or copy) and transmit path (xsk: the \
                 socket's TX ring; kernel: the queue's UDP socket with GSO); value 1.",
                    None,
                    MetricType::Gauge,
                )?;
                for (w, q) in self.queues.iter().enumerate() {
                    let mut labels = self.labels(w);
                    labels.push((
                        "mode",
                        if q.zero_copy { "zero-copy" } else { "copy" }.to_string(),
                    ));
                    labels.push(("tx", q.tx.to_string()));
                    fam.encode_family(&labels)?.encode_gauge(&1u64)?;
                }
            }
            let per_queue: [QueueMetric; 15] = [
                ("rx_parse_errors", "Frames that were not UDP over IP, or malformed.", |s| s.rx_parse_errors),
                ("rx_bad_checksum", "Frames with a wrong UDP checksum.", |s| s.rx_bad_checksum),
                ("rx_other_port", "Frames for another UDP port.", |s| s.rx_other_port),
                ("rx_martians", "Frames no reply may answer (multicast or broadcast source, unspecified, loopback or multicast address), dropped.", |s| s.rx_martians),
                ("tx_no_route", "Transmits on the TX ring without the peer's link layer (a connection this host opened).", |s| s.tx_no_route),
                ("tx_no_frame", "Sends pushed back for want of a free UMEM frame.", |s| s.tx_no_frame),
                ("tx_ring_full", "Sends pushed back by a full TX ring.", |s| s.tx_ring_full),
                ("kicks", "TX wake-up syscalls.", |s| s.kicks),
                ("canary_packets", "Datagrams that reached the ordinary UDP socket of the port: the XDP path missed them.", |s| s.canary_packets),
                ("kernel_rx_dropped", "XDP_STATISTICS rx_dropped.", |s| s.kernel.rx_dropped),
                ("kernel_rx_invalid_descs", "XDP_STATISTICS rx_invalid_descs.", |s| s.kernel.rx_invalid_descs),
                ("kernel_tx_invalid_descs", "XDP_STATISTICS tx_invalid_descs.", |s| s.kernel.tx_invalid_descs),
                ("kernel_rx_ring_full", "XDP_STATISTICS rx_ring_full: the RX ring was full.", |s| s.kernel.rx_ring_full),
                ("kernel_rx_fill_ring_empty", "XDP_STATISTICS rx_fill_ring_empty_descs: no UMEM frame for a packet.", |s| s.kernel.rx_fill_ring_empty),
                ("kernel_tx_ring_empty", "XDP_STATISTICS tx_ring_empty_descs.", |s| s.kernel.tx_ring_empty),
            ];
            for (name, help, get) in per_queue {
                let metric = format!("xdpquic_xsk_{name}");
                let mut fam = enc.encode_descriptor(&metric, help, None, MetricType::Counter)?;
                for (w, s) in snaps.iter().enumerate() {
                    let labels = self.labels(w);
                    fam.encode_family(&labels)?
                        .encode_counter::<NoLabelSet, _, f64>(&get(s), None)?;
                }
            }
        }

        // The program's counters, when they can be read: a failed read (the map gone with
        // the program, say) leaves this family out of the scrape, not the whole scrape (the
        // workers' families above stay). A reader poisoned by a panic is still usable.
        let program = match (&self.program, &self.iface) {
            (Some(reader), Some(iface)) => {
                let read = reader.lock().unwrap_or_else(|p| p.into_inner()).read();
                match read {
                    Ok(counters) => Some((counters, iface)),
                    Err(e) => {
                        tracing::debug!("metrics: the XDP program's counters: {e:#}");
                        None
                    }
                }
            }
            _ => None,
        };
        if let Some((counters, iface)) = program {
            let mut fam = enc.encode_descriptor(
                "xdpquic_xdp_packets",
                "Packets the XDP program saw, by family and outcome (summed over CPUs).",
                None,
                MetricType::Counter,
            )?;
            for (name, v) in counters.named() {
                let (family, outcome) = match name.split_once('.') {
                    Some((f, o)) => (f.to_string(), o.to_string()),
                    None => ("any".to_string(), name.clone()),
                };
                let l = [
                    ("iface", iface.clone()),
                    ("family", family),
                    ("outcome", outcome),
                ];
                fam.encode_family(&l)?
                    .encode_counter::<NoLabelSet, _, f64>(&v, None)?;
            }
        }
        if let (Some(view), Some(iface)) = (&self.pressure, &self.iface) {
            let queues = view.queues();
            let labels = |q: u32| [("iface", iface.clone()), ("queue", q.to_string())];
            let mut fam = enc.encode_descriptor(
                "xdpquic_xdp_pressure",
                "1 while the XDP shield admits Initials without a token per source prefix on \
                 this queue (its worker at its Retry threshold, or the kernel dropping at its socket).",
                None,
                MetricType::Gauge,
            )?;
            for &(q, on, _) in &queues {
                fam.encode_family(&labels(q))?
                    .encode_gauge(&u64::from(on))?;
            }
            let mut fam = enc.encode_descriptor(
                "xdpquic_xdp_pressure_episodes",
                "Times this queue came under pressure.",
                None,
                MetricType::Counter,
            )?;
            for &(q, _, n) in &queues {
                fam.encode_family(&labels(q))?
                    .encode_counter::<NoLabelSet, _, f64>(&n, None)?;
            }
        }
        Ok(())
    }
}
