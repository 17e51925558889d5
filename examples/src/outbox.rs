//! Writing with back-pressure: what a stream could not take yet waits here.

use std::collections::VecDeque;

use bytes::Bytes;
use xdp_quic::{Conn, StreamError, StreamId};

/// Data queued for one stream, in order.
#[derive(Debug, Default)]
pub struct Outbox {
    queue: VecDeque<Bytes>,
    queued: usize,
}

impl Outbox {
    /// Appends `data` (an empty chunk adds nothing).
    pub fn push(&mut self, data: Bytes) {
        if data.is_empty() {
            return;
        }
        self.queued += data.len();
        self.queue.push_back(data);
    }

    /// Octets waiting.
    pub fn len(&self) -> usize {
        self.queued
    }

    /// The chunks waiting, in order.
    pub fn chunks(&self) -> impl Iterator<Item = &Bytes> {
        self.queue.iter()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.queued == 0
    }

    /// Writes as much as the stream takes now, without copying; `Ok(true)` when everything
    /// went out.
    pub fn flush(&mut self, conn: &mut Conn<'_>, s: StreamId) -> Result<bool, StreamError> {
        while let Some(front) = self.queue.front_mut() {
            let n = conn.write_chunk(s, front)?;
            if n == 0 {
                return Ok(false);
            }
            self.queued -= n;
            if front.is_empty() {
                self.queue.pop_front();
            }
        }
        Ok(true)
    }
}
