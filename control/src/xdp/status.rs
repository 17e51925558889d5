//! What `xdp-quic status` reports for each pinned interface.

use serde::Serialize;

use super::attach::{inspect, Pinned};
use super::{netlink, pins};

/// One rx queue of an attached interface.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct QueueStatus {
    /// Rx queue index.
    pub queue: u32,
    /// Whether an AF_XDP socket is registered for this queue (through
    /// [`super::XskRegistry`]) and its registrant still holds it.
    pub socket: bool,
}

/// Status of one interface with xdp-quic pins.
#[derive(Debug, Clone, Serialize)]
pub struct IfaceStatus {
    /// Interface name (the pin directory's name).
    pub iface: String,
    /// `attached`, `stale` (pins left, interface gone: run detach) or `other-netns`.
    pub state: &'static str,
    /// Pin directory.
    pub pin_dir: String,
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
}

/// Status of every interface that has xdp-quic pins, sorted by name.
pub fn status() -> anyhow::Result<Vec<IfaceStatus>> {
    if !pins::bpffs_mounted() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for iface in pins::list()? {
        out.push(one(&iface)?);
    }
    Ok(out)
}

/// Status of one interface name.
pub fn one(iface: &str) -> anyhow::Result<IfaceStatus> {
    let mut s = IfaceStatus {
        iface: iface.to_string(),
        state: "stale",
        pin_dir: pins::dir(iface).display().to_string(),
        mode: None,
        prog_id: None,
        link_id: None,
        ifindex: None,
        ports: Vec::new(),
        addrs: Vec::new(),
        queues: Vec::new(),
    };
    let live = match inspect(iface)? {
        Pinned::None | Pinned::Stale => return Ok(s),
        Pinned::OtherNamespace => {
            s.state = "other-netns";
            return Ok(s);
        }
        Pinned::Live(l) => l,
    };
    let service = live.maps.read_service()?;
    s.mode = Some(live.mode.name());
    s.prog_id = Some(live.prog_id);
    s.link_id = Some(live.link_id);
    s.ifindex = Some(live.config.ifindex);
    s.ports = service.ports.into_iter().collect();
    s.addrs = service.addrs.iter().map(|a| a.to_string()).collect();
    match netlink::link_by_index(live.config.ifindex)? {
        Some(link) if link.xdp_prog_id == live.prog_id => {
            s.state = "attached";
            let registered = live.maps.registered_queues(link.rx_queues)?;
            s.queues = (0..link.rx_queues)
                .map(|q| QueueStatus {
                    queue: q,
                    socket: registered.contains(&q),
                })
                .collect();
        }
        _ => s.state = "stale",
    }
    Ok(s)
}
