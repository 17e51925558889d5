//! Example applications on xdp-quic, each a [`xdp_quic::Handler`]:
//!
//! * [`echo`]: echoes bidirectional streams and datagrams (ALPN `echo`); [`async_echo`] is
//!   the same server on the async API ([`xdp_quic::tokio`]);
//! * [`perf`]: the QUIC performance protocol of quinn's perf tool and msquic's secnetperf
//!   (ALPN `perf`), server and client with throughput and latency figures;
//! * [`hq`]: an hq-interop (HTTP/0.9 over QUIC, ALPN `hq-interop`) file server and client;
//!   [`async_hq`] is the server on the async API;
//! * [`h3_files`]: HTTP/3 static files and a client, on the async API through `h3`.
//!
//! [`client`] runs any of the clients on an engine of its own; [`files`] opens files beneath a
//! directory without following links, on a thread pool (used by [`hq`]).

pub mod async_echo;
pub mod async_hq;
pub mod client;
pub mod echo;
pub mod files;
pub mod h3_files;
pub mod hq;
pub mod outbox;
pub mod perf;
