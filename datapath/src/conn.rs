//! What a handler acts on: a connection ([`Conn`]) and its worker ([`Ctx`]).

use std::net::{SocketAddr, SocketAddrV6};
use std::time::Instant;

use bytes::Bytes;
use quinn_proto::{
    ConnectionHandle, ConnectionStats, Dir, ReadError, ReadableError, Side, StreamId, VarInt,
    WriteError,
};

use std::any::Any;

use crate::shard::{Connections, Shard, Slot};

/// A connection's identity, unique on its engine for the engine's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    worker: u16,
    handle: u32,
    serial: u64,
}

impl ConnId {
    pub(crate) fn new(worker: usize, handle: ConnectionHandle, serial: u64) -> Self {
        Self {
            worker: worker as u16,
            handle: handle.0 as u32,
            serial,
        }
    }

    /// The worker that owns the connection.
    pub fn worker(&self) -> usize {
        usize::from(self.worker)
    }

    pub(crate) fn handle(&self) -> usize {
        self.handle as usize
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "w{}/c{}.{}", self.worker, self.handle, self.serial)
    }
}

/// Stream operations that failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StreamError {
    /// No such stream, or this side of it is closed (read to the end, finished, reset), or
    /// the stream has no such side here (a write to a unidirectional stream the peer opened,
    /// a read of one this side opened).
    #[error("stream closed or unknown")]
    Closed,
    /// The peer reset the stream with this code.
    #[error("stream reset by peer with code {0}")]
    Reset(VarInt),
    /// The peer asked us to stop sending with this code.
    #[error("peer stopped the stream with code {0}")]
    Stopped(VarInt),
    /// The connection is lost.
    #[error("connection lost")]
    ConnectionLost,
}

/// What [`Conn::read_chunk`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// The next octets of the stream, in order.
    Data(Bytes),
    /// Nothing to read now; more may come (wait for `stream_readable`).
    Blocked,
    /// The stream is finished and was read to its end.
    Finished,
}

/// Received data shorter than this is copied by [`detach`]: half a receive buffer
/// ([`crate::backend::rx::POOL_CHUNK`], 16 KiB).
pub const DETACH_BELOW: usize = crate::backend::rx::POOL_CHUNK / 2;

/// `chunk` (received data: a stream chunk or a datagram), in an allocation of its own when
/// it is short (under [`DETACH_BELOW`] octets). Call it on data the application keeps for a
/// while (until the peer reads an echo, say).
///
/// What [`Conn::read`], [`Conn::read_chunk`] and [`Handler::datagram`] hand over is a slice
/// of the buffer its packet arrived in, shared with the packets received next to it, and a
/// slice keeps that whole buffer alive: a peer that lands one small frame per packet would
/// make an application that bounds what it keeps by octets hold many times that. A detached
/// chunk holds at most twice its octets (a long one keeps its buffer, at most twice its
/// size). The copy costs what a `memcpy` of under 8 KiB costs; data consumed within the
/// callback needs none.
///
/// [`Handler::datagram`]: crate::Handler::datagram
pub fn detach(chunk: Bytes) -> Bytes {
    if chunk.len() < DETACH_BELOW {
        Bytes::copy_from_slice(&chunk)
    } else {
        chunk
    }
}

/// How far a [`Conn::read`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    /// All data available now was read; more may come (wait for `stream_readable`).
    Blocked,
    /// The stream is finished and was read to its end.
    Finished,
}

/// Worker-level actions, for callbacks and for work posted to a worker: open connections,
/// act on any connection of this worker ([`Ctx::with_conn`]), stop the worker.
pub struct Ctx<'a> {
    pub(crate) shard: &'a mut Shard,
    pub(crate) conns: &'a mut Connections,
}

/// Why a connect could not start.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("this engine has no client configuration")]
    NoClientConfig,
    #[error(transparent)]
    Quic(#[from] quinn_proto::ConnectError),
}

impl Ctx<'_> {
    /// This worker's index.
    pub fn worker(&self) -> usize {
        self.shard.worker
    }

    /// How many more attempts this worker can hold for a later decision
    /// ([`crate::Decision::Defer`]); an attempt deferred beyond is refused.
    pub fn defer_room(&self) -> usize {
        crate::accept::MAX_DEFERRED.saturating_sub(self.shard.deferred.len())
    }

    /// Serves connections accepted from now on with `config` (made by
    /// `EngineHandle::server_config`).
    pub(crate) fn set_server_config(&mut self, config: std::sync::Arc<quinn_proto::ServerConfig>) {
        self.shard.endpoint.set_server_config(Some(config.clone()));
        self.shard.rotated = Some(config);
        self.shard.serves = true;
    }

    /// The time of the current turn (the virtual clock's under the in-memory backend).
    pub fn now(&self) -> Instant {
        self.shard.now
    }

    /// Connections alive on this worker.
    pub fn connections(&self) -> usize {
        self.conns.active
    }

    /// Runs `f` on connection `id` of this worker, if it is alive (its `closed` not heard yet;
    /// one the current callback opened is alive at once) and not the one the current
    /// callback is about (that one is the callback's own [`Conn`]); returns what `f` returned.
    /// What `f` does to it is sent when the callback returns, as for the callback's own
    /// connection: fan-out, proxying and broadcast stay on the worker, with no channel.
    pub fn with_conn<R>(&mut self, id: ConnId, f: impl FnOnce(&mut Conn<'_>) -> R) -> Option<R> {
        if id.worker() != self.shard.worker {
            return None;
        }
        let slot = self.conns.take_live(id)?;
        Some(self.on_taken(slot, f))
    }

    /// Runs `f` on a connection taken out of its place, then puts it back (marked for a
    /// poll), even if `f` panics: the panic goes on to the callback's guard after that. A
    /// slot dropped on the way would leave its connection unclosed and never drained.
    fn on_taken<R>(&mut self, mut slot: Box<Slot>, f: impl FnOnce(&mut Conn<'_>) -> R) -> R {
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            f(&mut Conn {
                slot: &mut slot,
                ctx: Ctx {
                    shard: &mut *self.shard,
                    conns: &mut *self.conns,
                },
            })
        }));
        self.conns.put_back(slot, true);
        r.unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    }

    /// Opens a connection from this worker to `remote`, using the engine's client
    /// configuration. The handler hears `connected` or `closed` for the returned id. Fails
    /// with `EndpointStopping` once the worker is stopping (a connection opened then would
    /// escape the drain).
    pub fn connect(
        &mut self,
        remote: SocketAddr,
        server_name: &str,
    ) -> Result<ConnId, ConnectError> {
        let cfg = self
            .shard
            .client
            .clone()
            .ok_or(ConnectError::NoClientConfig)?;
        self.connect_with(cfg, remote, server_name)
    }

    /// Like [`Ctx::connect`], with `config` instead of the engine's client configuration.
    pub fn connect_with(
        &mut self,
        config: quinn_proto::ClientConfig,
        remote: SocketAddr,
        server_name: &str,
    ) -> Result<ConnId, ConnectError> {
        let shard = &mut *self.shard;
        if shard.stop_requested {
            return Err(quinn_proto::ConnectError::EndpointStopping.into());
        }
        // As quinn does: a dual-stack socket reports an IPv4 peer's replies as from its
        // IPv4-mapped address, and quinn-proto drops a client's packets from any address but
        // its peer's.
        let remote = match remote {
            SocketAddr::V4(a) if shard.maps_ipv4 => {
                SocketAddr::V6(SocketAddrV6::new(a.ip().to_ipv6_mapped(), a.port(), 0, 0))
            }
            other => other,
        };
        let (handle, conn) = shard
            .endpoint
            .connect(shard.now, config, remote, server_name)
            .inspect_err(|_| {
                // A controller built before the failure is nobody's (see `Shard::settle`).
                let _ = crate::congestion::take_last_built();
            })?;
        let gate = crate::congestion::take_last_built().unwrap_or_default();
        let id = ConnId::new(shard.worker, handle, shard.take_serial());
        // In its place at once (marked for a poll): reachable by `with_conn`, posts and a
        // stop in this very turn. The worker notes it (counted, and recorded as an outgoing
        // connection) before it drives it.
        self.conns
            .insert(Box::new(Slot::new(id, conn, gate, None, shard.now)));
        shard.born.push(id);
        Ok(id)
    }

    /// Like [`Ctx::connect`], then runs `early` on the new connection before its first packet
    /// is sent. What `early` writes can go out as 0-RTT: when the client configuration holds
    /// a session from an earlier connection to this server that allows early data,
    /// [`Conn::has_0rtt`] is true and streams open at once (within the limits the server
    /// gave that session); otherwise [`Conn::open_bi`] returns `None` until the handshake
    /// completes. After `connected`, [`Conn::accepted_0rtt`] tells whether the server took
    /// the 0-RTT data (if not, quinn-proto sends it again in 1-RTT packets).
    pub fn connect_with_early_data(
        &mut self,
        remote: SocketAddr,
        server_name: &str,
        early: impl FnOnce(&mut Conn<'_>),
    ) -> Result<ConnId, ConnectError> {
        let id = self.connect(remote, server_name)?;
        let born = self.conns.take(id).expect("connect placed it");
        self.on_taken(born, early);
        Ok(id)
    }

    /// Decides on connection attempt `attempt`, whose accept hook returned
    /// [`crate::Decision::Defer`]: the new connection's id when accepted (the handler hears
    /// `connected` or `closed` for it), `None` when refused, retried or ignored (a stopping
    /// or full worker refuses whatever the decision). Errs with [`crate::Gone`] when the
    /// attempt is no longer held: decided already, or its time ran out.
    pub fn decide(
        &mut self,
        attempt: crate::accept::AttemptId,
        decision: crate::Decision,
    ) -> Result<Option<ConnId>, crate::Gone> {
        let held = self.shard.deferred.take(attempt).ok_or(crate::Gone)?;
        if let crate::Decision::Defer = decision {
            let deadline = self.shard.now + crate::accept::DEFER_TIMEOUT;
            return match self.shard.deferred.hold(attempt, held, deadline) {
                Ok(()) => Ok(None),
                Err(held) => self.decide_now(held, crate::Decision::Refuse),
            };
        }
        self.decide_now(held, decision)
    }

    fn decide_now(
        &mut self,
        held: crate::accept::Held,
        decision: crate::Decision,
    ) -> Result<Option<ConnId>, crate::Gone> {
        let mut buf = Vec::new();
        let link = held.link;
        match self
            .shard
            .settle(self.conns, held.incoming, link, decision, &mut buf)
        {
            crate::shard::Settled::Accepted(id) => Ok(Some(id)),
            crate::shard::Settled::Answer(t) => {
                self.shard.answers.push((t, buf, link));
                Ok(None)
            }
            crate::shard::Settled::Silent => Ok(None),
        }
    }

    /// Stops this worker: every connection is closed with code 0, drained, and the worker
    /// thread ends (see [`crate::Engine::join`]).
    pub fn stop_worker(&mut self) {
        self.shard.stop_requested = true;
    }
}

/// One connection, as a callback sees it. Actions are sent when the callback returns.
pub struct Conn<'a> {
    pub(crate) slot: &'a mut Slot,
    pub(crate) ctx: Ctx<'a>,
}

impl<'a> Conn<'a> {
    /// This connection's id.
    pub fn id(&self) -> ConnId {
        self.slot.id
    }

    /// The application's state of this connection, created (`T::default()`) at the first
    /// call. The engine keeps it with the connection and drops it, once, when the connection
    /// ends (after the `closed` callback). One type per connection: asking for another type
    /// replaces what was there.
    pub fn state<T: Any + Send + Default>(&mut self) -> &mut T {
        let user = &mut self.slot.user;
        if !user.as_ref().is_some_and(|u| u.is::<T>()) {
            *user = Some(Box::new(T::default()));
        }
        user.as_mut()
            .and_then(|u| u.downcast_mut())
            .expect("stored just above")
    }

    /// Takes this connection's state out (it is not dropped with the connection then).
    pub fn take_state<T: Any + Send>(&mut self) -> Option<T> {
        match self.slot.user.take()?.downcast::<T>() {
            Ok(t) => Some(*t),
            Err(other) => {
                self.slot.user = Some(other);
                None
            }
        }
    }

    /// The application's state of `stream`, created (`T::default()`) at the first call.
    /// The engine drops it, once, when the stream is over on both sides (what we send is
    /// finished and acknowledged, reset by us or stopped by the peer; what we receive is read
    /// to its end, reset by the peer or stopped by us), or when the connection ends. It is
    /// dropped once the callback in which the stream became over has returned (with the
    /// others of that connection in the same batch): a callback whose `read` returns
    /// [`ReadStatus::Finished`] may still add to the state and take it.
    /// One type per stream, as for [`Conn::state`].
    pub fn stream_state<T: Any + Send + Default>(&mut self, stream: StreamId) -> &mut T {
        let side = self.side();
        let conn = &mut self.slot.conn;
        // quinn-proto forgets a sending side once it is over (acknowledged, or reset): asked
        // then, it says `ClosedStream`.
        let send_gone = || conn.send_stream(stream).stopped().is_err();
        self.slot.streams.entry(stream, side, send_gone).state()
    }

    /// Takes `stream`'s state out (it is not dropped with the stream then).
    pub fn take_stream_state<T: Any + Send>(&mut self, stream: StreamId) -> Option<T> {
        self.slot.streams.take(stream)
    }

    /// The worker-level context (connect, stop, clock).
    pub fn ctx(&mut self) -> &mut Ctx<'a> {
        &mut self.ctx
    }

    /// The peer's address (it changes when the peer migrates).
    pub fn remote_address(&self) -> SocketAddr {
        self.slot.conn.remote_address()
    }

    /// The server name the client asked for (SNI), once the handshake has it.
    pub fn server_name(&mut self) -> Option<String> {
        self.handshake_data().and_then(|d| d.server_name)
    }

    /// The certificate chain the peer presented (a server's, or a client's under client
    /// authentication), once the handshake has it.
    pub fn peer_certificates(&self) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
        self.slot
            .conn
            .crypto_session()
            .peer_identity()?
            .downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>()
            .ok()
            .map(|b| *b)
    }

    pub(crate) fn handshake_data(&mut self) -> Option<quinn_proto::crypto::rustls::HandshakeData> {
        self.slot
            .conn
            .crypto_session()
            .handshake_data()?
            .downcast::<quinn_proto::crypto::rustls::HandshakeData>()
            .ok()
            .map(|d| *d)
    }

    /// Server or client.
    pub fn side(&self) -> Side {
        self.slot.conn.side()
    }

    /// `Ok` when this side sends on `stream`: every bidirectional stream, and the
    /// unidirectional ones it opened. quinn-proto panics on a send call for one it does not.
    fn sends_on(&self, stream: StreamId) -> Result<(), StreamError> {
        if stream.dir() == Dir::Bi || stream.initiator() == self.side() {
            Ok(())
        } else {
            Err(StreamError::Closed)
        }
    }

    /// `Ok` when this side receives on `stream`: every bidirectional stream, and the
    /// unidirectional ones the peer opened. quinn-proto panics on a read or stop call for
    /// one it does not.
    fn receives_on(&self, stream: StreamId) -> Result<(), StreamError> {
        if stream.dir() == Dir::Bi || stream.initiator() != self.side() {
            Ok(())
        } else {
            Err(StreamError::Closed)
        }
    }

    /// The ALPN protocol the handshake settled on.
    pub fn alpn(&mut self) -> Option<Vec<u8>> {
        self.handshake_data().and_then(|d| d.protocol)
    }

    /// Opens a bidirectional stream; `None` while the peer's stream limit is reached (wait for
    /// `streams_available`).
    pub fn open_bi(&mut self) -> Option<StreamId> {
        self.slot.conn.streams().open(Dir::Bi)
    }

    /// Opens a unidirectional stream; `None` while the peer's limit is reached.
    pub fn open_uni(&mut self) -> Option<StreamId> {
        self.slot.conn.streams().open(Dir::Uni)
    }

    /// Reads what `stream` has now, in order, handing each chunk to `sink` without copying.
    /// A chunk kept beyond the callback keeps its receive buffer: see [`detach`].
    pub fn read(
        &mut self,
        stream: StreamId,
        mut sink: impl FnMut(Bytes),
    ) -> Result<ReadStatus, StreamError> {
        // `take` never stops the pass, so it ends with a status.
        let status = self.read_chunks(stream, |chunk| {
            if let Some(b) = chunk {
                sink(b);
            }
            usize::MAX
        })?;
        Ok(status.unwrap_or(ReadStatus::Blocked))
    }

    /// Reads the next chunk of `stream`, at most `max` octets (quinn's `read_chunk`): for a
    /// reader that takes what it has room for and leaves the rest to flow control. A chunk
    /// kept beyond the callback keeps its receive buffer: see [`detach`].
    pub fn read_chunk(&mut self, stream: StreamId, max: usize) -> Result<Chunk, StreamError> {
        self.receives_on(stream)?;
        let mut recv = self.slot.conn.recv_stream(stream);
        let mut chunks = recv.read(true).map_err(|e| match e {
            ReadableError::ClosedStream | ReadableError::IllegalOrderedRead => StreamError::Closed,
        })?;
        let result = match chunks.next(max) {
            Ok(Some(chunk)) => Ok(Chunk::Data(chunk.bytes)),
            Ok(None) => Ok(Chunk::Finished),
            Err(ReadError::Blocked) => Ok(Chunk::Blocked),
            Err(ReadError::Reset(code)) => Err(StreamError::Reset(code)),
        };
        let _ = chunks.finalize();
        if matches!(result, Ok(Chunk::Finished) | Err(StreamError::Reset(_))) {
            self.slot.streams.recv_over(stream);
        }
        result
    }

    /// Reads chunks of `stream` in one pass over quinn-proto's receive buffer (one lookup of
    /// the stream and one flow-control update for them all, where a [`Conn::read_chunk`] per
    /// chunk costs each): `take(None)` answers the most octets of the first chunk, then
    /// `take(Some(chunk))` is handed each chunk and answers the most of the next; 0 stops
    /// the pass there, leaving the rest in quinn-proto. Returns how the pass ended:
    /// `Ok(None)` when `take` stopped it, `Ok(Some(status))` when the stream had nothing
    /// more for now or was read to its end. A chunk kept beyond the callback keeps its
    /// receive buffer: see [`detach`].
    pub(crate) fn read_chunks(
        &mut self,
        stream: StreamId,
        mut take: impl FnMut(Option<Bytes>) -> usize,
    ) -> Result<Option<ReadStatus>, StreamError> {
        self.receives_on(stream)?;
        let mut max = take(None);
        if max == 0 {
            return Ok(None);
        }
        let mut recv = self.slot.conn.recv_stream(stream);
        let mut chunks = recv.read(true).map_err(|e| match e {
            ReadableError::ClosedStream | ReadableError::IllegalOrderedRead => StreamError::Closed,
        })?;
        let result = loop {
            match chunks.next(max) {
                Ok(Some(chunk)) => {
                    max = take(Some(chunk.bytes));
                    if max == 0 {
                        break Ok(None);
                    }
                }
                Ok(None) => break Ok(Some(ReadStatus::Finished)),
                Err(ReadError::Blocked) => break Ok(Some(ReadStatus::Blocked)),
                Err(ReadError::Reset(code)) => break Err(StreamError::Reset(code)),
            }
        };
        // Credit flow control; the worker polls for transmits after the callback anyway.
        let _ = chunks.finalize();
        if matches!(
            result,
            Ok(Some(ReadStatus::Finished)) | Err(StreamError::Reset(_))
        ) {
            self.slot.streams.recv_over(stream);
        }
        result
    }

    /// Writes as much of `data` as flow control allows; `Ok(0)` means blocked until
    /// `stream_writable`.
    pub fn write(&mut self, stream: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        self.sends_on(stream)?;
        match self.slot.conn.send_stream(stream).write(data) {
            Ok(n) => Ok(n),
            Err(WriteError::Blocked) => Ok(0),
            Err(WriteError::Stopped(code)) => Err(StreamError::Stopped(code)),
            Err(WriteError::ClosedStream) => Err(StreamError::Closed),
        }
    }

    /// Writes as much of `data` as flow control allows without copying it: quinn-proto keeps
    /// the `Bytes` (a reference count) until the peer acknowledges them. `data` is advanced
    /// past what was taken; `Ok(0)` means blocked until `stream_writable`.
    pub fn write_chunk(
        &mut self,
        stream: StreamId,
        data: &mut Bytes,
    ) -> Result<usize, StreamError> {
        self.sends_on(stream)?;
        match self
            .slot
            .conn
            .send_stream(stream)
            .write_chunks(std::slice::from_mut(data))
        {
            Ok(w) => Ok(w.bytes),
            Err(WriteError::Blocked) => Ok(0),
            Err(WriteError::Stopped(code)) => Err(StreamError::Stopped(code)),
            Err(WriteError::ClosedStream) => Err(StreamError::Closed),
        }
    }

    /// Ends the sending side of `stream` after what was written.
    pub fn finish(&mut self, stream: StreamId) -> Result<(), StreamError> {
        self.sends_on(stream)?;
        self.slot
            .conn
            .send_stream(stream)
            .finish()
            .map_err(|e| match e {
                quinn_proto::FinishError::Stopped(code) => StreamError::Stopped(code),
                quinn_proto::FinishError::ClosedStream => StreamError::Closed,
            })
    }

    /// Abandons the sending side of `stream` with `code`.
    pub fn reset(&mut self, stream: StreamId, code: VarInt) -> Result<(), StreamError> {
        self.sends_on(stream)?;
        let r = self
            .slot
            .conn
            .send_stream(stream)
            .reset(code)
            .map_err(|_| StreamError::Closed);
        // Once: a stream reset already (or gone) ended its sending side then.
        if r.is_ok() {
            self.slot.streams.send_over(stream);
        }
        r
    }

    /// Asks the peer to stop sending on `stream` with `code`, discarding what arrives.
    pub fn stop(&mut self, stream: StreamId, code: VarInt) -> Result<(), StreamError> {
        self.receives_on(stream)?;
        let r = self
            .slot
            .conn
            .recv_stream(stream)
            .stop(code)
            .map_err(|_| StreamError::Closed);
        // Once: a stream stopped already, or read to its end, ended its receiving side then.
        if r.is_ok() {
            self.slot.streams.recv_over(stream);
        }
        r
    }

    /// Sends an unreliable datagram (RFC 9221); when the queue is full the oldest one is
    /// dropped.
    pub fn send_datagram(&mut self, data: Bytes) -> Result<(), quinn_proto::SendDatagramError> {
        self.slot.conn.datagrams().send(data, true)
    }

    /// The largest datagram the peer and the path allow now (`None`: not supported by peer).
    pub fn max_datagram_size(&mut self) -> Option<usize> {
        self.slot.conn.datagrams().max_size()
    }

    /// Whether this endpoint's transport sends and takes datagrams at all (false: its
    /// `TransportConfig::datagram_receive_buffer_size` is `None`, and `send_datagram`
    /// fails with `Disabled`). quinn-proto has no getter for it: this asks it to send a
    /// datagram larger than any path takes, which it refuses (with `Disabled` before any
    /// other check) and never queues.
    pub fn datagrams_enabled(&mut self) -> bool {
        // Larger than any datagram a path of at most 65,527 octets of UDP payload takes.
        static PROBE: [u8; 1 << 16] = [0; 1 << 16];
        !matches!(
            self.slot
                .conn
                .datagrams()
                .send(Bytes::from_static(&PROBE), false),
            Err(quinn_proto::SendDatagramError::Disabled)
        )
    }

    /// Closes the connection with an application error `code` and `reason`.
    pub fn close(&mut self, code: VarInt, reason: &[u8]) {
        self.slot
            .conn
            .close(self.ctx.shard.now, code, Bytes::copy_from_slice(reason));
        self.slot.open_gates();
    }

    /// quinn-proto's statistics for this connection.
    pub fn stats(&self) -> ConnectionStats {
        self.slot.conn.stats()
    }

    /// Current round-trip time estimate.
    pub fn rtt(&self) -> std::time::Duration {
        self.slot.conn.rtt()
    }

    /// Whether the handshake is still going on (false once established, or closed).
    pub fn is_handshaking(&self) -> bool {
        self.slot.conn.is_handshaking()
    }

    /// Client: 0-RTT keys were available (a resumed session allowing early data), so what
    /// was written before the handshake completed went out as 0-RTT. Server: the handshake
    /// accepted the client's early data (its ClientHello asked for it with a ticket that
    /// allows it; the client may still have sent none).
    pub fn has_0rtt(&self) -> bool {
        self.slot.conn.has_0rtt()
    }

    /// Client: whether the server accepted our 0-RTT data. Meaningful once connected.
    pub fn accepted_0rtt(&self) -> bool {
        self.slot.conn.accepted_0rtt()
    }

    /// Starts a 1-RTT key update now (RFC 9001, section 6), e.g. to test that the peer
    /// follows. Ignored before the connection is established and while a previous update
    /// is still in progress; RFC 9001 asks to wait until the handshake is confirmed, so call
    /// it once 1-RTT data has arrived. (quinn-proto also updates keys by itself: once early
    /// in every connection, after 10 to 1,000 packets sent, and before the AEAD
    /// confidentiality limit.)
    pub fn force_key_update(&mut self) {
        self.slot.conn.force_key_update()
    }
}
