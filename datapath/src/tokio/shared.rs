//! The state the application's tasks and the workers share: per endpoint, per worker, per
//! connection (one lock each), and the work tasks hand to the workers in batches.
//!
//! A task acts on its connection under the connection's lock: reads take buffered data, writes
//! queue theirs, requests are marked. When a connection's first request of a batch is queued,
//! the connection is put on its worker's inbox, and the inbox is posted to the worker once
//! (one command in flight per worker): the worker applies every marked request of every
//! queued connection in one go, between two turns ([`super::driver`]).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::task::Waker;

use bytes::Bytes;
use quinn_proto::{ClientConfig, ConnectionError, Dir, Side, StreamId, VarInt};
use smallvec::SmallVec;

use super::driver::Driver;
use super::streams::{Lookup, StreamKey, Streams};
use super::Limits;
use crate::accept::AttemptId;
use crate::{ConnId, Decision, EngineHandle};

/// Locks `m`, taking the state of a holder that panicked as it is (every critical section
/// here leaves the state consistent between statements).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Tasks waiting for one thing. Most waits have one waiter: it is held without allocating.
/// Taking the list whole (`std::mem::take`, [`Wakes::all`]), when what they wait for came,
/// starts it afresh.
#[derive(Default)]
pub(crate) struct WakerList {
    wakers: SmallVec<[Waker; 1]>,
    /// Waiters held before the list is woken whole ([`register`]): [`MAX_WAITERS`] at first
    /// (0 stands for it), doubled at each such wake.
    limit: usize,
}

impl WakerList {
    pub fn new() -> Self {
        Self::default()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.wakers.len()
    }
}

impl IntoIterator for WakerList {
    type Item = Waker;
    type IntoIter = smallvec::IntoIter<[Waker; 1]>;

    fn into_iter(self) -> Self::IntoIter {
        self.wakers.into_iter()
    }
}

/// Wakers collected under a lock, woken after it is released (a few without allocating:
/// this runs on every event of the worker).
#[derive(Default)]
pub(crate) struct Wakes(SmallVec<[Waker; 4]>);

impl Wakes {
    pub fn add(&mut self, w: Option<Waker>) {
        self.0.extend(w);
    }
    pub fn all(&mut self, ws: &mut WakerList) {
        self.0.extend(std::mem::take(ws));
    }
    pub fn wake(self) {
        for w in self.0 {
            w.wake();
        }
    }
}

/// Waiters a list holds before it is first woken whole ([`register`]).
const MAX_WAITERS: usize = 64;

/// The most waiters a list holds ([`register`]): 64 KiB of wakers.
const MAX_ROOM: usize = MAX_WAITERS << 6;

/// Registers `w` in `list` unless a waker there wakes the same task. A list that holds its
/// limit already is woken whole first: a future dropped while it waited leaves its waker
/// behind (tasks that race `accept_bi` in a `select!`, say), and the waiters still alive
/// only poll again and register anew, so dead wakers do not pile up. The limit then doubles,
/// up to [`MAX_ROOM`], until the list is taken for what it waits for: more live waiters than
/// the limit would otherwise wake each other without end. So a list holds at most
/// [`MAX_ROOM`] wakers however many tasks register (and dead ones go at each wake); more
/// live waiters than that on one thing (4,096 tasks waiting to open a stream on one
/// connection) are woken whole each time the list fills, and poll again: they make progress,
/// at a cost in CPU.
pub(crate) fn register(list: &mut WakerList, w: &Waker) {
    if list.wakers.iter().any(|x| x.will_wake(w)) {
        return;
    }
    let limit = list.limit.max(MAX_WAITERS);
    if list.wakers.len() >= limit {
        list.limit = (limit * 2).min(MAX_ROOM);
        for old in list.wakers.drain(..) {
            old.wake();
        }
    }
    list.wakers.push(w.clone());
}

/// A stream's queue of chunks, in order. Most streams of request-response protocols hold
/// one chunk at a time: the first is held inline, so that they allocate nothing here; the
/// rest (bulk transfers) queue behind it.
#[derive(Default)]
pub(crate) struct Chunks {
    /// The first chunk; `None` only when the queue is empty.
    head: Option<Bytes>,
    rest: VecDeque<Bytes>,
}

impl Chunks {
    pub fn is_empty(&self) -> bool {
        self.head.is_none()
    }

    /// How many chunks are queued.
    pub fn count(&self) -> usize {
        usize::from(self.head.is_some()) + self.rest.len()
    }

    pub fn push_back(&mut self, b: Bytes) {
        if self.head.is_none() {
            self.head = Some(b);
        } else {
            self.rest.push_back(b);
        }
    }

    pub fn front_mut(&mut self) -> Option<&mut Bytes> {
        self.head.as_mut()
    }

    pub fn pop_front(&mut self) -> Option<Bytes> {
        let b = self.head.take();
        self.head = self.rest.pop_front();
        b
    }

    pub fn clear(&mut self) {
        self.head = None;
        self.rest.clear();
    }
}

/// Work for a worker.
pub(crate) enum Op {
    /// Apply the requests marked on this connection.
    Service(Arc<ConnShared>),
    /// Decide on a deferred connection attempt (with the connection to bind when accepted).
    Decide(AttemptId, Decision, Option<Arc<ConnShared>>),
    /// Open a connection.
    Connect {
        conn: Arc<ConnShared>,
        config: ClientConfig,
        remote: SocketAddr,
        server_name: String,
    },
    /// Close every connection of the worker.
    CloseAll(VarInt, Bytes),
    /// Serve the connections accepted from now on with this configuration.
    SetServerConfig(Arc<quinn_proto::ServerConfig>),
}

#[derive(Default)]
struct InboxState {
    ops: Vec<Op>,
    posted: bool,
    /// The worker has ended: nothing queued here would ever be served.
    dead: bool,
}

/// One worker's inbox: ops queued by tasks, posted to the worker as one command.
#[derive(Default)]
pub(crate) struct Inbox {
    state: Mutex<InboxState>,
}

impl Inbox {
    /// Takes the queued ops (into `into`, emptied first); the next op posts again.
    pub fn take(&self, into: &mut Vec<Op>) {
        into.clear();
        let mut s = lock(&self.state);
        std::mem::swap(&mut s.ops, into);
        s.posted = false;
    }

    /// The worker has ended: later pushes fail at once, and what is queued is handed back
    /// (to be failed, [`fail_op`]).
    pub fn kill(&self) -> Vec<Op> {
        let mut s = lock(&self.state);
        s.dead = true;
        std::mem::take(&mut s.ops)
    }

    /// [`Inbox::kill`], failing what was queued. Call it holding no connection's lock.
    pub fn end(&self) {
        for op in self.kill() {
            fail_op(op);
        }
    }
}

/// Fails `op`, whose worker has ended: whoever waits on its connection hears that it is
/// gone. The caller must not hold the lock of that connection.
pub(crate) fn fail_op(op: Op) {
    let conn = match op {
        Op::Service(c) => {
            c.lock().scheduled = false;
            Some(c)
        }
        Op::Decide(_, _, c) => c,
        Op::Connect { conn, .. } => Some(conn),
        Op::CloseAll(..) | Op::SetServerConfig(_) => None,
    };
    if let Some(c) = conn {
        super::driver::fail(&c, ConnectionError::LocallyClosed);
    }
}

/// A connection attempt waiting for the application's decision.
pub(crate) struct Attempt {
    /// When its worker deferred it: it gives up on it [`crate::accept::DEFER_TIMEOUT`] later.
    pub at: std::time::Instant,
    pub worker: usize,
    pub id: AttemptId,
    pub remote: SocketAddr,
    pub local_ip: Option<std::net::IpAddr>,
    pub validated: bool,
    /// The peek at its ClientHello (`accept::Incoming::client_hello`).
    pub hello: Result<
        crate::packet::client_hello::ClientHelloInfo,
        crate::packet::client_hello::PeekError,
    >,
}

/// Attempts for [`super::Endpoint::accept`].
#[derive(Default)]
pub(crate) struct AcceptQueue {
    pub attempts: VecDeque<Attempt>,
    pub waiters: WakerList,
}

impl AcceptQueue {
    /// The next attempt its worker still holds (those it gave up on, not decided within
    /// [`crate::accept::DEFER_TIMEOUT`], go: accepting one could only fail).
    pub fn next(&mut self) -> Option<Attempt> {
        while let Some(a) = self.attempts.pop_front() {
            if a.at.elapsed() < crate::accept::DEFER_TIMEOUT {
                return Some(a);
            }
        }
        None
    }

    /// Whether another attempt fits under `limit`, once the expired ones at the front are
    /// dropped.
    pub fn has_room(&mut self, limit: usize) -> bool {
        while self
            .attempts
            .front()
            .is_some_and(|a| a.at.elapsed() >= crate::accept::DEFER_TIMEOUT)
        {
            self.attempts.pop_front();
        }
        self.attempts.len() < limit
    }
}

/// What an endpoint's tasks and workers share.
pub(crate) struct EndpointShared {
    pub handle: OnceLock<EngineHandle<Driver>>,
    pub inboxes: Vec<Inbox>,
    /// One accept queue (the application's runtime) or one per worker (thread-per-core).
    pub accepts: Vec<Mutex<AcceptQueue>>,
    /// Thread-per-core mode: each worker's endpoint accepts, the one `bind_*` returned none.
    pub per_core: bool,
    pub limits: Limits,
    pub default_client: Mutex<Option<ClientConfig>>,
    /// `close` was called, or the engine is stopping: no more accepts.
    pub closing: std::sync::atomic::AtomicBool,
    /// `set_server_config(None)`: new attempts are refused.
    pub refusing: std::sync::atomic::AtomicBool,
    /// Connections alive: handed to a worker (connecting, or accepted) and not ended yet.
    pub open: AtomicUsize,
    /// Notified when `open` falls to 0 (a `Notify`: a dropped `wait_idle` leaves nothing
    /// behind).
    pub idle: tokio::sync::Notify,
    pub next_worker: AtomicUsize,
    pub local_addr: OnceLock<SocketAddr>,
    /// Notified once `handle` is set: the engine has started.
    pub started: tokio::sync::Notify,
}

impl EndpointShared {
    /// Waits until the engine has started (`handle` set), which thread-per-core mode's
    /// workers do before running the application: they start before the builder returns.
    pub async fn started(&self) {
        loop {
            let notified = self.started.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.handle.get().is_some() {
                return;
            }
            notified.await;
        }
    }

    pub fn new(workers: usize, per_core: bool, limits: Limits) -> Self {
        let queues = if per_core { workers } else { 1 };
        Self {
            handle: OnceLock::new(),
            started: tokio::sync::Notify::new(),
            inboxes: (0..workers).map(|_| Inbox::default()).collect(),
            accepts: (0..queues).map(|_| Mutex::default()).collect(),
            per_core,
            limits,
            default_client: Mutex::new(None),
            closing: Default::default(),
            refusing: Default::default(),
            open: AtomicUsize::new(0),
            idle: tokio::sync::Notify::new(),
            next_worker: AtomicUsize::new(0),
            local_addr: OnceLock::new(),
        }
    }

    /// The accept queue of worker `worker`'s attempts.
    pub fn accept_queue(&self, worker: usize) -> &Mutex<AcceptQueue> {
        &self.accepts[worker % self.accepts.len()]
    }

    pub fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// Queues `op` for `worker`, posting the inbox if it is not posted yet. Errs when the
    /// worker has ended, with the op to be failed by the caller, or `None` when the ending
    /// worker took it and failed it already ([`Inbox::end`]). The caller may hold the lock
    /// of `op`'s connection (and of no other).
    // The error hands the operation back to be failed; boxing it would allocate per push.
    #[allow(clippy::result_large_err)]
    pub fn push(&self, worker: usize, op: Op) -> Result<(), Option<Op>> {
        let Some(handle) = self.handle.get() else {
            return Err(Some(op));
        };
        let inbox = &self.inboxes[worker];
        let post = {
            let mut s = lock(&inbox.state);
            if s.dead {
                return Err(Some(op));
            }
            s.ops.push(op);
            !std::mem::replace(&mut s.posted, true)
        };
        if post {
            // At most one command of this endpoint is queued per worker, so the queue has
            // room: this does not wait (see `Builder`'s command capacity).
            if handle
                .post_wait(worker, |driver, ctx| driver.drain(ctx))
                .is_err()
            {
                // The worker has ended. The inbox was empty when this push found it not
                // posted (`take` empties it as it clears the flag), so the first op is this
                // caller's; those pushed since (their pushers saw it posted) are failed here,
                // outside the inbox's lock. None of them is the caller's connection's: a
                // connection has one op queued at most (`schedule`), and a new connection's
                // lock is not held by whoever pushed for it. The ending worker's own
                // `Inbox::end` may have taken them all first (it fails them itself).
                let mut queued = inbox.kill().into_iter();
                let ours = queued.next();
                for op in queued {
                    fail_op(op);
                }
                return Err(ours);
            }
        }
        Ok(())
    }

    /// A connection was handed to a worker ([`ConnShared::count`]).
    fn opened(&self) {
        self.open.fetch_add(1, Ordering::AcqRel);
    }

    /// A counted connection ended ([`ConnShared::uncount`]).
    fn ended(&self) {
        if self.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.idle.notify_waiters();
        }
    }
}

/// How far the receiving side of a stream got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RecvEnd {
    Open,
    /// The worker read its end: the buffer holds the last octets.
    Finished,
    /// The peer reset it: after the buffered octets, reads fail with this code.
    Reset(VarInt),
}

/// How far the sending side of a stream got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SendEnd {
    Open,
    /// The peer acknowledged everything, its end included.
    Acked,
    /// The peer asked us to stop, with this code.
    Stopped(VarInt),
}

/// One stream, both sides, as the tasks and the worker see it.
pub(crate) struct StreamSlot {
    pub id: StreamId,
    pub recv: Chunks,
    pub recv_len: usize,
    /// Octets handed to the application so far (the offset of `read_chunk`'s chunks).
    pub recv_offset: u64,
    pub recv_end: RecvEnd,
    /// A [`super::RecvStream`] exists (or will: the stream waits to be accepted).
    pub recv_handle: bool,
    /// The application stopped reading (stop, or dropped the handle early).
    pub stop: Option<VarInt>,
    pub stop_sent: bool,
    /// The worker left data in quinn-proto for lack of room here.
    pub paused: bool,
    /// Counted in [`ConnState::held`].
    pub held: bool,
    pub read_waker: Option<Waker>,

    pub send: Chunks,
    pub send_len: usize,
    pub send_end: SendEnd,
    /// A [`super::SendStream`] exists (or will).
    pub send_handle: bool,
    pub finish: bool,
    pub finish_sent: bool,
    pub reset: Option<VarInt>,
    pub reset_sent: bool,
    pub write_waker: Option<Waker>,
    pub stopped_waiters: WakerList,
    /// `SendStream::stopped` futures alive: the slot stays until each has seen how the
    /// sending side ended (acknowledged, stopped or reset) or was dropped.
    pub stopped_futures: u32,

    /// In [`ConnState::todo`] already.
    pub queued: bool,
}

impl StreamSlot {
    /// A new stream of a connection on side `side`: a unidirectional one has one side only.
    pub fn new(id: StreamId, side: Side) -> Self {
        let uni = id.dir() == Dir::Uni;
        let ours = id.initiator() == side;
        Self {
            id,
            recv: Chunks::default(),
            recv_len: 0,
            recv_offset: 0,
            recv_end: RecvEnd::Open,
            recv_handle: !(uni && ours),
            stop: None,
            stop_sent: false,
            paused: false,
            held: false,
            read_waker: None,
            send: Chunks::default(),
            send_len: 0,
            send_end: SendEnd::Open,
            send_handle: !uni || ours,
            finish: false,
            finish_sent: false,
            reset: None,
            reset_sent: false,
            write_waker: None,
            stopped_waiters: WakerList::new(),
            stopped_futures: 0,
            queued: false,
        }
    }

    /// Nothing left to do for it on either side: it can be forgotten.
    pub fn is_done(&self) -> bool {
        !self.recv_handle
            && !self.send_handle
            && self.send.is_empty()
            && (!self.finish || self.finish_sent)
            && (self.reset.is_none() || self.reset_sent)
            && (self.stop.is_none() || self.stop_sent)
            // Not as soon as the sending side is over: a `stopped` future woken by that
            // must still find the slot when it runs, to learn how it ended (a stop's code,
            // not `None`). Each uncounts itself as it completes or drops.
            && self.stopped_futures == 0
    }
}

/// Facts about a connection the tasks read without asking the worker, refreshed by it.
#[derive(Default)]
pub(crate) struct Info {
    pub remote: Option<SocketAddr>,
    pub local_ip: Option<std::net::IpAddr>,
    pub rtt: std::time::Duration,
    pub max_datagram: Option<usize>,
    /// This endpoint's transport turned datagrams off (`Conn::datagrams_enabled`, asked
    /// once, as the connection is established).
    pub datagrams_off: bool,
    pub handshake: Option<quinn_proto::crypto::rustls::HandshakeData>,
    pub peer_certificates: Option<Vec<rustls::pki_types::CertificateDer<'static>>>,
    pub stats: Option<quinn_proto::ConnectionStats>,
}

/// A connection's shared state.
pub(crate) struct ConnState {
    pub id: Option<ConnId>,
    pub side: Side,
    pub established: bool,
    pub error: Option<ConnectionError>,
    pub connecting: Option<Waker>,
    pub info: Info,

    /// Streams the peer opened, not accepted yet: bidirectional, unidirectional.
    pub incoming: [VecDeque<StreamId>; 2],
    pub accept_waiters: WakerList,
    /// Opens asked for and not done yet, and streams opened for the askers.
    pub open_requests: [usize; 2],
    pub opened: [VecDeque<StreamId>; 2],
    pub open_waiters: WakerList,

    /// Received, waiting for `read_datagram`.
    pub datagrams: DatagramQueue,
    pub datagram_waiters: WakerList,
    /// Waiting for the worker to send them.
    pub out_datagrams: DatagramQueue,

    pub streams: Streams,
    /// Streams with requests for the worker.
    pub todo: Vec<StreamKey>,
    /// Streams the worker stopped reading for lack of room here.
    pub paused: Vec<StreamId>,
    /// Resume reading the paused streams.
    pub resume: bool,
    /// Octets received and not read by the application yet, all streams.
    pub buffered: usize,
    /// The chunks they are in (`driver::MAX_CHUNKS`).
    pub chunks: usize,
    /// Streams whose receiving side quinn-proto is done with but the application is not.
    pub held: usize,
    pub close: Option<(VarInt, Bytes)>,
    /// On its worker's inbox already.
    pub scheduled: bool,
    /// The engine, kept alive while the application holds a handle on the connection
    /// (`super::connection::ConnRef`); taken when the last goes.
    pub keeper: Option<Arc<super::Keeper>>,
}

/// What one queued datagram counts for against its queue's bound: its octets and its slot,
/// so that empty datagrams (a peer may put hundreds in a packet) are bounded too.
pub(crate) const DATAGRAM_SLOT: usize = std::mem::size_of::<Bytes>();

/// Datagrams waiting on one side of a connection, bounded in octets (each counted with its
/// slot, [`DATAGRAM_SLOT`]): unreliable, so the oldest go when a push goes past the bound.
#[derive(Default)]
pub(crate) struct DatagramQueue {
    items: VecDeque<Bytes>,
    size: usize,
}

impl DatagramQueue {
    /// Queues `d`, dropping the oldest while the queue holds more than `limit`; `d` itself
    /// always stays (a datagram accepted is not dropped before it could go).
    pub fn push(&mut self, d: Bytes, limit: usize) {
        self.size += d.len() + DATAGRAM_SLOT;
        self.items.push_back(d);
        while self.size > limit && self.items.len() > 1 {
            self.pop();
        }
    }

    /// The oldest.
    pub fn pop(&mut self) -> Option<Bytes> {
        let d = self.items.pop_front()?;
        self.size -= d.len() + DATAGRAM_SLOT;
        Some(d)
    }

    pub fn clear(&mut self) {
        self.items.clear();
        self.size = 0;
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.items.len()
    }
}

/// Index of a direction in the per-direction arrays.
pub(crate) fn dir_index(dir: Dir) -> usize {
    match dir {
        Dir::Bi => 0,
        Dir::Uni => 1,
    }
}

/// A connection: its worker, its endpoint, its state, the application's handles on it.
pub(crate) struct ConnShared {
    pub worker: usize,
    pub ep: Arc<EndpointShared>,
    pub state: Mutex<ConnState>,
    /// Notified once the connection has ended (`ConnState::error` set): what
    /// `Connection::closed` waits on. A `Notify`, not a waker list, so that a `closed()`
    /// future dropped unfinished (in a `select!` per stream, say) leaves nothing behind.
    pub closed: tokio::sync::Notify,
    /// Counted in [`EndpointShared::open`]: from the moment its connect or accept is handed
    /// to the worker ([`ConnShared::count`]) to its end ([`ConnShared::uncount`]).
    counted: AtomicBool,
}

impl ConnShared {
    /// Counts the connection among the endpoint's open ones, as quinn does from `connect`
    /// or `accept` on (so a `wait_idle` right after waits for it): call before its connect
    /// or accept is handed to the worker.
    pub fn count(&self) {
        if !self.counted.swap(true, Ordering::AcqRel) {
            self.ep.opened();
        }
    }

    /// The connection has ended (or will never be): no longer counted. Idempotent.
    pub fn uncount(&self) {
        if self.counted.swap(false, Ordering::AcqRel) {
            self.ep.ended();
        }
    }

    /// Closed on our side (`Connection::close`, `Endpoint::close`): unless the connection
    /// already has its error, new operations fail with `LocallyClosed` from now on (reads
    /// still hand out what was received before, accepts the streams waiting), and every
    /// waiting task hears it.
    pub fn closed_locally(&self) {
        let mut wakes = Wakes::default();
        {
            let mut st = self.lock();
            if st.error.is_some() {
                return;
            }
            st.error = Some(ConnectionError::LocallyClosed);
            st.wake_all(&mut wakes);
        }
        wakes.wake();
        self.closed.notify_waiters();
    }

    pub fn new(worker: usize, side: Side, ep: Arc<EndpointShared>) -> Arc<Self> {
        Arc::new(Self {
            worker,
            ep,
            closed: tokio::sync::Notify::new(),
            counted: AtomicBool::new(false),
            state: Mutex::new(ConnState {
                id: None,
                side,
                established: false,
                error: None,
                connecting: None,
                info: Info::default(),
                incoming: Default::default(),
                accept_waiters: WakerList::new(),
                open_requests: [0; 2],
                opened: Default::default(),
                open_waiters: WakerList::new(),
                datagrams: DatagramQueue::default(),
                datagram_waiters: WakerList::new(),
                out_datagrams: DatagramQueue::default(),
                streams: Streams::default(),
                todo: Vec::new(),
                paused: Vec::new(),
                resume: false,
                buffered: 0,
                chunks: 0,
                held: 0,
                close: None,
                scheduled: false,
                keeper: None,
            }),
        })
    }

    pub fn lock(&self) -> MutexGuard<'_, ConnState> {
        lock(&self.state)
    }

    /// Puts the connection on its worker's inbox if it is not there yet. Call with its
    /// state locked (`st`), after marking a request.
    pub fn schedule(self: &Arc<Self>, st: &mut ConnState) {
        if st.scheduled || st.error.is_some() {
            return;
        }
        st.scheduled = true;
        if self
            .ep
            .push(self.worker, Op::Service(self.clone()))
            .is_err()
        {
            // The worker has ended: nothing will serve this connection again. Whoever
            // waits on it hears so (the caller holds the lock: its wakes run at once, and
            // a woken task takes the lock after the caller has let it go).
            st.scheduled = false;
            st.error = Some(ConnectionError::LocallyClosed);
            // A close no worker will apply (as `driver::fail` does; the worker's end
            // uncounts the connection).
            st.close = None;
            let mut wakes = Wakes::default();
            st.wake_all(&mut wakes);
            wakes.wake();
            self.closed.notify_waiters();
        }
    }

    /// Marks the stream of `key` for the worker and schedules the connection.
    pub fn request(self: &Arc<Self>, st: &mut ConnState, key: StreamKey) {
        if let Some(slot) = st.streams.get_mut(&key) {
            if !slot.queued {
                slot.queued = true;
                st.todo.push(key);
            }
        }
        self.schedule(st);
    }
}

impl ConnState {
    /// The application took `n` octets in `k` chunks: whether paused streams should
    /// resume, which is when the connection's buffer, or its count of chunks, comes down
    /// across half its limit (so that reading does not resume for every read).
    pub fn consumed(&mut self, limits: &Limits, n: usize, k: usize) -> bool {
        let (before, chunks_before) = (self.buffered, self.chunks);
        self.buffered -= n;
        self.chunks -= k;
        let half = limits.connection_receive / 2;
        let half_chunks = super::driver::MAX_CHUNKS / 2;
        !self.paused.is_empty()
            && ((before > half && self.buffered <= half)
                || (chunks_before > half_chunks && self.chunks <= half_chunks))
            && self.held < limits.held_streams
    }

    /// The application is done with the receiving side of `slot` (read to its end or
    /// reset, stopped, or dropped): its buffer and its hold are released. Returns whether
    /// paused streams may resume.
    pub fn release_recv(&mut self, limits: &Limits, k: &impl Lookup) -> bool {
        let Some(slot) = self.streams.get_mut(k) else {
            return false;
        };
        let n = std::mem::take(&mut slot.recv_len);
        let k = slot.recv.count();
        slot.recv.clear();
        slot.recv_handle = false;
        if std::mem::take(&mut slot.held) {
            self.held -= 1;
        }
        self.consumed(limits, n, k) || (!self.paused.is_empty() && self.held < limits.held_streams)
    }

    /// Forgets the stream if nothing is left to do for it (see [`StreamSlot::is_done`]).
    /// Returns whether it is still there.
    pub fn forget_if_done(&mut self, k: &impl Lookup) -> bool {
        let ended = self.error.is_some();
        match self.streams.get(k) {
            // After the connection's end nothing more is sent: a slot no handle or
            // `stopped` future reads goes, whatever it had left to send.
            Some(slot)
                if slot.is_done()
                    || (ended
                        && !slot.recv_handle
                        && !slot.send_handle
                        && slot.stopped_futures == 0) =>
            {
                self.streams.remove(k);
                false
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Wakes everything waiting on the connection (it ended).
    pub fn wake_all(&mut self, wakes: &mut Wakes) {
        wakes.add(self.connecting.take());
        wakes.all(&mut self.accept_waiters);
        wakes.all(&mut self.open_waiters);
        wakes.all(&mut self.datagram_waiters);
        for s in self.streams.values_mut() {
            wakes.add(s.read_waker.take());
            wakes.add(s.write_waker.take());
            wakes.all(&mut s.stopped_waiters);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accept::{AttemptId, DEFER_TIMEOUT};
    use std::time::{Duration, Instant};

    fn attempt(id: u64, at: Instant) -> Attempt {
        Attempt {
            at,
            worker: 0,
            id: AttemptId(id),
            remote: SocketAddr::from(([127, 0, 0, 1], 4433)),
            local_ip: None,
            validated: false,
            hello: Ok(Default::default()),
        }
    }

    /// Empty datagrams count too: a peer that sends them by the hundred per packet to an
    /// application that never reads them cannot grow the queue without bound (before, each
    /// counted 0 octets). The newest stay.
    #[test]
    fn a_datagram_queue_bounds_empty_datagrams_and_keeps_the_newest() {
        let mut q = DatagramQueue::default();
        for _ in 0..100_000 {
            q.push(Bytes::new(), 100 * DATAGRAM_SLOT);
        }
        assert_eq!(q.len(), 100);
        for i in 0..10u8 {
            q.push(Bytes::from(vec![i; 1000]), 4 * (1000 + DATAGRAM_SLOT));
        }
        assert_eq!(q.len(), 4);
        assert_eq!(q.pop().unwrap()[0], 6);
        // A limit below one datagram (0 is allowed) keeps the newest, never drops what was
        // just accepted (before, `send_datagram` said Ok and nothing ever went).
        q.clear();
        q.push(Bytes::from_static(b"one"), 0);
        q.push(Bytes::from_static(b"two"), 0);
        assert_eq!(q.len(), 1);
        assert_eq!(&q.pop().unwrap()[..], b"two");
        q.clear();
        assert!(q.pop().is_none());
        assert_eq!(q.size, 0);
    }

    #[test]
    fn attempts_their_worker_gave_up_on_are_not_handed_out_nor_counted() {
        let now = Instant::now();
        let old = now - DEFER_TIMEOUT - Duration::from_millis(1);
        let mut q = AcceptQueue::default();
        for (id, at) in [(1, old), (2, old), (3, now), (4, old), (5, now)] {
            q.attempts.push_back(attempt(id, at));
        }
        // Room counts the live ones once the expired front is gone.
        assert!(q.has_room(4));
        assert_eq!(q.attempts.len(), 3, "the two expired at the front went");
        assert!(!q.has_room(3));
        // Handed out: live ones only, in order.
        let ids: Vec<u64> = std::iter::from_fn(|| q.next()).map(|a| a.id.0).collect();
        assert_eq!(ids, [3, 5]);
        assert!(q.attempts.is_empty());
    }

    struct Counted(AtomicUsize);

    impl std::task::Wake for Counted {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn counted(n: usize) -> Vec<Arc<Counted>> {
        (0..n)
            .map(|_| Arc::new(Counted(AtomicUsize::new(0))))
            .collect()
    }

    fn woken(tasks: &[Arc<Counted>]) -> usize {
        tasks.iter().map(|t| t.0.load(Ordering::Relaxed)).sum()
    }

    /// Wakers of tasks that stopped waiting (their futures dropped) do not pile up: past
    /// `MAX_WAITERS` distinct tasks, the list is woken whole and starts again, with twice
    /// the room; taken for what it waits for, it starts from `MAX_WAITERS` again. The same
    /// task twice is held once.
    #[test]
    fn waiter_lists_stay_bounded() {
        let tasks = counted(MAX_WAITERS * 3 + 1);
        let mut list = WakerList::new();
        for (i, t) in tasks.iter().enumerate() {
            let w = Waker::from(t.clone());
            register(&mut list, &w);
            register(&mut list, &w);
            assert!(list.len() <= MAX_WAITERS.max(2 * (i + 1)));
            assert!(list.len() <= MAX_ROOM);
        }
        // Woken whole at 64 (then room for 128) and at 128 more (then 256): 1 left.
        assert_eq!(list.len(), 1);
        assert_eq!(
            woken(&tasks),
            MAX_WAITERS * 3,
            "each one woken once, the last still waiting"
        );
        let mut wakes = Wakes::default();
        wakes.all(&mut list);
        wakes.wake();
        let again = counted(MAX_WAITERS + 1);
        for t in &again {
            register(&mut list, &Waker::from(t.clone()));
        }
        assert_eq!(list.len(), 1, "taken, the list woke at 64 again");
    }

    /// However many tasks register without the list being taken (futures dropped while they
    /// waited, for as long as the peer withholds what they wait for), the list holds at
    /// most [`MAX_ROOM`] wakers.
    #[test]
    fn waiter_lists_hold_at_most_their_room() {
        let tasks = counted(MAX_ROOM * 3);
        let mut list = WakerList::new();
        let mut most = 0;
        for t in &tasks {
            register(&mut list, &Waker::from(t.clone()));
            most = most.max(list.len());
        }
        assert_eq!(most, MAX_ROOM);
        assert_eq!(list.limit, MAX_ROOM);
    }

    /// More live waiters than the list's first room (200 tasks waiting for stream credit,
    /// say), each registering again when woken, settle: the list makes room for them rather
    /// than waking them again and again.
    #[test]
    fn more_live_waiters_than_the_room_settle() {
        let tasks = counted(200);
        let mut list = WakerList::new();
        let mut seen = vec![0usize; tasks.len()];
        let mut rounds = 0;
        // Each round, every task woken since the last one polls again and registers anew.
        let mut due: Vec<usize> = (0..tasks.len()).collect();
        while !due.is_empty() {
            rounds += 1;
            assert!(rounds <= 8, "still waking each other after {rounds} rounds");
            for &i in &due {
                register(&mut list, &Waker::from(tasks[i].clone()));
            }
            due = (0..tasks.len())
                .filter(|&i| tasks[i].0.load(Ordering::Relaxed) > seen[i])
                .collect();
            for &i in &due {
                seen[i] = tasks[i].0.load(Ordering::Relaxed);
            }
        }
        assert_eq!(list.len(), 200, "every live waiter held");
    }
}
