//! Giving memory back to the operating system.
//!
//! glibc's allocator keeps the memory that freed connections leave in its arenas for reuse:
//! after 10,000 connections close, the process still holds most of what they used. A daemon
//! that has seen many connections come and go calls [`release_free_memory`] (the
//! `xdp-quic serve` loop does, at most once a second, once a burst of connections opening or
//! closing is over: [`TrimPolicy`]).

/// Returns the allocator's free memory to the operating system where it can (glibc's
/// `malloc_trim`, every arena). Takes the arenas' locks for a few milliseconds per 100 MB:
/// call it from a control thread, not a worker. Returns whether memory was released.
pub fn release_free_memory() -> bool {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: malloc_trim takes no pointers; it is safe to call from any thread.
        unsafe { libc::malloc_trim(0) != 0 }
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        false
    }
}

/// When to trim: once churn is over. Churn is at least a tenth of `min_burst` connections
/// opened or closed since the last trim (handshakes leave their transient buffers freed
/// between long-lived connection state; closes free the connections); it is over when a
/// whole observation period saw fewer than a tenth of `min_burst`. Trimming during
/// sustained churn would take the allocator's locks from under busy workers for nothing.
#[derive(Debug, Clone, Copy)]
pub struct TrimPolicy {
    at_last_trim: u64,
    last: u64,
    min_burst: u64,
}

impl TrimPolicy {
    /// A policy that trims after bursts of at least `min_burst` connection events.
    pub fn new(min_burst: u64) -> Self {
        Self {
            at_last_trim: 0,
            last: 0,
            min_burst,
        }
    }

    /// Feeds the running total of connections opened, accepted and closed (call it once per
    /// period, e.g. a second); returns whether to trim now.
    pub fn observe(&mut self, events: u64) -> bool {
        let recent = events.saturating_sub(self.last);
        self.last = events;
        if events.saturating_sub(self.at_last_trim) * 10 >= self.min_burst
            && recent * 10 < self.min_burst
        {
            self.at_last_trim = events;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trims_once_a_burst_is_over() {
        let mut p = TrimPolicy::new(1000);
        assert!(!p.observe(50), "no burst");
        assert!(!p.observe(3_000), "a burst, still going");
        assert!(!p.observe(6_000), "still going");
        assert!(p.observe(6_020), "over: 20 events in the last period");
        assert!(!p.observe(6_030), "nothing new since the trim");
        assert!(!p.observe(6_060), "30 events since the trim: under a tenth");
        assert!(!p.observe(7_200), "busy again");
        assert!(p.observe(7_210), "1,190 since the trim, and quiet");
        assert!(!p.observe(7_400), "190 in this period: not quiet");
        assert!(p.observe(7_420), "quiet, 210 since the trim");
    }
}
