//! `xdp-quic serve --app h3` and `xdp-quic client --app h3`: HTTP/3 static files on the async
//! API ([`xdp_quic_examples::h3_files`]), over kernel UDP or AF_XDP.
//!
//! The HTTP/3 server runs on the async API rather than under the control library's
//! supervisor: it takes the options of the engine (workers, CPUs, Retry, connection limit,
//! AF_XDP set-up) but not `--backend auto`, `--metrics`, `--stats-every` or `--xdp-shield`
//! (refused with an error). SIGTERM or Ctrl-C sends GOAWAY on every connection, lets the
//! requests in flight finish for up to 10 s, then closes what is left. Over AF_XDP it looks
//! at its interface every second, as `serve` does for the other apps: if the program its
//! sockets are registered with goes (detached, replaced, the interface gone), it says so,
//! closes its connections and exits with an error; a shield a killed server left on the
//! attachment is turned off at the start (on a shield of `xdp-quic attach --shield`, which
//! stays, the killed server's CID layout and pressure flags are cleared).

use std::net::{SocketAddr, ToSocketAddrs};
use std::time::Duration;

use anyhow::{bail, Context};
use xdp_quic::tokio::{Builder, Endpoint};
use xdp_quic::{tls, EngineBuilder, VarInt};
use xdp_quic_control::xdp::socket_map::ServerSteering;
use xdp_quic_control::xdp::{LeftByServer, ProgramWatch, WatchEvent};
use xdp_quic_examples::h3_files::{self, H3Server, HqLimits};

use super::args::BackendArg;
use super::client::ClientArgs;
use super::serve::ServeArgs;

/// How long requests in flight may take to finish after GOAWAY.
const GRACE: Duration = Duration::from_secs(10);

/// `serve --app h3`.
pub fn serve(a: &ServeArgs, b: EngineBuilder) -> anyhow::Result<()> {
    let root = a
        .root
        .as_ref()
        .context("--app h3 needs --root DIR, the directory to serve")?;
    for (set, flag) in [
        (a.metrics.is_some(), "--metrics"),
        (a.stats_every.is_some(), "--stats-every"),
        (a.xdp_shield, "--xdp-shield"),
        (a.backend == BackendArg::Auto, "--backend auto"),
    ] {
        if set {
            bail!("{flag} is not available with --app h3 yet (it serves on the async API)");
        }
    }
    let server = H3Server::new(root, HqLimits::default())
        .with_context(|| format!("--root {}", root.display()))?;
    let rt = tokio::runtime::Runtime::new()?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    ctrlc::set_handler(move || {
        let _ = stop_tx.send(true);
    })
    .context("installing the Ctrl-C handler")?;
    rt.block_on(async move {
        let (ep, how, mut watch) = bind(a, b)?;
        tokio::spawn(server.serve(ep.clone(), stop_rx.clone()));
        note!("serving H3 on {} {how}; Ctrl-C stops", ep.local_addr()?);
        let mut stop = stop_rx;
        let mut every = tokio::time::interval(Duration::from_secs(1));
        while !*stop.borrow() {
            tokio::select! {
                changed = stop.changed() => {
                    if changed.is_err() {
                        break;
                    }
                }
                _ = every.tick(), if watch.is_some() => {
                    let (iface, w) = watch.as_mut().expect("checked");
                    if let Some(lost) = program_lost(iface, w) {
                        note!("{lost}: the AF_XDP workers receive nothing any more; closing");
                        ep.close(VarInt::from_u32(0x100), b"shutting down");
                        ep.wait_idle().await;
                        bail!("{iface}: stopped serving: the XDP program is gone");
                    }
                }
            }
        }
        note!("shutting down: GOAWAY sent, finishing the requests in flight");
        if tokio::time::timeout(GRACE, ep.wait_idle()).await.is_err() {
            note!("requests still in flight after {GRACE:?}: closing");
        }
        ep.close(VarInt::from_u32(0x100), b"shutting down");
        ep.wait_idle().await;
        drop(ep);
        anyhow::Ok(())
    })
}

/// The interface an AF_XDP endpoint serves on, and what watches its program.
type Watched = (String, ProgramWatch);

/// One look at the interface (see [`ProgramWatch`]): the loss of the program, said for the
/// operator, if it is gone; a link going down or up is only reported.
fn program_lost(iface: &str, w: &mut ProgramWatch) -> Option<String> {
    let events = match w.check() {
        Ok(events) => events,
        Err(e) => {
            note!("{iface}: cannot read the interface's state: {e}");
            return None;
        }
    };
    let mut lost = None;
    for e in events {
        match e {
            WatchEvent::Down | WatchEvent::Up => note!("{iface}: {e}"),
            WatchEvent::Detached { .. } | WatchEvent::InterfaceGone => {
                lost = Some(format!("{iface}: {e}"))
            }
        }
    }
    lost
}

/// Binds the endpoint of `serve --app h3`; over AF_XDP uses the program `xdp-quic attach`
/// pinned for the interface, or attaches it for the port for the endpoint's life, as the
/// other apps do ([`ServerSteering::for_server`]), and returns what watches that program.
fn bind(a: &ServeArgs, b: EngineBuilder) -> anyhow::Result<(Endpoint, String, Option<Watched>)> {
    match a.backend {
        BackendArg::Udp => {
            let ep = Builder::new(b).bind_udp(a.listen)?;
            Ok((ep, format!("with {} UDP worker(s)", a.workers), None))
        }
        BackendArg::Xdp | BackendArg::Auto => {
            let setup = super::serve::xdp_setup(a)?;
            let layout = b.cid_layout(setup.queues.len())?;
            let builder = Builder::new(b);
            let steering = ServerSteering::for_server(&setup.iface, a.listen, a.xdp_mode.into())
                .with_context(|| format!("steering {} to AF_XDP", setup.iface))?;
            let origin = steering.describe();
            let shield = steering.shield_maps(&setup.iface).ok();
            let ifindex = xdp_quic::engine::ifindex(&setup.iface)
                .with_context(|| format!("looking up {}", setup.iface))?;
            let watch = ProgramWatch::new(ifindex, steering.prog_id())
                .with_context(|| format!("reading the state of {}", setup.iface))?;
            let ep = builder
                .bind_xdp(&setup, Box::new(steering))
                .with_context(|| format!("starting AF_XDP workers on {}", setup.iface))?;
            // Serving without engaging the shield: what a killed server left goes, as `serve`
            // does: the shield it turned on, or, on an operator's shield, its CID layout
            // (which could name fewer workers than this server has) and pressure flags.
            if let Some(mut maps) = shield {
                // Refused (the endpoint drops, its sockets go) under a live server's shield
                // whose CID layout would drop this one's short headers.
                maps.check_plain_server_fits(&layout, &setup.queues)
                    .with_context(|| format!("serving on {}", setup.iface))?;
                match maps.clear_left_by_server(&setup.queues) {
                    Ok(LeftByServer::Shield) => note!(
                        "{}: turned off the flood shield a server that did not stop cleanly \
                         had left on",
                        setup.iface
                    ),
                    Ok(LeftByServer::Layout) => note!(
                        "{}: cleared the CID layout and pressure flags a server that did not \
                         stop cleanly had left (the flood shield's rules stay as `xdp-quic \
                         attach` set them)",
                        setup.iface
                    ),
                    Ok(LeftByServer::Nothing) => {}
                    Err(e) => note!("{}: cannot read the XDP shield: {e:#}", setup.iface),
                }
            }
            let how = format!(
                "with {} AF_XDP worker(s) on {} queues {:?} ({origin})",
                setup.queues.len(),
                setup.iface,
                setup.queues
            );
            Ok((ep, how, Some((setup.iface.clone(), watch))))
        }
    }
}

/// `client --app h3 --url URL...`: fetches each URL (one connection to their common
/// authority), prints status and size, saves bodies into `--out`.
pub fn client(a: &ClientArgs) -> anyhow::Result<()> {
    if a.urls.is_empty() {
        bail!("--app h3 needs --url https://HOST[:PORT]/PATH (one or more)");
    }
    let mut authority = None;
    let mut paths = Vec::new();
    for url in &a.urls {
        let uri: http::Uri = url.parse().with_context(|| format!("--url {url}"))?;
        if uri.scheme_str() != Some("https") {
            bail!("--url {url}: HTTP/3 URLs are https://");
        }
        let auth = uri
            .authority()
            .with_context(|| format!("--url {url}: no host"))?
            .clone();
        match &authority {
            None => authority = Some(auth),
            Some(first) if *first != auth => {
                bail!("--url {url}: every URL must name the same host and port ({first})")
            }
            Some(_) => {}
        }
        paths.push(
            uri.path_and_query()
                .map_or("/".to_string(), |p| p.as_str().to_string()),
        );
    }
    let authority = authority.expect("one URL at least");
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let port = authority.port_u16().unwrap_or(443);
    let remote: SocketAddr = match a.connect {
        Some(addr) => addr,
        None => (host, port)
            .to_socket_addrs()
            .with_context(|| format!("resolving {host}"))?
            .next()
            .with_context(|| format!("{host} has no address"))?,
    };
    let server_name = a.server_name.clone().unwrap_or_else(|| host.to_string());
    if a.backend != super::client::ClientBackend::Udp {
        bail!("--app h3 runs its client over kernel UDP (--backend udp)");
    }
    let files = match &a.out {
        Some(dir) => {
            let names: Vec<String> = paths
                .iter()
                .map(|path| {
                    path.split('?')
                        .next()
                        .unwrap_or("")
                        .rsplit('/')
                        .next()
                        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
                        .unwrap_or("index.html")
                        .to_string()
                })
                .collect();
            Some(super::client::out_files(dir, &names)?)
        }
        None => None,
    };
    let trust = super::args::client_trust(a.ca.as_ref(), a.insecure)?;
    let engine = EngineBuilder::default()
        .workers(1)
        .client(tls::client_config(trust, &[h3_files::ALPN])?)
        .transport(super::serve::transport());
    let rt = tokio::runtime::Runtime::new()?;
    let json = a.json;
    rt.block_on(async move {
        let ep = Builder::new(engine).bind_udp(xdp_quic_examples::client::any_local_for(remote))?;
        let conn = ep
            .connect(remote, &server_name)?
            .await
            .with_context(|| format!("connecting to {remote}"))?;
        let authority = authority.to_string();
        // The bodies are fetched at once and held until written: 1 GiB for all of them, so
        // that a server cannot make this client hold a GiB per path.
        let per_body = FETCH_BUDGET / paths.len().max(1);
        let fetched = h3_files::fetch(conn.clone(), &authority, &paths, per_body).await?;
        conn.close(VarInt::from_u32(0x100), b"");
        let mut failed = 0;
        for (i, (path, f)) in paths.iter().zip(&fetched).enumerate() {
            if !f.status.is_success() {
                failed += 1;
            }
            if json {
                println!(
                    "{{\"path\":{path:?},\"status\":{},\"bytes\":{}}}",
                    f.status.as_u16(),
                    f.body.len()
                );
            } else {
                println!("{path}: {} {} octets", f.status, f.body.len());
            }
            if let (Some(dest), true) =
                (files.as_ref().and_then(|f| f.get(i)), f.status.is_success())
            {
                super::client::write_new(dest, &f.body)?;
            }
        }
        ep.wait_idle().await;
        if failed > 0 {
            bail!("{failed} of {} request(s) did not succeed", paths.len());
        }
        anyhow::Ok(())
    })
}

/// What `client --app h3` holds of response bodies at most, all paths together.
const FETCH_BUDGET: usize = 1 << 30;
