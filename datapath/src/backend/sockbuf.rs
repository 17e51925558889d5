//! The kernel buffers of the backends' UDP sockets.
//!
//! A socket's receive buffer is where datagrams wait while its worker is busy: when it is
//! full the kernel drops what comes, and each drop costs the peer a retransmission (and both
//! sides more acknowledgements). Its send buffer holds a turn's GSO batches until the device
//! takes them. Linux caps SO_RCVBUF and SO_SNDBUF at `net.core.rmem_max` and `wmem_max`
//! (212,992 octets on a stock kernel: about 90 full-size datagrams of receive buffer), so
//! [`grow`] asks again with SO_RCVBUFFORCE and SO_SNDBUFFORCE, which a process with
//! CAP_NET_ADMIN may use past the cap, and a process without it is told once, with the fix.

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::xsk::socket::setsockopt;

/// What each of a backend's UDP sockets asks for, receive and send: 8 MiB (the kernel
/// reports twice that, and counts packet memory, headers included, against it).
pub const SOCKET_BUFFER: usize = 8 << 20;

/// The buffers a socket has, as the kernel reports them (twice what was asked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferSizes {
    pub recv: usize,
    pub send: usize,
}

/// Grows `socket`'s receive and send buffers to `want` octets each: past the sysctl caps
/// where the process may (CAP_NET_ADMIN), up to them otherwise. A buffer already that large
/// is left as it is (never shrunk). Returns what the socket has; the first socket of the
/// process left short logs a warning that says how to lift the cap.
pub fn grow(socket: &UdpSocket, want: usize) -> BufferSizes {
    let got = BufferSizes {
        recv: grow_one(socket, want, Dir::Recv),
        send: grow_one(socket, want, Dir::Send),
    };
    let target = want.saturating_mul(2);
    if (got.recv < target || got.send < target) && !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            "a UDP socket got a receive buffer of {} and a send buffer of {} octets, not the \
             {want} asked: the kernel drops what bursts past them. Raise the caps \
             (sysctl -w net.core.rmem_max={want} net.core.wmem_max={want}) or give the \
             process CAP_NET_ADMIN",
            got.recv / 2,
            got.send / 2,
        );
    }
    got
}

/// Whether a socket of this process was left short (logged once).
static WARNED: AtomicBool = AtomicBool::new(false);

#[derive(Clone, Copy)]
enum Dir {
    Recv,
    Send,
}

fn grow_one(socket: &UdpSocket, want: usize, dir: Dir) -> usize {
    let sock = socket2::SockRef::from(socket);
    let get = || match dir {
        Dir::Recv => sock.recv_buffer_size(),
        Dir::Send => sock.send_buffer_size(),
    };
    let target = want.saturating_mul(2);
    let before = get().unwrap_or(0);
    if before >= target {
        return before;
    }
    // Forced first: the plain option is capped, and after a forced size a plain one could
    // only bring it down. Refused (EPERM) without CAP_NET_ADMIN.
    let (force, plain) = match dir {
        Dir::Recv => (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
        Dir::Send => (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
    };
    let v = libc::c_int::try_from(want).unwrap_or(libc::c_int::MAX);
    if setsockopt(socket, libc::SOL_SOCKET, force, &v).is_err() {
        // Up to the cap, unless the socket has more already (one another process forced and
        // handed over): the kernel would set the capped size, smaller.
        let cap = std::fs::read_to_string(match dir {
            Dir::Recv => "/proc/sys/net/core/rmem_max",
            Dir::Send => "/proc/sys/net/core/wmem_max",
        })
        .ok()
        .and_then(|c| c.trim().parse::<usize>().ok());
        if cap.is_none_or(|cap| want.min(cap).saturating_mul(2) > before) {
            let _ = setsockopt(socket, libc::SOL_SOCKET, plain, &v);
        }
    }
    get().unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sysctl(name: &str) -> usize {
        std::fs::read_to_string(format!("/proc/sys/net/core/{name}"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    /// Whether this process has CAP_NET_ADMIN (bit 12 of its effective set).
    fn net_admin() -> bool {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let eff = status
            .lines()
            .find_map(|l| l.strip_prefix("CapEff:"))
            .map(|v| u64::from_str_radix(v.trim(), 16).unwrap())
            .unwrap();
        const CAP_NET_ADMIN: u32 = 12;
        eff & (1 << CAP_NET_ADMIN) != 0
    }

    fn small_socket() -> UdpSocket {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        let r = socket2::SockRef::from(&s);
        r.set_recv_buffer_size(4096).unwrap();
        r.set_send_buffer_size(4096).unwrap();
        s
    }

    /// Past the caps with CAP_NET_ADMIN (CI runs as root), up to them without.
    #[test]
    fn buffers_grow_past_the_caps_where_the_process_may() {
        // Above a stock cap (212,992), and above this machine's if it is raised.
        let want = (sysctl("rmem_max").max(sysctl("wmem_max")) + (1 << 20)).min(64 << 20);
        let s = small_socket();
        let got = grow(&s, want);
        if net_admin() {
            assert_eq!(
                got,
                BufferSizes {
                    recv: 2 * want,
                    send: 2 * want
                }
            );
        } else {
            assert!(
                std::env::var_os("CI").is_none(),
                "needs CAP_NET_ADMIN and CI is set"
            );
            let expect = BufferSizes {
                recv: 2 * sysctl("rmem_max").min(want),
                send: 2 * sysctl("wmem_max").min(want),
            };
            assert_eq!(got, expect);
            eprintln!("the forced path not checked: needs CAP_NET_ADMIN");
        }
        let r = socket2::SockRef::from(&s);
        assert_eq!(r.recv_buffer_size().unwrap(), got.recv);
        assert_eq!(r.send_buffer_size().unwrap(), got.send);
    }

    /// A buffer larger than asked stays as it is.
    #[test]
    fn a_larger_buffer_is_never_shrunk() {
        let s = small_socket();
        let r = socket2::SockRef::from(&s);
        r.set_recv_buffer_size(64 << 10).unwrap();
        r.set_send_buffer_size(64 << 10).unwrap();
        let before = BufferSizes {
            recv: r.recv_buffer_size().unwrap(),
            send: r.send_buffer_size().unwrap(),
        };
        assert!(
            before.recv >= 64 << 10 && before.send >= 64 << 10,
            "{before:?}"
        );
        assert_eq!(grow(&s, 16 << 10), before);
    }
}
