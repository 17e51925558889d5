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
    /// HTTP/3 static files (ALPN `h3`), on the async API.
    H3,
}

impl App {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            App::Echo => "echo",
            App::Perf => "perf",
            App::Hq => "hq",
            App::H3 => "h3",
        }
    }

    /// The ALPN protocol of the application.
    pub fn alpn(self) -> &'static [u8] {
        match self {
            App::Echo => xdp_quic_examples::echo::ALPN,
            App::Perf => xdp_quic_examples::perf::ALPN,
            App::Hq => xdp_quic_examples::hq::ALPN,
            App::H3 => xdp_quic_examples::h3_files::ALPN,
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

/// `--tx`: the transmit path of AF_XDP queues.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TxArg {
    /// `xsk` on zero-copy sockets, `kernel` otherwise (copy mode: veth, drivers without
    /// zero-copy).
    Auto,
    /// Frames on the AF_XDP socket's TX ring.
    Xsk,
    /// The queue's UDP socket, with GSO: the kernel builds one skb per batch.
    Kernel,
}

impl From<TxArg> for xdp_quic::backend::xsk::TxMode {
    fn from(t: TxArg) -> Self {
        match t {
            TxArg::Auto => Self::Auto,
            TxArg::Xsk => Self::Xsk,
            TxArg::Kernel => Self::Kernel,
        }
    }
}

/// Parses a queue list such as `0-3` or `0,2` (the same syntax as CPU lists).
/// Refuses the flags of `flags` that were given (`true`) where the run would not use them:
/// `why(names, several)` says so, naming them (`--a, --b`). Ok when none was given.
pub fn refuse_given(
    flags: &[(&str, bool)],
    why: impl FnOnce(&str, bool) -> String,
) -> anyhow::Result<()> {
    let given: Vec<&str> = flags
        .iter()
        .filter(|(_, on)| *on)
        .map(|(f, _)| *f)
        .collect();
    if given.is_empty() {
        return Ok(());
    }
    let several = given.len() > 1 || given[0].contains(',');
    bail!("{}", why(&given.join(", "), several))
}

pub fn parse_queues(s: &str) -> Result<Vec<u32>, String> {
    // Queue numbers of real NICs stay far below this; an engine has at most 256 workers.
    Ok(parse_list(s, "queue", 4095)?
        .into_iter()
        .map(|q| q as u32)
        .collect())
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

/// The longest interval a periodic flag takes: one day.
pub const MAX_INTERVAL_SECS: u64 = 86_400;

/// Parses a whole number of seconds between 1 and [`MAX_INTERVAL_SECS`] (one day): the value
/// parser of periodic flags such as `serve --stats-every SECS`. Zero (which would report in a
/// busy loop) and anything past a day are refused.
pub fn parse_interval_secs(s: &str) -> Result<u64, String> {
    match s.trim().parse::<u64>() {
        Ok(v) if (1..=MAX_INTERVAL_SECS).contains(&v) => Ok(v),
        _ => Err(format!(
            "'{s}' is not a whole number of seconds between 1 and {MAX_INTERVAL_SECS}"
        )),
    }
}

/// A value parser of a number of seconds (a fraction allowed) between `min` and `max`
/// inclusive, both finite and `min > 0`: e.g. `value_parser = secs_between(0.1, 86400.0)`.
/// Refuses zero, negative numbers, NaN, infinities and anything out of range, so the value
/// always makes a valid [`std::time::Duration`] (`Duration::from_secs_f64` panics on some).
pub fn secs_between(
    min: f64,
    max: f64,
) -> impl Fn(&str) -> Result<f64, String> + Clone + Send + Sync + 'static {
    assert!(
        min.is_finite() && max.is_finite() && min > 0.0 && min <= max,
        "secs_between({min}, {max})"
    );
    move |s: &str| match s.trim().parse::<f64>() {
        Ok(v) if v.is_finite() && (min..=max).contains(&v) => Ok(v),
        _ => Err(format!(
            "'{s}' is not a number of seconds between {min} and {max}"
        )),
    }
}

/// Parses a positive number of seconds (a fraction allowed, e.g. `0.5`), at most a day: the
/// general value parser of duration flags such as `client --duration SECS`.
pub fn parse_positive_secs(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        // Positive once made a Duration, too: 1e-12 would round to zero.
        Ok(v)
            if v.is_finite()
                && v > 0.0
                && v <= MAX_INTERVAL_SECS as f64
                && !std::time::Duration::from_secs_f64(v).is_zero() =>
        {
            Ok(v)
        }
        _ => Err(format!(
            "'{s}' is not a positive number of seconds (at most {MAX_INTERVAL_SECS})"
        )),
    }
}

/// Parses an interface name (the kernel's rules: 1 to 15 characters, no `/`, `:` or
/// spaces, not `.` or `..`).
pub fn parse_iface(s: &str) -> Result<String, String> {
    xdp_quic_control::xdp::pins::check_iface_name(s)
        .map(|()| s.to_string())
        .map_err(|e| e.to_string())
}

/// The highest CPU number a CPU list may name (the kernel's `NR_CPUS` limit).
const MAX_CPU: usize = 8191;

/// Parses a CPU list such as `0,2-3`: each CPU at most once, none above 8191.
pub fn parse_cpus(s: &str) -> Result<Vec<usize>, String> {
    parse_list(s, "CPU", MAX_CPU)
}

/// Parses a list of numbers and ranges (`0,2-3`) of `what`, each at most `max` and named
/// once: a range is checked before it is expanded, so a huge one is an error, not an
/// allocation.
fn parse_list(s: &str, what: &str, max: usize) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    let bad = || format!("'{s}' is not a {what} list (example: 0,2-3)");
    let too_big = |n: usize| format!("{what} {n} out of range (at most {max})");
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (a, b): (usize, usize) = match part.split_once('-') {
            Some((a, b)) => (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?),
            None => {
                let n = part.parse().map_err(|_| bad())?;
                (n, n)
            }
        };
        if a > b {
            return Err(bad());
        }
        if b > max {
            return Err(too_big(b));
        }
        for n in a..=b {
            if out.contains(&n) {
                return Err(format!("{what} {n} is named twice in '{s}'"));
            }
            out.push(n);
        }
    }
    if out.is_empty() {
        return Err(format!("empty {what} list"));
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
    fn interval_secs() {
        assert_eq!(parse_interval_secs("1"), Ok(1));
        assert_eq!(parse_interval_secs("5"), Ok(5));
        assert_eq!(parse_interval_secs(" 60 "), Ok(60));
        assert_eq!(parse_interval_secs("86400"), Ok(86_400));
        for bad in [
            "0",
            "86401",
            "-1",
            "1.5",
            "",
            "x",
            "99999999999999999999999",
        ] {
            let e = parse_interval_secs(bad).unwrap_err();
            assert!(e.contains("between 1 and 86400"), "{bad}: {e}");
        }
    }

    #[test]
    fn bounded_secs() {
        let p = secs_between(0.1, 86_400.0);
        assert_eq!(p("0.1"), Ok(0.1));
        assert_eq!(p("0.2"), Ok(0.2));
        assert_eq!(p("1"), Ok(1.0));
        assert_eq!(p("86400"), Ok(86_400.0));
        for bad in [
            "0", "0.05", "-1", "86400.5", "nan", "inf", "-inf", "1e30", "", "1s",
        ] {
            let e = p(bad).unwrap_err();
            assert!(e.contains("between 0.1 and 86400"), "{bad}: {e}");
        }
    }

    #[test]
    fn positive_secs() {
        assert_eq!(parse_positive_secs("0.5"), Ok(0.5));
        assert_eq!(parse_positive_secs("30"), Ok(30.0));
        assert_eq!(parse_positive_secs("86400"), Ok(86_400.0));
        assert_eq!(parse_positive_secs("1e-9"), Ok(1e-9));
        for bad in [
            "0", "0.0", "-0.5", "nan", "NaN", "inf", "1e30", "86401", "", "ten", "1e-12",
        ] {
            let e = parse_positive_secs(bad).unwrap_err();
            assert!(e.contains("positive number of seconds"), "{bad}: {e}");
        }
    }

    /// The parsers as clap runs them: refused values are usage errors (exit status 2).
    #[test]
    fn clap_refuses_zero_intervals() {
        #[derive(Debug, clap::Parser)]
        struct T {
            #[arg(long, value_parser = parse_interval_secs)]
            every: Option<u64>,
            #[arg(long, value_parser = secs_between(0.1, 86_400.0))]
            watch: Option<f64>,
            #[arg(long, value_parser = parse_positive_secs)]
            duration: Option<f64>,
        }
        use clap::Parser as _;
        let t =
            T::try_parse_from(["t", "--every", "5", "--watch", "0.5", "--duration", "2"]).unwrap();
        assert_eq!(
            (t.every, t.watch, t.duration),
            (Some(5), Some(0.5), Some(2.0))
        );
        for args in [
            ["t", "--every", "0"],
            ["t", "--watch", "0"],
            ["t", "--duration", "0"],
        ] {
            let e = T::try_parse_from(args).unwrap_err();
            assert_eq!(
                e.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}"
            );
            assert_eq!(e.exit_code(), 2);
        }
    }

    #[test]
    fn cpus() {
        assert_eq!(parse_cpus("0,2-3"), Ok(vec![0, 2, 3]));
        assert!(parse_cpus("3-1").is_err());
        assert!(parse_cpus("").is_err());
        assert!(parse_cpus("a").is_err());
        // Huge ranges are refused before they are expanded, repeats are refused.
        assert!(parse_cpus("0-18446744073709551615")
            .unwrap_err()
            .contains("at most 8191"));
        assert!(parse_queues("0-4294967295")
            .unwrap_err()
            .contains("at most 4095"));
        assert!(parse_cpus("1,0-2").unwrap_err().contains("named twice"));
        assert_eq!(parse_queues("0-3"), Ok(vec![0, 1, 2, 3]));
    }
}
