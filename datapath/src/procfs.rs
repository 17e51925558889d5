//! Who holds a socket, from `/proc`: for the cold paths that name or check a socket's owner
//! (a bind refused for a port another process holds, a registration's liveness), never per
//! packet. A socket's inode is the host's; `/proc` shows the processes of this PID namespace.

use std::io;

/// What a walk of every process's descriptors found for a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    /// This process holds it.
    Pid(u32),
    /// None found, but some process's descriptors could not be read: it may be one of them.
    Unknown,
    /// No process of this PID namespace holds it.
    Nobody,
}

/// Whether process `pid` holds the socket with inode `ino` (an error when its descriptors
/// cannot be read: `PermissionDenied`, or `NotFound` once it has ended).
pub fn holds_socket(pid: u32, ino: u64) -> io::Result<bool> {
    let want = format!("socket:[{ino}]");
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?
        .flatten()
        .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t.as_os_str() == want.as_str())))
}

/// A process holding the socket with inode `ino`, by a walk of every `/proc/<pid>/fd`.
pub fn socket_holder(ino: u64) -> Holder {
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return Holder::Unknown;
    };
    let mut unreadable = false;
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        match holds_socket(pid, ino) {
            Ok(true) => return Holder::Pid(pid),
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => unreadable = true,
            // Not held there, or the process is gone meanwhile.
            _ => {}
        }
    }
    if unreadable {
        Holder::Unknown
    } else {
        Holder::Nobody
    }
}

/// `PID (COMM)` of process `pid`, for messages.
pub fn describe(pid: u32) -> String {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    format!("pid {pid} ({})", comm.trim())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    /// A socket of this process is found held by it, by pid and by the walk; a closed one's
    /// inode by nobody (or by a process whose descriptors are hidden from us).
    #[test]
    fn a_socket_is_found_held_by_its_process() {
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let fd = std::os::fd::AsFd::as_fd(&s).try_clone_to_owned().unwrap();
        let ino = std::fs::File::from(fd).metadata().unwrap().ino();
        let me = std::process::id();
        assert!(holds_socket(me, ino).unwrap());
        assert_eq!(socket_holder(ino), Holder::Pid(me));
        assert!(describe(me).starts_with(&format!("pid {me} (")));
        drop(s);
        assert!(!holds_socket(me, ino).unwrap());
        assert_ne!(socket_holder(ino), Holder::Pid(me));
    }
}
