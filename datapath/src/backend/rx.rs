//! The batch a worker receives into: the one copy of a packet on its way in.
//!
//! quinn-proto takes each datagram as an owned `BytesMut`. The batch carves them out of
//! chunks of [`POOL_CHUNK`] octets (`split_to`), so receiving allocates once per chunk, not
//! per packet; a chunk's memory returns to the allocator when quinn-proto and the application
//! have dropped every datagram cut from it.
//!
//! The chunk is small on purpose: a datagram that quinn-proto keeps (out-of-order stream
//! data waiting for a gap to fill) keeps its whole chunk, while quinn-proto counts only the
//! datagram's own size against its receive windows and defragmentation thresholds. A peer
//! that lands one small frame in each chunk makes the worker hold at most `POOL_CHUNK` per
//! frame kept (quinn itself shares one buffer between the segments of a GRO batch, up to
//! 64 KiB).

use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;
use quinn_proto::EcnCodepoint;

use crate::packet::frame::L2;

/// Octets reserved at a time for received datagrams (a datagram larger than this gets a
/// chunk of its own size).
pub const POOL_CHUNK: usize = 16 * 1024;

/// One received UDP datagram.
#[derive(Debug)]
pub struct Datagram {
    pub remote: SocketAddr,
    /// The local address it was sent to (from IP_PKTINFO or the IP header).
    pub local_ip: Option<IpAddr>,
    pub ecn: Option<EcnCodepoint>,
    pub data: BytesMut,
    /// The link layer a reply to `remote` takes (our MAC and the peer's swapped, its VLAN
    /// tag), where the backend builds frames itself (AF_XDP); `None` over kernel sockets.
    /// The worker keeps it per connection ([`crate::backend::Transmit::link`]), and it
    /// travels with a hand-over, so the owner worker can answer a peer whose frames reached
    /// another queue.
    pub link: Option<L2>,
}

/// A reusable batch of received datagrams.
#[derive(Debug)]
pub struct RxBatch {
    items: Vec<Datagram>,
    capacity: usize,
    pool: BytesMut,
}

impl RxBatch {
    /// A batch of at most `capacity` datagrams.
    pub fn new(capacity: usize) -> Self {
        Self {
            items: Vec::with_capacity(capacity),
            capacity: capacity.max(1),
            pool: BytesMut::new(),
        }
    }

    /// How many more datagrams fit.
    pub fn room(&self) -> usize {
        self.capacity - self.items.len()
    }

    /// Whether no more datagram fits.
    pub fn is_full(&self) -> bool {
        self.items.len() >= self.capacity
    }

    /// Number of datagrams in the batch.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether the batch holds no datagram.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Copies `payload` into the batch. Call only while `!self.is_full()`.
    pub fn push(
        &mut self,
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<EcnCodepoint>,
        payload: &[u8],
    ) {
        self.push_linked(remote, local_ip, ecn, None, payload)
    }

    /// [`RxBatch::push`] with the reply link layer of a backend that builds frames.
    pub fn push_linked(
        &mut self,
        remote: SocketAddr,
        local_ip: Option<IpAddr>,
        ecn: Option<EcnCodepoint>,
        link: Option<L2>,
        payload: &[u8],
    ) {
        debug_assert!(!self.is_full());
        if self.pool.capacity() < payload.len() {
            // A fresh chunk (`reserve` could size it from the buffer's history instead).
            self.pool = BytesMut::with_capacity(POOL_CHUNK.max(payload.len()));
        }
        self.pool.extend_from_slice(payload);
        let data = self.pool.split_to(payload.len());
        self.items.push(Datagram {
            remote,
            local_ip,
            ecn,
            data,
            link,
        });
    }

    /// Takes the datagrams out, oldest first, leaving the batch empty and reusable.
    pub fn drain(&mut self) -> std::vec::Drain<'_, Datagram> {
        self.items.drain(..)
    }
}

impl Default for RxBatch {
    /// An empty placeholder batch (allocates nothing).
    fn default() -> Self {
        Self::new(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Datagrams kept by quinn-proto keep their chunk: no chunk is larger than
    /// [`POOL_CHUNK`] (datagrams cut from one chunk lie next to each other in memory).
    #[test]
    fn datagrams_share_chunks_of_at_most_pool_chunk() {
        const LEN: usize = 1200;
        let mut b = RxBatch::new(100);
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        for i in 0..100u8 {
            b.push(a, None, None, &[i; LEN]);
        }
        let kept: Vec<BytesMut> = b.drain().map(|d| d.data).collect();
        let (mut chunks, mut run) = (1, LEN);
        for w in kept.windows(2) {
            if w[0].as_ptr() as usize + LEN == w[1].as_ptr() as usize {
                run += LEN;
            } else {
                chunks += 1;
                run = LEN;
            }
            assert!(run <= POOL_CHUNK, "a chunk of {run} octets");
        }
        assert_eq!(chunks, 100usize.div_ceil(POOL_CHUNK / LEN));
        assert!(kept
            .iter()
            .enumerate()
            .all(|(i, d)| d[..] == [i as u8; LEN]));
    }

    #[test]
    fn push_and_drain_keep_contents_and_order() {
        let mut b = RxBatch::new(3);
        let a: SocketAddr = "127.0.0.1:1".parse().unwrap();
        b.push(a, None, None, b"one");
        b.push(a, None, Some(EcnCodepoint::Ce), &[7u8; 3000]);
        assert_eq!(b.room(), 1);
        b.push(a, None, None, b"");
        assert!(b.is_full());
        let got: Vec<_> = b.drain().collect();
        assert_eq!(&got[0].data[..], b"one");
        assert_eq!(got[1].data.len(), 3000);
        assert_eq!(got[1].ecn, Some(EcnCodepoint::Ce));
        assert!(got[2].data.is_empty());
        assert!(b.is_empty());
        assert_eq!(b.room(), 3);
    }

    #[test]
    fn datagrams_are_independent_buffers() {
        let mut b = RxBatch::new(2);
        let a: SocketAddr = "[::1]:9".parse().unwrap();
        b.push(a, None, None, b"aaaa");
        b.push(a, None, None, b"bbbb");
        let mut got: Vec<_> = b.drain().collect();
        got[0].data[0] = b'x';
        assert_eq!(&got[0].data[..], b"xaaa");
        assert_eq!(&got[1].data[..], b"bbbb");
    }
}
