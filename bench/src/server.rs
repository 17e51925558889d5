//! The servers under test, each run as a child process of the bench (so that its CPU time and
//! memory are its own), inside the testbed's server namespace, pinned and at raised priority:
//!
//! * `quinn`: the bench's application on quinn 0.11 and tokio (quinn-udp: GSO/GRO), the
//!   baseline users have today;
//! * `udp`: xdp-quic over kernel UDP (SO_REUSEPORT workers, CID steering);
//! * `xdp-kernel`, `xdp-xsk`: xdp-quic over AF_XDP (native XDP, the program attached by the
//!   server), transmitting through the kernel's UDP path (GSO; what `--tx auto` picks on a
//!   copy-mode socket such as veth's) or on the AF_XDP TX ring;
//! * `xdp-skb`: AF_XDP under generic (skb) XDP, transmitting through the kernel;
//! * `async-rt`, `async-tpc`: xdp-quic over kernel UDP through its async API
//!   (`xdp_quic::tokio`), in the application's runtime (a tokio runtime on threads of its own)
//!   or thread-per-core (each worker runs the application's tasks on its own thread).
//!
//! Every one runs [`crate::app`]: perf on bidirectional streams, ingest on unidirectional. The
//! quinn server and the async-API servers run the very same source ([`perf_app!`]): the async
//! API is quinn's shape, a port by import.
//! The child prints `ready` once it serves; then each `stats` line on its stdin gets one JSON
//! line back ([`ServerStats`]), and `stop` (or the end of stdin) shuts it down.

use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use xdp_quic::backend::xsk::TxMode;
use xdp_quic::{tls, EngineBuilder, RetryPolicy, VarInt, XdpSetup};
use xdp_quic_control::xdp::{socket_map::ServerSteering, AttachMode};

use crate::app::{AppCounters, AppStats, BenchApp};

/// How the application of the async servers (quinn's and `xdp_quic::tokio`'s: one source)
/// gives out its tasks. The callback engine's application has none.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AppTasks {
    /// A task per stream, as quinn's own perf server and most quinn servers do.
    #[default]
    Stream,
    /// A task per connection that serves its streams in turn, as issue 15's example does (a
    /// stream that has all its request in hand is answered at once, so in-turn costs no
    /// throughput on these workloads; only tokio's task per stream is saved).
    Connection,
}

impl AppTasks {
    /// The `--app-tasks` argument.
    pub fn arg(self) -> &'static str {
        match self {
            AppTasks::Stream => "stream",
            AppTasks::Connection => "connection",
        }
    }
}

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Quinn,
    Udp,
    XdpKernel,
    XdpXsk,
    XdpSkb,
    AsyncRt,
    AsyncTpc,
}

impl Kind {
    /// The name in tables.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Quinn => "quinn",
            Kind::Udp => "xdp-quic UDP",
            Kind::XdpKernel => "AF_XDP tx=kernel (auto)",
            Kind::XdpXsk => "AF_XDP tx=xsk",
            Kind::XdpSkb => "AF_XDP skb XDP, tx=kernel",
            Kind::AsyncRt => "async API, app runtime (UDP)",
            Kind::AsyncTpc => "async API, thread-per-core (UDP)",
        }
    }

    /// Whether this is a server of the async API (issue 15's rows).
    pub fn is_async(self) -> bool {
        matches!(self, Kind::AsyncRt | Kind::AsyncTpc)
    }

    /// The short name in plots.
    pub fn short(self) -> &'static str {
        match self {
            Kind::Quinn => "quinn",
            Kind::Udp => "UDP",
            Kind::XdpKernel => "XDP kernel",
            Kind::XdpXsk => "XDP xsk",
            Kind::XdpSkb => "XDP skb",
            Kind::AsyncRt => "async rt",
            Kind::AsyncTpc => "async tpc",
        }
    }

    /// The `--kind` argument of the child.
    pub fn arg(self) -> &'static str {
        match self {
            Kind::Quinn => "quinn",
            Kind::Udp => "udp",
            Kind::XdpKernel => "xdp-kernel",
            Kind::XdpXsk => "xdp-xsk",
            Kind::XdpSkb => "xdp-skb",
            Kind::AsyncRt => "async-rt",
            Kind::AsyncTpc => "async-tpc",
        }
    }
}

/// Arguments of the hidden `server` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct ServerArgs {
    #[arg(long, value_enum)]
    pub kind: Kind,
    #[arg(long)]
    pub netns: String,
    #[arg(long)]
    pub iface: String,
    #[arg(long)]
    pub listen: SocketAddr,
    #[arg(long)]
    pub workers: usize,
    #[arg(long)]
    pub retry: bool,
    #[arg(long)]
    pub cert: PathBuf,
    #[arg(long)]
    pub key: PathBuf,
    /// CPU the server runs on.
    #[arg(long)]
    pub cpu: usize,
    /// The async servers' tasks.
    #[arg(long, value_enum, default_value_t)]
    pub app_tasks: AppTasks,
}

/// A server's answer to `stats`.
#[derive(Debug, Clone, Copy, Default, serde::Serialize, serde::Deserialize)]
pub struct ServerStats {
    pub app: AppStats,
    /// xdp-quic: the workers' busy time (turns that moved packets; adaptive spin excluded),
    /// summed over workers. quinn: 0.
    pub busy_s: f64,
}

/// Runs a server until `stop` or the end of stdin.
pub fn run(a: &ServerArgs) -> anyhow::Result<()> {
    xdp_quic_control::xdp::netns::enter(&a.netns)?;
    crate::sys::pin_and_prioritize(a.cpu)?;
    let counters = Arc::new(AppCounters::default());
    match a.kind {
        Kind::Quinn => quinn_server(a, counters),
        Kind::AsyncRt | Kind::AsyncTpc => async_server(a, counters),
        _ => ours(a, counters),
    }
}

/// Prints `ready`, answers `stats` with `stats()`, returns at `stop` or the end of stdin.
fn serve_commands(stats: impl Fn() -> ServerStats) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        match line?.trim() {
            "stats" => {
                writeln!(out, "{}", serde_json::to_string(&stats())?)?;
                out.flush()?;
            }
            "stop" => break,
            other => anyhow::bail!("unknown command {other:?}"),
        }
    }
    Ok(())
}

/// The engine every xdp-quic server starts from.
fn engine_builder(a: &ServerArgs) -> anyhow::Result<EngineBuilder> {
    let identity = tls::Identity::from_pem_files(&a.cert, &a.key)?;
    let mut b = EngineBuilder::default()
        .workers(a.workers)
        .server(tls::server_config(
            identity,
            &[xdp_quic_examples::perf::ALPN],
        )?)
        .transport(xdp_quic::TransportConfig::default())
        // The connection-scale workload holds 10,000 connections on one worker.
        .max_connections(100_000);
    if a.retry {
        b = b.retry(RetryPolicy::Always);
    }
    Ok(b)
}

fn ours(a: &ServerArgs, counters: Arc<AppCounters>) -> anyhow::Result<()> {
    let b = engine_builder(a)?;
    let app = |_| BenchApp::new(counters.clone());
    let engine = match a.kind {
        Kind::Udp => b.start_udp(a.listen, app)?,
        _ => {
            let mode = if a.kind == Kind::XdpSkb {
                AttachMode::Skb
            } else {
                AttachMode::Native
            };
            let steering = ServerSteering::for_server(&a.iface, a.listen, mode)?;
            let queues = (0..a.workers as u32).collect();
            let mut setup = XdpSetup::new(&a.iface, a.listen, queues);
            setup.tx = if a.kind == Kind::XdpXsk {
                TxMode::Xsk
            } else {
                TxMode::Kernel
            };
            b.start_xdp(&setup, Box::new(steering), app)?
        }
    };
    let handle = engine.handle();
    serve_commands(|| ServerStats {
        app: counters.snapshot(),
        busy_s: handle
            .metrics()
            .iter()
            .map(|m| m.snapshot().busy_ns as f64 / 1e9)
            .sum(),
    })?;
    engine.shutdown(VarInt::from_u32(0), b"bench done")?;
    Ok(())
}

fn quinn_server(a: &ServerArgs, counters: Arc<AppCounters>) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(a.workers)
        .enable_all()
        .build()?;
    let certs = tls::certs_from_pem_file(&a.cert)?;
    let key = {
        use rustls::pki_types::pem::PemObject;
        rustls::pki_types::PrivateKeyDer::from_pem_file(&a.key).context("reading the key")?
    };
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])?
    .with_no_client_auth()
    .with_single_cert(certs, key)?;
    tls.alpn_protocols = vec![xdp_quic_examples::perf::ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)?;
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let retry = a.retry;
    // The socket buffers ours get (`UdpBackend::new`), so that neither side's bursts are
    // cut by a smaller buffer than the other's.
    let socket = std::net::UdpSocket::bind(a.listen)?;
    xdp_quic::backend::sockbuf::grow(&socket, xdp_quic::backend::sockbuf::SOCKET_BUFFER);
    let endpoint = {
        let _guard = rt.enter();
        quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            Some(config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )?
    };
    rt.spawn(quinn_app::serve(
        endpoint.clone(),
        retry,
        a.app_tasks,
        counters.clone(),
    ));
    serve_commands(|| ServerStats {
        app: counters.snapshot(),
        busy_s: 0.0,
    })?;
    rt.block_on(async {
        endpoint.close(0u32.into(), b"bench done");
        endpoint.wait_idle().await;
    });
    Ok(())
}

/// xdp-quic's async API: the engine's workers (one per queue, on the server's core) with the
/// application's tasks either in a tokio runtime of their own threads (`async-rt`, one
/// thread per worker, on the same core) or on the workers' threads (`async-tpc`).
fn async_server(a: &ServerArgs, counters: Arc<AppCounters>) -> anyhow::Result<()> {
    use xdp_quic::tokio::Builder;
    let b = Builder::new(engine_builder(a)?);
    let retry = false;
    let tasks = a.app_tasks;
    let (endpoint, rt) = if a.kind == Kind::AsyncTpc {
        let c = counters.clone();
        let ep = b
            .thread_per_core(move |ep| async_app::serve(ep, retry, tasks, c.clone()))
            .bind_udp(a.listen)?;
        // Only to wait for the end at `stop`.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        (ep, rt)
    } else {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(a.workers)
            .enable_all()
            .build()?;
        let ep = b.bind_udp(a.listen)?;
        rt.spawn(async_app::serve(ep.clone(), retry, tasks, counters.clone()));
        (ep, rt)
    };
    serve_commands(|| ServerStats {
        app: counters.snapshot(),
        busy_s: 0.0,
    })?;
    rt.block_on(async {
        endpoint.close(0u32.into(), b"bench done");
        endpoint.wait_idle().await;
    });
    Ok(())
}

/// The bench's application on a quinn-shaped async API, for quinn and for xdp-quic's
/// `xdp_quic::tokio` alike: one source, ported by the import.
macro_rules! perf_app {
    ($module:ident, $($api:ident)::+) => {
        mod $module {
            use std::sync::atomic::Ordering::Relaxed;
            use std::sync::Arc;

            use crate::app::{AppCounters, IngestCheck, INGEST_SIZE};
            use crate::server::AppTasks;
            use $($api)::+ as api;

            /// Accepts connections (asking for Retry first if `retry`), each served by tasks
            /// of its own: two (its bidirectional and its unidirectional streams), and one
            /// more per stream with [`AppTasks::Stream`].
            pub async fn serve(
                ep: api::Endpoint,
                retry: bool,
                tasks: AppTasks,
                counters: Arc<AppCounters>,
            ) {
                while let Some(incoming) = ep.accept().await {
                    if retry && !incoming.remote_address_validated() {
                        let _ = incoming.retry();
                        continue;
                    }
                    let c = counters.clone();
                    tokio::spawn(async move {
                        if let Ok(conn) = incoming.await {
                            tokio::spawn(serve_ingest(conn.clone(), tasks, c.clone()));
                            serve_perf(conn, tasks, c).await;
                        }
                    });
                }
            }

            /// The perf protocol: per stream, the 8-octet size, the upload to its end, then
            /// that many octets back.
            async fn serve_perf(conn: api::Connection, tasks: AppTasks, counters: Arc<AppCounters>) {
                while let Ok((send, recv)) = conn.accept_bi().await {
                    let request = serve_request(send, recv, counters.clone());
                    match tasks {
                        AppTasks::Stream => drop(tokio::spawn(request)),
                        AppTasks::Connection => request.await,
                    }
                }
            }

            async fn serve_request(
                mut send: api::SendStream,
                mut recv: api::RecvStream,
                counters: Arc<AppCounters>,
            ) {
                static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
                let mut header = [0u8; 8];
                if recv.read_exact(&mut header).await.is_err() {
                    return;
                }
                let mut received = 8u64;
                while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
                    received += chunk.bytes.len() as u64;
                }
                counters.received.fetch_add(received, Relaxed);
                // Without copying, like xdp-quic's perf server: the stack keeps references to
                // the static buffer.
                let mut left = u64::from_be_bytes(header);
                while left > 0 {
                    let n = left.min(ZEROS.len() as u64) as usize;
                    if send
                        .write_chunk(bytes::Bytes::from_static(&ZEROS[..n]))
                        .await
                        .is_err()
                    {
                        return;
                    }
                    left -= n as u64;
                }
                if send.finish().is_ok() {
                    counters.requests.fetch_add(1, Relaxed);
                }
            }

            /// Ingest: each unidirectional stream read to its end, checked, counted, dropped.
            async fn serve_ingest(conn: api::Connection, tasks: AppTasks, counters: Arc<AppCounters>) {
                while let Ok(recv) = conn.accept_uni().await {
                    let ingest = ingest_stream(recv, counters.clone());
                    match tasks {
                        AppTasks::Stream => drop(tokio::spawn(ingest)),
                        AppTasks::Connection => ingest.await,
                    }
                }
            }

            async fn ingest_stream(mut recv: api::RecvStream, counters: Arc<AppCounters>) {
                let index = recv.id().index();
                let mut check = IngestCheck::default();
                let c = loop {
                    match recv.read_chunk(INGEST_SIZE, true).await {
                        Ok(Some(chunk)) => check.take(index, &chunk.bytes),
                        Ok(None) if check.intact() => break &counters.ingested,
                        Ok(None) => break &counters.ingest_bad,
                        Err(_) => break &counters.ingest_cut,
                    }
                };
                c.fetch_add(1, Relaxed);
            }
        }
    };
}

perf_app!(quinn_app, quinn);
perf_app!(async_app, xdp_quic::tokio);
