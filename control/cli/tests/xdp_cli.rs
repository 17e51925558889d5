//! `xdp-quic attach | detach | status | stats` against real veth pairs in test network
//! namespaces (root only; in CI a missing privilege fails instead of skipping).

mod support;

use std::net::SocketAddr;
use std::path::Path;

use support::*;

fn pin_dir(iface: &str) -> String {
    format!("/sys/fs/bpf/xdp-quic/{iface}")
}

/// Attaches xdp-quic's object to `iface` in netns `ns` the way another tool would (`ip link
/// set ... xdpgeneric obj`, no config entry): a program not xdp-quic's.
fn attach_foreign(ns: &str, iface: &str) {
    let obj = concat!(env!("CARGO_MANIFEST_DIR"), "/../../ebpf/xdp_quic.o");
    sh(&[
        "ip",
        "-n",
        ns,
        "link",
        "set",
        "dev",
        iface,
        "xdpgeneric",
        "obj",
        obj,
        "sec",
        "xdp",
    ]);
}

fn attach_counts_and_detaches(mode: &str) {
    let tb = Testbed::new(2);
    let _pins = PinGuard(tb.server_if.clone());
    let (s, c) = (&tb.server.name, &tb.client.name);
    let out = xq_ok(&[
        "attach",
        &tb.server_if,
        "--netns",
        s,
        "--port",
        "4433",
        "--port",
        "4434",
        "--mode",
        mode,
    ]);
    assert!(out.contains(&format!("in {mode} mode")), "{out}");
    assert!(Path::new(&pin_dir(&tb.server_if)).join("xsks").exists());
    let prog = xdp_prog_on(s, &tb.server_if).expect("no XDP program on the interface");

    // status
    let st: serde_json::Value =
        serde_json::from_str(&xq_ok(&["status", "--json", "--netns", s])).unwrap();
    let me = st["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["iface"] == tb.server_if.as_str())
        .unwrap();
    assert_eq!(me["state"], "attached");
    assert_eq!(me["mode"], mode);
    assert_eq!(me["prog_id"].as_u64(), Some(prog));
    assert_eq!(me["ports"], serde_json::json!([4433, 4434]));
    assert_eq!(me["queues"].as_array().unwrap().len(), 2);
    assert!(me["queues"]
        .as_array()
        .unwrap()
        .iter()
        .all(|q| q["socket"] == false));

    // service traffic: counted, and with no AF_XDP socket it goes to the kernel
    let before = stats(s, &tb.server_if);
    send_udp(c, format!("{SERVER4}:4433").parse().unwrap(), 5, 100);
    send_udp(c, format!("[{SERVER6}]:4434").parse().unwrap(), 3, 100);
    send_udp(c, format!("{SERVER4}:4433").parse().unwrap(), 2, 10); // too short for QUIC
    let delta = |after: &serde_json::Value, k: &str| {
        after[k].as_u64().unwrap() - before[k].as_u64().unwrap()
    };
    let after = read_until(
        "the datagrams counted",
        GUARD,
        || stats(s, &tb.server_if),
        |after| {
            delta(after, "v4.passed_no_socket") >= 5
                && delta(after, "v6.passed_no_socket") >= 3
                && delta(after, "v4.dropped_malformed") >= 2
        },
    );
    let d = |k: &str| delta(&after, k);
    assert_eq!(d("v4.passed_no_socket"), 5, "{after}");
    assert_eq!(d("v6.passed_no_socket"), 3, "{after}");
    assert_eq!(d("v4.dropped_malformed"), 2, "{after}");
    assert!(d("packets") >= 10);

    // other port and ICMP still reach the kernel
    let other: SocketAddr = format!("{SERVER4}:5555").parse().unwrap();
    assert!(
        udp_reaches_kernel(s, c, other),
        "UDP to another port did not reach the kernel"
    );
    let other6: SocketAddr = format!("[{SERVER6}]:5556").parse().unwrap();
    assert!(
        udp_reaches_kernel(s, c, other6),
        "UDP/IPv6 to another port did not reach the kernel"
    );
    assert!(ping(c, SERVER4), "ping failed with XDP attached");
    assert!(ping(c, SERVER6), "ping -6 failed with XDP attached");
    let end = stats(s, &tb.server_if);
    assert!(end["v4.passed_other_port"].as_u64().unwrap() >= 1, "{end}");
    assert!(end["v4.passed_not_udp"].as_u64().unwrap() >= 1, "{end}");

    // detach leaves no program and no pins
    let out = xq_ok(&["detach", &tb.server_if, "--netns", s]);
    assert!(out.contains("detached"), "{out}");
    assert_eq!(xdp_prog_on(s, &tb.server_if), None);
    assert!(!Path::new(&pin_dir(&tb.server_if)).exists());
    assert!(ping(c, SERVER4));
}

#[test]
fn native_attach_counts_traffic_and_detach_cleans_up() {
    if privileged("native_attach") {
        attach_counts_and_detaches("native");
    }
}

#[test]
fn skb_attach_counts_traffic_and_detach_cleans_up() {
    if privileged("skb_attach") {
        attach_counts_and_detaches("skb");
    }
}

#[test]
fn attach_twice_is_idempotent_and_updates_ports() {
    if !privileged("attach_twice") {
        return;
    }
    let tb = Testbed::new(1);
    let _pins = PinGuard(tb.server_if.clone());
    let (s, i) = (tb.server.name.as_str(), tb.server_if.as_str());
    xq_ok(&["attach", i, "--netns", s, "--port", "4433"]);
    let prog = xdp_prog_on(s, i).unwrap();
    let out = xq_ok(&["attach", i, "--netns", s, "--port", "4433"]);
    assert!(out.contains("nothing changed"), "{out}");
    assert_eq!(xdp_prog_on(s, i), Some(prog));
    let out = xq_ok(&[
        "attach", i, "--netns", s, "--port", "443", "--addr", SERVER4,
    ]);
    assert!(out.contains("updated ports 4433 -> 443"), "{out}");
    assert_eq!(xdp_prog_on(s, i), Some(prog), "update must not reattach");
    let st: serde_json::Value =
        serde_json::from_str(&xq_ok(&["status", "--json", "--netns", s])).unwrap();
    let me = st["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["iface"] == i)
        .unwrap()
        .clone();
    assert_eq!(me["ports"], serde_json::json!([443]));
    assert_eq!(me["addrs"], serde_json::json!([SERVER4]));
    // the address filter applies: IPv6 to 443 is another address now
    send_udp(
        &tb.client.name,
        format!("[{SERVER6}]:443").parse().unwrap(),
        2,
        100,
    );
    let other_addr = read_until(
        "the datagrams counted",
        GUARD,
        || stats(s, i)["v6.passed_other_addr"].as_u64(),
        |n| n.is_some_and(|n| n >= 2),
    );
    assert_eq!(other_addr, Some(2));
    // asking for the other mode explicitly is refused and changes nothing
    let mode = me["mode"].as_str().unwrap();
    let other = if mode == "native" { "skb" } else { "native" };
    xq_err(
        &["attach", i, "--netns", s, "--port", "443", "--mode", other],
        "xdp-quic is already attached",
    );
    assert_eq!(xdp_prog_on(s, i), Some(prog));
    xq_ok(&["detach", i, "--netns", s]);
    assert!(!Path::new(&pin_dir(i)).exists());
}

#[test]
fn error_unknown_interface_and_netns() {
    if !privileged("unknown_interface") {
        return;
    }
    let ns = Netns::new("xqt");
    xq_err(
        &["attach", "nosuchif0", "--netns", &ns.name, "--port", "1"],
        "unknown interface 'nosuchif0'",
    );
    xq_err(
        &["attach", "eth0", "--netns", "xq-no-such-ns", "--port", "1"],
        "unknown network namespace 'xq-no-such-ns'",
    );
    xq_err(
        &["detach", "nosuchif0", "--netns", &ns.name],
        "xdp-quic is not attached to 'nosuchif0'",
    );
    xq_err(
        &["stats", "nosuchif0", "--netns", &ns.name],
        "xdp-quic is not attached to 'nosuchif0'",
    );
    xq_err(
        &["attach", "lo", "--netns", &ns.name, "--port", "0"],
        "port 0 is not a valid service port",
    );
    assert!(!Path::new(&pin_dir("nosuchif0")).exists());
}

#[test]
fn error_not_permitted_names_capabilities() {
    if !privileged("not_permitted") {
        return;
    }
    let tb = Testbed::new(1);
    let _pins = PinGuard(tb.server_if.clone());
    // setpriv drops to nobody with no capabilities; the netns is entered first as root.
    let as_nobody = |args: &[&str]| {
        std::process::Command::new("ip")
            .args([
                "netns",
                "exec",
                &tb.server.name,
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
            ])
            .arg(env!("CARGO_BIN_EXE_xdp-quic"))
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    };
    // attach, and status (the pins are root's alone): each names what it lacks.
    for args in [
        &["attach", &tb.server_if, "--port", "4433"][..],
        &["status"][..],
    ] {
        let out = as_nobody(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.code().is_some_and(|c| c != 0), "{args:?}: {err}");
        for cap in ["not permitted", "CAP_NET_ADMIN", "CAP_BPF", "CAP_SYS_ADMIN"] {
            assert!(err.contains(cap), "{args:?}: missing {cap}: {err}");
        }
    }
    assert_eq!(xdp_prog_on(&tb.server.name, &tb.server_if), None);
    assert!(!Path::new(&pin_dir(&tb.server_if)).exists());
}

/// Loading the program takes CAP_PERFMON besides CAP_NET_ADMIN and CAP_BPF (the verifier's
/// Spectre mitigations refuse its packet parsing without it): a first attach without it is
/// refused up front, naming it, and changes nothing; an update of a live attachment's ports
/// loads nothing and goes without it. Whose a program on the interface is takes
/// CAP_SYS_ADMIN to tell: without it the refusal says so, and --force is refused.
#[test]
fn attach_needs_cap_perfmon_only_to_load() {
    if !privileged("attach_needs_cap_perfmon_only_to_load") {
        return;
    }
    let tb = Testbed::new(1);
    let _pins = PinGuard(tb.server_if.clone());
    let (s, i) = (tb.server.name.as_str(), tb.server_if.as_str());
    // In the server's netns, the host's mount namespace (its bpffs) kept.
    let with_caps = |caps: &str, args: &[&str]| {
        std::process::Command::new("nsenter")
            .arg(format!("--net=/run/netns/{s}"))
            .args(["setpriv", "--inh-caps", caps, "--ambient-caps", caps])
            .args(["--bounding-set", caps])
            .arg(env!("CARGO_BIN_EXE_xdp-quic"))
            .args(args)
            .env("RUST_BACKTRACE", "0")
            .output()
            .unwrap()
    };
    let caps = "-all,+net_admin,+bpf";
    let out = with_caps(caps, &["attach", i, "--port", "4433"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "attached without CAP_PERFMON");
    assert!(
        err.contains("not permitted") && err.contains("CAP_PERFMON"),
        "{err}"
    );
    assert_eq!(xdp_prog_on(s, i), None);
    assert!(!Path::new(&pin_dir(i)).exists());

    // Whose a program on the interface is cannot be told without CAP_SYS_ADMIN: said so,
    // rather than taken for another tool's; replacing it (--force) is refused up front.
    let load = "-all,+net_admin,+bpf,+perfmon";
    attach_foreign(s, i);
    let foreign = xdp_prog_on(s, i).expect("a program attached");
    let out = with_caps(load, &["attach", i, "--port", "4433"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        err.contains("cannot be told without CAP_SYS_ADMIN"),
        "{err}"
    );
    let out = with_caps(load, &["attach", i, "--port", "4433", "--force"]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        !out.status.success() && err.contains("needs CAP_SYS_ADMIN"),
        "{err}"
    );
    assert_eq!(xdp_prog_on(s, i), Some(foreign), "the program stays");
    assert!(!Path::new(&pin_dir(i)).exists());
    let out = with_caps(load, &["stats", i]);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success());
    assert!(
        err.contains("cannot be told without CAP_SYS_ADMIN"),
        "{err}"
    );
    sh(&["ip", "-n", s, "link", "set", "dev", i, "xdpgeneric", "off"]);

    xq_ok(&["attach", i, "--netns", s, "--port", "4433"]);
    let out = with_caps(caps, &["attach", i, "--port", "4433", "--port", "4434"]);
    let (stdout, err) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{err}");
    assert!(
        stdout.contains("updated ports") && stdout.contains("4434"),
        "{stdout}"
    );
    xq_ok(&["detach", i, "--netns", s]);
}

#[test]
fn error_foreign_program_refused_unless_force() {
    if !privileged("foreign_program") {
        return;
    }
    let tb = Testbed::new(1);
    let _pins = PinGuard(tb.server_if.clone());
    let (s, i) = (tb.server.name.as_str(), tb.server_if.as_str());
    attach_foreign(s, i);
    let foreign = xdp_prog_on(s, i).expect("foreign program attached");
    let err = xq_err(
        &["attach", i, "--netns", s, "--port", "4433"],
        "already has an XDP program",
    );
    assert!(err.contains("--force"), "{err}");
    assert_eq!(
        xdp_prog_on(s, i),
        Some(foreign),
        "refusal must change nothing"
    );
    assert!(!Path::new(&pin_dir(i)).exists());
    // A server does not replace it either, and says what to do without a --force of its own.
    let err = xq_err(
        &[
            "serve",
            "--netns",
            s,
            "--listen",
            "0.0.0.0:4433",
            "--backend",
            "xdp",
            "--iface",
            i,
            "--app",
            "echo",
        ],
        "already has an XDP program",
    );
    assert!(
        err.contains("xdp-quic did not attach")
            && err.contains(&format!("ip link set dev {i} xdp off"))
            && err.contains(&format!("xdp-quic attach {i} --port 4433 --force"))
            && !err.contains("pass --force"),
        "{err}"
    );
    assert_eq!(xdp_prog_on(s, i), Some(foreign));
    let out = xq_ok(&["attach", i, "--netns", s, "--port", "4433", "--force"]);
    assert!(
        out.contains(&format!("removed the XDP program {foreign}")),
        "{out}"
    );
    let ours = xdp_prog_on(s, i).unwrap();
    assert_ne!(ours, foreign);
    xq_ok(&["detach", i, "--netns", s]);
    assert_eq!(xdp_prog_on(s, i), None);
}

#[test]
fn error_native_refused_and_auto_falls_back() {
    if !privileged("native_refused") {
        return;
    }
    // A bridge has no native XDP (and needs no module this kernel may lack, as dummy
    // does). Named uniquely: the pins are named by interface and bpffs is the host's, not
    // the namespace's (the link goes with the namespace).
    let ns = Netns::new("xqt");
    let lo = unique_name("xqd");
    sh(&["ip", "-n", &ns.name, "link", "add", &lo, "type", "bridge"]);
    sh(&["ip", "-n", &ns.name, "link", "set", "dev", &lo, "up"]);
    let _pins = PinGuard(lo.clone());
    let lo = lo.as_str();
    xq_err(
        &[
            "attach", lo, "--netns", &ns.name, "--port", "4433", "--mode", "native",
        ],
        "refuses native XDP",
    );
    assert_eq!(xdp_prog_on(&ns.name, lo), None);
    assert!(!Path::new(&pin_dir(lo)).exists());
    let out = xq_ok(&[
        "attach", lo, "--netns", &ns.name, "--port", "4433", "--mode", "auto",
    ]);
    assert!(
        out.contains("using generic (skb) mode") && out.contains("in skb mode"),
        "{out}"
    );
    xq_ok(&["detach", lo, "--netns", &ns.name]);
    assert_eq!(xdp_prog_on(&ns.name, lo), None);
    // With --force over another program, the refusal comes after that program is gone
    // (the two steps are not atomic): the error says so.
    attach_foreign(&ns.name, lo);
    let foreign = xdp_prog_on(&ns.name, lo).expect("foreign program attached");
    let err = xq_err(
        &[
            "attach", lo, "--netns", &ns.name, "--port", "4433", "--mode", "native", "--force",
        ],
        "refuses native XDP",
    );
    assert!(
        err.contains(&format!("(id {foreign}) was removed (--force)")),
        "{err}"
    );
    assert_eq!(xdp_prog_on(&ns.name, lo), None);
    assert!(!Path::new(&pin_dir(lo)).exists());
}

/// `attach` (and `detach`) in a private mount namespace without bpffs at /sys/fs/bpf would
/// pin on a bpffs that dies with the command: refused, naming `--netns`, nothing changed.
/// Two such namespaces: `unshare -m` with /sys/fs read-only, and `ip netns exec`.
#[test]
fn attach_in_a_private_mount_namespace_without_bpffs_is_refused() {
    if !privileged("private_mount_namespace") {
        return;
    }
    let tb = Testbed::new(1);
    let _pins = PinGuard(tb.server_if.clone());
    let (s, i) = (tb.server.name.as_str(), tb.server_if.as_str());
    let script = format!(
        "mount -t tmpfs -o ro tmpfs /sys/fs && exec {} attach {i} --netns {s} --port 4433",
        env!("CARGO_BIN_EXE_xdp-quic"),
    );
    let out = std::process::Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", &script])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code().is_some_and(|c| c != 0), "{err}");
    assert!(
        err.contains("xdp-quic attach must run in the host's mount namespace")
            && err.contains(&format!("--netns {s}"))
            && err.contains("Nothing was changed"),
        "{err}"
    );
    assert_eq!(xdp_prog_on(s, i), None);

    let out = xq_under_ip_netns_exec(s, &["attach", i, "--port", "4433"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code().is_some_and(|c| c != 0), "{err}");
    assert!(
        err.contains("xdp-quic attach must run in the host's mount namespace")
            && err.contains("ip netns exec")
            && err.contains(&format!("--netns {s}")),
        "{err}"
    );
    assert_eq!(xdp_prog_on(s, i), None, "a refused attach attached");
    assert!(!Path::new(&pin_dir(i)).exists());
}

/// Under `ip netns exec`, `status` and `stats` read the pins `attach --netns` made on the
/// host's bpffs (through /proc), `serve` registers its sockets in them, and `detach` is
/// refused (naming `--netns`) without changing anything.
#[test]
fn under_ip_netns_exec_status_stats_and_serve_find_the_host_pins() {
    if !privileged("ip_netns_exec_reads") {
        return;
    }
    let tb = Testbed::new(1);
    let _pins = PinGuard(tb.server_if.clone());
    let (s, i) = (tb.server.name.as_str(), tb.server_if.as_str());
    xq_ok(&["attach", i, "--netns", s, "--port", "4433", "--mode", "skb"]);
    let prog = xdp_prog_on(s, i).expect("attached");

    let out = xq_under_ip_netns_exec(s, &["status", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let me = st["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["iface"] == i)
        .unwrap_or_else(|| panic!("status under ip netns exec misses {i}: {st}"))
        .clone();
    assert_eq!(me["state"], "attached", "{me}");
    assert_eq!(me["pinned"], true, "{me}");
    assert_eq!(me["prog_id"].as_u64(), Some(prog));
    assert_eq!(me["pin_dir"], pin_dir(i).as_str());
    assert_eq!(me["ports"], serde_json::json!([4433]));

    let stats_inside = || -> serde_json::Value {
        let out = xq_under_ip_netns_exec(s, &["stats", i, "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let before = stats_inside();
    assert_eq!(before["attachment"], "pinned");
    send_udp(
        &tb.client.name,
        format!("{SERVER4}:4433").parse().unwrap(),
        3,
        100,
    );
    let d = |after: &serde_json::Value, k: &str| {
        after["counters"][k].as_u64().unwrap() - before["counters"][k].as_u64().unwrap()
    };
    let after = read_until("the datagrams counted", GUARD, stats_inside, |after| {
        d(after, "v4.passed_no_socket") >= 3
    });
    assert_eq!(d(&after, "v4.passed_no_socket"), 3, "{after}");

    // A server started under ip netns exec uses the pinned attachment: its socket is
    // registered in the pinned map, which status sees, and packets reach it.
    let mut cmd_args = vec!["netns", "exec", s, env!("CARGO_BIN_EXE_xdp-quic"), "serve"];
    cmd_args.extend(["--listen", "0.0.0.0:4433", "--backend", "xdp", "--iface", i]);
    cmd_args.extend(["--app", "echo"]);
    let server = ServeProcess::start_program("ip", &cmd_args);
    assert!(
        server.serving_line().contains("pinned by xdp-quic attach"),
        "{}",
        server.serving_line()
    );
    let st: serde_json::Value =
        serde_json::from_str(&xq_ok(&["status", "--json", "--netns", s])).unwrap();
    let me = st["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["iface"] == i)
        .unwrap()
        .clone();
    assert_eq!(
        me["queues"],
        serde_json::json!([{"queue": 0, "socket": true}]),
        "{me}"
    );
    let before = stats(s, i);
    send_udp(
        &tb.client.name,
        format!("{SERVER4}:4433").parse().unwrap(),
        4,
        100,
    );
    let redirected = |after: &serde_json::Value| {
        after["v4.redirected"].as_u64().unwrap() - before["v4.redirected"].as_u64().unwrap()
    };
    let after = read_until(
        "the datagrams counted",
        GUARD,
        || stats(s, i),
        |after| redirected(after) >= 4,
    );
    assert_eq!(redirected(&after), 4, "{after}");
    let (ok, err) = server.stop();
    assert!(ok, "{err}");

    let out = xq_under_ip_netns_exec(s, &["detach", i]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.code().is_some_and(|c| c != 0), "{err}");
    assert!(
        err.contains("xdp-quic detach must run in the host's mount namespace")
            && err.contains(&format!("--netns {s}")),
        "{err}"
    );
    assert_eq!(xdp_prog_on(s, i), Some(prog), "a refused detach detached");
    assert!(Path::new(&pin_dir(i)).join("link").exists());
    xq_ok(&["detach", i, "--netns", s]);
    assert_eq!(xdp_prog_on(s, i), None);
    let out = xq_under_ip_netns_exec(s, &["status", "--json"]);
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        !st["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["iface"] == i),
        "{st}"
    );
}

#[test]
fn stats_watch_prints_rates() {
    if !privileged("stats_watch") {
        return;
    }
    let tb = Testbed::new(1);
    let _pins = PinGuard(tb.server_if.clone());
    let (s, i) = (tb.server.name.as_str(), tb.server_if.as_str());
    xq_ok(&["attach", i, "--netns", s, "--port", "4433", "--mode", "skb"]);
    let out = xq_ok(&[
        "stats", i, "--netns", s, "--json", "--watch", "0.2", "--count", "2",
    ]);
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    for l in &lines {
        assert!(
            l["rates"]["packets"].is_number() && l["counters"]["packets"].is_number(),
            "{l}"
        );
        assert!(l["interval_secs"].as_f64().unwrap() >= 0.2);
    }
    let text = xq_ok(&["stats", i, "--netns", s]);
    assert!(
        text.contains("v4.redirected") && text.contains("v6.dropped_malformed"),
        "{text}"
    );
    xq_ok(&["detach", i, "--netns", s]);
}

/// A server that attached the program for itself (no pins): `status` and `stats` show it as
/// attached by that running process, with its queue's socket and its counters; a second
/// server, `attach` and `detach` are refused with messages that name the process and suggest
/// nothing that would break it; when it stops, the program goes with it.
#[test]
fn status_and_stats_show_a_servers_own_attachment() {
    if !privileged("servers_own_attachment") {
        return;
    }
    let tb = Testbed::new(1);
    let _pins = PinGuard(tb.server_if.clone());
    let (s, i, c) = (
        tb.server.name.as_str(),
        tb.server_if.as_str(),
        tb.client.name.as_str(),
    );
    let server = ServeProcess::start(&[
        "--netns",
        s,
        "--listen",
        "0.0.0.0:4433",
        "--backend",
        "xdp",
        "--iface",
        i,
        "--app",
        "echo",
        "--xdp-mode",
        "skb",
    ]);
    assert!(
        server.serving_line().contains("attached by this process"),
        "{}",
        server.serving_line()
    );
    let pid = server.pid();
    let prog = xdp_prog_on(s, i).expect("the server attached a program");
    assert!(!Path::new(&pin_dir(i)).exists(), "a server makes no pins");

    let st: serde_json::Value =
        serde_json::from_str(&xq_ok(&["status", "--json", "--netns", s])).unwrap();
    let me = st["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["iface"] == i)
        .unwrap_or_else(|| panic!("status misses the server's attachment: {st}"))
        .clone();
    assert_eq!(me["state"], "attached", "{me}");
    assert_eq!(me["pinned"], false, "{me}");
    assert_eq!(me["pin_dir"], serde_json::Value::Null, "{me}");
    assert_eq!(me["mode"], "skb", "{me}");
    assert_eq!(me["prog_id"].as_u64(), Some(prog), "{me}");
    assert_eq!(me["ports"], serde_json::json!([4433]), "{me}");
    let holders = me["holders"].as_array().unwrap();
    assert_eq!(holders.len(), 1, "{me}");
    assert_eq!(holders[0]["pid"].as_u64(), Some(u64::from(pid)), "{me}");
    assert_eq!(holders[0]["comm"], "xdp-quic", "{me}");
    assert_eq!(holders[0]["link_id"], me["link_id"], "{me}");
    assert_eq!(
        me["queues"],
        serde_json::json!([{"queue": 0, "socket": true}]),
        "{me}"
    );
    let text = xq_ok(&["status", "--netns", s]);
    assert!(
        text.contains(&format!(
            "{i}: attached by a running process (not pinned): pid {pid} (xdp-quic)"
        )),
        "{text}"
    );

    // stats reads the program's counters by id.
    let stats_json = || -> serde_json::Value {
        serde_json::from_str(&xq_ok(&["stats", i, "--netns", s, "--json"])).unwrap()
    };
    let before = stats_json();
    assert_eq!(before["attachment"], "process", "{before}");
    assert_eq!(before["pids"], serde_json::json!([pid]), "{before}");
    send_udp(c, format!("{SERVER4}:4433").parse().unwrap(), 5, 100);
    let d = |after: &serde_json::Value, k: &str| {
        after["counters"][k].as_u64().unwrap() - before["counters"][k].as_u64().unwrap()
    };
    let after = read_until("the datagrams counted", GUARD, stats_json, |after| {
        d(after, "v4.redirected") >= 5
    });
    assert_eq!(d(&after, "v4.redirected"), 5, "{after}");
    let text = xq_ok(&["stats", i, "--netns", s]);
    assert!(
        text.contains("attached by a running process (not pinned)")
            && text.contains("v4.redirected"),
        "{text}"
    );

    // A second server on the interface: refused, naming the first; no --force, no `xdp off`.
    let err = xq_err(
        &[
            "serve",
            "--netns",
            s,
            "--listen",
            "0.0.0.0:4434",
            "--backend",
            "xdp",
            "--iface",
            i,
            "--app",
            "echo",
        ],
        "already has xdp-quic's XDP program",
    );
    assert!(
        err.contains("attached by another running process")
            && err.contains(&format!("pid {pid} (xdp-quic)"))
            && !err.contains("--force")
            && !err.contains("xdp off"),
        "{err}"
    );
    // attach: refused, the first server named, nothing changed.
    let err = xq_err(
        &["attach", i, "--netns", s, "--port", "4433"],
        "already has xdp-quic's XDP program",
    );
    assert!(
        err.contains(&format!("pid {pid} (xdp-quic)"))
            && err.contains("stop that process first")
            && !err.contains("xdp off"),
        "{err}"
    );
    // detach: nothing pinned to remove; says whose it is.
    let err = xq_err(
        &["detach", i, "--netns", s],
        "was attached by a running process for its own life",
    );
    assert!(err.contains(&format!("pid {pid}")), "{err}");
    assert_eq!(
        xdp_prog_on(s, i),
        Some(prog),
        "a refused command changed the program"
    );
    assert!(!Path::new(&pin_dir(i)).exists());

    let (ok, err) = server.stop();
    assert!(ok, "{err}");
    assert_eq!(xdp_prog_on(s, i), None, "the program outlived its server");
    let st: serde_json::Value =
        serde_json::from_str(&xq_ok(&["status", "--json", "--netns", s])).unwrap();
    assert!(
        !st["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .any(|x| x["iface"] == i),
        "{st}"
    );
    xq_err(
        &["stats", i, "--netns", s],
        &format!("xdp-quic is not attached to '{i}'"),
    );
}

/// Sends `n` datagrams of `payload` from namespace `ns` to `to`.
fn send_payload(ns: &str, to: SocketAddr, n: usize, payload: &[u8]) {
    xdp_quic_control::testbed::in_netns(ns, || {
        let s = std::net::UdpSocket::bind("0.0.0.0:0").expect("binding a UDP socket");
        for _ in 0..n {
            s.send_to(payload, to).expect("sending a datagram");
        }
    })
    .expect("entering the namespace");
}

/// A long header of `version`, type Initial, 8-octet CIDs, `len` octets in all.
fn long_header(version: u32, len: usize) -> Vec<u8> {
    let mut p = vec![0x5au8; len];
    p[0] = 0xc3;
    p[1..5].copy_from_slice(&version.to_be_bytes());
    p[5] = 8;
    p[14] = 8;
    p
}

/// `attach --shield` with its options: `status` shows the shield as configured, `stats` (text
/// and JSON) names every drop reason and counts the shield's drops (Initials in short
/// datagrams, small long headers of a version not spoken); `attach --no-shield` turns it off
/// (the same packets then reach the kernel: no socket), `status` says so.
#[test]
fn attach_shield_shows_in_status_and_stats() {
    if !privileged("attach_shield") {
        return;
    }
    let tb = Testbed::new(1);
    let _pins = PinGuard(tb.server_if.clone());
    let (s, c, i) = (
        tb.server.name.as_str(),
        tb.client.name.as_str(),
        tb.server_if.as_str(),
    );
    let shield_of = || {
        let st: serde_json::Value =
            serde_json::from_str(&xq_ok(&["status", "--json", "--netns", s])).unwrap();
        st["interfaces"]
            .as_array()
            .unwrap()
            .iter()
            .find(|x| x["iface"] == i)
            .unwrap()["shield"]
            .clone()
    };
    let out = xq_ok(&["attach", i, "--netns", s, "--port", "4433"]);
    assert!(!out.contains("shield"), "{out}");
    assert_eq!(shield_of(), serde_json::Value::Null, "off by default");
    let out = xq_ok(&[
        "attach",
        i,
        "--netns",
        s,
        "--port",
        "4433",
        "--shield",
        "--shield-initial-rate",
        "10",
        "--shield-prefix4",
        "16",
    ]);
    assert!(out.contains("shield: on"), "{out}");
    let sh = shield_of();
    assert_eq!(sh["prefix_v4"], 16, "{sh}");
    assert_eq!(sh["prefix_v6"], 56, "{sh}");
    assert_eq!(
        sh["initial_under_pressure"],
        serde_json::json!([10, 10]),
        "{sh}"
    );
    assert_eq!(sh["versions"][0], 1, "{sh}");
    assert_eq!(sh["cid_layout"], serde_json::Value::Null, "no server: {sh}");
    assert_eq!(sh["pressure"], serde_json::json!([]), "{sh}");
    let text = xq_ok(&["status", "--netns", s]);
    assert!(text.contains("shield: on"), "{text}");
    let out = xq_ok(&[
        "attach",
        i,
        "--netns",
        s,
        "--port",
        "4433",
        "--shield",
        "--shield-initial-rate",
        "10",
        "--shield-prefix4",
        "16",
    ]);
    assert!(out.contains("shield: on, unchanged"), "{out}");

    // Every reason, in both outputs.
    let text = xq_ok(&["stats", i, "--netns", s]);
    let json = stats(s, i);
    for fam in ["v4", "v6"] {
        for reason in [
            "dropped_short_initial",
            "dropped_unknown_version",
            "dropped_version_rate",
            "dropped_foreign_cid",
            "dropped_initial_rate",
        ] {
            let name = format!("{fam}.{reason}");
            assert!(text.contains(&name), "stats lacks {name}: {text}");
            assert!(json[&name].is_u64(), "stats --json lacks {name}: {json}");
        }
    }
    for name in [
        "shield_admitted",
        "shield_with_token",
        "shield_version_passed",
    ] {
        assert!(text.contains(name), "stats lacks {name}: {text}");
        assert!(json[name].is_u64(), "stats --json lacks {name}: {json}");
    }

    // The shield's drops, counted.
    let to: SocketAddr = format!("{SERVER4}:4433").parse().unwrap();
    send_payload(c, to, 3, &long_header(1, 300));
    send_payload(c, to, 2, &long_header(0x1a2a_3a4a, 200));
    let after = read_until(
        "the shield's drops counted",
        GUARD,
        || stats(s, i),
        |a| {
            a["v4.dropped_short_initial"].as_u64() >= Some(3)
                && a["v4.dropped_unknown_version"].as_u64() >= Some(2)
        },
    );
    assert_eq!(after["v4.dropped_short_initial"], 3, "{after}");
    assert_eq!(after["v4.dropped_unknown_version"], 2, "{after}");
    assert_eq!(
        after["v4.passed_no_socket"], json["v4.passed_no_socket"],
        "{after}"
    );

    // Off: the same packets go on (to the kernel: no socket here).
    let out = xq_ok(&["attach", i, "--netns", s, "--port", "4433", "--no-shield"]);
    assert!(out.contains("shield: off"), "{out}");
    assert_eq!(shield_of(), serde_json::Value::Null);
    assert!(xq_ok(&["status", "--netns", s]).contains("shield: off"));
    let base = after["v4.passed_no_socket"].as_u64().unwrap();
    send_payload(c, to, 3, &long_header(1, 300));
    let end = read_until(
        "the short Initials counted",
        GUARD,
        || stats(s, i),
        |a| a["v4.passed_no_socket"].as_u64() >= Some(base + 3),
    );
    assert_eq!(end["v4.passed_no_socket"].as_u64(), Some(base + 3), "{end}");
    assert_eq!(end["v4.dropped_short_initial"], 3, "{end}");
    xq_ok(&["detach", i, "--netns", s]);
    assert!(!Path::new(&pin_dir(i)).exists());
}

/// The attached interface is renamed and another takes its name: a new `attach` under that
/// name is refused, saying so, and the renamed interface keeps its program (before, its pins
/// were taken for stale and removed, which detached a program in use). `detach` under the
/// name still ends that attachment; `--force` replaces it.
#[test]
fn attach_refuses_to_drop_a_live_attachment_of_a_renamed_interface() {
    if !privileged("attach_renamed") {
        return;
    }
    let tb = Testbed::new(1);
    let _pins = PinGuard(tb.server_if.clone());
    let (s, i) = (tb.server.name.as_str(), tb.server_if.as_str());
    xq_ok(&["attach", i, "--netns", s, "--port", "4433"]);
    let prog = xdp_prog_on(s, i).unwrap();
    let renamed = format!("{i}r");
    let ip = |args: &[&str]| {
        let out = std::process::Command::new("ip")
            .args(["-n", s])
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    ip(&["link", "set", i, "down"]);
    ip(&["link", "set", i, "name", &renamed]);
    ip(&["link", "set", &renamed, "up"]);
    let peer = format!("{i}p");
    ip(&["link", "add", i, "type", "veth", "peer", "name", &peer]);
    xq_err(
        &["attach", i, "--netns", s, "--port", "4433"],
        "live attachment of interface index",
    );
    assert_eq!(xdp_prog_on(s, &renamed), Some(prog), "still attached");
    xq_ok(&["detach", i, "--netns", s]);
    assert_eq!(xdp_prog_on(s, &renamed), None);
    assert!(!Path::new(&pin_dir(i)).exists());
    // Once more, replaced with --force: the renamed interface's attachment goes (once ours
    // is loaded), and the interface of the name has ours.
    // (Each interface down while it is renamed: kernels before 6.2 refuse to rename one up.)
    let rename = |from: &str, to: &str| {
        ip(&["link", "set", from, "down"]);
        ip(&["link", "set", from, "name", to]);
    };
    rename(i, "xqtmp0");
    rename(&renamed, i);
    xq_ok(&["attach", i, "--netns", s, "--port", "4433"]);
    let prog = xdp_prog_on(s, i).unwrap();
    rename(i, &renamed);
    rename("xqtmp0", i);
    let out = xq_ok(&["attach", i, "--netns", s, "--port", "4433", "--force"]);
    assert_eq!(xdp_prog_on(s, &renamed), None, "{out}");
    let ours = xdp_prog_on(s, i).expect("attached");
    assert_ne!(ours, prog);
    xq_ok(&["detach", i, "--netns", s]);
    assert_eq!(xdp_prog_on(s, i), None);
    assert!(!Path::new(&pin_dir(i)).exists());
}

/// Pins whose maps do not open (another version's, or one removed) are told as such by
/// `status`, not as stale pins of a gone interface; `detach` from another namespace leaves
/// them alone, `detach` from theirs removes them.
#[test]
fn pins_whose_maps_do_not_open_are_told_apart_and_detached_only_from_their_namespace() {
    if !privileged("incompatible_pins") {
        return;
    }
    let tb = Testbed::new(1);
    let _pins = PinGuard(tb.server_if.clone());
    let (s, c, i) = (
        tb.server.name.as_str(),
        tb.client.name.as_str(),
        tb.server_if.as_str(),
    );
    xq_ok(&["attach", i, "--netns", s, "--port", "4433"]);
    let prog = xdp_prog_on(s, i).expect("attached");
    std::fs::remove_file(format!("{}/buckets", pin_dir(i))).unwrap();
    // Our interface's line only: tests running beside this one may list pins of theirs,
    // stale for a moment while they tear down.
    let out = xq_ok(&["status", "--netns", s]);
    let ours: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with(&format!("{i}:")))
        .collect();
    assert!(ours.iter().any(|l| l.contains("maps do not open")), "{out}");
    assert!(!ours.iter().any(|l| l.contains("interface gone")), "{out}");
    let out = xq_ok(&["status", "--netns", s, "--json"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let st = v["interfaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["iface"] == i)
        .cloned()
        .expect("listed");
    assert_eq!(st["state"], "incompatible", "{st}");
    // From the client's namespace, which has no such interface: refused, nothing changed.
    xq_err(&["detach", i, "--netns", c], "another network namespace");
    assert_eq!(xdp_prog_on(s, i), Some(prog));
    assert!(Path::new(&pin_dir(i)).exists());
    xq_ok(&["detach", i, "--netns", s]);
    assert_eq!(xdp_prog_on(s, i), None);
    assert!(!Path::new(&pin_dir(i)).exists());
}

/// Pins are named by interface, and another namespace may have an interface of that name:
/// `stats` reads the pinned counters only when the attachment is this namespace's. From the
/// root namespace, which has no interface of the testbed's name, `stats` says it is not
/// attached; with `--netns` it reads them. (Before, it read another namespace's counters and
/// called them this interface's.)
#[test]
fn stats_read_no_other_namespaces_pins() {
    if !privileged("stats_read_no_other_namespaces_pins") {
        return;
    }
    let tb = Testbed::new(1);
    let _pins = PinGuard(tb.server_if.clone());
    let (s, i) = (tb.server.name.as_str(), tb.server_if.as_str());
    xq_ok(&["attach", i, "--netns", s, "--port", "4433"]);
    xq_err(&["stats", i], &format!("xdp-quic is not attached to '{i}'"));
    let text = xq_ok(&["stats", i, "--netns", s]);
    assert!(text.contains("v4"), "{text}");
}
