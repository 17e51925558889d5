//! Starting the workers over AF_XDP: one socket per NIC queue, registered in the XDP
//! program's socket map, and an ordinary UDP socket on the service port as a canary.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use super::{Engine, EngineBuilder, EngineError};
use crate::handler::Handler;

/// Where AF_XDP sockets are registered so the XDP program steers packets to them: the
/// XSKMAP of `xdp-quic attach` (pinned) or of an attachment the process made itself. The
/// control crate implements it; tests may implement it over their own map.
pub trait SocketMap: Send {
    /// Steers RX queue `queue`'s service packets to the AF_XDP socket `fd`.
    fn insert(&mut self, queue: u32, fd: std::os::fd::BorrowedFd<'_>) -> io::Result<()>;
    /// Stops steering queue `queue` (its packets go to the kernel again).
    fn remove(&mut self, queue: u32) -> io::Result<()>;
}

/// How to run the workers over AF_XDP: one worker per queue.
#[derive(Debug, Clone)]
pub struct XdpSetup {
    /// The interface.
    pub iface: String,
    /// The service address: its port is steered; an unspecified IP serves every address.
    pub listen: SocketAddr,
    /// The queues to serve, one worker each (worker i drains `queues[i]`).
    pub queues: Vec<u32>,
    /// The UMEM of each queue.
    pub umem: crate::xsk::umem::UmemConfig,
    /// Entries of the TX and completion rings. The RX and fill rings have one entry per
    /// UMEM frame (`umem.frames`): every frame can wait there for the worker.
    pub ring_size: u32,
    pub mode: crate::xsk::socket::BindMode,
    pub poll: crate::backend::xsk::PollMode,
    pub busy_poll: Option<crate::xsk::socket::BusyPoll>,
    /// Check received UDP checksums.
    pub verify_checksum: bool,
    /// How each queue chooses its transmit path.
    pub tx: crate::backend::xsk::TxMode,
}

impl XdpSetup {
    /// Defaults for `iface`, `listen` and `queues`: 16,384 frames of 2 KiB per queue (32 MiB,
    /// [`crate::xsk::umem::DEFAULT_FRAMES`]) and as many RX and fill ring entries, 2048-entry
    /// TX and completion rings, zero-copy where possible, adaptive polling, checksums
    /// verified, the transmit path chosen per queue (`TxMode::Auto`).
    pub fn new(iface: &str, listen: SocketAddr, queues: Vec<u32>) -> Self {
        Self {
            iface: iface.to_string(),
            listen,
            queues,
            umem: crate::xsk::umem::UmemConfig::default(),
            ring_size: 2048,
            mode: crate::xsk::socket::BindMode::Auto,
            poll: crate::backend::xsk::PollMode::default(),
            busy_poll: None,
            verify_checksum: true,
            tx: crate::backend::xsk::TxMode::Auto,
        }
    }

    /// Refuses a set-up the workers could not open, before anything is made for it (the
    /// engine checks it first; call it before attaching a program for it, too): no queue or
    /// a queue twice, a UMEM layout [`crate::xsk::umem::Umem::new`] refuses, rings that are
    /// not a power of two, busy-poll values the kernel refuses, an adaptive spin over 1 s.
    pub fn check(&self) -> Result<(), EngineError> {
        let bad = |m: String| Err(EngineError::Config(m));
        if self.queues.is_empty() {
            return bad("no queue to serve".into());
        }
        let mut seen = self.queues.clone();
        seen.sort_unstable();
        if let Some(w) = seen.windows(2).find(|w| w[0] == w[1]) {
            return bad(format!(
                "queue {} listed twice in {:?} (one worker per queue)",
                w[0], self.queues
            ));
        }
        self.umem
            .check()
            .map_err(|e| EngineError::Config(e.to_string()))?;
        if !self.ring_size.is_power_of_two() || self.ring_size > 1 << 30 {
            return bad(format!(
                "AF_XDP ring size {} (a power of two, at most 2^30)",
                self.ring_size
            ));
        }
        if let Some(bp) = &self.busy_poll {
            if i32::try_from(bp.usecs).is_err() {
                return bad(format!(
                    "busy-poll time {} µs (at most {})",
                    bp.usecs,
                    i32::MAX
                ));
            }
            if bp.budget > u32::from(u16::MAX) {
                return bad(format!(
                    "busy-poll budget {} (at most {})",
                    bp.budget,
                    u16::MAX
                ));
            }
        }
        if let crate::backend::xsk::PollMode::Adaptive { spin } = self.poll {
            // A worker spins this long before each sleep: past a second it would only keep
            // its core busy (and `Duration::MAX` overflows the instant it spins to).
            if spin > std::time::Duration::from_secs(1) {
                return bad(format!("an adaptive poll spin of {spin:?} (at most 1 s)"));
            }
        }
        Ok(())
    }

    /// The socket of `queue` (of the interface `ifindex`): rings, bind mode and busy-poll.
    /// Its RX and fill rings have one entry per UMEM frame, so that every frame can wait in
    /// them (the fill ring lends them all on the kernel transmit path): a worker that falls
    /// behind loses packets when its UMEM is full, not before, at a smaller ring.
    pub fn socket_config(&self, ifindex: u32, queue: u32) -> crate::xsk::socket::XskConfig {
        let mut socket = crate::xsk::socket::XskConfig::new(ifindex, queue);
        socket.rx_size = self.umem.frames;
        socket.fill_size = self.umem.frames;
        socket.tx_size = self.ring_size;
        socket.comp_size = self.ring_size;
        socket.mode = self.mode;
        socket.busy_poll = self.busy_poll;
        socket
    }
}

/// The interface index of `name`.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let c = std::ffi::CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name has a NUL"))?;
    // SAFETY: passes a valid NUL-terminated string.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(io::Error::new(
            io::ErrorKind::NotFound,
            format!("no interface named {name:?} in this network namespace"),
        ));
    }
    Ok(i)
}

impl EngineBuilder {
    /// Opens one AF_XDP socket per queue of `setup`, registers each in `map`, binds one
    /// ordinary UDP socket per queue to the service address (SO_REUSEPORT; so that the kernel
    /// does not answer the port with ICMP, as the canary of what misses the XDP path, and as
    /// the kernel transmit path), and starts one worker per queue.
    ///
    /// Each queue's UMEM is mapped and touched, and its socket's rings made and bound, on a
    /// thread pinned to its worker's CPU (see [`EngineBuilder::pin_cpus`]), so that they sit
    /// on that CPU's NUMA node; its fill ring is filled before the socket is bound. The engine takes the sockets out of `map`
    /// when it is joined. The worker count is the number of queues.
    pub fn start_xdp<H, F>(
        self,
        setup: &XdpSetup,
        map: Box<dyn SocketMap>,
        factory: F,
    ) -> Result<Engine<H>, EngineError>
    where
        H: Handler,
        F: FnMut(usize) -> H,
    {
        if setup.listen.port() == 0 {
            return Err(EngineError::Config(
                "the AF_XDP backend needs a fixed port (or sockets bound already: \
                 start_xdp_on)"
                    .into(),
            ));
        }
        let services = bind_services(setup.listen, setup.queues.len())?;
        self.start_xdp_on(setup, map, services, factory)
    }

    /// Like [`EngineBuilder::start_xdp`], over the queues' UDP sockets bound already
    /// ([`bind_services`]; one per queue, on the port the XDP program steers): the way for
    /// a client engine, whose port is the one the kernel picked. A client engine (no server
    /// configuration) opens connections, so its queues must transmit through the kernel
    /// ([`crate::backend::xsk::TxMode::Kernel`], or `Auto` on copy-mode sockets): the TX ring
    /// has no next hop for a peer it has not heard from.
    pub fn start_xdp_on<H, F>(
        self,
        setup: &XdpSetup,
        map: Box<dyn SocketMap>,
        services: Vec<std::net::UdpSocket>,
        factory: F,
    ) -> Result<Engine<H>, EngineError>
    where
        H: Handler,
        F: FnMut(usize) -> H,
    {
        self.start_xdp_run(setup, map, services, factory, super::threads::Blocking)
    }

    /// [`EngineBuilder::start_xdp_on`] with the threads run by `runner`.
    pub(crate) fn start_xdp_run<H, F, R>(
        mut self,
        setup: &XdpSetup,
        mut map: Box<dyn SocketMap>,
        services: Vec<std::net::UdpSocket>,
        factory: F,
        runner: R,
    ) -> Result<Engine<H>, EngineError>
    where
        H: Handler,
        F: FnMut(usize) -> H,
        R: super::threads::Runner<H>,
    {
        use crate::backend::xsk::{TxPath, XskBackend, XskBackendConfig};
        setup.check()?;
        // Nothing is opened, nor put in the socket map, for settings the build would refuse.
        self.check(setup.queues.len())?;
        if services.len() != setup.queues.len() {
            return Err(EngineError::Config(format!(
                "{} UDP sockets for {} queues",
                services.len(),
                setup.queues.len()
            )));
        }
        let port = services[0].local_addr()?.port();
        let index = ifindex(&setup.iface)?;
        self.workers = setup.queues.len();
        let client_only = self.server.is_none();
        let mut backends = Vec::with_capacity(setup.queues.len());
        for (i, (&queue, service)) in setup.queues.iter().zip(services).enumerate() {
            let socket = setup.socket_config(index, queue);
            let cpu = self
                .cpus
                .as_ref()
                .filter(|c| !c.is_empty())
                .map(|c| c[i % c.len()]);
            let umem_cfg = setup.umem;
            let named = |e: io::Error| {
                io::Error::new(e.kind(), format!("{} queue {queue}: {e}", setup.iface))
            };
            let cfg = XskBackendConfig {
                socket,
                umem: setup.umem,
                port,
                poll: setup.poll,
                verify_checksum: setup.verify_checksum,
                // A batch must fit the TX ring, with room to spare for the next one.
                max_segments: (setup.ring_size as usize / 2).clamp(1, 16),
                tx: setup.tx,
            };
            // The UMEM, the rings the kernel allocates at their setsockopt and its buffer pool
            // at bind: all made on the worker's CPU, so on its NUMA node.
            let b = crate::cpu::on_cpu(cpu, move || {
                let umem = crate::xsk::umem::Umem::new(umem_cfg)?;
                XskBackend::open(cfg, umem, Some(service))
            })
            .and_then(|b| b)
            .map_err(named)?;
            if client_only && b.tx_path() == TxPath::Xsk {
                return Err(EngineError::Config(format!(
                    "{} queue {queue}: a client engine over AF_XDP transmits through the \
                     kernel (tx kernel): the TX ring has no next hop for the servers it \
                     connects to",
                    setup.iface
                )));
            }
            backends.push(b);
        }
        let infos = backends
            .iter()
            .map(|b| b.info().map(Arc::new))
            .collect::<io::Result<Vec<_>>>()?;
        for (b, &q) in backends.iter().zip(&setup.queues) {
            if let Err(e) = map.insert(q, b.fd()) {
                for &done in setup.queues.iter().take_while(|&&d| d != q) {
                    let _ = map.remove(done);
                }
                return Err(e.into());
            }
        }
        tracing::info!(
            iface = %setup.iface,
            queues = ?setup.queues,
            zero_copy = infos.iter().all(|i| i.zero_copy),
            tx = ?infos.iter().map(|i| i.tx).collect::<Vec<_>>(),
            "AF_XDP backend bound"
        );
        let queues = setup.queues.clone();
        let mut engine = match self.start_run(backends, factory, runner) {
            Ok(e) => e,
            Err(e) => {
                for &q in &queues {
                    let _ = map.remove(q);
                }
                return Err(e);
            }
        };
        engine.xsk = infos;
        engine.on_join = Some(Box::new(move || {
            for &q in &queues {
                if let Err(e) = map.remove(q) {
                    tracing::warn!(queue = q, "cannot unregister the AF_XDP socket: {e}");
                }
            }
        }));
        Ok(engine)
    }
}

/// Binds the queues' UDP sockets to `listen` (SO_REUSEPORT, one per queue; dual-stack `[::]`
/// when `listen` is unspecified, so that the service answers on every address, IPv4 and
/// IPv6). Port 0 picks one for all: read it from the first socket.
pub fn bind_services(listen: SocketAddr, queues: usize) -> io::Result<Vec<std::net::UdpSocket>> {
    let addr = if listen.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv6Addr::UNSPECIFIED.into(), listen.port())
    } else {
        listen
    };
    crate::backend::udp::bind_reuseport(addr, queues).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("cannot reserve UDP {listen} for the queues: {e}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_umem_frame_can_wait_in_the_rx_ring() {
        let mut setup = XdpSetup::new("eth0", "0.0.0.0:4433".parse().unwrap(), vec![0, 1]);
        assert_eq!(setup.umem.frames, crate::xsk::umem::DEFAULT_FRAMES);
        let s = setup.socket_config(7, 1);
        assert_eq!((s.ifindex, s.queue), (7, 1));
        assert_eq!((s.rx_size, s.fill_size), (16384, 16384));
        assert_eq!((s.tx_size, s.comp_size), (2048, 2048));
        setup.umem.frames = 64;
        setup.ring_size = 8;
        setup.check().unwrap();
        let s = setup.socket_config(7, 0);
        assert_eq!(
            (s.rx_size, s.fill_size, s.tx_size, s.comp_size),
            (64, 64, 8, 8)
        );
    }
}
