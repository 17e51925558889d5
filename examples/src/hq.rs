//! hq-interop: HTTP/0.9 over QUIC (ALPN `hq-interop`), the protocol of the QUIC interop
//! runner. A request is `GET /path\r\n` on a bidirectional stream; the answer is the file's
//! octets, then the end of the stream.
//!
//! # The server, [`HqServer`]
//!
//! It serves the regular files beneath one root directory. Errors reset the stream: code
//! [`NOT_FOUND`] for a missing or refused file, [`BAD_REQUEST`] for a malformed request.
//!
//! **What it opens.** A request path must be plain names (`/a/b.txt`: no `..`, no `.`, no
//! empty path); it is opened beneath a descriptor of the root taken at start, in one step
//! that follows no symbolic link at all, not even one that stays inside the root, and the
//! opened descriptor must be a regular file (a FIFO, device, directory or socket is
//! [`NOT_FOUND`]). Nothing is checked by name before it is opened, so renaming entries of
//! the root under a running server cannot make it serve a file outside the root or block
//! on a FIFO. See [`crate::files`] for how (`openat2(2)`, or an `O_NOFOLLOW` walk).
//!
//! **Where.** Once the engine has [attached](xdp_quic::Handler::attached) the handler,
//! opening and reading happen on a small pool of threads of the handler's own
//! ([`HqLimits::pool_threads`]), never on the worker: each [`CHUNK`] comes back to the worker
//! with [`xdp_quic::EngineHandle::post_to_conn`], and the next one is read only after the
//! worker has handed the previous one to the stream (flow control permitting): one chunk
//! per stream at a time, read or waiting, however slowly the client reads.
//!
//! **How many.** A request holds a file slot from its open until all of its file has been
//! written to its stream (the descriptor itself is closed as soon as the end of the file is
//! read): at most [`HqLimits::files_per_connection`] (default 16) per connection and
//! [`HqLimits::files_per_worker`] (default 256) per worker. Requests beyond either wait, in
//! stream order per connection and round-robin between connections, and are served as
//! slots free up; they are never refused for it. A stream the client stops (or resets while
//! its request line is coming) or a connection that closes gives its slots and waiting
//! requests back at once (its descriptors close as soon as the pool hands them back).
//!
//! A handler wrapped in another handler must be attached with [`HqServer::attach_via`]; one
//! that is never attached opens and reads on the worker thread (with the same safe open),
//! and only the per-connection cap applies: no worker cap, and no stall sweeper, so neither
//! [`HqLimits::send_stall`] nor [`HqLimits::request_timeout`] is enforced.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use xdp_quic::{
    Conn, ConnId, ConnectionError, Ctx, Dir, EngineHandle, Handler, ReadStatus, StreamId, VarInt,
};

use crate::files::{read_chunk, FilePool, FileRoot};
use crate::outbox::Outbox;

/// ALPN of hq-interop.
pub const ALPN: &[u8] = b"hq-interop";
/// Stream reset code: no such file, or not servable.
pub const NOT_FOUND: VarInt = VarInt::from_u32(0x10);
/// Stream reset code: the request is not `GET /path`.
pub const BAD_REQUEST: VarInt = VarInt::from_u32(0x11);
/// Stream reset code: the client did not take a chunk of the answer within
/// [`HqLimits::send_stall`].
pub const STALLED: VarInt = VarInt::from_u32(0x12);
/// Stream reset code: the request line did not come whole within
/// [`HqLimits::request_timeout`].
pub const REQUEST_TIMED_OUT: VarInt = VarInt::from_u32(0x13);
/// Octets read from a file at a time.
pub const CHUNK: usize = 64 * 1024;
/// The longest request line accepted.
pub const MAX_REQUEST: usize = 4096;

/// Why a request was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    /// Not `GET /...`.
    BadRequest,
    /// Not a plain relative path (`..`, `.`, empty, absolute).
    NotFound,
}

/// Parses a request line into the path to open beneath the root: `GET /a/b` gives `a/b`.
/// Only checks the text; whether it names a servable file is for [`FileRoot::open_beneath`].
pub fn parse_request(request: &[u8]) -> Result<PathBuf, PathError> {
    let line = request
        .strip_suffix(b"\r\n")
        .or_else(|| request.strip_suffix(b"\n"))
        .unwrap_or(request);
    let line = std::str::from_utf8(line).map_err(|_| PathError::BadRequest)?;
    let path = line.strip_prefix("GET /").ok_or(PathError::BadRequest)?;
    let path = path.split(['?', '#']).next().unwrap_or("");
    let rel = Path::new(path);
    crate::files::plain_names(rel).map_err(|_| PathError::NotFound)?;
    Ok(rel.to_path_buf())
}

/// The limits of an [`HqServer`] (one per worker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HqLimits {
    /// Requests of one connection served at once (each with at most one file open); its
    /// further requests wait. Default 16.
    pub files_per_connection: usize,
    /// Requests of the worker (every connection together) served at once; further requests
    /// wait. Default 256.
    pub files_per_worker: usize,
    /// Threads that open and read files for this worker. Default 2.
    pub pool_threads: usize,
    /// A response whose client does not take a whole chunk ([`CHUNK`], or what is left of
    /// the file) within this long is reset ([`STALLED`]) and its slots freed, so that
    /// clients that stop reading, or read a trickle, cannot hold them for good (a minimum
    /// rate of 64 KiB per 30 s by default). The time the disk takes does not count.
    /// Default 30 s.
    pub send_stall: Duration,
    /// A request whose line has not come whole this long after its stream opened is
    /// refused ([`REQUEST_TIMED_OUT`]), so that requests sent a trickle at a time, or never
    /// ended, do not hold their stream and its buffer for the connection's life. Default
    /// 10 s.
    pub request_timeout: Duration,
}

impl Default for HqLimits {
    fn default() -> Self {
        Self {
            files_per_connection: 16,
            files_per_worker: 256,
            pool_threads: 2,
            send_stall: SEND_STALL,
            request_timeout: REQUEST_TIMEOUT,
        }
    }
}

/// The default of [`HqLimits::send_stall`].
pub const SEND_STALL: Duration = Duration::from_secs(30);
/// The default of [`HqLimits::request_timeout`].
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// What an [`HqServer`] holds now (for tests and monitoring).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HqState {
    /// File slots taken (files open or being read, or whose last chunk is still being
    /// written), including those of closed connections whose file the pool still has.
    pub open: usize,
    /// Complete requests waiting for a slot.
    pub waiting: usize,
    /// Streams with any state (request being read, waiting, being served).
    pub streams: usize,
    /// Connections with any state.
    pub connections: usize,
}

enum Stream {
    /// The request line, as far as it came, and when its stream opened.
    Reading(BytesMut, Instant),
    /// A complete request, waiting for a file slot.
    Waiting(PathBuf),
    /// Being served; holds a slot of its connection and of the worker until it ends.
    Sending(Body),
}

struct Body {
    /// The file, with the worker between two reads; `None` while the pool has it and after
    /// its end.
    file: Option<File>,
    /// What the stream has not taken yet (at most one chunk).
    out: Outbox,
    /// The end of the file was read.
    eof: bool,
    /// A pool job of this stream (its open or a read) has not come back yet.
    busy: bool,
    /// The stream ended while busy: what comes back is dropped.
    abandoned: bool,
    /// When the client last took the whole chunk it had, or a chunk became ready for it;
    /// `None` before the first. A client that trickles keeps its slot only as long as it
    /// takes a chunk per `send_stall`.
    progress: Option<Instant>,
}

impl Body {
    fn new(file: Option<File>, busy: bool) -> Self {
        Self {
            file,
            out: Outbox::default(),
            eof: false,
            busy,
            abandoned: false,
            progress: None,
        }
    }
}

#[derive(Default)]
struct ConnState {
    streams: HashMap<StreamId, Stream>,
    /// Streams in [`Stream::Waiting`], served lowest (oldest) first.
    waiting: BTreeSet<StreamId>,
    /// Slots held (streams in [`Stream::Sending`]).
    open: usize,
    /// In [`HqServer::ready`].
    queued: bool,
}

/// A chunk read by the pool: the file (unless its end was reached), the octets, the end.
struct Loaded {
    file: Option<File>,
    data: Bytes,
    eof: bool,
}

type ConnTask = Box<dyn FnOnce(&mut HqServer, &mut Conn<'_>) + Send>;
type WorkerTask = Box<dyn FnOnce(&mut HqServer) + Send>;

/// Posts work back to the worker of an [`HqServer`], however it is wrapped.
struct Poster {
    /// Waits while the worker's queue is full: only ever called on the pool's threads.
    to_conn: Box<dyn Fn(ConnId, ConnTask) -> bool + Send + Sync>,
    /// Never blocks (it may run on the worker itself): a full queue drops the task.
    to_worker: Box<dyn Fn(usize, WorkerTask) -> bool + Send + Sync>,
    /// Slots of jobs whose delivery was dropped (their connection was gone), not yet taken
    /// back by the server ([`HqServer::take_returned`]).
    returned: AtomicUsize,
}

/// The result of one pool job on its way back to the worker. If it never gets there (the
/// connection was gone when it arrived), dropping it tells the worker that the slot is
/// free: a count the server reads at its next admission, and a wake-up that may be lost
/// (the drop can happen on the worker itself, which must not wait on its own queue; the
/// stall sweeper's next admission then takes the slot back).
struct Delivery {
    poster: Arc<Poster>,
    conn: ConnId,
    stream: StreamId,
    /// The job opened the file (its failure is a refusal).
    first: bool,
    result: Option<io::Result<Loaded>>,
}

impl Delivery {
    fn send(mut self, result: io::Result<Loaded>) {
        self.result = Some(result);
        let poster = self.poster.clone();
        let conn = self.conn;
        (poster.to_conn)(
            conn,
            Box::new(move |h, c| {
                let mut d = self;
                if let Some(r) = d.result.take() {
                    h.loaded(c, d.stream, d.first, r);
                }
            }),
        );
    }
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(result) = self.result.take() {
            drop(result); // closes the file first
            self.poster.returned.fetch_add(1, Ordering::Release);
            (self.poster.to_worker)(self.conn.worker(), Box::new(|h| h.admit(None)));
        }
    }
}

/// The pool side of an attached server.
struct Io {
    pool: FilePool,
    poster: Arc<Poster>,
}

impl Io {
    /// Opens `path` and reads its first chunk on the pool.
    fn open(
        &self,
        root: &Arc<FileRoot>,
        conn: ConnId,
        s: StreamId,
        path: PathBuf,
    ) -> io::Result<()> {
        let root = root.clone();
        let d = self.delivery(conn, s, true);
        self.pool.try_submit(move || {
            let r = guarded(|| {
                let mut file = root.open_beneath(&path)?;
                let (data, eof) = read_chunk(&mut file, CHUNK)?;
                Ok(Loaded {
                    file: (!eof).then_some(file),
                    data,
                    eof,
                })
            });
            d.send(r)
        })
    }

    /// Reads the next chunk of `file` on the pool.
    fn read(&self, conn: ConnId, s: StreamId, mut file: File) -> io::Result<()> {
        let d = self.delivery(conn, s, false);
        self.pool.try_submit(move || {
            let r = guarded(|| {
                let (data, eof) = read_chunk(&mut file, CHUNK)?;
                Ok(Loaded {
                    file: (!eof).then_some(file),
                    data,
                    eof,
                })
            });
            d.send(r)
        })
    }

    fn delivery(&self, conn: ConnId, stream: StreamId, first: bool) -> Delivery {
        Delivery {
            poster: self.poster.clone(),
            conn,
            stream,
            first,
            result: None,
        }
    }
}

/// Runs `f`, turning a panic into an error (a pool job always reports back).
fn guarded(f: impl FnOnce() -> io::Result<Loaded>) -> io::Result<Loaded> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(io::Error::other("file job panicked")))
}

/// The hq-interop file server's handler (one per worker).
pub struct HqServer {
    root: Arc<FileRoot>,
    limits: HqLimits,
    /// The pool, once attached; `None`: files are opened and read on the worker.
    io: Option<Io>,
    conns: HashMap<ConnId, ConnState>,
    /// Connections with waiting requests and room of their own, in turn.
    ready: VecDeque<ConnId>,
    /// Entries of `ready` whose connection has closed.
    stale: usize,
    /// Slots taken on this worker.
    open: usize,
    /// Said once that it reads on the worker (not attached).
    warned: bool,
    /// Files served in full.
    pub served: u64,
    /// Requests refused (bad request or not found).
    pub refused: u64,
    /// Answers reset because their clients did not take a chunk within `send_stall`.
    pub stalled: u64,
    /// Requests refused because their line did not come whole within `request_timeout`.
    pub timed_out: u64,
    /// Dropped with the handler: ends its stall sweeper at once.
    sweeper: Option<std::sync::mpsc::Sender<()>>,
    /// Time between two sweeps, and the last sweep: every worker's sweeper asks every
    /// worker, so a sweep closer than half a period to the last is skipped.
    sweep_every: Duration,
    last_sweep: Option<Instant>,
}

impl HqServer {
    /// Serves files beneath `root`, with the default [`HqLimits`].
    pub fn new(root: &Path) -> io::Result<Self> {
        Self::with_limits(root, HqLimits::default())
    }

    /// Serves files beneath `root` within `limits` (each at least 1).
    pub fn with_limits(root: &Path, limits: HqLimits) -> io::Result<Self> {
        Self::check(limits)?;
        Self::with_root(Arc::new(FileRoot::open(root)?), limits)
    }

    /// Serves files beneath a root opened once ([`FileRoot::open`]) and shared, so that the
    /// servers of every worker, and those a supervisor makes later, serve the same directory
    /// (one that is renamed or replaced meanwhile changes nothing).
    pub fn with_root(root: Arc<FileRoot>, limits: HqLimits) -> io::Result<Self> {
        Self::check(limits)?;
        tracing::debug!(root = %root.path().display(), resolver = ?root.resolver(), "hq root");
        Ok(Self {
            root,
            limits,
            io: None,
            conns: HashMap::new(),
            ready: VecDeque::new(),
            stale: 0,
            open: 0,
            warned: false,
            served: 0,
            refused: 0,
            stalled: 0,
            timed_out: 0,
            sweeper: None,
            sweep_every: Duration::ZERO,
            last_sweep: None,
        })
    }

    /// Refuses limits of 0.
    fn check(limits: HqLimits) -> io::Result<()> {
        if limits.files_per_connection == 0
            || limits.files_per_worker == 0
            || limits.pool_threads == 0
            || limits.send_stall.is_zero()
            || limits.request_timeout.is_zero()
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "hq limits must be at least 1 (and the send stall and request timeout more than 0)",
            ));
        }
        Ok(())
    }

    /// The limits in force.
    pub fn limits(&self) -> HqLimits {
        self.limits
    }

    /// What the server holds now.
    pub fn state(&self) -> HqState {
        let returned = self
            .io
            .as_ref()
            .map_or(0, |io| io.poster.returned.load(Ordering::Acquire));
        let mut s = HqState {
            open: self.open - returned,
            connections: self.conns.len(),
            ..HqState::default()
        };
        for c in self.conns.values() {
            s.waiting += c.waiting.len();
            s.streams += c.streams.len();
        }
        s
    }

    /// Attaches the server to `engine` when it is wrapped in another handler `H`: `project`
    /// finds it inside. (Unwrapped, the engine does this through [`Handler::attached`].)
    /// Starts the file pool; if its threads cannot be started, files are read on the worker.
    pub fn attach_via<H: Handler>(
        &mut self,
        engine: &EngineHandle<H>,
        project: fn(&mut H) -> &mut HqServer,
    ) {
        let (conns, workers) = (engine.clone(), engine.clone());
        let poster = Arc::new(Poster {
            to_conn: Box::new(move |id, task: ConnTask| {
                conns
                    .post_to_conn_wait(id, move |h, c| task(project(h), c))
                    .is_ok()
            }),
            to_worker: Box::new(move |w, task: WorkerTask| {
                workers.post(w, move |h, _| task(project(h))).is_ok()
            }),
            returned: AtomicUsize::new(0),
        });
        // Each slot has at most one job out, so the queue never fills.
        match FilePool::new(self.limits.pool_threads, self.limits.files_per_worker) {
            Ok(pool) => self.io = Some(Io { pool, poster }),
            Err(e) => tracing::error!(error = %e, "hq: no file pool; reading on the worker"),
        }
        // A few times per stall period (or request timeout, the shorter), every worker looks
        // for answers their clients stopped taking and requests that did not come whole
        // (each handler's sweeper asks them all: the handler does not know its own worker; a
        // sweep is cheap and changes nothing twice). The thread ends with this handler (its
        // channel closes) or the engine.
        let shortest = self.limits.send_stall.min(self.limits.request_timeout);
        let (sweeps, period) = (
            engine.clone(),
            (shortest / 4).max(Duration::from_millis(10)),
        );
        self.sweep_every = period;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let spawned = std::thread::Builder::new()
            .name("hq-stall-sweep".into())
            .spawn(move || {
                while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(period) {
                    for w in 0..sweeps.workers() {
                        let sweep =
                            move |h: &mut H, ctx: &mut Ctx<'_>| project(h).sweep_stalled(ctx);
                        if let Err(xdp_quic::PostError::Stopped) = sweeps.post(w, sweep) {
                            return;
                        }
                    }
                }
            });
        match spawned {
            Ok(_) => self.sweeper = Some(stop),
            Err(e) => {
                tracing::error!(error = %e, "hq: no stall sweeper; stalled answers keep their slots")
            }
        }
    }

    /// Resets the answers whose clients did not take their chunk within `send_stall` (not
    /// those waiting for the disk) and frees their slots; refuses the requests whose line
    /// did not come whole within `request_timeout`.
    fn sweep_stalled(&mut self, ctx: &mut Ctx<'_>) {
        let (now, stall) = (ctx.now(), self.limits.send_stall);
        if self
            .last_sweep
            .is_some_and(|last| now.saturating_duration_since(last) < self.sweep_every / 2)
        {
            return;
        }
        self.last_sweep = Some(now);
        let limit = self.limits.request_timeout;
        let late: Vec<(ConnId, StreamId)> = self
            .conns
            .iter()
            .flat_map(|(id, cs)| {
                cs.streams.iter().filter_map(move |(s, st)| match st {
                    Stream::Reading(_, opened)
                        if now.saturating_duration_since(*opened) >= limit =>
                    {
                        Some((*id, *s))
                    }
                    _ => None,
                })
            })
            .collect();
        for (id, s) in late {
            ctx.with_conn(id, |conn| {
                let _ = conn.reset(s, REQUEST_TIMED_OUT);
                let _ = conn.stop(s, REQUEST_TIMED_OUT);
            });
            self.timed_out += 1;
            self.end(id, s);
        }
        let stalled: Vec<(ConnId, StreamId)> = self
            .conns
            .iter()
            .flat_map(|(id, cs)| {
                cs.streams.iter().filter_map(move |(s, st)| match st {
                    Stream::Sending(b)
                        if !b.busy
                            && !b.abandoned
                            && b.progress
                                .is_some_and(|p| now.saturating_duration_since(p) >= stall) =>
                    {
                        Some((*id, *s))
                    }
                    _ => None,
                })
            })
            .collect();
        for (id, s) in stalled {
            ctx.with_conn(id, |conn| {
                let _ = conn.reset(s, STALLED);
            });
            self.stalled += 1;
            self.end(id, s);
        }
        self.admit(None);
    }

    /// Puts `id` in the round of connections with waiting requests.
    fn enqueue(&mut self, id: ConnId) {
        if self.io.is_none() {
            return;
        }
        if let Some(cs) = self.conns.get_mut(&id) {
            if !cs.queued && !cs.waiting.is_empty() && cs.open < self.limits.files_per_connection {
                cs.queued = true;
                self.ready.push_back(id);
            }
        }
    }

    /// Starts waiting requests as slots allow: with the pool, any connection's; without,
    /// only `here`'s (the one connection the worker can write to now).
    fn admit(&mut self, here: Option<&mut Conn<'_>>) {
        if self.io.is_some() {
            self.admit_queued();
        } else if let Some(conn) = here {
            self.admit_here(conn);
        }
    }

    fn admit_queued(&mut self) {
        self.take_returned();
        let Some(io) = &self.io else { return };
        let per_conn = self.limits.files_per_connection;
        while self.open < self.limits.files_per_worker {
            let Some(id) = self.ready.pop_front() else {
                break;
            };
            let Some(cs) = self.conns.get_mut(&id) else {
                self.stale = self.stale.saturating_sub(1);
                continue;
            };
            let next = if cs.open < per_conn {
                cs.waiting.pop_first()
            } else {
                None
            };
            let Some(s) = next else {
                cs.queued = false;
                continue;
            };
            let Some(Stream::Waiting(path)) = cs.streams.get(&s) else {
                // Not reachable: `waiting` lists Waiting streams only. Try the next one.
                self.ready.push_front(id);
                continue;
            };
            if let Err(e) = io.open(&self.root, id, s, path.clone()) {
                // Not reachable either: the queue has room for every slot, and the pool's
                // threads outlive the server. Keep the request; retry at the next event.
                tracing::error!(error = %e, "hq: file pool refused a job");
                cs.waiting.insert(s);
                self.ready.push_front(id);
                break;
            }
            cs.streams.insert(s, Stream::Sending(Body::new(None, true)));
            cs.open += 1;
            self.open += 1;
            if !cs.waiting.is_empty() && cs.open < per_conn {
                self.ready.push_back(id);
            } else {
                cs.queued = false;
            }
        }
    }

    fn admit_here(&mut self, conn: &mut Conn<'_>) {
        if !self.warned {
            self.warned = true;
            tracing::warn!(
                "hq: not attached to its engine (a handler wrapping it must call \
                 HqServer::attach_via): files are read on the worker thread and only the \
                 per-connection cap applies"
            );
        }
        let id = conn.id();
        loop {
            let per_conn = self.limits.files_per_connection;
            let Some(cs) = self.conns.get_mut(&id) else {
                return;
            };
            if cs.open >= per_conn {
                return;
            }
            let Some(s) = cs.waiting.pop_first() else {
                return;
            };
            let Some(Stream::Waiting(path)) = cs.streams.remove(&s) else {
                continue;
            };
            match self.root.open_beneath(&path) {
                Ok(file) => {
                    cs.streams
                        .insert(s, Stream::Sending(Body::new(Some(file), false)));
                    cs.open += 1;
                    self.open += 1;
                    self.pump(conn, s);
                }
                Err(_) => {
                    self.refused += 1;
                    let _ = conn.reset(s, NOT_FOUND);
                    let _ = conn.stop(s, NOT_FOUND);
                }
            }
        }
    }

    /// Ends `s` of `id`: its state goes, its slot (if any) is free.
    fn end(&mut self, id: ConnId, s: StreamId) {
        let Some(cs) = self.conns.get_mut(&id) else {
            return;
        };
        match cs.streams.remove(&s) {
            Some(Stream::Sending(_)) => {
                cs.open -= 1;
                self.open -= 1;
                self.enqueue(id);
            }
            Some(Stream::Waiting(_)) => {
                cs.waiting.remove(&s);
            }
            Some(Stream::Reading(..)) | None => {}
        }
    }

    /// Ends `s` of `id` early (stopped, or its stream is gone): at once, or when the pool
    /// hands back what it is doing for it.
    fn abandon(&mut self, id: ConnId, s: StreamId) {
        if let Some(Stream::Sending(body)) =
            self.conns.get_mut(&id).and_then(|c| c.streams.get_mut(&s))
        {
            if body.busy {
                body.abandoned = true;
                body.out = Outbox::default();
                return;
            }
        }
        self.end(id, s);
    }

    /// Refuses a request: resets and stops `s` with `code`.
    fn refuse(&mut self, conn: &mut Conn<'_>, s: StreamId, code: VarInt) {
        self.refused += 1;
        let _ = conn.reset(s, code);
        let _ = conn.stop(s, code);
        self.end(conn.id(), s);
    }

    /// Writes what `s` has, finishes it at the end of its file, or has the next chunk read.
    fn pump(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        let id = conn.id();
        loop {
            let Some(Stream::Sending(body)) =
                self.conns.get_mut(&id).and_then(|c| c.streams.get_mut(&s))
            else {
                return;
            };
            if body.abandoned {
                return;
            }
            let flushed = body.out.flush(conn, s);
            // The clock restarts when the chunk is all taken (the next one is then read, and
            // the disk's time does not count), not at every octet: taking a few octets now
            // and then does not hold a slot for good.
            if matches!(flushed, Ok(true)) || body.progress.is_none() {
                body.progress = Some(conn.ctx().now());
            }
            match flushed {
                Ok(true) => {}
                Ok(false) => return,
                Err(_) => return self.abandon(id, s),
            }
            if body.busy {
                return;
            }
            if body.eof {
                let _ = conn.finish(s);
                self.served += 1;
                return self.end(id, s);
            }
            let Some(mut file) = body.file.take() else {
                // Not reachable: neither busy nor at its end, the stream has its file.
                let _ = conn.reset(s, NOT_FOUND);
                return self.end(id, s);
            };
            match &self.io {
                Some(io) => {
                    if io.read(id, s, file).is_err() {
                        let _ = conn.reset(s, NOT_FOUND);
                        return self.end(id, s);
                    }
                    body.busy = true;
                    return;
                }
                None => match read_chunk(&mut file, CHUNK) {
                    Ok((data, eof)) => {
                        body.out.push(data);
                        body.eof = eof;
                        if !eof {
                            body.file = Some(file);
                        }
                    }
                    Err(_) => {
                        let _ = conn.reset(s, NOT_FOUND);
                        return self.end(id, s);
                    }
                },
            }
        }
    }

    /// A pool job of `s` came back.
    fn loaded(&mut self, conn: &mut Conn<'_>, s: StreamId, first: bool, r: io::Result<Loaded>) {
        let id = conn.id();
        let Some(cs) = self.conns.get_mut(&id) else {
            // Closed (`closed` came, the connection is draining): the slot stayed taken
            // for this job.
            drop(r);
            return self.orphan_returned();
        };
        let Some(Stream::Sending(body)) = cs.streams.get_mut(&s) else {
            // Not reachable: a stream with a job out stays until the job comes back.
            return;
        };
        body.busy = false;
        if body.abandoned {
            drop(r);
            self.end(id, s);
        } else {
            match r {
                Ok(l) => {
                    body.file = l.file;
                    body.eof = l.eof;
                    body.out.push(l.data);
                    // The disk's time does not count against the client.
                    body.progress = Some(conn.ctx().now());
                    self.pump(conn, s);
                }
                Err(_) if first => self.refuse(conn, s, NOT_FOUND),
                Err(_) => {
                    let _ = conn.reset(s, NOT_FOUND);
                    self.end(id, s);
                }
            }
        }
        self.admit(Some(conn));
    }

    /// Frees the slots of the jobs whose deliveries were dropped.
    fn take_returned(&mut self) {
        if let Some(io) = &self.io {
            self.open -= io.poster.returned.swap(0, Ordering::Acquire);
        }
    }

    /// A job of a closed connection came back: its slot is free.
    fn orphan_returned(&mut self) {
        self.open -= 1;
        self.admit(None);
    }
}

impl Handler for HqServer {
    fn attached(&mut self, engine: &EngineHandle<Self>) {
        self.attach_via(engine, |h| h);
    }

    fn stream_opened(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        if s.dir() == Dir::Uni {
            // Requests come on bidirectional streams; there is nowhere to answer this one.
            self.refused += 1;
            let _ = conn.stop(s, BAD_REQUEST);
            return;
        }
        // State starts here, not at the first readable call: a stream whose state has gone
        // (answered, refused) may still be called readable (its end arriving late), and
        // must not look like a new, empty request.
        let cs = self.conns.entry(conn.id()).or_default();
        let opened = conn.ctx().now();
        cs.streams
            .insert(s, Stream::Reading(BytesMut::new(), opened));
    }

    fn stream_readable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        let id = conn.id();
        // A request read already (answered, or waiting its turn): what still arrives (its
        // end, late) is read and dropped, so that quinn-proto frees the stream's receiving
        // side and gives the client its stream credit back.
        let Some(Stream::Reading(req, _)) = self
            .conns
            .get_mut(&id)
            .and_then(|cs| cs.streams.get_mut(&s))
        else {
            let _ = conn.read(s, |_| {});
            return;
        };
        let status = conn.read(s, |b| {
            // Keep one octet past the limit, to tell a request that is too long.
            let room = (MAX_REQUEST + 1).saturating_sub(req.len());
            req.extend_from_slice(&b[..b.len().min(room)]);
        });
        let complete = match status {
            Ok(ReadStatus::Finished) => true,
            Ok(ReadStatus::Blocked) => req.ends_with(b"\n"),
            Err(e) => {
                // The client abandoned its request: abandon the answer's side too, so that
                // quinn-proto frees the stream and gives the client its credit back.
                if let xdp_quic::StreamError::Reset(code) = e {
                    let _ = conn.reset(s, code);
                }
                self.end(id, s);
                return;
            }
        };
        if req.len() > MAX_REQUEST {
            return self.refuse(conn, s, BAD_REQUEST);
        }
        if !complete {
            return;
        }
        let parsed = parse_request(req);
        let Some(cs) = self.conns.get_mut(&id) else {
            return;
        };
        match parsed {
            Ok(path) => {
                cs.streams.insert(s, Stream::Waiting(path));
                cs.waiting.insert(s);
                self.enqueue(id);
                self.admit(Some(conn));
            }
            Err(PathError::BadRequest) => self.refuse(conn, s, BAD_REQUEST),
            Err(PathError::NotFound) => self.refuse(conn, s, NOT_FOUND),
        }
    }

    fn stream_writable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        self.pump(conn, s);
        self.admit(Some(conn));
    }

    fn stream_stopped(&mut self, conn: &mut Conn<'_>, s: StreamId, code: VarInt) {
        let id = conn.id();
        if self
            .conns
            .get(&id)
            .is_some_and(|c| c.streams.contains_key(&s))
        {
            let _ = conn.reset(s, code);
            self.abandon(id, s);
            self.admit(Some(conn));
        }
    }

    fn closed(&mut self, _ctx: &mut Ctx<'_>, id: ConnId, _reason: &ConnectionError) {
        let Some(cs) = self.conns.remove(&id) else {
            return;
        };
        for st in cs.streams.into_values() {
            if let Stream::Sending(body) = st {
                // A busy stream's slot is freed when its job comes back (`orphan_returned`).
                if !body.busy {
                    self.open -= 1;
                }
            }
        }
        if cs.queued {
            self.stale += 1;
            if self.stale > 32 && self.stale * 2 > self.ready.len() {
                let conns = &self.conns;
                self.ready.retain(|c| conns.contains_key(c));
                self.stale = 0;
            }
        }
        self.admit(None);
    }
}

/// The result of one GET.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    Body(Bytes),
    Reset(VarInt),
    Failed(String),
}

/// An hq-interop client: one connection, `paths` fetched in parallel.
pub struct HqClient {
    remote: std::net::SocketAddr,
    server_name: String,
    paths: Vec<String>,
    /// The next path to request (the rest wait for the peer's stream limit).
    next: usize,
    pending: HashMap<StreamId, (usize, BytesMut)>,
    /// Requests the stream's flow control has not taken whole yet: finished once written.
    sending: HashMap<StreamId, Outbox>,
    /// One result per path, in the order given.
    pub results: Vec<Option<Fetched>>,
    conn: Option<ConnId>,
    /// Octets of bodies it may still take in (a server cannot make it hold more).
    budget: usize,
}

/// What an [`HqClient`] holds of all its bodies together by default: 1 GiB.
pub const CLIENT_BODIES: usize = 1 << 30;

/// Stream stop code of an [`HqClient`] whose bodies would pass its budget.
pub const TOO_LARGE: VarInt = VarInt::from_u32(0x14);

impl HqClient {
    /// Fetches `paths` (each starting with `/`) from `remote`.
    pub fn new(remote: std::net::SocketAddr, server_name: &str, paths: Vec<String>) -> Self {
        let n = paths.len();
        Self {
            remote,
            server_name: server_name.to_string(),
            paths,
            next: 0,
            pending: HashMap::new(),
            sending: HashMap::new(),
            results: vec![None; n],
            conn: None,
            budget: CLIENT_BODIES,
        }
    }

    /// Takes in at most `octets` of bodies, all paths together (default [`CLIENT_BODIES`]):
    /// the body that would pass it is stopped ([`TOO_LARGE`]) and its path failed.
    pub fn with_body_budget(mut self, octets: usize) -> Self {
        self.budget = octets;
        self
    }

    /// Connects (post it to the worker once the engine runs).
    pub fn start(&mut self, ctx: &mut Ctx<'_>) {
        match ctx.connect(self.remote, &self.server_name) {
            Ok(id) => self.conn = Some(id),
            Err(e) => {
                for r in &mut self.results {
                    *r = Some(Fetched::Failed(e.to_string()));
                }
                ctx.stop_worker();
            }
        }
    }

    fn finish_one(&mut self, conn: &mut Conn<'_>, i: usize, r: Fetched) {
        self.results[i] = Some(r);
        if self.results.iter().all(Option::is_some) {
            conn.close(VarInt::from_u32(0), b"done");
        }
    }
}

impl HqClient {
    /// Requests paths until the peer's stream limit; `streams_available` resumes.
    fn request_more(&mut self, conn: &mut Conn<'_>) {
        while self.next < self.paths.len() {
            let Some(s) = conn.open_bi() else {
                return;
            };
            let mut req = Outbox::default();
            req.push(Bytes::from(format!("GET {}\r\n", self.paths[self.next])));
            self.pending.insert(s, (self.next, BytesMut::new()));
            self.next += 1;
            // A server may give a window smaller than the line: the rest waits for
            // `stream_writable`, and the stream ends only after the whole line.
            self.send_request(conn, s, req);
        }
    }

    /// Writes what the stream takes of `req`, then ends the stream; keeps the rest.
    fn send_request(&mut self, conn: &mut Conn<'_>, s: StreamId, mut req: Outbox) {
        let failed = match req.flush(conn, s) {
            Ok(true) => conn.finish(s).err(),
            Ok(false) => {
                self.sending.insert(s, req);
                None
            }
            Err(e) => Some(e),
        };
        if let Some(e) = failed {
            if let Some((i, _)) = self.pending.remove(&s) {
                self.finish_one(
                    conn,
                    i,
                    Fetched::Failed(format!("sending the request: {e}")),
                );
            }
        }
    }
}

impl Handler for HqClient {
    fn connected(&mut self, conn: &mut Conn<'_>) {
        if self.paths.is_empty() {
            conn.close(VarInt::from_u32(0), b"done");
        }
        self.request_more(conn);
    }

    fn streams_available(&mut self, conn: &mut Conn<'_>) {
        self.request_more(conn);
    }

    fn stream_writable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        if let Some(req) = self.sending.remove(&s) {
            self.send_request(conn, s, req);
        }
    }

    fn stream_readable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        let Some((i, body)) = self.pending.get_mut(&s) else {
            return;
        };
        let i = *i;
        let budget = &mut self.budget;
        let mut over = false;
        let status = conn.read(s, |b| {
            if b.len() > *budget {
                over = true;
            } else if !over {
                *budget -= b.len();
                body.extend_from_slice(&b);
            }
        });
        if over {
            let _ = conn.stop(s, TOO_LARGE);
            // What the dropped body took is free again for the other paths.
            if let Some((_, body)) = self.pending.remove(&s) {
                self.budget += body.len();
            }
            let why = "the bodies passed the client's budget".to_string();
            return self.finish_one(conn, i, Fetched::Failed(why));
        }
        match status {
            Ok(ReadStatus::Blocked) => {}
            Ok(ReadStatus::Finished) => {
                let (_, body) = self.pending.remove(&s).expect("present");
                self.finish_one(conn, i, Fetched::Body(body.freeze()));
            }
            Err(xdp_quic::StreamError::Reset(code)) => {
                self.pending.remove(&s);
                self.finish_one(conn, i, Fetched::Reset(code));
            }
            Err(e) => {
                self.pending.remove(&s);
                self.finish_one(conn, i, Fetched::Failed(e.to_string()));
            }
        }
    }

    fn closed(&mut self, ctx: &mut Ctx<'_>, _id: ConnId, reason: &ConnectionError) {
        for r in &mut self.results {
            if r.is_none() {
                *r = Some(Fetched::Failed(reason.to_string()));
            }
        }
        ctx.stop_worker();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_to_plain_relative_paths() {
        assert_eq!(parse_request(b"GET /a.txt\r\n"), Ok(PathBuf::from("a.txt")));
        assert_eq!(
            parse_request(b"GET /sub/b.txt"),
            Ok(PathBuf::from("sub/b.txt"))
        );
        assert_eq!(
            parse_request(b"GET /sub/b.txt?x=1#y\n"),
            Ok(PathBuf::from("sub/b.txt"))
        );
        for bad in [
            &b"GET /../secret\r\n"[..],
            b"GET /sub/../../secret",
            b"GET //etc/passwd",
            b"GET /./a.txt",
            b"GET /",
            b"GET /?x",
        ] {
            assert_eq!(parse_request(bad), Err(PathError::NotFound), "{bad:?}");
        }
        assert_eq!(parse_request(b"POST /a.txt"), Err(PathError::BadRequest));
        assert_eq!(parse_request(b"\xff\xfe"), Err(PathError::BadRequest));
    }

    #[test]
    fn limits_must_be_positive() {
        let dir = std::env::temp_dir();
        let zero = HqLimits {
            files_per_worker: 0,
            ..HqLimits::default()
        };
        assert!(HqServer::with_limits(&dir, zero).is_err());
        let no_stall = HqLimits {
            send_stall: Duration::ZERO,
            ..HqLimits::default()
        };
        assert!(HqServer::with_limits(&dir, no_stall).is_err());
        let no_time = HqLimits {
            request_timeout: Duration::ZERO,
            ..HqLimits::default()
        };
        assert!(HqServer::with_limits(&dir, no_time).is_err());
        assert!(HqServer::new(&dir.join("xdpquic-hq-no-such-dir")).is_err());
        assert_eq!(HqServer::new(&dir).unwrap().limits(), HqLimits::default());
    }
}
