//! `xdp-quic demo`: a perf server and a perf client in one process, over the UDP backend on
//! loopback: a bulk phase (default 1 GB) and a request phase (default 10,000 requests), with
//! throughput, requests/s, latency percentiles and the server workers' counters.

use std::time::Duration;

use anyhow::{bail, Context};
use xdp_quic::{tls, EngineBuilder, VarInt};
use xdp_quic_examples::perf::PerfServer;

use super::args::{self, App};
use super::client::{perf, report_json, PerfArgs};
use super::serve::{summary, transport};

/// Arguments of `xdp-quic demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Octets the bulk phase downloads in all (at least; rounded up to equal requests).
    #[arg(long, default_value = "1G", value_parser = args::parse_size)]
    pub bytes: u64,
    /// Requests of the request phase (1 KB each).
    #[arg(long, default_value_t = 10_000)]
    pub requests: u64,
    /// Server workers.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Client connections.
    #[arg(long, default_value_t = 4)]
    pub connections: usize,
    /// Print the figures as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &DemoArgs) -> anyhow::Result<()> {
    if a.connections == 0 || a.workers == 0 || a.workers > 256 {
        bail!("--workers (1..=256) and --connections must be at least 1");
    }
    let identity = tls::Identity::self_signed(&["localhost"])?;
    let cert = identity.chain.clone();
    let server = EngineBuilder::default()
        .workers(a.workers)
        .server(tls::server_config(identity, &[App::Perf.alpn()])?)
        .transport(transport())
        .start_udp("127.0.0.1:0".parse()?, |_| PerfServer::default())
        .context("starting the perf server on loopback")?;
    let addr = server.local_addr();
    eprintln!(
        "xdp-quic demo: perf server on {addr} (UDP backend, {} workers, steering {:?}), client in the same process",
        a.workers,
        server.steering().expect("UDP backend")
    );

    let client = || -> anyhow::Result<EngineBuilder> {
        Ok(EngineBuilder::default()
            .client(tls::client_config(
                tls::Trust::Roots(cert.clone()),
                &[App::Perf.alpn()],
            )?)
            .transport(transport())
            .drain_timeout(Duration::from_secs(1)))
    };
    // Requests of at most 25 MB, equal in size, adding up to at least --bytes.
    let bytes = a.bytes.max(1);
    let requests = bytes.div_ceil(25_000_000);
    let per_request = bytes.div_ceil(requests);
    let bulk = PerfArgs {
        download: per_request,
        upload: 0,
        requests: Some(requests),
        duration: None,
        connections: a.connections,
        streams: 1,
    };
    eprintln!(
        "bulk: {} requests of {} octets over {} connections",
        bulk.requests.unwrap_or(0),
        per_request,
        a.connections
    );
    // One client worker (and source port) per connection, up to 4: distinct 4-tuples, which
    // the kernel spreads over the server's workers.
    let client_workers = a.connections.min(4);
    let bulk_report = perf(client()?, addr, "localhost", &bulk, client_workers)?;
    let rr = PerfArgs {
        download: 1000,
        upload: 0,
        requests: Some(a.requests),
        duration: None,
        connections: a.connections,
        streams: 16,
    };
    eprintln!(
        "requests: {} requests of 1 KB, 16 in flight on each of {} connections",
        a.requests, a.connections
    );
    let rr_report = perf(client()?, addr, "localhost", &rr, client_workers)?;

    let handle = server.handle();
    let handlers = server
        .shutdown(VarInt::from_u32(0), b"demo done")
        .context("stopping the server")?;
    let counters = handle.counters();
    let served: u64 = handlers.iter().map(|h| h.requests).sum();

    if a.json {
        let workers: Vec<_> = counters
            .iter()
            .map(|c| {
                c.fields()
                    .iter()
                    .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
                    .collect::<serde_json::Map<_, _>>()
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "backend": "udp",
                "bulk": report_json(&bulk_report),
                "requests": report_json(&rr_report),
                "server_requests": served,
                "server_workers": workers,
            })
        );
    } else {
        println!("== bulk download ==\n{bulk_report}\n");
        println!("== requests ==\n{rr_report}\n");
        println!("== server workers (UDP backend) ==");
        for (i, c) in counters.iter().enumerate() {
            println!("worker {i}: {}", summary(c));
        }
        println!("server answered {served} requests");
    }
    Ok(())
}
