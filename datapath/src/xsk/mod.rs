//! AF_XDP sockets, in-house: the UMEM ([`umem`]), the four rings (`ring`) and the socket
//! that binds them to one queue of an interface ([`socket`]).
//!
//! ```text
//!            user                         kernel
//!   free frames ──fill ring──────────────▶ NIC RX into frame
//!   RX batch    ◀──RX ring──────────────── frame + length
//!   TX frame    ──TX ring──────────────▶  NIC TX (kick: sendto)
//!   free frames ◀──completion ring─────── frame sent
//! ```
//!
//! Every frame of the UMEM is, at any time, in exactly one place: the user's free list, the
//! fill ring, the kernel, the RX ring, the TX ring or the completion ring. The UMEM records
//! which side holds each frame, and the socket moves frames only through that record
//! ([`umem`], [`socket`]): safe code cannot reach a frame the kernel holds. A descriptor the
//! kernel hands back is refused unless it names a frame lent to the kernel for that ring's
//! purpose (RX, or TX for the completion ring); the record cannot tell a frame the kernel
//! returned from one still waiting in the fill or TX ring, so that much rests on a correct
//! kernel, as with libxdp. The rings are private to the socket; [`emulated`] (feature
//! `testing`) plays the kernel's side in tests.

#[cfg(any(test, feature = "testing"))]
pub mod emulated;
pub(crate) mod ring;
pub mod socket;
pub mod umem;

/// An RX or TX descriptor (`struct xdp_desc`): a frame address in the UMEM and a length.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
    pub options: u32,
}

const _: () = assert!(std::mem::size_of::<Desc>() == std::mem::size_of::<libc::xdp_desc>());
