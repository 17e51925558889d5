//! [`Endpoint`] and [`Incoming`].

use std::future::{poll_fn, Future, IntoFuture};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::Poll;

use bytes::Bytes;
use quinn_proto::{ClientConfig, ConnectError, ConnectionError, ServerConfig, Side, VarInt};

use super::connection::{ConnRef, Connecting, Connection};
use super::error::RetryError;
use super::shared::{fail_op, lock, register, Attempt, ConnShared, EndpointShared, Op};
use super::{Builder, Keeper};
use crate::{Decision, EngineBuilder};

/// A QUIC endpoint over the engine's workers: accepts connections (a server), opens them (a
/// client), or both. Cheap to clone. The engine shuts down when the last endpoint handle and
/// the last connection handle are gone (in thread-per-core mode: when the endpoint `bind_*`
/// returned and its clones are gone, whatever the workers' own endpoints and connections
/// hold, so keep it for as long as the engine should serve); its workers are then joined
/// on a thread of their own (no task blocks), so what they hold (the sockets, an XDP
/// program attached for the engine's life) is released shortly after, not by the time the
/// last handle's drop returns.
#[derive(Clone)]
#[must_use = "the engine shuts down when the last endpoint handle is gone"]
pub struct Endpoint {
    pub(crate) shared: Arc<EndpointShared>,
    keeper: Arc<Keeper>,
    /// Thread-per-core: the worker this endpoint belongs to.
    worker: Option<usize>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("local_addr", &self.shared.local_addr.get())
            .field("worker", &self.worker)
            .finish()
    }
}

impl Endpoint {
    pub(crate) fn new(
        shared: Arc<EndpointShared>,
        keeper: Arc<Keeper>,
        worker: Option<usize>,
    ) -> Self {
        Self {
            shared,
            keeper,
            worker,
        }
    }

    /// A server on `addr` with `config`, one worker per available CPU over kernel UDP
    /// sockets (SO_REUSEPORT). For AF_XDP, thread-per-core or other settings, see
    /// [`Builder`].
    pub fn server(config: ServerConfig, addr: SocketAddr) -> io::Result<Self> {
        let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
        Builder::new(EngineBuilder::default().workers(workers).server(config))
            .bind_udp(addr)
            .map_err(io::Error::other)
    }

    /// A client endpoint on `addr` (port 0: an ephemeral port), one worker. Set a client
    /// configuration with [`Endpoint::set_default_client_config`] or use
    /// [`Endpoint::connect_with`].
    pub fn client(addr: SocketAddr) -> io::Result<Self> {
        Builder::new(EngineBuilder::default().workers(1))
            .bind_udp(addr)
            .map_err(io::Error::other)
    }

    /// A builder over `engine`'s configuration.
    pub fn builder(engine: EngineBuilder) -> Builder {
        Builder::new(engine)
    }

    /// Waits for the next connection attempt; `None` once the endpoint is closed (or, in
    /// thread-per-core mode, on the endpoint `bind_*` returned: each worker's endpoint
    /// accepts).
    pub fn accept(&self) -> impl Future<Output = Option<Incoming>> + Send + '_ {
        poll_fn(move |cx| {
            let ep = &self.shared;
            if ep.is_closing() || (self.worker.is_none() && ep.per_core) {
                return Poll::Ready(None);
            }
            let mut q = lock(ep.accept_queue(self.worker.unwrap_or(0)));
            if let Some(attempt) = q.next() {
                return Poll::Ready(Some(Incoming {
                    attempt,
                    endpoint: self.clone(),
                    decided: false,
                }));
            }
            register(&mut q.waiters, cx.waker());
            drop(q);
            // Closed meanwhile: `close` wakes the waiters after setting the flag.
            if ep.is_closing() {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
    }

    /// The configuration [`Endpoint::connect`] uses.
    pub fn set_default_client_config(&self, config: ClientConfig) {
        *lock(&self.shared.default_client) = Some(config);
    }

    /// Replaces the server configuration for connections accepted from now on (a new
    /// certificate, say): every [`Incoming`] accepted after this returns uses it, even one
    /// that arrived before; `None` refuses new connections. The workers apply it as they next
    /// drain their queues (this never waits for them).
    ///
    /// Retry tokens are sealed with the configuration's token key, and
    /// `ServerConfig::with_crypto` (so `tls::server_config`) makes a new random one each
    /// time: a client retried just before the change echoes a token the new configuration
    /// cannot read, counts as unvalidated, and under a Retry policy is retried again, which
    /// RFC 9000 has it ignore (its handshake times out). Give both configurations one key
    /// (`ServerConfig::token_key`) to keep tokens valid across the change.
    pub fn set_server_config(&self, config: Option<ServerConfig>) {
        let Some(handle) = self.shared.handle.get() else {
            return;
        };
        match config {
            Some(c) => {
                // Through the workers' inboxes, as every operation: never waits (a task of
                // thread-per-core mode runs on a worker, whose queue only it empties). A
                // worker applies its inbox in order, so an accept decided after this call
                // (queued behind) uses the new configuration.
                let c = handle.server_config(c);
                for w in 0..self.shared.inboxes.len() {
                    if self.shared.push(w, Op::SetServerConfig(c.clone())).is_err() {
                        tracing::warn!("cannot set the server configuration: worker {w} has ended");
                    }
                }
                // Only now: an attempt a worker lets through from here on is decided behind
                // the new configuration.
                self.shared.refusing.store(false, Ordering::Release);
            }
            None => self.shared.refusing.store(true, Ordering::Release),
        }
    }

    /// Opens a connection to `addr` with the default client configuration.
    pub fn connect(&self, addr: SocketAddr, server_name: &str) -> Result<Connecting, ConnectError> {
        let config = lock(&self.shared.default_client)
            .clone()
            .ok_or(ConnectError::NoDefaultClientConfig)?;
        self.connect_with(config, addr, server_name)
    }

    /// Opens a connection to `addr` with `config`. In thread-per-core mode, from this
    /// endpoint's worker; else from the workers in turn.
    pub fn connect_with(
        &self,
        config: ClientConfig,
        addr: SocketAddr,
        server_name: &str,
    ) -> Result<Connecting, ConnectError> {
        let ep = &self.shared;
        if ep.is_closing() {
            return Err(ConnectError::EndpointStopping);
        }
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(ConnectError::InvalidRemoteAddress(addr));
        }
        if rustls::pki_types::ServerName::try_from(server_name).is_err() {
            return Err(ConnectError::InvalidServerName(server_name.into()));
        }
        let worker = self
            .worker
            .unwrap_or_else(|| ep.next_worker.fetch_add(1, Ordering::Relaxed) % ep.inboxes.len());
        let shared = ConnShared::new(worker, Side::Client, ep.clone());
        shared.lock().info.remote = Some(addr);
        let conn = ConnRef::first(shared.clone(), self.keeper.clone());
        // Open from now on, as in quinn: a `wait_idle` waits for it.
        shared.count();
        let op = Op::Connect {
            conn: shared,
            config,
            remote: addr,
            server_name: server_name.into(),
        };
        if let Err(op) = ep.push(worker, op) {
            if let Some(op) = op {
                fail_op(op);
            }
            return Err(ConnectError::EndpointStopping);
        }
        Ok(Connecting::new(conn))
    }

    /// The local address of the workers' sockets.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.shared
            .local_addr
            .get()
            .copied()
            .ok_or_else(|| io::Error::other("the endpoint is not bound"))
    }

    /// Connections alive.
    pub fn open_connections(&self) -> usize {
        self.shared.open.load(Ordering::Acquire)
    }

    /// Closes every connection with `error_code` and `reason` and accepts no more (every
    /// worker's, whichever endpoint of thread-per-core mode it is called on).
    pub fn close(&self, error_code: VarInt, reason: &[u8]) {
        let ep = &self.shared;
        ep.closing.store(true, Ordering::Release);
        let reason = Bytes::copy_from_slice(reason);
        for w in 0..ep.inboxes.len() {
            let _ = ep.push(w, Op::CloseAll(error_code, reason.clone()));
        }
        for q in &ep.accepts {
            let waiters = std::mem::take(&mut lock(q).waiters);
            for w in waiters {
                w.wake();
            }
        }
    }

    /// Waits until no connection is alive (after [`Endpoint::close`], say: they have closed
    /// and drained, within the engine's drain timeout).
    pub async fn wait_idle(&self) {
        loop {
            // Enabled before the check: an end between the two still wakes it.
            let idle = self.shared.idle.notified();
            tokio::pin!(idle);
            idle.as_mut().enable();
            if self.open_connections() == 0 {
                return;
            }
            idle.await;
        }
    }

    /// The engine's counters, summed over the workers.
    pub fn counters(&self) -> crate::Counters {
        self.shared
            .handle
            .get()
            .map(|h| h.total())
            .unwrap_or_default()
    }
}

/// A connection attempt: accept it (`.await` it, or [`Incoming::accept`]), refuse it, ask for
/// a Retry, or ignore it. Dropped undecided, it is refused, as in quinn.
pub struct Incoming {
    attempt: Attempt,
    endpoint: Endpoint,
    decided: bool,
}

impl std::fmt::Debug for Incoming {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Incoming")
            .field("remote", &self.attempt.remote)
            .field("client_hello", &self.attempt.hello)
            .finish()
    }
}

impl Incoming {
    fn decide(&mut self, decision: Decision, conn: Option<Arc<ConnShared>>) {
        self.decided = true;
        if let Some(c) = &conn {
            // Open from now on, as in quinn: a `wait_idle` waits for it.
            c.count();
        }
        let op = Op::Decide(self.attempt.id, decision, conn);
        // A worker that ended has dropped the attempt already; the connection it would have
        // made fails, so that its `Connecting` resolves.
        if let Err(Some(Op::Decide(_, _, Some(conn)))) =
            self.endpoint.shared.push(self.attempt.worker, op)
        {
            super::driver::fail(&conn, ConnectionError::LocallyClosed);
        }
    }

    /// Accepts it with the endpoint's server configuration.
    pub fn accept(self) -> Result<Connecting, ConnectionError> {
        self.accept_as(Decision::Accept)
    }

    /// Accepts it with `server_config` (another certificate, other ALPNs or transport).
    pub fn accept_with(
        self,
        server_config: Arc<ServerConfig>,
    ) -> Result<Connecting, ConnectionError> {
        self.accept_as(Decision::AcceptWith(server_config))
    }

    fn accept_as(mut self, decision: Decision) -> Result<Connecting, ConnectionError> {
        let ep = self.endpoint.shared.clone();
        let shared = ConnShared::new(self.attempt.worker, Side::Server, ep);
        {
            let mut st = shared.lock();
            st.info.remote = Some(self.attempt.remote);
            st.info.local_ip = self.attempt.local_ip;
        }
        let conn = ConnRef::first(shared.clone(), self.endpoint.keeper.clone());
        self.decide(decision, Some(shared));
        Ok(Connecting::new(conn))
    }

    /// Refuses it: the client hears CONNECTION_REFUSED.
    pub fn refuse(mut self) {
        self.decide(Decision::Refuse, None);
    }

    /// Asks the client to prove its address with a Retry first; errs (giving the attempt
    /// back) if it did already.
    pub fn retry(mut self) -> Result<(), RetryError> {
        if self.attempt.validated {
            return Err(RetryError(Box::new(self)));
        }
        self.decide(Decision::Retry, None);
        Ok(())
    }

    /// Drops it without an answer.
    pub fn ignore(mut self) {
        self.decide(Decision::Ignore, None);
    }

    /// Where it comes from.
    pub fn remote_address(&self) -> SocketAddr {
        self.attempt.remote
    }

    /// The local address it was sent to, when the backend knows it.
    pub fn local_ip(&self) -> Option<IpAddr> {
        self.attempt.local_ip
    }

    /// Whether the client proved its address (it echoed a Retry token).
    pub fn remote_address_validated(&self) -> bool {
        self.attempt.validated
    }

    /// Whether [`Incoming::retry`] would send a Retry.
    pub fn may_retry(&self) -> bool {
        !self.attempt.validated
    }

    /// What the client's ClientHello says, peeked from its Initial (not in quinn: there it
    /// is known after the handshake only), or why it could not be read from that packet:
    /// as [`crate::Incoming::client_hello`], whose caveats hold (an error is not "no
    /// name").
    pub fn client_hello(
        &self,
    ) -> Result<&crate::packet::client_hello::ClientHelloInfo, crate::packet::client_hello::PeekError>
    {
        self.attempt.hello.as_ref().map_err(|e| *e)
    }

    /// The server name the client asks for (SNI), canonical; `None` when it names none, and
    /// also when its ClientHello could not be read ([`Incoming::client_hello`] tells the two
    /// apart).
    pub fn server_name(&self) -> Option<&str> {
        self.client_hello().ok()?.server_name.as_deref()
    }

    /// The ALPN protocols the client offers (empty also when its ClientHello could not be
    /// read, as [`Incoming::server_name`]).
    pub fn alpn(&self) -> &[Vec<u8>] {
        self.client_hello().map_or(&[], |h| &h.alpn)
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        if !self.decided {
            self.decide(Decision::Refuse, None);
        }
    }
}

impl IntoFuture for Incoming {
    type Output = Result<Connection, ConnectionError>;
    type IntoFuture = Pin<Box<dyn Future<Output = Self::Output> + Send>>;

    /// Accepts it and waits for the handshake.
    fn into_future(self) -> Self::IntoFuture {
        let connecting = self.accept();
        Box::pin(async move { connecting?.await })
    }
}
