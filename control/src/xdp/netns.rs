//! Running in a named network namespace (`/run/netns/<name>`, as `ip netns` makes them)
//! while keeping this mount namespace, so that the pins stay on the host's bpffs.
//! (`ip netns exec` remounts /sys and hides /sys/fs/bpf; `--netns` does not.)

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use super::XdpError;

/// Moves the calling thread into the network namespace `/run/netns/<name>`.
///
/// Call it before creating sockets or threads: only the calling thread moves.
pub fn enter(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(
            XdpError::BadArgument(format!("invalid network namespace name '{name}'")).into(),
        );
    }
    let path = Path::new("/run/netns").join(name);
    let file = std::fs::File::open(&path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => anyhow::Error::from(XdpError::UnknownNetns(name.to_string())),
        _ => anyhow::Error::from(e).context(format!("opening {}", path.display())),
    })?;
    // SAFETY: `file` is an open namespace file; setns only changes this thread's netns.
    let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EPERM) {
            return Err(XdpError::NotPermitted {
                what: format!("entering network namespace {name}"),
            }
            .into());
        }
        return Err(anyhow::Error::from(e).context(format!("setns({})", path.display())));
    }
    Ok(())
}

/// Inode of the calling thread's network namespace: identifies it while it lives.
pub fn current_ino() -> io::Result<u64> {
    Ok(std::fs::metadata("/proc/thread-self/ns/net")?.ino())
}

/// The name under `/run/netns` of the calling thread's network namespace, if it has one
/// (`ip netns add` made it, or `ip netns exec NAME` runs us).
pub fn current_name() -> Option<String> {
    let me = std::fs::metadata("/proc/thread-self/ns/net").ok()?;
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .ok()?
        .flatten()
        .filter(|e| {
            std::fs::metadata(e.path()).is_ok_and(|m| m.ino() == me.ino() && m.dev() == me.dev())
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names.into_iter().next()
}
