// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * xdp-quic steering program.
 *
 * Steers UDP packets addressed to a service port (and, when configured, to a
 * service address) into the AF_XDP socket registered for the rx queue the
 * packet arrived on. Everything else goes to the kernel (XDP_PASS). Service
 * packets that cannot hold a QUIC packet are dropped, and, with the shield on
 * (the "shield" map), so are those QUIC says a server discards, and Initials
 * over their source prefix's rate while the queue's worker is under pressure.
 * Every decision is counted in the per-CPU "counters" map; see xdp_quic.h for
 * the contract.
 *
 * Parsing: Ethernet, at most one 802.1Q / 802.1ad tag, IPv4 (any header
 * length; fragments pass), IPv6 (UDP as the next header; any extension
 * header passes), UDP, and the first octets of the QUIC header. The only
 * loops have constant bounds and are unrolled: the verifier sees
 * straight-line code.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "xdp_quic.h"

#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif
#define IPV4_MF 0x2000
#define IPV4_OFFSET 0x1FFF
#define IPV6_NEXTHDR_FRAGMENT 44
#define NSEC_PER_SEC 1000000000ull

/* The layouts ebpf/src/lib.rs mirrors (its tests check the same numbers). */
_Static_assert(sizeof(struct xq_config) == 24, "struct xq_config");
_Static_assert(sizeof(struct xq_shield) == 76, "struct xq_shield");
_Static_assert(__builtin_offsetof(struct xq_shield, server_id) == 8, "xq_shield.server_id");
_Static_assert(__builtin_offsetof(struct xq_shield, prefix4) == 24, "xq_shield.prefix4");
_Static_assert(__builtin_offsetof(struct xq_shield, versions) == 28, "xq_shield.versions");
_Static_assert(__builtin_offsetof(struct xq_shield, initial) == 60, "xq_shield.initial");
_Static_assert(__builtin_offsetof(struct xq_shield, version) == 68, "xq_shield.version");
_Static_assert(sizeof(struct xq_bucket_key) == 20, "struct xq_bucket_key");
_Static_assert(sizeof(struct xq_bucket) == 16, "struct xq_bucket");

struct vlan_tag {
	__be16 tci;
	__be16 proto;
};

struct xq_in6_addr {
	__u8 b[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, XQ_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XQ_MAX_PORTS);
	__type(key, __u16);
	__type(value, __u8);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XQ_MAX_ADDRS);
	__type(key, __u32);
	__type(value, __u8);
} addrs4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, XQ_MAX_ADDRS);
	__type(key, struct xq_in6_addr);
	__type(value, __u8);
} addrs6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xq_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, XQ_CNT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XQ_MAX_QUEUES);
	__type(key, __u32);
	__type(value, struct xq_xsk_owner);
} xsk_owners SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct xq_shield);
} shield SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, XQ_MAX_QUEUES);
	__type(key, __u32);
	__type(value, __u32);
} pressure SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, XQ_MAX_BUCKETS);
	__type(key, struct xq_bucket_key);
	__type(value, struct xq_bucket);
} buckets SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &idx);

	if (v)
		*v += 1;
}

/* Counts a packet of family `fam` (XQ_CNT_V4 or XQ_CNT_V6) as seen with the
 * outcome `what` (XQ_FAM_*) and returns `action`. */
static __always_inline int verdict(__u32 fam, __u32 what, int action)
{
	count(fam + XQ_FAM_SEEN);
	count(fam + what);
	return action;
}

static __always_inline int filter_addrs(void)
{
	__u32 zero = 0;
	struct xq_config *cfg = bpf_map_lookup_elem(&config, &zero);

	return cfg && (cfg->flags & XQ_CFG_FILTER_ADDRS);
}

/* Takes a token from the bucket of `key` (made full, less this token, when it
 * is not there); returns whether there was one. Buckets are shared by the CPUs
 * without a lock: concurrent packets of one prefix may take a token twice or
 * refill it twice, a small error either way. */
static __always_inline int take_token(struct xq_bucket_key *key,
				      const struct xq_rate *rate)
{
	__u64 now = bpf_ktime_get_ns();
	struct xq_bucket *b = bpf_map_lookup_elem(&buckets, key);
	__u32 burst = rate->burst;
	__u32 per_sec = rate->per_sec;

	if (!b) {
		struct xq_bucket fresh = { .stamp_ns = now };

		if (burst == 0)
			return 0;
		fresh.tokens = burst - 1;
		bpf_map_update_elem(&buckets, key, &fresh, BPF_ANY);
		return 1;
	}
	if (per_sec && now > b->stamp_ns) {
		__u64 elapsed = now - b->stamp_ns;
		/* Whole seconds and the rest apart, so that no product overflows
		 * (under 2^35 s times a rate of at most 10^7; under 10^9 ns times
		 * that rate) and a long idle earns what its rate gives, no more. */
		__u64 add = elapsed / NSEC_PER_SEC * per_sec +
			elapsed % NSEC_PER_SEC * per_sec / NSEC_PER_SEC;

		if (add) {
			__u64 tokens = b->tokens + add;

			if (tokens >= burst) {
				b->tokens = burst;
				b->stamp_ns = now;
			} else {
				b->tokens = tokens;
				/* Keep the fraction of a token already earned. */
				b->stamp_ns += add * NSEC_PER_SEC / per_sec;
			}
		}
	}
	if (b->tokens == 0)
		return 0;
	b->tokens -= 1;
	return 1;
}

/* Takes a token of kind `kind` for the source prefix of `src` (4 or 16
 * octets: `fam`), as long as `prefix` bits. */
static __always_inline int admit(__u8 kind, __u32 fam, const __u8 *src,
				 __u32 prefix, const struct xq_rate *rate)
{
	struct xq_bucket_key key = {
		.kind = kind,
		.family = fam == XQ_CNT_V4 ? 4 : 6,
		.prefix = prefix,
	};
	int n = fam == XQ_CNT_V4 ? 4 : 16;

#pragma unroll
	for (int i = 0; i < 16; i++) {
		__u32 bits;

		if (i >= n)
			break;
		bits = prefix > 8 * i ? prefix - 8 * i : 0;
		if (bits >= 8)
			key.addr[i] = src[i];
		else if (bits > 0)
			key.addr[i] = src[i] & (__u8)(0xff << (8 - bits));
	}
	return take_token(&key, rate);
}

static __always_inline int spoken(const struct xq_shield *s, __u32 version)
{
	if (version == 0)
		return 0;
#pragma unroll
	for (int i = 0; i < XQ_MAX_VERSIONS; i++)
		if (s->versions[i] == version)
			return 1;
	return 0;
}

/* Whether the DCID of a short header (`p`: the QUIC payload, at least
 * XQ_MIN_QUIC_PAYLOAD octets before `end`) is in our layout. */
static __always_inline int our_cid(const struct xq_shield *s, const __u8 *p,
				   void *end)
{
	__u32 sid = s->sid_len;
	const __u8 *w;

	if ((void *)(p + XQ_MIN_QUIC_PAYLOAD) > end)
		return 0;
	if (p[1] != s->cid_first)
		return 0;
#pragma unroll
	for (int i = 0; i < XQ_MAX_SERVER_ID; i++)
		if (i < sid && p[2 + i] != s->server_id[i])
			return 0;
	w = p + 2 + (sid & 0xf);
	if ((void *)(w + 1) > end)
		return 0;
	return *w < s->workers;
}

/* Whether the DCID of a long header (`p`: the QUIC payload, at least
 * XQ_MIN_QUIC_PAYLOAD octets before `end`) is in our layout, its length octet
 * included. */
static __always_inline int our_long_cid(const struct xq_shield *s,
					const __u8 *p, void *end)
{
	if (p[5] != (s->cid_first & 0x1f) + 1)
		return 0;
	return our_cid(s, p + 5, end);
}

/* Whether the Initial at `p` (a datagram of at least XQ_MIN_INITIAL_DATAGRAM
 * octets) carries a token: a nonzero token length after the two CIDs. A
 * header that cannot be read counts as carrying none. */
static __always_inline int has_token(const __u8 *p, void *end)
{
	const __u8 *q;
	__u8 dcid, scid, b0;

	if ((void *)(p + 7) > end)
		return 0;
	dcid = p[5];
	if (dcid > XQ_MAX_CID_LEN)
		return 0;
	q = p + 6 + (dcid & 0x1f);
	if ((void *)(q + 1) > end)
		return 0;
	scid = *q;
	if (scid > XQ_MAX_CID_LEN)
		return 0;
	q += 1 + (scid & 0x1f);
	if ((void *)(q + 8) > end)
		return 0;
	/* A variable-length integer: 1, 2, 4 or 8 octets (two high bits). */
	b0 = q[0];
	if (b0 & 0x3f)
		return 1;
	switch (b0 >> 6) {
	case 0:
		return 0;
	case 1:
		return q[1] != 0;
	case 2:
		return (q[1] | q[2] | q[3]) != 0;
	default:
		return (q[1] | q[2] | q[3] | q[4] | q[5] | q[6] | q[7]) != 0;
	}
}

/* Whether the shield's admission is on and the worker of this packet's rx
 * queue says it is under pressure. */
static __always_inline int under_pressure(struct xdp_md *ctx,
					  const struct xq_shield *s)
{
	__u32 q = ctx->rx_queue_index;
	__u32 *pr;

	if (!(s->flags & XQ_SHIELD_ADMIT))
		return 0;
	pr = bpf_map_lookup_elem(&pressure, &q);
	return pr && *pr;
}

/* The shield's verdict on a service packet whose QUIC payload `p` of `len`
 * octets (at least XQ_MIN_QUIC_PAYLOAD, inside the packet) came from `src`:
 * 0 to steer it, else the XQ_FAM_* reason to drop it. */
static __always_inline __u32 shield_check(struct xdp_md *ctx, const __u8 *p,
					  void *end, __u32 len, __u32 fam,
					  const __u8 *src)
{
	__u32 zero = 0;
	struct xq_shield *s = bpf_map_lookup_elem(&shield, &zero);
	__u32 version;

	if (!s || !(s->flags & XQ_SHIELD_ON))
		return 0;
	if ((void *)(p + XQ_MIN_QUIC_PAYLOAD) > end)
		return 0;
	if (!(p[0] & 0x80)) {
		if ((s->flags & XQ_SHIELD_CID) && !our_cid(s, p, end))
			return XQ_FAM_FOREIGN_CID;
		return 0;
	}
	version = ((__u32)p[1] << 24) | ((__u32)p[2] << 16) |
		  ((__u32)p[3] << 8) | p[4];
	/* Version Negotiation: only servers send it (RFC 9000 17.2.1), so it
	 * can only answer a connection this host opened, whose CID is its DCID
	 * (at p + 6, its length at p + 5: our_cid reads p + 5 as a short
	 * header). Any other is dropped, whatever its size. */
	if (version == 0) {
		if ((s->flags & XQ_SHIELD_CID) && our_long_cid(s, p, end))
			return 0;
		return XQ_FAM_UNKNOWN_VERSION;
	}
	if (!spoken(s, version)) {
		if (len < XQ_MIN_INITIAL_DATAGRAM)
			return XQ_FAM_UNKNOWN_VERSION;
		if (!admit(XQ_BUCKET_VERSION, fam, src,
			   fam == XQ_CNT_V4 ? s->prefix4 : s->prefix6,
			   &s->version))
			return XQ_FAM_VERSION_RATE;
		count(XQ_CNT_VERSION_PASSED);
		return 0;
	}
	/* v1's long packet types: 0 Initial, 1 0-RTT, 2 Handshake, 3 Retry.
	 * A Handshake packet is sent once the peer has our CID (RFC 9000 7.2),
	 * and a Retry only by a server this host connected to: either way the
	 * DCID is ours. Initials and 0-RTT may carry a client's random DCID. */
	if (p[0] & 0x20) {
		if ((s->flags & XQ_SHIELD_CID) && !our_long_cid(s, p, end))
			return XQ_FAM_FOREIGN_CID;
		return 0;
	}
	/* 0-RTT, of any size: a DCID of at most 20 octets (RFC 9000 17.2), and
	 * either the client's first (at least 8 octets, 7.2) or, once it heard
	 * from us, ours. Under pressure, only ours: a client's first 0-RTT can
	 * be forged at any rate and size, and the client sends what it carried
	 * again in 1-RTT (after a Retry, its 0-RTT goes to our CID and passes).
	 * (p[5] lies within XQ_MIN_QUIC_PAYLOAD.) */
	if ((p[0] & 0x30) == 0x10) {
		if (p[5] > 20)
			return XQ_FAM_MALFORMED;
		if ((s->flags & XQ_SHIELD_CID) && !our_long_cid(s, p, end) &&
		    (p[5] < 8 || under_pressure(ctx, s)))
			return XQ_FAM_FOREIGN_CID;
		return 0;
	}
	/* An Initial whose DCID is ours is no new attempt: a client's after it
	 * heard from us (its ACK, its Finished coalesced behind), or a server's
	 * to a connection this host opened, which may be shorter than 1200
	 * octets when it only acknowledges (RFC 9000 14.1). Neither takes a
	 * token. (A forged one gains what a forged token gains: the worker's
	 * Retry policy stands behind both.) */
	if ((s->flags & XQ_SHIELD_CID) && our_long_cid(s, p, end))
		return 0;
	if (len < XQ_MIN_INITIAL_DATAGRAM)
		return XQ_FAM_SHORT_INITIAL;
	if (!under_pressure(ctx, s))
		return 0;
	if (has_token(p, end)) {
		count(XQ_CNT_WITH_TOKEN);
		return 0;
	}
	if (!admit(XQ_BUCKET_INITIAL, fam, src,
		   fam == XQ_CNT_V4 ? s->prefix4 : s->prefix6, &s->initial))
		return XQ_FAM_INITIAL_RATE;
	count(XQ_CNT_ADMITTED);
	return 0;
}

/* Decides for a UDP header `udp` of family `fam` whose destination address
 * matched (or is not filtered), from source address `src`; `l4len` is the
 * IP payload's length its IP header gives. `end` is the packet end. */
static __always_inline int steer_udp(struct xdp_md *ctx, struct udphdr *udp,
				     void *end, __u32 fam, const __u8 *src,
				     __u32 l4len)
{
	__u16 ulen = bpf_ntohs(udp->len);
	__u32 drop;

	/* The UDP length is the IP payload's: a datagram padded past it (to
	 * pass the 1200-octet rules, say) is malformed. */
	if (ulen < sizeof(*udp) + XQ_MIN_QUIC_PAYLOAD ||
	    (void *)udp + ulen > end || ulen != l4len)
		return verdict(fam, XQ_FAM_MALFORMED, XDP_DROP);

	drop = shield_check(ctx, (const __u8 *)(udp + 1), end,
			    ulen - sizeof(*udp), fam, src);
	if (drop)
		return verdict(fam, drop, XDP_DROP);

	/* The low bits of the flags are the action when no socket is
	 * registered at this key: the packet then goes to the kernel. */
	if (bpf_redirect_map(&xsks, ctx->rx_queue_index, XDP_PASS) ==
	    XDP_REDIRECT)
		return verdict(fam, XQ_FAM_REDIRECT, XDP_REDIRECT);
	return verdict(fam, XQ_FAM_NO_SOCKET, XDP_PASS);
}

static __always_inline int is_service_port(struct udphdr *udp)
{
	__u16 port = bpf_ntohs(udp->dest);

	return bpf_map_lookup_elem(&ports, &port) != NULL;
}

static __always_inline int handle_ipv4(struct xdp_md *ctx, void *l3, void *end)
{
	struct iphdr *ip = l3;
	struct udphdr *udp;
	__u32 hlen, tot;

	if ((void *)(ip + 1) > end || ip->version != 4 || ip->ihl < 5) {
		count(XQ_CNT_PASS_BAD_HEADER);
		return XDP_PASS;
	}
	if (ip->frag_off & bpf_htons(IPV4_MF | IPV4_OFFSET))
		return verdict(XQ_CNT_V4, XQ_FAM_FRAGMENT, XDP_PASS);
	if (ip->protocol != IPPROTO_UDP)
		return verdict(XQ_CNT_V4, XQ_FAM_NOT_UDP, XDP_PASS);

	hlen = ip->ihl * 4;
	udp = l3 + hlen;
	if ((void *)(udp + 1) > end) {
		count(XQ_CNT_PASS_BAD_HEADER);
		return XDP_PASS;
	}
	if (!is_service_port(udp))
		return verdict(XQ_CNT_V4, XQ_FAM_OTHER_PORT, XDP_PASS);
	if (filter_addrs() && !bpf_map_lookup_elem(&addrs4, &ip->daddr))
		return verdict(XQ_CNT_V4, XQ_FAM_OTHER_ADDR, XDP_PASS);
	tot = bpf_ntohs(ip->tot_len);
	return steer_udp(ctx, udp, end, XQ_CNT_V4, (const __u8 *)&ip->saddr,
			 tot >= hlen ? tot - hlen : 0);
}

static __always_inline int handle_ipv6(struct xdp_md *ctx, void *l3, void *end)
{
	struct ipv6hdr *ip6 = l3;
	struct udphdr *udp;
	struct xq_in6_addr daddr;

	if ((void *)(ip6 + 1) > end || ip6->version != 6) {
		count(XQ_CNT_PASS_BAD_HEADER);
		return XDP_PASS;
	}
	if (ip6->nexthdr == IPV6_NEXTHDR_FRAGMENT)
		return verdict(XQ_CNT_V6, XQ_FAM_FRAGMENT, XDP_PASS);
	if (ip6->nexthdr != IPPROTO_UDP)
		return verdict(XQ_CNT_V6, XQ_FAM_NOT_UDP, XDP_PASS);

	udp = (void *)(ip6 + 1);
	if ((void *)(udp + 1) > end) {
		count(XQ_CNT_PASS_BAD_HEADER);
		return XDP_PASS;
	}
	if (!is_service_port(udp))
		return verdict(XQ_CNT_V6, XQ_FAM_OTHER_PORT, XDP_PASS);
	if (filter_addrs()) {
		__builtin_memcpy(&daddr, &ip6->daddr, sizeof(daddr));
		if (!bpf_map_lookup_elem(&addrs6, &daddr))
			return verdict(XQ_CNT_V6, XQ_FAM_OTHER_ADDR, XDP_PASS);
	}
	return steer_udp(ctx, udp, end, XQ_CNT_V6,
			 (const __u8 *)&ip6->saddr, bpf_ntohs(ip6->payload_len));
}

SEC("xdp")
int xdp_quic(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	void *l3;
	__be16 proto;

	count(XQ_CNT_PACKETS);
	if ((void *)(eth + 1) > end) {
		count(XQ_CNT_PASS_BAD_HEADER);
		return XDP_PASS;
	}
	proto = eth->h_proto;
	l3 = eth + 1;
	if (proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD)) {
		struct vlan_tag *tag = l3;

		if ((void *)(tag + 1) > end) {
			count(XQ_CNT_PASS_BAD_HEADER);
			return XDP_PASS;
		}
		proto = tag->proto;
		l3 = tag + 1;
	}
	if (proto == bpf_htons(ETH_P_IP))
		return handle_ipv4(ctx, l3, end);
	if (proto == bpf_htons(ETH_P_IPV6))
		return handle_ipv6(ctx, l3, end);
	count(XQ_CNT_PASS_NOT_IP);
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
