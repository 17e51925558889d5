//! The bpffs layout: `/sys/fs/bpf/xdp-quic/<iface>/{link,xsks,ports,addrs4,addrs6,config,counters,
//! xsk_owners,shield,pressure,buckets}`: the link and the program's maps
//! (`xdp_quic_ebpf::maps::ALL`).
//!
//! Directories are made mode 0700 (root only). The `link` pin keeps the program attached
//! after the attaching process exits; removing the directory's pins detaches it.
//!
//! The pins live on the bpffs of the host's mount namespace. A process in a private mount
//! namespace without bpffs at `/sys/fs/bpf` (`ip netns exec` makes one and remounts `/sys`)
//! would mount a bpffs of its own there, which vanishes when the namespace does, with
//! everything pinned on it. So: commands that pin or unpin refuse to run there
//! ([`require_host_bpffs`]), and commands that only read find the host's pins through
//! `/proc/<pid>/root/sys/fs/bpf` of a process of the initial mount namespace ([`root`]).
//!
//! Commands that change pins hold [`PinLock`], an exclusive `flock` on the pin root, from
//! their first look at the pins to their last change: two `attach`es of one interface, or
//! a `detach` of one interface removing the (empty) root while an `attach` of another makes
//! its directory there, would otherwise step on each other.

use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::XdpError;

/// Where bpffs is expected (and mounted if it is not).
pub const BPFFS: &str = "/sys/fs/bpf";
/// Directory of all xdp-quic pins, as the host's mount namespace sees it.
pub const PIN_ROOT: &str = "/sys/fs/bpf/xdp-quic";
/// Pin name of the XDP link.
pub const LINK: &str = "link";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;
/// `PF_KTHREAD` in the flags field of `/proc/<pid>/stat`.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Whether `iface` can be an interface name by the kernel's rules (1 to 15 octets, not `.`
/// or `..`, no `/`, `:`, NUL or white space): only such a name keeps its pin directory
/// beneath the pin root.
pub fn is_iface_name(iface: &str) -> bool {
    !iface.is_empty()
        && iface.len() < 16
        && iface != "."
        && iface != ".."
        && !iface
            .chars()
            .any(|c| c == '/' || c == ':' || c == '\0' || c.is_whitespace())
}

/// An error unless `iface` [`is_iface_name`].
pub fn check_iface_name(iface: &str) -> io::Result<()> {
    if is_iface_name(iface) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{iface:?} is not an interface name (1 to 15 characters, no '/', ':' or spaces)"
            ),
        ))
    }
}

/// Pin directory of interface `iface`: `/sys/fs/bpf/xdp-quic/<iface>` (seen through
/// `/proc/<pid>/root` where [`root`] says so). Check the name first
/// ([`check_iface_name`]: the entry points of this crate do).
pub fn dir(iface: &str) -> PathBuf {
    pin_root().join(iface)
}

/// `/sys/fs/bpf/xdp-quic` as this process reaches it (see [`root`]).
pub fn pin_root() -> PathBuf {
    root().join("xdp-quic")
}

/// The bpffs this process reads pins from: `/sys/fs/bpf` when bpffs is mounted there or
/// this process runs in the initial mount namespace; otherwise (a private mount namespace
/// without bpffs, as under `ip netns exec`) the host's, through
/// `/proc/<pid>/root/sys/fs/bpf` of PID 1 (or of kthreadd, PID 2, where PID 1 cannot be
/// inspected), when that is a bpffs.
pub fn root() -> PathBuf {
    let local = Path::new(BPFFS);
    if is_bpffs(local) {
        return local.to_path_buf();
    }
    host_bpffs().unwrap_or_else(|| local.to_path_buf())
}

/// Where the pins are read through the host's mount namespace, that path
/// (`/proc/<pid>/root/sys/fs/bpf`); `None` when they are read at `/sys/fs/bpf`.
pub fn host_view() -> Option<PathBuf> {
    if is_bpffs(Path::new(BPFFS)) {
        return None;
    }
    host_bpffs()
}

fn host_bpffs() -> Option<PathBuf> {
    if mount_ns() != MountNs::Private {
        return None;
    }
    let pid = reference_pid()?;
    let p = PathBuf::from(format!("/proc/{pid}/root{BPFFS}"));
    is_bpffs(&p).then_some(p)
}

/// This process's mount namespace, compared with the initial one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountNs {
    /// The mount namespace of PID 1: what is mounted here outlives this process.
    Initial,
    /// Another one (`ip netns exec`, `unshare -m`): a mount made here vanishes with it.
    Private,
    /// Neither PID 1 nor kthreadd could be inspected.
    Unknown,
}

/// Identity (device, inode) of the namespace file `path`.
fn ns_id(path: &str) -> io::Result<(u64, u64)> {
    let m = std::fs::metadata(path)?;
    Ok((m.dev(), m.ino()))
}

/// A process of the initial mount namespace whose `/proc` entries this process may
/// inspect: PID 1, or else PID 2 when it is a kernel thread (kthreadd, which always runs in
/// the initial namespaces; in a PID namespace PID 2 is an ordinary process).
fn reference_pid() -> Option<u32> {
    if ns_id("/proc/1/ns/mnt").is_ok() {
        return Some(1);
    }
    let stat = std::fs::read_to_string("/proc/2/stat").ok()?;
    // Fields after the command name: state, ppid, pgrp, session, tty_nr, tpgid, flags.
    let flags: u64 = stat
        .rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(6)?
        .parse()
        .ok()?;
    (flags & PF_KTHREAD != 0 && ns_id("/proc/2/ns/mnt").is_ok()).then_some(2)
}

/// Whether this process runs in the initial mount namespace.
pub fn mount_ns() -> MountNs {
    let Some(pid) = reference_pid() else {
        return MountNs::Unknown;
    };
    match (
        ns_id("/proc/self/ns/mnt"),
        ns_id(&format!("/proc/{pid}/ns/mnt")),
    ) {
        (Ok(me), Ok(init)) if me == init => MountNs::Initial,
        (Ok(_), Ok(_)) => MountNs::Private,
        _ => MountNs::Unknown,
    }
}

/// Refuses, before anything is changed, to pin or unpin (`command`: `attach`, `detach`)
/// from a private mount namespace without bpffs at `/sys/fs/bpf`: a bpffs mounted there
/// would vanish with the namespace when the command exits, and an attachment pinned on it
/// with it. `--netns NAME` is the supported way (it keeps the host's mount namespace).
pub fn require_host_bpffs(command: &'static str) -> Result<(), XdpError> {
    if is_bpffs(Path::new(BPFFS)) || mount_ns() != MountNs::Private {
        return Ok(());
    }
    Err(XdpError::PrivateMountNamespace {
        command,
        netns: super::netns::current_name().unwrap_or_else(|| "NAME".into()),
    })
}

fn is_bpffs(path: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid C string; `st` is a valid out-pointer for statfs.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let rc = unsafe { libc::statfs(c.as_ptr(), &mut st) };
    rc == 0 && st.f_type as i64 == BPF_FS_MAGIC
}

/// Makes sure bpffs is mounted at `/sys/fs/bpf`, mounting it (mode 0700) if it is not.
/// Returns whether it mounted it.
///
/// Two processes at once mount it once: the mount point's directory is locked (`flock`)
/// from the look to the mount, and the second looks again once it has the lock. (Without,
/// both would mount, the second over the first, hiding what the first pinned there.)
pub fn ensure_bpffs() -> Result<bool, XdpError> {
    let path = Path::new(BPFFS);
    if is_bpffs(path) {
        return Ok(false);
    }
    if let Err(e) = std::fs::create_dir_all(path) {
        return Err(XdpError::BpffsMissing {
            cause: format!("cannot create {BPFFS}: {e}"),
        });
    }
    // Opened before the mount, this is the directory under it: the one every process that
    // finds no bpffs here locks too.
    let missing = |what: &str, e: io::Error| XdpError::BpffsMissing {
        cause: format!("{what} {BPFFS}: {e}"),
    };
    let mount_point = open_dir(path).map_err(|e| missing("cannot open", e))?;
    lock_exclusive(&mount_point).map_err(|e| missing("cannot lock", e))?;
    if is_bpffs(path) {
        // Another process mounted it while this one waited.
        return Ok(false);
    }
    // SAFETY: all pointers are valid NUL-terminated strings.
    let rc = unsafe {
        libc::mount(
            c"bpf".as_ptr(),
            c"/sys/fs/bpf".as_ptr(),
            c"bpf".as_ptr(),
            0,
            c"mode=0700".as_ptr().cast(),
        )
    };
    if rc != 0 {
        let e = io::Error::last_os_error();
        return Err(XdpError::BpffsMissing {
            cause: format!("mount: {e}"),
        });
    }
    Ok(true)
}

/// Whether the bpffs of the pins is mounted (at `/sys/fs/bpf`, or the host's seen through
/// `/proc`, see [`root`]); no side effects.
pub fn bpffs_mounted() -> bool {
    is_bpffs(&root())
}

/// Creates `/sys/fs/bpf/xdp-quic/<iface>` (and its parent), both mode 0700.
pub fn create_dir(iface: &str) -> io::Result<PathBuf> {
    check_iface_name(iface)?;
    make_root()?;
    check_pin_root()?;
    let d = dir(iface);
    private_dir().create(&d)?;
    Ok(d)
}

/// A builder of directories of mode 0700.
fn private_dir() -> std::fs::DirBuilder {
    let mut b = std::fs::DirBuilder::new();
    b.mode(0o700);
    b
}

/// Makes the pin root (mode 0700) if there is none.
fn make_root() -> io::Result<()> {
    match private_dir().create(pin_root()) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// The pin root must be a real directory (not a link), ours, and writable by us alone:
/// on a bpffs that others may write to, another user could have made it first.
fn check_pin_root() -> io::Result<()> {
    check_pin_root_is_ours(&std::fs::symlink_metadata(pin_root())?)
}

/// [`check_pin_root`] on metadata already taken (of the path, or of an open descriptor).
fn check_pin_root_is_ours(m: &std::fs::Metadata) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let root = pin_root();
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !m.file_type().is_dir() || m.uid() != me || m.mode() & 0o022 != 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory of this user's writable by it alone (a link, or made \
                 by another user?): refusing to pin there; remove it and retry",
                root.display()
            ),
        ));
    }
    // Its parent, the bpffs: one that others may write to without the sticky bit lets them
    // rename the pin root away and put their own in its place between two looks.
    match root.parent() {
        Some(parent) => check_shared_parent(parent),
        None => Ok(()),
    }
}

/// Refuses a directory other users may write to without the sticky bit (they could rename
/// what is in it, ours included).
fn check_shared_parent(parent: &Path) -> io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let mode = std::fs::metadata(parent)?.mode();
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "{} may be written to by other users (mode {:o}, no sticky bit), who could \
                 swap the pins under xdp-quic: remount it private (`mount -o \
                 remount,mode=0700 {}`) or set the sticky bit (`chmod +t {}`)",
                parent.display(),
                mode & 0o7777,
                parent.display(),
                parent.display()
            ),
        ));
    }
    Ok(())
}

/// An exclusive lock on the pin root (`flock` on the directory), held by a command that
/// changes pins for as long as it looks at them and changes them; other such commands of
/// any process wait for it. Dropping it gives the root back if it is empty, then unlocks.
pub struct PinLock {
    /// The pin root, open and locked: closing it unlocks.
    _root: std::fs::File,
}

impl PinLock {
    /// Takes the lock, making the pin root (mode 0700, checked) if there is none; waits
    /// while another command holds it.
    pub fn take() -> io::Result<PinLock> {
        loop {
            make_root()?;
            if let Some(lock) = Self::lock_root()? {
                return Ok(lock);
            }
        }
    }

    /// Takes the lock if the pin root exists (`None` if there is none: nothing is pinned).
    pub fn existing() -> io::Result<Option<PinLock>> {
        loop {
            match std::fs::symlink_metadata(pin_root()) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
                Ok(_) => {}
            }
            if let Some(lock) = Self::lock_root()? {
                return Ok(Some(lock));
            }
        }
    }

    /// Opens and locks the pin root; `None` when, once locked, it is no longer the root
    /// (the holder before removed it: the caller looks again).
    fn lock_root() -> io::Result<Option<PinLock>> {
        // Opened first (not following a link), then checked on the descriptor: what is
        // checked is what gets locked.
        let root = match open_dir(&pin_root()) {
            Ok(f) => f,
            // Removed by a holder that found it empty since the caller looked: look again.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) if matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) => {
                // A link or a file where the root goes: say so (or, if it has just been
                // replaced by a directory, look again).
                return match check_pin_root() {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                    _ => Ok(None),
                };
            }
            Err(e) => return Err(e),
        };
        check_pin_root_is_ours(&root.metadata()?)?;
        lock_exclusive(&root)?;
        // While we waited, the holder may have removed the root (it was empty) and another
        // command made a new one: the lock must be on the root that is there.
        let locked = root.metadata()?;
        match std::fs::symlink_metadata(pin_root()) {
            Ok(now) if now.dev() == locked.dev() && now.ino() == locked.ino() => {
                Ok(Some(PinLock { _root: root }))
            }
            Ok(_) => Ok(None),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Opens directory `path` (not a link to one) for a lock.
fn open_dir(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(path)
}

/// Takes an exclusive `flock` on `file`, waiting for other holders; closing `file` (or its
/// last duplicate) unlocks.
fn lock_exclusive(file: &std::fs::File) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    loop {
        // SAFETY: flock on a descriptor `file` owns, open for the whole call.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

impl Drop for PinLock {
    fn drop(&mut self) {
        // Only when empty (other interfaces may have pins there), and before unlocking: a
        // command waiting for the lock then sees the root gone and makes it again.
        // `_root` closes after this, which unlocks.
        let _ = std::fs::remove_dir(pin_root());
    }
}

/// Removes the pins of `iface` and its directory; the link pin goes first so that the
/// program is detached before its maps disappear. Missing pins are fine. Every pin in the
/// directory goes, not only this version's maps: the directory is xdp-quic's (mode 0700),
/// and pins of another version (a map this one does not have) would otherwise keep it from
/// being removed, and every later `attach` from making it again.
pub fn remove_dir(iface: &str) -> io::Result<()> {
    check_iface_name(iface)?;
    let d = dir(iface);
    let gone = |r: io::Result<()>| match r {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    };
    gone(std::fs::remove_file(d.join(LINK)))?;
    let entries = match std::fs::read_dir(&d) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for e in entries {
        gone(std::fs::remove_file(e?.path()))?;
    }
    match std::fs::remove_dir(&d) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // The shared parent goes when it is empty (another interface may still use it):
    // [`PinLock`]'s drop removes it.
    Ok(())
}

/// Interface names that have a pin directory, sorted.
pub fn list() -> io::Result<Vec<String>> {
    let mut v = Vec::new();
    match std::fs::read_dir(pin_root()) {
        Ok(rd) => {
            for e in rd {
                let e = e?;
                if e.file_type()?.is_dir() {
                    v.push(e.file_name().to_string_lossy().into_owned());
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    v.sort();
    Ok(v)
}

/// Removes a half-made pin directory on drop unless [`DirGuard::commit`] was called.
pub struct DirGuard {
    iface: Option<String>,
}

impl DirGuard {
    /// Guards the pin directory of `iface`.
    pub fn new(iface: &str) -> Self {
        Self {
            iface: Some(iface.to_string()),
        }
    }
    /// Keeps the directory.
    pub fn commit(mut self) {
        self.iface = None;
    }
}

impl Drop for DirGuard {
    fn drop(&mut self) {
        if let Some(i) = self.iface.take() {
            let _ = remove_dir(&i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A bpffs (here a directory standing for it) that others may write to is refused unless
    /// it has the sticky bit; one only its owner writes to passes.
    #[test]
    fn a_parent_others_may_write_to_needs_the_sticky_bit() {
        let d = std::env::temp_dir().join(format!("xq-pins-mode-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let check = |mode: u32| {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(mode)).unwrap();
            check_shared_parent(&d)
        };
        let results = [0o700, 0o755, 0o1777, 0o777, 0o770].map(|m| check(m).is_ok());
        let _ = std::fs::remove_dir_all(&d);
        assert_eq!(results, [true, true, true, false, false]);
        let e = check_shared_parent(Path::new("/nonexistent-xq")).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
