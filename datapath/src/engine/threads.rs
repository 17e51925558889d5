//! Running the workers: one thread per worker, pinned where asked, each turning its worker
//! over its own backend until it stops, and containing what would end it silently.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{Engine, EngineBuilder, EngineError};
use crate::backend::udp;
use crate::backend::Backend;
use crate::cid::CidLayout;
use crate::handler::Handler;
use crate::waker::Waker;
use crate::worker::{TurnOutcome, Worker};

impl EngineBuilder {
    /// Builds the workers and runs each on its own thread over `backends[i]`.
    pub fn start<H, B, F>(self, backends: Vec<B>, factory: F) -> Result<Engine<H>, EngineError>
    where
        H: Handler,
        B: Backend + Send + 'static,
        F: FnMut(usize) -> H,
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
            let t = std::thread::Builder::new()
                .name(format!("xdp-quic-w{i}"))
                .spawn(move || run(worker, backend, &waker, cpu))?;
            threads.push(super::WorkerThread::Running(t));
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
        let layout = CidLayout::new(
            self.cid_len,
            self.config_rotation,
            &self.server_id,
            self.workers,
        )?;
        let (backends, steering) = udp::bind_group(addr, self.workers, &layout)?;
        tracing::info!(
            workers = self.workers,
            local = %backends[0].local_addr()?,
            ?steering,
            "UDP backend bound"
        );
        let mut engine = self.start(backends, factory)?;
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
        let backends = udp::bind_each(addr, self.workers)?;
        self.start(backends, factory)
    }
}

/// The thread body of a worker.
///
/// A panic outside the application's callbacks (quinn-proto, the backend) or an I/O error
/// from the backend ends the worker: [`Worker::fail`] closes its connections as far as the
/// backend still sends and records why, and the thread returns the error. Its hand-over
/// queue and command queue then disconnect, so the other workers stop routing to it (what
/// they would have handed over counts as `handover_dropped`).
fn run<H: Handler, B: Backend>(
    mut worker: Worker<H>,
    mut io: B,
    waker: &Waker,
    cpu: Option<usize>,
) -> io::Result<H> {
    if let Some(cpu) = cpu {
        if let Err(e) = crate::cpu::pin_to_cpu(cpu) {
            tracing::warn!(worker = worker.index(), cpu, "cannot pin worker: {e}");
        }
    }
    let mut last = Instant::now();
    loop {
        let done_before = worker.work_done();
        let poll = match contain(|| worker.turn(&mut io, last)) {
            Ok(poll) => poll,
            Err(why) => return Err(failed(worker, &mut io, why)),
        };
        let now = Instant::now();
        // A turn that moved nothing is spin, not work (busy polling reports its real load).
        if worker.work_done() != done_before {
            worker.account_time(now - last, Duration::ZERO);
        } else {
            worker.account_time(Duration::ZERO, now - last);
        }
        last = now;
        match poll {
            TurnOutcome::Done => return Ok(worker.into_handler()),
            TurnOutcome::Continue(deadline) => {
                if deadline.is_some_and(|d| d <= now) {
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

/// Runs `f`, turning a panic or an I/O error into the reason a worker fails.
fn contain<T>(f: impl FnOnce() -> io::Result<T>) -> Result<T, String> {
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
fn failed<H: Handler, B: Backend>(mut worker: Worker<H>, io: &mut B, why: String) -> io::Error {
    worker.fail(io, Instant::now(), &why);
    io::Error::other(why)
}
