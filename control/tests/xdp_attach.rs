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
