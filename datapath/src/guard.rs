//! Isolating a panicking application handler.
//!
//! The worker calls its handler through [`Guarded`]. When a callback panics, the worker
//! catches it, marks the handler poisoned (its state may be half-updated, so it is never
//! called again), counts `handler_panics`, and stops: it closes its connections with
//! [`INTERNAL_ERROR`] and drains them. The other workers go on.

use bytes::Bytes;
use quinn_proto::{ConnectionError, StreamId, VarInt};

use crate::conn::{Conn, ConnId, Ctx};
use crate::handler::Handler;

/// The application error code of connections closed because their worker's handler panicked.
pub const INTERNAL_ERROR: VarInt = VarInt::from_u32(0x1);

/// A handler that is called until it panics once.
pub(crate) struct Guarded<H> {
    pub inner: H,
    pub poisoned: bool,
}

macro_rules! forward {
    ($( fn $name:ident(&mut self $(, $arg:ident: $ty:ty)* ); )*) => {
        impl<H: Handler> Handler for Guarded<H> {
            $(
                fn $name(&mut self $(, $arg: $ty)*) {
                    if !self.poisoned {
                        self.inner.$name($($arg),*)
                    }
                }
            )*
        }
    };
}

forward! {
    fn connected(&mut self, conn: &mut Conn<'_>);
    fn stream_opened(&mut self, conn: &mut Conn<'_>, stream: StreamId);
    fn stream_readable(&mut self, conn: &mut Conn<'_>, stream: StreamId);
    fn stream_writable(&mut self, conn: &mut Conn<'_>, stream: StreamId);
    fn stream_finished(&mut self, conn: &mut Conn<'_>, stream: StreamId);
    fn stream_stopped(&mut self, conn: &mut Conn<'_>, stream: StreamId, code: VarInt);
    fn streams_available(&mut self, conn: &mut Conn<'_>);
    fn datagram(&mut self, conn: &mut Conn<'_>, data: Bytes);
    fn closed(&mut self, ctx: &mut Ctx<'_>, conn: ConnId, reason: &ConnectionError);
}

/// The message of a caught panic, when it has one.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)")
}
