//! The engine's configuration: [`EngineBuilder`], its defaults, and [`EngineBuilder::build`],
//! which makes the workers and the mesh between them without starting threads (sans-IO).

use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::bounded;
use quinn_proto::{ClientConfig, EndpointConfig, ServerConfig, TransportConfig, VarInt};
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};

use super::{EngineError, EngineHandle, Mesh};
use crate::cid::{CidLayout, ShardCidGenerator};
use crate::handler::Handler;
use crate::metrics::WorkerMetrics;
use crate::waker::Waker;
use crate::worker::{Worker, WorkerParts};

/// When a server makes clients prove their address with a Retry round trip first.
///
/// A client whose address is not validated costs the server a connection's state until the
/// handshake completes or times out, and may be spoofed: a flood of Initials from forged
/// addresses would otherwise fill memory. Under Retry the server keeps no state until the
/// client echoes the token, which a spoofer cannot receive. Either way quinn-proto holds
/// every unvalidated path to the 3x anti-amplification limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryPolicy {
    /// Never (one round trip less; pending handshakes are then bounded only by
    /// [`EngineBuilder::max_connections`], which counts them).
    Never,
    /// Always.
    Always,
    /// When at least this many handshakes are pending on the worker: the flood defence, and
    /// the default ([`RetryPolicy::DEFAULT_PENDING_HANDSHAKES`]). Attempts awaiting a
    /// deferred decision ([`Decision::Defer`](crate::Decision::Defer)) count as pending.
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

/// The longest `drain_timeout` and `min_reset_interval` taken: a day.
const MAX_DURATION: Duration = Duration::from_secs(24 * 3600);

/// Builds an engine: N workers, one endpoint shard each.
#[derive(Clone)]
pub struct EngineBuilder {
    pub(crate) workers: usize,
    pub(crate) cid_len: usize,
    pub(crate) config_rotation: u8,
    pub(crate) server_id: Vec<u8>,
    pub(crate) server: Option<ServerConfig>,
    pub(crate) client: Option<ClientConfig>,
    pub(crate) transport: Option<Arc<TransportConfig>>,
    pub(crate) congestion: Option<crate::congestion::AnyFactory>,
    /// The controller behind the gate of `transport`, fixed at build.
    pub(crate) choice: crate::congestion::Choice,
    pub(crate) retry: RetryPolicy,
    pub(crate) cpus: Option<Vec<usize>>,
    pub(crate) handover_capacity: usize,
    pub(crate) drain_timeout: Duration,
    pub(crate) rx_batch: usize,
    pub(crate) rx_chunks: usize,
    pub(crate) reset_key: Option<[u8; 64]>,
    pub(crate) min_reset_interval: Duration,
    pub(crate) max_connections: usize,
    pub(crate) seed: Option<u64>,
    pub(crate) command_capacity: usize,
    pub(crate) cid_lifetime: Option<Duration>,
}

/// Connections one worker holds at most by default ([`EngineBuilder::max_connections`]).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// The connection-level receive window of the default transport: what one connection can
/// make its worker buffer of unread stream data (quinn-proto's own default is unlimited).
pub const DEFAULT_RECEIVE_WINDOW: u32 = 16 << 20;

/// The transport of `tls::server_config` and `tls::client_config`, and of the engine when
/// told a controller but no transport: quinn-proto's defaults (100 concurrent streams each
/// way, 1.25 MB stream windows, 10 MB send window, 30 s idle timeout) with the connection's
/// receive window bounded to [`DEFAULT_RECEIVE_WINDOW`], and Cubic behind the close gate
/// ([`crate::congestion`]).
pub fn default_transport() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.receive_window(VarInt::from_u32(DEFAULT_RECEIVE_WINDOW));
    t.congestion_controller_factory(crate::congestion::GatedFactory::cubic());
    t
}

/// The most slots of a worker's command or hand-over queue (allocated at the build).
const MAX_QUEUE: usize = 1 << 20;

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
            congestion: None,
            choice: Default::default(),
            retry: RetryPolicy::default(),
            cpus: None,
            handover_capacity: 4096,
            drain_timeout: Duration::from_secs(3),
            rx_batch: 64,
            rx_chunks: crate::backend::rx::DEFAULT_CHUNK_LIMIT,
            reset_key: None,
            min_reset_interval: Duration::from_millis(20),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            seed: None,
            command_capacity: 4096,
            cid_lifetime: None,
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

    /// Open connections ([`crate::Ctx::connect`]) with this configuration.
    pub fn client(mut self, config: ClientConfig) -> Self {
        self.client = Some(config);
        self
    }

    /// Transport parameters for both sides (stream limits, windows, idle timeout...),
    /// replacing the transport of the server and client configurations given.
    ///
    /// The congestion controller is the one [`EngineBuilder::congestion`] names (Cubic by
    /// default) behind the close gate, so that a closing connection's CONNECTION_CLOSE is
    /// never held back by a full window ([`crate::congestion`]): one set in `config` is
    /// replaced, since quinn-proto gives no way to read it back and wrap it.
    ///
    /// Without this call the engine keeps the transport of the configurations as they come:
    /// `tls::server_config` and `tls::client_config` carry [`default_transport`]; a
    /// configuration built by hand carries whatever it was given (quinn-proto's defaults
    /// leave the receive window unbounded: see the README's limits).
    pub fn transport(mut self, mut config: TransportConfig) -> Self {
        // A choice of its own: not the one of an earlier transport this builder (or a clone
        // of it) was given.
        self.choice = Default::default();
        config.congestion_controller_factory(crate::congestion::GatedFactory::chosen(
            self.choice.clone(),
        ));
        self.transport = Some(Arc::new(config));
        self
    }

    /// The congestion controller of the engine's connections (default: Cubic), behind the
    /// close gate; e.g. `Arc::new(quinn_proto::congestion::BbrConfig::default())` or
    /// `NewRenoConfig`. Applies the transport of [`EngineBuilder::transport`], or
    /// [`default_transport`] when none was given.
    pub fn congestion(mut self, factory: crate::congestion::AnyFactory) -> Self {
        self.congestion = Some(factory);
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

    /// The CID settings given to [`EngineBuilder::connection_ids`] (or the defaults): length,
    /// server id, config rotation. For what must agree with the engine's CIDs (the XDP
    /// shield's layout).
    pub fn connection_id_settings(&self) -> (usize, &[u8], u8) {
        (self.cid_len, &self.server_id, self.config_rotation)
    }

    /// The CID layout of an engine of `workers` workers built from this (what an XDP
    /// shield's layout must be for the engine's short headers to pass it).
    pub fn cid_layout(&self, workers: usize) -> Result<CidLayout, EngineError> {
        Ok(CidLayout::new(
            self.cid_len,
            self.config_rotation,
            &self.server_id,
            workers,
        )?)
    }

    /// Datagrams each worker can have waiting from other workers (default 4096, at most
    /// 2^20: the slots are allocated at the build).
    pub fn handover_capacity(mut self, n: usize) -> Self {
        self.handover_capacity = n;
        self
    }

    /// Receive chunks (of 16 KiB, [`crate::backend::rx::POOL_CHUNK`]) each worker keeps at
    /// most (default [`crate::backend::rx::DEFAULT_CHUNK_LIMIT`], 1,024: 16 MiB; at most
    /// 2^20). Datagrams are received into shared chunks, and a datagram quinn-proto or the
    /// application keeps holds its whole chunk; while every chunk is held at this limit,
    /// datagrams get buffers of their own size instead (an allocation each, counted in
    /// `rx_own_buffers`). This bounds what peers that leave one small out-of-order frame per
    /// chunk can make a worker hold (see [`crate::backend::rx`]).
    pub fn receive_chunks(mut self, n: usize) -> Self {
        self.rx_chunks = n;
        self
    }

    /// Work items ([`crate::EngineHandle::post`]) each worker queues at most (default 4096,
    /// at most 2^20): past it, posting fails with [`crate::engine::PostError::Full`] (or
    /// waits, with `post_wait`).
    pub fn command_capacity(mut self, n: usize) -> Self {
        self.command_capacity = n;
        self
    }

    /// How long shutdown waits for connections to drain (default 3 s, at most a day).
    pub fn drain_timeout(mut self, d: Duration) -> Self {
        self.drain_timeout = d;
        self
    }

    /// The shortest time between two stateless resets one worker sends (default 20 ms, so at
    /// most 50 per second per worker). Datagrams with unknown CIDs beyond that rate are
    /// dropped before any reset token is computed: a flood of them costs a header parse and
    /// a hash lookup each, and cannot turn the server into a reflector. At most a day.
    pub fn min_reset_interval(mut self, d: Duration) -> Self {
        self.min_reset_interval = d;
        self
    }

    /// Connections one worker accepts at most (default [`DEFAULT_MAX_CONNECTIONS`]); past it,
    /// new connections from peers are refused (CONNECTION_REFUSED, counted in
    /// `conns_refused`) until some close. Connections the application opens
    /// ([`crate::Ctx::connect`]) are not refused, but count towards it. With the default
    /// transport an idle connection costs about 24 KiB, and a
    /// connection whose peer never reads at most its receive and send windows (16 + 10 MB)
    /// plus what the application buffers: size this bound to the memory the host can give.
    pub fn max_connections(mut self, n: usize) -> Self {
        self.max_connections = n;
        self
    }

    /// Retires every connection ID a worker issued and issues a fresh one after `lifetime`
    /// (default: never). Rotation makes a long connection harder to follow across its
    /// paths by on-path observers; the new CIDs name the same worker.
    pub fn cid_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.cid_lifetime = lifetime;
        self
    }

    /// Draws every random choice of the engine and of quinn-proto from `seed`: the
    /// stateless-reset key (unless [`EngineBuilder::reset_key`] sets one), the random part
    /// of CIDs, and each endpoint's generator (packet number skips, path challenges,
    /// client-chosen CIDs). With the in-memory network and its virtual clock a run then
    /// replays exactly (TLS keys stay random, but an Ed25519 certificate keeps every
    /// handshake the same size: `tls::Identity::self_signed_ed25519`). For simulations
    /// only: a server's CIDs become predictable.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The stateless-reset key (default random). Hosts behind one balancer share it.
    pub fn reset_key(mut self, key: [u8; 64]) -> Self {
        self.reset_key = Some(key);
        self
    }

    /// Refuses what [`EngineBuilder::build`] would, for `workers` workers, without building
    /// anything: the engines' `start_*` call it before they bind a socket or touch the XDP
    /// socket map, so that a bad setting changes nothing. It also refuses a CPU list of
    /// [`EngineBuilder::pin_cpus`] that is empty or names a CPU this process may not run on
    /// (a worker would run unpinned, its memory away from the CPU meant for it). Returns the
    /// engine's CID layout.
    pub(crate) fn check(&self, workers: usize) -> Result<CidLayout, EngineError> {
        let layout = self.cid_layout(workers)?;
        if self.server.is_none() && self.client.is_none() {
            return Err(EngineError::Config(
                "neither a server nor a client configuration was given".into(),
            ));
        }
        // Each queue's slots are allocated whole at the build, per worker.
        for (n, name) in [
            (self.command_capacity, "command capacity"),
            (self.handover_capacity, "handover capacity"),
            (self.rx_chunks, "receive chunk limit"),
        ] {
            if !(1..=MAX_QUEUE).contains(&n) {
                return Err(EngineError::Config(format!(
                    "{name} must be between 1 and {MAX_QUEUE}, got {n}"
                )));
            }
        }
        // Both are added to instants: beyond a day they would only serve to overflow one
        // (a panic in quinn-proto at the second unknown-CID packet, or at shutdown).
        for (d, name) in [
            (self.drain_timeout, "drain_timeout"),
            (self.min_reset_interval, "min_reset_interval"),
        ] {
            if d > MAX_DURATION {
                return Err(EngineError::Config(format!(
                    "{name} must be at most {MAX_DURATION:?} (not {d:?})"
                )));
            }
        }
        if self.max_connections == 0 {
            return Err(EngineError::Config(
                "max_connections must be at least 1".into(),
            ));
        }
        if let Some(cpus) = &self.cpus {
            if cpus.is_empty() {
                return Err(EngineError::Config("pin_cpus with no CPU".into()));
            }
            let allowed = crate::cpu::allowed()?;
            if let Some(cpu) = cpus.iter().find(|c| !allowed.contains(c)) {
                return Err(EngineError::Config(format!(
                    "CPU {cpu} is not one this process may run on (its CPUs: {})",
                    crate::cpu::list(&allowed)
                )));
            }
        }
        Ok(layout)
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
        let layout = Arc::new(self.check(n)?);
        // One generator for everything random the engine chooses: seeded, or from entropy.
        let mut rng = match self.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_entropy(),
        };
        let key = self.reset_key.unwrap_or_else(|| {
            let mut k = [0u8; 64];
            rng.fill_bytes(&mut k);
            k
        });
        let reset_key: Arc<dyn quinn_proto::crypto::HmacKey> =
            Arc::new(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key));
        // The engine's transport, when it was given one (or a controller): it replaces the
        // configurations'.
        if self.transport.is_some() {
            // The transport is shared with this builder's clones (quinn-proto's cannot be
            // copied): the first engine built with it fixes its controller, and a clone that
            // asks for another one, or for none after one was named, is refused rather than
            // given the other's (or changing the other's connections).
            let fixed = self.choice.get_or_init(|| match &self.congestion {
                Some(cc) => (cc.clone(), true),
                None => (
                    Arc::new(quinn_proto::congestion::CubicConfig::default()),
                    false,
                ),
            });
            let same = match (&self.congestion, fixed) {
                (Some(cc), (f, true)) => Arc::ptr_eq(cc, f),
                (None, (_, false)) => true,
                _ => false,
            };
            if !same {
                return Err(EngineError::Config(
                    "this builder's transport was given to an engine built from a clone of it \
                     with another congestion controller: call `transport` again on this one"
                        .into(),
                ));
            }
        }
        let transport = match (self.transport, self.congestion) {
            (None, None) => None,
            (Some(t), _) => Some(t),
            (None, Some(cc)) => {
                let mut t = default_transport();
                t.congestion_controller_factory(crate::congestion::GatedFactory::new(cc));
                Some(Arc::new(t))
            }
        };
        let server = self.server.map(|mut s| {
            if let Some(t) = &transport {
                s.transport_config(t.clone());
            }
            Arc::new(s)
        });
        let client = self.client.map(|mut c| {
            if let Some(t) = &transport {
                c.transport_config(t.clone());
            }
            c
        });

        let mut handover_rx = Vec::with_capacity(n);
        let mut command_rx = Vec::with_capacity(n);
        let mut mesh = Mesh {
            layout: layout.clone(),
            serves: server.is_some(),
            handovers: Vec::with_capacity(n),
            commands: Vec::with_capacity(n),
            stops: Vec::with_capacity(n),
            wakers: Vec::with_capacity(n),
            metrics: Vec::with_capacity(n),
            failures: (0..n).map(|_| std::sync::OnceLock::new()).collect(),
            transport: transport.clone(),
            outgoing: crate::peers::OutgoingPeers::new(n),
            command_rx: Vec::with_capacity(n),
            handover_rx: Vec::with_capacity(n),
            ended: (0..n).map(|_| Default::default()).collect(),
        };
        for _ in 0..n {
            let (tx, rx) = bounded(self.handover_capacity);
            mesh.handovers.push(tx);
            mesh.handover_rx.push(rx.clone());
            handover_rx.push(rx);
            let (tx, rx) = bounded(self.command_capacity);
            mesh.commands.push(tx);
            mesh.stops.push(Default::default());
            mesh.command_rx.push(rx.clone());
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
            let lifetime = self.cid_lifetime;
            let cid_rng = StdRng::from_rng(&mut rng).expect("a StdRng seeds another");
            config.cid_generator(move || {
                Box::new(
                    ShardCidGenerator::with_rng(l.clone(), index, cid_rng.clone())
                        .with_lifetime(lifetime),
                )
            });
            let mut endpoint_seed = [0u8; 32];
            rng.fill_bytes(&mut endpoint_seed);
            let endpoint = quinn_proto::Endpoint::new(
                Arc::new(config),
                server.clone(),
                true,
                self.seed.map(|_| endpoint_seed),
            );
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
                rx_chunks: self.rx_chunks,
                drain_timeout: self.drain_timeout,
                max_connections: self.max_connections,
            }));
        }
        Ok((workers, EngineHandle { mesh }))
    }
}
