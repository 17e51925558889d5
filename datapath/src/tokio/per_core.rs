//! Thread-per-core mode: each worker thread runs a current-thread tokio runtime whose tasks
//! are the worker's turns ([`drive`]) and the application's tasks for that worker's
//! connections. The worker sleeps in the runtime (its backend's descriptors registered with
//! the runtime's epoll, its waker parked with the driving task's waker), so that the
//! application's tasks run whenever the worker has nothing to do, and a task's request wakes
//! the worker without a syscall.

use std::future::{poll_fn, Future};
use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::io::Interest;

use super::driver::Driver;
use super::shared::EndpointShared;
use super::{Endpoint, Keeper, Main};
use crate::backend::Backend;
use crate::engine::threads::{accounted_turn, failed, Runner};
use crate::waker::Waker;
use crate::worker::{TurnOutcome, Worker};

/// The thread body of thread-per-core mode.
#[derive(Clone)]
pub(crate) struct PerCore {
    main: Main,
    ep: Arc<EndpointShared>,
    /// [`super::Builder::tasks_per_turn`].
    tasks_per_turn: u32,
}

impl PerCore {
    pub(crate) fn new(main: Main, ep: &Arc<EndpointShared>, tasks_per_turn: u32) -> Self {
        Self {
            main,
            ep: ep.clone(),
            tasks_per_turn,
        }
    }
}

impl Runner<Driver> for PerCore {
    fn run<B: Backend>(
        self,
        mut worker: Worker<Driver>,
        mut io: B,
        waker: &Waker,
    ) -> io::Result<Driver> {
        // The tasks answer between two turns: their answers leave with the ACKs.
        worker.hold_transmits(true);
        // The worker's turns are the `block_on` future: the runtime polls it when its ready
        // tasks are all run, or after this many of them (then its I/O driver too).
        let rt = match tokio::runtime::Builder::new_current_thread()
            .event_interval(self.tasks_per_turn)
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            // Recorded and reported as any worker's failure (`failed_workers`).
            Err(e) => return Err(failed(worker, &mut io, format!("tokio runtime: {e}"))),
        };
        let local = tokio::task::LocalSet::new();
        let ep = Endpoint::new(
            self.ep.clone(),
            Arc::new(Keeper::none()),
            Some(worker.index()),
        );
        let main = self.main.clone();
        let shared = self.ep.clone();
        // The worker runs before the builder has finished starting the engine: the
        // application starts once the endpoint can take requests.
        local.spawn_local(async move {
            shared.started().await;
            main(ep).await
        });
        // The application's tasks left when the worker ends are dropped with the runtime.
        local.block_on(&rt, drive(worker, io, waker))
    }
}

/// A duplicate of one of the backend's descriptors, to register with the runtime: owned
/// here, so that the registration never outlives the descriptor it names, whatever the
/// backend does with its own (`Backend::readiness` is a safe method: nothing but its docs
/// keeps a backend from closing its descriptors early).
fn duplicate(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl takes no pointers; a descriptor that is not open is refused (EBADF).
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) };
    if new < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `new` is a fresh descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// Turns `worker` over `io` until it stops, sleeping in the runtime between turns.
async fn drive<B: Backend>(
    mut worker: Worker<Driver>,
    mut io: B,
    waker: &Waker,
) -> io::Result<Driver> {
    // A failure to start is recorded and reported as any worker's (`failed_workers`).
    let Some(ready) = io.readiness() else {
        let why = "this backend cannot run thread-per-core (it has no descriptor to wait on)";
        return Err(failed(worker, &mut io, why.into()));
    };
    let both = Interest::READABLE | Interest::WRITABLE;
    let register = |fd: RawFd| {
        let owned = duplicate(fd)?;
        // SAFETY: the `AsyncFd` owns `owned`, a descriptor of its own (a duplicate), so it
        // stays open, naming the same open file description, until the `AsyncFd` drops it;
        // an `OwnedFd` always returns that one descriptor.
        unsafe { AsyncFd::register_with_interest(owned, both) }.map_err(io::Error::from)
    };
    let registered = register(ready.read).and_then(|read| {
        let write = if ready.write != ready.read {
            Some(register(ready.write)?)
        } else {
            None
        };
        Ok((read, write))
    });
    let (read, write) = match registered {
        Ok(r) => r,
        Err(e) => {
            return Err(failed(
                worker,
                &mut io,
                format!("registering with tokio: {e}"),
            ))
        }
    };
    let sleep = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(sleep);
    let mut last = Instant::now();
    loop {
        let outcome = match accounted_turn(&mut worker, &mut io, &mut last) {
            Ok(outcome) => outcome,
            Err(why) => return Err(failed(worker, &mut io, why)),
        };
        let deadline = match outcome {
            TurnOutcome::Done => return Ok(worker.into_handler()),
            TurnOutcome::Continue(deadline) => deadline,
        };
        if deadline.is_some_and(|d| d <= last) {
            // More to do at once: let the tasks the turn woke run first.
            tokio::task::yield_now().await;
            continue;
        }
        let deadline = io.before_sleep(deadline);
        if let Some(d) = deadline {
            sleep.as_mut().reset(d.into());
        }
        let want_write = worker.wants_write();
        let writer = write.as_ref().unwrap_or(&read);
        poll_fn(|cx| {
            waker.park_task(cx.waker());
            if worker.has_inbox() {
                return Poll::Ready(());
            }
            if let Poll::Ready(Ok(mut g)) = read.poll_read_ready(cx) {
                g.clear_ready();
                return Poll::Ready(());
            }
            if let Some(w) = &write {
                if let Poll::Ready(Ok(mut g)) = w.poll_read_ready(cx) {
                    g.clear_ready();
                    return Poll::Ready(());
                }
            }
            if want_write {
                if let Poll::Ready(Ok(mut g)) = writer.poll_write_ready(cx) {
                    g.clear_ready();
                    return Poll::Ready(());
                }
            }
            if deadline.is_some() && sleep.as_mut().poll(cx).is_ready() {
                return Poll::Ready(());
            }
            Poll::Pending
        })
        .await;
        waker.unpark_task();
        let woke = Instant::now();
        worker.account_time(Duration::ZERO, woke - last);
        last = woke;
    }
}
