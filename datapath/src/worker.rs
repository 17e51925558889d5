//! The worker: one thread's turn of the data path, top to bottom.
//!
//! [`Worker::turn`] is sans-IO: it takes the backend and the time as arguments, so the same
//! code runs on a real thread ([`crate::engine`]) and under the virtual clock of the
//! in-memory network ([`crate::testing`]). One turn:
//!
//! 1. retry a transmit the backend pushed back last turn;
//! 2. run work posted by other threads, take datagrams handed over by other workers;
//! 3. receive batches from the backend; route each datagram by its destination CID
//!    ([`crate::route`]): to this shard's endpoint, to its owner worker, or drop;
//! 4. fire the connection timers that are due;
//! 5. poll every connection that changed: endpoint events, application callbacks
//!    ([`Handler`]), then transmits straight to the backend;
//! 6. flush the backend, publish the counters, report the next deadline.
//!
//! Nothing here allocates, locks, logs or makes a syscall per packet: batches, buffers and
//! queues are reused; the backend decides how many syscalls a batch costs.

use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, TrySendError};
use quinn_proto::{
    ClientConfig, ConnectionError, ConnectionHandle, DatagramEvent, Event, Incoming, StreamEvent,
    VarInt,
};

use crate::backend::{Backend, Datagram, RxBatch, SendError, Transmit};
use crate::conn::{Conn, Ctx};
use crate::engine::{Command, Mesh, RetryPolicy};
use crate::guard::{Guarded, INTERNAL_ERROR};
use crate::handler::Handler;
use crate::metrics::{Counters, Histograms, WorkerMetrics};
use crate::route::{route, Route};
use crate::shard::Shard;

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
pub enum Poll {
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

/// A transmit the backend could not take yet, kept with its bytes.
struct Stalled {
    destination: std::net::SocketAddr,
    src_ip: Option<std::net::IpAddr>,
    ecn: Option<quinn_proto::EcnCodepoint>,
    segment_size: Option<usize>,
    len: usize,
}

/// One worker: a shard of QUIC state, its handler, its inbox.
pub struct Worker<H: Handler> {
    index: usize,
    mesh: Arc<Mesh<H>>,
    shard: Shard,
    handler: Guarded<H>,
    client: Option<ClientConfig>,
    retry: RetryPolicy,
    commands: Receiver<Command<H>>,
    handovers: Receiver<Datagram>,
    rx: RxBatch,
    tx_buf: Vec<u8>,
    stall_buf: Vec<u8>,
    stalled: Option<Stalled>,
    counters: Counters,
    histograms: Histograms,
    metrics: Arc<WorkerMetrics>,
    now: Instant,
    stop_requested: bool,
    stop_code: (VarInt, Bytes),
    drain_deadline: Option<Instant>,
    drain_timeout: Duration,
    next_kernel_read: Instant,
    max_connections: usize,
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
    pub drain_timeout: Duration,
    pub max_connections: usize,
}

impl<H: Handler> Worker<H> {
    pub(crate) fn new(p: WorkerParts<H>) -> Self {
        let metrics = p.mesh.metrics[p.index].clone();
        let mut handler = p.handler;
        handler.attached(&crate::engine::EngineHandle {
            mesh: p.mesh.clone(),
        });
        Self {
            index: p.index,
            mesh: p.mesh,
            shard: Shard::new(p.endpoint),
            handler: Guarded {
                inner: handler,
                poisoned: false,
            },
            client: p.client,
            retry: p.retry,
            commands: p.commands,
            handovers: p.handovers,
            rx: RxBatch::new(p.rx_batch),
            tx_buf: Vec::with_capacity(64 * 1024),
            stall_buf: Vec::with_capacity(64 * 1024),
            stalled: None,
            counters: Counters::default(),
            histograms: Histograms::default(),
            metrics,
            now: Instant::now(),
            stop_requested: false,
            stop_code: (VarInt::from_u32(0), Bytes::new()),
            drain_deadline: None,
            drain_timeout: p.drain_timeout,
            next_kernel_read: Instant::now(),
            max_connections: p.max_connections,
        }
    }

    /// This worker's index.
    pub fn index(&self) -> usize {
        self.index
    }

    /// The handler, e.g. to inspect its state between turns in tests.
    pub fn handler(&self) -> &H {
        &self.handler.inner
    }

    /// The handler, mutably.
    pub fn handler_mut(&mut self) -> &mut H {
        &mut self.handler.inner
    }

    /// Ends the worker, giving its handler back.
    pub fn into_handler(self) -> H {
        self.handler.inner
    }

    /// Whether the handler panicked (the worker then stops).
    pub fn handler_failed(&self) -> bool {
        self.handler.poisoned
    }

    /// Records a caught handler panic: the handler is not called again, and the worker closes
    /// its connections with [`INTERNAL_ERROR`] and stops.
    fn handler_panicked(&mut self) {
        if self.handler.poisoned {
            return;
        }
        self.handler.poisoned = true;
        self.after_panic();
    }

    /// Counts a handler panic (the handler is already poisoned) and stops the worker.
    fn after_panic(&mut self) {
        self.counters.handler_panics += 1;
        tracing::error!(
            worker = self.index,
            "application handler panicked: closing this worker's connections and stopping it"
        );
        self.stop_code = (INTERNAL_ERROR, Bytes::from_static(b"internal error"));
        self.stop_requested = true;
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
    pub fn account_time(&mut self, busy: std::time::Duration, idle: std::time::Duration) {
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
        self.shard.active
    }

    /// Whether the backend pushed back and the worker waits to write.
    pub fn wants_write(&self) -> bool {
        self.stalled.is_some()
    }

    /// Whether work is queued for this worker by other threads.
    pub fn has_inbox(&self) -> bool {
        !self.commands.is_empty() || !self.handovers.is_empty()
    }

    /// Runs one turn at time `now` (see the module doc).
    pub fn turn<B: Backend>(&mut self, io: &mut B, now: Instant) -> io::Result<Poll> {
        self.now = now;
        let mut more = self.retry_stalled(io);

        for _ in 0..MAX_INBOX {
            match self.commands.try_recv() {
                Ok(cmd) => self.run_command(cmd),
                Err(_) => break,
            }
        }
        for _ in 0..MAX_INBOX {
            match self.handovers.try_recv() {
                Ok(d) => {
                    self.counters.handover_in += 1;
                    io.adopt(&d);
                    self.feed_endpoint(io, d);
                }
                Err(_) => break,
            }
        }
        more |= self.has_inbox();

        for _ in 0..MAX_RX_BATCHES {
            let n = match io.recv(&mut self.rx) {
                Ok(n) => n,
                Err(e) => {
                    tracing::debug!(worker = self.index, "receive failed: {e}");
                    break;
                }
            };
            if n == 0 {
                break;
            }
            self.counters.rx_batches += 1;
            self.histograms.rx_batch.observe(n as f64);
            let mut batch = std::mem::take(&mut self.rx);
            for d in batch.drain() {
                self.on_datagram(io, d);
            }
            self.rx = batch;
            more = true;
        }

        while let Some(h) = self.shard.timers.pop_due(now) {
            if let Some(Some(slot)) = self.shard.slots.get_mut(h) {
                slot.conn.handle_timeout(now);
                self.shard.mark_dirty(h);
            }
        }

        self.drive_all(io);
        if self.stop_requested && self.drain_deadline.is_none() {
            self.begin_stop();
            self.drive_all(io);
        }
        io.flush()?;
        if now >= self.next_kernel_read {
            self.next_kernel_read = now + KERNEL_READ_EVERY;
            if let Some(d) = io.kernel_drops() {
                self.counters.kernel_rx_dropped = d;
            }
        }
        self.counters.conns_active = self.shard.active as u64;
        self.counters.conns_handshaking = self.shard.handshaking as u64;
        self.metrics.publish(&self.counters);
        self.metrics.publish_histograms(&self.histograms);

        if let Some(deadline) = self.drain_deadline {
            if self.shard.active == 0 || now >= deadline {
                return Ok(Poll::Done);
            }
        }
        if more || (!self.shard.dirty.is_empty() && self.stalled.is_none()) {
            return Ok(Poll::Continue(Some(now)));
        }
        let mut next = self.shard.timers.next_deadline();
        if let Some(d) = self.drain_deadline {
            next = Some(next.map_or(d, |n| n.min(d)));
        }
        Ok(Poll::Continue(next))
    }

    /// Route one received datagram.
    fn on_datagram<B: Backend>(&mut self, io: &mut B, d: Datagram) {
        self.counters.rx_packets += 1;
        self.counters.rx_bytes += d.data.len() as u64;
        match route(&self.mesh.layout, self.index, self.mesh.serves, &d.data) {
            Route::Local => self.feed_endpoint(io, d),
            Route::Worker(w) => match self.mesh.handovers[w].try_send(d) {
                Ok(()) => {
                    self.counters.handover_out += 1;
                    self.mesh.wakers[w].wake();
                }
                Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                    self.counters.handover_dropped += 1
                }
            },
            Route::Drop(_) => self.counters.rx_malformed += 1,
        }
    }

    /// Feed a datagram that belongs here to the endpoint.
    fn feed_endpoint<B: Backend>(&mut self, io: &mut B, d: Datagram) {
        self.tx_buf.clear();
        let event = self.shard.endpoint.handle(
            self.now,
            d.remote,
            d.local_ip,
            d.ecn,
            d.data,
            &mut self.tx_buf,
        );
        match event {
            Some(DatagramEvent::ConnectionEvent(ch, ev)) => {
                if let Some(Some(slot)) = self.shard.slots.get_mut(ch.0) {
                    slot.handle_event(ev);
                    self.shard.mark_dirty(ch.0);
                }
            }
            Some(DatagramEvent::NewConnection(incoming)) => self.on_incoming(io, incoming),
            Some(DatagramEvent::Response(t)) => {
                // A stateless reset has a short header; version negotiation a long one.
                if self.tx_buf.first().is_some_and(|b| b & 0x80 == 0) {
                    self.counters.resets_sent += 1;
                } else {
                    self.counters.version_negotiations += 1;
                }
                self.send_stateless(io, &t);
            }
            None => self.counters.rx_ignored += 1,
        }
    }

    /// Accept, validate with Retry, or refuse a new connection (while stopping, or when the
    /// worker holds its maximum of connections).
    fn on_incoming<B: Backend>(&mut self, io: &mut B, incoming: Incoming) {
        self.tx_buf.clear();
        if self.drain_deadline.is_some() || self.shard.active >= self.max_connections {
            let t = self.shard.endpoint.refuse(incoming, &mut self.tx_buf);
            self.counters.conns_refused += 1;
            self.send_stateless(io, &t);
            return;
        }
        let retry = match self.retry {
            RetryPolicy::Never => false,
            RetryPolicy::Always => true,
            RetryPolicy::AbovePendingHandshakes(n) => self.shard.handshaking >= n,
        };
        if retry && !incoming.remote_address_validated() {
            match self.shard.endpoint.retry(incoming, &mut self.tx_buf) {
                Ok(t) => {
                    self.counters.retries_sent += 1;
                    self.send_stateless(io, &t);
                }
                Err(e) => self.shard.endpoint.ignore(e.into_incoming()),
            }
            return;
        }
        match self
            .shard
            .endpoint
            .accept(incoming, self.now, &mut self.tx_buf, None)
        {
            Ok((ch, conn)) => {
                self.counters.conns_accepted += 1;
                let remote = conn.remote_address();
                let id = self.shard.insert(self.index, ch, conn, self.now);
                if let Some(slot) = self.shard.get(id) {
                    slot.span.in_scope(|| tracing::debug!(%remote, "accepted"));
                }
            }
            Err(e) => {
                self.counters.conns_refused += 1;
                if let Some(t) = e.response {
                    self.send_stateless(io, &t);
                }
            }
        }
    }

    /// Send an endpoint-generated packet in `tx_buf`; dropped if the backend pushes back.
    fn send_stateless<B: Backend>(&mut self, io: &mut B, t: &quinn_proto::Transmit) {
        let tx = Transmit {
            destination: t.destination,
            src_ip: t.src_ip,
            ecn: t.ecn,
            segment_size: t.segment_size,
            contents: &self.tx_buf[..t.size],
        };
        match io.send(&tx) {
            Ok(()) => {
                self.counters.tx_packets += 1;
                self.counters.tx_bytes += t.size as u64;
            }
            Err(SendError::Blocked) => self.counters.tx_blocked += 1,
            Err(SendError::Failed(_)) => self.counters.tx_errors += 1,
        }
    }

    /// Returns whether there is more to do this turn.
    fn retry_stalled<B: Backend>(&mut self, io: &mut B) -> bool {
        let Some(s) = &self.stalled else {
            return false;
        };
        let tx = Transmit {
            destination: s.destination,
            src_ip: s.src_ip,
            ecn: s.ecn,
            segment_size: s.segment_size,
            contents: &self.stall_buf[..s.len],
        };
        match io.send(&tx) {
            Err(SendError::Blocked) => false,
            Ok(()) => {
                self.counters.tx_packets += tx.segments().len() as u64;
                self.counters.tx_bytes += s.len as u64;
                self.stalled = None;
                true
            }
            Err(SendError::Failed(_)) => {
                self.counters.tx_errors += 1;
                self.stalled = None;
                true
            }
        }
    }

    fn run_command(&mut self, cmd: Command<H>) {
        match cmd {
            Command::Run(f) => {
                let mut ctx = Ctx {
                    worker: self.index,
                    now: self.now,
                    endpoint: &mut self.shard.endpoint,
                    client: self.client.as_ref(),
                    born: &mut self.shard.born,
                    stop: &mut self.stop_requested,
                    next_serial: &mut self.shard.next_serial,
                };
                let handler = &mut self.handler;
                let ok = !handler.poisoned
                    && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        f(&mut handler.inner, &mut ctx)
                    }))
                    .is_ok();
                if !ok && !self.handler.poisoned {
                    self.handler_panicked();
                }
            }
            Command::RunOnConn(id, f) => {
                let Shard {
                    endpoint,
                    slots,
                    born,
                    next_serial,
                    ..
                } = &mut self.shard;
                let Some(Some(slot)) = slots.get_mut(id.handle()) else {
                    return;
                };
                if slot.id != id {
                    return;
                }
                let mut conn = Conn {
                    inner: &mut slot.conn,
                    id,
                    gate: &slot.gate,
                    ctx: Ctx {
                        worker: self.index,
                        now: self.now,
                        endpoint,
                        client: self.client.as_ref(),
                        born,
                        stop: &mut self.stop_requested,
                        next_serial,
                    },
                };
                let handler = &mut self.handler;
                let ok = !handler.poisoned
                    && std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        f(&mut handler.inner, &mut conn)
                    }))
                    .is_ok();
                if !ok && !self.handler.poisoned {
                    self.handler_panicked();
                }
                self.shard.mark_dirty(id.handle());
            }
            Command::Shutdown { code, reason } => {
                self.stop_code = (code, reason);
                self.stop_requested = true;
            }
        }
    }

    /// Ends a worker that cannot go on: a panic outside the application's callbacks (in
    /// quinn-proto or the backend) or a fatal I/O error. Records `why` (see
    /// [`crate::EngineHandle::failed_workers`]), logs it, sets the `failed` gauge,
    /// closes every connection with [`INTERNAL_ERROR`] and sends what the backend still
    /// takes, once, without waiting for the peers. Do not turn the worker again.
    pub fn fail<B: Backend>(&mut self, io: &mut B, now: Instant, why: &str) {
        tracing::error!(
            worker = self.index,
            connections = self.shard.active,
            "worker failed ({why}): closing its connections and stopping it"
        );
        let _ = self.mesh.failures[self.index].set(why.to_string());
        self.counters.failed = 1;
        self.metrics.publish(&self.counters);
        // Best effort: the state that failed may fail again.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.now = now;
            self.stop_code = (INTERNAL_ERROR, Bytes::from_static(b"internal error"));
            self.begin_stop();
            self.drive_all(io);
            io.flush()
        }));
        self.counters.conns_active = self.shard.active as u64;
        self.counters.conns_handshaking = self.shard.handshaking as u64;
        self.metrics.publish(&self.counters);
    }

    /// Close every connection and refuse new ones; the worker ends when they have drained or
    /// the drain timeout passes.
    fn begin_stop(&mut self) {
        self.drain_deadline = Some(self.now + self.drain_timeout);
        let (code, reason) = self.stop_code.clone();
        let handles: Vec<usize> = self.shard.handles().collect();
        for h in handles {
            if let Some(Some(slot)) = self.shard.slots.get_mut(h) {
                slot.conn.close(self.now, code, reason.clone());
                slot.gate.open();
            }
            self.shard.mark_dirty(h);
        }
    }

    /// Poll every dirty connection, and those that callbacks opened, until quiet.
    fn drive_all<B: Backend>(&mut self, io: &mut B) {
        let mut dirty = std::mem::take(&mut self.shard.dirty);
        let mut deferred = Vec::new();
        loop {
            for h in dirty.drain(..) {
                if self.stalled.is_some() {
                    // The backend is full: poll this one next turn.
                    deferred.push(h);
                    continue;
                }
                if let Some(Some(slot)) = self.shard.slots.get_mut(h) {
                    slot.dirty = false;
                }
                self.drive(io, h);
            }
            while let Some((ch, conn, serial, gate)) = self.shard.born.pop() {
                self.counters.conns_opened += 1;
                let id = self
                    .shard
                    .insert_with_serial(self.index, ch, conn, serial, gate, self.now);
                if let Some(slot) = self.shard.get(id) {
                    slot.span.in_scope(|| tracing::debug!("opened"));
                }
            }
            if self.shard.dirty.is_empty() {
                break;
            }
            std::mem::swap(&mut dirty, &mut self.shard.dirty);
        }
        // Keep the deferred ones marked so they are polled once the backend takes more.
        self.shard.dirty = dirty;
        self.shard.dirty.extend(deferred);
    }

    /// Poll one connection: endpoint events, application events, transmits, timer.
    fn drive<B: Backend>(&mut self, io: &mut B, h: usize) {
        let ch = ConnectionHandle(h);
        let mut drained = false;
        let mut panicked = false;
        loop {
            let Shard {
                endpoint,
                slots,
                born,
                next_serial,
                handshaking,
                ..
            } = &mut self.shard;
            let Some(Some(slot)) = slots.get_mut(h) else {
                return;
            };
            let span = slot.span.clone();
            let _in_span = span.enter();
            while let Some(ev) = slot.conn.poll_endpoint_events() {
                drained |= ev.is_drained();
                if let Some(back) = endpoint.handle_event(ch, ev) {
                    slot.handle_event(back);
                }
            }

            let mut events = 0;
            while let Some(ev) = slot.conn.poll() {
                events += 1;
                let mut conn = Conn {
                    inner: &mut slot.conn,
                    id: slot.id,
                    gate: &slot.gate,
                    ctx: Ctx {
                        worker: self.index,
                        now: self.now,
                        endpoint,
                        client: self.client.as_ref(),
                        born,
                        stop: &mut self.stop_requested,
                        next_serial,
                    },
                };
                let dispatched =
                    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match ev {
                        Event::Connected => {
                            if slot.handshaking {
                                slot.handshaking = false;
                                *handshaking -= 1;
                                self.counters.handshakes += 1;
                                let took = self.now.saturating_duration_since(slot.created);
                                self.histograms.handshake.observe(took.as_secs_f64());
                                tracing::debug!(?took, "handshake complete");
                            }
                            self.handler.connected(&mut conn);
                        }
                        Event::ConnectionLost { reason } => {
                            if !slot.reported_closed {
                                slot.reported_closed = true;
                                count_close(&mut self.counters, &reason);
                                tracing::debug!(%reason, "closed");
                                self.handler.closed(&mut conn.ctx, slot.id, &reason);
                            }
                        }
                        Event::Stream(StreamEvent::Opened { dir }) => {
                            while let Some(id) = conn.inner.streams().accept(dir) {
                                self.handler.stream_opened(&mut conn, id);
                                self.handler.stream_readable(&mut conn, id);
                            }
                        }
                        Event::Stream(StreamEvent::Readable { id }) => {
                            self.handler.stream_readable(&mut conn, id)
                        }
                        Event::Stream(StreamEvent::Writable { id }) => {
                            self.handler.stream_writable(&mut conn, id)
                        }
                        Event::Stream(StreamEvent::Finished { id }) => {
                            self.handler.stream_finished(&mut conn, id)
                        }
                        Event::Stream(StreamEvent::Stopped { id, error_code }) => {
                            self.handler.stream_stopped(&mut conn, id, error_code)
                        }
                        Event::Stream(StreamEvent::Available { .. }) => {
                            self.handler.streams_available(&mut conn)
                        }
                        Event::DatagramReceived => {
                            while let Some(d) = conn.inner.datagrams().recv() {
                                self.handler.datagram(&mut conn, d);
                            }
                        }
                        Event::HandshakeDataReady | Event::DatagramsUnblocked => {}
                    }));
                if dispatched.is_err() && !self.handler.poisoned {
                    self.handler.poisoned = true;
                    panicked = true;
                }
            }

            if self.stalled.is_none() {
                // One transmit must fit one UDP send (64 KiB), whatever the path MTU.
                let per_send = MAX_UDP_PAYLOAD / usize::from(slot.conn.current_mtu()).max(1);
                let max = io.max_segments().min(per_send).max(1);
                loop {
                    self.tx_buf.clear();
                    let Some(t) = slot.conn.poll_transmit(self.now, max, &mut self.tx_buf) else {
                        break;
                    };
                    let tx = Transmit {
                        destination: t.destination,
                        src_ip: t.src_ip,
                        ecn: t.ecn,
                        segment_size: t.segment_size,
                        contents: &self.tx_buf[..t.size],
                    };
                    match io.send(&tx) {
                        Ok(()) => {
                            self.counters.tx_packets += tx.segments().len() as u64;
                            self.counters.tx_bytes += t.size as u64;
                        }
                        Err(SendError::Blocked) => {
                            self.counters.tx_blocked += 1;
                            std::mem::swap(&mut self.tx_buf, &mut self.stall_buf);
                            self.stalled = Some(Stalled {
                                destination: t.destination,
                                src_ip: t.src_ip,
                                ecn: t.ecn,
                                segment_size: t.segment_size,
                                len: t.size,
                            });
                            // It may have more to send once the backend drains.
                            slot.dirty = true;
                            self.shard.dirty.push(h);
                            break;
                        }
                        Err(SendError::Failed(e)) => {
                            self.counters.tx_errors += 1;
                            tracing::trace!("send failed: {e}");
                        }
                    }
                }
            }
            if events == 0 {
                break;
            }
        }

        if panicked {
            self.after_panic();
        }
        let Some(Some(slot)) = self.shard.slots.get_mut(h) else {
            return;
        };
        if drained || slot.conn.is_drained() {
            let slot = self.shard.remove(h).expect("slot present");
            self.counters.conns_closed += 1;
            let stats = slot.conn.stats();
            self.counters.lost_packets += stats.path.lost_packets;
            self.counters.congestion_events += stats.path.congestion_events;
            self.histograms.rtt.observe(stats.path.rtt.as_secs_f64());
            if !slot.reported_closed {
                self.counters.closed_locally += 1;
                slot.span.in_scope(|| tracing::debug!("closed locally"));
                let mut ctx = Ctx {
                    worker: self.index,
                    now: self.now,
                    endpoint: &mut self.shard.endpoint,
                    client: self.client.as_ref(),
                    born: &mut self.shard.born,
                    stop: &mut self.stop_requested,
                    next_serial: &mut self.shard.next_serial,
                };
                let handler = &mut self.handler;
                let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    handler.closed(&mut ctx, slot.id, &ConnectionError::LocallyClosed)
                }))
                .is_ok();
                if !ok {
                    self.handler_panicked();
                }
            }
            if !drained {
                // quinn-proto has not told the endpoint yet; do it so the handle is freed.
                self.shard
                    .endpoint
                    .handle_event(ch, quinn_proto::EndpointEvent::drained());
            }
            return;
        }
        let deadline = slot.conn.poll_timeout();
        self.shard.timers.set(h, deadline);
    }
}
