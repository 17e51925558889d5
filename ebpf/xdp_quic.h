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
/* ARRAY, one entry: struct xq_shield, the QUIC rules (all zero: off). */
#define XQ_MAP_SHIELD "shield"
/* ARRAY: key = rx queue index (u32), value = u32: nonzero while the worker that drains
 * that queue is under pressure (set and cleared by the control plane's pressure monitor). */
#define XQ_MAP_PRESSURE "pressure"
/* LRU_HASH: key = struct xq_bucket_key (a source prefix), value = struct xq_bucket (a
 * token bucket). Written by the program only. */
#define XQ_MAP_BUCKETS "buckets"

#define XQ_MAX_QUEUES 256
#define XQ_MAX_PORTS 64
#define XQ_MAX_ADDRS 64
#define XQ_MAX_BUCKETS 32768

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
 * counts as registered while process `pid` (of the PID namespace whose inode is
 * `pidns`; 0: not recorded) holds a socket with inode `sock_ino`. */
struct xq_xsk_owner {
	unsigned int pid;
	unsigned int pidns;
	unsigned long long sock_ino;
};

/* A steered UDP payload shorter than this cannot be a QUIC packet: one
 * flags byte, the shortest packet number (1 byte) padded to the 4 bytes that
 * header protection samples from, and the 16-byte sample (RFC 9001, 5.4.2). */
#define XQ_MIN_QUIC_PAYLOAD 21

/* ---- Shield (the QUIC rules) ------------------------------------------- */

/* xq_shield.flags. With XQ_SHIELD_ON clear the program steers as if the map were empty.
 * XQ_SHIELD_ON: drop Initials of a spoken version in datagrams shorter than
 *   XQ_MIN_INITIAL_DATAGRAM, long headers of other versions in datagrams shorter than
 *   that, and rate limit the larger ones per source prefix (the `version` rate); drop
 *   Version Negotiation packets (version 0) unless their DCID is in the layout below;
 * XQ_SHIELD_CID: also drop short headers, and Handshake and Retry long headers of a
 *   spoken version, whose DCID is not in the layout below (cid_first, server_id,
 *   workers), written when a server engine starts;
 * XQ_SHIELD_ADMIT: also, while the rx queue's entry in "pressure" is nonzero, admit
 *   Initials without a token per source prefix (the `initial` rate). */
#define XQ_SHIELD_ON 0x1u
#define XQ_SHIELD_CID 0x2u
#define XQ_SHIELD_ADMIT 0x4u
/* Not read by the program: the shield was turned on by a server for its life (`serve
 * --xdp-shield`), not by `xdp-quic attach --shield`. Found set with no server running, it
 * is what a server that did not stop cleanly left behind. */
#define XQ_SHIELD_SERVER 0x8u

/* RFC 9000 14.1: a server discards an Initial in a UDP datagram whose payload is shorter;
 * 5.2.2: and a packet of an unsupported version in one that is shorter. */
#define XQ_MIN_INITIAL_DATAGRAM 1200
#define XQ_MAX_VERSIONS 8
/* A CID of at most 20 octets holds octet 0, the server id, the worker octet and a nonce
 * of at least 4 octets. */
#define XQ_MAX_SERVER_ID 14
#define XQ_MAX_CID_LEN 20

/* xq_bucket_key.kind */
#define XQ_BUCKET_INITIAL 1u /* Initials without a token, under pressure */
#define XQ_BUCKET_VERSION 2u /* long headers of a version not spoken (version negotiation) */

/* A token bucket: `burst` tokens, refilled at `per_sec` tokens a second (0: never). */
struct xq_rate {
	unsigned int per_sec;
	unsigned int burst;
};

struct xq_shield {
	unsigned int flags;          /* XQ_SHIELD_* */
	unsigned char cid_first;     /* octet 0 of our CIDs: config rotation << 5 | (length - 1) */
	unsigned char sid_len;       /* server id octets, 0..XQ_MAX_SERVER_ID */
	unsigned short workers;      /* worker octet must be below this, 1..256 */
	unsigned char server_id[16]; /* the first sid_len octets count */
	unsigned char prefix4;       /* source prefix of a bucket: IPv4 bits, 0..32 */
	unsigned char prefix6;       /* IPv6 bits, 0..128 */
	unsigned short reserved;     /* user space's: servers engaged */
	unsigned int versions[XQ_MAX_VERSIONS]; /* versions spoken (v1's packet types); 0: none */
	struct xq_rate initial;      /* per prefix: tokenless Initials under pressure */
	struct xq_rate version;      /* per prefix: long headers of other versions, >= 1200 */
};

struct xq_bucket_key {
	unsigned char kind;     /* XQ_BUCKET_* */
	unsigned char family;   /* 4 or 6 */
	unsigned char prefix;   /* prefix length in bits */
	unsigned char reserved; /* zero */
	unsigned char addr[16]; /* source address, network order, masked to the prefix */
};

struct xq_bucket {
	unsigned long long stamp_ns; /* bpf_ktime_get_ns() the tokens count up to */
	unsigned int tokens;
	unsigned int reserved;
};

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
 *   SEEN    = the sum of the outcomes XQ_FAM_REDIRECT .. XQ_FAM_INITIAL_RATE (per family) */
#define XQ_CNT_V4 3
#define XQ_CNT_V6 16
#define XQ_FAM_SEEN 0       /* packets of this family that got one of the outcomes below */
#define XQ_FAM_REDIRECT 1   /* steered to the AF_XDP socket of the rx queue */
#define XQ_FAM_NOT_UDP 2    /* passed: not UDP (IPv6: any extension header) */
#define XQ_FAM_OTHER_PORT 3 /* passed: UDP to a port that is not a service port */
#define XQ_FAM_OTHER_ADDR 4 /* passed: service port, not a configured address */
#define XQ_FAM_FRAGMENT 5   /* passed: IP fragment (IPv4 MF/offset, IPv6 fragment header) */
#define XQ_FAM_NO_SOCKET 6  /* passed: service packet, no socket on its rx queue */
#define XQ_FAM_MALFORMED 7  /* dropped: service packet, UDP length past the end, too short or not the IP payload's; 0-RTT DCID over 20 */
#define XQ_FAM_SHORT_INITIAL 8   /* dropped (shield): Initial in a datagram < 1200 */
#define XQ_FAM_UNKNOWN_VERSION 9 /* dropped (shield): other version, datagram < 1200; VN not ours */
#define XQ_FAM_VERSION_RATE 10   /* dropped (shield): other version, its prefix over rate */
#define XQ_FAM_FOREIGN_CID 11    /* dropped (shield): short header, Handshake or Retry, DCID not ours; 0-RTT, DCID not ours, under 8 or under pressure */
#define XQ_FAM_INITIAL_RATE 12   /* dropped (shield): tokenless Initial under pressure, prefix over rate */
#define XQ_FAM_COUNT 13

/* Not outcomes (the packets also count in theirs): what the shield let through. */
#define XQ_CNT_ADMITTED 29      /* tokenless Initials under pressure within their prefix's rate */
#define XQ_CNT_WITH_TOKEN 30    /* Initials with a token under pressure (pass unlimited) */
#define XQ_CNT_VERSION_PASSED 31 /* other versions >= 1200 within their prefix's rate */

#define XQ_CNT_COUNT 32

#endif /* XDP_QUIC_H */
