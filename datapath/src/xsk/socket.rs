//! An AF_XDP socket bound to one queue of one interface: its UMEM, its four rings, and the
//! only operations on them that safe code needs.
//!
//! [`XskSocket`] owns its [`Umem`] and its ring mappings, so neither can go before the
//! socket, and it keeps the rings private: frames move between this process and the kernel
//! only through [`XskSocket::refill`] (lend free frames to receive into),
//! [`XskSocket::recv`] (read what arrived, then free the frame), [`XskSocket::send`] (write a
//! free frame and lend it to send) and [`XskSocket::reap`] (take sent frames back). Each
//! lends or takes back through the UMEM's record of who holds each frame, so safe code never
//! sees the octets of a frame while the kernel holds it, and a descriptor the kernel returns
//! for a frame it was not lent is refused and counted ([`XskSocket::invalid_descs`]).

use std::io;
use std::mem::ManuallyDrop;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::atomic::AtomicU32;
use std::sync::{Arc, Weak};

use super::ring::{ConsRing, ProdRing, RingParts};
use super::umem::{Holder, Umem};
use super::Desc;

/// Socket options of busy polling (not in the libc crate's constants).
const SO_BUSY_POLL: libc::c_int = 46;
const SO_PREFER_BUSY_POLL: libc::c_int = 69;
const SO_BUSY_POLL_BUDGET: libc::c_int = 70;

/// Zero-copy or copy mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BindMode {
    /// Zero-copy where the driver has it, else copy.
    #[default]
    Auto,
    /// Zero-copy or fail.
    ZeroCopy,
    /// Copy mode.
    Copy,
}

/// Busy-poll socket options: on real NICs they let the worker drive the driver's NAPI loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusyPoll {
    /// SO_BUSY_POLL: microseconds to busy-poll in a blocking call.
    pub usecs: u32,
    /// SO_BUSY_POLL_BUDGET: packets per busy-poll round.
    pub budget: u32,
    /// SO_PREFER_BUSY_POLL: keep the driver's interrupts off while the application polls.
    pub prefer: bool,
}

/// Where and how to bind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XskConfig {
    pub ifindex: u32,
    pub queue: u32,
    /// Entries of the RX and TX rings (powers of two).
    pub rx_size: u32,
    pub tx_size: u32,
    /// Entries of the fill and completion rings (powers of two).
    pub fill_size: u32,
    pub comp_size: u32,
    pub mode: BindMode,
    /// Ask the kernel to set XDP_RING_NEED_WAKEUP instead of polling the rings itself.
    pub need_wakeup: bool,
    pub busy_poll: Option<BusyPoll>,
}

impl XskConfig {
    /// Defaults for queue `queue` of interface `ifindex`: 2048-entry RX, TX and completion
    /// rings, a 4096-entry fill ring, auto mode.
    pub fn new(ifindex: u32, queue: u32) -> Self {
        Self {
            ifindex,
            queue,
            rx_size: 2048,
            tx_size: 2048,
            fill_size: 4096,
            comp_size: 2048,
            mode: BindMode::Auto,
            need_wakeup: true,
            busy_poll: None,
        }
    }
}

/// The kernel's statistics of one socket (XDP_STATISTICS).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct XskStats {
    /// Dropped for other reasons (e.g. no room in the UMEM frame).
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    /// The RX ring was full.
    pub rx_ring_full: u64,
    /// The fill ring was empty when a packet came.
    pub rx_fill_ring_empty: u64,
    pub tx_ring_empty: u64,
}

/// One mapped ring area.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map_ring` mapped. The rings that point into it belong to
        // the same `XskSocket`, which is being dropped and never touches them again.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// What backs the rings: a kernel socket, or (in tests) memory that an emulated kernel plays.
enum Backing {
    Kernel {
        /// Closed first when the socket drops (see `Drop for XskSocket`). Shared only with
        /// [`StatsSource`]s, which hold it for one `getsockopt` at a time.
        fd: ManuallyDrop<Arc<OwnedFd>>,
        _maps: [Mapping; 4],
    },
    #[cfg(any(test, feature = "testing"))]
    Emulated {
        /// Readable when the emulated kernel delivered something (to poll like the socket).
        fd: OwnedFd,
        _rings: std::sync::Arc<super::emulated::Rings>,
    },
}

/// Why [`XskSocket::send`] did not send.
#[derive(Debug, PartialEq, Eq)]
pub enum TxError<E> {
    /// No free frame, or the TX ring is full: nothing changed; reap, kick, retry later.
    NoRoom,
    /// The writer failed: the frame went back to the free list.
    Write(E),
    /// The writer returned fewer octets than an Ethernet header: the frame went back to the
    /// free list (the kernel drops such a descriptor without ever completing it).
    TooShort,
    /// The writer returned more octets than the frame it was given holds: the frame went
    /// back to the free list (cut short, it would leave with IP and UDP lengths it lacks).
    TooLong,
}

/// A bound AF_XDP socket with its UMEM and rings.
pub struct XskSocket {
    rx: ConsRing<Desc>,
    tx: ProdRing<Desc>,
    fill: ProdRing<u64>,
    comp: ConsRing<u64>,
    zero_copy: bool,
    need_wakeup: bool,
    /// TX descriptors pushed but not yet published.
    tx_unsubmitted: u32,
    invalid_descs: u64,
    backing: Backing,
    /// After `backing` (fields drop in declaration order): unmapped once the socket is
    /// released.
    umem: Umem,
}

impl Drop for XskSocket {
    fn drop(&mut self) {
        #[allow(irrefutable_let_patterns)] // without the `testing` feature there is one variant
        if let Backing::Kernel { fd, .. } = &mut self.backing {
            // SAFETY: dropped exactly once, here; `fd` is not used after this. The other
            // fields drop next, in declaration order: the rings' handles (pointers into the
            // ring mappings, unused from here), then `backing`'s ring mappings, then the UMEM.
            // Closing the descriptor does not release the socket by itself: each ring mapping
            // holds a reference to the socket's file, and the kernel releases the socket
            // (unbinds it, takes it out of the XSKMAP) when the last of them is unmapped. The
            // UMEM's own teardown (stopping a zero-copy driver, unmapping its DMA, unpinning
            // the pages) is deferred to a kernel work queue, so it may run after `Area`
            // unmaps our range. That is safe because the kernel never reaches the UMEM
            // through our addresses: XDP_UMEM_REG pinned its pages, which stay allocated
            // until the kernel unpins them, and the kernel reaches the rings through its own
            // references to their pages too. (The same holds while a `StatsSource` in the
            // middle of its `getsockopt`, or a duplicate of the descriptor, keeps the socket
            // a moment longer.)
            unsafe { ManuallyDrop::drop(fd) };
        }
    }
}

// SAFETY: the rings and the UMEM are owned by this value and used through `&mut self` only;
// the kernel side of the rings is shared by the index protocol of `ring`.
unsafe impl Send for XskSocket {}

fn err(what: &str, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Sets a socket option of type `T` (an integer, a struct the kernel reads).
pub(crate) fn setsockopt<T>(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    v: &T,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a live `T` and its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (v as *const T).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads option `name` into a `T` (a kernel that knows a shorter version of the structure
/// leaves its tail zero); with the length the kernel wrote.
fn getsockopt<T: Default>(
    fd: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<(T, usize)> {
    let mut v = T::default();
    let mut len = std::mem::size_of::<T>() as libc::socklen_t;
    // SAFETY: the kernel writes at most `len` octets into the live `v`.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut v as *mut T).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok((v, len as usize))
    } else {
        Err(io::Error::last_os_error())
    }
}

#[repr(C)]
#[derive(Default)]
struct RingOffset {
    producer: u64,
    consumer: u64,
    desc: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct MmapOffsets {
    rx: RingOffset,
    tx: RingOffset,
    fr: RingOffset,
    cr: RingOffset,
}

#[repr(C)]
#[derive(Default)]
struct Statistics {
    rx_dropped: u64,
    rx_invalid_descs: u64,
    tx_invalid_descs: u64,
    rx_ring_full: u64,
    rx_fill_ring_empty_descs: u64,
    tx_ring_empty_descs: u64,
}

fn map_ring<T>(
    fd: &OwnedFd,
    off: &RingOffset,
    size: u32,
    pgoff: u64,
) -> io::Result<(Mapping, RingParts<T>)> {
    // The ring's header (three 32-bit indices) lies before its descriptors, which are
    // aligned for `T`: checked, so that the pointers below stay inside the mapping.
    // (Each index is an `AtomicU32`: 4-aligned, or the casts below would be undefined.)
    let fits =
        |at: u64| at.is_multiple_of(4) && at.checked_add(4).is_some_and(|end| end <= off.desc);
    let sane = fits(off.producer)
        && fits(off.consumer)
        && fits(off.flags)
        && off.desc.is_multiple_of(std::mem::align_of::<T>() as u64)
        && off.desc <= 1 << 20;
    if !sane {
        return Err(io::Error::other(format!(
            "the kernel's ring offsets make no sense (producer {}, consumer {}, flags {}, \
             descriptors {})",
            off.producer, off.consumer, off.flags, off.desc
        )));
    }
    let len = off.desc as usize + size as usize * std::mem::size_of::<T>();
    // SAFETY: maps a ring the kernel created for this socket at its documented page offset.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED | libc::MAP_POPULATE,
            fd.as_raw_fd(),
            pgoff as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let base = p.cast::<u8>();
    // SAFETY: the offsets come from XDP_MMAP_OFFSETS, checked above to lie inside the
    // mapping (indices before the descriptors, which end at `len`) and to be aligned for
    // their types (the mapping itself is page-aligned).
    let parts = unsafe {
        RingParts {
            producer: base.add(off.producer as usize).cast::<AtomicU32>(),
            consumer: base.add(off.consumer as usize).cast::<AtomicU32>(),
            flags: base.add(off.flags as usize).cast::<AtomicU32>(),
            entries: base.add(off.desc as usize).cast::<T>(),
            size,
        }
    };
    Ok((
        Mapping {
            ptr: NonNull::new(base).expect("mmap returned non-null"),
            len,
        },
        parts,
    ))
}

fn check_sizes(cfg: &XskConfig) -> io::Result<()> {
    for s in [cfg.rx_size, cfg.tx_size, cfg.fill_size, cfg.comp_size] {
        if !s.is_power_of_two() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("AF_XDP ring size {s} is not a power of two"),
            ));
        }
    }
    Ok(())
}

impl XskSocket {
    /// Creates a socket, registers `umem` (which the socket then owns), maps the rings,
    /// lends up to `prefill` frames to the fill ring, and binds to the queue (filling before
    /// binding: some zero-copy drivers post their receive buffers at bind time).
    ///
    /// With [`BindMode::Auto`] it tries zero-copy first and falls back to copy mode;
    /// [`XskSocket::zero_copy`] says which it got. Errors name the cause and the remedy
    /// (privileges, RLIMIT_MEMLOCK, a queue that already has a socket).
    pub fn open(cfg: &XskConfig, umem: Umem, prefill: u32) -> io::Result<Self> {
        check_sizes(cfg)?;
        // SAFETY: socket(2) takes no pointers; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            let e = io::Error::last_os_error();
            let hint = if e.kind() == io::ErrorKind::PermissionDenied {
                " (AF_XDP sockets need CAP_NET_RAW)"
            } else {
                ""
            };
            return Err(io::Error::new(
                e.kind(),
                format!("cannot create an AF_XDP socket{hint}: {e}"),
            ));
        }
        // SAFETY: a fresh descriptor nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };

        let (addr, len) = umem.area().raw();
        let ucfg = umem.config();
        let reg = libc::xdp_umem_reg {
            addr: addr as u64,
            len: len as u64,
            chunk_size: ucfg.frame_size,
            headroom: ucfg.headroom,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(&fd, libc::SOL_XDP, libc::XDP_UMEM_REG, &reg).map_err(|e| {
            if e.raw_os_error() == Some(libc::ENOBUFS) || e.raw_os_error() == Some(libc::ENOMEM) {
                io::Error::new(
                    e.kind(),
                    format!(
                        "cannot register a {len}-octet UMEM: it counts against RLIMIT_MEMLOCK ({}); \
                         run with CAP_IPC_LOCK (root has it), raise the limit (ulimit -l, \
                         LimitMEMLOCK= in systemd), or give the queue fewer frames ({e})",
                        memlock_limit()
                    ),
                )
            } else {
                err("cannot register the UMEM (XDP_UMEM_REG)", e)
            }
        })?;
        setsockopt(&fd, libc::SOL_XDP, libc::XDP_UMEM_FILL_RING, &cfg.fill_size)
            .map_err(|e| err("fill ring", e))?;
        setsockopt(
            &fd,
            libc::SOL_XDP,
            libc::XDP_UMEM_COMPLETION_RING,
            &cfg.comp_size,
        )
        .map_err(|e| err("completion ring", e))?;
        setsockopt(&fd, libc::SOL_XDP, libc::XDP_RX_RING, &cfg.rx_size)
            .map_err(|e| err("RX ring", e))?;
        setsockopt(&fd, libc::SOL_XDP, libc::XDP_TX_RING, &cfg.tx_size)
            .map_err(|e| err("TX ring", e))?;
        let (off, n): (MmapOffsets, _) = getsockopt(&fd, libc::SOL_XDP, libc::XDP_MMAP_OFFSETS)
            .map_err(|e| err("XDP_MMAP_OFFSETS", e))?;
        if n != std::mem::size_of::<MmapOffsets>() {
            // A kernel before 5.4 writes the older layout (no `flags`): read as this one,
            // every offset would be wrong.
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                format!("XDP_MMAP_OFFSETS of {n} octets: a kernel older than 5.4 (need_wakeup)"),
            ));
        }

        let (m_rx, p_rx) =
            map_ring::<Desc>(&fd, &off.rx, cfg.rx_size, libc::XDP_PGOFF_RX_RING as u64)?;
        let (m_tx, p_tx) =
            map_ring::<Desc>(&fd, &off.tx, cfg.tx_size, libc::XDP_PGOFF_TX_RING as u64)?;
        let (m_fr, p_fr) =
            map_ring::<u64>(&fd, &off.fr, cfg.fill_size, libc::XDP_UMEM_PGOFF_FILL_RING)?;
        let (m_cr, p_cr) = map_ring::<u64>(
            &fd,
            &off.cr,
            cfg.comp_size,
            libc::XDP_UMEM_PGOFF_COMPLETION_RING,
        )?;

        if let Some(bp) = cfg.busy_poll {
            set_busy_poll(&fd, &bp)?;
        }

        // SAFETY: the parts point into the mappings moved into the returned socket, which
        // unmaps them only when it drops, after its last use of the rings; this socket is the
        // only user of each ring's user side.
        let (rx, tx, fill, comp) = unsafe {
            (
                ConsRing::new(p_rx),
                ProdRing::new(p_tx),
                ProdRing::new(p_fr),
                ConsRing::new(p_cr),
            )
        };
        let mut sock = Self {
            rx,
            tx,
            fill,
            comp,
            umem,
            zero_copy: false,
            need_wakeup: cfg.need_wakeup,
            tx_unsubmitted: 0,
            invalid_descs: 0,
            backing: Backing::Kernel {
                fd: ManuallyDrop::new(Arc::new(fd)),
                _maps: [m_rx, m_tx, m_fr, m_cr],
            },
        };
        sock.refill(prefill);

        let wakeup = if cfg.need_wakeup {
            libc::XDP_USE_NEED_WAKEUP
        } else {
            0
        };
        let fd = sock.fd();
        sock.zero_copy = match cfg.mode {
            BindMode::Copy => {
                bind(fd, cfg, libc::XDP_COPY | wakeup)?;
                false
            }
            BindMode::ZeroCopy => {
                bind(fd, cfg, libc::XDP_ZEROCOPY | wakeup)?;
                true
            }
            BindMode::Auto => match bind(fd, cfg, libc::XDP_ZEROCOPY | wakeup) {
                Ok(()) => true,
                // Another socket holds the queue (after `bind`'s wait for it): copy mode
                // would wait as long again and fail the same way.
                Err(e) if e.kind() == io::ErrorKind::ResourceBusy => return Err(e),
                Err(_) => {
                    bind(fd, cfg, libc::XDP_COPY | wakeup)?;
                    false
                }
            },
        };
        Ok(sock)
    }

    /// A socket whose kernel side is played by the test: see [`super::emulated`].
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn emulated(
        cfg: &XskConfig,
        umem: Umem,
        rings: std::sync::Arc<super::emulated::Rings>,
        fd: OwnedFd,
    ) -> io::Result<Self> {
        check_sizes(cfg)?;
        // SAFETY: the ring memory lives in `rings`, which the returned socket keeps (in its
        // backing) for as long as it uses the rings; this socket is each ring's only user
        // side.
        let (rx, tx, fill, comp) = unsafe {
            (
                ConsRing::new(rings.rx.parts()),
                ProdRing::new(rings.tx.parts()),
                ProdRing::new(rings.fill.parts()),
                ConsRing::new(rings.comp.parts()),
            )
        };
        Ok(Self {
            rx,
            tx,
            fill,
            comp,
            umem,
            zero_copy: false,
            need_wakeup: cfg.need_wakeup,
            tx_unsubmitted: 0,
            invalid_descs: 0,
            backing: Backing::Emulated { fd, _rings: rings },
        })
    }

    /// Whether the socket is bound in zero-copy mode.
    pub fn zero_copy(&self) -> bool {
        self.zero_copy
    }

    /// The socket's descriptor (to put in the XSKMAP, and to poll).
    pub fn fd(&self) -> BorrowedFd<'_> {
        match &self.backing {
            Backing::Kernel { fd, .. } => fd.as_fd(),
            #[cfg(any(test, feature = "testing"))]
            Backing::Emulated { fd, .. } => fd.as_fd(),
        }
    }

    /// Where another thread reads the kernel's statistics of this socket
    /// ([`statistics`]) for as long as it is open, without keeping it open (a duplicate
    /// descriptor would keep it bound to its queue, and in the XSKMAP, after the socket
    /// went).
    pub fn stats_source(&self) -> StatsSource {
        match &self.backing {
            Backing::Kernel { fd, .. } => StatsSource(Arc::downgrade(fd)),
            #[cfg(any(test, feature = "testing"))]
            Backing::Emulated { .. } => StatsSource(Weak::new()),
        }
    }

    /// The UMEM's layout and frame counts.
    pub fn umem(&self) -> &Umem {
        &self.umem
    }

    /// Descriptors the kernel returned that named no frame lent to it for that purpose, or
    /// whose length left the frame: ignored.
    pub fn invalid_descs(&self) -> u64 {
        self.invalid_descs
    }

    /// Lends free frames to the kernel to receive into until `target` are lent (or the free
    /// list or the fill ring runs out). Returns how many were lent now.
    pub fn refill(&mut self, target: u32) -> u32 {
        let mut lent = 0;
        while self.umem.lent_rx() < target && self.fill.free(1) > 0 {
            let Some(frame) = self.umem.alloc() else {
                break;
            };
            let addr = self.umem.lend(frame, Holder::KernelRx, 0);
            let pushed = self.fill.push(addr);
            debug_assert!(pushed, "room was checked");
            lent += 1;
        }
        if lent > 0 {
            self.fill.submit();
        }
        lent
    }

    /// Descriptors waiting in the RX ring.
    pub fn rx_available(&mut self) -> u32 {
        self.rx.available()
    }

    /// Takes up to `max` received frames in order, hands each one's packet octets to `read`,
    /// then puts the frame back on the free list (refill lends it again). Returns how many
    /// descriptors were taken, invalid ones included.
    pub fn recv(&mut self, max: usize, mut read: impl FnMut(&[u8])) -> usize {
        let frame_size = u64::from(self.umem.config().frame_size);
        let mut taken = 0;
        while taken < max {
            let Some(d) = self.rx.pop() else {
                break;
            };
            taken += 1;
            let Some(frame) = self.umem.take_back(d.addr, Holder::KernelRx) else {
                self.invalid_descs += 1;
                continue;
            };
            match self.umem.bytes(&frame, (d.addr % frame_size) as u32, d.len) {
                Some(octets) => read(octets),
                None => self.invalid_descs += 1,
            }
            self.umem.release(frame);
        }
        if taken > 0 {
            self.rx.release();
        }
        taken
    }

    /// Frames that can be sent now without reaping: free frames and TX ring slots, the fewer.
    pub fn tx_room(&mut self) -> u32 {
        let free = u32::try_from(self.umem.free_frames()).unwrap_or(u32::MAX);
        free.min(self.tx.free(self.tx.size()))
    }

    /// Sends one frame: `write` fills the frame (from the UMEM headroom on) and returns the
    /// frame's length; the descriptor is pushed on the TX ring and published at
    /// [`XskSocket::submit_tx`]. [`TxError::NoRoom`] when there is no free frame or TX slot
    /// (nothing changed); when `write` fails the frame goes back to the free list.
    pub fn send<E>(
        &mut self,
        write: impl FnOnce(&mut [u8]) -> Result<usize, E>,
    ) -> Result<(), TxError<E>> {
        if self.tx.free(1) == 0 {
            return Err(TxError::NoRoom);
        }
        let Some(mut frame) = self.umem.alloc() else {
            return Err(TxError::NoRoom);
        };
        let headroom = self.umem.config().headroom;
        let len = match write(self.umem.bytes_mut(&mut frame, headroom)) {
            Ok(len) => len,
            Err(e) => {
                self.umem.release(frame);
                return Err(TxError::Write(e));
            }
        };
        let max = (self.umem.config().frame_size - headroom) as usize;
        if len < crate::packet::eth::HEADER_LEN {
            // The kernel skips such a descriptor without completing it: the frame would be
            // lost to the kernel for good.
            self.umem.release(frame);
            return Err(TxError::TooShort);
        }
        if len > max {
            self.umem.release(frame);
            return Err(TxError::TooLong);
        }
        let len = len as u32;
        let addr = self.umem.lend(frame, Holder::KernelTx, headroom);
        let pushed = self.tx.push(Desc {
            addr,
            len,
            options: 0,
        });
        debug_assert!(pushed, "room was checked");
        self.tx_unsubmitted += 1;
        Ok(())
    }

    /// Publishes the TX descriptors pushed since the last call; returns how many.
    pub fn submit_tx(&mut self) -> u32 {
        let n = self.tx_unsubmitted;
        if n > 0 {
            self.tx.submit();
            self.tx_unsubmitted = 0;
        }
        n
    }

    /// Takes back the frames the kernel has sent (completion ring) onto the free list.
    /// Returns how many.
    pub fn reap(&mut self) -> u32 {
        let mut n = 0;
        // At most a ring's worth: a bogus producer index cannot keep this looping.
        let most = self.comp.size();
        while n < most {
            let Some(addr) = self.comp.pop() else {
                break;
            };
            n += 1;
            match self.umem.take_back(addr, Holder::KernelTx) {
                Some(frame) => self.umem.release(frame),
                None => self.invalid_descs += 1,
            }
        }
        if n > 0 {
            self.comp.release();
        }
        n
    }

    /// Frames lent to the kernel to send and not yet taken back.
    pub fn tx_in_flight(&self) -> u32 {
        self.umem.lent_tx()
    }

    /// Whether the kernel has taken every published TX descriptor off the ring.
    pub fn tx_ring_drained(&mut self) -> bool {
        self.tx.is_drained()
    }

    /// Entries of the TX ring.
    pub fn tx_ring_size(&self) -> u32 {
        self.tx.size()
    }

    /// Whether the kernel must be kicked to process the TX ring: always in copy mode (only
    /// `sendto` moves it there), or when need-wakeup is off, or when the kernel asked.
    pub fn tx_needs_kick(&self) -> bool {
        !self.zero_copy || !self.need_wakeup || self.tx.needs_wakeup()
    }

    /// Whether the kernel asked to be woken to take frames from the fill ring.
    pub fn fill_needs_wakeup(&self) -> bool {
        self.need_wakeup && self.fill.needs_wakeup()
    }

    /// Tells the kernel to process the TX ring. Returns `Ok(true)` when the kernel stopped
    /// before the end of the ring: reap completions and kick again.
    ///
    /// How the kernel's answers are taken (`xsk_sendmsg`, Documentation/networking/af_xdp.rst):
    ///
    /// | errno | meaning | here |
    /// |---|---|---|
    /// | EAGAIN, EBUSY | copy mode sends at most 32 frames a call, or the completion ring is full, or another call is in progress | `Ok(true)`: kick again after reaping |
    /// | ENOBUFS | the device queue is full | `Ok(false)`: the frames wait in the ring for the next kick |
    /// | ENETDOWN | the interface is down | `Ok(false)`: likewise, until it is up |
    /// | EINTR | a signal | `Ok(true)` |
    /// | anything else (ENXIO: the socket is unbound or its device went away; EBADF, EFAULT, EINVAL, EOPNOTSUPP) | the socket cannot send any more | `Err`: fatal, the worker fails |
    pub fn kick_tx(&self) -> io::Result<bool> {
        let fd = match &self.backing {
            Backing::Kernel { fd, .. } => fd.as_raw_fd(),
            #[cfg(any(test, feature = "testing"))]
            Backing::Emulated { .. } => return Ok(false),
        };
        // SAFETY: sendto with no buffer and no address: the AF_XDP wake-up call.
        let rc = unsafe {
            libc::sendto(
                fd,
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if rc >= 0 {
            return Ok(false);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) | Some(libc::EBUSY) | Some(libc::EINTR) => Ok(true),
            Some(libc::ENOBUFS) | Some(libc::ENETDOWN) => Ok(false),
            _ => Err(io::Error::new(
                e.kind(),
                format!("AF_XDP transmit wake-up failed: {e}"),
            )),
        }
    }

    /// Tells the kernel to refill from the fill ring (when it set need-wakeup on it), or,
    /// with busy polling ([`XskConfig::busy_poll`]), to run the device's NAPI now. EAGAIN,
    /// EBUSY, EINTR, ENOBUFS and ENETDOWN are transient (the next turn wakes it again); any
    /// other errno is fatal, as for [`XskSocket::kick_tx`].
    pub fn wake_rx(&self) -> io::Result<()> {
        let fd = match &self.backing {
            Backing::Kernel { fd, .. } => fd.as_raw_fd(),
            #[cfg(any(test, feature = "testing"))]
            Backing::Emulated { .. } => return Ok(()),
        };
        // SAFETY: recvfrom with no buffer: the AF_XDP RX wake-up call.
        let rc = unsafe {
            libc::recvfrom(
                fd,
                std::ptr::null_mut(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        };
        if rc < 0 {
            let e = io::Error::last_os_error();
            if !matches!(
                e.raw_os_error(),
                Some(libc::EAGAIN | libc::EBUSY | libc::EINTR | libc::ENOBUFS | libc::ENETDOWN)
            ) {
                return Err(io::Error::new(
                    e.kind(),
                    format!("AF_XDP receive wake-up failed: {e}"),
                ));
            }
        }
        Ok(())
    }
}

fn set_busy_poll(fd: &impl AsRawFd, bp: &BusyPoll) -> io::Result<()> {
    setsockopt(
        fd,
        libc::SOL_SOCKET,
        SO_PREFER_BUSY_POLL,
        &libc::c_int::from(bp.prefer),
    )
    .map_err(|e| err("SO_PREFER_BUSY_POLL (needs CAP_NET_ADMIN)", e))?;
    setsockopt(
        fd,
        libc::SOL_SOCKET,
        SO_BUSY_POLL,
        &(bp.usecs as libc::c_int),
    )
    .map_err(|e| {
        err(
            "SO_BUSY_POLL (needs CAP_NET_ADMIN above net.core.busy_read)",
            e,
        )
    })?;
    setsockopt(
        fd,
        libc::SOL_SOCKET,
        SO_BUSY_POLL_BUDGET,
        &(bp.budget as libc::c_int),
    )
    .map_err(|e| err("SO_BUSY_POLL_BUDGET (needs CAP_NET_ADMIN)", e))
}

/// Reads a socket's statistics from another thread: see [`XskSocket::stats_source`].
#[derive(Debug, Clone)]
pub struct StatsSource(Weak<OwnedFd>);

impl StatsSource {
    /// The kernel's statistics of the socket; `None` once it is closed (or unreadable).
    pub fn read(&self) -> Option<XskStats> {
        let fd = self.0.upgrade()?;
        statistics(fd.as_fd()).ok()
    }
}

/// The kernel's counters of the AF_XDP socket `fd` (XDP_STATISTICS).
pub fn statistics(fd: BorrowedFd<'_>) -> io::Result<XskStats> {
    let (s, _): (Statistics, _) = getsockopt(&fd, libc::SOL_XDP, libc::XDP_STATISTICS)?;
    Ok(XskStats {
        rx_dropped: s.rx_dropped,
        rx_invalid_descs: s.rx_invalid_descs,
        tx_invalid_descs: s.tx_invalid_descs,
        rx_ring_full: s.rx_ring_full,
        rx_fill_ring_empty: s.rx_fill_ring_empty_descs,
        tx_ring_empty: s.tx_ring_empty_descs,
    })
}

/// How long a bind waits for a queue held by a socket that was just closed: the kernel lets
/// a closed socket's queue go in deferred work, so a server restarted at once (a service
/// manager's restart) can find its queues still held for a moment.
const BUSY_QUEUE_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

fn bind(fd: BorrowedFd<'_>, cfg: &XskConfig, flags: u16) -> io::Result<()> {
    let sxdp = libc::sockaddr_xdp {
        sxdp_family: libc::AF_XDP as u16,
        sxdp_flags: flags,
        sxdp_ifindex: cfg.ifindex,
        sxdp_queue_id: cfg.queue,
        sxdp_shared_umem_fd: 0,
    };
    let start = std::time::Instant::now();
    let e = loop {
        // SAFETY: passes a live sockaddr_xdp and its exact size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sxdp as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EBUSY) && start.elapsed() < BUSY_QUEUE_WAIT {
            std::thread::sleep(std::time::Duration::from_millis(10));
            continue;
        }
        break e;
    };
    let mode = if flags & libc::XDP_ZEROCOPY != 0 {
        "zero-copy"
    } else {
        "copy"
    };
    let hint = match e.raw_os_error() {
        Some(libc::EBUSY) => " (another AF_XDP socket holds this queue, 2 s after the first try)",
        Some(libc::EINVAL) => " (no such queue on the interface?)",
        Some(libc::EOPNOTSUPP) => " (the driver does not support this mode)",
        Some(libc::EPERM) => " (needs CAP_NET_ADMIN)",
        _ => "",
    };
    Err(io::Error::new(
        e.kind(),
        format!(
            "cannot bind AF_XDP socket to ifindex {} queue {} in {mode} mode{hint}: {e}",
            cfg.ifindex, cfg.queue
        ),
    ))
}

fn memlock_limit() -> String {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the live `r`.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } != 0 {
        return "unknown".into();
    }
    if r.rlim_cur == libc::RLIM_INFINITY {
        "unlimited".into()
    } else {
        format!("{} KiB", r.rlim_cur / 1024)
    }
}
