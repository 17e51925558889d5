//! The load generator: xdp-quic's own client engine over kernel UDP (quinn-proto, the same
//! protocol stack as every server but quinn's runtime), pinned to the client core. It reaches
//! about twice the throughput of quinn's client on one core, so that it is not what limits a
//! server (a run whose client core was saturated is flagged all the same).
//!
//! One engine per workload, one worker per socket given (sockets the bench bound once and
//! chose so that they land on distinct RX queues of the server's veth). A workload runs in
//! three steps the bench drives: **open** (the connections, at most [`PENDING_PER_WORKER`]
//! handshakes at a time per worker), **go** (the work; the bench samples CPU time around it),
//! then either the work ends by itself (a count of requests) or the bench **stops** it after
//! a duration. Handshakes are outside the measured span, except in the handshake workload.
//!
//! Everything received is checked: responses have the size asked for and are all zeros (the
//! perf protocol); ingest streams are acknowledged by the server, which checks their content.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use xdp_quic::backend::udp::UdpBackend;
use xdp_quic::{
    Conn, ConnId, ConnectionError, Ctx, Engine, EngineBuilder, Handler, ReadStatus, StreamId,
    TransportConfig, VarInt,
};

use crate::app::expected;

/// Handshakes one client worker keeps in progress at most while it opens its connections
/// (the servers ask for Retry above 256 pending handshakes per worker).
pub const PENDING_PER_WORKER: usize = 32;

/// What the client does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// `conns` connections, each downloading `each` octets in one request.
    Download { conns: usize, each: u64 },
    /// One connection uploading `bytes` octets in one request.
    Upload { bytes: u64 },
    /// `total` requests for `size` octets, `streams` in flight on each of `conns`.
    Requests {
        conns: usize,
        streams: usize,
        total: u64,
        size: u64,
    },
    /// `total` connections one after the other, each with one 1-octet request.
    Handshakes { total: u64 },
    /// `conns` connections sending [`crate::app::INGEST_SIZE`]-octet unidirectional streams as fast as
    /// the server grants them (or, with a `rate`, at most that many per second over all
    /// connections), until stopped.
    Ingest { conns: usize, rate: Option<u64> },
    /// `conns` connections, each with one `size`-octet request in flight at all times, until
    /// stopped.
    Scale { conns: usize, size: u64 },
}

impl Job {
    fn conns(&self) -> usize {
        match *self {
            Job::Download { conns, .. }
            | Job::Requests { conns, .. }
            | Job::Ingest { conns, .. }
            | Job::Scale { conns, .. } => conns,
            Job::Upload { .. } => 1,
            Job::Handshakes { .. } => 0,
        }
    }
}

/// Messages of the workers to the bench.
#[derive(Debug)]
enum Event {
    /// The worker's connections are all up.
    Ready,
    /// The worker's share of the work is over, at this instant (`None`: it had none).
    Done(Option<Instant>),
    Failed(String),
}

/// Counters the bench reads while the work runs.
#[derive(Debug, Default)]
struct Shared {
    /// Requests answered and checked, ingest streams acknowledged, or handshakes done.
    completed: AtomicU64,
    /// Requests (or handshakes) not yet claimed by a worker.
    budget: AtomicI64,
}

/// A request in flight.
struct Request {
    started: Instant,
    header: [u8; 8],
    header_sent: usize,
    up_left: u64,
    want: u64,
    got: u64,
}

/// A connection's requests: in flight, issued, and whether it has no more to do.
#[derive(Debug, Default)]
struct ConnWork {
    in_flight: usize,
    issued: u64,
    finished: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Opening,
    Running,
    Stopping,
}

/// One client worker's handler.
pub struct Load {
    job: Job,
    remote: SocketAddr,
    shared: Arc<Shared>,
    events: Sender<Event>,
    worker: usize,
    ready_sent: bool,
    to_open: usize,
    pending: usize,
    conns: Vec<ConnId>,
    work: HashMap<ConnId, ConnWork>,
    requests: HashMap<(ConnId, StreamId), Request>,
    /// Ingest data not yet taken by flow control.
    unsent: HashMap<(ConnId, StreamId), Bytes>,
    phase: Phase,
    finished_conns: usize,
    /// Handshake workload: when the current connection was opened.
    connecting_since: Option<Instant>,
    /// Paced ingest: streams this worker may still open (granted by the bench, [`Load::grant`]).
    tokens: Option<u64>,
    /// Paced ingest: the connection the next grant starts its round at.
    next_conn: usize,
    done: bool,
    /// Request (or handshake) latencies in seconds.
    pub latencies: Vec<f64>,
    /// Octets received in responses (checked) and uploaded.
    pub downloaded: u64,
    pub uploaded: u64,
    /// Requests completed (checked), ingest streams acknowledged, or handshakes.
    pub completed: u64,
    pub errors: Vec<String>,
}

/// Whether every octet of `b` is zero (an OR over blocks, which vectorizes).
fn all_zero(b: &[u8]) -> bool {
    b.chunks(512)
        .all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
}

static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

impl Load {
    fn new(
        job: Job,
        remote: SocketAddr,
        shared: Arc<Shared>,
        events: Sender<Event>,
        worker: usize,
        workers: usize,
    ) -> Self {
        // Upload is one connection: worker 0's. Others split evenly.
        let n = job.conns();
        let share = n / workers + usize::from(worker < n % workers);
        Self {
            job,
            remote,
            shared,
            events,
            worker,
            ready_sent: false,
            to_open: share,
            pending: 0,
            conns: Vec::with_capacity(share),
            work: HashMap::new(),
            requests: HashMap::new(),
            unsent: HashMap::new(),
            phase: Phase::Opening,
            finished_conns: 0,
            connecting_since: None,
            tokens: matches!(job, Job::Ingest { rate: Some(_), .. }).then_some(0),
            next_conn: 0,
            done: false,
            latencies: Vec::new(),
            downloaded: 0,
            uploaded: 0,
            completed: 0,
            errors: Vec::new(),
        }
    }

    fn fail(&mut self, why: String) {
        if self.errors.len() < 16 {
            self.errors.push(why.clone());
        }
        let _ = self.events.send(Event::Failed(why));
    }

    fn finish_work(&mut self, at: Option<Instant>) {
        if !self.done {
            self.done = true;
            let _ = self.events.send(Event::Done(at));
        }
    }

    /// Opens connections up to the pending limit; reports Ready once all are up.
    fn open_more(&mut self, ctx: &mut Ctx<'_>) {
        while self.to_open > 0 && self.pending < PENDING_PER_WORKER {
            match ctx.connect(self.remote, "localhost") {
                Ok(_) => {
                    self.to_open -= 1;
                    self.pending += 1;
                }
                Err(e) => return self.fail(format!("connect: {e}")),
            }
        }
        if self.to_open == 0 && self.pending == 0 && !self.ready_sent {
            self.ready_sent = true;
            let _ = self.events.send(Event::Ready);
        }
    }

    /// The work starts.
    fn go(&mut self, ctx: &mut Ctx<'_>) {
        self.phase = Phase::Running;
        if let Job::Handshakes { .. } = self.job {
            // One connection after the other: worker 0's job.
            if self.worker == 0 {
                return self.next_handshake(ctx);
            }
            return self.finish_work(None);
        }
        if self.conns.is_empty() {
            return self.finish_work(None);
        }
        for id in self.conns.clone() {
            ctx.with_conn(id, |conn| self.issue(conn));
        }
    }

    /// The bench stops a duration-bound workload: no new work, every connection closed.
    fn stop(&mut self, ctx: &mut Ctx<'_>) {
        self.phase = Phase::Stopping;
        for id in self.conns.clone() {
            ctx.with_conn(id, |conn| conn.close(VarInt::from_u32(0), b"done"));
        }
    }

    fn next_handshake(&mut self, ctx: &mut Ctx<'_>) {
        if self.phase != Phase::Running {
            return;
        }
        if self.shared.budget.fetch_sub(1, Relaxed) <= 0 {
            return self.finish_work(Some(Instant::now()));
        }
        self.connecting_since = Some(Instant::now());
        if let Err(e) = ctx.connect(self.remote, "localhost") {
            self.fail(format!("connect: {e}"));
        }
    }

    /// Starts as many requests (or ingest streams) on `conn` as the job wants.
    fn issue(&mut self, conn: &mut Conn<'_>) {
        if self.phase != Phase::Running {
            return;
        }
        let id = conn.id();
        let (limit, size, upload) = match self.job {
            Job::Download { each, .. } => (1, each, 0),
            Job::Upload { bytes } => (1, 0, bytes),
            Job::Requests { streams, size, .. } => (streams, size, 0),
            Job::Scale { size, .. } => (1, size, 0),
            Job::Handshakes { .. } => (1, 1, 0),
            Job::Ingest { .. } => return self.issue_ingest(conn),
        };
        let once = matches!(self.job, Job::Download { .. } | Job::Upload { .. });
        let budgeted = matches!(self.job, Job::Requests { .. });
        loop {
            let w = self.work.entry(id).or_default();
            if w.finished || w.in_flight >= limit || (once && w.issued > 0) {
                return;
            }
            if budgeted && self.shared.budget.fetch_sub(1, Relaxed) <= 0 {
                if w.in_flight == 0 {
                    w.finished = true;
                    self.conn_finished();
                }
                return;
            }
            let Some(s) = conn.open_bi() else {
                if budgeted {
                    self.shared.budget.fetch_add(1, Relaxed);
                }
                return;
            };
            w.in_flight += 1;
            w.issued += 1;
            self.requests.insert(
                (id, s),
                Request {
                    started: Instant::now(),
                    header: size.to_be_bytes(),
                    header_sent: 0,
                    up_left: upload,
                    want: size,
                    got: 0,
                },
            );
            self.send(conn, s);
        }
    }

    fn issue_ingest(&mut self, conn: &mut Conn<'_>) {
        while self.issue_one_ingest(conn) {}
    }

    /// Opens one ingest stream on `conn` if the phase, the server's stream credit and (when
    /// paced) the tokens allow; returns whether it did.
    fn issue_one_ingest(&mut self, conn: &mut Conn<'_>) -> bool {
        if self.phase != Phase::Running || self.tokens == Some(0) {
            return false;
        }
        let Some(s) = conn.open_uni() else {
            return false;
        };
        if let Some(t) = &mut self.tokens {
            *t -= 1;
        }
        let mut data = Bytes::from_static(expected(s.index()));
        if let Err(e) = conn.write_chunk(s, &mut data) {
            self.fail(format!("ingest write: {e}"));
            return false;
        }
        if data.is_empty() {
            let _ = conn.finish(s);
        } else {
            self.unsent.insert((conn.id(), s), data);
        }
        true
    }

    /// Paced ingest: `n` more streams may open (tokens beyond `cap` are dropped, so that a
    /// stall of the server is not followed by a burst), one per connection in turn.
    fn grant(&mut self, n: u64, cap: u64, ctx: &mut Ctx<'_>) {
        let Some(t) = self.tokens else { return };
        self.tokens = Some((t + n).min(cap));
        let conns = self.conns.clone();
        if conns.is_empty() {
            return;
        }
        let start = self.next_conn % conns.len();
        self.next_conn = start + 1;
        loop {
            let mut opened = false;
            for i in 0..conns.len() {
                if self.tokens == Some(0) {
                    return;
                }
                let id = conns[(start + i) % conns.len()];
                ctx.with_conn(id, |conn| opened |= self.issue_one_ingest(conn));
            }
            if !opened {
                return;
            }
        }
    }

    fn send(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        let key = (conn.id(), s);
        if let Some(mut data) = self.unsent.remove(&key) {
            match conn.write_chunk(s, &mut data) {
                Err(e) => self.fail(format!("ingest write: {e}")),
                Ok(_) if data.is_empty() => {
                    let _ = conn.finish(s);
                }
                Ok(_) => {
                    self.unsent.insert(key, data);
                }
            }
            return;
        }
        let Some(r) = self.requests.get_mut(&key) else {
            return;
        };
        while r.header_sent < 8 {
            match conn.write(s, &r.header[r.header_sent..]) {
                Ok(0) => return,
                Ok(n) => r.header_sent += n,
                Err(e) => return self.fail(format!("request write: {e}")),
            }
        }
        while r.up_left > 0 {
            let n = r.up_left.min(ZEROS.len() as u64) as usize;
            let mut chunk = Bytes::from_static(&ZEROS[..n]);
            match conn.write_chunk(s, &mut chunk) {
                Ok(0) => return,
                Ok(w) => {
                    r.up_left -= w as u64;
                    self.uploaded += w as u64;
                }
                Err(e) => return self.fail(format!("upload write: {e}")),
            }
        }
        let _ = conn.finish(s);
    }

    /// A connection has no more work (download, upload and request workloads).
    fn conn_finished(&mut self) {
        self.finished_conns += 1;
        if self.finished_conns == self.conns.len() {
            self.finish_work(Some(Instant::now()));
        }
    }
}

impl Handler for Load {
    fn connected(&mut self, conn: &mut Conn<'_>) {
        if let Job::Handshakes { .. } = self.job {
            return self.issue(conn);
        }
        self.pending -= 1;
        self.conns.push(conn.id());
        self.open_more(conn.ctx());
    }

    fn streams_available(&mut self, conn: &mut Conn<'_>) {
        self.issue(conn);
    }

    fn stream_writable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        self.send(conn, s);
    }

    fn stream_finished(&mut self, _conn: &mut Conn<'_>, _s: StreamId) {
        // Ingest: the server acknowledged the whole stream, end included.
        if let Job::Ingest { .. } = self.job {
            self.completed += 1;
            self.shared.completed.fetch_add(1, Relaxed);
        }
    }

    fn stream_readable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        let key = (conn.id(), s);
        let Some(r) = self.requests.get_mut(&key) else {
            return;
        };
        let mut got = 0u64;
        let mut zeros = true;
        let status = conn.read(s, |b| {
            got += b.len() as u64;
            zeros &= all_zero(&b);
        });
        r.got += got;
        self.downloaded += got;
        if !zeros {
            return self.fail("response corrupted: a non-zero octet".into());
        }
        match status {
            Ok(ReadStatus::Blocked) => {}
            Ok(ReadStatus::Finished) => {
                let r = self.requests.remove(&key).expect("present");
                if r.got != r.want {
                    return self.fail(format!("asked for {} octets, got {}", r.want, r.got));
                }
                let now = Instant::now();
                self.completed += 1;
                self.shared.completed.fetch_add(1, Relaxed);
                if let Some(w) = self.work.get_mut(&conn.id()) {
                    w.in_flight -= 1;
                }
                match self.job {
                    Job::Handshakes { .. } => {
                        let since = self.connecting_since.take().unwrap_or(r.started);
                        self.latencies.push((now - since).as_secs_f64());
                        conn.close(VarInt::from_u32(0), b"next");
                        self.next_handshake(conn.ctx());
                    }
                    Job::Download { .. } | Job::Upload { .. } => {
                        if let Some(w) = self.work.get_mut(&conn.id()) {
                            w.finished = true;
                        }
                        self.conn_finished();
                    }
                    Job::Requests { .. } | Job::Scale { .. } => {
                        self.latencies.push((now - r.started).as_secs_f64());
                        self.issue(conn);
                    }
                    Job::Ingest { .. } => {}
                }
            }
            Err(e) => self.fail(format!("response: {e}")),
        }
    }

    fn closed(&mut self, ctx: &mut Ctx<'_>, id: ConnId, reason: &ConnectionError) {
        let ours = matches!(reason, ConnectionError::LocallyClosed);
        if !ours && self.phase != Phase::Stopping {
            self.fail(format!("connection {id} closed: {reason}"));
        }
        if self.phase == Phase::Opening && self.conns.iter().all(|c| *c != id) {
            // A connect that failed: the error is reported above.
            self.pending = self.pending.saturating_sub(1);
            self.open_more(ctx);
        }
    }
}

/// The client's transport: the engine's default, with stream windows wide enough that one
/// connection's download is limited by the server, not by the client's credit.
pub fn transport() -> TransportConfig {
    let mut t = xdp_quic::default_transport();
    t.stream_receive_window(VarInt::from_u32(8 << 20));
    t
}

/// What a workload measured, with the bench's samples around its work.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Outcome {
    /// Seconds of work: from go to the last worker's end, or to the stop.
    pub elapsed_s: f64,
    pub downloaded: u64,
    pub uploaded: u64,
    /// Requests, ingest streams or handshakes completed within `elapsed_s` (ingest: streams
    /// the server's application took in, checked).
    pub completed: u64,
    /// What the client counted as completed over the whole run, past the span's end too:
    /// ingest streams acknowledged by the server's transport, end included.
    pub acknowledged: u64,
    /// Latencies in seconds (requests; handshakes: connect to response).
    #[serde(skip)]
    pub latencies: Vec<f64>,
}

/// Hooks the bench runs at the edges of the measured span.
pub trait Probe {
    /// Just before the work starts.
    fn before(&mut self) -> anyhow::Result<()>;
    /// Just after it ends (or, for a duration-bound job, just before the stop).
    fn after(&mut self) -> anyhow::Result<()>;
}

/// How often a paced ingest grants its streams.
const PACE_TICK: Duration = Duration::from_millis(1);

/// How long a workload may run.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// The work of ingest and scale jobs (duration-bound).
    pub duration: Duration,
    /// The hang guard: the most any step may take.
    pub guard: Duration,
}

/// Runs `job` against `remote` from `sockets` (one client worker each, pinned to `cpu`).
/// `probe` samples around the work.
pub fn run(
    client: quinn::ClientConfig,
    sockets: &[UdpSocket],
    cpu: usize,
    remote: SocketAddr,
    job: Job,
    timing: Timing,
    probe: &mut dyn Probe,
) -> anyhow::Result<Outcome> {
    let Timing { duration, guard } = timing;
    let mut backends = Vec::with_capacity(sockets.len());
    for s in sockets {
        drain(s);
        backends.push(UdpBackend::new(s.try_clone()?)?);
    }
    let workers = backends.len();
    let shared = Arc::new(Shared::default());
    if let Job::Requests { total, .. } | Job::Handshakes { total } = job {
        shared.budget.store(total as i64, Relaxed);
    }
    let (tx, rx) = std::sync::mpsc::channel();
    let engine: Engine<Load> = EngineBuilder::default()
        .workers(workers)
        .client(client)
        .transport(transport())
        .pin_cpus(vec![cpu])
        .drain_timeout(Duration::from_millis(500))
        .max_connections(20_000)
        .start(backends, |w| {
            Load::new(job, remote, shared.clone(), tx.clone(), w, workers)
        })
        .context("starting the client engine")?;
    drop(tx);
    let result = drive(&engine, &rx, &shared, job, duration, guard, probe);
    let handlers = engine.shutdown(VarInt::from_u32(0), b"bench done")?;
    let (start, end, completed) = result?;
    let mut out = Outcome {
        elapsed_s: (end - start).as_secs_f64(),
        ..Default::default()
    };
    let mut errors = Vec::new();
    let mut total_completed = 0;
    for h in handlers {
        out.downloaded += h.downloaded;
        out.uploaded += h.uploaded;
        total_completed += h.completed;
        out.latencies.extend(h.latencies);
        errors.extend(h.errors);
    }
    if !errors.is_empty() {
        bail!("client: {}", errors.join("; "));
    }
    out.completed = completed.unwrap_or(total_completed);
    // Every one, through the end of the run (past the span's end too).
    out.acknowledged = total_completed;
    Ok(out)
}

/// Steps the engine through open, go and end; returns the measured span and, for
/// duration-bound jobs, what was completed within it.
fn drive(
    engine: &Engine<Load>,
    rx: &Receiver<Event>,
    shared: &Shared,
    job: Job,
    duration: Duration,
    guard: Duration,
    probe: &mut dyn Probe,
) -> anyhow::Result<(Instant, Instant, Option<u64>)> {
    let h = engine.handle();
    let workers = h.workers();
    let deadline = Instant::now() + guard;
    let wait = |what: &str| -> anyhow::Result<Event> {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(Event::Failed(why)) => bail!("client: {why}"),
            Ok(e) => Ok(e),
            Err(_) => bail!("client: no {what} within {guard:?} (hang guard)"),
        }
    };
    if !matches!(job, Job::Handshakes { .. }) {
        for w in 0..workers {
            h.post(w, |l: &mut Load, ctx| l.open_more(ctx))
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        for _ in 0..workers {
            wait("connections")?;
        }
    }
    probe.before()?;
    let start = Instant::now();
    let before = shared.completed.load(Relaxed);
    for w in 0..workers {
        h.post(w, |l: &mut Load, ctx| l.go(ctx))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    }
    if matches!(job, Job::Ingest { .. } | Job::Scale { .. }) {
        // Duration-bound: a failure ends the wait early.
        let until = start + duration;
        let rate = match job {
            Job::Ingest { rate, .. } => rate,
            _ => None,
        };
        // Paced ingest: every millisecond, the streams due since the start are granted,
        // split over the workers; a worker holds at most 10 ms of them.
        let cap = rate.map_or(0, |r| (r / workers as u64 / 100).max(1));
        let mut granted = 0u64;
        let mut tick = 0usize;
        loop {
            let now = Instant::now();
            let left = until.saturating_duration_since(now);
            if left.is_zero() {
                break;
            }
            let wait = match rate {
                Some(r) => {
                    let due = (r as f64 * (now - start).as_secs_f64()) as u64;
                    let n = due - granted;
                    granted = due;
                    for w in 0..workers {
                        // The remainder goes to each worker in turn.
                        let share = n / workers as u64
                            + u64::from((w + tick) % workers < (n % workers as u64) as usize);
                        let _ = h.post(w, move |l: &mut Load, ctx| l.grant(share, cap, ctx));
                    }
                    tick += 1;
                    left.min(PACE_TICK)
                }
                None => left,
            };
            if let Ok(Event::Failed(why)) = rx.recv_timeout(wait) {
                bail!("client: {why}");
            }
        }
        let completed = shared.completed.load(Relaxed) - before;
        let end = Instant::now();
        probe.after()?;
        for w in 0..workers {
            let _ = h.post(w, |l: &mut Load, ctx| l.stop(ctx));
        }
        return Ok((start, end, Some(completed)));
    }
    let mut end = start;
    for _ in 0..workers {
        if let Event::Done(Some(t)) = wait("end of the work")? {
            end = end.max(t);
        }
    }
    probe.after()?;
    Ok((start, end, None))
}

/// Drops datagrams left in `s` by an earlier workload's connections.
fn drain(s: &UdpSocket) {
    let _ = s.set_nonblocking(true);
    let mut buf = [0u8; 2048];
    while s.recv_from(&mut buf).is_ok() {}
}
