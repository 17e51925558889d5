//! The few raw `bpf(2)` commands aya 0.14 does not wrap: `BPF_PROG_TEST_RUN`,
//! `BPF_LINK_GET_FD_BY_ID` and `BPF_LINK_DETACH`. All `unsafe` for `bpf(2)` is here.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

const BPF_PROG_TEST_RUN: libc::c_long = 10;
const BPF_LINK_GET_FD_BY_ID: libc::c_long = 30;
const BPF_LINK_DETACH: libc::c_long = 34;

/// `union bpf_attr` for `BPF_PROG_TEST_RUN` (the `test` member, uapi layout).
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// `struct xdp_md` as `BPF_PROG_TEST_RUN` takes it for an XDP program's context.
#[repr(C)]
#[derive(Default)]
struct XdpMd {
    data: u32,
    data_end: u32,
    data_meta: u32,
    ingress_ifindex: u32,
    rx_queue_index: u32,
    egress_ifindex: u32,
}

/// Calls `bpf(cmd, attr, size_of::<T>())`.
///
/// `T` must be the `#[repr(C)]` prefix of `union bpf_attr` that `cmd` reads and writes.
fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a valid, exclusively borrowed `repr(C)` struct of the size we
    // pass; the kernel reads and writes at most that many bytes. Pointers inside `attr`
    // (set by the callers) point to buffers that outlive this call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T as *mut libc::c_void,
            std::mem::size_of::<T>() as libc::c_uint,
        )
    };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Outcome of one run of an XDP program on one packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestRunOutput {
    /// The program's return value (an `XDP_*` action).
    pub retval: u32,
    /// The packet as the program left it.
    pub data: Vec<u8>,
}

/// Runs the XDP program `prog` once on `packet` as if it arrived on rx queue
/// `rx_queue` of interface `ifindex` (`BPF_PROG_TEST_RUN`); no interface is needed
/// when `ifindex` is 0 and `rx_queue` is 0. Maps are updated as in a real run; an
/// `XDP_REDIRECT` verdict is reported but not carried out.
pub fn prog_test_run_xdp(
    prog: BorrowedFd<'_>,
    packet: &[u8],
    ifindex: u32,
    rx_queue: u32,
) -> io::Result<TestRunOutput> {
    let mut out = vec![0u8; packet.len() + 256];
    let mut ctx = XdpMd {
        data_end: packet.len() as u32,
        ingress_ifindex: ifindex,
        rx_queue_index: rx_queue,
        ..XdpMd::default()
    };
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        data_size_in: packet.len() as u32,
        data_size_out: out.len() as u32,
        data_in: packet.as_ptr() as u64,
        data_out: out.as_mut_ptr() as u64,
        repeat: 1,
        ..TestRunAttr::default()
    };
    if ifindex != 0 || rx_queue != 0 {
        attr.ctx_size_in = std::mem::size_of::<XdpMd>() as u32;
        attr.ctx_in = &mut ctx as *mut XdpMd as u64;
    }
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    out.truncate(attr.data_size_out as usize);
    Ok(TestRunOutput {
        retval: attr.retval,
        data: out,
    })
}

/// Opens the BPF link with id `id` (`BPF_LINK_GET_FD_BY_ID`, needs CAP_SYS_ADMIN).
pub fn link_fd_by_id(id: u32) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        link_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let mut attr = Attr {
        link_id: id,
        next_id: 0,
        open_flags: 0,
    };
    let fd = bpf(BPF_LINK_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: on success the kernel returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Detaches the link `link` from its hook (`BPF_LINK_DETACH`); the link object lives on,
/// defunct, until its last fd and pin are gone.
pub fn link_detach(link: BorrowedFd<'_>) -> io::Result<()> {
    #[repr(C)]
    struct Attr {
        link_fd: u32,
    }
    let mut attr = Attr {
        link_fd: link.as_raw_fd() as u32,
    };
    bpf(BPF_LINK_DETACH, &mut attr).map(|_| ())
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
const BPF_LINK_TYPE_XDP: u32 = 6;

/// Opens the pinned BPF object at `path` (`BPF_OBJ_GET`).
pub fn obj_get(path: &std::path::Path) -> io::Result<OwnedFd> {
    #[repr(C)]
    struct Attr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        _pad: u32,
    }
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut attr = Attr {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    let fd = bpf(BPF_OBJ_GET, &mut attr)?;
    // SAFETY: on success the kernel returned a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What the kernel says about an XDP BPF link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XdpLinkInfo {
    /// Link id.
    pub id: u32,
    /// Id of the program it attaches.
    pub prog_id: u32,
    /// Interface it is attached to; 0 once detached (interface gone, `BPF_LINK_DETACH`).
    pub ifindex: u32,
}

/// Reads the info of the link `fd`; fails with `InvalidData` when it is not an XDP link.
pub fn xdp_link_info(fd: BorrowedFd<'_>) -> io::Result<XdpLinkInfo> {
    #[repr(C)]
    struct Attr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // struct bpf_link_info: type, id, prog_id, then a union whose `xdp` member starts
    // with the ifindex; 64 bytes cover every member the kernel may fill.
    let mut info = [0u32; 16];
    let mut attr = Attr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: info.as_mut_ptr() as u64,
    };
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    if info[0] != BPF_LINK_TYPE_XDP {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "not an XDP link",
        ));
    }
    Ok(XdpLinkInfo {
        id: info[1],
        prog_id: info[2],
        ifindex: info[4],
    })
}
