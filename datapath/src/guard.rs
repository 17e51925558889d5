//! Isolating a panicking application handler.
//!
//! The worker calls its handler through [`Guarded`]. When a callback panics, the worker
//! catches it, marks the handler poisoned (its state may be half-updated, so it is never
//! called again), counts `handler_panics`, and stops: it closes its connections with
//! [`INTERNAL_ERROR`] and drains them. The other workers go on.

use quinn_proto::VarInt;

/// The application error code of connections closed because their worker's handler panicked.
pub const INTERNAL_ERROR: VarInt = VarInt::from_u32(0x1);

/// A handler that is called until it panics once.
pub(crate) struct Guarded<H> {
    pub inner: H,
    pub poisoned: bool,
}

impl<H> Guarded<H> {
    /// Runs `f` on the handler, unless it panicked before. Returns true when `f` panicked now:
    /// the handler is then poisoned, and the caller stops the worker.
    pub fn call(&mut self, f: impl FnOnce(&mut H)) -> bool {
        if self.poisoned {
            return false;
        }
        let inner = &mut self.inner;
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(inner))).is_err();
        self.poisoned |= panicked;
        panicked
    }
}

/// The message of a caught panic, when it has one.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}
