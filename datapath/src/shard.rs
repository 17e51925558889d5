//! The QUIC state of one worker, owned and touched by its thread only: the endpoint side
//! ([`Shard`]: the `quinn_proto::Endpoint`, the client configuration, connections opened by
//! callbacks, the clock of the turn) and the connections ([`Connections`]: slots by handle,
//! their timers, the ones that need a poll).
//!
//! The two are separate so that a callback can hold one connection (a slot of
//! `Connections`) and act on the worker ([`crate::Ctx`], a borrow of `Shard`) at once.

use std::time::Instant;

use std::net::SocketAddr;

use std::any::Any;
use std::collections::HashMap;

use quinn_proto::{ClientConfig, Connection, ConnectionEvent, Dir, Endpoint, Side, StreamId};

use crate::accept::Deferred;
use crate::packet::frame::L2;

use crate::congestion::CloseGate;
use crate::conn::ConnId;
use crate::timer::TimerQueue;

/// The endpoint side of a worker: what [`crate::Ctx`] acts on.
pub(crate) struct Shard {
    /// This worker's index.
    pub worker: usize,
    /// The time of the current turn.
    pub now: Instant,
    pub endpoint: Endpoint,
    /// The configuration of connections this worker opens (`Ctx::connect`).
    pub client: Option<ClientConfig>,
    /// This worker accepts connections: built with a server configuration, or given one
    /// since (`EngineHandle::set_server_config`). Its Initials are then kept for the hook.
    pub serves: bool,
    /// The server configuration given since the engine started
    /// (`EngineHandle::set_server_config`), if any: `Decision::Accept` uses it, also for an
    /// attempt that arrived before it and waited for a deferred decision (quinn-proto's
    /// `Incoming` keeps the configuration it arrived under).
    pub rotated: Option<std::sync::Arc<quinn_proto::ServerConfig>>,
    /// Connections opened by callbacks this turn (already in [`Connections`]), for the
    /// worker to count and register at the end of the turn.
    pub born: Vec<ConnId>,
    /// The serial of the next connection: with the handle, it makes [`ConnId`]s unique for
    /// the engine's life although quinn-proto reuses handles.
    pub next_serial: u64,
    /// The backend names IPv4 peers as IPv4-mapped IPv6 addresses
    /// ([`crate::backend::Backend::maps_ipv4`]): so must the connections this worker opens.
    pub maps_ipv4: bool,
    /// A callback asked the worker to stop (`Ctx::stop_worker`), or a shutdown came.
    pub stop_requested: bool,
    /// The most connections this worker holds.
    pub max_connections: usize,
    /// Connection attempts awaiting a deferred decision ([`crate::Decision::Defer`]).
    pub deferred: Deferred,
    /// Answers to attempts decided off the hook ([`crate::Ctx::decide`]), sent by the
    /// worker after the work that decided them.
    pub answers: Vec<(quinn_proto::Transmit, Vec<u8>, Option<L2>)>,
    /// Decisions taken since the worker last folded them into its counters.
    pub tally: Tally,
}

/// Counts of settled connection attempts.
#[derive(Default, Clone, Copy)]
pub(crate) struct Tally {
    pub accepted: u64,
    pub refused: u64,
    pub retries: u64,
}

/// What settling an attempt came to.
pub(crate) enum Settled {
    Accepted(ConnId),
    /// An answer to send (its octets in the buffer given to [`Shard::settle`]).
    Answer(quinn_proto::Transmit),
    /// Nothing to send (ignored).
    Silent,
}

impl Shard {
    /// Carries out `decision` on a connection attempt that arrived over `link`; an answer to
    /// send is written into `buf`. A stopping or full worker refuses whatever the decision;
    /// `Defer` here means ignore (the caller holds attempts it defers).
    pub fn settle(
        &mut self,
        conns: &mut Connections,
        incoming: quinn_proto::Incoming,
        link: Option<L2>,
        decision: crate::Decision,
        buf: &mut Vec<u8>,
    ) -> Settled {
        use crate::Decision;
        buf.clear();
        let decision = if self.stop_requested || conns.active >= self.max_connections {
            Decision::Refuse
        } else {
            decision
        };
        let config = match decision {
            Decision::Accept => self.rotated.clone(),
            Decision::AcceptWith(config) => Some(config),
            Decision::Retry if !incoming.remote_address_validated() => {
                return match self.endpoint.retry(incoming, buf) {
                    Ok(t) => {
                        self.tally.retries += 1;
                        Settled::Answer(t)
                    }
                    Err(e) => {
                        self.endpoint.ignore(e.into_incoming());
                        Settled::Silent
                    }
                };
            }
            Decision::Retry => self.rotated.clone(),
            Decision::Refuse => {
                self.tally.refused += 1;
                return Settled::Answer(self.endpoint.refuse(incoming, buf));
            }
            Decision::Ignore | Decision::Defer => {
                self.tally.refused += 1;
                self.endpoint.ignore(incoming);
                return Settled::Silent;
            }
        };
        let now = self.now;
        match self.endpoint.accept(incoming, now, buf, config) {
            Ok((ch, conn)) => {
                self.tally.accepted += 1;
                let remote = conn.remote_address();
                let gate = crate::congestion::take_last_built().unwrap_or_default();
                let id = ConnId::new(self.worker, ch, self.take_serial());
                let slot = Slot::new(id, conn, gate, link.map(|l| (remote, l)), now);
                slot.span.in_scope(|| tracing::debug!(%remote, "accepted"));
                conns.insert(Box::new(slot));
                Settled::Accepted(id)
            }
            Err(e) => {
                // quinn-proto may have built the controller before failing: it is nobody's,
                // and must not be taken for the next connection's.
                let _ = crate::congestion::take_last_built();
                self.tally.refused += 1;
                e.response.map_or(Settled::Silent, Settled::Answer)
            }
        }
    }

    /// The next connection serial.
    pub fn take_serial(&mut self) -> u64 {
        let s = self.next_serial;
        self.next_serial = s + 1;
        s
    }
}

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
    /// Its transmit was held back last time it was driven ([`crate::Worker`]'s
    /// `hold_transmits`): the next drive sends.
    pub held: bool,
    /// Opened when the connection closes (see [`crate::congestion`]): the gate of its first
    /// controller, which the gates of later ones follow.
    pub gate: CloseGate,
    /// When the connection was created (for the handshake-time histogram).
    pub created: Instant,
    /// The connection's tracing span: its life-cycle events, and whatever the application
    /// logs in its callbacks, carry the connection id (free when the level is off).
    pub span: tracing::Span,
    /// The link layer of replies to the connection's current address and to the addresses
    /// it had before its last moves, the most recent first (AF_XDP; see
    /// [`crate::backend::Transmit::link`]).
    pub links: [Option<(SocketAddr, L2)>; LINKS],
    /// The application's state of the connection ([`crate::Conn::state`]).
    pub user: Option<Box<dyn Any + Send>>,
    /// The application's state of its streams ([`crate::Conn::stream_state`]).
    pub streams: StreamStates,
    /// The remote address this connection, opened by this worker, is recorded under in
    /// the engine's [`crate::peers::OutgoingPeers`] (multi-worker engines only).
    pub outgoing_to: Option<SocketAddr>,
}

impl Slot {
    /// A connection quinn-proto just created under `id`; `gate` is its close gate (right
    /// after `Endpoint::accept` or `Endpoint::connect`, on the same thread, the one
    /// [`crate::congestion::take_last_built`] gives).
    pub fn new(
        id: ConnId,
        conn: Connection,
        gate: CloseGate,
        link: Option<(SocketAddr, L2)>,
        now: Instant,
    ) -> Self {
        Self {
            conn,
            id,
            handshaking: true,
            reported_closed: false,
            dirty: false,
            held: false,
            gate,
            created: now,
            span: tracing::debug_span!("connection", conn = %id),
            links: std::array::from_fn(|i| if i == 0 { link } else { None }),
            user: None,
            streams: StreamStates::default(),
            outgoing_to: None,
        }
    }

    /// Hands `event` to the connection. When quinn-proto built a new congestion controller
    /// for it meanwhile (the peer moved to a new address), the new controller's gate follows
    /// the connection's: opening that one opens every controller the connection has had,
    /// whichever a move that fails validation brings back.
    pub fn handle_event(&mut self, event: ConnectionEvent) {
        self.conn.handle_event(event);
        if let Some(fresh) = crate::congestion::take_last_built() {
            fresh.follow(&self.gate);
        }
    }

    /// Opens the close gate (the connection is closing): of every controller it has had.
    pub fn open_gates(&self) {
        self.gate.open();
    }

    /// Hands the connection a datagram from `remote` that came with link layer `link`, and
    /// keeps that link layer for replies to `remote` when the datagram moved the connection
    /// there (quinn-proto moves a connection only for a packet it authenticated), or when
    /// `remote` has none yet and the datagram carried a frame quinn-proto authenticated (its
    /// frame counters moved: the first datagram of a connection we opened, a peer's probe
    /// of a new path, which quinn-proto answers there). The addresses it had before keep
    /// theirs ([`LINKS`] in all): quinn-proto may go back to one when a move fails
    /// validation, and after two moves in a row it goes back to the last address it had
    /// validated, not the one between. So a forged frame, which cannot be authenticated,
    /// never changes where a connection's replies go.
    pub fn handle_datagram(
        &mut self,
        event: ConnectionEvent,
        remote: SocketAddr,
        link: Option<L2>,
    ) {
        let Some(link) = link else {
            self.handle_event(event);
            return;
        };
        let before = self.conn.remote_address();
        // Rare (a datagram from an address without a link layer): counted only then.
        let unknown = !self.links.iter().flatten().any(|(a, _)| *a == remote);
        let frames = unknown.then(|| frames_received(&self.conn));
        self.handle_event(event);
        let now = self.conn.remote_address();
        let moved = now != before && now == remote;
        if moved || frames.is_some_and(|n| frames_received(&self.conn) != n) {
            self.remember(remote, link);
        }
    }

    /// Makes `link` the link layer of `addr`. The connection's address's comes first (it
    /// may not be `addr`: a probe of a new path, or quinn-proto gone back to an earlier
    /// address on a timer), then `addr`'s, then the others, the most recent first; the
    /// oldest go beyond [`LINKS`]. (After more than two moves in a row that fail
    /// validation, the address quinn-proto goes back to may be one of those gone: its
    /// replies are then not sent until the peer sends from it again.)
    fn remember(&mut self, addr: SocketAddr, link: L2) {
        let now = self.conn.remote_address();
        let old = self.links;
        let candidates = std::iter::once((addr, link)).chain(
            old.iter()
                .flatten()
                .copied()
                .filter(move |(a, _)| *a != addr),
        );
        let current = candidates.clone().find(|(a, _)| *a == now);
        let others = candidates.filter(|(a, _)| *a != now);
        let mut order: [Option<(SocketAddr, L2)>; LINKS] = [None; LINKS];
        for (slot, e) in order.iter_mut().zip(current.into_iter().chain(others)) {
            *slot = Some(e);
        }
        self.links = order;
    }

    /// The link layer of a reply to `to`: the one learned for that address. None for an
    /// address it has none for (the reply is not sent, counted `tx_no_route`): another
    /// address's would send it to the wrong host.
    pub fn link_for(&self, to: SocketAddr) -> Option<L2> {
        self.links
            .iter()
            .flatten()
            .find(|(a, _)| *a == to)
            .map(|(_, l)| *l)
    }
}

/// The link layers a connection keeps: its address's and those of its last two moves.
pub const LINKS: usize = 3;

/// The frames quinn-proto has authenticated on `conn` so far (all types; PADDING is not
/// counted, and no packet is only that).
fn frames_received(conn: &quinn_proto::Connection) -> u64 {
    let f = conn.stats().frame_rx;
    [
        f.acks,
        f.ack_frequency,
        f.crypto,
        f.connection_close,
        f.data_blocked,
        f.datagram,
        u64::from(f.handshake_done),
        f.immediate_ack,
        f.max_data,
        f.max_stream_data,
        f.max_streams_bidi,
        f.max_streams_uni,
        f.new_connection_id,
        f.new_token,
        f.path_challenge,
        f.path_response,
        f.ping,
        f.reset_stream,
        f.retire_connection_id,
        f.stream_data_blocked,
        f.streams_blocked_bidi,
        f.streams_blocked_uni,
        f.stop_sending,
        f.stream,
    ]
    .iter()
    .fold(0u64, |n, c| n.wrapping_add(*c))
}

/// The connections of a worker.
pub(crate) struct Connections {
    /// Indexed by `ConnectionHandle.0`, which quinn-proto allocates densely. Boxed: a slot
    /// is ~6 KiB (quinn-proto's `Connection` inline), and a vector of them would keep up to
    /// as much again in spare capacity and move every connection when it grows.
    pub slots: Vec<Option<Box<Slot>>>,
    pub timers: TimerQueue,
    /// Connections to poll for events and transmits this turn.
    pub dirty: Vec<usize>,
    /// Connections alive.
    pub active: usize,
    /// Connections alive whose handshake is not complete.
    pub handshaking: usize,
}

impl Connections {
    pub fn new() -> Self {
        Self {
            slots: Vec::new(),
            timers: TimerQueue::new(),
            dirty: Vec::new(),
            active: 0,
            handshaking: 0,
        }
    }

    /// The slot of handle `h`, while a connection lives there.
    pub fn slot(&mut self, h: usize) -> Option<&mut Slot> {
        self.slots.get_mut(h)?.as_deref_mut()
    }

    /// Adds a connection and marks it dirty.
    pub fn insert(&mut self, slot: Box<Slot>) -> ConnId {
        let id = slot.id;
        let h = id.handle();
        if self.slots.len() <= h {
            self.slots.resize_with(h + 1, || None);
        }
        debug_assert!(self.slots[h].is_none(), "quinn-proto reused a live handle");
        self.slots[h] = Some(slot);
        self.active += 1;
        self.handshaking += 1;
        self.mark_dirty(h);
        id
    }

    /// Takes connection `id` out of its place, for a callback that acts on it while it has
    /// the rest of the worker at hand; [`Connections::put_back`] returns it.
    pub fn take(&mut self, id: ConnId) -> Option<Box<Slot>> {
        let place = self.slots.get_mut(id.handle())?;
        if place.as_ref()?.id != id {
            return None;
        }
        place.take()
    }

    /// Like [`Connections::take`], for the application: not a connection whose `closed`
    /// the handler heard (its id is stale then, though quinn-proto keeps it a while to drain).
    pub fn take_live(&mut self, id: ConnId) -> Option<Box<Slot>> {
        let place = self.slots.get_mut(id.handle())?;
        if place
            .as_ref()
            .is_none_or(|s| s.id != id || s.reported_closed)
        {
            return None;
        }
        place.take()
    }

    /// Puts a connection [`Connections::take`] took back. `dirty`: mark it for a poll this
    /// turn, so that what a callback did to it goes out (the connection being driven needs
    /// none: its drive goes on).
    pub fn put_back(&mut self, mut slot: Box<Slot>, dirty: bool) {
        slot.streams.sweep();
        let h = slot.id.handle();
        self.slots[h] = Some(slot);
        if dirty {
            self.mark_dirty(h);
        }
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
}

/// The application's state of a connection's streams, and, for each, whether its two sides
/// are over: the state is dropped when both are.
#[derive(Default)]
pub(crate) struct StreamStates {
    map: HashMap<StreamId, StreamEntry>,
    /// The side of the connection, once the application has made a state here (before,
    /// nothing is kept: an application that never makes one pays nothing per stream).
    side: Option<Side>,
    /// Streams with a side over and no entry (yet): an entry made later starts with that
    /// side over, so that it still goes when the other side ends. At most one per stream
    /// quinn-proto keeps open; forgotten when both sides are over.
    ended: HashMap<StreamId, (bool, bool)>,
    /// Entries whose two sides are over, dropped by [`StreamStates::sweep`] once the
    /// callback in which that happened has returned (a read that ends a stream's last side
    /// is followed in the same callback by what the handler does with its state).
    over: Vec<StreamId>,
}

pub(crate) struct StreamEntry {
    state: Option<Box<dyn Any + Send>>,
    send_over: bool,
    recv_over: bool,
}

impl StreamEntry {
    /// The state, as a `T` (created, or replacing another type).
    pub fn state<T: Any + Send + Default>(&mut self) -> &mut T {
        if !self.state.as_ref().is_some_and(|s| s.is::<T>()) {
            self.state = Some(Box::new(T::default()));
        }
        self.state
            .as_mut()
            .and_then(|s| s.downcast_mut())
            .expect("stored just above")
    }
}

impl StreamStates {
    /// The entry of `id` on a connection of side `side`, created if absent. A unidirectional
    /// stream has one side only: the other is over from the start. A side that ended before
    /// the entry was made hears no end again, so it starts over: one this connection noted
    /// (`ended`), or a sending side quinn-proto has forgotten already (`send_gone`: sent and
    /// acknowledged, or reset). (A receiving side that ended before the connection's first
    /// entry was made is not known: that one entry stays until the connection ends.)
    pub fn entry(
        &mut self,
        id: StreamId,
        side: Side,
        send_gone: impl FnOnce() -> bool,
    ) -> &mut StreamEntry {
        self.side = Some(side);
        let ended = &mut self.ended;
        self.map.entry(id).or_insert_with(|| {
            let (send_from_start, recv_from_start) = one_sided(id, side);
            let (send_ended, recv_ended) = ended.remove(&id).unwrap_or_default();
            StreamEntry {
                state: None,
                send_over: send_from_start || send_ended || send_gone(),
                recv_over: recv_from_start || recv_ended,
            }
        })
    }

    /// Notes that a side of `id` (`send`, or receive) is over, for a stream with no entry,
    /// once the application makes entries on this connection.
    fn note_ended(&mut self, id: StreamId, send: bool) {
        let Some(side) = self.side else {
            return;
        };
        let (send_from_start, recv_from_start) = one_sided(id, side);
        let e = self.ended.entry(id).or_default();
        if send {
            e.0 = true;
        } else {
            e.1 = true;
        }
        if (e.0 || send_from_start) && (e.1 || recv_from_start) {
            self.ended.remove(&id);
        }
    }

    /// Takes `id`'s state out, if it is a `T`.
    pub fn take<T: Any + Send>(&mut self, id: StreamId) -> Option<T> {
        let e = self.map.get_mut(&id)?;
        match e.state.take()?.downcast::<T>() {
            Ok(t) => Some(*t),
            Err(other) => {
                e.state = Some(other);
                None
            }
        }
    }

    /// What we send on `id` is over (finished and acknowledged, reset, or stopped).
    pub fn send_over(&mut self, id: StreamId) {
        self.side_over(id, true);
    }

    /// What we receive on `id` is over (read to the end, reset by the peer, or stopped).
    pub fn recv_over(&mut self, id: StreamId) {
        self.side_over(id, false);
    }

    /// One side of `id` is over (`send`, or receive): its entry goes once both are.
    fn side_over(&mut self, id: StreamId, send: bool) {
        let Some(e) = self.map.get_mut(&id) else {
            return self.note_ended(id, send);
        };
        let was_over = e.send_over && e.recv_over;
        if send {
            e.send_over = true;
        } else {
            e.recv_over = true;
        }
        if e.send_over && e.recv_over && !was_over {
            self.over.push(id);
        }
    }

    /// Drops the entries whose two sides are over. Called when a callback on the
    /// connection has returned ([`Connections::put_back`]), not within it.
    pub fn sweep(&mut self) {
        for id in self.over.drain(..) {
            self.map.remove(&id);
        }
    }
}

/// Which sides of `id` are over from the start on a connection of `side` (send, receive):
/// a unidirectional stream has one side only.
fn one_sided(id: StreamId, side: Side) -> (bool, bool) {
    let uni = id.dir() == Dir::Uni;
    let ours = id.initiator() == side;
    (uni && !ours, uni && ours)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// States made after one side of their stream ended still go when the other side
    /// ends, and what is noted of streams without state is forgotten once both sides are.
    #[test]
    fn state_made_after_a_side_ended_goes_with_the_other_side() {
        let mut s = StreamStates::default();
        let bi = |n| StreamId::new(Side::Client, Dir::Bi, n);
        // The connection's first state: from here on, ends are noted.
        *s.entry(bi(0), Side::Server, || false).state::<u8>() = 1;
        // Read to its end, then a state made: it goes when the sending side ends.
        s.recv_over(bi(1));
        *s.entry(bi(1), Side::Server, || false).state::<u8>() = 2;
        s.send_over(bi(1));
        // Kept until the callback returns (the sweep), for the handler to use still.
        assert_eq!(*s.entry(bi(1), Side::Server, || false).state::<u8>(), 2);
        s.sweep();
        assert!(!s.map.contains_key(&bi(1)));
        // Its sending side already forgotten by quinn-proto when the state is made.
        *s.entry(bi(2), Side::Server, || true).state::<u8>() = 3;
        s.recv_over(bi(2));
        s.sweep();
        assert!(!s.map.contains_key(&bi(2)));
        assert!(s.over.is_empty());
        // Streams without state: noted, then forgotten.
        s.recv_over(bi(3));
        s.send_over(bi(3));
        s.recv_over(StreamId::new(Side::Client, Dir::Uni, 0));
        s.send_over(StreamId::new(Side::Server, Dir::Uni, 0));
        assert!(s.ended.is_empty());
        assert_eq!(s.map.len(), 1, "only the first, still open");
    }
}
