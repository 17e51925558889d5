//! The bpffs layout: `/sys/fs/bpf/xdp-quic/<iface>/{link,xsks,ports,addrs4,addrs6,config,counters}`.
//!
//! Directories are made mode 0700 (root only). The `link` pin keeps the program attached
//! after the attaching process exits; removing the directory's pins detaches it.

use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use super::XdpError;

/// Where bpffs is expected (and mounted if it is not).
pub const BPFFS: &str = "/sys/fs/bpf";
/// Directory of all xdp-quic pins.
pub const PIN_ROOT: &str = "/sys/fs/bpf/xdp-quic";
/// Pin name of the XDP link.
pub const LINK: &str = "link";
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// Pin directory of interface `iface`: `/sys/fs/bpf/xdp-quic/<iface>`.
pub fn dir(iface: &str) -> PathBuf {
    Path::new(PIN_ROOT).join(iface)
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

/// Whether bpffs is mounted at `/sys/fs/bpf` (no side effects).
pub fn bpffs_mounted() -> bool {
    is_bpffs(Path::new(BPFFS))
}

/// Creates `/sys/fs/bpf/xdp-quic/<iface>` (and its parent), both mode 0700.
pub fn create_dir(iface: &str) -> io::Result<PathBuf> {
    let mut b = std::fs::DirBuilder::new();
    b.mode(0o700);
    match b.create(PIN_ROOT) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let d = dir(iface);
    b.create(&d)?;
    Ok(d)
}

/// Removes the pins of `iface` and its directory; the link pin goes first so that the
/// program is detached before its maps disappear. Missing pins are fine.
pub fn remove_dir(iface: &str) -> io::Result<()> {
    let d = dir(iface);
    let names = std::iter::once(LINK).chain(xdp_quic_ebpf::maps::ALL);
    for name in names {
        match std::fs::remove_file(d.join(name)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    match std::fs::remove_dir(&d) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    // The shared parent goes when it is empty; another interface may still use it.
    let _ = std::fs::remove_dir(PIN_ROOT);
    Ok(())
}

/// Interface names that have a pin directory, sorted.
pub fn list() -> io::Result<Vec<String>> {
    let mut v = Vec::new();
    match std::fs::read_dir(PIN_ROOT) {
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
