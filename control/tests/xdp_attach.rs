//! The embedded attachment (`attach_embedded`) against a real veth pair in a testbed of its
//! own: no pins, refused twice, counted, detached with its guard (root only; in CI a missing
//! privilege fails instead of skipping).

use std::time::Duration;
use xdp_quic_control::testbed::{in_netns, Testbed};

use xdp_quic_control::testing::{privileged, send_udp, unique_name, wait_until, xdp_prog_on};
use xdp_quic_control::xdp::{attach_embedded, pins, AttachMode, ServiceConfig};
use xdp_quic_ebpf::{Counter, Family, FamilyCounter};

/// A hang guard, never a performance bound.
const GUARD: Duration = Duration::from_secs(60);

#[test]
fn embedded_attach_lasts_as_long_as_its_guard() {
    if !privileged("embedded_attach_lasts_as_long_as_its_guard") {
        return;
    }
    let tb = Testbed::create(&unique_name("xg"), 2, 98).expect("testbed");
    let (s, i, c) = (&tb.server_ns, &tb.server_if, &tb.client_ns);
    let to = std::net::SocketAddr::new(tb.server_v4.into(), 4433);
    in_netns(s, || {
        let service = ServiceConfig {
            ports: [4433].into(),
            addrs: Default::default(),
        };
        let guard = attach_embedded(i, &service, AttachMode::Skb).unwrap();
        assert_eq!(xdp_prog_on(s, i), Some(u64::from(guard.prog_id())));
        assert!(
            !std::path::Path::new(pins::PIN_ROOT).join(i).exists(),
            "embedded mode makes no pins"
        );
        // a second attachment is refused while the first lives, naming its holder (us)
        let err = attach_embedded(i, &service, AttachMode::Skb)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("already has xdp-quic's XDP program")
                && err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        let xsks = guard.xsks().unwrap();
        assert_eq!(xsks.capacity(), xdp_quic_ebpf::MAX_QUEUES);
        send_udp(c, to, 4, 100);
        let no_socket = || {
            guard
                .counters()
                .unwrap()
                .get(Counter::Family(Family::V4, FamilyCounter::NoSocket))
        };
        // Counted as the kernel takes them in (softirq), maybe after the sends returned.
        wait_until("4 datagrams passed for want of a socket", GUARD, || {
            no_socket() >= 4
        });
        assert_eq!(no_socket(), 4);
        drop(xsks);
        drop(guard);
        assert_eq!(xdp_prog_on(s, i), None, "dropping the guard detaches");
    })
    .unwrap();
}

/// `xdp-quic attach IF --port 4433 --mode skb`.
fn skb_attach_of_4433() -> xdp_quic_control::xdp::AttachOptions {
    xdp_quic_control::xdp::AttachOptions {
        service: ServiceConfig {
            ports: [4433].into(),
            addrs: Default::default(),
        },
        mode: AttachMode::Skb,
        force: false,
        shield: None,
    }
}

/// Pinned attaches and detaches of two interfaces at once, from several threads (as from
/// several `xdp-quic attach` processes): each sees the pins as the one before left them
/// (the pin lock), so a second attach of the same service finds the first's attachment
/// unchanged instead of failing on it, a second detach finds nothing to detach, and a
/// detach giving the empty pin root back never pulls it from under another interface's
/// attach.
#[test]
fn concurrent_attaches_and_detaches_see_each_other_whole() {
    use std::sync::Barrier;
    use xdp_quic_control::testing::PinGuard;
    use xdp_quic_control::xdp::{attach, detach, AttachOutcome, DetachOutcome, XdpError};

    if !privileged("concurrent_attaches_and_detaches_see_each_other_whole") {
        return;
    }
    let beds = [
        Testbed::create(&unique_name("xl"), 1, 96).expect("testbed"),
        Testbed::create(&unique_name("xm"), 1, 97).expect("testbed"),
    ];
    let _pins: Vec<PinGuard> = beds.iter().map(|b| PinGuard(b.server_if.clone())).collect();
    let opts = skb_attach_of_4433();
    const ROUNDS: usize = 10;
    for round in 0..ROUNDS {
        // Two attaches of each interface, all four at once.
        let start = Barrier::new(4);
        let outcomes: Vec<(usize, anyhow::Result<AttachOutcome>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|t| {
                    let (tb, start, opts) = (&beds[t % 2], &start, &opts);
                    s.spawn(move || {
                        let r = tb.in_server(|| {
                            start.wait();
                            attach(&tb.server_if, opts)
                        });
                        (t % 2, r.expect("entering the namespace"))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (bed, tb) in beds.iter().enumerate() {
            let mine: Vec<&AttachOutcome> = outcomes
                .iter()
                .filter(|(b, _)| *b == bed)
                .map(|(_, r)| {
                    r.as_ref()
                        .unwrap_or_else(|e| panic!("round {round}: attach failed: {e:#}"))
                })
                .collect();
            let attached = mine
                .iter()
                .filter(|o| matches!(o, AttachOutcome::Attached { .. }))
                .count();
            let unchanged = mine
                .iter()
                .filter(|o| matches!(o, AttachOutcome::Unchanged { .. }))
                .count();
            assert_eq!(
                (attached, unchanged),
                (1, 1),
                "round {round}: one attach made it, the other found it: {mine:?}"
            );
            assert!(xdp_prog_on(&tb.server_ns, &tb.server_if).is_some());
        }
        // Two detaches of each interface, all four at once.
        let start = Barrier::new(4);
        let outcomes: Vec<(usize, anyhow::Result<DetachOutcome>)> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..4)
                .map(|t| {
                    let (tb, start) = (&beds[t % 2], &start);
                    s.spawn(move || {
                        let r = tb.in_server(|| {
                            start.wait();
                            detach(&tb.server_if)
                        });
                        (t % 2, r.expect("entering the namespace"))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (bed, tb) in beds.iter().enumerate() {
            let mine: Vec<&anyhow::Result<DetachOutcome>> = outcomes
                .iter()
                .filter(|(b, _)| *b == bed)
                .map(|(_, r)| r)
                .collect();
            let detached = mine
                .iter()
                .filter(|r| matches!(r, Ok(DetachOutcome::Detached { .. })))
                .count();
            let not_attached = mine
                .iter()
                .filter(|r| {
                    matches!(r, Err(e) if matches!(
                        e.downcast_ref::<XdpError>(),
                        Some(XdpError::NotAttached { .. })
                    ))
                })
                .count();
            assert_eq!(
                (detached, not_attached),
                (1, 1),
                "round {round}: one detach did it, the other found nothing: {mine:?}"
            );
            assert_eq!(xdp_prog_on(&tb.server_ns, &tb.server_if), None);
            assert!(!std::path::Path::new(pins::PIN_ROOT)
                .join(&tb.server_if)
                .exists());
        }
    }
}

/// A change to a pinned attachment's shield (`attach --shield`: read the entry, change it,
/// write it back) waits for the pin lock, so a change another process makes under it (a
/// server writing its CID layout) is not written over.
#[test]
fn shield_changes_to_pinned_maps_wait_for_the_pin_lock() {
    use std::os::unix::fs::MetadataExt;
    use xdp_quic_control::testing::PinGuard;
    use xdp_quic_control::xdp::shield::{self, ShieldConfig};
    use xdp_quic_control::xdp::{attach, ShieldMaps};

    if !privileged("shield_changes_to_pinned_maps_wait_for_the_pin_lock") {
        return;
    }
    let tb = Testbed::create(&unique_name("xn"), 1, 95).expect("testbed");
    let _pins = PinGuard(tb.server_if.clone());
    let opts = skb_attach_of_4433();
    tb.in_server(|| attach(&tb.server_if, &opts))
        .unwrap()
        .expect("attach");
    let root_ino = std::fs::metadata(pins::PIN_ROOT).unwrap().ino();
    // Held here, as another attach or a server writing its layout would.
    let lock = pins::PinLock::existing().unwrap().expect("the pin root");
    std::thread::scope(|s| {
        let setter = s.spawn(|| {
            tb.in_server(|| shield::set_pinned(&tb.server_if, Some(&ShieldConfig::default())))
                .unwrap()
        });
        wait_until("attach --shield waits for the pin lock", GUARD, || {
            std::fs::read_to_string("/proc/locks")
                .unwrap()
                .lines()
                .any(|l| l.contains("->") && l.contains(&format!(":{root_ino} ")))
        });
        // Under the lock: a layout, as a server engaging the shield writes it.
        let mut maps = tb
            .in_server(|| ShieldMaps::from_pins(&tb.server_if))
            .unwrap()
            .unwrap();
        let mut e = maps.entry().unwrap();
        e.flags |= xdp_quic_ebpf::SHIELD_CID;
        e.cid_first = 7;
        e.workers = 3;
        maps.set_entry(&e).unwrap();
        drop(lock);
        let before = setter.join().unwrap().expect("set_pinned");
        assert_eq!(before, None, "it was off");
        let after = maps.entry().unwrap();
        assert_eq!(
            maps.config().unwrap(),
            Some(ShieldConfig::default()),
            "the shield is on"
        );
        assert_eq!(
            (after.flags & xdp_quic_ebpf::SHIELD_CID, after.workers),
            (xdp_quic_ebpf::SHIELD_CID, 3),
            "the layout written meanwhile is kept"
        );
    });
}

/// A server that stops takes out of the pinned XSKMAP only the sockets it put there: a queue
/// another server registered since (a rolling restart: the old server's socket closed, the
/// new one bound to the queue and registered, then the old one unregisters) stays steered to
/// the new socket. (Before, the old server's unregister cleared whatever was there.)
#[test]
fn unregistering_leaves_a_queue_another_socket_took_since() {
    use xdp_quic::xsk::socket::{XskConfig, XskSocket};
    use xdp_quic::xsk::umem::{Umem, UmemConfig};
    use xdp_quic_control::testing::PinGuard;
    use xdp_quic_control::xdp::{attach, ProgramMaps, XskRegistry};

    if !privileged("unregistering_leaves_a_queue_another_socket_took_since") {
        return;
    }
    let tb = Testbed::create(&unique_name("xr"), 1, 96).expect("testbed");
    let _pins = PinGuard(tb.server_if.clone());
    tb.in_server(|| attach(&tb.server_if, &skb_attach_of_4433()))
        .unwrap()
        .expect("attach");
    tb.in_server(|| {
        let name = std::ffi::CString::new(tb.server_if.as_str()).unwrap();
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(ifindex, 0);
        let socket = || {
            let umem = Umem::new(UmemConfig::default()).expect("umem");
            XskSocket::open(&XskConfig::new(ifindex, 0), umem, 0).expect("AF_XDP socket")
        };
        let registered = || {
            ProgramMaps::open_pinned(&pins::dir(&tb.server_if))
                .unwrap()
                .registered_queues(1)
                .unwrap()
        };
        let mut old = XskRegistry::open(&tb.server_if).unwrap();
        let first = socket();
        old.register(0, &first.fd()).unwrap();
        assert_eq!(registered(), [0]);
        drop(first);
        let mut new = XskRegistry::open(&tb.server_if).unwrap();
        let second = socket();
        new.register(0, &second.fd()).unwrap();
        old.unregister(0).expect("unregister");
        assert_eq!(registered(), [0], "the new server's socket was taken out");
        new.unregister(0).expect("unregister");
        assert!(registered().is_empty(), "its own socket is taken out");
        drop(second);
    })
    .unwrap();
}

/// A pinned attachment's ports moved to a disjoint set as large as the map can hold with
/// the old set (40 → 40 in a map of 64): updated to exactly the new set. (Before, new entries
/// went in before old ones went out: the map overflowed after 24, the command failed, and 64
/// ports were left steered.)
#[test]
fn ports_move_to_a_disjoint_set_that_does_not_fit_beside_the_old() {
    use xdp_quic_control::testing::PinGuard;
    use xdp_quic_control::xdp::{attach, AttachOptions, AttachOutcome, ProgramMaps};

    if !privileged("ports_move_to_a_disjoint_set_that_does_not_fit_beside_the_old") {
        return;
    }
    let tb = Testbed::create(&unique_name("xu"), 1, 97).expect("testbed");
    let _pins = PinGuard(tb.server_if.clone());
    let opts = |ports: std::ops::Range<u16>| AttachOptions {
        service: ServiceConfig {
            ports: ports.collect(),
            addrs: Default::default(),
        },
        mode: AttachMode::Skb,
        force: false,
        shield: None,
    };
    tb.in_server(|| attach(&tb.server_if, &opts(1..41)))
        .unwrap()
        .expect("attach");
    let got = tb
        .in_server(|| attach(&tb.server_if, &opts(41..81)))
        .unwrap()
        .expect("the update");
    assert!(matches!(got, AttachOutcome::Updated { .. }), "{got:?}");
    let steered = ProgramMaps::open_pinned(&pins::dir(&tb.server_if))
        .unwrap()
        .read_service()
        .unwrap();
    assert_eq!(steered.ports, (41..81).collect());
}

/// A queue another AF_XDP socket holds: a bind that tries zero-copy first and falls back to
/// copy mode (`BindMode::Auto`) reports the held queue from its zero-copy try, where it
/// waited for the queue, instead of waiting as long again in copy mode.
#[test]
fn a_held_queue_is_reported_without_a_second_wait_in_copy_mode() {
    use xdp_quic::xsk::socket::{BindMode, XskConfig, XskSocket};
    use xdp_quic::xsk::umem::{Umem, UmemConfig};

    if !privileged("a_held_queue_is_reported_without_a_second_wait_in_copy_mode") {
        return;
    }
    let tb = Testbed::create(&unique_name("xb"), 1, 94).expect("testbed");
    tb.in_server(|| {
        let name = std::ffi::CString::new(tb.server_if.as_str()).unwrap();
        // SAFETY: a valid NUL-terminated name.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
        assert_ne!(ifindex, 0);
        let cfg = XskConfig::new(ifindex, 0);
        assert_eq!(cfg.mode, BindMode::Auto);
        let socket = || XskSocket::open(&cfg, Umem::new(UmemConfig::default()).expect("umem"), 0);
        let first = socket().expect("the first socket of the queue");
        let err = socket().err().expect("the queue is held");
        assert_eq!(err.kind(), std::io::ErrorKind::ResourceBusy, "{err}");
        let text = err.to_string();
        assert!(
            text.contains("zero-copy mode") && text.contains("holds this queue"),
            "{text}"
        );
        drop(first);
        socket().expect("the queue is free again");
    })
    .unwrap();
}

/// Pins are named by interface, and a renamed interface keeps its program: a server given
/// the old name refuses the pins, which steer another interface now, and takes them again
/// once the name is back.
#[test]
fn a_server_refuses_pins_whose_interface_was_renamed() {
    use xdp_quic_control::testing::PinGuard;
    use xdp_quic_control::xdp::{attach, socket_map::ServerSteering};

    if !privileged("a_server_refuses_pins_whose_interface_was_renamed") {
        return;
    }
    let tb = Testbed::create(&unique_name("xn"), 1, 95).expect("testbed");
    let _pins = PinGuard(tb.server_if.clone());
    tb.in_server(|| attach(&tb.server_if, &skb_attach_of_4433()))
        .unwrap()
        .expect("attach");
    let renamed = unique_name("xn");
    let rename = |from: &str, to: &str| {
        for args in [
            vec!["link", "set", "dev", from, "down"],
            vec!["link", "set", "dev", from, "name", to],
        ] {
            let st = std::process::Command::new("ip")
                .args(["-n", &tb.server_ns])
                .args(&args)
                .status()
                .expect("running ip");
            assert!(st.success(), "ip {args:?}");
        }
    };
    let listen: std::net::SocketAddr = (tb.server_v4, 4433).into();
    let steering = || {
        tb.in_server(|| {
            ServerSteering::for_server(&tb.server_if, listen, AttachMode::Skb).map(|_| ())
        })
        .unwrap()
    };
    rename(&tb.server_if, &renamed);
    let err = steering().expect_err("the pins steer the renamed interface");
    assert!(
        format!("{err:#}").contains("attached to another interface"),
        "{err:#}"
    );
    rename(&renamed, &tb.server_if);
    steering().expect("the pins of the interface under its own name");
}

/// `serve --xdp-mode native` over an attachment pinned in skb mode is refused, naming both
/// modes; before, the mode asked for was ignored over pins. The mode it runs in, or none
/// asked, is taken.
#[test]
fn a_server_refuses_pins_of_another_xdp_mode() {
    use xdp_quic_control::testing::PinGuard;
    use xdp_quic_control::xdp::{attach, socket_map::ServerSteering};

    if !privileged("a_server_refuses_pins_of_another_xdp_mode") {
        return;
    }
    let tb = Testbed::create(&unique_name("xm"), 1, 92).expect("testbed");
    let _pins = PinGuard(tb.server_if.clone());
    tb.in_server(|| attach(&tb.server_if, &skb_attach_of_4433()))
        .unwrap()
        .expect("attach");
    let listen: std::net::SocketAddr = (tb.server_v4, 4433).into();
    let steering = |mode| {
        tb.in_server(|| ServerSteering::for_server(&tb.server_if, listen, mode).map(|_| ()))
            .unwrap()
    };
    let err = format!("{:#}", steering(AttachMode::Native).unwrap_err());
    assert!(err.contains("runs in skb mode, not native"), "{err}");
    steering(AttachMode::Skb).expect("the mode it runs in");
    steering(AttachMode::Auto).expect("no mode asked");
}

/// `detach` removes pins another xdp-quic version left in the directory (a map this version
/// does not have): before, only this version's were unlinked, the directory stayed, and
/// every later `attach` failed on it until someone removed it by hand.
#[test]
fn detach_removes_pins_of_another_version_too() {
    use xdp_quic_control::testing::PinGuard;
    use xdp_quic_control::xdp::{attach, detach};

    if !privileged("detach_removes_pins_of_another_version_too") {
        return;
    }
    let tb = Testbed::create(&unique_name("xv"), 1, 93).expect("testbed");
    let _pins = PinGuard(tb.server_if.clone());
    tb.in_server(|| attach(&tb.server_if, &skb_attach_of_4433()))
        .unwrap()
        .expect("attach");
    let dir = std::path::Path::new(pins::PIN_ROOT).join(&tb.server_if);
    // A map pinned under a name this version does not know, as another version would.
    let ports = aya::maps::MapData::from_pin(dir.join(xdp_quic_ebpf::maps::PORTS)).unwrap();
    ports.pin(dir.join("a_map_of_another_version")).unwrap();
    drop(ports);
    tb.in_server(|| detach(&tb.server_if))
        .unwrap()
        .expect("detach");
    assert!(!dir.exists(), "the directory is gone");
    assert_eq!(xdp_prog_on(&tb.server_ns, &tb.server_if), None, "detached");
    tb.in_server(|| attach(&tb.server_if, &skb_attach_of_4433()))
        .unwrap()
        .expect("attach again");
    tb.in_server(|| detach(&tb.server_if))
        .unwrap()
        .expect("detach");
}

/// Run by `an_interrupted_test_run_removes_its_testbeds_and_pins`, in a process of its own:
/// makes a testbed with a pinned attachment, says so, and waits to be killed.
#[test]
#[ignore = "a child process of an_interrupted_test_run_removes_its_testbeds_and_pins"]
fn child_that_makes_a_pinned_testbed_and_waits() {
    use xdp_quic_control::xdp::attach;
    if std::env::var_os("XQ_SIGNAL_CHILD").is_none() {
        return;
    }
    let tb = Testbed::create(&unique_name("xg"), 1, 98).expect("testbed");
    tb.in_server(|| attach(&tb.server_if, &skb_attach_of_4433()))
        .unwrap()
        .expect("attach");
    println!("ready {} {}", tb.server_ns, tb.server_if);
    loop {
        std::thread::park();
    }
}

/// A test run killed by a signal (Ctrl-C, a timeout) removes the namespaces and the bpffs
/// pins its tests made, which their drop guards never get to. (Before, they leaked.)
#[test]
fn an_interrupted_test_run_removes_its_testbeds_and_pins() {
    use std::io::BufRead;
    if !privileged("an_interrupted_test_run_removes_its_testbeds_and_pins") {
        return;
    }
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "child_that_makes_a_pinned_testbed_and_waits",
            "--nocapture",
        ])
        .env("XQ_SIGNAL_CHILD", "1")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Killed on the way out whatever happens here (the signal cleans up after it).
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: kill(2) takes no pointers.
            unsafe { libc::kill(self.0 as i32, libc::SIGTERM) };
        }
    }
    let _kill = Kill(child.id());
    let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let ready = loop {
        let line = lines
            .next()
            .expect("the child ended before it was ready")
            .unwrap();
        if let Some(rest) = line.strip_prefix("ready ") {
            break rest.to_string();
        }
    };
    let (ns, iface) = ready.split_once(' ').unwrap();
    let netns_exists = |ns: &str| std::path::Path::new("/run/netns").join(ns).exists();
    let pins = std::path::Path::new(pins::PIN_ROOT).join(iface);
    assert!(netns_exists(ns) && pins.exists(), "the child made them");
    // SAFETY: kill(2) takes no pointers.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + libc::SIGTERM), "{status}");
    assert!(!netns_exists(ns), "{ns} is left");
    assert!(!pins.exists(), "{} is left", pins.display());
}

/// `attach` sets the shield with the attachment, under the pin lock: on a new attachment
/// before the program runs, on a live one beside the service; a shield that cannot be set
/// changes nothing. (Before, `xdp-quic attach --shield` set it after the lock was released,
/// and undid a failure with a detach of whatever was attached by then.)
#[test]
fn the_shield_is_set_with_the_attachment_under_its_lock() {
    use std::os::unix::fs::MetadataExt;
    use xdp_quic_control::testing::PinGuard;
    use xdp_quic_control::xdp::shield::Rate;
    use xdp_quic_control::xdp::{
        attach, AttachOptions, AttachOutcome, ProgramMaps, ShieldConfig, ShieldMaps,
    };

    if !privileged("the_shield_is_set_with_the_attachment_under_its_lock") {
        return;
    }
    let tb = Testbed::create(&unique_name("xh"), 1, 94).expect("testbed");
    let _pins = PinGuard(tb.server_if.clone());
    let opts = |ports: std::ops::Range<u16>, shield: Option<Option<ShieldConfig>>| AttachOptions {
        service: ServiceConfig {
            ports: ports.collect(),
            addrs: Default::default(),
        },
        mode: AttachMode::Skb,
        force: false,
        shield,
    };
    let slow = ShieldConfig {
        initial: Rate {
            per_sec: 10,
            burst: 10,
        },
        ..ShieldConfig::default()
    };
    let maps = || {
        tb.in_server(|| ShieldMaps::from_pins(&tb.server_if))
            .unwrap()
            .expect("the pinned shield")
    };
    let ports = || {
        ProgramMaps::open_pinned(&pins::dir(&tb.server_if))
            .unwrap()
            .read_service()
            .unwrap()
            .ports
    };

    // A new attachment: on from the start.
    let got = tb
        .in_server(|| attach(&tb.server_if, &opts(4433..4434, Some(Some(slow.clone())))))
        .unwrap()
        .expect("attach");
    assert!(matches!(got, AttachOutcome::Attached { .. }), "{got:?}");
    assert_eq!(maps().config().unwrap(), Some(slow.clone()));

    // A shield the program cannot hold: refused before anything is written, the service
    // not changed either.
    let bad = ShieldConfig {
        versions: vec![],
        ..ShieldConfig::default()
    };
    let err = tb
        .in_server(|| attach(&tb.server_if, &opts(5000..5001, Some(Some(bad)))))
        .unwrap()
        .unwrap_err();
    assert!(format!("{err:#}").contains("versions"), "{err:#}");
    assert_eq!(ports(), [4433].into(), "the service is as it was");
    assert_eq!(
        maps().config().unwrap(),
        Some(slow.clone()),
        "so is the shield"
    );

    // The same service, the shield off: the service unchanged, the shield before reported.
    let got = tb
        .in_server(|| attach(&tb.server_if, &opts(4433..4434, Some(None))))
        .unwrap()
        .expect("attach --no-shield");
    assert!(
        matches!(&got, AttachOutcome::Unchanged { shield_before: Some(c), .. } if *c == slow),
        "{got:?}"
    );
    assert_eq!(maps().config().unwrap(), None);

    // An update waits for the lock, and keeps what was written under it meanwhile (a
    // server's CID layout).
    let root_ino = std::fs::metadata(pins::PIN_ROOT).unwrap().ino();
    let lock = pins::PinLock::existing().unwrap().expect("the pin root");
    std::thread::scope(|s| {
        let attacher = s.spawn(|| {
            tb.in_server(|| {
                attach(
                    &tb.server_if,
                    &opts(4433..4435, Some(Some(ShieldConfig::default()))),
                )
            })
            .unwrap()
        });
        wait_until("attach waits for the pin lock", GUARD, || {
            std::fs::read_to_string("/proc/locks")
                .unwrap()
                .lines()
                .any(|l| l.contains("->") && l.contains(&format!(":{root_ino} ")))
        });
        let mut m = maps();
        let mut e = m.entry().unwrap();
        e.flags |= xdp_quic_ebpf::SHIELD_CID;
        e.cid_first = 7;
        e.workers = 3;
        m.set_entry(&e).unwrap();
        assert_eq!(
            ports(),
            [4433].into(),
            "nothing changed while the lock is held"
        );
        drop(lock);
        let got = attacher.join().unwrap().expect("the update");
        assert!(
            matches!(
                &got,
                AttachOutcome::Updated {
                    shield_before: None,
                    ..
                }
            ),
            "{got:?}"
        );
    });
    assert_eq!(ports(), [4433, 4434].into());
    let m = maps();
    assert_eq!(m.config().unwrap(), Some(ShieldConfig::default()));
    let e = m.entry().unwrap();
    assert_eq!(
        (e.flags & xdp_quic_ebpf::SHIELD_CID, e.cid_first, e.workers),
        (xdp_quic_ebpf::SHIELD_CID, 7, 3),
        "the layout written meanwhile is kept"
    );
}

/// Two commands that find no bpffs at once mount it once: the second waits for the first's
/// lock on the mount point, then sees its mount. (Before, both mounted, the second over the
/// first, hiding what the first pinned.) In a mount namespace of the test's own, without
/// bpffs; the test holds the lock as a command between its look and its mount would.
#[test]
fn commands_that_find_no_bpffs_at_once_mount_it_once() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;

    if !privileged("commands_that_find_no_bpffs_at_once_mount_it_once") {
        return;
    }
    let bpf_mounts = || {
        std::fs::read_to_string("/proc/thread-self/mountinfo")
            .unwrap()
            .lines()
            .filter(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                f.get(4) == Some(&pins::BPFFS) && l.contains(" - bpf ")
            })
            .count()
    };
    // The namespace is this thread's (and its children's), gone when they end.
    std::thread::spawn(move || {
        // SAFETY: plain syscalls on NUL-terminated constant strings; this thread has its
        // own file-system context after the unshare.
        unsafe {
            assert_eq!(libc::unshare(libc::CLONE_NEWNS), 0, "unshare");
            assert_eq!(
                libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ),
                0,
                "making the namespace's mounts private"
            );
            while bpf_mounts() > 0 {
                assert_eq!(
                    libc::umount2(c"/sys/fs/bpf".as_ptr(), libc::MNT_DETACH),
                    0,
                    "unmounting bpffs in the test's namespace"
                );
            }
        }
        let dir = std::fs::File::open(pins::BPFFS).expect("the mount point");
        let ino = dir.metadata().unwrap().ino();
        // SAFETY: flock on a descriptor `dir` owns, open for the whole call.
        assert_eq!(unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) }, 0);
        let other = std::thread::spawn(pins::ensure_bpffs);
        wait_until("the other command waits for the lock", GUARD, || {
            std::fs::read_to_string("/proc/locks")
                .unwrap()
                .lines()
                .any(|l| l.contains("->") && l.contains(&format!(":{ino} ")))
        });
        assert_eq!(bpf_mounts(), 0, "nothing mounted while the lock is held");
        // The first command's mount.
        // SAFETY: as above.
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c"/sys/fs/bpf".as_ptr(),
                c"bpf".as_ptr(),
                0,
                c"mode=0700".as_ptr().cast(),
            )
        };
        assert_eq!(rc, 0, "mounting bpffs");
        drop(dir);
        let mounted = other.join().unwrap().expect("ensure_bpffs");
        assert!(!mounted, "the second command finds bpffs mounted");
        assert_eq!(bpf_mounts(), 1, "bpffs is mounted once");
    })
    .join()
    .unwrap();
}
