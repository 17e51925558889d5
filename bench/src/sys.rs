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

/// User plus system CPU seconds of process `pid` so far (from /proc/PID/stat).
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let (u, s): (u64, u64) = (
        f.get(11).unwrap_or(&"0").parse()?,
        f.get(12).unwrap_or(&"0").parse()?,
    );
    // SAFETY: sysconf takes no pointers.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    Ok((u + s) as f64 / hz)
}

/// A process's CPU time at one instant, two ways: its user + system ticks (/proc/PID/stat,
/// 10 ms each, every thread it ever had included), and the nanoseconds its live threads have
/// run (the first field of /proc/PID/task/TID/schedstat), with their ids.
#[derive(Debug, Clone, Default)]
pub struct ProcCpu {
    ticks_s: f64,
    /// Nanoseconds run by the live threads, and their ids (sorted); `None` where schedstat
    /// could not be read.
    run: Option<(u64, Vec<u32>)>,
}

impl ProcCpu {
    /// CPU seconds from `before` to `self`. Nanosecond-precise where that is whole: no thread
    /// of `before` has ended, and the ticks do not show more time than the threads' own
    /// counts by more than a tick per thread (a thread that started and ended between the
    /// two, which neither saw). Else the ticks.
    pub fn since(&self, before: &ProcCpu) -> f64 {
        let ticks = (self.ticks_s - before.ticks_s).max(0.0);
        if let (Some((now, tids)), Some((then, tids_then))) = (&self.run, &before.run) {
            let kept = tids_then.iter().all(|t| tids.binary_search(t).is_ok());
            let precise = now.saturating_sub(*then) as f64 / 1e9;
            let slack = (tids.len() + 1) as f64 / hz();
            if kept && ticks <= precise + slack {
                return precise;
            }
        }
        ticks
    }
}

/// [`ProcCpu`] of process `pid` now.
pub fn proc_cpu(pid: u32) -> anyhow::Result<ProcCpu> {
    let ticks_s = cpu_seconds(pid)?;
    let run = (|| -> Option<(u64, Vec<u32>)> {
        let mut ns = 0u64;
        let mut tids = Vec::new();
        for e in std::fs::read_dir(format!("/proc/{pid}/task"))
            .ok()?
            .flatten()
        {
            let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
                continue;
            };
            // A thread that ended since the listing is skipped: `since` sees it gone.
            let Ok(line) = std::fs::read_to_string(e.path().join("schedstat")) else {
                continue;
            };
            ns += line.split_whitespace().next()?.parse::<u64>().ok()?;
            tids.push(tid);
        }
        tids.sort_unstable();
        Some((ns, tids))
    })();
    Ok(ProcCpu { ticks_s, run })
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

/// Per-CPU jiffies now (`cpuN` lines of /proc/stat, in CPU order).
pub fn cpu_jiffies() -> anyhow::Result<Vec<CpuJiffies>> {
    let stat = std::fs::read_to_string("/proc/stat")?;
    let mut out = Vec::new();
    for line in stat.lines() {
        let mut f = line.split_whitespace();
        let Some(name) = f.next() else { continue };
        if !(name.starts_with("cpu") && name.len() > 3) {
            continue;
        }
        let v: Vec<u64> = f.map(|x| x.parse().unwrap_or(0)).collect();
        let g = |i: usize| v.get(i).copied().unwrap_or(0);
        let busy = g(0) + g(1) + g(2) + g(5) + g(6);
        out.push(CpuJiffies {
            busy,
            total: busy + g(3) + g(4) + g(7),
            steal: g(7),
            irq: g(5) + g(6),
        });
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

/// CPU ticks (utime + stime) of every process but kernel threads and `exclude`, by pid:
/// the other work of the machine (sampled around a span; see `report::Measure::new`).
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
        out.insert(pid, n(11) + n(12));
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

    fn cpu(ticks_s: f64, ns: u64, tids: &[u32]) -> super::ProcCpu {
        super::ProcCpu {
            ticks_s,
            run: Some((ns, tids.to_vec())),
        }
    }

    /// Precise where the threads' own counts are whole, the ticks where a thread's time may
    /// be missing from them.
    #[test]
    fn process_cpu_is_precise_unless_a_thread_may_be_missing() {
        let tick = 1.0 / super::hz();
        let near = |a: f64, b: f64| (a - b).abs() < 1e-9;
        let before = cpu(1.0, 1_000_000_000, &[1, 2]);
        let same = cpu(1.0 + 2.0 * tick, 1_015_000_000, &[1, 2]);
        assert!(near(same.since(&before), 0.015), "the same threads");
        let started = cpu(1.0 + 2.0 * tick, 1_015_000_000, &[1, 2, 3]);
        assert!(near(started.since(&before), 0.015), "one more");
        let ended = cpu(1.0 + 2.0 * tick, 1_015_000_000, &[1]);
        assert!(
            near(ended.since(&before), 2.0 * tick),
            "thread 2 ended: its time is gone"
        );
        let unseen = cpu(1.0 + 20.0 * tick, 1_015_000_000, &[1, 2]);
        assert!(
            near(unseen.since(&before), 20.0 * tick),
            "a thread came and went between"
        );
        let unread = super::ProcCpu {
            ticks_s: 1.0 + 2.0 * tick,
            run: None,
        };
        assert!(near(unread.since(&before), 2.0 * tick));
    }

    /// The kernel's side: a thread's run time is read from schedstat. It counts what
    /// CLOCK_THREAD_CPUTIME_ID counts, but a running thread's count is brought up to date only
    /// at the scheduler's ticks and switches: it may lag by one kernel tick (at most 10 ms,
    /// HZ ≥ 100).
    #[test]
    fn schedstat_counts_what_a_thread_ran() {
        let (go_tx, go) = std::sync::mpsc::channel::<()>();
        let (done, done_rx) = std::sync::mpsc::channel::<std::time::Duration>();
        let t = std::thread::spawn(move || {
            while go.recv().is_ok() {
                burn(thread_cpu() + std::time::Duration::from_millis(20));
                done.send(thread_cpu()).unwrap();
            }
        });
        let me = std::process::id();
        go_tx.send(()).unwrap();
        let first = done_rx.recv().unwrap();
        let before = super::proc_cpu(me).unwrap();
        go_tx.send(()).unwrap();
        let second = done_rx.recv().unwrap();
        let after = super::proc_cpu(me).unwrap();
        drop(go_tx);
        t.join().unwrap();
        let (Some((ns0, _)), Some((ns1, _))) = (&before.run, &after.run) else {
            panic!("schedstat unreadable: {before:?} {after:?}");
        };
        let ran = (second - first).as_nanos() as u64;
        assert!(ran >= 20_000_000);
        let lag = 10_000_000;
        assert!(
            ns1 - ns0 + lag >= ran,
            "{} ns counted, the thread ran {ran}",
            ns1 - ns0
        );
    }

    #[test]
    fn today_looks_like_a_date() {
        let t = super::today();
        assert_eq!(t.len(), 10);
        assert!(t.starts_with("20"));
        // This process's CPU time grows while it works (burn until the 10 ms tick moves it).
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
