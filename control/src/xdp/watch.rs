//! Watching the XDP program a server depends on.
//!
//! AF_XDP sockets receive only what the steering program redirects to them. If somebody
//! detaches it (`xdp-quic detach`, `bpftool link detach`, another tool replacing it) or the
//! interface disappears, the server's workers go deaf without any error of their own: the
//! kernel simply delivers the service's packets to its own stack again. [`ProgramWatch`]
//! notices, from the interface's netlink state, so the server can say so and act (the CLI
//! stops, or falls back to kernel UDP in `--backend auto`). An interface that goes down and
//! up again keeps its program and its sockets; the watch reports both edges.

use std::io;

use super::netlink;

/// What changed since the last [`ProgramWatch::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// Our program is no longer attached; `now` is the program attached instead, if any.
    Detached { now: Option<u32> },
    /// The interface no longer exists in this network namespace.
    InterfaceGone,
    /// The interface went administratively down.
    Down,
    /// The interface came back up.
    Up,
}

/// Compares an interface's XDP program with the one a server registered its sockets with.
#[derive(Debug)]
pub struct ProgramWatch {
    ifindex: u32,
    prog_id: u32,
    up: bool,
    lost: bool,
}

impl ProgramWatch {
    /// Watches program `prog_id` on interface `ifindex` of the calling thread's namespace.
    /// Call [`ProgramWatch::check`] from a thread in the same namespace.
    pub fn new(ifindex: u32, prog_id: u32) -> io::Result<Self> {
        let up = netlink::link_by_index(ifindex)?.is_some_and(|l| l.up);
        Ok(Self {
            ifindex,
            prog_id,
            up,
            lost: false,
        })
    }

    /// One look at the interface (a netlink round trip): the events since the last look,
    /// at most two (a down or up edge, then the loss of the program, reported once).
    pub fn check(&mut self) -> io::Result<Vec<WatchEvent>> {
        let mut events = Vec::new();
        let Some(link) = netlink::link_by_index(self.ifindex)? else {
            if !self.lost {
                self.lost = true;
                events.push(WatchEvent::InterfaceGone);
            }
            return Ok(events);
        };
        if link.up != self.up {
            self.up = link.up;
            events.push(if link.up {
                WatchEvent::Up
            } else {
                WatchEvent::Down
            });
        }
        if !self.lost && link.xdp_prog_id != self.prog_id {
            self.lost = true;
            events.push(WatchEvent::Detached {
                now: (link.xdp_prog_id != 0).then_some(link.xdp_prog_id),
            });
        }
        Ok(events)
    }
}

impl std::fmt::Display for WatchEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WatchEvent::Detached { now: None } => write!(f, "the XDP program was detached"),
            WatchEvent::Detached { now: Some(id) } => {
                write!(f, "the XDP program was replaced by program {id}")
            }
            WatchEvent::InterfaceGone => write!(f, "the interface disappeared"),
            WatchEvent::Down => write!(f, "the interface went down"),
            WatchEvent::Up => write!(f, "the interface is up again"),
        }
    }
}
