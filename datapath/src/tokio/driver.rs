//! The worker's side of the async API: a [`Handler`] that moves events into the shared
//! state and wakes the tasks waiting on them, and applies the tasks' requests in batches.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use quinn_proto::{ConnectionError, Dir, StreamId, VarInt};

use super::shared::{
    dir_index, lock, Attempt, ConnShared, ConnState, EndpointShared, Op, RecvEnd, SendEnd,
    StreamSlot, Wakes,
};
use super::streams::{Lookup, StreamKey};
use crate::accept::{Decision, Incoming};
use crate::backend::Backend;
use crate::conn::{detach, Conn, ConnId, Ctx, ReadStatus, StreamError};
use crate::engine::threads::Runner;
use crate::handler::Handler;

/// One worker's handler for the async API.
pub struct Driver {
    ep: Arc<EndpointShared>,
    worker: usize,
    conns: HashMap<ConnId, Arc<ConnShared>, rustc_hash::FxBuildHasher>,
    /// A stream the peer opened, announced by `stream_opened` and registered with the
    /// `stream_readable` call the worker makes right after it: one lock for both.
    opened: Option<(ConnId, StreamId)>,
    /// The ops of the batch being run, last first; after the batch, its spare buffer. A
    /// panic in the batch leaves the ops it did not reach here, and the connection of the op
    /// it cut short in `running`: [`Driver::end`] fails both, so that no task waits on them
    /// (nor `wait_idle` on their count).
    ops: Vec<Op>,
    running: Option<Arc<ConnShared>>,
    todo: Vec<StreamKey>,
}

impl Driver {
    pub(crate) fn new(ep: Arc<EndpointShared>, worker: usize) -> Self {
        Self {
            ep,
            worker,
            conns: HashMap::default(),
            opened: None,
            ops: Vec::new(),
            running: None,
            todo: Vec::new(),
        }
    }

    /// Runs the ops the tasks queued for this worker (posted by [`EndpointShared::push`]).
    pub(crate) fn drain(&mut self, ctx: &mut Ctx<'_>) {
        self.flush_opened();
        self.ep.inboxes[self.worker].take(&mut self.ops);
        self.ops.reverse();
        while let Some(op) = self.ops.pop() {
            match op {
                Op::Service(c) => {
                    let id = c.lock().id;
                    let done = id.and_then(|id| ctx.with_conn(id, |conn| self.service(conn, &c)));
                    if done.is_none() {
                        // Not registered yet (a connect under way) or gone: `connected`
                        // applies what is pending, `closed` fails it.
                        c.lock().scheduled = false;
                    }
                }
                Op::Decide(attempt, decision, conn) => {
                    // Once the endpoint is closing, `CloseAll` has gone by: a connection
                    // accepted now would live on (and `wait_idle` wait for it), so it is
                    // refused, as quinn closes those that come after its close.
                    let decision = if self.ep.is_closing() {
                        Decision::Refuse
                    } else {
                        decision
                    };
                    self.running.clone_from(&conn);
                    let outcome = ctx.decide(attempt, decision);
                    self.running = None;
                    if let Some(c) = conn {
                        match outcome {
                            Ok(Some(id)) => self.register(id, c),
                            Ok(None) => fail(&c, ConnectionError::LocallyClosed),
                            Err(_) => fail(&c, ConnectionError::TimedOut),
                        }
                    }
                }
                // As for `Decide`: a connect that raced `Endpoint::close` (checked by the
                // task before the close, queued behind its `CloseAll`) is not opened.
                Op::Connect { conn, .. } if self.ep.is_closing() => {
                    fail(&conn, ConnectionError::LocallyClosed)
                }
                Op::Connect {
                    conn,
                    config,
                    remote,
                    server_name,
                } => {
                    self.running = Some(conn.clone());
                    let opened = ctx.connect_with(config, remote, &server_name);
                    self.running = None;
                    match opened {
                        Ok(id) => self.register(id, conn),
                        Err(e) => {
                            tracing::debug!(%remote, "connect failed on the worker: {e}");
                            fail(&conn, ConnectionError::LocallyClosed)
                        }
                    }
                }
                Op::SetServerConfig(config) => ctx.set_server_config(config),
                Op::CloseAll(code, reason) => {
                    let conns: Vec<(ConnId, Arc<ConnShared>)> =
                        self.conns.iter().map(|(id, c)| (*id, c.clone())).collect();
                    for (id, c) in conns {
                        let mut wakes = Wakes::default();
                        ctx.with_conn(id, |conn| {
                            // As `Connection::close`: what quinn-proto holds stays readable.
                            drain_on_loss(conn, &mut c.lock(), &mut wakes);
                            conn.close(code, &reason)
                        });
                        wakes.wake();
                        // As `Connection::close`: new operations fail from now on, not once
                        // the close's drain has ended.
                        c.closed_locally();
                    }
                }
            }
        }
    }

    fn register(&mut self, id: ConnId, c: Arc<ConnShared>) {
        {
            let mut st = c.lock();
            st.id = Some(id);
        }
        self.conns.insert(id, c);
    }

    fn shared(&self, conn: &Conn<'_>) -> Option<Arc<ConnShared>> {
        self.conns.get(&conn.id()).cloned()
    }

    /// Applies every request marked on connection `c`.
    fn service(&mut self, conn: &mut Conn<'_>, c: &Arc<ConnShared>) {
        let mut wakes = Wakes::default();
        {
            let mut st = c.lock();
            st.scheduled = false;
            if let Some((code, reason)) = st.close.take() {
                // What quinn-proto holds for the streams a handle may read stays readable,
                // as in quinn, which reads it from quinn-proto after a close too. Readers
                // that waited for this (`RecvStream`'s reads after a close) look again.
                drain_on_loss(conn, &mut st, &mut wakes);
                conn.close(code, &reason);
                st.wake_all(&mut wakes);
            }
            open_streams(conn, &mut st, &mut wakes);
            while let Some(d) = st.out_datagrams.pop() {
                // Too large, unsupported by the peer or turned off here was checked by the
                // task. quinn-proto refuses it still on a path that shrank since (dropped,
                // as the network could).
                let _ = conn.send_datagram(d);
            }
            let mut todo = std::mem::take(&mut self.todo);
            std::mem::swap(&mut todo, &mut st.todo);
            for key in todo.drain(..) {
                apply(conn, &mut st, key, &mut wakes);
            }
            self.todo = todo;
            if std::mem::take(&mut st.resume) {
                let paused = std::mem::take(&mut st.paused);
                for id in paused {
                    if let Some(slot) = st.streams.get_mut(&id) {
                        slot.paused = false;
                    }
                    read_into(conn, &mut st, &self.ep, id, &mut wakes);
                }
            }
            refresh(conn, &mut st);
            st.info.stats = Some(conn.stats());
        }
        wakes.wake();
    }

    /// Registers the stream `stream_opened` announced, if the `stream_readable` call that
    /// registers it did not come (the worker makes both for each new stream, in a row).
    fn flush_opened(&mut self) {
        let Some((id, stream)) = self.opened.take() else {
            return;
        };
        let Some(c) = self.conns.get(&id) else { return };
        let mut wakes = Wakes::default();
        {
            let mut st = c.lock();
            let side = st.side;
            accept_stream(&mut st, stream, side, &mut wakes);
        }
        wakes.wake();
    }

    /// Runs `f` on the shared state of `conn`, then wakes what it collected.
    fn with_state(
        &mut self,
        conn: &mut Conn<'_>,
        f: impl FnOnce(&mut Conn<'_>, &mut ConnState, &EndpointShared, &mut Wakes),
    ) {
        self.flush_opened();
        let Some(c) = self.conns.get(&conn.id()) else {
            return;
        };
        let mut wakes = Wakes::default();
        {
            let mut st = c.lock();
            f(conn, &mut st, &self.ep, &mut wakes);
        }
        wakes.wake();
    }
}

/// Moves everything quinn-proto holds for the streams a handle may read into their queues,
/// ends included, ignoring the receive budgets: the connection is lost or closed, nothing
/// more comes (quinn-proto's windows bounded what it holds).
fn drain_on_loss(conn: &mut Conn<'_>, st: &mut ConnState, wakes: &mut Wakes) {
    let mut taken = Taken::of(st);
    for slot in st.streams.values_mut() {
        if slot.stop.is_some() || slot.recv_end != RecvEnd::Open || !slot.recv_handle {
            continue;
        }
        let mut woke = false;
        let end = conn.read_chunks(slot.id, |chunk| {
            if let Some(b) = chunk {
                queue_chunk(slot, b, &mut taken);
                woke = true;
            }
            usize::MAX
        });
        woke |= queue_end(slot, end, &mut taken);
        slot.paused = false;
        if woke {
            wakes.add(slot.read_waker.take());
        }
    }
    taken.store(st);
}

/// The connection's receive budgets in use ([`ConnState`]'s `buffered`, `held`, `chunks`),
/// tallied while reads move data into the slots.
#[derive(Clone, Copy)]
struct Taken {
    buffered: usize,
    held: usize,
    chunks: usize,
}

impl Taken {
    fn of(st: &ConnState) -> Self {
        Self {
            buffered: st.buffered,
            held: st.held,
            chunks: st.chunks,
        }
    }

    fn store(self, st: &mut ConnState) {
        st.buffered = self.buffered;
        st.held = self.held;
        st.chunks = self.chunks;
    }
}

/// Queues chunk `b` of `slot`'s stream for its reader, counting it in `taken`.
fn queue_chunk(slot: &mut StreamSlot, b: Bytes, taken: &mut Taken) {
    let b = detach(b);
    slot.recv_len += b.len();
    taken.buffered += b.len();
    taken.chunks += 1;
    slot.recv.push_back(b);
}

/// Records the end of `slot`'s stream if a [`Conn::read_chunks`] pass reached it (finished
/// or reset), counting the stream as held in `taken`; returns whether it did.
fn queue_end(
    slot: &mut StreamSlot,
    end: Result<Option<ReadStatus>, StreamError>,
    taken: &mut Taken,
) -> bool {
    slot.recv_end = match end {
        Ok(Some(ReadStatus::Finished)) => RecvEnd::Finished,
        Err(StreamError::Reset(code)) => RecvEnd::Reset(code),
        Ok(Some(ReadStatus::Blocked)) | Ok(None) | Err(_) => return false,
    };
    slot.held = true;
    taken.held += 1;
    true
}

/// Ends connection `c` for its tasks, where no worker will: it takes `error` (unless it has
/// an error already), its waiters are woken, and the endpoint no longer counts it. For a
/// connection that never registered on a worker, or whose worker has ended
/// ([`Driver::end`]); one its worker serves ends through `Handler::closed`. Call it holding
/// no connection's lock.
pub(crate) fn fail(c: &ConnShared, error: ConnectionError) {
    let mut wakes = Wakes::default();
    {
        let mut st = c.lock();
        st.error.get_or_insert(error);
        // A close no worker will apply: readers waiting for it hear the error now.
        st.close = None;
        st.wake_all(&mut wakes);
    }
    wakes.wake();
    c.closed.notify_waiters();
    c.uncount();
}

/// Refreshes what the tasks read without asking.
fn refresh(conn: &mut Conn<'_>, st: &mut ConnState) {
    st.info.remote = Some(conn.remote_address());
    st.info.rtt = conn.rtt();
    st.info.max_datagram = conn.max_datagram_size();
}

/// A stream the peer opened: it waits for `accept_bi` / `accept_uni`.
fn accept_stream(st: &mut ConnState, stream: StreamId, side: quinn_proto::Side, wakes: &mut Wakes) {
    st.streams.insert(stream, StreamSlot::new(stream, side));
    st.incoming[dir_index(stream.dir())].push_back(stream);
    wakes.all(&mut st.accept_waiters);
}

/// Opens the streams tasks asked for, as far as the peer allows.
fn open_streams(conn: &mut Conn<'_>, st: &mut ConnState, wakes: &mut Wakes) {
    let side = conn.side();
    for dir in [Dir::Bi, Dir::Uni] {
        let d = dir_index(dir);
        while st.open_requests[d] > 0 {
            let opened = match dir {
                Dir::Bi => conn.open_bi(),
                Dir::Uni => conn.open_uni(),
            };
            let Some(id) = opened else { break };
            st.streams.insert(id, StreamSlot::new(id, side));
            st.opened[d].push_back(id);
            st.open_requests[d] -= 1;
            wakes.all(&mut st.open_waiters);
        }
    }
}

/// Applies the requests marked on stream `id`: stop, reset, queued writes, finish.
fn apply(conn: &mut Conn<'_>, st: &mut ConnState, k: impl Lookup, wakes: &mut Wakes) {
    let Some(slot) = st.streams.get_mut(&k) else {
        return;
    };
    let id = slot.id;
    slot.queued = false;
    if let (Some(code), false) = (slot.stop, slot.stop_sent) {
        let _ = conn.stop(id, code);
        slot.stop_sent = true;
    }
    if let (Some(code), false) = (slot.reset, slot.reset_sent) {
        let _ = conn.reset(id, code);
        slot.reset_sent = true;
        slot.send.clear();
        slot.send_len = 0;
        wakes.all(&mut slot.stopped_waiters);
    }
    push_send(conn, slot, id, wakes);
    if slot.is_done() {
        st.streams.remove(&k);
    }
}

/// Moves the stream's queued octets into quinn-proto as far as flow control allows, then
/// its end when asked for and everything went.
fn push_send(conn: &mut Conn<'_>, slot: &mut StreamSlot, id: StreamId, wakes: &mut Wakes) {
    let before = slot.send_len;
    while let Some(front) = slot.send.front_mut() {
        let len = front.len();
        match conn.write_chunk(id, front) {
            Ok(0) if len > 0 => break,
            Ok(n) => {
                slot.send_len -= n;
                if front.is_empty() {
                    slot.send.pop_front();
                }
            }
            Err(e) => {
                match e {
                    StreamError::Stopped(code) => stopped_by_peer(conn, slot, id, code, wakes),
                    // quinn-proto has no such stream any more: its sending side is over.
                    _ => over_already(slot, wakes),
                }
                slot.send.clear();
                slot.send_len = 0;
                break;
            }
        }
    }
    if slot.send.is_empty() && slot.finish && !slot.finish_sent {
        slot.finish_sent = true;
        match conn.finish(id) {
            Ok(()) => {}
            Err(StreamError::Stopped(code)) => stopped_by_peer(conn, slot, id, code, wakes),
            Err(_) => over_already(slot, wakes),
        }
    }
    if slot.send_len < before || slot.send_end != SendEnd::Open {
        wakes.add(slot.write_waker.take());
    }
}

/// The peer stopped the sending side of `slot`: what is queued goes, `stopped` waiters
/// learn the code, and a stream whose `SendStream` is gone is reset with it at once, as the
/// handle's drop would have (quinn-proto keeps a stopped stream, and its credit, until it is
/// reset).
fn stopped_by_peer(
    conn: &mut Conn<'_>,
    slot: &mut StreamSlot,
    id: StreamId,
    code: VarInt,
    wakes: &mut Wakes,
) {
    slot.send_end = SendEnd::Stopped(code);
    slot.send.clear();
    slot.send_len = 0;
    if !slot.send_handle && slot.reset.is_none() {
        let _ = conn.reset(id, code);
        slot.reset = Some(code);
        slot.reset_sent = true;
    }
    wakes.add(slot.write_waker.take());
    wakes.all(&mut slot.stopped_waiters);
}

/// quinn-proto refused a write or finish for a stream it no longer has (reset, or done):
/// its sending side is over, as quinn reports it (`stopped` completes with `None`).
fn over_already(slot: &mut StreamSlot, wakes: &mut Wakes) {
    if slot.send_end == SendEnd::Open {
        slot.send_end = SendEnd::Acked;
    }
    wakes.add(slot.write_waker.take());
    wakes.all(&mut slot.stopped_waiters);
}

/// What a stream whose reader waits on an empty buffer may take beyond the connection's
/// budgets (see [`read_into`]).
const STARVING_GRANT: usize = 64 << 10;

/// Chunks queued for the application on one connection at most (beyond them the worker
/// leaves data in quinn-proto, as past the octet budgets): each costs its queue slot and
/// allocation beside its octets.
pub(crate) const MAX_CHUNKS: usize = 1024;

/// Moves what stream `id` has received out of quinn-proto into its buffer, while the
/// limits leave room; a stream left with data in quinn-proto is paused until the
/// application makes room.
///
/// A stream whose reader waits on an empty buffer is never held back by the connection's
/// budgets (`connection_receive`, `held_streams`, [`MAX_CHUNKS`]), only by its own: it
/// takes one chunk of at most [`STARVING_GRANT`] beyond them. What waits is in buffers of
/// its own ([`detach`]). Otherwise streams the application has not
/// accepted (or read to their end) yet could fill the budgets and stall the one it reads,
/// which quinn's per-stream flow control never does.
fn read_into(
    conn: &mut Conn<'_>,
    st: &mut ConnState,
    ep: &EndpointShared,
    id: StreamId,
    wakes: &mut Wakes,
) {
    let limits = &ep.limits;
    let mut taken = Taken::of(st);
    let mut pause = false;
    {
        let Some(slot) = st.streams.get_mut(&id) else {
            return;
        };
        if slot.stop.is_some() || slot.recv_end != RecvEnd::Open || !slot.recv_handle {
            return;
        }
        let mut woke = false;
        let end = conn.read_chunks(id, |chunk| {
            if let Some(b) = chunk {
                queue_chunk(slot, b, &mut taken);
                woke = true;
            }
            let starving = slot.recv_len == 0 && slot.read_waker.is_some();
            let over = taken.buffered >= limits.connection_receive
                || taken.held >= limits.held_streams
                || taken.chunks >= MAX_CHUNKS;
            if slot.recv_len >= limits.stream_receive || (over && !starving) {
                pause = !slot.paused;
                slot.paused = true;
                return 0;
            }
            let room = limits.stream_receive - slot.recv_len;
            if over {
                room.min(STARVING_GRANT)
            } else {
                // Not past the connection's budget with this read either.
                room.min(limits.connection_receive - taken.buffered)
            }
        });
        woke |= queue_end(slot, end, &mut taken);
        if woke {
            wakes.add(slot.read_waker.take());
        }
    }
    taken.store(st);
    if pause {
        st.paused.push(id);
    }
}

impl Handler for Driver {
    fn incoming(&mut self, ctx: &mut Ctx<'_>, i: &Incoming<'_>) -> Decision {
        if self.ep.is_closing() || self.ep.refusing.load(std::sync::atomic::Ordering::Acquire) {
            return Decision::Refuse;
        }
        // Refused here, not queued, when the worker cannot hold it either: an entry for an
        // attempt the worker refuses could only fail the task that accepts it.
        if ctx.defer_room() == 0 {
            return Decision::Refuse;
        }
        let waiters = {
            let mut q = lock(self.ep.accept_queue(self.worker));
            if !q.has_room(self.ep.limits.incoming) {
                return Decision::Refuse;
            }
            q.attempts.push_back(Attempt {
                at: std::time::Instant::now(),
                worker: self.worker,
                id: i.id(),
                remote: i.remote_address(),
                local_ip: i.local_ip(),
                validated: i.address_validated(),
                hello: i.client_hello().cloned(),
            });
            std::mem::take(&mut q.waiters)
        };
        for w in waiters {
            w.wake();
        }
        Decision::Defer
    }

    fn connected(&mut self, conn: &mut Conn<'_>) {
        self.flush_opened();
        let Some(c) = self.shared(conn) else { return };
        {
            let mut st = c.lock();
            st.established = true;
            st.info.handshake = conn.handshake_data();
            st.info.peer_certificates = conn.peer_certificates();
            // A setting of the connection's transport: asked once (a task has the
            // connection only from here on: no 0-RTT).
            st.info.datagrams_off = !conn.datagrams_enabled();
            // Before the wake: the woken task may ask at once (on another thread).
            refresh(conn, &mut st);
            if let Some(w) = st.connecting.take() {
                w.wake();
            }
        }
        // Requests made while connecting (a close, say) go now.
        self.service(conn, &c);
    }

    fn stream_opened(&mut self, conn: &mut Conn<'_>, stream: StreamId) {
        // Registered by the `stream_readable` call that follows (see `opened`).
        self.flush_opened();
        self.opened = Some((conn.id(), stream));
    }

    fn stream_readable(&mut self, conn: &mut Conn<'_>, stream: StreamId) {
        // Any other stream announced is registered first, by `with_state`.
        let new = self.opened == Some((conn.id(), stream));
        if new {
            self.opened = None;
        }
        self.with_state(conn, |conn, st, ep, wakes| {
            if new {
                accept_stream(st, stream, conn.side(), wakes);
            }
            read_into(conn, st, ep, stream, wakes);
            refresh(conn, st);
        });
    }

    fn stream_writable(&mut self, conn: &mut Conn<'_>, stream: StreamId) {
        self.with_state(conn, |conn, st, _, wakes| {
            apply(conn, st, stream, wakes);
        });
    }

    fn stream_finished(&mut self, conn: &mut Conn<'_>, stream: StreamId) {
        self.with_state(conn, |_, st, _, wakes| {
            if let Some(slot) = st.streams.get_mut(&stream) {
                if slot.send_end == SendEnd::Open {
                    slot.send_end = SendEnd::Acked;
                }
                wakes.all(&mut slot.stopped_waiters);
                if slot.is_done() {
                    st.streams.remove(&stream);
                }
            }
        });
    }

    fn stream_stopped(&mut self, conn: &mut Conn<'_>, stream: StreamId, code: VarInt) {
        self.with_state(conn, |conn, st, _, wakes| {
            match st.streams.get_mut(&stream) {
                Some(slot) => {
                    stopped_by_peer(conn, slot, stream, code, wakes);
                    if slot.is_done() {
                        st.streams.remove(&stream);
                    }
                }
                // Forgotten here (finished, no handle left): nobody will reset it.
                None => {
                    let _ = conn.reset(stream, code);
                }
            }
        });
    }

    fn streams_available(&mut self, conn: &mut Conn<'_>) {
        self.with_state(conn, |conn, st, _, wakes| open_streams(conn, st, wakes));
    }

    fn datagram(&mut self, conn: &mut Conn<'_>, data: Bytes) {
        self.with_state(conn, |conn, st, ep, wakes| {
            refresh(conn, st);
            // Unreliable: the oldest go when the application falls behind.
            st.datagrams.push(detach(data), ep.limits.datagram_receive);
            wakes.all(&mut st.datagram_waiters);
        });
    }

    fn lost(&mut self, conn: &mut Conn<'_>, _reason: &ConnectionError) {
        // What the peer sent (and may have seen acknowledged) and quinn-proto still holds
        // for streams a handle may read: taken now, whatever the budgets (quinn-proto's
        // windows bounded it), before `closed` keeps only what was taken. quinn reads it
        // from quinn-proto after the loss as well.
        self.with_state(conn, |conn, st, _, wakes| {
            drain_on_loss(conn, st, wakes);
            // The final figures (quinn's `stats` after the end gives them too).
            st.info.stats = Some(conn.stats());
        });
    }

    fn closed(&mut self, _ctx: &mut Ctx<'_>, id: ConnId, reason: &ConnectionError) {
        self.flush_opened();
        let Some(c) = self.conns.remove(&id) else {
            return;
        };
        let mut wakes = Wakes::default();
        {
            let mut st = c.lock();
            st.error.get_or_insert_with(|| reason.clone());
            st.close = None;
            st.wake_all(&mut wakes);
            // What no handle can read any more goes now; what a handle may still read stays
            // with it (quinn hands out buffered data before the connection's error).
            // A `stopped` future keeps its slot too, and so does a `SendStream`, which may
            // make one later: it must still learn how the sending side ended (acknowledged
            // or stopped before the close), as quinn tells it. What such a slot queued to
            // send goes: nothing will send it.
            // (`send_handle` is set ahead for streams no handle holds yet: those the peer
            // opened, waiting to be accepted, and those opened for an `open_*` not served.)
            let unclaimed: Vec<StreamId> = st
                .incoming
                .iter()
                .chain(&st.opened)
                .flatten()
                .copied()
                .collect();
            st.streams.retain(|id, s| {
                s.stopped_futures > 0
                    || (s.send_handle && !unclaimed.contains(id))
                    || (s.recv_handle && (!s.recv.is_empty() || s.recv_end != RecvEnd::Open))
            });
            for s in st.streams.values_mut() {
                s.send.clear();
                s.send_len = 0;
            }
            // Streams the peer opened and the application has not accepted yet stay
            // acceptable while their data lasts (quinn's accept hands them out before the
            // error too).
            let ConnState {
                incoming, streams, ..
            } = &mut *st;
            for q in incoming.iter_mut() {
                q.retain(|id| streams.get(id).is_some());
            }
            st.opened = Default::default();
            st.out_datagrams.clear();
        }
        wakes.wake();
        c.closed.notify_waiters();
        c.uncount();
    }
}

impl Driver {
    /// The worker has ended (stopped, or failed, or its handler poisoned by a panic): the
    /// tasks still waiting on its connections hear that they are gone, what was queued for
    /// it fails, and later operations fail at once. Called as the worker's thread ends
    /// ([`Ending`]), not only when the engine is joined, which waits for the tasks' handles.
    /// Idempotent.
    pub(crate) fn end(&mut self) {
        self.flush_opened();
        self.ep
            .closing
            .store(true, std::sync::atomic::Ordering::Release);
        for (_, c) in self.conns.drain() {
            fail(&c, ConnectionError::LocallyClosed);
        }
        if let Some(c) = self.running.take() {
            fail(&c, ConnectionError::LocallyClosed);
        }
        for op in self.ops.drain(..) {
            super::shared::fail_op(op);
        }
        self.ep.inboxes[self.worker].end();
        // The endpoint accepts nothing more, on any worker (`closing`): every accept
        // queue's waiters learn it (in thread-per-core mode the other workers' `accept`s
        // would otherwise wait for attempts that no longer come).
        for q in &self.ep.accepts {
            let waiters = std::mem::take(&mut lock(q).waiters);
            for w in waiters {
                w.wake();
            }
        }
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        self.end();
    }
}

/// Runs a worker with `R`, then ends its driver ([`Driver::end`]) on the worker's thread:
/// a worker that stopped while the application still holds handles (its handler poisoned
/// by a panic, say) does not leave their tasks waiting until the engine is joined.
#[derive(Clone)]
pub(crate) struct Ending<R>(pub R);

impl<R: Runner<Driver>> Runner<Driver> for Ending<R> {
    fn run<B: Backend>(
        self,
        worker: crate::worker::Worker<Driver>,
        io: B,
        waker: &crate::waker::Waker,
    ) -> std::io::Result<Driver> {
        let mut ended = self.0.run(worker, io, waker);
        if let Ok(driver) = &mut ended {
            driver.end();
        }
        ended
    }
}

#[cfg(test)]
mod tests {
    use std::future::IntoFuture;
    use std::time::Duration;

    use super::super::Builder;
    use crate::{tls, EngineBuilder};

    /// A short slice of a receive buffer waits in an allocation of its own (the buffer can
    /// go); a long one stays a slice (it keeps at most twice its size).
    #[test]
    fn short_data_is_copied_out_of_its_receive_buffer() {
        let buf = bytes::Bytes::from(vec![7u8; crate::backend::rx::POOL_CHUNK]);
        let short = buf.slice(100..110);
        let owned = crate::conn::detach(short.clone());
        assert_eq!(owned, short);
        assert!(!buf.as_ptr_range().contains(&owned.as_ptr()));
        let long = buf.slice(0..crate::conn::DETACH_BELOW);
        assert_eq!(crate::conn::detach(long.clone()).as_ptr(), long.as_ptr());
        assert_eq!(
            crate::conn::detach(bytes::Bytes::new()),
            bytes::Bytes::new()
        );
    }

    /// A panic in a batch of ops (the handler is then poisoned and the worker ends) leaves
    /// neither the ops it did not reach nor the one it cut short unfailed: their tasks hear
    /// that the connection is gone, and the endpoint no longer counts it.
    #[test]
    fn a_batch_cut_short_fails_what_it_did_not_run() {
        use super::super::shared::{ConnShared, EndpointShared, Op};
        use super::super::Limits;
        use std::sync::atomic::Ordering;
        use std::sync::Arc;

        let ep = Arc::new(EndpointShared::new(1, false, Limits::default()));
        let mut driver = super::Driver::new(ep.clone(), 0);
        let waiting = ConnShared::new(0, quinn_proto::Side::Client, ep.clone());
        let cut_short = ConnShared::new(0, quinn_proto::Side::Client, ep.clone());
        waiting.count();
        cut_short.count();
        assert_eq!(ep.open.load(Ordering::Acquire), 2);
        // As a panic leaves them: an op not reached, the connection of the op it was in.
        driver.ops.push(Op::Service(waiting.clone()));
        driver.running = Some(cut_short.clone());
        drop(driver);
        assert_eq!(ep.open.load(Ordering::Acquire), 0, "no longer counted");
        for c in [&waiting, &cut_short] {
            assert_eq!(
                c.lock().error,
                Some(quinn_proto::ConnectionError::LocallyClosed)
            );
        }
    }

    /// End to end: a connect whose crypto panics on the worker (the handler is poisoned, the
    /// worker ends) fails its `Connecting`, and so do the connects queued behind it, and the
    /// endpoint goes idle. In both modes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_while_connecting_fails_the_connection() {
        for thread_per_core in [false, true] {
            a_panic_while_connecting(thread_per_core).await;
        }
    }

    async fn a_panic_while_connecting(thread_per_core: bool) {
        struct Panics;
        impl quinn_proto::crypto::ClientConfig for Panics {
            fn start_session(
                self: std::sync::Arc<Self>,
                _: u32,
                _: &str,
                _: &quinn_proto::transport_parameters::TransportParameters,
            ) -> Result<Box<dyn quinn_proto::crypto::Session>, quinn_proto::ConnectError>
            {
                panic!("a crypto provider that panics, as this test asks");
            }
        }
        let id = tls::Identity::self_signed_ed25519(&["localhost"]).unwrap();
        let trust = tls::Trust::Roots(vec![id.chain[0].clone()]);
        let client = EngineBuilder::default().client(tls::client_config(trust, &[b"t"]).unwrap());
        let mut client = Builder::new(client);
        if thread_per_core {
            client = client.thread_per_core(|_| async {});
        }
        let client = client.bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
        let config = quinn_proto::ClientConfig::new(std::sync::Arc::new(Panics));
        // Nothing is sent: the panic comes before the first packet. Connects in a row, so
        // that some wait in the batch of the first, behind the panic, and the rest come to
        // a worker that has ended.
        let to = "127.0.0.1:9".parse().unwrap();
        let mut waiting = Vec::new();
        for _ in 0..50 {
            if let Ok(c) = client.connect_with(config.clone(), to, "localhost") {
                waiting.push(c);
            }
        }
        assert!(!waiting.is_empty());
        for connecting in waiting {
            let outcome = tokio::time::timeout(Duration::from_secs(30), connecting)
                .await
                .unwrap_or_else(|_| {
                    panic!("thread_per_core {thread_per_core}: the connect is left waiting")
                });
            assert!(outcome.is_err());
        }
        tokio::time::timeout(Duration::from_secs(30), client.wait_idle())
            .await
            .expect("the endpoint no longer counts it");
        assert_eq!(client.open_connections(), 0);
    }

    /// The same for an accept: a decision whose crypto panics on the worker (in
    /// `start_session`) fails the accepted connection's future, and the endpoint goes idle.
    /// In both modes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panic_while_accepting_fails_the_connection() {
        for thread_per_core in [false, true] {
            a_panic_while_accepting(thread_per_core).await;
        }
    }

    async fn a_panic_while_accepting(thread_per_core: bool) {
        use std::sync::Arc;
        /// The server's real crypto, but for a session that never starts.
        struct Panics(Arc<dyn quinn_proto::crypto::ServerConfig>);
        impl quinn_proto::crypto::ServerConfig for Panics {
            fn initial_keys(
                &self,
                version: u32,
                dst_cid: &quinn_proto::ConnectionId,
            ) -> Result<quinn_proto::crypto::Keys, quinn_proto::crypto::UnsupportedVersion>
            {
                self.0.initial_keys(version, dst_cid)
            }
            fn retry_tag(
                &self,
                version: u32,
                orig_dst_cid: &quinn_proto::ConnectionId,
                packet: &[u8],
            ) -> [u8; 16] {
                self.0.retry_tag(version, orig_dst_cid, packet)
            }
            fn start_session(
                self: Arc<Self>,
                _: u32,
                _: &quinn_proto::transport_parameters::TransportParameters,
            ) -> Box<dyn quinn_proto::crypto::Session> {
                panic!("a crypto provider that panics, as this test asks");
            }
        }
        let id = tls::Identity::self_signed_ed25519(&["localhost"]).unwrap();
        let cert = id.chain[0].clone();
        let mut config = tls::server_config(id, &[b"t"]).unwrap();
        config.crypto = Arc::new(Panics(config.crypto.clone()));
        let any = "127.0.0.1:0".parse().unwrap();
        // The first attempt, from the worker's own endpoint in thread-per-core mode, from
        // the one `bind_*` returned otherwise; accepted here, off the worker.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let mut server = Builder::new(EngineBuilder::default().server(config));
        if thread_per_core {
            let tx = tx.clone();
            server = server.thread_per_core(move |ep| {
                let tx = tx.clone();
                async move {
                    let _ = tx.send(ep.accept().await);
                }
            });
        }
        let server = server.bind_udp(any).unwrap();
        if !thread_per_core {
            let ep = server.clone();
            tokio::spawn(async move {
                let _ = tx.send(ep.accept().await);
            });
        }
        let trust = tls::Trust::Roots(vec![cert]);
        let client = EngineBuilder::default().client(tls::client_config(trust, &[b"t"]).unwrap());
        let client = Builder::new(client).bind_udp(any).unwrap();
        let _connecting = client
            .connect(server.local_addr().unwrap(), "localhost")
            .unwrap();
        let incoming = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .unwrap_or_else(|_| panic!("thread_per_core {thread_per_core}: no attempt"))
            .flatten()
            .unwrap_or_else(|| panic!("thread_per_core {thread_per_core}: the endpoint ended"));
        // Accepting it runs the panicking `start_session` on the worker.
        let accepted = tokio::time::timeout(Duration::from_secs(30), incoming.into_future())
            .await
            .unwrap_or_else(|_| {
                panic!("thread_per_core {thread_per_core}: the accept is left waiting")
            });
        assert!(accepted.is_err());
        tokio::time::timeout(Duration::from_secs(30), server.wait_idle())
            .await
            .expect("the endpoint no longer counts it");
        assert_eq!(server.open_connections(), 0);
    }

    /// Once a worker has ended (what its thread marks, `Driver::end`), what the tasks ask of
    /// its connections fails at once instead of waiting for a worker that will never serve it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn operations_fail_at_once_once_their_worker_has_ended() {
        let id = tls::Identity::self_signed_ed25519(&["localhost"]).unwrap();
        let cert = id.chain[0].clone();
        let any = "127.0.0.1:0".parse().unwrap();
        let server = EngineBuilder::default().server(tls::server_config(id, &[b"t"]).unwrap());
        let server = Builder::new(server).bind_udp(any).unwrap();
        let trust = tls::Trust::Roots(vec![cert]);
        let client = EngineBuilder::default().client(tls::client_config(trust, &[b"t"]).unwrap());
        let client = Builder::new(client).bind_udp(any).unwrap();
        let connecting = client
            .connect(server.local_addr().unwrap(), "localhost")
            .unwrap();
        let incoming = server.accept().await.unwrap();
        let (conn, theirs) = tokio::join!(incoming.into_future(), connecting);
        let (conn, _theirs) = (conn.unwrap(), theirs.unwrap());
        server.shared.inboxes[0].end();
        let opened = tokio::time::timeout(Duration::from_secs(30), conn.open_bi())
            .await
            .expect("failed at once, not left waiting");
        assert!(opened.is_err());
        let closed = tokio::time::timeout(Duration::from_secs(30), conn.closed())
            .await
            .expect("the connection is known to be gone");
        assert_eq!(closed, quinn_proto::ConnectionError::LocallyClosed);
    }
}
