//! Errors an operator can act on. Each message says what is wrong and what to do.

use std::path::PathBuf;

/// An error of the XDP control plane that tells the operator what to do.
///
/// Every operation that returns one of these has changed nothing on the system
/// (a failed attach detaches what it attached and removes the pins it made).
#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    /// The interface does not exist in the current network namespace.
    #[error("unknown interface '{0}': no such network interface in this network namespace (see `ip link`)")]
    UnknownInterface(String),
    /// The named network namespace does not exist.
    #[error(
        "unknown network namespace '{0}': /run/netns/{0} does not exist (see `ip netns list`)"
    )]
    UnknownNetns(String),
    /// The process lacks capabilities.
    #[error(
        "not permitted: {what} needs the capabilities CAP_NET_ADMIN and CAP_BPF (CAP_SYS_ADMIN \
         to mount bpffs or where the kernel has no CAP_BPF); run it as root or grant them, e.g. \
         `sudo setcap cap_net_admin,cap_bpf,cap_sys_admin+ep $(command -v xdp-quic)`"
    )]
    NotPermitted {
        /// The operation that was refused.
        what: String,
    },
    /// Another XDP program (not ours) is attached to the interface.
    #[error(
        "interface '{iface}' already has an XDP program (id {prog_id}, {mode} mode) that \
         xdp-quic did not attach; remove it (`ip link set dev {iface} xdp off`) or pass \
         --force to replace it"
    )]
    ForeignProgram {
        /// Interface name.
        iface: String,
        /// Program id of the other program.
        prog_id: u32,
        /// Mode it runs in.
        mode: &'static str,
    },
    /// xdp-quic is attached already in another mode than the one asked for.
    #[error(
        "xdp-quic is already attached to '{iface}' in {current} mode; run `xdp-quic detach \
         {iface}` first to attach in {wanted} mode"
    )]
    ModeMismatch {
        /// Interface name.
        iface: String,
        /// Mode of the existing attachment.
        current: &'static str,
        /// Mode asked for.
        wanted: &'static str,
    },
    /// The pins of this interface name belong to an interface of another namespace.
    #[error(
        "the pins at {path} belong to an interface named '{iface}' in another network \
         namespace; detach it there (xdp-quic --netns <ns> detach {iface}) first"
    )]
    OtherNamespace {
        /// Interface name.
        iface: String,
        /// Pin directory.
        path: PathBuf,
    },
    /// xdp-quic is not attached to this interface.
    #[error("xdp-quic is not attached to '{iface}': no pins at {path} (see `xdp-quic status`)")]
    NotAttached {
        /// Interface name.
        iface: String,
        /// Pin directory that was looked for.
        path: PathBuf,
    },
    /// bpffs is not mounted and could not be mounted.
    #[error(
        "bpffs is not mounted at /sys/fs/bpf and mounting it failed ({cause}); mount it with \
         `mount -t bpf bpf /sys/fs/bpf` (needs CAP_SYS_ADMIN) and retry"
    )]
    BpffsMissing {
        /// Why the mount failed.
        cause: String,
    },
    /// The driver does not do native XDP.
    #[error(
        "the driver of '{iface}' refuses native XDP ({cause}); use --mode skb (generic XDP) \
         or --mode auto"
    )]
    NativeRefused {
        /// Interface name.
        iface: String,
        /// The kernel's answer.
        cause: String,
    },
    /// A bad argument.
    #[error("{0}")]
    BadArgument(String),
}
