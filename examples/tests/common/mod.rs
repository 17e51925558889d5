//! Shared helpers of the loopback interop tests: the quinn side (client configuration, echo and
//! perf servers written on quinn), our engines, payloads, and hang guards.
//!
//! The quinn side builds its TLS configuration with rustls directly (ring provider), not with
//! `xdp_quic::tls`, so that the two peers share nothing but the wire.

#![allow(dead_code)]

use std::future::Future;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rand::{RngCore, SeedableRng};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use xdp_quic::backend::udp::UdpBackend;
use xdp_quic::{tls, Engine, EngineBuilder, Handler, TransportConfig, VarInt};

/// Hang guard of every wait: far above what any step needs, even in debug builds on 2 cores.
pub const HANG: Duration = Duration::from_secs(60);

/// How long our engines wait for connections to drain at shutdown.
pub const DRAIN: Duration = Duration::from_secs(1);

/// Deterministic pseudo-random octets.
pub fn payload(seed: u64, len: usize) -> Bytes {
    let mut v = vec![0u8; len];
    rand::rngs::StdRng::seed_from_u64(seed).fill_bytes(&mut v);
    v.into()
}

/// Panics with the first differing offset (not a 10 MB dump) unless `got == want`.
#[track_caller]
pub fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    if got == want {
        return;
    }
    let at = got
        .iter()
        .zip(want)
        .position(|(a, b)| a != b)
        .unwrap_or(got.len().min(want.len()));
    panic!(
        "{what}: got {} octets, want {}; first difference at offset {at}",
        got.len(),
        want.len()
    );
}

/// Reads `recv` to its end with a short timeout around every read, so that read futures are
/// dropped again and again while a peer trickles; returns the data and how many reads were
/// dropped, which it also publishes in `seen` as it goes (the peer waits for the first
/// before it sends the rest: [`wait_for_a_dropped_read`]).
pub async fn read_dropping_futures(
    recv: &mut xdp_quic::tokio::RecvStream,
    seen: &std::sync::atomic::AtomicU32,
) -> Result<(Vec<u8>, u32), xdp_quic::tokio::ReadError> {
    let (mut got, mut buf, mut dropped) = (Vec::new(), [0u8; 700], 0u32);
    loop {
        match tokio::time::timeout(Duration::from_micros(300), recv.read(&mut buf)).await {
            Err(_) => {
                dropped += 1;
                seen.store(dropped, Ordering::Release);
            }
            Ok(Ok(Some(n))) => got.extend_from_slice(&buf[..n]),
            Ok(Ok(None)) => return Ok((got, dropped)),
            Ok(Err(e)) => return Err(e),
        }
    }
}

/// Waits until [`read_dropping_futures`] has dropped a read future (`seen` above 0): sent
/// after the first piece of a trickle, so that the server certainly drops one, whatever the
/// machine's load.
pub async fn wait_for_a_dropped_read(seen: &std::sync::atomic::AtomicU32) {
    guard("a read future dropped", async {
        while seen.load(Ordering::Acquire) == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
}

/// Awaits `f`, failing the test if it takes longer than [`HANG`].
pub async fn guard<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(HANG, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: still running after {HANG:?} (hang guard)"),
    }
}

/// Runs blocking `f` on a thread of its own and awaits it, with the hang guard. (A thread of
/// our own rather than `spawn_blocking`: a hung one must not keep the runtime from dropping.)
pub async fn blocking<T: Send + 'static>(what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match guard(what, rx).await {
        Ok(Ok(v)) => v,
        Ok(Err(panic)) => std::panic::resume_unwind(panic),
        Err(_) => panic!("{what}: thread vanished"),
    }
}

/// A fresh self-signed identity for "localhost" and its certificate (for the peer to trust).
pub fn identity() -> (tls::Identity, CertificateDer<'static>) {
    let id = tls::Identity::self_signed(&["localhost"]).expect("self-signed certificate");
    let cert = id.chain[0].clone();
    (id, cert)
}

/// The transport of our engines in these tests (quinn-proto's defaults).
pub fn our_transport() -> TransportConfig {
    TransportConfig::default()
}

/// Our server engine builder: `workers` shards, ALPN `alpn`, short drain. Returns the
/// certificate the client must trust.
pub fn our_server(workers: usize, alpn: &[u8]) -> (EngineBuilder, CertificateDer<'static>) {
    let (id, cert) = identity();
    let b = EngineBuilder::default()
        .workers(workers)
        .server(tls::server_config(id, &[alpn]).expect("server TLS"))
        .transport(our_transport())
        .drain_timeout(DRAIN);
    (b, cert)
}

/// Our client engine builder trusting `cert`, ALPN `alpn`.
pub fn our_client(workers: usize, cert: CertificateDer<'static>, alpn: &[u8]) -> EngineBuilder {
    EngineBuilder::default()
        .workers(workers)
        .client(tls::client_config(tls::Trust::Roots(vec![cert]), &[alpn]).expect("client TLS"))
        .transport(our_transport())
        .drain_timeout(DRAIN)
}

/// `workers` SO_REUSEPORT sockets on one loopback port, WITHOUT the CID steering program:
/// the kernel's 4-tuple hash spreads packets and the workers hand misrouted ones over.
pub fn hash_group(workers: usize) -> Vec<UdpBackend> {
    use socket2::{Domain, Protocol, Socket, Type};
    let mut addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    (0..workers)
        .map(|_| {
            let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
            s.set_reuse_port(true).unwrap();
            s.bind(&addr.into()).unwrap();
            let s: UdpSocket = s.into();
            addr = s.local_addr().unwrap();
            UdpBackend::new(s).unwrap()
        })
        .collect()
}

/// Shuts `engine` down (blocking, on a thread) and returns its handlers; panics if a worker
/// failed or panicked.
pub async fn shutdown<H: Handler>(engine: Engine<H>) -> Vec<H> {
    blocking("engine shutdown", move || {
        engine
            .shutdown(VarInt::from_u32(0), b"bye")
            .expect("workers ended cleanly")
    })
    .await
}

/// The transport of the quinn peers: datagrams on, 1,000 concurrent streams, 30 s idle.
pub fn quinn_transport() -> quinn::TransportConfig {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(VarInt::from_u32(1000))
        .datagram_receive_buffer_size(Some(1 << 20))
        .datagram_send_buffer_size(1 << 20)
        .max_idle_timeout(Some(Duration::from_secs(30).try_into().unwrap()));
    t
}

fn ring() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A quinn client configuration trusting only `cert`, offering `alpn`.
pub fn quinn_client_config(cert: CertificateDer<'static>, alpn: &[u8]) -> quinn::ClientConfig {
    quinn_client_config_with(cert, alpn, ClientTls::default()).0
}

/// Variations of a test client's TLS configuration (quinn's, or ours built outside
/// `xdp_quic::tls`).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientTls {
    /// Offer only TLS_CHACHA20_POLY1305_SHA256 (Initial packets still use AES-128-GCM, as
    /// QUIC v1 requires).
    pub chacha20_only: bool,
    /// Send 0-RTT data when a resumed session allows it.
    pub early_data: bool,
}

/// The ring provider, with only ChaCha20-Poly1305 if `chacha20_only`.
fn provider_for(t: ClientTls) -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    if t.chacha20_only {
        p.cipher_suites = vec![rustls::crypto::ring::cipher_suite::TLS13_CHACHA20_POLY1305_SHA256];
    }
    Arc::new(p)
}

/// Checks the server's certificate against one root, counting the full checks: a resumed
/// TLS 1.3 handshake has no Certificate message, so fewer checks than handshakes means
/// resumptions.
#[derive(Debug)]
pub struct CountingVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    /// Certificates checked (full handshakes).
    pub checked: AtomicU64,
}

impl rustls::client::danger::ServerCertVerifier for CountingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.checked.fetch_add(1, Ordering::Relaxed);
        self.inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// A client configuration (quinn's type, which is also quinn-proto's and so what our
/// `EngineBuilder::client` takes) trusting only `cert`, offering `alpn`, varied by `t`;
/// with the verifier that counts full handshakes. Sessions are kept in the configuration:
/// connections made with clones of it resume each other's.
pub fn quinn_client_config_with(
    cert: CertificateDer<'static>,
    alpn: &[u8],
    t: ClientTls,
) -> (quinn::ClientConfig, Arc<CountingVerifier>) {
    let provider = provider_for(t);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let verifier = Arc::new(CountingVerifier {
        inner: rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .unwrap(),
        checked: AtomicU64::new(0),
    });
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(verifier.clone())
        .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    tls.enable_early_data = t.early_data;
    let initial = rustls::crypto::ring::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .and_then(|s| s.quic_suite())
        .expect("AES-128-GCM has a QUIC suite");
    let quic =
        quinn::crypto::rustls::QuicClientConfig::with_initial(Arc::new(tls), initial).unwrap();
    let mut c = quinn::ClientConfig::new(Arc::new(quic));
    c.transport_config(Arc::new(quinn_transport()));
    (c, verifier)
}

/// A quinn client endpoint on a fresh loopback port.
pub fn quinn_client(cert: CertificateDer<'static>, alpn: &[u8]) -> quinn::Endpoint {
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn_client_config(cert, alpn));
    ep
}

/// Connects `ep` to `addr` ("localhost"), with the hang guard.
pub async fn quinn_connect(ep: &quinn::Endpoint, addr: SocketAddr) -> quinn::Connection {
    guard("quinn connect", async {
        ep.connect(addr, "localhost")
            .expect("connect starts")
            .await
            .expect("handshake")
    })
    .await
}

/// Echoes `data` over a new bidirectional stream of `conn` (writing and reading at once) and
/// returns what came back.
pub async fn quinn_echo(conn: &quinn::Connection, data: Bytes) -> anyhow::Result<Vec<u8>> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let writer = tokio::spawn(async move {
        send.write_chunk(data).await?;
        send.finish()?;
        anyhow::Ok(())
    });
    let back = recv.read_to_end(usize::MAX).await?;
    writer.await??;
    Ok(back)
}

/// Sends `n` distinct datagrams over `conn` and waits until each has come back at least once
/// (resending the missing ones every 500 ms: datagrams are unreliable). Returns the sends.
pub async fn quinn_datagrams(conn: &quinn::Connection, n: usize) -> usize {
    let grams: Vec<Bytes> = (0..n)
        .map(|i| payload(1000 + i as u64, 50 + 20 * i))
        .collect();
    let mut back = vec![false; n];
    let mut sent = 0;
    guard("datagram echo", async {
        while back.iter().any(|b| !b) {
            for (g, _) in grams.iter().zip(&back).filter(|(_, b)| !**b) {
                conn.send_datagram(g.clone()).expect("datagrams enabled");
                sent += 1;
            }
            let until = tokio::time::sleep(Duration::from_millis(500));
            tokio::pin!(until);
            loop {
                tokio::select! {
                    d = conn.read_datagram() => {
                        let d = d.expect("connection alive");
                        let i = grams.iter().position(|g| *g == d).expect("an echo of ours");
                        back[i] = true;
                        if back.iter().all(|b| *b) { break; }
                    }
                    _ = &mut until => break,
                }
            }
        }
    })
    .await;
    sent
}

/// A quinn server configuration with a fresh self-signed identity for "localhost", ALPN
/// `alpn`, the transport of [`quinn_transport`]; with the certificate to trust.
pub fn quinn_server_config(alpn: &[u8]) -> (quinn::ServerConfig, CertificateDer<'static>) {
    let (id, cert) = identity();
    let mut tls = rustls::ServerConfig::builder_with_provider(ring())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(id.chain, id.key)
        .unwrap();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    config.transport_config(Arc::new(quinn_transport()));
    (config, cert)
}

/// A server written on quinn (the independent peer of our client).
pub struct QuinnServer {
    pub endpoint: quinn::Endpoint,
    pub addr: SocketAddr,
    pub cert: CertificateDer<'static>,
    /// Retry packets sent.
    pub retries: Arc<AtomicU64>,
    /// Connection attempts accepted (counted before the handshake goes on).
    pub accepted: Arc<AtomicU64>,
    /// Connections established.
    pub connections: Arc<AtomicU64>,
    /// Streams served to their end (counted before the server finishes its side).
    pub streams: Arc<AtomicU64>,
    /// Datagrams echoed.
    pub datagrams: Arc<AtomicU64>,
    /// Most streams being served at once.
    pub peak_streams: Arc<AtomicU64>,
    /// Sessions the TLS server found for a client's ticket: resumed handshakes.
    pub resumed: Arc<AtomicU64>,
    live_streams: Arc<AtomicU64>,
}

/// The TLS server's session store, counting the sessions it hands back for resumption.
#[derive(Debug)]
struct CountingSessions {
    inner: Arc<dyn rustls::server::StoresServerSessions>,
    found: Arc<AtomicU64>,
}

impl CountingSessions {
    fn count(&self, v: Option<Vec<u8>>) -> Option<Vec<u8>> {
        if v.is_some() {
            self.found.fetch_add(1, Ordering::Relaxed);
        }
        v
    }
}

impl rustls::server::StoresServerSessions for CountingSessions {
    fn put(&self, key: Vec<u8>, value: Vec<u8>) -> bool {
        self.inner.put(key, value)
    }
    fn get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.count(self.inner.get(key))
    }
    fn take(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.count(self.inner.take(key))
    }
    fn can_cache(&self) -> bool {
        self.inner.can_cache()
    }
}

/// What a quinn server does with each accepted bidirectional stream.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Service {
    /// Echo streams and datagrams (ALPN `echo`).
    Echo,
    /// The QUIC perf protocol (ALPN `perf`).
    Perf,
}

impl QuinnServer {
    /// Starts a quinn server on a fresh loopback port; with `retry`, every client must first
    /// prove its address with a Retry round trip.
    pub fn start(service: Service, retry: bool) -> Self {
        Self::start_with(service, retry, false)
    }

    /// [`QuinnServer::start`]; with `zero_rtt`, the session tickets it issues allow 0-RTT
    /// data and it accepts it.
    pub fn start_with(service: Service, retry: bool, zero_rtt: bool) -> Self {
        Self::start_at(service, retry, zero_rtt, "127.0.0.1:0".parse().unwrap())
    }

    /// [`QuinnServer::start_with`] on `bind` (call it from the network namespace it is in).
    pub fn start_at(service: Service, retry: bool, zero_rtt: bool, bind: SocketAddr) -> Self {
        let (id, cert) = identity();
        let key: PrivateKeyDer<'static> = id.key;
        let mut tls = rustls::ServerConfig::builder_with_provider(ring())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(id.chain, key)
            .unwrap();
        let resumed = Arc::new(AtomicU64::new(0));
        tls.session_storage = Arc::new(CountingSessions {
            inner: tls.session_storage.clone(),
            found: resumed.clone(),
        });
        if zero_rtt {
            tls.max_early_data_size = u32::MAX;
        }
        tls.alpn_protocols = vec![match service {
            Service::Echo => b"echo".to_vec(),
            Service::Perf => b"perf".to_vec(),
        }];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).unwrap();
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
        config.transport_config(Arc::new(quinn_transport()));
        let endpoint = quinn::Endpoint::server(config, bind).unwrap();
        let addr = endpoint.local_addr().unwrap();
        let s = Self {
            endpoint,
            addr,
            cert,
            retries: Default::default(),
            accepted: Default::default(),
            connections: Default::default(),
            streams: Default::default(),
            datagrams: Default::default(),
            peak_streams: Default::default(),
            resumed,
            live_streams: Default::default(),
        };
        let ep = s.endpoint.clone();
        let stats = s.stats();
        tokio::spawn(async move {
            while let Some(incoming) = ep.accept().await {
                if retry && !incoming.remote_address_validated() {
                    stats.retries.fetch_add(1, Ordering::Relaxed);
                    incoming.retry().expect("retry possible");
                    continue;
                }
                stats.accepted.fetch_add(1, Ordering::Relaxed);
                let stats = stats.clone();
                tokio::spawn(async move {
                    let Ok(conn) = incoming.await else { return };
                    stats.connections.fetch_add(1, Ordering::Relaxed);
                    serve(conn, service, stats).await;
                });
            }
        });
        s
    }

    fn stats(&self) -> Stats {
        Stats {
            retries: self.retries.clone(),
            accepted: self.accepted.clone(),
            connections: self.connections.clone(),
            streams: self.streams.clone(),
            datagrams: self.datagrams.clone(),
            peak_streams: self.peak_streams.clone(),
            live_streams: self.live_streams.clone(),
        }
    }

    /// Closes the endpoint and waits until its connections are gone.
    pub async fn stop(self) {
        self.endpoint.close(VarInt::from_u32(0), b"bye");
        guard("quinn server idle", self.endpoint.wait_idle()).await;
    }
}

#[derive(Clone)]
struct Stats {
    retries: Arc<AtomicU64>,
    accepted: Arc<AtomicU64>,
    connections: Arc<AtomicU64>,
    streams: Arc<AtomicU64>,
    datagrams: Arc<AtomicU64>,
    peak_streams: Arc<AtomicU64>,
    live_streams: Arc<AtomicU64>,
}

async fn serve(conn: quinn::Connection, service: Service, stats: Stats) {
    if service == Service::Echo {
        let c = conn.clone();
        let st = stats.clone();
        tokio::spawn(async move {
            while let Ok(d) = c.read_datagram().await {
                st.datagrams.fetch_add(1, Ordering::Relaxed);
                let _ = c.send_datagram(d);
            }
        });
    }
    while let Ok((mut send, recv)) = conn.accept_bi().await {
        let stats = stats.clone();
        tokio::spawn(async move {
            let live = stats.live_streams.fetch_add(1, Ordering::Relaxed) + 1;
            stats.peak_streams.fetch_max(live, Ordering::Relaxed);
            let served = match service {
                Service::Echo => echo_stream(&mut send, recv).await,
                Service::Perf => perf_stream(&mut send, recv).await,
            };
            stats.live_streams.fetch_sub(1, Ordering::Relaxed);
            // Counted before our side is finished, so before the peer can see the end.
            if served.is_ok() {
                stats.streams.fetch_add(1, Ordering::Relaxed);
                let _ = send.finish();
            }
        });
    }
}

/// Echoes `recv` into `send` (left unfinished).
async fn echo_stream(
    send: &mut quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    while let Some(chunk) = recv.read_chunk(64 * 1024, true).await? {
        send.write_chunk(chunk.bytes).await?;
    }
    Ok(())
}

/// The perf protocol: 8-octet big-endian response size, upload to the end, then the response
/// (left unfinished).
async fn perf_stream(
    send: &mut quinn::SendStream,
    mut recv: quinn::RecvStream,
) -> anyhow::Result<()> {
    let mut size = [0u8; 8];
    recv.read_exact(&mut size).await?;
    while recv.read_chunk(64 * 1024, true).await?.is_some() {}
    let mut left = u64::from_be_bytes(size);
    let zeros = Bytes::from(vec![0u8; 64 * 1024]);
    while left > 0 {
        let n = left.min(zeros.len() as u64) as usize;
        send.write_chunk(zeros.slice(..n)).await?;
        left -= n as u64;
    }
    Ok(())
}

/// A perf request from a quinn client: uploads `upload` octets, asks for `download`, checks
/// that exactly `download` zeros come back.
pub async fn quinn_perf_request(
    conn: &quinn::Connection,
    upload: usize,
    download: u64,
) -> anyhow::Result<()> {
    let (mut send, mut recv) = conn.open_bi().await?;
    let writer = tokio::spawn(async move {
        send.write_all(&download.to_be_bytes()).await?;
        send.write_chunk(Bytes::from(vec![0u8; upload])).await?;
        send.finish()?;
        anyhow::Ok(())
    });
    let mut got = 0u64;
    while let Some(chunk) = recv.read_chunk(64 * 1024, true).await? {
        anyhow::ensure!(chunk.bytes.iter().all(|b| *b == 0), "non-zero perf payload");
        got += chunk.bytes.len() as u64;
    }
    writer.await??;
    anyhow::ensure!(got == download, "got {got} octets, asked for {download}");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Test handlers on our engines
// ---------------------------------------------------------------------------------------------

/// Wraps a handler of our server and records what its peers looked like to it.
pub struct Observed<H> {
    pub inner: H,
    /// Every remote address a connection had at any callback: a migrated client shows up
    /// with its old and new addresses.
    pub remotes: std::collections::BTreeSet<SocketAddr>,
    /// One entry per completed handshake: whether the client's 0-RTT data was accepted.
    pub zero_rtt: Vec<bool>,
}

impl<H> Observed<H> {
    pub fn new(inner: H) -> Self {
        Self {
            inner,
            remotes: Default::default(),
            zero_rtt: Vec::new(),
        }
    }

    /// The distinct remote IP addresses seen.
    pub fn remote_ips(&self) -> std::collections::BTreeSet<std::net::IpAddr> {
        self.remotes.iter().map(|a| a.ip()).collect()
    }
}

impl<H: Handler> Handler for Observed<H> {
    fn connected(&mut self, conn: &mut xdp_quic::Conn<'_>) {
        self.remotes.insert(conn.remote_address());
        self.zero_rtt.push(conn.has_0rtt());
        self.inner.connected(conn)
    }
    fn stream_opened(&mut self, conn: &mut xdp_quic::Conn<'_>, s: xdp_quic::StreamId) {
        self.remotes.insert(conn.remote_address());
        self.inner.stream_opened(conn, s)
    }
    fn stream_readable(&mut self, conn: &mut xdp_quic::Conn<'_>, s: xdp_quic::StreamId) {
        self.remotes.insert(conn.remote_address());
        self.inner.stream_readable(conn, s)
    }
    fn stream_writable(&mut self, conn: &mut xdp_quic::Conn<'_>, s: xdp_quic::StreamId) {
        self.remotes.insert(conn.remote_address());
        self.inner.stream_writable(conn, s)
    }
    fn stream_finished(&mut self, conn: &mut xdp_quic::Conn<'_>, s: xdp_quic::StreamId) {
        self.remotes.insert(conn.remote_address());
        self.inner.stream_finished(conn, s)
    }
    fn stream_stopped(
        &mut self,
        conn: &mut xdp_quic::Conn<'_>,
        s: xdp_quic::StreamId,
        code: VarInt,
    ) {
        self.remotes.insert(conn.remote_address());
        self.inner.stream_stopped(conn, s, code)
    }
    fn streams_available(&mut self, conn: &mut xdp_quic::Conn<'_>) {
        self.remotes.insert(conn.remote_address());
        self.inner.streams_available(conn)
    }
    fn datagram(&mut self, conn: &mut xdp_quic::Conn<'_>, data: Bytes) {
        self.remotes.insert(conn.remote_address());
        self.inner.datagram(conn, data)
    }
    fn closed(
        &mut self,
        ctx: &mut xdp_quic::Ctx<'_>,
        conn: xdp_quic::ConnId,
        reason: &xdp_quic::ConnectionError,
    ) {
        self.inner.closed(ctx, conn, reason)
    }
}

/// One connection of a [`RoundsClient`].
#[derive(Debug, Clone, Default)]
pub struct Round {
    /// One bidirectional stream each: the octets are written, then the stream is finished.
    pub requests: Vec<Bytes>,
    /// Write the requests as soon as the connection exists, before the handshake (0-RTT when
    /// a resumed session allows it), rather than once connected.
    pub early: bool,
    /// Force a 1-RTT key update each time this many more response octets have arrived
    /// (quinn-proto ignores one asked for while the last is under way).
    pub key_update_every: Option<usize>,
}

/// What one round saw.
#[derive(Debug, Clone, Default)]
pub struct RoundFacts {
    /// 0-RTT keys were there when the requests were written early (a resumed session).
    pub had_0rtt: bool,
    /// Requests written before the handshake completed.
    pub sent_early: usize,
    /// The server accepted the 0-RTT data.
    pub accepted_0rtt: bool,
    /// The handshake completed.
    pub connected: bool,
    /// Key updates forced (one per `key_update_every` octets).
    pub key_updates_forced: usize,
    /// Response octets received.
    pub received: usize,
    /// Why the connection ended, if not by our own close after the last response.
    pub error: Option<String>,
}

struct Pending {
    index: usize,
    out: xdp_quic_examples::outbox::Outbox,
    /// Our side is finished (the whole request was taken).
    finished: bool,
    body: bytes::BytesMut,
}

/// A client handler on our engine for these tests: one connection per [`Round`] to `remote`
/// ("localhost"), one after the other (the next starts when the previous one has closed, so
/// it can resume its session); every response is kept whole. Echo (the response is the
/// request) and hq-interop (`GET /path\r\n`) both fit. The worker stops after the last round.
pub struct RoundsClient {
    remote: SocketAddr,
    rounds: Vec<Round>,
    current: usize,
    streams: std::collections::HashMap<xdp_quic::StreamId, Pending>,
    next_request: usize,
    /// Per round, per request: the response, or why there is none.
    pub responses: Vec<Vec<Option<Result<Bytes, String>>>>,
    pub facts: Vec<RoundFacts>,
}

impl RoundsClient {
    pub fn new(remote: SocketAddr, rounds: Vec<Round>) -> Self {
        Self {
            remote,
            responses: rounds
                .iter()
                .map(|r| vec![None; r.requests.len()])
                .collect(),
            facts: vec![RoundFacts::default(); rounds.len()],
            rounds,
            current: 0,
            streams: Default::default(),
            next_request: 0,
        }
    }

    /// Starts the first round (post it to the worker).
    pub fn start(&mut self, ctx: &mut xdp_quic::Ctx<'_>) {
        self.connect(ctx);
    }

    fn connect(&mut self, ctx: &mut xdp_quic::Ctx<'_>) {
        self.next_request = 0;
        self.streams.clear();
        let r = self.current;
        let started = if self.rounds[r].early {
            ctx.connect_with_early_data(self.remote, "localhost", |conn| {
                self.facts[r].had_0rtt = conn.has_0rtt();
                self.request_more(conn);
                self.facts[r].sent_early = self.next_request;
            })
        } else {
            ctx.connect(self.remote, "localhost")
        };
        if let Err(e) = started {
            self.facts[r].error = Some(e.to_string());
            self.next_round(ctx);
        }
    }

    fn next_round(&mut self, ctx: &mut xdp_quic::Ctx<'_>) {
        self.current += 1;
        if self.current < self.rounds.len() {
            self.connect(ctx);
        } else {
            ctx.stop_worker();
        }
    }

    /// Opens streams for the requests not sent yet, as the peer's limit allows.
    fn request_more(&mut self, conn: &mut xdp_quic::Conn<'_>) {
        while let Some(req) = self.rounds[self.current].requests.get(self.next_request) {
            let req = req.clone();
            let Some(s) = conn.open_bi() else { return };
            let mut out = xdp_quic_examples::outbox::Outbox::default();
            out.push(req);
            self.streams.insert(
                s,
                Pending {
                    index: self.next_request,
                    out,
                    finished: false,
                    body: Default::default(),
                },
            );
            self.next_request += 1;
            self.flush(conn, s);
        }
    }

    fn flush(&mut self, conn: &mut xdp_quic::Conn<'_>, s: xdp_quic::StreamId) {
        let Some(p) = self.streams.get_mut(&s) else {
            return;
        };
        if !p.finished && p.out.flush(conn, s) == Ok(true) {
            let _ = conn.finish(s);
            p.finished = true;
        }
    }

    fn done(&mut self, conn: &mut xdp_quic::Conn<'_>, index: usize, r: Result<Bytes, String>) {
        let responses = &mut self.responses[self.current];
        responses[index] = Some(r);
        if responses.iter().all(Option::is_some) {
            conn.close(VarInt::from_u32(0), b"done");
        }
    }
}

impl Handler for RoundsClient {
    fn connected(&mut self, conn: &mut xdp_quic::Conn<'_>) {
        let f = &mut self.facts[self.current];
        f.connected = true;
        f.accepted_0rtt = conn.accepted_0rtt();
        if self.rounds[self.current].requests.is_empty() {
            conn.close(VarInt::from_u32(0), b"done");
        }
        self.request_more(conn);
    }

    fn streams_available(&mut self, conn: &mut xdp_quic::Conn<'_>) {
        self.request_more(conn);
    }

    fn stream_writable(&mut self, conn: &mut xdp_quic::Conn<'_>, s: xdp_quic::StreamId) {
        self.flush(conn, s);
    }

    fn stream_readable(&mut self, conn: &mut xdp_quic::Conn<'_>, s: xdp_quic::StreamId) {
        let Some(p) = self.streams.get_mut(&s) else {
            return;
        };
        let mut got = 0;
        let status = conn.read(s, |b| {
            got += b.len();
            p.body.extend_from_slice(&b)
        });
        let f = &mut self.facts[self.current];
        f.received += got;
        if let Some(every) = self.rounds[self.current].key_update_every {
            if f.received / every > f.key_updates_forced {
                conn.force_key_update();
                f.key_updates_forced += 1;
            }
        }
        match status {
            Ok(xdp_quic::ReadStatus::Blocked) => {}
            Ok(xdp_quic::ReadStatus::Finished) => {
                let p = self.streams.remove(&s).expect("present");
                self.done(conn, p.index, Ok(p.body.freeze()));
            }
            Err(e) => {
                let p = self.streams.remove(&s).expect("present");
                self.done(conn, p.index, Err(e.to_string()));
            }
        }
    }

    fn closed(
        &mut self,
        ctx: &mut xdp_quic::Ctx<'_>,
        _conn: xdp_quic::ConnId,
        reason: &xdp_quic::ConnectionError,
    ) {
        let responses = &mut self.responses[self.current];
        if !responses.iter().all(Option::is_some) {
            self.facts[self.current].error = Some(reason.to_string());
            for r in responses.iter_mut().filter(|r| r.is_none()) {
                *r = Some(Err(reason.to_string()));
            }
        }
        self.next_round(ctx);
    }
}

/// Runs a [`RoundsClient`] on a one-worker client engine built from `builder` and returns
/// it with the engine's counters.
pub fn run_rounds(
    builder: EngineBuilder,
    remote: SocketAddr,
    rounds: Vec<Round>,
) -> (RoundsClient, xdp_quic::Counters) {
    let engine = builder
        .workers(1)
        .start_udp_client(
            xdp_quic_examples::client::any_local_for(remote),
            move |_| RoundsClient::new(remote, rounds.clone()),
        )
        .expect("client engine");
    let handle = engine.handle();
    handle
        .post(0, |h, ctx| h.start(ctx))
        .expect("the worker is running");
    let mut hs = engine.join().expect("client worker ended cleanly");
    (hs.pop().expect("one worker"), handle.total())
}

/// Whether aioquic is installed (python3 -c "import aioquic"); with CI set, its absence fails
/// the test instead of skipping it.
pub fn aioquic() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import aioquic"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "aioquic is missing and CI is set (scripts/setup.sh installs it)"
        );
        eprintln!("skipped: python3 -m pip install aioquic");
    }
    ok
}

/// `program`, to run inside network namespace `netns` if given (`ip netns exec`).
pub fn command_in(netns: Option<&str>, program: &str) -> std::process::Command {
    match netns {
        Some(ns) => {
            let mut c = std::process::Command::new("ip");
            c.args(["netns", "exec", ns, program]);
            c
        }
        None => std::process::Command::new(program),
    }
}
