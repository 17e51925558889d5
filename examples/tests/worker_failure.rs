//! A worker that fails (a fatal I/O error from its backend, or a panic outside the
//! application's callbacks) closes its connections, is reported, and leaves the other workers
//! serving. The fault is injected by a backend wrapper around the real UDP backend.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::*;
use xdp_quic::backend::udp::UdpBackend;
use xdp_quic::backend::{Backend, RxBatch, SendError, Transmit};
use xdp_quic::waker::Waker;
use xdp_quic::{Conn, EngineError, Handler, StreamId, INTERNAL_ERROR};
use xdp_quic_examples::echo::{self, EchoServer};

const NO_FAULT: u8 = 0;
const FLUSH_FAILS: u8 = 1;
const RECV_PANICS: u8 = 2;

/// The UDP backend, with a fault to inject on demand.
struct Faulty {
    inner: UdpBackend,
    fault: Arc<AtomicU8>,
}

impl Backend for Faulty {
    fn max_segments(&self) -> usize {
        self.inner.max_segments()
    }
    fn recv(&mut self, batch: &mut RxBatch) -> std::io::Result<usize> {
        if self.fault.load(Ordering::Relaxed) == RECV_PANICS {
            panic!("injected panic (deliberate, in a test)");
        }
        self.inner.recv(batch)
    }
    fn send(&mut self, t: &Transmit<'_>) -> Result<(), SendError> {
        self.inner.send(t)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.fault.load(Ordering::Relaxed) == FLUSH_FAILS {
            return Err(std::io::Error::other("injected fault"));
        }
        self.inner.flush()
    }
    fn wait(
        &mut self,
        deadline: Option<Instant>,
        want_write: bool,
        waker: &Waker,
    ) -> std::io::Result<()> {
        self.inner.wait(deadline, want_write, waker)
    }
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.inner.local_addr()
    }
}

/// Echo, recording which worker each client address landed on.
struct Placed {
    inner: EchoServer,
    placed: Arc<Mutex<HashMap<SocketAddr, usize>>>,
}

impl Handler for Placed {
    fn connected(&mut self, conn: &mut Conn<'_>) {
        let w = conn.id().worker();
        self.placed.lock().unwrap().insert(conn.remote_address(), w);
    }
    fn stream_readable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        self.inner.stream_readable(conn, s)
    }
    fn stream_writable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
        self.inner.stream_writable(conn, s)
    }
}

async fn worker_fails_with(fault: u8, what: &str) {
    let (b, cert) = our_server(2, echo::ALPN);
    let faults: Vec<Arc<AtomicU8>> = (0..2).map(|_| Arc::new(AtomicU8::new(NO_FAULT))).collect();
    let backends: Vec<Faulty> = hash_group(2)
        .into_iter()
        .zip(&faults)
        .map(|(inner, f)| Faulty {
            inner,
            fault: f.clone(),
        })
        .collect();
    let placed = Arc::new(Mutex::new(HashMap::new()));
    let p = placed.clone();
    let engine = b
        .start(backends, move |_| Placed {
            inner: EchoServer::default(),
            placed: p.clone(),
        })
        .unwrap();
    let server = engine.local_addr();
    let handle = engine.handle();

    // Connections until both workers have some (the kernel's hash places them).
    let mut conns: Vec<(quinn::Endpoint, quinn::Connection, usize)> = Vec::new();
    for _ in 0..64 {
        let ep = quinn_client(cert.clone(), echo::ALPN);
        let conn = quinn_connect(&ep, server).await;
        let back = quinn_echo(&conn, payload(1, 1000)).await.unwrap();
        assert_same("echo before the fault", &back, &payload(1, 1000));
        let at = ep.local_addr().unwrap();
        let w = placed.lock().unwrap()[&at];
        conns.push((ep, conn, w));
        if (0..2).all(|w| conns.iter().any(|c| c.2 == w)) {
            break;
        }
    }
    assert!((0..2).all(|w| conns.iter().any(|c| c.2 == w)), "{conns:?}");

    // Worker 1 fails at its next turn; a packet for it makes it turn.
    faults[1].store(fault, Ordering::Relaxed);
    for (_, conn, w) in &conns {
        if *w == 1 {
            if let Ok(mut s) = conn.open_uni().await {
                let _ = s.write_all(b"x").await;
            }
        }
    }
    for (_, conn, w) in &conns {
        if *w == 1 {
            let why = guard("close of a failed worker", conn.closed()).await;
            match why {
                quinn::ConnectionError::ApplicationClosed(c) => {
                    assert_eq!(c.error_code, INTERNAL_ERROR, "{what}")
                }
                other => panic!("{what}: a connection of the failed worker ended with {other}"),
            }
        }
    }
    let failed = handle.failed_workers();
    assert_eq!(failed.len(), 1, "{what}: {failed:?}");
    assert_eq!(failed[0].0, 1);
    assert!(failed[0].1.contains("injected"), "{what}: {failed:?}");
    assert_eq!(handle.counters()[1].failed, 1);
    assert_eq!(handle.counters()[0].failed, 0);
    // Its gauges say it holds nothing any more, and its connections count as closed (the
    // worker publishes that last, after the closes went out).
    let failed_one = conns.iter().filter(|c| c.2 == 1).count() as u64;
    guard("the failed worker's last counters", async {
        while handle.counters()[1].conns_active != 0 {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    })
    .await;
    let last = &handle.counters()[1];
    assert_eq!(
        (last.conns_handshaking, last.attempts_deferred),
        (0, 0),
        "{what}"
    );
    assert_eq!(last.conns_closed, failed_one, "{what}");

    // The other worker goes on, and new clients are served.
    for (_, conn, w) in &conns {
        if *w == 0 {
            let back = quinn_echo(conn, payload(2, 50_000)).await.unwrap();
            assert_same("echo after the fault", &back, &payload(2, 50_000));
        }
    }
    let ep = quinn_client(cert.clone(), echo::ALPN);
    let conn = quinn_connect(&ep, server).await;
    let back = quinn_echo(&conn, payload(3, 1000)).await.unwrap();
    assert_same("a new connection", &back, &payload(3, 1000));

    let joined = blocking("shutdown", move || {
        engine.shutdown(0u32.into(), b"bye").map(|h| h.len())
    })
    .await;
    match joined {
        Err(EngineError::Worker { worker: 1, error }) => {
            assert!(error.to_string().contains("injected"), "{error}")
        }
        other => panic!("{what}: shutdown returned {other:?}"),
    }
}

#[tokio::test]
async fn a_fatal_io_error_closes_the_workers_connections_and_is_reported() {
    worker_fails_with(FLUSH_FAILS, "flush error").await;
}

#[tokio::test]
async fn a_panic_outside_the_handler_closes_the_workers_connections_and_is_reported() {
    worker_fails_with(RECV_PANICS, "panic in recv").await;
}
