//! `xdp-quic attach | detach | status | stats`: the operator's side of the XDP steering
//! program. Each command exits non-zero with a message saying what to do when it
//! cannot do its job, and then has changed nothing.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use xdp_quic_control::xdp::{
    self, AttachMode, AttachOptions, AttachOutcome, CountersJson, DetachOutcome, Mode,
    ServiceConfig,
};

/// `--mode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ModeArg {
    /// Native (driver) XDP when the driver has it, else generic (skb) XDP.
    #[default]
    Auto,
    /// Native (driver) XDP only.
    Native,
    /// Generic (skb) XDP only.
    Skb,
}

impl From<ModeArg> for AttachMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::Auto => AttachMode::Auto,
            ModeArg::Native => AttachMode::Native,
            ModeArg::Skb => AttachMode::Skb,
        }
    }
}

/// Arguments of `xdp-quic attach`.
#[derive(Debug, clap::Args)]
pub struct AttachArgs {
    /// Interface to attach to.
    #[arg(value_parser = super::args::parse_iface)]
    pub iface: String,
    /// UDP destination port to steer to the AF_XDP sockets (repeat for several).
    #[arg(long = "port", value_name = "PORT", required = true)]
    pub ports: Vec<u16>,
    /// Steer only packets to this destination address (repeat; default: any address).
    #[arg(long = "addr", value_name = "IP")]
    pub addrs: Vec<IpAddr>,
    /// XDP mode.
    #[arg(long, value_enum, default_value_t = ModeArg::Auto)]
    pub mode: ModeArg,
    /// Replace an XDP program that xdp-quic did not attach.
    #[arg(long)]
    pub force: bool,
    /// Turn the shield on: drop what QUIC says a server drops before it costs a frame, and,
    /// under pressure, admit new clients per source prefix (see docs/XDP.md). A server over
    /// this attachment runs it (its CID layout, the pressure monitor).
    #[arg(long, conflicts_with = "no_shield")]
    pub shield: bool,
    /// Turn the shield off (an attachment keeps it otherwise).
    #[arg(long)]
    pub no_shield: bool,
    /// With --shield: Initials without a token admitted per source prefix and second while
    /// under pressure (bursts of as many).
    #[arg(long, value_name = "N", requires = "shield", value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub shield_initial_rate: Option<u32>,
    /// With --shield: version negotiations per source prefix and second (bursts of twice as
    /// many).
    #[arg(long, value_name = "N", requires = "shield", value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub shield_vn_rate: Option<u32>,
    /// With --shield: the IPv4 source prefix that shares a bucket (bits, default 24).
    #[arg(long, value_name = "BITS", requires = "shield", value_parser = clap::value_parser!(u8).range(0..=32))]
    pub shield_prefix4: Option<u8>,
    /// With --shield: the IPv6 source prefix that shares a bucket (bits, default 56).
    #[arg(long, value_name = "BITS", requires = "shield", value_parser = clap::value_parser!(u8).range(0..=128))]
    pub shield_prefix6: Option<u8>,
    /// Run in the network namespace /run/netns/NAME (keeps the host's /sys/fs/bpf).
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
}

impl AttachArgs {
    /// The shield asked for: `Some(Some(config))` on, `Some(None)` off, `None` as it is.
    fn shield_config(&self) -> Option<Option<xdp::ShieldConfig>> {
        use xdp::shield::Rate;
        if self.no_shield {
            return Some(None);
        }
        if !self.shield {
            return None;
        }
        let mut c = xdp::ShieldConfig::default();
        if let Some(n) = self.shield_initial_rate {
            c.initial = Rate {
                per_sec: n,
                burst: n,
            };
        }
        if let Some(n) = self.shield_vn_rate {
            c.version_negotiation = Rate {
                per_sec: n,
                burst: n.saturating_mul(2),
            };
        }
        c.prefix_v4 = self.shield_prefix4.unwrap_or(c.prefix_v4);
        c.prefix_v6 = self.shield_prefix6.unwrap_or(c.prefix_v6);
        Some(Some(c))
    }
}

/// Arguments of `xdp-quic detach`.
#[derive(Debug, clap::Args)]
pub struct DetachArgs {
    /// Interface to detach from.
    #[arg(value_parser = super::args::parse_iface)]
    pub iface: String,
    /// Run in the network namespace /run/netns/NAME (keeps the host's /sys/fs/bpf).
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
}

/// Arguments of `xdp-quic status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Print JSON.
    #[arg(long)]
    pub json: bool,
    /// Run in the network namespace /run/netns/NAME (keeps the host's /sys/fs/bpf).
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
}

/// Arguments of `xdp-quic stats`.
#[derive(Debug, clap::Args)]
pub struct StatsArgs {
    /// Interface.
    #[arg(value_parser = super::args::parse_iface)]
    pub iface: String,
    /// Print JSON (one object; in watch mode one object per line).
    #[arg(long)]
    pub json: bool,
    /// Print the counters and their rates every SECS seconds (0.1 to 86400; until
    /// interrupted).
    #[arg(long, value_name = "SECS", value_parser = super::args::secs_between(0.1, 86_400.0))]
    pub watch: Option<f64>,
    /// In watch mode, stop after N reports (at least 1).
    #[arg(long, value_name = "N", requires = "watch", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Also read the metrics endpoint of a local daemon (`serve --metrics`): per-queue
    /// packets/s, drops, connections and busy %.
    #[arg(long, value_name = "ADDR")]
    pub daemon: Option<std::net::SocketAddr>,
    /// Run in the network namespace /run/netns/NAME (keeps the host's /sys/fs/bpf).
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
}

fn enter(netns: &Option<String>) -> anyhow::Result<()> {
    match netns {
        Some(n) => xdp::netns::enter(n),
        None => Ok(()),
    }
}

fn list<T: ToString>(v: impl IntoIterator<Item = T>, empty: &str) -> String {
    let s: Vec<String> = v.into_iter().map(|x| x.to_string()).collect();
    if s.is_empty() {
        empty.to_string()
    } else {
        s.join(", ")
    }
}

/// `xdp-quic attach`.
pub fn attach(a: &AttachArgs) -> anyhow::Result<()> {
    let service = ServiceConfig {
        ports: a.ports.iter().copied().collect(),
        // `--addr ::ffff:10.0.0.1` steers the IPv4 address its packets carry.
        addrs: a.addrs.iter().map(IpAddr::to_canonical).collect(),
    };
    service.validate()?;
    let shield = a.shield_config();
    if let Some(Some(c)) = &shield {
        c.validate()?;
    }
    enter(&a.netns)?;
    let opts = AttachOptions {
        service: service.clone(),
        mode: a.mode.into(),
        force: a.force,
        // Set with the attachment, under its lock: a failure changes nothing.
        shield: shield.clone(),
    };
    let ports = list(&service.ports, "-");
    let addrs = list(&service.addrs, "any");
    let pin_dir = xdp::pins::dir(&a.iface);
    let shield_before = match xdp::attach(&a.iface, &opts)? {
        AttachOutcome::Attached {
            mode,
            prog_id,
            replaced,
            mounted_bpffs,
            removed_stale,
        } => {
            if mounted_bpffs {
                println!("mounted bpffs at {}", xdp::pins::BPFFS);
            }
            if removed_stale {
                println!("removed stale pins of a previous attachment to {}", a.iface);
            }
            if let Some(id) = replaced {
                println!("removed the XDP program {id} from {} (--force)", a.iface);
            }
            if a.mode == ModeArg::Auto && mode == Mode::Skb {
                println!(
                    "native XDP is not available on {}: using generic (skb) mode",
                    a.iface
                );
            }
            println!(
                "attached xdp-quic to {} in {} mode (program id {prog_id}); ports {ports}; addresses {addrs}; pins in {}",
                a.iface,
                mode.name(),
                pin_dir.display()
            );
            None
        }
        AttachOutcome::Unchanged {
            mode,
            prog_id,
            shield_before,
        } => {
            println!(
                "xdp-quic is already attached to {} in {} mode (program id {prog_id}) with ports {ports}, addresses {addrs}: {}",
                a.iface,
                mode.name(),
                if shield.is_some() { "ports and addresses unchanged" } else { "nothing changed" }
            );
            shield_before
        }
        AttachOutcome::Updated {
            mode,
            prog_id,
            before,
            shield_before,
        } => {
            println!(
                "xdp-quic is already attached to {} in {} mode (program id {prog_id}): updated ports {} -> {ports}, addresses {} -> {addrs}",
                a.iface,
                mode.name(),
                list(&before.ports, "-"),
                list(&before.addrs, "any"),
            );
            shield_before
        }
    };
    if let Some(want) = shield {
        match (&shield_before, &want) {
            (_, Some(c)) if shield_before.as_ref() == Some(c) => {
                println!("shield: on, unchanged")
            }
            (_, Some(c)) => println!("shield: on ({})", shield_words(c)),
            (Some(_), None) => println!("shield: off"),
            (None, None) => println!("shield: off, unchanged"),
        }
    }
    Ok(())
}

/// The shield's configuration in words.
fn shield_words(c: &xdp::ShieldConfig) -> String {
    format!(
        "versions {}; per source prefix /{} /{}: version negotiation {}/s (bursts of {}), tokenless Initials under pressure {}",
        list(c.versions.iter().map(|v| format!("{v:#x}")), "-"),
        c.prefix_v4,
        c.prefix_v6,
        c.version_negotiation.per_sec,
        c.version_negotiation.burst,
        if c.admit_under_pressure {
            format!("{}/s (bursts of {})", c.initial.per_sec, c.initial.burst)
        } else {
            "unlimited".to_string()
        }
    )
}

/// `xdp-quic detach`.
pub fn detach(a: &DetachArgs) -> anyhow::Result<()> {
    enter(&a.netns)?;
    match xdp::detach(&a.iface)? {
        DetachOutcome::Detached { prog_id } => {
            println!(
                "detached xdp-quic (program id {prog_id}) from {} and removed its pins",
                a.iface
            )
        }
        DetachOutcome::RemovedStale => {
            println!(
                "{} had only stale xdp-quic pins (interface gone); removed them",
                a.iface
            )
        }
    }
    Ok(())
}

/// Says on stderr when the pins are read through the host's mount namespace (`ip netns
/// exec` hides /sys/fs/bpf).
fn note_host_view() {
    if let Some(p) = xdp::pins::host_view() {
        eprintln!(
            "note: this mount namespace has no bpffs at {} (ip netns exec?): reading the host's pins through {}",
            xdp::pins::BPFFS,
            p.display()
        );
    }
}

/// `xdp-quic status`.
pub fn status(a: &StatusArgs) -> anyhow::Result<()> {
    enter(&a.netns)?;
    note_host_view();
    let all = xdp::status()?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "interfaces": all }))?
        );
        return Ok(());
    }
    if all.is_empty() {
        println!("xdp-quic is not attached to any interface");
        return Ok(());
    }
    for s in all {
        match s.state {
            "attached" => {
                let by = if s.pinned {
                    String::new()
                } else {
                    format!(
                        " by a running process (not pinned): {};",
                        xdp::Owner::describe_holders(&s.holders)
                    )
                };
                println!(
                    "{}: attached{by} {} mode, program id {}, link id {}, ifindex {}",
                    s.iface,
                    s.mode.unwrap_or("?"),
                    s.prog_id.unwrap_or(0),
                    s.link_id.unwrap_or(0),
                    s.ifindex.unwrap_or(0)
                );
                println!("  ports: {}", list(&s.ports, "-"));
                println!("  addresses: {}", list(&s.addrs, "any"));
                let q: Vec<String> = s
                    .queues
                    .iter()
                    .map(|q| {
                        let mark = if q.socket { "socket" } else { "-" };
                        format!("{}:{mark}", q.queue)
                    })
                    .collect();
                println!("  queues: {}", q.join(" "));
                match &s.shield {
                    Some(sh) => println!(
                        "  shield: on ({}); CIDs checked: {}; under pressure: {}",
                        shield_words(&sh.config),
                        sh.cid_layout
                            .as_deref()
                            .unwrap_or("no (no server wrote its layout)"),
                        list(&sh.pressure, "no queue")
                    ),
                    None => println!("  shield: off"),
                }
                if let Some(dir) = &s.pin_dir {
                    println!("  pins: {dir}");
                }
            }
            "other-netns" => println!(
                "{}: attached in another network namespace (use --netns); pins {}",
                s.iface,
                s.pin_dir.as_deref().unwrap_or("-")
            ),
            "incompatible" => println!(
                "{}: pinned link live, but its maps do not open (pinned by another version of \
                 xdp-quic?): run `xdp-quic detach {}`, then attach again",
                s.iface, s.iface
            ),
            "unreadable" => println!(
                "{}: pins that cannot be read (see the warning above); pins {}",
                s.iface,
                s.pin_dir.as_deref().unwrap_or("-")
            ),
            _ => println!(
                "{}: stale pins (interface gone): run `xdp-quic detach {}`",
                s.iface, s.iface
            ),
        }
    }
    Ok(())
}

/// `"pinned"` or `"process"`, and the pids holding a process's attachment.
fn attachment_json(owner: &xdp::Owner) -> (&'static str, Vec<u32>) {
    match owner {
        xdp::Owner::Process { holders } => ("process", holders.iter().map(|h| h.pid).collect()),
        _ => ("pinned", Vec::new()),
    }
}

/// `xdp-quic stats`.
pub fn stats(a: &StatsArgs) -> anyhow::Result<()> {
    if a.daemon.is_some() {
        return stats_with_daemon(a);
    }
    enter(&a.netns)?;
    note_host_view();
    let mut prev = xdp::interface_counters(&a.iface)?;
    let owner = xdp::interface_owner(&a.iface)?;
    let (attachment, pids) = attachment_json(&owner);
    if let (xdp::Owner::Process { holders }, false) = (&owner, a.json) {
        println!(
            "{}: xdp-quic attached by a running process (not pinned): {}",
            a.iface,
            xdp::Owner::describe_holders(holders)
        );
    }
    let Some(secs) = a.watch else {
        if a.json {
            let j = serde_json::json!({
                "iface": a.iface,
                "attachment": attachment,
                "pids": pids,
                "counters": CountersJson::from(&prev),
            });
            println!("{}", serde_json::to_string_pretty(&j)?);
        } else {
            for (name, v) in prev.named() {
                println!("{name:<28} {v:>12}");
            }
        }
        return Ok(());
    };
    let interval = Duration::from_secs_f64(secs);
    let mut last = Instant::now();
    let mut n = 0u64;
    while a.count.is_none_or(|c| n < c) {
        std::thread::sleep(interval);
        let now_counters = xdp::interface_counters(&a.iface)?;
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64();
        let delta = now_counters.delta(&prev);
        if a.json {
            let rates: serde_json::Map<String, serde_json::Value> = delta
                .named()
                .into_iter()
                .map(|(k, d)| (k, serde_json::json!(d as f64 / dt)))
                .collect();
            let j = serde_json::json!({
                "iface": a.iface,
                "attachment": attachment,
                "pids": pids,
                "interval_secs": dt,
                "counters": CountersJson::from(&now_counters),
                "rates": rates,
            });
            println!("{}", serde_json::to_string(&j)?);
        } else {
            println!(
                "{:<28} {:>12} {:>14}",
                format!("{} ({dt:.1}s)", a.iface),
                "total",
                "per second"
            );
            for ((name, v), (_, d)) in now_counters.named().into_iter().zip(delta.named()) {
                println!("{name:<28} {v:>12} {:>14.1}", d as f64 / dt);
            }
        }
        prev = now_counters;
        last = now;
        n += 1;
    }
    Ok(())
}

/// `xdp-quic stats --daemon ADDR`: the program's counters (when readable) and the daemon's
/// per-queue table.
fn stats_with_daemon(a: &StatsArgs) -> anyhow::Result<()> {
    use crate::cli::live;
    use xdp_quic_control::metrics::{parse, scrape};
    let addr = a.daemon.expect("checked by the caller");
    enter(&a.netns)?;
    // The table is headed by the interface: one that is not there is an error, not a table
    // of the daemon's queues under a name it does not serve.
    xdp_quic::engine::ifindex(&a.iface)?;
    let mut prev = parse(&scrape(addr)?);
    anyhow::Context::with_context(live::check_iface(&prev, &a.iface), || {
        format!("--daemon {addr}")
    })?;
    let mut last = Instant::now();
    let Some(secs) = a.watch else {
        // The table's columns are rates: measured over one second between two scrapes.
        std::thread::sleep(Duration::from_secs(1));
        let now_samples = parse(&scrape(addr)?);
        let dt = last.elapsed().as_secs_f64();
        let rows = live::rows(&prev, &now_samples, dt);
        let program = xdp::interface_counters(&a.iface);
        if a.json {
            let j = serde_json::json!({
                "iface": a.iface,
                "interval_secs": dt,
                "counters": program.as_ref().ok().map(CountersJson::from),
                "queues": rows,
            });
            println!("{}", serde_json::to_string_pretty(&j)?);
        } else {
            match &program {
                Ok(c) => {
                    for (name, v) in c.named() {
                        println!("{name:<28} {v:>12}");
                    }
                }
                Err(e) => eprintln!("the XDP program's counters of {}: {e:#}", a.iface),
            }
            println!("{} ({dt:.1}s)", a.iface);
            print!("{}", live::render(&rows));
        }
        return Ok(());
    };
    let mut n = 0u64;
    while a.count.is_none_or(|c| n < c) {
        std::thread::sleep(Duration::from_secs_f64(secs));
        let now_samples = parse(&scrape(addr)?);
        let now = Instant::now();
        let dt = now.duration_since(last).as_secs_f64();
        let rows = live::rows(&prev, &now_samples, dt);
        if a.json {
            let j = serde_json::json!({
                "iface": a.iface,
                "interval_secs": dt,
                "counters": xdp::interface_counters(&a.iface).ok().as_ref().map(CountersJson::from),
                "queues": rows,
            });
            println!("{}", serde_json::to_string(&j)?);
        } else {
            println!("{} ({dt:.1}s)", a.iface);
            print!("{}", live::render(&rows));
        }
        prev = now_samples;
        last = now;
        n += 1;
    }
    Ok(())
}
