//! HTTP/3 static files on the async API, through the `h3` crate ([`xdp_quic_h3`]): the
//! server of `xdp-quic serve --app h3`, and the client of `xdp-quic client --app h3`.
//!
//! The server answers `GET` and `HEAD` of the regular files beneath its root, with
//! `content-length` and a `content-type` from the extension: 200, 404 (no such file, or a
//! path that is not plain names, or anything but a regular file: opened beneath the root
//! with the same safe open as hq, [`FileRoot::open_beneath`]), 400 (a target that is not an
//! absolute path), 405 with `allow` for other methods. The same slots as hq bound the files
//! open and read at once ([`HqLimits`]); each file is read a 64 KiB chunk at a time on
//! tokio's blocking pool, the next only once the previous is in the stream. A response
//! holds its slots until the client acknowledged its end ([`xdp_quic_h3::StreamEnds`]),
//! so what a client does not take counts against them: every wait on the client (headers,
//! each chunk, the end) is bounded by `send_stall`, the acknowledgement by a stall per
//! chunk still queued and one more, past which the response is reset
//! (`H3_REQUEST_CANCELLED`).
//!
//! The request's path is percent-decoded (RFC 3986 §2.1) before it is checked: `%2F` (a
//! slash inside a name) and NUL find nothing (404), a malformed escape is a bad request.
//!
//! Shutdown: [`H3Server::serve`] takes a signal; when it fires, every connection sends
//! GOAWAY naming the first request it will not serve (RFC 9114 §5.2), rejects any request
//! from there on (`H3_REQUEST_REJECTED`, so that the client may retry it elsewhere), lets
//! the requests before it finish, and, [`GOAWAY_QUIET`] after the last of them (or after
//! the GOAWAY, with none), closes (`H3_NO_ERROR`): at once when the client has acknowledged
//! every answer, else once it closes, at most [`xdp_quic_h3::CLOSE_LINGER`] later. An idle
//! client no longer keeps its connection until the client itself sends GOAWAY.

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use h3::server::RequestStream;
use http::{Method, Request, Response, StatusCode};
use tokio::sync::{watch, Semaphore};
use xdp_quic::tokio::{Connection, Endpoint};

use crate::files::{plain_names, read_chunk_pooled, FileRoot};
pub use crate::hq::HqLimits;
pub use xdp_quic_h3::ALPN;

/// Octets read from a file at a time.
pub const CHUNK: usize = 64 * 1024;

/// The chunks a stream's send queue holds with the async API's default
/// `Limits::stream_send` (256 KiB): the acknowledgement's deadline counts on it.
const QUEUE_CHUNKS: usize = (256 << 10) / CHUNK;

/// After GOAWAY, once every request before it is answered, how long a connection stays open
/// for requests that raced the GOAWAY (they are rejected) before it ends.
pub const GOAWAY_QUIET: std::time::Duration = std::time::Duration::from_secs(1);

/// Requests of one connection that end before their headers were read (empty, reset,
/// late or malformed): h3 0.0.8 keeps an entry for each such stream for the connection's
/// life, so past this many the connection is closed (`H3_EXCESSIVE_LOAD`).
pub const MAX_UNRESOLVED: u64 = 1024;

/// Requests of one connection waiting for a file slot (`HqLimits::files_per_connection`,
/// `files_per_worker`); past this many a request is rejected (`H3_REQUEST_REJECTED`: not
/// processed, the client may retry). Above the 100 requests a client may have open at once
/// (the concurrent streams of quinn-proto's default transport, which `serve` uses; an
/// endpoint that allows more than 128 should expect rejections), so only a client that
/// cancels requests that wait
/// (STOP_SENDING frees their stream credit, but not their wait, which h3 cannot see) and
/// sends more reaches it: each waiting request holds its task, its headers and its stream's
/// state.
pub const MAX_WAITING: usize = 128;

/// A connection's file slots and the count of its requests waiting for one.
#[derive(Clone, Copy)]
struct Slots<'a> {
    mine: &'a Semaphore,
    waiting: &'a AtomicUsize,
}

/// A request counted among those of its connection (and of the server) waiting for a
/// slot, until dropped.
struct Waiting<'a> {
    conn: &'a AtomicUsize,
    server: &'a AtomicUsize,
}

impl<'a> Waiting<'a> {
    /// Counts one more, unless [`MAX_WAITING`] of the connection wait already.
    fn enter(conn: &'a AtomicUsize, server: &'a AtomicUsize) -> Option<Self> {
        conn.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_WAITING).then_some(n + 1)
        })
        .ok()?;
        server.fetch_add(1, Ordering::AcqRel);
        Some(Self { conn, server })
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.conn.fetch_sub(1, Ordering::AcqRel);
        self.server.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The largest header section a request may have (SETTINGS_MAX_FIELD_SECTION_SIZE; h3's
/// own default is unlimited).
pub const MAX_FIELD_SECTION: u64 = 16 * 1024;

/// The file server: its root and the endpoint-wide slots.
#[derive(Clone)]
pub struct H3Server {
    root: Arc<FileRoot>,
    limits: HqLimits,
    files: Arc<Semaphore>,
    /// Requests waiting for slots, every connection together.
    waiting: Arc<AtomicUsize>,
}

type Stream = RequestStream<xdp_quic_h3::BidiStream<Bytes>, Bytes>;

impl H3Server {
    /// Serves the regular files beneath `root` with `limits` (`pool_threads` unused: the
    /// files are read on tokio's blocking pool).
    pub fn new(root: &Path, limits: HqLimits) -> std::io::Result<H3Server> {
        if limits.send_stall.is_zero() || limits.request_timeout.is_zero() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the send stall and request timeout must be more than 0",
            ));
        }
        Ok(H3Server {
            root: Arc::new(FileRoot::open(root)?),
            files: Arc::new(Semaphore::new(limits.files_per_worker.max(1))),
            limits,
            waiting: Arc::new(AtomicUsize::new(0)),
        })
    }

    /// Requests waiting for a file slot now, every connection together (for tests and
    /// monitoring; at most [`MAX_WAITING`] per connection).
    pub fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Acquire)
    }

    /// Accepts connections until the endpoint closes; once `stop` turns true, stops
    /// accepting requests (GOAWAY) and lets those in flight finish.
    pub async fn serve(self, ep: Endpoint, stop: watch::Receiver<bool>) {
        while let Some(incoming) = ep.accept().await {
            let (server, stop) = (self.clone(), stop.clone());
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => server.serve_connection(conn, stop).await,
                    Err(e) => tracing::debug!("handshake failed: {e}"),
                }
            });
        }
    }

    /// Serves the requests of one connection.
    pub async fn serve_connection(&self, conn: Connection, mut stop: watch::Receiver<bool>) {
        let quic = xdp_quic_h3::Connection::new(conn.clone());
        let ends = quic.stream_ends();
        let mut h3 = match h3::server::builder()
            .max_field_section_size(MAX_FIELD_SECTION)
            .build::<_, Bytes>(quic)
            .await
        {
            Ok(h3) => h3,
            Err(e) => {
                tracing::debug!("HTTP/3 set-up failed: {e}");
                return;
            }
        };
        let mine = Arc::new(Semaphore::new(self.limits.files_per_connection.max(1)));
        let waiting = Arc::new(AtomicUsize::new(0));
        // Requests accepted so far: the client's bidirectional streams come in order, so the
        // next one's stream index. Once GOAWAY is sent, its id (as an index) is in `goaway`
        // and requests from there on are rejected.
        let mut accepted = 0u64;
        let goaway = Arc::new(AtomicU64::new(u64::MAX));
        let unresolved = Arc::new(AtomicU64::new(0));
        // The requests being answered (their results reaped as they end).
        let mut tasks = tokio::task::JoinSet::new();
        // Once GOAWAY is sent and every request before it is answered, the connection ends
        // after GOAWAY_QUIET without a request (one that raced the GOAWAY is rejected
        // meanwhile): h3 alone would keep it until the client sends GOAWAY too, which an
        // idle client never does.
        let quiet = tokio::time::sleep(std::time::Duration::MAX);
        tokio::pin!(quiet);
        let mut stopping = *stop.borrow();
        // GOAWAY's id is the first request not served (RFC 9114 §5.2): h3's `shutdown(1)`
        // names the one after the last accepted, but still serves a request with that very
        // id (it rejects only those above): the request's task rejects it.
        if stopping {
            goaway.store(accepted, Ordering::Release);
            let _ = h3.shutdown(1).await;
            quiet
                .as_mut()
                .reset(tokio::time::Instant::now() + GOAWAY_QUIET);
        }
        loop {
            let next = tokio::select! {
                next = h3.accept() => next,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {
                    if stopping && tasks.is_empty() {
                        quiet.as_mut().reset(tokio::time::Instant::now() + GOAWAY_QUIET);
                    }
                    continue;
                }
                _ = stop.changed(), if !stopping => {
                    stopping = true;
                    // GOAWAY: no new request; those accepted go on.
                    goaway.store(accepted, Ordering::Release);
                    let _ = h3.shutdown(1).await;
                    if tasks.is_empty() {
                        quiet.as_mut().reset(tokio::time::Instant::now() + GOAWAY_QUIET);
                    }
                    continue;
                }
                _ = &mut quiet, if stopping && tasks.is_empty() => break,
            };
            if unresolved.load(Ordering::Relaxed) >= MAX_UNRESOLVED {
                let code = h3::error::Code::H3_EXCESSIVE_LOAD.value();
                conn.close(
                    xdp_quic::VarInt::from_u64(code).expect("a varint"),
                    b"too many requests without headers",
                );
                break;
            }
            match next {
                Ok(Some(resolver)) => {
                    accepted += 1;
                    let (server, mine, goaway) = (self.clone(), mine.clone(), goaway.clone());
                    let waiting = waiting.clone();
                    let (ends, unresolved) = (ends.clone(), unresolved.clone());
                    let conn = conn.clone();
                    let limit = self.limits.request_timeout;
                    tasks.spawn(async move {
                        match resolve_within(resolver, limit).await {
                            Ok((req, mut stream)) => {
                                if stream.id().index() >= goaway.load(Ordering::Acquire) {
                                    // At or past the GOAWAY: not processed, as it said.
                                    let rejected = h3::error::Code::H3_REQUEST_REJECTED;
                                    stream.stop_sending(rejected);
                                    stream.stop_stream(rejected);
                                    return;
                                }
                                let slots = Slots {
                                    mine: &mine,
                                    waiting: &waiting,
                                };
                                let answer = server.answer(req, stream, slots, &ends, &conn);
                                if let Err(e) = answer.await {
                                    tracing::debug!("request ended: {e}");
                                }
                            }
                            Err(refused) => {
                                if refused.unresolved {
                                    unresolved.fetch_add(1, Ordering::Relaxed);
                                }
                                tracing::debug!("bad request: {:#}", refused.why);
                            }
                        }
                    });
                }
                Ok(None) => break,
                Err(e) => {
                    tracing::debug!("connection ended: {e}");
                    break;
                }
            }
        }
        // The answers still being sent go on: the connection (closed cleanly as `h3` goes)
        // stays open until they are acknowledged ([`xdp_quic_h3::CLOSE_LINGER`]).
        tasks.detach_all();
    }

    async fn answer(
        &self,
        req: Request<()>,
        mut stream: Stream,
        slots: Slots<'_>,
        ends: &xdp_quic_h3::StreamEnds,
        conn: &Connection,
    ) -> anyhow::Result<()> {
        let head = match *req.method() {
            Method::GET => false,
            Method::HEAD => true,
            _ => {
                let resp = Response::builder()
                    .status(StatusCode::METHOD_NOT_ALLOWED)
                    .header("allow", "GET, HEAD")
                    .body(())?;
                stream.send_response(resp).await?;
                stream.finish().await?;
                return Ok(());
            }
        };
        let path = req.uri().path();
        let Some(rel) = path.strip_prefix('/') else {
            return status(stream, StatusCode::BAD_REQUEST).await;
        };
        let rel = match percent_decode(rel) {
            Ok(Some(rel)) => rel,
            Ok(None) => return status(stream, StatusCode::NOT_FOUND).await,
            Err(MalformedEscape) => return status(stream, StatusCode::BAD_REQUEST).await,
        };
        if plain_names(&rel).is_err() {
            return status(stream, StatusCode::NOT_FOUND).await;
        }
        // The wait for slots ends with the connection: the answers of a connection gone
        // (tasks that outlive it, see `serve_connection`) do not wait behind slots others
        // hold, each with its request and stream.
        let Some(wait) = Waiting::enter(slots.waiting, &self.waiting) else {
            let rejected = h3::error::Code::H3_REQUEST_REJECTED;
            stream.stop_sending(rejected);
            stream.stop_stream(rejected);
            anyhow::bail!("{MAX_WAITING} requests of the connection wait for a slot already");
        };
        let permits = async {
            Ok::<_, tokio::sync::AcquireError>((
                slots.mine.acquire().await?,
                self.files.acquire().await?,
            ))
        };
        let (_mine, _slot) = tokio::select! {
            permits = permits => permits?,
            _ = conn.closed() => return Ok(()),
        };
        drop(wait);
        let root = self.root.clone();
        let ext = rel
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let opened = tokio::task::spawn_blocking(move || {
            let f = root.open_beneath(&rel)?;
            let len = f.metadata()?.len();
            std::io::Result::Ok((f, len))
        })
        .await;
        let opened = match opened {
            Ok(opened) => opened,
            Err(e) => {
                // No answer will come: the client must not take the stream's end for one.
                stream.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                return Err(e.into());
            }
        };
        let Ok((mut file, len)) = opened else {
            return status(stream, StatusCode::NOT_FOUND).await;
        };
        let resp = Response::builder()
            .status(StatusCode::OK)
            .header("content-length", len)
            .header("content-type", content_type(ext.as_deref()))
            .body(())?;
        let stall = self.limits.send_stall;
        // Every step that waits for the client to take data is bounded by `send_stall`: a
        // client that never reads must not hold the slots (nor the file) for good.
        if tokio::time::timeout(stall, stream.send_response(resp))
            .await
            .is_err()
        {
            stream.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
            anyhow::bail!("the client took no headers in {stall:?}");
        }
        if !head {
            // Exactly the length announced: a file that shrank meanwhile is cut off with an
            // error, one that grew is not read past it.
            let mut left = len;
            while left > 0 {
                let want = CHUNK.min(usize::try_from(left).unwrap_or(CHUNK));
                let (chunk, end, f) = match read_chunk_pooled(file, want).await {
                    Ok(read) => read,
                    Err(e) => {
                        // The length was promised: a shorter body must not look complete.
                        stream.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                        return Err(e.into());
                    }
                };
                file = f;
                left -= chunk.len() as u64;
                if end && left > 0 {
                    stream.stop_stream(h3::error::Code::H3_INTERNAL_ERROR);
                    anyhow::bail!("the file shrank while it was sent ({left} octets short)");
                }
                if !chunk.is_empty() {
                    match tokio::time::timeout(stall, stream.send_data(chunk)).await {
                        Ok(sent) => sent?,
                        Err(_) => {
                            stream.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
                            anyhow::bail!("the client took less than a chunk in {stall:?}");
                        }
                    }
                }
            }
        }
        drop(file);
        let id = stream.id();
        match tokio::time::timeout(stall, stream.finish()).await {
            Ok(finished) => finished?,
            Err(_) => {
                stream.stop_stream(h3::error::Code::H3_REQUEST_CANCELLED);
                anyhow::bail!("the client took not the answer's end in {stall:?}");
            }
        }
        // h3 counts the request done (and may end the connection) once its stream goes.
        drop(stream);
        // The slots are held until the client took the end: what is queued (up to the
        // stream's send limit) is this request's memory until then. A client taking a chunk
        // per `send_stall` drains the queue's chunks in as many stalls: one that does not
        // within that, and one more, loses the answer.
        let queued = usize::try_from(len).unwrap_or(usize::MAX).div_ceil(CHUNK);
        let within = stall.saturating_mul(queued.min(QUEUE_CHUNKS) as u32 + 1);
        if tokio::time::timeout(within, ends.acknowledged(id))
            .await
            .is_err()
        {
            ends.reset(id, h3::error::Code::H3_REQUEST_CANCELLED);
            anyhow::bail!("the client took not the answer in {within:?}");
        }
        Ok(())
    }
}

/// Why a request was not served.
#[derive(Debug)]
struct Refused {
    why: anyhow::Error,
    /// It ended before h3 had its headers: h3 0.0.8 keeps an entry for it for the
    /// connection's life ([`MAX_UNRESOLVED`]). (One whose headers h3 took and refused
    /// leaves nothing behind.)
    unresolved: bool,
}

/// Reads a request's headers, if they come whole within `limit` (from when its stream was
/// accepted); a request that does not is rejected (its response side reset with
/// H3_REQUEST_REJECTED, its request side stopped when dropped), so that headers sent a
/// trickle at a time do not hold the stream for the connection's life.
async fn resolve_within(
    mut resolver: h3::server::RequestResolver<xdp_quic_h3::Connection, Bytes>,
    limit: std::time::Duration,
) -> Result<(Request<()>, Stream), Refused> {
    use h3::quic::SendStream as _;
    let unresolved = |why: anyhow::Error| Refused {
        why,
        unresolved: true,
    };
    // h3 0.0.8 offers no way to reject a request whose headers have not come, but its
    // resolver's frame stream is public (the workspace pins h3 to 0.0.8): the first frame is
    // read here, under the time limit, and handed to h3 as `resolve_request` would.
    let first = std::future::poll_fn(|cx| resolver.frame_stream.poll_next(cx));
    match tokio::time::timeout(limit, first).await {
        Ok(frame) => {
            let accepted = resolver
                .accept_with_frame(frame)
                .map_err(|e| unresolved(e.into()))?;
            accepted.resolve().await.map_err(|e| Refused {
                why: e.into(),
                unresolved: false,
            })
        }
        Err(_) => {
            resolver
                .frame_stream
                .reset(h3::error::Code::H3_REQUEST_REJECTED.value());
            Err(unresolved(anyhow::anyhow!(
                "the request's headers did not come within {limit:?}"
            )))
        }
    }
}

/// Ends a request (a GET's empty body) as `RequestStream::finish` does, but takes the
/// server's STOP_SENDING with H3_NO_ERROR for success: a server that has its whole answer
/// may stop the request side so (RFC 9114 §4.1), and that can reach the client before its
/// own finish does. The answer is still to be read.
pub async fn finish_request<S, B>(
    stream: &mut h3::client::RequestStream<S, B>,
) -> Result<(), h3::error::StreamError>
where
    S: h3::quic::SendStream<B>,
    B: bytes::Buf,
{
    match stream.finish().await {
        Err(h3::error::StreamError::RemoteTerminate { code, .. })
            if code == h3::error::Code::H3_NO_ERROR =>
        {
            Ok(())
        }
        other => other,
    }
}

/// A `%` not followed by two hexadecimal digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MalformedEscape;

impl std::fmt::Display for MalformedEscape {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a % not followed by two hexadecimal digits")
    }
}

impl std::error::Error for MalformedEscape {}

/// The path beneath the root that `rel` (the request's path without its leading `/`)
/// names, percent-decoded (RFC 3986 §2.1): `Ok(None)` when it decodes to a name no file can
/// have (a `/` or a NUL inside a name), `Err` for a malformed escape.
pub fn percent_decode(rel: &str) -> Result<Option<std::path::PathBuf>, MalformedEscape> {
    use std::os::unix::ffi::OsStringExt;
    let hex = |b: u8| match b {
        b'0'..=b'9' => Ok(b - b'0'),
        b'a'..=b'f' => Ok(b - b'a' + 10),
        b'A'..=b'F' => Ok(b - b'A' + 10),
        _ => Err(MalformedEscape),
    };
    let bytes = rel.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    let mut nameless = false;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let (Some(&h), Some(&l)) = (bytes.get(i + 1), bytes.get(i + 2)) else {
                return Err(MalformedEscape);
            };
            let b = hex(h)? << 4 | hex(l)?;
            nameless |= b == b'/' || b == 0;
            out.push(b);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    if nameless {
        return Ok(None);
    }
    Ok(Some(std::path::PathBuf::from(
        std::ffi::OsString::from_vec(out),
    )))
}

/// Answers with `code` and no body.
async fn status(mut stream: Stream, code: StatusCode) -> anyhow::Result<()> {
    let resp = Response::builder()
        .status(code)
        .header("content-length", 0)
        .body(())?;
    stream.send_response(resp).await?;
    stream.finish().await?;
    Ok(())
}

/// The media type of a file extension (lower case); `application/octet-stream` otherwise.
pub fn content_type(ext: Option<&str>) -> &'static str {
    match ext {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("txt") => "text/plain; charset=utf-8",
        Some("css") => "text/css",
        Some("js" | "mjs") => "text/javascript",
        Some("json") => "application/json",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("svg") => "image/svg+xml",
        Some("webp") => "image/webp",
        Some("ico") => "image/vnd.microsoft.icon",
        Some("wasm") => "application/wasm",
        Some("pdf") => "application/pdf",
        _ => "application/octet-stream",
    }
}

/// What a client request got back.
#[derive(Debug)]
pub struct Fetched {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
}

/// Fetches each of `paths` from `authority` over `conn` (one HTTP/3 connection, the
/// requests at once, bodies up to `max_body` octets each); then closes the connection
/// cleanly.
pub async fn fetch(
    conn: Connection,
    authority: &str,
    paths: &[String],
    max_body: usize,
) -> anyhow::Result<Vec<Fetched>> {
    let (mut driver, send) = h3::client::builder()
        .max_field_section_size(MAX_FIELD_SECTION)
        .build::<_, _, Bytes>(xdp_quic_h3::Connection::new(conn))
        .await?;
    let drive = tokio::spawn(async move { futures_close(&mut driver).await });
    let mut tasks = Vec::new();
    for path in paths {
        let mut send = send.clone();
        let uri = format!("https://{authority}{path}");
        tasks.push(tokio::spawn(async move {
            let req = Request::get(uri).body(())?;
            let mut stream = send.send_request(req).await?;
            finish_request(&mut stream).await?;
            let resp = stream.recv_response().await?;
            let mut body = Vec::new();
            while let Some(mut chunk) = stream.recv_data().await? {
                use bytes::Buf;
                if body.len() + chunk.remaining() > max_body {
                    anyhow::bail!("body over {max_body} octets");
                }
                while chunk.has_remaining() {
                    let c = chunk.chunk();
                    body.extend_from_slice(c);
                    let n = c.len();
                    chunk.advance(n);
                }
            }
            // A body shorter or longer than its content-length is malformed (RFC 9114
            // §4.1.2): a response cut short must not pass for a whole one.
            let announced = resp.headers().get(http::header::CONTENT_LENGTH);
            if let Some(announced) = announced {
                let length = announced.to_str().ok().and_then(|v| v.parse::<u64>().ok());
                if length != Some(body.len() as u64) {
                    stream.stop_sending(h3::error::Code::H3_MESSAGE_ERROR);
                    anyhow::bail!(
                        "a body of {} octets, its content-length {announced:?}",
                        body.len()
                    );
                }
            }
            anyhow::Ok(Fetched {
                status: resp.status(),
                headers: resp.headers().clone(),
                body,
            })
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await??);
    }
    drop(send);
    let _ = drive.await;
    Ok(out)
}

/// Drives the client connection until it ends; the end once every request sender is gone
/// is a clean one.
async fn futures_close<C, B>(driver: &mut h3::client::Connection<C, B>)
where
    C: h3::quic::Connection<B>,
    B: bytes::Buf,
{
    let e = std::future::poll_fn(|cx| driver.poll_close(cx)).await;
    if !e.is_h3_no_error() {
        tracing::debug!("HTTP/3 connection ended: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::percent_decode;
    use std::path::PathBuf;

    #[test]
    fn paths_are_percent_decoded() {
        let ok = |s: &str| percent_decode(s).unwrap().unwrap();
        assert_eq!(ok("a%20b.txt"), PathBuf::from("a b.txt"));
        assert_eq!(ok("dir/%C3%A9t%c3%a9"), PathBuf::from("dir/été"));
        assert_eq!(ok("plain"), PathBuf::from("plain"));
        // Decoded dots are still dots: the caller's check refuses `..`.
        assert_eq!(ok("%2e%2e/x"), PathBuf::from("../x"));
        // No name holds a slash or a NUL.
        assert_eq!(percent_decode("a%2Fb").unwrap(), None);
        assert_eq!(percent_decode("a%00").unwrap(), None);
        for bad in ["%", "%4", "%zz", "a%g0"] {
            assert!(percent_decode(bad).is_err(), "{bad}");
        }
    }
}
