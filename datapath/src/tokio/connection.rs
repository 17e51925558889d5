//! [`Connection`] and [`Connecting`]: a connection as the application's tasks hold it.

use std::any::Any;
use std::future::{poll_fn, Future};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use quinn_proto::{ConnectionError, ConnectionStats, Dir, Side, VarInt};

use super::error::SendDatagramError;
use super::shared::{dir_index, register, ConnShared, WakerList};
use super::stream::{RecvStream, SendStream};
use super::streams::StreamKey;
use super::Keeper;

/// A handle on a connection that counts towards its implicit close: when the last one goes
/// (connection, streams, connecting, `stopped` futures), the connection is closed with code
/// 0, as in quinn. While one exists, the connection's state keeps the engine (its
/// [`Keeper`]). The handles share one [`Handles`], so a clone or a drop costs one reference
/// count.
#[derive(Clone)]
pub(crate) struct ConnRef(Arc<Handles>);

/// What the application's handles on one connection share; its drop is the implicit close.
pub(crate) struct Handles {
    shared: Arc<ConnShared>,
}

impl ConnRef {
    /// The first handle on a new connection, `shared`, which keeps `keeper` until the last
    /// handle goes.
    pub(crate) fn first(shared: Arc<ConnShared>, keeper: Arc<Keeper>) -> Self {
        shared.lock().keeper = Some(keeper);
        Self(Arc::new(Handles { shared }))
    }

    /// The connection's shared state.
    pub(crate) fn shared(&self) -> &Arc<ConnShared> {
        &self.0.shared
    }
}

impl Drop for Handles {
    fn drop(&mut self) {
        let keeper = {
            let mut st = self.shared.lock();
            if st.error.is_none() && st.close.is_none() {
                st.close = Some((VarInt::from_u32(0), Bytes::new()));
                self.shared.schedule(&mut st);
            }
            st.keeper.take()
        };
        // Outside the lock: the last keeper shuts the engine down.
        drop(keeper);
    }
}

/// A connection in its handshake: `.await` it for the [`Connection`].
pub struct Connecting {
    conn: Option<ConnRef>,
}

impl Connecting {
    pub(crate) fn new(conn: ConnRef) -> Self {
        Self { conn: Some(conn) }
    }

    /// The peer's address.
    pub fn remote_address(&self) -> SocketAddr {
        let c = self.conn.as_ref().expect("polled after completion");
        c.shared()
            .lock()
            .info
            .remote
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// 0-RTT is not offered by this API: the `Connecting` comes back, as quinn gives it back
    /// when 0-RTT is not possible.
    #[allow(clippy::result_large_err)]
    pub fn into_0rtt(self) -> Result<(Connection, ()), Self> {
        Err(self)
    }
}

impl Future for Connecting {
    type Output = Result<Connection, ConnectionError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let conn = self.conn.as_ref().expect("polled after completion");
        {
            let mut st = conn.shared().lock();
            if !st.established {
                if let Some(e) = &st.error {
                    return Poll::Ready(Err(e.clone()));
                }
                st.connecting = Some(cx.waker().clone());
                return Poll::Pending;
            }
        }
        let conn = self.conn.take().expect("checked above");
        Poll::Ready(Ok(Connection(conn)))
    }
}

/// An established connection. Cheap to clone; when every clone and every stream of it is
/// dropped, the connection is closed with code 0 (quinn's implicit close).
#[derive(Clone)]
pub struct Connection(pub(crate) ConnRef);

/// One `open_bi` / `open_uni` under way: asks the worker for a stream (one request of
/// `open_requests`; the worker queues what it opens in `opened`, for any asker) and takes
/// one. Dropped before it took one, it withdraws its request, or, when the worker already
/// served it, finishes the stream nobody will take, so that no stream holds the peer's
/// credit for nothing.
struct Opening<'a> {
    conn: &'a Connection,
    dir: Dir,
    asked: bool,
    done: bool,
}

impl<'a> Opening<'a> {
    fn new(conn: &'a Connection, dir: Dir) -> Self {
        Self {
            conn,
            dir,
            asked: false,
            done: false,
        }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Result<StreamKey, ConnectionError>> {
        let c = self.conn.shared();
        let mut st = c.lock();
        if let Some(e) = &st.error {
            self.done = true;
            return Poll::Ready(Err(e.clone()));
        }
        let d = dir_index(self.dir);
        if self.asked {
            if let Some(id) = st.opened[d].pop_front() {
                self.done = true;
                return Poll::Ready(Ok(st.streams.key(id)));
            }
        }
        // Registered before asking: a worker that has ended wakes it (`schedule`).
        register(&mut st.open_waiters, cx.waker());
        if !self.asked {
            self.asked = true;
            st.open_requests[d] += 1;
            c.schedule(&mut st);
        }
        Poll::Pending
    }
}

impl Drop for Opening<'_> {
    fn drop(&mut self) {
        if !self.asked || self.done {
            return;
        }
        let d = dir_index(self.dir);
        let mut wake = WakerList::new();
        let unclaimed = {
            let mut st = self.conn.shared().lock();
            if st.open_requests[d] > 0 {
                st.open_requests[d] -= 1;
                // The request withdrawn may be another opener's while the stream opened for
                // this one waits in `opened`: the others look again, or one would wait for a
                // stream that is already there.
                if !st.opened[d].is_empty() {
                    wake = std::mem::take(&mut st.open_waiters);
                }
                None
            } else {
                st.opened[d].pop_front().map(|id| st.streams.key(id))
            }
        };
        for w in wake {
            w.wake();
        }
        // Outside the lock: the handles' drops take it. Dropping them finishes the stream
        // (empty) and stops its receiving side, as for any stream the application drops.
        if let Some(key) = unclaimed {
            drop(SendStream::new(self.conn.0.clone(), key));
            if self.dir == Dir::Bi {
                drop(RecvStream::new(self.conn.0.clone(), key));
            }
        }
    }
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let st = self.0.shared().lock();
        f.debug_struct("Connection")
            .field("id", &st.id)
            .field("remote", &st.info.remote)
            .finish()
    }
}

impl Connection {
    fn shared(&self) -> &Arc<ConnShared> {
        self.0.shared()
    }

    /// Opens a bidirectional stream, waiting while the peer's stream limit is reached.
    /// Cancel-safe: dropped before it completes, it opens nothing (or finishes at once the
    /// stream the worker opened for it).
    pub fn open_bi(
        &self,
    ) -> impl Future<Output = Result<(SendStream, RecvStream), ConnectionError>> + Send + '_ {
        let mut opening = Opening::new(self, Dir::Bi);
        poll_fn(move |cx| {
            opening.poll(cx).map_ok(|id| {
                (
                    SendStream::new(self.0.clone(), id),
                    RecvStream::new(self.0.clone(), id),
                )
            })
        })
    }

    /// Opens a unidirectional stream, waiting while the peer's stream limit is reached.
    /// Cancel-safe, as [`Connection::open_bi`].
    pub fn open_uni(
        &self,
    ) -> impl Future<Output = Result<SendStream, ConnectionError>> + Send + '_ {
        let mut opening = Opening::new(self, Dir::Uni);
        poll_fn(move |cx| {
            opening
                .poll(cx)
                .map_ok(|id| SendStream::new(self.0.clone(), id))
        })
    }

    /// Waits for the next bidirectional stream the peer opens.
    pub fn accept_bi(
        &self,
    ) -> impl Future<Output = Result<(SendStream, RecvStream), ConnectionError>> + Send + '_ {
        poll_fn(move |cx| {
            self.poll_accept(cx, Dir::Bi).map_ok(|id| {
                (
                    SendStream::new(self.0.clone(), id),
                    RecvStream::new(self.0.clone(), id),
                )
            })
        })
    }

    /// Waits for the next unidirectional stream the peer opens.
    pub fn accept_uni(
        &self,
    ) -> impl Future<Output = Result<RecvStream, ConnectionError>> + Send + '_ {
        poll_fn(move |cx| {
            self.poll_accept(cx, Dir::Uni)
                .map_ok(|id| RecvStream::new(self.0.clone(), id))
        })
    }

    fn poll_accept(
        &self,
        cx: &mut Context<'_>,
        dir: Dir,
    ) -> Poll<Result<StreamKey, ConnectionError>> {
        let mut st = self.shared().lock();
        if let Some(id) = st.incoming[dir_index(dir)].pop_front() {
            return Poll::Ready(Ok(st.streams.key(id)));
        }
        if let Some(e) = &st.error {
            return Poll::Ready(Err(e.clone()));
        }
        register(&mut st.accept_waiters, cx.waker());
        Poll::Pending
    }

    /// Waits for the next unreliable datagram (RFC 9221).
    pub fn read_datagram(
        &self,
    ) -> impl Future<Output = Result<Bytes, ConnectionError>> + Send + '_ {
        poll_fn(move |cx| {
            let mut st = self.shared().lock();
            if let Some(d) = st.datagrams.pop() {
                return Poll::Ready(Ok(d));
            }
            if let Some(e) = &st.error {
                return Poll::Ready(Err(e.clone()));
            }
            register(&mut st.datagram_waiters, cx.waker());
            Poll::Pending
        })
    }

    /// Sends an unreliable datagram; when too many wait to be sent, the oldest is dropped.
    /// Its size is checked against [`Connection::max_datagram_size`], as the worker last saw
    /// it (at the connection's last event it handled); one the path no longer takes when the
    /// worker sends it is dropped, as the network could. As in quinn, it fails with
    /// `Disabled` when this endpoint's transport turned datagrams off
    /// (`datagram_receive_buffer_size(None)`), before any other check but a lost connection.
    pub fn send_datagram(&self, data: Bytes) -> Result<(), SendDatagramError> {
        let c = self.shared();
        let mut st = c.lock();
        if let Some(e) = &st.error {
            return Err(SendDatagramError::ConnectionLost(e.clone()));
        }
        if st.info.datagrams_off {
            return Err(SendDatagramError::Disabled);
        }
        let Some(max) = st.info.max_datagram else {
            return Err(SendDatagramError::UnsupportedByPeer);
        };
        if data.len() > max {
            return Err(SendDatagramError::TooLarge);
        }
        st.out_datagrams.push(data, c.ep.limits.datagram_send);
        c.schedule(&mut st);
        Ok(())
    }

    /// The largest datagram the peer and the path take (`None`: the peer takes none), as the
    /// worker last saw it: refreshed at each event of the connection it handles (a stream's
    /// data, a datagram, a request of the application's).
    pub fn max_datagram_size(&self) -> Option<usize> {
        self.shared().lock().info.max_datagram
    }

    /// Closes the connection with `error_code` and `reason`: from now on new operations fail
    /// with `LocallyClosed`, except that reads still hand out what was received before and
    /// `accept_bi`/`accept_uni` the streams that were waiting, until the close's drain ends
    /// (quinn hands buffered data out before the error too). What was written and not sent
    /// yet is discarded, as in quinn, where nothing goes out after a close: to have data
    /// arrive, `finish` its stream and await [`SendStream::stopped`] before closing.
    pub fn close(&self, error_code: VarInt, reason: &[u8]) {
        let c = self.shared();
        {
            let mut st = c.lock();
            if st.error.is_some() {
                return;
            }
            st.close = Some((error_code, Bytes::copy_from_slice(reason)));
            c.schedule(&mut st);
        }
        c.closed_locally();
    }

    /// Waits until the connection ends; says why.
    // Written out, as the others are, so that the signature promises `Send`.
    #[allow(clippy::manual_async_fn)]
    pub fn closed(&self) -> impl Future<Output = ConnectionError> + Send + '_ {
        async move {
            let c = self.shared();
            loop {
                // Registered before the look, so that an end between the two wakes it.
                let notified = c.closed.notified();
                let mut notified = std::pin::pin!(notified);
                notified.as_mut().enable();
                if let Some(e) = &c.lock().error {
                    return e.clone();
                }
                notified.await;
            }
        }
    }

    /// Why the connection ended, if it has.
    pub fn close_reason(&self) -> Option<ConnectionError> {
        self.shared().lock().error.clone()
    }

    /// The peer's address (it changes when the peer migrates).
    pub fn remote_address(&self) -> SocketAddr {
        self.shared()
            .lock()
            .info
            .remote
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)))
    }

    /// The local address the peer sent to, for accepted connections where the backend
    /// knows it.
    pub fn local_ip(&self) -> Option<IpAddr> {
        self.shared().lock().info.local_ip
    }

    /// Server or client.
    pub fn side(&self) -> Side {
        self.shared().lock().side
    }

    /// The round-trip time estimate.
    pub fn rtt(&self) -> Duration {
        self.shared().lock().info.rtt
    }

    /// quinn-proto's statistics, as of the worker's last batch of work for this connection.
    pub fn stats(&self) -> ConnectionStats {
        self.shared().lock().info.stats.unwrap_or_default()
    }

    /// The handshake's results: a `quinn_proto::crypto::rustls::HandshakeData` (ALPN
    /// protocol, server name), as quinn gives it.
    pub fn handshake_data(&self) -> Option<Box<dyn Any>> {
        let st = self.shared().lock();
        let h = st.info.handshake.as_ref()?;
        Some(Box::new(quinn_proto::crypto::rustls::HandshakeData {
            protocol: h.protocol.clone(),
            server_name: h.server_name.clone(),
        }))
    }

    /// The peer's certificate chain, a `Vec<rustls::pki_types::CertificateDer>`, as quinn
    /// gives it.
    pub fn peer_identity(&self) -> Option<Box<dyn Any>> {
        let st = self.shared().lock();
        let certs = st.info.peer_certificates.clone()?;
        Some(Box::new(certs))
    }

    /// An id unique among the connections alive in this process.
    pub fn stable_id(&self) -> usize {
        Arc::as_ptr(self.shared()) as usize
    }

    /// The engine's id of this connection (its worker, for one).
    pub fn id(&self) -> Option<crate::ConnId> {
        self.shared().lock().id
    }
}
