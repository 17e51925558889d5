//! A private testbed: two network namespaces joined by a multi-queue veth pair, with IPv4 and
//! IPv6 addresses, removed on drop (and by [`Testbed::remove_all_on_signal`] on Ctrl-C).
//!
//! Used by `xdp-quic demo` and by the integration tests; `scripts/testbed.sh` makes the same
//! kind of pair for people.
//!
//! veth quirk: packets a local socket sends through veth carry only a partial UDP checksum
//! (checksum offload: the receiving stack would not check it). An AF_XDP reader sees those
//! bytes, so the testbed turns TX checksum offload off on the client's end, whose packets the
//! server's AF_XDP sockets read. The server's end keeps its offloads, as a real NIC does
//! (without TX checksum offload the kernel does no GSO: the kernel transmit path would lose
//! its batches). [`Testbed::full_checksums_from_server`] turns it off there too, for tests
//! that read with AF_XDP in the client namespace.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::process::Command;
use std::sync::Mutex;

use anyhow::{bail, Context};

/// Namespaces that exist now, for the Ctrl-C handler.
static LIVE: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Two namespaces, `server` and `client`, joined by veth `server_if` <-> `client_if`.
#[derive(Debug)]
pub struct Testbed {
    pub server_ns: String,
    pub client_ns: String,
    pub server_if: String,
    pub client_if: String,
    pub server_v4: Ipv4Addr,
    pub client_v4: Ipv4Addr,
    pub server_v6: Ipv6Addr,
    pub client_v6: Ipv6Addr,
    pub queues: u32,
}

fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip(8): install iproute2")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

impl Testbed {
    /// Makes `<name>s` and `<name>c` (namespaces and interfaces; `name` at most 12
    /// characters), `queues` RX and TX queues per side, addresses 10.`net`.0.1/.2 and
    /// fd00:`net`::1/::2. Needs root.
    pub fn create(name: &str, queues: u32, net: u8) -> anyhow::Result<Self> {
        if name.is_empty()
            || name.len() > 12
            || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        {
            bail!("testbed name {name:?}: 1 to 12 letters, digits or '-'");
        }
        let tb = Testbed {
            server_ns: format!("{name}s"),
            client_ns: format!("{name}c"),
            server_if: format!("{name}s"),
            client_if: format!("{name}c"),
            server_v4: Ipv4Addr::new(10, net, 0, 1),
            client_v4: Ipv4Addr::new(10, net, 0, 2),
            server_v6: Ipv6Addr::new(0xfd00, u16::from(net), 0, 0, 0, 0, 0, 1),
            client_v6: Ipv6Addr::new(0xfd00, u16::from(net), 0, 0, 0, 0, 0, 2),
            queues,
        };
        // Registered first: a failure half-way still removes what was made (Drop).
        for ns in [&tb.server_ns, &tb.client_ns] {
            // Made and registered under the lock, which a signal's clean-up takes too: it
            // cannot come between the two and miss this namespace.
            let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
            ip(&["netns", "add", ns]).map_err(|e| {
                let denied = format!("{e:#}").contains("Operation not permitted")
                    || format!("{e:#}").contains("Permission denied");
                if denied {
                    e.context("creating a network namespace (needs root: CAP_SYS_ADMIN)")
                } else {
                    e.context("creating a network namespace")
                }
            })?;
            live.push(ns.clone());
        }
        let q = queues.to_string();
        ip(&[
            "link",
            "add",
            &tb.server_if,
            "netns",
            &tb.server_ns,
            "numrxqueues",
            &q,
            "numtxqueues",
            &q,
            "type",
            "veth",
            "peer",
            "name",
            &tb.client_if,
            "netns",
            &tb.client_ns,
            "numrxqueues",
            &q,
            "numtxqueues",
            &q,
        ])?;
        for (ns, dev, v4, v6) in [
            (&tb.server_ns, &tb.server_if, tb.server_v4, tb.server_v6),
            (&tb.client_ns, &tb.client_if, tb.client_v4, tb.client_v6),
        ] {
            ip(&["-n", ns, "addr", "add", &format!("{v4}/24"), "dev", dev])?;
            ip(&[
                "-n",
                ns,
                "addr",
                "add",
                &format!("{v6}/64"),
                "dev",
                dev,
                "nodad",
            ])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        let (ns, dev) = (tb.client_ns.clone(), tb.client_if.clone());
        in_netns(&ns, move || tx_checksum_offload_off(&dev))??;
        Ok(tb)
    }

    /// Turns TX checksum offload off on the server's end too: for an AF_XDP reader in the
    /// client namespace (a client engine over AF_XDP).
    pub fn full_checksums_from_server(&self) -> anyhow::Result<()> {
        let (ns, dev) = (self.server_ns.clone(), self.server_if.clone());
        in_netns(&ns, move || tx_checksum_offload_off(&dev))?
    }

    /// The server's address of a family.
    pub fn server_ip(&self, v6: bool) -> IpAddr {
        if v6 {
            self.server_v6.into()
        } else {
            self.server_v4.into()
        }
    }

    /// Runs `f` on a thread inside the server namespace (threads it spawns stay there).
    pub fn in_server<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        in_netns(&self.server_ns, f)
    }

    /// Runs `f` on a thread inside the client namespace.
    pub fn in_client<T: Send>(&self, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
        in_netns(&self.client_ns, f)
    }

    /// Attaches the XDP program to the server's interface for `setup.listen`'s port (any
    /// address) in `mode`, and starts `builder` over AF_XDP per `setup`, both inside the
    /// server namespace. Keep the returned attachment (its counters) until the engine is shut
    /// down: dropping it detaches the program.
    pub fn serve_xdp<H: xdp_quic::Handler>(
        &self,
        builder: xdp_quic::EngineBuilder,
        setup: &xdp_quic::XdpSetup,
        mode: crate::xdp::AttachMode,
        factory: impl FnMut(usize) -> H + Send,
    ) -> anyhow::Result<(xdp_quic::Engine<H>, crate::xdp::EmbeddedAttachment)> {
        use crate::xdp::socket_map::ServerSteering;
        let service = crate::xdp::ServiceConfig {
            ports: [setup.listen.port()].into(),
            addrs: Default::default(),
        };
        self.in_server(|| {
            let attachment = crate::xdp::attach_embedded(&setup.iface, &service, mode)?;
            let steering =
                ServerSteering::with_registry(attachment.xsks()?, "testbed", attachment.prog_id());
            let engine = builder.start_xdp(setup, Box::new(steering), factory)?;
            Ok((engine, attachment))
        })?
    }

    /// Installs a handler of SIGINT, SIGTERM and SIGHUP (Ctrl-C) that removes every testbed
    /// of this process ([`Testbed::remove_all`]), then exits with status 130. Once per
    /// process; refused when another handler of these signals is installed.
    pub fn remove_all_on_signal() -> anyhow::Result<()> {
        crate::signal::on_termination(|_| {
            // The lock is held to the exit: a namespace the main thread would make next
            // (it makes and registers each under this lock) is not made after the list was
            // read.
            let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
            for ns in std::mem::take(&mut *live) {
                let _ = ip(&["netns", "del", &ns]);
            }
            // Not eprintln!: a closed stderr (a pipe whose reader went with the Ctrl-C)
            // would panic this thread before the exit.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "interrupted: testbed removed");
            std::process::exit(130);
        })
        .context("installing the Ctrl-C handler")
    }

    /// Removes every testbed of this process now (their namespaces, and so their veth
    /// pairs), e.g. from a signal handler of the caller's own; dropping them afterwards does
    /// nothing more.
    pub fn remove_all() {
        let names = std::mem::take(&mut *LIVE.lock().unwrap_or_else(|p| p.into_inner()));
        for ns in names {
            let _ = ip(&["netns", "del", &ns]);
        }
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        let mut live = LIVE.lock().unwrap_or_else(|p| p.into_inner());
        for ns in [&self.server_ns, &self.client_ns] {
            if let Some(i) = live.iter().position(|n| n == ns) {
                live.swap_remove(i);
                // Deleting the namespace deletes the veth end in it, and so the pair.
                let _ = ip(&["netns", "del", ns]);
            }
        }
    }
}

/// Runs `f` on a new thread that first enters the network namespace `ns`.
pub fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> anyhow::Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| {
            crate::xdp::netns::enter(ns)?;
            Ok(f())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("thread in namespace {ns} panicked"))?
    })
}

/// Turns TX checksum offload off on `dev` (ETHTOOL_STXCSUM) in this thread's namespace.
pub fn tx_checksum_offload_off(dev: &str) -> anyhow::Result<()> {
    crate::xdp::ethtool::tx_checksum_offload_off(dev)
        .with_context(|| format!("turning TX checksum offload off on {dev}"))
}
