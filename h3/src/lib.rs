//! HTTP/3 over xdp-quic: the [`h3`] crate's QUIC traits ([`h3::quic`]) implemented over the
//! async API ([`xdp_quic::tokio`]), as `h3-quinn` does over quinn. Wrap a connection in
//! [`Connection::new`] and hand it to `h3::server::Connection::new` or `h3::client::new`:
//!
//! ```no_run
//! use bytes::Bytes;
//! use http::{Response, StatusCode};
//!
//! /// Answers every request of every connection with "hello".
//! async fn serve(ep: xdp_quic::tokio::Endpoint) {
//!     while let Some(incoming) = ep.accept().await {
//!         tokio::spawn(async move {
//!             let Ok(conn) = incoming.await else { return };
//!             let Ok(mut h3) = h3::server::Connection::<_, Bytes>::new(
//!                 xdp_quic_h3::Connection::new(conn)).await else { return };
//!             while let Ok(Some(resolver)) = h3.accept().await {
//!                 tokio::spawn(async move {
//!                     let Ok((_request, mut stream)) = resolver.resolve_request().await else { return };
//!                     let response = Response::builder().status(StatusCode::OK).body(()).unwrap();
//!                     if stream.send_response(response).await.is_ok()
//!                         && stream.send_data(Bytes::from_static(b"hello\n")).await.is_ok()
//!                     {
//!                         let _ = stream.finish().await;
//!                     }
//!                 });
//!             }
//!         });
//!     }
//! }
//! ```
//!
//! The endpoint's ALPN must be `h3` ([`ALPN`]). Datagrams and WebTransport (h3's extension
//! traits) are not implemented.
//!
//! **A clean close waits for the answers.** h3 closes its connection (`H3_NO_ERROR`) as soon
//! as its last request stream is dropped, which is once the response is queued, not once it
//! arrived: a close then throws away what the peer has not received, and even what it
//! received but has not read (h3's client, like quinn's, fails its reads once the
//! connection is closed); quinn does the same to h3-quinn's users. Here a clean close made
//! while a stream's end is sent and not acknowledged waits for the peer to close the
//! connection (which it does once it has read its answers), at most [`CLOSE_LINGER`];
//! h3's control and QPACK streams stay open meanwhile. Other codes close at once.
//!
//! **Answers a peer does not take.** h3's `finish` returns once a response's end is queued;
//! a server that bounds the memory of its answers needs to know when the peer took them:
//! [`Connection::stream_ends`] tells when a finished stream's end is acknowledged, and
//! lets the caller reset one that takes too long ([`StreamEnds::reset`]; the deadline is
//! the caller's: `examples/src/h3_files.rs` holds its file slots until the end or its
//! deadline).
//!
//! **The peer's QPACK streams**, which h3 0.0.8 never reads past their type, are read by a
//! task of their own, which checks their instructions against what this side allows (the
//! table it offers has no room, and its field sections never refer to the peer's: on the
//! encoder stream only a capacity of 0, on the decoder stream only Stream Cancellation)
//! and closes the connection with QPACK_ENCODER_STREAM_ERROR or QPACK_DECODER_STREAM_ERROR
//! on any other (RFC 9204 §4.3, §4.4); the end of one closes it with
//! H3_CLOSED_CRITICAL_STREAM (§4.2). (Outside a tokio runtime, where no task can be
//! started, the streams stay with h3, unread, as h3 alone leaves them.)
//!
//! **Frames h3 would buffer whole** are refused at their header: HEADERS and PUSH_PROMISE
//! beyond [`MAX_FIELD_FRAME`], the other types RFC 9114 defines, but DATA and HTTP/2's
//! reserved types (refused at their type with H3_FRAME_UNEXPECTED, whatever their length),
//! beyond [`MAX_FRAME`]; frames of undefined types are dropped unread.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};
use xdp_quic::tokio as xq;
use xdp_quic::VarInt;

mod frames;
mod qpack;
use frames::FrameFilter;
pub use frames::{MAX_FIELD_FRAME, MAX_FRAME};

/// ALPN of HTTP/3.
pub const ALPN: &[u8] = b"h3";

/// The longest a clean close (`H3_NO_ERROR`) made with answers in flight waits for the peer
/// to close the connection first.
pub const CLOSE_LINGER: Duration = Duration::from_secs(10);

/// The streams of one connection whose end was sent and is not acknowledged yet.
#[derive(Default)]
struct InFlight {
    streams: AtomicUsize,
    /// The same streams by id ([`StreamEnds`]); an entry goes when its stream's `stopped`
    /// completes, so there are no more than the streams the peer's stream limits allow in
    /// flight.
    ends: std::sync::Mutex<HashMap<u64, End>>,
    /// Unidirectional streams h3 dropped without ending them: its control and QPACK
    /// streams, which must stay open as long as the connection (RFC 9114 §6.2.1: closing
    /// one is a connection error) and so outlive h3 while a clean close waits. Dropped (so
    /// finished) with the last handle on this, after the close.
    parked: std::sync::Mutex<Vec<xq::SendStream>>,
    /// The same for the peer's unidirectional streams h3 dropped before their end: dropping
    /// them would ask the peer to stop its critical streams.
    parked_recv: std::sync::Mutex<Vec<xq::RecvStream>>,
    /// One end of a channel per task draining a peer's QPACK stream ([`RecvStream::drain`]):
    /// dropped with this, which ends the tasks.
    drains: std::sync::Mutex<Vec<tokio::sync::oneshot::Sender<()>>>,
}

impl InFlight {
    /// Counts a stream until `stopped` (its `SendStream::stopped`) completes. Needs a tokio
    /// runtime (the async API's handles live in one); without one the stream is not waited
    /// for.
    fn watch(
        self: &Arc<Self>,
        id: u64,
        stopped: impl Future<Output = Result<Option<VarInt>, xq::StoppedError>> + Send + 'static,
    ) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        self.streams.fetch_add(1, Ordering::AcqRel);
        self.lock_ends().insert(id, End::default());
        let me = self.clone();
        rt.spawn(async move {
            let outcome = stopped.await;
            let end = me.lock_ends().remove(&id);
            if let Some(end) = end {
                end.waiting.into_iter().for_each(Waker::wake);
                if let (Ok(Some(code)), Some(mut stream)) = (outcome, end.stream) {
                    // The peer asked us to stop: what is not acknowledged is not sent again
                    // (RFC 9000 §3.5), as when h3's handle goes.
                    let _ = stream.reset(code);
                }
            }
            me.streams.fetch_sub(1, Ordering::AcqRel);
        });
    }

    /// Keeps the handle of a finished stream h3 dropped while its end is in flight, so that
    /// [`StreamEnds::reset`] can still reach it.
    fn adopt(&self, id: u64, stream: xq::SendStream) {
        let mut ends = self.lock_ends();
        let left = match ends.get_mut(&id) {
            Some(end) => end.stream.replace(stream),
            None => Some(stream),
        };
        drop(ends);
        drop(left);
    }

    fn lock_ends(&self) -> std::sync::MutexGuard<'_, HashMap<u64, End>> {
        self.ends.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A stream whose end is in flight.
#[derive(Default)]
struct End {
    /// The wakers of those awaiting its acknowledgement ([`StreamEnds::acknowledged`]).
    waiting: Vec<Waker>,
    /// Its handle, once h3 dropped it ([`InFlight::adopt`]).
    stream: Option<xq::SendStream>,
}

/// Tells when the end of a stream that h3 finished has reached the peer, and resets one that
/// takes too long: what an application that bounds the memory of its answers needs (h3's
/// `finish` returns once the end is queued, with the whole answer possibly still queued
/// behind it). From [`Connection::stream_ends`], before h3 takes the connection.
///
/// Drop h3's stream once `finish` returned, then await [`StreamEnds::acknowledged`]: h3
/// counts a request as ongoing until its stream is dropped, and a clean close made while an
/// end is in flight waits for the peer (see the crate's docs), which one made after the end
/// was acknowledged does not.
#[derive(Clone)]
pub struct StreamEnds(Arc<InFlight>);

impl StreamEnds {
    /// Resolves once the peer acknowledged the end of stream `id` and all its data, or the
    /// stream was stopped or reset, or the connection lost. Await it after h3's `finish`
    /// (`RequestStream::finish`) returned; for a stream whose end is not in flight (not
    /// finished, or already acknowledged) it resolves at once. Needs the tokio runtime the
    /// connection's handles live in (without one, every stream counts as acknowledged).
    pub fn acknowledged(&self, id: StreamId) -> impl Future<Output = ()> + Send + 'static {
        let (flight, id) = (self.0.clone(), id.into_inner());
        std::future::poll_fn(move |cx| {
            let mut ends = flight.lock_ends();
            match ends.get_mut(&id) {
                None => Poll::Ready(()),
                Some(end) => {
                    if !end.waiting.iter().any(|w| w.will_wake(cx.waker())) {
                        end.waiting.push(cx.waker().clone());
                    }
                    Poll::Pending
                }
            }
        })
    }

    /// Resets stream `id` with `code` if its end is still in flight and h3 has dropped it
    /// (what is queued is thrown away, and the peer is told); returns whether it did.
    pub fn reset(&self, id: StreamId, code: h3::error::Code) -> bool {
        let code = VarInt::from_u64(code.value()).unwrap_or(VarInt::MAX);
        let mut ends = self.0.lock_ends();
        match ends
            .get_mut(&id.into_inner())
            .and_then(|e| e.stream.as_mut())
        {
            Some(stream) => stream.reset(code).is_ok(),
            None => false,
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type Bidi = Result<(xq::SendStream, xq::RecvStream), xq::ConnectionError>;
type Uni = Result<xq::RecvStream, xq::ConnectionError>;
type OpenedUni = Result<xq::SendStream, xq::ConnectionError>;

/// A QUIC connection for h3.
pub struct Connection {
    conn: xq::Connection,
    flight: Arc<InFlight>,
    accept_bi: Option<BoxFuture<Bidi>>,
    accept_uni: Option<BoxFuture<Uni>>,
    opener: OpenStreams,
}

impl Connection {
    /// Wraps an established connection.
    pub fn new(conn: xq::Connection) -> Self {
        let flight = Arc::new(InFlight::default());
        Self {
            opener: OpenStreams::new(conn.clone(), flight.clone()),
            conn,
            flight,
            accept_bi: None,
            accept_uni: None,
        }
    }

    /// The connection underneath.
    pub fn inner(&self) -> &xq::Connection {
        &self.conn
    }

    /// Tells when the ends of this connection's streams reach the peer (take it before h3
    /// takes the connection).
    pub fn stream_ends(&self) -> StreamEnds {
        StreamEnds(self.flight.clone())
    }
}

/// Polls the future in `slot`, made by `make` from `conn` if there is none; empties the slot
/// when done.
fn poll_slot<T>(
    slot: &mut Option<BoxFuture<T>>,
    cx: &mut Context<'_>,
    conn: &xq::Connection,
    make: fn(xq::Connection) -> BoxFuture<T>,
) -> Poll<T> {
    let fut = slot.get_or_insert_with(|| make(conn.clone()));
    let out = fut.as_mut().poll(cx);
    if out.is_ready() {
        *slot = None;
    }
    out
}

fn accept_bi(c: xq::Connection) -> BoxFuture<Bidi> {
    Box::pin(async move { c.accept_bi().await })
}

fn accept_uni(c: xq::Connection) -> BoxFuture<Uni> {
    Box::pin(async move { c.accept_uni().await })
}

fn open_bi(c: xq::Connection) -> BoxFuture<Bidi> {
    Box::pin(async move { c.open_bi().await })
}

fn open_uni(c: xq::Connection) -> BoxFuture<OpenedUni> {
    Box::pin(async move { c.open_uni().await })
}

impl<B: Buf> quic::Connection<B> for Connection {
    type RecvStream = RecvStream;
    type OpenStreams = OpenStreams;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::RecvStream, ConnectionErrorIncoming>> {
        let (conn, flight) = (&self.conn, &self.flight);
        poll_slot(&mut self.accept_uni, cx, conn, accept_uni).map(|r| {
            r.map(|s| RecvStream::new(s, conn, flight))
                .map_err(connection_error)
        })
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, ConnectionErrorIncoming>> {
        let (conn, flight) = (&self.conn, &self.flight);
        poll_slot(&mut self.accept_bi, cx, conn, accept_bi).map(|r| {
            r.map(|s| BidiStream::new(s, conn, flight))
                .map_err(connection_error)
        })
    }

    fn opener(&self) -> Self::OpenStreams {
        OpenStreams::new(self.conn.clone(), self.flight.clone())
    }
}

impl<B: Buf> quic::OpenStreams<B> for Connection {
    type BidiStream = BidiStream<B>;
    type SendStream = SendStream<B>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        quic::OpenStreams::<B>::poll_open_bidi(&mut self.opener, cx)
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        quic::OpenStreams::<B>::poll_open_send(&mut self.opener, cx)
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        close(&self.conn, &self.flight, code, reason)
    }
}

/// Closes `conn` with `code`; a clean close with streams in flight first waits for the peer
/// to close (at most [`CLOSE_LINGER`], on a task of its own: h3 calls this from `Drop`).
fn close(conn: &xq::Connection, flight: &Arc<InFlight>, code: h3::error::Code, reason: &[u8]) {
    let value = VarInt::from_u64(code.value()).unwrap_or(VarInt::MAX);
    let waits = code == h3::error::Code::H3_NO_ERROR && flight.streams.load(Ordering::Acquire) > 0;
    match tokio::runtime::Handle::try_current() {
        Ok(rt) if waits => {
            let (conn, flight, reason) = (conn.clone(), flight.clone(), reason.to_vec());
            rt.spawn(async move {
                let _ = tokio::time::timeout(CLOSE_LINGER, conn.closed()).await;
                conn.close(value, &reason);
                // The parked streams go now, after the close.
                drop(flight);
            });
        }
        _ => conn.close(value, reason),
    }
}

/// Opens streams of a connection (h3 keeps one to open its control and QPACK streams and,
/// in a client, request streams).
pub struct OpenStreams {
    conn: xq::Connection,
    flight: Arc<InFlight>,
    open_bi: Option<BoxFuture<Bidi>>,
    open_uni: Option<BoxFuture<OpenedUni>>,
}

impl OpenStreams {
    fn new(conn: xq::Connection, flight: Arc<InFlight>) -> Self {
        Self {
            conn,
            flight,
            open_bi: None,
            open_uni: None,
        }
    }
}

impl Clone for OpenStreams {
    fn clone(&self) -> Self {
        Self::new(self.conn.clone(), self.flight.clone())
    }
}

impl<B: Buf> quic::OpenStreams<B> for OpenStreams {
    type BidiStream = BidiStream<B>;
    type SendStream = SendStream<B>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        let (conn, flight) = (&self.conn, &self.flight);
        poll_slot(&mut self.open_bi, cx, conn, open_bi).map(|r| {
            r.map(|s| BidiStream::new(s, conn, flight))
                .map_err(stream_connection_error)
        })
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        let flight = &self.flight;
        poll_slot(&mut self.open_uni, cx, &self.conn, open_uni).map(|r| {
            r.map(|s| SendStream::new(s, flight))
                .map_err(stream_connection_error)
        })
    }

    fn close(&mut self, code: h3::error::Code, reason: &[u8]) {
        close(&self.conn, &self.flight, code, reason)
    }
}

/// Both halves of a bidirectional stream.
pub struct BidiStream<B: Buf> {
    send: SendStream<B>,
    recv: RecvStream,
}

impl<B: Buf> BidiStream<B> {
    fn new(
        (send, recv): (xq::SendStream, xq::RecvStream),
        conn: &xq::Connection,
        flight: &Arc<InFlight>,
    ) -> Self {
        let reset = Arc::new(AtomicU64::new(NOT_RESET));
        let mut send = SendStream::new(send, flight);
        send.reset_code = Some(reset.clone());
        let mut recv = RecvStream::new(recv, conn, flight);
        recv.peer_reset_code = Some(reset);
        Self { send, recv }
    }
}

/// No reset yet, in a bidirectional stream's shared reset code (a code is below 2^62).
const NOT_RESET: u64 = u64::MAX;

impl<B: Buf> quic::BidiStream<B> for BidiStream<B> {
    type SendStream = SendStream<B>;
    type RecvStream = RecvStream;

    fn split(self) -> (Self::SendStream, Self::RecvStream) {
        (self.send, self.recv)
    }
}

impl<B: Buf> quic::RecvStream for BidiStream<B> {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Self::Buf>, StreamErrorIncoming>> {
        self.recv.poll_data(cx)
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.recv.stop_sending(error_code)
    }

    fn recv_id(&self) -> StreamId {
        self.recv.recv_id()
    }
}

impl<B: Buf> quic::SendStream<B> for BidiStream<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.send.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_finish(cx)
    }

    fn reset(&mut self, reset_code: u64) {
        self.send.reset(reset_code)
    }

    fn send_id(&self) -> StreamId {
        self.send.send_id()
    }
}

/// The receiving side of a stream.
pub struct RecvStream {
    /// `None` once parked (in `drop`) or handed to a drain task (a QPACK stream).
    stream: Option<xq::RecvStream>,
    /// The stream's id, known without it.
    id: xq::StreamId,
    /// To close it when the peer's control stream carries a frame h3 would buffer without
    /// bound.
    conn: xq::Connection,
    flight: Arc<InFlight>,
    /// Read to its end, reset, or stopped.
    ended: bool,
    /// Stopped here, or a frame or type refused: later reads fail (`ClosedStream`, as
    /// quinn's after a stop) instead of reading on from where the refusal left the filter,
    /// or taking the stop for the peer's end.
    given_up: bool,
    /// How the stream failed (the peer reset it, the connection ended): later reads fail
    /// the same way. (h3 reads again after an error, for the rest of a body or its
    /// trailers, and the async API's stream reads as ended after a reset: a reset on a
    /// frame's boundary would pass for a whole body, one inside a frame for a truncated
    /// frame, a connection error.)
    failed: Option<xq::ReadError>,
    /// A bidirectional stream's: the code its sending half was reset with, if it was
    /// ([`NOT_RESET`] else).
    peer_reset_code: Option<Arc<AtomicU64>>,
    /// Takes out the frames h3 is not to see, refuses those it would buffer without bound
    /// ([`MAX_FRAME`], [`MAX_FIELD_FRAME`]); knows a unidirectional stream's type.
    frames: FrameFilter,
}

/// HTTP/3's unidirectional stream types a peer's stream must stay open with, parked when h3
/// drops it before its end: the control stream (RFC 9114 §6.2.1) and QPACK's encoder and
/// decoder streams (RFC 9204 §4.2); closing one is a connection error.
const CRITICAL_UNI: [u64; 3] = [frames::CONTROL, 0x2, 0x3];

impl RecvStream {
    fn new(stream: xq::RecvStream, conn: &xq::Connection, flight: &Arc<InFlight>) -> Self {
        let uni = stream.id().dir() == xdp_quic::Dir::Uni;
        Self {
            id: stream.id(),
            stream: Some(stream),
            conn: conn.clone(),
            flight: flight.clone(),
            ended: false,
            given_up: false,
            failed: None,
            peer_reset_code: None,
            frames: if uni {
                FrameFilter::uni()
            } else {
                FrameFilter::bidi()
            },
        }
    }

    fn stream(&mut self) -> &mut xq::RecvStream {
        self.stream.as_mut().expect("present until dropped")
    }

    fn is_uni(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(|s| s.id().dir() == xdp_quic::Dir::Uni)
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        if self.ended {
            return;
        }
        let uni = self.is_uni();
        let Some(mut stream) = self.stream.take() else {
            return;
        };
        let code = match (uni, self.frames.stream_type()) {
            // A critical stream, or one whose type has not come yet (it may be one): kept
            // open with the connection.
            (true, None) => None,
            (true, Some(ty)) if CRITICAL_UNI.contains(&ty) => None,
            // A stream type h3 does not take (a client's push stream, WebTransport's,
            // unknown ones): refused (RFC 9114 §6.2).
            (true, Some(_)) => Some(h3::error::Code::H3_STREAM_CREATION_ERROR),
            // A response the client gives up on: the request is cancelled (§4.1.1).
            (false, _) if self.conn.side() == xdp_quic::Side::Client => {
                Some(h3::error::Code::H3_REQUEST_CANCELLED)
            }
            // A request body (or response) nobody reads: the peer is asked to stop sending
            // with H3_NO_ERROR (RFC 9114 §4.1.1), not the async API's default code 0, or
            // with the code the answer was reset with (a request rejected or cancelled).
            (false, _) => Some(h3::error::Code::H3_NO_ERROR),
        };
        let reset = self
            .peer_reset_code
            .as_ref()
            .map(|c| c.load(Ordering::Acquire))
            .filter(|&c| c != NOT_RESET);
        let code = code.map(|c| match reset {
            Some(r) if !uni && self.conn.side() == xdp_quic::Side::Server => r,
            _ => c.value(),
        });
        match code {
            Some(code) => {
                let _ = stream.stop(VarInt::from_u64(code).unwrap_or(VarInt::MAX));
            }
            None => {
                let mut parked = self
                    .flight
                    .parked_recv
                    .lock()
                    .unwrap_or_else(|p| p.into_inner());
                parked.push(stream);
            }
        }
    }
}

/// The largest chunk handed to h3 at once.
const READ_CHUNK: usize = 64 * 1024;

/// Chunks that the frame filter empties entirely, read in one `poll_data` before it yields
/// (a peer sending frames of undefined types without end cannot hold the task).
const EMPTIED_CHUNKS: usize = 16;

impl quic::RecvStream for RecvStream {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Self::Buf>, StreamErrorIncoming>> {
        if self.given_up {
            return Poll::Ready(Err(StreamErrorIncoming::Unknown(Box::new(
                xq::ReadError::ClosedStream,
            ))));
        }
        if let Some(e) = &self.failed {
            return Poll::Ready(Err(read_error(e.clone())));
        }
        if self.stream.is_none() {
            // A QPACK stream a task drains: h3 does not read it past its type.
            return Poll::Pending;
        }
        for _ in 0..EMPTIED_CHUNKS {
            let data = match self.stream().poll_read_chunk(cx, READ_CHUNK) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(Some(data))) => data,
                Poll::Ready(Ok(None)) => {
                    self.ended = true;
                    if let Err(cut) = self.frames.at_end() {
                        return Poll::Ready(Err(self.refuse(cut)));
                    }
                    return Poll::Ready(Ok(None));
                }
                Poll::Ready(Err(e)) => {
                    self.ended = true;
                    self.failed = Some(e.clone());
                    return Poll::Ready(Err(read_error(e)));
                }
            };
            let typed = self.frames.stream_type().is_some();
            let seen = match self.frames.filter(data) {
                Ok(seen) => seen,
                Err(refused) => return Poll::Ready(Err(self.refuse(refused))),
            };
            if !typed {
                if let Some(refused) = self
                    .frames
                    .stream_type()
                    .and_then(|ty| self.refuse_type(ty))
                {
                    return Poll::Ready(Err(refused));
                }
                // Without a tokio runtime the stream stays with h3, as before.
                if let (Some(check), Ok(rt)) = (
                    self.frames
                        .stream_type()
                        .and_then(qpack::InstructionCheck::for_stream_type),
                    tokio::runtime::Handle::try_current(),
                ) {
                    // h3 reads the type, the drain task the instructions after it.
                    let (ty, instructions) = frames::split_stream_type(seen);
                    self.drain(rt, check, instructions);
                    return Poll::Ready(Ok(Some(ty)));
                }
            }
            if !seen.is_empty() {
                return Poll::Ready(Ok(Some(seen)));
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn stop_sending(&mut self, error_code: u64) {
        self.ended = true;
        self.given_up = true;
        if let Some(s) = self.stream.as_mut() {
            let _ = s.stop(VarInt::from_u64(error_code).unwrap_or(VarInt::MAX));
        }
    }

    fn recv_id(&self) -> StreamId {
        stream_id(self.id)
    }
}

/// The push stream type (RFC 9114 §6.2.2) and WebTransport's (not offered here).
const PUSH: u64 = 0x1;
const WEBTRANSPORT_UNI: u64 = 0x54;

impl RecvStream {
    /// Hands a peer's QPACK stream, whose type h3 has just been given, to a task that reads
    /// what comes on it, starting with `first` (what followed the type in its chunk): h3
    /// 0.0.8 keeps the stream and never reads it again, so what the peer sends there would
    /// wait for the connection's life, in its receive budget. The task checks the
    /// instructions against what this side allows (`check`, [`qpack`]: the table this side
    /// offers has no room, and its field sections never refer to the peer's), closes the
    /// connection with QPACK_ENCODER_STREAM_ERROR or QPACK_DECODER_STREAM_ERROR on one it
    /// refuses, and with H3_CLOSED_CRITICAL_STREAM when the peer ends or resets the stream
    /// (RFC 9204 §4.2). The task ends with the connection, or when this connection's adapter
    /// is gone. The task runs on `rt`.
    fn drain(
        &mut self,
        rt: tokio::runtime::Handle,
        mut check: qpack::InstructionCheck,
        first: Bytes,
    ) {
        let Some(mut stream) = self.stream.take() else {
            return;
        };
        self.ended = true;
        let (tx, gone) = tokio::sync::oneshot::channel::<()>();
        self.flight
            .drains
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tx);
        let conn = self.conn.clone();
        rt.spawn(async move {
            let close = |code: u64, reason: &[u8]| {
                conn.close(VarInt::from_u64(code).unwrap_or(VarInt::MAX), reason);
            };
            let read = async {
                let mut next = Ok(Some(first));
                loop {
                    match next {
                        Ok(Some(data)) => {
                            if let Err(e) = check.feed(&data) {
                                close(e.code, e.reason.as_bytes());
                                return;
                            }
                        }
                        Ok(None) | Err(xq::ReadError::Reset(_)) => {
                            close(
                                h3::error::Code::H3_CLOSED_CRITICAL_STREAM.value(),
                                b"a QPACK stream closed",
                            );
                            return;
                        }
                        // The connection ended.
                        Err(_) => return,
                    }
                    next = stream
                        .read_chunk(READ_CHUNK, true)
                        .await
                        .map(|c| c.map(|c| c.bytes));
                }
            };
            tokio::select! {
                _ = read => {}
                _ = gone => {}
            }
        });
    }

    /// Refuses a unidirectional stream of type `ty` that h3 0.0.8 would hold without reading
    /// (it waits for octets past the push id that may never come, for the connection's
    /// life, holding a stream credit): a client's push stream closes the connection with
    /// H3_STREAM_CREATION_ERROR (§6.2.2: only servers push); a push stream to a client,
    /// which allowed none (it sends no MAX_PUSH_ID), closes it with H3_ID_ERROR (§4.6); a
    /// WebTransport stream is stopped with H3_STREAM_CREATION_ERROR, and h3 sees it end
    /// before its type and forgets it (for a push stream, h3 hears the connection's error).
    /// `None`: a type h3 takes.
    fn refuse_type(&mut self, ty: u64) -> Option<StreamErrorIncoming> {
        if ty != PUSH && ty != WEBTRANSPORT_UNI {
            return None;
        }
        self.ended = true;
        self.given_up = true;
        let code = h3::error::Code::H3_STREAM_CREATION_ERROR;
        if ty == PUSH {
            let (code, why): (_, &[u8]) = match self.conn.side() {
                xdp_quic::Side::Server => (code, b"a client's push stream"),
                xdp_quic::Side::Client => (h3::error::Code::H3_ID_ERROR, b"a push not allowed"),
            };
            close(&self.conn, &self.flight, code, why);
            return Some(StreamErrorIncoming::ConnectionErrorIncoming {
                connection_error: ConnectionErrorIncoming::ApplicationClose {
                    error_code: code.value(),
                },
            });
        }
        let _ = self
            .stream()
            .stop(VarInt::from_u64(code.value()).unwrap_or(VarInt::MAX));
        Some(StreamErrorIncoming::StreamTerminated {
            error_code: code.value(),
        })
    }

    /// Refuses a frame ([`frames::FrameError`]). One h3 would buffer whole ([`MAX_FRAME`],
    /// [`MAX_FIELD_FRAME`]): on a request stream the peer is told to stop
    /// (H3_EXCESSIVE_LOAD) and h3 sees the stream fail; on the peer's control stream, which
    /// must not be stopped (RFC 9114 §6.2.1), the connection is closed with
    /// H3_EXCESSIVE_LOAD. A malformed or truncated frame closes the connection with
    /// H3_FRAME_ERROR (RFC 9114 §7.1), a control stream that does not begin with SETTINGS
    /// with H3_MISSING_SETTINGS (§6.2.1), a frame of a type reserved for HTTP/2's with
    /// H3_FRAME_UNEXPECTED (§7.2.8).
    fn refuse(&mut self, refused: frames::FrameError) -> StreamErrorIncoming {
        self.ended = true;
        self.given_up = true;
        let (code, why): (_, &[u8]) = match refused {
            frames::FrameError::TooLong { .. } => {
                (h3::error::Code::H3_EXCESSIVE_LOAD, b"frame too long")
            }
            frames::FrameError::Malformed { .. } => {
                (h3::error::Code::H3_FRAME_ERROR, b"malformed frame")
            }
            frames::FrameError::Truncated => (
                h3::error::Code::H3_FRAME_ERROR,
                b"stream ended inside a frame",
            ),
            frames::FrameError::MissingSettings => (
                h3::error::Code::H3_MISSING_SETTINGS,
                b"control stream without SETTINGS first",
            ),
            frames::FrameError::Unexpected { .. } => (
                h3::error::Code::H3_FRAME_UNEXPECTED,
                b"a frame type reserved for HTTP/2",
            ),
        };
        let connection_error = !matches!(refused, frames::FrameError::TooLong { .. });
        if self.is_uni() || connection_error {
            close(&self.conn, &self.flight, code, why);
            return StreamErrorIncoming::ConnectionErrorIncoming {
                connection_error: ConnectionErrorIncoming::ApplicationClose {
                    error_code: code.value(),
                },
            };
        }
        let _ = self
            .stream()
            .stop(VarInt::from_u64(code.value()).unwrap_or(VarInt::MAX));
        StreamErrorIncoming::Unknown(Box::new(refused))
    }
}

/// The sending side of a stream: one h3 frame at a time is queued (`send_data`), then
/// written as the stream's queue takes it (`poll_ready`).
pub struct SendStream<B: Buf> {
    /// `None` only once parked, in `drop`.
    stream: Option<xq::SendStream>,
    pending: Option<WriteBuf<B>>,
    /// Told of the stream's end, so that a clean close waits for it.
    flight: Arc<InFlight>,
    /// A unidirectional stream (h3's control and QPACK streams): parked if dropped before
    /// its end (see [`InFlight::parked`]).
    keep_open: bool,
    /// Finished or reset.
    ended: bool,
    /// Finished, its end watched ([`InFlight::watch`]): the handle goes to the watch when
    /// h3 drops it.
    watched: bool,
    /// h3 gave it something to send.
    written: bool,
    /// A bidirectional stream's: where a reset leaves its code, for the receiving half to
    /// stop the peer's side with the same one.
    reset_code: Option<Arc<AtomicU64>>,
}

impl<B: Buf> SendStream<B> {
    fn new(stream: xq::SendStream, flight: &Arc<InFlight>) -> Self {
        Self {
            keep_open: stream.id().dir() == xdp_quic::Dir::Uni,
            stream: Some(stream),
            pending: None,
            flight: flight.clone(),
            ended: false,
            watched: false,
            written: false,
            reset_code: None,
        }
    }

    fn stream(&mut self) -> &mut xq::SendStream {
        self.stream.as_mut().expect("present until dropped")
    }

    /// Writes what is pending; `Ready(Ok)` once all of it is queued on the stream.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        while let Some(buf) = &mut self.pending {
            if !buf.has_remaining() {
                self.pending = None;
                break;
            }
            match self
                .stream
                .as_mut()
                .expect("present until dropped")
                .poll_write_buf(cx, buf)
            {
                Poll::Ready(Ok(_)) => {}
                Poll::Ready(Err(e)) => return Poll::Ready(Err(write_error(e))),
                Poll::Pending => return Poll::Pending,
            }
        }
        Poll::Ready(Ok(()))
    }
}

impl<B: Buf> quic::SendStream<B> for SendStream<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.poll_pending(cx)
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        if self.pending.as_ref().is_some_and(|b| b.has_remaining()) {
            // A misuse of this trait, not the peer's doing: h3 closes with H3_INTERNAL_ERROR.
            return Err(StreamErrorIncoming::ConnectionErrorIncoming {
                connection_error: ConnectionErrorIncoming::InternalError(NotReady.to_string()),
            });
        }
        self.pending = Some(data.into());
        self.written = true;
        Ok(())
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        if self.poll_pending(cx)?.is_pending() {
            return Poll::Pending;
        }
        let finished = self
            .stream()
            .finish()
            .map_err(|e| StreamErrorIncoming::Unknown(Box::new(e)));
        if finished.is_ok() {
            self.ended = true;
            let id = VarInt::from(self.stream().id()).into_inner();
            let stopped = self.stream().stopped();
            self.flight.watch(id, stopped);
            self.watched = true;
        }
        Poll::Ready(finished)
    }

    fn reset(&mut self, reset_code: u64) {
        if let Some(shared) = &self.reset_code {
            shared.store(reset_code, Ordering::Release);
        }
        self.pending = None;
        self.ended = true;
        let _ = self
            .stream()
            .reset(VarInt::from_u64(reset_code).unwrap_or(VarInt::MAX));
    }

    fn send_id(&self) -> StreamId {
        stream_id(self.stream.as_ref().expect("present until dropped").id())
    }
}

impl<B: Buf> Drop for SendStream<B> {
    /// A stream h3 drops without ending it: its control and QPACK streams are parked (kept
    /// open with the connection); a request or response stream it wrote to is finished, as
    /// h3 expects, and its end watched as `poll_finish`'s (a clean close waits for it); one it never wrote to, or dropped with a frame
    /// half written, is reset with H3_REQUEST_CANCELLED, so that the peer sees a cancelled
    /// exchange and not an empty or cut-off response (h3 drops a request's stream so when
    /// it refuses the request). A finished one
    /// whose end is in flight goes to [`InFlight::adopt`].
    fn drop(&mut self) {
        if self.watched {
            if let Some(stream) = self.stream.take() {
                let id = VarInt::from(stream.id()).into_inner();
                self.flight.adopt(id, stream);
            }
            return;
        }
        if self.ended {
            return;
        }
        if self.keep_open {
            if let Some(stream) = self.stream.take() {
                let mut parked = self.flight.parked.lock().unwrap_or_else(|p| p.into_inner());
                parked.push(stream);
            }
        } else if !self.written || self.pending.as_ref().is_some_and(|b| b.has_remaining()) {
            // Never written to, or dropped with a frame half queued (a cancelled
            // `send_data`): ending it would make a cut-off body look whole.
            let code = h3::error::Code::H3_REQUEST_CANCELLED.value();
            if let Some(stream) = self.stream.as_mut() {
                let _ = stream.reset(VarInt::from_u64(code).unwrap_or(VarInt::MAX));
            }
        } else if let Some(mut stream) = self.stream.take() {
            // Written whole and dropped (h3's own 431 answer, say): finished here, its end
            // watched as `poll_finish`'s, so that a clean close waits for it too.
            if stream.finish().is_ok() {
                let id = VarInt::from(stream.id()).into_inner();
                self.flight.watch(id, stream.stopped());
                self.flight.adopt(id, stream);
            }
        }
    }
}

/// `send_data` was called while an earlier frame was still being written.
#[derive(Debug)]
struct NotReady;

impl std::fmt::Display for NotReady {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("send_data before poll_ready finished the previous frame")
    }
}

impl std::error::Error for NotReady {}

fn stream_id(id: xq::StreamId) -> StreamId {
    StreamId::try_from(VarInt::from(id).into_inner()).expect("a QUIC stream id is a varint")
}

fn connection_error(e: xq::ConnectionError) -> ConnectionErrorIncoming {
    match e {
        xq::ConnectionError::ApplicationClosed(c) => ConnectionErrorIncoming::ApplicationClose {
            error_code: c.error_code.into_inner(),
        },
        xq::ConnectionError::TimedOut => ConnectionErrorIncoming::Timeout,
        other => ConnectionErrorIncoming::Undefined(Arc::new(other)),
    }
}

fn stream_connection_error(e: xq::ConnectionError) -> StreamErrorIncoming {
    StreamErrorIncoming::ConnectionErrorIncoming {
        connection_error: connection_error(e),
    }
}

fn read_error(e: xq::ReadError) -> StreamErrorIncoming {
    match e {
        xq::ReadError::Reset(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        xq::ReadError::ConnectionLost(e) => stream_connection_error(e),
        other => StreamErrorIncoming::Unknown(Box::new(other)),
    }
}

fn write_error(e: xq::WriteError) -> StreamErrorIncoming {
    match e {
        xq::WriteError::Stopped(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        xq::WriteError::ConnectionLost(e) => stream_connection_error(e),
        other => StreamErrorIncoming::Unknown(Box::new(other)),
    }
}
