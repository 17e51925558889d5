//! Running a function when the process gets SIGINT, SIGTERM or SIGHUP (Ctrl-C, a service
//! manager, a closed terminal) without a dependency for it: the signal handler only writes
//! the signal's number to a pipe (write(2) is async-signal-safe), and a thread of its own
//! reads the pipe and runs the function, where anything may be done.

use std::io::{self, Read};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};

/// The signals handled.
const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The pipe's write end, for the handler; -1 until installed. Never closed once set: the
/// handler may run at any time after.
static PIPE: AtomicI32 = AtomicI32::new(-1);

/// Whether [`on_termination`] succeeded (or is under way) in this process.
static INSTALLED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(sig: libc::c_int) {
    let fd = PIPE.load(Ordering::Relaxed);
    if fd < 0 {
        return;
    }
    // SAFETY: __errno_location returns this thread's errno, always valid; write(2) may set
    // it, and the interrupted code must find it as it left it.
    let errno = unsafe { *libc::__errno_location() };
    let byte = sig as u8;
    // SAFETY: write(2) is async-signal-safe; `byte` is live for the call. The pipe does not
    // block: when it is full, signals already wait there and this one changes nothing.
    unsafe { libc::write(fd, (&byte as *const u8).cast(), 1) };
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = errno };
}

/// Runs `f(signal)` on a thread of its own each time the process gets SIGINT, SIGTERM or
/// SIGHUP, from now on. Once per process; refused when one of these signals already has a
/// handler (another crate's, such as `ctrlc`), which this would replace.
pub(crate) fn on_termination(f: impl FnMut(libc::c_int) + Send + 'static) -> io::Result<()> {
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "a termination handler is already installed in this process",
        ));
    }
    let installed = install(f);
    if installed.is_err() {
        INSTALLED.store(false, Ordering::SeqCst);
    }
    installed
}

fn install(mut f: impl FnMut(libc::c_int) + Send + 'static) -> io::Result<()> {
    for sig in SIGNALS {
        // SAFETY: an all-zero sigaction is a valid value to be overwritten.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a null new action only reads the current one into `old`, which is live.
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
            return Err(io::Error::last_os_error());
        }
        if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("signal {sig} already has a handler in this process"),
            ));
        }
    }
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into `fds`, which has room for them.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nothing else.
    let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: fcntl on a descriptor owned here.
    let flags = unsafe { libc::fcntl(fds[1], libc::F_GETFL) };
    // SAFETY: as above.
    if flags < 0 || unsafe { libc::fcntl(fds[1], libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut read = std::fs::File::from(read);
    std::thread::Builder::new()
        .name("xdp-quic-signals".into())
        .spawn(move || {
            let mut sig = [0u8];
            // read_exact retries when interrupted; it fails only if the pipe breaks.
            while read.read_exact(&mut sig).is_ok() {
                f(libc::c_int::from(sig[0]));
            }
        })?;
    PIPE.store(write.into_raw_fd(), Ordering::SeqCst);
    for sig in SIGNALS {
        // SAFETY: an all-zero sigaction is valid (empty mask, no flags) before it is set up.
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        action.sa_flags = libc::SA_RESTART;
        // SAFETY: `action` is live and fully initialised; its handler is async-signal-safe.
        if unsafe { libc::sigaction(sig, &action, std::ptr::null_mut()) } != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}
