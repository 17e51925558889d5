//! Building the workers, running them on threads, and talking to them from other threads.
//!
//! ```text
//! EngineBuilder ──build()──▶ Vec<Worker> + EngineHandle     (sans-IO: drive them yourself)
//!               ──start(backends)/start_udp(addr)──▶ Engine  (one pinned thread per worker)
//!               ──start_xdp(setup, map)──▶ Engine            (one worker per AF_XDP queue)
//! ```
//!
//! | module | what |
//! |---|---|
//! | `builder` | [`EngineBuilder`], its defaults, `build` (workers and the mesh between them) |
//! | `threads` | `start*`: a pinned thread per worker, the thread body, failure containment |
//! | `xdp` | `start_xdp`: one AF_XDP socket per queue, the XSKMAP, the canary socket |
//! | this one | [`Engine`] (running threads) and [`EngineHandle`] (work posted from any thread) |

mod builder;
mod threads;
mod xdp;

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use crossbeam_channel::Sender;
use quinn_proto::VarInt;

pub use builder::{
    default_transport, EngineBuilder, RetryPolicy, DEFAULT_MAX_CONNECTIONS, DEFAULT_RECEIVE_WINDOW,
};
pub use xdp::{ifindex, SocketMap, XdpSetup};

use crate::backend::udp::Steering;
use crate::backend::Datagram;
use crate::cid::{CidLayout, CidLayoutError};
use crate::conn::{Conn, ConnId, Ctx};
use crate::handler::Handler;
use crate::metrics::{Counters, WorkerMetrics};
use crate::waker::Waker;

/// Work for a worker, run between two turns.
pub(crate) type WorkerTask<H> = Box<dyn FnOnce(&mut H, &mut Ctx<'_>) + Send>;
/// Work for one connection, run on its worker.
pub(crate) type ConnTask<H> = Box<dyn FnOnce(&mut H, &mut Conn<'_>) + Send>;

/// Work posted to a worker from another thread.
pub(crate) enum Command<H> {
    Run(WorkerTask<H>),
    RunOnConn(ConnId, ConnTask<H>),
    Shutdown { code: VarInt, reason: Bytes },
}

/// What the workers of one engine share: read-only after start.
pub(crate) struct Mesh<H> {
    pub layout: Arc<CidLayout>,
    /// The engine accepts connections (routing of Initial packets depends on it).
    pub serves: bool,
    pub handovers: Vec<Sender<Datagram>>,
    pub commands: Vec<Sender<Command<H>>>,
    pub wakers: Vec<Arc<Waker>>,
    pub metrics: Vec<Arc<WorkerMetrics>>,
    /// Why each worker failed, once it has ([`crate::Worker::fail`]).
    pub failures: Vec<std::sync::OnceLock<String>>,
}

/// Errors of building or starting an engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("connection ID layout: {0}")]
    Cid(#[from] CidLayoutError),
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("worker {worker} failed: {error}")]
    Worker { worker: usize, error: io::Error },
    #[error("worker {0} panicked")]
    Panicked(usize),
}

/// Posts work to the workers of an engine from any thread. Cheap to clone.
pub struct EngineHandle<H> {
    pub(crate) mesh: Arc<Mesh<H>>,
}

impl<H> Clone for EngineHandle<H> {
    fn clone(&self) -> Self {
        Self {
            mesh: self.mesh.clone(),
        }
    }
}

impl<H: Handler> EngineHandle<H> {
    /// Number of workers.
    pub fn workers(&self) -> usize {
        self.mesh.commands.len()
    }

    /// Runs `f` on worker `worker`'s thread, between two turns. Returns false if that worker
    /// has ended (or does not exist).
    pub fn post(
        &self,
        worker: usize,
        f: impl FnOnce(&mut H, &mut Ctx<'_>) + Send + 'static,
    ) -> bool {
        self.send(worker, Command::Run(Box::new(f)))
    }

    /// Runs `f` on connection `id` on its worker's thread. `f` is dropped without running if
    /// the connection is gone by then. Returns false if the worker has ended.
    pub fn post_to_conn(
        &self,
        id: ConnId,
        f: impl FnOnce(&mut H, &mut Conn<'_>) + Send + 'static,
    ) -> bool {
        self.send(id.worker(), Command::RunOnConn(id, Box::new(f)))
    }

    /// Asks every worker to close its connections with `code` and `reason` and stop.
    pub fn shutdown(&self, code: VarInt, reason: &[u8]) {
        for w in 0..self.workers() {
            self.send(
                w,
                Command::Shutdown {
                    code,
                    reason: Bytes::copy_from_slice(reason),
                },
            );
        }
    }

    /// The counters of every worker, as last published.
    pub fn counters(&self) -> Vec<Counters> {
        self.mesh.metrics.iter().map(|m| m.snapshot()).collect()
    }

    /// Every worker's published metrics (counters and histograms), for exporters.
    pub fn metrics(&self) -> Vec<Arc<WorkerMetrics>> {
        self.mesh.metrics.clone()
    }

    /// The workers that failed and why ([`crate::Worker::fail`]): a panic outside the application's
    /// callbacks or a fatal I/O error. Such a worker closed its connections as far as it
    /// could and stopped; the others go on. A server should treat it as fatal (restart).
    pub fn failed_workers(&self) -> Vec<(usize, String)> {
        self.mesh
            .failures
            .iter()
            .enumerate()
            .filter_map(|(i, f)| f.get().map(|why| (i, why.clone())))
            .collect()
    }

    /// The sum of every worker's counters.
    pub fn total(&self) -> Counters {
        let mut t = Counters::default();
        for c in self.counters() {
            t += c;
        }
        t
    }

    fn send(&self, worker: usize, cmd: Command<H>) -> bool {
        let Some(tx) = self.mesh.commands.get(worker) else {
            return false;
        };
        let ok = tx.send(cmd).is_ok();
        self.mesh.wakers[worker].wake();
        ok
    }
}

/// Running workers, one thread each.
pub struct Engine<H> {
    pub(super) handle: EngineHandle<H>,
    pub(super) threads: Vec<JoinHandle<io::Result<H>>>,
    pub(super) local_addr: SocketAddr,
    pub(super) steering: Option<Steering>,
    pub(super) xsk: Vec<Arc<crate::backend::xsk::XskQueueInfo>>,
    pub(super) on_join: Option<Box<dyn FnOnce() + Send>>,
}

impl<H: Handler> Engine<H> {
    /// A handle to post work from other threads.
    pub fn handle(&self) -> EngineHandle<H> {
        self.handle.clone()
    }

    /// The address the workers receive on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// How the kernel spreads packets over the UDP workers (None for other backends).
    pub fn steering(&self) -> Option<Steering> {
        self.steering
    }

    /// The AF_XDP queues of the workers (empty for other backends): counters and the
    /// kernel's socket statistics.
    pub fn xsk_queues(&self) -> &[Arc<crate::backend::xsk::XskQueueInfo>] {
        &self.xsk
    }

    /// Closes every connection with `code`, waits for them to drain (bounded by the drain
    /// timeout), joins the threads and returns the handlers.
    pub fn shutdown(self, code: VarInt, reason: &[u8]) -> Result<Vec<H>, EngineError> {
        self.handle.shutdown(code, reason);
        self.join()
    }

    /// Waits until every worker has stopped by itself ([`Ctx::stop_worker`]) or by
    /// [`EngineHandle::shutdown`], and returns the handlers.
    pub fn join(mut self) -> Result<Vec<H>, EngineError> {
        let mut out = Vec::with_capacity(self.threads.len());
        let mut first_error = None;
        for (worker, t) in std::mem::take(&mut self.threads).into_iter().enumerate() {
            match t.join() {
                Ok(Ok(h)) => out.push(h),
                Ok(Err(error)) => {
                    first_error.get_or_insert(EngineError::Worker { worker, error });
                }
                Err(_) => {
                    first_error.get_or_insert(EngineError::Panicked(worker));
                }
            }
        }
        if let Some(f) = self.on_join.take() {
            f();
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(out),
        }
    }
}
