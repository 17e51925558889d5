//! The timer queue of a shard: at most one deadline per connection, earliest first.
//!
//! An indexed binary min-heap: `set` inserts, moves or removes a key's deadline in O(log n),
//! so a connection that re-arms its timer on every packet leaves no stale entries behind and
//! a wake-up touches only the connections that are due.

use std::time::Instant;

const ABSENT: usize = usize::MAX;

/// Deadlines keyed by small integers (connection handles).
#[derive(Debug, Default)]
pub struct TimerQueue {
    heap: Vec<(Instant, usize)>,
    pos: Vec<usize>,
}

impl TimerQueue {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets (Some) or clears (None) the deadline of `key`.
    pub fn set(&mut self, key: usize, deadline: Option<Instant>) {
        if key >= self.pos.len() {
            if deadline.is_none() {
                return;
            }
            self.pos.resize(key + 1, ABSENT);
        }
        let at = self.pos[key];
        match (at, deadline) {
            (ABSENT, None) => {}
            (ABSENT, Some(t)) => {
                self.heap.push((t, key));
                self.pos[key] = self.heap.len() - 1;
                self.sift_up(self.heap.len() - 1);
            }
            (i, Some(t)) => {
                let old = self.heap[i].0;
                self.heap[i].0 = t;
                if t < old {
                    self.sift_up(i);
                } else {
                    self.sift_down(i);
                }
            }
            (i, None) => self.remove_at(i),
        }
    }

    /// The deadline of `key`, if any.
    #[cfg(test)]
    pub fn get(&self, key: usize) -> Option<Instant> {
        match self.pos.get(key) {
            Some(&i) if i != ABSENT => Some(self.heap[i].0),
            _ => None,
        }
    }

    /// The earliest deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.first().map(|&(t, _)| t)
    }

    /// Removes and returns a key whose deadline is at or before `now`, earliest first.
    pub fn pop_due(&mut self, now: Instant) -> Option<usize> {
        match self.heap.first() {
            Some(&(t, key)) if t <= now => {
                self.remove_at(0);
                Some(key)
            }
            _ => None,
        }
    }

    /// Number of keys with a deadline.
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether no key has a deadline.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    fn remove_at(&mut self, i: usize) {
        let last = self.heap.len() - 1;
        self.swap(i, last);
        let (_, key) = self.heap.pop().expect("non-empty");
        self.pos[key] = ABSENT;
        if i < self.heap.len() {
            self.sift_down(i);
            self.sift_up(i);
        }
    }

    fn swap(&mut self, a: usize, b: usize) {
        self.heap.swap(a, b);
        self.pos[self.heap[a].1] = a;
        self.pos[self.heap[b].1] = b;
    }

    fn sift_up(&mut self, mut i: usize) {
        while i > 0 {
            let parent = (i - 1) / 2;
            if self.heap[i].0 >= self.heap[parent].0 {
                break;
            }
            self.swap(i, parent);
            i = parent;
        }
    }

    fn sift_down(&mut self, mut i: usize) {
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut min = i;
            if l < self.heap.len() && self.heap[l].0 < self.heap[min].0 {
                min = l;
            }
            if r < self.heap.len() && self.heap[r].0 < self.heap[min].0 {
                min = r;
            }
            if min == i {
                break;
            }
            self.swap(i, min);
            i = min;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::time::Duration;

    #[test]
    fn fires_in_order_and_moves_keys() {
        let t0 = Instant::now();
        let ms = |n| t0 + Duration::from_millis(n);
        let mut q = TimerQueue::new();
        q.set(3, Some(ms(30)));
        q.set(1, Some(ms(10)));
        q.set(2, Some(ms(20)));
        q.set(1, Some(ms(40))); // moved later
        q.set(2, None); // cancelled
        assert_eq!(q.len(), 2);
        assert_eq!(q.next_deadline(), Some(ms(30)));
        assert_eq!(q.pop_due(ms(29)), None);
        assert_eq!(q.pop_due(ms(100)), Some(3));
        assert_eq!(q.pop_due(ms(100)), Some(1));
        assert_eq!(q.pop_due(ms(100)), None);
        assert!(q.is_empty());
    }

    #[test]
    fn matches_a_model_under_random_operations() {
        let t0 = Instant::now();
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut q = TimerQueue::new();
        let mut model: Vec<Option<Instant>> = vec![None; 64];
        for step in 0..20_000u64 {
            let key = rng.gen_range(0..64);
            let d = if rng.gen_bool(0.2) {
                None
            } else {
                Some(t0 + Duration::from_micros(rng.gen_range(0..1000) + step))
            };
            q.set(key, d);
            model[key] = d;
            if step % 7 == 0 {
                let now = t0 + Duration::from_micros(step);
                while let Some(k) = q.pop_due(now) {
                    let due = model[k].take().expect("popped key had a deadline");
                    assert!(due <= now);
                    // Nothing earlier may remain.
                    assert!(model.iter().flatten().all(|&t| t >= due));
                }
            }
            for (k, m) in model.iter().enumerate() {
                assert_eq!(q.get(k), *m);
            }
        }
    }
}
