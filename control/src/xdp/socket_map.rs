//! The engine's [`xdp_quic::SocketMap`] over this crate's XSKMAP access: the pinned map of
//! `xdp-quic attach`, or an attachment made for the life of the server.

use std::collections::BTreeSet;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd};

use anyhow::Context;

use super::{
    attach_embedded, inspect, pins, AttachMode, EmbeddedAttachment, Pinned, ServiceConfig,
    XskRegistry,
};

/// Where a server's AF_XDP sockets are registered.
pub struct ServerSteering {
    registry: XskRegistry,
    /// Over pins: the interface and the address served, checked again once a socket is
    /// registered (an `attach` may have narrowed the pins between the first check and the
    /// registration, which its own check of registrations did not see yet).
    pinned: Option<(String, SocketAddr)>,
    /// Held for the life of the server when the process attached the program itself.
    embedded: Option<EmbeddedAttachment>,
    origin: String,
    prog_id: u32,
}

impl ServerSteering {
    /// Uses the attachment `xdp-quic attach` pinned for `iface`, or, when there is none
    /// (or the pins of that name are another network namespace's interface's), attaches the
    /// program to `iface` for the life of the returned value, steering `listen`'s port (and
    /// its address, unless unspecified).
    pub fn for_server(iface: &str, listen: SocketAddr, mode: AttachMode) -> anyhow::Result<Self> {
        if pins::dir(iface).join(xdp_quic_ebpf::maps::XSKS).exists() {
            // Read the pins as a whole: no attach or detach changes them meanwhile.
            let _lock = pins::PinLock::existing()
                .with_context(|| format!("locking {}", pins::pin_root().display()))?;
            let prog_id = match inspect(iface)? {
                Pinned::Live(live) => {
                    // The pins are named by interface: after a rename, the name may be
                    // another interface's now.
                    let here = super::netlink::link_by_name(iface)?.map(|l| l.ifindex);
                    if here != Some(live.config.ifindex) {
                        anyhow::bail!(
                            "the program xdp-quic attach pinned as {iface} is attached to \
                             another interface (index {}; renamed since?): detach it \
                             (`xdp-quic detach {iface}`) and attach again",
                            live.config.ifindex
                        );
                    }
                    // `serve --xdp-mode` over pins is refused, not ignored, when the
                    // attachment runs in another mode.
                    if !live.mode.satisfies(mode) {
                        let wanted = if mode == AttachMode::Native {
                            "native"
                        } else {
                            "skb"
                        };
                        anyhow::bail!(
                            "the program xdp-quic attach pinned for {iface} runs in {} mode, \
                             not {wanted} (--xdp-mode): attach it in {wanted} mode \
                             (`xdp-quic detach {iface}`, then `xdp-quic attach {iface} --mode \
                             {wanted}` with its ports), or serve without --xdp-mode",
                            live.mode.name()
                        );
                    }
                    // The attachment must steer what this server listens on, or every
                    // client packet would reach the canary socket instead.
                    let service = live.maps.read_service()?;
                    check_steers(iface, &service, listen)?;
                    let others: Vec<String> = (service.ports.iter())
                        .filter(|&&p| p != listen.port())
                        .map(u16::to_string)
                        .collect();
                    if !others.is_empty() {
                        tracing::warn!(
                            "the attachment of {iface} steers port(s) {} too: their packets on \
                             this server's queues come to it and are dropped (rx_other_port), \
                             not given to the kernel; attach with --port {} alone unless \
                             another server serves them on queues of its own",
                            others.join(","),
                            listen.port()
                        );
                    }
                    Some(live.prog_id)
                }
                // The pins are named by interface alone: another namespace's interface of the
                // same name (each container's eth0) has them. This server's interface has no
                // pinned attachment: it attaches the program for its life, as without pins.
                Pinned::OtherNamespace => None,
                Pinned::Incompatible { prog_id } => {
                    anyhow::bail!(super::attach::incompatible(iface, prog_id))
                }
                Pinned::Stale | Pinned::None => anyhow::bail!(
                    "the pins of xdp-quic attach for {iface} are stale (the link attaches \
                     nothing): run `xdp-quic detach {iface}`, then attach again"
                ),
            };
            if let Some(prog_id) = prog_id {
                return Ok(Self {
                    registry: XskRegistry::open(iface)?,
                    pinned: Some((iface.to_string(), listen)),
                    embedded: None,
                    origin: "pinned by xdp-quic attach".into(),
                    prog_id,
                });
            }
            tracing::info!(
                "the pins named {iface} hold another network namespace's attachment: this \
                 server attaches the program to its own {iface} for its life"
            );
        }
        Self::attach_own(iface, listen, mode)
    }

    /// Attaches the program to `iface` for the life of the returned value, steering
    /// `listen`'s port (and its address, unless unspecified), whatever `xdp-quic attach`
    /// pinned: for a client engine, whose port is its own.
    pub fn attach_own(iface: &str, listen: SocketAddr, mode: AttachMode) -> anyhow::Result<Self> {
        // An IPv4-mapped address ([::ffff:10.0.0.1]:443, a dual-stack socket's) is steered
        // as the IPv4 address its packets carry.
        let mut addrs = BTreeSet::new();
        let ip = listen.ip().to_canonical();
        if !ip.is_unspecified() {
            addrs.insert(ip);
        }
        let service = ServiceConfig {
            ports: BTreeSet::from([listen.port()]),
            addrs,
        };
        let attachment = attach_embedded(iface, &service, mode)?;
        Ok(Self {
            pinned: None,
            prog_id: attachment.prog_id(),
            registry: attachment.xsks()?,
            origin: format!(
                "attached by this process ({} mode)",
                attachment.mode().name()
            ),
            embedded: Some(attachment),
        })
    }

    /// Registers sockets in `registry` (e.g. of an attachment the caller holds), whose
    /// program has id `prog_id`.
    pub fn with_registry(registry: XskRegistry, origin: &str, prog_id: u32) -> Self {
        Self {
            registry,
            pinned: None,
            embedded: None,
            origin: origin.into(),
            prog_id,
        }
    }

    /// The id of the program that steers to these sockets (for a [`super::ProgramWatch`]).
    pub fn prog_id(&self) -> u32 {
        self.prog_id
    }

    /// How the program is attached, in words.
    pub fn describe(&self) -> String {
        self.origin.clone()
    }

    /// The embedded attachment, if this process made it (its counters are readable there).
    pub fn embedded(&self) -> Option<&EmbeddedAttachment> {
        self.embedded.as_ref()
    }

    /// The shield's maps of the program: the embedded attachment's, else the pinned ones.
    pub fn shield_maps(&self, iface: &str) -> anyhow::Result<super::ShieldMaps> {
        match &self.embedded {
            Some(a) => a.shield(),
            None => super::ShieldMaps::from_pins(iface),
        }
    }

    /// A reader of the program's counters: the embedded attachment's, else the pinned ones.
    pub fn counters_reader(&self, iface: &str) -> anyhow::Result<super::CountersReader> {
        match &self.embedded {
            Some(a) => a.counters_reader(),
            None => super::CountersReader::from_pins(iface),
        }
    }
}

struct Fd(i32);
impl AsRawFd for Fd {
    fn as_raw_fd(&self) -> i32 {
        self.0
    }
}

/// Whether the pinned `service` of `iface` steers `listen`; the error says what to do.
fn check_steers(iface: &str, service: &ServiceConfig, listen: SocketAddr) -> anyhow::Result<()> {
    let ip = listen.ip().to_canonical();
    let addr_ok = service.addrs.is_empty() || ip.is_unspecified() || service.addrs.contains(&ip);
    if !service.ports.contains(&listen.port()) || !addr_ok {
        let ports: Vec<String> = service.ports.iter().map(u16::to_string).collect();
        anyhow::bail!(
            "the program xdp-quic attach pinned for {iface} steers port(s) {} {}, not \
             {listen}: attach again naming this port too (`xdp-quic attach {iface} --port {}` \
             with its other ports) or listen on one it steers",
            ports.join(","),
            if service.addrs.is_empty() {
                "of every address".to_string()
            } else {
                format!("of {:?}", service.addrs)
            },
            listen.port()
        );
    }
    Ok(())
}

impl ServerSteering {
    /// Over pins, once a socket is registered: the pins still steer what this server
    /// listens on. Checked under the pin lock, as `attach` checks the registrations before
    /// it narrows the pins: one of the two sees the other.
    fn check_still_steered(&self) -> anyhow::Result<()> {
        let Some((iface, listen)) = &self.pinned else {
            return Ok(());
        };
        let _lock = pins::PinLock::existing()
            .with_context(|| format!("locking {}", pins::pin_root().display()))?;
        let changed = "the pinned attachment changed while this server started";
        // The same attachment (not one detached and attached again, whose sockets map is
        // another), steering this server's address still.
        let live = match inspect(iface)? {
            Pinned::Live(live) if live.prog_id == self.prog_id => live,
            _ => anyhow::bail!(
                "{changed}: {iface} has no longer the program {} it found (detached, or \
                 attached again?): start it again",
                self.prog_id
            ),
        };
        check_steers(iface, &live.maps.read_service()?, *listen).context(changed)
    }
}

impl xdp_quic::SocketMap for ServerSteering {
    fn insert(&mut self, queue: u32, fd: BorrowedFd<'_>) -> io::Result<()> {
        self.registry
            .register(queue, &Fd(fd.as_raw_fd()))
            .map_err(|e| io::Error::other(format!("{e:#}")))?;
        if let Err(e) = self.check_still_steered() {
            let _ = self.registry.unregister(queue);
            return Err(io::Error::other(format!("{e:#}")));
        }
        Ok(())
    }

    fn remove(&mut self, queue: u32) -> io::Result<()> {
        self.registry
            .unregister(queue)
            .map_err(|e| io::Error::other(format!("{e:#}")))
    }
}
