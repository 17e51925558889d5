//! `xdp_quic_control::serve::Server` as a daemon embeds it: its events in order, the
//! metrics endpoint, stopping on request; over AF_XDP in a testbed (root; in CI a missing
//! privilege fails instead of skipping), the interface going down and up, and the program
//! detached from under it, with and without the fallback to kernel UDP.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::echo_through;
use xdp_quic::{tls, Conn, EngineBuilder, Handler, XdpSetup};
use xdp_quic_control::serve::{
    Backend, Event, Fallback, ServeOptions, Server, Serving, StopReason,
};
use xdp_quic_control::testbed::{in_netns, Testbed};
use xdp_quic_control::testing::{privileged, sh, unique_name, PinGuard};
use xdp_quic_control::xdp::{self, AttachMode, AttachOptions, ServiceConfig, WatchEvent};
use xdp_quic_examples::echo::{self, EchoServer};

/// A hang guard for each event, never a performance bound.
const GUARD: Duration = Duration::from_secs(60);

type Cert = rustls::pki_types::CertificateDer<'static>;

/// An echo server of `builder` over kernel UDP on loopback, with `options`.
fn start_udp(builder: EngineBuilder, options: ServeOptions) -> anyhow::Result<Server<EchoServer>> {
    Server::start(
        builder,
        Backend::Udp("127.0.0.1:0".parse().unwrap()),
        options,
        |_| EchoServer::default(),
    )
}

/// An echo server's builder (`workers` workers) and its certificate.
fn echo_builder(workers: usize) -> (EngineBuilder, Vec<Cert>) {
    let id = tls::Identity::self_signed(&["localhost"]).unwrap();
    let cert = id.chain.clone();
    let builder = EngineBuilder::default()
        .workers(workers)
        .server(tls::server_config(id, &[echo::ALPN]).unwrap())
        .drain_timeout(Duration::from_millis(500));
    (builder, cert)
}

/// The next event (the test fails if none comes within [`GUARD`]).
fn next<H: Handler>(server: &Server<H>) -> Event {
    server
        .events()
        .recv_timeout(GUARD)
        .unwrap_or_else(|e| panic!("no event within {GUARD:?}: {e}"))
}

/// Asserts that the events have ended (the server has).
fn no_more_events<H: Handler>(server: &Server<H>) {
    match server.events().recv_timeout(GUARD) {
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {}
        other => panic!("the server should have ended: {other:?}"),
    }
}

/// Expects `Stopping` for `reason` with `queues` AF_XDP queues, then `Stopped` with the
/// counters of `workers` workers; returns the connections they accepted.
fn stops<H: Handler>(
    server: &Server<H>,
    reason: &StopReason,
    queues: usize,
    workers: usize,
) -> u64 {
    match next(server) {
        Event::Stopping {
            reason: r,
            queues: q,
        } => {
            assert_eq!(&r, reason);
            assert_eq!(q.len(), queues, "{q:?}");
        }
        other => panic!("expected Stopping, got {other:?}"),
    }
    match next(server) {
        Event::Stopped { counters } => {
            assert_eq!(counters.len(), workers);
            counters.iter().map(|c| c.conns_accepted).sum()
        }
        other => panic!("expected Stopped, got {other:?}"),
    }
}

#[test]
fn udp_server_reports_its_events_and_stops_on_request() {
    let (builder, cert) = echo_builder(2);
    let options = ServeOptions {
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        ..ServeOptions::default()
    };
    let server = start_udp(builder, options).unwrap();
    let addr = match next(&server) {
        Event::Serving(Serving::Udp {
            local_addr,
            workers,
            ..
        }) => {
            assert_eq!(workers, 2);
            assert_ne!(local_addr.port(), 0);
            local_addr
        }
        other => panic!("expected Serving over UDP, got {other:?}"),
    };
    let metrics = match next(&server) {
        Event::Metrics(a) => a,
        other => panic!("expected Metrics, got {other:?}"),
    };
    echo_through(addr, &cert, 3, 10_000);
    let body = ureq::get(&format!("http://{metrics}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    assert!(
        body.contains("xdpquic_worker_rx_packets_total{worker=\"1\""),
        "{body}"
    );
    assert_eq!(server.handle().unwrap().workers(), 2);

    server.stopper().stop();
    assert_eq!(stops(&server, &StopReason::Requested, 0, 2), 1);
    no_more_events(&server);
    assert!(server.handle().is_none());
    assert_eq!(server.join().unwrap(), StopReason::Requested);
    // The endpoint went with the engine.
    assert!(std::net::TcpStream::connect(metrics).is_err());
}

/// A handler whose every connection panics its callback.
struct PanicsOnConnect;

impl Handler for PanicsOnConnect {
    fn connected(&mut self, _: &mut Conn<'_>) {
        panic!("a bug in the application");
    }
}

/// A UDP server of one worker whose callback panics on a connection, after a quinn client's
/// connection was closed by it with INTERNAL_ERROR.
fn serve_a_panicking_callback(keep_serving: bool) -> Server<PanicsOnConnect> {
    let (builder, cert) = echo_builder(1);
    let options = ServeOptions {
        watch_every: xdp_quic_control::serve::MIN_WATCH_EVERY,
        keep_serving_after_handler_panic: keep_serving,
        ..ServeOptions::default()
    };
    let server = Server::start(
        builder,
        Backend::Udp("127.0.0.1:0".parse().unwrap()),
        options,
        |_| PanicsOnConnect,
    )
    .unwrap();
    let addr = match next(&server) {
        Event::Serving(Serving::Udp { local_addr, .. }) => local_addr,
        other => panic!("expected Serving over UDP, got {other:?}"),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let closed = rt.block_on(async {
        let ep = support::quinn_endpoint(&cert, false);
        let conn = ep.connect(addr, "localhost").unwrap().await.unwrap();
        tokio::time::timeout(GUARD, conn.closed()).await
    });
    assert!(
        matches!(
            closed,
            Ok(quinn::ConnectionError::ApplicationClosed(ref c))
                if c.error_code == xdp_quic::INTERNAL_ERROR
        ),
        "{closed:?}"
    );
    server
}

/// An application callback that panics ends its worker (its connections closed with
/// INTERNAL_ERROR). The server then stops, naming the worker, as for a failed one: the
/// packets steered to an ended worker would go unanswered for as long as it ran.
#[test]
fn a_panicking_callback_stops_the_server() {
    let server = serve_a_panicking_callback(false);
    let why = "an application callback panicked (the worker closed its connections and ends)";
    stops(
        &server,
        &StopReason::WorkersFailed(vec![(0, why.into())]),
        0,
        1,
    );
    no_more_events(&server);
    assert!(matches!(
        server.join().unwrap(),
        StopReason::WorkersFailed(f) if f.len() == 1
    ));
}

/// Under `keep_serving_after_handler_panic`, a callback that panics ends its worker (its
/// connections closed with INTERNAL_ERROR), the server says so once, and serves on: it
/// stops only when asked.
#[test]
fn a_server_told_to_keep_serving_reports_a_callback_panic_and_serves_on() {
    let server = serve_a_panicking_callback(true);
    match next(&server) {
        Event::HandlerPanicked { worker } => assert_eq!(worker, 0),
        other => panic!("expected HandlerPanicked, got {other:?}"),
    }
    // Reported in the look that would have stopped it: what stops it now is the request.
    server.stop();
    stops(&server, &StopReason::Requested, 0, 1);
    no_more_events(&server);
    assert_eq!(server.join().unwrap(), StopReason::Requested);
}

/// A metrics port already in use fails the server before it serves anything: the port is
/// bound before the engine starts, so no `Serving` is reported for a server that then ends.
/// A watch period under the minimum is refused at once.
#[test]
fn a_metrics_port_in_use_fails_the_server_before_it_serves() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (builder, _) = echo_builder(1);
    let options = ServeOptions {
        metrics: Some(taken.local_addr().unwrap()),
        ..ServeOptions::default()
    };
    let server = start_udp(builder.clone(), options).unwrap();
    no_more_events(&server);
    let err = format!("{:#}", server.join().unwrap_err());
    assert!(err.contains("cannot serve metrics on"), "{err}");

    let options = ServeOptions {
        watch_every: Duration::ZERO,
        ..ServeOptions::default()
    };
    let refused = start_udp(builder, options);
    let err = format!(
        "{:#}",
        refused.err().expect("a zero watch period is refused")
    );
    assert!(err.contains("watch_every"), "{err}");
}

/// Metrics limits the endpoint cannot serve with are refused at the start, before anything
/// serves (before, only once the engine had started and said it was serving).
#[test]
fn metrics_limits_of_zero_are_refused_at_the_start() {
    let (builder, _) = echo_builder(1);
    let options = ServeOptions {
        metrics: Some("127.0.0.1:0".parse().unwrap()),
        metrics_limits: xdp_quic_control::metrics::MetricsLimits {
            max_connections: 0,
            ..Default::default()
        },
        ..ServeOptions::default()
    };
    let refused = start_udp(builder, options);
    let err = format!("{:#}", refused.err().expect("refused"));
    assert!(err.contains("metrics_limits"), "{err}");
}

/// Shield options whose CIDs are not the engine's are refused at the start (the shield would
/// drop every short header of the engine's connections).
#[test]
fn shield_options_with_other_cids_than_the_engines_are_refused() {
    let (builder, _) = echo_builder(1);
    let options = ServeOptions {
        shield: Some(xdp_quic_control::serve::ShieldOptions {
            cid_len: 12,
            ..Default::default()
        }),
        ..ServeOptions::default()
    };
    let refused = start_udp(builder, options);
    let err = format!("{:#}", refused.err().expect("refused"));
    assert!(err.contains("differ from the engine's"), "{err}");
}

/// AF_XDP that cannot start (no such interface): without fallback the server ends at once
/// with the error; with it, the error is an event, then UDP serves on the same address.
/// In a namespace of its own: the fallback binds the fixed port it was given, which no
/// parallel test can take there.
#[test]
fn af_xdp_that_cannot_start_fails_or_falls_back() {
    if !privileged("af_xdp_that_cannot_start_fails_or_falls_back") {
        return;
    }
    let tb = Testbed::create(&unique_name("xf"), 1, 233).expect("testbed");
    tb.in_server(|| {
        let listen: SocketAddr = "127.0.0.1:4433".parse().unwrap();
        let setup = XdpSetup::new("xq-nosuch0", listen, vec![0]);
        let xdp = |fallback| Backend::Xdp {
            setup: setup.clone(),
            mode: AttachMode::Auto,
            fallback,
        };
        let (builder, _) = echo_builder(1);
        let refused = Server::start(
            builder,
            xdp(Fallback::Never),
            ServeOptions::default(),
            |_| EchoServer::default(),
        )
        .unwrap();
        no_more_events(&refused);
        let why = format!("{:#}", refused.join().expect_err("AF_XDP cannot start"));

        let (builder, cert) = echo_builder(1);
        let server = Server::start(
            builder,
            xdp(Fallback::ToUdp),
            ServeOptions::default(),
            |_| EchoServer::default(),
        )
        .unwrap();
        match next(&server) {
            Event::XdpUnavailable(e) => assert_eq!(format!("{e:#}"), why),
            other => panic!("expected XdpUnavailable, got {other:?}"),
        }
        let addr = match next(&server) {
            Event::Serving(Serving::Udp { local_addr, .. }) => local_addr,
            other => panic!("expected Serving over UDP, got {other:?}"),
        };
        assert_eq!(addr, listen);
        echo_through(addr, &cert, 1, 1000);
        drop(server); // stops it and waits

        // A set-up the engine refuses is the caller's error, with fallback too: no UDP.
        let mut bad = setup.clone();
        bad.umem.frames = 1000;
        let (builder, _) = echo_builder(1);
        let refused = Server::start(
            builder,
            Backend::Xdp {
                setup: bad,
                mode: AttachMode::Auto,
                fallback: Fallback::ToUdp,
            },
            ServeOptions::default(),
            |_| EchoServer::default(),
        )
        .unwrap();
        no_more_events(&refused);
        let why = format!("{:#}", refused.join().expect_err("a refused set-up"));
        assert!(why.contains("UMEM frames 1000"), "{why}");
    })
    .unwrap();
}

/// A testbed whose server interface has xdp-quic attached and pinned (`xdp-quic attach`),
/// removed on drop; and an echo server over AF_XDP on it, with `fallback`.
fn pinned_testbed(name: &str, net: u8) -> (Testbed, PinGuard) {
    let tb = Testbed::create(&unique_name(name), 1, net).expect("testbed");
    let pins = PinGuard(tb.server_if.clone());
    let opts = AttachOptions {
        service: ServiceConfig {
            ports: [4433].into(),
            addrs: Default::default(),
        },
        mode: AttachMode::Auto,
        force: false,
        shield: None,
    };
    tb.in_server(|| xdp::attach(&tb.server_if, &opts))
        .unwrap()
        .expect("attach");
    (tb, pins)
}

/// Pins are named by interface alone, so another namespace's interface of the same name
/// (each container's eth0) finds an attachment that is not its own: a server there attaches
/// the program to its interface for its life, serves, and takes it away at its end; the
/// pinned attachment of the other namespace is untouched. Before, the server was refused
/// ("serve there, or detach it first": a detach from there would have taken the other
/// namespace's server's program).
#[test]
fn pins_of_another_namespace_leave_a_server_its_own_attachment() {
    if !privileged("pins_of_another_namespace_leave_a_server_its_own_attachment") {
        return;
    }
    let (pinned, _pins) = pinned_testbed("xn", 238);
    let tb = Testbed::create(&unique_name("xm"), 1, 239).expect("testbed");
    let name = pinned.server_if.as_str();
    for args in [
        &["link", "set", "dev", &tb.server_if, "down"][..],
        &["link", "set", "dev", &tb.server_if, "name", name],
        &["link", "set", "dev", name, "up"],
    ] {
        let mut cmd = vec!["ip", "-n", &tb.server_ns];
        cmd.extend_from_slice(args);
        sh(&cmd);
    }
    let (builder, cert) = echo_builder(1);
    let backend = Backend::Xdp {
        setup: XdpSetup::new(name, "0.0.0.0:4433".parse().unwrap(), vec![0]),
        mode: AttachMode::Auto,
        fallback: Fallback::Never,
    };
    let server = start_echo_in(&tb, builder, backend);
    match next(&server) {
        Event::Serving(Serving::Xdp { iface, program, .. }) => {
            assert_eq!(iface, name);
            assert!(program.starts_with("attached by this process"), "{program}");
        }
        other => panic!("expected Serving over AF_XDP, got {other:?}"),
    }
    let addr = SocketAddr::new(tb.server_v4.into(), 4433);
    tb.in_client(|| echo_through(addr, &cert, 1, 1000)).unwrap();
    server.stop();
    assert_eq!(server.join().unwrap(), StopReason::Requested);
    let program_on = |ns: &str| {
        let out = std::process::Command::new("ip")
            .args(["-n", ns, "-d", "link", "show", "dev", name])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).contains("prog/xdp")
    };
    assert!(
        !program_on(&tb.server_ns),
        "the server's program went with it"
    );
    assert!(program_on(&pinned.server_ns), "the pinned attachment stays");
    assert!(
        xdp::pins::dir(name)
            .join(xdp_quic_ebpf::maps::XSKS)
            .exists(),
        "its pins stay"
    );
    // Nor are its shield maps this namespace's to read or change.
    let (maps, pinned_shield) = tb
        .in_server(|| {
            (
                xdp::ShieldMaps::from_pins(name).map(|_| ()),
                xdp::shield::pinned(name).ok(),
            )
        })
        .unwrap();
    let refused = format!("{:#}", maps.expect_err("another namespace's shield maps"));
    assert!(refused.contains("another network namespace"), "{refused}");
    assert_eq!(pinned_shield, Some(None));
}

/// An echo server per `builder` and `backend`, started in `tb`'s server namespace.
fn start_echo_in(tb: &Testbed, builder: EngineBuilder, backend: Backend) -> Server<EchoServer> {
    tb.in_server(|| {
        Server::start(builder, backend, ServeOptions::default(), |_| {
            EchoServer::default()
        })
    })
    .unwrap()
    .expect("serving over AF_XDP")
}

fn serve_in(tb: &Testbed, fallback: Fallback) -> (Server<EchoServer>, Vec<Cert>) {
    let (builder, cert) = echo_builder(1);
    let setup = XdpSetup::new(&tb.server_if, "0.0.0.0:4433".parse().unwrap(), vec![0]);
    let backend = Backend::Xdp {
        setup,
        mode: AttachMode::Auto,
        fallback,
    };
    let server = start_echo_in(tb, builder, backend);
    match next(&server) {
        Event::Serving(Serving::Xdp {
            iface,
            queues,
            program,
            ..
        }) => {
            assert_eq!(iface, tb.server_if);
            assert_eq!(queues, vec![0]);
            assert_eq!(program, "pinned by xdp-quic attach");
        }
        other => panic!("expected Serving over AF_XDP, got {other:?}"),
    }
    (server, cert)
}

fn detach(tb: &Testbed) {
    tb.in_server(|| xdp::detach(&tb.server_if))
        .unwrap()
        .expect("detach");
}

#[test]
fn losing_the_program_falls_back_to_udp() {
    if !privileged("losing_the_program_falls_back_to_udp") {
        return;
    }
    let (tb, _pins) = pinned_testbed("xv", 226);
    let (server, cert) = serve_in(&tb, Fallback::ToUdp);
    let addr = SocketAddr::new(tb.server_v4.into(), 4433);
    tb.in_client(|| echo_through(addr, &cert, 2, 50_000))
        .unwrap();

    // Down and up: reported, nothing stops.
    for (state, change) in [("down", WatchEvent::Down), ("up", WatchEvent::Up)] {
        sh(&[
            "ip",
            "-n",
            &tb.server_ns,
            "link",
            "set",
            &tb.server_if,
            state,
        ]);
        match next(&server) {
            Event::Link { iface, change: c } => {
                assert_eq!((iface.as_str(), c), (tb.server_if.as_str(), change))
            }
            other => panic!("expected Link {state}, got {other:?}"),
        }
    }

    detach(&tb);
    let lost = StopReason::ProgramLost {
        iface: tb.server_if.clone(),
        why: WatchEvent::Detached { now: None },
    };
    assert_eq!(stops(&server, &lost, 1, 1), 1);
    match next(&server) {
        Event::FallingBack { listen } => assert_eq!(listen, "0.0.0.0:4433".parse().unwrap()),
        other => panic!("expected FallingBack, got {other:?}"),
    }
    match next(&server) {
        Event::Serving(Serving::Udp { local_addr, .. }) => {
            assert_eq!(local_addr, "0.0.0.0:4433".parse().unwrap())
        }
        other => panic!("expected Serving over UDP, got {other:?}"),
    }
    tb.in_client(|| echo_through(addr, &cert, 2, 50_000))
        .unwrap();
    server.stop();
    assert_eq!(stops(&server, &StopReason::Requested, 0, 1), 1);
    no_more_events(&server);
    assert_eq!(server.join().unwrap(), StopReason::Requested);
}

#[test]
fn losing_the_program_without_fallback_ends_the_server() {
    if !privileged("losing_the_program_without_fallback_ends_the_server") {
        return;
    }
    let (tb, _pins) = pinned_testbed("xw", 227);
    let (server, cert) = serve_in(&tb, Fallback::Never);
    let addr = SocketAddr::new(tb.server_v4.into(), 4433);
    tb.in_client(|| echo_through(addr, &cert, 1, 1000)).unwrap();
    detach(&tb);
    let lost = StopReason::ProgramLost {
        iface: tb.server_if.clone(),
        why: WatchEvent::Detached { now: None },
    };
    assert_eq!(stops(&server, &lost, 1, 1), 1);
    no_more_events(&server);
    assert_eq!(server.join().unwrap(), lost);
    // Nothing serves the port any more: the server's sockets and workers are gone.
    in_netns(&tb.server_ns, || {
        std::net::UdpSocket::bind("0.0.0.0:4433").expect("the port is free again");
    })
    .unwrap();
}

/// `attach` that would steer less than before (a port dropped, addresses narrowed) while a
/// server's AF_XDP sockets are registered is refused: the program stays the same, so the
/// server would go deaf without noticing. Adding a port is fine; `--force` goes ahead; once
/// the server has stopped, the update is made.
#[test]
fn an_update_that_would_cut_a_running_servers_traffic_is_refused() {
    if !privileged("an_update_that_would_cut_a_running_servers_traffic_is_refused") {
        return;
    }
    let (tb, _pins) = pinned_testbed("xy", 234);
    let (server, cert) = serve_in(&tb, Fallback::Never);
    let addr = SocketAddr::new(tb.server_v4.into(), 4433);
    let update = |ports: &[u16], force: bool| {
        let opts = AttachOptions {
            service: ServiceConfig {
                ports: ports.iter().copied().collect(),
                addrs: Default::default(),
            },
            mode: AttachMode::Auto,
            force,
            shield: None,
        };
        tb.in_server(|| xdp::attach(&tb.server_if, &opts).map(|_| ()))
            .unwrap()
    };
    let refused = update(&[443], false).expect_err("the server's port would go");
    assert!(
        format!("{refused:#}").contains("running server"),
        "{refused:#}"
    );
    // Nothing changed: the server still serves.
    tb.in_client(|| echo_through(addr, &cert, 1, 1000)).unwrap();
    // Steering more is fine.
    update(&[4433, 443], false).expect("adding a port");
    tb.in_client(|| echo_through(addr, &cert, 1, 1000)).unwrap();
    // Once the server has stopped, the update goes ahead.
    server.stop();
    server.join().unwrap();
    update(&[443], false).expect("no server any more");
}
