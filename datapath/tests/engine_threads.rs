//! The threaded engine over kernel UDP: CPU pinning and the shutdown that joins the threads.

use std::time::Duration;

use xdp_quic::{tls, EngineBuilder, VarInt};
use xdp_quic_examples::echo::{self, EchoServer};

/// The CPUs a thread of this process may run on, by thread name, from /proc.
fn allowed_cpus(thread_name: &str) -> Option<String> {
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).ok()?;
        if comm.trim() == thread_name {
            let status = std::fs::read_to_string(dir.join("status")).ok()?;
            return status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .map(|v| v.trim().to_string());
        }
    }
    None
}

#[test]
fn workers_are_pinned_and_shutdown_joins_them() {
    let id = tls::Identity::self_signed(&["localhost"]).unwrap();
    let engine = EngineBuilder::default()
        .workers(2)
        .pin_cpus(vec![0])
        .server(tls::server_config(id, &[echo::ALPN]).unwrap())
        .drain_timeout(Duration::from_millis(200))
        .start_udp("127.0.0.1:0".parse().unwrap(), |_| EchoServer::default())
        .unwrap();
    // The threads pin themselves first thing; wait (bounded) until both are visible.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    while std::time::Instant::now() < deadline {
        seen = (0..2)
            .map(|i| allowed_cpus(&format!("xdp-quic-w{i}")))
            .collect();
        if seen.iter().all(|c| c.as_deref() == Some("0")) {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(seen, vec![Some("0".to_string()), Some("0".to_string())]);
    let handlers = engine.shutdown(VarInt::from_u32(0), b"bye").unwrap();
    assert_eq!(handlers.len(), 2);
    // Joined: the threads have exited. Linux wakes the joiner before it removes the exiting
    // thread from /proc/self/task, so its entry may linger a moment: wait (bounded) for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while allowed_cpus("xdp-quic-w0").is_some() || allowed_cpus("xdp-quic-w1").is_some() {
        assert!(
            std::time::Instant::now() < deadline,
            "a worker thread still runs after the shutdown joined it"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A CPU list the workers could not be pinned to (empty, or naming a CPU this process may not
/// run on), and any setting the build refuses, fail the start before a socket is bound:
/// before, the workers ran unpinned with a warning, and the build's refusals came after the
/// sockets had joined the port.
#[test]
fn settings_the_engine_cannot_honour_fail_before_anything_is_bound() {
    let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = probe.local_addr().unwrap();
    drop(probe);
    let builder = || {
        let id = tls::Identity::self_signed(&["localhost"]).unwrap();
        EngineBuilder::default()
            .workers(2)
            .server(tls::server_config(id, &[echo::ALPN]).unwrap())
    };
    for (b, says) in [
        (builder().pin_cpus(vec![]), "pin_cpus with no CPU"),
        (
            builder().pin_cpus(vec![0, 100_000]),
            "CPU 100000 is not one this process may run on",
        ),
        (builder().max_connections(0), "max_connections"),
    ] {
        let err = match b.start_udp(addr, |_| EchoServer::default()) {
            Ok(_) => panic!("started despite: {says}"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(says), "{err}");
        // Nothing holds the port: it binds without SO_REUSEPORT.
        std::net::UdpSocket::bind(addr).expect("the port is free");
    }
}

/// An engine shut down from one of its own workers (its owner moved into a posted call, as
/// a callback-API application that stops itself from a callback might) neither deadlocks
/// nor panics: the other worker is joined, the calling one, which cannot wait for itself,
/// is reported as not waited for. (Before, std's join of the current thread panicked.)
#[test]
fn an_engine_shut_down_on_its_own_worker_does_not_wait_for_that_worker() {
    let id = tls::Identity::self_signed(&["localhost"]).unwrap();
    let engine = EngineBuilder::default()
        .workers(2)
        .server(tls::server_config(id, &[echo::ALPN]).unwrap())
        .drain_timeout(Duration::from_millis(200))
        .start_udp("127.0.0.1:0".parse().unwrap(), |_| EchoServer::default())
        .unwrap();
    let handle = engine.handle();
    let (tx, rx) = std::sync::mpsc::channel();
    handle
        .post(0, move |_, _| {
            let joined = engine.shutdown(VarInt::from_u32(0), b"bye");
            let _ = tx.send(joined.map(|h| h.len()).map_err(|e| e.to_string()));
        })
        .unwrap();
    let joined = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the shutdown returned on the worker");
    let err = joined.expect_err("worker 0 was not waited for");
    assert!(err.contains("own thread"), "{err}");
}
