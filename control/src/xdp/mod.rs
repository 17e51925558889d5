//! Loading, attaching and inspecting the XDP steering program (`ebpf/xdp_quic.c`).
//!
//! * Persistent attachment ([`attach`], [`detach`]): the BPF link and the maps are
//!   pinned under `/sys/fs/bpf/xdp-quic/<iface>/` with the names `link`, `xsks`,
//!   `ports`, `addrs4`, `addrs6`, `config`, `counters`, `xsk_owners`, `shield`, `pressure`,
//!   `buckets` (see [`xdp_quic_ebpf::maps`]);
//!   the program stays attached after the process exits, until [`detach`].
//! * Daemons register their AF_XDP sockets in the pinned XSKMAP with [`XskRegistry`].
//! * Embedded attachment ([`attach_embedded`]): no pins; the returned guard detaches
//!   on drop, and the kernel detaches when the process dies.
//! * The shield ([`shield`]): the QUIC rules of the program, and the pressure flags a
//!   [`PressureMonitor`] keeps per queue.
//! * [`status`], [`Counters`], and [`test_run`] for running the program on crafted
//!   packets without an interface. [`status`] and [`interface_counters`] also find
//!   xdp-quic's program where a running process attached it for itself (no pins), from the
//!   interface's program id ([`owner`]).
//!
//! Interfaces are looked up in the calling thread's network namespace; [`netns::enter`]
//! moves there first without leaving the mount namespace (so the pins stay visible). In a
//! private mount namespace without bpffs (`ip netns exec`) the pins are read through
//! `/proc` and never changed ([`pins::root`]).

use anyhow::Context;

mod attach;
mod caps;
mod counters;
mod error;
pub mod ethtool;
mod load;
mod maps;
pub mod netlink;
pub mod netns;
pub mod owner;
pub mod pins;
pub mod pressure;
pub mod shield;
pub mod socket_map;
mod status;
mod sys;
pub mod test_run;
pub mod watch;
mod xsk;

pub use attach::{
    attach, attach_embedded, detach, inspect, AttachOptions, AttachOutcome, DetachOutcome,
    EmbeddedAttachment, LiveAttachment, Pinned,
};
#[cfg(feature = "serde")]
pub use counters::CountersJson;
pub use counters::{Counters, CountersReader};
pub use error::{Occupied, Requester, XdpError};
pub use load::{AttachMode, Mode};
pub use maps::{ProgramMaps, ServiceConfig};
pub use owner::{Holder, OwnProgram, Owner};
pub use pressure::{PressureMonitor, PressurePolicy};
pub use shield::{LeftByServer, ShieldConfig, ShieldGuard, ShieldMaps};
pub use status::{status, IfaceStatus, QueueStatus, ShieldStatus};
pub use watch::{ProgramWatch, WatchEvent};
pub use xsk::XskRegistry;

/// The active RX queues of `iface` in this thread's network namespace, as a list 0..n: its
/// channels (`ethtool -l`), or, where the driver reports none, the queues it has (netlink).
/// Not the queues a driver allocated: after `ethtool -L` (nic-tune.sh) only the active ones
/// can take an AF_XDP socket.
pub fn active_queues(iface: &str) -> anyhow::Result<Vec<u32>> {
    pins::check_iface_name(iface)?;
    let link = netlink::link_by_name(iface)
        .with_context(|| format!("looking up {iface}"))?
        .with_context(|| format!("no interface {iface:?} in this network namespace"))?;
    let active = ethtool::active_rx_queues(iface)
        .with_context(|| format!("reading the channels of {iface} (ethtool -l)"))?;
    let n = match active {
        Some(n) => n.min(link.rx_queues),
        None => link.rx_queues,
    };
    if n == 0 {
        anyhow::bail!("{iface} has no RX queue");
    }
    Ok((0..n).collect())
}

/// Reads the counters of xdp-quic's program on `iface`: the attachment pinned for it, or
/// else the program a running process attached to it for itself (found by the interface's
/// program id, in the calling thread's network namespace). [`XdpError::NotAttached`] when
/// there is neither.
pub fn interface_counters(iface: &str) -> anyhow::Result<Counters> {
    pins::check_iface_name(iface)?;
    caps::require_xdp_admin(&format!("reading the counters of {iface}"))?;
    let dir = pins::dir(iface);
    if pinned_here(iface) {
        return pinned_counters(iface);
    }
    if let Some(link) = netlink::link_by_name(iface)? {
        may_tell_whose(iface, link.xdp_prog_id)?;
        if let Some(p) = owner::own_program(link.xdp_prog_id, link.ifindex)? {
            return Counters::read(&p.maps.counters);
        }
    }
    Err(XdpError::NotAttached {
        iface: iface.into(),
        path: dir,
    }
    .into())
}

/// Whose xdp-quic program [`interface_counters`] reads on `iface`: [`Owner::Pinned`] or
/// [`Owner::Process`]; [`XdpError::NotAttached`] when there is none.
pub fn interface_owner(iface: &str) -> anyhow::Result<Owner> {
    pins::check_iface_name(iface)?;
    let dir = pins::dir(iface);
    if pinned_here(iface) {
        return Ok(Owner::Pinned {
            pin_dir: dir,
            pinned_as: iface.into(),
        });
    }
    if let Some(link) = netlink::link_by_name(iface)? {
        may_tell_whose(iface, link.xdp_prog_id)?;
        let (owner, program) = owner::identify(link.xdp_prog_id, link.ifindex)?;
        if program.is_some() {
            return Ok(owner);
        }
    }
    Err(XdpError::NotAttached {
        iface: iface.into(),
        path: dir,
    }
    .into())
}

/// Refuses to guess whose program `prog_id` on `iface` is where this process may not list
/// the loaded programs ([`Owner::Unknown`]): it would be taken for another tool's.
fn may_tell_whose(iface: &str, prog_id: u32) -> anyhow::Result<()> {
    if prog_id != 0 && !caps::may_list_programs() {
        anyhow::bail!(
            "{iface} has an XDP program (id {prog_id}), and whether it is xdp-quic's cannot be \
             told without CAP_SYS_ADMIN (listing BPF programs takes it): run it as root"
        );
    }
    Ok(())
}

/// Whether xdp-quic's pins named `iface` hold counters that are not another network
/// namespace's attachment (pins are named by interface, and another namespace may have an
/// interface of that name: the counters of this one's `iface` are not those).
fn pinned_here(iface: &str) -> bool {
    pins::bpffs_mounted()
        && pins::dir(iface)
            .join(xdp_quic_ebpf::maps::COUNTERS)
            .exists()
        && !matches!(attach::inspect(iface), Ok(attach::Pinned::OtherNamespace))
}

/// Reads the counters of the program attached (pinned) on `iface`.
pub fn pinned_counters(iface: &str) -> anyhow::Result<Counters> {
    pins::check_iface_name(iface)?;
    caps::require_xdp_admin(&format!("reading the counters of {iface}"))?;
    let dir = pins::dir(iface);
    if !pinned_here(iface) {
        return Err(XdpError::NotAttached {
            iface: iface.into(),
            path: dir,
        }
        .into());
    }
    let map = aya::maps::MapData::from_pin(dir.join(xdp_quic_ebpf::maps::COUNTERS))?;
    Counters::read(&aya::maps::Map::from_map_data(map)?)
}
