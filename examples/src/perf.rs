//! The QUIC performance protocol (quinn's perf tool, msquic's secnetperf), ALPN `perf`.
//!
//! A request is a bidirectional stream: the client writes the size of the response it wants as
//! an 8-octet big-endian integer, then its upload, then finishes; the server reads to the end
//! and answers with that many octets, then finishes.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use xdp_quic::{
    Conn, ConnId, ConnectionError, Ctx, Handler, ReadStatus, StreamError, StreamId, VarInt,
};

/// ALPN of the perf protocol.
pub const ALPN: &[u8] = b"perf";

/// What both sides write: zeros, from one static buffer.
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Writes up to `left` zeros until the stream blocks. Zero-copy: quinn-proto takes
/// references to the static buffer.
fn write_zeros(conn: &mut Conn<'_>, s: StreamId, left: &mut u64) -> Result<(), StreamError> {
    while *left > 0 {
        let n = (*left).min(ZEROS.len() as u64) as usize;
        let mut chunk = bytes::Bytes::from_static(&ZEROS[..n]);
        let w = conn.write_chunk(s, &mut chunk)?;
        if w == 0 {
            return Ok(());
        }
        *left -= w as u64;
    }
    Ok(())
}

#[derive(Default)]
struct Serving {
    header: [u8; 8],
    have: usize,
    /// Response octets left to send, once the request is read to its end.
    respond: Option<u64>,
}

/// The perf server's handler (one per worker).
#[derive(Default)]
pub struct PerfServer {
    /// Per connection, its streams being read or answered: a connection's go at once when
    /// it ends, and its map is reused by its next requests.
    streams: HashMap<ConnId, HashMap<StreamId, Serving>>,
    /// Requests answered in full.
    pub requests: u64,
    /// Octets received (request headers and uploads).
    pub received: u64,
    /// Requests refused (closed before their 8-octet header).
    pub malformed: u64,
}

impl PerfServer {
    /// Streams this worker holds state for (being read or answered).
    pub fn streams_held(&self) -> usize {
        self.streams.values().map(HashMap::len).sum()
    }

    fn forget(&mut self, conn: ConnId, s: StreamId) {
        if let Some(streams) = self.streams.get_mut(&conn) {
            streams.remove(&s);
        }
    }

    fn respond(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        let id = conn.id();
        let Some(st) = self.streams.get_mut(&id).and_then(|m| m.get_mut(&s)) else {
            return;
        };
        let Some(left) = st.respond.as_mut() else {
            return;
        };
        if write_zeros(conn, s, left).is_err() {
            self.forget(id, s);
            return;
        }
        if *left == 0 {
            let _ = conn.finish(s);
            self.forget(id, s);
            self.requests += 1;
        }
    }
}

impl Handler for PerfServer {
    fn stream_readable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        let id = conn.id();
        let st = self.streams.entry(id).or_default().entry(s).or_default();
        if st.respond.is_some() {
            return;
        }
        let mut received = 0u64;
        let status = conn.read(s, |chunk| {
            received += chunk.len() as u64;
            let take = (8 - st.have).min(chunk.len());
            st.header[st.have..st.have + take].copy_from_slice(&chunk[..take]);
            st.have += take;
        });
        self.received += received;
        match status {
            Ok(ReadStatus::Blocked) => {}
            Ok(ReadStatus::Finished) if st.have == 8 => {
                st.respond = Some(u64::from_be_bytes(st.header));
                self.respond(conn, s);
            }
            Ok(ReadStatus::Finished) => {
                self.malformed += 1;
                let _ = conn.reset(s, VarInt::from_u32(1));
                self.forget(id, s);
            }
            Err(e) => {
                // The peer abandoned its request: abandon the answer too, so that
                // quinn-proto frees the stream and gives the peer its credit back.
                if let StreamError::Reset(code) = e {
                    let _ = conn.reset(s, code);
                }
                self.forget(id, s);
            }
        }
    }

    fn stream_writable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        self.respond(conn, s);
    }

    fn stream_stopped(&mut self, conn: &mut Conn<'_>, s: StreamId, _code: VarInt) {
        // The engine resets it: the rest of the answer is not sent.
        self.forget(conn.id(), s);
    }

    fn closed(&mut self, _ctx: &mut Ctx<'_>, id: ConnId, _reason: &ConnectionError) {
        self.streams.remove(&id);
    }
}

/// What a perf client does.
#[derive(Debug, Clone)]
pub struct PerfClientConfig {
    pub remote: SocketAddr,
    pub server_name: String,
    /// Connections in all (spread over the client's workers).
    pub connections: usize,
    /// Requests in flight per connection.
    pub streams: usize,
    /// Requests in all; `None`: until `duration` passes.
    pub requests: Option<u64>,
    /// Stop issuing requests after this long.
    pub duration: Option<Duration>,
    /// Octets uploaded per request.
    pub upload: u64,
    /// Octets requested per request.
    pub download: u64,
}

/// The shared budget of requests of a client run.
#[derive(Debug)]
pub struct Budget(AtomicI64);

impl Budget {
    /// A budget of `requests` (None: unlimited).
    pub fn new(requests: Option<u64>) -> Arc<Self> {
        Arc::new(Self(AtomicI64::new(
            requests.map_or(i64::MAX, |r| r.min(i64::MAX as u64) as i64),
        )))
    }

    fn claim(&self) -> bool {
        self.0.fetch_sub(1, Ordering::Relaxed) > 0
    }
}

struct Request {
    started: Instant,
    header: [u8; 8],
    header_sent: usize,
    up_left: u64,
    received: u64,
}

#[derive(Default)]
struct ClientConn {
    in_flight: usize,
    closing: bool,
}

/// Figures of a perf client run (one worker's, or merged).
#[derive(Debug, Clone, Default)]
pub struct PerfStats {
    pub requests: u64,
    pub failed: u64,
    pub uploaded: u64,
    pub downloaded: u64,
    pub latencies: Vec<Duration>,
    pub connections: u64,
    pub errors: Vec<String>,
}

impl PerfStats {
    /// Adds `o` to these figures.
    pub fn merge(&mut self, o: PerfStats) {
        self.requests += o.requests;
        self.failed += o.failed;
        self.uploaded += o.uploaded;
        self.downloaded += o.downloaded;
        self.latencies.extend(o.latencies);
        self.connections += o.connections;
        self.errors.extend(o.errors);
    }

    /// The `p`-th percentile (0..=100) of the request latencies.
    pub fn percentile(&self, p: f64) -> Option<Duration> {
        let mut v = self.latencies.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let i = ((p / 100.0) * (v.len() - 1) as f64).round() as usize;
        Some(v[i.min(v.len() - 1)])
    }

    /// A report of these figures over `elapsed`.
    pub fn report(&self, elapsed: Duration) -> PerfReport {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let ms = |d: Option<Duration>| d.map_or(0.0, |d| d.as_secs_f64() * 1e3);
        PerfReport {
            elapsed_s: secs,
            requests: self.requests,
            failed: self.failed,
            connections: self.connections,
            downloaded: self.downloaded,
            uploaded: self.uploaded,
            download_mbps: self.downloaded as f64 * 8.0 / secs / 1e6,
            upload_mbps: self.uploaded as f64 * 8.0 / secs / 1e6,
            requests_per_s: self.requests as f64 / secs,
            p50_ms: ms(self.percentile(50.0)),
            p90_ms: ms(self.percentile(90.0)),
            p99_ms: ms(self.percentile(99.0)),
            max_ms: ms(self.percentile(100.0)),
        }
    }
}

/// The figures a perf client prints.
#[derive(Debug, Clone, PartialEq)]
pub struct PerfReport {
    pub elapsed_s: f64,
    pub requests: u64,
    pub failed: u64,
    pub connections: u64,
    pub downloaded: u64,
    pub uploaded: u64,
    pub download_mbps: f64,
    pub upload_mbps: f64,
    pub requests_per_s: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl fmt::Display for PerfReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} requests ({} failed) on {} connections in {:.2} s",
            self.requests, self.failed, self.connections, self.elapsed_s
        )?;
        writeln!(
            f,
            "download {:.1} MB at {:.1} Mbit/s, upload {:.1} MB at {:.1} Mbit/s",
            self.downloaded as f64 / 1e6,
            self.download_mbps,
            self.uploaded as f64 / 1e6,
            self.upload_mbps
        )?;
        write!(
            f,
            "{:.0} requests/s, latency p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            self.requests_per_s, self.p50_ms, self.p90_ms, self.p99_ms, self.max_ms
        )
    }
}

/// The perf client's handler (one per worker). Start it with [`PerfClient::start`].
pub struct PerfClient {
    cfg: Arc<PerfClientConfig>,
    budget: Arc<Budget>,
    connections: usize,
    deadline: Option<Instant>,
    conns: HashMap<ConnId, ClientConn>,
    requests: HashMap<(ConnId, StreamId), Request>,
    /// This worker's figures.
    pub stats: PerfStats,
}

impl PerfClient {
    /// Worker `worker` of `workers`: it opens its share of `cfg.connections`.
    pub fn new(
        cfg: Arc<PerfClientConfig>,
        budget: Arc<Budget>,
        worker: usize,
        workers: usize,
    ) -> Self {
        let connections =
            cfg.connections / workers + usize::from(worker < cfg.connections % workers);
        Self {
            cfg,
            budget,
            connections,
            deadline: None,
            conns: HashMap::new(),
            requests: HashMap::new(),
            stats: PerfStats::default(),
        }
    }

    /// Opens this worker's connections (post it to the worker once the engine runs).
    pub fn start(&mut self, ctx: &mut Ctx<'_>) {
        self.deadline = self.cfg.duration.map(|d| ctx.now() + d);
        for _ in 0..self.connections {
            match ctx.connect(self.cfg.remote, &self.cfg.server_name) {
                Ok(id) => {
                    self.conns.insert(id, ClientConn::default());
                }
                Err(e) => self.stats.errors.push(format!("connect: {e}")),
            }
        }
        if self.conns.is_empty() {
            ctx.stop_worker();
        }
    }

    fn more_wanted(&self, now: Instant) -> bool {
        self.deadline.is_none_or(|d| now < d)
    }

    fn issue(&mut self, conn: &mut Conn<'_>) {
        let id = conn.id();
        loop {
            let more = self.more_wanted(conn.ctx().now());
            let Some(c) = self.conns.get_mut(&id) else {
                return;
            };
            if c.closing || c.in_flight >= self.cfg.streams {
                return;
            }
            if !more || !self.budget.claim() {
                if c.in_flight == 0 {
                    c.closing = true;
                    conn.close(VarInt::from_u32(0), b"done");
                }
                return;
            }
            let Some(s) = conn.open_bi() else {
                // Give the claimed request back; streams_available will call again.
                self.budget.0.fetch_add(1, Ordering::Relaxed);
                return;
            };
            c.in_flight += 1;
            self.requests.insert(
                (id, s),
                Request {
                    started: conn.ctx().now(),
                    header: self.cfg.download.to_be_bytes(),
                    header_sent: 0,
                    up_left: self.cfg.upload,
                    received: 0,
                },
            );
            self.send(conn, s);
        }
    }

    fn send(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        let Some(r) = self.requests.get_mut(&(conn.id(), s)) else {
            return;
        };
        while r.header_sent < 8 {
            match conn.write(s, &r.header[r.header_sent..]) {
                Ok(0) => return,
                Ok(n) => r.header_sent += n,
                Err(e) => return self.fail(conn, s, e.to_string()),
            }
        }
        let before = r.up_left;
        let res = write_zeros(conn, s, &mut r.up_left);
        self.stats.uploaded += before - r.up_left;
        if let Err(e) = res {
            return self.fail(conn, s, e.to_string());
        }
        if r.up_left == 0 {
            let _ = conn.finish(s);
        }
    }

    fn fail(&mut self, conn: &mut Conn<'_>, s: StreamId, why: String) {
        self.requests.remove(&(conn.id(), s));
        self.stats.failed += 1;
        if self.stats.errors.len() < 16 {
            self.stats.errors.push(why);
        }
        if let Some(c) = self.conns.get_mut(&conn.id()) {
            c.in_flight -= 1;
        }
        self.issue(conn);
    }
}

impl Handler for PerfClient {
    fn connected(&mut self, conn: &mut Conn<'_>) {
        self.stats.connections += 1;
        self.issue(conn);
    }

    fn streams_available(&mut self, conn: &mut Conn<'_>) {
        self.issue(conn);
    }

    fn stream_writable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        self.send(conn, s);
    }

    fn stream_readable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        let key = (conn.id(), s);
        let Some(r) = self.requests.get_mut(&key) else {
            return;
        };
        let mut got = 0u64;
        let status = conn.read(s, |b| got += b.len() as u64);
        r.received += got;
        self.stats.downloaded += got;
        match status {
            Ok(ReadStatus::Blocked) => {}
            Ok(ReadStatus::Finished) => {
                let r = self.requests.remove(&key).expect("present");
                if r.received != self.cfg.download {
                    return self.fail(
                        conn,
                        s,
                        format!("got {} octets, asked for {}", r.received, self.cfg.download),
                    );
                }
                self.stats.requests += 1;
                self.stats.latencies.push(conn.ctx().now() - r.started);
                if let Some(c) = self.conns.get_mut(&conn.id()) {
                    c.in_flight -= 1;
                }
                self.issue(conn);
            }
            Err(e) => self.fail(conn, s, e.to_string()),
        }
    }

    fn closed(&mut self, ctx: &mut Ctx<'_>, id: ConnId, reason: &ConnectionError) {
        if let Some(c) = self.conns.remove(&id) {
            let expected = c.closing || matches!(reason, ConnectionError::LocallyClosed);
            if !expected && self.stats.errors.len() < 16 {
                self.stats.errors.push(format!("connection {id}: {reason}"));
            }
        }
        let lost: Vec<_> = self
            .requests
            .keys()
            .filter(|(c, _)| *c == id)
            .copied()
            .collect();
        for k in lost {
            self.requests.remove(&k);
            self.stats.failed += 1;
        }
        if self.conns.is_empty() {
            ctx.stop_worker();
        }
    }
}
