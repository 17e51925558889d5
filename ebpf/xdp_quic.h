/* SPDX-License-Identifier: MIT OR Apache-2.0 */
/*
 * xdp-quic: the contract between the XDP steering program (xdp_quic.c) and
 * the control plane (Rust: crate xdp-quic-ebpf, src/lib.rs mirrors every
 * value below; a Rust unit test parses this file and fails on a mismatch).
 *
 * Only plain #define constants and fixed-layout structs live here, so that
 * the file is trivially readable from both sides.
 */
#ifndef XDP_QUIC_H
#define XDP_QUIC_H

/* ---- Program ---------------------------------------------------------- */

/* Name of the XDP program function (ELF symbol, section "xdp"). */
#define XQ_PROG_NAME "xdp_quic"

/* ---- Maps (ELF names; also the pin names under /sys/fs/bpf/xdp-quic/<if>/) */

/* XSKMAP: key = rx queue index (u32), value = AF_XDP socket fd (u32). */
#define XQ_MAP_XSKS "xsks"
/* HASH: key = UDP destination port in host byte order (u16), value = u8 1. */
#define XQ_MAP_PORTS "ports"
/* HASH: key = IPv4 destination address, network byte order (u32), value = u8 1. */
#define XQ_MAP_ADDRS4 "addrs4"
/* HASH: key = IPv6 destination address (16 bytes), value = u8 1. */
#define XQ_MAP_ADDRS6 "addrs6"
/* ARRAY, one entry: struct xq_config. */
#define XQ_MAP_CONFIG "config"
/* PERCPU_ARRAY: key = counter index (XQ_CNT_*), value = u64 per CPU. */
#define XQ_MAP_COUNTERS "counters"
/* ARRAY: key = rx queue index (u32), value = struct xq_xsk_owner. Not used by the
 * program: the control plane records there who registered a socket in "xsks"
 * (the kernel cannot list an XSKMAP's sockets to user space). */
#define XQ_MAP_XSK_OWNERS "xsk_owners"

#define XQ_MAX_QUEUES 256
#define XQ_MAX_PORTS 64
#define XQ_MAX_ADDRS 64

/* ---- Config ------------------------------------------------------------ */

/* xq_config.flags: when set, a packet must also be addressed to one of the
 * addresses in addrs4 (IPv4) or addrs6 (IPv6) to be steered. With the flag
 * set and no address of a family configured, no packet of that family is
 * steered. */
#define XQ_CFG_FILTER_ADDRS 0x1u

/* xq_config.mode: how the control plane attached the program. The program
 * itself ignores it; the control plane records it for `xdp-quic status`. */
#define XQ_MODE_UNKNOWN 0u
#define XQ_MODE_NATIVE 1u
#define XQ_MODE_SKB 2u

struct xq_config {
	unsigned int flags;     /* XQ_CFG_* */
	unsigned int mode;      /* XQ_MODE_* (control plane only) */
	unsigned int ifindex;   /* attached interface (control plane only) */
	unsigned int reserved;  /* id of the xsk_owners map (control plane only) */
	unsigned long long netns_ino; /* inode of the attaching netns (control plane only) */
};

/* Who registered the AF_XDP socket of a queue; all zero: nobody. The socket
 * counts as registered while process `pid` holds a socket with inode `sock_ino`. */
struct xq_xsk_owner {
	unsigned int pid;
	unsigned int reserved;       /* zero */
	unsigned long long sock_ino;
};

/* A steered UDP payload shorter than this cannot be a QUIC packet: one
 * flags byte, the shortest packet number (1 byte) padded to the 4 bytes that
 * header protection samples from, and the 16-byte sample (RFC 9001, 5.4.2). */
#define XQ_MIN_QUIC_PAYLOAD 21

/* ---- Counters (indices into the per-CPU "counters" array) -------------- */

/* Every packet the program sees. */
#define XQ_CNT_PACKETS 0
/* Passed: not IPv4/IPv6 (including a second VLAN tag). */
#define XQ_CNT_PASS_NOT_IP 1
/* Passed: Ethernet/VLAN/IP/UDP header truncated or invalid before the
 * destination port could be read (the kernel drops or handles it). */
#define XQ_CNT_PASS_BAD_HEADER 2

/* Per-family blocks: index = XQ_CNT_V4 or XQ_CNT_V6 plus an XQ_FAM_* offset.
 * Invariants (summed over CPUs, read at rest):
 *   PACKETS = PASS_NOT_IP + PASS_BAD_HEADER + V4.SEEN + V6.SEEN
 *   SEEN    = REDIRECT + NOT_UDP + OTHER_PORT + OTHER_ADDR + FRAGMENT
 *             + NO_SOCKET + MALFORMED                        (per family) */
#define XQ_CNT_V4 3
#define XQ_CNT_V6 11
#define XQ_FAM_SEEN 0       /* packets of this family that got one of the outcomes below */
#define XQ_FAM_REDIRECT 1   /* steered to the AF_XDP socket of the rx queue */
#define XQ_FAM_NOT_UDP 2    /* passed: not UDP (IPv6: any extension header) */
#define XQ_FAM_OTHER_PORT 3 /* passed: UDP to a port that is not a service port */
#define XQ_FAM_OTHER_ADDR 4 /* passed: service port, not a configured address */
#define XQ_FAM_FRAGMENT 5   /* passed: IP fragment (IPv4 MF/offset, IPv6 fragment header) */
#define XQ_FAM_NO_SOCKET 6  /* passed: service packet, no socket on its rx queue */
#define XQ_FAM_MALFORMED 7  /* dropped: service packet, UDP length past the end or too short */
#define XQ_FAM_COUNT 8

#define XQ_CNT_COUNT 19

#endif /* XDP_QUIC_H */
