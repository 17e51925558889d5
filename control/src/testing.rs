//! Helpers of the workspace's tests (feature `testing`, off for daemons): the privilege gate
//! of the tests that need root, unique names, guards that remove what a test made even when
//! it fails, traffic and probes from inside network namespaces, and waiting on a condition
//! instead of sleeping.

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Whether a test that needs root (network namespaces, veth pairs, XDP, AF_XDP, BPF) may
/// run: true as root. Otherwise the test is skipped (false, and a note on stderr), unless the
/// environment variable `CI` is set: then this panics, so that CI never passes by skipping.
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!(
            "{test}: needs root (network namespaces, veth, XDP, AF_XDP, BPF) and CI is set: \
             refusing to skip"
        );
    }
    eprintln!("{test}: skipped: needs root");
    false
}

/// A name unique to this process and call, `<prefix><pid in base 36, 5 digits><n>`, at most
/// 15 octets (an interface name; a [`crate::testbed::Testbed`] takes at most 12). Unique among
/// processes running at once too (the whole pid: Linux's are below 36^5). The first call
/// makes the process remove, on SIGINT, SIGTERM or SIGHUP (a test run interrupted or timed
/// out), every testbed it made and the bpffs pins of interfaces named from these names, then
/// exit; drop guards do it for a test that ends, passed or failed.
pub fn unique_name(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    // The pid at a fixed width, so that (pid, n) pairs cannot run together into one name
    // (1234 then 51, and 12345 then 1).
    let name = format!("{prefix}{}{n}", base36(std::process::id()));
    assert!(name.len() <= 15, "{name}: too long for an interface name");
    NAMES
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(name.clone());
    static ON_SIGNAL: std::sync::Once = std::sync::Once::new();
    ON_SIGNAL.call_once(|| {
        // Refused if the test binary has a handler of its own: the guards still clean up
        // whatever ends normally.
        let _ = crate::signal::on_termination(|sig| {
            crate::testbed::Testbed::remove_all();
            remove_pins_of_names();
            eprintln!("interrupted: this process's test namespaces and pins are removed");
            std::process::exit(128 + sig);
        });
    });
    name
}

/// Makes `cmd`'s process die (SIGKILL) when the thread that spawns it ends: a test's child
/// (a server in a test namespace) cannot outlive a test run stopped by a signal, whose
/// handler removes the namespaces but never runs the guards that would stop the child.
/// Spawn from the thread that owns the child for its whole life (the test's own).
pub fn dies_with_test(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id() as libc::pid_t;
    // SAFETY: the hook runs in the child between fork and exec, and only calls prctl(2)
    // and getppid(2), which are async-signal-safe, allocate nothing and take no lock.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The parent may have died before the prctl: then nothing would signal us.
            if libc::getppid() != parent {
                // ESRCH ("no such process"): an error made without allocating.
                return Err(std::io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        })
    }
}

/// The names [`unique_name`] gave out.
static NAMES: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Removes the pin directories of interfaces named from [`unique_name`]'s names.
fn remove_pins_of_names() {
    let names = NAMES.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let root = std::path::Path::new(crate::xdp::pins::PIN_ROOT);
    let Ok(dirs) = std::fs::read_dir(root) else {
        return;
    };
    for d in dirs.flatten() {
        let dir = d.file_name().to_string_lossy().into_owned();
        if names.iter().any(|n| dir.starts_with(n.as_str())) {
            let _ = std::fs::remove_dir_all(d.path());
        }
    }
}

/// `n` in base 36, 5 digits wide (enough for any Linux pid, at most 2^22).
fn base36(mut n: u32) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut out = [b'0'; 5];
    for d in out.iter_mut().rev() {
        *d = DIGITS[(n % 36) as usize];
        n /= 36;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Polls `cond` until it holds; panics naming `what` if it does not within `within` (a hang
/// guard, never a performance bound: give it a generous value).
pub fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    let end = Instant::now() + within;
    while !cond() {
        assert!(
            Instant::now() < end,
            "{what}: not reached within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads `read()` until `reached` holds for what it returns, and returns that; panics naming
/// `what` if it does not within `within` (a hang guard: give it a generous value). For
/// counters that move a little after the action that moves them (the kernel takes packets in
/// asynchronously), read until they reach their expected value, then assert it exactly.
pub fn read_until<T>(
    what: &str,
    within: Duration,
    mut read: impl FnMut() -> T,
    reached: impl Fn(&T) -> bool,
) -> T {
    let end = Instant::now() + within;
    loop {
        let value = read();
        if reached(&value) {
            return value;
        }
        assert!(
            Instant::now() < end,
            "{what}: not reached within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs a command, panicking with its stderr if it fails.
pub fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("spawning {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A network namespace with its loopback up, deleted on drop (with the interfaces in it).
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Makes a namespace named after `prefix` ([`unique_name`]).
    pub fn new(prefix: &str) -> Self {
        let name = unique_name(prefix);
        sh(&["ip", "netns", "add", &name]);
        let ns = Self { name };
        sh(&["ip", "-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// Removes xdp-quic's pins of an interface on drop, and so the pinned link's attachment:
/// namespace guards remove the interfaces, but pins live on the host's bpffs and would
/// outlive them.
#[derive(Debug)]
pub struct PinGuard(pub String);

impl Drop for PinGuard {
    fn drop(&mut self) {
        // Under the pin lock, as `attach` and `detach` change pins: a test running beside
        // this one may be making its pin directory. The lock's drop removes the root when
        // it is empty.
        let lock = crate::xdp::pins::PinLock::existing();
        let root = std::path::Path::new(crate::xdp::pins::PIN_ROOT);
        let _ = std::fs::remove_dir_all(root.join(&self.0));
        drop(lock);
    }
}

/// Sends `n` UDP datagrams of `len` octets from network namespace `ns` to `to`.
pub fn send_udp(ns: &str, to: SocketAddr, n: usize, len: usize) {
    crate::testbed::in_netns(ns, || {
        let bind: SocketAddr = if to.is_ipv4() {
            (std::net::Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let s = UdpSocket::bind(bind).expect("binding a UDP socket");
        let payload = vec![0x40u8; len];
        for _ in 0..n {
            s.send_to(&payload, to).expect("sending a datagram");
        }
    })
    .expect("entering the namespace");
}

/// Binds a UDP socket at `at` in namespace `server_ns`, sends it 64-octet datagrams from
/// `from_ns`, one every 100 ms, and returns whether one reached it within 30 s (a hang guard,
/// generous: a positive check, which a loaded machine must not fail).
pub fn udp_reaches_kernel(server_ns: &str, from_ns: &str, at: SocketAddr) -> bool {
    let (bound, is_bound) = std::sync::mpsc::channel();
    let got = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let receiver = s.spawn(|| {
            crate::testbed::in_netns(server_ns, || {
                let sock = UdpSocket::bind(at).expect("binding the receiver");
                sock.set_read_timeout(Some(Duration::from_secs(30)))
                    .expect("SO_RCVTIMEO");
                bound.send(()).expect("the sender waits");
                let mut buf = [0u8; 2048];
                let ok = sock.recv_from(&mut buf).is_ok_and(|(n, _)| n == 64);
                got.store(true, std::sync::atomic::Ordering::Release);
                ok
            })
            .expect("entering the namespace")
        });
        is_bound.recv().expect("the receiver was bound");
        while !got.load(std::sync::atomic::Ordering::Acquire) {
            send_udp(from_ns, at, 1, 64);
            std::thread::sleep(Duration::from_millis(100));
        }
        receiver.join().expect("the receiver panicked")
    })
}

/// Pings `addr` from namespace `ns` until one answer comes, for 30 s at most (a positive
/// check: a hang guard, not a deadline).
pub fn ping(ns: &str, addr: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c", "1", "-w", "30", addr])
        .output()
        .expect("spawning ping (iputils-ping)")
        .status
        .success()
}

/// The id of the XDP program on `iface` in namespace `ns`, if any, as `ip link` reports it
/// (an oracle independent of this crate's netlink code).
pub fn xdp_prog_on(ns: &str, iface: &str) -> Option<u64> {
    let out = Command::new("ip")
        .args(["-n", ns, "-o", "link", "show", "dev", iface])
        .output()
        .expect("spawning ip (iproute2)");
    assert!(
        out.status.success(),
        "ip -n {ns} link show dev {iface}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    prog_id_in(&String::from_utf8_lossy(&out.stdout))
}

/// The program id of the first `prog/xdp id N` in `ip -o link` output.
fn prog_id_in(line: &str) -> Option<u64> {
    let rest = &line[line.find("prog/xdp id ")? + "prog/xdp id ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_id_from_ip_link() {
        let attached = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 xdpgeneric qdisc noqueue \
            state UNKNOWN mode DEFAULT group default qlen 1000\\    link/loopback \
            00:00:00:00:00:00 brd 00:00:00:00:00:00\\    prog/xdp id 1536 name xdp_quic tag \
            f5b8f271faf57011 jited ";
        assert_eq!(prog_id_in(attached), Some(1536));
        let bare = "1: lo: <LOOPBACK,UP,LOWER_UP> mtu 65536 qdisc noqueue state UNKNOWN";
        assert_eq!(prog_id_in(bare), None);
    }

    #[test]
    fn names_are_unique_and_short() {
        let (a, b) = (unique_name("xt"), unique_name("xt"));
        assert_ne!(a, b);
        assert!(a.len() <= 15 && a.starts_with("xt"));
    }
}
