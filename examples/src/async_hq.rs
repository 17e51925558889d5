//! hq-interop (HTTP/0.9) on the async API ([`xdp_quic::tokio`]): the same protocol, the same
//! safe open and the same limits as the callback server [`crate::hq::HqServer`], written as
//! one task per request, with the file's open and reads on tokio's blocking pool.
//!
//! - A request line longer than [`MAX_REQUEST`] or not `GET /path` resets the stream with
//!   [`BAD_REQUEST`]; a path that is not plain names, names nothing, or names anything but a
//!   regular file beneath the root gets [`NOT_FOUND`] ([`FileRoot::open_beneath`]: opened
//!   first, checked on the descriptor, no symbolic link followed).
//! - At most [`HqLimits::files_per_connection`] requests of a connection, and
//!   [`HqLimits::files_per_worker`] of the endpoint (every connection together), are served
//!   at once; further ones wait for a slot (in the order they arrived) and are never
//!   refused for it. A slot holds one descriptor and one [`CHUNK`] read ahead at most.
//! - The next chunk is read only once the previous one is in the stream's queue, and a slot
//!   is given back only once the client acknowledged the answer's end, so a slow reader costs
//!   at most the stream's queue (the endpoint's `Limits::stream_send`) per slot, not the
//!   file. One that does not take a chunk within [`HqLimits::send_stall`] is reset
//!   ([`STALLED`]), and at the end, one that does not acknowledge the rest within a stall per
//!   chunk still queued (at most 4) and one more.

use std::io;
use std::sync::Arc;

use tokio::sync::Semaphore;
use xdp_quic::tokio::{Connection, Endpoint, RecvStream, SendStream};

use crate::files::{read_chunk_pooled, FileRoot};
pub use crate::hq::{
    HqLimits, ALPN, BAD_REQUEST, CHUNK, MAX_REQUEST, NOT_FOUND, REQUEST_TIMED_OUT, STALLED,
};

/// Reads a request as the callback server does: up to a line's end (`\n` at the end of what
/// has arrived) or the stream's end, whichever comes first, so that a client that leaves
/// its stream open after the line is answered. `None`: longer than [`MAX_REQUEST`].
async fn read_request(
    recv: &mut RecvStream,
) -> Result<Option<Vec<u8>>, xdp_quic::tokio::ReadError> {
    let mut line = Vec::new();
    while let Some(chunk) = recv.read_chunk(MAX_REQUEST + 1 - line.len(), true).await? {
        line.extend_from_slice(&chunk.bytes);
        if line.len() > MAX_REQUEST {
            return Ok(None);
        }
        if line.ends_with(b"\n") {
            break;
        }
    }
    Ok(Some(line))
}

/// Chunks a stream's send queue holds at most, with the async API's default
/// `Limits::stream_send` (256 KiB): an endpoint with a larger one needs a longer
/// `send_stall` for the answers' ends (see `answer`).
const QUEUE_CHUNKS: usize = (256 << 10) / CHUNK;

/// The server: the root and the endpoint-wide slots.
#[derive(Clone)]
pub struct AsyncHq {
    root: Arc<FileRoot>,
    limits: HqLimits,
    files: Arc<Semaphore>,
}

impl AsyncHq {
    /// Serves the regular files beneath `root`, with `limits` (`pool_threads` is unused:
    /// the files are read on tokio's blocking pool).
    pub fn new(root: &std::path::Path, limits: HqLimits) -> io::Result<AsyncHq> {
        if limits.send_stall.is_zero() || limits.request_timeout.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the send stall and request timeout must be more than 0",
            ));
        }
        Ok(AsyncHq {
            root: Arc::new(FileRoot::open(root)?),
            files: Arc::new(Semaphore::new(limits.files_per_worker.max(1))),
            limits,
        })
    }

    /// Accepts connections until the endpoint closes, each served by its own task.
    pub async fn serve(self, ep: Endpoint) {
        while let Some(incoming) = ep.accept().await {
            let hq = self.clone();
            tokio::spawn(async move {
                match incoming.await {
                    Ok(conn) => hq.serve_connection(conn).await,
                    Err(e) => tracing::debug!("handshake failed: {e}"),
                }
            });
        }
    }

    /// Serves the requests of `conn` until it ends.
    pub async fn serve_connection(&self, conn: Connection) {
        let mine = Arc::new(Semaphore::new(self.limits.files_per_connection.max(1)));
        while let Ok((send, recv)) = conn.accept_bi().await {
            let hq = self.clone();
            let mine = mine.clone();
            tokio::spawn(async move {
                if let Err(e) = hq.answer(send, recv, &mine).await {
                    tracing::debug!("request ended: {e}");
                }
            });
        }
    }

    /// Reads one request and answers it.
    async fn answer(
        &self,
        mut send: SendStream,
        mut recv: RecvStream,
        mine: &Semaphore,
    ) -> anyhow::Result<()> {
        let line = read_request(&mut recv);
        let line = match tokio::time::timeout(self.limits.request_timeout, line).await {
            Ok(Ok(Some(line))) => line,
            Err(_) => {
                let _ = send.reset(REQUEST_TIMED_OUT);
                let _ = recv.stop(REQUEST_TIMED_OUT);
                return Ok(());
            }
            Ok(Ok(None)) => {
                let _ = send.reset(BAD_REQUEST);
                let _ = recv.stop(BAD_REQUEST);
                return Ok(());
            }
            Ok(Err(e)) => {
                // Never finished (its drop would): an empty answer would look whole.
                let _ = send.reset(BAD_REQUEST);
                return Err(e.into());
            }
        };
        let rel = match crate::hq::parse_request(&line) {
            Ok(rel) => rel,
            Err(crate::hq::PathError::BadRequest) => {
                let _ = send.reset(BAD_REQUEST);
                return Ok(());
            }
            Err(crate::hq::PathError::NotFound) => {
                let _ = send.reset(NOT_FOUND);
                return Ok(());
            }
        };
        // Slots in a fixed order (the connection's, then the endpoint's): no two requests
        // wait for each other's. The wait ends when the answer can no longer go (the peer
        // stopped the stream, or the connection ended), as hq drops a waiting request: a
        // task and its stream are not held behind slots for nothing.
        let permits = async {
            Ok::<_, tokio::sync::AcquireError>((mine.acquire().await?, self.files.acquire().await?))
        };
        let stopped = send.stopped();
        let (_mine, _slot) = tokio::select! {
            permits = permits => permits?,
            _ = stopped => return Ok(()),
        };
        let root = self.root.clone();
        let opened = match tokio::task::spawn_blocking(move || root.open_beneath(&rel)).await {
            Ok(opened) => opened,
            Err(e) => {
                // Never finished: an empty body would look like an empty file.
                let _ = send.reset(NOT_FOUND);
                return Err(e.into());
            }
        };
        let Ok(mut file) = opened else {
            let _ = send.reset(NOT_FOUND);
            return Ok(());
        };
        let mut sent = 0usize;
        loop {
            let (chunk, end, f) = match read_chunk_pooled(file, CHUNK).await {
                Ok(read) => read,
                Err(e) => {
                    // Reset, never finish: a truncated file must not look complete.
                    let _ = send.reset(NOT_FOUND);
                    return Err(e.into());
                }
            };
            file = f;
            sent += chunk.len();
            if !chunk.is_empty() {
                // The chunk goes once the stream's queue has room for it, that is once the
                // client took as much: one that does not within `send_stall` (stopped, or
                // reading a trickle) gives its slots up.
                match tokio::time::timeout(self.limits.send_stall, send.write_chunk(chunk)).await {
                    Ok(written) => written?,
                    Err(_) => {
                        let _ = send.reset(STALLED);
                        return Ok(());
                    }
                }
            }
            if end {
                send.finish()?;
                // The slot is held until the client took the end: what is queued (up to the
                // stream's send limit) is this request's memory until then. A client taking a
                // chunk per `send_stall` drains the queue's chunks (at most QUEUE_CHUNKS) in
                // as many stalls: one that does not within that, and one more, loses it.
                let queued = sent.div_ceil(CHUNK).min(QUEUE_CHUNKS) as u32;
                let within = self.limits.send_stall.saturating_mul(queued + 1);
                match tokio::time::timeout(within, send.stopped()).await {
                    Ok(_) => {}
                    Err(_) => {
                        let _ = send.reset(STALLED);
                    }
                }
                return Ok(());
            }
        }
    }
}
