//! Capability checks done before touching anything, so that a missing privilege gives
//! one clear error instead of a half-done operation.

use super::XdpError;

const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Effective capability set of this process, from `/proc/self/status`.
fn effective() -> std::io::Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .ok_or_else(|| std::io::Error::other("no CapEff in /proc/self/status"))
}

/// Fails with [`XdpError::NotPermitted`] unless the process may load and attach XDP
/// programs: CAP_NET_ADMIN and (CAP_BPF or CAP_SYS_ADMIN). `what` names the operation.
pub fn require_xdp_admin(what: &str) -> Result<(), XdpError> {
    let has = |caps: u64, cap: u32| caps & (1u64 << cap) != 0;
    let caps = effective().unwrap_or(0);
    if has(caps, CAP_NET_ADMIN) && (has(caps, CAP_BPF) || has(caps, CAP_SYS_ADMIN)) {
        Ok(())
    } else {
        Err(XdpError::NotPermitted {
            what: what.to_string(),
        })
    }
}

/// Fails with [`XdpError::NotPermitted`] unless the process may also load the program:
/// [`require_xdp_admin`], and CAP_PERFMON (or CAP_SYS_ADMIN). Without it the verifier runs
/// with its Spectre mitigations and refuses arithmetic on a packet pointer by a variable
/// offset ("pointer arithmetic with it prohibited for !root"), which parsing an IPv4
/// header of any length takes. (A kernel booted with `mitigations=off` may load it without;
/// this check still asks for CAP_PERFMON there.)
pub fn require_xdp_load(what: &str) -> Result<(), XdpError> {
    require_xdp_admin(what)?;
    let caps = effective().unwrap_or(0);
    if caps & (1u64 << CAP_PERFMON) != 0 || caps & (1u64 << CAP_SYS_ADMIN) != 0 {
        Ok(())
    } else {
        Err(XdpError::NotPermitted {
            what: what.to_string(),
        })
    }
}

/// Whether the process may list loaded BPF programs and open them and their maps by id
/// (`BPF_PROG_GET_NEXT_ID`, `BPF_*_GET_FD_BY_ID`): CAP_SYS_ADMIN.
pub fn may_list_programs() -> bool {
    effective().unwrap_or(0) & (1u64 << CAP_SYS_ADMIN) != 0
}
