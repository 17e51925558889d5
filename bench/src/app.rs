//! The application every server under test runs, and what the clients check against it.
//!
//! * Bidirectional streams speak the QUIC perf protocol (xdp-quic's `PerfServer`, or its
//!   equivalent on quinn in `server.rs`): the client asks for a response size, uploads,
//!   finishes; the server answers with that many zero octets.
//! * Unidirectional streams are **ingest**: the client sends [`INGEST_SIZE`] octets and
//!   finishes, the server reads them, checks them against [`expected`] and discards them,
//!   counting the streams (the shape of Solana's TPU traffic: one small transaction per
//!   stream).
//!
//! Every server keeps the same [`AppCounters`], which the bench reads through the child's
//! stdin/stdout (`stats`) to check what arrived.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use xdp_quic::{Conn, ConnId, ConnectionError, Ctx, Dir, Handler, ReadStatus, StreamId};
use xdp_quic_examples::perf::PerfServer;

/// Octets of one ingest stream (1 KB).
pub const INGEST_SIZE: usize = 1000;

/// Period of the ingest pattern: a prime, so that neighbouring streams differ.
const PERIOD: usize = 251;

const fn make_pattern() -> [u8; PERIOD + INGEST_SIZE] {
    let mut p = [0u8; PERIOD + INGEST_SIZE];
    let mut i = 0;
    while i < p.len() {
        p[i] = (i % PERIOD) as u8;
        i += 1;
    }
    p
}

/// Every ingest stream's content is a window of this.
static PATTERN: [u8; PERIOD + INGEST_SIZE] = make_pattern();

/// The [`INGEST_SIZE`] octets that unidirectional stream number `index` (the stream ID's
/// index, the same on both ends) carries.
pub fn expected(index: u64) -> &'static [u8] {
    let start = (index % PERIOD as u64) as usize;
    &PATTERN[start..start + INGEST_SIZE]
}

/// What a server did, readable from any thread.
#[derive(Debug, Default)]
pub struct AppCounters {
    /// perf requests answered in full.
    pub requests: AtomicU64,
    /// Octets received on bidirectional streams (request headers and uploads).
    pub received: AtomicU64,
    /// Ingest streams received intact.
    pub ingested: AtomicU64,
    /// Ingest streams that ended with the wrong length or content.
    pub ingest_bad: AtomicU64,
    /// Ingest streams cut short: reset, or their connection closed (the client closes its
    /// connections with streams in flight at the end of the workload).
    pub ingest_cut: AtomicU64,
}

/// A snapshot of [`AppCounters`] (the child's `stats` answer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AppStats {
    pub requests: u64,
    pub received: u64,
    pub ingested: u64,
    pub ingest_bad: u64,
    pub ingest_cut: u64,
}

impl AppStats {
    /// Ingest streams the application read to their end: taken in, or found corrupt.
    pub fn ingest_taken(&self) -> u64 {
        self.ingested + self.ingest_bad
    }
}

impl AppCounters {
    pub fn snapshot(&self) -> AppStats {
        AppStats {
            requests: self.requests.load(Relaxed),
            received: self.received.load(Relaxed),
            ingested: self.ingested.load(Relaxed),
            ingest_bad: self.ingest_bad.load(Relaxed),
            ingest_cut: self.ingest_cut.load(Relaxed),
        }
    }
}

impl AppStats {
    /// What happened between `before` and `self`.
    pub fn since(&self, before: &AppStats) -> AppStats {
        AppStats {
            requests: self.requests - before.requests,
            received: self.received - before.received,
            ingested: self.ingested - before.ingested,
            ingest_bad: self.ingest_bad - before.ingest_bad,
            ingest_cut: self.ingest_cut - before.ingest_cut,
        }
    }
}

/// Checks ingest data as it arrives: octets so far, and whether they matched.
#[derive(Debug, Default)]
pub struct IngestCheck {
    pub len: usize,
    pub bad: bool,
}

impl IngestCheck {
    /// Takes the next chunk of stream `index`.
    pub fn take(&mut self, index: u64, chunk: &[u8]) {
        let want = expected(index);
        let end = self.len + chunk.len();
        if end > INGEST_SIZE || want[self.len..end] != *chunk {
            self.bad = true;
        }
        self.len = end;
    }

    /// Whether the stream, ended now, carried what it should.
    pub fn intact(&self) -> bool {
        !self.bad && self.len == INGEST_SIZE
    }
}

/// xdp-quic's server application: perf on bidirectional streams (the examples' server),
/// ingest on unidirectional ones.
pub struct BenchApp {
    perf: PerfServer,
    counters: Arc<AppCounters>,
}

impl BenchApp {
    pub fn new(counters: Arc<AppCounters>) -> Self {
        Self {
            perf: PerfServer::default(),
            counters,
        }
    }

    /// Publishes what the perf server counted during one callback.
    fn publish(&self, requests: u64, received: u64) {
        let c = &self.counters;
        if self.perf.requests != requests {
            c.requests.fetch_add(self.perf.requests - requests, Relaxed);
        }
        if self.perf.received != received {
            c.received.fetch_add(self.perf.received - received, Relaxed);
        }
    }

    fn ingest(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        // A 1 KB stream usually arrives whole: state is kept only for one that does not.
        let mut check = conn.take_stream_state::<IngestCheck>(s).unwrap_or_default();
        let index = s.index();
        match conn.read(s, |chunk| check.take(index, &chunk)) {
            Ok(ReadStatus::Blocked) => *conn.stream_state::<IngestCheck>(s) = check,
            Ok(ReadStatus::Finished) if check.intact() => {
                self.counters.ingested.fetch_add(1, Relaxed);
            }
            Ok(ReadStatus::Finished) => {
                self.counters.ingest_bad.fetch_add(1, Relaxed);
            }
            Err(_) => {
                self.counters.ingest_cut.fetch_add(1, Relaxed);
            }
        }
    }
}

impl Handler for BenchApp {
    fn stream_readable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        if s.dir() == Dir::Uni {
            return self.ingest(conn, s);
        }
        let before = (self.perf.requests, self.perf.received);
        self.perf.stream_readable(conn, s);
        self.publish(before.0, before.1);
    }

    fn stream_writable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        let before = (self.perf.requests, self.perf.received);
        self.perf.stream_writable(conn, s);
        self.publish(before.0, before.1);
    }

    fn closed(&mut self, ctx: &mut Ctx<'_>, id: ConnId, reason: &ConnectionError) {
        self.perf.closed(ctx, id, reason);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ingest_check_takes_chunks_and_spots_damage() {
        let want = expected(300);
        assert_eq!(want.len(), INGEST_SIZE);
        assert_eq!(want[0], (300 % 251) as u8);
        let mut c = IngestCheck::default();
        c.take(300, &want[..10]);
        c.take(300, &want[10..]);
        assert!(c.intact());
        let mut short = IngestCheck::default();
        short.take(300, &want[..999]);
        assert!(!short.intact());
        let mut wrong = IngestCheck::default();
        wrong.take(301, want);
        assert!(!wrong.intact());
        let mut long = IngestCheck::default();
        long.take(300, want);
        long.take(300, &want[..1]);
        assert!(!long.intact());
    }
}
