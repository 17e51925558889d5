//! `xdp-quic serve`: run an example application on the engine.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{bail, Context};
use xdp_quic::backend::xsk::PollMode;
use xdp_quic::xsk::socket::BindMode;
use xdp_quic::{
    tls, Counters, Engine, EngineBuilder, EngineHandle, Handler, RetryPolicy, TransportConfig,
    VarInt, XdpSetup,
};

use xdp_quic_control::metrics::{EngineCollector, MetricsServer};
use xdp_quic_control::xdp::socket_map::ServerSteering;
use xdp_quic_examples::{echo::EchoServer, hq::HqServer, perf::PerfServer};

use super::args::{self, App, BackendArg, BindArg, PollArg};
use xdp_quic_control::xdp::WatchEvent;

/// Arguments of `xdp-quic serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Address to serve on (0.0.0.0 or [::] for every address).
    #[arg(long, value_name = "IP:PORT")]
    pub listen: SocketAddr,
    /// I/O backend of the workers.
    #[arg(long, value_enum, default_value_t = BackendArg::Udp)]
    pub backend: BackendArg,
    /// Interface of the AF_XDP backend.
    #[arg(long, value_name = "IFACE")]
    pub iface: Option<String>,
    /// AF_XDP: the queues to serve, one worker each (default: every RX queue of --iface).
    #[arg(long, value_parser = args::parse_queues, value_name = "LIST")]
    // Fully qualified: a plain `Vec` would make clap expect one value per queue.
    pub queues: Option<std::vec::Vec<u32>>,
    /// AF_XDP: how idle workers wait.
    #[arg(long, value_enum, default_value_t = PollArg::Adaptive)]
    pub poll: PollArg,
    /// AF_XDP: zero-copy or copy mode.
    #[arg(long, value_enum, default_value_t = BindArg::Auto)]
    pub bind_mode: BindArg,
    /// AF_XDP: XDP attach mode when this process attaches the program itself (no
    /// `xdp-quic attach` for --iface).
    #[arg(long, value_enum, default_value_t = super::xdp::ModeArg::Auto)]
    pub xdp_mode: super::xdp::ModeArg,
    /// AF_XDP: UMEM frames per queue (2 KiB each; a power of two). A queue needs
    /// frames × 2 KiB of locked memory (8 MiB by default).
    #[arg(long, default_value_t = 4096)]
    pub umem_frames: u32,
    /// AF_XDP: do not verify UDP checksums of received frames (only where the NIC does).
    #[arg(long)]
    pub skip_checksum: bool,
    /// AF_XDP: set the busy-poll socket options (SO_BUSY_POLL=USECS, SO_PREFER_BUSY_POLL,
    /// SO_BUSY_POLL_BUDGET=64): the worker drives the NIC's NAPI loop (real NICs; see
    /// docs/TUNING.md for the per-device settings that go with it).
    #[arg(long, value_name = "USECS")]
    pub busy_poll: Option<u32>,
    /// AF_XDP: back each UMEM with huge pages (reserve them first: nic-tune.sh --hugepages).
    #[arg(long)]
    pub huge_pages: bool,
    /// Run in the network namespace /run/netns/NAME (before any socket is made).
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
    /// Worker threads, one endpoint shard each (UDP backend; AF_XDP: one per queue).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Pin worker i to the i-th CPU of this list (e.g. 0,2-3).
    #[arg(long, value_parser = args::parse_cpus)]
    pub cpus: Option<std::vec::Vec<usize>>,
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
    #[arg(long, conflicts_with = "retry_above")]
    pub retry: bool,
    /// Require a Retry round trip from new clients while at least N handshakes are pending
    /// on a worker (the defence against floods of spoofed Initials). 0: never ask.
    #[arg(long, value_name = "N", default_value_t = RetryPolicy::DEFAULT_PENDING_HANDSHAKES)]
    pub retry_above: usize,
    /// Connections one worker holds at most; new ones are refused past it (each idle one
    /// costs about 24 KiB, a busy one up to its windows: see the README's limits).
    #[arg(long, value_name = "N", default_value_t = xdp_quic::engine::DEFAULT_MAX_CONNECTIONS,
          value_parser = clap::value_parser!(usize))]
    pub max_connections: usize,
    /// Serve Prometheus metrics at http://ADDR/metrics (default 127.0.0.1:9464 when the flag
    /// has no value). Keep it on loopback unless a firewall guards it.
    #[arg(long, value_name = "ADDR", num_args = 0..=1, default_missing_value = "127.0.0.1:9464")]
    pub metrics: Option<SocketAddr>,
    /// Print the workers' counters every SECS seconds (1 to 86400).
    #[arg(long, value_name = "SECS", value_parser = args::parse_interval_secs)]
    pub stats_every: Option<u64>,
}

/// Transport parameters of the examples: the engine's bounded defaults (16 MiB connection
/// receive window; 100 concurrent bidirectional streams), 8 unidirectional streams,
/// datagrams on (1 MiB receive buffer).
pub fn transport() -> TransportConfig {
    let mut t = xdp_quic::default_transport();
    t.max_concurrent_uni_streams(VarInt::from_u32(8));
    t.datagram_receive_buffer_size(Some(1 << 20));
    t
}

/// A server engine's builder for `a`.
pub fn builder(a: &ServeArgs) -> anyhow::Result<EngineBuilder> {
    if a.workers == 0 || a.workers > 256 {
        bail!("--workers must be between 1 and 256");
    }
    if a.max_connections == 0 {
        bail!("--max-connections must be at least 1");
    }
    let identity = args::server_identity(a.cert.as_ref(), a.key.as_ref())?;
    let server = tls::server_config(identity, &[a.app.alpn()])?;
    let mut b = EngineBuilder::default()
        .workers(a.workers)
        .server(server)
        .transport(transport())
        .max_connections(a.max_connections);
    b = b.retry(if a.retry {
        RetryPolicy::Always
    } else if a.retry_above == 0 {
        RetryPolicy::Never
    } else {
        RetryPolicy::AbovePendingHandshakes(a.retry_above)
    });
    if let Some(cpus) = &a.cpus {
        b = b.pin_cpus(cpus.clone());
    }
    Ok(b)
}

pub fn run(a: &ServeArgs) -> anyhow::Result<()> {
    if let Some(ns) = &a.netns {
        xdp_quic_control::xdp::netns::enter(ns)?;
    }
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

/// The AF_XDP set-up of `a`.
pub fn xdp_setup(a: &ServeArgs) -> anyhow::Result<XdpSetup> {
    let iface = a
        .iface
        .as_deref()
        .context("--backend xdp needs --iface, the interface to serve on")?;
    let queues = match &a.queues {
        Some(q) => q.clone(),
        None => args::all_queues(iface)?,
    };
    let mut setup = XdpSetup::new(iface, a.listen, queues);
    setup.umem.frames = a.umem_frames;
    setup.verify_checksum = !a.skip_checksum;
    setup.umem.huge_pages = a.huge_pages;
    setup.busy_poll = a.busy_poll.map(|usecs| xdp_quic::xsk::socket::BusyPoll {
        usecs,
        budget: 64,
        prefer: true,
    });
    setup.poll = match a.poll {
        PollArg::Busy => PollMode::Busy,
        PollArg::Adaptive => PollMode::default(),
    };
    setup.mode = match a.bind_mode {
        BindArg::Auto => BindMode::Auto,
        BindArg::ZeroCopy => BindMode::ZeroCopy,
        BindArg::Copy => BindMode::Copy,
    };
    Ok(setup)
}

/// A server over AF_XDP as [`start_xdp`] starts it.
pub struct XdpServer<H: Handler> {
    pub engine: Engine<H>,
    /// How the program is attached, in words.
    pub how: String,
    /// The program's counters, when readable.
    pub program: Option<xdp_quic_control::xdp::CountersReader>,
    /// Watches the program the sockets are registered with.
    pub watch: xdp_quic_control::xdp::ProgramWatch,
}

/// Starts `b` on AF_XDP per `setup`, attaching the program for the server's life when
/// `xdp-quic attach` has not pinned it on the interface.
pub fn start_xdp<H: Handler>(
    b: EngineBuilder,
    setup: &XdpSetup,
    mode: xdp_quic_control::xdp::AttachMode,
    factory: impl FnMut(usize) -> H,
) -> anyhow::Result<XdpServer<H>> {
    let steering = ServerSteering::for_server(&setup.iface, setup.listen, mode)?;
    let how = steering.describe();
    let program = steering.counters_reader(&setup.iface).ok();
    let ifindex = xdp_quic::engine::ifindex(&setup.iface)
        .with_context(|| format!("looking up {}", setup.iface))?;
    let watch = xdp_quic_control::xdp::ProgramWatch::new(ifindex, steering.prog_id())
        .with_context(|| format!("reading the state of {}", setup.iface))?;
    let engine = b
        .start_xdp(setup, Box::new(steering), factory)
        .with_context(|| format!("starting AF_XDP workers on {}", setup.iface))?;
    Ok(XdpServer {
        engine,
        how,
        program,
        watch,
    })
}

/// How often a server looks at its workers' health and (over AF_XDP) its XDP program.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Why [`serve_until`] returned.
enum Ended {
    /// Ctrl-C or SIGTERM.
    Stopped,
    /// The XDP program is gone from under the AF_XDP workers.
    ProgramLost(xdp_quic_control::xdp::WatchEvent),
    /// Workers failed (a panic outside the application, or a fatal I/O error): (index, why).
    WorkersFailed(Vec<(usize, String)>),
}

fn serve<H: Handler>(
    a: &ServeArgs,
    b: EngineBuilder,
    mut factory: impl FnMut(usize) -> H,
) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel();
    ctrlc::set_handler(move || {
        let _ = tx.send(());
    })
    .context("installing the Ctrl-C handler")?;
    let mut use_xdp = match a.backend {
        BackendArg::Udp => false,
        BackendArg::Xdp => true,
        BackendArg::Auto => a.iface.is_some(),
    };
    loop {
        let mut xdp = None;
        if use_xdp {
            let attempt = xdp_setup(a)
                .and_then(|setup| start_xdp(b.clone(), &setup, a.xdp_mode.into(), &mut factory));
            match attempt {
                Ok(x) => {
                    let e = &x.engine;
                    let zc = e.xsk_queues().iter().all(|q| q.zero_copy);
                    eprintln!(
                        "serving {:?} on {} with {} AF_XDP worker(s) on {} queues {:?} ({} mode; XDP program {}); Ctrl-C stops",
                        a.app,
                        a.listen,
                        e.xsk_queues().len(),
                        a.iface.as_deref().unwrap_or("?"),
                        e.xsk_queues().iter().map(|q| q.queue).collect::<Vec<_>>(),
                        if zc { "zero-copy" } else { "copy" },
                        x.how,
                    );
                    xdp = Some(x);
                }
                Err(e) if a.backend == BackendArg::Auto => {
                    eprintln!("AF_XDP is not available ({e:#}); falling back to UDP");
                }
                Err(e) => return Err(e),
            }
        }
        let (engine, program, watch) = match xdp {
            Some(x) => (x.engine, x.program, Some(x.watch)),
            None => {
                let e = b
                    .clone()
                    .start_udp(a.listen, &mut factory)
                    .with_context(|| format!("starting the server on {}", a.listen))?;
                eprintln!(
                    "serving {:?} on {} with {} UDP worker(s), steering {:?}; Ctrl-C stops",
                    a.app,
                    e.local_addr(),
                    a.workers,
                    e.steering().expect("UDP backend"),
                );
                (e, None, None)
            }
        };
        let ended = serve_until(a, &engine, program, watch, &rx)?;
        for q in engine.xsk_queues() {
            eprintln!("queue {}: {}", q.queue, xsk_summary(&q.snapshot()));
        }
        let handle = engine.handle();
        match ended {
            Ended::Stopped => {
                eprintln!("shutting down: closing connections");
                engine
                    .shutdown(VarInt::from_u32(0), b"server shutting down")
                    .context("stopping the workers")?;
                print_counters(&handle);
                return Ok(());
            }
            Ended::WorkersFailed(failed) => {
                for (w, why) in &failed {
                    eprintln!("error: worker {w} failed: {why}; its connections were closed");
                }
                eprintln!("stopping the other workers");
                let _ = engine.shutdown(VarInt::from_u32(0), b"server failed");
                print_counters(&handle);
                bail!(
                    "{} worker(s) failed; restart the server (its logs say why)",
                    failed.len()
                );
            }
            Ended::ProgramLost(why) => {
                let iface = a.iface.as_deref().unwrap_or("?");
                eprintln!(
                    "error: {why} on {iface}: the AF_XDP workers receive nothing any more; \
                     closing their connections"
                );
                engine
                    .shutdown(VarInt::from_u32(0), b"server lost its XDP program")
                    .context("stopping the workers")?;
                print_counters(&handle);
                if a.backend != BackendArg::Auto {
                    bail!(
                        "{why} on {iface} under the running server; attach it again and \
                         restart, or run with --backend auto to fall back to kernel UDP"
                    );
                }
                eprintln!("--backend auto: falling back to kernel UDP on {}", a.listen);
                use_xdp = false;
            }
        }
    }
}

/// Serves until Ctrl-C, or until the XDP program `watch` looks after is lost; exports
/// metrics and prints counters meanwhile.
fn serve_until<H: Handler>(
    a: &ServeArgs,
    engine: &Engine<H>,
    program: Option<xdp_quic_control::xdp::CountersReader>,
    mut watch: Option<xdp_quic_control::xdp::ProgramWatch>,
    stop: &mpsc::Receiver<()>,
) -> anyhow::Result<Ended> {
    let _metrics = match a.metrics {
        None => None,
        Some(addr) => {
            let xdp = !engine.xsk_queues().is_empty();
            let collector = EngineCollector::new(
                if xdp { "xdp" } else { "udp" },
                if xdp { a.iface.clone() } else { None },
                engine.handle().metrics(),
                engine.xsk_queues().to_vec(),
                program,
            );
            let mut registry = prometheus_client::registry::Registry::default();
            registry.register_collector(Box::new(collector));
            let server = MetricsServer::start(addr, registry)?;
            eprintln!("metrics on http://{}/metrics", server.local_addr());
            Some(server)
        }
    };
    let handle = engine.handle();
    let mut trim = xdp_quic::memory::TrimPolicy::new(1000);
    let stats_every = a.stats_every.map(Duration::from_secs);
    let mut next_stats = stats_every.map(|d| std::time::Instant::now() + d);
    loop {
        let mut wait = WATCH_EVERY;
        if let Some(t) = next_stats {
            wait = wait.min(t.saturating_duration_since(std::time::Instant::now()));
        }
        match stop.recv_timeout(wait) {
            Ok(()) | Err(mpsc::RecvTimeoutError::Disconnected) => return Ok(Ended::Stopped),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        let failed = handle.failed_workers();
        if !failed.is_empty() {
            return Ok(Ended::WorkersFailed(failed));
        }
        let t = handle.total();
        if trim.observe(t.conns_accepted + t.conns_opened + t.conns_closed) {
            xdp_quic::memory::release_free_memory();
        }
        if let (Some(t), Some(every)) = (next_stats, stats_every) {
            if std::time::Instant::now() >= t {
                print_counters(&handle);
                next_stats = Some(t + every);
            }
        }
        if let Some(w) = watch.as_mut() {
            let iface = a.iface.as_deref().unwrap_or("?");
            match w.check() {
                Ok(events) => {
                    for e in events {
                        match e {
                            WatchEvent::Down | WatchEvent::Up => {
                                eprintln!("warning: {iface}: {e}")
                            }
                            WatchEvent::Detached { .. } | WatchEvent::InterfaceGone => {
                                return Ok(Ended::ProgramLost(e))
                            }
                        }
                    }
                }
                Err(e) => eprintln!("warning: cannot read the state of {iface}: {e}"),
            }
        }
    }
}

/// Prints one line per worker with its main counters.
pub fn print_counters<H: Handler>(handle: &EngineHandle<H>) {
    for (i, c) in handle.counters().iter().enumerate() {
        eprintln!("worker {i}: {}", summary(c));
    }
}

/// The counters of an AF_XDP queue on one line.
pub fn xsk_summary(s: &xdp_quic::backend::xsk::XskSnapshot) -> String {
    format!(
        "{} mode, parse errors {}, bad checksums {}, other port {}, no route {}, TX no frame {}, TX ring full {}, kicks {}, canary {}; kernel: rx dropped {}, rx ring full {}, fill ring empty {}, tx ring empty {}",
        if s.zero_copy { "zero-copy" } else { "copy" },
        s.rx_parse_errors,
        s.rx_bad_checksum,
        s.rx_other_port,
        s.tx_no_route,
        s.tx_no_frame,
        s.tx_ring_full,
        s.kicks,
        s.canary_packets,
        s.kernel.rx_dropped,
        s.kernel.rx_ring_full,
        s.kernel.rx_fill_ring_empty,
        s.kernel.tx_ring_empty
    )
}

/// The main counters of a worker on one line.
pub fn summary(c: &Counters) -> String {
    format!(
        "rx {} pkts {} B, tx {} pkts {} B, conns accepted {} opened {} active {}, handovers out {} in {} dropped {}, malformed {}, ignored {}, resets {}, kernel rx dropped {}",
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
        c.resets_sent,
        c.kernel_rx_dropped
    )
}
