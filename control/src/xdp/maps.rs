//! The program's maps, either just loaded or opened from their pins, and the service
//! configuration (ports, addresses) written into them.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::Path;

use anyhow::Context as _;
use aya::maps::{Array, HashMap, Map, MapData};
use xdp_quic_ebpf::{maps as names, Config, Shield, XskOwner, CFG_FILTER_ADDRS};

use super::XdpError;

/// What is steered: UDP to one of `ports`, and, when `addrs` is not empty, to one of
/// `addrs`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServiceConfig {
    /// UDP destination ports (at least one, at most `xdp_quic_ebpf::MAX_PORTS`).
    pub ports: BTreeSet<u16>,
    /// Destination addresses; empty means any (at most `MAX_ADDRS` per family).
    pub addrs: BTreeSet<IpAddr>,
}

impl ServiceConfig {
    /// Checks the limits of the maps; a port 0 or an empty port set is refused.
    pub fn validate(&self) -> Result<(), XdpError> {
        if self.ports.is_empty() {
            return Err(XdpError::BadArgument(
                "at least one --port is needed".into(),
            ));
        }
        if self.ports.contains(&0) {
            return Err(XdpError::BadArgument(
                "port 0 is not a valid service port".into(),
            ));
        }
        if self.ports.len() > xdp_quic_ebpf::MAX_PORTS as usize {
            return Err(XdpError::BadArgument(format!(
                "at most {} ports",
                xdp_quic_ebpf::MAX_PORTS
            )));
        }
        // No packet is addressed to these as a service's destination: an attachment for
        // one would steer nothing.
        if let Some(a) = self.addrs.iter().find(|a| {
            let a = a.to_canonical();
            a.is_unspecified()
                || a.is_multicast()
                || matches!(a, IpAddr::V4(v4) if v4.is_broadcast())
        }) {
            return Err(XdpError::BadArgument(format!(
                "{a} is not an address a service is reached at (unspecified, multicast or \
                 broadcast): leave --addr out to steer every address"
            )));
        }
        // The program looks IPv4 packets up in the IPv4 table: a mapped address in the IPv6
        // one would match nothing.
        if let Some(a) = self
            .addrs
            .iter()
            .find(|a| matches!(a, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some()))
        {
            return Err(XdpError::BadArgument(format!(
                "{a} is an IPv4-mapped address: give it as the IPv4 address {}, which its \
                 packets carry",
                a.to_canonical()
            )));
        }
        let v4 = self.addrs.iter().filter(|a| a.is_ipv4()).count();
        if v4 > xdp_quic_ebpf::MAX_ADDRS as usize
            || self.addrs.len() - v4 > xdp_quic_ebpf::MAX_ADDRS as usize
        {
            return Err(XdpError::BadArgument(format!(
                "at most {} addresses per family",
                xdp_quic_ebpf::MAX_ADDRS
            )));
        }
        Ok(())
    }
}

/// Handles on the maps of one program instance.
#[derive(Debug)]
pub struct ProgramMaps {
    /// `xsks` (XSKMAP).
    pub xsks: Map,
    /// `ports`.
    pub ports: Map,
    /// `addrs4`.
    pub addrs4: Map,
    /// `addrs6`.
    pub addrs6: Map,
    /// `config`.
    pub config: Map,
    /// `counters`.
    pub counters: Map,
    /// `xsk_owners`.
    pub xsk_owners: Map,
    /// `shield`.
    pub shield: Map,
    /// `pressure`.
    pub pressure: Map,
    /// `buckets`.
    pub buckets: Map,
}

impl ProgramMaps {
    /// Takes the maps out of a freshly loaded object.
    pub fn take(ebpf: &mut aya::Ebpf) -> anyhow::Result<Self> {
        let mut take = |n: &str| {
            ebpf.take_map(n)
                .with_context(|| format!("map '{n}' missing from the object"))
        };
        Ok(Self {
            xsks: take(names::XSKS)?,
            ports: take(names::PORTS)?,
            addrs4: take(names::ADDRS4)?,
            addrs6: take(names::ADDRS6)?,
            config: take(names::CONFIG)?,
            counters: take(names::COUNTERS)?,
            xsk_owners: take(names::XSK_OWNERS)?,
            shield: take(names::SHIELD)?,
            pressure: take(names::PRESSURE)?,
            buckets: take(names::BUCKETS)?,
        })
    }

    /// Opens the maps pinned in `dir`.
    pub fn open_pinned(dir: &Path) -> anyhow::Result<Self> {
        let open = |n: &str| -> anyhow::Result<Map> {
            let p = dir.join(n);
            let data = MapData::from_pin(&p)
                .with_context(|| format!("opening pinned map {}", p.display()))?;
            Ok(Map::from_map_data(data)?)
        };
        Ok(Self {
            xsks: open(names::XSKS)?,
            ports: open(names::PORTS)?,
            addrs4: open(names::ADDRS4)?,
            addrs6: open(names::ADDRS6)?,
            config: open(names::CONFIG)?,
            counters: open(names::COUNTERS)?,
            xsk_owners: open(names::XSK_OWNERS)?,
            shield: open(names::SHIELD)?,
            pressure: open(names::PRESSURE)?,
            buckets: open(names::BUCKETS)?,
        })
    }

    /// Opens, by id, the maps of a program whose maps are `map_ids`: those bearing
    /// xdp-quic's map names, and `xsk_owners`, which the program does not use (so the
    /// kernel does not list it) and whose id the control plane records in the config entry
    /// (`Config::reserved`, written when the program is loaded). `Ok(None)` unless every one of them
    /// is there.
    pub fn open_by_ids(map_ids: &[u32]) -> anyhow::Result<Option<Self>> {
        type Found = std::collections::HashMap<&'static str, Map>;
        /// Opens map `id` into `found` if it bears one of xdp-quic's names (`only`: that one).
        fn open(found: &mut Found, id: u32, only: Option<&str>) -> anyhow::Result<()> {
            let info = aya::maps::MapInfo::from_id(id)
                .with_context(|| format!("reading the info of map {id}"))?;
            let Some(name) = names::ALL
                .iter()
                .find(|n| info.name_as_str() == Some(**n) && only.is_none_or(|o| o == **n))
            else {
                return Ok(());
            };
            let data = MapData::from_id(id).with_context(|| format!("opening map {id}"))?;
            found.insert(name, Map::from_map_data(data)?);
            Ok(())
        }
        let mut found = Found::default();
        for &id in map_ids {
            open(&mut found, id, None)?;
        }
        let owners_id = match found.get(names::CONFIG) {
            Some(config) => {
                let a: Array<&MapData, Config> = Array::try_from(config)?;
                a.get(&0, 0)?.reserved
            }
            None => 0,
        };
        if owners_id != 0 && !found.contains_key(names::XSK_OWNERS) {
            // The map may be gone (its id then names nothing, or another map): not found.
            let _ = open(&mut found, owners_id, Some(names::XSK_OWNERS));
        }
        let mut take = |n: &str| found.remove(n);
        let maps = (|| {
            Some(Self {
                xsks: take(names::XSKS)?,
                ports: take(names::PORTS)?,
                addrs4: take(names::ADDRS4)?,
                addrs6: take(names::ADDRS6)?,
                config: take(names::CONFIG)?,
                counters: take(names::COUNTERS)?,
                xsk_owners: take(names::XSK_OWNERS)?,
                shield: take(names::SHIELD)?,
                pressure: take(names::PRESSURE)?,
                buckets: take(names::BUCKETS)?,
            })
        })();
        Ok(maps)
    }

    /// The id of the `xsk_owners` map.
    pub fn xsk_owners_id(&self) -> anyhow::Result<u32> {
        let Map::Array(data) = &self.xsk_owners else {
            anyhow::bail!("xsk_owners is not an ARRAY");
        };
        Ok(data.info()?.id())
    }

    /// Pins every map into `dir` under its name.
    pub fn pin(&self, dir: &Path) -> anyhow::Result<()> {
        for (n, m) in self.named() {
            m.pin(dir.join(n))
                .with_context(|| format!("pinning map {n} in {}", dir.display()))?;
        }
        Ok(())
    }

    fn named(&self) -> [(&'static str, &Map); 10] {
        [
            (names::XSKS, &self.xsks),
            (names::PORTS, &self.ports),
            (names::ADDRS4, &self.addrs4),
            (names::ADDRS6, &self.addrs6),
            (names::CONFIG, &self.config),
            (names::COUNTERS, &self.counters),
            (names::XSK_OWNERS, &self.xsk_owners),
            (names::SHIELD, &self.shield),
            (names::PRESSURE, &self.pressure),
            (names::BUCKETS, &self.buckets),
        ]
    }

    /// The shield entry (all zero: off).
    pub fn read_shield(&self) -> anyhow::Result<Shield> {
        let a: Array<&MapData, Shield> = Array::try_from(&self.shield)?;
        Ok(a.get(&0, 0)?)
    }

    /// Writes the shield entry (in [`super::shield::staged`] steps).
    pub fn write_shield(&mut self, s: &Shield) -> anyhow::Result<()> {
        let mut a: Array<&mut MapData, Shield> = Array::try_from(&mut self.shield)?;
        let old = a.get(&0, 0)?;
        for step in super::shield::staged(&old, s) {
            a.set(0, step, 0)?;
        }
        Ok(())
    }

    /// A handle on the `shield` and `pressure` maps with descriptors of its own (it outlives
    /// these handles): what a server holds to write its CID layout and its pressure flags.
    pub fn shield_maps(&self) -> anyhow::Result<super::ShieldMaps> {
        super::ShieldMaps::from_maps(&self.shield, &self.pressure)
    }

    /// The config entry.
    pub fn read_config(&self) -> anyhow::Result<Config> {
        let a: Array<&MapData, Config> = Array::try_from(&self.config)?;
        Ok(a.get(&0, 0)?)
    }

    /// Writes the config entry.
    pub fn write_config(&mut self, c: &Config) -> anyhow::Result<()> {
        let mut a: Array<&mut MapData, Config> = Array::try_from(&mut self.config)?;
        a.set(0, c, 0)?;
        Ok(())
    }

    /// Queues whose registered AF_XDP socket is still held by its registrant, among
    /// `0..queues` (see [`XskOwner`]).
    pub fn registered_queues(&self, queues: u32) -> anyhow::Result<Vec<u32>> {
        let a: Array<&MapData, XskOwner> = Array::try_from(&self.xsk_owners)?;
        let mut v = Vec::new();
        for q in 0..queues.min(a.len()) {
            if owner_alive(&a.get(&q, 0)?) {
                v.push(q);
            }
        }
        Ok(v)
    }

    /// The service configuration currently in the maps.
    pub fn read_service(&self) -> anyhow::Result<ServiceConfig> {
        let ports: HashMap<&MapData, u16, u8> = HashMap::try_from(&self.ports)?;
        let a4: HashMap<&MapData, [u8; 4], u8> = HashMap::try_from(&self.addrs4)?;
        let a6: HashMap<&MapData, [u8; 16], u8> = HashMap::try_from(&self.addrs6)?;
        let mut s = ServiceConfig::default();
        for k in ports.keys() {
            s.ports.insert(k?);
        }
        for k in a4.keys() {
            s.addrs.insert(IpAddr::from(k?));
        }
        for k in a6.keys() {
            s.addrs.insert(IpAddr::from(k?));
        }
        Ok(s)
    }

    /// Makes the maps steer exactly `want`, keeping `mode`, `ifindex` and `netns_ino`
    /// of the config. New entries go in before old ones go out (unless old and new together
    /// would not fit a map: then the old go first), and the address filter is switched on
    /// only after the addresses are in (off before they leave), so a packet in flight sees
    /// either the old or the new service, or a superset of both. A change that fails
    /// partway is undone (as far as the maps let it be), and its error returned.
    pub fn write_service(&mut self, want: &ServiceConfig) -> anyhow::Result<()> {
        want.validate()?;
        let have = self.read_service()?;
        let cfg = self.read_config()?;
        match self.apply_service(want, &have) {
            Ok(()) => Ok(()),
            Err(e) => {
                let undone = self.read_service().and_then(|now| {
                    self.apply_service(&have, &now)?;
                    self.write_config(&cfg)
                });
                match undone {
                    Ok(()) => Err(e),
                    Err(u) => Err(e.context(format!(
                        "and the maps could not be put back as they were ({u:#}): detach and \
                         attach again"
                    ))),
                }
            }
        }
    }

    /// Moves the maps from service `have` to `want` (see [`ProgramMaps::write_service`]).
    fn apply_service(&mut self, want: &ServiceConfig, have: &ServiceConfig) -> anyhow::Result<()> {
        let mut cfg = self.read_config()?;
        if want.addrs.is_empty() && cfg.flags & CFG_FILTER_ADDRS != 0 {
            cfg.flags &= !CFG_FILTER_ADDRS;
            self.write_config(&cfg)?;
        }
        {
            let mut ports: HashMap<&mut MapData, u16, u8> = HashMap::try_from(&mut self.ports)?;
            let fits = want.ports.union(&have.ports).count() <= xdp_quic_ebpf::MAX_PORTS as usize;
            let add = |ports: &mut HashMap<&mut MapData, u16, u8>| -> anyhow::Result<()> {
                for p in want.ports.difference(&have.ports) {
                    ports
                        .insert(p, 1, 0)
                        .with_context(|| format!("adding port {p}"))?;
                }
                Ok(())
            };
            if fits {
                add(&mut ports)?;
            }
            for p in have.ports.difference(&want.ports) {
                ports
                    .remove(p)
                    .with_context(|| format!("removing port {p}"))?;
            }
            if !fits {
                add(&mut ports)?;
            }
        }
        {
            let mut a4: HashMap<&mut MapData, [u8; 4], u8> = HashMap::try_from(&mut self.addrs4)?;
            let mut a6: HashMap<&mut MapData, [u8; 16], u8> = HashMap::try_from(&mut self.addrs6)?;
            let v4 = |a: &&IpAddr| a.is_ipv4();
            let v6 = |a: &&IpAddr| a.is_ipv6();
            let max = xdp_quic_ebpf::MAX_ADDRS as usize;
            let fits = want.addrs.union(&have.addrs).filter(v4).count() <= max
                && want.addrs.union(&have.addrs).filter(v6).count() <= max;
            let add = |a4: &mut HashMap<&mut MapData, [u8; 4], u8>,
                       a6: &mut HashMap<&mut MapData, [u8; 16], u8>|
             -> anyhow::Result<()> {
                for a in want.addrs.difference(&have.addrs) {
                    match a {
                        IpAddr::V4(v4) => a4.insert(v4.octets(), 1, 0),
                        IpAddr::V6(v6) => a6.insert(v6.octets(), 1, 0),
                    }
                    .with_context(|| format!("adding address {a}"))?;
                }
                Ok(())
            };
            if fits {
                add(&mut a4, &mut a6)?;
            }
            for a in have.addrs.difference(&want.addrs) {
                match a {
                    IpAddr::V4(v4) => a4.remove(&v4.octets()),
                    IpAddr::V6(v6) => a6.remove(&v6.octets()),
                }
                .with_context(|| format!("removing address {a}"))?;
            }
            if !fits {
                add(&mut a4, &mut a6)?;
            }
        }
        if !want.addrs.is_empty() && cfg.flags & CFG_FILTER_ADDRS == 0 {
            cfg.flags |= CFG_FILTER_ADDRS;
            self.write_config(&cfg)?;
        }
        Ok(())
    }
}

/// The inode of this process's PID namespace, as [`XskOwner::pidns`] records it (0 where it
/// cannot be read).
pub(crate) fn own_pidns() -> u32 {
    std::fs::metadata("/proc/self/ns/pid")
        .map(|m| std::os::unix::fs::MetadataExt::ino(&m) as u32)
        .unwrap_or(0)
}

/// The inode of the initial PID namespace (`PROC_PID_INIT_INO`): a process there sees every
/// process of the host in `/proc`.
const INITIAL_PIDNS: u32 = 0xEFFF_FFFC;

/// Whether process `o.pid` still holds the socket with inode `o.sock_ino`. Taking a live
/// server for a dead one would clear what it relies on, so where this process cannot tell,
/// the owner is taken for alive:
/// - a process whose descriptors this one may not look at (one with capabilities this one
///   lacks);
/// - a registrant of another PID namespace (a server in a container sharing the host's
///   network and pins), whose pid names another process here, or none: from the initial
///   PID namespace, which sees every process, it is alive while any process holds its
///   socket (socket inodes are the host's); from any other, it is taken for alive.
pub(crate) fn owner_alive(o: &XskOwner) -> bool {
    if o.pid == 0 || o.sock_ino == 0 {
        return false;
    }
    let ours = own_pidns();
    if o.pidns != 0 && o.pidns != ours {
        return ours != INITIAL_PIDNS
            || xdp_quic::procfs::socket_holder(o.sock_ino) != xdp_quic::procfs::Holder::Nobody;
    }
    match xdp_quic::procfs::holds_socket(o.pid, o.sock_ino) {
        Ok(held) => held,
        Err(e) => e.kind() == std::io::ErrorKind::PermissionDenied,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A registration is alive while its process holds the socket; one recorded in another
    /// PID namespace, whose pid cannot be looked up here, while any process holds it (from
    /// the initial PID namespace; from another it is taken for alive); one of no recorded
    /// namespace (an older version's) is looked up as before.
    #[test]
    fn owners_of_another_pid_namespace_are_taken_for_alive() {
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsRawFd::as_raw_fd(&sock);
        let ino = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
            .unwrap();
        let ours = own_pidns();
        assert_ne!(ours, 0);
        let owner = |pidns, sock_ino| XskOwner {
            pid: std::process::id(),
            pidns,
            sock_ino,
        };
        assert!(owner_alive(&owner(ours, ino)), "held");
        assert!(owner_alive(&owner(0, ino)), "held, no namespace recorded");
        // A socket no process holds (socket inodes are 32-bit numbers).
        let none = 1 << 40;
        assert!(!owner_alive(&owner(ours, none)), "not held");
        assert!(
            !owner_alive(&owner(0, none)),
            "not held, no namespace recorded"
        );
        // Another namespace: its pid means nothing here. Held by some process: alive.
        assert!(
            owner_alive(&owner(ours ^ 1, ino)),
            "another namespace, held"
        );
        // Held by none: dead where every process is seen (the initial PID namespace, as
        // in CI), else taken for alive.
        assert_eq!(
            owner_alive(&owner(ours ^ 1, none)),
            ours != INITIAL_PIDNS,
            "another namespace, not held"
        );
    }

    /// An address no service is reached at is refused, whatever the family; the host's
    /// own kinds of address are taken.
    #[test]
    fn addresses_no_packet_is_sent_to_are_refused() {
        let with = |a: &str| ServiceConfig {
            ports: [443].into(),
            addrs: [a.parse().unwrap()].into(),
        };
        for bad in [
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "ff02::1",
            "255.255.255.255",
            "::ffff:0.0.0.0",
        ] {
            let e = with(bad).validate().expect_err(bad);
            assert!(e.to_string().contains("not an address"), "{bad}: {e}");
        }
        for good in ["10.0.0.1", "fd00::1", "127.0.0.1", "10.0.0.255"] {
            with(good).validate().unwrap();
        }
        // A mapped address would go to the IPv6 table, where no IPv4 packet is looked up.
        let e = with("::ffff:10.0.0.1").validate().unwrap_err().to_string();
        assert!(e.contains("give it as the IPv4 address 10.0.0.1"), "{e}");
    }
}
