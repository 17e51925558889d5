//! What a handler acts on: a connection ([`Conn`]) and its worker ([`Ctx`]).

use std::net::SocketAddr;
use std::time::Instant;

use bytes::Bytes;
use quinn_proto::{
    Connection, ConnectionHandle, ConnectionStats, Dir, ReadError, ReadableError, Side, StreamId,
    VarInt, WriteError,
};

use crate::shard::{Born, Shard};

/// A connection's identity, unique on its engine for the engine's life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    worker: u16,
    handle: u32,
    serial: u32,
}

impl ConnId {
    pub(crate) fn new(worker: usize, handle: ConnectionHandle, serial: u32) -> Self {
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
    /// No such stream, or this side of it is closed (read to the end, finished, reset).
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

/// How far a [`Conn::read`] got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadStatus {
    /// All data available now was read; more may come (wait for `stream_readable`).
    Blocked,
    /// The stream is finished and was read to its end.
    Finished,
}

/// Worker-level actions, for callbacks and for work posted to a worker.
pub struct Ctx<'a> {
    pub(crate) shard: &'a mut Shard,
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

    /// The time of the current turn (the virtual clock's under the in-memory backend).
    pub fn now(&self) -> Instant {
        self.shard.now
    }

    /// Opens a connection from this worker to `remote`, using the engine's client
    /// configuration. The handler hears `connected` or `closed` for the returned id.
    pub fn connect(
        &mut self,
        remote: SocketAddr,
        server_name: &str,
    ) -> Result<ConnId, ConnectError> {
        let shard = &mut *self.shard;
        let cfg = shard.client.clone().ok_or(ConnectError::NoClientConfig)?;
        let (handle, conn) = shard
            .endpoint
            .connect(shard.now, cfg, remote, server_name)?;
        let gate = crate::congestion::take_last_built().unwrap_or_default();
        let serial = shard.take_serial();
        shard.born.push(Born {
            handle,
            conn,
            serial,
            gate,
        });
        Ok(ConnId::new(shard.worker, handle, serial))
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
        let mut born = self.shard.born.pop().expect("connect pushed it");
        early(&mut Conn {
            inner: &mut born.conn,
            id,
            gate: &born.gate,
            ctx: Ctx {
                shard: &mut *self.shard,
            },
        });
        self.shard.born.push(born);
        Ok(id)
    }

    /// Stops this worker: every connection is closed with code 0, drained, and the worker
    /// thread ends (see [`crate::Engine::join`]).
    pub fn stop_worker(&mut self) {
        self.shard.stop_requested = true;
    }
}

/// One connection, as a callback sees it. Actions are sent when the callback returns.
pub struct Conn<'a> {
    pub(crate) inner: &'a mut Connection,
    pub(crate) id: ConnId,
    pub(crate) ctx: Ctx<'a>,
    pub(crate) gate: &'a crate::congestion::CloseGate,
}

impl<'a> Conn<'a> {
    /// This connection's id.
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The worker-level context (connect, stop, clock).
    pub fn ctx(&mut self) -> &mut Ctx<'a> {
        &mut self.ctx
    }

    /// The peer's address (it changes when the peer migrates).
    pub fn remote_address(&self) -> SocketAddr {
        self.inner.remote_address()
    }

    /// Server or client.
    pub fn side(&self) -> Side {
        self.inner.side()
    }

    /// The ALPN protocol the handshake settled on.
    pub fn alpn(&mut self) -> Option<Vec<u8>> {
        self.inner
            .crypto_session()
            .handshake_data()
            .and_then(|d| {
                d.downcast::<quinn_proto::crypto::rustls::HandshakeData>()
                    .ok()
            })
            .and_then(|d| d.protocol)
    }

    /// Opens a bidirectional stream; `None` while the peer's stream limit is reached (wait for
    /// `streams_available`).
    pub fn open_bi(&mut self) -> Option<StreamId> {
        self.inner.streams().open(Dir::Bi)
    }

    /// Opens a unidirectional stream; `None` while the peer's limit is reached.
    pub fn open_uni(&mut self) -> Option<StreamId> {
        self.inner.streams().open(Dir::Uni)
    }

    /// Reads what `stream` has now, in order, handing each chunk to `sink` without copying.
    pub fn read(
        &mut self,
        stream: StreamId,
        mut sink: impl FnMut(Bytes),
    ) -> Result<ReadStatus, StreamError> {
        let mut recv = self.inner.recv_stream(stream);
        let mut chunks = recv.read(true).map_err(|e| match e {
            ReadableError::ClosedStream | ReadableError::IllegalOrderedRead => StreamError::Closed,
        })?;
        let result = loop {
            match chunks.next(usize::MAX) {
                Ok(Some(chunk)) => sink(chunk.bytes),
                Ok(None) => break Ok(ReadStatus::Finished),
                Err(ReadError::Blocked) => break Ok(ReadStatus::Blocked),
                Err(ReadError::Reset(code)) => break Err(StreamError::Reset(code)),
            }
        };
        // Credit flow control; the worker polls for transmits after the callback anyway.
        let _ = chunks.finalize();
        result
    }

    /// Writes as much of `data` as flow control allows; `Ok(0)` means blocked until
    /// `stream_writable`.
    pub fn write(&mut self, stream: StreamId, data: &[u8]) -> Result<usize, StreamError> {
        match self.inner.send_stream(stream).write(data) {
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
        match self
            .inner
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
        self.inner
            .send_stream(stream)
            .finish()
            .map_err(|e| match e {
                quinn_proto::FinishError::Stopped(code) => StreamError::Stopped(code),
                quinn_proto::FinishError::ClosedStream => StreamError::Closed,
            })
    }

    /// Abandons the sending side of `stream` with `code`.
    pub fn reset(&mut self, stream: StreamId, code: VarInt) -> Result<(), StreamError> {
        self.inner
            .send_stream(stream)
            .reset(code)
            .map_err(|_| StreamError::Closed)
    }

    /// Asks the peer to stop sending on `stream` with `code`, discarding what arrives.
    pub fn stop(&mut self, stream: StreamId, code: VarInt) -> Result<(), StreamError> {
        self.inner
            .recv_stream(stream)
            .stop(code)
            .map_err(|_| StreamError::Closed)
    }

    /// Sends an unreliable datagram (RFC 9221); when the queue is full the oldest one is
    /// dropped.
    pub fn send_datagram(&mut self, data: Bytes) -> Result<(), quinn_proto::SendDatagramError> {
        self.inner.datagrams().send(data, true)
    }

    /// The largest datagram the peer and the path allow now (`None`: not supported by peer).
    pub fn max_datagram_size(&mut self) -> Option<usize> {
        self.inner.datagrams().max_size()
    }

    /// Closes the connection with an application error `code` and `reason`.
    pub fn close(&mut self, code: VarInt, reason: &[u8]) {
        self.inner
            .close(self.ctx.shard.now, code, Bytes::copy_from_slice(reason));
        self.gate.open();
    }

    /// quinn-proto's statistics for this connection.
    pub fn stats(&self) -> ConnectionStats {
        self.inner.stats()
    }

    /// Current round-trip time estimate.
    pub fn rtt(&self) -> std::time::Duration {
        self.inner.rtt()
    }

    /// Whether the handshake is still going on (false once established, or closed).
    pub fn is_handshaking(&self) -> bool {
        self.inner.is_handshaking()
    }

    /// Client: 0-RTT keys were available (a resumed session allowing early data), so what
    /// was written before the handshake completed went out as 0-RTT. Server: the handshake
    /// accepted the client's early data (its ClientHello asked for it with a ticket that
    /// allows it; the client may still have sent none).
    pub fn has_0rtt(&self) -> bool {
        self.inner.has_0rtt()
    }

    /// Client: whether the server accepted our 0-RTT data. Meaningful once connected.
    pub fn accepted_0rtt(&self) -> bool {
        self.inner.accepted_0rtt()
    }

    /// Starts a 1-RTT key update now (RFC 9001, section 6), e.g. to test that the peer
    /// follows. Ignored before the connection is established and while a previous update
    /// is still in progress; RFC 9001 asks to wait until the handshake is confirmed, so call
    /// it once 1-RTT data has arrived. (quinn-proto also updates keys by itself: once early
    /// in every connection, after 10 to 1,000 packets sent, and before the AEAD
    /// confidentiality limit.)
    pub fn force_key_update(&mut self) {
        self.inner.force_key_update()
    }
}
