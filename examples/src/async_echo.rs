//! Echo on the async API ([`xdp_quic::tokio`]): every bidirectional stream is written back to
//! its sender as it arrives (chunk by chunk, without copying), every datagram too. ALPN `echo`,
//! the same protocol as [`crate::echo`]. The server of the `async-echo` binary.

use xdp_quic::tokio::{
    Connection, Endpoint, ReadError, RecvStream, SendStream, VarInt, WriteError,
};

/// ALPN of the echo protocol.
pub use crate::echo::ALPN;

/// The largest chunk taken from a stream at once.
const CHUNK: usize = 64 * 1024;

/// Accepts connections until the endpoint closes, each served by its own task.
pub async fn serve(ep: Endpoint) {
    while let Some(incoming) = ep.accept().await {
        tokio::spawn(async move {
            match incoming.await {
                Ok(conn) => serve_connection(conn).await,
                Err(e) => tracing::debug!("handshake failed: {e}"),
            }
        });
    }
}

/// Echoes the streams and datagrams of `conn` until it ends.
pub async fn serve_connection(conn: Connection) {
    let datagrams = conn.clone();
    tokio::spawn(async move {
        while let Ok(d) = datagrams.read_datagram().await {
            // Unreliable both ways: a datagram that does not fit any more is dropped.
            let _ = datagrams.send_datagram(d);
        }
    });
    while let Ok((send, recv)) = conn.accept_bi().await {
        tokio::spawn(async move {
            if let Err(e) = echo_stream(send, recv).await {
                tracing::debug!("stream echo ended: {e}");
            }
        });
    }
}

/// Why a stream's echo ended early.
#[derive(Debug, thiserror::Error)]
pub enum EchoError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Writes back what `recv` brings, then finishes `send`. A stream the peer reset is reset
/// back with its code (dropping `send` would finish it, and a partial echo would look whole).
pub async fn echo_stream(mut send: SendStream, mut recv: RecvStream) -> Result<(), EchoError> {
    loop {
        match recv.read_chunk(CHUNK, true).await {
            Ok(Some(chunk)) => send.write_chunk(chunk.bytes).await?,
            Ok(None) => break,
            Err(e) => {
                let code = match e {
                    ReadError::Reset(code) => code,
                    _ => VarInt::from_u32(0),
                };
                let _ = send.reset(code);
                return Err(e.into());
            }
        }
    }
    // Finished already only if the peer stopped it, which the write would have said.
    let _ = send.finish();
    Ok(())
}
