//! Worker counters: plain integers on the hot path, published once per turn.
//!
//! A worker increments its own [`Counters`] (no atomics, no sharing) and copies them into its
//! [`WorkerMetrics`] at the end of each turn with relaxed stores; readers on other threads take
//! a [`Counters`] snapshot with [`WorkerMetrics::snapshot`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($( $(#[doc = $doc:literal])* $name:ident ),* $(,)?) => {
        /// The counters of one worker (or a sum of several).
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Counters {
            $( $(#[doc = $doc])* pub $name: u64, )*
        }

        /// `(name, help)` of every counter, in declaration order (the doc comments).
        pub const COUNTER_HELP: [(&str, &str); counters!(@count $($name)*)] =
            [ $( (stringify!($name), concat!($($doc),*)), )* ];

        /// The published counters of one worker, readable from any thread.
        #[derive(Debug, Default)]
        pub struct WorkerMetrics {
            $( $name: AtomicU64, )*
            histograms: PublishedHistograms,
        }

        impl WorkerMetrics {
            /// Publishes `c` (called by the owning worker only).
            pub fn publish(&self, c: &Counters) {
                $( self.$name.store(c.$name, Relaxed); )*
            }

            /// The last published values.
            pub fn snapshot(&self) -> Counters {
                Counters { $( $name: self.$name.load(Relaxed), )* }
            }

            /// Publishes the histograms (called by the owning worker only).
            pub fn publish_histograms(&self, h: &Histograms) {
                self.histograms.publish(h);
            }

            /// The last published histograms.
            pub fn histograms(&self) -> Histograms {
                self.histograms.snapshot()
            }
        }

        impl std::ops::AddAssign for Counters {
            fn add_assign(&mut self, o: Self) {
                $( self.$name += o.$name; )*
            }
        }

        impl Counters {
            /// (name, value) of every counter, in declaration order.
            pub fn fields(&self) -> [(&'static str, u64); counters!(@count $($name)*)] {
                [ $( (stringify!($name), self.$name), )* ]
            }
        }
    };
    (@count) => { 0 };
    (@count $head:ident $($tail:ident)*) => { 1 + counters!(@count $($tail)*) };
}

counters! {
    /// Datagrams received from the backend.
    rx_packets,
    /// Octets of UDP payload received from the backend.
    rx_bytes,
    /// Datagrams sent (GSO batches count each segment).
    tx_packets,
    /// Octets of UDP payload sent.
    tx_bytes,
    /// Receive calls that returned at least one datagram.
    rx_batches,
    /// Datagrams dropped before the endpoint: empty or truncated QUIC header, or from port 0
    /// or an unspecified address (no answer could go there).
    rx_malformed,
    /// Datagrams the endpoint ignored (not QUIC, unknown version too short, foreign CID...).
    rx_ignored,
    /// Datagrams handed to another worker (their CID names it).
    handover_out,
    /// Datagrams received from other workers.
    handover_in,
    /// Hand-overs dropped because the owner's queue was full (or the owner failed).
    handover_dropped,
    /// Datagrams the kernel dropped at this worker's UDP socket (receive buffer full, bad
    /// checksum), read about once a second from SO_MEMINFO: the worker does not keep up.
    kernel_rx_dropped,
    /// Receive chunks (16 KiB) the worker keeps, held by datagrams that quinn-proto or the
    /// application keep, or free for reuse (a gauge; at most `EngineBuilder::receive_chunks`).
    rx_chunks,
    /// Datagrams received into a buffer of their own size because every receive chunk was
    /// held at the limit (an allocation each).
    rx_own_buffers,
    /// Transmits that failed for good (not counting back-pressure).
    tx_errors,
    /// Times the backend pushed back (socket buffer or TX ring full).
    tx_blocked,
    /// Connections accepted (server side).
    conns_accepted,
    /// Connections opened (client side).
    conns_opened,
    /// Incoming connections refused (shutting down, or the endpoint said no).
    conns_refused,
    /// Connections whose handshake completed.
    handshakes,
    /// Connections closed and drained.
    conns_closed,
    /// Retry packets sent (stateless address validation).
    retries_sent,
    /// Stateless resets sent.
    resets_sent,
    /// Version negotiation packets sent.
    version_negotiations,
    /// Connections alive on this worker (a gauge).
    conns_active,
    /// Connections alive whose handshake is not complete (a gauge; above the Retry threshold
    /// new clients must validate their address).
    conns_handshaking,
    /// Connection attempts awaiting a deferred decision (`Decision::Defer`; a gauge). They
    /// count towards the Retry threshold with `conns_handshaking`.
    attempts_deferred,
    /// Connections that ended by idle timeout.
    closed_timed_out,
    /// Connections the peer closed (application or transport close).
    closed_by_peer,
    /// Connections closed locally (application or shutdown).
    closed_locally,
    /// Connections ended by a stateless reset from the peer.
    closed_reset,
    /// Connections ended by a protocol error or version mismatch.
    closed_error,
    /// Packets the connections that ended here had lost (quinn-proto's count).
    lost_packets,
    /// Congestion events of the connections that ended here.
    congestion_events,
    /// Application callbacks that panicked (the worker then closed its connections and
    /// stopped).
    handler_panics,
    /// 1 once the worker has failed (a panic outside the application's callbacks, or a fatal
    /// I/O error): it closed its connections as far as it could and stopped (a gauge).
    failed,
    /// Nanoseconds of turns that did work.
    busy_ns,
    /// Nanoseconds waiting or spinning without work.
    idle_ns,
}

/// A histogram with fixed bucket bounds: plain integers for the owner, published like the
/// counters.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Observations per bucket (not cumulative); the last counts those above every bound.
    counts: Vec<u64>,
    sum: f64,
}

impl Histogram {
    /// An empty histogram over `bounds` (ascending).
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
        }
    }

    /// Records one observation.
    pub fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.counts[i] += 1;
        self.sum += v;
    }

    /// The bucket upper bounds.
    pub fn bounds(&self) -> &'static [f64] {
        self.bounds
    }

    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Sum of the observations.
    pub fn sum(&self) -> f64 {
        self.sum
    }

    /// `(upper bound, cumulative count)` per bucket, `+Inf` last, as Prometheus wants them.
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut acc = 0;
        self.counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                acc += c;
                (self.bounds.get(i).copied().unwrap_or(f64::INFINITY), acc)
            })
            .collect()
    }

    /// Adds `o` (same bounds) to this histogram.
    pub fn merge(&mut self, o: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&o.counts) {
            *a += b;
        }
        self.sum += o.sum;
    }
}

/// Bucket bounds of the receive batch sizes (datagrams per receive call).
pub const BATCH_BOUNDS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0];
/// Bucket bounds of round-trip times and handshake times, in seconds.
pub const TIME_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
];

/// The histograms of one worker.
#[derive(Debug, Clone, PartialEq)]
pub struct Histograms {
    /// Datagrams per non-empty receive call.
    pub rx_batch: Histogram,
    /// Smoothed RTT of each connection when it ended, in seconds.
    pub rtt: Histogram,
    /// Time from the first packet to the completed handshake, in seconds.
    pub handshake: Histogram,
}

impl Default for Histograms {
    fn default() -> Self {
        Self {
            rx_batch: Histogram::new(BATCH_BOUNDS),
            rtt: Histogram::new(TIME_BOUNDS),
            handshake: Histogram::new(TIME_BOUNDS),
        }
    }
}

impl Histograms {
    /// Adds `o` to these histograms.
    pub fn merge(&mut self, o: &Histograms) {
        self.rx_batch.merge(&o.rx_batch);
        self.rtt.merge(&o.rtt);
        self.handshake.merge(&o.handshake);
    }
}

/// Histograms as atomics: bucket counts and the sum (as f64 bits), each stored relaxed.
/// A reader may see a bucket of one publication and the sum of the next: fine for metrics.
#[derive(Debug)]
struct PublishedHistograms {
    parts: [(Vec<AtomicU64>, AtomicU64); 3],
}

impl Default for PublishedHistograms {
    fn default() -> Self {
        let part = |n: usize| {
            (
                (0..n).map(|_| AtomicU64::new(0)).collect(),
                AtomicU64::new(0),
            )
        };
        Self {
            parts: [
                part(BATCH_BOUNDS.len() + 1),
                part(TIME_BOUNDS.len() + 1),
                part(TIME_BOUNDS.len() + 1),
            ],
        }
    }
}

impl PublishedHistograms {
    fn publish(&self, h: &Histograms) {
        for ((counts, sum), src) in self.parts.iter().zip([&h.rx_batch, &h.rtt, &h.handshake]) {
            for (a, v) in counts.iter().zip(&src.counts) {
                a.store(*v, Relaxed);
            }
            sum.store(src.sum.to_bits(), Relaxed);
        }
    }

    fn snapshot(&self) -> Histograms {
        let mut out = Histograms::default();
        for ((counts, sum), dst) in
            self.parts
                .iter()
                .zip([&mut out.rx_batch, &mut out.rtt, &mut out.handshake])
        {
            for (d, a) in dst.counts.iter_mut().zip(counts) {
                *d = a.load(Relaxed);
            }
            dst.sum = f64::from_bits(sum.load(Relaxed));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_snapshot_and_sum() {
        let m = WorkerMetrics::default();
        let c = Counters {
            rx_packets: 3,
            handover_out: 2,
            ..Default::default()
        };
        m.publish(&c);
        let s = m.snapshot();
        assert_eq!(s, c);
        let mut total = s;
        total += s;
        assert_eq!(total.rx_packets, 6);
        assert!(total
            .fields()
            .iter()
            .any(|&(n, v)| n == "handover_out" && v == 4));
    }
}
