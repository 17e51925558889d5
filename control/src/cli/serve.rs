//! `xdp-quic serve`: run an example application on the engine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};
use xdp_quic::{
    tls, Counters, EngineBuilder, EngineHandle, Handler, RetryPolicy, TransportConfig, VarInt,
};
use xdp_quic_examples::{echo::EchoServer, hq::HqServer, perf::PerfServer};

use super::args::{self, App, BackendArg};

/// Arguments of `xdp-quic serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to serve on (0.0.0.0 or [::] for every address).
    #[arg(long, value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// I/O backend of the workers.
    #[arg(long, value_enum, default_value_t = BackendArg::Udp)]
    pub backend: BackendArg,
    /// Worker threads, one endpoint shard each.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Pin worker i to the i-th CPU of this list (e.g. 0,2-3).
    #[arg(long, value_parser = args::parse_cpus)]
    pub cpus: Option<Vec<usize>>,
    /// The application.
    #[arg(long, value_enum, default_value_t = App::Perf)]
    pub app: App,
    /// Directory the hq application serves.
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// PEM certificate chain (default: a fresh self-signed certificate).
    #[arg(long, value_name = "FILE")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --cert.
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Require a Retry round trip (address validation) from every client.
    #[arg(long)]
    pub retry: bool,
    /// Print the workers' counters every SECS seconds.
    #[arg(long, value_name = "SECS")]
    pub stats_every: Option<u64>,
}

/// Transport parameters of the examples: many streams, datagrams on.
pub fn transport() -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(1024));
    t.max_concurrent_uni_streams(VarInt::from_u32(128));
    t.datagram_receive_buffer_size(Some(1 << 20));
    t
}

/// A server engine's builder for `a`.
pub fn builder(a: &ServeArgs) -> anyhow::Result<EngineBuilder> {
    if a.workers == 0 || a.workers > 256 {
        bail!("--workers must be between 1 and 256");
    }
    let identity = args::server_identity(a.cert.as_ref(), a.key.as_ref())?;
    let server = tls::server_config(identity, &[a.app.alpn()])?;
    let mut b = EngineBuilder::default()
        .workers(a.workers)
        .server(server)
        .transport(transport());
    if a.retry {
        b = b.retry(RetryPolicy::Always);
    }
    if let Some(cpus) = &a.cpus {
        b = b.pin_cpus(cpus.clone());
    }
    Ok(b)
}

pub fn run(a: &ServeArgs) -> anyhow::Result<()> {
    let BackendArg::Udp = a.backend;
    let b = builder(a)?;
    match a.app {
        App::Echo => serve(a, b, |_| EchoServer::default()),
        App::Perf => serve(a, b, |_| PerfServer::default()),
        App::Hq => {
            let root = a
                .root
                .as_ref()
                .context("--app hq needs --root DIR, the directory to serve")?;
            let probe =
                HqServer::new(root).with_context(|| format!("--root {}", root.display()))?;
            drop(probe);
            let root = root.clone();
            serve(a, b, move |_| HqServer::new(&root).expect("checked above"))
        }
    }
}

fn serve<H: Handler>(
    a: &ServeArgs,
    b: EngineBuilder,
    factory: impl FnMut(usize) -> H,
) -> anyhow::Result<()> {
    let engine = b
        .start_udp(a.listen, factory)
        .with_context(|| format!("starting the server on {}", a.listen))?;
    eprintln!(
        "serving {:?} on {} with {} UDP worker(s), steering {:?}; Ctrl-C stops",
        a.app,
        engine.local_addr(),
        a.workers,
        engine.steering().expect("UDP backend"),
    );
    let (tx, rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .context("installing the Ctrl-C handler")?;
    let handle = engine.handle();
    loop {
        let wait = a
            .stats_every
            .map_or(Duration::from_secs(3600), Duration::from_secs);
        match rx.recv_timeout(wait) {
            Ok(()) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if a.stats_every.is_some() {
                    print_counters(&handle);
                }
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    eprintln!("shutting down: closing connections");
    engine
        .shutdown(VarInt::from_u32(0), b"server shutting down")
        .context("stopping the workers")?;
    print_counters(&handle);
    Ok(())
}

/// Prints one line per worker with its main counters.
pub fn print_counters<H: Handler>(handle: &EngineHandle<H>) {
    for (i, c) in handle.counters().iter().enumerate() {
        eprintln!("worker {i}: {}", summary(c));
    }
}

/// The main counters of a worker on one line.
pub fn summary(c: &Counters) -> String {
    format!(
        "rx {} pkts {} B, tx {} pkts {} B, conns accepted {} opened {} active {}, handovers out {} in {} dropped {}, malformed {}, ignored {}, resets {}",
        c.rx_packets,
        c.rx_bytes,
        c.tx_packets,
        c.tx_bytes,
        c.conns_accepted,
        c.conns_opened,
        c.conns_active,
        c.handover_out,
        c.handover_in,
        c.handover_dropped,
        c.rx_malformed,
        c.rx_ignored,
        c.resets_sent
    )
}
