//! The `xdp-quic` command line: one module per group of subcommands.

pub mod args;
pub mod client;
pub mod demo;
pub mod h3;
pub mod live;
pub mod serve;
pub mod xdp;
