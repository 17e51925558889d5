//! Errors an operator can act on. Each message says what is wrong and what to do.

use std::fmt;
use std::path::PathBuf;

use super::owner::Owner;

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
        "not permitted: {what} needs the capabilities CAP_NET_ADMIN and CAP_BPF, and CAP_PERFMON \
         to load the program (the kernel's verifier allows its packet parsing only with it); \
         CAP_SYS_ADMIN stands for CAP_BPF and CAP_PERFMON, and mounts bpffs; run it as root or \
         grant them, e.g. `sudo setcap cap_net_admin,cap_bpf,cap_perfmon,cap_sys_admin+ep \
         $(command -v xdp-quic)`"
    )]
    NotPermitted {
        /// The operation that was refused.
        what: String,
    },
    /// The interface already has an XDP program: another tool's, or xdp-quic's own (pinned,
    /// or attached by a running process for its own life). The message says which, and
    /// suggests only what the command that asked ([`Requester`]) can do.
    #[error("{0}")]
    ProgramPresent(Box<Occupied>),
    /// A command that pins or unpins runs in a private mount namespace without bpffs at
    /// /sys/fs/bpf (as under `ip netns exec`), where its pins would not be the host's.
    #[error(
        "xdp-quic {command} must run in the host's mount namespace: this process runs in a \
         private one without bpffs at /sys/fs/bpf (as under `ip netns exec`), where xdp-quic's \
         pins are not the host's: a bpffs mounted here vanishes when the command exits, and \
         an attachment pinned on it with it. Nothing was changed. Run the same command with \
         `--netns {netns}` instead of under `ip netns exec` (--netns enters the network \
         namespace and keeps the host's /sys/fs/bpf), or enter only the network namespace: \
         `nsenter --net=/run/netns/{netns} xdp-quic {command} ...`"
    )]
    PrivateMountNamespace {
        /// `attach` or `detach`.
        command: &'static str,
        /// The network namespace this process runs in (its name under /run/netns), or
        /// `NAME` when it has none.
        netns: String,
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
         namespace; detach it there (xdp-quic detach {iface} --netns <ns>) first"
    )]
    OtherNamespace {
        /// Interface name.
        iface: String,
        /// Pin directory.
        path: PathBuf,
    },
    /// xdp-quic is not attached to this interface.
    #[error(
        "xdp-quic is not attached to '{iface}': no pins at {path}, nor xdp-quic's program \
         attached by a running process (see `xdp-quic status`)"
    )]
    NotAttached {
        /// Interface name.
        iface: String,
        /// Pin directory that was looked for.
        path: PathBuf,
    },
    /// xdp-quic's program is on the interface, attached by a running process for its own
    /// life: there are no pins to remove.
    #[error(
        "xdp-quic's program on '{iface}' was attached by a running process for its own life, \
         not pinned: {holders}; it goes when that process stops (`xdp-quic detach` removes \
         what `xdp-quic attach` pinned)"
    )]
    AttachedByProcess {
        /// Interface name.
        iface: String,
        /// The processes holding it, in words.
        holders: String,
    },
    /// bpffs is not mounted and could not be mounted.
    #[error(
        "bpffs is not mounted at /sys/fs/bpf and mounting it failed ({cause}); mount it with \
         `mount -t bpf -o mode=0700 bpf /sys/fs/bpf` (needs CAP_SYS_ADMIN) and retry"
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

/// Who asked to attach: the error then suggests only what that command can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Requester {
    /// `xdp-quic attach` (it has `--force`).
    Attach,
    /// A server attaching the program for its own life (`xdp-quic serve` through
    /// [`super::socket_map::ServerSteering::for_server`], [`super::attach_embedded`]),
    /// steering UDP port `port`. It has no `--force`.
    Server {
        /// The service port.
        port: u16,
    },
}

/// The XDP program already on an interface, and who asked to attach there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Occupied {
    /// Interface name.
    pub iface: String,
    /// Id of the program there.
    pub prog_id: u32,
    /// Mode it runs in (`native`, `skb`, ...).
    pub mode: &'static str,
    /// Whose it is.
    pub owner: Owner,
    /// The command that was refused.
    pub requester: Requester,
}

impl fmt::Display for Occupied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Self {
            iface,
            prog_id,
            mode,
            owner,
            requester,
        } = self;
        match (owner, requester) {
            (Owner::Other, Requester::Attach) => write!(
                f,
                "interface '{iface}' already has an XDP program (id {prog_id}, {mode} mode) that \
                 xdp-quic did not attach; remove it (`ip link set dev {iface} xdp off`) or pass \
                 --force to replace it"
            ),
            (Owner::Other, Requester::Server { port }) => write!(
                f,
                "interface '{iface}' already has an XDP program (id {prog_id}, {mode} mode) that \
                 xdp-quic did not attach, and a server does not replace it; remove it (`ip link \
                 set dev {iface} xdp off`) if nothing needs it, or replace it for good with \
                 `xdp-quic attach {iface} --port {port} --force` (the server then uses that \
                 attachment); then start the server again"
            ),
            (Owner::Unknown, Requester::Attach) => write!(
                f,
                "interface '{iface}' already has an XDP program (id {prog_id}, {mode} mode), \
                 and whose it is cannot be told without CAP_SYS_ADMIN (listing BPF programs \
                 takes it): it may be xdp-quic's, attached by a running server; as root, see \
                 `xdp-quic status`, then remove it or attach with --force to replace it"
            ),
            (Owner::Unknown, Requester::Server { port }) => write!(
                f,
                "interface '{iface}' already has an XDP program (id {prog_id}, {mode} mode), \
                 and a server does not replace it; whose it is cannot be told without \
                 CAP_SYS_ADMIN (listing BPF programs takes it): it may be another server's \
                 (see `xdp-quic status` as root); if nothing needs it, as root, replace it \
                 for good with `xdp-quic attach {iface} --port {port} --force`; then start \
                 the server again"
            ),
            (Owner::Process { holders }, Requester::Attach) => write!(
                f,
                "interface '{iface}' already has xdp-quic's XDP program (id {prog_id}, {mode} \
                 mode), attached by a running process for its own life (not pinned): {}; stop \
                 that process first, then attach (--force would take the program away from \
                 under it: a server stops when it loses its program)",
                Owner::describe_holders(holders)
            ),
            (Owner::Process { holders }, Requester::Server { .. }) => write!(
                f,
                "interface '{iface}' already has xdp-quic's XDP program (id {prog_id}, {mode} \
                 mode), attached by another running process for its own life (not pinned): {}; \
                 one server at a time serves an interface: stop that one first, or serve on \
                 another interface",
                Owner::describe_holders(holders)
            ),
            (Owner::Pinned { pin_dir, pinned_as }, Requester::Attach) => write!(
                f,
                "interface '{iface}' already has xdp-quic's XDP program (id {prog_id}, {mode} \
                 mode), pinned at {} for an interface named '{pinned_as}' (renamed since?); run \
                 `xdp-quic detach {pinned_as}` first, then attach again",
                pin_dir.display()
            ),
            (Owner::Pinned { pin_dir, pinned_as }, Requester::Server { port }) => write!(
                f,
                "interface '{iface}' already has xdp-quic's XDP program (id {prog_id}, {mode} \
                 mode), pinned at {} for an interface named '{pinned_as}' (renamed since?); run \
                 `xdp-quic detach {pinned_as}` and `xdp-quic attach {iface} --port {port}`, then \
                 start the server again",
                pin_dir.display()
            ),
        }
    }
}
