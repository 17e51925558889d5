//! The servers under test, each run as a child process of the bench (so that its CPU time is
//! its own), inside the testbed's server namespace, pinned and at raised priority:
//!
//! * `quinn`: a perf-protocol server on quinn 0.11 and tokio (quinn-udp: GSO/GRO): the
//!   baseline users have today;
//! * `udp`: xdp-quic over kernel UDP (SO_REUSEPORT workers);
//! * `xdp-native`, `xdp-skb`: xdp-quic over AF_XDP, the program attached by the server.
//!
//! The child prints `ready` on stdout once it serves, and shuts down on SIGINT.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use xdp_quic::{tls, EngineBuilder, RetryPolicy, VarInt, XdpSetup};
use xdp_quic_control::metrics::{EngineCollector, MetricsServer};
use xdp_quic_control::xdp::{socket_map::ServerSteering, AttachMode};
use xdp_quic_examples::perf::PerfServer;

/// Which server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Quinn,
    Udp,
    XdpNative,
    XdpSkb,
}

impl Kind {
    /// The name in tables.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Quinn => "quinn",
            Kind::Udp => "xdp-quic UDP",
            Kind::XdpNative => "xdp-quic AF_XDP",
            Kind::XdpSkb => "xdp-quic AF_XDP (skb)",
        }
    }

    /// Whether it is one of ours (it then exposes worker busy time).
    pub fn is_ours(self) -> bool {
        self != Kind::Quinn
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
    /// Metrics endpoint (ours), inside the server namespace.
    #[arg(long)]
    pub metrics: SocketAddr,
    /// CPU the server runs on.
    #[arg(long)]
    pub cpu: usize,
}

/// Runs a server until SIGINT.
pub fn run(a: &ServerArgs) -> anyhow::Result<()> {
    xdp_quic_control::xdp::netns::enter(&a.netns)?;
    crate::sys::pin_and_prioritize(a.cpu)?;
    let (tx, rx) = std::sync::mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })?;
    match a.kind {
        Kind::Quinn => quinn_server(a, rx),
        _ => ours(a, rx),
    }
}

fn ready() {
    use std::io::Write;
    println!("ready");
    let _ = std::io::stdout().flush();
}

fn ours(a: &ServerArgs, stop: std::sync::mpsc::Receiver<()>) -> anyhow::Result<()> {
    let identity = tls::Identity::from_pem_files(&a.cert, &a.key)?;
    let mut b = EngineBuilder::default()
        .workers(a.workers)
        .server(tls::server_config(
            identity,
            &[xdp_quic_examples::perf::ALPN],
        )?)
        .transport(xdp_quic::TransportConfig::default());
    if a.retry {
        b = b.retry(RetryPolicy::Always);
    }
    let (engine, program) = match a.kind {
        Kind::Udp => (b.start_udp(a.listen, |_| PerfServer::default())?, None),
        _ => {
            let mode = if a.kind == Kind::XdpSkb {
                AttachMode::Skb
            } else {
                AttachMode::Native
            };
            let steering = ServerSteering::for_server(&a.iface, a.listen, mode)?;
            let program = steering.counters_reader(&a.iface).ok();
            let queues = (0..a.workers as u32).collect();
            let setup = XdpSetup::new(&a.iface, a.listen, queues);
            let e = b.start_xdp(&setup, Box::new(steering), |_| PerfServer::default())?;
            (e, program)
        }
    };
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(EngineCollector::new(
        if a.kind == Kind::Udp { "udp" } else { "xdp" },
        (a.kind != Kind::Udp).then(|| a.iface.clone()),
        engine.handle().metrics(),
        engine.xsk_queues().to_vec(),
        program,
    )));
    let _metrics = MetricsServer::start(a.metrics, registry)?;
    ready();
    let _ = stop.recv();
    engine.shutdown(VarInt::from_u32(0), b"bench done")?;
    Ok(())
}

fn quinn_server(a: &ServerArgs, stop: std::sync::mpsc::Receiver<()>) -> anyhow::Result<()> {
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
    let listen = a.listen;
    rt.block_on(async move {
        let endpoint = quinn::Endpoint::server(config, listen)?;
        ready();
        let ep = endpoint.clone();
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                if retry && !incoming.remote_address_validated() {
                    let _ = incoming.retry();
                    continue;
                }
                tokio::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        serve_perf(conn).await;
                    }
                });
            }
        });
        tokio::task::spawn_blocking(move || stop.recv()).await.ok();
        endpoint.close(0u32.into(), b"bench done");
        endpoint.wait_idle().await;
        anyhow::Ok(())
    })
}

/// The perf protocol on a quinn connection: per stream, the 8-octet size, the upload to
/// its end, then that many octets back.
async fn serve_perf(conn: quinn::Connection) {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    while let Ok((mut send, mut recv)) = conn.accept_bi().await {
        tokio::spawn(async move {
            let mut header = [0u8; 8];
            if recv.read_exact(&mut header).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(Some(_)) = recv.read(&mut buf).await {}
            // Zero-copy, like xdp-quic's perf server: quinn keeps references to the buffer.
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
            let _ = send.finish();
            let _ = send.stopped().await;
        });
    }
}
