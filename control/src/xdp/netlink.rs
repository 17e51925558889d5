//! Minimal rtnetlink: read an interface's index, rx queue count and XDP state
//! (`RTM_GETLINK`, one interface or all of them), and set or remove an XDP program attached through netlink
//! (`RTM_SETLINK`).
//! All `unsafe` for netlink sockets is here.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_ROUTE: i32 = 0;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
/// `NLM_F_ROOT | NLM_F_MATCH`.
const NLM_F_DUMP: u16 = 0x300;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_SETLINK: u16 = 19;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const IFLA_IFNAME: u16 = 3;
const IFLA_NUM_RX_QUEUES: u16 = 32;
const IFLA_XDP: u16 = 43;
const IFLA_XDP_FD: u16 = 1;
const IFLA_XDP_ATTACHED: u16 = 2;
const IFLA_XDP_FLAGS: u16 = 3;
const IFLA_XDP_PROG_ID: u16 = 4;
/// `XDP_FLAGS_SKB_MODE`.
pub const XDP_FLAGS_SKB_MODE: u32 = 1 << 1;
/// `XDP_FLAGS_DRV_MODE`.
pub const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
/// `XDP_FLAGS_HW_MODE`.
pub const XDP_FLAGS_HW_MODE: u32 = 1 << 3;

/// How an XDP program is attached to an interface (`IFLA_XDP_ATTACHED`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpAttached {
    /// No XDP program.
    None,
    /// Native (driver) XDP.
    Driver,
    /// Generic (skb) XDP.
    Skb,
    /// Offloaded to the NIC.
    Hardware,
    /// Several programs in different modes.
    Multi,
}

impl XdpAttached {
    /// Lower-case name.
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Driver => "native",
            Self::Skb => "skb",
            Self::Hardware => "hw",
            Self::Multi => "multi",
        }
    }

    /// The `XDP_FLAGS_*_MODE` that detaches a program of this kind through netlink.
    pub fn flags(self) -> u32 {
        match self {
            Self::Skb => XDP_FLAGS_SKB_MODE,
            Self::Driver => XDP_FLAGS_DRV_MODE,
            Self::Hardware => XDP_FLAGS_HW_MODE,
            Self::None | Self::Multi => 0,
        }
    }
}

/// What `RTM_GETLINK` says about an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    /// Interface index.
    pub ifindex: u32,
    /// Interface name.
    pub name: String,
    /// Number of rx queues.
    pub rx_queues: u32,
    /// XDP attachment kind.
    pub xdp: XdpAttached,
    /// Id of the attached XDP program, 0 if none (or several).
    pub xdp_prog_id: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
}

struct Socket(OwnedFd);

impl Socket {
    fn open(protocol: i32) -> io::Result<Self> {
        // SAFETY: plain socket(2) call; the result is checked before use.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                protocol,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor that nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: a zeroed sockaddr_nl is a valid "to the kernel" address.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: `msg` and `addr` are valid for the lengths passed.
        let rc = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn recv(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    /// Sends one (non-dump) request and calls `each(type, payload)` for every answer
    /// in the reply. A netlink error becomes an `io::Error`.
    fn transact(&self, req: &[u8], mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
        self.send(req)?;
        let mut buf = vec![0u8; 64 * 1024];
        let n = self.recv(&mut buf)?;
        parse_batch(&buf[..n], &mut each).map(|_| ())
    }

    /// Sends a dump request (`NLM_F_DUMP`) and calls `each(type, payload)` for every
    /// message of the reply, over as many datagrams as it takes, until `NLMSG_DONE`.
    fn dump(&self, req: &[u8], mut each: impl FnMut(u16, &[u8])) -> io::Result<()> {
        self.send(req)?;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = self.recv(&mut buf)?;
            if n == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            if parse_batch(&buf[..n], &mut each)? {
                return Ok(());
            }
        }
    }
}

/// Calls `each(type, payload)` for the messages of one datagram; `Ok(true)` when it ended
/// the reply (`NLMSG_DONE` or an ack). A netlink error becomes an `io::Error`.
fn parse_batch(buf: &[u8], each: &mut impl FnMut(u16, &[u8])) -> io::Result<bool> {
    let n = buf.len();
    let mut off = 0;
    while off + 16 <= n {
        let len = u32::from_ne_bytes(buf[off..off + 4].try_into().unwrap()) as usize;
        let ty = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
        if len < 16 || off + len > n {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "bad netlink message",
            ));
        }
        let payload = &buf[off + 16..off + len];
        match ty {
            NLMSG_DONE => return Ok(true),
            NLMSG_ERROR if payload.len() >= 4 => {
                let code = i32::from_ne_bytes(payload[..4].try_into().unwrap());
                if code != 0 {
                    return Err(io::Error::from_raw_os_error(-code));
                }
                return Ok(true); // ack
            }
            _ => each(ty, payload),
        }
        off += align4(len);
    }
    Ok(false)
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// A netlink message under construction.
struct Msg(Vec<u8>);

impl Msg {
    fn new(ty: u16, flags: u16) -> Self {
        let mut v = vec![0u8; 16];
        v[4..6].copy_from_slice(&ty.to_ne_bytes());
        v[6..8].copy_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        v[8..12].copy_from_slice(&1u32.to_ne_bytes()); // sequence number
        Self(v)
    }
    fn push(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
        self.0.resize(align4(self.0.len()), 0);
    }
    /// Starts an attribute; returns its offset for [`Msg::end_attr`].
    fn begin_attr(&mut self, ty: u16) -> usize {
        let at = self.0.len();
        self.0.extend_from_slice(&[0, 0]);
        self.0.extend_from_slice(&ty.to_ne_bytes());
        at
    }
    fn end_attr(&mut self, at: usize) {
        let len = (self.0.len() - at) as u16;
        self.0[at..at + 2].copy_from_slice(&len.to_ne_bytes());
        self.0.resize(align4(self.0.len()), 0);
    }
    fn attr(&mut self, ty: u16, value: &[u8]) {
        let at = self.begin_attr(ty);
        self.0.extend_from_slice(value);
        self.end_attr(at);
    }
    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[0..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

/// Iterates `(type, value)` over netlink attributes.
fn attrs(mut b: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([b[0], b[1]]) as usize;
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            return None;
        }
        let value = &b[4..len];
        b = &b[align4(len).min(b.len())..];
        Some((ty, value))
    })
}

fn u32_of(v: &[u8]) -> u32 {
    v.get(..4)
        .map(|b| u32::from_ne_bytes(b.try_into().unwrap()))
        .unwrap_or(0)
}

/// `struct ifinfomsg` with only the index set.
fn ifinfomsg(ifindex: u32) -> [u8; 16] {
    let mut m = [0u8; 16];
    m[4..8].copy_from_slice(&(ifindex as i32).to_ne_bytes());
    m
}

/// Reads an interface by name in the current network namespace. `Ok(None)` when there
/// is no such interface.
pub fn link_by_name(name: &str) -> io::Result<Option<LinkState>> {
    if name.is_empty()
        || name.len() >= 16
        || name.contains(['/', '\0'])
        || name.contains(char::is_whitespace)
    {
        return Ok(None);
    }
    let mut m = Msg::new(RTM_GETLINK, 0);
    m.push(&ifinfomsg(0));
    let mut z = name.as_bytes().to_vec();
    z.push(0);
    m.attr(IFLA_IFNAME, &z);
    get_link(m.finish())
}

/// Reads an interface by index in the current network namespace. `Ok(None)` when there
/// is no such interface.
pub fn link_by_index(ifindex: u32) -> io::Result<Option<LinkState>> {
    let mut m = Msg::new(RTM_GETLINK, 0);
    m.push(&ifinfomsg(ifindex));
    get_link(m.finish())
}

/// Every interface of the current network namespace, by index.
pub fn all_links() -> io::Result<Vec<LinkState>> {
    let mut m = Msg::new(RTM_GETLINK, NLM_F_DUMP);
    m.push(&ifinfomsg(0));
    let sock = Socket::open(NETLINK_ROUTE)?;
    let mut links = Vec::new();
    sock.dump(&m.finish(), |ty, payload| {
        if ty == RTM_NEWLINK && payload.len() >= 16 {
            links.push(parse_link(payload));
        }
    })?;
    links.sort_by_key(|l| l.ifindex);
    Ok(links)
}

fn get_link(req: Vec<u8>) -> io::Result<Option<LinkState>> {
    let sock = Socket::open(NETLINK_ROUTE)?;
    let mut state = None;
    let r = sock.transact(&req, |ty, payload| {
        if ty == RTM_NEWLINK && payload.len() >= 16 {
            state = Some(parse_link(payload));
        }
    });
    match r {
        Ok(()) => Ok(state),
        Err(e) if e.raw_os_error() == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(e),
    }
}

fn parse_link(payload: &[u8]) -> LinkState {
    let ifindex = i32::from_ne_bytes(payload[4..8].try_into().unwrap()) as u32;
    let flags = u32::from_ne_bytes(payload[8..12].try_into().unwrap());
    let mut st = LinkState {
        ifindex,
        name: String::new(),
        rx_queues: 1,
        xdp: XdpAttached::None,
        xdp_prog_id: 0,
        up: flags & libc::IFF_UP as u32 != 0,
    };
    for (ty, v) in attrs(&payload[16..]) {
        match ty {
            IFLA_IFNAME => {
                st.name =
                    String::from_utf8_lossy(v.split(|&b| b == 0).next().unwrap_or(v)).into_owned()
            }
            IFLA_NUM_RX_QUEUES => st.rx_queues = u32_of(v),
            IFLA_XDP => {
                for (xty, xv) in attrs(v) {
                    match xty {
                        IFLA_XDP_ATTACHED => {
                            st.xdp = match xv.first() {
                                Some(1) => XdpAttached::Driver,
                                Some(2) => XdpAttached::Skb,
                                Some(3) => XdpAttached::Hardware,
                                Some(4) => XdpAttached::Multi,
                                _ => XdpAttached::None,
                            }
                        }
                        IFLA_XDP_PROG_ID => st.xdp_prog_id = u32_of(xv),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    st
}

/// Removes the XDP program attached through netlink in the mode given by `flags`
/// (`XDP_FLAGS_*_MODE`). Fails with EBUSY when a BPF link holds the attachment.
pub fn detach_netlink_xdp(ifindex: u32, flags: u32) -> io::Result<()> {
    set_xdp_fd(ifindex, -1, flags)
}

/// Attaches the program `prog_fd` through netlink (`fd` -1 removes), in the mode of
/// `flags`. xdp-quic itself attaches with BPF links; this is for removing (and, in
/// tests, creating) attachments made the old way.
pub fn set_xdp_fd(ifindex: u32, prog_fd: i32, flags: u32) -> io::Result<()> {
    let mut m = Msg::new(RTM_SETLINK, NLM_F_ACK);
    m.push(&ifinfomsg(ifindex));
    let at = m.begin_attr(IFLA_XDP | NLA_F_NESTED);
    m.attr(IFLA_XDP_FD, &prog_fd.to_ne_bytes());
    if flags != 0 {
        m.attr(IFLA_XDP_FLAGS, &flags.to_ne_bytes());
    }
    m.end_attr(at);
    Socket::open(NETLINK_ROUTE)?.transact(&m.finish(), |_, _| {})
}
