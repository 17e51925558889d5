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
/// pauses until the peer reads: with 100 concurrent streams, at most 6.4 MiB per connection,
/// held in at most about twice that ([`read_into`]).
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
            // At most what the buffer has room for: a whole receive window of out-of-order
            // data made readable at once stays in quinn-proto (its flow control holds the
            // peer), not here.
            let room = MAX_BUFFERED - e.out.len();
            let (got, more) = match read_into(conn, s, room, &mut e.out) {
                Ok(read) => read,
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
            };
            self.echoed += got as u64;
            match more {
                More::Finished => e.fin = true,
                More::Blocked if got == 0 => {
                    // Nothing held: no state kept (the next `stream_readable` makes it again).
                    // A stream whose answer the peer stopped still receives its request;
                    // each read of it would otherwise leave an empty entry behind.
                    if e.out.is_empty() {
                        self.forget(id, s);
                    }
                    return;
                }
                // Send what was read, then read on (or wait, blocked).
                More::Blocked | More::Maybe => {}
            }
        }
    }
}

/// Whether a stream may have more to read after [`read_into`].
enum More {
    /// Nothing now: wait for `stream_readable`.
    Blocked,
    /// Read to its end.
    Finished,
    /// The room was filled.
    Maybe,
}

/// Reads up to `room` octets of `s` into `out` ([`Gather`]).
fn read_into(
    conn: &mut Conn<'_>,
    s: StreamId,
    room: usize,
    out: &mut Outbox,
) -> Result<(usize, More), StreamError> {
    let mut got = 0;
    let mut gather = Gather::default();
    let more = loop {
        if got >= room {
            break More::Maybe;
        }
        match conn.read_chunk(s, room - got)? {
            Chunk::Data(b) => {
                got += b.len();
                gather.push(b, out);
            }
            Chunk::Finished => break More::Finished,
            Chunk::Blocked => break More::Blocked,
        }
    };
    gather.finish(out);
    Ok((got, more))
}

/// Queues received chunks that wait for the peer to read them back. A received chunk is a
/// slice of the receive buffer its packet arrived in, and keeps that buffer's share of the
/// packet and more; a peer sending one-octet frames, one per packet, would make each
/// octet hold a packet's worth of memory and an allocation of its own. So short chunks
/// (under [`xdp_quic::conn::DETACH_BELOW`] octets) are copied, gathered into buffers of
/// their own of at least that size; long ones are kept as they are ([`xdp_quic::detach`]).
/// What waits then holds at most about twice its octets, in few allocations.
#[derive(Default)]
struct Gather {
    short: bytes::BytesMut,
}

impl Gather {
    fn push(&mut self, b: Bytes, out: &mut Outbox) {
        if b.len() >= xdp_quic::conn::DETACH_BELOW {
            out.push(std::mem::take(&mut self.short).freeze());
            out.push(b);
            return;
        }
        self.short.extend_from_slice(&b);
        if self.short.len() >= xdp_quic::conn::DETACH_BELOW {
            out.push(std::mem::take(&mut self.short).freeze());
        }
    }

    /// Queues what is gathered.
    fn finish(self, out: &mut Outbox) {
        out.push(self.short.freeze());
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
        // It waits in quinn-proto's send queue (octets bounded) until it goes out: in a
        // buffer of its own, not holding its receive buffer.
        let _ = conn.send_datagram(xdp_quic::detach(data));
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Short chunks are copied out of their receive buffer and gathered; a long one stays a
    /// slice of it; the order is kept.
    #[test]
    fn short_chunks_are_gathered_out_of_their_receive_buffer() {
        let received = Bytes::from((0..16 * 1024).map(|i| i as u8).collect::<Vec<u8>>());
        let inside = |b: &Bytes| received.as_ptr_range().contains(&b.as_ptr());
        let mut out = Outbox::default();
        let mut gather = Gather::default();
        // 10,000 one-octet chunks (one per packet, as a hostile peer would send them),
        // then a long one, then a short one.
        for i in 0..10_000 {
            gather.push(received.slice(i..i + 1), &mut out);
        }
        let long = received.slice(0..xdp_quic::conn::DETACH_BELOW);
        gather.push(long.clone(), &mut out);
        gather.push(received.slice(5..8), &mut out);
        gather.finish(&mut out);
        let chunks = out.chunks().cloned().collect::<Vec<_>>();
        let sizes = chunks.iter().map(Bytes::len).collect::<Vec<_>>();
        // 8,192 gathered, the remaining 1,808 before the long one, the long one, 3.
        assert_eq!(sizes, [8192, 1808, 8192, 3]);
        assert!(!inside(&chunks[0]) && !inside(&chunks[1]) && !inside(&chunks[3]));
        assert_eq!(
            chunks[2].as_ptr(),
            long.as_ptr(),
            "a long chunk is not copied"
        );
        let all: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        let mut want: Vec<u8> = received[..10_000].to_vec();
        want.extend_from_slice(&long);
        want.extend_from_slice(&received[5..8]);
        assert_eq!(all, want);
        assert_eq!(out.len(), want.len());
    }
}
