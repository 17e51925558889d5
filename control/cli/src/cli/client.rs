//! `xdp-quic client`: the example clients (echo, perf, hq) over kernel UDP or AF_XDP.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};
use bytes::Bytes;
use xdp_quic::{tls, EngineBuilder};
use xdp_quic_examples::client::{any_local_for, run as run_client};
use xdp_quic_examples::echo::EchoClient;
use xdp_quic_examples::hq::{Fetched, HqClient};
use xdp_quic_examples::perf::{Budget, PerfClient, PerfClientConfig, PerfReport, PerfStats};

use super::args::{self, App};

/// Arguments of `xdp-quic client`.
#[derive(Debug, clap::Args)]
pub struct ClientArgs {
    /// The server (required but for `--app h3`, where the URL names it).
    #[arg(long, value_name = "IP:PORT")]
    pub connect: Option<SocketAddr>,
    /// The application.
    #[arg(long, value_enum, default_value_t = App::Perf)]
    pub app: App,
    /// Server name for TLS (SNI and certificate check; default `localhost`, or the URL's
    /// host with `--app h3`).
    #[arg(long)]
    pub server_name: Option<String>,
    /// PEM file with the certificate(s) to trust.
    #[arg(long, value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// Do not check the server's certificate (test servers with self-signed certificates).
    #[arg(long)]
    pub insecure: bool,
    /// Client worker threads (UDP backend; over AF_XDP: one per queue).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// I/O backend of the client's workers.
    #[arg(long, value_enum, default_value_t = ClientBackend::Udp)]
    pub backend: ClientBackend,
    /// AF_XDP: the interface the server is reached through. The XDP program is attached to
    /// it for the client's port for the client's life; transmits go through the kernel.
    #[arg(long, value_name = "IFACE", value_parser = super::args::parse_iface)]
    pub iface: Option<String>,
    /// AF_XDP: the queues to receive on, one worker each (default: every RX queue).
    #[arg(long, value_parser = args::parse_queues, value_name = "LIST")]
    pub queues: Option<std::vec::Vec<u32>>,
    /// AF_XDP: XDP attach mode.
    #[arg(long, value_enum, default_value_t = super::xdp::ModeArg::Auto)]
    pub xdp_mode: super::xdp::ModeArg,
    #[command(flatten)]
    pub perf: PerfArgs,
    /// echo: text to send (one stream per --message).
    #[arg(long = "message", value_name = "TEXT")]
    pub messages: Vec<String>,
    /// hq: paths to fetch (e.g. /index.html), in parallel on one connection.
    #[arg(long = "path", value_name = "PATH")]
    pub paths: Vec<String>,
    /// h3: URLs to fetch (https://HOST[:PORT]/PATH), in parallel on one connection.
    #[arg(long = "url", value_name = "URL")]
    pub urls: Vec<String>,
    /// hq, h3: save fetched files into this directory as new files (default: print sizes
    /// only); refused before fetching if two fetches share a name or a file is there.
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `client --backend`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientBackend {
    /// Kernel UDP sockets, one per worker.
    Udp,
    /// AF_XDP sockets on every queue of --iface (replies bypass the kernel).
    Xdp,
}

/// Where a client's engine runs.
#[derive(Debug, Clone)]
pub enum Launch {
    /// Kernel UDP sockets, one per worker.
    Udp,
    /// AF_XDP on `queues` of `iface` (the program attached for the client's port).
    Xdp {
        iface: String,
        queues: Vec<u32>,
        mode: xdp_quic_control::xdp::AttachMode,
    },
}

impl Launch {
    fn of(a: &ClientArgs) -> anyhow::Result<Self> {
        Ok(match a.backend {
            ClientBackend::Udp => Launch::Udp,
            ClientBackend::Xdp => {
                let iface = a.iface.clone().context(
                    "--backend xdp needs --iface, the interface the server is reached through",
                )?;
                let queues = match &a.queues {
                    Some(q) => {
                        // Refused before anything is attached, as `serve` does: the queue's
                        // bind would fail after the program was.
                        if let Ok(active) = xdp_quic_control::xdp::active_queues(&iface) {
                            if let Some(q) = q.iter().find(|q| !active.contains(q)) {
                                bail!(
                                    "--queues lists queue {q}, but {iface} has queues {active:?}"
                                );
                            }
                        }
                        q.clone()
                    }
                    None => xdp_quic_control::xdp::active_queues(&iface)?,
                };
                Launch::Xdp {
                    iface,
                    queues,
                    mode: a.xdp_mode.into(),
                }
            }
        })
    }

    /// Starts a client engine to reach `remote` and runs `start` on it; returns the handlers
    /// (the one that ran the client first) and the wall time. Over UDP `start` runs on every
    /// one of `workers`; over AF_XDP on worker 0, while every queue's worker receives.
    fn run<H, F, S>(
        &self,
        b: EngineBuilder,
        remote: SocketAddr,
        workers: usize,
        factory: F,
        start: S,
    ) -> anyhow::Result<(Vec<H>, std::time::Duration)>
    where
        H: xdp_quic::Handler,
        F: FnMut(usize) -> H,
        S: Fn(&mut H, &mut xdp_quic::Ctx<'_>) + Clone + Send + 'static,
    {
        match self {
            Launch::Udp => Ok(run_client(
                b.workers(workers),
                any_local_for(remote),
                factory,
                start,
            )?),
            Launch::Xdp {
                iface,
                queues,
                mode,
            } => {
                let setup = xdp_quic::XdpSetup::new(iface, any_local_for(remote), queues.clone());
                let (x, port) =
                    xdp_quic_control::serve::start_xdp_client(b, &setup, *mode, factory)?;
                let list: Vec<String> = queues.iter().map(u32::to_string).collect();
                eprintln!(
                    "xdp-quic client: AF_XDP on {iface} queue(s) {} for local port {port} ({}), \
                     transmitting through the kernel",
                    list.join(","),
                    x.how
                );
                let program = x.program;
                let out = xdp_quic_examples::client::run_on_first(x.engine, start)?;
                // Read after the run: the reader keeps the counters map open past the detach.
                if let Some(c) = program.and_then(|p| p.read().ok()) {
                    let redirected: u64 = c
                        .named()
                        .iter()
                        .filter(|(name, _)| name.ends_with(".redirected"))
                        .map(|(_, v)| v)
                        .sum();
                    eprintln!(
                        "xdp-quic client: the XDP program redirected {redirected} packet(s) to \
                         the client's AF_XDP sockets"
                    );
                }
                Ok(out)
            }
        }
    }
}

/// Options of the perf client.
#[derive(Debug, Clone, clap::Args)]
pub struct PerfArgs {
    /// perf: octets requested per request (e.g. 1M).
    #[arg(long, default_value = "1M", value_parser = args::parse_size)]
    pub download: u64,
    /// perf: octets uploaded per request.
    #[arg(long, default_value = "0", value_parser = args::parse_size)]
    pub upload: u64,
    /// perf: requests in all (default 100, unless --duration is given).
    #[arg(long)]
    pub requests: Option<u64>,
    /// perf: stop issuing requests after SECS seconds (a positive number, at most 86400).
    #[arg(long, value_name = "SECS", value_parser = args::parse_positive_secs)]
    pub duration: Option<f64>,
    /// perf: connections.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// perf: requests in flight per connection.
    #[arg(long, default_value_t = 1)]
    pub streams: usize,
}

fn builder(a: &ClientArgs) -> anyhow::Result<EngineBuilder> {
    if a.workers == 0 || a.workers > 256 {
        bail!("--workers must be between 1 and 256");
    }
    let trust = args::client_trust(a.ca.as_ref(), a.insecure)?;
    let client = tls::client_config(trust, &[a.app.alpn()])?;
    Ok(EngineBuilder::default()
        .workers(a.workers)
        .client(client)
        .transport(super::serve::transport()))
}

impl ClientArgs {
    /// The TLS server name (`localhost` unless given).
    pub fn server_name(&self) -> String {
        self.server_name
            .clone()
            .unwrap_or_else(|| "localhost".into())
    }

    /// The server's address (`--connect`).
    pub fn connect(&self) -> anyhow::Result<SocketAddr> {
        self.connect
            .context("--connect IP:PORT is required (the server to reach)")
    }
}

/// Options the chosen backend or application would ignore are refused, naming them, before
/// anything is done (as `serve` does): a client run is not what its command line says
/// otherwise.
/// Where `--out DIR` puts the bodies named `names`: checked before anything is fetched (or
/// attached), so that no body is lost to a name another one takes, and no file already
/// there is overwritten.
pub fn out_files(dir: &std::path::Path, names: &[String]) -> anyhow::Result<Vec<PathBuf>> {
    if !dir.is_dir() {
        bail!("--out {}: not a directory", dir.display());
    }
    let mut seen = std::collections::HashSet::new();
    names
        .iter()
        .map(|n| {
            let file = dir.join(n);
            if !seen.insert(n.as_str()) {
                bail!(
                    "--out: two of the fetches would be written to {} (fetch them in two runs)",
                    file.display()
                );
            }
            if file.symlink_metadata().is_ok() {
                bail!("--out: {} exists (it is not overwritten)", file.display());
            }
            Ok(file)
        })
        .collect()
}

/// Writes a new file `path` (never over one that appeared meanwhile, nor through a symbolic
/// link left there).
pub fn write_new(path: &std::path::Path, data: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data).map_err(|e| {
        // A half-written file is not left to pass for a body, nor to refuse the next run.
        drop(f);
        let _ = std::fs::remove_file(path);
        anyhow::Error::new(e).context(format!("writing {}", path.display()))
    })
}

fn refuse_ignored_flags(a: &ClientArgs) -> anyhow::Result<()> {
    if a.backend == ClientBackend::Udp {
        let set = [
            ("--iface", a.iface.is_some()),
            ("--queues", a.queues.is_some()),
            ("--xdp-mode", a.xdp_mode != super::xdp::ModeArg::Auto),
        ];
        args::refuse_given(&set, |named, several| {
            format!(
                "{named} {} AF_XDP options: the client runs over kernel UDP, they would be \
                 ignored (add --backend xdp, or leave them out)",
                if several { "are" } else { "is an" }
            )
        })?;
    }
    let (app, p) = (a.app, &a.perf);
    // Told from their defaults (the default "1M" is 10^6 octets).
    let perf_set = p.download != 1_000_000
        || p.upload != 0
        || p.requests.is_some()
        || p.duration.is_some()
        || p.connections != 1
        || p.streams != 1;
    let set = [
        (
            "--workers",
            // Over AF_XDP the client runs a worker per queue (--queues).
            a.workers != 1 && !(app == App::Perf && a.backend == ClientBackend::Udp),
        ),
        ("--message", !a.messages.is_empty() && app != App::Echo),
        ("--path", !a.paths.is_empty() && app != App::Hq),
        ("--url", !a.urls.is_empty() && app != App::H3),
        (
            "--out",
            a.out.is_some() && !matches!(app, App::Hq | App::H3),
        ),
        ("--json", a.json && !matches!(app, App::Perf | App::H3)),
        (
            "--download, --upload, --requests, --duration, --connections, --streams",
            perf_set && app != App::Perf,
        ),
    ];
    let over = match a.backend {
        ClientBackend::Udp => "",
        ClientBackend::Xdp => " over AF_XDP",
    };
    args::refuse_given(&set, |named, several| {
        format!(
            "{named} not used by --app {}{over}: leave {} out",
            app.name(),
            if several { "them" } else { "it" }
        )
    })
}

pub fn run(a: &ClientArgs) -> anyhow::Result<()> {
    refuse_ignored_flags(a)?;
    if a.app == App::H3 {
        return super::h3::client(a);
    }
    let b = builder(a)?;
    match a.app {
        App::H3 => unreachable!("handled above"),
        App::Perf => {
            let launch = Launch::of(a)?;
            let report = perf(
                b,
                a.connect()?,
                &a.server_name(),
                &a.perf,
                a.workers,
                &launch,
            )?;
            if a.json {
                println!("{}", report_json(&report));
            } else {
                println!("{report}");
            }
            Ok(())
        }
        App::Echo => echo(b, a),
        App::Hq => hq(b, a),
    }
}

/// Runs a perf client; fails when a request failed.
pub fn perf(
    b: EngineBuilder,
    remote: SocketAddr,
    server_name: &str,
    p: &PerfArgs,
    workers: usize,
    launch: &Launch,
) -> anyhow::Result<PerfReport> {
    if p.connections == 0 || p.streams == 0 {
        bail!("--connections and --streams must be at least 1");
    }
    let duration = match p.duration {
        None => None,
        Some(d) => match std::time::Duration::try_from_secs_f64(d) {
            Ok(d) if !d.is_zero() => Some(d),
            _ => bail!("--duration must be a positive number of seconds"),
        },
    };
    let requests = p
        .requests
        .or(if duration.is_some() { None } else { Some(100) });
    let cfg = Arc::new(PerfClientConfig {
        remote,
        server_name: server_name.to_string(),
        connections: p.connections,
        streams: p.streams,
        requests,
        duration,
        upload: p.upload,
        download: p.download,
    });
    let budget = Budget::new(requests);
    let workers = workers.min(p.connections);
    // Over AF_XDP the connections all start on worker 0 (the others receive for it).
    let share = if matches!(launch, Launch::Xdp { .. }) {
        1
    } else {
        workers
    };
    let (handlers, elapsed) = launch.run(
        b,
        remote,
        workers,
        |w| PerfClient::new(cfg.clone(), budget.clone(), w.min(share - 1), share),
        |h: &mut PerfClient, ctx| h.start(ctx),
    )?;
    let mut stats = PerfStats::default();
    for h in handlers {
        stats.merge(h.stats);
    }
    if stats.connections == 0 {
        bail!(
            "no connection to {remote} could be established: {}",
            stats.errors.first().map_or("timed out", String::as_str)
        );
    }
    if stats.failed > 0 {
        bail!(
            "{} of {} requests failed; first errors: {:?}",
            stats.failed,
            stats.failed + stats.requests,
            stats.errors
        );
    }
    Ok(stats.report(elapsed))
}

/// A perf report as a JSON object.
pub fn report_json(r: &PerfReport) -> serde_json::Value {
    serde_json::json!({
        "elapsed_s": r.elapsed_s,
        "requests": r.requests,
        "failed": r.failed,
        "connections": r.connections,
        "downloaded_bytes": r.downloaded,
        "uploaded_bytes": r.uploaded,
        "download_mbps": r.download_mbps,
        "upload_mbps": r.upload_mbps,
        "requests_per_s": r.requests_per_s,
        "latency_ms": {"p50": r.p50_ms, "p90": r.p90_ms, "p99": r.p99_ms, "max": r.max_ms},
    })
}

fn echo(b: EngineBuilder, a: &ClientArgs) -> anyhow::Result<()> {
    let messages: Vec<Bytes> = if a.messages.is_empty() {
        vec![Bytes::from_static(b"hello from xdp-quic")]
    } else {
        a.messages.iter().map(|m| Bytes::from(m.clone())).collect()
    };
    let (remote, name) = (a.connect()?, a.server_name());
    let msgs = messages.clone();
    let (handlers, _) = Launch::of(a)?.run(
        b,
        remote,
        1,
        move |_| EchoClient::new(remote, &name, msgs.clone(), vec![], 0),
        |h: &mut EchoClient, ctx| h.start(ctx),
    )?;
    let h = handlers.into_iter().next().context("no worker")?;
    if let Some(e) = &h.error {
        bail!("connection to {remote} failed: {e}");
    }
    for (m, ok) in messages.iter().zip(&h.results) {
        match ok {
            Some(true) => println!("{}", String::from_utf8_lossy(m)),
            _ => bail!(
                "the echo of {:?} did not come back intact",
                String::from_utf8_lossy(m)
            ),
        }
    }
    Ok(())
}

fn hq(b: EngineBuilder, a: &ClientArgs) -> anyhow::Result<()> {
    if a.paths.is_empty() {
        bail!("--app hq needs at least one --path /FILE");
    }
    if let Some(p) = a.paths.iter().find(|p| !p.starts_with('/')) {
        bail!("--path {p}: paths start with /");
    }
    let (remote, name, paths) = (a.connect()?, a.server_name(), a.paths.clone());
    let files = match &a.out {
        Some(dir) => {
            let names: Vec<String> = a
                .paths
                .iter()
                .map(|p| match p.trim_start_matches('/').replace('/', "_") {
                    n if n.is_empty() => "index".to_string(),
                    n => n,
                })
                .collect();
            Some(out_files(dir, &names)?)
        }
        None => None,
    };
    let (handlers, _) = Launch::of(a)?.run(
        b,
        remote,
        1,
        move |_| HqClient::new(remote, &name, paths.clone()),
        |h: &mut HqClient, ctx| h.start(ctx),
    )?;
    let h = handlers.into_iter().next().context("no worker")?;
    let mut failed = 0;
    for (i, (path, r)) in a.paths.iter().zip(&h.results).enumerate() {
        match r {
            Some(Fetched::Body(body)) => {
                println!("{path}: {} octets", body.len());
                if let Some(file) = files.as_ref().and_then(|f| f.get(i)) {
                    write_new(file, body)?;
                }
            }
            Some(Fetched::Reset(code)) => {
                failed += 1;
                println!("{path}: refused by the server (code {code})");
            }
            Some(Fetched::Failed(e)) => {
                failed += 1;
                println!("{path}: failed: {e}");
            }
            None => {
                failed += 1;
                println!("{path}: no answer");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} requests failed", a.paths.len());
    }
    Ok(())
}
