//! Pinning, priority, CPU time: what fair timing on a shared 2-core machine needs.

use anyhow::bail;

/// Pins the calling thread (and the threads it will spawn) to `cpu` and raises its priority
/// (nice -15; needs root, else it stays as it is).
pub fn pin_and_prioritize(cpu: usize) -> anyhow::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET stays inside it for cpu < CPU_SETSIZE (checked);
    // sched_setaffinity and setpriority take no other pointers.
    unsafe {
        if cpu >= libc::CPU_SETSIZE as usize {
            bail!("cpu {cpu} out of range");
        }
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            bail!("pinning to cpu {cpu}: {}", std::io::Error::last_os_error());
        }
        libc::setpriority(libc::PRIO_PROCESS, 0, -15);
    }
    Ok(())
}

/// CPU seconds process `pid` has run so far, to the nanosecond, every thread it ever had
/// included (those that ended too): its CPU-time clock (`clock_getcpuclockid(3)`, the
/// kernel's sum of its threads' run time). /proc/PID/stat's user + system time counts the
/// same in 10 ms ticks.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let mut clock: libc::clockid_t = 0;
    // SAFETY: the call writes one clockid_t into the live local.
    let rc = unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) };
    if rc != 0 {
        bail!(
            "the CPU clock of process {pid}: {}",
            std::io::Error::from_raw_os_error(rc)
        );
    }
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: the kernel writes one timespec into the live local.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        bail!(
            "the CPU clock of process {pid}: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9)
}

/// Jiffies of one CPU from /proc/stat.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct CpuJiffies {
    /// user + nice + system + irq + softirq.
    pub busy: u64,
    /// busy + idle + iowait + steal.
    pub total: u64,
    /// Time the hypervisor gave to others (a sign of a noisy neighbour).
    pub steal: u64,
    /// irq + softirq: kernel work charged to no process (the veth receive path, say).
    pub irq: u64,
}

/// Per-CPU jiffies now (`cpuN` lines of /proc/stat), indexed by CPU number: an offline CPU,
/// which has no line, is a zero entry, so that index N is CPU N.
pub fn cpu_jiffies() -> anyhow::Result<Vec<CpuJiffies>> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let mut out = Vec::new();
    for line in stat.lines() {
        let mut f = line.split_whitespace();
        let Some(name) = f.next() else { continue };
        let Some(id) = name
            .strip_prefix("cpu")
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue;
        };
        if out.len() <= id {
            out.resize(id + 1, CpuJiffies::default());
        }
        let v: Vec<u64> = f.map(|x| x.parse().unwrap_or(0)).collect();
        let g = |i: usize| v.get(i).copied().unwrap_or(0);
        let busy = g(0) + g(1) + g(2) + g(5) + g(6);
        out[id] = CpuJiffies {
            busy,
            total: busy + g(3) + g(4) + g(7),
            steal: g(7),
            irq: g(5) + g(6),
        };
    }
    if out.is_empty() {
        bail!("/proc/stat has no cpuN lines");
    }
    Ok(out)
}

/// CPU seconds of every kernel thread so far (children of kthreadd: ksoftirqd, kworkers...):
/// kernel work the traffic causes outside the processes that made it.
pub fn kernel_threads_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut ticks = 0u64;
    for e in dir.flatten() {
        let name = e.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let f: Vec<&str> = rest.split_whitespace().collect();
        // After the name: state, ppid, ... utime (12th), stime (13th).
        if f.get(1) != Some(&"2") {
            continue;
        }
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        ticks += n(11) + n(12);
    }
    ticks as f64 / hz()
}

/// CPU ticks of every process but kernel threads and `exclude`, by pid: the other work of
/// the machine (sampled around a span; see `report::Measure::new`). Its own (utime, stime)
/// and that of its children it reaped (cutime, cstime): a process that starts and ends
/// within the span (a compiler a build runs) is gone from the second sample, and only its
/// parent's reaped-children time shows it. (A child reaped in the span counts whole, also
/// its time before the span: this errs towards calling a span noisy.)
pub fn other_processes_ticks(exclude: &[u32]) -> std::collections::HashMap<u32, u64> {
    let mut out = std::collections::HashMap::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == 2 || exclude.contains(&pid) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
        let f: Vec<&str> = rest.split_whitespace().collect();
        // Kernel threads (children of kthreadd) are counted apart.
        if f.get(1) == Some(&"2") {
            continue;
        }
        let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
        out.insert(pid, n(11) + n(12) + n(13) + n(14));
    }
    out
}

/// Clock ticks per second of /proc times.
pub fn hz() -> f64 {
    // SAFETY: sysconf takes no pointers.
    unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64
}

/// Resident memory of process `pid` in KiB (VmRSS of /proc/PID/status).
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no VmRSS for process {pid}"))
}

/// Runs `ethtool ARGS` in network namespace `ns`; its standard output.
pub fn ethtool(ns: &str, args: &[&str]) -> anyhow::Result<String> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    xdp_quic_control::testbed::in_netns(ns, move || -> anyhow::Result<String> {
        let out = std::process::Command::new("ethtool")
            .args(&args)
            .output()
            .map_err(|e| anyhow::anyhow!("running ethtool (install it): {e}"))?;
        if !out.status.success() {
            bail!(
                "ethtool {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    })?
}

/// The offloads that shape these benchmarks, as `ethtool -k` names them, with their state.
pub fn offloads(ns: &str, dev: &str) -> anyhow::Result<Vec<(String, String)>> {
    const SHOWN: [&str; 6] = [
        "tx-checksumming",
        "scatter-gather",
        "generic-segmentation-offload",
        "tx-udp-segmentation",
        "generic-receive-offload",
        "rx-checksumming",
    ];
    let text = ethtool(ns, &["-k", dev])?;
    Ok(SHOWN
        .iter()
        .filter_map(|name| {
            text.lines().find_map(|l| {
                let (k, v) = l.trim().split_once(':')?;
                (k == *name).then(|| (k.to_string(), v.trim().to_string()))
            })
        })
        .collect())
}

/// Packets each RX queue of veth `dev` has taken through its NAPI path (`ethtool -S`
/// `rx_queue_N_xdp_packets`; counted while GRO or an XDP program is on).
pub fn rx_queue_packets(ns: &str, dev: &str) -> anyhow::Result<Vec<u64>> {
    let text = ethtool(ns, &["-S", dev])?;
    let mut v: Vec<(usize, u64)> = text
        .lines()
        .filter_map(|l| {
            let (k, n) = l.trim().split_once(':')?;
            let q = k.strip_prefix("rx_queue_")?.strip_suffix("_xdp_packets")?;
            Some((q.parse().ok()?, n.trim().parse().ok()?))
        })
        .collect();
    v.sort();
    Ok(v.into_iter().map(|(_, n)| n).collect())
}

/// `YYYY-MM-DD` of today (UTC).
pub fn today() -> String {
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86_400)
        .unwrap_or(0) as i64;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    format!("{:04}-{:02}-{:02}", if m <= 2 { y + 1 } else { y }, m, d)
}

/// This machine's host name.
pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() octets into buf.
    if unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    /// The CPU time of the calling thread (CLOCK_THREAD_CPUTIME_ID).
    fn thread_cpu() -> std::time::Duration {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: the kernel writes one timespec into the live local.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// Spins until this thread has run `d` of CPU time.
    fn burn(d: std::time::Duration) {
        let mut x = 0u64;
        while thread_cpu() < d {
            for i in 0..10_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
    }

    /// A process's CPU time counts its threads to the nanosecond, one that ended too.
    #[test]
    fn process_cpu_counts_a_thread_that_ended() {
        let me = std::process::id();
        let before = super::cpu_seconds(me).unwrap();
        let ran = std::thread::spawn(|| {
            burn(thread_cpu() + std::time::Duration::from_millis(20));
            thread_cpu()
        })
        .join()
        .unwrap();
        let after = super::cpu_seconds(me).unwrap();
        assert!(ran.as_secs_f64() >= 0.020);
        assert!(
            after - before >= ran.as_secs_f64(),
            "{} s counted, the ended thread alone ran {ran:?}",
            after - before
        );
    }

    #[test]
    fn today_looks_like_a_date() {
        let t = super::today();
        assert_eq!(t.len(), 10);
        assert!(t.starts_with("20"));
        // This process's CPU time grows while it works.
        let before = super::cpu_seconds(std::process::id()).unwrap();
        let mut x = 0u64;
        let began = std::time::Instant::now();
        while super::cpu_seconds(std::process::id()).unwrap() <= before {
            assert!(
                began.elapsed() < std::time::Duration::from_secs(30),
                "30 s of work and no CPU time counted (hang guard)"
            );
            for i in 0..100_000u64 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
            }
        }
        let cpus = super::cpu_jiffies().unwrap();
        assert!(!cpus.is_empty() && cpus.iter().all(|c| c.busy <= c.total));
        assert!(super::rss_kib(std::process::id()).unwrap() > 0);
    }
}
