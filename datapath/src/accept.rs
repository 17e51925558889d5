//! The accept decision: what the application says about a new connection attempt, before the
//! server keeps any state for it ([`crate::Handler::incoming`]).

use std::cell::OnceCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quinn_proto::Incoming as ProtoIncoming;

use crate::packet::client_hello::{self, ClientHelloInfo, PeekError};
use crate::packet::frame::L2;

/// The most attempts one worker holds awaiting a deferred decision ([`Decision::Defer`]);
/// beyond it, the hook's `Defer` refuses.
pub const MAX_DEFERRED: usize = 256;
/// How long an attempt awaits a deferred decision before the worker ignores it.
pub const DEFER_TIMEOUT: Duration = Duration::from_secs(5);

/// Names a connection attempt, unique in its engine, for a decision taken later ([`Decision::Defer`],
/// [`crate::Ctx::decide`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AttemptId(pub(crate) u64);

/// A new connection attempt, as the application's accept hook sees it.
///
/// The server name and ALPN protocols come from a peek at the client's ClientHello in its
/// Initial packet (decrypted with the public Initial keys, on first use: see
/// [`crate::packet::client_hello`]): claims of an unauthenticated peer, good for choosing
/// what to do; the handshake itself still checks them. The peek may fail (a ClientHello
/// whose name comes in the client's next datagram, as large post-quantum key shares make
/// it): [`Incoming::client_hello`] tells a name not known from no name, which a policy that
/// refuses names must do.
pub struct Incoming<'a> {
    pub(crate) id: AttemptId,
    pub(crate) remote: SocketAddr,
    pub(crate) local_ip: Option<IpAddr>,
    pub(crate) validated: bool,
    pub(crate) datagram: &'a [u8],
    pub(crate) hello: OnceCell<Result<ClientHelloInfo, PeekError>>,
}

impl Incoming<'_> {
    /// This attempt's name on its worker: what [`crate::Ctx::decide`] takes after the hook
    /// returned [`Decision::Defer`].
    pub fn id(&self) -> AttemptId {
        self.id
    }

    /// Where the attempt comes from (unvalidated unless [`Incoming::address_validated`]).
    pub fn remote_address(&self) -> SocketAddr {
        self.remote
    }

    /// The local address it was sent to, when the backend knows it.
    pub fn local_ip(&self) -> Option<IpAddr> {
        self.local_ip
    }

    /// Whether the client proved its address (it echoed a Retry token): it receives at that
    /// address.
    pub fn address_validated(&self) -> bool {
        self.validated
    }

    /// What the client's ClientHello says (its server name made canonical: lower case, no
    /// trailing dot, `None` for an IP address: see [`ClientHelloInfo::server_name`]), or why it could not be read from this packet
    /// ([`PeekError::Incomplete`]: it goes on in the client's next datagram). An error is
    /// not "no name": a policy that refuses names (a deny-list) decides what an error
    /// means, most safely to refuse.
    pub fn client_hello(&self) -> Result<&ClientHelloInfo, PeekError> {
        self.hello
            .get_or_init(|| client_hello::peek(self.datagram))
            .as_ref()
            .map_err(|e| *e)
    }

    /// The server name the client asks for (SNI), canonical as in
    /// [`Incoming::client_hello`]; `None` when it names none, and also when its ClientHello
    /// could not be read ([`Incoming::client_hello`] tells the two apart).
    pub fn server_name(&self) -> Option<&str> {
        self.client_hello().ok()?.server_name.as_deref()
    }

    /// The ALPN protocols the client offers, in its order of preference (empty when it
    /// offers none, and also when its ClientHello could not be read: see
    /// [`Incoming::client_hello`]).
    pub fn alpn(&self) -> &[Vec<u8>] {
        self.client_hello().map_or(&[], |h| &h.alpn)
    }
}

/// What to do with a new connection attempt.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Accept it with the engine's server configuration.
    Accept,
    /// Accept it with this configuration (another certificate, other ALPNs or transport
    /// parameters: e.g. chosen by [`Incoming::server_name`]). Taken as it is: the engine's
    /// transport ([`crate::EngineBuilder::transport`]) is not applied to it, so give it
    /// [`crate::engine::default_transport`] (or your own) for the README's receive-window
    /// bounds and the close gate ([`crate::congestion`]); `tls::server_config` does.
    AcceptWith(Arc<quinn_proto::ServerConfig>),
    /// Refuse it: the client hears CONNECTION_REFUSED at once.
    Refuse,
    /// Ask the client to prove its address with a Retry round trip first (an attempt whose
    /// address is validated already is accepted: a client is retried once).
    Retry,
    /// Drop it without an answer (the client times out).
    Ignore,
    /// Decide later, off the hook, with [`crate::Ctx::decide`] and [`Incoming::id`] (e.g.
    /// after asking another task). The worker holds the attempt (at most [`MAX_DEFERRED`]
    /// per worker: beyond, this refuses) and ignores it if no decision comes within
    /// [`DEFER_TIMEOUT`]. Packets the client repeats meanwhile wait with it, within
    /// quinn-proto's `ServerConfig::incoming_buffer_size`.
    Defer,
}

/// Attempts awaiting a deferred decision: at most [`MAX_DEFERRED`], so a linear search is
/// cheap, and the table never holds more than that, whatever order decisions come in.
pub(crate) struct Deferred {
    next: u64,
    held: Vec<(AttemptId, Instant, Held)>,
}

/// An attempt held for a decision.
pub(crate) struct Held {
    pub incoming: ProtoIncoming,
    pub link: Option<L2>,
}

impl Deferred {
    /// Attempts held.
    pub fn len(&self) -> usize {
        self.held.len()
    }

    /// The table of worker `worker`: its ids carry the worker's index in their top 16 bits,
    /// so that an id decided on another worker names none of that one's attempts (`Gone`).
    pub fn for_worker(worker: usize) -> Self {
        Self {
            next: (worker as u64 & 0xffff) << 48,
            held: Vec::new(),
        }
    }

    /// A fresh id for the next attempt.
    pub fn next_id(&mut self) -> AttemptId {
        self.next += 1;
        AttemptId(self.next)
    }

    /// Holds `held` under `id` until `deadline`; gives it back when the table is full.
    // The error hands the attempt back to be refused; boxing it would allocate per refusal.
    #[allow(clippy::result_large_err)]
    pub fn hold(&mut self, id: AttemptId, held: Held, deadline: Instant) -> Result<(), Held> {
        if self.held.len() >= MAX_DEFERRED {
            return Err(held);
        }
        self.held.push((id, deadline, held));
        Ok(())
    }

    /// Takes the attempt `id` out, if it is still held.
    pub fn take(&mut self, id: AttemptId) -> Option<Held> {
        let i = self.held.iter().position(|e| e.0 == id)?;
        Some(self.held.swap_remove(i).2)
    }

    /// Takes out an attempt whose deadline is `now` or past (any held one with `now` =
    /// `None`).
    pub fn expired(&mut self, now: Option<Instant>) -> Option<Held> {
        let i = self
            .held
            .iter()
            .position(|e| now.is_none_or(|now| e.1 <= now))?;
        Some(self.held.swap_remove(i).2)
    }

    /// When the first held attempt expires.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.held.iter().map(|e| e.1).min()
    }
}
