//! `xdp-quic serve`: run an example application on the engine, over AF_XDP or kernel UDP, as
//! the control library's [`Server`] does it (program watched, fallback to UDP), saying on
//! stderr what happens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use xdp_quic::backend::xsk::PollMode;
use xdp_quic::xsk::socket::BindMode;
use xdp_quic::{
    tls, Counters, EngineBuilder, Handler, RetryPolicy, TransportConfig, VarInt, XdpSetup,
};
use xdp_quic_control::serve::{
    Backend, Event, Fallback, ServeOptions, Server, Serving, Stop, StopReason,
};
use xdp_quic_examples::files::FileRoot;
use xdp_quic_examples::{
    echo::EchoServer,
    hq::{HqLimits, HqServer},
    perf::PerfServer,
};

use super::args::{self, App, BackendArg, BindArg, PollArg, TxArg};

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
    #[arg(long, value_name = "IFACE", value_parser = super::args::parse_iface)]
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
    /// AF_XDP: how each queue transmits: on the socket's TX ring (`xsk`), or through the
    /// queue's UDP socket with GSO (`kernel`); `auto` takes `xsk` on zero-copy sockets only.
    #[arg(long, value_enum, default_value_t = TxArg::Auto)]
    pub tx: TxArg,
    /// AF_XDP: XDP attach mode when this process attaches the program itself (no
    /// `xdp-quic attach` for --iface).
    #[arg(long, value_enum, default_value_t = super::xdp::ModeArg::Auto)]
    pub xdp_mode: super::xdp::ModeArg,
    /// AF_XDP: UMEM frames per queue (2 KiB each; a power of two), and as many RX ring
    /// entries: how many packets can wait for a worker. A queue needs frames × 2 KiB of
    /// locked memory (32 MiB by default).
    #[arg(long, default_value_t = DEFAULT_UMEM_FRAMES)]
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
    /// Directory the hq and h3 applications serve.
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
    /// AF_XDP: turn the XDP program's shield on while serving (drops what QUIC says to
    /// drop before it costs a frame; admits new clients per source prefix while a worker is
    /// under pressure; see docs/XDP.md). On by itself over an `xdp-quic attach --shield`.
    #[arg(long)]
    pub xdp_shield: bool,
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
        check_cpus(cpus, a.workers, "--workers")?;
        b = b.pin_cpus(cpus.clone());
    }
    Ok(b)
}

/// `--umem-frames`' default.
const DEFAULT_UMEM_FRAMES: u32 = xdp_quic::xsk::umem::DEFAULT_FRAMES;

/// Refuses, before anything is done, the AF_XDP options of a server that will serve over
/// kernel UDP (`--backend udp`, or `auto` without `--iface`): they would be ignored.
fn refuse_ignored_xdp_flags(a: &ServeArgs) -> anyhow::Result<()> {
    let over_udp = match a.backend {
        BackendArg::Udp => true,
        BackendArg::Xdp => false,
        BackendArg::Auto => a.iface.is_none(),
    };
    if !over_udp {
        return Ok(());
    }
    if a.xdp_shield {
        bail!("--xdp-shield needs the AF_XDP backend (--backend xdp --iface IF)");
    }
    let set = [
        ("--iface", a.iface.is_some()),
        ("--queues", a.queues.is_some()),
        ("--poll", a.poll != PollArg::Adaptive),
        ("--bind-mode", a.bind_mode != BindArg::Auto),
        ("--tx", a.tx != TxArg::Auto),
        ("--xdp-mode", a.xdp_mode != super::xdp::ModeArg::Auto),
        ("--umem-frames", a.umem_frames != DEFAULT_UMEM_FRAMES),
        ("--skip-checksum", a.skip_checksum),
        ("--busy-poll", a.busy_poll.is_some()),
        ("--huge-pages", a.huge_pages),
    ];
    super::args::refuse_given(&set, |named, several| {
        format!(
            "{named} {} AF_XDP options: serving over kernel UDP, they would be ignored (add \
             --backend xdp --iface IF, or leave them out)",
            if several { "are" } else { "is an" }
        )
    })
}

pub fn run(a: &ServeArgs) -> anyhow::Result<()> {
    refuse_ignored_xdp_flags(a)?;
    if a.root.is_some() && !matches!(a.app, App::Hq | App::H3) {
        bail!(
            "--root not used by --app {} (it is the directory of hq and h3): leave it out",
            a.app.name()
        );
    }
    if let Some(ns) = &a.netns {
        xdp_quic_control::xdp::netns::enter(ns)?;
    }
    let b = builder(a)?;
    match a.app {
        App::H3 => super::h3::serve(a, b),
        App::Echo => serve(a, b, |_| EchoServer::default()),
        App::Perf => serve(a, b, |_| PerfServer::default()),
        App::Hq => {
            let root = a
                .root
                .as_ref()
                .context("--app hq needs --root DIR, the directory to serve")?;
            // Opened once: every worker's server, and those of a later fall-back to UDP,
            // serve the directory `--root` named at start (README: resolved once).
            let root = FileRoot::open(root)
                .map(Arc::new)
                .with_context(|| format!("--root {}", root.display()))?;
            let limits = HqLimits::default();
            HqServer::with_root(root.clone(), limits)?;
            serve(a, b, move |_| {
                HqServer::with_root(root.clone(), limits).expect("the same limits, checked above")
            })
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
        Some(q) => {
            // A queue the interface does not have would fail at its socket's bind, after
            // the program was attached, and `--backend auto` would take it for a host
            // without AF_XDP. (Where the queues cannot be read, the bind says.)
            if let Ok(active) = xdp_quic_control::xdp::active_queues(iface) {
                if let Some(q) = q.iter().find(|q| !active.contains(q)) {
                    return Err(BadArgs(format!(
                        "--queues lists queue {q}, but {iface} has queues {active:?}"
                    ))
                    .into());
                }
            }
            q.clone()
        }
        None => xdp_quic_control::xdp::active_queues(iface)?,
    };
    // Over AF_XDP the engine runs one worker per queue: a --workers that says otherwise was
    // meant for something else (1, the default, says nothing).
    if a.workers != 1 && a.workers != queues.len() {
        return Err(BadArgs(format!(
            "--workers {} but {} serves {} queue(s) {queues:?}: over AF_XDP there is one worker \
             per queue; choose the queues with --queues LIST",
            a.workers,
            iface,
            queues.len()
        ))
        .into());
    }
    if let Some(cpus) = &a.cpus {
        check_cpus(cpus, queues.len(), "queues (one worker each)")?;
    }
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
    setup.tx = a.tx.into();
    // Values the workers would refuse are the operator's error, found before anything is
    // attached (and not taken by `--backend auto` for a host without AF_XDP).
    setup.check().map_err(|e| BadArgs(e.to_string()))?;
    Ok(setup)
}

/// `--cpus` gives each of `workers` workers a CPU of its own (a shorter list would put two
/// workers on a CPU, silently).
fn check_cpus(cpus: &[usize], workers: usize, what: &str) -> anyhow::Result<()> {
    if cpus.len() < workers {
        return Err(BadArgs(format!(
            "--cpus lists {} CPU(s) {cpus:?} for {workers} {what}: give one CPU per worker",
            cpus.len()
        ))
        .into());
    }
    Ok(())
}

/// Arguments that contradict each other: an error of the operator's, which `--backend auto`
/// reports instead of falling back to UDP (it falls back when the host cannot do AF_XDP).
#[derive(Debug)]
struct BadArgs(String);

impl std::fmt::Display for BadArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadArgs {}

fn serve<H: Handler>(
    a: &ServeArgs,
    b: EngineBuilder,
    factory: impl FnMut(usize) -> H + Send + 'static,
) -> anyhow::Result<()> {
    let stop = Stop::new();
    let on_signal = stop.clone();
    let mut signals = 0u32;
    let use_xdp = match a.backend {
        BackendArg::Udp => false,
        BackendArg::Xdp => true,
        BackendArg::Auto => a.iface.is_some(),
    };
    // The shield this server may turn on over a pinned attachment (`--xdp-shield`), or engage
    // where an operator's `attach --shield` put one, which its guard turns off or clears when
    // it stops: a second Ctrl-C does not wait for that.
    let shielded = if use_xdp {
        xdp_setup(a).ok().map(|s| (s.iface, s.queues))
    } else {
        None
    };
    ctrlc::set_handler(move || {
        signals += 1;
        if signals == 1 {
            // Stopped first: a print to a closed stderr must not keep it from happening.
            on_signal.stop();
            note!("stopping (Ctrl-C again to exit at once)");
        } else {
            if let Some((iface, queues)) = &shielded {
                // Best effort, and only when no other server holds queues of the
                // attachment: what this server left (the shield it turned on, or its CID
                // layout and pressure flags on an operator's). Its pressure monitor still
                // runs and may set a flag again meanwhile: the next server clears it.
                if let Ok(mut maps) = xdp_quic_control::xdp::ShieldMaps::from_pins(iface) {
                    let _ = maps.clear_left_by_server(queues);
                }
            }
            // The kernel closes what the process held: its own XDP link and AF_XDP sockets
            // go with it (pins made by `xdp-quic attach` stay, as they should).
            std::process::exit(130);
        }
    })
    .context("installing the Ctrl-C handler")?;
    if a.backend == BackendArg::Auto && !use_xdp {
        // The choice is logged, as the flag says: AF_XDP needs an interface.
        note!("--backend auto without --iface: serving over kernel UDP");
    }
    let backend = if use_xdp {
        match xdp_setup(a) {
            Ok(setup) => Backend::Xdp {
                setup,
                mode: a.xdp_mode.into(),
                fallback: if a.backend == BackendArg::Auto {
                    Fallback::ToUdp
                } else {
                    Fallback::Never
                },
            },
            Err(e) if a.backend == BackendArg::Auto && e.downcast_ref::<BadArgs>().is_none() => {
                report(a, &Event::XdpUnavailable(e));
                Backend::Udp(a.listen)
            }
            Err(e) => return Err(e),
        }
    } else {
        Backend::Udp(a.listen)
    };
    let shield = match &backend {
        Backend::Xdp { setup, .. } => shield_options(a, &setup.iface)?,
        Backend::Udp(_) if a.xdp_shield && a.backend == BackendArg::Udp => {
            bail!("--xdp-shield needs the AF_XDP backend (--backend xdp --iface IF)")
        }
        Backend::Udp(_) => None,
    };
    let options = ServeOptions {
        metrics: a.metrics,
        stop,
        shield,
        ..ServeOptions::default()
    };
    let server = Server::start(b, backend, options, factory)?;
    // The events as they come, and the counters every --stats-every while an engine serves.
    let stats_every = a.stats_every.map(Duration::from_secs);
    let mut next_stats: Option<Instant> = None;
    loop {
        let event = match next_stats {
            Some(t) => server
                .events()
                .recv_timeout(t.saturating_duration_since(Instant::now())),
            None => server
                .events()
                .recv()
                .map_err(|_| mpsc::RecvTimeoutError::Disconnected),
        };
        match event {
            Ok(e) => {
                match &e {
                    Event::Serving(_) => next_stats = stats_every.map(|d| Instant::now() + d),
                    Event::Stopping { .. } => next_stats = None,
                    _ => {}
                }
                report(a, &e);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Some(handle) = server.handle() {
                    print_counters(&handle.counters());
                }
                next_stats = next_stats.zip(stats_every).map(|(t, every)| t + every);
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    match server.join()? {
        StopReason::Requested => Ok(()),
        StopReason::WorkersFailed(failed) => bail!(
            "{} worker(s) failed; restart the server (its logs say why)",
            failed.len()
        ),
        StopReason::ProgramLost { iface, why } => bail!(
            "{why} on {iface} under the running server; restart the server (after `xdp-quic \
             attach {iface} --port PORT` again if it was attached so), or run with --backend auto to fall \
             back to kernel UDP"
        ),
        other => bail!("the server stopped: {other:?}"),
    }
}

/// The shield of `a` over `iface`: `--xdp-shield`, or the configuration of an `xdp-quic
/// attach --shield` pinned for it (not one a server left on: see
/// `ShieldMaps::on_for_a_server`); the engine's CIDs are the builder's defaults, and the
/// pressure threshold its Retry threshold.
fn shield_options(
    a: &ServeArgs,
    iface: &str,
) -> anyhow::Result<Option<xdp_quic_control::serve::ShieldOptions>> {
    use xdp_quic_control::xdp::{shield, PressurePolicy};
    let pinned = match shield::pinned(iface) {
        Ok(p) => p,
        Err(e) => {
            // A shield an operator attached that cannot be read is not silently dropped.
            note!(
                "warning: cannot read the shield pinned for {iface} ({e:#}): serving without \
                 it unless --xdp-shield"
            );
            None
        }
    };
    if !a.xdp_shield && pinned.is_none() {
        return Ok(None);
    }
    let retry = (!a.retry && a.retry_above > 0).then_some(a.retry_above);
    Ok(Some(xdp_quic_control::serve::ShieldOptions {
        config: pinned.unwrap_or_default(),
        pressure: PressurePolicy::for_retry_threshold(retry),
        ..Default::default()
    }))
}

/// Says on stderr what the server did.
fn report(a: &ServeArgs, event: &Event) {
    match event {
        Event::XdpUnavailable(e) => note!("AF_XDP is not available ({e:#}); falling back to UDP"),
        Event::Serving(Serving::Xdp {
            listen,
            iface,
            queues,
            zero_copy,
            tx,
            program,
        }) => note!(
            "serving {:?} on {listen} with {} AF_XDP worker(s) on {iface} queues {queues:?} ({} mode; transmit {}; {} UMEM frames a queue, {} MiB locked; XDP program {program}); Ctrl-C stops",
            a.app,
            queues.len(),
            if *zero_copy { "zero-copy" } else { "copy" },
            tx_summary(queues, tx),
            a.umem_frames,
            xdp_quic::xsk::umem::UmemConfig {
                frames: a.umem_frames,
                ..Default::default()
            }
            .bytes()
                >> 20,
        ),
        Event::Serving(Serving::Udp {
            local_addr,
            workers,
            steering,
        }) => note!(
            "serving {:?} on {local_addr} with {workers} UDP worker(s), steering {steering:?}; Ctrl-C stops",
            a.app,
        ),
        Event::Metrics(addr) => note!("metrics on http://{addr}/metrics"),
        Event::Link { iface, change } => note!("warning: {iface}: {change}"),
        Event::WatchFailed { iface, error } => {
            note!("warning: cannot read the state of {iface}: {error}")
        }
        Event::Stopping { reason, queues } => {
            for q in queues {
                note!("queue {}: {}", q.queue, xsk_summary(q));
            }
            match reason {
                StopReason::Requested => note!("shutting down: closing connections"),
                StopReason::WorkersFailed(failed) => {
                    for (w, why) in failed {
                        note!("error: worker {w} failed: {why}; its connections were closed");
                    }
                    note!("stopping the other workers");
                }
                StopReason::ProgramLost { iface, why } => note!(
                    "error: {why} on {iface}: the AF_XDP workers receive nothing any more; \
                     closing their connections"
                ),
                other => note!("stopping ({other:?}): closing connections"),
            }
        }
        Event::Stopped { counters } => print_counters(counters),
        Event::FallingBack { listen } => {
            note!("--backend auto: falling back to kernel UDP on {listen}")
        }
        Event::Shield {
            iface,
            config,
            monitor,
        } => note!(
            "XDP shield on {iface}: Initials under {} octets, other versions under {} \
             octets and short headers of other CIDs dropped; version negotiation {}/s per \
             source prefix (/{}, /{}){}",
            xdp_quic_control::xdp::shield::MIN_INITIAL_DATAGRAM,
            xdp_quic_control::xdp::shield::MIN_INITIAL_DATAGRAM,
            config.version_negotiation.per_sec,
            config.prefix_v4,
            config.prefix_v6,
            if *monitor {
                format!(
                    "; under pressure, tokenless Initials {}/s (bursts of {}) per prefix",
                    config.initial.per_sec, config.initial.burst
                )
            } else {
                String::new()
            }
        ),
        Event::Pressure { iface, change } => match change.cause {
            Some(cause) => note!(
                "XDP shield: {iface} queue {} under pressure ({}): admitting tokenless \
                 Initials per source prefix",
                change.queue,
                match cause {
                    xdp_quic_control::xdp::pressure::Cause::PendingHandshakes(n) =>
                        format!("{n} pending handshakes"),
                    xdp_quic_control::xdp::pressure::Cause::FillRingEmpty(n) =>
                        format!("fill ring found empty {n} times"),
                    xdp_quic_control::xdp::pressure::Cause::RxRingFull(n) =>
                        format!("{n} packets dropped for a full RX ring"),
                }
            ),
            None => note!(
                "XDP shield: {iface} queue {} no longer under pressure",
                change.queue
            ),
        },
        Event::StaleShieldCleared { iface, turned_off: true } => note!(
            "XDP shield: turned off on {iface}: a server that did not stop cleanly had left it on (without --xdp-shield, this server serves without it)"
        ),
        Event::StaleShieldCleared { iface, turned_off: false } => note!(
            "XDP shield: cleared on {iface} the CID layout and pressure flags a server that did not stop cleanly had left (the shield's rules stay as `xdp-quic attach` set them)"
        ),
        Event::HandlerPanicked { worker } => note!(
            "worker {worker}: an application callback panicked; the worker closed its connections and ended, the others serve on"
        ),
        other => note!("{other:?}"),
    }
}

/// Prints one line per worker with its main counters.
pub fn print_counters(counters: &[Counters]) {
    for (i, c) in counters.iter().enumerate() {
        note!("worker {i}: {}", summary(c));
    }
}

/// The transmit path of the queues: one word when they agree, else per queue.
pub fn tx_summary(queues: &[u32], tx: &[xdp_quic::backend::xsk::TxPath]) -> String {
    match tx.first() {
        Some(first) if tx.iter().all(|t| t == first) => format!("{first}"),
        _ => queues
            .iter()
            .zip(tx)
            .map(|(q, t)| format!("queue {q} {t}"))
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// The counters of an AF_XDP queue on one line.
pub fn xsk_summary(s: &xdp_quic::backend::xsk::XskSnapshot) -> String {
    format!(
        "{} mode, transmit {}, parse errors {}, bad checksums {}, other port {}, martians {}, no route {}, TX no frame {}, TX ring full {}, kicks {}, canary {}; kernel: rx dropped {}, rx ring full {}, fill ring empty {}, tx ring empty {}",
        if s.zero_copy { "zero-copy" } else { "copy" },
        s.tx.map_or("?".to_string(), |t| t.to_string()),
        s.rx_parse_errors,
        s.rx_bad_checksum,
        s.rx_other_port,
        s.rx_martians,
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
