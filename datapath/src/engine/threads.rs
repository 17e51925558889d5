//! Running the workers: one thread per worker, pinned where asked, each turning its worker
//! over its own backend until it stops, and containing what would end it silently.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Engine, EngineBuilder, EngineError};
use crate::backend::udp;
use crate::backend::Backend;
use crate::handler::Handler;
use crate::waker::Waker;
use crate::worker::{TurnOutcome, Worker};
use quinn_proto::VarInt;

/// How a worker's thread runs it: [`Blocking`] (turn, then sleep in [`Backend::wait`]), or
/// an async runtime on the thread (the thread-per-core mode of [`crate::tokio`]).
pub(crate) trait Runner<H: Handler>: Clone + Send + 'static {
    /// The thread body: turns `worker` over `io` until it stops (pinned already).
    fn run<B: Backend>(self, worker: Worker<H>, io: B, waker: &Waker) -> io::Result<H>;
}

/// The plain worker thread.
#[derive(Clone, Copy)]
pub(crate) struct Blocking;

impl<H: Handler> Runner<H> for Blocking {
    fn run<B: Backend>(self, worker: Worker<H>, io: B, waker: &Waker) -> io::Result<H> {
        run(worker, io, waker)
    }
}

impl EngineBuilder {
    /// Builds the workers and runs each on its own thread over `backends[i]`.
    pub fn start<H, B, F>(self, backends: Vec<B>, factory: F) -> Result<Engine<H>, EngineError>
    where
        H: Handler,
        B: Backend + Send + 'static,
        F: FnMut(usize) -> H,
    {
        self.start_run(backends, factory, Blocking)
    }

    /// [`EngineBuilder::start`] with the threads run by `runner`.
    pub(crate) fn start_run<H, B, F, R>(
        self,
        backends: Vec<B>,
        factory: F,
        runner: R,
    ) -> Result<Engine<H>, EngineError>
    where
        H: Handler,
        B: Backend + Send + 'static,
        F: FnMut(usize) -> H,
        R: Runner<H>,
    {
        if backends.len() != self.workers {
            return Err(EngineError::Config(format!(
                "{} backends for {} workers",
                backends.len(),
                self.workers
            )));
        }
        let local_addr = backends
            .first()
            .map(|b| b.local_addr())
            .transpose()?
            .ok_or_else(|| EngineError::Config("at least one worker is needed".into()))?;
        let cpus = self.cpus.clone();
        let (workers, handle) = self.build(factory)?;
        let mut threads = Vec::with_capacity(workers.len());
        for (worker, backend) in workers.into_iter().zip(backends) {
            let i = worker.index();
            let waker = handle.mesh.wakers[i].clone();
            let cpu = cpus
                .as_ref()
                .filter(|c| !c.is_empty())
                .map(|c| c[i % c.len()]);
            let runner = runner.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("xdp-quic-w{i}"))
                .spawn(move || {
                    if let Some(cpu) = cpu {
                        if let Err(e) = crate::cpu::pin_to_cpu(cpu) {
                            tracing::warn!(worker = i, cpu, "cannot pin worker: {e}");
                        }
                    }
                    let mut worker = worker;
                    worker.set_maps_ipv4(backend.maps_ipv4());
                    runner.run(worker, backend, &waker)
                });
            match spawned {
                Ok(t) => threads.push(super::WorkerThread::Running(t)),
                Err(e) => {
                    // The workers started already (no connection yet) stop and are joined,
                    // so that none keeps its socket, or its share of the port, after the
                    // error.
                    handle.shutdown(VarInt::from_u32(0), b"");
                    for t in threads {
                        if let super::WorkerThread::Running(t) = t {
                            let _ = t.join();
                        }
                    }
                    return Err(e.into());
                }
            }
        }
        Ok(Engine {
            handle,
            threads,
            local_addr,
            steering: None,
            xsk: Vec::new(),
            on_join: None,
        })
    }

    /// Binds one SO_REUSEPORT UDP socket per worker to `addr` and starts the engine on them.
    pub fn start_udp<H, F>(self, addr: SocketAddr, factory: F) -> Result<Engine<H>, EngineError>
    where
        H: Handler,
        F: FnMut(usize) -> H,
    {
        self.start_udp_run(addr, factory, Blocking)
    }

    /// [`EngineBuilder::start_udp`] with the threads run by `runner`.
    pub(crate) fn start_udp_run<H, F, R>(
        self,
        addr: SocketAddr,
        factory: F,
        runner: R,
    ) -> Result<Engine<H>, EngineError>
    where
        H: Handler,
        F: FnMut(usize) -> H,
        R: Runner<H>,
    {
        // Nothing is bound for settings the build would refuse.
        let layout = self.check(self.workers)?;
        let (backends, steering) = udp::bind_group(addr, self.workers, &layout)?;
        tracing::info!(
            workers = self.workers,
            local = %backends[0].local_addr()?,
            ?steering,
            "UDP backend bound"
        );
        let mut engine = self.start_run(backends, factory, runner)?;
        engine.steering = Some(steering);
        Ok(engine)
    }
}

impl EngineBuilder {
    /// Binds one UDP socket per worker to `addr` (port 0: a distinct ephemeral port each) and
    /// starts the engine on them: the set-up for client engines, whose connections then
    /// leave from as many 4-tuples as there are workers.
    pub fn start_udp_client<H, F>(
        self,
        addr: SocketAddr,
        factory: F,
    ) -> Result<Engine<H>, EngineError>
    where
        H: Handler,
        F: FnMut(usize) -> H,
    {
        self.start_udp_client_run(addr, factory, Blocking)
    }

    /// [`EngineBuilder::start_udp_client`] with the threads run by `runner`.
    pub(crate) fn start_udp_client_run<H, F, R>(
        self,
        addr: SocketAddr,
        factory: F,
        runner: R,
    ) -> Result<Engine<H>, EngineError>
    where
        H: Handler,
        F: FnMut(usize) -> H,
        R: Runner<H>,
    {
        let backends = udp::bind_each(addr, self.workers)?;
        self.start_run(backends, factory, runner)
    }
}

/// The thread body of a worker.
///
/// A panic outside the application's callbacks (quinn-proto, the backend) or an I/O error
/// from the backend ends the worker: [`Worker::fail`] closes its connections as far as the
/// backend still sends and records why, and the thread returns the error. The worker is
/// then marked ended: what was queued for it is dropped, the other workers stop routing to
/// it (what they would have handed over counts as `handover_dropped`), and work posted to
/// it is refused.
fn run<H: Handler, B: Backend>(mut worker: Worker<H>, mut io: B, waker: &Waker) -> io::Result<H> {
    let mut last = Instant::now();
    loop {
        let poll = match accounted_turn(&mut worker, &mut io, &mut last) {
            Ok(poll) => poll,
            Err(why) => return Err(failed(worker, &mut io, why)),
        };
        match poll {
            TurnOutcome::Done => return Ok(worker.into_handler()),
            TurnOutcome::Continue(deadline) => {
                if deadline.is_some_and(|d| d <= last) || io.busy_polls() {
                    continue;
                }
                waker.park();
                let waited = if worker.has_inbox() {
                    Ok(())
                } else {
                    let want_write = worker.wants_write();
                    contain(|| io.wait(deadline, want_write, waker))
                };
                waker.unpark();
                if let Err(why) = waited {
                    return Err(failed(worker, &mut io, why));
                }
                let woke = Instant::now();
                worker.account_time(Duration::ZERO, woke - last);
                last = woke;
            }
        }
    }
}

/// One turn of `worker` at `last`, its time accounted as work or spin (a turn that moved
/// nothing is spin: busy polling reports its real load); `last` moves to now. Errs with why
/// the turn failed (hand it to [`failed`]).
pub(crate) fn accounted_turn<H: Handler, B: Backend>(
    worker: &mut Worker<H>,
    io: &mut B,
    last: &mut Instant,
) -> Result<TurnOutcome, String> {
    let done_before = worker.work_done();
    let at = *last;
    let outcome = contain(|| worker.turn(io, at))?;
    let now = Instant::now();
    if worker.work_done() != done_before {
        worker.account_time(now - at, Duration::ZERO);
    } else {
        worker.account_time(Duration::ZERO, now - at);
    }
    *last = now;
    Ok(outcome)
}

/// Runs `f`, turning a panic or an I/O error into the reason a worker fails.
pub(crate) fn contain<T>(f: impl FnOnce() -> io::Result<T>) -> Result<T, String> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("I/O error: {e}")),
        Err(panic) => Err(format!(
            "panicked: {}",
            crate::guard::panic_message(&*panic)
        )),
    }
}

/// Fails `worker` for `why` and makes the thread's error.
pub(crate) fn failed<H: Handler, B: Backend>(
    mut worker: Worker<H>,
    io: &mut B,
    why: String,
) -> io::Error {
    worker.fail(io, Instant::now(), &why);
    io::Error::other(why)
}
