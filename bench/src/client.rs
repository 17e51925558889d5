//! The client configuration every run shares (AES-128-GCM only, trusting the benchmark's
//! ECDSA P-256 certificate), and quinn's own client: the cross-check run of a few workloads
//! (quinn 0.11 on a current-thread tokio runtime, pinned like the main client). Each response
//! is checked: the size asked for, all zero octets as the perf protocol sends.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use rustls::pki_types::CertificateDer;

use crate::load::Outcome;

/// Trusts `cert`, offers only TLS_AES_128_GCM_SHA256, ALPN `perf`.
pub fn config(cert: CertificateDer<'static>) -> anyhow::Result<quinn::ClientConfig> {
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
    // Every connection makes a full handshake (certificate, signature): the handshake
    // workloads measure new clients, not resumed sessions (rustls resumes by default).
    tls.resumption = rustls::client::Resumption::disabled();
    Ok(quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)?,
    )))
}

/// The workloads the quinn client runs.
#[derive(Debug, Clone, Copy)]
pub enum QuinnJob {
    Download {
        conns: usize,
        total: u64,
    },
    Requests {
        conns: usize,
        streams: usize,
        total: u64,
        size: u64,
    },
}

/// Runs `job` with quinn's client on `cpu` over `sockets` (connections spread over them);
/// `probe` samples around the work (connections are up before it starts).
pub fn run(
    config: quinn::ClientConfig,
    sockets: &[UdpSocket],
    cpu: usize,
    remote: SocketAddr,
    job: QuinnJob,
    guard: Duration,
    probe: &mut (dyn crate::load::Probe + Send),
) -> anyhow::Result<Outcome> {
    let sockets = sockets
        .iter()
        .map(|s| {
            let s = s.try_clone()?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                crate::sys::pin_and_prioritize(cpu)?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async move {
                    tokio::time::timeout(guard, drive(config, sockets, remote, job, probe))
                        .await
                        .context("quinn client hang guard")?
                })
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the quinn client panicked"))?
    })
}

async fn drive(
    config: quinn::ClientConfig,
    sockets: Vec<UdpSocket>,
    remote: SocketAddr,
    job: QuinnJob,
    probe: &mut (dyn crate::load::Probe + Send),
) -> anyhow::Result<Outcome> {
    let mut eps = Vec::new();
    for s in sockets {
        let mut ep = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            s,
            Arc::new(quinn::TokioRuntime),
        )?;
        ep.set_default_client_config(config.clone());
        eps.push(ep);
    }
    let conns = match job {
        QuinnJob::Download { conns, .. } | QuinnJob::Requests { conns, .. } => conns,
    };
    let mut cs = Vec::new();
    for i in 0..conns {
        cs.push(eps[i % eps.len()].connect(remote, "localhost")?.await?);
    }
    probe.before()?;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let mut latencies = Vec::new();
    let (downloaded, completed) = match job {
        QuinnJob::Download { total, .. } => {
            let each = total / conns as u64;
            for c in &cs {
                let c = c.clone();
                tasks.spawn(async move { request(&c, each).await.map(|_| Vec::new()) });
            }
            while let Some(r) = tasks.join_next().await {
                r??;
            }
            (each * conns as u64, conns as u64)
        }
        QuinnJob::Requests {
            streams,
            total,
            size,
            ..
        } => {
            let left = Arc::new(AtomicU64::new(total));
            for c in &cs {
                for _ in 0..streams {
                    let (c, left) = (c.clone(), left.clone());
                    tasks.spawn(async move {
                        let mut lat = Vec::new();
                        while left
                            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                                v.checked_sub(1)
                            })
                            .is_ok()
                        {
                            let t = Instant::now();
                            request(&c, size).await?;
                            lat.push(t.elapsed().as_secs_f64());
                        }
                        anyhow::Ok(lat)
                    });
                }
            }
            while let Some(r) = tasks.join_next().await {
                latencies.extend(r??);
            }
            (total * size, total)
        }
    };
    let elapsed_s = start.elapsed().as_secs_f64();
    probe.after()?;
    for c in &cs {
        c.close(0u32.into(), b"");
    }
    for ep in eps {
        ep.wait_idle().await;
    }
    Ok(Outcome {
        elapsed_s,
        downloaded,
        uploaded: 0,
        completed,
        acknowledged: completed,
        latencies,
    })
}

/// One perf request for `download` octets; checks they are as many as asked and all zero.
async fn request(c: &quinn::Connection, download: u64) -> anyhow::Result<u64> {
    let (mut send, mut recv) = c.open_bi().await?;
    send.write_all(&download.to_be_bytes()).await?;
    send.finish()?;
    let mut got = 0u64;
    while let Some(chunk) = recv
        .read_chunk(usize::MAX, true)
        .await
        .context("reading the response")?
    {
        if !chunk
            .bytes
            .chunks(512)
            .all(|c| c.iter().fold(0u8, |a, &x| a | x) == 0)
        {
            bail!("response corrupted: non-zero octet");
        }
        got += chunk.bytes.len() as u64;
    }
    if got != download {
        bail!("asked for {download} octets, got {got}");
    }
    Ok(got)
}
