//! An in-memory network with a virtual clock: the deterministic backend for tests.
//!
//! Addresses are bound by groups of backends (like an SO_REUSEPORT group); the network picks
//! the member that receives a datagram by a [`MemSteering`] policy, so tests can reproduce
//! the kernel's hash, the CID steering program, or a deliberately wrong choice (to exercise
//! hand-over). Time only moves when the test moves it ([`MemNetwork::advance_to`]); every
//! datagram takes the configured one-way latency. An impairment hook can drop or corrupt
//! datagrams in flight.

use std::collections::{HashMap, VecDeque};
use std::hash::{Hash, Hasher};
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use quinn_proto::EcnCodepoint;

use super::{Backend, RxBatch, SendError, Transmit};
use crate::cid::CidLayout;
use crate::packet::frame::L2;
use crate::waker::Waker;

/// How a group picks the member that receives a datagram.
#[derive(Debug, Clone)]
pub enum MemSteering {
    /// A hash of the 4-tuple (the kernel's reuseport default).
    Hash,
    /// The worker octet of a short header's CID, else the hash (the UDP backend's program).
    Cid(Arc<CidLayout>),
    /// Always this member (to force misrouting in tests).
    Fixed(usize),
}

/// A datagram in flight.
///
/// The network also plays a link layer, so that what the AF_XDP path does with MAC
/// addresses can be tested here: every address has a MAC ([`mac_of`]), a packet carries its
/// sender's (`from_mac`, which an injected packet may forge), the receiver gets the reply
/// link layer in [`crate::backend::Datagram::link`], and `link` is what the sender's
/// transmit asked for.
#[derive(Debug, Clone)]
pub struct MemPacket {
    pub from: SocketAddr,
    pub to: SocketAddr,
    pub ecn: Option<EcnCodepoint>,
    pub data: Vec<u8>,
    /// The sender's MAC address.
    pub from_mac: [u8; 6],
    /// The link layer the sender's transmit named ([`crate::backend::Transmit::link`]).
    pub link: Option<L2>,
    deliver_at: Instant,
}

/// The MAC address the in-memory network gives `addr`'s host (locally administered).
pub fn mac_of(addr: SocketAddr) -> [u8; 6] {
    let h = mix(match addr.ip() {
        std::net::IpAddr::V4(ip) => u64::from(u32::from(ip)),
        std::net::IpAddr::V6(ip) => {
            let v = u128::from(ip);
            mix(v as u64) ^ (v >> 64) as u64
        }
    });
    let b = h.to_be_bytes();
    [0x02, b[1], b[2], b[3], b[4], b[5]]
}

/// What the impairment hook decides for a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Deliver,
    Drop,
}

type Impairment = Box<dyn FnMut(&mut MemPacket) -> Verdict + Send>;

struct Group {
    inboxes: Vec<VecDeque<MemPacket>>,
    steering: MemSteering,
}

struct Net {
    /// When the network was made (virtual time) and the steps it has seen: see
    /// [`MemNetwork::count_step`].
    began: Instant,
    steps: u64,
    now: Instant,
    latency: Duration,
    groups: HashMap<SocketAddr, Group>,
    impairment: Option<Impairment>,
    stats: MemStats,
}

/// Counts of the network itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemStats {
    /// Datagrams put in an inbox.
    pub delivered: u64,
    /// Datagrams the impairment hook dropped.
    pub impaired: u64,
    /// Datagrams to an address nobody bound.
    pub unroutable: u64,
}

/// The shared network. Cheap to clone.
///
/// Every network has a seed: `XDPQUIC_SEED` from the environment (a number, or `random` for
/// a fresh one each run, to explore), else [`DEFAULT_SEED`], so that a test run is the same
/// run every time. Engines bound to it through [`crate::testing::Node`] draw all their
/// randomness from it, so a run replays; when a test panics, the seed is printed so the
/// failure can be replayed.
#[derive(Clone)]
pub struct MemNetwork {
    net: Arc<Mutex<Net>>,
    seed: Arc<Seed>,
}

/// The most virtual time one network's simulation runs ([`MemNetwork::count_step`]).
pub const MAX_VIRTUAL_TIME: Duration = Duration::from_secs(4 * 3600);
/// The most steps one network's simulation takes ([`MemNetwork::count_step`]).
pub const MAX_STEPS: u64 = 50_000_000;

/// The seed of networks made without `XDPQUIC_SEED`.
pub const DEFAULT_SEED: u64 = 0x0005_eed0_0f5e_ed00;

/// The seed of a network; prints itself if the test panics while it lives.
struct Seed(u64);

impl Drop for Seed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "simulation seed {0}: replay this run with XDPQUIC_SEED={0}",
                self.0
            );
        }
    }
}

/// One step of the SplitMix64 generator: mixes `x` into a well-spread 64-bit value.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl MemNetwork {
    /// A network whose datagrams take `latency` one way, seeded from `XDPQUIC_SEED` (a
    /// number, or `random`), else with [`DEFAULT_SEED`].
    pub fn new(latency: Duration) -> Self {
        let seed = match std::env::var("XDPQUIC_SEED") {
            Ok(s) if s.trim() == "random" => rand::random(),
            Ok(s) => s.trim().parse().unwrap_or_else(|_| {
                panic!("XDPQUIC_SEED={s:?} is neither a 64-bit number nor `random`")
            }),
            Err(_) => DEFAULT_SEED,
        };
        Self::with_seed(latency, seed)
    }

    /// A network whose datagrams take `latency` one way, with seed `seed`.
    pub fn with_seed(latency: Duration, seed: u64) -> Self {
        Self {
            net: Arc::new(Mutex::new(Net {
                began: Instant::now(),
                steps: 0,
                now: Instant::now(),
                latency,
                groups: HashMap::new(),
                impairment: None,
                stats: MemStats::default(),
            })),
            seed: Arc::new(Seed(seed)),
        }
    }

    /// The seed of this network.
    pub fn seed(&self) -> u64 {
        self.seed.0
    }

    /// The seed of whatever binds `addr`: derived from the network's seed and the address,
    /// so each node draws its own numbers, the same ones on every replay.
    pub fn seed_for(&self, addr: SocketAddr) -> u64 {
        let mut h = mix(self.seed.0);
        match addr.ip() {
            std::net::IpAddr::V4(ip) => h = mix(h ^ u64::from(u32::from(ip))),
            std::net::IpAddr::V6(ip) => {
                let v = u128::from(ip);
                h = mix(mix(h ^ (v as u64)) ^ ((v >> 64) as u64));
            }
        }
        mix(h ^ u64::from(addr.port()))
    }

    fn lock(&self) -> MutexGuard<'_, Net> {
        self.net.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The virtual time.
    pub fn now(&self) -> Instant {
        self.lock().now
    }

    /// Counts one step of a simulation on this network ([`crate::testing::step`]) and
    /// panics, printing the seed, once it has run [`MAX_VIRTUAL_TIME`] of virtual time or
    /// [`MAX_STEPS`] steps: the hang guard of every loop that steps until a condition holds,
    /// so that one whose condition never comes fails with its seed instead of running on.
    pub fn count_step(&self) {
        let mut n = self.lock();
        n.steps += 1;
        let (ran, steps) = (n.now - n.began, n.steps);
        drop(n);
        assert!(
            ran <= MAX_VIRTUAL_TIME && steps <= MAX_STEPS,
            "the simulation ran {ran:?} of virtual time in {steps} steps, past its limits \
             ({MAX_VIRTUAL_TIME:?}, {MAX_STEPS} steps): a condition it waits on never came \
             (hang guard)"
        );
    }

    /// Moves the clock forward to `t` (never backward).
    pub fn advance_to(&self, t: Instant) {
        let mut n = self.lock();
        n.now = n.now.max(t);
    }

    /// The earliest time a datagram still in flight arrives (after now). Datagrams that have
    /// arrived already wait for their receiver, which reports them as work of its own.
    pub fn next_delivery(&self) -> Option<Instant> {
        let n = self.lock();
        let now = n.now;
        n.groups
            .values()
            .flat_map(|g| {
                g.inboxes
                    .iter()
                    .flat_map(|q| q.iter().map(|p| p.deliver_at))
            })
            .filter(|&t| t > now)
            .min()
    }

    /// Binds `members` backends to `addr`. Fails if `addr` is bound already.
    pub fn bind(
        &self,
        addr: SocketAddr,
        members: usize,
        steering: MemSteering,
    ) -> io::Result<Vec<MemBackend>> {
        let mut n = self.lock();
        if n.groups.contains_key(&addr) {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{addr} is bound already"),
            ));
        }
        n.groups.insert(
            addr,
            Group {
                inboxes: (0..members).map(|_| VecDeque::new()).collect(),
                steering,
            },
        );
        Ok((0..members)
            .map(|member| MemBackend {
                net: self.clone(),
                addr,
                member,
                max_segments: 4,
                recv_calls: 0,
            })
            .collect())
    }

    /// Changes how `addr`'s group picks members.
    pub fn set_steering(&self, addr: SocketAddr, steering: MemSteering) {
        if let Some(g) = self.lock().groups.get_mut(&addr) {
            g.steering = steering;
        }
    }

    /// Sets the hook that sees every datagram sent from now on.
    pub fn set_impairment(&self, f: impl FnMut(&mut MemPacket) -> Verdict + Send + 'static) {
        self.lock().impairment = Some(Box::new(f));
    }

    /// Puts a raw datagram on the wire, as if `from` had sent it (hostile input, spoofing).
    pub fn inject(&self, from: SocketAddr, to: SocketAddr, data: &[u8]) {
        self.inject_from_mac(from, mac_of(from), to, data)
    }

    /// Like [`MemNetwork::inject`], from a forged MAC address (an on-link spoofer).
    pub fn inject_from_mac(&self, from: SocketAddr, mac: [u8; 6], to: SocketAddr, data: &[u8]) {
        let mut n = self.lock();
        let p = MemPacket {
            from,
            to,
            ecn: None,
            data: data.to_vec(),
            from_mac: mac,
            link: None,
            deliver_at: n.now + n.latency,
        };
        n.deliver(p);
    }

    /// The network's own counts.
    pub fn stats(&self) -> MemStats {
        self.lock().stats
    }

    /// Moves `backend` to a new local address (a NAT rebinding): later datagrams it sends come
    /// from `to`, and datagrams to `to` reach it.
    /// The old address is released when `backend` was its only member.
    pub fn rebind(&self, backend: &mut MemBackend, to: SocketAddr) -> io::Result<()> {
        let mut fresh = self.bind(to, 1, MemSteering::Hash)?;
        let old = std::mem::replace(backend, fresh.pop().expect("one member"));
        let mut n = self.lock();
        if n.groups
            .get(&old.addr)
            .is_some_and(|g| g.inboxes.len() == 1)
        {
            n.groups.remove(&old.addr);
        }
        Ok(())
    }
}

impl Net {
    fn deliver(&mut self, mut p: MemPacket) {
        if let Some(hook) = self.impairment.as_mut() {
            if hook(&mut p) == Verdict::Drop {
                self.stats.impaired += 1;
                return;
            }
        }
        let Some(group) = self.groups.get_mut(&p.to) else {
            self.stats.unroutable += 1;
            return;
        };
        let n = group.inboxes.len();
        let member = match &group.steering {
            MemSteering::Fixed(m) => *m % n,
            MemSteering::Hash => hash_member(&p, n),
            MemSteering::Cid(layout) => {
                cid_member(layout, &p, n).unwrap_or_else(|| hash_member(&p, n))
            }
        };
        group.inboxes[member].push_back(p);
        self.stats.delivered += 1;
    }
}

fn hash_member(p: &MemPacket, n: usize) -> usize {
    let mut h = std::hash::DefaultHasher::new();
    (p.from, p.to).hash(&mut h);
    (h.finish() % n as u64) as usize
}

/// What the UDP backend's classic-BPF program computes.
fn cid_member(layout: &CidLayout, p: &MemPacket, n: usize) -> Option<usize> {
    let first = *p.data.first()?;
    if first & 0x80 != 0 || *p.data.get(1)? != layout.first_octet() {
        return None;
    }
    let w = usize::from(*p.data.get(1 + layout.worker_offset())?);
    (w < n).then_some(w)
}

/// One member of a bound group.
pub struct MemBackend {
    net: MemNetwork,
    addr: SocketAddr,
    member: usize,
    max_segments: usize,
    recv_calls: u64,
}

impl MemBackend {
    /// How many times [`Backend::recv`] was called: how often the worker looked for datagrams.
    pub fn recv_calls(&self) -> u64 {
        self.recv_calls
    }

    /// Sets how many datagrams one transmit may carry (default 4, to exercise splitting).
    pub fn set_max_segments(&mut self, n: usize) {
        self.max_segments = n.max(1);
    }
}

impl Backend for MemBackend {
    fn max_segments(&self) -> usize {
        self.max_segments
    }

    fn recv(&mut self, batch: &mut RxBatch) -> io::Result<usize> {
        self.recv_calls += 1;
        let mut n = self.net.lock();
        let now = n.now;
        let Some(group) = n.groups.get_mut(&self.addr) else {
            return Ok(0);
        };
        let inbox = &mut group.inboxes[self.member];
        let mut added = 0;
        while !batch.is_full() && inbox.front().is_some_and(|p| p.deliver_at <= now) {
            let p = inbox.pop_front().expect("front checked");
            let reply = L2 {
                src_mac: mac_of(p.to),
                dst_mac: p.from_mac,
                vlan: None,
            };
            batch.push_linked(p.from, Some(p.to.ip()), p.ecn, Some(reply), &p.data);
            added += 1;
        }
        Ok(added)
    }

    fn send(&mut self, t: &Transmit<'_>) -> Result<(), SendError> {
        let mut n = self.net.lock();
        let deliver_at = n.now + n.latency;
        let from = SocketAddr::new(t.src_ip.unwrap_or(self.addr.ip()), self.addr.port());
        let from_mac = mac_of(from);
        for seg in t.segments() {
            n.deliver(MemPacket {
                from,
                to: t.destination,
                ecn: t.ecn,
                data: seg.to_vec(),
                from_mac,
                link: t.link,
                deliver_at,
            });
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn wait(&mut self, _: Option<Instant>, _: bool, _: &Waker) -> io::Result<()> {
        // Virtual time: the simulation decides when to turn again.
        Ok(())
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.addr)
    }
}
