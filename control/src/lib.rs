//! xdp-quic control plane: loading and attaching the XDP steering program, its pinned maps,
//! and the `xdp-quic` command line.

pub mod metrics;
pub mod testbed;
#[cfg(feature = "testing")]
pub mod testing;
pub mod xdp;
