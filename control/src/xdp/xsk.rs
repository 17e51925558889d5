//! Registering AF_XDP sockets in the pinned `xsks` map: the daemon side of a persistent
//! attachment.

use std::os::fd::AsRawFd;
use std::path::PathBuf;

use anyhow::Context as _;
use std::os::unix::fs::MetadataExt as _;

use aya::maps::{Array, Map, MapData, XskMap};
use xdp_quic_ebpf::XskOwner;

use super::{pins, XdpError};

/// The pinned XSKMAP of an interface attached with `xdp-quic attach`.
///
/// A socket set at queue `q` receives the service packets that arrive on rx queue `q`.
/// The kernel removes a socket from the map when it is closed.
pub struct XskRegistry {
    map: XskMap<MapData>,
    owners: Array<MapData, XskOwner>,
    path: PathBuf,
    /// The queues this registry set, with the inode of the socket it set there: what
    /// [`XskRegistry::unregister`] may take out again.
    mine: std::collections::HashMap<u32, u64>,
}

impl std::fmt::Debug for XskRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskRegistry")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl XskRegistry {
    /// Opens `/sys/fs/bpf/xdp-quic/<iface>/xsks`. Fails with
    /// [`XdpError::NotAttached`] when xdp-quic is not attached to `iface`.
    pub fn open(iface: &str) -> anyhow::Result<Self> {
        let path = pins::dir(iface).join(xdp_quic_ebpf::maps::XSKS);
        if !path.exists() {
            return Err(XdpError::NotAttached {
                iface: iface.into(),
                path: pins::dir(iface),
            }
            .into());
        }
        let data =
            MapData::from_pin(&path).with_context(|| format!("opening {}", path.display()))?;
        let map = XskMap::try_from(Map::from_map_data(data)?)?;
        let opath = pins::dir(iface).join(xdp_quic_ebpf::maps::XSK_OWNERS);
        let odata =
            MapData::from_pin(&opath).with_context(|| format!("opening {}", opath.display()))?;
        let owners = Array::try_from(Map::from_map_data(odata)?)?;
        Ok(Self {
            map,
            owners,
            path,
            mine: Default::default(),
        })
    }

    /// Wraps maps already at hand (e.g. [`super::EmbeddedAttachment::xsks`]).
    pub fn from_maps(map: XskMap<MapData>, owners: Array<MapData, XskOwner>) -> Self {
        Self {
            map,
            owners,
            path: PathBuf::new(),
            mine: Default::default(),
        }
    }

    /// Number of queues the map can hold.
    pub fn capacity(&self) -> u32 {
        self.map.len()
    }

    /// Steers the service packets of rx queue `queue` to `socket` (an AF_XDP socket
    /// bound to that queue of the interface). Replaces any socket there (a server started
    /// to take over from a running one, say; a live one of another process is warned about).
    /// Also records this process and the socket's inode in `xsk_owners`, for status.
    pub fn register(&mut self, queue: u32, socket: &impl AsRawFd) -> anyhow::Result<()> {
        let fd = socket.as_raw_fd();
        // /proc/self/fd/N names the socket without taking ownership of the fd.
        let ino = std::fs::metadata(format!("/proc/self/fd/{fd}"))
            .map(|m| m.ino())
            .unwrap_or(0);
        if let Ok(o) = self.owners.get(&queue, 0) {
            if o.pid != std::process::id() && super::maps::owner_alive(&o) {
                tracing::warn!(
                    queue,
                    pid = o.pid,
                    "queue {queue} was steered to a socket of process {}, still running: it \
                     now goes to this one",
                    o.pid
                );
            }
        }
        self.map.set(queue, fd, 0).with_context(|| {
            format!(
                "registering an AF_XDP socket for queue {queue} in {}",
                self.path.display()
            )
        })?;
        let owner = XskOwner {
            pid: std::process::id(),
            pidns: super::maps::own_pidns(),
            sock_ino: ino,
        };
        self.owners
            .set(queue, owner, 0)
            .context("recording the socket's owner")?;
        self.mine.insert(queue, ino);
        Ok(())
    }

    /// Stops steering rx queue `queue` to the socket this registry set there: its service
    /// packets go to the kernel again. A queue another socket has taken since (another
    /// server's, which registered after this one) is left to it: `Ok`, nothing changed.
    /// (The map has no compare-and-delete: a registration racing this call between its look
    /// at the owner and its removal can still be undone.)
    pub fn unregister(&mut self, queue: u32) -> anyhow::Result<()> {
        let Some(ino) = self.mine.remove(&queue) else {
            return Ok(());
        };
        let owner = self
            .owners
            .get(&queue, 0)
            .context("reading the queue's owner")?;
        if owner.pid != std::process::id() || owner.sock_ino != ino {
            tracing::debug!(
                queue,
                pid = owner.pid,
                "queue taken over since: left as it is"
            );
            return Ok(());
        }
        self.map
            .unset(queue)
            .with_context(|| format!("unregistering queue {queue} in {}", self.path.display()))?;
        self.owners
            .set(queue, XskOwner::default(), 0)
            .context("clearing the socket's owner")?;
        Ok(())
    }
}
