//! `SIOCETHTOOL` requests (all its `unsafe` is here): how many RX queues an interface has
//! active, for the CLI, and turning TX checksum offload off, for the testbeds.
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

/// `struct ifreq` with its `ifr_data` member, pointing at a request of type `T`.
#[repr(C)]
struct IfReq<T> {
    name: [u8; libc::IFNAMSIZ],
    data: *mut T,
    _pad: [u8; 16],
}

/// An ethtool request: a `#[repr(C)]` struct whose first field is the `u32` command, of the
/// layout the kernel expects for that command.
///
/// # Safety
/// The kernel reads and writes `size_of::<Self>()` octets at it for its command.
unsafe trait Request {}

// SAFETY: `struct ethtool_channels`: nine `u32`, the command first.
unsafe impl Request for Channels {}

/// `struct ethtool_value`.
#[repr(C)]
struct Value {
    cmd: u32,
    data: u32,
}

// SAFETY: `struct ethtool_value`: the command, then one `u32`.
unsafe impl Request for Value {}

/// Sends `req` for `iface` in this thread's network namespace.
fn ioctl<T: Request>(iface: &str, req: &mut T) -> io::Result<()> {
    if iface.is_empty() || iface.len() >= libc::IFNAMSIZ {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{iface:?} is not an interface name"),
        ));
    }
    let mut ifr = IfReq {
        name: [0; libc::IFNAMSIZ],
        data: req,
        _pad: [0; 16],
    };
    ifr.name[..iface.len()].copy_from_slice(iface.as_bytes());
    // SAFETY: a datagram socket for the ioctl; checked before use.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nothing else owns; OwnedFd closes it.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: SIOCETHTOOL reads the ifreq and the request it points to, both live locals
    // (the request through `req`'s exclusive borrow), of the layout `Request` promises.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::SIOCETHTOOL, &mut ifr as *mut IfReq<T>) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Turns TX checksum offload off on `iface` in this thread's network namespace (the client
/// end of a testbed, so that an AF_XDP reader on the other end sees full checksums).
pub fn tx_checksum_offload_off(iface: &str) -> io::Result<()> {
    const ETHTOOL_STXCSUM: u32 = 0x17;
    ioctl(
        iface,
        &mut Value {
            cmd: ETHTOOL_STXCSUM,
            data: 0,
        },
    )
}

/// The RX queues `iface` has active, in this thread's network namespace: its combined and
/// RX-only channels. `Ok(None)` when the driver does not report channels (then every queue
/// it allocated is in use).
pub fn active_rx_queues(iface: &str) -> io::Result<Option<u32>> {
    let mut ch = Channels {
        cmd: ETHTOOL_GCHANNELS,
        ..Channels::default()
    };
    match ioctl(iface, &mut ch) {
        Ok(()) => Ok(Some(ch.combined_count + ch.rx_count)),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(None),
        Err(e) => Err(e),
    }
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
