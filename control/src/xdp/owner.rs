//! Whose XDP program is on an interface: xdp-quic's own (pinned by `xdp-quic attach`, or
//! attached by a running process for its own life, e.g. a `serve` that found no pins) or
//! another tool's, found from the program id the interface reports over netlink.
//!
//! xdp-quic's program is recognised by the kernel's record of it: its name
//! ([`xdp_quic_ebpf::PROG_NAME`]), maps bearing every one of xdp-quic's map names, and a
//! `config` entry that xdp-quic's control plane wrote for this interface of this network
//! namespace (the same object loaded by another tool, e.g. `ip link set ... xdp obj`, has
//! none and counts as another tool's program). Its maps are then opened by id, so its
//! counters and sockets can be read without pins.

use std::os::fd::AsFd as _;
use std::path::PathBuf;

use xdp_quic_ebpf::Config;

use super::load::Mode;
use super::maps::ProgramMaps;
use super::{netns, pins, sys};

/// A process holding a BPF link (an attachment made for the life of the process).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Holder {
    /// Process id.
    pub pid: u32,
    /// Its command name (`/proc/<pid>/comm`).
    pub comm: String,
    /// The id of the BPF link it holds.
    pub link_id: u32,
}

/// Whose the XDP program on an interface is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Owner {
    /// Another tool's (including xdp-quic's object attached by another tool).
    Other,
    /// Not known: telling takes listing the loaded programs, which needs CAP_SYS_ADMIN this
    /// process lacks. It may be xdp-quic's, attached by a running server.
    Unknown,
    /// xdp-quic's, pinned by `xdp-quic attach` in `pin_dir` (the interface's name then was
    /// `pinned_as`).
    Pinned {
        /// The pin directory.
        pin_dir: PathBuf,
        /// The interface name of that directory.
        pinned_as: String,
    },
    /// xdp-quic's, attached by running processes for their own life (not pinned), which
    /// hold its link; empty when none can be seen from here.
    Process {
        /// The processes holding the program's link.
        holders: Vec<Holder>,
    },
}

impl Owner {
    /// `pid 1234 (xdp-quic)`, comma-separated.
    pub fn describe_holders(holders: &[Holder]) -> String {
        if holders.is_empty() {
            return "no holder visible from here (a process of another PID namespace?), or \
                    pinned on a bpffs this mount namespace does not show"
                .into();
        }
        let v: Vec<String> = holders
            .iter()
            .map(|h| format!("pid {} ({})", h.pid, h.comm))
            .collect();
        v.join(", ")
    }
}

/// xdp-quic's program found by id, with its maps opened by id.
#[derive(Debug)]
pub struct OwnProgram {
    /// Program id.
    pub prog_id: u32,
    /// Its maps.
    pub maps: ProgramMaps,
    /// Its config entry.
    pub config: Config,
    /// The mode the control plane attached it in.
    pub mode: Mode,
}

/// Opens program `prog_id` if it is xdp-quic's, set up by xdp-quic's control plane for
/// interface `ifindex` of the calling thread's network namespace; `Ok(None)` when it is
/// another program (or gone).
pub fn own_program(prog_id: u32, ifindex: u32) -> anyhow::Result<Option<OwnProgram>> {
    if prog_id == 0 {
        return Ok(None);
    }
    // Without the privilege to list programs the iteration yields errors only: nothing found.
    let Some(info) = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == prog_id)
    else {
        return Ok(None);
    };
    if info.name_as_str() != Some(xdp_quic_ebpf::PROG_NAME) {
        return Ok(None);
    }
    let Some(map_ids) = info.map_ids()? else {
        return Ok(None);
    };
    let Some(maps) = ProgramMaps::open_by_ids(&map_ids)? else {
        return Ok(None);
    };
    let config = maps.read_config()?;
    let Some(mode) = Mode::from_config(config.mode) else {
        return Ok(None);
    };
    if config.ifindex != ifindex || config.netns_ino != netns::current_ino()? {
        return Ok(None);
    }
    Ok(Some(OwnProgram {
        prog_id,
        maps,
        config,
        mode,
    }))
}

/// Whose program `prog_id`, on interface `ifindex` of this network namespace, is; with
/// its maps when it is xdp-quic's.
pub fn identify(prog_id: u32, ifindex: u32) -> anyhow::Result<(Owner, Option<OwnProgram>)> {
    if prog_id != 0 && !super::caps::may_list_programs() {
        return Ok((Owner::Unknown, None));
    }
    let Some(own) = own_program(prog_id, ifindex)? else {
        return Ok((Owner::Other, None));
    };
    if let Some((pin_dir, pinned_as)) = pinned_with(prog_id) {
        return Ok((Owner::Pinned { pin_dir, pinned_as }, Some(own)));
    }
    Ok((
        Owner::Process {
            holders: link_holders(prog_id),
        },
        Some(own),
    ))
}

/// The pin directory whose link attaches program `prog_id`, and its interface name.
fn pinned_with(prog_id: u32) -> Option<(PathBuf, String)> {
    if !pins::bpffs_mounted() {
        return None;
    }
    pins::list().ok()?.into_iter().find_map(|iface| {
        let dir = pins::dir(&iface);
        let link = sys::obj_get(&dir.join(pins::LINK)).ok()?;
        let info = sys::xdp_link_info(link.as_fd()).ok()?;
        (info.prog_id == prog_id && info.ifindex != 0).then_some((dir, iface))
    })
}

/// The processes that hold an open BPF link to program `prog_id`, from
/// `/proc/<pid>/fdinfo` (`prog_id:` of `anon_inode:bpf_link` descriptors). Processes this
/// one may not inspect are skipped.
pub fn link_holders(prog_id: u32) -> Vec<Holder> {
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if !std::fs::read_link(fd.path()).is_ok_and(|t| t.as_os_str() == "anon_inode:bpf_link")
            {
                continue;
            }
            let info = p.path().join("fdinfo").join(fd.file_name());
            let Ok(text) = std::fs::read_to_string(info) else {
                continue;
            };
            let field = |key: &str| -> Option<u32> {
                text.lines()
                    .find_map(|l| l.strip_prefix(key))
                    .and_then(|v| v.trim().parse().ok())
            };
            if field("prog_id:") != Some(prog_id) {
                continue;
            }
            let comm = std::fs::read_to_string(p.path().join("comm"))
                .map(|c| c.trim().to_string())
                .unwrap_or_default();
            out.push(Holder {
                pid,
                comm,
                link_id: field("link_id:").unwrap_or(0),
            });
            break;
        }
    }
    out
}
