// SPDX-License-Identifier: MIT OR Apache-2.0
/*
 * xdp-quic steering program.
 *
 * Steers UDP packets addressed to a service port (and, when configured, to a
 * service address) into the AF_XDP socket registered for the rx queue the
 * packet arrived on. Everything else goes to the kernel (XDP_PASS). Service
 * packets that cannot hold a QUIC packet are dropped. Every decision is
 * counted in the per-CPU "counters" map; see xdp_quic.h for the contract.
 *
 * Parsing: Ethernet, at most one 802.1Q / 802.1ad tag, IPv4 (any header
 * length; fragments pass), IPv6 (UDP as the next header; any extension
 * header passes), UDP. No loops: the verifier sees straight-line code.
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

/* Decides for a UDP header `udp` of family `fam` whose destination address
 * matched (or is not filtered). `end` is the packet end. */
static __always_inline int steer_udp(struct xdp_md *ctx, struct udphdr *udp,
				     void *end, __u32 fam)
{
	__u16 ulen = bpf_ntohs(udp->len);

	if (ulen < sizeof(*udp) + XQ_MIN_QUIC_PAYLOAD ||
	    (void *)udp + ulen > end)
		return verdict(fam, XQ_FAM_MALFORMED, XDP_DROP);

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
	__u32 hlen;

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
	return steer_udp(ctx, udp, end, XQ_CNT_V4);
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
	return steer_udp(ctx, udp, end, XQ_CNT_V6);
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
