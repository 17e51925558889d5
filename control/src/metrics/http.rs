//! A minimal HTTP/1.1 endpoint for Prometheus: `GET /metrics`.
//!
//! Each connection is served on its own thread, at most [`Limits::max_connections`] at a
//! time, and has one deadline ([`Limits::deadline`]) for the whole exchange: reading the
//! request head and writing the answer. A client that sends a byte now and then, or nothing
//! at all, or that does not read the answer, is cut off at the deadline and meanwhile holds
//! one slot only: scrapes go on in the other slots. Past the bound a new connection is
//! answered `503 Service Unavailable` at once and closed (it never waits). A client that
//! holds every slot and keeps reconnecting can keep scrapes answered 503: keep the endpoint
//! on loopback or behind a firewall (the README says so). Nothing here ever touches a
//! worker.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use prometheus_client::registry::Registry;

/// The longest request head read.
const MAX_REQUEST: usize = 8 * 1024;
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Stack of a connection thread: it parses a request head and encodes the registry.
const CONN_STACK: usize = 256 * 1024;

/// How much the endpoint lets clients hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time a connection has, from its accept, to send its request head and take the whole
    /// answer; past it the connection is closed (with `408 Request Timeout` when the head had
    /// not arrived).
    pub deadline: Duration,
    /// Connections served at once; past it a new connection gets `503` and is closed.
    pub max_connections: usize,
}

impl Default for Limits {
    /// 5 s per exchange (Prometheus' default scrape timeout is 10 s), 16 connections.
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(5),
            max_connections: 16,
        }
    }
}

/// The connections being served, by number: a handle on each socket (to cut it off when the
/// server stops) and its thread.
#[derive(Default)]
struct Live {
    next: u64,
    conns: HashMap<u64, (TcpStream, JoinHandle<()>)>,
}

struct Shared {
    registry: Registry,
    limits: Limits,
    stop: AtomicBool,
    live: Mutex<Live>,
}

impl Shared {
    fn live(&self) -> MutexGuard<'_, Live> {
        // A panicking connection thread leaves the map consistent (inserts and removes are
        // single calls), so a poisoned lock is still usable.
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The metrics endpoint; stops when dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// A second descriptor of the listening socket: shut down to wake the accept loop.
    listener: TcpListener,
    thread: Option<JoinHandle<()>>,
}

/// The longest [`Limits::deadline`] (an hour): a deadline is a bound, not a way to turn it
/// off.
pub const MAX_DEADLINE: Duration = Duration::from_secs(3600);

impl MetricsServer {
    /// Serves `registry` at `http://addr/metrics` (port 0: any free port) with the default
    /// [`Limits`].
    pub fn start(addr: SocketAddr, registry: Registry) -> io::Result<Self> {
        Self::start_with(addr, registry, Limits::default())
    }

    /// Serves `registry` at `http://addr/metrics` within `limits`.
    pub fn start_with(addr: SocketAddr, registry: Registry, limits: Limits) -> io::Result<Self> {
        limits.validate()?;
        Self::start_on(bind(addr)?, registry, limits)
    }

    /// Serves `registry` on `listener` (bound by [`bind`], so that a server can take its
    /// port before it starts what it reports on) within `limits`.
    pub fn start_on(listener: TcpListener, registry: Registry, limits: Limits) -> io::Result<Self> {
        limits.validate()?;
        let addr = listener.local_addr()?;
        let wake = listener.try_clone()?;
        let shared = Arc::new(Shared {
            registry,
            limits,
            stop: AtomicBool::new(false),
            live: Mutex::default(),
        });
        let s = shared.clone();
        let thread = std::thread::Builder::new()
            .name("xdp-quic-metrics".into())
            .spawn(move || accept_loop(&listener, &s))?;
        Ok(Self {
            addr,
            shared,
            listener: wake,
            thread: Some(thread),
        })
    }

    /// The address it serves on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Connections being served now (each at most [`Limits::deadline`] old).
    pub fn active_connections(&self) -> usize {
        self.shared.live().conns.len()
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop: shutting the listening socket down makes a blocked accept
        // fail (EINVAL), and the loop checks the flag after every accept. (Connecting to
        // the endpoint, the usual trick, fails when its address went away, or from another
        // network namespace, and the join would then wait for ever.)
        // SAFETY: shutdown(2) on a descriptor this value owns, open until it drops; it
        // touches no memory of ours.
        unsafe { libc::shutdown(self.listener.as_raw_fd(), libc::SHUT_RD) };
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Cut off the connections still being served, then wait for their threads.
        let conns: Vec<_> = self.shared.live().conns.drain().map(|(_, c)| c).collect();
        for (stream, _) in &conns {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
        for (_, thread) in conns {
            let _ = thread.join();
        }
    }
}

/// Binds the endpoint's listening socket at `addr` (port 0: any free port).
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    TcpListener::bind(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot serve metrics on {addr}: {e}")))
}

impl Limits {
    /// Refuses limits the endpoint cannot serve with (no connection, no or too long a
    /// deadline).
    pub fn validate(&self) -> io::Result<()> {
        if self.max_connections == 0 || self.deadline.is_zero() || self.deadline > MAX_DEADLINE {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the metrics endpoint needs a deadline of at most {MAX_DEADLINE:?} and at \
                     least one connection (got {:?}, {})",
                    self.deadline, self.max_connections
                ),
            ));
        }
        Ok(())
    }
}

fn accept_loop(listener: &TcpListener, shared: &Arc<Shared>) {
    for conn in listener.incoming() {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        let stream = match conn {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors or memory: back off instead of spinning.
                tracing::debug!("metrics accept: {e}");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let deadline = Instant::now() + shared.limits.deadline;
        // Held while the thread is spawned and recorded, so that it cannot remove its entry
        // before the entry exists.
        let mut live = shared.live();
        if live.conns.len() >= shared.limits.max_connections {
            drop(live);
            refuse(stream);
            continue;
        }
        let Ok(handle) = stream.try_clone() else {
            continue;
        };
        let id = live.next;
        live.next += 1;
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("xdp-quic-metrics-conn".into())
            .stack_size(CONN_STACK)
            .spawn(move || {
                // The slot is given back however the thread ends, a panic included.
                let slot = Slot { shared: s, id };
                if let Err(e) = answer(stream, &slot.shared.registry, deadline) {
                    tracing::debug!("metrics request: {e}");
                }
            });
        match spawned {
            Ok(thread) => {
                live.conns.insert(id, (handle, thread));
            }
            Err(e) => tracing::debug!("metrics: no thread for a connection: {e}"),
        }
    }
}

/// A connection's slot in [`Live`], given back when its thread ends.
struct Slot {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.shared.live().conns.remove(&self.id);
    }
}

/// Answers `503` without waiting (the socket is non-blocking) and closes.
fn refuse(mut stream: TcpStream) {
    let _ = stream.set_nonblocking(true);
    let _ = stream.write_all(
        b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nRetry-After: 1\r\nConnection: close\r\n\r\n",
    );
}

/// Time left until `deadline`, or `TimedOut`.
fn left(deadline: Instant) -> io::Result<Duration> {
    match deadline.checked_duration_since(Instant::now()) {
        Some(d) if !d.is_zero() => Ok(d),
        _ => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client did not finish within the deadline",
        )),
    }
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// Reads the request head (up to the blank line) before `deadline`. `Ok(None)`: the client
/// closed first.
fn read_head(stream: &mut TcpStream, deadline: Instant) -> io::Result<Option<Vec<u8>>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        if head.len() > MAX_REQUEST {
            return Ok(Some(head));
        }
        stream.set_read_timeout(Some(left(deadline)?))?;
        match stream.read(&mut buf) {
            Ok(0) => return Ok(None),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if timed_out(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Some(head))
}

/// Writes all of `bytes` before `deadline`.
fn write_by(stream: &mut TcpStream, mut bytes: &[u8], deadline: Instant) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.set_write_timeout(Some(left(deadline)?))?;
        match stream.write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => bytes = &bytes[n..],
            Err(e) if timed_out(&e) || e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn answer(mut stream: TcpStream, registry: &Registry, deadline: Instant) -> io::Result<()> {
    let head = match read_head(&mut stream, deadline) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(()),
        Err(e) if e.kind() == io::ErrorKind::TimedOut => {
            let _ = stream.set_nonblocking(true);
            let _ = stream.write_all(
                b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let s = &mut stream;
    if head.len() > MAX_REQUEST && !head.windows(4).any(|w| w == b"\r\n\r\n") {
        return respond(
            s,
            "431 Request Header Fields Too Large",
            "text/plain",
            b"",
            deadline,
        );
    }
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, path) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let path = path.split(|&b| b == b'?').next().unwrap_or_default();
    match (method, path) {
        (b"GET", b"/metrics") => {
            let mut body = String::new();
            match prometheus_client::encoding::text::encode(&mut body, registry) {
                Ok(()) => respond(s, "200 OK", CONTENT_TYPE, body.as_bytes(), deadline),
                // A scraper hears that it failed, rather than a connection closed.
                Err(_) => respond(
                    s,
                    "500 Internal Server Error",
                    "text/plain",
                    b"encoding the metrics failed\n",
                    deadline,
                ),
            }
        }
        (b"GET", b"/") => respond(
            s,
            "200 OK",
            "text/plain",
            b"xdp-quic metrics: GET /metrics\n",
            deadline,
        ),
        (b"GET", _) => respond(s, "404 Not Found", "text/plain", b"not found\n", deadline),
        _ if line.len() > 3 && parts.next().is_some_and(|v| v.starts_with(b"HTTP/")) => {
            let allow = "Allow: GET\r\n";
            respond_with(
                s,
                "405 Method Not Allowed",
                allow,
                "text/plain",
                b"",
                deadline,
            )
        }
        _ => respond(s, "400 Bad Request", "text/plain", b"", deadline),
    }
}

fn respond(
    stream: &mut TcpStream,
    status: &str,
    ty: &str,
    body: &[u8],
    deadline: Instant,
) -> io::Result<()> {
    respond_with(stream, status, "", ty, body, deadline)
}

/// [`respond`] with `extra` header lines (each ending in CRLF).
fn respond_with(
    stream: &mut TcpStream,
    status: &str,
    extra: &str,
    ty: &str,
    body: &[u8],
    deadline: Instant,
) -> io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\n{extra}Content-Type: {ty}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    write_by(stream, head.as_bytes(), deadline)?;
    write_by(stream, body, deadline)?;
    stream.flush()
}
