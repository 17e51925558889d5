//! # xdp-quic: a sharded QUIC datapath for Linux
//!
//! N worker threads, each with its own `quinn_proto::Endpoint` shard, its own I/O port and its
//! own application handler: connections scale with cores, with no lock on a connection's packets and no
//! connection ever handled by the wrong shard (connection IDs name their worker, see
//! [`cid`] and [`route`]).
//!
//! The worker engine is sans-IO ([`Worker::turn`]) and generic over a small [`Backend`] trait:
//! kernel UDP with SO_REUSEPORT ([`backend::udp`]), an in-memory network with a virtual clock
//! for deterministic tests ([`backend::mem`], [`testing`]), and AF_XDP ([`backend::xsk`]).
//!
//! ```no_run
//! use xdp_quic::{tls, Conn, EngineBuilder, Handler, ReadStatus, StreamId};
//!
//! /// Echoes every bidirectional stream back to its sender.
//! struct Echo;
//! impl Handler for Echo {
//!     fn stream_readable(&mut self, conn: &mut Conn<'_>, s: StreamId) {
//!         let mut data = Vec::new();
//!         if let Ok(status) = conn.read(s, |chunk| data.extend_from_slice(&chunk)) {
//!             let _ = conn.write(s, &data); // a real app handles back-pressure
//!             if status == ReadStatus::Finished {
//!                 let _ = conn.finish(s);
//!             }
//!         }
//!     }
//! }
//!
//! let identity = tls::Identity::self_signed(&["localhost"]).unwrap();
//! let server = tls::server_config(identity, &[b"echo"]).unwrap();
//! let engine = EngineBuilder::default()
//!     .workers(4)
//!     .server(server)
//!     .start_udp("[::]:4433".parse().unwrap(), |_worker| Echo)
//!     .unwrap();
//! // ... later:
//! engine.shutdown(0u32.into(), b"bye").unwrap();
//! ```

pub mod accept;
pub mod backend;
pub mod cid;
pub mod congestion;
pub mod conn;
mod cpu;
pub mod engine;
mod guard;
pub mod handler;
pub mod memory;
pub mod metrics;
pub mod packet;
mod peers;
pub mod procfs;
pub mod reply;
pub mod route;
mod shard;
#[cfg(feature = "testing")]
pub mod testing;
pub mod timer;
pub mod tls;
#[cfg(feature = "tokio")]
pub mod tokio;
pub mod waker;
pub mod worker;
pub mod xsk;

pub use accept::{AttemptId, Decision, Incoming};
pub use backend::Backend;
pub use conn::{detach, Chunk, Conn, ConnId, ConnectError, Ctx, ReadStatus, StreamError};
pub use engine::{
    default_transport, Engine, EngineBuilder, EngineError, EngineHandle, PostError, RetryPolicy,
    SocketMap, XdpSetup,
};
pub use guard::INTERNAL_ERROR;
pub use handler::Handler;
pub use metrics::Counters;
pub use quinn_proto::{ConnectionError, Dir, Side, StreamId, TransportConfig, VarInt};
pub use reply::{Gone, Reply};
pub use worker::{TurnOutcome, Worker};
