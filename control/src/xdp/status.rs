//! What `xdp-quic status` reports: each pinned interface, and each interface of this network
//! namespace where a running process attached xdp-quic's program for itself (not pinned).

use std::collections::HashSet;

use super::attach::{inspect, Pinned};
use super::maps::ProgramMaps;
use super::owner::{self, Holder, Owner};
use super::ShieldConfig;
use super::{netlink, pins};

/// One rx queue of an attached interface.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct QueueStatus {
    /// Rx queue index.
    pub queue: u32,
    /// Whether an AF_XDP socket is registered for this queue (through
    /// [`super::XskRegistry`]) and its registrant still holds it.
    pub socket: bool,
}

/// Status of one interface with xdp-quic pins or with xdp-quic's program.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct IfaceStatus {
    /// Interface name (the pin directory's name when pinned).
    pub iface: String,
    /// `attached`, `stale` (pins left, interface gone: run detach), `other-netns`,
    /// `incompatible` (the pinned link is live but its maps do not open: another version's
    /// pins) or `unreadable` (reading the pins failed).
    pub state: &'static str,
    /// Whether `xdp-quic attach` pinned it; `false`: a running process attached it for its
    /// own life (see `holders`).
    pub pinned: bool,
    /// Pin directory (as the host's mount namespace sees it); `None` when not pinned.
    pub pin_dir: Option<String>,
    /// The processes holding the attachment when not pinned.
    pub holders: Vec<Holder>,
    /// `native` or `skb`.
    pub mode: Option<&'static str>,
    /// Program id.
    pub prog_id: Option<u32>,
    /// Link id.
    pub link_id: Option<u32>,
    /// Interface index.
    pub ifindex: Option<u32>,
    /// Service ports.
    pub ports: Vec<u16>,
    /// Service addresses (empty: any).
    pub addrs: Vec<String>,
    /// Rx queues (only when attached in this network namespace).
    pub queues: Vec<QueueStatus>,
    /// The shield, when on.
    pub shield: Option<ShieldStatus>,
}

/// The shield of an attachment.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct ShieldStatus {
    /// Its configuration.
    #[cfg_attr(feature = "serde", serde(skip))]
    pub config: ShieldConfig,
    /// Versions spoken.
    pub versions: Vec<u32>,
    /// Source prefixes of the buckets, IPv4 and IPv6.
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    /// Version negotiations per source prefix: per second, burst.
    pub version_negotiation: (u32, u32),
    /// Tokenless Initials per source prefix under pressure: per second, burst; `None`: not
    /// limited.
    pub initial_under_pressure: Option<(u32, u32)>,
    /// The CIDs short headers are checked against, in words; `None`: not checked (no server
    /// wrote its layout).
    pub cid_layout: Option<String>,
    /// Rx queues under pressure now.
    pub pressure: Vec<u32>,
}

impl ShieldStatus {
    fn read(maps: &ProgramMaps, rx_queues: u32) -> anyhow::Result<Option<Self>> {
        let entry = maps.read_shield()?;
        let Some(config) = ShieldConfig::from_map(&entry) else {
            return Ok(None);
        };
        let cid_layout = (entry.flags & xdp_quic_ebpf::SHIELD_CID != 0).then(|| {
            let sid = &entry.server_id[..usize::from(entry.sid_len).min(16)];
            format!(
                "octet 0 {:#04x} ({} octets, config rotation {}), server id {}, {} workers",
                entry.cid_first,
                (entry.cid_first & 0x1f) + 1,
                entry.cid_first >> 5,
                if sid.is_empty() {
                    "none".to_string()
                } else {
                    sid.iter().map(|b| format!("{b:02x}")).collect()
                },
                entry.workers
            )
        });
        let pressure = maps.shield_maps()?.pressured(rx_queues)?;
        Ok(Some(Self {
            versions: config.versions.clone(),
            prefix_v4: config.prefix_v4,
            prefix_v6: config.prefix_v6,
            version_negotiation: (
                config.version_negotiation.per_sec,
                config.version_negotiation.burst,
            ),
            initial_under_pressure: config
                .admit_under_pressure
                .then_some((config.initial.per_sec, config.initial.burst)),
            cid_layout,
            pressure,
            config,
        }))
    }
}

impl IfaceStatus {
    fn new(iface: &str, pinned: bool) -> Self {
        Self {
            iface: iface.to_string(),
            state: "stale",
            pinned,
            pin_dir: pinned.then(|| format!("{}/{iface}", pins::PIN_ROOT)),
            holders: Vec::new(),
            mode: None,
            prog_id: None,
            link_id: None,
            ifindex: None,
            ports: Vec::new(),
            addrs: Vec::new(),
            queues: Vec::new(),
            shield: None,
        }
    }

    fn fill(&mut self, maps: &ProgramMaps, link: &netlink::LinkState) -> anyhow::Result<()> {
        let service = maps.read_service()?;
        self.ports = service.ports.into_iter().collect();
        self.addrs = service.addrs.iter().map(|a| a.to_string()).collect();
        let registered = maps.registered_queues(link.rx_queues)?;
        self.queues = (0..link.rx_queues)
            .map(|q| QueueStatus {
                queue: q,
                socket: registered.contains(&q),
            })
            .collect();
        self.shield = ShieldStatus::read(maps, link.rx_queues)?;
        Ok(())
    }
}

/// Status of every interface that has xdp-quic pins, and of every interface of the calling
/// thread's network namespace where a running process attached xdp-quic's program for
/// itself; sorted by name.
pub fn status() -> anyhow::Result<Vec<IfaceStatus>> {
    // The pins are root's alone (0700), and programs are read with bpf(): say what is
    // missing rather than a bare EACCES.
    super::caps::require_xdp_admin("reading the status of xdp-quic's attachments")?;
    let mut out = Vec::new();
    if pins::bpffs_mounted() {
        for iface in pins::list()? {
            // One interface that cannot be read does not hide the others.
            out.push(one(&iface).unwrap_or_else(|e| {
                let mut s = IfaceStatus::new(&iface, true);
                s.state = "unreadable";
                tracing::warn!("status of {iface}: {e:#}");
                s
            }));
        }
    }
    let pinned: HashSet<u32> = out.iter().filter_map(|s| s.prog_id).collect();
    for link in netlink::all_links()? {
        if link.xdp_prog_id == 0 || pinned.contains(&link.xdp_prog_id) {
            continue;
        }
        // A program that goes while this reads it (its process exited, its maps gone
        // halfway) is left out with a warning; it does not fail the whole status.
        match unpinned(&link) {
            Ok(Some(s)) => out.push(s),
            Ok(None) => {}
            Err(e) => tracing::warn!("status of {}: {e:#}", link.name),
        }
    }
    out.sort_by(|a, b| a.iface.cmp(&b.iface));
    Ok(out)
}

/// Status of `link` when its XDP program is xdp-quic's, attached by a running process.
fn unpinned(link: &netlink::LinkState) -> anyhow::Result<Option<IfaceStatus>> {
    let (Owner::Process { holders }, Some(program)) =
        owner::identify(link.xdp_prog_id, link.ifindex)?
    else {
        return Ok(None);
    };
    let mut s = IfaceStatus::new(&link.name, false);
    s.state = "attached";
    s.mode = Some(program.mode.name());
    s.prog_id = Some(program.prog_id);
    s.link_id = holders.first().map(|h| h.link_id);
    s.ifindex = Some(link.ifindex);
    s.holders = holders;
    s.fill(&program.maps, link)?;
    Ok(Some(s))
}

/// Status of one pinned interface name.
pub fn one(iface: &str) -> anyhow::Result<IfaceStatus> {
    let mut s = IfaceStatus::new(iface, true);
    let live = match inspect(iface)? {
        Pinned::None | Pinned::Stale => return Ok(s),
        Pinned::Incompatible { .. } => {
            s.state = "incompatible";
            return Ok(s);
        }
        Pinned::OtherNamespace => {
            s.state = "other-netns";
            return Ok(s);
        }
        Pinned::Live(l) => l,
    };
    s.mode = Some(live.mode.name());
    s.prog_id = Some(live.prog_id);
    s.link_id = Some(live.link_id);
    s.ifindex = Some(live.config.ifindex);
    match netlink::link_by_index(live.config.ifindex)? {
        Some(link) if link.xdp_prog_id == live.prog_id => {
            s.state = "attached";
            s.fill(&live.maps, &link)?;
        }
        _ => {
            let service = live.maps.read_service()?;
            s.ports = service.ports.into_iter().collect();
            s.addrs = service.addrs.iter().map(|a| a.to_string()).collect();
        }
    }
    Ok(s)
}
