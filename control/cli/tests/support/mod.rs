//! Shared by the tests that run the `xdp-quic` binary: running it (once, or `serve` until
//! stopped), reading `stats`, and a testbed under the names the tests use. The privilege
//! gate, guards and probes are the control library's (`xdp_quic_control::testing`).
#![allow(dead_code, unused_imports)]

use std::net::SocketAddr;
use std::process::{Command, Output};
use std::time::Duration;

pub use xdp_quic_control::testing::{
    ping, privileged, read_until, send_udp, sh, udp_reaches_kernel, unique_name, xdp_prog_on,
    Netns, PinGuard,
};

/// A hang guard for each wait, never a performance bound.
pub const GUARD: Duration = Duration::from_secs(60);

/// Server and client namespaces joined by a veth pair with `queues` queues each way: the
/// library's testbed (`xdp_quic_control::testbed`), under the names these tests use.
/// Server: 10.99.0.1/24, fd00:63::1/64 on `server_if`; client: .2 / ::2.
pub struct Testbed {
    pub server: NsName,
    pub client: NsName,
    pub server_if: String,
    pub client_if: String,
    _inner: xdp_quic_control::testbed::Testbed,
}

/// A namespace's name.
pub struct NsName {
    pub name: String,
}

pub const SERVER4: &str = "10.99.0.1";
pub const CLIENT4: &str = "10.99.0.2";
pub const SERVER6: &str = "fd00:63::1";
pub const CLIENT6: &str = "fd00:63::2";

impl Testbed {
    pub fn new(queues: u32) -> Self {
        let inner = xdp_quic_control::testbed::Testbed::create(&unique_name("xt"), queues, 99)
            .expect("creating the testbed");
        assert_eq!(inner.server_v4.to_string(), SERVER4);
        assert_eq!(inner.server_v6.to_string(), SERVER6);
        Self {
            server: NsName {
                name: inner.server_ns.clone(),
            },
            client: NsName {
                name: inner.client_ns.clone(),
            },
            server_if: inner.server_if.clone(),
            client_if: inner.client_if.clone(),
            _inner: inner,
        }
    }
}

/// Runs `xdp-quic <args>`.
pub fn xq(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_xdp-quic"))
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("spawn xdp-quic")
}

/// Runs `xdp-quic <args>` and returns stdout, panicking with stderr on failure.
pub fn xq_ok(args: &[&str]) -> String {
    let out = xq(args);
    assert!(
        out.status.success(),
        "xdp-quic {args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Runs `xdp-quic <args>`, asserts it fails with exit code 1..=255 and that stderr
/// contains `needle`; returns stderr.
pub fn xq_err(args: &[&str], needle: &str) -> String {
    let out = xq(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success(),
        "xdp-quic {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.status.code().is_some_and(|c| c != 0),
        "no exit code: {}",
        out.status
    );
    assert!(
        err.contains(needle),
        "xdp-quic {args:?}: stderr lacks {needle:?}:\n{err}"
    );
    err
}

/// `xdp-quic stats <iface> --json` counters.
pub fn stats(ns: &str, iface: &str) -> serde_json::Value {
    let out = xq_ok(&["stats", iface, "--netns", ns, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["counters"].clone()
}

/// A running `xdp-quic serve`, its stderr read line by line; killed on drop unless stopped.
pub struct ServeProcess {
    child: Option<std::process::Child>,
    stderr: std::io::BufReader<std::process::ChildStderr>,
    seen: String,
    serving: String,
}

impl ServeProcess {
    /// Starts `xdp-quic serve ARGS` and waits for its "serving ..." line.
    pub fn start(args: &[&str]) -> Self {
        let mut all = vec!["serve"];
        all.extend_from_slice(args);
        Self::start_program(env!("CARGO_BIN_EXE_xdp-quic"), &all)
    }

    /// Starts `program ARGS`, which runs (or execs) `xdp-quic serve`, and waits for its
    /// "serving ..." line.
    pub fn start_program(program: &str, args: &[&str]) -> Self {
        let mut child = Command::new(program)
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn xdp-quic serve");
        let stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut s = Self {
            child: Some(child),
            stderr,
            seen: String::new(),
            serving: String::new(),
        };
        s.serving = s.wait_for("serving");
        s
    }

    /// The "serving ..." line.
    pub fn serving_line(&self) -> &str {
        &self.serving
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// Reads stderr until a line contains `needle`; returns it. A server that has not printed
    /// it within a minute is killed and the test fails (a hang guard, not a performance
    /// bound).
    pub fn wait_for(&mut self, needle: &str) -> String {
        use std::io::BufRead as _;
        let pid = self.pid() as i32;
        let (done, watchdog) = std::sync::mpsc::channel::<()>();
        std::thread::spawn(move || {
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                watchdog.recv_timeout(Duration::from_secs(60))
            {
                // SAFETY: kill(2) on the child's pid, which the test owns and has not waited.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        });
        loop {
            let mut line = String::new();
            if self.stderr.read_line(&mut line).unwrap() == 0 {
                panic!("serve ended without printing {needle:?}:\n{}", self.seen);
            }
            self.seen.push_str(&line);
            if line.contains(needle) {
                let _ = done.send(());
                return line;
            }
        }
    }

    /// Ctrl-C; returns whether it exited with status 0, and all it printed on stderr.
    pub fn stop(mut self) -> (bool, String) {
        use std::io::Read as _;
        let mut child = self.child.take().unwrap();
        // SAFETY: kill(2) on the child we spawned and have not waited for.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = child.wait().unwrap();
        let mut rest = std::mem::take(&mut self.seen);
        self.stderr.read_to_string(&mut rest).unwrap();
        (status.success(), rest)
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `xdp-quic <args>` under `ip netns exec NS` (a private mount namespace without
/// bpffs at /sys/fs/bpf).
pub fn xq_under_ip_netns_exec(ns: &str, args: &[&str]) -> Output {
    Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_xdp-quic")])
        .args(args)
        .env("RUST_BACKTRACE", "0")
        .env_remove("RUST_LIB_BACKTRACE")
        .output()
        .expect("spawn ip netns exec xdp-quic")
}
