//! `xdp-quic`: serve and test QUIC on the sharded engine, and manage the XDP steering program.

mod cli;

use clap::{Parser, Subcommand};

/// A sharded QUIC datapath for Linux: AF_XDP kernel bypass through an XDP steering
/// program, or kernel UDP sockets where AF_XDP is not available.
#[derive(Debug, Parser)]
#[command(name = "xdp-quic", version, about)]
struct Cli {
    /// Log format on stderr (filter with RUST_LOG, e.g. RUST_LOG=xdp_quic=debug).
    #[arg(long, value_enum, global = true, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve an example application (echo, perf, hq, h3) on the engine.
    Serve(cli::serve::ServeArgs),
    /// Run an example client (echo, perf, hq, h3) against a server.
    Client(cli::client::ClientArgs),
    /// Perf server and client in one process: throughput, requests/s, latency, counters.
    Demo(cli::demo::DemoArgs),
    /// Attach the XDP steering program to an interface (pinned under /sys/fs/bpf/xdp-quic).
    Attach(cli::xdp::AttachArgs),
    /// Detach the XDP steering program and remove its pins.
    Detach(cli::xdp::DetachArgs),
    /// Show every interface xdp-quic is attached to.
    Status(cli::xdp::StatusArgs),
    /// Show the XDP program's counters of an interface.
    Stats(cli::xdp::StatsArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // An invalid RUST_LOG is an error, not a silent `warn`.
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) => tracing_subscriber::EnvFilter::try_new(&spec)
            .map_err(|e| anyhow::anyhow!("RUST_LOG={spec:?}: {e}"))?,
        Err(std::env::VarError::NotUnicode(spec)) => {
            anyhow::bail!("RUST_LOG={spec:?} is not UTF-8")
        }
        Err(std::env::VarError::NotPresent) => tracing_subscriber::EnvFilter::new("warn"),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        // A log line that cannot be written (stderr a pipe that closed) is dropped: the
        // library would report it with `eprintln!`, which panics there, in the middle of a
        // server's shutdown.
        .log_internal_errors(false);
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    if matches!(cli.command, Command::Status(_) | Command::Stats(_)) {
        // Report commands end quietly when what reads them does (`stats --watch 1 | head`),
        // as Unix tools do, instead of panicking on a broken pipe. (The servers keep Rust's
        // default: a closed log pipe is no reason to drop connections.)
        // SAFETY: signal(2) with SIG_DFL, before any other thread exists.
        unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    }
    match cli.command {
        Command::Serve(a) => cli::serve::run(&a),
        Command::Client(a) => cli::client::run(&a),
        Command::Demo(a) => cli::demo::run(&a),
        Command::Attach(a) => cli::xdp::attach(&a),
        Command::Detach(a) => cli::xdp::detach(&a),
        Command::Status(a) => cli::xdp::status(&a),
        Command::Stats(a) => cli::xdp::stats(&a),
    }
}
