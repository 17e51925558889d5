//! `async-echo`: the echo server of [`xdp_quic_examples::async_echo`] on the async API, over
//! kernel UDP or AF_XDP, in the application's runtime or thread-per-core.
//!
//! ```text
//! async-echo --listen 0.0.0.0:4433                          # kernel UDP, tokio runtime
//! async-echo --listen 0.0.0.0:4433 --thread-per-core        # a runtime on each worker
//! async-echo --listen 0.0.0.0:4433 --backend xdp --iface eth1   # AF_XDP, every RX queue
//! ```
//!
//! ALPN `echo`; every bidirectional stream and datagram is echoed. Without `--cert` and
//! `--key` it serves a fresh self-signed certificate for `localhost`, written (PEM) to
//! `--cert-out` if given so that clients can trust it. Ctrl-C closes the endpoint and waits
//! for its connections to end.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, ValueEnum};
use xdp_quic::tokio::{Builder, Endpoint};
use xdp_quic::{tls, EngineBuilder, VarInt, XdpSetup};
use xdp_quic_control::xdp::{self, socket_map::ServerSteering, AttachMode, ServiceConfig};
use xdp_quic_examples::async_echo;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    Udp,
    Xdp,
}

#[derive(Debug, Parser)]
#[command(about = "QUIC echo server on xdp-quic's async API")]
struct Args {
    /// Address and port to serve.
    #[arg(long)]
    listen: SocketAddr,
    /// Kernel UDP sockets (one per worker) or AF_XDP (one worker per RX queue of --iface).
    #[arg(long, value_enum, default_value_t = BackendArg::Udp)]
    backend: BackendArg,
    /// AF_XDP: the interface to serve on.
    #[arg(long)]
    iface: Option<String>,
    /// Kernel UDP: the number of workers (default: 1).
    #[arg(long)]
    workers: Option<usize>,
    /// Run the connections' tasks on their worker's thread (a runtime per worker).
    #[arg(long)]
    thread_per_core: bool,
    /// Certificate chain (PEM).
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// Private key (PEM).
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
    /// Where to write the self-signed certificate (PEM) when no --cert is given.
    #[arg(long, conflicts_with = "cert")]
    cert_out: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let identity = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) => tls::Identity::from_pem_files(cert, key)?,
        _ => {
            let id = tls::Identity::self_signed(&["localhost"])?;
            if let Some(out) = &args.cert_out {
                let pem = pem_certificate(&id.chain[0]);
                std::fs::write(out, pem).with_context(|| format!("writing {}", out.display()))?;
            }
            id
        }
    };
    let mut engine =
        EngineBuilder::default().server(tls::server_config(identity, &[async_echo::ALPN])?);
    if let Some(n) = args.workers {
        if args.backend == BackendArg::Xdp {
            bail!("--workers is for --backend udp: AF_XDP runs one worker per RX queue");
        }
        engine = engine.workers(n);
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async move {
        let mut builder = Builder::new(engine);
        if args.thread_per_core {
            builder = builder.thread_per_core(async_echo::serve);
        }
        let (ep, _attachment) = bind(builder, &args)?;
        if !args.thread_per_core {
            tokio::spawn(async_echo::serve(ep.clone()));
        }
        eprintln!(
            "async-echo: serving {} over {:?}{}",
            ep.local_addr()?,
            args.backend,
            if args.thread_per_core {
                ", thread-per-core"
            } else {
                ""
            }
        );
        tokio::signal::ctrl_c().await?;
        eprintln!("async-echo: closing");
        ep.close(VarInt::from_u32(0), b"server stopping");
        ep.wait_idle().await;
        anyhow::Ok(())
    })
}

/// Binds the endpoint; over AF_XDP also attaches the XDP program for the port (held by
/// the returned attachment, removed when it drops).
fn bind(
    builder: Builder,
    args: &Args,
) -> anyhow::Result<(Endpoint, Option<xdp::EmbeddedAttachment>)> {
    match args.backend {
        BackendArg::Udp => {
            if args.iface.is_some() {
                bail!("--iface is for --backend xdp");
            }
            Ok((builder.bind_udp(args.listen)?, None))
        }
        BackendArg::Xdp => {
            let iface = args
                .iface
                .as_deref()
                .context("--backend xdp needs --iface")?;
            // The active channels only, as `xdp-quic serve` takes them.
            let setup = XdpSetup::new(iface, args.listen, xdp::active_queues(iface)?);
            let service = ServiceConfig {
                ports: [args.listen.port()].into(),
                addrs: Default::default(),
            };
            let attachment = xdp::attach_embedded(iface, &service, AttachMode::Native)
                .with_context(|| format!("attaching the XDP program to {iface}"))?;
            let steering = ServerSteering::with_registry(
                attachment.xsks()?,
                "async-echo",
                attachment.prog_id(),
            );
            let ep = builder
                .bind_xdp(&setup, Box::new(steering))
                .with_context(|| format!("starting AF_XDP workers on {iface}"))?;
            Ok((ep, Some(attachment)))
        }
    }
}

/// A DER certificate as PEM text.
fn pem_certificate(der: &[u8]) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", der.to_vec()))
}
