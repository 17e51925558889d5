//! The QUIC state of one worker: its `quinn_proto::Endpoint`, its connections, their timers,
//! and the list of connections that need a poll. Owned and touched by one thread only.

use quinn_proto::{Connection, ConnectionEvent, ConnectionHandle, Endpoint};

use crate::congestion::CloseGate;
use crate::conn::ConnId;
use crate::timer::TimerQueue;

/// A connection and the worker's book-keeping about it.
pub(crate) struct Slot {
    pub conn: Connection,
    pub id: ConnId,
    /// Handshake not yet complete.
    pub handshaking: bool,
    /// The handler has heard `closed` for it.
    pub reported_closed: bool,
    /// In the dirty list already.
    pub dirty: bool,
    /// Opened when the connection closes (see [`crate::congestion`]).
    pub gate: CloseGate,
    /// When the connection was created (for the handshake-time histogram).
    pub created: std::time::Instant,
    /// The connection's tracing span: its life-cycle events, and whatever the application
    /// logs in its callbacks, carry the connection id (free when the level is off).
    pub span: tracing::Span,
}

impl Slot {
    /// Hands `event` to the connection. When quinn-proto built a new congestion controller
    /// for it meanwhile (the peer moved to a new address), the connection's close gate
    /// becomes the new controller's, opened already if the connection is closing.
    pub fn handle_event(&mut self, event: ConnectionEvent) {
        self.conn.handle_event(event);
        if let Some(fresh) = crate::congestion::take_last_built() {
            if self.gate.is_open() {
                fresh.open();
            }
            self.gate = fresh;
        }
    }
}

/// One endpoint shard.
pub(crate) struct Shard {
    pub endpoint: Endpoint,
    /// Indexed by `ConnectionHandle.0`, which quinn-proto allocates densely. Boxed: a slot
    /// is ~6 KiB (quinn-proto's `Connection` inline), and a vector of them would keep up to
    /// as much again in spare capacity and move every connection when it grows.
    pub slots: Vec<Option<Box<Slot>>>,
    pub timers: TimerQueue,
    /// Connections to poll for events and transmits this turn.
    pub dirty: Vec<usize>,
    /// Connections opened by callbacks, inserted after the callback returns.
    pub born: Vec<(ConnectionHandle, Connection, u32, CloseGate)>,
    pub next_serial: u32,
    /// Connections alive.
    pub active: usize,
    /// Connections alive whose handshake is not complete.
    pub handshaking: usize,
}

impl Shard {
    pub fn new(endpoint: Endpoint) -> Self {
        Self {
            endpoint,
            slots: Vec::new(),
            timers: TimerQueue::new(),
            dirty: Vec::new(),
            born: Vec::new(),
            next_serial: 0,
            active: 0,
            handshaking: 0,
        }
    }

    /// Adds a connection quinn-proto just created under `ch` and marks it dirty.
    /// Call right after `Endpoint::accept`, on the same thread (it takes the connection's
    /// close gate, see [`crate::congestion::take_last_built`]).
    pub fn insert(
        &mut self,
        worker: usize,
        ch: ConnectionHandle,
        conn: Connection,
        now: std::time::Instant,
    ) -> ConnId {
        let serial = self.next_serial;
        self.next_serial = serial.wrapping_add(1);
        let gate = crate::congestion::take_last_built().unwrap_or_default();
        self.insert_with_serial(worker, ch, conn, serial, gate, now)
    }

    /// Like [`Shard::insert`], with a serial already handed out (by `Ctx::connect`).
    pub fn insert_with_serial(
        &mut self,
        worker: usize,
        ch: ConnectionHandle,
        conn: Connection,
        serial: u32,
        gate: CloseGate,
        now: std::time::Instant,
    ) -> ConnId {
        let id = ConnId::new(worker, ch, serial);
        if self.slots.len() <= ch.0 {
            self.slots.resize_with(ch.0 + 1, || None);
        }
        debug_assert!(
            self.slots[ch.0].is_none(),
            "quinn-proto reused a live handle"
        );
        self.slots[ch.0] = Some(Box::new(Slot {
            conn,
            id,
            handshaking: true,
            reported_closed: false,
            dirty: false,
            gate,
            created: now,
            span: tracing::debug_span!("connection", conn = %id),
        }));
        self.active += 1;
        self.handshaking += 1;
        self.mark_dirty(ch.0);
        id
    }

    /// Queues connection `h` for a poll this turn.
    pub fn mark_dirty(&mut self, h: usize) {
        if let Some(Some(slot)) = self.slots.get_mut(h) {
            if !slot.dirty {
                slot.dirty = true;
                self.dirty.push(h);
            }
        }
    }

    /// The slot of `id`, while that connection lives.
    pub fn get(&self, id: ConnId) -> Option<&Slot> {
        match self.slots.get(id.handle()) {
            Some(Some(slot)) if slot.id == id => Some(slot),
            _ => None,
        }
    }

    /// Removes a drained connection.
    pub fn remove(&mut self, h: usize) -> Option<Box<Slot>> {
        let slot = self.slots.get_mut(h)?.take()?;
        self.timers.set(h, None);
        self.active -= 1;
        if slot.handshaking {
            self.handshaking -= 1;
        }
        Some(slot)
    }

    /// Handles of every live connection.
    pub fn handles(&self) -> impl Iterator<Item = usize> + '_ {
        self.slots
            .iter()
            .enumerate()
            .filter_map(|(h, s)| s.as_ref().map(|_| h))
    }
}
