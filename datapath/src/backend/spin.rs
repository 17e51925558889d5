//! How long an AF_XDP worker in adaptive poll mode spins on its RX ring before it sleeps.
//!
//! A spin pays when the next frame comes within it: the worker answers at once, without a
//! sleep and a wake-up (one outstanding request: a third of the latency, and less CPU per
//! request than sleeping). It is waste when the peer takes longer to answer (a handshake's
//! crypto, a client's think time): the core burns the whole spin, then sleeps anyway. So the
//! spin adapts to what it sees, with the configured spin as its ceiling:
//! - a spin that ran out without a frame halves the next one (down to none, below 1 µs);
//! - a wait (its spin and its sleep) that a frame ended sooner than the full spin after it
//!   began sets it back to full: a full spin would have caught that frame.
//!
//! Pure bookkeeping (the caller reads the clock): no syscall, no allocation.

use std::time::Duration;

/// Spins shorter than this are not worth starting.
const SHORTEST: Duration = Duration::from_micros(1);

/// The spin of one worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spin {
    full: Duration,
    next: Duration,
}

impl Spin {
    /// Spins of at most `full`, starting with a full one.
    pub fn new(full: Duration) -> Self {
        Self { full, next: full }
    }

    /// How long the next wait spins before it sleeps.
    pub fn next(&self) -> Duration {
        self.next
    }

    /// The spin ran out with no frame: the next is half as long.
    pub fn missed(&mut self) {
        self.next /= 2;
        if self.next < SHORTEST {
            self.next = Duration::ZERO;
        }
    }

    /// A wait that began `waited` ago (its spin included, not its sleep alone) ended with
    /// frames to read: if a full spin would have caught them, spin in full again.
    pub fn woke_to_frames(&mut self, waited: Duration) {
        if waited < self.full {
            self.next = self.full;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FULL: Duration = Duration::from_micros(50);

    /// Peers slower than the spin (a handshake's crypto): the spins shrink to none within
    /// a few waits, and stay so while the sleeps are long.
    #[test]
    fn spins_that_catch_nothing_shrink_to_none() {
        let mut s = Spin::new(FULL);
        let mut spun = Vec::new();
        for _ in 0..8 {
            spun.push(s.next());
            s.missed();
            s.woke_to_frames(Duration::from_micros(500));
        }
        assert_eq!(
            spun,
            [50_000, 25_000, 12_500, 6_250, 3_125, 1_562, 0, 0].map(Duration::from_nanos)
        );
    }

    /// A peer that answers a little later than a full spin (60 µs after each wait begins,
    /// the spin 50): the spins shrink to none and stay so. (Measured from the end of the
    /// spin, the sleep alone was shorter than a spin, and set it back to full every time.)
    #[test]
    fn frames_just_past_a_full_spin_shrink_it_to_none() {
        let answer = Duration::from_micros(60);
        let mut s = Spin::new(FULL);
        let mut spun = Vec::new();
        for _ in 0..10 {
            let spin = s.next();
            spun.push(spin);
            assert!(spin < answer, "no spin here catches the frame");
            if !spin.is_zero() {
                s.missed();
            }
            s.woke_to_frames(answer);
        }
        assert_eq!(spun[6..], [Duration::ZERO; 4], "{spun:?}");
    }

    /// A peer that answers within the spin (one request outstanding): a short sleep sets
    /// the spin back to full, and a spin that catches a frame leaves it there.
    #[test]
    fn a_frame_a_full_spin_would_have_caught_restores_it() {
        let mut s = Spin::new(FULL);
        for _ in 0..10 {
            s.missed();
        }
        assert_eq!(s.next(), Duration::ZERO);
        s.woke_to_frames(Duration::from_micros(60));
        assert_eq!(
            s.next(),
            Duration::ZERO,
            "longer than a full spin: still none"
        );
        s.woke_to_frames(Duration::from_micros(40));
        assert_eq!(s.next(), FULL);
        // Spinning off: never on again.
        let mut off = Spin::new(Duration::ZERO);
        off.woke_to_frames(Duration::ZERO);
        assert_eq!(off.next(), Duration::ZERO);
    }
}
