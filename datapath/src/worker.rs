//! The worker: one thread's turn of the data path, top to bottom.
//!
//! [`Worker::turn`] is sans-IO: it takes the backend and the time as arguments, so the same
//! code runs on a real thread ([`crate::engine`]) and under the virtual clock of the
//! in-memory network (`testing`). One turn:
//!
//! 1. retry a transmit the backend pushed back last turn;
//! 2. run work posted by other threads, take datagrams handed over by other workers;
//! 3. receive batches from the backend;
//! 4. route each datagram by its header ([`crate::route`]): to this shard's endpoint, to
//!    its owner worker, or drop;
//! 5. feed this shard's endpoint (`Endpoint::handle`);
//! 6. fire the connection timers that are due;
//! 7. drive every connection that changed (`Worker::drive`): endpoint events, application
//!    callbacks ([`Handler`]), then transmits straight to the backend (or, with
//!    [`Worker::hold_transmits`], at the next turn, after the application answered);
//! 8. flush the backend, publish the counters, report the next deadline.
//!
//! The steps are docs/ARCHITECTURE.md's ("The data path, step by step").
//!
//! Nothing here allocates, locks, logs or makes a syscall per packet of a connection: batches,
//! buffers and queues are reused; the backend decides how many syscalls a batch costs. (The
//! exceptions, stray short headers while the engine has outgoing connections among them, and
//! long headers naming a worker that has some, are listed in docs/ARCHITECTURE.md.)

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use crossbeam_channel::{Receiver, TrySendError};
use quinn_proto::{
    ClientConfig, ConnectionError, ConnectionHandle, DatagramEvent, EcnCodepoint, Event,
    Incoming as ProtoIncoming, StreamEvent, VarInt,
};

use crate::accept::{Decision, Held, Incoming, DEFER_TIMEOUT};
use crate::backend::rx::POOL_CHUNK;
use crate::backend::{Backend, Datagram, RxBatch, SendError, Transmit};
use crate::conn::{Conn, Ctx};
use crate::engine::{Command, Mesh, RetryPolicy};
use crate::guard::{Guarded, INTERNAL_ERROR};
use crate::handler::Handler;
use crate::metrics::{Counters, Histograms, WorkerMetrics};
use crate::packet::frame::L2;
use crate::route::{route, Destination};
use crate::shard::{Connections, Settled, Shard};

/// Receive batches per turn before timers and transmits get their turn.
const MAX_RX_BATCHES: usize = 8;
/// Posted commands and hand-overs taken per turn.
const MAX_INBOX: usize = 256;
/// How often the worker reads the kernel's drop counter of its backend (one syscall).
const KERNEL_READ_EVERY: Duration = Duration::from_secs(1);
/// The most octets one UDP send (and so one GSO batch) can carry over IPv4.
const MAX_UDP_PAYLOAD: usize = 65_507;

/// What the caller of [`Worker::turn`] should do next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnOutcome {
    /// Call `turn` again at the deadline (or when the backend or the waker has something);
    /// `None`: no timer is armed.
    Continue(Option<Instant>),
    /// The worker stopped and drained: call [`Worker::into_handler`].
    Done,
}

/// Counts why a connection ended.
fn count_close(c: &mut Counters, reason: &ConnectionError) {
    match reason {
        ConnectionError::TimedOut => c.closed_timed_out += 1,
        ConnectionError::ApplicationClosed(_) | ConnectionError::ConnectionClosed(_) => {
            c.closed_by_peer += 1
        }
        ConnectionError::LocallyClosed => c.closed_locally += 1,
        ConnectionError::Reset => c.closed_reset += 1,
        ConnectionError::TransportError(_)
        | ConnectionError::VersionMismatch
        | ConnectionError::CidsExhausted => c.closed_error += 1,
    }
}

/// A transmit whose octets are the first `len` of one of the worker's buffers: what
/// quinn-proto produced, in the form the backend takes.
#[derive(Debug, Clone, Copy)]
struct Outgoing {
    destination: SocketAddr,
    src_ip: Option<IpAddr>,
    ecn: Option<EcnCodepoint>,
    segment_size: Option<usize>,
    len: usize,
    link: Option<L2>,
}

impl Outgoing {
    fn of(t: &quinn_proto::Transmit, link: Option<L2>) -> Self {
        Self {
            destination: t.destination,
            src_ip: t.src_ip,
            ecn: t.ecn,
            segment_size: t.segment_size,
            len: t.size,
            link,
        }
    }

    /// Sends it (octets from `buf`) and counts what happened. Returns false when the backend
    /// pushed back: the caller keeps it or drops it.
    fn send<B: Backend>(&self, io: &mut B, buf: &[u8], c: &mut Counters) -> bool {
        let t = Transmit {
            destination: self.destination,
            src_ip: self.src_ip,
            ecn: self.ecn,
            segment_size: self.segment_size,
            contents: &buf[..self.len],
            link: self.link,
        };
        match io.send(&t) {
            Ok(()) => {
                c.tx_packets += t.segments().len() as u64;
                c.tx_bytes += self.len as u64;
                true
            }
            Err(SendError::Blocked) => {
                c.tx_blocked += 1;
                false
            }
            Err(SendError::Failed(e)) => {
                c.tx_errors += 1;
                tracing::trace!("send failed: {e}");
                true
            }
        }
    }
}

/// One worker: a shard of QUIC state, its handler, its inbox.
pub struct Worker<H: Handler> {
    mesh: Arc<Mesh<H>>,
    shard: Shard,
    conns: Connections,
    handler: Guarded<H>,
    retry: RetryPolicy,
    commands: Receiver<Command<H>>,
    handovers: Receiver<Datagram>,
    rx: RxBatch,
    /// Where quinn-proto writes the transmit being built.
    tx_buf: Vec<u8>,
    /// A transmit the backend pushed back, kept until it takes it.
    stalled: Option<Outgoing>,
    /// The last Initial packet received, for the accept hook to peek at its ClientHello
    /// (quinn-proto takes the datagram itself).
    initial: Vec<u8>,
    stall_buf: Vec<u8>,
    counters: Counters,
    histograms: Histograms,
    metrics: Arc<WorkerMetrics>,
    stop_code: (VarInt, Bytes),
    drain_deadline: Option<Instant>,
    drain_timeout: Duration,
    next_kernel_read: Instant,
    max_connections: usize,
    /// The largest datagram taken in (see [`max_datagram`]).
    max_datagram: usize,
    /// Hold a connection's transmit back for one turn after its handler heard events
    /// (thread-per-core mode, whose tasks answer between two turns).
    hold_transmits: bool,
    /// Connections whose transmit was held this turn (a buffer reused turn after turn).
    held: Vec<usize>,
    /// `drive_all`'s lists (buffers reused turn after turn): the connections being driven
    /// while callbacks mark others dirty, and those the backend had no room for.
    driving: Vec<usize>,
    pushed_back: Vec<usize>,
    /// The other workers a stray datagram goes to (a buffer reused; see `on_stray`).
    stray_owners: Vec<usize>,
    /// Marks the worker ended when it drops (last: see [`EndMark`]).
    _end: EndMark<H>,
}

/// Dropped with its worker, however the worker ends (drained, failed, or unwinding from a
/// panic): marks it ended, so that its queues take nothing more, and drops what is still
/// queued for it. Posted work that will never run then says so at once (a call's reply is
/// [`crate::Gone`]) instead of waiting for good, and handed-over datagrams free their
/// buffers.
struct EndMark<H: Handler> {
    mesh: Arc<Mesh<H>>,
    index: usize,
}

impl<H: Handler> Drop for EndMark<H> {
    fn drop(&mut self) {
        self.mesh.ended[self.index].store(true, std::sync::atomic::Ordering::SeqCst);
        self.mesh.drop_queued_commands(self.index);
        self.mesh.drop_queued_datagrams(self.index);
        self.mesh.outgoing.forget_worker(self.index);
    }
}

/// Everything [`Worker::new`] needs; built by [`crate::EngineBuilder`].
pub(crate) struct WorkerParts<H: Handler> {
    pub index: usize,
    pub mesh: Arc<Mesh<H>>,
    pub endpoint: quinn_proto::Endpoint,
    pub handler: H,
    pub client: Option<ClientConfig>,
    pub retry: RetryPolicy,
    pub commands: Receiver<Command<H>>,
    pub handovers: Receiver<Datagram>,
    pub rx_batch: usize,
    pub rx_chunks: usize,
    pub drain_timeout: Duration,
    pub max_connections: usize,
}

impl<H: Handler> Worker<H> {
    pub(crate) fn new(p: WorkerParts<H>) -> Self {
        let metrics = p.mesh.metrics[p.index].clone();
        let end = EndMark {
            mesh: p.mesh.clone(),
            index: p.index,
        };
        let serves = p.mesh.serves;
        let mut handler = p.handler;
        handler.attached(&crate::engine::EngineHandle {
            mesh: p.mesh.clone(),
        });
        let max_datagram = max_datagram(&p.endpoint);
        Self {
            mesh: p.mesh,
            shard: Shard {
                worker: p.index,
                now: Instant::now(),
                endpoint: p.endpoint,
                client: p.client,
                serves,
                rotated: None,
                born: Vec::new(),
                next_serial: 0,
                maps_ipv4: false,
                stop_requested: false,
                max_connections: p.max_connections,
                deferred: crate::accept::Deferred::for_worker(p.index),
                answers: Vec::new(),
                tally: Default::default(),
            },
            conns: Connections::new(),
            handler: Guarded {
                inner: handler,
                poisoned: false,
            },
            retry: p.retry,
            commands: p.commands,
            handovers: p.handovers,
            rx: RxBatch::with_chunk_limit(p.rx_batch, p.rx_chunks),
            tx_buf: Vec::with_capacity(64 * 1024),
            stalled: None,
            initial: Vec::with_capacity(1500),
            stall_buf: Vec::with_capacity(64 * 1024),
            counters: Counters::default(),
            histograms: Histograms::default(),
            metrics,
            stop_code: (VarInt::from_u32(0), Bytes::new()),
            drain_deadline: None,
            drain_timeout: p.drain_timeout,
            next_kernel_read: Instant::now(),
            max_connections: p.max_connections,
            max_datagram,
            hold_transmits: false,
            held: Vec::new(),
            driving: Vec::new(),
            pushed_back: Vec::new(),
            stray_owners: Vec::new(),
            _end: end,
        }
    }

    /// Holds a connection's transmit back for one turn after its handler heard events, so
    /// that what the application answers between two turns (on this thread, before the next
    /// [`Worker::turn`]) leaves with the ACKs of what it answers: one batch instead of an
    /// ACK-only packet and then the answers. For handlers whose work happens outside their
    /// callbacks (thread-per-core mode of [`crate::tokio`] turns it on); a handler that
    /// answers in its callbacks gains nothing from it. A connection's transmit is never held
    /// two drives in a row, and a turn that held one reports a deadline of now, so nothing
    /// waits more than one turn. Off by default.
    pub fn hold_transmits(&mut self, on: bool) {
        self.hold_transmits = on;
    }

    /// This worker's index.
    pub fn index(&self) -> usize {
        self.shard.worker
    }

    /// The handler, e.g. to inspect its state between turns in tests.
    pub fn handler(&self) -> &H {
        &self.handler.inner
    }

    /// Tells the worker how its backend names IPv4 peers ([`Backend::maps_ipv4`]). Call
    /// before its first turn.
    pub(crate) fn set_maps_ipv4(&mut self, maps: bool) {
        self.shard.maps_ipv4 = maps;
    }

    /// Ends the worker, giving its handler back.
    pub fn into_handler(self) -> H {
        self.handler.inner
    }

    /// Whether the handler panicked (the worker then stops).
    pub fn handler_failed(&self) -> bool {
        self.handler.poisoned
    }

    /// This worker's counters as of the end of its last turn.
    pub fn counters(&self) -> Counters {
        self.counters
    }

    /// This worker's histograms as of the end of its last turn.
    pub fn histograms(&self) -> &Histograms {
        &self.histograms
    }

    /// Adds wall time spent in turns that did work (`busy`) or waiting and spinning without
    /// work (`idle`). The thread runner calls it; the simulation has no wall time to add.
    pub fn account_time(&mut self, busy: Duration, idle: Duration) {
        self.counters.busy_ns += busy.as_nanos() as u64;
        self.counters.idle_ns += idle.as_nanos() as u64;
    }

    /// Datagrams and commands handled so far: the runner compares it across a turn to tell
    /// busy turns from idle ones.
    pub fn work_done(&self) -> u64 {
        self.counters.rx_packets + self.counters.tx_packets + self.counters.handover_in
    }

    /// Connections alive on this worker.
    pub fn connections(&self) -> usize {
        self.conns.active
    }

    /// Whether the backend pushed back and the worker waits to write.
    pub fn wants_write(&self) -> bool {
        self.stalled.is_some()
    }

    /// Whether work is queued for this worker by other threads (or a shutdown).
    pub fn has_inbox(&self) -> bool {
        !self.commands.is_empty()
            || !self.handovers.is_empty()
            || self.mesh.stops[self.index()].pending()
    }

    /// Runs one turn at time `now` (see the module doc).
    pub fn turn<B: Backend>(&mut self, io: &mut B, now: Instant) -> io::Result<TurnOutcome> {
        self.shard.now = now;
        let mut more = self.retry_stalled(io);
        self.take_inbox(io);
        more |= self.has_inbox();
        more |= self.receive(io);
        self.fire_timers(now);
        self.drive_all(io);
        if self.shard.stop_requested && self.drain_deadline.is_none() {
            self.begin_stop();
            self.drive_all(io);
        }
        io.flush()?;
        self.publish(io, now);

        if let Some(deadline) = self.drain_deadline {
            if self.conns.active == 0 || now >= deadline {
                // Answers to attempts decided since the last turn's look (refusals, Retries)
                // still go; deferred attempts are let go (and counted, below).
                self.settle_deferred(io);
                io.flush()?;
                // Nothing more is received: the chunks go (those still held, with their
                // datagrams), and the gauge says so; the count of own buffers stays.
                self.rx.release();
                self.abandon_all();
                return Ok(TurnOutcome::Done);
            }
        }
        // Answers to attempts a callback decided this turn (`Ctx::decide`) go out next turn:
        // at once, not at the next packet or timer.
        let answers = !self.shard.answers.is_empty();
        if more || answers || (!self.conns.dirty.is_empty() && self.stalled.is_none()) {
            return Ok(TurnOutcome::Continue(Some(now)));
        }
        let mut next = self.conns.timers.next_deadline();
        if let Some(d) = self.shard.deferred.next_deadline() {
            next = Some(next.map_or(d, |n| n.min(d)));
        }
        if let Some(d) = self.drain_deadline {
            next = Some(next.map_or(d, |n| n.min(d)));
        }
        Ok(TurnOutcome::Continue(next))
    }

    /// Step 1: the transmit the backend pushed back last turn goes first. Returns whether it
    /// went (there may be more to send this turn).
    fn retry_stalled<B: Backend>(&mut self, io: &mut B) -> bool {
        let Some(out) = self.stalled else {
            return false;
        };
        if !out.send(io, &self.stall_buf, &mut self.counters) {
            return false;
        }
        self.stalled = None;
        true
    }

    /// Step 2: a shutdown, work posted by other threads, and datagrams other workers handed
    /// over.
    fn take_inbox<B: Backend>(&mut self, io: &mut B) {
        if let Some(code) = self.mesh.stops[self.index()].take() {
            self.stop_code = code;
            self.shard.stop_requested = true;
        }
        for _ in 0..MAX_INBOX {
            match self.commands.try_recv() {
                Ok(cmd) => self.run_command(cmd),
                Err(_) => break,
            }
        }
        self.settle_deferred(io);
        for _ in 0..MAX_INBOX {
            match self.handovers.try_recv() {
                Ok(d) => {
                    self.counters.handover_in += 1;
                    self.feed_endpoint(io, d);
                }
                Err(_) => break,
            }
        }
    }

    /// Steps 3 to 5: receive batches, route each datagram, feed the endpoint. Returns
    /// whether anything came.
    fn receive<B: Backend>(&mut self, io: &mut B) -> bool {
        let mut any = false;
        for _ in 0..MAX_RX_BATCHES {
            // An error comes with nothing added (`Backend::recv`).
            let n = match io.recv(&mut self.rx) {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(worker = self.index(), "receive failed: {e}");
                    break;
                }
            };
            if n == 0 {
                break;
            }
            self.counters.rx_batches += 1;
            self.histograms.rx_batch.observe(n as f64);
            // A batch left with room means nothing more was pending: asking again this turn
            // would cost a look (a syscall on the UDP backend) that finds nothing.
            let full = self.rx.is_full();
            let mut batch = std::mem::take(&mut self.rx);
            for d in batch.drain() {
                self.on_datagram(io, d);
            }
            self.rx = batch;
            any = true;
            if !full {
                break;
            }
        }
        any
    }

    /// Step 6: the connections whose timer is due.
    fn fire_timers(&mut self, now: Instant) {
        while let Some(h) = self.conns.timers.pop_due(now) {
            if let Some(slot) = self.conns.slot(h) {
                slot.conn.handle_timeout(now);
                self.conns.mark_dirty(h);
            }
        }
    }

    /// Step 8: the counters, published once per turn (and the kernel's drop count once a
    /// second).
    fn publish<B: Backend>(&mut self, io: &mut B, now: Instant) {
        if now >= self.next_kernel_read {
            self.next_kernel_read = now + KERNEL_READ_EVERY;
            if let Some(d) = io.kernel_drops() {
                self.counters.kernel_rx_dropped = d;
            }
        }
        self.publish_gauges();
        self.metrics.publish_histograms(&self.histograms);
    }

    /// Routes one received datagram.
    fn on_datagram<B: Backend>(&mut self, io: &mut B, d: Datagram) {
        self.counters.rx_packets += 1;
        self.counters.rx_bytes += d.data.len() as u64;
        let mut from_elsewhere = || {
            d.local_ip
                .is_some_and(|ip| !io.answerable_from(ip.to_canonical(), self.shard.now))
        };
        if unanswerable(&d) || from_elsewhere() {
            // No answer can go there: Linux fails a send to port 0, or from a group or
            // broadcast address or one not the host's (over AF_XDP), or from a link-local
            // address to a peer that is not, with EINVAL, which quinn-udp takes for a NIC
            // without GSO (and without ECN marks) and turns both off for the socket's life.
            // One such datagram would slow every connection of the worker.
            self.counters.rx_malformed += 1;
            return;
        }
        if d.data.len() > self.max_datagram {
            // Larger than any peer may send us (see `max_datagram`): an IP-fragmented
            // datagram a peer made big to pin memory with each small frame it carries.
            self.counters.rx_malformed += 1;
            return;
        }
        let me = self.index();
        match route(&self.mesh.layout, me, &d.data) {
            Destination::Local => self.feed_endpoint(io, d),
            Destination::Worker(w) => self.hand_over(w, d),
            Destination::Opened(w) if self.mesh.outgoing.opened(d.remote, w) => {
                self.hand_over(w, d)
            }
            Destination::Opened(_) => self.feed_endpoint(io, d),
            Destination::Stray => self.on_stray(io, d),
            Destination::Drop(_) => self.counters.rx_malformed += 1,
        }
    }

    /// Hands `d` to worker `w` (dropped, and counted, when its queue is full). A datagram
    /// larger than a receive chunk, which has a chunk of its own size, is dropped too: each
    /// queued datagram then holds at most [`POOL_CHUNK`] octets, which bounds the queue's
    /// memory. (QUIC packets of other workers that large come only from peers that probed a
    /// path MTU over 16 KiB; they are not worth a bound four times as large.)
    fn hand_over(&mut self, w: usize, d: Datagram) {
        if d.data.len() > POOL_CHUNK || self.mesh.has_ended(w) {
            self.counters.handover_dropped += 1;
            return;
        }
        match self.mesh.handovers[w].try_send(d) {
            Ok(()) => {
                self.counters.handover_out += 1;
                self.mesh.wakers[w].wake();
                // It ended as this went in (see `EngineHandle::send`).
                if self.mesh.has_ended(w) {
                    self.mesh.drop_queued_datagrams(w);
                }
            }
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                self.counters.handover_dropped += 1
            }
        }
    }

    /// A short header whose CID this host did not issue: a stateless reset, or junk. A copy
    /// goes to each other worker that opened connections to its sender (their endpoints hold
    /// the reset tokens; one that does not recognise it drops it), and the datagram to this
    /// one's endpoint, whose connections (opened by it, or by that peer to it) may be the
    /// reset's. Copies only while other workers have connections open to the sender.
    fn on_stray<B: Backend>(&mut self, io: &mut B, d: Datagram) {
        let mut others = std::mem::take(&mut self.stray_owners);
        self.mesh
            .outgoing
            .others(d.remote, self.index(), &mut others);
        for &w in &others {
            let copy = Datagram {
                data: BytesMut::from(&d.data[..]),
                ..d
            };
            self.hand_over(w, copy);
        }
        self.stray_owners = others;
        self.feed_endpoint(io, d);
    }

    /// Feeds a datagram that belongs here to the endpoint.
    fn feed_endpoint<B: Backend>(&mut self, io: &mut B, d: Datagram) {
        let (remote, link) = (d.remote, d.link);
        // A long-header Initial may open a connection: keep its octets for the accept hook
        // (the type bits only: quinn-proto takes Initials whose QUIC bit is greased to 0).
        // Anything else clears them, so the hook never reads an earlier client's hello.
        if self.shard.serves {
            self.initial.clear();
            if d.data.first().is_some_and(|b| b & 0xb0 == 0x80) {
                self.initial.extend_from_slice(&d.data);
            }
        }
        // While attempts await a decision, quinn-proto keeps the long-header datagrams that
        // come for them, counting their lengths (`tls::INCOMING_BUFFER`): each gets a copy
        // of its own, so that a small one does not keep the 16 KiB receive chunk it landed
        // in. (Only then, and only long headers: the hot path copies nothing. The first
        // datagram of an attempt that comes while none waits keeps its chunk: one at a time.)
        let data = if self.shard.deferred.len() > 0 && d.data.first().is_some_and(|b| b & 0x80 != 0)
        {
            BytesMut::from(&d.data[..])
        } else {
            d.data
        };
        self.tx_buf.clear();
        let event = self.shard.endpoint.handle(
            self.shard.now,
            d.remote,
            d.local_ip,
            d.ecn,
            data,
            &mut self.tx_buf,
        );
        match event {
            Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                if let Some(slot) = self.conns.slot(ch.0) {
                    slot.handle_datagram(ev, remote, link);
                    self.conns.mark_dirty(ch.0);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => self.on_incoming(io, incoming, link),
            Some(DatagramEvent::Response(t)) => {
                // A stateless reset has a short header; version negotiation a long one of
                // version 0; any other long one closes an attempt at once (an Initial with
                // CONNECTION_CLOSE: a bad token, say), a refusal.
                match self.tx_buf.get(..5) {
                    Some([b, ..]) if b & 0x80 == 0 => self.counters.resets_sent += 1,
                    Some([_, 0, 0, 0, 0]) => self.counters.version_negotiations += 1,
                    _ => self.counters.conns_refused += 1,
                }
                self.send_stateless(io, &t, link);
            }
            None => self.counters.rx_ignored += 1,
        }
    }

    /// Accepts, validates with Retry, or refuses a new connection (while stopping, or when
    /// the worker holds its maximum of connections).
    fn on_incoming<B: Backend>(&mut self, io: &mut B, incoming: ProtoIncoming, link: Option<L2>) {
        self.tx_buf.clear();
        if self.drain_deadline.is_some() || self.conns.active >= self.max_connections {
            return self.refuse(io, incoming, link);
        }
        let validated = incoming.remote_address_validated();
        let retry = match self.retry {
            RetryPolicy::Never => false,
            RetryPolicy::Always => true,
            // Attempts awaiting a deferred decision hold state too (their datagrams, and
            // a handshake once accepted): they count as pending.
            RetryPolicy::AbovePendingHandshakes(n) => {
                self.conns.handshaking + self.shard.deferred.len() >= n
            }
        };
        if retry && !validated {
            return self.send_retry(io, incoming, link);
        }
        let id = self.shard.deferred.next_id();
        let attempt = Incoming {
            id,
            remote: incoming.remote_address(),
            local_ip: incoming.local_ip(),
            validated,
            datagram: &self.initial,
            hello: Default::default(),
        };
        let ctx = &mut Ctx {
            shard: &mut self.shard,
            conns: &mut self.conns,
        };
        let mut decision = Decision::Refuse;
        if self.handler.call(|h| decision = h.incoming(ctx, &attempt)) {
            self.handler_panicked();
        }
        if let Decision::Defer = decision {
            let held = Held { incoming, link };
            let deadline = self.shard.now + DEFER_TIMEOUT;
            match self.shard.deferred.hold(id, held, deadline) {
                Ok(()) => return,
                Err(held) => return self.refuse(io, held.incoming, link),
            }
        }
        let settled =
            self.shard
                .settle(&mut self.conns, incoming, link, decision, &mut self.tx_buf);
        if let Settled::Answer(t) = settled {
            self.send_stateless(io, &t, link);
        }
    }

    /// Sends the answers to attempts decided by posted work ([`Ctx::decide`]), and ignores
    /// deferred attempts whose time is up (all of them once stopping).
    fn settle_deferred<B: Backend>(&mut self, io: &mut B) {
        for (t, buf, link) in std::mem::take(&mut self.shard.answers) {
            Outgoing::of(&t, link).send(io, &buf, &mut self.counters);
        }
        let now = (!self.shard.stop_requested).then_some(self.shard.now);
        while let Some(held) = self.shard.deferred.expired(now) {
            self.shard.tally.refused += 1;
            self.shard.endpoint.ignore(held.incoming);
        }
    }

    /// Refuses a connection attempt (CONNECTION_REFUSED).
    fn refuse<B: Backend>(&mut self, io: &mut B, incoming: ProtoIncoming, link: Option<L2>) {
        self.tx_buf.clear();
        let t = self.shard.endpoint.refuse(incoming, &mut self.tx_buf);
        self.shard.tally.refused += 1;
        self.send_stateless(io, &t, link);
    }

    /// Answers a connection attempt with a Retry (no state kept).
    fn send_retry<B: Backend>(&mut self, io: &mut B, incoming: ProtoIncoming, link: Option<L2>) {
        self.tx_buf.clear();
        match self.shard.endpoint.retry(incoming, &mut self.tx_buf) {
            Ok(t) => {
                self.shard.tally.retries += 1;
                self.send_stateless(io, &t, link);
            }
            Err(e) => self.shard.endpoint.ignore(e.into_incoming()),
        }
    }

    /// Sends an endpoint-generated packet in `tx_buf` over `link` (the datagram's it answers);
    /// dropped if the backend pushes back.
    fn send_stateless<B: Backend>(
        &mut self,
        io: &mut B,
        t: &quinn_proto::Transmit,
        link: Option<L2>,
    ) {
        Outgoing::of(t, link).send(io, &self.tx_buf, &mut self.counters);
    }

    fn run_command(&mut self, cmd: Command<H>) {
        let panicked = match cmd {
            Command::Run(f) => {
                let ctx = &mut Ctx {
                    shard: &mut self.shard,
                    conns: &mut self.conns,
                };
                self.handler.call(|h| f(h, ctx))
            }
            Command::RunOnConn(id, f) => {
                let Some(mut slot) = self.conns.take_live(id) else {
                    return;
                };
                let conn = &mut Conn {
                    slot: &mut slot,
                    ctx: Ctx {
                        shard: &mut self.shard,
                        conns: &mut self.conns,
                    },
                };
                let panicked = self.handler.call(|h| f(h, conn));
                self.conns.put_back(slot, true);
                panicked
            }
        };
        if panicked {
            self.handler_panicked();
        }
    }

    /// Counts a handler panic (the handler is poisoned) and stops the worker: its
    /// connections are closed with [`INTERNAL_ERROR`].
    fn handler_panicked(&mut self) {
        self.counters.handler_panics += 1;
        tracing::error!(
            worker = self.index(),
            "application handler panicked: closing this worker's connections and stopping it"
        );
        self.stop_code = (INTERNAL_ERROR, Bytes::from_static(b"internal error"));
        self.shard.stop_requested = true;
    }

    /// Ends a worker that cannot go on: a panic outside the application's callbacks (in
    /// quinn-proto or the backend) or a fatal I/O error. Records `why` (see
    /// [`crate::EngineHandle::failed_workers`]), logs it, sets the `failed` gauge,
    /// closes every connection with [`INTERNAL_ERROR`] and sends what the backend still
    /// takes, once, without waiting for the peers, then calls the handler's `closed`
    /// (`LocallyClosed`) for each connection not reported yet. Do not turn the worker again.
    pub fn fail<B: Backend>(&mut self, io: &mut B, now: Instant, why: &str) {
        tracing::error!(
            worker = self.index(),
            connections = self.conns.active,
            "worker failed ({why}): closing its connections and stopping it"
        );
        let _ = self.mesh.failures[self.index()].set(why.to_string());
        self.counters.failed = 1;
        self.metrics.publish(&self.counters);
        // Best effort: the state that failed may fail again.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.shard.now = now;
            // Nothing new from here: no connection accepted or opened by a callback.
            self.shard.stop_requested = true;
            self.stop_code = (INTERNAL_ERROR, Bytes::from_static(b"internal error"));
            // A panic may have left connections marked dirty in no list (`drive_all`'s own
            // went with the unwinding), and a transmit stalled, which would keep every
            // connection waiting: start clean, so that each is driven once more.
            self.stalled = None;
            self.conns.dirty.clear();
            for slot in self.conns.slots.iter_mut().flatten() {
                slot.dirty = false;
            }
            self.begin_stop();
            // Attempts awaiting a decision are ignored and counted refused (stop requested:
            // every one of them).
            self.settle_deferred(io);
            self.drive_all(io);
            io.flush()
        }));
        // The handler hears `closed` once for each connection, as at a drain deadline: the
        // failure was not its own (`Handler::closed` is once per connection). Apart from the
        // above, which may fail again the way the worker did.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.abandon_all()));
        self.publish_gauges();
        // The worker ends here: its connections (closed above, as far as it could) and
        // waiting attempts end with it, counted so, and its gauges say so from now on.
        self.counters.conns_closed += self.conns.active as u64;
        self.counters.closed_locally += self.conns.active as u64;
        self.counters.conns_active = 0;
        self.counters.conns_handshaking = 0;
        self.counters.attempts_deferred = 0;
        // The batch goes with the worker: chunks outlive it only in datagrams still alive.
        self.counters.rx_chunks = 0;
        self.metrics.publish(&self.counters);
    }

    /// Closes every connection and refuses new ones; the worker ends when they have drained
    /// or the drain timeout passes.
    fn begin_stop(&mut self) {
        let now = self.shard.now;
        self.drain_deadline = Some(now + self.drain_timeout);
        let (code, reason) = self.stop_code.clone();
        for h in 0..self.conns.slots.len() {
            if let Some(slot) = self.conns.slot(h) {
                slot.conn.close(now, code, reason.clone());
                slot.open_gates();
                self.conns.mark_dirty(h);
            }
        }
    }

    /// Step 7: drives every dirty connection, and those that callbacks opened, until quiet.
    fn drive_all<B: Backend>(&mut self, io: &mut B) {
        // The lists swap places, keeping their capacity: nothing is allocated here.
        let mut dirty = std::mem::take(&mut self.driving);
        std::mem::swap(&mut dirty, &mut self.conns.dirty);
        let mut pushed_back = std::mem::take(&mut self.pushed_back);
        loop {
            // Connections opened since (by posted work, or by the callbacks of the last
            // round) are noted before they are driven: their first Initial goes out then,
            // and the peer's answer may reach another worker at once.
            self.note_born();
            for h in dirty.drain(..) {
                if self.stalled.is_some() {
                    // The backend is full: poll this one next turn.
                    pushed_back.push(h);
                    continue;
                }
                if let Some(slot) = self.conns.slot(h) {
                    slot.dirty = false;
                }
                self.drive(io, h);
            }
            if self.conns.dirty.is_empty() {
                break;
            }
            std::mem::swap(&mut dirty, &mut self.conns.dirty);
        }
        // Keep the pushed-back ones marked so they are polled once the backend takes more.
        self.conns.dirty.append(&mut pushed_back);
        self.driving = dirty;
        self.pushed_back = pushed_back;
        // The held ones transmit at their next drive, next turn.
        for h in self.held.drain(..) {
            self.conns.mark_dirty(h);
        }
    }

    /// Notes the connections opened since the last call: counted, and, where workers share a
    /// port, recorded as this worker's connections to their peer ([`crate::peers`]), so that
    /// the peer's first packets (its Initial, a Retry, a Version Negotiation) and stateless
    /// resets reach this worker from any other. Called before they are driven.
    fn note_born(&mut self) {
        let me = self.index();
        while let Some(id) = self.shard.born.pop() {
            self.counters.conns_opened += 1;
            // Gone already (removed at the drain deadline, say): counted, nothing to record.
            let Some(born) = self.conns.slot(id.handle()).filter(|s| s.id == id) else {
                continue;
            };
            born.span.in_scope(|| tracing::debug!("opened"));
            if self.mesh.handovers.len() > 1 {
                let remote = born.conn.remote_address();
                self.mesh.outgoing.add(remote, me);
                born.outgoing_to = Some(remote);
            }
        }
    }

    /// Drives one connection: endpoint events both ways, application events to the handler,
    /// transmits to the backend, until no new application event comes; then either removes
    /// it (drained) or arms its timer.
    fn drive<B: Backend>(&mut self, io: &mut B, h: usize) {
        let mut drained = false;
        let mut panicked = false;
        let may_hold = self.hold_transmits && self.conns.slot(h).is_some_and(|s| !s.held);
        let mut dispatched = false;
        loop {
            drained |= self.exchange_endpoint_events(h);
            let (events, now_panicked) = self.dispatch_events(h);
            panicked |= now_panicked;
            dispatched |= events > 0;
            if !(may_hold && dispatched) {
                self.send_transmits(io, h);
            }
            if events == 0 {
                break;
            }
        }
        if panicked {
            self.handler_panicked();
        }
        let hold = may_hold && dispatched;
        match self.conns.slot(h) {
            Some(slot) if drained || slot.conn.is_drained() => self.remove(h),
            Some(slot) => {
                slot.held = hold;
                let deadline = slot.conn.poll_timeout();
                self.conns.timers.set(h, deadline);
                if hold {
                    self.held.push(h);
                }
            }
            None => {}
        }
    }

    /// Passes the connection's events to the endpoint and the endpoint's answers back.
    /// Returns whether the connection has drained. That one event is kept from the endpoint
    /// until [`Worker::remove`] has taken the slot out: the endpoint frees the handle on it,
    /// and a callback in between (`closed`, say, accepting a waiting attempt) would be given
    /// the same handle for a new connection while the old slot still sits in its place.
    fn exchange_endpoint_events(&mut self, h: usize) -> bool {
        let endpoint = &mut self.shard.endpoint;
        let Some(slot) = self.conns.slots.get_mut(h).and_then(|s| s.as_deref_mut()) else {
            return false;
        };
        let mut drained = false;
        while let Some(ev) = slot.conn.poll_endpoint_events() {
            if ev.is_drained() {
                drained = true;
                continue;
            }
            if let Some(back) = endpoint.handle_event(ConnectionHandle(h), ev) {
                slot.handle_event(back);
            }
        }
        drained
    }

    /// Hands the connection's application events to the handler. The connection is taken
    /// out of its place meanwhile, so that the callbacks can act on the others of the worker
    /// ([`Ctx::with_conn`]). Returns how many events there were, and whether the handler
    /// panicked.
    fn dispatch_events(&mut self, h: usize) -> (usize, bool) {
        let Some(id) = self.conns.slot(h).map(|s| s.id) else {
            return (0, false);
        };
        let mut slot = self.conns.take(id).expect("present");
        let span = slot.span.clone();
        let _in_span = span.enter();
        let (mut events, mut panicked) = (0, false);
        // The handler's panics are caught per call; one elsewhere (quinn-proto's `poll`)
        // fails the worker, which must still find the connection in its place to close it.
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            while let Some(ev) = slot.conn.poll() {
                events += 1;
                match &ev {
                    Event::Connected if slot.handshaking => {
                        slot.handshaking = false;
                        self.conns.handshaking -= 1;
                        self.counters.handshakes += 1;
                        let took = self.shard.now.saturating_duration_since(slot.created);
                        self.histograms.handshake.observe(took.as_secs_f64());
                        tracing::debug!(?took, "handshake complete");
                    }
                    Event::ConnectionLost { reason } => {
                        if slot.reported_closed {
                            continue;
                        }
                        slot.reported_closed = true;
                        count_close(&mut self.counters, reason);
                        tracing::debug!(%reason, "closed");
                    }
                    _ => {}
                }
                let conn = &mut Conn {
                    slot: &mut slot,
                    ctx: Ctx {
                        shard: &mut self.shard,
                        conns: &mut self.conns,
                    },
                };
                panicked |= self.handler.call(|h| dispatch(h, conn, ev));
            }
        }));
        drop(_in_span);
        self.conns.put_back(slot, false);
        if let Err(panic) = polled {
            std::panic::resume_unwind(panic);
        }
        (events, panicked)
    }

    /// Writes the connection's transmits to the backend, in GSO batches of up to
    /// `Backend::max_segments` datagrams. When the backend pushes back, the transmit is kept
    /// (`stalled`) and the connection stays dirty.
    fn send_transmits<B: Backend>(&mut self, io: &mut B, h: usize) {
        if self.stalled.is_some() {
            return;
        }
        let Some(slot) = self.conns.slots.get_mut(h).and_then(|s| s.as_deref_mut()) else {
            return;
        };
        // One transmit must fit one UDP send (64 KiB), whatever the path MTU.
        let per_send = MAX_UDP_PAYLOAD / usize::from(slot.conn.current_mtu()).max(1);
        let max = io.max_segments().min(per_send).max(1);
        loop {
            self.tx_buf.clear();
            let Some(t) = slot
                .conn
                .poll_transmit(self.shard.now, max, &mut self.tx_buf)
            else {
                return;
            };
            let out = Outgoing::of(&t, slot.link_for(t.destination));
            if !out.send(io, &self.tx_buf, &mut self.counters) {
                std::mem::swap(&mut self.tx_buf, &mut self.stall_buf);
                self.stalled = Some(out);
                // It may have more to send once the backend drains.
                slot.dirty = true;
                self.conns.dirty.push(h);
                return;
            }
        }
    }

    /// At the drain deadline: removes the connections that have not drained, so that the
    /// handler hears `closed` once for every connection, these too.
    fn abandon_all(&mut self) {
        for h in 0..self.conns.slots.len() {
            if self.conns.slot(h).is_some() {
                self.remove(h);
            }
        }
        self.publish_gauges();
    }

    /// Folds the shard's tally into the counters, sets the gauges, publishes the counters.
    fn publish_gauges(&mut self) {
        let tally = std::mem::take(&mut self.shard.tally);
        self.counters.conns_accepted += tally.accepted;
        self.counters.conns_refused += tally.refused;
        self.counters.retries_sent += tally.retries;
        self.counters.conns_active = self.conns.active as u64;
        self.counters.conns_handshaking = self.conns.handshaking as u64;
        self.counters.attempts_deferred = self.shard.deferred.len() as u64;
        self.counters.rx_chunks = self.rx.chunks() as u64;
        self.counters.rx_own_buffers = self.rx.own_buffers();
        self.metrics.publish(&self.counters);
    }

    /// Removes a drained connection, tells the handler if quinn-proto did not (a connection
    /// closed locally), then frees its handle in the endpoint: only now, with the slot gone,
    /// may the endpoint give the handle to another connection.
    fn remove(&mut self, h: usize) {
        let slot = self.conns.remove(h).expect("slot present");
        self.counters.conns_closed += 1;
        if let Some(remote) = slot.outgoing_to {
            self.mesh.outgoing.remove(remote, self.index());
        }
        let stats = slot.conn.stats();
        self.counters.lost_packets += stats.path.lost_packets;
        self.counters.congestion_events += stats.path.congestion_events;
        self.histograms.rtt.observe(stats.path.rtt.as_secs_f64());
        if !slot.reported_closed {
            self.counters.closed_locally += 1;
            slot.span.in_scope(|| tracing::debug!("closed locally"));
            let ctx = &mut Ctx {
                shard: &mut self.shard,
                conns: &mut self.conns,
            };
            if self
                .handler
                .call(|h| h.closed(ctx, slot.id, &ConnectionError::LocallyClosed))
            {
                self.handler_panicked();
            }
        }
        self.shard
            .endpoint
            .handle_event(ConnectionHandle(h), quinn_proto::EndpointEvent::drained());
    }
}

/// The callback of one application event. (`Connected` and `ConnectionLost` were counted
/// already; a lost connection's `closed` comes once.)
fn dispatch<H: Handler>(h: &mut H, conn: &mut Conn<'_>, ev: Event) {
    match ev {
        Event::Connected => h.connected(conn),
        Event::ConnectionLost { reason } => {
            h.lost(conn, &reason);
            let id = conn.id();
            h.closed(&mut conn.ctx, id, &reason)
        }
        Event::Stream(StreamEvent::Opened { dir }) => {
            while let Some(id) = conn.slot.conn.streams().accept(dir) {
                h.stream_opened(conn, id);
                h.stream_readable(conn, id);
            }
        }
        Event::Stream(StreamEvent::Readable { id }) => h.stream_readable(conn, id),
        Event::Stream(StreamEvent::Writable { id }) => h.stream_writable(conn, id),
        Event::Stream(StreamEvent::Finished { id }) => {
            h.stream_finished(conn, id);
            conn.slot.streams.send_over(id);
        }
        Event::Stream(StreamEvent::Stopped { id, error_code }) => {
            h.stream_stopped(conn, id, error_code);
            // RFC 9000 §3.5: a stopped stream is reset. quinn-proto leaves that to the
            // application and keeps the stream (and the peer's stream credit) until then; a
            // handler that reset it already makes this a no-op.
            let _ = conn.reset(id, error_code);
        }
        Event::Stream(StreamEvent::Available { .. }) => h.streams_available(conn),
        Event::DatagramReceived => {
            while let Some(d) = conn.slot.conn.datagrams().recv() {
                h.datagram(conn, d);
            }
        }
        Event::HandshakeDataReady | Event::DatagramsUnblocked => {}
    }
}

/// The largest UDP payload a worker takes in: what its endpoint announces to peers
/// (`max_udp_payload_size`, RFC 9000 §18.2: larger ones "are not likely to be processed"),
/// but never less than a receive chunk ([`crate::backend::rx::POOL_CHUNK`], 16 KiB), so that a
/// client's first Initial, sent before it knows the limit, is taken on any path. Within it,
/// a datagram fits in one receive chunk and what the async API keeps of it is at most twice
/// its octets; beyond, one small frame could hold a 64 KiB datagram.
fn max_datagram(endpoint: &quinn_proto::Endpoint) -> usize {
    let announced = endpoint.config().get_max_udp_payload_size();
    usize::try_from(announced)
        .unwrap_or(usize::MAX)
        .max(crate::backend::rx::POOL_CHUNK)
}

/// A datagram no answer can go back to: from port 0 or an unspecified address (an IPv4 one
/// mapped into IPv6 included), or sent to a multicast address or the limited broadcast
/// address 255.255.255.255 (quinn-proto would answer from it, and every packet of a
/// connection it accepted too). A subnet's directed broadcast (10.0.0.255 on a /24), or an
/// address not the host's (a frame over AF_XDP may name any), only the kernel tells: the
/// backend answers that ([`Backend::answerable_from`]). Also one sent to an IPv6 link-local
/// address from a peer that is not link-local: a reply from a link-local source needs the
/// peer's link as its interface, which a global peer does not name (Linux: EINVAL). It is
/// dropped on every backend, even where a reply could go (AF_XDP's own TX ring, a socket
/// bound to a device): a global peer reaches a link-local address only from the same link,
/// and a link-local source towards a global address is out of its scope (RFC 4007).
fn unanswerable(d: &Datagram) -> bool {
    let remote = d.remote.ip().to_canonical();
    let group = |ip: IpAddr| match ip.to_canonical() {
        IpAddr::V4(a) => a.is_multicast() || a.is_broadcast(),
        IpAddr::V6(a) => a.is_multicast(),
    };
    let link_local = crate::backend::local_addrs::is_link_local;
    let scope_mismatch = d
        .local_ip
        .is_some_and(|l| link_local(l.to_canonical()) && !link_local(remote));
    d.remote.port() == 0
        || remote.is_unspecified()
        || d.local_ip.is_some_and(group)
        || scope_mismatch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datagram(remote: &str, local: &str) -> Datagram {
        Datagram {
            remote: remote.parse().unwrap(),
            local_ip: Some(local.parse().unwrap()),
            ecn: None,
            data: bytes::BytesMut::from(&b"x"[..]),
            link: None,
        }
    }

    /// Datagrams no answer can go back to are recognised: from port 0 or an unspecified
    /// address (IPv4-mapped too), or to a group address (multicast, broadcast), from which
    /// Linux refuses to send (EINVAL, which turns quinn-udp's GSO off for the socket), or to
    /// an IPv6 link-local address from a peer that is not link-local.
    #[test]
    fn datagrams_no_answer_can_go_back_to_are_recognised() {
        for (remote, local) in [
            ("10.0.0.2:0", "10.0.0.1"),
            ("0.0.0.0:5000", "10.0.0.1"),
            ("[::ffff:0.0.0.0]:5000", "::ffff:10.0.0.1"),
            ("10.0.0.2:5000", "224.0.0.1"),
            ("10.0.0.2:5000", "255.255.255.255"),
            ("10.0.0.2:5000", "::ffff:224.0.0.251"),
            ("[fd00::2]:5000", "ff02::1"),
            ("[fd00::2]:5000", "fe80::1"),
        ] {
            assert!(
                unanswerable(&datagram(remote, local)),
                "{remote} -> {local}"
            );
        }
        for (remote, local) in [
            ("10.0.0.2:5000", "10.0.0.1"),
            ("[::ffff:10.0.0.2]:5000", "::ffff:10.0.0.1"),
            ("[fd00::2]:5000", "fd00::1"),
            ("[fe80::2%3]:5000", "fe80::1"),
            ("[fe80::2]:5000", "fd00::1"),
        ] {
            assert!(
                !unanswerable(&datagram(remote, local)),
                "{remote} -> {local}"
            );
        }
    }
}
