//! The application's side of a worker: callbacks, run to completion on the worker thread.
//!
//! One handler per worker (built by the factory given to the engine), so handler state needs
//! no lock. Callbacks must not block: they run between the packets of every connection of the
//! worker. Everything a callback does to a connection ([`Conn`]) is sent when it returns.

use bytes::Bytes;
use quinn_proto::{ConnectionError, StreamId, VarInt};

use crate::accept::{Decision, Incoming};
use crate::conn::{Conn, ConnId, Ctx};
use crate::engine::EngineHandle;

/// Callbacks of one worker. Every method has a default that does nothing.
#[allow(unused_variables)]
pub trait Handler: Send + 'static {
    /// Called once per worker, before any other callback, with a handle to the engine: keep
    /// it to hand work back to this worker from other threads (the result of blocking I/O
    /// done elsewhere, say) with [`EngineHandle::post`] or [`EngineHandle::post_to_conn`].
    /// Unlike the other callbacks it runs as the engine is built, on the thread that builds
    /// it (`start_*`), before the worker's thread starts: allocate what the worker uses on
    /// its own thread (NUMA) in the first callback it gets instead, and do not panic here
    /// (a panic unwinds out of `start_*`).
    fn attached(&mut self, engine: &EngineHandle<Self>)
    where
        Self: Sized,
    {
    }

    /// A client attempts a new connection: accept it (default), accept it with another
    /// configuration, refuse it, ask for a Retry first, or ignore it. Runs before the server
    /// keeps any state for it, after the engine's own protections (its connection limit, and
    /// the Retry the engine asks above its threshold of pending handshakes: an attempt that
    /// reaches this hook unvalidated is below it).
    fn incoming(&mut self, ctx: &mut Ctx<'_>, incoming: &Incoming<'_>) -> Decision {
        Decision::Accept
    }

    /// The handshake of `conn` completed (server or client side).
    fn connected(&mut self, conn: &mut Conn<'_>) {}

    /// The peer opened `stream`. A readable callback follows at once (it may find nothing).
    fn stream_opened(&mut self, conn: &mut Conn<'_>, stream: StreamId) {}

    /// `stream` may have data or an end to read ([`Conn::read`]); spurious calls happen.
    fn stream_readable(&mut self, conn: &mut Conn<'_>, stream: StreamId) {}

    /// `stream` can take more data after a write returned 0 (flow control).
    fn stream_writable(&mut self, conn: &mut Conn<'_>, stream: StreamId) {}

    /// The peer acknowledged everything sent on `stream`, including its end.
    fn stream_finished(&mut self, conn: &mut Conn<'_>, stream: StreamId) {}

    /// The peer asked us to stop sending on `stream` with `code`. After this callback the
    /// engine resets the stream with `code` (RFC 9000 §3.5), unless the handler did already:
    /// what was not sent is dropped, and writes to it fail.
    fn stream_stopped(&mut self, conn: &mut Conn<'_>, stream: StreamId, code: VarInt) {}

    /// The peer allows more streams to be opened ([`Conn::open_bi`] after it returned `None`).
    fn streams_available(&mut self, conn: &mut Conn<'_>) {}

    /// An unreliable datagram (RFC 9221) arrived.
    fn datagram(&mut self, conn: &mut Conn<'_>, data: Bytes) {}

    /// `conn` was lost (closed by the peer, timed out, reset), just before [`Handler::closed`]:
    /// what quinn-proto received on its streams and nobody read yet can still be read here
    /// (the peer may have had it acknowledged). Not called for a connection closed by us.
    fn lost(&mut self, conn: &mut Conn<'_>, reason: &ConnectionError) {}

    /// `conn` is gone: lost, closed by the peer, closed by us, or the connect failed. Called
    /// once per connection, also for those a failing worker closes as it ends (with
    /// `LocallyClosed`); not for the connections of a handler that panicked (it is called no
    /// more). Its [`ConnId`] is stale afterwards (`with_conn`, posts and calls to it are not
    /// run).
    fn closed(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, reason: &ConnectionError) {}
}
