//! The stream slots of one connection: a small index by stream id over a slab of slots.
//!
//! A connection of a request-response protocol opens and forgets streams all the time. In a
//! hash map of whole slots, each new stream lands in a different (cold) bucket of a table
//! sized for the most streams the connection ever had; here the index holds only ids, and a
//! new stream reuses the slot the last forgotten one left (last in, first out), which is
//! still in the cache. A handle keeps its stream's [`StreamKey`]: the id and the slot it
//! had, found again without the index.

use std::collections::HashMap;

use quinn_proto::StreamId;

use super::shared::StreamSlot;

/// Slabs above this many slots are given back when the connection has no stream left.
const KEEP_SLOTS: usize = 64;

/// A stream's id and the slot it was given: the handles' key, which finds the slot at once
/// (the slot's own id confirms it) and falls back to the index if the slot was reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct StreamKey {
    pub id: StreamId,
    slot: u32,
}

/// What finds a slot: a stream id (through the index) or a [`StreamKey`].
pub(crate) trait Lookup {
    fn id(&self) -> StreamId;
    /// Where the slot probably is.
    fn hint(&self) -> Option<u32> {
        None
    }
}

impl Lookup for StreamId {
    fn id(&self) -> StreamId {
        *self
    }
}

impl Lookup for StreamKey {
    fn id(&self) -> StreamId {
        self.id
    }
    fn hint(&self) -> Option<u32> {
        Some(self.slot)
    }
}

/// A connection's stream slots by id.
#[derive(Default)]
pub(crate) struct Streams {
    /// Stream ids are the peer's, but a peer cannot make them collide: they are sequential
    /// per type and bounded by the stream limits we grant, so a fast hash is safe (quinn-proto
    /// keys its own stream maps the same way).
    index: HashMap<StreamId, u32, rustc_hash::FxBuildHasher>,
    slots: Vec<Option<StreamSlot>>,
    /// Empty slots, the most recently emptied last.
    free: Vec<u32>,
}

impl Streams {
    /// The key of stream `id`, for its handles (a key of no slot if it has none).
    pub fn key(&self, id: StreamId) -> StreamKey {
        StreamKey {
            id,
            slot: self.index.get(&id).copied().unwrap_or(u32::MAX),
        }
    }

    fn position(&self, k: &impl Lookup) -> Option<usize> {
        let id = k.id();
        if let Some(h) = k.hint() {
            if let Some(Some(slot)) = self.slots.get(h as usize) {
                if slot.id == id {
                    return Some(h as usize);
                }
            }
        }
        self.index.get(&id).map(|&i| i as usize)
    }

    pub fn get(&self, k: &impl Lookup) -> Option<&StreamSlot> {
        let i = self.position(k)?;
        self.slots[i].as_ref()
    }

    pub fn get_mut(&mut self, k: &impl Lookup) -> Option<&mut StreamSlot> {
        let i = self.position(k)?;
        self.slots[i].as_mut()
    }

    /// Adds stream `id` (replacing a slot it had).
    pub fn insert(&mut self, id: StreamId, slot: StreamSlot) {
        if let Some(&i) = self.index.get(&id) {
            self.slots[i as usize] = Some(slot);
            return;
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(slot);
                i
            }
            None => {
                // At most as many slots as streams alive at once: the stream limits bound it
                // far below u32::MAX.
                let i = u32::try_from(self.slots.len()).expect("fewer than 2^32 streams");
                self.slots.push(Some(slot));
                i
            }
        };
        self.index.insert(id, i);
    }

    /// Forgets the stream.
    pub fn remove(&mut self, k: &impl Lookup) {
        let Some(i) = self.index.remove(&k.id()) else {
            return;
        };
        self.slots[i as usize] = None;
        self.free.push(i);
        if self.index.is_empty() && self.slots.len() > KEEP_SLOTS {
            // A burst of streams is over: give its memory back.
            *self = Self::default();
        }
    }

    /// Keeps the streams for which `keep` says so.
    pub fn retain(&mut self, mut keep: impl FnMut(&StreamId, &mut StreamSlot) -> bool) {
        let gone: Vec<StreamId> = self
            .index
            .iter()
            .filter_map(|(id, &i)| {
                let slot = self.slots[i as usize].as_mut().expect("indexed slot");
                (!keep(id, slot)).then_some(*id)
            })
            .collect();
        for id in gone {
            self.remove(&id);
        }
    }

    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut StreamSlot> {
        self.slots.iter_mut().flatten()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.index.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn_proto::{Dir, Side};

    fn id(i: u64) -> StreamId {
        StreamId::new(Side::Client, Dir::Bi, i)
    }

    #[test]
    fn slots_are_reused_last_in_first_out_and_given_back_after_a_burst() {
        let mut s = Streams::default();
        for i in 0..3 {
            s.insert(id(i), StreamSlot::new(id(i), Side::Server));
        }
        s.get_mut(&id(1)).expect("present").recv_len = 7;
        s.remove(&id(1));
        assert!(s.get(&id(1)).is_none());
        s.insert(id(3), StreamSlot::new(id(3), Side::Server));
        assert_eq!(s.slots.len(), 3, "the emptied slot is reused");
        assert_eq!(s.get(&id(3)).expect("present").recv_len, 0, "a fresh slot");
        assert_eq!(s.len(), 3);

        // A key finds its slot, and its stream only: not the stream that reuses the slot.
        let k4 = {
            s.insert(id(4), StreamSlot::new(id(4), Side::Server));
            s.key(id(4))
        };
        s.get_mut(&k4).expect("present").recv_len = 4;
        s.remove(&k4);
        assert!(s.get(&k4).is_none());
        s.insert(id(5), StreamSlot::new(id(5), Side::Server));
        assert!(s.get(&k4).is_none(), "the slot is stream 5's now");
        assert_eq!(s.get(&s.key(id(5))).expect("present").recv_len, 0);
        assert_eq!(s.get(&s.key(id(9))).map(|_| ()), None, "no such stream");
        s.remove(&id(5));

        for i in 4..200 {
            s.insert(id(i), StreamSlot::new(id(i), Side::Server));
        }
        assert_eq!(s.values_mut().count(), 199);
        s.retain(|sid, _| sid.index() % 2 == 0);
        assert_eq!(s.len(), 100);
        assert!(s.get(&id(3)).is_none() && s.get(&id(4)).is_some());
        s.retain(|_, _| false);
        assert_eq!(s.len(), 0);
        assert!(
            s.slots.is_empty() && s.free.is_empty(),
            "the burst's memory is given back"
        );
    }
}
