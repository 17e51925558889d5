//! Connection IDs that name their shard.
//!
//! Every connection ID this endpoint issues carries, in the plaintext layout of QUIC-LB
//! (draft-ietf-quic-load-balancers):
//!
//! ```text
//!  octet 0            octets 1..=S      octet S+1     octets S+2..L
//! +-----+-----------+-----------------+-------------+----------------+
//! | CR  | len - 1   |  server id (S)  | worker idx  |  random nonce  |
//! | 3b  |    5b     |  (optional)     |   1 octet   |  >= 4 octets   |
//! +-----+-----------+-----------------+-------------+----------------+
//! ```
//!
//! * `CR` (config rotation, 0..=6) and the self-described length let a CID-aware L4 balancer
//!   (Katran, a QUIC-LB load balancer) find the server id and route between hosts;
//! * the worker index routes between the shards of one host: the classic-BPF reuseport program
//!   of the UDP backend reads it, and so does [`crate::route`] in user space.
//!
//! [`ShardCidGenerator::validate`] accepts only the CIDs of its own shard, so that a packet of
//! another shard fed to this endpoint by mistake is dropped instead of answered with a
//! stateless reset (which would kill a live connection).

use std::sync::Arc;
use std::time::Duration;

use quinn_proto::{ConnectionId, ConnectionIdGenerator, InvalidCid};
use rand::{rngs::StdRng, RngCore, SeedableRng};

/// Smallest random part of a CID: enough that CIDs are not guessable by off-path attackers.
pub const MIN_NONCE_LEN: usize = 4;
/// Largest CID QUIC v1 allows.
pub const MAX_CID_LEN: usize = 20;
/// Config-rotation value that QUIC-LB reserves for "unroutable"; never used by us.
pub const CR_UNROUTABLE: u8 = 0b111;

/// How this host lays out the connection IDs it issues. Shared, read-only, by every shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CidLayout {
    len: u8,
    config_rotation: u8,
    server_id: Vec<u8>,
    workers: u16,
}

/// A CID layout that cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidLayoutError {
    #[error("config rotation must be 0..=6 (7 means unroutable in QUIC-LB), got {0}")]
    ConfigRotation(u8),
    #[error("between 1 and 256 workers are supported, got {0}")]
    Workers(usize),
    #[error("a {len}-octet CID cannot hold a {sid}-octet server id, the worker index and a {MIN_NONCE_LEN}-octet nonce (max CID length {MAX_CID_LEN})")]
    Length { len: usize, sid: usize },
}

impl CidLayout {
    /// A layout of `len`-octet CIDs for `workers` shards with an optional server id.
    ///
    /// `len` must leave room for octet 0, the server id, the worker octet and at least
    /// [`MIN_NONCE_LEN`] random octets, and be at most [`MAX_CID_LEN`].
    pub fn new(
        len: usize,
        config_rotation: u8,
        server_id: &[u8],
        workers: usize,
    ) -> Result<Self, CidLayoutError> {
        if config_rotation >= CR_UNROUTABLE {
            return Err(CidLayoutError::ConfigRotation(config_rotation));
        }
        if workers == 0 || workers > 256 {
            return Err(CidLayoutError::Workers(workers));
        }
        let min = 1 + server_id.len() + 1 + MIN_NONCE_LEN;
        if len < min || len > MAX_CID_LEN {
            return Err(CidLayoutError::Length {
                len,
                sid: server_id.len(),
            });
        }
        Ok(Self {
            len: len as u8,
            config_rotation,
            server_id: server_id.to_vec(),
            workers: workers as u16,
        })
    }

    /// The default layout: 8-octet CIDs, config rotation 0, no server id.
    pub fn for_workers(workers: usize) -> Result<Self, CidLayoutError> {
        Self::new(8, 0, &[], workers)
    }

    /// Length in octets of every CID of this layout.
    pub fn len(&self) -> usize {
        usize::from(self.len)
    }

    /// Never true: a layout always has a nonzero length (quinn-proto routes by CID).
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Number of shards the worker octet may name.
    pub fn workers(&self) -> usize {
        usize::from(self.workers)
    }

    /// The first octet every CID of this layout starts with.
    pub fn first_octet(&self) -> u8 {
        (self.config_rotation << 5) | (self.len - 1)
    }

    /// Offset of the worker octet inside the CID.
    pub fn worker_offset(&self) -> usize {
        1 + self.server_id.len()
    }

    /// The server id this host writes into its CIDs.
    pub fn server_id(&self) -> &[u8] {
        &self.server_id
    }

    /// Writes a fresh CID for `worker` into `out` (which must be [`Self::len`] octets).
    pub fn write(&self, worker: usize, rng: &mut impl RngCore, out: &mut [u8]) {
        debug_assert!(worker < self.workers());
        debug_assert_eq!(out.len(), self.len());
        out[0] = self.first_octet();
        let w = self.worker_offset();
        out[1..w].copy_from_slice(&self.server_id);
        out[w] = worker as u8;
        rng.fill_bytes(&mut out[w + 1..]);
    }

    /// The worker a CID of this layout names, or `None` when the CID is not one of ours
    /// (wrong length, first octet, server id, or a worker index out of range).
    pub fn decode(&self, cid: &[u8]) -> Option<usize> {
        if cid.len() != self.len() || cid[0] != self.first_octet() {
            return None;
        }
        let w = self.worker_offset();
        if cid[1..w] != self.server_id[..] {
            return None;
        }
        let worker = usize::from(cid[w]);
        (worker < self.workers()).then_some(worker)
    }
}

/// The connection-ID generator of one shard: issues CIDs naming `worker` and validates that
/// a CID belongs to it.
pub struct ShardCidGenerator {
    layout: Arc<CidLayout>,
    worker: usize,
    rng: StdRng,
    lifetime: Option<Duration>,
}

impl ShardCidGenerator {
    /// A generator for shard `worker` of `layout`.
    ///
    /// # Panics
    /// When `worker` is not below `layout.workers()`: a programming error of the engine.
    pub fn new(layout: Arc<CidLayout>, worker: usize) -> Self {
        Self::with_rng(layout, worker, StdRng::from_entropy())
    }

    /// Like [`ShardCidGenerator::new`], drawing the random part of CIDs from `rng` (seeded,
    /// in replayable simulations).
    pub fn with_rng(layout: Arc<CidLayout>, worker: usize, rng: StdRng) -> Self {
        assert!(
            worker < layout.workers(),
            "worker index out of the CID layout"
        );
        Self {
            layout,
            worker,
            rng,
            lifetime: None,
        }
    }

    /// Retire and replace CIDs after `lifetime` (None: keep them for the connection's life).
    pub fn with_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.lifetime = lifetime;
        self
    }
}

impl ConnectionIdGenerator for ShardCidGenerator {
    fn generate_cid(&mut self) -> ConnectionId {
        let mut buf = [0u8; MAX_CID_LEN];
        let out = &mut buf[..self.layout.len()];
        self.layout.write(self.worker, &mut self.rng, out);
        ConnectionId::new(out)
    }

    fn validate(&self, cid: &ConnectionId) -> Result<(), InvalidCid> {
        match self.layout.decode(cid) {
            Some(w) if w == self.worker => Ok(()),
            _ => Err(InvalidCid),
        }
    }

    fn cid_len(&self) -> usize {
        self.layout.len()
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        self.lifetime
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_every_worker() {
        let layout = Arc::new(CidLayout::new(10, 3, &[0xab, 0xcd], 256).unwrap());
        for w in 0..256 {
            let mut g = ShardCidGenerator::new(layout.clone(), w);
            let cid = g.generate_cid();
            assert_eq!(cid.len(), 10);
            assert_eq!(cid[0], (3 << 5) | 9);
            assert_eq!(&cid[1..3], &[0xab, 0xcd]);
            assert_eq!(layout.decode(&cid), Some(w));
            assert!(g.validate(&cid).is_ok());
        }
    }

    #[test]
    fn validate_rejects_other_shards_and_foreign_cids() {
        let layout = Arc::new(CidLayout::for_workers(4).unwrap());
        let g0 = ShardCidGenerator::new(layout.clone(), 0);
        let mut g1 = ShardCidGenerator::new(layout.clone(), 1);
        let other = g1.generate_cid();
        assert!(g0.validate(&other).is_err());
        // Worker index beyond the configured count.
        let mut bad = other.to_vec();
        bad[1] = 7;
        assert_eq!(layout.decode(&bad), None);
        // Wrong first octet (other config rotation).
        let mut bad = other.to_vec();
        bad[0] ^= 0x20;
        assert_eq!(layout.decode(&bad), None);
        // Wrong length.
        assert_eq!(layout.decode(&other[..7]), None);
        assert_eq!(layout.decode(&[]), None);
    }

    #[test]
    fn server_id_must_match() {
        let a = CidLayout::new(9, 0, &[1, 2], 2).unwrap();
        let b = CidLayout::new(9, 0, &[1, 3], 2).unwrap();
        let mut cid = [0u8; 9];
        a.write(1, &mut rand::thread_rng(), &mut cid);
        assert_eq!(a.decode(&cid), Some(1));
        assert_eq!(b.decode(&cid), None);
    }

    #[test]
    fn bad_layouts_are_refused() {
        assert_eq!(
            CidLayout::new(8, 7, &[], 1),
            Err(CidLayoutError::ConfigRotation(7))
        );
        assert_eq!(
            CidLayout::new(8, 0, &[], 0),
            Err(CidLayoutError::Workers(0))
        );
        assert_eq!(
            CidLayout::new(8, 0, &[], 257),
            Err(CidLayoutError::Workers(257))
        );
        assert!(
            CidLayout::new(6, 0, &[], 1).is_ok(),
            "1 + 1 + 4-octet nonce"
        );
        assert!(matches!(
            CidLayout::new(5, 0, &[], 1),
            Err(CidLayoutError::Length { .. })
        ));
        assert!(matches!(
            CidLayout::new(21, 0, &[], 1),
            Err(CidLayoutError::Length { .. })
        ));
        assert!(CidLayout::new(8, 0, &[1, 2], 1).is_ok());
        assert!(matches!(
            CidLayout::new(7, 0, &[1, 2], 1),
            Err(CidLayoutError::Length { .. })
        ));
    }

    #[test]
    fn nonces_differ() {
        let layout = Arc::new(CidLayout::for_workers(1).unwrap());
        let mut g = ShardCidGenerator::new(layout, 0);
        let a = g.generate_cid();
        let b = g.generate_cid();
        assert_ne!(a, b);
    }
}
