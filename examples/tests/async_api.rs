//! The async API ([`xdp_quic::tokio`]) against quinn, both directions, in both modes (the
//! application's runtime, thread-per-core) over kernel UDP: 10 MB each way byte-exact, 1,000
//! concurrent streams, datagrams, close codes both ways, a dropped read future losing no
//! data, a slow reader holding memory bounded, endpoint shutdown. (Over AF_XDP and against
//! aioquic: `async_xdp.rs`, `async_interop.rs`.)
//!
//! Run: `cargo test -p xdp-quic-examples --test async_api`

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use xdp_quic::tokio::{Builder, Connection, Endpoint, Limits, ReadError};
use xdp_quic::{tls, EngineBuilder, VarInt};
use xdp_quic_examples::async_echo;

/// The two ways to run the async API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// The engine's workers on their threads, the tasks on the test's runtime.
    AppRuntime,
    /// Each worker runs its own runtime with the tasks of its connections.
    ThreadPerCore,
}

const MODES: [Mode; 2] = [Mode::AppRuntime, Mode::ThreadPerCore];

/// The server transport: quinn's defaults but 1,000 concurrent streams and datagrams.
fn transport() -> xdp_quic::TransportConfig {
    let mut t = xdp_quic::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(1000))
        .datagram_receive_buffer_size(Some(1 << 20))
        .max_idle_timeout(Some(Duration::from_secs(30).try_into().unwrap()));
    t
}

/// Our async echo server on a loopback port, `workers` workers, in `mode`; with the
/// certificate its clients must trust.
fn echo_server(mode: Mode, workers: usize, limits: Limits) -> (Endpoint, rustls::pki_types::CertificateDer<'static>) {
    let (id, cert) = identity();
    let engine = EngineBuilder::default()
        .workers(workers)
        .server(tls::server_config(id, &[async_echo::ALPN]).unwrap())
        .transport(transport())
        .drain_timeout(DRAIN);
    let b = Builder::new(engine).limits(limits);
    let ep = match mode {
        Mode::AppRuntime => {
            let ep = b.bind_udp("127.0.0.1:0".parse().unwrap()).unwrap();
            tokio::spawn(async_echo::serve(ep.clone()));
            ep
        }
        Mode::ThreadPerCore => b
            .thread_per_core(async_echo::serve)
            .bind_udp("127.0.0.1:0".parse().unwrap())
            .unwrap(),
    };
    (ep, cert)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quinn_clients_echo_10_mb_each_way_through_the_async_server() {
    for mode in MODES {
        let (ep, cert) = echo_server(mode, 2, Limits::default());
        let addr = ep.local_addr().unwrap();
        let client = quinn_client(cert, async_echo::ALPN);
        let conn = quinn_connect(&client, addr).await;
        let data = payload(7, 10 << 20);
        let back = guard("10 MB echo", quinn_echo(&conn, data.clone()))
            .await
            .unwrap();
        assert_same(&format!("{mode:?}: 10 MB echoed"), &back, &data);
        conn.close(VarInt::from_u32(0), b"done");
        ep.close(VarInt::from_u32(0), b"bye");
        guard("wait idle", ep.wait_idle()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_streams_and_datagrams_through_the_async_server() {
    for mode in MODES {
        let (ep, cert) = echo_server(mode, 2, Limits::default());
        let client = quinn_client(cert, async_echo::ALPN);
        let conn = quinn_connect(&client, ep.local_addr().unwrap()).await;
        let mut tasks = Vec::new();
        for i in 0..1000u64 {
            let conn = conn.clone();
            tasks.push(tokio::spawn(async move {
                let data = payload(i, 1 + (i as usize * 37) % 3000);
                let back = quinn_echo(&conn, data.clone()).await.unwrap();
                assert_same(&format!("stream {i}"), &back, &data);
            }));
        }
        for t in tasks {
            guard("1,000 streams", t).await.unwrap();
        }
        let sent = quinn_datagrams(&conn, 20).await;
        assert!(sent >= 20, "{mode:?}");
        conn.close(VarInt::from_u32(0), b"done");
        drop(ep);
    }
}
