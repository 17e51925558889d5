//! The pressure monitor: sets and clears the XDP program's per-queue pressure flags (map
//! `pressure`), under which the shield admits Initials without a token per source prefix
//! only (see [`super::shield`]).
//!
//! A queue is under pressure while the worker that drains it has at least as many pending
//! handshakes as its Retry threshold (every new client is then answered with a Retry, and each
//! of their Initials has cost a decryption already), or when the kernel dropped packets at
//! the queue's socket since the last look, finding its fill ring empty or its RX ring full
//! (the worker does not keep up, and those drops take legitimate packets as much as the
//! flood's). It stays so for [`PressurePolicy::hold`] after the last of these,
//! and until the pending handshakes are below 3/4 of the threshold: hysteresis, so that the
//! flag does not flap with each packet of a flood.
//!
//! [`PressureMonitor`] runs this on a thread every [`PressurePolicy::every`]; `serve` starts
//! one with the shield; a library user starts one with [`PressureMonitor::for_engine`] (or
//! [`PressureMonitor::start`] with a source of its own), and [`QueuePressure`] is the logic
//! alone.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use super::ShieldMaps;

/// When a queue is under pressure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PressurePolicy {
    /// Pending handshakes on the queue's worker at or above which it is under pressure: the
    /// engine's Retry threshold (`RetryPolicy::AbovePendingHandshakes`). `None`: not a cause.
    pub pending_handshakes: Option<u64>,
    /// Whether the kernel dropping packets at the queue's socket (fill ring empty, RX ring
    /// full) is a cause.
    pub socket_drops: bool,
    /// How often the monitor looks (default 50 ms).
    pub every: Duration,
    /// How long a queue stays under pressure after its last cause (default 2 s).
    pub hold: Duration,
}

impl Default for PressurePolicy {
    fn default() -> Self {
        Self {
            pending_handshakes: Some(xdp_quic::RetryPolicy::DEFAULT_PENDING_HANDSHAKES as u64),
            socket_drops: true,
            every: Duration::from_millis(50),
            hold: Duration::from_secs(2),
        }
    }
}

impl PressurePolicy {
    /// The default policy for an engine whose Retry threshold is `retry` (`None`: the engine
    /// never or always asks for a Retry: only the fill ring is a cause).
    pub fn for_retry_threshold(retry: Option<usize>) -> Self {
        Self {
            pending_handshakes: retry.map(|n| n as u64),
            ..Self::default()
        }
    }
}

/// What one queue looks like at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct QueueLoad {
    /// The rx queue.
    pub queue: u32,
    /// Handshakes pending on its worker (`conns_handshaking`), with the attempts awaiting a
    /// deferred decision (`attempts_deferred`), as its Retry threshold counts them.
    pub pending_handshakes: u64,
    /// The kernel's count of times it found the queue's fill ring empty
    /// (`XDP_STATISTICS.rx_fill_ring_empty_descs`), cumulative.
    pub fill_ring_empty: u64,
    /// The kernel's count of packets it dropped for a full RX ring
    /// (`XDP_STATISTICS.rx_ring_full`), cumulative.
    pub rx_ring_full: u64,
}

/// Why a queue came under pressure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// This many handshakes were pending on its worker.
    PendingHandshakes(u64),
    /// The kernel found its fill ring empty this many times since the last look.
    FillRingEmpty(u64),
    /// The kernel dropped this many packets for a full RX ring since the last look.
    RxRingFull(u64),
}

/// A queue's pressure flag changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PressureChange {
    /// The rx queue.
    pub queue: u32,
    /// Under pressure now (`Some`: why) or not any more (`None`).
    pub cause: Option<Cause>,
}

/// The pressure logic of one queue (no I/O).
#[derive(Debug, Clone, Default)]
pub struct QueuePressure {
    on: bool,
    last_cause: Option<Instant>,
    /// The kernel's counters at the last look (fill ring empty, RX ring full).
    drops: Option<(u64, u64)>,
}

impl QueuePressure {
    /// Whether the queue is under pressure.
    pub fn is_on(&self) -> bool {
        self.on
    }

    /// Takes a look at `load` at `now`; returns the change of the flag, if any.
    pub fn observe(
        &mut self,
        policy: &PressurePolicy,
        now: Instant,
        load: &QueueLoad,
    ) -> Option<Option<Cause>> {
        let (empty, full) = self.drops.map_or((0, 0), |(e, f)| {
            (
                load.fill_ring_empty.saturating_sub(e),
                load.rx_ring_full.saturating_sub(f),
            )
        });
        self.drops = Some((load.fill_ring_empty, load.rx_ring_full));
        let cause = match policy.pending_handshakes {
            Some(n) if load.pending_handshakes >= n => {
                Some(Cause::PendingHandshakes(load.pending_handshakes))
            }
            _ if policy.socket_drops && empty > 0 => Some(Cause::FillRingEmpty(empty)),
            _ if policy.socket_drops && full > 0 => Some(Cause::RxRingFull(full)),
            _ => None,
        };
        if cause.is_some() {
            self.last_cause = Some(now);
            if !self.on {
                self.on = true;
                return Some(cause);
            }
            return None;
        }
        if !self.on {
            return None;
        }
        let held = self
            .last_cause
            .is_some_and(|t| now.saturating_duration_since(t) < policy.hold);
        let calm = policy
            .pending_handshakes
            .is_none_or(|n| load.pending_handshakes * 4 < n * 3);
        if held || !calm {
            return None;
        }
        self.on = false;
        Some(None)
    }
}

/// What a [`PressureMonitor`] publishes to other threads (a metrics exporter).
#[derive(Debug)]
pub struct PressureView {
    queues: Vec<u32>,
    on: Vec<AtomicBool>,
    changes: Vec<AtomicU64>,
}

impl PressureView {
    fn new(queues: Vec<u32>) -> Self {
        Self {
            on: queues.iter().map(|_| AtomicBool::new(false)).collect(),
            changes: queues.iter().map(|_| AtomicU64::new(0)).collect(),
            queues,
        }
    }

    /// `(queue, under pressure now, times it came under pressure)` per watched queue.
    pub fn queues(&self) -> Vec<(u32, bool, u64)> {
        self.queues
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                (
                    q,
                    self.on[i].load(Ordering::Relaxed),
                    self.changes[i].load(Ordering::Relaxed),
                )
            })
            .collect()
    }
}

type Source = Box<dyn FnMut() -> Vec<QueueLoad> + Send>;
type Report = Box<dyn FnMut(PressureChange) + Send>;

struct Shared {
    stop: Mutex<bool>,
    wake: Condvar,
    view: Arc<PressureView>,
}

/// A thread that keeps the pressure flags of some queues up to date. Dropping it stops the
/// thread and clears their flags.
pub struct PressureMonitor {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for PressureMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PressureMonitor")
            .field("queues", &self.shared.view.queues)
            .finish_non_exhaustive()
    }
}

impl PressureMonitor {
    /// Watches the queues `source` describes (the same queues, in the same order, each
    /// time) every `policy.every`, writing their flags into `maps`, and calls `report` on
    /// each change. The queues' flags are cleared first.
    pub fn start(
        mut maps: ShieldMaps,
        queues: Vec<u32>,
        policy: PressurePolicy,
        mut source: impl FnMut() -> Vec<QueueLoad> + Send + 'static,
        report: Option<Report>,
    ) -> anyhow::Result<Self> {
        for &q in &queues {
            maps.set_pressure(q, false)?;
        }
        let shared = Arc::new(Shared {
            stop: Mutex::new(false),
            wake: Condvar::new(),
            view: Arc::new(PressureView::new(queues.clone())),
        });
        let inner = shared.clone();
        let first = source();
        let source: Source = Box::new(source);
        let thread = std::thread::Builder::new()
            .name("xdp-quic-pressure".into())
            .spawn(move || run(maps, queues, policy, source, first, report, &inner))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Watches every AF_XDP queue of `engine`: worker i's pending handshakes and the kernel's
    /// drops at its queue's socket.
    pub fn for_engine<H: xdp_quic::Handler>(
        maps: ShieldMaps,
        engine: &xdp_quic::Engine<H>,
        policy: PressurePolicy,
        report: Option<Report>,
    ) -> anyhow::Result<Self> {
        let workers = engine.handle().metrics();
        let queues = engine.xsk_queues().to_vec();
        anyhow::ensure!(
            !queues.is_empty() && queues.len() == workers.len(),
            "the pressure monitor needs an engine over AF_XDP (one queue per worker)"
        );
        let ids = queues.iter().map(|q| q.queue).collect();
        let source = move || {
            workers
                .iter()
                .zip(&queues)
                .map(|(w, q)| {
                    let kernel = q.snapshot().kernel;
                    QueueLoad {
                        queue: q.queue,
                        pending_handshakes: {
                            let s = w.snapshot();
                            s.conns_handshaking + s.attempts_deferred
                        },
                        fill_ring_empty: kernel.rx_fill_ring_empty,
                        rx_ring_full: kernel.rx_ring_full,
                    }
                })
                .collect()
        };
        Self::start(maps, ids, policy, source, report)
    }

    /// What the monitor publishes (for a metrics exporter).
    pub fn view(&self) -> Arc<PressureView> {
        self.shared.view.clone()
    }
}

impl Drop for PressureMonitor {
    fn drop(&mut self) {
        *self.shared.stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn run(
    mut maps: ShieldMaps,
    queues: Vec<u32>,
    policy: PressurePolicy,
    mut source: Source,
    first: Vec<QueueLoad>,
    mut report: Option<Report>,
    shared: &Shared,
) {
    let mut state = vec![QueuePressure::default(); queues.len()];
    let view = &shared.view;
    let mut loads = first;
    loop {
        let now = Instant::now();
        for (i, load) in loads.iter().enumerate().take(state.len()) {
            let before = state[i].clone();
            let Some(change) = state[i].observe(&policy, now, load) else {
                continue;
            };
            if let Err(e) = maps.set_pressure(load.queue, change.is_some()) {
                tracing::warn!(queue = load.queue, "cannot set the pressure flag: {e:#}");
                // As if not looked at: the next look makes the same change and writes it
                // again (a flag left on by a failed write to turn it off is retried too).
                state[i] = before;
                continue;
            }
            view.on[i].store(change.is_some(), Ordering::Relaxed);
            if change.is_some() {
                view.changes[i].fetch_add(1, Ordering::Relaxed);
            }
            if let Some(r) = report.as_mut() {
                r(PressureChange {
                    queue: load.queue,
                    cause: change,
                });
            }
        }
        let stop = shared.stop.lock().unwrap_or_else(|p| p.into_inner());
        let (stop, _) = shared
            .wake
            .wait_timeout_while(stop, policy.every, |s| !*s)
            .unwrap_or_else(|p| p.into_inner());
        if *stop {
            break;
        }
        drop(stop);
        loads = source();
    }
    for &q in &queues {
        let _ = maps.set_pressure(q, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(pending: u64, empty: u64) -> QueueLoad {
        QueueLoad {
            queue: 0,
            pending_handshakes: pending,
            fill_ring_empty: empty,
            rx_ring_full: 0,
        }
    }

    #[test]
    fn pending_handshakes_set_and_hysteresis_clears() {
        let p = PressurePolicy {
            pending_handshakes: Some(100),
            hold: Duration::from_secs(1),
            ..PressurePolicy::default()
        };
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut q = QueuePressure::default();
        assert_eq!(q.observe(&p, at(0), &load(99, 0)), None);
        assert_eq!(
            q.observe(&p, at(50), &load(100, 0)),
            Some(Some(Cause::PendingHandshakes(100)))
        );
        assert!(q.is_on());
        // Below the threshold but within the hold: stays.
        assert_eq!(q.observe(&p, at(500), &load(10, 0)), None);
        // Past the hold, but not below 3/4 of the threshold: stays.
        assert_eq!(q.observe(&p, at(1100), &load(80, 0)), None);
        assert_eq!(q.observe(&p, at(1200), &load(74, 0)), Some(None));
        assert!(!q.is_on());
        assert_eq!(q.observe(&p, at(1300), &load(74, 0)), None);
    }

    #[test]
    fn socket_drops_set_and_the_hold_keeps_it() {
        let p = PressurePolicy {
            pending_handshakes: None,
            hold: Duration::from_secs(1),
            ..PressurePolicy::default()
        };
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut q = QueuePressure::default();
        // The first look only learns the counter.
        assert_eq!(q.observe(&p, at(0), &load(1000, 500)), None);
        assert_eq!(q.observe(&p, at(50), &load(1000, 500)), None);
        assert_eq!(
            q.observe(&p, at(100), &load(0, 530)),
            Some(Some(Cause::FillRingEmpty(30)))
        );
        assert_eq!(q.observe(&p, at(900), &load(0, 531)), None);
        assert_eq!(q.observe(&p, at(1800), &load(0, 531)), None);
        assert_eq!(q.observe(&p, at(1901), &load(0, 531)), Some(None));
        // A full RX ring too.
        let full = QueueLoad {
            rx_ring_full: 7,
            ..load(0, 531)
        };
        assert_eq!(
            q.observe(&p, at(2000), &full),
            Some(Some(Cause::RxRingFull(7)))
        );
        assert_eq!(q.observe(&p, at(3001), &full), Some(None));
        // Off as a cause: drops do nothing.
        let off = PressurePolicy {
            socket_drops: false,
            ..p
        };
        assert_eq!(q.observe(&off, at(3100), &load(0, 900)), None);
    }
}
