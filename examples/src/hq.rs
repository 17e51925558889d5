//! hq-interop: HTTP/0.9 over QUIC (ALPN `hq-interop`), the protocol of the QUIC interop
//! runner. A request is `GET /path\r\n` on a bidirectional stream; the answer is the file's
//! octets, then the end of the stream.
//!
//! The server serves files under one root directory and refuses any path that leaves it
//! (`..`, symbolic links pointing out, absolute paths). Errors reset the stream: code
//! [`NOT_FOUND`] for a missing or refused file, [`BAD_REQUEST`] for a malformed request.
//! Files are read on the worker thread in [`CHUNK`]-octet steps as the stream has room,
//! so a slow disk slows that worker: serve from page cache or tmpfs.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use bytes::{Bytes, BytesMut};
use xdp_quic::{Conn, ConnId, ConnectionError, Ctx, Handler, ReadStatus, StreamId, VarInt};

use crate::outbox::Outbox;

/// ALPN of hq-interop.
pub const ALPN: &[u8] = b"hq-interop";
/// Stream reset code: no such file, or not servable.
pub const NOT_FOUND: VarInt = VarInt::from_u32(0x10);
/// Stream reset code: the request is not `GET /path`.
pub const BAD_REQUEST: VarInt = VarInt::from_u32(0x11);
/// Octets read from a file at a time.
pub const CHUNK: usize = 64 * 1024;
/// The longest request line accepted.
pub const MAX_REQUEST: usize = 4096;

/// Why a request path was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum PathError {
    /// Not `GET /...`.
    BadRequest,
    /// Leaves the root, or names no regular file under it.
    NotFound,
}

/// Parses a request line and resolves its path under `root` (which must be canonical).
pub fn resolve(root: &Path, request: &[u8]) -> Result<PathBuf, PathError> {
    let line = request
        .strip_suffix(b"\r\n")
        .or_else(|| request.strip_suffix(b"\n"))
        .unwrap_or(request);
    let line = std::str::from_utf8(line).map_err(|_| PathError::BadRequest)?;
    let path = line.strip_prefix("GET /").ok_or(PathError::BadRequest)?;
    let path = path.split(['?', '#']).next().unwrap_or("");
    let rel = Path::new(path);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        return Err(PathError::NotFound);
    }
    let full = root.join(rel);
    // Follow symbolic links, then check the result is still under the root.
    let canon = full.canonicalize().map_err(|_| PathError::NotFound)?;
    if !canon.starts_with(root) || !canon.is_file() {
        return Err(PathError::NotFound);
    }
    Ok(canon)
}

enum Serving {
    Reading(BytesMut),
    Sending { file: File, out: Outbox, eof: bool },
}

/// The hq-interop file server's handler.
pub struct HqServer {
    root: PathBuf,
    streams: HashMap<(ConnId, StreamId), Serving>,
    /// Files served in full.
    pub served: u64,
    /// Requests refused (bad request or not found).
    pub refused: u64,
}

impl HqServer {
    /// Serves files under `root`.
    pub fn new(root: &Path) -> io::Result<Self> {
        let root = root.canonicalize()?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory", root.display()),
            ));
        }
        Ok(Self {
            root,
            streams: HashMap::new(),
            served: 0,
            refused: 0,
        })
    }

    fn refuse(&mut self, conn: &mut Conn<'_>, s: StreamId, code: VarInt) {
        self.refused += 1;
        let _ = conn.reset(s, code);
        let _ = conn.stop(s, code);
        self.streams.remove(&(conn.id(), s));
    }

    fn send(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        let key = (conn.id(), s);
        let Some(Serving::Sending { file, out, eof }) = self.streams.get_mut(&key) else {
            return;
        };
        loop {
            match out.flush(conn, s) {
                Ok(true) => {}
                Ok(false) => return,
                Err(_) => {
                    self.streams.remove(&key);
                    return;
                }
            }
            if *eof {
                let _ = conn.finish(s);
                self.streams.remove(&key);
                self.served += 1;
                return;
            }
            let mut buf = BytesMut::zeroed(CHUNK);
            match file.read(&mut buf) {
                Ok(0) => *eof = true,
                Ok(n) => {
                    buf.truncate(n);
                    out.push(buf.freeze());
                }
                Err(_) => {
                    let _ = conn.reset(s, NOT_FOUND);
                    self.streams.remove(&key);
                    return;
                }
            }
        }
    }
}

impl Handler for HqServer {
    fn stream_readable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        let key = (conn.id(), s);
        let Serving::Reading(req) = self
            .streams
            .entry(key)
            .or_insert_with(|| Serving::Reading(BytesMut::new()))
        else {
            return;
        };
        let status = conn.read(s, |b| {
            if req.len() <= MAX_REQUEST {
                req.extend_from_slice(&b)
            }
        });
        let complete = match status {
            Ok(ReadStatus::Finished) => true,
            Ok(ReadStatus::Blocked) => req.ends_with(b"\n"),
            Err(_) => {
                self.streams.remove(&key);
                return;
            }
        };
        if req.len() > MAX_REQUEST {
            return self.refuse(conn, s, BAD_REQUEST);
        }
        if !complete {
            return;
        }
        match resolve(&self.root, req).and_then(|p| File::open(p).map_err(|_| PathError::NotFound))
        {
            Ok(file) => {
                self.streams.insert(
                    key,
                    Serving::Sending {
                        file,
                        out: Outbox::default(),
                        eof: false,
                    },
                );
                self.send(conn, s);
            }
            Err(PathError::BadRequest) => self.refuse(conn, s, BAD_REQUEST),
            Err(PathError::NotFound) => self.refuse(conn, s, NOT_FOUND),
        }
    }

    fn stream_writable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        self.send(conn, s);
    }

    fn closed(&mut self, _ctx: &mut Ctx<'_>, id: ConnId, _reason: &ConnectionError) {
        self.streams.retain(|(c, _), _| *c != id);
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
    /// One result per path, in the order given.
    pub results: Vec<Option<Fetched>>,
    conn: Option<ConnId>,
}

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
            results: vec![None; n],
            conn: None,
        }
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
            let req = format!("GET {}\r\n", self.paths[self.next]);
            // A request line is far below any initial stream window.
            let _ = conn.write(s, req.as_bytes());
            let _ = conn.finish(s);
            self.pending.insert(s, (self.next, BytesMut::new()));
            self.next += 1;
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

    fn stream_readable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        let Some((i, body)) = self.pending.get_mut(&s) else {
            return;
        };
        let i = *i;
        match conn.read(s, |b| body.extend_from_slice(&b)) {
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
    fn paths_stay_under_the_root() {
        let dir = std::env::temp_dir().join(format!("xdpquic-hq-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("www/sub")).unwrap();
        std::fs::write(dir.join("www/a.txt"), b"a").unwrap();
        std::fs::write(dir.join("www/sub/b.txt"), b"b").unwrap();
        std::fs::write(dir.join("secret"), b"s").unwrap();
        std::os::unix::fs::symlink(dir.join("secret"), dir.join("www/link")).unwrap();
        let root = dir.join("www").canonicalize().unwrap();

        assert!(resolve(&root, b"GET /a.txt\r\n").is_ok());
        assert!(resolve(&root, b"GET /sub/b.txt").is_ok());
        assert_eq!(
            resolve(&root, b"GET /../secret\r\n"),
            Err(PathError::NotFound)
        );
        assert_eq!(
            resolve(&root, b"GET /sub/../../secret"),
            Err(PathError::NotFound)
        );
        assert_eq!(
            resolve(&root, b"GET //etc/passwd"),
            Err(PathError::NotFound)
        );
        assert_eq!(resolve(&root, b"GET /link"), Err(PathError::NotFound));
        assert_eq!(resolve(&root, b"GET /sub"), Err(PathError::NotFound));
        assert_eq!(resolve(&root, b"GET /nope"), Err(PathError::NotFound));
        assert_eq!(resolve(&root, b"POST /a.txt"), Err(PathError::BadRequest));
        assert_eq!(resolve(&root, b"\xff\xfe"), Err(PathError::BadRequest));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
