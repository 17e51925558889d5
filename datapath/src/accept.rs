//! The accept decision: what the application says about a new connection attempt, before the
//! server keeps any state for it ([`crate::Handler::incoming`]).

use std::cell::OnceCell;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use crate::packet::client_hello::{self, ClientHelloInfo};

/// A new connection attempt, as the application's accept hook sees it.
///
/// The server name and ALPN protocols come from a peek at the client's ClientHello in its
/// Initial packet (decrypted with the public Initial keys, on first use: see
/// [`crate::packet::client_hello`]): claims of an unauthenticated peer, good for choosing
/// what to do; the handshake itself still checks them.
pub struct Incoming<'a> {
    pub(crate) remote: SocketAddr,
    pub(crate) local_ip: Option<IpAddr>,
    pub(crate) validated: bool,
    pub(crate) datagram: &'a [u8],
    pub(crate) hello: OnceCell<Option<ClientHelloInfo>>,
}

impl Incoming<'_> {
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

    fn hello(&self) -> Option<&ClientHelloInfo> {
        self.hello
            .get_or_init(|| client_hello::peek(self.datagram).ok())
            .as_ref()
    }

    /// The server name the client asks for (SNI), if its ClientHello could be read from this
    /// packet and names one.
    pub fn server_name(&self) -> Option<&str> {
        self.hello()?.server_name.as_deref()
    }

    /// The ALPN protocols the client offers, in its order of preference (empty when its
    /// ClientHello could not be read from this packet, or offers none).
    pub fn alpn(&self) -> &[Vec<u8>] {
        self.hello().map_or(&[], |h| &h.alpn)
    }
}

/// What to do with a new connection attempt.
#[derive(Debug, Clone)]
pub enum Decision {
    /// Accept it with the engine's server configuration.
    Accept,
    /// Accept it with this configuration (another certificate, other ALPNs or transport
    /// parameters: e.g. chosen by [`Incoming::server_name`]).
    AcceptWith(Arc<quinn_proto::ServerConfig>),
    /// Refuse it: the client hears CONNECTION_REFUSED at once.
    Refuse,
    /// Ask the client to prove its address with a Retry round trip first (an attempt whose
    /// address is validated already is accepted: a client is retried once).
    Retry,
    /// Drop it without an answer (the client times out).
    Ignore,
}
