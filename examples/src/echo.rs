//! Echo: every bidirectional stream is written back to its sender, every datagram too.

use std::collections::HashMap;

use bytes::Bytes;
use xdp_quic::{
    Chunk, Conn, ConnId, ConnectionError, Ctx, Handler, ReadStatus, StreamError, StreamId, VarInt,
};

use crate::outbox::Outbox;

/// ALPN of the echo protocol.
pub const ALPN: &[u8] = b"echo";

/// Octets buffered per stream (what the stream could not take back yet) before reading
/// pauses until the peer reads: with 100 concurrent streams, at most 6.4 MiB per connection.
const MAX_BUFFERED: usize = 64 * 1024;

#[derive(Default)]
struct Echoing {
    out: Outbox,
    fin: bool,
}

/// The echo server's handler (one per worker).
#[derive(Default)]
pub struct EchoServer {
    /// Per connection, its streams being echoed: a connection's go at once when it ends.
    streams: HashMap<ConnId, HashMap<StreamId, Echoing>>,
    /// Octets echoed so far on this worker.
    pub echoed: u64,
    /// Datagrams echoed so far on this worker.
    pub datagrams: u64,
    /// Connections whose handshake completed on this worker.
    pub connections: u64,
}

impl EchoServer {
    /// Streams this worker holds state for (being echoed).
    pub fn streams_held(&self) -> usize {
        self.streams.values().map(HashMap::len).sum()
    }

    fn forget(&mut self, conn: ConnId, s: StreamId) {
        if let Some(streams) = self.streams.get_mut(&conn) {
            streams.remove(&s);
        }
    }

    fn pump(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        let id = conn.id();
        let e = self.streams.entry(id).or_default().entry(s).or_default();
        loop {
            match e.out.flush(conn, s) {
                Ok(true) => {}
                Ok(false) => return,
                Err(_) => {
                    self.forget(id, s);
                    return;
                }
            }
            if e.fin {
                let _ = conn.finish(s);
                self.forget(id, s);
                return;
            }
            if e.out.len() >= MAX_BUFFERED {
                return;
            }
            let mut got = 0u64;
            // At most what the buffer has room for: a whole receive window of out-of-order
            // data made readable at once stays in quinn-proto (its flow control holds the
            // peer), not here.
            match conn.read_chunk(s, MAX_BUFFERED - e.out.len()) {
                Ok(Chunk::Data(b)) => {
                    got = b.len() as u64;
                    e.out.push(b);
                }
                Ok(Chunk::Finished) => e.fin = true,
                Ok(Chunk::Blocked) => return,
                Err(StreamError::Reset(code)) => {
                    // The peer abandoned its side: abandon ours.
                    let _ = conn.reset(s, code);
                    self.forget(id, s);
                    return;
                }
                Err(_) => {
                    // Read to its end already (a spurious readable call): nothing to do.
                    self.forget(id, s);
                    return;
                }
            }
            self.echoed += got;
        }
    }
}

impl Handler for EchoServer {
    fn connected(&mut self, _conn: &mut Conn<'_>) {
        self.connections += 1;
    }

    fn stream_readable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        if s.dir() == xdp_quic::Dir::Uni {
            let _ = conn.read(s, |_| {});
            return;
        }
        self.pump(conn, s);
    }

    fn stream_writable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        if self
            .streams
            .get(&conn.id())
            .is_some_and(|m| m.contains_key(&s))
        {
            self.pump(conn, s);
        }
    }

    fn stream_stopped(&mut self, conn: &mut Conn<'_>, s: StreamId, _code: VarInt) {
        // The engine resets it; what was left to echo goes.
        self.forget(conn.id(), s);
    }

    fn datagram(&mut self, conn: &mut Conn<'_>, data: Bytes) {
        self.datagrams += 1;
        let _ = conn.send_datagram(data);
    }

    fn closed(&mut self, _ctx: &mut Ctx<'_>, id: ConnId, _reason: &ConnectionError) {
        self.streams.remove(&id);
    }
}

struct Sent {
    index: usize,
    out: Outbox,
    checked: usize,
}

/// An echo client: one connection, one stream per payload (all in parallel), each checked
/// octet for octet against what comes back; datagrams sent once connected.
pub struct EchoClient {
    remote: std::net::SocketAddr,
    server_name: String,
    payloads: Vec<Bytes>,
    datagrams: Vec<Bytes>,
    wait_datagrams: usize,
    streams: HashMap<StreamId, Sent>,
    conn: Option<ConnId>,
    /// Per payload: `Some(true)` echoed intact, `Some(false)` mismatch or error.
    pub results: Vec<Option<bool>>,
    /// Datagrams echoed back.
    pub datagrams_back: usize,
    /// Why the connection ended, if not by our own close.
    pub error: Option<String>,
}

impl EchoClient {
    /// Echoes `payloads` (one stream each) and `datagrams`; waits for at least
    /// `wait_datagrams` of the datagrams to come back (they are unreliable) before closing.
    pub fn new(
        remote: std::net::SocketAddr,
        server_name: &str,
        payloads: Vec<Bytes>,
        datagrams: Vec<Bytes>,
        wait_datagrams: usize,
    ) -> Self {
        let n = payloads.len();
        Self {
            remote,
            server_name: server_name.into(),
            payloads,
            datagrams,
            wait_datagrams,
            streams: HashMap::new(),
            conn: None,
            results: vec![None; n],
            datagrams_back: 0,
            error: None,
        }
    }

    /// Connects (post it to the worker once the engine runs).
    pub fn start(&mut self, ctx: &mut Ctx<'_>) {
        match ctx.connect(self.remote, &self.server_name) {
            Ok(id) => self.conn = Some(id),
            Err(e) => {
                self.error = Some(e.to_string());
                ctx.stop_worker();
            }
        }
    }

    /// The connection, once started.
    pub fn conn(&self) -> Option<ConnId> {
        self.conn
    }

    /// Whether every payload came back intact.
    pub fn all_ok(&self) -> bool {
        self.results.iter().all(|r| *r == Some(true))
    }

    fn done(&self) -> bool {
        self.results.iter().all(Option::is_some) && self.datagrams_back >= self.wait_datagrams
    }

    fn open_streams(&mut self, conn: &mut Conn<'_>) {
        for index in 0..self.payloads.len() {
            if self.results[index].is_some() || self.streams.values().any(|s| s.index == index) {
                continue;
            }
            let Some(s) = conn.open_bi() else {
                return; // streams_available calls again
            };
            let mut out = Outbox::default();
            out.push(self.payloads[index].clone());
            self.streams.insert(
                s,
                Sent {
                    index,
                    out,
                    checked: 0,
                },
            );
            self.send(conn, s);
        }
    }

    fn send(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        let Some(st) = self.streams.get_mut(&s) else {
            return;
        };
        match st.out.flush(conn, s) {
            Ok(true) => {
                let _ = conn.finish(s);
            }
            Ok(false) => {}
            Err(_) => self.record(conn, s, false),
        }
    }

    fn record(&mut self, conn: &mut Conn<'_>, s: StreamId, ok: bool) {
        if let Some(st) = self.streams.remove(&s) {
            self.results[st.index] = Some(ok);
        }
        if self.done() {
            conn.close(VarInt::from_u32(0), b"done");
        }
    }
}

impl Handler for EchoClient {
    fn connected(&mut self, conn: &mut Conn<'_>) {
        for d in self.datagrams.clone() {
            let _ = conn.send_datagram(d);
        }
        self.open_streams(conn);
        if self.done() {
            conn.close(VarInt::from_u32(0), b"done");
        }
    }

    fn streams_available(&mut self, conn: &mut Conn<'_>) {
        self.open_streams(conn);
    }

    fn stream_writable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        self.send(conn, s);
    }

    fn stream_readable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        let Some(st) = self.streams.get_mut(&s) else {
            return;
        };
        let expected = &self.payloads[st.index];
        let mut intact = true;
        let status = conn.read(s, |b| {
            let end = st.checked + b.len();
            intact &= end <= expected.len() && expected[st.checked..end] == b[..];
            st.checked = end;
        });
        match status {
            _ if !intact => self.record(conn, s, false),
            Ok(ReadStatus::Finished) => {
                let ok = st.checked == expected.len();
                self.record(conn, s, ok)
            }
            Ok(ReadStatus::Blocked) => {}
            Err(_) => self.record(conn, s, false),
        }
    }

    fn datagram(&mut self, conn: &mut Conn<'_>, data: Bytes) {
        if self.datagrams.contains(&data) {
            self.datagrams_back += 1;
        }
        if self.done() {
            conn.close(VarInt::from_u32(0), b"done");
        }
    }

    fn closed(&mut self, ctx: &mut Ctx<'_>, _id: ConnId, reason: &ConnectionError) {
        if !matches!(reason, ConnectionError::LocallyClosed) {
            self.error = Some(reason.to_string());
        }
        for r in &mut self.results {
            r.get_or_insert(false);
        }
        ctx.stop_worker();
    }
}
