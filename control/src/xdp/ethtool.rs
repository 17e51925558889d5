//! The one `SIOCETHTOOL` query the CLI needs: how many RX queues an interface has active.
//!
//! Netlink's `IFLA_NUM_RX_QUEUES` is how many the driver allocated (often 32 to 128 on a
//! real NIC), not how many are in use after `ethtool -L` (`nic-tune.sh --queues N`): an
//! AF_XDP socket cannot bind a queue past the active ones. The active count is the
//! channels' (`ETHTOOL_GCHANNELS`): combined channels plus RX-only ones.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const ETHTOOL_GCHANNELS: u32 = 0x3c;

/// `struct ethtool_channels`.
#[repr(C)]
#[derive(Default)]
struct Channels {
    cmd: u32,
    max_rx: u32,
    max_tx: u32,
    max_other: u32,
    max_combined: u32,
    rx_count: u32,
    tx_count: u32,
    other_count: u32,
    combined_count: u32,
}

/// `struct ifreq` with its `ifr_data` member.
#[repr(C)]
struct IfReq {
    name: [u8; libc::IFNAMSIZ],
    data: *mut Channels,
    _pad: [u8; 16],
}

/// The RX queues `iface` has active, in this thread's network namespace: its combined and
/// RX-only channels. `Ok(None)` when the driver does not report channels (then every queue
/// it allocated is in use).
pub fn active_rx_queues(iface: &str) -> io::Result<Option<u32>> {
    if iface.is_empty() || iface.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{iface:?} is not an interface name"),
        ));
    }
    let mut ch = Channels {
        cmd: ETHTOOL_GCHANNELS,
        ..Channels::default()
    };
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: &mut ch,
        _pad: [0; 16],
    };
    req.name[..iface.len()].copy_from_slice(iface.as_bytes());
    // SAFETY: a datagram socket for the ioctl; checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns; OwnedFd closes it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: SIOCETHTOOL reads the ifreq and writes the ethtool_channels it points to;
    // both are live locals of the layout the kernel expects for ETHTOOL_GCHANNELS.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCETHTOOL, &mut req as *mut IfReq) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) => Ok(None),
            _ => Err(e),
        };
    }
    Ok(Some(ch.combined_count + ch.rx_count))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_names_are_refused_and_loopback_answers() {
        assert!(active_rx_queues("").is_err());
        assert!(active_rx_queues("sixteen-octets!!").is_err());
        // Loopback reports no channels.
        assert!(matches!(active_rx_queues("lo"), Ok(None) | Ok(Some(_))));
        assert!(
            active_rx_queues("xq-no-such0").is_err(),
            "no such interface"
        );
    }
}
