//! Waking a worker that sleeps in [`crate::backend::Backend::wait`], with no syscall while it
//! is awake.
//!
//! The worker sets `parked` before it checks its queues for the last time and sleeps; a
//! sender, after queueing, writes the eventfd only when it finds `parked` set. SeqCst on both
//! sides makes one of them see the other: either the worker sees the message, or the sender
//! sees `parked` and wakes it.
//!
//! A worker driven by an async runtime (the thread-per-core mode of [`crate::tokio`])
//! parks with its task's waker instead ([`Waker::park_task`]): a wake then wakes that task,
//! with no syscall when it comes from the worker's own thread.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// An eventfd with a parked flag.
#[derive(Debug)]
pub struct Waker {
    fd: OwnedFd,
    parked: AtomicBool,
    /// The task to wake instead of writing the eventfd (async runtimes).
    task: Mutex<Option<std::task::Waker>>,
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
            task: Mutex::new(None),
        })
    }

    /// Wakes the worker if it is parked. Call after queueing work for it.
    pub fn wake(&self) {
        if self.parked.swap(false, Ordering::SeqCst) {
            let task = self.task.lock().unwrap_or_else(|p| p.into_inner()).take();
            match task {
                Some(task) => task.wake(),
                None => self.signal(),
            }
        }
    }

    /// Worker side, under an async runtime: like [`Waker::park`], a wake then waking `task`
    /// (until [`Waker::unpark_task`]).
    pub fn park_task(&self, task: &std::task::Waker) {
        {
            let mut t = self.task.lock().unwrap_or_else(|p| p.into_inner());
            if !t.as_ref().is_some_and(|t| t.will_wake(task)) {
                *t = Some(task.clone());
            }
        }
        self.parked.store(true, Ordering::SeqCst);
    }

    /// Worker side, under an async runtime: after waking, clear the flag (the eventfd is not
    /// used).
    pub fn unpark_task(&self) {
        self.parked.store(false, Ordering::SeqCst);
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
