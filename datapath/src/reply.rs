//! The answer to work posted to a worker ([`crate::EngineHandle::call`]): a one-shot slot
//! that the worker fills and the caller waits on, by blocking or as a future.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Condvar, Mutex};
use std::task::{Context, Poll, Waker};

/// The work was dropped without running: its worker ended (or the connection it was for).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the worker (or the connection) ended before the work ran")]
pub struct Gone;

enum State<T> {
    Pending(Option<Waker>),
    Ready(T),
    Taken,
    Gone,
}

struct Shared<T> {
    state: Mutex<State<T>>,
    filled: Condvar,
}

/// What a posted call returns: [`Reply::wait`] blocks for it; `.await` waits without
/// blocking. Errs with [`Gone`] if the work was dropped without running.
pub struct Reply<T> {
    shared: Arc<Shared<T>>,
}

/// The worker's side: filled once; dropped unfilled, it says [`Gone`].
pub(crate) struct Filler<T> {
    shared: Option<Arc<Shared<T>>>,
}

/// A reply and the filler the posted work carries.
pub(crate) fn channel<T>() -> (Filler<T>, Reply<T>) {
    let shared = Arc::new(Shared {
        state: Mutex::new(State::Pending(None)),
        filled: Condvar::new(),
    });
    (
        Filler {
            shared: Some(shared.clone()),
        },
        Reply { shared },
    )
}

impl<T> Shared<T> {
    fn settle(&self, to: State<T>) {
        let before = {
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *s, to)
        };
        self.filled.notify_all();
        // Woken with the lock released: a waker that polls the reply at once (an executor
        // that runs the task inline) takes it again.
        if let State::Pending(Some(waker)) = before {
            waker.wake();
        }
    }
}

impl<T> Filler<T> {
    /// Hands `value` to the caller.
    pub fn fill(mut self, value: T) {
        if let Some(s) = self.shared.take() {
            s.settle(State::Ready(value));
        }
    }
}

impl<T> Drop for Filler<T> {
    fn drop(&mut self) {
        if let Some(s) = self.shared.take() {
            s.settle(State::Gone);
        }
    }
}

impl<T> Reply<T> {
    /// Blocks until the worker has run the work (do not call it on a worker thread).
    pub fn wait(self) -> Result<T, Gone> {
        let mut s = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            match std::mem::replace(&mut *s, State::Taken) {
                State::Ready(v) => return Ok(v),
                State::Gone | State::Taken => return Err(Gone),
                pending @ State::Pending(_) => {
                    *s = pending;
                    s = self
                        .shared
                        .filled
                        .wait(s)
                        .unwrap_or_else(|p| p.into_inner());
                }
            }
        }
    }
}

impl<T> Future for Reply<T> {
    type Output = Result<T, Gone>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut s = self.shared.state.lock().unwrap_or_else(|p| p.into_inner());
        match std::mem::replace(&mut *s, State::Taken) {
            State::Ready(v) => Poll::Ready(Ok(v)),
            State::Gone | State::Taken => Poll::Ready(Err(Gone)),
            State::Pending(_) => {
                *s = State::Pending(Some(cx.waker().clone()));
                Poll::Pending
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filled_dropped_and_awaited() {
        let (f, r) = channel();
        std::thread::spawn(move || f.fill(7));
        assert_eq!(r.wait(), Ok(7));
        let (f, r) = channel::<u8>();
        drop(f);
        assert_eq!(r.wait(), Err(Gone));
        // As a future, polled by hand with a no-op waker before and after the fill.
        let (f, mut r) = channel();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        assert!(Pin::new(&mut r).poll(&mut cx).is_pending());
        f.fill("done");
        assert_eq!(Pin::new(&mut r).poll(&mut cx), Poll::Ready(Ok("done")));
    }
}
