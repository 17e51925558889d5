//! Building the workers, running them on threads, and talking to them from other threads.
//!
//! ```text
//! EngineBuilder ──build()──▶ Vec<Worker> + EngineHandle     (sans-IO: drive them yourself)
//!               ──start(backends)/start_udp(addr)──▶ Engine  (one pinned thread per worker)
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{bounded, unbounded, Sender};
use quinn_proto::{ClientConfig, EndpointConfig, ServerConfig, TransportConfig, VarInt};
use rand::RngCore;

use crate::backend::udp::{self, Steering};
use crate::backend::{Backend, Datagram};
use crate::cid::{CidLayout, CidLayoutError, ShardCidGenerator};
use crate::conn::{Conn, ConnId, Ctx};
use crate::handler::Handler;
use crate::metrics::{Counters, WorkerMetrics};
use crate::waker::Waker;
use crate::worker::{Poll, Worker, WorkerParts};

/// When a server makes clients prove their address with a Retry round trip first.
///
/// A client whose address is not validated costs the server a connection's state until the
/// handshake completes or times out, and may be spoofed: a flood of Initials from forged
/// addresses would otherwise fill memory. Under Retry the server keeps no state until the
/// client echoes the token, which a spoofer cannot receive. Either way quinn-proto holds
/// every unvalidated path to the 3x anti-amplification limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryPolicy {
    /// Never (one round trip less; pending handshakes are then unbounded).
    Never,
    /// Always.
    Always,
    /// When at least this many handshakes are pending on the worker: the flood defence, and
    /// the default ([`RetryPolicy::DEFAULT_PENDING_HANDSHAKES`]).
    AbovePendingHandshakes(usize),
}

impl RetryPolicy {
    /// Pending handshakes per worker above which the default policy asks for a Retry.
    pub const DEFAULT_PENDING_HANDSHAKES: usize = 256;
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy::AbovePendingHandshakes(Self::DEFAULT_PENDING_HANDSHAKES)
    }
}

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
    /// Why each worker failed, once it has ([`Worker::fail`]).
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

/// Builds an engine: N workers, one endpoint shard each.
#[derive(Clone)]
pub struct EngineBuilder {
    workers: usize,
    cid_len: usize,
    config_rotation: u8,
    server_id: Vec<u8>,
    server: Option<ServerConfig>,
    client: Option<ClientConfig>,
    transport: Option<Arc<TransportConfig>>,
    retry: RetryPolicy,
    cpus: Option<Vec<usize>>,
    handover_capacity: usize,
    drain_timeout: Duration,
    rx_batch: usize,
    reset_key: Option<[u8; 64]>,
    min_reset_interval: Duration,
    max_connections: usize,
}

/// Connections one worker holds at most by default ([`EngineBuilder::max_connections`]).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// The connection-level receive window of the default transport: what one connection can
/// make its worker buffer of unread stream data (quinn-proto's own default is unlimited).
pub const DEFAULT_RECEIVE_WINDOW: u32 = 16 << 20;

/// The transport the engine uses unless told otherwise: quinn-proto's defaults (100
/// concurrent streams each way, 1.25 MB stream windows, 10 MB send window, 30 s idle
/// timeout) with the connection's receive window bounded to [`DEFAULT_RECEIVE_WINDOW`].
pub fn default_transport() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.receive_window(VarInt::from_u32(DEFAULT_RECEIVE_WINDOW));
    t
}

impl Default for EngineBuilder {
    fn default() -> Self {
        Self {
            workers: 1,
            cid_len: 8,
            config_rotation: 0,
            server_id: Vec::new(),
            server: None,
            client: None,
            transport: None,
            retry: RetryPolicy::default(),
            cpus: None,
            handover_capacity: 4096,
            drain_timeout: Duration::from_secs(3),
            rx_batch: 64,
            reset_key: None,
            min_reset_interval: Duration::from_millis(20),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl EngineBuilder {
    /// Number of workers (threads, endpoint shards). Default 1, at most 256.
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// Accept connections with this configuration (shared by every shard, so Retry tokens
    /// and session tickets are valid on any of them).
    pub fn server(mut self, config: ServerConfig) -> Self {
        self.server = Some(config);
        self
    }

    /// Open connections ([`Ctx::connect`]) with this configuration.
    pub fn client(mut self, config: ClientConfig) -> Self {
        self.client = Some(config);
        self
    }

    /// Transport parameters for both sides (stream limits, windows, idle timeout...).
    ///
    /// The engine sets the congestion controller: quinn-proto's Cubic, wrapped so that a
    /// closing connection's CONNECTION_CLOSE is never held back by a full window (see
    /// [`crate::congestion`]); a controller set in `config` is replaced.
    pub fn transport(mut self, mut config: TransportConfig) -> Self {
        config.congestion_controller_factory(crate::congestion::GatedFactory::cubic());
        self.transport = Some(Arc::new(config));
        self
    }

    /// When to require a Retry round trip. Default: above
    /// [`RetryPolicy::DEFAULT_PENDING_HANDSHAKES`] pending handshakes per worker.
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.retry = policy;
        self
    }

    /// Pin worker `i` to CPU `cpus[i % cpus.len()]`.
    pub fn pin_cpus(mut self, cpus: Vec<usize>) -> Self {
        self.cpus = Some(cpus);
        self
    }

    /// CID length (default 8) and QUIC-LB server id and config rotation (default none, 0).
    pub fn connection_ids(mut self, len: usize, server_id: &[u8], config_rotation: u8) -> Self {
        self.cid_len = len;
        self.server_id = server_id.to_vec();
        self.config_rotation = config_rotation;
        self
    }

    /// Datagrams each worker can have waiting from other workers (default 4096).
    pub fn handover_capacity(mut self, n: usize) -> Self {
        self.handover_capacity = n;
        self
    }

    /// How long shutdown waits for connections to drain (default 3 s).
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }

    /// The shortest time between two stateless resets one worker sends (default 20 ms, so at
    /// most 50 per second per worker). Datagrams with unknown CIDs beyond that rate are
    /// dropped before any reset token is computed: a flood of them costs a header parse and
    /// a hash lookup each, and cannot turn the server into a reflector.
    pub fn min_reset_interval(mut self, d: Duration) -> Self {
        self.min_reset_interval = d;
        self
    }

    /// Connections one worker holds at most (default [`DEFAULT_MAX_CONNECTIONS`]); past it,
    /// new connections are refused (CONNECTION_REFUSED, counted in `conns_refused`) until
    /// some close. With the default transport an idle connection costs about 32 KiB, and a
    /// connection whose peer never reads at most its receive and send windows (16 + 10 MB)
    /// plus what the application buffers: size this bound to the memory the host can give.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// The stateless-reset key (default random). Hosts behind one balancer share it.
    pub fn reset_key(mut self, key: [u8; 64]) -> Self {
        self.reset_key = Some(key);
        self
    }

    /// Builds the workers without starting threads (sans-IO). Drive each with
    /// [`Worker::turn`] on its own backend; `factory(i)` makes worker `i`'s handler.
    pub fn build<H, F>(
        self,
        mut factory: F,
    ) -> Result<(Vec<Worker<H>>, EngineHandle<H>), EngineError>
    where
        H: Handler,
        F: FnMut(usize) -> H,
    {
        let n = self.workers;
        let layout = Arc::new(CidLayout::new(
            self.cid_len,
            self.config_rotation,
            &self.server_id,
            n,
        )?);
        if self.server.is_none() && self.client.is_none() {
            return Err(EngineError::Config(
                "neither a server nor a client configuration was given".into(),
            ));
        }
        if self.handover_capacity == 0 {
            return Err(EngineError::Config(
                "handover capacity must be at least 1".into(),
            ));
        }
        let key = self.reset_key.unwrap_or_else(|| {
            let mut k = [0u8; 64];
            rand::thread_rng().fill_bytes(&mut k);
            k
        });
        let reset_key: Arc<dyn quinn_proto::crypto::HmacKey> =
            Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key));
        if self.max_connections == 0 {
            return Err(EngineError::Config(
                "max_connections must be at least 1".into(),
            ));
        }
        let transport = self.transport.clone().unwrap_or_else(|| {
            let mut t = default_transport();
            t.congestion_controller_factory(crate::congestion::GatedFactory::cubic());
            Arc::new(t)
        });
        let server = self.server.map(|mut s| {
            s.transport_config(transport.clone());
            Arc::new(s)
        });
        let client = self.client.map(|mut c| {
            c.transport_config(transport.clone());
            c
        });

        let mut handover_rx = Vec::with_capacity(n);
        let mut command_rx = Vec::with_capacity(n);
        let mut mesh = Mesh {
            layout: layout.clone(),
            serves: server.is_some(),
            handovers: Vec::with_capacity(n),
            commands: Vec::with_capacity(n),
            wakers: Vec::with_capacity(n),
            metrics: Vec::with_capacity(n),
            failures: (0..n).map(|_| std::sync::OnceLock::new()).collect(),
        };
        for _ in 0..n {
            let (tx, rx) = bounded(self.handover_capacity);
            mesh.handovers.push(tx);
            handover_rx.push(rx);
            let (tx, rx) = unbounded();
            mesh.commands.push(tx);
            command_rx.push(rx);
            mesh.wakers.push(Arc::new(Waker::new()?));
            mesh.metrics.push(Arc::new(WorkerMetrics::default()));
        }
        let mesh = Arc::new(mesh);

        let mut workers = Vec::with_capacity(n);
        for (index, (handovers, commands)) in handover_rx.into_iter().zip(command_rx).enumerate() {
            let mut config = EndpointConfig::new(reset_key.clone());
            config.min_reset_interval(self.min_reset_interval);
            let l = layout.clone();
            config.cid_generator(move || Box::new(ShardCidGenerator::new(l.clone(), index)));
            let endpoint = quinn_proto::Endpoint::new(Arc::new(config), server.clone(), true, None);
            workers.push(Worker::new(WorkerParts {
                index,
                mesh: mesh.clone(),
                endpoint,
                handler: factory(index),
                client: client.clone(),
                retry: self.retry,
                commands,
                handovers,
                rx_batch: self.rx_batch,
                drain_timeout: self.drain_timeout,
                max_connections: self.max_connections,
            }));
        }
        Ok((workers, EngineHandle { mesh }))
    }

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
            threads.push(t);
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

/// Where AF_XDP sockets are registered so the XDP program steers packets to them: the
/// XSKMAP of `xdp-quic attach` (pinned) or of an attachment the process made itself. The
/// control crate implements it; tests may implement it over their own map.
pub trait SocketMap: Send {
    /// Steers RX queue `queue`'s service packets to the AF_XDP socket `fd`.
    fn insert(&mut self, queue: u32, fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()>;
    /// Stops steering queue `queue` (its packets go to the kernel again).
    fn remove(&mut self, queue: u32) -> io::Result<()>;
}

/// How to run the workers over AF_XDP: one worker per queue.
#[derive(Debug, Clone)]
pub struct XdpSetup {
    /// The interface.
    pub iface: String,
    /// The service address: its port is steered; an unspecified IP serves every address.
    pub listen: SocketAddr,
    /// The queues to serve, one worker each (worker i drains `queues[i]`).
    pub queues: Vec<u32>,
    /// The UMEM of each queue.
    pub umem: crate::xsk::umem::UmemConfig,
    /// Entries of each ring.
    pub ring_size: u32,
    pub mode: crate::xsk::socket::BindMode,
    pub poll: crate::backend::xsk::PollMode,
    pub busy_poll: Option<crate::xsk::socket::BusyPoll>,
    /// Check received UDP checksums.
    pub verify_checksum: bool,
}

impl XdpSetup {
    /// Defaults for `iface`, `listen` and `queues`: 4096 frames of 2 KiB per queue (8 MiB),
    /// 2048-entry rings, zero-copy where possible, adaptive polling, checksums verified.
    pub fn new(iface: &str, listen: SocketAddr, queues: Vec<u32>) -> Self {
        Self {
            iface: iface.to_string(),
            listen,
            queues,
            umem: crate::xsk::umem::UmemConfig::default(),
            ring_size: 2048,
            mode: crate::xsk::socket::BindMode::Auto,
            poll: crate::backend::xsk::PollMode::default(),
            busy_poll: None,
            verify_checksum: true,
        }
    }
}

/// The interface index of `name`.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL"))?;
    // SAFETY: passes a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface named {name:?} in this network namespace"),
        ));
    }
    Ok(i)
}

impl EngineBuilder {
    /// Opens one AF_XDP socket per queue of `setup`, registers each in `map`, binds an
    /// ordinary UDP socket to the service port (so the kernel does not answer it with ICMP,
    /// and as a canary: what reaches it missed the XDP path), and starts one worker per queue.
    ///
    /// The engine takes the sockets out of `map` when it is joined. The worker count is the
    /// number of queues.
    pub fn start_xdp<H, F>(
        mut self,
        setup: &XdpSetup,
        mut map: Box<dyn SocketMap>,
        factory: F,
    ) -> Result<Engine<H>, EngineError>
    where
        H: Handler,
        F: FnMut(usize) -> H,
    {
        use crate::backend::xsk::{XskBackend, XskBackendConfig};
        if setup.queues.is_empty() {
            return Err(EngineError::Config("no queue to serve".into()));
        }
        if setup.listen.port() == 0 {
            return Err(EngineError::Config(
                "the AF_XDP backend needs a fixed port".into(),
            ));
        }
        let index = ifindex(&setup.iface)?;
        self.workers = setup.queues.len();
        let canary = canary_socket(setup.listen).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot reserve UDP {} (canary socket): {e}", setup.listen),
            )
        })?;
        let mut backends = Vec::with_capacity(setup.queues.len());
        for &queue in &setup.queues {
            let mut socket = crate::xsk::socket::XskConfig::new(index, queue);
            socket.rx_size = setup.ring_size;
            socket.tx_size = setup.ring_size;
            socket.comp_size = setup.ring_size;
            socket.fill_size = setup.ring_size * 2;
            socket.mode = setup.mode;
            socket.busy_poll = setup.busy_poll;
            let b = XskBackend::open(XskBackendConfig {
                socket,
                umem: setup.umem,
                port: setup.listen.port(),
                poll: setup.poll,
                verify_checksum: setup.verify_checksum,
                // A batch must fit the TX ring, with room to spare for the next one.
                max_segments: (setup.ring_size as usize / 2).clamp(1, 16),
            })
            .map_err(|e| io::Error::new(e.kind(), format!("{} queue {queue}: {e}", setup.iface)))?;
            backends.push(b);
        }
        backends[0].set_canary(canary)?;
        let infos = backends
            .iter()
            .map(|b| b.info().map(Arc::new))
            .collect::<io::Result<Vec<_>>>()?;
        for (b, &q) in backends.iter().zip(&setup.queues) {
            if let Err(e) = map.insert(q, b.fd()) {
                for &done in setup.queues.iter().take_while(|&&d| d != q) {
                    let _ = map.remove(done);
                }
                return Err(e.into());
            }
        }
        tracing::info!(
            iface = %setup.iface,
            queues = ?setup.queues,
            zero_copy = infos.iter().all(|i| i.zero_copy),
            "AF_XDP backend bound"
        );
        let queues = setup.queues.clone();
        let mut engine = match self.start(backends, factory) {
            Ok(e) => e,
            Err(e) => {
                for &q in &queues {
                    let _ = map.remove(q);
                }
                return Err(e);
            }
        };
        engine.xsk = infos;
        engine.on_join = Some(Box::new(move || {
            for &q in &queues {
                if let Err(e) = map.remove(q) {
                    tracing::warn!(queue = q, "cannot unregister the AF_XDP socket: {e}");
                }
            }
        }));
        Ok(engine)
    }
}

/// The ordinary UDP socket that reserves the service port: dual-stack when `listen` is an
/// unspecified address (the service answers on every address, IPv4 and IPv6).
fn canary_socket(listen: SocketAddr) -> io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let addr = if listen.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), listen.port())
    } else {
        listen
    };
    let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() && addr.ip().is_unspecified() {
        s.set_only_v6(false)?;
    }
    s.bind(&addr.into())?;
    Ok(s.into())
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
        if let Err(e) = pin_to_cpu(cpu) {
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
            Poll::Done => return Ok(worker.into_handler()),
            Poll::Continue(deadline) => {
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

fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it (bounds-checked by the libc
    // macro against CPU_SETSIZE); sched_setaffinity reads `size_of` bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cpu index too large",
            ));
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
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

    /// The workers that failed and why ([`Worker::fail`]): a panic outside the application's
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
    handle: EngineHandle<H>,
    threads: Vec<JoinHandle<io::Result<H>>>,
    local_addr: SocketAddr,
    steering: Option<Steering>,
    xsk: Vec<Arc<crate::backend::xsk::XskQueueInfo>>,
    on_join: Option<Box<dyn FnOnce() + Send>>,
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
