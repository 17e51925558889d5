//! The per-queue table of `xdp-quic stats --daemon`: rates computed from two scrapes of a
//! daemon's metrics endpoint.

use xdp_quic_control::metrics::Sample;

/// Counters whose increase counts as a drop.
const DROPS: &[&str] = &[
    "xdpquic_worker_rx_malformed_total",
    "xdpquic_worker_handover_dropped_total",
    "xdpquic_worker_tx_errors_total",
    "xdpquic_xsk_rx_parse_errors_total",
    "xdpquic_xsk_rx_bad_checksum_total",
    "xdpquic_xsk_kernel_rx_dropped_total",
    "xdpquic_xsk_kernel_rx_ring_full_total",
    "xdpquic_xsk_kernel_rx_fill_ring_empty_total",
];

/// One worker (and its queue, over AF_XDP) between two scrapes.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Row {
    pub worker: String,
    pub queue: Option<String>,
    pub rx_pps: f64,
    pub tx_pps: f64,
    /// Drops of every kind per second (parse, checksum, hand-over, kernel).
    pub drops_ps: f64,
    /// Drops of every kind since the daemon started.
    pub drops: f64,
    pub connections: f64,
    /// Share of wall time in turns that did work, 0 to 100.
    pub busy_pct: f64,
    pub canary: f64,
}

fn value(samples: &[Sample], name: &str, worker: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name && s.label("worker") == Some(worker))
        .map(|s| s.value)
        .sum()
}

/// Checks that a daemon's `samples` are `iface`'s: an AF_XDP daemon labels its workers with
/// the interface they serve, and one of another interface is an error (its table would pass
/// for `iface`'s). A kernel UDP daemon's workers carry no interface: taken as they are.
pub fn check_iface(samples: &[Sample], iface: &str) -> anyhow::Result<()> {
    let served: std::collections::BTreeSet<&str> = samples
        .iter()
        .filter(|s| s.name == "xdpquic_worker_rx_packets_total")
        .filter_map(|s| s.label("iface"))
        .collect();
    if !served.is_empty() && !served.contains(iface) {
        anyhow::bail!(
            "the daemon serves {} over AF_XDP, not {iface}: ask for its interface",
            served.into_iter().collect::<Vec<_>>().join(", ")
        );
    }
    Ok(())
}

/// The rows of the workers in `now`, with rates against `prev` over `dt` seconds.
pub fn rows(prev: &[Sample], now: &[Sample], dt: f64) -> Vec<Row> {
    let mut workers: Vec<(String, Option<String>)> = now
        .iter()
        .filter(|s| s.name == "xdpquic_worker_rx_packets_total")
        .filter_map(|s| {
            Some((
                s.label("worker")?.to_string(),
                s.label("queue").map(String::from),
            ))
        })
        .collect();
    workers.sort_by_key(|(w, _)| w.parse::<u64>().unwrap_or(u64::MAX));
    let dt = dt.max(1e-9);
    workers
        .into_iter()
        .map(|(w, queue)| {
            let rate = |name: &str| (value(now, name, &w) - value(prev, name, &w)).max(0.0) / dt;
            let drops: f64 = DROPS.iter().map(|n| value(now, n, &w)).sum();
            let drops_before: f64 = DROPS.iter().map(|n| value(prev, n, &w)).sum();
            let busy = rate("xdpquic_worker_busy_seconds_total");
            let idle = rate("xdpquic_worker_idle_seconds_total");
            Row {
                rx_pps: rate("xdpquic_worker_rx_packets_total"),
                tx_pps: rate("xdpquic_worker_tx_packets_total"),
                drops_ps: (drops - drops_before).max(0.0) / dt,
                drops,
                connections: value(now, "xdpquic_worker_conns_active", &w),
                busy_pct: if busy + idle > 0.0 {
                    100.0 * busy / (busy + idle)
                } else {
                    0.0
                },
                canary: value(now, "xdpquic_xsk_canary_packets_total", &w),
                worker: w,
                queue,
            }
        })
        .collect()
}

/// The table as text.
pub fn render(rows: &[Row]) -> String {
    let mut out = format!(
        "{:>6} {:>6} {:>12} {:>12} {:>10} {:>10} {:>7} {:>6} {:>7}\n",
        "worker", "queue", "rx pkt/s", "tx pkt/s", "drops/s", "drops", "conns", "busy%", "canary"
    );
    for r in rows {
        out.push_str(&format!(
            "{:>6} {:>6} {:>12.0} {:>12.0} {:>10.1} {:>10.0} {:>7.0} {:>6.1} {:>7.0}\n",
            r.worker,
            r.queue.as_deref().unwrap_or("-"),
            r.rx_pps,
            r.tx_pps,
            r.drops_ps,
            r.drops,
            r.connections,
            r.busy_pct,
            r.canary
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use xdp_quic_control::metrics::parse;

    #[test]
    fn rates_between_two_scrapes() {
        let a = parse(
            "xdpquic_worker_rx_packets_total{worker=\"1\",queue=\"1\"} 100\n\
             xdpquic_worker_rx_packets_total{worker=\"0\",queue=\"0\"} 10\n\
             xdpquic_worker_busy_seconds_total{worker=\"0\",queue=\"0\"} 1\n\
             xdpquic_worker_idle_seconds_total{worker=\"0\",queue=\"0\"} 1\n",
        );
        let b = parse(
            "xdpquic_worker_rx_packets_total{worker=\"1\",queue=\"1\"} 300\n\
             xdpquic_worker_rx_packets_total{worker=\"0\",queue=\"0\"} 10\n\
             xdpquic_worker_busy_seconds_total{worker=\"0\",queue=\"0\"} 1.5\n\
             xdpquic_worker_idle_seconds_total{worker=\"0\",queue=\"0\"} 2.5\n\
             xdpquic_xsk_kernel_rx_dropped_total{worker=\"1\",queue=\"1\"} 4\n\
             xdpquic_worker_conns_active{worker=\"1\",queue=\"1\"} 3\n",
        );
        let r = rows(&a, &b, 2.0);
        assert_eq!(r.len(), 2);
        assert_eq!(r[0].worker, "0");
        assert_eq!(r[0].busy_pct, 25.0);
        assert_eq!(r[1].rx_pps, 100.0);
        assert_eq!(r[1].drops_ps, 2.0);
        assert_eq!(r[1].connections, 3.0);
        assert!(render(&r).contains("busy%"));
    }

    #[test]
    fn a_daemon_of_another_interface_is_refused() {
        let xdp =
            parse("xdpquic_worker_rx_packets_total{worker=\"0\",iface=\"eth0\",queue=\"0\"} 1\n");
        assert!(check_iface(&xdp, "eth0").is_ok());
        let e = check_iface(&xdp, "lo").unwrap_err().to_string();
        assert!(e.contains("serves eth0 over AF_XDP, not lo"), "{e}");
        let udp = parse("xdpquic_worker_rx_packets_total{worker=\"0\"} 1\n");
        assert!(check_iface(&udp, "lo").is_ok());
    }
}
