//! Serving files from a directory: opening them without ever leaving it, and doing the
//! blocking part (open, read) away from the worker threads.
//!
//! [`FileRoot`] holds a descriptor of the served directory, opened once, and opens a
//! request's relative path beneath it in one step:
//!
//! * `openat2(2)` on that descriptor with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS |
//!   RESOLVE_NO_MAGICLINKS` (Linux 5.6 and later): the kernel refuses a path that would leave
//!   the directory or go through any symbolic link;
//! * where `openat2` is missing (`ENOSYS`) or refused by a seccomp filter, a walk of
//!   `openat(O_NOFOLLOW)`, one component at a time, each directory opened relative to the
//!   previous one (`O_PATH | O_DIRECTORY | O_NOFOLLOW`), so no component is a link either.
//!
//! Files are opened `O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY | O_NOFOLLOW` (a FIFO opens
//! at once instead of waiting for a writer, a terminal does not become ours), then the
//! OPENED descriptor is checked with `fstat`: anything but a regular file (FIFO, device,
//! directory, socket) is refused. Nothing is checked by name before it is opened, so renaming
//! entries of the directory while it is served (a symbolic link swapped in for a file, a
//! FIFO, a link to a directory elsewhere) cannot make it open anything outside it or block.
//! The price: no symbolic link is followed, not even one that points inside the directory
//! (a race-free check of where it points is not possible with these calls).
//!
//! [`FilePool`] runs such work on a few threads of its own, with a bounded queue, so that a
//! callback never waits on a disk; results go back to the worker with
//! [`xdp_quic::EngineHandle::post_to_conn`]. [`read_chunk`] is the read step of a file served
//! chunk by chunk.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Component, Path, PathBuf};

use bytes::{Bytes, BytesMut};

/// How a [`FileRoot`] resolves paths beneath its directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resolver {
    /// One `openat2(2)` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS`.
    Openat2,
    /// `openat(2)` with `O_NOFOLLOW`, one component at a time (kernels before 5.6, or
    /// `openat2` filtered out).
    Walk,
}

/// The flags every served file is opened with.
const FILE_FLAGS: libc::c_int =
    libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC | libc::O_NOCTTY | libc::O_NOFOLLOW;
/// The flags of the directories crossed by [`Resolver::Walk`]: a lookup handle, never a link.
const DIR_FLAGS: libc::c_int =
    libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
/// `openat2`'s resolve flags: stay beneath the directory, follow no link of any kind.
const RESOLVE: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS;

/// `struct open_how` of `openat2(2)` (linux/openat2.h), laid out as the kernel reads it.
#[repr(C)]
struct OpenHow {
    flags: u64,
    mode: u64,
    resolve: u64,
}

/// A directory whose files are served: opened once, every file opened beneath it.
#[derive(Debug)]
pub struct FileRoot {
    dir: OwnedFd,
    path: PathBuf,
    resolver: Resolver,
}

impl FileRoot {
    /// Opens `dir` (following links in `dir` itself: that is the operator's choice, made
    /// once) and picks [`Resolver::Openat2`] where the kernel has it, else [`Resolver::Walk`].
    pub fn open(dir: &Path) -> io::Result<FileRoot> {
        let mut root = Self::with_resolver(dir, Resolver::Openat2)?;
        if openat2(root.dir.as_fd(), c".", DIR_FLAGS, RESOLVE).is_err() {
            // ENOSYS (before Linux 5.6), EPERM or ENOSYS from a seccomp filter: the walk
            // gives the same guarantees with a few more system calls.
            root.resolver = Resolver::Walk;
        }
        Ok(root)
    }

    /// Opens `dir` and resolves paths with `resolver` (tests use it to check both).
    pub fn with_resolver(dir: &Path, resolver: Resolver) -> io::Result<FileRoot> {
        let file = File::options()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
        Ok(FileRoot {
            dir: file.into(),
            path: dir.to_path_buf(),
            resolver,
        })
    }

    /// The directory as given.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// How paths are resolved.
    pub fn resolver(&self) -> Resolver {
        self.resolver
    }

    /// Opens the regular file at `rel` beneath the directory for reading. `rel` must be made
    /// of plain names only (no `..`, `.`, root or prefix, at least one name); no component may
    /// be a symbolic link; the file must be a regular file once opened. Errors:
    /// `InvalidInput` for a path that is not plain, `InvalidData` for something opened that
    /// is not a regular file, the system call's error otherwise (`ELOOP` for a link,
    /// `EXDEV` for an escape, `ENOENT`, ...).
    pub fn open_beneath(&self, rel: &Path) -> io::Result<File> {
        let names = plain_names(rel)?;
        let fd = match self.resolver {
            Resolver::Openat2 => {
                let mut joined = Vec::with_capacity(rel.as_os_str().len());
                for (i, n) in names.iter().enumerate() {
                    if i > 0 {
                        joined.push(b'/');
                    }
                    joined.extend_from_slice(n.as_bytes());
                }
                openat2(self.dir.as_fd(), &c_name(&joined)?, FILE_FLAGS, RESOLVE)?
            }
            Resolver::Walk => {
                let (last, dirs) = names.split_last().expect("plain_names: at least one");
                let mut here: Option<OwnedFd> = None;
                for d in dirs {
                    let base = here.as_ref().map_or(self.dir.as_fd(), |f| f.as_fd());
                    here = Some(openat(base, &c_name(d.as_bytes())?, DIR_FLAGS)?);
                }
                let base = here.as_ref().map_or(self.dir.as_fd(), |f| f.as_fd());
                openat(base, &c_name(last.as_bytes())?, FILE_FLAGS)?
            }
        };
        let file = File::from(fd);
        // fstat of what was opened, not of a name: nothing can be swapped in between.
        if !file.metadata()?.file_type().is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "not a regular file",
            ));
        }
        Ok(file)
    }
}

/// The names of `rel`, which must be plain (`a/b/c`: no `..`, `.`, `/` or prefix; repeated
/// and trailing slashes are ignored) and not empty.
pub fn plain_names(rel: &Path) -> io::Result<Vec<&OsStr>> {
    let mut names = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(n) => names.push(n),
            _ => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "only plain names may make a served path",
                ))
            }
        }
    }
    if names.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty path"));
    }
    Ok(names)
}

fn c_name(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in a path"))
}

fn openat2(
    dir: BorrowedFd<'_>,
    path: &CStr,
    flags: libc::c_int,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let how = OpenHow {
        flags: flags as u32 as u64,
        mode: 0,
        resolve,
    };
    let mut again = 0;
    loop {
        // SAFETY: `path` is a NUL-terminated string and `how` an initialized `open_how` of the
        // size passed; both outlive the call, and the kernel only reads them. `dir` is an open
        // descriptor borrowed for the call.
        let r = unsafe {
            libc::syscall(
                libc::SYS_openat2,
                dir.as_raw_fd(),
                path.as_ptr(),
                &how as *const OpenHow,
                std::mem::size_of::<OpenHow>(),
            )
        };
        if r >= 0 {
            let fd = libc::c_int::try_from(r)
                .map_err(|_| io::Error::other("descriptor out of range"))?;
            // SAFETY: openat2 returned a new descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            // RESOLVE_BENEATH could not rule out a racing rename; retrying is what the
            // manual suggests (our paths have no `..`, so this is rare).
            Some(libc::EAGAIN) if again < 8 => again += 1,
            _ => return Err(e),
        }
    }
}

fn openat(dir: BorrowedFd<'_>, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: `name` is a NUL-terminated string that outlives the call and `dir` an open
        // descriptor borrowed for it; without O_CREAT no mode argument is read.
        let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags) };
        if fd >= 0 {
            // SAFETY: openat returned a new descriptor that nothing else owns.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Reads up to `max` octets from `file`'s position: fewer only at the end of the file, which
/// the flag then says (so a small file takes one call, not a second one to find its end).
pub fn read_chunk(file: &mut File, max: usize) -> io::Result<(Bytes, bool)> {
    let mut buf = BytesMut::zeroed(max);
    let mut got = 0;
    while got < max {
        match file.read(&mut buf[got..]) {
            Ok(0) => {
                // A short last chunk is copied out: kept until the peer acknowledges it, it
                // would otherwise keep the whole `max`-octet buffer.
                if got < max / 2 {
                    return Ok((Bytes::copy_from_slice(&buf[..got]), true));
                }
                buf.truncate(got);
                return Ok((buf.freeze(), true));
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok((buf.freeze(), false))
}

/// [`read_chunk`] on tokio's blocking pool, for async servers: the chunk, whether the file
/// ended, and the file back for the next one.
pub async fn read_chunk_pooled(mut file: File, max: usize) -> io::Result<(Bytes, bool, File)> {
    tokio::task::spawn_blocking(move || read_chunk(&mut file, max).map(|(c, end)| (c, end, file)))
        .await
        .map_err(io::Error::other)?
}

type Job = Box<dyn FnOnce() + Send>;

/// A few threads that run blocking file work (open, read) off the worker threads, fed by a
/// bounded queue that never blocks the submitter.
///
/// Dropping the pool lets its threads finish what is queued and end; it does not wait for
/// them (one may be stuck on a dead disk; the worker must still be able to stop).
#[derive(Debug)]
pub struct FilePool {
    jobs: crossbeam_channel::Sender<Job>,
    threads: usize,
}

impl FilePool {
    /// Starts `threads` threads (at least one) with room for `queue` waiting jobs (at least
    /// one).
    pub fn new(threads: usize, queue: usize) -> io::Result<FilePool> {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(queue.max(1));
        let threads = threads.max(1);
        for i in 0..threads {
            let rx = rx.clone();
            std::thread::Builder::new()
                .name(format!("xdp-quic-files{i}"))
                .spawn(move || {
                    while let Ok(job) = rx.recv() {
                        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
                            tracing::error!("a file job panicked");
                        }
                    }
                })?;
        }
        Ok(FilePool { jobs: tx, threads })
    }

    /// Threads of the pool.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Queues `job`; an error (and `job` dropped unrun) when the queue is full.
    pub fn try_submit(&self, job: impl FnOnce() + Send + 'static) -> io::Result<()> {
        self.jobs.try_send(Box::new(job)).map_err(|e| match e {
            crossbeam_channel::TrySendError::Full(_) => {
                io::Error::new(io::ErrorKind::WouldBlock, "file pool queue full")
            }
            crossbeam_channel::TrySendError::Disconnected(_) => {
                io::Error::new(io::ErrorKind::BrokenPipe, "file pool stopped")
            }
        })
    }
}
