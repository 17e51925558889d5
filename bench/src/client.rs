//! The one client of every run: quinn 0.11 over kernel UDP, AES-128-GCM only, trusting the
//! benchmark's ECDSA P-256 certificate. Each workload checks what arrived: every response
//! has the size asked for and is all zeros, as the perf protocol sends.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context};
use rustls::pki_types::CertificateDer;

/// What a workload measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Outcome {
    pub elapsed_s: f64,
    /// Octets moved (download or upload).
    pub bytes: u64,
    pub requests: u64,
    pub handshakes: u64,
    /// Request latencies in seconds (request workloads only).
    #[serde(skip)]
    pub latencies: Vec<f64>,
}

/// A client for one server address.
#[derive(Clone)]
pub struct Client {
    config: quinn::ClientConfig,
    addr: SocketAddr,
}

impl Client {
    /// Trusts `cert`, offers only TLS_AES_128_GCM_SHA256, ALPN `perf`.
    pub fn new(cert: CertificateDer<'static>, addr: SocketAddr) -> anyhow::Result<Self> {
        let mut provider = rustls::crypto::ring::default_provider();
        provider
            .cipher_suites
            .retain(|s| s.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert)?;
        let mut tls = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![xdp_quic_examples::perf::ALPN.to_vec()];
        let config = quinn::ClientConfig::new(Arc::new(
            quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
        ));
        Ok(Self { config, addr })
    }

    fn endpoint(&self) -> anyhow::Result<quinn::Endpoint> {
        let mut ep = quinn::Endpoint::client("0.0.0.0:0".parse()?)?;
        ep.set_default_client_config(self.config.clone());
        Ok(ep)
    }

    async fn connect(&self, ep: &quinn::Endpoint) -> anyhow::Result<quinn::Connection> {
        Ok(ep.connect(self.addr, "localhost")?.await?)
    }

    /// `conns` connections (one socket each), each downloading `total / conns` octets.
    pub async fn bulk_download(&self, conns: usize, total: u64) -> anyhow::Result<Outcome> {
        let mut cs = Vec::new();
        for _ in 0..conns {
            let ep = self.endpoint()?;
            let c = self.connect(&ep).await?;
            cs.push((ep, c));
        }
        let each = total / conns as u64;
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (_, c) in &cs {
            let c = c.clone();
            tasks.spawn(async move { request(&c, 0, each).await });
        }
        let mut bytes = 0;
        while let Some(r) = tasks.join_next().await {
            bytes += r??;
        }
        let elapsed_s = start.elapsed().as_secs_f64();
        close_all(cs).await;
        Ok(Outcome {
            elapsed_s,
            bytes,
            requests: conns as u64,
            ..Default::default()
        })
    }

    /// One connection uploading `total` octets.
    pub async fn bulk_upload(&self, total: u64) -> anyhow::Result<Outcome> {
        let ep = self.endpoint()?;
        let c = self.connect(&ep).await?;
        let start = Instant::now();
        request(&c, total, 0).await?;
        let elapsed_s = start.elapsed().as_secs_f64();
        close_all(vec![(ep, c)]).await;
        Ok(Outcome {
            elapsed_s,
            bytes: total,
            requests: 1,
            ..Default::default()
        })
    }

    /// `n` requests for `size` octets, `streams` in flight on each of `conns` connections.
    pub async fn requests(
        &self,
        conns: usize,
        streams: usize,
        n: u64,
        size: u64,
    ) -> anyhow::Result<Outcome> {
        let mut cs = Vec::new();
        for _ in 0..conns {
            let ep = self.endpoint()?;
            let c = self.connect(&ep).await?;
            cs.push((ep, c));
        }
        let left = Arc::new(AtomicU64::new(n));
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for (_, c) in &cs {
            for _ in 0..streams {
                let (c, left) = (c.clone(), left.clone());
                tasks.spawn(async move {
                    let mut lat = Vec::new();
                    while left
                        .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| v.checked_sub(1))
                        .is_ok()
                    {
                        let t = Instant::now();
                        request(&c, 0, size).await?;
                        lat.push(t.elapsed().as_secs_f64());
                    }
                    anyhow::Ok(lat)
                });
            }
        }
        let mut latencies = Vec::with_capacity(n as usize);
        while let Some(r) = tasks.join_next().await {
            latencies.extend(r??);
        }
        let elapsed_s = start.elapsed().as_secs_f64();
        close_all(cs).await;
        Ok(Outcome {
            elapsed_s,
            bytes: n * size,
            requests: latencies.len() as u64,
            latencies,
            ..Default::default()
        })
    }

    /// A new connection per request: `n` handshakes, each followed by a 1-octet request.
    pub async fn handshakes(&self, n: u64) -> anyhow::Result<Outcome> {
        let ep = self.endpoint()?;
        let start = Instant::now();
        let mut latencies = Vec::new();
        for _ in 0..n {
            let t = Instant::now();
            let c = self.connect(&ep).await?;
            request(&c, 0, 1).await?;
            c.close(0u32.into(), b"");
            latencies.push(t.elapsed().as_secs_f64());
        }
        let elapsed_s = start.elapsed().as_secs_f64();
        ep.wait_idle().await;
        Ok(Outcome {
            elapsed_s,
            requests: n,
            handshakes: n,
            latencies,
            ..Default::default()
        })
    }
}

async fn close_all(cs: Vec<(quinn::Endpoint, quinn::Connection)>) {
    for (ep, c) in cs {
        c.close(0u32.into(), b"");
        ep.wait_idle().await;
    }
}

/// One perf request: asks for `download` octets after uploading `upload`; returns the octets
/// received after checking they are as many as asked and all zero.
async fn request(c: &quinn::Connection, upload: u64, download: u64) -> anyhow::Result<u64> {
    static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];
    let (mut send, mut recv) = c.open_bi().await?;
    send.write_all(&download.to_be_bytes()).await?;
    let mut left = upload;
    while left > 0 {
        let n = left.min(ZEROS.len() as u64) as usize;
        send.write_all(&ZEROS[..n]).await?;
        left -= n as u64;
    }
    send.finish()?;
    let mut got = 0u64;
    while let Some(chunk) = recv
        .read_chunk(usize::MAX, true)
        .await
        .context("reading the response")?
    {
        if chunk.bytes.iter().any(|&b| b != 0) {
            bail!("response corrupted: non-zero octet");
        }
        got += chunk.bytes.len() as u64;
    }
    if got != download {
        bail!("asked for {download} octets, got {got}");
    }
    Ok(got)
}
