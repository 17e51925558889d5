//! Deterministic simulation: engines over the in-memory network, driven by a virtual clock.
//!
//! ```text
//! let net = MemNetwork::new(Duration::from_millis(5));
//! let mut server = Node::new(builder, &net, addr, MemSteering::Hash, |_| MyHandler)?;
//! let mut client = Node::new(client_builder, &net, client_addr, MemSteering::Hash, |_| ..)?;
//! while !done(&server, &client) {
//!     step(&net, &mut [&mut server, &mut client])?;
//! }
//! ```
//!
//! Each [`step`] turns every worker of every node once at the current virtual time, then, if
//! nothing is due now, moves the clock to the next timer or delivery.
//!
//! Runs replay. Every [`MemNetwork`] has a seed (`XDPQUIC_SEED` from the environment: a
//! number, or `random` to explore; else a fixed default, so every test run is the same), and [`Node::new`] seeds each engine from it and the node's address
//! ([`EngineBuilder::seed`]): CIDs, reset keys and quinn-proto's own random choices are the
//! same on every run with that seed, and so, on the virtual clock, is everything else, as
//! long as the handshakes have fixed sizes (use `tls::Identity::self_signed_ed25519`: ECDSA
//! signatures vary in length) and the test draws its own randomness from
//! [`MemNetwork::seed`]. A test that panics prints `simulation seed N: replay this run with
//! XDPQUIC_SEED=N`.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::backend::mem::{MemBackend, MemNetwork, MemSteering};
use crate::engine::{EngineBuilder, EngineError, EngineHandle};
use crate::handler::Handler;
use crate::metrics::Counters;
use crate::worker::{TurnOutcome, Worker};

/// Something the simulation turns: a [`Node`].
pub trait Drive {
    /// Turns every worker once at `now`; returns the earliest deadline any worker reported.
    fn turn(&mut self, now: Instant) -> io::Result<Option<Instant>>;

    /// Whether every worker has stopped.
    fn is_done(&self) -> bool;
}

/// The network's virtual clock as wall-clock time, for what quinn-proto dates by
/// `SystemTime` (its Retry and NEW_TOKEN tokens): a fixed epoch plus the virtual time since
/// the node was made, so that tokens expire by virtual time and a run replays however slow
/// the machine. (A server configuration given later, `set_server_config`, keeps its own.)
struct VirtualWallClock {
    net: MemNetwork,
    start: Instant,
}

impl quinn_proto::TimeSource for VirtualWallClock {
    fn now(&self) -> std::time::SystemTime {
        std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000) + (self.net.now() - self.start)
    }
}

/// An engine whose workers run over the in-memory network.
pub struct Node<H: Handler> {
    pub workers: Vec<Worker<H>>,
    pub io: Vec<MemBackend>,
    pub handle: EngineHandle<H>,
    done: Vec<bool>,
}

impl<H: Handler> Node<H> {
    /// Builds the workers of `builder` and binds them to `addr` on `net`.
    pub fn new<F: FnMut(usize) -> H>(
        builder: EngineBuilder,
        net: &MemNetwork,
        addr: SocketAddr,
        steering: MemSteering,
        factory: F,
    ) -> Result<Self, EngineError> {
        let mut builder = builder;
        if let Some(server) = builder.server.as_mut() {
            server.time_source(std::sync::Arc::new(VirtualWallClock {
                net: net.clone(),
                start: net.now(),
            }));
        }
        let (workers, handle) = builder.seed(net.seed_for(addr)).build(factory)?;
        let io = net.bind(addr, workers.len(), steering)?;
        let done = vec![false; workers.len()];
        Ok(Self {
            workers,
            io,
            handle,
            done,
        })
    }

    /// Worker `i`'s handler.
    pub fn handler(&self, i: usize) -> &H {
        self.workers[i].handler()
    }

    /// The sum of every worker's counters.
    pub fn total(&self) -> Counters {
        let mut t = Counters::default();
        for w in &self.workers {
            t += w.counters();
        }
        t
    }

    /// Connections alive over all workers.
    pub fn connections(&self) -> usize {
        self.workers.iter().map(|w| w.connections()).sum()
    }
}

impl<H: Handler> Drive for Node<H> {
    fn turn(&mut self, now: Instant) -> io::Result<Option<Instant>> {
        let mut next: Option<Instant> = None;
        for ((w, io), done) in self
            .workers
            .iter_mut()
            .zip(&mut self.io)
            .zip(&mut self.done)
        {
            if *done {
                continue;
            }
            match w.turn(io, now)? {
                TurnOutcome::Done => *done = true,
                TurnOutcome::Continue(Some(d)) => next = Some(next.map_or(d, |n| n.min(d))),
                TurnOutcome::Continue(None) => {}
            }
            if w.has_inbox() {
                next = Some(now);
            }
        }
        Ok(next)
    }

    fn is_done(&self) -> bool {
        self.done.iter().all(|d| *d)
    }
}

/// One step of the simulation (see the module doc). Returns the virtual time afterwards.
pub fn step(net: &MemNetwork, nodes: &mut [&mut dyn Drive]) -> io::Result<Instant> {
    net.count_step();
    let now = net.now();
    let mut next: Option<Instant> = None;
    for n in nodes.iter_mut() {
        if let Some(d) = n.turn(now)? {
            next = Some(next.map_or(d, |x| x.min(d)));
        }
    }
    if let Some(d) = net.next_delivery() {
        next = Some(next.map_or(d, |x| x.min(d)));
    }
    match next {
        Some(t) if t > now => net.advance_to(t),
        Some(_) => {}
        // Nothing armed anywhere: let idle time pass so tests with a time limit end.
        None => net.advance_to(now + Duration::from_millis(100)),
    }
    Ok(net.now())
}

/// Steps until every node but the first (the server, by convention) is done.
pub fn run_clients(
    net: &MemNetwork,
    nodes: &mut [&mut dyn Drive],
    limit: Duration,
) -> io::Result<Duration> {
    run_until(net, nodes, limit, |n| n[1..].iter().all(|c| c.is_done()))
}

/// Steps until `done(nodes)` holds, or fails after `limit` of virtual time.
pub fn run_until(
    net: &MemNetwork,
    nodes: &mut [&mut dyn Drive],
    limit: Duration,
    mut done: impl FnMut(&[&mut dyn Drive]) -> bool,
) -> io::Result<Duration> {
    let start = net.now();
    while !done(nodes) {
        let now = step(net, nodes)?;
        // The step that reaches the condition may also move the clock far (to an idle
        // timeout): the condition decides first.
        if now - start > limit && !done(nodes) {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("condition not reached within {limit:?} of virtual time"),
            ));
        }
    }
    Ok(net.now() - start)
}
