//! Worker counters: plain integers on the hot path, published once per turn.
//!
//! A worker increments its own [`Counters`] (no atomics, no sharing) and copies them into its
//! [`WorkerMetrics`] at the end of each turn with relaxed stores; readers on other threads take
//! a [`Counters`] snapshot with [`WorkerMetrics::snapshot`].

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($( $(#[$doc:meta])* $name:ident ),* $(,)?) => {
        /// The counters of one worker (or a sum of several).
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        pub struct Counters {
            $( $(#[$doc])* pub $name: u64, )*
        }

        /// The published counters of one worker, readable from any thread.
        #[derive(Debug, Default)]
        pub struct WorkerMetrics {
            $( $name: AtomicU64, )*
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
    /// Datagrams dropped before the endpoint: empty or truncated QUIC header.
    rx_malformed,
    /// Datagrams the endpoint ignored (not QUIC, unknown version too short, foreign CID...).
    rx_ignored,
    /// Datagrams handed to another worker (their CID names it).
    handover_out,
    /// Datagrams received from other workers.
    handover_in,
    /// Hand-overs dropped because the owner's queue was full.
    handover_dropped,
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
