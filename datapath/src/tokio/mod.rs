//! # The async API: quinn's shape over the sharded engine
//!
//! [`Endpoint`], [`Incoming`], [`Connecting`], [`Connection`], [`SendStream`] and
//! [`RecvStream`] have quinn 0.11's names, signatures and semantics wherever they match, so
//! that quinn code ports by changing the import:
//!
//! ```no_run
//! use xdp_quic::tokio::{Connection, Endpoint};
//! async fn serve(ep: Endpoint) {
//!     while let Some(incoming) = ep.accept().await {
//!         tokio::spawn(async move {
//!             let conn: Connection = incoming.await.unwrap();
//!             while let Ok((mut send, mut recv)) = conn.accept_bi().await {
//!                 let data = recv.read_to_end(1 << 20).await.unwrap();
//!                 send.write_all(&data).await.unwrap();
//!                 send.finish().unwrap();
//!             }
//!         });
//!     }
//! }
//! ```
//!
//! Handles are `Send + Sync + 'static` and work from any task of any runtime. Two modes:
//!
//! - **the application's runtime** ([`Builder::bind_udp`], [`Builder::bind_xdp`]): the engine's
//!   workers run on their own threads; a task's requests are queued on its connection and
//!   handed to the connection's worker in batches (one command per worker in flight, whatever
//!   the number of requests), and the worker wakes the tasks. The cost: a cross-thread wake
//!   each way per batch (a futex or an eventfd write when the other side sleeps), one lock
//!   per connection taken by both sides, and a copy of written octets into the stream's queue
//!   (quinn copies them into its send buffer too).
//! - **thread-per-core** ([`Builder::thread_per_core`]): each worker thread runs a
//!   current-thread tokio runtime with a `LocalSet`, the worker's turns being one of its
//!   tasks; the application's future runs on every worker with an [`Endpoint`] that accepts
//!   that worker's connections, and the tasks it spawns (`tokio::spawn` or `spawn_local`) run
//!   there too: a connection's tasks never leave its worker's core, and waking them costs no
//!   syscall. The worker holds a connection's transmit back for one turn after its tasks were
//!   handed events ([`crate::Worker::hold_transmits`]), so that their answers leave with the
//!   ACKs of what they answer, in one batch.
//!
//! Where it differs from quinn, and why:
//! - reads and writes go through bounded per-stream queues between the tasks and the worker
//!   ([`Limits`]): a write returns once its octets are queued (quinn's once they are in
//!   quinn-proto's send buffer); a slow reader stops the worker moving data out of
//!   quinn-proto, whose flow control then stops the peer;
//! - `Incoming` is decided on the worker after the fact ([`crate::Decision::Defer`]): an
//!   attempt not decided within [`crate::accept::DEFER_TIMEOUT`] is ignored;
//! - `Endpoint::connect` checks what it can at once (configuration, server name, address); a
//!   failure found on the worker makes the [`Connecting`] fail with `LocallyClosed`;
//! - received data waits in the stream's queue, not in quinn-proto: each chunk under 8 KiB
//!   is copied out of its receive buffer as it is queued (quinn copies once too, when the
//!   application reads into its buffer); `read_chunk` then hands out that copy;
//! - a stream the peer resets still hands out the octets already in its queue before
//!   `ReadError::Reset` (quinn drops what it had not handed out); a stream the peer stops
//!   (STOP_SENDING) is reset by the worker at once with the peer's code, so a later
//!   `SendStream::reset` with another code is not seen by the peer (quinn leaves the reset
//!   to the application);
//! - not offered: 0-RTT ([`Connecting::into_0rtt`] always gives the `Connecting` back, as
//!   quinn does when 0-RTT is impossible), unordered reads (`read_chunk(_, false)` reads in
//!   order, which an unordered reader accepts), stream priorities, `Endpoint::rebind`;
//!   `Connection::stats` is as of the worker's last batch of the connection's requests
//!   (taken before that batch's packets leave), and final once the peer closed it or it
//!   was lost (one closed here keeps the figures of the batch that closed it); `local_ip` is
//!   known for accepted connections only.

mod connection;
mod driver;
mod endpoint;
mod error;
mod per_core;
mod shared;
mod stream;
mod streams;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

pub use connection::{Connecting, Connection};
pub use driver::Driver;
pub use endpoint::{Endpoint, Incoming};
pub use error::{
    ClosedStream, ConnectError, ConnectionError, ReadError, ReadExactError, ReadToEndError,
    RetryError, SendDatagramError, StoppedError, WriteError,
};
pub use quinn_proto::{Chunk, ClientConfig, ServerConfig, StreamId, VarInt, Written};
pub use stream::{RecvStream, SendStream};

use crate::engine::threads::Blocking;
use crate::{Engine, EngineBuilder, EngineError, SocketMap, XdpSetup};
use driver::Ending;
use shared::EndpointShared;

/// What the async API buffers between the workers and the tasks: the bounds on what a peer
/// (or a slow task) can make it hold. Per connection, received and unread data is bounded by
/// `connection_receive` (plus quinn-proto's own receive windows), whatever the number of
/// streams, plus one chunk of at most 64 KiB for each stream whose reader waits on an empty
/// buffer: the connection's budgets never stall a stream the application is reading, even
/// when streams it has not accepted yet fill them (quinn's flow control is per stream too).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Received octets of one stream waiting for the application. Default 256 KiB.
    pub stream_receive: usize,
    /// Received octets of all the streams of a connection waiting. Default 1 MiB.
    pub connection_receive: usize,
    /// Streams whose end the peer sent but the application has not read yet (quinn-proto
    /// forgets them, so they would not count against its stream limits). Default 256.
    pub held_streams: usize,
    /// Octets written to one stream and not yet taken by quinn-proto: writes wait beyond it.
    /// Default 256 KiB.
    pub stream_send: usize,
    /// Received datagrams waiting for `read_datagram`, in octets, each counted with 32 more
    /// for its queue slot (the oldest are dropped beyond it; the newest always waits).
    /// Default 256 KiB.
    pub datagram_receive: usize,
    /// Datagrams waiting to be sent, in octets, each counted with 32 more for its slot (the
    /// oldest dropped beyond; the newest always waits). Default 256 KiB.
    pub datagram_send: usize,
    /// Connection attempts waiting for `accept` (per worker in thread-per-core mode);
    /// refused beyond it. Default 1,024.
    pub incoming: usize,
}

impl Limits {
    /// Refuses limits that would stall every stream or refuse every connection: the
    /// receive and send buffers, the held streams and the accept queue must be at least 1
    /// (the datagram queues may be 0: only the newest datagram waits).
    fn check(&self) -> Result<(), EngineError> {
        for (value, name) in [
            (self.stream_receive, "stream_receive"),
            (self.connection_receive, "connection_receive"),
            (self.held_streams, "held_streams"),
            (self.stream_send, "stream_send"),
            (self.incoming, "incoming"),
        ] {
            if value == 0 {
                return Err(EngineError::Config(format!(
                    "async API limit {name} must be at least 1"
                )));
            }
        }
        Ok(())
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            stream_receive: 256 << 10,
            connection_receive: 1 << 20,
            held_streams: 256,
            stream_send: 256 << 10,
            datagram_receive: 256 << 10,
            datagram_send: 256 << 10,
            incoming: 1024,
        }
    }
}

/// The application's future of thread-per-core mode, made on each worker's thread.
type Main = Arc<dyn Fn(Endpoint) -> std::pin::Pin<Box<dyn Future<Output = ()>>> + Send + Sync>;

/// Builds an [`Endpoint`] over an engine configured by an [`EngineBuilder`] (workers,
/// transport, congestion controller, Retry policy, limits...).
pub struct Builder {
    engine: EngineBuilder,
    limits: Limits,
    main: Option<Main>,
    tasks_per_turn: u32,
}

/// The default of [`Builder::tasks_per_turn`].
pub const DEFAULT_TASKS_PER_TURN: u32 = 4096;

impl Builder {
    /// An endpoint over the engine `engine` describes: a server if it has a server
    /// configuration, else a client (give it a client configuration, or use
    /// [`Endpoint::set_default_client_config`]).
    pub fn new(engine: EngineBuilder) -> Self {
        Self {
            engine,
            limits: Limits::default(),
            main: None,
            tasks_per_turn: DEFAULT_TASKS_PER_TURN,
        }
    }

    /// What the async API buffers (see [`Limits`]; `bind_*` refuses a 0 where it would
    /// stall every stream or refuse every connection).
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Thread-per-core mode: `main` runs on every worker's thread, in a current-thread
    /// runtime, with an [`Endpoint`] that accepts that worker's connections and opens
    /// connections from it. The tasks it spawns run on that thread too. The endpoint the
    /// `bind_*` call returns controls the whole engine (close, wait_idle, drop) but accepts
    /// nothing itself.
    pub fn thread_per_core<F, Fut>(mut self, main: F) -> Self
    where
        F: Fn(Endpoint) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + 'static,
    {
        self.main = Some(Arc::new(move |ep| Box::pin(main(ep))));
        self
    }

    /// Thread-per-core mode: the most polls of the application's tasks a worker's thread
    /// makes between two turns of the worker while tasks are ready all the time (tokio's
    /// `event_interval`; its I/O and timers are polled as often). Default
    /// [`DEFAULT_TASKS_PER_TURN`]; `bind_*` refuses 0.
    ///
    /// This counts the tasks started with `tokio::spawn` (the runtime's). Those started
    /// with `spawn_local` run in the worker's `LocalSet`, which tokio polls beside the
    /// worker's turns and which runs at most 61 of them per poll (tokio's
    /// `MAX_TASKS_PER_TICK`, not configurable): with those, the worker turns at least every
    /// 61 polls of them, and a burst's answers leave in smaller batches. Spawn a
    /// connection's or a stream's tasks with `tokio::spawn` where they are `Send`.
    ///
    /// The worker turns as soon as no task is ready, so under light load this changes
    /// nothing. Under load, a burst of received requests wakes a task per stream: a turn
    /// after all of them have answered sends their answers in one batch per connection,
    /// where a turn every 61 polls (tokio's default) split them into many smaller ones
    /// (measured with the bench's 64 streams × 16 connections of 1 KB requests: 4,096 polls
    /// per turn cost 0.87–0.93× the server CPU per request of 61, with 0.6× the `sendmsg`
    /// calls and a fifth of the `recvmmsg` calls; bench/README.md). Fewer polls per turn
    /// bound how long a worker's connections wait behind tasks that are ready without end
    /// (a task that wakes itself in a loop).
    pub fn tasks_per_turn(mut self, polls: u32) -> Self {
        self.tasks_per_turn = polls;
        self
    }

    fn parts(&mut self, workers: usize) -> (Arc<EndpointShared>, EngineBuilder) {
        let shared = Arc::new(EndpointShared::new(
            workers,
            self.main.is_some(),
            self.limits,
        ));
        // One command of this API is in flight per worker (`EndpointShared::push`);
        // room for the application's own posts besides.
        let engine = self
            .engine
            .clone()
            .command_capacity(64.max(self.engine.command_capacity));
        *shared::lock(&shared.default_client) = engine.client.clone();
        (shared, engine)
    }

    fn check(&self) -> Result<(), EngineError> {
        self.limits.check()?;
        if self.tasks_per_turn == 0 {
            return Err(EngineError::Config(
                "tasks_per_turn must be at least 1 (tokio's event_interval refuses 0)".into(),
            ));
        }
        Ok(())
    }

    fn finish(self, shared: Arc<EndpointShared>, engine: Engine<Driver>) -> Endpoint {
        let _ = shared.local_addr.set(engine.local_addr());
        let _ = shared.handle.set(engine.handle());
        shared.started.notify_waiters();
        Endpoint::new(shared, Arc::new(Keeper::new(engine)), None)
    }

    /// Binds one UDP socket per worker to `addr` (a server: SO_REUSEPORT on `addr`; a
    /// client: each on its own ephemeral port when `addr`'s port is 0) and starts.
    pub fn bind_udp(mut self, addr: SocketAddr) -> Result<Endpoint, EngineError> {
        self.check()?;
        let workers = self.engine.workers;
        let (shared, engine) = self.parts(workers);
        let server = engine.server.is_some();
        let s = shared.clone();
        let factory = move |w| Driver::new(s.clone(), w);
        let engine = match (self.main.clone(), server) {
            (None, true) => engine.start_udp_run(addr, factory, Ending(Blocking)),
            (None, false) => engine.start_udp_client_run(addr, factory, Ending(Blocking)),
            (Some(main), true) => engine.start_udp_run(
                addr,
                factory,
                Ending(per_core::PerCore::new(main, &shared, self.tasks_per_turn)),
            ),
            (Some(main), false) => engine.start_udp_client_run(
                addr,
                factory,
                Ending(per_core::PerCore::new(main, &shared, self.tasks_per_turn)),
            ),
        }?;
        Ok(self.finish(shared, engine))
    }

    /// Starts over AF_XDP: one worker per queue of `setup` (see
    /// [`EngineBuilder::start_xdp`]).
    pub fn bind_xdp(
        self,
        setup: &XdpSetup,
        map: Box<dyn SocketMap>,
    ) -> Result<Endpoint, EngineError> {
        if setup.listen.port() == 0 {
            return Err(EngineError::Config(
                "the AF_XDP backend needs a fixed port (or sockets bound already: \
                 bind_xdp_on)"
                    .into(),
            ));
        }
        let services = crate::engine::bind_services(setup.listen, setup.queues.len())?;
        self.bind_xdp_on(setup, map, services)
    }

    /// Like [`Builder::bind_xdp`], over the queues' UDP sockets bound already (see
    /// [`EngineBuilder::start_xdp_on`]).
    pub fn bind_xdp_on(
        mut self,
        setup: &XdpSetup,
        map: Box<dyn SocketMap>,
        services: Vec<std::net::UdpSocket>,
    ) -> Result<Endpoint, EngineError> {
        self.check()?;
        let (shared, engine) = self.parts(setup.queues.len());
        let s = shared.clone();
        let factory = move |w| Driver::new(s.clone(), w);
        let engine = match self.main.clone() {
            None => engine.start_xdp_run(setup, map, services, factory, Ending(Blocking)),
            Some(main) => engine.start_xdp_run(
                setup,
                map,
                services,
                factory,
                Ending(per_core::PerCore::new(main, &shared, self.tasks_per_turn)),
            ),
        }?;
        Ok(self.finish(shared, engine))
    }
}

/// Owns the engine for the application's handles: when the last one goes, the engine shuts
/// down (its threads joined on a thread of their own, so that no task blocks).
pub(crate) struct Keeper {
    engine: Mutex<Option<Engine<Driver>>>,
}

impl Keeper {
    fn new(engine: Engine<Driver>) -> Self {
        Self {
            engine: Mutex::new(Some(engine)),
        }
    }

    /// The keeper of the per-worker endpoints of thread-per-core mode: the engine is owned
    /// by the endpoint `bind_*` returned.
    pub(crate) fn none() -> Self {
        Self {
            engine: Mutex::new(None),
        }
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        let engine = shared::lock(&self.engine).take();
        if let Some(engine) = engine {
            engine.handle().shutdown(VarInt::from_u32(0), b"");
            let joiner = std::thread::Builder::new()
                .name("xdp-quic-join".into())
                .spawn(move || {
                    if let Err(e) = engine.join() {
                        tracing::warn!("a worker ended with an error: {e}");
                    }
                });
            if let Err(e) = joiner {
                tracing::warn!("cannot start a thread to join the workers: {e}");
            }
        }
    }
}
