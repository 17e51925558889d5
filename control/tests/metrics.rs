//! The Prometheus endpoint, scraped with a real HTTP client while real traffic flows.

mod support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::registry::Registry;
use support::echo_through;
use xdp_quic::{tls, Engine, EngineBuilder, VarInt};
use xdp_quic_control::metrics::{parse, EngineCollector, MetricsLimits, MetricsServer, Sample};
use xdp_quic_control::testing::{unique_name, wait_until};
use xdp_quic_examples::echo::{self, EchoServer};

/// A hang guard for each wait, never a performance bound.
const GUARD: Duration = Duration::from_secs(60);

fn udp_server() -> (
    Engine<EchoServer>,
    Vec<rustls::pki_types::CertificateDer<'static>>,
) {
    let id = tls::Identity::self_signed(&["localhost"]).unwrap();
    let cert = id.chain.clone();
    let engine = EngineBuilder::default()
        .workers(2)
        .server(tls::server_config(id, &[echo::ALPN]).unwrap())
        .drain_timeout(Duration::from_millis(300))
        .start_udp("127.0.0.1:0".parse().unwrap(), |_| EchoServer::default())
        .unwrap();
    (engine, cert)
}

fn metrics_for(engine: &Engine<EchoServer>) -> MetricsServer {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(EngineCollector::new(
        "udp",
        None,
        engine.handle().metrics(),
        Vec::new(),
        None,
    )));
    MetricsServer::start("127.0.0.1:0".parse().unwrap(), registry).unwrap()
}

fn get(url: &str) -> (u16, String, String) {
    let mut resp = ureq::get(url).call().expect("HTTP GET");
    let status = resp.status().as_u16();
    let ty = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, ty, resp.body_mut().read_to_string().unwrap())
}

fn sum(samples: &[Sample], name: &str) -> f64 {
    samples
        .iter()
        .filter(|s| s.name == name)
        .map(|s| s.value)
        .sum()
}

#[test]
fn endpoint_serves_what_the_workers_counted() {
    let (engine, cert) = udp_server();
    let server = metrics_for(&engine);
    echo_through(engine.local_addr(), &cert, 4, 200_000);

    // The client's close ends the connection on the server, which drains it (its RTT then
    // lands in the histogram). From then on no packet moves: a scrape and the workers' own
    // counters must agree exactly.
    let url = format!("http://{}/metrics", server.local_addr());
    wait_until(
        "the connection closed and drained on the server",
        GUARD,
        || sum(&parse(&get(&url).2), "xdpquic_worker_conns_closed_total") >= 1.0,
    );
    let (status, ty, body) = get(&url);
    assert_eq!(status, 200);
    assert!(ty.starts_with("application/openmetrics-text"), "{ty}");
    assert!(body.contains("# TYPE xdpquic_worker_rx_packets counter"));
    assert!(body.contains("# TYPE xdpquic_connection_rtt_seconds histogram"));
    assert!(body.trim_end().ends_with("# EOF"));
    let samples = parse(&body);
    let total = engine.handle().total();
    assert!(total.rx_packets > 0);
    assert_eq!(
        sum(&samples, "xdpquic_worker_rx_packets_total"),
        total.rx_packets as f64
    );
    assert_eq!(
        sum(&samples, "xdpquic_worker_tx_bytes_total"),
        total.tx_bytes as f64
    );
    assert_eq!(sum(&samples, "xdpquic_worker_conns_accepted_total"), 1.0);
    assert_eq!(sum(&samples, "xdpquic_handshake_seconds_count"), 1.0);
    assert_eq!(
        sum(&samples, "xdpquic_rx_batch_size_count"),
        total.rx_batches as f64,
        "one observation per receive batch"
    );
    let closed = sum(&samples, "xdpquic_worker_closed_by_peer_total");
    assert_eq!(closed, 1.0);
    assert_eq!(sum(&samples, "xdpquic_connection_rtt_seconds_count"), 1.0);
    assert!(sum(&samples, "xdpquic_worker_busy_seconds_total") > 0.0);
    let (status, _, _) = get(&format!("http://{}/", server.local_addr()));
    assert_eq!(status, 200);
    drop(server);
    engine.shutdown(VarInt::from_u32(0), b"").unwrap();
}

fn raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(request).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn malformed_and_slow_requests_disturb_neither_workers_nor_later_scrapes() {
    let (engine, cert) = udp_server();
    let server = metrics_for(&engine);
    let addr = server.local_addr();
    assert!(raw(addr, b"garbage\r\n\r\n").starts_with("HTTP/1.1 400"));
    let refused = raw(addr, b"POST /metrics HTTP/1.1\r\n\r\n");
    assert!(refused.starts_with("HTTP/1.1 405"), "{refused}");
    assert!(refused.contains("\r\nAllow: GET\r\n"), "{refused}");
    assert!(raw(addr, b"GET /nope HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    let huge = [b"GET /metrics HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 20_000]].concat();
    assert!(raw(addr, &huge).starts_with("HTTP/1.1 431"));

    // A client that connects and says nothing holds one connection slot, not the endpoint:
    // the workers go on serving and scrapes are answered while it stays connected.
    let slow = TcpStream::connect(addr).unwrap();
    echo_through(engine.local_addr(), &cert, 2, 500_000);
    let (status, _, body) = get(&format!("http://{addr}/metrics"));
    assert_eq!(status, 200);
    assert_eq!(
        sum(&parse(&body), "xdpquic_worker_conns_accepted_total"),
        1.0
    );
    drop(slow);
    drop(server);
    engine.shutdown(VarInt::from_u32(0), b"").unwrap();
}

/// Over AF_XDP, from Prometheus alone: every packet the XDP program redirected was received
/// by a worker or counted as dropped on the way (backend parse errors and kernel drops), and
/// the canary saw nothing.
#[test]
fn af_xdp_packets_are_accounted_for_from_the_program_to_the_workers() {
    if !xdp_quic_control::testing::privileged(
        "af_xdp_packets_are_accounted_for_from_the_program_to_the_workers",
    ) {
        return;
    }
    use xdp_quic_control::testbed::Testbed;
    use xdp_quic_control::xdp::AttachMode;
    let tb = Testbed::create(&unique_name("xk"), 2, 217).unwrap();
    let id = tls::Identity::self_signed(&["localhost"]).unwrap();
    let cert = id.chain.clone();
    let builder = EngineBuilder::default()
        .server(tls::server_config(id, &[echo::ALPN]).unwrap())
        .drain_timeout(Duration::from_millis(300));
    let setup = xdp_quic::XdpSetup::new(&tb.server_if, "[::]:4433".parse().unwrap(), vec![0, 1]);
    let (engine, attachment) = tb
        .serve_xdp(builder, &setup, AttachMode::Native, |_| {
            EchoServer::default()
        })
        .unwrap();
    let mut reg = Registry::default();
    reg.register_collector(Box::new(EngineCollector::new(
        "xdp",
        Some(tb.server_if.clone()),
        engine.handle().metrics(),
        engine.xsk_queues().to_vec(),
        Some(attachment.counters_reader().unwrap()),
    )));
    let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), reg).unwrap();

    let addr = SocketAddr::new(tb.server_v4.into(), 4433);
    tb.in_client(|| echo_through(addr, &cert, 4, 300_000))
        .unwrap();
    // Once the server has closed the connection (normally on the client's close, the last
    // packet the client sends), every packet of the exchange has reached the workers or been
    // counted as dropped on the way.
    let url = format!("http://{}/metrics", server.local_addr());
    let mut body = String::new();
    wait_until("the connection closed on the server", GUARD, || {
        body = get(&url).2;
        sum(&parse(&body), "xdpquic_worker_conns_closed_total") >= 1.0
    });
    let s = parse(&body);
    let redirected: f64 = s
        .iter()
        .filter(|x| {
            x.name == "xdpquic_xdp_packets_total" && x.label("outcome") == Some("redirected")
        })
        .map(|x| x.value)
        .sum();
    let received = sum(&s, "xdpquic_worker_rx_packets_total");
    let backend_drops = sum(&s, "xdpquic_xsk_rx_parse_errors_total")
        + sum(&s, "xdpquic_xsk_rx_bad_checksum_total")
        + sum(&s, "xdpquic_xsk_rx_other_port_total")
        + sum(&s, "xdpquic_xsk_rx_martians_total");
    let kernel_drops = sum(&s, "xdpquic_xsk_kernel_rx_dropped_total")
        + sum(&s, "xdpquic_xsk_kernel_rx_ring_full_total");
    assert!(received > 100.0, "{received}");
    assert_eq!(
        redirected,
        received + backend_drops + kernel_drops,
        "{body}"
    );
    assert_eq!(sum(&s, "xdpquic_xsk_canary_packets_total"), 0.0);
    let queues: Vec<_> = s
        .iter()
        .filter(|x| x.name == "xdpquic_worker_rx_packets_total")
        .filter_map(|x| x.label("queue").map(String::from))
        .collect();
    assert_eq!(queues, vec!["0", "1"], "queue labels");

    // Every metric the Grafana dashboard plots is one this server exports.
    let dash: serde_json::Value =
        serde_json::from_str(include_str!("../../docs/grafana/xdp-quic.json")).unwrap();
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    assert!(exprs.len() > 10);
    for e in &exprs {
        for word in e.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
            if let Some(name) = word.strip_prefix("xdpquic_") {
                let base = ["_total", "_bucket", "_count", "_sum"]
                    .iter()
                    .find_map(|suf| name.strip_suffix(suf))
                    .unwrap_or(name);
                assert!(
                    body.contains(&format!("# TYPE xdpquic_{base} ")),
                    "the dashboard plots xdpquic_{name}, which is not exported"
                );
            }
        }
    }
    drop(server);
    engine.shutdown(VarInt::from_u32(0), b"").unwrap();
    drop(attachment);
}

/// A registry with one counter, `probe_total` = 7.
fn probe_registry() -> Registry {
    let mut r = Registry::default();
    let c: prometheus_client::metrics::counter::Counter = Default::default();
    c.inc_by(7);
    r.register("probe", "A counter the tests look for.", c);
    r
}

/// A slow-loris client: an endless request head, one octet every `every`, until `stop` is set
/// or the server closes the connection. Returns what the server answered and whether the
/// server cut it off (rather than the test stopping it).
fn slow_loris(
    addr: SocketAddr,
    every: Duration,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(String, bool)> {
    std::thread::spawn(move || {
        let mut s = TcpStream::connect(addr).unwrap();
        let mut reader = s.try_clone().unwrap();
        let answer = std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = reader.read_to_end(&mut out);
            String::from_utf8_lossy(&out).into_owned()
        });
        let head = b"GET /metrics HTTP/1.1\r\nX-Slow: ";
        let mut i = 0usize;
        let cut = loop {
            if stop.load(Ordering::Relaxed) {
                break false;
            }
            let byte = if i < head.len() { head[i] } else { b'a' };
            if s.write_all(&[byte]).is_err() || answer.is_finished() {
                break true;
            }
            i += 1;
            std::thread::sleep(every);
        };
        let _ = s.shutdown(std::net::Shutdown::Both);
        (answer.join().unwrap(), cut)
    })
}

/// Slow-loris clients (an octet every 100 to 500 ms) and idle open connections hold slots of
/// the endpoint, never the endpoint: every scrape made meanwhile is answered in full, and the
/// slow clients are all still connected after the scrapes (the deadline here is long).
#[test]
fn slow_and_idle_clients_never_hold_up_a_scrape() {
    let limits = MetricsLimits {
        deadline: Duration::from_secs(120),
        max_connections: 16,
    };
    let server =
        MetricsServer::start_with("127.0.0.1:0".parse().unwrap(), probe_registry(), limits)
            .unwrap();
    let addr = server.local_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let slow: Vec<_> = [100, 250, 500]
        .into_iter()
        .map(|ms| slow_loris(addr, Duration::from_millis(ms), stop.clone()))
        .collect();
    let idle: Vec<TcpStream> = (0..3).map(|_| TcpStream::connect(addr).unwrap()).collect();
    wait_until("6 connections in service", GUARD, || {
        server.active_connections() == 6
    });
    for _ in 0..10 {
        let (status, ty, body) = get(&format!("http://{addr}/metrics"));
        assert_eq!(status, 200);
        assert!(ty.starts_with("application/openmetrics-text"), "{ty}");
        assert_eq!(sum(&parse(&body), "probe_total"), 7.0, "{body}");
    }
    // The scrapes were served beside them, not after them: none of them was cut off or
    // answered yet.
    for mut s in idle.iter() {
        s.set_nonblocking(true).unwrap();
        let e = s
            .read(&mut [0u8; 64])
            .expect_err("an idle connection was answered or closed");
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
    }
    stop.store(true, Ordering::Relaxed);
    for t in slow {
        let (answer, cut) = t.join().unwrap();
        assert!(!cut, "a slow client was cut off early: {answer:?}");
    }
    drop(idle);
    wait_until("every connection closed", GUARD, || {
        server.active_connections() == 0
    });
    let (status, _, _) = get(&format!("http://{addr}/metrics"));
    assert_eq!(status, 200);
}

/// The deadline covers the whole request, not each read: a client that keeps sending an
/// octet every 100 ms, and one that sends nothing, are both answered 408 and closed, and the
/// endpoint serves on.
#[test]
fn a_slow_client_is_cut_off_at_the_deadline() {
    let limits = MetricsLimits {
        deadline: Duration::from_millis(500),
        max_connections: 4,
    };
    let server =
        MetricsServer::start_with("127.0.0.1:0".parse().unwrap(), probe_registry(), limits)
            .unwrap();
    let addr = server.local_addr();
    let never = Arc::new(AtomicBool::new(false));
    let dripping = slow_loris(addr, Duration::from_millis(100), never.clone());
    let mut idle = TcpStream::connect(addr).unwrap();
    let (answer, cut) = dripping.join().unwrap();
    assert!(cut, "the server never cut the slow client off");
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    let mut out = String::new();
    idle.read_to_string(&mut out).unwrap();
    assert!(out.starts_with("HTTP/1.1 408"), "{out:?}");
    wait_until("every connection closed", GUARD, || {
        server.active_connections() == 0
    });
    let (status, _, body) = get(&format!("http://{addr}/metrics"));
    assert_eq!(status, 200);
    assert_eq!(sum(&parse(&body), "probe_total"), 7.0);
}

/// Past `max_connections` a new connection is answered 503 at once and closed; once the
/// slots free up, scrapes are answered again.
#[test]
fn connections_past_the_bound_get_503_at_once() {
    let limits = MetricsLimits {
        deadline: Duration::from_secs(120),
        max_connections: 2,
    };
    let server =
        MetricsServer::start_with("127.0.0.1:0".parse().unwrap(), probe_registry(), limits)
            .unwrap();
    let addr = server.local_addr();
    let held: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();
    wait_until("2 connections in service", GUARD, || {
        server.active_connections() == 2
    });
    let refused = raw(addr, b"GET /metrics HTTP/1.1\r\n\r\n");
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused:?}");
    assert_eq!(server.active_connections(), 2);
    drop(held);
    wait_until("the slots freed", GUARD, || {
        server.active_connections() == 0
    });
    let (status, _, body) = get(&format!("http://{addr}/metrics"));
    assert_eq!(status, 200);
    assert_eq!(sum(&parse(&body), "probe_total"), 7.0);
    // Dropping the server cuts off a connection still being served.
    let mut last = TcpStream::connect(addr).unwrap();
    wait_until("1 connection in service", GUARD, || {
        server.active_connections() == 1
    });
    drop(server);
    let mut out = Vec::new();
    let _ = last.read_to_end(&mut out);
    assert!(out.is_empty(), "{out:?}");
}

/// Dropping the endpoint returns however its address is reached: here from another network
/// namespace than the one it serves in, where connecting to its address (how it was woken
/// before) reaches nothing of it, and the drop waited for ever. It also happened when the
/// address was removed from its interface.
#[test]
fn the_endpoint_stops_though_its_address_cannot_be_reached_from_here() {
    if !xdp_quic_control::testing::privileged("metrics endpoint in a namespace") {
        return;
    }
    let ns = xdp_quic_control::testing::Netns::new("xmt");
    let server = xdp_quic_control::testbed::in_netns(&ns.name, || {
        MetricsServer::start("127.0.0.1:0".parse().unwrap(), Registry::default())
    })
    .unwrap()
    .unwrap();
    let addr = server.local_addr();
    // Inside its namespace it answers.
    let status = xdp_quic_control::testbed::in_netns(&ns.name, || {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        String::from_utf8_lossy(&head).into_owned()
    })
    .unwrap();
    assert_eq!(status, "HTTP/1.1 200");
    let (done_tx, done) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        drop(server);
        let _ = done_tx.send(());
    });
    done.recv_timeout(GUARD)
        .expect("dropping the endpoint did not return");
    // Its port is closed in its namespace.
    let refused =
        xdp_quic_control::testbed::in_netns(&ns.name, || TcpStream::connect(addr).is_err())
            .unwrap();
    assert!(refused, "the endpoint still accepts after its drop");
}
