//! The shield: the QUIC rules of the XDP program (`ebpf/xdp_quic.c`, map `shield`), and the
//! per-queue pressure flags its admission of new clients depends on (map `pressure`).
//!
//! With the shield on, the program drops before they cost a frame or a decryption:
//!
//! * an Initial of a version the server speaks in a UDP datagram shorter than 1,200 octets
//!   (RFC 9000 §14.1: a server discards it);
//! * a long header of another version in a datagram shorter than 1,200 octets (§5.2.2: too
//!   small to be answered with version negotiation); larger ones reach the worker's version
//!   negotiation within a per-source-prefix rate ([`ShieldConfig::version_negotiation`]);
//! * a short header whose DCID cannot be one of the server's (the CID layout of the running
//!   engine: octet 0, server id, worker octet below the worker count), once a server wrote
//!   its layout ([`ShieldMaps::set_layout`]); the same for Handshake and Retry long headers
//!   of a spoken version (a Handshake packet comes once the peer has our CID, RFC 9000 §7.2;
//!   a Retry only to a connection this host opened), which would otherwise pass at any size
//!   down to 21 octets;
//! * a version negotiation packet (version 0) unless its DCID is in that layout: only
//!   servers send them (§17.2.1), so one can only answer a connection of ours;
//! * while the worker of the packet's rx queue is under pressure (its entry in `pressure`,
//!   set by a [`super::PressureMonitor`]), an Initial without a token beyond its source
//!   prefix's rate ([`ShieldConfig::initial`]); Initials with a token (Retry or NEW_TOKEN)
//!   pass.
//!
//! "The versions the server speaks" are a set written here ([`ShieldConfig::versions`]): by
//! default what the engine's quinn-proto endpoint accepts ([`DEFAULT_VERSIONS`]: QUIC v1 and
//! the drafts 29 to 34, which share v1's packet types). A version outside the set is one the
//! endpoint answers with version negotiation.

use std::os::fd::AsFd as _;

use aya::maps::{Array, IterableMap as _, Map, MapData};
use xdp_quic::cid::CidLayout;
use xdp_quic_ebpf::{
    Shield, MAX_SERVER_ID, MAX_VERSIONS, SHIELD_ADMIT, SHIELD_CID, SHIELD_ON, SHIELD_SERVER,
};

pub use xdp_quic_ebpf::{Rate, MIN_INITIAL_DATAGRAM};

use std::sync::Arc;

use super::pressure::{PressureChange, PressureMonitor, PressurePolicy, PressureView};
use super::{pins, XdpError};

/// The versions quinn-proto 0.11's endpoint accepts by default (its
/// `DEFAULT_SUPPORTED_VERSIONS`; a test checks they agree): QUIC v1, then drafts 29 to 34.
pub const DEFAULT_VERSIONS: [u32; 7] = [
    0x0000_0001,
    0xff00_001d,
    0xff00_001e,
    0xff00_001f,
    0xff00_0020,
    0xff00_0021,
    0xff00_0022,
];

/// QUIC v2 (RFC 9369): its long packet types differ from v1's, so the program cannot treat it
/// as spoken.
const QUIC_V2: u32 = 0x6b33_43cf;

/// The highest refill rate a bucket takes (the program's arithmetic is exact below 2^24).
pub const MAX_RATE: u32 = 10_000_000;

/// What the shield does, besides the CID layout that a server writes for itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShieldConfig {
    /// Versions the server speaks, at most 8, none 0 and not QUIC v2. Default
    /// [`DEFAULT_VERSIONS`].
    pub versions: Vec<u32>,
    /// Source prefix length that shares a bucket, IPv4 (default 24).
    pub prefix_v4: u8,
    /// Source prefix length that shares a bucket, IPv6 (default 56).
    pub prefix_v6: u8,
    /// Under pressure, per source prefix: Initials without a token (default 64 a second,
    /// bursts of 64).
    pub initial: Rate,
    /// Always, per source prefix: long headers of a version not spoken, 1,200 octets or
    /// more, which the worker answers with version negotiation (default 16 a second, bursts
    /// of 32).
    pub version_negotiation: Rate,
    /// Admit Initials without a token per source prefix while their queue is under pressure
    /// (default true). Off: the pressure flags are ignored.
    pub admit_under_pressure: bool,
}

impl Default for ShieldConfig {
    fn default() -> Self {
        Self {
            versions: DEFAULT_VERSIONS.to_vec(),
            prefix_v4: 24,
            prefix_v6: 56,
            initial: Rate {
                per_sec: 64,
                burst: 64,
            },
            version_negotiation: Rate {
                per_sec: 16,
                burst: 32,
            },
            admit_under_pressure: true,
        }
    }
}

impl ShieldConfig {
    /// Checks what the program can hold.
    pub fn validate(&self) -> Result<(), XdpError> {
        let bad = |m: String| Err(XdpError::BadArgument(m));
        if self.versions.is_empty() || self.versions.len() > MAX_VERSIONS {
            return bad(format!(
                "the shield needs 1 to {MAX_VERSIONS} versions, got {}",
                self.versions.len()
            ));
        }
        if let Some(v) = self.versions.iter().find(|&&v| v == 0 || v == QUIC_V2) {
            return bad(format!(
                "version {v:#010x} cannot be spoken through the shield (0 is version \
                 negotiation; QUIC v2 numbers its packet types differently from v1)"
            ));
        }
        if self.prefix_v4 > 32 || self.prefix_v6 > 128 {
            return bad(format!(
                "source prefixes are at most /32 (IPv4) and /128 (IPv6), got /{} and /{}",
                self.prefix_v4, self.prefix_v6
            ));
        }
        for (what, r) in [
            ("initial", self.initial),
            ("version negotiation", self.version_negotiation),
        ] {
            if r.burst == 0 || r.per_sec > MAX_RATE {
                return bad(format!(
                    "the {what} rate needs a burst of at least 1 and at most {MAX_RATE} a \
                     second, got {} a second, bursts of {}",
                    r.per_sec, r.burst
                ));
            }
        }
        Ok(())
    }

    /// Reads the configuration back from a map entry; `None` when the shield is off.
    pub fn from_map(s: &Shield) -> Option<Self> {
        if s.flags & SHIELD_ON == 0 {
            return None;
        }
        Some(Self {
            versions: s.versions.iter().copied().filter(|&v| v != 0).collect(),
            prefix_v4: s.prefix4,
            prefix_v6: s.prefix6,
            initial: s.initial,
            version_negotiation: s.version,
            admit_under_pressure: s.flags & SHIELD_ADMIT != 0,
        })
    }

    /// `entry` with this configuration on, its CID layout kept.
    fn apply(&self, entry: &Shield) -> Shield {
        let mut versions = [0u32; MAX_VERSIONS];
        versions[..self.versions.len()].copy_from_slice(&self.versions);
        let mut flags = (entry.flags & SHIELD_CID) | SHIELD_ON;
        if self.admit_under_pressure {
            flags |= SHIELD_ADMIT;
        }
        Shield {
            flags,
            prefix4: self.prefix_v4,
            prefix6: self.prefix_v6,
            versions,
            initial: self.initial,
            version: self.version_negotiation,
            ..*entry
        }
    }
}

/// `entry` with the shield off (its CID layout kept: it counts only while the shield is on).
fn off(entry: &Shield) -> Shield {
    Shield {
        flags: entry.flags & SHIELD_CID,
        cid_first: entry.cid_first,
        sid_len: entry.sid_len,
        workers: entry.workers,
        server_id: entry.server_id,
        ..Shield::default()
    }
}

/// `entry` with `layout` as the CIDs of the server (`None`: no check of short headers).
fn with_layout(entry: &Shield, layout: Option<&CidLayout>) -> anyhow::Result<Shield> {
    let mut s = *entry;
    s.flags &= !SHIELD_CID;
    s.cid_first = 0;
    s.sid_len = 0;
    s.workers = 0;
    s.server_id = [0; 16];
    if let Some(l) = layout {
        let sid = l.server_id();
        anyhow::ensure!(
            sid.len() <= MAX_SERVER_ID,
            "a server id of {} octets does not fit a CID",
            sid.len()
        );
        s.flags |= SHIELD_CID;
        s.cid_first = l.first_octet();
        s.sid_len = sid.len() as u8;
        s.workers = l.workers() as u16;
        s.server_id[..sid.len()].copy_from_slice(sid);
    }
    Ok(s)
}

/// What [`ShieldMaps::clear_left_by_server`] found a server that is gone had left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeftByServer {
    /// Nothing (or another live server holds queues of the attachment).
    Nothing,
    /// The shield it turned on for its life: turned off, its CID layout and pressure flags
    /// cleared.
    Shield,
    /// Its CID layout or pressure flags on a shield `xdp-quic attach --shield` turned on
    /// (which stays), or flags on a shield that is off: cleared.
    Layout,
}

/// The `shield` and `pressure` maps of one program, on descriptors of their own.
pub struct ShieldMaps {
    shield: Array<MapData, Shield>,
    pressure: Array<MapData, u32>,
    /// An attachment's pinned maps, which other processes change too (`attach --shield`, a
    /// server's [`ShieldGuard`]): their entry is read, changed and written back under the
    /// pin lock ([`pins::PinLock`]).
    pinned: bool,
    /// The pin directory of an attachment's maps: where the registrations of other servers
    /// on it are found ([`ShieldMaps::left_by_server`]).
    dir: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for ShieldMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShieldMaps").finish_non_exhaustive()
    }
}

/// A second descriptor on `map` (an ARRAY): a `dup` of its own, which needs no capability
/// (opening the map again by id needs CAP_SYS_ADMIN, which a least-privileged server lacks).
fn dup(map: &MapData) -> anyhow::Result<Map> {
    let fd = map.fd().as_fd().try_clone_to_owned()?;
    Ok(Map::Array(MapData::from_fd(fd)?))
}

/// Whether no process but this one holds an AF_XDP socket registered on the attachment
/// pinned in `dir`, on a queue outside `ours` (`None`: maps of a program this process
/// loaded, on which no other server registers).
fn no_other_server_in(dir: Option<&std::path::Path>, ours: &[u32]) -> anyhow::Result<bool> {
    Ok(other_servers_in(dir, ours)?.is_empty())
}

/// The queues outside `ours` on which another live process holds an AF_XDP socket
/// registered on the attachment pinned in `dir` (none for a loaded program's maps).
fn other_servers_in(dir: Option<&std::path::Path>, ours: &[u32]) -> anyhow::Result<Vec<u32>> {
    let Some(dir) = dir else {
        return Ok(Vec::new());
    };
    let mut others = super::maps::ProgramMaps::open_pinned(dir)?.registered_queues(u32::MAX)?;
    others.retain(|q| !ours.contains(q));
    Ok(others)
}

/// Whether `a` and `b` hold the same CID layout (or both none).
fn same_layout(a: &Shield, b: &Shield) -> bool {
    let layout = |s: &Shield| {
        (s.flags & SHIELD_CID != 0).then_some((s.cid_first, s.sid_len, s.workers, s.server_id))
    };
    layout(a) == layout(b)
}

fn array_data(map: &Map) -> anyhow::Result<&MapData> {
    let Map::Array(data) = map else {
        anyhow::bail!("expected an ARRAY map");
    };
    Ok(data)
}

impl ShieldMaps {
    /// Second descriptors on `shield` and `pressure` (of a loaded program or an attachment).
    pub(crate) fn from_maps(shield: &Map, pressure: &Map) -> anyhow::Result<Self> {
        Ok(Self {
            shield: Array::try_from(dup(array_data(shield)?)?)?,
            pressure: Array::try_from(dup(array_data(pressure)?)?)?,
            pinned: false,
            dir: None,
        })
    }

    /// Other descriptors on the same maps.
    pub fn try_clone(&self) -> anyhow::Result<Self> {
        Ok(Self {
            shield: Array::try_from(dup(self.shield.map())?)?,
            pressure: Array::try_from(dup(self.pressure.map())?)?,
            pinned: self.pinned,
            dir: self.dir.clone(),
        })
    }

    /// The maps `xdp-quic attach` pinned for `iface`; [`XdpError::NotAttached`] when there
    /// are none.
    pub fn from_pins(iface: &str) -> anyhow::Result<Self> {
        let dir = pins::dir(iface);
        // Pins are named by interface alone: another namespace's, of the same name, are not
        // this interface's to change.
        if pins_of_another_namespace(iface) {
            return Err(XdpError::OtherNamespace {
                iface: iface.into(),
                path: dir,
            }
            .into());
        }
        let open = |name: &str| -> anyhow::Result<Map> {
            let path = dir.join(name);
            if !path.exists() {
                return Err(XdpError::NotAttached {
                    iface: iface.into(),
                    path: dir.clone(),
                }
                .into());
            }
            let data = MapData::from_pin(&path)
                .map_err(|e| anyhow::anyhow!("opening {}: {e}", path.display()))?;
            Ok(Map::from_map_data(data)?)
        };
        let (shield, pressure) = (
            open(xdp_quic_ebpf::maps::SHIELD)?,
            open(xdp_quic_ebpf::maps::PRESSURE)?,
        );
        Ok(Self {
            shield: Array::try_from(shield)?,
            pressure: Array::try_from(pressure)?,
            pinned: true,
            dir: Some(dir),
        })
    }

    /// Reads the entry, changes it with `f` and writes it back; for pinned maps under the
    /// pin lock, so that another process's change made meanwhile is not written over (a
    /// process that may open the maps but not lock their directory goes without).
    /// Returns what `f` returned besides the entry.
    pub fn update<T>(
        &mut self,
        f: impl FnOnce(&Shield) -> anyhow::Result<(Shield, T)>,
    ) -> anyhow::Result<T> {
        let _lock = self.lock();
        let entry = self.entry()?;
        let (next, out) = f(&entry)?;
        self.write_from(&entry, &next)?;
        Ok(out)
    }

    /// The pin lock, for pinned maps (`None` for a loaded program's, or where the lock
    /// cannot be taken: then changes go without it).
    fn lock(&self) -> Option<pins::PinLock> {
        if !self.pinned {
            return None;
        }
        pins::PinLock::existing().unwrap_or_else(|e| {
            tracing::debug!("changing the shield without the pin lock: {e}");
            None
        })
    }

    /// The map entry as it is.
    pub fn entry(&self) -> anyhow::Result<Shield> {
        Ok(self.shield.get(&0, 0)?)
    }

    /// Writes the map entry as given (what [`ShieldMaps::entry`] read, to restore it), in
    /// [`staged`] steps.
    pub fn set_entry(&mut self, s: &Shield) -> anyhow::Result<()> {
        let old = self.entry()?;
        self.write_from(&old, s)
    }

    /// Writes `new` over `old` (the entry as last read) in [`staged`] steps.
    fn write_from(&mut self, old: &Shield, new: &Shield) -> anyhow::Result<()> {
        for step in staged(old, new) {
            self.shield.set(0, step, 0)?;
        }
        Ok(())
    }

    /// Whether the shield is on because a server turned it on for its life
    /// ([`ShieldGuard::engage`] over an attachment made without `--shield`), rather than
    /// `xdp-quic attach --shield`. Whether that server is still there is for
    /// [`ShieldMaps::left_by_server`] to tell.
    pub fn on_for_a_server(&self) -> anyhow::Result<bool> {
        let e = self.entry()?;
        Ok(e.flags & SHIELD_ON != 0 && e.flags & SHIELD_SERVER != 0)
    }

    /// Whether the shield is on for a server ([`ShieldMaps::on_for_a_server`]) that is
    /// gone: no process but this one holds an AF_XDP socket registered on the attachment
    /// (on a queue outside `ours`, this engine's own). Such a shield is what a server that
    /// did not stop cleanly (killed) left behind, its CID layout too. (Another live server
    /// on other queues of the attachment may own it: then it is not stale.)
    pub fn left_by_server(&self, ours: &[u32]) -> anyhow::Result<bool> {
        Ok(self.on_for_a_server()? && self.no_other_server(ours)?)
    }

    /// Whether no process but this one holds an AF_XDP socket registered on the attachment,
    /// on a queue outside `ours`.
    fn no_other_server(&self, ours: &[u32]) -> anyhow::Result<bool> {
        no_other_server_in(self.dir.as_deref(), ours)
    }

    /// Clears what a server that is gone left on the shield, for a server that serves
    /// queues `ours` of the attachment without engaging the shield: a shield it turned on
    /// goes whole ([`ShieldMaps::left_by_server`]); on a shield `xdp-quic attach --shield`
    /// turned on, which stays, its CID layout goes (it would drop the short headers of
    /// workers beyond its count), and in both cases its pressure flags (a flag left on
    /// would rate-limit tokenless Initials there for good). Nothing changes while another
    /// live server holds queues of the attachment: what is there may be its own.
    pub fn clear_left_by_server(&mut self, ours: &[u32]) -> anyhow::Result<LeftByServer> {
        // Looked at and changed under the pin lock: a server engaging the shield meanwhile
        // (it writes its layout under the lock, after it registered its sockets) either is
        // seen registered here, or writes its layout after this.
        let _lock = self.lock();
        let entry = self.entry()?;
        let server = entry.flags & SHIELD_ON != 0 && entry.flags & SHIELD_SERVER != 0;
        let layout = entry.flags & SHIELD_CID != 0;
        let pressured = self.pressured(xdp_quic_ebpf::MAX_QUEUES)?;
        if !(server || layout || !pressured.is_empty()) || !self.no_other_server(ours)? {
            return Ok(LeftByServer::Nothing);
        }
        if server {
            self.set_entry(&with_layout(&off(&entry), None)?)?;
        } else if layout {
            let mut e = with_layout(&entry, None)?;
            e.engaged = 0;
            self.set_entry(&e)?;
        }
        // No other server holds a queue of the attachment: every flag is a dead one's.
        for q in pressured {
            self.set_pressure(q, false)?;
        }
        Ok(if server {
            LeftByServer::Shield
        } else {
            LeftByServer::Layout
        })
    }

    /// Refuses a server that serves queues `ours` of the attachment without engaging the
    /// shield, with CIDs of `layout`, while another live server holds queues of it and the
    /// shield is on with a layout that would drop its short headers (another first octet
    /// or server id, or fewer workers than its own).
    pub fn check_plain_server_fits(&self, layout: &CidLayout, ours: &[u32]) -> anyhow::Result<()> {
        let _lock = self.lock();
        let e = match self.entry() {
            Ok(e) => e,
            // As where a server clears what a killed one left: said, and no reason to stop.
            Err(err) => {
                tracing::warn!("cannot read the XDP shield: {err:#}");
                return Ok(());
            }
        };
        if e.flags & SHIELD_ON == 0 || e.flags & SHIELD_CID == 0 {
            return Ok(());
        }
        let sid = layout.server_id();
        let fits = e.cid_first == layout.first_octet()
            && usize::from(e.sid_len) == sid.len()
            && e.server_id[..sid.len()] == *sid
            && layout.workers() <= usize::from(e.workers);
        if fits {
            return Ok(());
        }
        let others = match other_servers_in(self.dir.as_deref(), ours) {
            Ok(o) => o,
            Err(err) => {
                tracing::warn!("cannot read the XDP socket registrations: {err:#}");
                return Ok(());
            }
        };
        anyhow::ensure!(
            others.is_empty(),
            "another server holds queues {others:?} of this attachment, whose shield is on \
             with a CID layout this server's CIDs do not fit (length, server id, config \
             rotation, or {} workers where this one has {}): the shield would drop this \
             server's short headers; give it the same connection ids and at most as many \
             workers, engage the shield with it, or serve it on an attachment of its own",
            e.workers,
            layout.workers()
        );
        Ok(())
    }

    /// The configuration; `None` when the shield is off.
    pub fn config(&self) -> anyhow::Result<Option<ShieldConfig>> {
        Ok(ShieldConfig::from_map(&self.entry()?))
    }

    /// Turns the shield on with `config`, or off (`None`); the CID layout stays.
    pub fn set_config(&mut self, config: Option<&ShieldConfig>) -> anyhow::Result<()> {
        if let Some(c) = config {
            c.validate()?;
        }
        self.update(|entry| {
            let next = match config {
                Some(c) => c.apply(entry),
                None => off(entry),
            };
            Ok((next, ()))
        })
    }

    /// The CIDs of the server the program steers to (`None`: short headers are not
    /// checked). Write exactly the engine's layout: a short header that does not fit it is
    /// dropped while the shield is on.
    pub fn set_layout(&mut self, layout: Option<&CidLayout>) -> anyhow::Result<()> {
        self.update(|entry| Ok((with_layout(entry, layout)?, ())))
    }

    /// Sets or clears the pressure flag of rx queue `queue`.
    pub fn set_pressure(&mut self, queue: u32, on: bool) -> anyhow::Result<()> {
        self.pressure.set(queue, u32::from(on), 0)?;
        Ok(())
    }

    /// Whether rx queue `queue` is flagged as under pressure.
    pub fn pressure(&self, queue: u32) -> anyhow::Result<bool> {
        Ok(self.pressure.get(&queue, 0)? != 0)
    }

    /// The queues among `0..queues` flagged as under pressure.
    pub fn pressured(&self, queues: u32) -> anyhow::Result<Vec<u32>> {
        let mut v = Vec::new();
        for q in 0..queues.min(xdp_quic_ebpf::MAX_QUEUES) {
            if self.pressure(q)? {
                v.push(q);
            }
        }
        Ok(v)
    }
}

/// The shield engaged for a running server engine: on with its configuration, the engine's
/// CID layout written, and a [`PressureMonitor`] keeping the pressure flags of its queues.
/// Dropping it stops the monitor (clearing the flags), removes the layout, and turns the
/// shield off again if a server turned it on (this one, or one it shared it with) and it
/// still holds the configuration this guard wrote (a configuration changed meanwhile, by
/// `xdp-quic attach --shield`, is kept); while other servers that engaged it with this one
/// still hold queues of the attachment, it leaves the shield to them (the entry counts the
/// servers that engaged it: `Shield::engaged`).
///
/// [`ShieldGuard::engage`] refuses when another live server holds queues of the attachment
/// and serves without the shield, or engaged it with another CID layout or other rules: the
/// program checks one layout, with one set of rules, per attachment.
pub struct ShieldGuard {
    maps: ShieldMaps,
    /// The configuration this guard turned on.
    wrote: ShieldConfig,
    /// The engine's queues (other servers' registrations are on the others).
    ours: Vec<u32>,
    monitor: Option<PressureMonitor>,
}

impl std::fmt::Debug for ShieldGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShieldGuard")
            .field("queues", &self.ours)
            .field("monitor", &self.monitor)
            .finish_non_exhaustive()
    }
}

impl ShieldGuard {
    /// Engages the shield in `maps` for `engine` (over AF_XDP, one queue per worker):
    /// `config` on, `layout` (exactly the engine's CIDs: `EngineBuilder::connection_ids`, as
    /// many workers as queues) written, and, when `config` admits under pressure, a monitor
    /// per `policy` that calls `report` on each change.
    pub fn engage<H: xdp_quic::Handler>(
        maps: ShieldMaps,
        config: &ShieldConfig,
        layout: &CidLayout,
        engine: &xdp_quic::Engine<H>,
        policy: PressurePolicy,
        report: Option<Box<dyn FnMut(PressureChange) + Send>>,
    ) -> anyhow::Result<Self> {
        config.validate()?;
        anyhow::ensure!(
            layout.workers() == engine.xsk_queues().len(),
            "the CID layout names {} workers, the engine has {} AF_XDP queues",
            layout.workers(),
            engine.xsk_queues().len()
        );
        let ours: Vec<u32> = engine.xsk_queues().iter().map(|q| q.queue).collect();
        // Started before the shield is changed: a monitor that cannot start changes nothing
        // (dropped, it clears only its own queues' flags).
        let monitor = if config.admit_under_pressure {
            Some(PressureMonitor::for_engine(
                maps.try_clone()?,
                engine,
                policy,
                report,
            )?)
        } else {
            None
        };
        let mut maps = maps;
        // On, with this engine's layout, and, when this server turns it on for its life,
        // marked so, in one locked change: whether it was on, and whether other servers hold
        // queues of the attachment and engaged it, are read in it too, so that an `attach
        // --shield`, or another server that engaged the shield, just before is seen, and its
        // shield not taken for one a server that is gone left on.
        let dir = maps.dir.clone();
        let wrote = maps.update(|before| {
            let others = other_servers_in(dir.as_deref(), &ours)?;
            let on = ShieldConfig::from_map(before).is_some();
            let left_by_server = on && before.flags & SHIELD_SERVER != 0 && others.is_empty();
            let was_on = on && !left_by_server;
            // Servers that engaged it and still serve (a count no live server holds is what
            // killed ones left).
            let engaged = if others.is_empty() { 0 } else { before.engaged };
            let mut e = with_layout(&config.apply(before), Some(layout))?;
            if !others.is_empty() {
                // The program checks one CID layout per attachment, with one set of rules:
                // servers on other queues share the shield only when they engaged it with the
                // same ones. Writing ours over theirs, or under a server that serves without
                // the shield, would drop its short headers that do not fit ours.
                let why = if engaged == 0 {
                    "serves without engaging the shield"
                } else if !same_layout(before, &e) {
                    "engaged the shield with other CIDs (length, server id, config rotation or \
                     worker count)"
                } else if ShieldConfig::from_map(before) != ShieldConfig::from_map(&e) {
                    "engaged the shield with other rules"
                } else {
                    ""
                };
                anyhow::ensure!(
                    why.is_empty(),
                    "another server holds queues {others:?} of this attachment and {why}: \
                     servers on one attachment share the shield only with the same CIDs, worker \
                     count and rules; serve this one without the shield, or on an attachment of \
                     its own"
                );
            }
            e.engaged = engaged.saturating_add(1);
            // A server's mark stays a server's (one already on, of a server on other queues,
            // keeps its mark: the last server to go turns it off, or the next one finds it
            // stale), rather than passing for an operator's `attach --shield` for good.
            if !was_on || before.flags & SHIELD_SERVER != 0 {
                e.flags |= SHIELD_SERVER;
            }
            // As the map will hold it, to tell at drop whether anyone changed it since.
            let wrote = ShieldConfig::from_map(&e).unwrap_or_else(|| config.clone());
            Ok((e, wrote))
        })?;
        Ok(Self {
            maps,
            wrote,
            ours,
            monitor,
        })
    }

    /// What the pressure monitor publishes (none when the shield does not admit under
    /// pressure).
    pub fn pressure(&self) -> Option<Arc<PressureView>> {
        self.monitor.as_ref().map(PressureMonitor::view)
    }
}

impl Drop for ShieldGuard {
    fn drop(&mut self) {
        drop(self.monitor.take());
        let wrote = &self.wrote;
        let dir = self.maps.dir.clone();
        let queues = &self.ours;
        let restored = self.maps.update(|e| {
            // Other servers that engaged it with this one still serve: it stays, one fewer,
            // for the last one to put back.
            let remaining = e.engaged.saturating_sub(1);
            if remaining > 0 && !other_servers_in(dir.as_deref(), queues)?.is_empty() {
                let mut e = *e;
                e.engaged = remaining;
                return Ok((e, ()));
            }
            // Ours: the configuration this server (or one it shared the shield with, now
            // gone) wrote, still marked as a server's (an `attach --shield` since clears the
            // mark, and its shield stays).
            // (A shield that was on when this server engaged it is not marked as a server's
            // unless a server had turned it on.)
            let ours =
                e.flags & SHIELD_SERVER != 0 && ShieldConfig::from_map(e).as_ref() == Some(wrote);
            let mut e = with_layout(&if ours { off(e) } else { *e }, None)?;
            e.engaged = 0;
            Ok((e, ()))
        });
        if let Err(e) = restored {
            tracing::warn!("cannot put the XDP shield back as it was: {e:#}");
        }
    }
}

/// Turns the shield on or off for `iface`'s pinned attachment; returns what it was.
/// `xdp-quic attach --shield` and `--no-shield` set it with the attachment, under the same
/// lock ([`AttachOptions::shield`](super::AttachOptions::shield)); this changes the shield
/// alone.
pub fn set_pinned(
    iface: &str,
    config: Option<&ShieldConfig>,
) -> anyhow::Result<Option<ShieldConfig>> {
    if let Some(c) = config {
        c.validate()?;
    }
    let mut maps = ShieldMaps::from_pins(iface)?;
    maps.update(|entry| Ok(switched(entry, config)))
}

/// `entry` with the shield on with `config`, or off; and what it was.
fn switched(entry: &Shield, config: Option<&ShieldConfig>) -> (Shield, Option<ShieldConfig>) {
    let before = ShieldConfig::from_map(entry);
    let next = match config {
        Some(c) => c.apply(entry),
        None => off(entry),
    };
    (next, before)
}

/// Turns the shield on (`Some`) or off on the `shield` map of a loaded program or an
/// attachment, whose pins the caller has locked (or which has none yet), through the
/// descriptor `maps` holds (opening a map by id would need CAP_SYS_ADMIN, which an attach
/// does not). Returns the entry before, for [`restore_entry`], and the configuration it held.
pub(crate) fn set_on_maps(
    maps: &mut super::ProgramMaps,
    config: Option<&ShieldConfig>,
) -> anyhow::Result<(Shield, Option<ShieldConfig>)> {
    let mut shield: Array<&mut MapData, Shield> = Array::try_from(&mut maps.shield)?;
    let entry = shield.get(&0, 0)?;
    let (next, before) = switched(&entry, config);
    for step in staged(&entry, &next) {
        shield.set(0, step, 0)?;
    }
    Ok((entry, before))
}

/// Writes back an entry [`set_on_maps`] returned.
pub(crate) fn restore_entry(maps: &mut super::ProgramMaps, entry: &Shield) -> anyhow::Result<()> {
    let mut shield: Array<&mut MapData, Shield> = Array::try_from(&mut maps.shield)?;
    let now = shield.get(&0, 0)?;
    for step in staged(&now, entry) {
        shield.set(0, step, 0)?;
    }
    Ok(())
}

/// The writes that take the shield entry from `old` to `new`, in order. An array map's
/// update copies the entry in while the program may read it on another CPU, so one read
/// can mix the two. So the shield goes off first (the same entry, `SHIELD_ON` clear: a mix
/// differs only in that aligned word), then the new rules and layout go in while it is off
/// (a mix of two entries that are both off is off: the program checks nothing), then it
/// comes on (again only the flags word differs). A read that still mixes two entries that
/// are on takes one program run (it reads the flags first, the rules later) to span two
/// of these updates (system calls). The cost is a few packets let through unchecked while
/// the rules change; a change of the flags word alone (on or off, the servers' mark) or of
/// what the program does not read (`engaged`) is one write.
pub(crate) fn staged(old: &Shield, new: &Shield) -> Vec<Shield> {
    let mut steps = Vec::with_capacity(3);
    if old == new {
        return steps;
    }
    // Only the flags word differs (and the count, which the program does not read): one
    // aligned word, which a read takes whole.
    let mut same_but_flags = *old;
    same_but_flags.flags = new.flags;
    same_but_flags.engaged = new.engaged;
    if same_but_flags == *new {
        steps.push(*new);
        return steps;
    }
    let mut at = *old;
    if at.flags & SHIELD_ON != 0 {
        at.flags &= !SHIELD_ON;
        steps.push(at);
    }
    if new.flags & SHIELD_ON != 0 {
        let mut off = *new;
        off.flags &= !SHIELD_ON;
        if off != at {
            steps.push(off);
            at = off;
        }
    }
    if at != *new {
        steps.push(*new);
    }
    steps
}

/// The shield's configuration on the `shield` map `maps` holds; `None` when it is off.
pub(crate) fn config_on_maps(maps: &super::ProgramMaps) -> anyhow::Result<Option<ShieldConfig>> {
    let shield: Array<&MapData, Shield> = Array::try_from(&maps.shield)?;
    Ok(ShieldConfig::from_map(&shield.get(&0, 0)?))
}

/// Whether the pins named `iface` hold another network namespace's attachment.
fn pins_of_another_namespace(iface: &str) -> bool {
    matches!(
        super::attach::inspect(iface),
        Ok(super::attach::Pinned::OtherNamespace)
    )
}

/// The shield of `iface`'s pinned attachment as `xdp-quic attach --shield` set it; `Ok(None)`
/// when it is off, nothing is pinned (here: pins of that name in another network namespace
/// are not this interface's), or a server turned it on for its life (see
/// [`ShieldMaps::on_for_a_server`]).
pub fn pinned(iface: &str) -> anyhow::Result<Option<ShieldConfig>> {
    if !pins::dir(iface).join(xdp_quic_ebpf::maps::SHIELD).exists()
        || pins_of_another_namespace(iface)
    {
        return Ok(None);
    }
    let maps = ShieldMaps::from_pins(iface)?;
    if maps.on_for_a_server()? {
        return Ok(None);
    }
    maps.config()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every step of a change differs from the one before only in its flags word (and the
    /// count the program does not read), or both are off; the last is the new entry; a
    /// change of the servers' bookkeeping alone is one write.
    #[test]
    fn entry_changes_never_mix_two_entries_that_are_on() {
        let layout = CidLayout::for_workers(2).unwrap();
        let on = ShieldConfig::default().apply(&Shield::default());
        let on_cid = with_layout(&on, Some(&layout)).unwrap();
        let other = ShieldConfig {
            prefix_v4: 16,
            ..ShieldConfig::default()
        }
        .apply(&on_cid);
        let off_cid = with_layout(&Shield::default(), Some(&layout)).unwrap();
        let mut counted = on_cid;
        counted.engaged = 2;
        counted.flags |= SHIELD_SERVER;
        assert_eq!(
            staged(&on_cid, &counted),
            [counted],
            "bookkeeping: one write"
        );
        let off_same = Shield {
            flags: on_cid.flags & !SHIELD_ON,
            ..on_cid
        };
        assert_eq!(
            staged(&on_cid, &off_same),
            [off_same],
            "the flags alone: one write"
        );
        let entries = [Shield::default(), on, on_cid, other, off_cid, counted];
        for old in &entries {
            for new in &entries {
                let steps = staged(old, new);
                assert_eq!(steps.last().unwrap_or(old), new);
                let mut at = *old;
                for s in &steps {
                    // What the program reads: all but the flags word and the count.
                    let mut a = at;
                    a.flags = s.flags;
                    a.engaged = s.engaged;
                    let only_flags = a == *s;
                    let both_off = at.flags & SHIELD_ON == 0 && s.flags & SHIELD_ON == 0;
                    assert!(only_flags || both_off, "{at:?} -> {s:?}");
                    at = *s;
                }
                if old == new {
                    assert!(steps.is_empty());
                }
            }
        }
    }

    #[test]
    fn default_versions_are_quinn_protos() {
        assert_eq!(
            &DEFAULT_VERSIONS[..],
            quinn_proto::DEFAULT_SUPPORTED_VERSIONS
        );
    }

    #[test]
    fn default_config_is_valid_and_round_trips() {
        let c = ShieldConfig::default();
        c.validate().unwrap();
        let entry = c.apply(&Shield::default());
        assert_eq!(entry.flags, SHIELD_ON | SHIELD_ADMIT);
        assert_eq!(ShieldConfig::from_map(&entry), Some(c));
        assert_eq!(ShieldConfig::from_map(&off(&entry)), None);
    }

    #[test]
    fn layout_survives_config_changes_and_config_survives_layout_changes() {
        let layout = CidLayout::new(10, 3, &[0xab, 0xcd], 4).unwrap();
        let entry = with_layout(&Shield::default(), Some(&layout)).unwrap();
        assert_eq!(entry.flags, SHIELD_CID);
        assert_eq!(entry.cid_first, (3 << 5) | 9);
        assert_eq!(entry.sid_len, 2);
        assert_eq!(&entry.server_id[..2], &[0xab, 0xcd]);
        assert_eq!(entry.workers, 4);
        let on = ShieldConfig::default().apply(&entry);
        assert_eq!(on.flags, SHIELD_ON | SHIELD_ADMIT | SHIELD_CID);
        assert_eq!((on.cid_first, on.workers), (entry.cid_first, 4));
        let cleared = with_layout(&on, None).unwrap();
        assert_eq!(cleared.flags, SHIELD_ON | SHIELD_ADMIT);
        assert_eq!(
            ShieldConfig::from_map(&cleared),
            Some(ShieldConfig::default())
        );
        let off = off(&on);
        assert_eq!(off.flags, SHIELD_CID);
        assert_eq!(off.versions, [0; MAX_VERSIONS]);
    }

    #[test]
    fn bad_configs_are_refused() {
        let bad = |f: fn(&mut ShieldConfig)| {
            let mut c = ShieldConfig::default();
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert!(bad(|c| c.versions.clear()).contains("1 to 8 versions"));
        assert!(bad(|c| c.versions = vec![1; 9]).contains("1 to 8 versions"));
        assert!(bad(|c| c.versions = vec![1, 0]).contains("0x00000000"));
        assert!(bad(|c| c.versions = vec![QUIC_V2]).contains("0x6b3343cf"));
        assert!(bad(|c| c.prefix_v4 = 33).contains("/33"));
        assert!(bad(|c| c.prefix_v6 = 129).contains("/129"));
        assert!(bad(|c| c.initial.burst = 0).contains("initial rate"));
        assert!(bad(|c| c.version_negotiation.per_sec = MAX_RATE + 1)
            .contains("version negotiation rate"));
    }
}
