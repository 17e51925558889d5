//! Metrics of a running server, exposed for Prometheus.
//!
//! [`EngineCollector`] reads, at each scrape, what the engine publishes without locks (worker
//! counters and histograms, per-queue AF_XDP counters with the kernel's XDP_STATISTICS) and
//! the XDP program's per-CPU counters; [`MetricsServer`] serves them over HTTP on an address
//! that should stay on loopback, several connections at once within [`MetricsLimits`] (one
//! deadline per exchange, a bound on connections), so that a slow or idle client holds up
//! no scrape: it holds one slot until its deadline. (A client that takes every slot and
//! keeps reconnecting can still have scrapes answered 503: keep the endpoint on loopback or
//! behind a firewall.)
//! Scraping never touches a worker: it reads atomics and maps.
//!
//! Names start with `xdpquic_`; labels: `worker`, and with AF_XDP `iface` and `queue`.

mod collector;
mod http;
mod scrape;

pub use collector::EngineCollector;
pub use http::{bind as bind_metrics, Limits as MetricsLimits, MetricsServer, MAX_DEADLINE};
pub use scrape::{parse, scrape, Sample};
