//! The `xdp-quic` command line: one module per group of subcommands.

/// `eprintln!` that ignores a failed write: a server whose stderr is a pipe that closed (its
/// reader went with a Ctrl-C) goes on, and stops, instead of panicking on a report.
macro_rules! note {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}

pub mod args;
pub mod client;
pub mod demo;
pub mod h3;
pub mod live;
pub mod serve;
pub mod xdp;
