//! Waking a worker that sleeps in [`crate::backend::Backend::wait`], with no syscall while it
//! is awake.
//!
//! The worker sets `parked` before it checks its queues for the last time and sleeps; a
//! sender, after queueing, writes the eventfd only when it finds `parked` set. SeqCst on both
//! sides makes one of them see the other: either the worker sees the message, or the sender
//! sees `parked` and wakes it.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};

/// An eventfd with a parked flag.
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
    parked: AtomicBool,
}

impl Waker {
    /// A new waker (one eventfd).
    pub fn new() -> io::Result<Self> {
        // SAFETY: eventfd takes no pointers; the result is checked before use.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self {
            // SAFETY: `fd` is a fresh descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            parked: AtomicBool::new(false),
        })
    }

    /// Wakes the worker if it is parked. Call after queueing work for it.
    pub fn wake(&self) {
        if self.parked.swap(false, Ordering::SeqCst) {
            self.signal();
        }
    }

    fn signal(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to an eventfd we own. EAGAIN (counter full)
        // already means "readable", so the result needs no handling.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Worker side: announce that it is about to sleep. After this, check the queues once
    /// more, then sleep in `wait` with [`Waker::fd`] among the descriptors polled.
    pub fn park(&self) {
        self.parked.store(true, Ordering::SeqCst);
    }

    /// Worker side: after waking, clear the flag and the eventfd counter.
    pub fn unpark(&self) {
        self.parked.store(false, Ordering::SeqCst);
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a live u64 from a non-blocking eventfd we own.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    /// The descriptor that becomes readable when woken.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
