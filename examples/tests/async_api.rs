//! The async API ([`xdp_quic::tokio`]) against quinn, both directions, in both modes (the
//! application's runtime, thread-per-core), over kernel UDP: 10 MB each way byte-exact, 1,000
//! concurrent streams, datagrams, close codes both ways, a dropped read future losing no
//! data, a slow reader that does not make the server buffer more, endpoint shutdown. (Over
//! AF_XDP and against aioquic: `async_interop.rs`.)
//!
//! Run: `cargo test -p xdp-quic-examples --test async_api`

mod common;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use rustls::pki_types::CertificateDer;
use tokio::sync::mpsc;
use xdp_quic::tokio::{Builder, ConnectionError, Endpoint, Limits};
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

/// Our transport in these tests: quinn-proto's defaults, 1,000 concurrent streams.
fn transport() -> xdp_quic::TransportConfig {
    let mut t = xdp_quic::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(1000))
        .datagram_receive_buffer_size(Some(1 << 20))
        .max_idle_timeout(Some(Duration::from_secs(30).try_into().unwrap()));
    t
}

/// Starts an async server on a loopback port, `workers` workers, in `mode`, running `app`
/// on its endpoint (on the test's runtime, or on every worker); with the certificate to
/// trust.
fn server<F, Fut>(
    mode: Mode,
    workers: usize,
    limits: Limits,
    app: F,
) -> (Endpoint, CertificateDer<'static>)
where
    F: Fn(Endpoint) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    server_with(mode, workers, limits, transport(), app)
}

/// [`server`] on `transport`.
fn server_with<F, Fut>(
    mode: Mode,
    workers: usize,
    limits: Limits,
    transport: xdp_quic::TransportConfig,
    app: F,
) -> (Endpoint, CertificateDer<'static>)
where
    F: Fn(Endpoint) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (id, cert) = identity();
    let engine = EngineBuilder::default()
        .workers(workers)
        .server(tls::server_config(id, &[async_echo::ALPN]).unwrap())
        .transport(transport)
        .drain_timeout(DRAIN);
    let b = Builder::new(engine).limits(limits);
    let any = "127.0.0.1:0".parse().unwrap();
    let ep = match mode {
        Mode::AppRuntime => {
            let ep = b.bind_udp(any).unwrap();
            tokio::spawn(app(ep.clone()));
            ep
        }
        Mode::ThreadPerCore => b.thread_per_core(app).bind_udp(any).unwrap(),
    };
    (ep, cert)
}

fn echo_server(mode: Mode) -> (Endpoint, CertificateDer<'static>) {
    server(mode, 2, Limits::default(), async_echo::serve)
}

/// Runs `app` with a client endpoint of ours trusting `cert`, in `mode` (thread-per-core: on
/// the client's one worker), and returns what it returned.
async fn with_client<F, Fut, T>(mode: Mode, cert: CertificateDer<'static>, app: F) -> T
where
    F: Fn(Endpoint) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = T> + 'static,
    T: Send + 'static,
{
    let client = tls::client_config(tls::Trust::Roots(vec![cert]), &[async_echo::ALPN]).unwrap();
    let engine = EngineBuilder::default()
        .workers(1)
        .client(client)
        .transport(transport())
        .drain_timeout(DRAIN);
    let any = "127.0.0.1:0".parse().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let run = move |ep: Endpoint| {
        let fut = app(ep);
        let tx = tx.clone();
        async move {
            let _ = tx.send(fut.await);
        }
    };
    let _ep = match mode {
        Mode::AppRuntime => {
            let ep = Builder::new(engine).bind_udp(any).unwrap();
            let local = tokio::task::LocalSet::new();
            local.spawn_local(run(ep.clone()));
            guard("the client", local).await;
            ep
        }
        Mode::ThreadPerCore => Builder::new(engine)
            .thread_per_core(run)
            .bind_udp(any)
            .unwrap(),
    };
    guard("client", rx.recv()).await.expect("the client ran")
}

/// A quinn client has 1 MB (from `seed`) echoed byte-exact by `ep`'s server; then the
/// connection and the endpoint are closed and drained.
async fn quinn_echoes_1_mb_then_closes(
    ep: Endpoint,
    cert: CertificateDer<'static>,
    seed: u64,
    what: &str,
) {
    let client = quinn_client(cert, async_echo::ALPN);
    let conn = quinn_connect(&client, ep.local_addr().unwrap()).await;
    let data = payload(seed, 1 << 20);
    let back = guard(what, quinn_echo(&conn, data.clone())).await.unwrap();
    assert_same(&format!("{what}: echoed"), &back, &data);
    conn.close(VarInt::from_u32(0), b"done");
    ep.close(VarInt::from_u32(0), b"");
    guard("idle", ep.wait_idle()).await;
}

/// Echoes `data` over a new stream of our connection, writing and reading at once.
async fn our_echo(conn: &xdp_quic::tokio::Connection, data: Bytes) -> Vec<u8> {
    let (mut send, mut recv) = conn.open_bi().await.unwrap();
    let writer = tokio::spawn(async move {
        send.write_chunk(data).await.unwrap();
        send.finish().unwrap();
    });
    let back = recv.read_to_end(usize::MAX).await.unwrap();
    writer.await.unwrap();
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quinn_clients_echo_10_mb_each_way_through_the_async_server() {
    for mode in MODES {
        let (ep, cert) = echo_server(mode);
        let client = quinn_client(cert, async_echo::ALPN);
        let conn = quinn_connect(&client, ep.local_addr().unwrap()).await;
        let data = payload(7, 10 << 20);
        let back = guard("10 MB echo", quinn_echo(&conn, data.clone()))
            .await
            .unwrap();
        assert_same(&format!("{mode:?}: 10 MB echoed"), &back, &data);
        conn.close(VarInt::from_u32(0), b"done");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_streams_and_datagrams_through_the_async_server() {
    for mode in MODES {
        let (ep, cert) = echo_server(mode);
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
        quinn_datagrams(&conn, 20).await;
        conn.close(VarInt::from_u32(0), b"done");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_async_client_against_a_quinn_server() {
    for mode in MODES {
        let server = QuinnServer::start(Service::Echo, false);
        let addr = server.addr;
        let (ok, datagrams_back) = with_client(mode, server.cert.clone(), move |ep| async move {
            let conn = ep.connect(addr, "localhost").unwrap().await.unwrap();
            // 10 MB each way.
            let data = payload(11, 10 << 20);
            let back = our_echo(&conn, data.clone()).await;
            assert_same("10 MB echoed by quinn", &back, &data);
            // 1,000 concurrent streams.
            let mut tasks = Vec::new();
            for i in 0..1000u64 {
                let conn = conn.clone();
                tasks.push(tokio::task::spawn_local(async move {
                    let data = payload(100 + i, 1 + (i as usize * 53) % 2000);
                    our_echo(&conn, data.clone()).await == data
                }));
            }
            let mut ok = 0;
            for t in tasks {
                ok += usize::from(t.await.unwrap());
            }
            // Datagrams: unreliable, so resent until every one came back once.
            let grams: Vec<Bytes> = (0..10)
                .map(|i| payload(500 + i, 100 + 10 * i as usize))
                .collect();
            let mut back = vec![false; grams.len()];
            while back.iter().any(|b| !b) {
                for (g, _) in grams.iter().zip(&back).filter(|(_, b)| !**b) {
                    conn.send_datagram(g.clone()).unwrap();
                }
                let until = tokio::time::sleep(Duration::from_millis(300));
                tokio::pin!(until);
                loop {
                    tokio::select! {
                        d = conn.read_datagram() => {
                            let d = d.unwrap();
                            let i = grams.iter().position(|g| *g == d).expect("an echo of ours");
                            back[i] = true;
                            if back.iter().all(|b| *b) { break; }
                        }
                        _ = &mut until => break,
                    }
                }
            }
            conn.close(VarInt::from_u32(0), b"done");
            (ok, back.iter().filter(|b| **b).count())
        })
        .await;
        assert_eq!(ok, 1000, "{mode:?}: streams echoed intact");
        assert_eq!(datagrams_back, 10);
        server.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_codes_travel_both_ways() {
    for mode in MODES {
        // A quinn client closes with 42; our server's connection hears it. Our server closes
        // the next connection with 7 after its first stream; quinn's client hears it.
        let (tx, mut reasons) = mpsc::unbounded_channel();
        let app = move |ep: Endpoint| {
            let tx = tx.clone();
            async move {
                while let Some(incoming) = ep.accept().await {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let conn = incoming.await.unwrap();
                        if let Ok((mut send, mut recv)) = conn.accept_bi().await {
                            // The first client closes at once: its stream may be cut short.
                            let ask = recv.read_to_end(100).await.unwrap_or_default();
                            if ask == b"close with 7" {
                                send.write_all(b"closing").await.unwrap();
                                send.finish().unwrap();
                                send.stopped().await.unwrap();
                                conn.close(VarInt::from_u32(7), b"seven");
                            }
                        }
                        let _ = tx.send(conn.closed().await);
                    });
                }
            }
        };
        let (ep, cert) = server(mode, 2, Limits::default(), app);
        let client = quinn_client(cert, async_echo::ALPN);
        let addr = ep.local_addr().unwrap();

        let conn = quinn_connect(&client, addr).await;
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(b"hello").await.unwrap();
        send.finish().unwrap();
        conn.close(VarInt::from_u32(42), b"forty-two");
        match guard("server hears the close", reasons.recv())
            .await
            .unwrap()
        {
            ConnectionError::ApplicationClosed(c) => {
                assert_eq!(c.error_code, VarInt::from_u32(42), "{mode:?}");
                assert_eq!(&c.reason[..], b"forty-two");
            }
            other => panic!("{mode:?}: {other:?}"),
        }

        let conn = quinn_connect(&client, addr).await;
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.write_all(b"close with 7").await.unwrap();
        send.finish().unwrap();
        assert_eq!(recv.read_to_end(100).await.unwrap(), b"closing");
        match guard("client hears the close", conn.closed()).await {
            quinn::ConnectionError::ApplicationClosed(c) => {
                assert_eq!(c.error_code, VarInt::from_u32(7), "{mode:?}");
                assert_eq!(&c.reason[..], b"seven");
            }
            other => panic!("{mode:?}: {other:?}"),
        }
        assert!(matches!(
            guard("server side", reasons.recv()).await.unwrap(),
            ConnectionError::LocallyClosed
        ));

        // Our client closes with 9 and hears quinn's server close with 5.
        let (config, cert) = quinn_server_config(async_echo::ALPN);
        let qs = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
        let qaddr = qs.local_addr().unwrap();
        let (seen_tx, mut seen) = mpsc::unbounded_channel();
        let accepting = qs.clone();
        tokio::spawn(async move {
            while let Some(incoming) = accepting.accept().await {
                let seen_tx = seen_tx.clone();
                tokio::spawn(async move {
                    let conn = incoming.await.unwrap();
                    let (_, mut recv) = conn.accept_bi().await.unwrap();
                    let ask = recv.read_to_end(100).await.unwrap();
                    if ask == b"close with 5" {
                        conn.close(VarInt::from_u32(5), b"five");
                    }
                    let _ = seen_tx.send(conn.closed().await);
                });
            }
        });
        let heard = with_client(mode, cert, move |ep| async move {
            let conn = ep.connect(qaddr, "localhost").unwrap().await.unwrap();
            let (mut send, _recv) = conn.open_bi().await.unwrap();
            send.write_all(b"close with 5").await.unwrap();
            send.finish().unwrap();
            let heard = conn.closed().await;
            let conn = ep.connect(qaddr, "localhost").unwrap().await.unwrap();
            let (mut send, _recv) = conn.open_bi().await.unwrap();
            send.write_all(b"bye").await.unwrap();
            send.finish().unwrap();
            send.stopped().await.unwrap();
            conn.close(VarInt::from_u32(9), b"nine");
            heard
        })
        .await;
        match heard {
            ConnectionError::ApplicationClosed(c) => {
                assert_eq!(c.error_code, VarInt::from_u32(5), "{mode:?}");
                assert_eq!(&c.reason[..], b"five");
            }
            other => panic!("{mode:?}: {other:?}"),
        }
        assert!(matches!(
            guard("quinn server", seen.recv()).await.unwrap(),
            quinn::ConnectionError::LocallyClosed
        ));
        match guard("quinn server hears our close", seen.recv())
            .await
            .unwrap()
        {
            quinn::ConnectionError::ApplicationClosed(c) => {
                assert_eq!(c.error_code, VarInt::from_u32(9), "{mode:?}");
                assert_eq!(&c.reason[..], b"nine");
            }
            other => panic!("{mode:?}: {other:?}"),
        }
        qs.close(VarInt::from_u32(0), b"");
    }
}

/// Read futures the server of [`a_dropped_read_future_loses_no_data`] has dropped.
static DROPPED_READS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_read_future_loses_no_data() {
    for mode in MODES {
        // The server reads with a short timeout around every read (dropping the read future
        // whenever it fires while the client trickles data), then echoes what it got.
        let app = |ep: Endpoint| async move {
            while let Some(incoming) = ep.accept().await {
                tokio::spawn(async move {
                    let conn = incoming.await.unwrap();
                    let (mut send, mut recv) = conn.accept_bi().await.unwrap();
                    let (got, dropped) = read_dropping_futures(&mut recv, &DROPPED_READS)
                        .await
                        .unwrap();
                    send.write_all(&dropped.to_be_bytes()).await.unwrap();
                    send.write_all(&got).await.unwrap();
                    send.finish().unwrap();
                    send.stopped().await.unwrap();
                });
            }
        };
        let (ep, cert) = server(mode, 1, Limits::default(), app);
        let client = quinn_client(cert, async_echo::ALPN);
        let conn = quinn_connect(&client, ep.local_addr().unwrap()).await;
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        let data = payload(3, 300_000);
        DROPPED_READS.store(0, std::sync::atomic::Ordering::Release);
        for (i, piece) in data.chunks(3_000).enumerate() {
            send.write_all(piece).await.unwrap();
            if i == 0 {
                // The server times out waiting for more: a read future dropped, for sure.
                wait_for_a_dropped_read(&DROPPED_READS).await;
            }
            // Trickle, so that the server's reads time out in between.
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        send.finish().unwrap();
        let back = guard("echo", recv.read_to_end(usize::MAX)).await.unwrap();
        let dropped = u32::from_be_bytes(back[..4].try_into().unwrap());
        assert!(
            dropped > 0,
            "{mode:?}: no read future was dropped: the test proves nothing"
        );
        assert_same(
            &format!("{mode:?}: after {dropped} dropped reads"),
            &back[4..],
            &data,
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_bounds_what_the_server_takes_in() {
    // quinn's client sends 8 MB as fast as it can; the server reads 32 KiB at a time with a
    // pause between. Whatever the pace, the server can have received no more than what was
    // read, plus the stream's flow-control window (quinn-proto's, 1.25 MB by default), plus
    // what the async API buffers per stream, plus packet overhead: it does not take in data
    // the application has no room for.
    const WINDOW: u64 = 1_250_000;
    for mode in MODES {
        let limits = Limits {
            stream_receive: 64 << 10,
            ..Limits::default()
        };
        let (report, mut reports) = mpsc::unbounded_channel();
        let app = move |ep: Endpoint| {
            let report = report.clone();
            async move {
                while let Some(incoming) = ep.accept().await {
                    let report = report.clone();
                    let ep = ep.clone();
                    tokio::spawn(async move {
                        let conn = incoming.await.unwrap();
                        let (_send, mut recv) = conn.accept_bi().await.unwrap();
                        let mut read = 0u64;
                        let mut worst = 0u64;
                        let mut buf = vec![0u8; 32 << 10];
                        while let Some(n) = recv.read(&mut buf).await.unwrap() {
                            read += n as u64;
                            let taken = ep.counters().rx_bytes;
                            worst = worst.max(taken.saturating_sub(read));
                            tokio::time::sleep(Duration::from_millis(2)).await;
                        }
                        let _ = report.send((read, worst));
                    });
                }
            }
        };
        let (ep, cert) = server(mode, 1, limits, app);
        let client = quinn_client(cert, async_echo::ALPN);
        let conn = quinn_connect(&client, ep.local_addr().unwrap()).await;
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_chunk(payload(5, 8 << 20)).await.unwrap();
        send.finish().unwrap();
        let (read, worst) = guard("slow reader", reports.recv()).await.unwrap();
        assert_eq!(read, 8 << 20);
        let bound = (WINDOW + limits.stream_receive as u64) * 11 / 10 + 64 * 1024;
        assert!(
            worst <= bound,
            "{mode:?}: the server took in {worst} octets more than the application read \
             (bound {bound})"
        );
        conn.close(VarInt::from_u32(0), b"");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_endpoint_closes_its_connections_and_stops_accepting() {
    for mode in MODES {
        let (ep, cert) = echo_server(mode);
        let client = quinn_client(cert, async_echo::ALPN);
        let conns = [
            quinn_connect(&client, ep.local_addr().unwrap()).await,
            quinn_connect(&client, ep.local_addr().unwrap()).await,
        ];
        for c in &conns {
            let back = quinn_echo(c, Bytes::from_static(b"ping")).await.unwrap();
            assert_eq!(back, b"ping");
        }
        assert_eq!(ep.open_connections(), 2, "{mode:?}");
        ep.close(VarInt::from_u32(3), b"maintenance");
        for c in &conns {
            match guard("client hears the shutdown", c.closed()).await {
                quinn::ConnectionError::ApplicationClosed(a) => {
                    assert_eq!(a.error_code, VarInt::from_u32(3));
                    assert_eq!(&a.reason[..], b"maintenance");
                }
                other => panic!("{mode:?}: {other:?}"),
            }
        }
        guard("idle", ep.wait_idle()).await;
        assert_eq!(ep.open_connections(), 0);
        if mode == Mode::AppRuntime {
            assert!(ep.accept().await.is_none(), "no accepting after close");
        }
        // New attempts are refused.
        let refused = client
            .connect(ep.local_addr().unwrap(), "localhost")
            .unwrap()
            .await
            .unwrap_err();
        assert!(
            matches!(refused, quinn::ConnectionError::ConnectionClosed(_)),
            "{mode:?}: {refused:?}"
        );
        let _: Arc<()> = Arc::new(());
    }
}

/// The server code of issue 15, compiled unchanged but for the import (quinn's
/// `use quinn::{Connection, Endpoint};`).
mod ported_from_quinn {
    use xdp_quic::tokio::{Connection, Endpoint};
    pub async fn serve(ep: Endpoint) {
        while let Some(incoming) = ep.accept().await {
            tokio::spawn(async move {
                let conn: Connection = incoming.await.unwrap();
                while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                    let data = recv.read_to_end(1 << 20).await.unwrap();
                    send.write_all(&data).await.unwrap();
                    send.finish().unwrap();
                }
            });
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_ported_from_quinn_serves_a_quinn_client() {
    for mode in MODES {
        let (ep, cert) = server(mode, 2, Limits::default(), ported_from_quinn::serve);
        let client = quinn_client(cert, async_echo::ALPN);
        let conn = quinn_connect(&client, ep.local_addr().unwrap()).await;
        for i in 0..4 {
            let data = payload(40 + i, 100_000);
            let back = quinn_echo(&conn, data.clone()).await.unwrap();
            assert_same(&format!("{mode:?} echo {i}"), &back, &data);
        }
        conn.close(VarInt::from_u32(0), b"");
        ep.close(VarInt::from_u32(0), b"");
    }
}

/// Streams the application has not accepted yet fill the connection's budgets (bidirectional
/// ones with data beyond `connection_receive`, unidirectional ones finished beyond
/// `held_streams`) while it reads one stream at a time, as the README's echo server does:
/// the stream it reads still gets its data. (Before, every stream paused until the idle
/// timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_not_accepted_yet_never_stall_the_one_being_read() {
    const BIDI: usize = 12;
    const SIZE: usize = 100_000;
    const UNI: usize = 6;
    for mode in MODES {
        let limits = Limits {
            stream_receive: 64 << 10,
            connection_receive: 128 << 10,
            held_streams: 2,
            ..Limits::default()
        };
        // Each bidirectional stream read to its end and answered with its length, one after
        // the other; then the unidirectional ones; then their total on one more stream.
        let app = |ep: Endpoint| async move {
            while let Some(incoming) = ep.accept().await {
                tokio::spawn(async move {
                    let conn = incoming.await.unwrap();
                    for _ in 0..BIDI {
                        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
                        let data = recv.read_to_end(usize::MAX).await.unwrap();
                        send.write_all(&(data.len() as u64).to_be_bytes())
                            .await
                            .unwrap();
                        send.finish().unwrap();
                    }
                    let mut total = 0u64;
                    for _ in 0..UNI {
                        let mut recv = conn.accept_uni().await.unwrap();
                        total += recv.read_to_end(usize::MAX).await.unwrap().len() as u64;
                    }
                    let (mut send, _recv) = conn.accept_bi().await.unwrap();
                    send.write_all(&total.to_be_bytes()).await.unwrap();
                    send.finish().unwrap();
                    let _ = send.stopped().await;
                });
            }
        };
        let (ep, cert) = server(mode, 1, limits, app);
        let client = quinn_client(cert, async_echo::ALPN);
        let conn = quinn_connect(&client, ep.local_addr().unwrap()).await;
        for i in 0..UNI {
            let mut send = conn.open_uni().await.unwrap();
            send.write_all(&payload(40 + i as u64, 1000)).await.unwrap();
            send.finish().unwrap();
        }
        let mut streams = Vec::new();
        for i in 0..BIDI {
            let (mut send, recv) = conn.open_bi().await.unwrap();
            send.write_chunk(payload(i as u64, SIZE)).await.unwrap();
            send.finish().unwrap();
            streams.push((send, recv));
        }
        for (i, (_send, mut recv)) in streams.into_iter().enumerate() {
            let answer = guard("an answer", recv.read_to_end(8)).await.unwrap();
            assert_eq!(answer, (SIZE as u64).to_be_bytes(), "{mode:?}: stream {i}");
        }
        let (mut send, mut recv) = conn.open_bi().await.unwrap();
        send.finish().unwrap();
        let total = guard("the total", recv.read_to_end(8)).await.unwrap();
        assert_eq!(total, (UNI as u64 * 1000).to_be_bytes(), "{mode:?}");
        conn.close(VarInt::from_u32(0), b"");
    }
}

/// A quinn server that allows one bidirectional stream at a time, and serves each with
/// `serve`, one after the other, on its first connection.
fn one_stream_quinn_server<F, Fut>(serve: F) -> (quinn::Endpoint, CertificateDer<'static>)
where
    F: Fn(quinn::SendStream, quinn::RecvStream) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let (mut config, cert) = quinn_server_config(async_echo::ALPN);
    let mut t = quinn_transport();
    t.max_concurrent_bidi_streams(VarInt::from_u32(1));
    config.transport_config(Arc::new(t));
    let ep = quinn::Endpoint::server(config, "127.0.0.1:0".parse().unwrap()).unwrap();
    let accept = ep.clone();
    tokio::spawn(async move {
        let conn = accept.accept().await.unwrap().await.unwrap();
        while let Ok((send, recv)) = conn.accept_bi().await {
            serve(send, recv).await;
        }
    });
    (ep, cert)
}

/// quinn's echo of one stream.
async fn quinn_echo_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let data = recv.read_to_end(1 << 20).await.unwrap();
    send.write_all(&data).await.unwrap();
    send.finish().unwrap();
}

/// `open_bi` futures dropped while the peer's one stream is busy hold nothing: the next
/// opens get the credit, one after the other. (Before, a dropped open's request stayed: when
/// credit came back with no open waiting, the worker opened a stream nobody owned, which held
/// the credit, and the next open waited forever.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_open_holds_no_stream() {
    for mode in MODES {
        let (server, cert) = one_stream_quinn_server(quinn_echo_stream);
        let addr = server.local_addr().unwrap();
        let back = with_client(mode, cert, move |ep| async move {
            let conn = ep.connect(addr, "localhost").unwrap().await.unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            for _ in 0..3 {
                let mut open = std::pin::pin!(conn.open_bi());
                std::future::poll_fn(|cx| {
                    assert!(
                        open.as_mut().poll(cx).is_pending(),
                        "the one stream is busy"
                    );
                    std::task::Poll::Ready(())
                })
                .await;
            }
            send.write_all(b"first").await.unwrap();
            send.finish().unwrap();
            let mut back = recv.read_to_end(1 << 10).await.unwrap();
            for i in 0..3u8 {
                let (mut send, mut recv) = guard("an open", conn.open_bi()).await.unwrap();
                send.write_all(&[i; 10]).await.unwrap();
                send.finish().unwrap();
                back.extend(recv.read_to_end(1 << 10).await.unwrap());
            }
            conn.close(VarInt::from_u32(0), b"");
            back
        })
        .await;
        let mut want = b"first".to_vec();
        for i in 0..3u8 {
            want.extend([i; 10]);
        }
        assert_eq!(back, want, "{mode:?}");
        server.close(VarInt::from_u32(0), b"");
    }
}

/// A quinn server (one stream at a time) that reads a little of the first stream, then
/// stops it with code 7, and echoes every later one.
fn first_stream_stopped_with_7() -> (quinn::Endpoint, CertificateDer<'static>) {
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    one_stream_quinn_server(move |mut send, mut recv| {
        let first = first.swap(false, std::sync::atomic::Ordering::SeqCst);
        async move {
            if first {
                let mut buf = [0u8; 10];
                recv.read_exact(&mut buf).await.unwrap();
                recv.stop(VarInt::from_u32(7)).unwrap();
                send.finish().unwrap();
                let _ = send.stopped().await;
            } else {
                quinn_echo_stream(send, recv).await;
            }
        }
    })
}

/// The peer stops a stream whose `SendStream` was dropped with data still queued: the
/// stream is reset with the peer's code, so it is freed and the peer's one stream of credit
/// comes back (before, nobody reset it and the next open waited forever). A `stopped`
/// future that outlives its handle learns how the stream ended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_stopped_after_its_handle_went_is_reset_and_freed() {
    for mode in MODES {
        let (server, cert) = first_stream_stopped_with_7();
        let addr = server.local_addr().unwrap();
        let (stopped, back) = with_client(mode, cert, move |ep| async move {
            let conn = ep.connect(addr, "localhost").unwrap().await.unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let stopped = tokio::task::spawn_local(send.stopped());
            // More than the peer's stream window: most of it is still queued here when the
            // handle goes and when the peer's STOP_SENDING comes.
            send.write_chunk(payload(9, 3 << 20)).await.unwrap();
            send.finish().unwrap();
            drop(send);
            assert!(recv.read_to_end(1 << 10).await.unwrap().is_empty());
            let stopped = guard("stopped", stopped).await.unwrap();
            let (mut send, mut recv) = guard("an open", conn.open_bi()).await.unwrap();
            send.write_all(b"again").await.unwrap();
            send.finish().unwrap();
            let back = recv.read_to_end(1 << 10).await.unwrap();
            conn.close(VarInt::from_u32(0), b"");
            (stopped, back)
        })
        .await;
        assert_eq!(stopped, Ok(Some(VarInt::from_u32(7))), "{mode:?}");
        assert_eq!(back, b"again", "{mode:?}");
        server.close(VarInt::from_u32(0), b"");
    }
}

/// The same, but the handle outlives the peer's STOP_SENDING: the stream was finished,
/// `stopped` reports the code, and only then is the handle dropped. The drop resets the
/// stream with the peer's code, as quinn's does (quinn-proto would otherwise go on sending
/// what the peer refused until it is acknowledged), and the stream is freed: the peer's one
/// stream of credit comes back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_stream_the_peer_stops_is_reset_when_its_handle_goes() {
    for mode in MODES {
        let (server, cert) = first_stream_stopped_with_7();
        let addr = server.local_addr().unwrap();
        let stopped_back = with_client(mode, cert, move |ep| async move {
            let conn = ep.connect(addr, "localhost").unwrap().await.unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            send.write_chunk(payload(9, 3 << 20)).await.unwrap();
            send.finish().unwrap();
            let stopped = guard("stopped", send.stopped()).await;
            // A second `stopped`, made once the side is over, outlives the handle and the
            // reset its drop makes: it still reads the code (before, the slot went with the
            // reset and it said `None`).
            let later = send.stopped();
            drop(send);
            assert!(recv.read_to_end(1 << 10).await.unwrap().is_empty());
            let (mut send, mut recv) = guard("an open", conn.open_bi()).await.unwrap();
            send.write_all(b"again").await.unwrap();
            send.finish().unwrap();
            let back = recv.read_to_end(1 << 10).await.unwrap();
            let later = guard("stopped, later", later).await;
            conn.close(VarInt::from_u32(0), b"");
            (stopped, later, back)
        })
        .await;
        let (stopped, later, back) = stopped_back;
        assert_eq!(stopped, Ok(Some(VarInt::from_u32(7))), "{mode:?}");
        assert_eq!(later, Ok(Some(VarInt::from_u32(7))), "{mode:?}");
        assert_eq!(back, b"again", "{mode:?}");
        server.close(VarInt::from_u32(0), b"");
    }
}

/// After a local `close`, reads still hand out what was received before, also what the
/// async API had left in quinn-proto past its budgets (quinn reads from quinn-proto after a
/// close too). A quinn server sends 1 MiB on a stream, more than the 256 KiB the client keeps
/// per stream, within quinn-proto's window; once it is acknowledged the client closes and
/// reads it all. (Before, reads gave the 256 KiB taken and then `LocallyClosed`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_after_a_local_close_hand_out_what_was_received() {
    const LEN: usize = 1 << 20;
    for mode in MODES {
        let (acked_tx, acked_rx) = tokio::sync::oneshot::channel::<()>();
        let acked_tx = std::sync::Mutex::new(Some(acked_tx));
        let (server, cert) = one_stream_quinn_server(move |mut send, mut recv| {
            let acked = acked_tx.lock().unwrap().take();
            async move {
                let _ = recv.read_to_end(16).await;
                send.write_all(&payload(41, LEN)).await.unwrap();
                send.finish().unwrap();
                // Acknowledged: all of it is in the client's quinn-proto or its queues.
                send.stopped().await.unwrap();
                if let Some(a) = acked {
                    let _ = a.send(());
                }
            }
        });
        let addr = server.local_addr().unwrap();
        let acked_rx = std::sync::Mutex::new(Some(acked_rx));
        let got = with_client(mode, cert, move |ep| {
            let acked = acked_rx.lock().unwrap().take();
            async move {
                let conn = ep.connect(addr, "localhost").unwrap().await.unwrap();
                let (mut send, mut recv) = conn.open_bi().await.unwrap();
                send.finish().unwrap();
                guard("acknowledged", acked.expect("one client"))
                    .await
                    .unwrap();
                conn.close(VarInt::from_u32(0), b"");
                guard("read after the close", recv.read_to_end(LEN)).await
            }
        })
        .await;
        assert_eq!(got.map(|d| d.len()), Ok(LEN), "{mode:?}");
        server.close(VarInt::from_u32(0), b"");
    }
}

/// `read_chunks` hands out what is buffered and leaves the stream's end, or its reset, for
/// the next call, which reports it (quinn's semantics); reads past the end give the end
/// again. (Before, a `read_chunks` that found the data and the end buffered together took
/// the end with its data and dropped it: the next call failed with `ClosedStream`, and a
/// reset looked like a clean end.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_chunks_reports_the_end_and_the_reset_after_the_data() {
    for mode in MODES {
        let app = |ep: Endpoint| async move {
            while let Some(incoming) = ep.accept().await {
                tokio::spawn(async move {
                    let conn = incoming.await.unwrap();
                    let mut report = Vec::new();
                    for _ in 0..2 {
                        let (mut send, mut recv) = conn.accept_bi().await.unwrap();
                        // The client's word that everything it sent is here (acknowledged).
                        let mut go = conn.accept_uni().await.unwrap();
                        go.read_to_end(16).await.unwrap();
                        let mut got = Vec::new();
                        let mut bufs = vec![Bytes::new(); 4];
                        let end = loop {
                            match recv.read_chunks(&mut bufs).await {
                                Ok(Some(n)) => bufs[..n].iter().for_each(|b| got.extend(b)),
                                other => break format!("{other:?}"),
                            }
                        };
                        let again = format!("{:?}", recv.read(&mut [0u8; 8]).await);
                        report.push(format!("{}|{end}|{again}", String::from_utf8_lossy(&got)));
                        let _ = send.finish();
                    }
                    let mut out = conn.open_uni().await.unwrap();
                    out.write_all(report.join("\n").as_bytes()).await.unwrap();
                    out.finish().unwrap();
                    let _ = out.stopped().await;
                });
            }
        };
        let (ep, cert) = server(mode, 1, Limits::default(), app);
        let client = quinn_client(cert, async_echo::ALPN);
        let conn = quinn_connect(&client, ep.local_addr().unwrap()).await;
        let go = |conn: quinn::Connection| async move {
            let mut s = conn.open_uni().await.unwrap();
            s.write_all(b"go").await.unwrap();
            s.finish().unwrap();
        };
        // A clean end: the data and its end acknowledged before the server reads.
        let (mut send, _recv) = conn.open_bi().await.unwrap();
        send.write_all(b"hello").await.unwrap();
        send.finish().unwrap();
        guard("acknowledged", send.stopped()).await.unwrap();
        go(conn.clone()).await;
        // A reset after data.
        let (mut send, _recv2) = conn.open_bi().await.unwrap();
        send.write_all(b"bye").await.unwrap();
        send.reset(VarInt::from_u32(7)).unwrap();
        go(conn.clone()).await;
        let mut report = guard("the report", conn.accept_uni()).await.unwrap();
        let report = String::from_utf8(report.read_to_end(1 << 10).await.unwrap()).unwrap();
        let lines: Vec<&str> = report.lines().collect();
        assert_eq!(lines[0], "hello|Ok(None)|Ok(None)", "{mode:?}");
        // The reset may come before the data was read: the data then goes (as in quinn).
        assert!(
            lines[1] == "bye|Err(Reset(7))|Ok(None)" || lines[1] == "|Err(Reset(7))|Ok(None)",
            "{mode:?}: {}",
            lines[1]
        );
        conn.close(VarInt::from_u32(0), b"");
        ep.close(VarInt::from_u32(0), b"");
        guard("idle", ep.wait_idle()).await;
    }
}

/// Sets a flag when woken.
struct Flag(std::sync::atomic::AtomicBool);

impl Flag {
    /// Waits until it is set (within the hang guard).
    async fn raised(&self, what: &str) {
        guard(what, async {
            while !self.0.load(std::sync::atomic::Ordering::Acquire) {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await
    }
}

impl std::task::Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }
}

/// Two openers wait for the peer's one stream; the worker opens one for the first, which is
/// then dropped before it looks: the second gets that stream. (Before, the first's drop
/// withdrew the second's request and left the stream unclaimed, and the second waited for
/// good.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_dropped_after_its_stream_came_hands_it_to_the_next() {
    for mode in MODES {
        let (server, cert) = one_stream_quinn_server(quinn_echo_stream);
        let addr = server.local_addr().unwrap();
        let back = with_client(mode, cert, move |ep| async move {
            let conn = ep.connect(addr, "localhost").unwrap().await.unwrap();
            let (mut send, mut recv) = conn.open_bi().await.unwrap();
            let flag = Arc::new(Flag(std::sync::atomic::AtomicBool::new(false)));
            let waker = std::task::Waker::from(flag.clone());
            let mut first = Box::pin(conn.open_bi());
            let mut cx = std::task::Context::from_waker(&waker);
            assert!(
                first.as_mut().poll(&mut cx).is_pending(),
                "the one stream is busy"
            );
            // The busy stream ends: the peer's credit comes back, the worker opens a stream
            // for the first opener and wakes it.
            send.write_all(b"first").await.unwrap();
            send.finish().unwrap();
            let mut back = recv.read_to_end(1 << 10).await.unwrap();
            flag.raised("the first opener woken").await;
            // The second opener, a task of its own: once it has asked, it waits until woken.
            let asked = Arc::new(Flag(std::sync::atomic::AtomicBool::new(false)));
            let (c2, a2) = (conn.clone(), asked.clone());
            let second = tokio::spawn(async move {
                let mut open = std::pin::pin!(c2.open_bi());
                std::future::poll_fn(|cx| {
                    let r = open.as_mut().poll(cx);
                    a2.0.store(true, std::sync::atomic::Ordering::Release);
                    r
                })
                .await
            });
            asked.raised("the second opener asked").await;
            drop(first);
            let (mut send, mut recv) = guard("the second opener", second).await.unwrap().unwrap();
            send.write_all(b"second").await.unwrap();
            send.finish().unwrap();
            back.extend(recv.read_to_end(1 << 10).await.unwrap());
            conn.close(VarInt::from_u32(0), b"");
            back
        })
        .await;
        assert_eq!(back, b"firstsecond", "{mode:?}");
        server.close(VarInt::from_u32(0), b"");
    }
}

/// An attempt accepted after `Endpoint::close` is refused, so that `wait_idle` does not
/// wait for a connection that came after the close (quinn closes those too). (Before, it was
/// accepted and lived on.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_attempt_accepted_after_the_close_is_refused() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let app = move |ep: Endpoint| {
        let tx = tx.clone();
        async move {
            if let Some(incoming) = ep.accept().await {
                ep.close(VarInt::from_u32(0), b"closing");
                let _ = tx.send(incoming.await.map(|_| ()));
            }
        }
    };
    let (ep, cert) = server(Mode::AppRuntime, 1, Limits::default(), app);
    let client = quinn_client(cert, async_echo::ALPN);
    let connecting = client
        .connect(ep.local_addr().unwrap(), "localhost")
        .unwrap();
    let got = guard("the client's attempt", connecting).await;
    assert!(got.is_err(), "the attempt was served after the close");
    let served = guard("the server's accept", rx.recv()).await.unwrap();
    assert!(served.is_err(), "{served:?}");
    guard("idle", ep.wait_idle()).await;
}

/// Limits that would stall every stream or refuse every connection are refused at bind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_of_zero_are_refused() {
    let (id, _) = identity();
    let engine =
        EngineBuilder::default().server(tls::server_config(id, &[async_echo::ALPN]).unwrap());
    let limits = Limits {
        stream_receive: 0,
        ..Limits::default()
    };
    let bound = Builder::new(engine)
        .limits(limits)
        .bind_udp("127.0.0.1:0".parse().unwrap());
    let Err(e) = bound else {
        panic!("limits of 0 were taken");
    };
    assert!(e.to_string().contains("stream_receive"), "{e}");

    let (id, _) = identity();
    let engine =
        EngineBuilder::default().server(tls::server_config(id, &[async_echo::ALPN]).unwrap());
    let bound = Builder::new(engine)
        .thread_per_core(async_echo::serve)
        .tasks_per_turn(0)
        .bind_udp("127.0.0.1:0".parse().unwrap());
    let Err(e) = bound else {
        panic!("0 tasks per turn was taken");
    };
    assert!(e.to_string().contains("tasks_per_turn"), "{e}");
}

/// The streams as tokio's `AsyncRead` and `AsyncWrite`, as quinn code uses them: the server
/// reads each request with `read_buf` into spare capacity that was never initialized, and
/// answers with `write_all` and `shutdown` (which finishes the stream); 1 MB echoed
/// byte-exact to a quinn client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_streams_serve_as_tokio_async_read_and_write() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    for mode in MODES {
        let app = |ep: Endpoint| async move {
            while let Some(incoming) = ep.accept().await {
                tokio::spawn(async move {
                    let conn = incoming.await.unwrap();
                    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                        tokio::spawn(async move {
                            let mut got = bytes::BytesMut::with_capacity(64 << 10);
                            loop {
                                if got.capacity() == got.len() {
                                    got.reserve(64 << 10);
                                }
                                if recv.read_buf(&mut got).await.unwrap() == 0 {
                                    break;
                                }
                            }
                            send.write_all(&got).await.unwrap();
                            send.shutdown().await.unwrap();
                        });
                    }
                });
            }
        };
        let (ep, cert) = server(mode, 1, Limits::default(), app);
        quinn_echoes_1_mb_then_closes(ep, cert, 11, &format!("{mode:?}: AsyncRead/AsyncWrite"))
            .await;
    }
}

/// `Connection::stats` after the peer closed the connection gives the final figures: the
/// whole 100 KB answer counted as sent (they were those of the batch that queued it, taken
/// before its packets left).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_after_the_peer_closed_are_final() {
    for mode in MODES {
        let (ep, cert, rx) = first_connection_server(mode, Limits::default());
        let client = quinn_client(cert, async_echo::ALPN);
        let conn = quinn_connect(&client, ep.local_addr().unwrap()).await;
        let (mut s, mut r) = conn.open_bi().await.unwrap();
        s.finish().unwrap();
        let ours = first_connection(&rx).await;
        let server = tokio::spawn(async move {
            let (mut send, recv) = ours.accept_bi().await.unwrap();
            drop(recv);
            send.write_all(&[7u8; 100_000]).await.unwrap();
            send.finish().unwrap();
            let _ = ours.closed().await;
            ours.stats()
        });
        let got = guard("100 KB", r.read_to_end(1 << 20)).await.unwrap();
        assert_eq!(got.len(), 100_000);
        conn.close(VarInt::from_u32(0), b"done");
        let stats = guard("the server's stats", server).await.unwrap();
        assert!(
            stats.udp_tx.bytes >= 100_000,
            "{mode:?}: {} octets counted as sent",
            stats.udp_tx.bytes
        );
        ep.close(VarInt::from_u32(0), b"");
        guard("idle", ep.wait_idle()).await;
    }
}

/// `SendStream::stopped` asked after the connection ended still says how the sending side
/// had ended, as quinn's does: `Ok(None)` for a response the peer acknowledged, the peer's
/// code for a stream it stopped (both said `ConnectionLost` once the receiving side's handle
/// was gone). And `write_chunks` that cannot write after the close says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_after_the_close_says_how_the_stream_had_ended() {
    for mode in MODES {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = move |ep: Endpoint| {
            let tx = tx.clone();
            async move {
                let Some(incoming) = ep.accept().await else {
                    return;
                };
                let conn = incoming.await.unwrap();
                // A: answered and finished. B: read, then left open (the client stops it).
                let (mut a, mut recv) = conn.accept_bi().await.unwrap();
                let req = recv.read_to_end(1 << 10).await.unwrap();
                drop(recv);
                a.write_all(&req).await.unwrap();
                a.finish().unwrap();
                let (mut b, mut recv) = conn.accept_bi().await.unwrap();
                recv.read_to_end(1 << 10).await.unwrap();
                drop(recv);
                // C: a round trip after the client acknowledged A and stopped B.
                let (mut c, mut recv) = conn.accept_bi().await.unwrap();
                let req = recv.read_to_end(1 << 10).await.unwrap();
                drop(recv);
                c.write_all(&req).await.unwrap();
                c.finish().unwrap();
                let _ = conn.closed().await;
                let a = a.stopped().await.map_err(|e| e.to_string());
                let b_stopped = b.stopped().await.map_err(|e| e.to_string());
                let mut chunks = [Bytes::from_static(b"late")];
                let b_write = b.write_chunks(&mut chunks).await.map_err(|e| e.to_string());
                let _ = tx.send((a, b_stopped, b_write));
            }
        };
        let (ep, cert) = server(mode, 1, Limits::default(), app);
        let client = quinn_client(cert, async_echo::ALPN);
        let conn = quinn_connect(&client, ep.local_addr().unwrap()).await;
        guard("three streams", async {
            let (mut s, mut r) = conn.open_bi().await.unwrap();
            s.write_all(b"a").await.unwrap();
            s.finish().unwrap();
            assert_eq!(r.read_to_end(10).await.unwrap(), b"a");
            let (mut s, mut r) = conn.open_bi().await.unwrap();
            s.write_all(b"b").await.unwrap();
            s.finish().unwrap();
            r.stop(VarInt::from_u32(7)).unwrap();
            let (mut s, mut r) = conn.open_bi().await.unwrap();
            s.write_all(b"c").await.unwrap();
            s.finish().unwrap();
            assert_eq!(r.read_to_end(10).await.unwrap(), b"c");
        })
        .await;
        conn.close(VarInt::from_u32(0), b"done");
        let (a, b_stopped, b_write) = guard("the server's answers", rx.recv()).await.unwrap();
        assert_eq!(a, Ok(None), "{mode:?}: A was acknowledged");
        assert_eq!(
            b_stopped,
            Ok(Some(VarInt::from_u32(7))),
            "{mode:?}: B was stopped with 7"
        );
        assert!(b_write.is_err(), "{mode:?}: {b_write:?}");
        ep.close(VarInt::from_u32(0), b"");
        guard("idle", ep.wait_idle()).await;
    }
}

/// A future that is always ready to run again: it wakes itself at every poll, so the
/// runtime's queue of ready tasks never empties.
struct Spin;

impl Future for Spin {
    type Output = ();
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<()> {
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    }
}

/// In thread-per-core mode a task that is ready without end (started with `tokio::spawn`,
/// so on the runtime's queue, which then never empties) does not starve the worker it
/// shares a thread with: the echo server beside it answers, with the default
/// `tasks_per_turn` and with a turn after every poll. (A check that the turns are bounded,
/// not of how often they come: the bench measures what the setting is for.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_ready_without_end_does_not_starve_its_worker() {
    for polls in [xdp_quic::tokio::DEFAULT_TASKS_PER_TURN, 1] {
        let (id, cert) = identity();
        let engine = EngineBuilder::default()
            .workers(1)
            .server(tls::server_config(id, &[async_echo::ALPN]).unwrap())
            .transport(transport())
            .drain_timeout(DRAIN);
        let ep = Builder::new(engine)
            .tasks_per_turn(polls)
            .thread_per_core(|ep: Endpoint| {
                tokio::spawn(Spin);
                async_echo::serve(ep)
            })
            .bind_udp("127.0.0.1:0".parse().unwrap())
            .unwrap();
        let what = format!("{polls} polls per turn, beside a spinning task");
        quinn_echoes_1_mb_then_closes(ep, cert, u64::from(polls), &what).await;
    }
}

/// After `Endpoint::close`, the tasks of its connections hear `LocallyClosed` as quinn's do:
/// a waiting `accept_bi` ends, writes fail, `close_reason` says so (before, they went on
/// as if open until the close's drain had ended, and a write in between said Ok).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closing_the_endpoint_ends_what_its_tasks_wait_for() {
    for mode in MODES {
        let (ep, cert, rx) = first_connection_server(mode, Limits::default());
        let client = quinn_client(cert, async_echo::ALPN);
        let qc = quinn_connect(&client, ep.local_addr().unwrap()).await;
        let (mut qsend, _qrecv) = qc.open_bi().await.unwrap();
        qsend.write_all(b"hi").await.unwrap();
        let conn = first_connection(&rx).await;
        let (mut send, _recv) = guard("the client's stream", conn.accept_bi())
            .await
            .unwrap();
        let waiting = {
            let conn = conn.clone();
            tokio::spawn(async move { conn.accept_bi().await.map(|_| ()) })
        };
        ep.close(VarInt::from_u32(7), b"bye");
        let accepted = guard("the waiting accept", waiting).await.unwrap();
        assert!(
            matches!(accepted, Err(xdp_quic::ConnectionError::LocallyClosed)),
            "{mode:?}: {accepted:?}"
        );
        assert!(
            matches!(
                conn.close_reason(),
                Some(xdp_quic::ConnectionError::LocallyClosed)
            ),
            "{mode:?}: {:?}",
            conn.close_reason()
        );
        let wrote = send.write_all(b"late").await;
        assert!(
            matches!(
                wrote,
                Err(xdp_quic::tokio::WriteError::ConnectionLost(
                    xdp_quic::ConnectionError::LocallyClosed
                ))
            ),
            "{mode:?}: {wrote:?}"
        );
        guard("idle", ep.wait_idle()).await;
    }
}

/// A server (one worker, `limits`) whose application hands its first connection to the
/// test, through the receiver ([`first_connection`]).
fn first_connection_server(
    mode: Mode,
    limits: Limits,
) -> (
    Endpoint,
    CertificateDer<'static>,
    std::sync::mpsc::Receiver<xdp_quic::tokio::Connection>,
) {
    let (tx, rx) = std::sync::mpsc::channel::<xdp_quic::tokio::Connection>();
    let tx = std::sync::Mutex::new(tx);
    let (ep, cert) = server(mode, 1, limits, move |ep: Endpoint| {
        let tx = tx.lock().unwrap().clone();
        async move {
            if let Some(incoming) = ep.accept().await {
                let _ = tx.send(incoming.await.unwrap());
            }
        }
    });
    (ep, cert, rx)
}

/// The connection a [`first_connection_server`] hands over, once it has it.
async fn first_connection(
    rx: &std::sync::mpsc::Receiver<xdp_quic::tokio::Connection>,
) -> xdp_quic::tokio::Connection {
    guard("the server's connection", async {
        loop {
            if let Ok(c) = rx.try_recv() {
                break c;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
}

/// Streams the peer opened and finished before it closed the connection are still handed
/// out by `accept_uni`, with their data, as quinn does (before, the close emptied the accept
/// queue: the last request of a client that closed at once was lost).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_the_peer_sent_before_closing_are_still_accepted() {
    for mode in MODES {
        let (ep, cert, rx) = first_connection_server(mode, Limits::default());
        let client = quinn_client(cert, async_echo::ALPN);
        let qc = quinn_connect(&client, ep.local_addr().unwrap()).await;
        let mut s = qc.open_uni().await.unwrap();
        s.write_all(b"bye").await.unwrap();
        s.finish().unwrap();
        guard("the server took the stream", s.stopped())
            .await
            .unwrap();
        qc.close(VarInt::from_u32(9), b"done");
        let conn = first_connection(&rx).await;
        guard("the server hears the close", conn.closed()).await;
        let mut recv = guard("the stream sent before the close", conn.accept_uni())
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        let got = recv.read_to_end(100).await.unwrap();
        assert_eq!(got, b"bye", "{mode:?}");
        assert!(conn.accept_uni().await.is_err(), "{mode:?}: then the close");
        drop(recv);
        drop(conn);
        ep.close(VarInt::from_u32(0), b"");
        guard("idle", ep.wait_idle()).await;
    }
}

/// What the peer sent before closing, and saw acknowledged, but the application had not read
/// yet, is still read after the close, all of it, also past the stream's receive limit (the
/// worker pauses a stream there, and the rest waits in quinn-proto): on a stream the
/// application reads, and on one it accepts only after the close. (Before, the close dropped
/// what quinn-proto still held: `read_to_end` failed with the connection's error.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_acknowledged_before_the_peer_closed_is_read_whole() {
    const LEN: usize = 300_000;
    for mode in MODES {
        let limits = Limits {
            stream_receive: 16 << 10,
            ..Limits::default()
        };
        let (ep, cert, rx) = first_connection_server(mode, limits);
        let client = quinn_client(cert, async_echo::ALPN);
        let qc = quinn_connect(&client, ep.local_addr().unwrap()).await;
        let conn = first_connection(&rx).await;
        let (data_bi, data_uni) = (payload(31, LEN), payload(32, LEN));
        let (mut bi, _bi_back) = qc.open_bi().await.unwrap();
        bi.write_all(&data_bi[..1]).await.unwrap();
        // The application accepts the bidirectional stream before the close, and reads it
        // only after.
        let (_send, mut read_later) = guard("the first stream", conn.accept_bi()).await.unwrap();
        bi.write_all(&data_bi[1..]).await.unwrap();
        bi.finish().unwrap();
        let mut uni = qc.open_uni().await.unwrap();
        uni.write_all(&data_uni).await.unwrap();
        uni.finish().unwrap();
        guard("all of it acknowledged", async {
            bi.stopped().await.unwrap();
            uni.stopped().await.unwrap();
        })
        .await;
        qc.close(VarInt::from_u32(9), b"done");
        guard("the server hears the close", conn.closed()).await;
        let got = read_later
            .read_to_end(LEN)
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: the stream read after the close: {e}"));
        assert_same(&format!("{mode:?}: bidi"), &got, &data_bi);
        let mut recv = guard("the stream accepted after the close", conn.accept_uni())
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: {e}"));
        let got = recv
            .read_to_end(LEN)
            .await
            .unwrap_or_else(|e| panic!("{mode:?}: the stream accepted after the close: {e}"));
        assert_same(&format!("{mode:?}: uni"), &got, &data_uni);
        drop((read_later, recv, conn));
        ep.close(VarInt::from_u32(0), b"");
        guard("idle", ep.wait_idle()).await;
    }
}

/// A connection is whole when `Connecting` resolves: what the handshake settled (the peer's
/// datagram support, the RTT, the remote address) is known at once, also to a task on
/// another thread than the worker's. (Before, the worker woke the task before it filled
/// these in: a `send_datagram` at once could fail with `UnsupportedByPeer`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_the_handshake_settled_is_known_when_the_connection_resolves() {
    for mode in MODES {
        let (ep, cert) = echo_server(mode);
        let server = ep.local_addr().unwrap();
        with_client(mode, cert, move |client: Endpoint| async move {
            for round in 0..50 {
                let conn = client.connect(server, "localhost").unwrap().await.unwrap();
                assert!(
                    conn.max_datagram_size().is_some(),
                    "{mode:?} round {round}: datagrams"
                );
                assert_eq!(conn.remote_address(), server, "{mode:?} round {round}");
                conn.close(VarInt::from_u32(0), b"");
            }
        })
        .await;
        ep.close(VarInt::from_u32(0), b"");
        guard("idle", ep.wait_idle()).await;
    }
}

/// An endpoint whose transport turns datagrams off refuses to send one with `Disabled`, as
/// quinn does, though its peer takes them (it said Ok, and the worker dropped the datagram).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_datagram_says_disabled_when_this_endpoint_turned_datagrams_off() {
    for mode in MODES {
        let mut t = transport();
        t.datagram_receive_buffer_size(None);
        let (tx, mut rx) = mpsc::unbounded_channel();
        let app = move |ep: Endpoint| {
            let tx = tx.clone();
            async move {
                while let Some(incoming) = ep.accept().await {
                    let conn = incoming.await.unwrap();
                    let _ = tx.send((
                        conn.send_datagram(Bytes::from_static(b"x")),
                        conn.max_datagram_size(),
                    ));
                }
            }
        };
        let (ep, cert) = server_with(mode, 1, Limits::default(), t, app);
        let client = quinn_client(cert, async_echo::ALPN);
        let conn = quinn_connect(&client, ep.local_addr().unwrap()).await;
        assert!(
            conn.max_datagram_size().is_none(),
            "{mode:?}: the server takes none"
        );
        let (sent, max) = guard("the server's send_datagram", rx.recv())
            .await
            .unwrap();
        assert!(max.is_some(), "{mode:?}: quinn takes datagrams");
        assert_eq!(
            sent,
            Err(xdp_quic::tokio::SendDatagramError::Disabled),
            "{mode:?}"
        );
        conn.close(VarInt::from_u32(0), b"");
        ep.close(VarInt::from_u32(0), b"");
        guard("idle", ep.wait_idle()).await;
    }
}

/// A connection counts among the endpoint's open ones from `connect` (and from an
/// `Incoming`'s accept) on, as in quinn: a `wait_idle` right after waits for it, and
/// returns once it has ended. (Before, it counted once its worker had it: a `wait_idle`
/// right after `connect` could return at once, with the connection about to open.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_counts_from_connect_on() {
    for mode in MODES {
        let (ep, cert) = echo_server(mode);
        let server = ep.local_addr().unwrap();
        with_client(mode, cert, move |client: Endpoint| async move {
            for round in 0..20 {
                let connecting = client.connect(server, "localhost").unwrap();
                assert_eq!(client.open_connections(), 1, "{mode:?} round {round}");
                let conn = tokio::select! {
                    biased;
                    _ = client.wait_idle() => panic!("{mode:?} round {round}: idle while connecting"),
                    c = connecting => c.unwrap(),
                };
                conn.close(VarInt::from_u32(0), b"");
                client.wait_idle().await;
                assert_eq!(client.open_connections(), 0, "{mode:?} round {round}");
            }
        })
        .await;
        ep.close(VarInt::from_u32(0), b"");
        guard("idle", ep.wait_idle()).await;
    }
}
