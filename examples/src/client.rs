//! Running a client application on an engine of its own, over kernel UDP.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use xdp_quic::{Ctx, Engine, EngineBuilder, EngineError, Handler};

/// Starts `builder`'s workers on UDP sockets bound to `bind` (one socket per worker; port 0:
/// an ephemeral port each), runs
/// `start` on every worker, and waits until every worker has stopped by itself.
/// Returns the handlers and the wall time from start to the last worker's stop.
pub fn run<H, F, S>(
    builder: EngineBuilder,
    bind: SocketAddr,
    factory: F,
    start: S,
) -> Result<(Vec<H>, Duration), EngineError>
where
    H: Handler,
    F: FnMut(usize) -> H,
    S: Fn(&mut H, &mut Ctx<'_>) + Clone + Send + 'static,
{
    run_on(builder.start_udp_client(bind, factory)?, start)
}

/// Runs `start` on every worker of a started client `engine` (over any backend: AF_XDP too)
/// and waits until every worker has stopped by itself. Returns the handlers and the wall
/// time from start to the last worker's stop.
pub fn run_on<H, S>(engine: Engine<H>, start: S) -> Result<(Vec<H>, Duration), EngineError>
where
    H: Handler,
    S: Fn(&mut H, &mut Ctx<'_>) + Clone + Send + 'static,
{
    let began = Instant::now();
    let handle = engine.handle();
    for w in 0..handle.workers() {
        let start = start.clone();
        handle
            .post(w, move |h, ctx| start(h, ctx))
            .expect("the worker is running");
    }
    let handlers = engine.join()?;
    Ok((handlers, began.elapsed()))
}

/// The unspecified address of `remote`'s family, port 0: where a client binds.
pub fn any_local_for(remote: SocketAddr) -> SocketAddr {
    match remote {
        SocketAddr::V4(_) => "0.0.0.0:0".parse().expect("literal"),
        SocketAddr::V6(_) => "[::]:0".parse().expect("literal"),
    }
}

/// Runs `start` on worker 0 of a started client `engine` only, waits until that worker has
/// stopped by itself, then stops the others and returns every handler (worker 0's first) and
/// the wall time. For a client over AF_XDP: its connections live on worker 0, while every
/// queue's worker receives and hands their packets over.
pub fn run_on_first<H, S>(
    mut engine: Engine<H>,
    start: S,
) -> Result<(Vec<H>, Duration), EngineError>
where
    H: Handler,
    S: FnOnce(&mut H, &mut Ctx<'_>) + Send + 'static,
{
    let began = Instant::now();
    engine
        .handle()
        .post(0, start)
        .expect("the worker is running");
    engine.wait_worker(0);
    let elapsed = began.elapsed();
    let handlers = engine.shutdown(xdp_quic::VarInt::from_u32(0), b"done")?;
    Ok((handlers, elapsed))
}
