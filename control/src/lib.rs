//! xdp-quic control plane, for daemons that embed the `xdp-quic` engine over AF_XDP: loading
//! and attaching the XDP steering program, its pinned maps and XSKMAP registration
//! ([`xdp`]), serving over AF_XDP with the program watched and a fallback to kernel UDP
//! ([`serve`]), the Prometheus exporter ([`metrics`]), and the netns + veth testbed of the
//! demo and the tests ([`testbed`]).
//! The `xdp-quic` command is the `xdp-quic-cli` package, a client of this library.
//!
//! Features: `serde` derives `Serialize` for the status and counters types (and adds
//! `xdp::CountersJson`); `testing` adds the module `testing`, the helpers of the workspace's
//! tests.

pub mod metrics;
pub mod serve;
mod signal;
pub mod testbed;
#[cfg(feature = "testing")]
pub mod testing;
pub mod xdp;
