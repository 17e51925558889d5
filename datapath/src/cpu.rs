//! Pinning threads to CPUs, and placing memory on a CPU's NUMA node.

use std::io;

/// Pins the calling thread to CPU `cpu`.
pub(crate) fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_SET writes inside it (`cpu` is checked against
    // CPU_SETSIZE first); sched_setaffinity reads `size_of` bytes of it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if cpu >= libc::CPU_SETSIZE as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "cpu index too large",
            ));
        }
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The CPUs the calling thread may run on (its affinity mask), in order.
pub(crate) fn allowed() -> io::Result<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; sched_getaffinity writes at most `size_of` bytes of
    // it; CPU_ISSET reads inside it for indices below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect())
    }
}

/// `cpus` as ranges, `0-3,6`.
pub(crate) fn list(cpus: &[usize]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            cpus[i].to_string()
        } else {
            format!("{}-{}", cpus[i], cpus[j])
        });
        i = j + 1;
    }
    out.join(",")
}

/// Runs `f` on a short-lived thread pinned to `cpu` and returns what it returned. Memory that
/// `f` touches first is allocated on that CPU's NUMA node (the kernel's default policy places
/// a page where it is first touched): a worker's UMEM belongs near the worker.
pub(crate) fn on_cpu<T: Send>(cpu: Option<usize>, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let Some(cpu) = cpu else {
        return Ok(f());
    };
    std::thread::scope(|s| {
        let t = std::thread::Builder::new()
            .name(format!("xdp-quic-cpu{cpu}"))
            .spawn_scoped(s, move || {
                if let Err(e) = pin_to_cpu(cpu) {
                    tracing::warn!(cpu, "cannot pin the allocating thread: {e}");
                }
                f()
            })?;
        t.join()
            .map_err(|_| io::Error::other("the allocating thread panicked"))
    })
}
