//! A congestion-controller wrapper that lets a closing connection's CONNECTION_CLOSE out.
//!
//! quinn-proto 0.11.19 gates the packet that carries CONNECTION_CLOSE by the congestion
//! window whenever stream data is still queued; once closed, a connection processes no more
//! ACKs, so with a full window the close is never sent and the peer learns of it only by its
//! idle timeout (quinn issue #2785, fixed upstream by PR #2787 after that release).
//!
//! Every connection of the engine gets its controllers through [`GatedFactory`]; the worker
//! keeps the [`CloseGate`] of each connection and opens it when it closes the connection.
//! quinn-proto builds a connection's first controller inside `Endpoint::accept` or
//! `Endpoint::connect`, and a fresh one whenever the peer moves to a new address (any move
//! but an IPv4 port change, so every IPv6 move too): the factory leaves the gate of the
//! controller it built last in a thread-local, and the worker takes it right after each of
//! those calls (`take_last_built`). The first is the connection's gate; every later one is
//! made to follow it ([`CloseGate::follow`]), so that opening the connection's gate opens
//! every controller it ever had, including one that a move failing validation brings back
//! (quinn-proto may bring back a controller from several moves before).
//! An open gate reports an unlimited window: a closed connection sends nothing but
//! CONNECTION_CLOSE, so nothing else can use it. Remove this module when quinn-proto releases
//! the fix.

use std::any::Any;
use std::cell::RefCell;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use quinn_proto::congestion::{Controller, ControllerFactory, ControllerMetrics};
use quinn_proto::RttEstimator;

/// Opens one connection's congestion window for its CONNECTION_CLOSE.
#[derive(Debug, Clone, Default)]
pub struct CloseGate(Arc<GateState>);

#[derive(Debug, Default)]
struct GateState {
    open: AtomicBool,
    /// The connection's gate, for the gate of a controller built after the first.
    follows: std::sync::OnceLock<CloseGate>,
}

impl CloseGate {
    /// Call right after `Connection::close`.
    pub fn open(&self) {
        self.0.open.store(true, Ordering::Relaxed);
    }

    /// Whether [`CloseGate::open`] was called on it, or on the gate it follows.
    pub fn is_open(&self) -> bool {
        self.0.open.load(Ordering::Relaxed) || self.0.follows.get().is_some_and(|g| g.is_open())
    }

    /// Makes this gate (of a controller quinn-proto built after the connection's first)
    /// open whenever `connection`'s gate is. `connection` must be a gate that follows none
    /// (the connection's first), so that a check reads two flags at most.
    pub(crate) fn follow(&self, connection: &CloseGate) {
        debug_assert!(connection.0.follows.get().is_none());
        let _ = self.0.follows.set(connection.clone());
    }
}

thread_local! {
    /// The gate of the controller built last on this thread and not yet taken.
    static LAST_BUILT: RefCell<Option<CloseGate>> = const { RefCell::new(None) };
}

/// Takes the gate of the controller that quinn-proto built on this thread since the last
/// call, if it built one: call it right after `Endpoint::accept` and `Endpoint::connect` (a
/// new connection) and after `Connection::handle_event` (a migration may have replaced the
/// connection's controller).
pub(crate) fn take_last_built() -> Option<CloseGate> {
    LAST_BUILT.with(|l| l.borrow_mut().take())
}

/// A congestion-controller factory, shared.
pub type AnyFactory = Arc<dyn ControllerFactory + Send + Sync>;

/// A controller chosen after the transport that uses it was made (the engine builder's
/// `congestion`, which may come after its `transport`): set once, at the build of the first
/// engine made with that transport, with whether that builder named it (Cubic otherwise).
pub(crate) type Choice = Arc<std::sync::OnceLock<(AnyFactory, bool)>>;

/// Wraps another factory's controllers (Cubic by default) in a [`CloseGate`].
pub struct GatedFactory {
    inner: Inner,
}

enum Inner {
    Fixed(AnyFactory),
    Chosen(Choice),
}

impl GatedFactory {
    /// Gates the controllers `inner` builds.
    pub fn new(inner: AnyFactory) -> Arc<Self> {
        Arc::new(Self {
            inner: Inner::Fixed(inner),
        })
    }

    /// Gates quinn-proto's default controller, Cubic.
    pub fn cubic() -> Arc<Self> {
        Self::new(Arc::new(quinn_proto::congestion::CubicConfig::default()))
    }

    /// Gates the controller `choice` holds when a connection is made.
    pub(crate) fn chosen(choice: Choice) -> Arc<Self> {
        Arc::new(Self {
            inner: Inner::Chosen(choice),
        })
    }
}

impl ControllerFactory for GatedFactory {
    fn build(self: Arc<Self>, now: Instant, current_mtu: u16) -> Box<dyn Controller> {
        let gate = CloseGate::default();
        LAST_BUILT.with(|l| *l.borrow_mut() = Some(gate.clone()));
        let inner = match &self.inner {
            Inner::Fixed(f) => f.clone(),
            Inner::Chosen(c) => c
                .get_or_init(|| {
                    (
                        Arc::new(quinn_proto::congestion::CubicConfig::default()),
                        false,
                    )
                })
                .0
                .clone(),
        };
        Box::new(Gated {
            inner: inner.build(now, current_mtu),
            gate,
        })
    }
}

struct Gated {
    inner: Box<dyn Controller>,
    gate: CloseGate,
}

impl Controller for Gated {
    fn on_sent(&mut self, now: Instant, bytes: u64, last_packet_number: u64) {
        self.inner.on_sent(now, bytes, last_packet_number)
    }

    fn on_ack(
        &mut self,
        now: Instant,
        sent: Instant,
        bytes: u64,
        app_limited: bool,
        rtt: &RttEstimator,
    ) {
        self.inner.on_ack(now, sent, bytes, app_limited, rtt)
    }

    fn on_end_acks(
        &mut self,
        now: Instant,
        in_flight: u64,
        app_limited: bool,
        largest_packet_num_acked: Option<u64>,
    ) {
        self.inner
            .on_end_acks(now, in_flight, app_limited, largest_packet_num_acked)
    }

    fn on_congestion_event(
        &mut self,
        now: Instant,
        sent: Instant,
        persistent: bool,
        lost_bytes: u64,
    ) {
        self.inner
            .on_congestion_event(now, sent, persistent, lost_bytes)
    }

    fn on_mtu_update(&mut self, new_mtu: u16) {
        self.inner.on_mtu_update(new_mtu)
    }

    fn window(&self) -> u64 {
        if self.gate.is_open() {
            u64::MAX / 2
        } else {
            self.inner.window()
        }
    }

    fn metrics(&self) -> ControllerMetrics {
        self.inner.metrics()
    }

    fn clone_box(&self) -> Box<dyn Controller> {
        // A migrated path keeps the connection's gate.
        Box::new(Gated {
            inner: self.inner.clone_box(),
            gate: self.gate.clone(),
        })
    }

    fn initial_window(&self) -> u64 {
        self.inner.initial_window()
    }

    fn into_any(self: Box<Self>) -> Box<dyn Any> {
        self.inner.into_any()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that moved twice has three controllers; a move that fails validation
    /// may bring back any earlier one. Opening the connection's gate opens all of them.
    #[test]
    fn every_controller_a_connection_had_opens_with_its_gate() {
        let factory = GatedFactory::cubic();
        let now = Instant::now();
        let mut built = Vec::new();
        for _ in 0..3 {
            let c = factory.clone().build(now, 1200);
            built.push((c, take_last_built().expect("the factory left its gate")));
        }
        let connection = built[0].1.clone();
        for (_, gate) in &built[1..] {
            gate.follow(&connection);
        }
        let initial = built[0].0.window();
        assert!(built.iter().all(|(c, _)| c.window() == initial));
        connection.open();
        for (i, (c, gate)) in built.iter().enumerate() {
            assert!(gate.is_open(), "gate {i}");
            assert_eq!(c.window(), u64::MAX / 2, "controller {i}");
            assert_eq!(
                c.clone_box().window(),
                u64::MAX / 2,
                "a copy of controller {i}"
            );
        }
    }
}
