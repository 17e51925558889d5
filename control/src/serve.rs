//! Serving over AF_XDP with the XDP program watched, falling back to kernel UDP: what
//! `xdp-quic serve` does, as a library for daemons.
//!
//! [`Server::start`] starts a supervisor thread that starts an engine (over AF_XDP per an
//! [`XdpSetup`], using the attachment `xdp-quic attach` pinned for the interface or attaching
//! the program for the server's life; or over kernel UDP) and, every
//! [`ServeOptions::watch_every`]:
//!
//! * stops the engine when workers failed, or an application callback panicked on one
//!   ([`StopReason::WorkersFailed`]; [`ServeOptions::keep_serving_after_handler_panic`]);
//! * gives freed memory back to the system once a burst of connection churn is over
//!   ([`xdp_quic::memory::TrimPolicy`]);
//! * over AF_XDP, looks at the interface ([`ProgramWatch`]): it reports the interface going
//!   down and up ([`Event::Link`]; sockets and program stay), and when the program its
//!   sockets are registered with is detached or replaced, or the interface disappears, the
//!   AF_XDP workers would receive nothing any more, so it closes their connections
//!   ([`StopReason::ProgramLost`]) and, under [`Fallback::ToUdp`], starts over on kernel UDP.
//!
//! Over AF_XDP it engages the XDP program's shield when asked ([`ServeOptions::shield`]):
//! the QUIC rules on, the engine's CID layout written, and a pressure monitor on each queue
//! ([`crate::xdp::ShieldGuard`]), put back as they were when the engine stops.
//!
//! It also serves each engine's Prometheus endpoint when asked ([`ServeOptions::metrics`]).
//! Nothing is printed: everything that happens is an [`Event`] on [`Server::events`], in
//! order. The server ends on [`Stop::stop`], when workers fail, when the program is lost
//! without fallback, or when an engine (or its metrics endpoint) cannot start: the events
//! then end, and [`Server::join`] says why, or returns the error.
//!
//! Call [`Server::start`] from a thread in the network namespace of the interface: the
//! supervisor thread starts from it and so works in that namespace (the sockets, the watch).

use std::net::SocketAddr;
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use xdp_quic::backend::udp::Steering;
use xdp_quic::backend::xsk::XskSnapshot;
use xdp_quic::{Counters, Engine, EngineBuilder, EngineHandle, Handler, VarInt, XdpSetup};

use crate::metrics::{bind_metrics, EngineCollector, MetricsLimits, MetricsServer};
use crate::xdp::pressure::PressureChange;
use crate::xdp::socket_map::ServerSteering;
use crate::xdp::{
    AttachMode, CountersReader, LeftByServer, PressurePolicy, ProgramWatch, ShieldConfig,
    ShieldGuard, ShieldMaps, WatchEvent,
};
use xdp_quic::cid::CidLayout;

/// What to do when AF_XDP cannot serve: at start, or after the program is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fallback {
    /// Fail at start; end the server when the program is lost.
    Never,
    /// Serve over kernel UDP on the same address instead (not for a configuration the
    /// engine refuses, [`xdp_quic::EngineError::Config`]: that fails the start either way).
    ToUdp,
}

/// Where the workers get their packets.
#[derive(Debug, Clone)]
pub enum Backend {
    /// Kernel UDP sockets (SO_REUSEPORT, one per worker) bound to this address.
    Udp(SocketAddr),
    /// AF_XDP sockets per `setup` (one worker per queue). The program is the one `xdp-quic
    /// attach` pinned for `setup.iface`, or else attached in `mode` for the server's life.
    Xdp {
        setup: XdpSetup,
        mode: AttachMode,
        fallback: Fallback,
    },
}

/// The events [`Server::events`] holds that nobody took: past them new ones are dropped
/// (a daemon that never reads them does not grow).
pub const EVENTS: usize = 1024;

/// The shortest [`ServeOptions::watch_every`].
pub const MIN_WATCH_EVERY: Duration = Duration::from_millis(10);

/// Options of a [`Server`].
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// Serve Prometheus metrics of each engine at `http://ADDR/metrics`. The port is bound
    /// before the first engine starts, so that a port in use fails the server before it
    /// attaches or serves anything.
    pub metrics: Option<SocketAddr>,
    /// What the metrics endpoint lets its clients hold (default: 16 connections, 5 s each).
    pub metrics_limits: MetricsLimits,
    /// How often the supervisor looks at the workers and the interface. Default 1 s; at
    /// least [`MIN_WATCH_EVERY`].
    pub watch_every: Duration,
    /// Give freed memory back after bursts of at least this many connection events
    /// ([`xdp_quic::memory::TrimPolicy`]); `None`: never. Default 1,000.
    pub trim_after: Option<u64>,
    /// Stops the server: keep a clone (e.g. for a signal handler) before starting it.
    pub stop: Stop,
    /// Over AF_XDP: engage the XDP program's shield for each engine's life (default none:
    /// the shield is left as the attachment has it, and no pressure is ever flagged).
    pub shield: Option<ShieldOptions>,
    /// Keep serving with the other workers after an application callback panicked (default
    /// `false`: the server stops, [`StopReason::WorkersFailed`]). A panicking callback ends
    /// its worker (its connections closed with INTERNAL_ERROR, `handler_panics` counted); the
    /// packets steered to that worker's socket or queue then go unanswered for as long as
    /// the server runs, so a server that cannot restart itself should stop and be restarted.
    pub keep_serving_after_handler_panic: bool,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            metrics: None,
            metrics_limits: MetricsLimits::default(),
            watch_every: Duration::from_secs(1),
            trim_after: Some(1000),
            stop: Stop::new(),
            shield: None,
            keep_serving_after_handler_panic: false,
        }
    }
}

/// The XDP shield of a server over AF_XDP (see [`crate::xdp::shield`]).
#[derive(Debug, Clone)]
pub struct ShieldOptions {
    /// The rules, on for the engine's life.
    pub config: ShieldConfig,
    /// The engine's CIDs: length, server id and config rotation exactly as given to
    /// `EngineBuilder::connection_ids` (default 8, none, 0). [`Server::start`] refuses other
    /// values: the shield would drop every short header of the engine's connections.
    pub cid_len: usize,
    pub server_id: Vec<u8>,
    pub config_rotation: u8,
    /// When a queue is under pressure; set its `pending_handshakes` to the engine's Retry
    /// threshold.
    pub pressure: PressurePolicy,
}

impl Default for ShieldOptions {
    fn default() -> Self {
        Self {
            config: ShieldConfig::default(),
            cid_len: 8,
            server_id: Vec::new(),
            config_rotation: 0,
            pressure: PressurePolicy::default(),
        }
    }
}

impl ShieldOptions {
    /// The CID layout of an engine with `workers` workers.
    pub fn layout(&self, workers: usize) -> anyhow::Result<CidLayout> {
        CidLayout::new(self.cid_len, self.config_rotation, &self.server_id, workers)
            .context("the shield's CID layout")
    }
}

/// Asks a [`Server`] to stop: cheap to clone, usable from any thread (a Ctrl-C handler).
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<(Mutex<bool>, Condvar)>);

impl Stop {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the server to close its connections and end ([`StopReason::Requested`]).
    pub fn stop(&self) {
        *self.flag() = true;
        self.0 .1.notify_all();
    }

    /// Whether [`Stop::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        *self.flag()
    }

    /// Waits up to `timeout` for [`Stop::stop`]; returns whether it was called.
    fn wait(&self, timeout: Duration) -> bool {
        let (stopped, _) = self
            .0
             .1
            .wait_timeout_while(self.flag(), timeout, |stopped| !*stopped)
            .unwrap_or_else(|p| p.into_inner());
        *stopped
    }

    fn flag(&self) -> MutexGuard<'_, bool> {
        self.0 .0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What serves, as an engine starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Serving {
    /// AF_XDP workers, one per queue of `iface`.
    Xdp {
        /// The service address.
        listen: SocketAddr,
        iface: String,
        queues: Vec<u32>,
        /// Whether every queue is in zero-copy mode (else copy mode).
        zero_copy: bool,
        /// The transmit path of each queue, in `queues`' order.
        tx: Vec<xdp_quic::backend::xsk::TxPath>,
        /// How the program is attached, in words ("pinned by xdp-quic attach", "attached by
        /// this process (native mode)").
        program: String,
    },
    /// Kernel UDP workers.
    Udp {
        /// The address the sockets are bound to (its port when 0 was asked for).
        local_addr: SocketAddr,
        workers: usize,
        /// How the kernel spreads packets over the workers.
        steering: Steering,
    },
}

/// Why a server stopped an engine. More reasons may come: a `match` needs a `_` arm.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StopReason {
    /// [`Stop::stop`] was called.
    Requested,
    /// Workers failed (a panic outside the application's callbacks, or a fatal I/O error),
    /// or, unless [`ServeOptions::keep_serving_after_handler_panic`], an application
    /// callback panicked on them: (index, why). They closed their connections; the others are
    /// stopped too.
    WorkersFailed(Vec<(usize, String)>),
    /// The XDP program the AF_XDP workers were registered with is gone from `iface`: `why`
    /// is [`WatchEvent::Detached`] or [`WatchEvent::InterfaceGone`].
    ProgramLost { iface: String, why: WatchEvent },
}

/// What a [`Server`] reports, in the order it happens. More events may come (a new one is
/// not a breaking change): a `match` needs a `_` arm.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// An engine started and serves.
    Serving(Serving),
    /// AF_XDP could not start (why); [`Fallback::ToUdp`]: UDP starts instead.
    XdpUnavailable(anyhow::Error),
    /// The engine's Prometheus endpoint listens at this address.
    Metrics(SocketAddr),
    /// The interface went down or came back up ([`WatchEvent::Down`], [`WatchEvent::Up`]):
    /// the program and the sockets stay, connections may survive it.
    Link { iface: String, change: WatchEvent },
    /// The state of the interface could not be read this time.
    WatchFailed {
        iface: String,
        error: std::io::Error,
    },
    /// The engine stops, closing its connections: why, and the counters of its AF_XDP
    /// queues (none over UDP) as it stops.
    Stopping {
        reason: StopReason,
        queues: Vec<XskSnapshot>,
    },
    /// The engine has stopped: the final counters of its workers.
    Stopped { counters: Vec<Counters> },
    /// After the program was lost, under [`Fallback::ToUdp`]: kernel UDP starts on `listen`.
    FallingBack { listen: SocketAddr },
    /// The XDP shield is engaged for the engine on `iface` ([`ServeOptions::shield`]).
    Shield {
        iface: String,
        config: ShieldConfig,
        /// Whether the pressure monitor runs (the configuration admits under pressure).
        monitor: bool,
    },
    /// A queue of `iface` came under pressure (the shield now admits Initials without a
    /// token per source prefix there), or is not under pressure any more.
    Pressure {
        iface: String,
        change: PressureChange,
    },
    /// The engine on `iface`, serving without the shield, found what a server that did not
    /// stop cleanly (killed) had left on it (no other server holds the attachment's
    /// queues), and cleared it ([`crate::xdp::ShieldMaps::clear_left_by_server`]): the
    /// shield it had turned on (`turned_off`), or its CID layout and pressure flags on the
    /// shield of `xdp-quic attach --shield`, which stays.
    StaleShieldCleared { iface: String, turned_off: bool },
    /// Under [`ServeOptions::keep_serving_after_handler_panic`]: an application callback
    /// panicked on worker `worker`, which closed its connections and ended; the server
    /// serves on with the others (once per worker).
    HandlerPanicked { worker: usize },
}

/// A running server: its engine, watched by a supervisor thread. Dropping it stops it and
/// waits for the end.
pub struct Server<H: Handler> {
    events: mpsc::Receiver<Event>,
    stop: Stop,
    current: Arc<Mutex<Option<EngineHandle<H>>>>,
    supervisor: Option<JoinHandle<anyhow::Result<StopReason>>>,
}

impl<H: Handler> Server<H> {
    /// Starts a server: `builder` per `backend`, with a handler per worker from `factory`
    /// (called again for the workers of a fallback engine). Returns at once; the first events
    /// say what serves ([`Event::XdpUnavailable`], [`Event::Serving`], [`Event::Metrics`]),
    /// or the events end and [`Server::join`] returns why nothing could (AF_XDP without
    /// fallback, UDP, the metrics endpoint's port). Fails only on a `watch_every` under
    /// [`MIN_WATCH_EVERY`], on metrics limits the endpoint cannot serve with, on shield
    /// options whose CIDs are not the builder's, or when no thread can be started.
    pub fn start<F>(
        builder: EngineBuilder,
        backend: Backend,
        options: ServeOptions,
        factory: F,
    ) -> anyhow::Result<Self>
    where
        F: FnMut(usize) -> H + Send + 'static,
    {
        if let Some(shield) = &options.shield {
            let theirs = (
                shield.cid_len,
                &shield.server_id[..],
                shield.config_rotation,
            );
            let engine = builder.connection_id_settings();
            if theirs != engine {
                anyhow::bail!(
                    "ShieldOptions' CIDs (length {}, server id {:02x?}, rotation {}) differ from \
                     the engine's (length {}, server id {:02x?}, rotation {}): the shield would \
                     drop every short header of the engine's connections",
                    theirs.0,
                    theirs.1,
                    theirs.2,
                    engine.0,
                    engine.1,
                    engine.2
                );
            }
        }
        // Refused here, before anything is attached or served, not when the endpoint starts.
        options
            .metrics_limits
            .validate()
            .context("ServeOptions::metrics_limits")?;
        if options.watch_every < MIN_WATCH_EVERY {
            anyhow::bail!(
                "ServeOptions::watch_every of {:?}: at least {MIN_WATCH_EVERY:?} (the \
                 supervisor asks the kernel about the interface each time)",
                options.watch_every
            );
        }
        let (tx, events) = mpsc::sync_channel(EVENTS);
        let current = Arc::new(Mutex::new(None));
        let (listen, fallback) = match &backend {
            Backend::Udp(listen) => (*listen, Fallback::Never),
            Backend::Xdp {
                setup, fallback, ..
            } => (setup.listen, *fallback),
        };
        let mut supervisor = Supervisor {
            builder,
            factory,
            listen,
            fallback,
            metrics: options.metrics,
            metrics_limits: options.metrics_limits,
            metrics_listener: None,
            watch_every: options.watch_every,
            trim_after: options.trim_after,
            keep_serving_after_handler_panic: options.keep_serving_after_handler_panic,
            shield: options.shield,
            stop: options.stop.clone(),
            events: tx,
            current: current.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("xdp-quic-serve".into())
            .spawn(move || {
                if let Some(addr) = supervisor.metrics {
                    supervisor.metrics_listener = Some(bind_metrics(addr)?);
                }
                let running = supervisor.first(backend)?;
                supervisor.run(running)
            })
            .context("starting the server's supervisor thread")?;
        Ok(Self {
            events,
            stop: options.stop,
            current,
            supervisor: Some(thread),
        })
    }

    /// What happens, in order; the channel ends when the server has ended. It holds at most
    /// [`EVENTS`] not taken: read it (the CLI does), or expect the newest to be dropped.
    pub fn events(&self) -> &mpsc::Receiver<Event> {
        &self.events
    }

    /// A clone of the server's [`Stop`].
    pub fn stopper(&self) -> Stop {
        self.stop.clone()
    }

    /// Asks the server to stop ([`Stop::stop`]); [`Server::join`] waits for the end.
    pub fn stop(&self) {
        self.stop.stop();
    }

    /// A handle of the engine serving now (its counters, work posted to its workers); `None`
    /// between an engine and its fallback, and once the server has ended.
    pub fn handle(&self) -> Option<EngineHandle<H>> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Waits until the server has ended and says why: [`StopReason::Requested`],
    /// [`StopReason::WorkersFailed`], or [`StopReason::ProgramLost`] under
    /// [`Fallback::Never`]. An error when an engine could not be stopped cleanly, or the
    /// fallback could not start.
    pub fn join(mut self) -> anyhow::Result<StopReason> {
        let thread = self.supervisor.take().expect("joined once");
        thread
            .join()
            .map_err(|_| anyhow::anyhow!("the server's supervisor thread panicked"))?
    }
}

impl<H: Handler> Drop for Server<H> {
    fn drop(&mut self) {
        if let Some(thread) = self.supervisor.take() {
            self.stop.stop();
            let _ = thread.join();
        }
    }
}

/// An engine started over AF_XDP by [`start_xdp`].
pub struct XdpEngine<H: Handler> {
    pub engine: Engine<H>,
    /// How the program is attached, in words.
    pub how: String,
    /// The program's counters, when readable.
    pub program: Option<CountersReader>,
    /// Watches the program the sockets are registered with (from the calling thread's
    /// network namespace).
    pub watch: ProgramWatch,
    /// The program's shield maps (to engage the shield:
    /// [`crate::xdp::ShieldGuard::engage`]), or why they cannot be opened.
    pub shield: anyhow::Result<ShieldMaps>,
}

/// Starts `builder` over AF_XDP per `setup`: registers the sockets with the attachment `xdp-quic
/// attach` pinned for `setup.iface`, or attaches the program in `mode` for the engine's life.
/// The building block of [`Server`], for callers that supervise the engine themselves.
pub fn start_xdp<H: Handler>(
    builder: EngineBuilder,
    setup: &XdpSetup,
    mode: AttachMode,
    factory: impl FnMut(usize) -> H,
) -> anyhow::Result<XdpEngine<H>> {
    // Nothing is attached for a set-up the workers would refuse.
    setup.check()?;
    let steering = ServerSteering::for_server(&setup.iface, setup.listen, mode)?;
    let how = steering.describe();
    let program = steering.counters_reader(&setup.iface).ok();
    let shield = steering.shield_maps(&setup.iface);
    let ifindex = xdp_quic::engine::ifindex(&setup.iface)
        .with_context(|| format!("looking up {}", setup.iface))?;
    let watch = ProgramWatch::new(ifindex, steering.prog_id())
        .with_context(|| format!("reading the state of {}", setup.iface))?;
    let engine = builder
        .start_xdp(setup, Box::new(steering), factory)
        .with_context(|| format!("starting AF_XDP workers on {}", setup.iface))?;
    Ok(XdpEngine {
        engine,
        how,
        program,
        watch,
        shield,
    })
}

/// Starts a client engine over AF_XDP on `setup.iface`: binds the queues' UDP sockets to
/// `setup.listen`'s address on a port the kernel picks, attaches the XDP program for that
/// port for the engine's life, and starts `builder` (a client configuration; open connections
/// with `Ctx::connect`) with every queue transmitting through the kernel (`tx kernel`: the
/// kernel resolves the next hop of the servers it connects to). Replies come back through
/// the AF_XDP sockets. Returns the engine and its local port.
pub fn start_xdp_client<H: Handler>(
    builder: EngineBuilder,
    setup: &XdpSetup,
    mode: AttachMode,
    factory: impl FnMut(usize) -> H,
) -> anyhow::Result<(XdpEngine<H>, u16)> {
    setup.check()?;
    let services = xdp_quic::engine::bind_services(setup.listen, setup.queues.len())?;
    let port = services[0].local_addr()?.port();
    let mut setup = setup.clone();
    setup.listen.set_port(port);
    setup.tx = xdp_quic::backend::xsk::TxMode::Kernel;
    if matches!(
        crate::xdp::inspect(&setup.iface),
        Ok(crate::xdp::Pinned::Live(_))
    ) {
        anyhow::bail!(
            "{} has the program `xdp-quic attach` pinned for its servers, and a client engine \
             attaches a program of its own for its local port (an interface holds one): run \
             the client over another interface, or over kernel UDP (--backend udp)",
            setup.iface
        );
    }
    let steering = ServerSteering::attach_own(&setup.iface, setup.listen, mode)?;
    let how = steering.describe();
    let program = steering.counters_reader(&setup.iface).ok();
    let ifindex = xdp_quic::engine::ifindex(&setup.iface)
        .with_context(|| format!("looking up {}", setup.iface))?;
    let watch = ProgramWatch::new(ifindex, steering.prog_id())
        .with_context(|| format!("reading the state of {}", setup.iface))?;
    let engine = builder
        .start_xdp_on(&setup, Box::new(steering), services, factory)
        .with_context(|| format!("starting AF_XDP workers on {}", setup.iface))?;
    Ok((
        XdpEngine {
            engine,
            how,
            program,
            watch,
            shield: Err(anyhow::anyhow!("a client engine has no shield")),
        },
        port,
    ))
}

/// Whether `e` is (or wraps) a configuration the engine refused ([`EngineError::Config`]).
fn is_config_error(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        matches!(
            c.downcast_ref::<xdp_quic::EngineError>(),
            Some(xdp_quic::EngineError::Config(_))
        )
    })
}

/// An engine under supervision.
struct Running<H: Handler> {
    engine: Engine<H>,
    /// Over AF_XDP: the interface and its watch.
    watch: Option<(String, ProgramWatch)>,
    /// The metrics endpoint, held for the engine's life.
    metrics: Option<MetricsServer>,
    /// The shield engaged for the engine, put back after it stops.
    shield: Option<ShieldGuard>,
}

/// The supervisor thread's state.
struct Supervisor<H: Handler, F> {
    builder: EngineBuilder,
    factory: F,
    listen: SocketAddr,
    fallback: Fallback,
    metrics: Option<SocketAddr>,
    metrics_limits: MetricsLimits,
    /// The metrics endpoint's socket, bound before the first engine starts and taken by it.
    metrics_listener: Option<std::net::TcpListener>,
    watch_every: Duration,
    trim_after: Option<u64>,
    keep_serving_after_handler_panic: bool,
    shield: Option<ShieldOptions>,
    stop: Stop,
    events: mpsc::SyncSender<Event>,
    current: Arc<Mutex<Option<EngineHandle<H>>>>,
}

impl<H: Handler, F: FnMut(usize) -> H> Supervisor<H, F> {
    fn report(&self, event: Event) {
        // Nobody listening is no reason to stop serving.
        let _ = self.events.try_send(event);
    }

    fn set_current(&self, handle: Option<EngineHandle<H>>) {
        *self.current.lock().unwrap_or_else(|p| p.into_inner()) = handle;
    }

    /// Starts the first engine per `backend`.
    fn first(&mut self, backend: Backend) -> anyhow::Result<Running<H>> {
        match backend {
            Backend::Udp(_) => self.start_udp(),
            Backend::Xdp { setup, mode, .. } => {
                match start_xdp(self.builder.clone(), &setup, mode, &mut self.factory) {
                    Ok(x) => self.begin_xdp(x, &setup),
                    // A configuration the engine refuses is the caller's error, not a host
                    // without AF_XDP: UDP would not make it right.
                    Err(e) if self.fallback == Fallback::ToUdp && !is_config_error(&e) => {
                        self.report(Event::XdpUnavailable(e));
                        self.start_udp()
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    fn start_udp(&mut self) -> anyhow::Result<Running<H>> {
        let engine = self
            .builder
            .clone()
            .start_udp(self.listen, &mut self.factory)
            .with_context(|| format!("starting the server on {}", self.listen))?;
        let serving = Serving::Udp {
            local_addr: engine.local_addr(),
            workers: engine.handle().workers(),
            steering: engine.steering().expect("a UDP engine has a steering"),
        };
        self.begin(engine, serving, None, None, None)
    }

    /// Engages the shield for `engine` when asked; on failure the engine is shut down.
    fn engage_shield(
        &self,
        engine: &Engine<H>,
        maps: anyhow::Result<ShieldMaps>,
        iface: &str,
    ) -> anyhow::Result<Option<ShieldGuard>> {
        let Some(opts) = &self.shield else {
            // Serving without the shield: what a server killed before it could clean up left
            // (the shield it turned on, its CID layout, its pressure flags) goes, now that
            // this engine holds the queues.
            if let Ok(mut maps) = maps {
                let ours: Vec<u32> = engine.xsk_queues().iter().map(|q| q.queue).collect();
                let layout = self.builder.cid_layout(ours.len())?;
                maps.check_plain_server_fits(&layout, &ours)
                    .with_context(|| format!("serving on {iface}"))?;
                match maps.clear_left_by_server(&ours) {
                    Ok(LeftByServer::Nothing) => {}
                    Ok(left) => {
                        let _ = self.events.try_send(Event::StaleShieldCleared {
                            iface: iface.to_string(),
                            turned_off: left == LeftByServer::Shield,
                        });
                    }
                    Err(e) => tracing::warn!("cannot read the XDP shield on {iface}: {e:#}"),
                }
            }
            return Ok(None);
        };
        let maps = maps.with_context(|| {
            format!("the shield asked for, but the XDP program's shield maps on {iface} cannot be opened (if it is an attachment of an older xdp-quic: detach and attach again)")
        })?;
        let layout = opts.layout(engine.xsk_queues().len())?;
        let events = self.events.clone();
        let name = iface.to_string();
        let report = Box::new(move |change| {
            let _ = events.try_send(Event::Pressure {
                iface: name.clone(),
                change,
            });
        });
        let guard = ShieldGuard::engage(
            maps,
            &opts.config,
            &layout,
            engine,
            opts.pressure,
            Some(report),
        )
        .with_context(|| format!("engaging the XDP shield on {iface}"))?;
        Ok(Some(guard))
    }

    fn begin_xdp(&mut self, x: XdpEngine<H>, setup: &XdpSetup) -> anyhow::Result<Running<H>> {
        let queues = x.engine.xsk_queues();
        let serving = Serving::Xdp {
            listen: setup.listen,
            iface: setup.iface.clone(),
            queues: queues.iter().map(|q| q.queue).collect(),
            zero_copy: queues.iter().all(|q| q.zero_copy),
            tx: queues.iter().map(|q| q.tx).collect(),
            program: x.how,
        };
        let watch = Some((setup.iface.clone(), x.watch));
        let shield = match self.engage_shield(&x.engine, x.shield, &setup.iface) {
            Ok(s) => s,
            Err(e) => {
                let _ = x.engine.shutdown(VarInt::from_u32(0), b"server failed");
                return Err(e);
            }
        };
        self.begin(x.engine, serving, x.program, watch, shield)
    }

    /// Reports `serving`, publishes the engine's handle and starts its metrics endpoint.
    fn begin(
        &mut self,
        engine: Engine<H>,
        serving: Serving,
        program: Option<CountersReader>,
        watch: Option<(String, ProgramWatch)>,
        shield: Option<ShieldGuard>,
    ) -> anyhow::Result<Running<H>> {
        let iface = match &serving {
            Serving::Xdp { iface, .. } => Some(iface.clone()),
            Serving::Udp { .. } => None,
        };
        self.report(Event::Serving(serving));
        if let (Some(guard), Some(opts), Some(iface)) = (&shield, &self.shield, &iface) {
            self.report(Event::Shield {
                iface: iface.clone(),
                config: opts.config.clone(),
                monitor: guard.pressure().is_some(),
            });
        }
        self.set_current(Some(engine.handle()));
        let metrics = match self.metrics {
            None => None,
            Some(addr) => {
                let mut collector = EngineCollector::new(
                    if iface.is_some() { "xdp" } else { "udp" },
                    iface,
                    engine.handle().metrics(),
                    engine.xsk_queues().to_vec(),
                    program,
                );
                if let Some(view) = shield.as_ref().and_then(ShieldGuard::pressure) {
                    collector = collector.with_pressure(view);
                }
                let mut registry = prometheus_client::registry::Registry::default();
                registry.register_collector(Box::new(collector));
                let started = match self.metrics_listener.take() {
                    Some(listener) => Ok(listener),
                    // An engine after the first (a fallback): the first's endpoint is gone.
                    None => bind_metrics(addr),
                }
                .and_then(|l| MetricsServer::start_on(l, registry, self.metrics_limits));
                match started {
                    Ok(server) => {
                        self.report(Event::Metrics(server.local_addr()));
                        Some(server)
                    }
                    Err(e) => {
                        self.set_current(None);
                        let _ = engine.shutdown(VarInt::from_u32(0), b"server failed");
                        return Err(e.into());
                    }
                }
            }
        };
        Ok(Running {
            engine,
            watch,
            metrics,
            shield,
        })
    }

    /// Supervises `running` and its fallbacks until the server ends.
    fn run(mut self, mut running: Running<H>) -> anyhow::Result<StopReason> {
        loop {
            let reason = self.watch(&mut running);
            let Running {
                engine,
                metrics,
                shield,
                ..
            } = running;
            drop(metrics);
            let queues = engine.xsk_queues().iter().map(|q| q.snapshot()).collect();
            self.report(Event::Stopping {
                reason: reason.clone(),
                queues,
            });
            let handle = engine.handle();
            self.set_current(None);
            let stopped = match &reason {
                StopReason::Requested => engine
                    .shutdown(VarInt::from_u32(0), b"server shutting down")
                    .map(drop),
                StopReason::WorkersFailed(_) => {
                    // The failed workers' error is the news, not the join's.
                    let _ = engine.shutdown(VarInt::from_u32(0), b"server failed");
                    Ok(())
                }
                StopReason::ProgramLost { .. } => engine
                    .shutdown(VarInt::from_u32(0), b"server lost its XDP program")
                    .map(drop),
            };
            // After the workers: the shield guarded them to the end.
            drop(shield);
            stopped.context("stopping the workers")?;
            self.report(Event::Stopped {
                counters: handle.counters(),
            });
            if !matches!(reason, StopReason::ProgramLost { .. })
                || self.fallback == Fallback::Never
                || self.stop.is_stopped()
            {
                // (A stop asked for while the lost program's engine stopped: no fallback.)
                return Ok(reason);
            }
            self.report(Event::FallingBack {
                listen: self.listen,
            });
            running = self.start_udp()?;
        }
    }

    /// Waits until the engine must stop, and says why.
    fn watch(&mut self, running: &mut Running<H>) -> StopReason {
        let handle = running.engine.handle();
        let mut trim = self.trim_after.map(xdp_quic::memory::TrimPolicy::new);
        // Workers whose callback panic was reported (kept serving).
        let mut panicked = vec![false; handle.workers()];
        loop {
            if self.stop.wait(self.watch_every) {
                return StopReason::Requested;
            }
            let mut failed = handle.failed_workers();
            for (w, c) in handle.counters().iter().enumerate() {
                if c.handler_panics == 0 || failed.iter().any(|(f, _)| *f == w) {
                    continue;
                }
                if !self.keep_serving_after_handler_panic {
                    failed.push((
                        w,
                        "an application callback panicked (the worker closed its connections \
                         and ends)"
                            .into(),
                    ));
                } else if let Some(seen @ false) = panicked.get_mut(w) {
                    // Seen once it is sent (a full queue of events: the next look tries again).
                    *seen = self
                        .events
                        .try_send(Event::HandlerPanicked { worker: w })
                        .is_ok();
                }
            }
            if !failed.is_empty() {
                failed.sort_by_key(|(w, _)| *w);
                return StopReason::WorkersFailed(failed);
            }
            if let Some(trim) = trim.as_mut() {
                let t = handle.total();
                if trim.observe(t.conns_accepted + t.conns_opened + t.conns_closed) {
                    xdp_quic::memory::release_free_memory();
                }
            }
            let Some((iface, watch)) = running.watch.as_mut() else {
                continue;
            };
            match watch.check() {
                Ok(events) => {
                    for e in events {
                        match e {
                            WatchEvent::Down | WatchEvent::Up => self.report(Event::Link {
                                iface: iface.clone(),
                                change: e,
                            }),
                            WatchEvent::Detached { .. } | WatchEvent::InterfaceGone => {
                                return StopReason::ProgramLost {
                                    iface: iface.clone(),
                                    why: e,
                                }
                            }
                        }
                    }
                }
                Err(error) => self.report(Event::WatchFailed {
                    iface: iface.clone(),
                    error,
                }),
            }
        }
    }
}
