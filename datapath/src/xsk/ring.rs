//! The AF_XDP rings: single-producer, single-consumer queues shared with the kernel.
//!
//! A ring is a power-of-two array of entries with a producer and a consumer index that only
//! grow (wrapping at 2^32). Following the kernel's uapi (Documentation/networking/af_xdp.rst
//! and `xsk_queue.h`):
//!
//! * a producer writes entries, then publishes them with a **release** store of `producer`;
//!   it learns of free slots by an **acquire** load of `consumer`;
//! * a consumer learns of entries by an **acquire** load of `producer`, reads them, then
//!   returns the slots with a **release** store of `consumer`.
//!
//! Both sides keep cached copies of the two indices and touch the shared ones only when the
//! cache says the ring is full (producer) or empty (consumer), so a batch costs two shared
//! accesses, not two per entry. The user side produces on the fill and TX rings and consumes
//! on the RX and completion rings; [`ProdRing`] and [`ConsRing`] are those two roles, and the
//! tests play the kernel's side with the opposite role over the same memory.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicU32, Ordering};

/// The shared parts of one ring, as the kernel maps them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RingParts<T> {
    pub producer: *const AtomicU32,
    pub consumer: *const AtomicU32,
    pub flags: *const AtomicU32,
    pub entries: *mut T,
    /// Number of entries; a power of two.
    pub size: u32,
}

/// The producing side of a ring (the user on the fill and TX rings).
pub(crate) struct ProdRing<T> {
    p: RingParts<T>,
    mask: u32,
    /// Next index to write.
    cached_prod: u32,
    /// Consumer index plus size: `cached_cons - cached_prod` slots are known to be free.
    cached_cons: u32,
    _t: PhantomData<T>,
}

/// The consuming side of a ring (the user on the RX and completion rings).
pub(crate) struct ConsRing<T> {
    p: RingParts<T>,
    mask: u32,
    /// Next index to read.
    cached_cons: u32,
    /// Producer index as last seen: entries up to it are readable.
    cached_prod: u32,
    _t: PhantomData<T>,
}

// SAFETY: a ring side is owned by one thread at a time; the memory it points to is shared with
// the other side only through the index protocol above.
unsafe impl<T: Send> Send for ProdRing<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for ConsRing<T> {}

impl<T: Copy> ProdRing<T> {
    /// # Safety
    /// `p` must point at a live ring of `p.size` (a power of two) entries that outlives this
    /// value, whose producer side nothing else uses.
    pub unsafe fn new(p: RingParts<T>) -> Self {
        debug_assert!(p.size.is_power_of_two());
        // SAFETY: the caller guarantees the pointers are live.
        let (prod, cons) = unsafe {
            (
                (*p.producer).load(Ordering::Relaxed),
                (*p.consumer).load(Ordering::Acquire),
            )
        };
        Self {
            p,
            mask: p.size - 1,
            cached_prod: prod,
            cached_cons: cons.wrapping_add(p.size),
            _t: PhantomData,
        }
    }

    /// Number of entries of the ring.
    pub fn size(&self) -> u32 {
        self.p.size
    }

    /// Free slots, looking at the shared consumer index only when fewer than `want` are known.
    pub fn free(&mut self, want: u32) -> u32 {
        let free = self.cached_cons.wrapping_sub(self.cached_prod);
        if free >= want {
            return free;
        }
        // SAFETY: `consumer` is live (contract of `new`).
        let cons = unsafe { (*self.p.consumer).load(Ordering::Acquire) };
        self.cached_cons = cons.wrapping_add(self.p.size);
        self.cached_cons.wrapping_sub(self.cached_prod)
    }

    /// Writes `item` into the next free slot; false (and nothing written) when the ring is
    /// full. Entries become visible to the consumer at [`ProdRing::submit`].
    pub fn push(&mut self, item: T) -> bool {
        if self.free(1) == 0 {
            return false;
        }
        let i = (self.cached_prod & self.mask) as usize;
        // SAFETY: `i` < size, and the slot is free: the consumer has released it.
        unsafe { self.p.entries.add(i).write(item) };
        self.cached_prod = self.cached_prod.wrapping_add(1);
        true
    }

    /// Publishes every entry pushed so far.
    pub fn submit(&mut self) {
        // SAFETY: `producer` is live; the release orders the entry writes before it.
        unsafe { (*self.p.producer).store(self.cached_prod, Ordering::Release) };
    }

    /// Whether the consumer has taken every submitted entry.
    pub fn is_drained(&mut self) -> bool {
        self.free(self.p.size) == self.p.size
    }

    /// Whether the kernel asked to be woken (XDP_RING_NEED_WAKEUP) to process this ring.
    pub fn needs_wakeup(&self) -> bool {
        // SAFETY: `flags` is live.
        unsafe { (*self.p.flags).load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0 }
    }
}

impl<T: Copy> ConsRing<T> {
    /// # Safety
    /// As [`ProdRing::new`], for the consumer side.
    pub unsafe fn new(p: RingParts<T>) -> Self {
        debug_assert!(p.size.is_power_of_two());
        // SAFETY: the caller guarantees the pointers are live.
        let (prod, cons) = unsafe {
            (
                (*p.producer).load(Ordering::Acquire),
                (*p.consumer).load(Ordering::Relaxed),
            )
        };
        Self {
            p,
            mask: p.size - 1,
            cached_cons: cons,
            cached_prod: prod,
            _t: PhantomData,
        }
    }

    /// Number of entries of the ring.
    pub fn size(&self) -> u32 {
        self.p.size
    }

    /// Entries ready to read, looking at the shared producer index only when none are known.
    pub fn available(&mut self) -> u32 {
        let n = self.cached_prod.wrapping_sub(self.cached_cons);
        if n > 0 {
            return n;
        }
        // SAFETY: `producer` is live; the acquire orders the entry reads after it.
        self.cached_prod = unsafe { (*self.p.producer).load(Ordering::Acquire) };
        self.cached_prod.wrapping_sub(self.cached_cons)
    }

    /// Takes the next entry, or `None` when the ring is empty. Its slot goes back to the
    /// producer at [`ConsRing::release`].
    pub fn pop(&mut self) -> Option<T> {
        if self.available() == 0 {
            return None;
        }
        let i = (self.cached_cons & self.mask) as usize;
        // SAFETY: `i` < size, and the producer published this entry before the index we read.
        let item = unsafe { self.p.entries.add(i).read() };
        self.cached_cons = self.cached_cons.wrapping_add(1);
        Some(item)
    }

    /// Returns the slots of every entry popped so far to the producer.
    pub fn release(&mut self) {
        // SAFETY: `consumer` is live; the release orders our reads before the slots are reused.
        unsafe { (*self.p.consumer).store(self.cached_cons, Ordering::Release) };
    }
}

/// Ring memory owned by the process, for tests that play the kernel's side.
#[cfg(any(test, feature = "testing"))]
pub(crate) struct TestRing<T> {
    producer: Box<AtomicU32>,
    consumer: Box<AtomicU32>,
    flags: Box<AtomicU32>,
    entries: Box<[std::cell::UnsafeCell<T>]>,
}

// SAFETY: the entries are reached only through the producer and consumer sides, each owned
// by one thread at a time and synchronised by the index protocol (release on publish,
// acquire on observe), exactly as the kernel's rings are.
#[cfg(any(test, feature = "testing"))]
unsafe impl<T: Send> Sync for TestRing<T> {}

#[cfg(any(test, feature = "testing"))]
impl<T: Copy + Default> TestRing<T> {
    /// A ring of `size` entries (a power of two) whose indices start at `start`, so tests can
    /// begin just before the 2^32 wrap.
    pub fn new(size: u32, start: u32) -> Self {
        assert!(size.is_power_of_two());
        Self {
            producer: Box::new(AtomicU32::new(start)),
            consumer: Box::new(AtomicU32::new(start)),
            flags: Box::new(AtomicU32::new(0)),
            entries: (0..size).map(|_| Default::default()).collect(),
        }
    }

    /// The parts to build both sides from. Valid while `self` lives.
    pub fn parts(&self) -> RingParts<T> {
        RingParts {
            producer: &*self.producer,
            consumer: &*self.consumer,
            flags: &*self.flags,
            entries: self.entries.as_ptr() as *mut T,
            size: self.entries.len() as u32,
        }
    }

    /// Entries published and not yet released by the consumer.
    pub fn queued(&self) -> usize {
        let p = self.producer.load(Ordering::Acquire);
        let c = self.consumer.load(Ordering::Acquire);
        p.wrapping_sub(c) as usize
    }

    /// Sets or clears XDP_RING_NEED_WAKEUP, as the kernel would.
    pub fn set_need_wakeup(&self, on: bool) {
        self.flags.store(
            if on { libc::XDP_RING_NEED_WAKEUP } else { 0 },
            Ordering::Relaxed,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn pair<T: Copy + Default>(ring: &TestRing<T>) -> (ProdRing<T>, ConsRing<T>) {
        // SAFETY: `ring` outlives both sides within each test; one producer, one consumer.
        unsafe { (ProdRing::new(ring.parts()), ConsRing::new(ring.parts())) }
    }

    #[test]
    fn full_and_empty() {
        let ring = TestRing::<u64>::new(4, 0);
        let (mut p, mut c) = pair(&ring);
        assert_eq!(c.pop(), None);
        for i in 0..4 {
            assert!(p.push(i));
        }
        assert!(!p.push(99), "a full ring takes nothing");
        assert_eq!(c.pop(), None, "nothing visible before submit");
        p.submit();
        assert_eq!(c.available(), 4);
        assert_eq!(c.pop(), Some(0));
        assert!(!p.push(99), "a popped slot is free only after release");
        c.release();
        assert!(p.push(4));
        p.submit();
        let rest: Vec<_> = std::iter::from_fn(|| c.pop()).collect();
        assert_eq!(
            rest,
            vec![1, 2, 3, 4],
            "the item refused when full was not swallowed"
        );
    }

    #[test]
    fn wraps_around_the_index_space() {
        let ring = TestRing::<u64>::new(8, u32::MAX - 20);
        let (mut p, mut c) = pair(&ring);
        let mut next = 0u64;
        let mut expect = 0u64;
        for round in 0..50 {
            let batch = 1 + round % 8;
            for _ in 0..batch {
                if p.push(next) {
                    next += 1;
                }
            }
            p.submit();
            for _ in 0..(round % 5) {
                if let Some(v) = c.pop() {
                    assert_eq!(v, expect);
                    expect += 1;
                }
            }
            c.release();
        }
        while let Some(v) = c.pop() {
            assert_eq!(v, expect);
            expect += 1;
        }
        assert_eq!(expect, next);
        assert!(next > 40);
    }

    #[test]
    fn need_wakeup_flag() {
        let ring = TestRing::<u64>::new(2, 0);
        let (p, _c) = pair(&ring);
        assert!(!p.needs_wakeup());
        ring.set_need_wakeup(true);
        assert!(p.needs_wakeup());
    }

    /// Frames circulate user → fill ring → "kernel" → RX ring → user, on two threads, with
    /// random batch sizes: every frame is seen exactly once per lap and none is lost.
    #[test]
    fn no_frame_lost_or_duplicated_across_threads() {
        const FRAMES: u64 = 64;
        const LAPS: u64 = 2_000;
        let fill = TestRing::<u64>::new(32, u32::MAX - 100);
        let rx = TestRing::<super::super::Desc>::new(32, u32::MAX - 7);
        let (mut fill_p, mut fill_c) = pair(&fill);
        // SAFETY: both rings outlive the scope below; one producer and one consumer each.
        let (mut rx_p, mut rx_c) =
            unsafe { (ProdRing::new(rx.parts()), ConsRing::new(rx.parts())) };
        let total = FRAMES * LAPS;
        std::thread::scope(|s| {
            // The kernel: takes frames from the fill ring, "receives" into them.
            s.spawn(move || {
                let mut moved = 0u64;
                let mut held: Vec<u64> = Vec::new();
                while moved < total {
                    while let Some(a) = fill_c.pop() {
                        held.push(a);
                    }
                    fill_c.release();
                    while moved < total {
                        let Some(&a) = held.last() else { break };
                        let d = super::super::Desc {
                            addr: a,
                            len: (a % 1500) as u32,
                            options: 0,
                        };
                        if !rx_p.push(d) {
                            break;
                        }
                        held.pop();
                        moved += 1;
                    }
                    rx_p.submit();
                }
            });
            // The user: owns all frames at first, gives them to the kernel, gets them back.
            let mut free: Vec<u64> = (0..FRAMES).map(|i| i * 2048).collect();
            let mut in_kernel = HashSet::new();
            let mut got = 0u64;
            let mut rng = 12345u64;
            while got < total {
                rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1);
                let batch = 1 + (rng >> 33) % 16;
                for _ in 0..batch {
                    let Some(a) = free.pop() else { break };
                    if !fill_p.push(a) {
                        free.push(a);
                        break;
                    }
                    assert!(in_kernel.insert(a), "frame {a} given to the kernel twice");
                }
                fill_p.submit();
                while let Some(d) = rx_c.pop() {
                    assert_eq!(d.len as u64, d.addr % 1500);
                    assert!(
                        in_kernel.remove(&d.addr),
                        "frame {} received but not given",
                        d.addr
                    );
                    free.push(d.addr);
                    got += 1;
                }
                rx_c.release();
            }
            assert_eq!(got, total);
            assert_eq!(
                free.len() + in_kernel.len(),
                FRAMES as usize,
                "no frame lost"
            );
        });
    }
}
