//! Argument types shared by several subcommands.

use std::path::PathBuf;

use anyhow::{bail, Context};
use xdp_quic::tls;

/// Which example application runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum App {
    /// Echo streams and datagrams (ALPN `echo`).
    Echo,
    /// The QUIC perf protocol (ALPN `perf`).
    Perf,
    /// hq-interop, HTTP/0.9 over QUIC (ALPN `hq-interop`).
    Hq,
}

impl App {
    /// The ALPN protocol of the application.
    pub fn alpn(self) -> &'static [u8] {
        match self {
            App::Echo => xdp_quic_examples::echo::ALPN,
            App::Perf => xdp_quic_examples::perf::ALPN,
            App::Hq => xdp_quic_examples::hq::ALPN,
        }
    }
}

/// The I/O backend of the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendArg {
    /// AF_XDP sockets, one per queue of --iface (needs root: CAP_NET_ADMIN, CAP_BPF,
    /// CAP_NET_RAW, CAP_IPC_LOCK).
    Xdp,
    /// Kernel UDP sockets, SO_REUSEPORT, one per worker.
    Udp,
    /// AF_XDP where --iface and the privileges allow it, else UDP (the choice is logged).
    Auto,
}

/// How an idle AF_XDP worker waits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum PollArg {
    /// Spin on the rings: lowest latency, a full core per worker.
    Busy,
    /// Spin 50 µs, then sleep until the socket is readable or a timer is due.
    Adaptive,
}

/// Zero-copy or copy mode of the AF_XDP sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BindArg {
    /// Zero-copy where the driver has it, else copy.
    Auto,
    ZeroCopy,
    Copy,
}

/// Parses a queue list such as `0-3` or `0,2` (the same syntax as CPU lists).
pub fn parse_queues(s: &str) -> Result<Vec<u32>, String> {
    let v = parse_cpus(s).map_err(|e| e.replace("CPU", "queue"))?;
    v.into_iter()
        .map(|q| u32::try_from(q).map_err(|_| format!("queue {q} out of range")))
        .collect()
}

/// The RX queues of `iface` in this thread's network namespace (netlink), as a list 0..n.
pub fn all_queues(iface: &str) -> anyhow::Result<Vec<u32>> {
    let link = crate::xdp::netlink::link_by_name(iface)
        .with_context(|| format!("looking up {iface}"))?
        .with_context(|| format!("no interface {iface:?} in this network namespace"))?;
    if link.rx_queues == 0 {
        bail!("{iface} has no RX queue");
    }
    Ok((0..link.rx_queues).collect())
}

/// Parses a size such as `1500`, `64k`, `10M`, `1G` (powers of 1000; `Ki`, `Mi`, `Gi` for
/// powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("'{s}' is not a size (examples: 1500, 64k, 10M, 1G, 4Ki)"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" | "b" => 1,
        "k" | "K" | "kB" | "KB" => 1_000,
        "M" | "MB" => 1_000_000,
        "G" | "GB" => 1_000_000_000,
        "Ki" | "KiB" => 1 << 10,
        "Mi" | "MiB" => 1 << 20,
        "Gi" | "GiB" => 1 << 30,
        u => return Err(format!("unknown size unit '{u}' in '{s}'")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("'{s}' is too large"))
}

/// Parses a CPU list such as `0,2-3`.
pub fn parse_cpus(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let bad = || format!("'{s}' is not a CPU list (example: 0,2-3)");
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) =
                    (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?);
                if a > b {
                    return Err(bad());
                }
                out.extend(a..=b);
            }
            None => out.push(part.parse().map_err(|_| bad())?),
        }
    }
    if out.is_empty() {
        return Err("empty CPU list".into());
    }
    Ok(out)
}

/// The server's certificate: from files, or a fresh self-signed one.
pub fn server_identity(
    cert: Option<&PathBuf>,
    key: Option<&PathBuf>,
) -> anyhow::Result<tls::Identity> {
    match (cert, key) {
        (Some(c), Some(k)) => Ok(tls::Identity::from_pem_files(c, k)?),
        (None, None) => tls::Identity::self_signed(&["localhost", "127.0.0.1", "::1"])
            .context("generating a self-signed certificate"),
        _ => bail!("--cert and --key go together"),
    }
}

/// How the client checks the server: a CA file, or not at all (`--insecure`).
pub fn client_trust(ca: Option<&PathBuf>, insecure: bool) -> anyhow::Result<tls::Trust> {
    match (ca, insecure) {
        (Some(_), true) => bail!("--ca and --insecure exclude each other"),
        (Some(path), false) => Ok(tls::Trust::Roots(tls::certs_from_pem_file(path)?)),
        (None, true) => Ok(tls::Trust::InsecureAnyCertificate),
        (None, false) => bail!(
            "the server's certificate cannot be checked: give --ca FILE, or --insecure \
             against a test server with a self-signed certificate"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1500"), Ok(1500));
        assert_eq!(parse_size("64k"), Ok(64_000));
        assert_eq!(parse_size("10M"), Ok(10_000_000));
        assert_eq!(parse_size("1G"), Ok(1_000_000_000));
        assert_eq!(parse_size("4Ki"), Ok(4096));
        assert!(parse_size("ten").is_err());
        assert!(parse_size("5X").is_err());
        assert!(parse_size("99999999999999999999G").is_err());
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("0,2-3"), Ok(vec![0, 2, 3]));
        assert!(parse_cpus("3-1").is_err());
        assert!(parse_cpus("").is_err());
        assert!(parse_cpus("a").is_err());
    }
}
