//! The errors of the async API, with quinn 0.11's names, variants and messages, so that code
//! matching on quinn's errors ports by changing the import.

use std::io;

use quinn_proto::VarInt;
pub use quinn_proto::{ConnectError, ConnectionError};

/// The stream was finished, reset or stopped already (quinn's `ClosedStream`).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("closed stream")]
pub struct ClosedStream {
    _private: (),
}

impl ClosedStream {
    pub(crate) fn new() -> Self {
        Self { _private: () }
    }
}

impl From<ClosedStream> for io::Error {
    fn from(x: ClosedStream) -> Self {
        Self::new(io::ErrorKind::NotConnected, x)
    }
}

/// Errors of writing to a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum WriteError {
    /// The peer asked us to stop sending, with this code.
    #[error("sending stopped by peer: error {0}")]
    Stopped(VarInt),
    /// The connection was lost.
    #[error("connection lost")]
    ConnectionLost(#[from] ConnectionError),
    /// The stream was finished or reset already.
    #[error("closed stream")]
    ClosedStream,
    /// Never returned: this API sends no 0-RTT data on its own streams (quinn's variant,
    /// kept so that matches port).
    #[error("0-RTT rejected")]
    ZeroRttRejected,
}

impl From<ClosedStream> for WriteError {
    fn from(_: ClosedStream) -> Self {
        Self::ClosedStream
    }
}

impl From<WriteError> for io::Error {
    fn from(x: WriteError) -> Self {
        let kind = match x {
            WriteError::Stopped(_) | WriteError::ZeroRttRejected => io::ErrorKind::ConnectionReset,
            WriteError::ConnectionLost(_) | WriteError::ClosedStream => io::ErrorKind::NotConnected,
        };
        Self::new(kind, x)
    }
}

/// Errors of reading from a stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// The peer abandoned the stream, with this code.
    #[error("stream reset by peer: error {0}")]
    Reset(VarInt),
    /// The connection was lost.
    #[error("connection lost")]
    ConnectionLost(#[from] ConnectionError),
    /// The stream was stopped, or read to its end, already.
    #[error("closed stream")]
    ClosedStream,
    /// Never returned: reads are always ordered here (quinn's variant, kept for matches).
    #[error("ordered read after unordered read")]
    IllegalOrderedRead,
    /// Never returned (see [`WriteError::ZeroRttRejected`]).
    #[error("0-RTT rejected")]
    ZeroRttRejected,
}

impl From<ReadError> for io::Error {
    fn from(x: ReadError) -> Self {
        let kind = match x {
            ReadError::Reset(_) | ReadError::ZeroRttRejected => io::ErrorKind::ConnectionReset,
            ReadError::ConnectionLost(_) | ReadError::ClosedStream => io::ErrorKind::NotConnected,
            ReadError::IllegalOrderedRead => io::ErrorKind::InvalidInput,
        };
        Self::new(kind, x)
    }
}

/// Errors of [`super::RecvStream::read_to_end`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadToEndError {
    #[error("read error: {0}")]
    Read(#[from] ReadError),
    /// The stream is longer than the limit given.
    #[error("stream too long")]
    TooLong,
}

/// Errors of [`super::RecvStream::read_exact`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadExactError {
    /// The stream finished after this many octets, before the buffer was full.
    #[error("stream finished early ({0} bytes read)")]
    FinishedEarly(usize),
    #[error(transparent)]
    ReadError(#[from] ReadError),
}

/// Errors of [`super::SendStream::stopped`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StoppedError {
    #[error("connection lost")]
    ConnectionLost(#[from] ConnectionError),
    /// Never returned (see [`WriteError::ZeroRttRejected`]).
    #[error("0-RTT rejected")]
    ZeroRttRejected,
}

/// Errors of [`super::Connection::send_datagram`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendDatagramError {
    /// The peer does not take datagrams.
    #[error("datagrams not supported by peer")]
    UnsupportedByPeer,
    /// Datagrams are turned off locally.
    #[error("datagram support disabled")]
    Disabled,
    /// Larger than [`super::Connection::max_datagram_size`].
    #[error("datagram too large")]
    TooLarge,
    #[error("connection lost")]
    ConnectionLost(#[from] ConnectionError),
}

/// [`super::Incoming::retry`] on an attempt whose address is validated already: it comes
/// back, to be accepted or refused.
#[derive(Debug, thiserror::Error)]
#[error("retry() with validated Incoming")]
pub struct RetryError(pub(crate) Box<super::Incoming>);

impl RetryError {
    /// The attempt, to decide otherwise.
    pub fn into_incoming(self) -> super::Incoming {
        *self.0
    }
}
