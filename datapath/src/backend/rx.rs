//! The batch a worker receives into: the one copy of a packet on its way in.
//!
//! quinn-proto takes each datagram as an owned `BytesMut`. The batch carves them out of
//! chunks of [`POOL_CHUNK`] octets (`split_to`), so receiving allocates nothing per packet:
//! a chunk serves about ten full-sized datagrams, and once quinn-proto and the application
//! have dropped every datagram cut from it, the batch takes it back for the next ones
//! (`BytesMut::try_reclaim`, which succeeds only on the last handle of a buffer).
//!
//! A datagram that quinn-proto keeps (out-of-order stream data waiting for a gap to fill)
//! keeps its whole chunk. quinn-proto's receive windows count stream octets, and its check
//! for buffers that hold far more than their data (which then copies the data out) counts
//! each kept frame at its datagram's size, not its chunk's. A peer that lands one small
//! frame in each chunk, with other datagrams filling the chunks in between, could so make a
//! connection hold 16 KiB per frame kept, far beyond its window. So the batch keeps at most
//! `chunk_limit` chunks ([`DEFAULT_CHUNK_LIMIT`]: 16 MiB a worker), held or free: past that,
//! while every chunk it has is still held, each datagram gets a buffer of its own size
//! (counted by [`RxBatch::own_buffers`]), which quinn-proto's check then measures truly.
//! The worker's memory behind received data is then at most the limit's chunks plus what
//! quinn-proto and the application count.
//!
//! Free chunks found beyond [`SPARE`] are freed; a batch that stops receiving keeps what it
//! had (at most its limit) until it receives again.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};

use bytes::BytesMut;
use quinn_proto::EcnCodepoint;

use crate::packet::frame::L2;

/// Octets reserved at a time for received datagrams (a datagram larger than this gets a
/// buffer of its own size).
pub const POOL_CHUNK: usize = 16 * 1024;

/// Chunks a batch keeps at most by default ([`RxBatch::with_chunk_limit`]): 16 MiB.
pub const DEFAULT_CHUNK_LIMIT: usize = 1024;

/// Chunks looked at for one taken back, oldest first, before a fresh one is allocated.
const PROBES: usize = 4;

/// Free chunks kept for reuse at most: those found beyond are freed.
const SPARE: usize = 16;

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
    /// The chunk datagrams are being cut from (`None` before the first, and while the limit
    /// is reached with every chunk held).
    pool: Option<BytesMut>,
    /// The other chunks datagrams were cut from, each by the empty end of it the batch kept,
    /// oldest first: held by datagrams still alive, or free but not looked at since.
    chunks: VecDeque<BytesMut>,
    /// Chunks found free (whole again), at most [`SPARE`].
    free: Vec<BytesMut>,
    chunk_limit: usize,
    own_buffers: u64,
}

impl RxBatch {
    /// A batch of at most `capacity` datagrams, keeping at most [`DEFAULT_CHUNK_LIMIT`]
    /// chunks.
    pub fn new(capacity: usize) -> Self {
        Self::with_chunk_limit(capacity, DEFAULT_CHUNK_LIMIT)
    }

    /// A batch of at most `capacity` datagrams that keeps at most `chunk_limit` (at least 1)
    /// chunks of [`POOL_CHUNK`] octets: past it, datagrams that find every chunk held get
    /// buffers of their own (see the module's documentation).
    pub fn with_chunk_limit(capacity: usize, chunk_limit: usize) -> Self {
        Self {
            items: Vec::with_capacity(capacity),
            capacity: capacity.max(1),
            pool: None,
            chunks: VecDeque::new(),
            free: Vec::new(),
            chunk_limit: chunk_limit.max(1),
            own_buffers: 0,
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

    /// The chunks the batch keeps, held by datagrams or free (at most its chunk limit).
    pub fn chunks(&self) -> usize {
        self.chunks.len() + self.free.len() + usize::from(self.pool.is_some())
    }

    /// Datagrams given a buffer of their own because every chunk was held at the limit
    /// (since the batch was made).
    pub fn own_buffers(&self) -> u64 {
        self.own_buffers
    }

    /// Lets go of every datagram and chunk (those still held elsewhere go with their last
    /// holder); [`RxBatch::own_buffers`] keeps its count. For a worker that receives no more.
    pub fn release(&mut self) {
        self.items = Vec::new();
        self.pool = None;
        self.chunks = VecDeque::new();
        self.free = Vec::new();
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
        let data = self.copy_in(payload);
        self.items.push(Datagram {
            remote,
            local_ip,
            ecn,
            data,
            link,
        });
    }

    /// The one copy: into the current chunk, or a buffer of its own.
    fn copy_in(&mut self, payload: &[u8]) -> BytesMut {
        if payload.len() > POOL_CHUNK {
            // No chunk holds it (an IP-fragmented datagram; the worker drops those).
            return BytesMut::from(payload);
        }
        if self
            .pool
            .as_ref()
            .is_none_or(|p| p.capacity() < payload.len())
        {
            self.next_chunk();
        }
        match &mut self.pool {
            Some(pool) => {
                pool.extend_from_slice(payload);
                pool.split_to(payload.len())
            }
            None => {
                self.own_buffers += 1;
                BytesMut::from(payload)
            }
        }
    }

    /// Puts the current chunk aside and takes the next: a free one, else a fresh one while
    /// under the limit, else none.
    fn next_chunk(&mut self) {
        if let Some(used) = self.pool.take() {
            self.chunks.push_back(used);
        }
        // Datagrams mostly end in the order they came: the oldest chunks first. A held one
        // goes to the back, so that one a connection keeps does not hide the others. A few
        // each time, whatever the free list holds, so that the chunks a burst left are found
        // and, beyond the spares, freed.
        for _ in 0..self.chunks.len().min(PROBES) {
            let Some(mut chunk) = self.chunks.pop_front() else {
                break;
            };
            // Succeeds only on the last handle of the chunk's buffer, then makes the whole
            // buffer this handle's again.
            if chunk.try_reclaim(POOL_CHUNK) {
                if self.free.len() < SPARE {
                    self.free.push(chunk);
                }
            } else {
                self.chunks.push_back(chunk);
            }
        }
        self.pool = match self.free.pop() {
            Some(chunk) => Some(chunk),
            None if self.chunks.len() < self.chunk_limit => {
                Some(BytesMut::with_capacity(POOL_CHUNK))
            }
            None => None,
        };
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

    fn addr() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    /// Chunks whose datagrams were all dropped serve again: rounds of datagrams that end
    /// before the next round come never make the batch keep more than a few chunks (without
    /// reuse, it would take a fresh one per round up to its limit).
    #[test]
    fn chunks_serve_again_once_their_datagrams_are_dropped() {
        let mut b = RxBatch::with_chunk_limit(64, 1000);
        for round in 0..500u32 {
            for i in 0..40u32 {
                b.push(
                    addr(),
                    None,
                    None,
                    &(round * 64 + i).to_be_bytes().repeat(300),
                );
            }
            for (i, d) in b.drain().enumerate() {
                assert_eq!(&d.data[..4], (round * 64 + i as u32).to_be_bytes());
                assert_eq!(d.data.len(), 1200);
            }
            assert!(b.chunks() <= 5, "round {round}: {} chunks", b.chunks());
        }
        assert_eq!(b.own_buffers(), 0);
    }

    /// One datagram kept per chunk, the rest dropped (what a peer leaving one small
    /// out-of-order frame per chunk would do): the batch takes fresh chunks up to its limit,
    /// then gives each datagram a buffer of its own, and goes back to chunks once the kept
    /// datagrams are dropped.
    #[test]
    fn kept_datagrams_hold_at_most_the_chunk_limit() {
        const LIMIT: usize = 8;
        const LEN: usize = POOL_CHUNK / 4;
        let mut b = RxBatch::with_chunk_limit(4, LIMIT);
        let mut kept = Vec::new();
        for round in 0..20u8 {
            for i in 0..4u8 {
                b.push(
                    addr(),
                    None,
                    None,
                    &[round.wrapping_mul(4).wrapping_add(i); LEN],
                );
            }
            kept.push(b.drain().next().expect("four came").data);
            assert!(b.chunks() <= LIMIT, "round {round}: {} chunks", b.chunks());
            // Rounds past the limit find every chunk held: 4 buffers of their own each.
            let past = u64::from(round + 1).saturating_sub(LIMIT as u64);
            assert_eq!(b.own_buffers(), past * 4, "round {round}");
        }
        for (round, d) in kept.iter().enumerate() {
            assert_eq!(d[..], [(round as u8) * 4; LEN], "round {round}");
        }
        // Once the kept datagrams go, the chunks serve again.
        drop(kept);
        let before = b.own_buffers();
        for _ in 0..20 {
            for i in 0..4u8 {
                b.push(addr(), None, None, &[i; LEN]);
            }
            b.drain().for_each(drop);
        }
        assert_eq!(b.own_buffers(), before);
        assert!(b.chunks() <= LIMIT);
    }

    /// After a burst that held many chunks at once, the free ones beyond a few spares are
    /// freed as traffic goes on.
    #[test]
    fn free_chunks_beyond_a_few_spares_are_freed_as_traffic_goes_on() {
        let mut b = RxBatch::with_chunk_limit(1024, 1000);
        let burst: Vec<BytesMut> = (0..1000)
            .map(|_| {
                b.push(addr(), None, None, &[1u8; 1400]);
                b.drain().next().expect("one came").data
            })
            .collect();
        let peak = b.chunks();
        assert!(
            peak >= 1000 * 1400 / POOL_CHUNK,
            "{peak} chunks for the burst"
        );
        drop(burst);
        for _ in 0..2000 {
            b.push(addr(), None, None, &[2u8; 1400]);
            b.drain().for_each(drop);
        }
        assert!(
            b.chunks() <= SPARE + PROBES + 1,
            "{} chunks kept",
            b.chunks()
        );
        assert_eq!(b.own_buffers(), 0);
    }

    /// A datagram larger than a chunk gets a buffer of its own and takes no chunk.
    #[test]
    fn a_datagram_larger_than_a_chunk_takes_none() {
        let mut b = RxBatch::with_chunk_limit(2, 1);
        b.push(addr(), None, None, &[3u8; POOL_CHUNK + 1]);
        assert_eq!(b.chunks(), 0);
        assert_eq!(b.own_buffers(), 0);
        let d = b.drain().next().expect("it came");
        assert_eq!(d.data[..], [3u8; POOL_CHUNK + 1]);
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
