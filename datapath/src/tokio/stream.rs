//! [`SendStream`] and [`RecvStream`]: the two sides of a stream as tasks hold them.

use std::future::{poll_fn, Future};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use quinn_proto::{Chunk, StreamId, VarInt, Written};

use super::connection::ConnRef;
use super::error::{
    ClosedStream, ReadError, ReadExactError, ReadToEndError, StoppedError, WriteError,
};
use super::shared::{register, Chunks, RecvEnd, SendEnd};
use super::streams::StreamKey;

/// The sending side of a stream. Dropping it finishes the stream (after what was written),
/// or resets it with the peer's code if the peer stopped it, as in quinn.
pub struct SendStream {
    conn: ConnRef,
    key: StreamKey,
}

impl SendStream {
    pub(crate) fn new(conn: ConnRef, key: StreamKey) -> Self {
        Self { conn, key }
    }

    /// The stream's id.
    pub fn id(&self) -> StreamId {
        self.key.id
    }

    /// Queues `buf` (as much of it as the stream's queue takes: [`super::Limits`]), waiting
    /// while the queue is full; returns how much was taken.
    pub async fn write(&mut self, buf: &[u8]) -> Result<usize, WriteError> {
        poll_fn(|cx| self.poll_write_with(cx, buf.len(), |n| Bytes::copy_from_slice(&buf[..n])))
            .await
    }

    /// Writes all of `buf`.
    pub async fn write_all(&mut self, mut buf: &[u8]) -> Result<(), WriteError> {
        while !buf.is_empty() {
            let n = self.write(buf).await?;
            buf = &buf[n..];
        }
        Ok(())
    }

    /// Queues `buf` whole without copying it (quinn-proto keeps the same `Bytes` until the
    /// peer acknowledges them), once the stream's queue has room.
    pub async fn write_chunk(&mut self, buf: Bytes) -> Result<(), WriteError> {
        let mut buf = Some(buf);
        poll_fn(|cx| {
            let len = buf.as_ref().map_or(0, Bytes::len);
            self.poll_write_with(cx, usize::MAX, |_| buf.take().unwrap_or_default())
                .map_ok(|_| len)
        })
        .await
        .map(|_| ())
    }

    /// Queues the chunks of `bufs` whole, as many as have room; says how much went.
    /// Cancel-safe: a chunk leaves `bufs` only when it is queued.
    pub async fn write_chunks(&mut self, bufs: &mut [Bytes]) -> Result<Written, WriteError> {
        let mut written = Written::default();
        for b in bufs.iter_mut() {
            if b.is_empty() {
                written.chunks += 1;
                continue;
            }
            // Written already: no waiting for room, and a failure now is the next call's to
            // report (quinn-proto's `write_chunks` fails only before it wrote anything).
            if written.bytes > 0 && !self.has_room() {
                break;
            }
            match self.write_taken(b).await {
                Ok(n) => written.bytes += n,
                Err(e) if written.bytes == 0 => return Err(e),
                Err(_) => break,
            }
            written.chunks += 1;
        }
        Ok(written)
    }

    /// Queues every chunk of `bufs` whole. Cancel-safe: a chunk leaves `bufs` only when it
    /// is queued.
    pub async fn write_all_chunks(&mut self, bufs: &mut [Bytes]) -> Result<(), WriteError> {
        for b in bufs.iter_mut() {
            self.write_taken(b).await?;
        }
        Ok(())
    }

    /// Queues `b` whole once there is room, taking it out of `b` in the same poll.
    async fn write_taken(&mut self, b: &mut Bytes) -> Result<usize, WriteError> {
        poll_fn(|cx| self.poll_write_with(cx, usize::MAX, |_| std::mem::take(b))).await
    }

    /// Takes octets from the front of `buf` into the stream's queue (without copying when
    /// `buf` is made of `Bytes`), as many as the queue has room for; `Pending` while it is
    /// full. For protocol adapters that poll (quinn has no such method: its callers poll
    /// `AsyncWrite`, which copies).
    pub fn poll_write_buf(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut impl bytes::Buf,
    ) -> Poll<Result<usize, WriteError>> {
        let max = buf.remaining();
        self.poll_write_with(cx, max, |n| buf.copy_to_bytes(n))
    }

    /// Whether a write would queue at once (false too when it would fail).
    fn has_room(&self) -> bool {
        let c = &self.conn.shared();
        let st = c.lock();
        st.error.is_none()
            && st
                .streams
                .get(&self.key)
                .is_some_and(|slot| slot.send_len < c.ep.limits.stream_send)
    }

    /// Takes up to `max` octets made by `take(n)` when the queue has room.
    fn poll_write_with(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
        take: impl FnOnce(usize) -> Bytes,
    ) -> Poll<Result<usize, WriteError>> {
        let c = &self.conn.shared();
        let mut st = c.lock();
        if let Some(e) = &st.error {
            return Poll::Ready(Err(WriteError::ConnectionLost(e.clone())));
        }
        let limit = c.ep.limits.stream_send;
        let Some(slot) = st.streams.get_mut(&self.key) else {
            return Poll::Ready(Err(WriteError::ClosedStream));
        };
        if let SendEnd::Stopped(code) = slot.send_end {
            return Poll::Ready(Err(WriteError::Stopped(code)));
        }
        if slot.finish || slot.reset.is_some() {
            return Poll::Ready(Err(WriteError::ClosedStream));
        }
        let room = limit.saturating_sub(slot.send_len);
        if room == 0 {
            slot.write_waker = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let data = take(room.min(max));
        let n = data.len();
        if n > 0 {
            slot.send_len += n;
            slot.send.push_back(data);
            c.request(&mut st, self.key);
        }
        Poll::Ready(Ok(n))
    }

    /// Ends the stream after what was written. Errs if it was finished or reset already.
    pub fn finish(&mut self) -> Result<(), ClosedStream> {
        let c = &self.conn.shared();
        let mut st = c.lock();
        let slot = st
            .streams
            .get_mut(&self.key)
            .ok_or_else(ClosedStream::new)?;
        if slot.finish || slot.reset.is_some() {
            return Err(ClosedStream::new());
        }
        slot.finish = true;
        c.request(&mut st, self.key);
        Ok(())
    }

    /// Abandons the stream with `error_code`: what is queued is dropped, the peer hears the
    /// code.
    pub fn reset(&mut self, error_code: VarInt) -> Result<(), ClosedStream> {
        let c = &self.conn.shared();
        let mut st = c.lock();
        let slot = st
            .streams
            .get_mut(&self.key)
            .ok_or_else(ClosedStream::new)?;
        if slot.reset.is_some() || slot.send_end == SendEnd::Acked {
            return Err(ClosedStream::new());
        }
        slot.reset = Some(error_code);
        slot.send.clear();
        slot.send_len = 0;
        c.request(&mut st, self.key);
        Ok(())
    }

    /// Completes when the peer has acknowledged everything, the end included (`None`), or
    /// asked us to stop (its code); `None` too when the stream was reset. The future may
    /// outlive the stream's handle: the stream's state is kept until it completes or goes.
    pub fn stopped(
        &self,
    ) -> impl Future<Output = Result<Option<VarInt>, StoppedError>> + Send + Sync + 'static {
        Stopped::new(self.conn.clone(), self.key)
    }
}

/// The future of [`SendStream::stopped`]: counted in its stream's slot while alive
/// (`stopped_futures`), so that the slot stays until the future has seen how the sending
/// side ended (or was dropped).
struct Stopped {
    conn: ConnRef,
    key: StreamKey,
    /// Counted in the slot.
    counted: bool,
}

impl Stopped {
    fn new(conn: ConnRef, key: StreamKey) -> Self {
        let counted = {
            let mut st = conn.shared().lock();
            // Counted whenever the slot is there, its sending side over or not: the handle may
            // go before the future runs, and the slot must stay for it to read a stop's code.
            match st.streams.get_mut(&key) {
                Some(slot) => {
                    slot.stopped_futures += 1;
                    true
                }
                None => false,
            }
        };
        Self { conn, key, counted }
    }
}

/// Stops counting a [`Stopped`] future in the slot of `id` (which may go then).
fn uncount(counted: &mut bool, key: StreamKey, st: &mut super::shared::ConnState) {
    if std::mem::take(counted) {
        if let Some(slot) = st.streams.get_mut(&key) {
            slot.stopped_futures -= 1;
        }
        st.forget_if_done(&key);
    }
}

impl Future for Stopped {
    type Output = Result<Option<VarInt>, StoppedError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut st = this.conn.shared().lock();
        let error = st.error.clone();
        let out = match st.streams.get_mut(&this.key) {
            None => Some(match error {
                Some(e) => Err(StoppedError::ConnectionLost(e)),
                None => Ok(None),
            }),
            Some(slot) => match slot.send_end {
                SendEnd::Acked => Some(Ok(None)),
                SendEnd::Stopped(code) => Some(Ok(Some(code))),
                SendEnd::Open if slot.reset.is_some() => Some(Ok(None)),
                SendEnd::Open => match error {
                    Some(e) => Some(Err(StoppedError::ConnectionLost(e))),
                    None => {
                        register(&mut slot.stopped_waiters, cx.waker());
                        None
                    }
                },
            },
        };
        match out {
            Some(r) => {
                uncount(&mut this.counted, this.key, &mut st);
                Poll::Ready(r)
            }
            None => Poll::Pending,
        }
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        if self.counted {
            let mut st = self.conn.shared().lock();
            uncount(&mut self.counted, self.key, &mut st);
        }
    }
}

impl Drop for SendStream {
    fn drop(&mut self) {
        let c = &self.conn.shared();
        let mut st = c.lock();
        let ended = st.error.is_some();
        let Some(slot) = st.streams.get_mut(&self.key) else {
            return;
        };
        slot.send_handle = false;
        slot.write_waker = None;
        if ended {
            // The connection ended: nothing is sent any more. The slot stays for the
            // receiving side's handle, or a `stopped` future, while there is one.
            st.forget_if_done(&self.key);
            return;
        }
        if slot.reset.is_none() {
            match slot.send_end {
                SendEnd::Open if !slot.finish => slot.finish = true,
                SendEnd::Open | SendEnd::Acked => {}
                // Finished or not: quinn-proto keeps a stopped stream, retransmitting what
                // the peer refused, until it is reset (quinn's drop resets it too).
                SendEnd::Stopped(code) => slot.reset = Some(code),
            }
        }
        if slot.is_done() {
            st.streams.remove(&self.key);
        } else {
            c.request(&mut st, self.key);
        }
    }
}

impl tokio::io::AsyncWrite for SendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut()
            .poll_write_with(cx, buf.len(), |n| Bytes::copy_from_slice(&buf[..n]))
            .map_err(Into::into)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(self.get_mut().finish().map_err(Into::into))
    }
}

/// The receiving side of a stream. Dropping it before its end stops the stream (code 0), as
/// in quinn.
pub struct RecvStream {
    conn: ConnRef,
    key: StreamKey,
    /// Read to its end (or reset, or stopped): nothing to do on drop.
    all_read: bool,
}

impl RecvStream {
    pub(crate) fn new(conn: ConnRef, key: StreamKey) -> Self {
        Self {
            conn,
            key,
            all_read: false,
        }
    }

    /// The stream's id.
    pub fn id(&self) -> StreamId {
        self.key.id
    }

    /// Always false: this API opens no 0-RTT streams.
    pub fn is_0rtt(&self) -> bool {
        false
    }

    /// Reads into `buf`: `Some(n)` octets, or `None` at the end of the stream.
    pub async fn read(&mut self, buf: &mut [u8]) -> Result<Option<usize>, ReadError> {
        if buf.is_empty() {
            return Ok(Some(0));
        }
        let mut buf = tokio::io::ReadBuf::new(buf);
        poll_fn(|cx| self.poll_copy(cx, &mut buf)).await
    }

    /// Fills `buf`, or errs with how much came before the stream ended.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), ReadExactError> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.read(&mut buf[filled..]).await? {
                Some(n) => filled += n,
                None => return Err(ReadExactError::FinishedEarly(filled)),
            }
        }
        Ok(())
    }

    /// The next chunk, at most `max_length` octets, without copying. Reads are always in
    /// order here (which an unordered reader accepts too).
    pub async fn read_chunk(
        &mut self,
        max_length: usize,
        _ordered: bool,
    ) -> Result<Option<Chunk>, ReadError> {
        poll_fn(|cx| {
            self.poll_take(cx, |recv, offset| {
                let bytes = take_chunk(recv, max_length);
                let n = bytes.len();
                (Chunk { offset, bytes }, n)
            })
        })
        .await
    }

    /// Fills `bufs` with the next chunks without copying; `None` at the end.
    pub async fn read_chunks(&mut self, bufs: &mut [Bytes]) -> Result<Option<usize>, ReadError> {
        if bufs.is_empty() {
            return Ok(Some(0));
        }
        match poll_fn(|cx| self.poll_chunk(cx, usize::MAX)).await? {
            None => Ok(None),
            Some(first) => {
                bufs[0] = first;
                let mut n = 1;
                while n < bufs.len() {
                    match self.try_chunk() {
                        Some(b) => {
                            bufs[n] = b;
                            n += 1;
                        }
                        None => break,
                    }
                }
                Ok(Some(n))
            }
        }
    }

    /// The next buffered chunk, if there is one now. Never takes the stream's end or its
    /// reset: those are for the next read to report (taking them here would lose them).
    fn try_chunk(&mut self) -> Option<Bytes> {
        let buffered = {
            let c = &self.conn.shared();
            let st = c.lock();
            st.streams
                .get(&self.key)
                .is_some_and(|slot| !slot.recv.is_empty())
        };
        if !buffered {
            return None;
        }
        let waker = std::task::Waker::noop();
        match self.poll_chunk(&mut Context::from_waker(waker), usize::MAX) {
            Poll::Ready(Ok(Some(b))) => Some(b),
            _ => None,
        }
    }

    /// Reads the whole stream, up to `size_limit` octets.
    pub async fn read_to_end(&mut self, size_limit: usize) -> Result<Vec<u8>, ReadToEndError> {
        let mut out = Vec::new();
        while let Some(chunk) = poll_fn(|cx| self.poll_chunk(cx, usize::MAX)).await? {
            if out.len() + chunk.len() > size_limit {
                return Err(ReadToEndError::TooLong);
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }

    /// Stops reading: the peer is asked to stop sending with `error_code`, what is buffered
    /// is dropped.
    pub fn stop(&mut self, error_code: VarInt) -> Result<(), ClosedStream> {
        if self.all_read {
            return Err(ClosedStream::new());
        }
        self.all_read = true;
        let c = &self.conn.shared();
        let mut st = c.lock();
        let limits = c.ep.limits;
        let Some(slot) = st.streams.get_mut(&self.key) else {
            return Err(ClosedStream::new());
        };
        if slot.recv_end == RecvEnd::Open {
            slot.stop = Some(error_code);
        }
        slot.read_waker = None;
        let resume = st.release_recv(&limits, &self.key);
        if st.forget_if_done(&self.key) {
            c.request(&mut st, self.key);
        }
        if resume {
            st.resume = true;
            c.schedule(&mut st);
        }
        Ok(())
    }

    /// The next received octets (at most `max`) without copying, the end (`None`), or the
    /// stream's error; `Pending` until one of them is there. For protocol adapters that
    /// poll ([`RecvStream::read_chunk`] is the same as a future).
    pub fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<Option<Bytes>, ReadError>> {
        self.poll_chunk(cx, max)
    }

    /// The next buffered octets (at most `max`), the end (`None`), or the stream's error.
    fn poll_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<Result<Option<Bytes>, ReadError>> {
        self.poll_take(cx, |recv, _| {
            let b = take_chunk(recv, max);
            let n = b.len();
            (b, n)
        })
    }

    /// Copies as much buffered data as fits into the unfilled part of `buf` (from as many
    /// chunks as it takes, writing only the octets it copies: no zeroing of the rest);
    /// `None` at the end.
    fn poll_copy(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<Result<Option<usize>, ReadError>> {
        self.poll_take(cx, |recv, _| {
            let mut n = 0;
            while buf.remaining() > 0 {
                let Some(front) = recv.front_mut() else {
                    break;
                };
                let k = front.len().min(buf.remaining());
                buf.put_slice(&front[..k]);
                n += k;
                if k == front.len() {
                    recv.pop_front();
                } else {
                    let _ = front.split_to(k);
                    keep_own(front, k);
                }
            }
            (n, n)
        })
    }

    /// Takes buffered data with `take` (given a non-empty queue and the stream offset of
    /// its front; returns what it made and how many octets it took), or reports the end or the stream's error. Asks the worker
    /// to read on when this read brings the stream's buffer, or the connection's, down
    /// across half its limit while reading is paused (not at every read: a paused stream
    /// resumed for a few octets of room would come back in tiny pieces).
    fn poll_take<T>(
        &mut self,
        cx: &mut Context<'_>,
        take: impl FnOnce(&mut Chunks, u64) -> (T, usize),
    ) -> Poll<Result<Option<T>, ReadError>> {
        if self.all_read {
            // Past the end (read, reset and reported, or stopped): the end again, as quinn.
            return Poll::Ready(Ok(None));
        }
        let c = &self.conn.shared();
        let limits = c.ep.limits;
        let mut st = c.lock();
        let error = st.error.clone();
        // A local close the worker has not applied yet: it first moves here what quinn-proto
        // holds for the stream, then wakes the readers.
        let close_pending = st.close.is_some();
        let Some(slot) = st.streams.get_mut(&self.key) else {
            return Poll::Ready(Err(match error {
                Some(e) => ReadError::ConnectionLost(e),
                None => ReadError::ClosedStream,
            }));
        };
        if !slot.recv.is_empty() {
            let before = slot.recv_len;
            let chunks = slot.recv.count();
            let (out, n) = take(&mut slot.recv, slot.recv_offset);
            let taken = chunks - slot.recv.count();
            slot.recv_len -= n;
            slot.recv_offset += n as u64;
            let half = limits.stream_receive / 2;
            let room_here = slot.paused && before > half && slot.recv_len <= half;
            let room_on_conn = st.consumed(&limits, n, taken);
            if (room_here || room_on_conn) && error.is_none() {
                st.resume = true;
                c.schedule(&mut st);
            }
            return Poll::Ready(Ok(Some(out)));
        }
        let end = slot.recv_end;
        match end {
            RecvEnd::Open => {
                match error {
                    Some(e) if !close_pending => {
                        return Poll::Ready(Err(ReadError::ConnectionLost(e)));
                    }
                    Some(_) => {
                        slot.read_waker = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                    None => {}
                }
                slot.read_waker = Some(cx.waker().clone());
                if slot.paused {
                    // Paused for the connection's budgets while this reader has nothing:
                    // the worker gives a waiting reader its chunk anyway (`read_into`).
                    st.resume = true;
                    c.schedule(&mut st);
                }
                Poll::Pending
            }
            RecvEnd::Finished | RecvEnd::Reset(_) => {
                self.all_read = true;
                let resume = st.release_recv(&limits, &self.key);
                st.forget_if_done(&self.key);
                if resume && error.is_none() {
                    st.resume = true;
                    c.schedule(&mut st);
                }
                Poll::Ready(match end {
                    RecvEnd::Reset(code) => Err(ReadError::Reset(code)),
                    _ => Ok(None),
                })
            }
        }
    }
}

/// The next chunk of the non-empty queue `recv`, at most `max` octets.
fn take_chunk(recv: &mut Chunks, max: usize) -> Bytes {
    let front = recv.front_mut().expect("called with data buffered");
    if front.len() <= max {
        recv.pop_front().expect("front exists")
    } else {
        let b = front.split_to(max);
        keep_own(front, max);
        b
    }
}

/// After `taken` octets came off the front of `rest`, a chunk long enough to be kept as a
/// slice of its receive buffer: the rest, once it is short, goes into a buffer of its own
/// (once: a short chunk already is one), so that it does not keep the whole of that buffer
/// ([`crate::conn::DETACH_BELOW`]).
fn keep_own(rest: &mut Bytes, taken: usize) {
    if rest.len() + taken >= crate::conn::DETACH_BELOW {
        *rest = crate::conn::detach(std::mem::take(rest));
    }
}

impl Drop for RecvStream {
    fn drop(&mut self) {
        if self.all_read {
            return;
        }
        let c = &self.conn.shared();
        let mut st = c.lock();
        if st.error.is_some() {
            // The receiving side goes; the sending side's handle, or a `stopped` future of
            // it, still reads the slot (each lets it go in turn).
            if let Some(slot) = st.streams.get_mut(&self.key) {
                slot.recv_handle = false;
                slot.recv = Default::default();
            }
            st.forget_if_done(&self.key);
            return;
        }
        drop(st);
        let _ = self.stop(VarInt::from_u32(0));
    }
}

impl tokio::io::AsyncRead for RecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.all_read {
            // Past the end: end of file again, as for any reader.
            return Poll::Ready(Ok(()));
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        match this.poll_copy(cx, buf) {
            Poll::Ready(Ok(Some(_))) => Poll::Ready(Ok(())),
            Poll::Ready(Ok(None)) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e.into())),
            Poll::Pending => Poll::Pending,
        }
    }
}
