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
pub(crate) mod threads;
mod xdp;

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender};
use quinn_proto::VarInt;

pub use builder::{
    default_transport, EngineBuilder, RetryPolicy, DEFAULT_MAX_CONNECTIONS, DEFAULT_RECEIVE_WINDOW,
};
pub use xdp::{bind_services, ifindex, SocketMap, XdpSetup};

use crate::reply::Reply;

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
}

/// A request to stop a worker: set once, read by the worker every turn (not queued behind
/// posted work, so a full queue never delays a shutdown).
#[derive(Default)]
pub(crate) struct StopSignal {
    requested: AtomicBool,
    code: std::sync::Mutex<Option<(VarInt, Bytes)>>,
}

impl StopSignal {
    fn request(&self, code: VarInt, reason: Bytes) {
        let mut c = self.code.lock().unwrap_or_else(|p| p.into_inner());
        c.get_or_insert((code, reason));
        // SeqCst, like the waker's `parked` flag it pairs with: a worker that parks and
        // then reads this, and a requester that sets this and then wakes, cannot both miss
        // (Release/Acquire alone would allow it).
        self.requested.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was requested and not taken yet.
    pub(crate) fn pending(&self) -> bool {
        self.requested.load(Ordering::SeqCst)
    }

    /// The close code and reason, once a stop was requested (taken: asked once).
    pub(crate) fn take(&self) -> Option<(VarInt, Bytes)> {
        if !self.requested.load(Ordering::SeqCst) {
            return None;
        }
        self.requested.store(false, Ordering::Relaxed);
        self.code.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

/// Why work could not be posted to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PostError {
    /// The worker's queue is full (it takes at most 256 items a turn): back off and post
    /// again, or use [`EngineHandle::post_wait`] from a thread that may block.
    #[error("the worker's queue is full")]
    Full,
    /// The worker has ended, or there is no such worker.
    #[error("the worker has ended")]
    Stopped,
}

/// What the workers of one engine share: read-only after start, but for the record of
/// outgoing connections (`outgoing`, written as they open and end).
pub(crate) struct Mesh<H> {
    pub layout: Arc<CidLayout>,
    /// The engine was built to accept connections (each worker's `Shard::serves` starts
    /// from it, and turns true when it is given a server configuration later).
    pub serves: bool,
    pub handovers: Vec<Sender<Datagram>>,
    pub commands: Vec<Sender<Command<H>>>,
    pub stops: Vec<StopSignal>,
    pub wakers: Vec<Arc<Waker>>,
    pub metrics: Vec<Arc<WorkerMetrics>>,
    /// The engine's transport, applied to server configurations set later too.
    pub transport: Option<Arc<quinn_proto::TransportConfig>>,
    /// Why each worker failed, once it has ([`crate::Worker::fail`]).
    pub failures: Vec<std::sync::OnceLock<String>>,
    /// The remote addresses of the connections the workers opened ([`crate::peers`]).
    pub outgoing: crate::peers::OutgoingPeers,
    /// Each worker's ends of its queues, kept here too so that what is queued for a worker
    /// that ended can be dropped by whoever finds it there ([`Mesh::drop_queued_commands`],
    /// [`Mesh::drop_queued_datagrams`]).
    pub command_rx: Vec<Receiver<Command<H>>>,
    pub handover_rx: Vec<Receiver<Datagram>>,
    /// Each worker has ended (set as its queues drop: `worker::EndMark`); its queues take
    /// nothing more. (The queues never disconnect: the receivers above live as long as this.)
    pub ended: Vec<AtomicBool>,
}

impl<H> Mesh<H> {
    /// Drops the work queued for worker `w`, which has ended: it goes unrun (the replies of
    /// calls say [`crate::Gone`]). Runs the Drop code of what the application posted: the
    /// ending worker calls it, and a poster that raced the end (for its own queue only).
    pub fn drop_queued_commands(&self, w: usize) {
        while self.command_rx[w].try_recv().is_ok() {}
    }

    /// Drops the datagrams handed over to worker `w`, which has ended (their buffers go).
    pub fn drop_queued_datagrams(&self, w: usize) {
        while self.handover_rx[w].try_recv().is_ok() {}
    }

    /// Whether worker `w` has ended (see `ended`).
    pub fn has_ended(&self, w: usize) -> bool {
        self.ended[w].load(Ordering::SeqCst)
    }
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

    /// Runs `f` on worker `worker`'s thread, between two turns. Never blocks: each worker
    /// has a bounded queue (see [`EngineBuilder::command_capacity`]).
    pub fn post(
        &self,
        worker: usize,
        f: impl FnOnce(&mut H, &mut Ctx<'_>) + Send + 'static,
    ) -> Result<(), PostError> {
        self.send(worker, Command::Run(Box::new(f)), false)
    }

    /// Like [`EngineHandle::post`], waiting while the worker's queue is full: back-pressure
    /// for a producer thread that may block (never call it on a worker).
    pub fn post_wait(
        &self,
        worker: usize,
        f: impl FnOnce(&mut H, &mut Ctx<'_>) + Send + 'static,
    ) -> Result<(), PostError> {
        self.send(worker, Command::Run(Box::new(f)), true)
    }

    /// Runs `f` on connection `id` on its worker's thread. `f` is dropped without running if
    /// the connection is gone by then (the handler heard its `closed`). Never blocks.
    pub fn post_to_conn(
        &self,
        id: ConnId,
        f: impl FnOnce(&mut H, &mut Conn<'_>) + Send + 'static,
    ) -> Result<(), PostError> {
        self.send(id.worker(), Command::RunOnConn(id, Box::new(f)), false)
    }

    /// Like [`EngineHandle::post_to_conn`], waiting while the worker's queue is full (for a
    /// producer thread that may block, e.g. one doing blocking I/O for the connection).
    pub fn post_to_conn_wait(
        &self,
        id: ConnId,
        f: impl FnOnce(&mut H, &mut Conn<'_>) + Send + 'static,
    ) -> Result<(), PostError> {
        self.send(id.worker(), Command::RunOnConn(id, Box::new(f)), true)
    }

    /// Runs `f` on worker `worker` and hands back what it returned: `.wait()` for it on a
    /// thread that may block, or `.await` it. The reply is [`crate::Gone`] if the worker
    /// ended before running `f`.
    pub fn call<T: Send + 'static>(
        &self,
        worker: usize,
        f: impl FnOnce(&mut H, &mut Ctx<'_>) -> T + Send + 'static,
    ) -> Result<Reply<T>, PostError> {
        let (filler, reply) = crate::reply::channel();
        self.post(worker, move |h, ctx| filler.fill(f(h, ctx)))?;
        Ok(reply)
    }

    /// Runs `f` on connection `id` and hands back what it returned; the reply is
    /// [`crate::Gone`] if the connection (or its worker) ended before.
    pub fn call_conn<T: Send + 'static>(
        &self,
        id: ConnId,
        f: impl FnOnce(&mut H, &mut Conn<'_>) -> T + Send + 'static,
    ) -> Result<Reply<T>, PostError> {
        let (filler, reply) = crate::reply::channel();
        self.post_to_conn(id, move |h, conn| filler.fill(f(h, conn)))?;
        Ok(reply)
    }

    /// Replaces the server configuration of every worker (a new certificate, new ALPNs, new
    /// transport parameters): connections accepted from now on use it, also those whose
    /// attempt arrived before and waited for a deferred decision ([`crate::Decision::Defer`]);
    /// those alive keep theirs. Waits for room in the workers' queues. Every worker still
    /// running gets it, whichever ended; [`PostError::Stopped`] then says that some had
    /// ended (and accept nothing any more).
    ///
    /// Retry tokens are sealed with the configuration's token key, and
    /// `ServerConfig::with_crypto` (so `tls::server_config`) makes a new random one each
    /// time: a client retried just before the change echoes a token the new configuration
    /// cannot read, counts as unvalidated, and under a Retry policy is retried again, which
    /// RFC 9000 has it ignore (its handshake times out). Give both configurations one key
    /// (`ServerConfig::token_key`) to keep tokens valid across the change.
    ///
    /// Never call it on a worker (from a callback): like [`EngineHandle::post_wait`], it may
    /// wait for room in that worker's own queue, which only that worker empties. A callback
    /// hands it to a thread that may block (a spawned one, or the application's control
    /// thread); the tokio API's `Endpoint::set_server_config` never waits and may be called
    /// anywhere.
    pub fn set_server_config(&self, config: quinn_proto::ServerConfig) -> Result<(), PostError> {
        let config = self.server_config(config);
        let mut result = Ok(());
        for w in 0..self.workers() {
            let c = config.clone();
            if let Err(e) = self.post_wait(w, move |_, ctx| ctx.set_server_config(c)) {
                result = Err(e);
            }
        }
        result
    }

    /// `config` as the workers take it (the engine's transport settings, if the builder was
    /// given any, replace its own): for [`Ctx::set_server_config`].
    pub(crate) fn server_config(
        &self,
        mut config: quinn_proto::ServerConfig,
    ) -> Arc<quinn_proto::ServerConfig> {
        if let Some(t) = &self.mesh.transport {
            config.transport_config(t.clone());
        }
        Arc::new(config)
    }

    /// Asks every worker to close its connections with `code` and `reason` and stop.
    pub fn shutdown(&self, code: VarInt, reason: &[u8]) {
        let reason = Bytes::copy_from_slice(reason);
        for (stop, waker) in self.mesh.stops.iter().zip(&self.mesh.wakers) {
            stop.request(code, reason.clone());
            waker.wake();
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

    fn send(&self, worker: usize, cmd: Command<H>, wait: bool) -> Result<(), PostError> {
        let Some(tx) = self.mesh.commands.get(worker) else {
            return Err(PostError::Stopped);
        };
        if self.mesh.has_ended(worker) {
            return Err(PostError::Stopped);
        }
        let sent = if wait {
            tx.send(cmd).map_err(|_| PostError::Stopped)
        } else {
            tx.try_send(cmd).map_err(|e| match e {
                crossbeam_channel::TrySendError::Full(_) => PostError::Full,
                crossbeam_channel::TrySendError::Disconnected(_) => PostError::Stopped,
            })
        };
        // Woken even when full, so that it drains its queue.
        self.mesh.wakers[worker].wake();
        // The worker may have ended as this went in, after dropping what was queued: then
        // nothing will run it, and it goes here (a call's reply says `Gone`). Either the
        // worker's drop comes after the send, or this load sees it ended (both are SeqCst).
        if sent.is_ok() && self.mesh.has_ended(worker) {
            self.mesh.drop_queued_commands(worker);
        }
        sent
    }
}

/// A worker's thread: running, or joined already ([`Engine::wait_worker`]).
pub(super) enum WorkerThread<H> {
    Running(JoinHandle<io::Result<H>>),
    Ended(std::thread::Result<io::Result<H>>),
}

/// Running workers, one thread each. Dropping it shuts the workers down and joins them
/// (logging a warning): call [`Engine::shutdown`] or [`Engine::join`] to see how they ended.
#[must_use = "dropping the engine stops its workers"]
pub struct Engine<H: Handler> {
    pub(super) handle: EngineHandle<H>,
    pub(super) threads: Vec<WorkerThread<H>>,
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
    /// timeout), joins the threads and returns the handlers (as [`Engine::join`]: an error
    /// instead when a worker failed).
    pub fn shutdown(self, code: VarInt, reason: &[u8]) -> Result<Vec<H>, EngineError> {
        self.handle.shutdown(code, reason);
        self.join()
    }

    /// Waits until every worker has stopped by itself ([`Ctx::stop_worker`]) or by
    /// [`EngineHandle::shutdown`], and returns the handlers: all of them, or, when a worker
    /// failed or panicked, the first such error (the other workers' handlers are then
    /// dropped). A worker whose handler panicked ends normally (its connections closed):
    /// its handler is returned; [`EngineHandle::counters`] counts `handler_panics`.
    ///
    /// Call it (or [`Engine::shutdown`], or drop the engine) from a thread of your own, not
    /// from a worker's (a callback, or a task of thread-per-core mode): the worker would
    /// wait for the others while its own connections stall, and is itself not waited for
    /// (its result is an error saying so; the engine's clean-up, such as removing its
    /// AF_XDP sockets from the XDP program's map, then runs while it still drains).
    pub fn join(mut self) -> Result<Vec<H>, EngineError> {
        self.join_threads()
    }

    /// Waits until worker `worker` has stopped (by itself, [`Ctx::stop_worker`], or failed),
    /// the others running on: a client whose connections all live on one worker, say, while
    /// the others receive for it. [`Engine::join`] or [`Engine::shutdown`] still returns its
    /// handler. On that worker's own thread it returns at once (a thread cannot wait for
    /// itself).
    pub fn wait_worker(&mut self, worker: usize) {
        let Some(t) = self.threads.get_mut(worker) else {
            return;
        };
        // A placeholder while the thread is joined; replaced by its result below.
        let joining = WorkerThread::Ended(Ok(Err(io::Error::other("being joined"))));
        *t = match std::mem::replace(t, joining) {
            // A thread cannot wait for itself (see `join_threads`).
            WorkerThread::Running(h) if h.thread().id() == std::thread::current().id() => {
                WorkerThread::Running(h)
            }
            WorkerThread::Running(h) => WorkerThread::Ended(h.join()),
            ended => ended,
        };
    }

    fn join_threads(&mut self) -> Result<Vec<H>, EngineError> {
        let mut out = Vec::with_capacity(self.threads.len());
        let mut first_error = None;
        for (worker, t) in std::mem::take(&mut self.threads).into_iter().enumerate() {
            let ended = match t {
                // Joined from its own thread (the engine dropped in a callback, or by a
                // task of thread-per-core mode): a thread cannot wait for itself, and std
                // panics trying. It ends once its caller returns; its handler is not seen.
                WorkerThread::Running(h) if h.thread().id() == std::thread::current().id() => {
                    Ok(Err(io::Error::other(
                        "the engine was joined on this worker's own thread: not waited for",
                    )))
                }
                WorkerThread::Running(h) => h.join(),
                WorkerThread::Ended(r) => r,
            };
            match ended {
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

impl<H: Handler> Drop for Engine<H> {
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        tracing::warn!(
            workers = self.threads.len(),
            "engine dropped while running: shutting its workers down and joining them"
        );
        self.handle.shutdown(VarInt::from_u32(0), b"engine dropped");
        if let Err(e) = self.join_threads() {
            tracing::warn!("a worker of the dropped engine ended with an error: {e}");
        }
    }
}
