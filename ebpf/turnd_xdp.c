// SPDX-License-Identifier: MIT OR GPL-2.0
//
// turnd's XDP fast path for ChannelData over UDP/IPv4 (built only with the cargo
// feature `xdp`; loaded by src/net/xdp.rs). Two directions are handled in the
// driver hook, everything else goes up to the sockets unchanged (XDP_PASS):
//
//   client -> listener: ChannelData whose (client, listener, channel) is in
//     `chan_in` loses its 4-byte header and leaves as UDP from the relay address
//     to the bound peer;
//   peer -> relay: UDP whose (peer, relay) is in `chan_out` gains a ChannelData
//     header and leaves as UDP from the listener to the client.
//
// The maps are written by turnd's workers from what the core says may be relayed
// without it (see src/turn/offload.rs); the core stays the source of truth. Every
// entry carries an expiry (CLOCK_MONOTONIC ns, the clock of bpf_ktime_get_ns), so
// a binding or permission that runs out stops being relayed here at once, before
// the worker removes the entry. Addresses and ports are kept in network order,
// exactly as in the packet.

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#define CHANNEL_HEADER 4
#define ETH_IP_UDP (sizeof(struct ethhdr) + sizeof(struct iphdr) + sizeof(struct udphdr))
// Entries are bounded by the channel quotas; a full map only means that channel
// stays on the socket path.
#define MAX_CHANNELS 65536
#define AF_INET 2

struct in_key {
	__u32 client_ip;
	__u32 server_ip;
	__u16 client_port;
	__u16 server_port;
	__u16 channel;
	__u16 pad;
};

struct in_val {
	__u32 peer_ip;
	__u32 relay_ip;
	__u16 peer_port;
	__u16 relay_port;
	__u32 pad;
	__u64 expires_ns;
};

struct out_key {
	__u32 peer_ip;
	__u32 relay_ip;
	__u16 peer_port;
	__u16 relay_port;
};

struct out_val {
	struct in_key client;
	__u64 expires_ns;
};

// Per channel, per CPU; keyed like chan_in so both directions find it.
struct counters {
	__u64 to_peer_packets;
	__u64 to_peer_bytes;
	__u64 to_client_packets;
	__u64 to_client_bytes;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_CHANNELS);
	__type(key, struct in_key);
	__type(value, struct in_val);
} chan_in SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, MAX_CHANNELS);
	__type(key, struct out_key);
	__type(value, struct out_val);
} chan_out SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__uint(max_entries, MAX_CHANNELS);
	__type(key, struct in_key);
	__type(value, struct counters);
} counters SEC(".maps");

static __always_inline __u16 ip_checksum(struct iphdr *ip)
{
	__u32 sum = 0;
	__u16 *words = (__u16 *)ip;
	ip->check = 0;
#pragma unroll
	for (int i = 0; i < (int)(sizeof(struct iphdr) / 2); i++)
		sum += words[i];
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)~sum;
}

// The next hop for (src -> dst) out of the interface the packet came in on; the
// route lookup also checks the new packet fits the MTU. 0: no route, no neighbour
// yet, or too big: the socket path sends this one (and resolves the neighbour).
static __always_inline int next_hop(struct xdp_md *ctx, struct bpf_fib_lookup *fib, __u32 src, __u32 dst,
				    __u16 ip_len)
{
	__builtin_memset(fib, 0, sizeof(*fib));
	fib->family = AF_INET;
	fib->l4_protocol = IPPROTO_UDP;
	fib->tot_len = ip_len;
	fib->ipv4_src = src;
	fib->ipv4_dst = dst;
	fib->ifindex = ctx->ingress_ifindex;
	return bpf_fib_lookup(ctx, fib, sizeof(*fib), BPF_FIB_LOOKUP_OUTPUT) == BPF_FIB_LKUP_RET_SUCCESS;
}

static __always_inline void write_headers(struct ethhdr *eth, struct iphdr *ip, struct udphdr *udp,
					  struct bpf_fib_lookup *fib, __u32 src, __u32 dst, __u16 sport,
					  __u16 dport, __u16 udp_len)
{
	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	eth->h_proto = bpf_htons(ETH_P_IP);
	// A fresh header, as the relay socket would send it.
	ip->version = 4;
	ip->ihl = 5;
	ip->tos = 0;
	ip->tot_len = bpf_htons(sizeof(struct iphdr) + udp_len);
	ip->id = 0;
	ip->frag_off = bpf_htons(0x4000); // DF, as Linux sends UDP with path MTU discovery
	ip->ttl = 64;
	ip->protocol = IPPROTO_UDP;
	ip->saddr = src;
	ip->daddr = dst;
	ip->check = ip_checksum(ip);
	udp->source = sport;
	udp->dest = dport;
	udp->len = bpf_htons(udp_len);
	// RFC 768: zero means no checksum, allowed over IPv4.
	udp->check = 0;
}

static __always_inline int send(struct xdp_md *ctx, struct bpf_fib_lookup *fib)
{
	if (fib->ifindex == ctx->ingress_ifindex)
		return XDP_TX;
	return bpf_redirect(fib->ifindex, 0);
}

// client -> peer: strip the ChannelData header (and anything after its data: RFC
// 8656 §12.5 lets padding follow over UDP, and the socket path ignores it too).
static __always_inline int to_peer(struct xdp_md *ctx, struct in_key *key, __u16 udp_len, __u16 data_len)
{
	struct in_val *val = bpf_map_lookup_elem(&chan_in, key);
	if (!val)
		return XDP_PASS;
	if (bpf_ktime_get_ns() >= val->expires_ns)
		return XDP_PASS;
	if ((__u32)CHANNEL_HEADER + data_len > (__u32)udp_len - sizeof(struct udphdr))
		return XDP_PASS;
	struct counters *count = bpf_map_lookup_elem(&counters, key);
	if (!count)
		return XDP_PASS;
	__u32 relay_ip = val->relay_ip, peer_ip = val->peer_ip;
	__u16 relay_port = val->relay_port, peer_port = val->peer_port;
	__u16 out_udp = sizeof(struct udphdr) + data_len;
	struct bpf_fib_lookup fib;
	if (!next_hop(ctx, &fib, relay_ip, peer_ip, sizeof(struct iphdr) + out_udp))
		return XDP_PASS;

	long frame = (long)ctx->data_end - (long)ctx->data;
	long extra = frame - (long)(ETH_IP_UDP + CHANNEL_HEADER + data_len);
	if (extra > 0 && bpf_xdp_adjust_tail(ctx, (int)-extra))
		return XDP_PASS;
	if (bpf_xdp_adjust_head(ctx, CHANNEL_HEADER))
		return XDP_ABORTED;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (data + ETH_IP_UDP > data_end)
		return XDP_ABORTED;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	write_headers(eth, ip, udp, &fib, relay_ip, peer_ip, relay_port, peer_port, out_udp);
	count->to_peer_packets += 1;
	count->to_peer_bytes += data_len;
	return send(ctx, &fib);
}

// peer -> client: prepend the ChannelData header; over UDP no padding (§12.5).
static __always_inline int to_client(struct xdp_md *ctx, struct out_key *key, __u16 udp_len)
{
	struct out_val *val = bpf_map_lookup_elem(&chan_out, key);
	if (!val)
		return XDP_PASS;
	if (bpf_ktime_get_ns() >= val->expires_ns)
		return XDP_PASS;
	struct in_key client = val->client;
	struct counters *count = bpf_map_lookup_elem(&counters, &client);
	if (!count)
		return XDP_PASS;
	__u16 data_len = udp_len - sizeof(struct udphdr);
	if (data_len > 0xffff - sizeof(struct iphdr) - sizeof(struct udphdr) - CHANNEL_HEADER)
		return XDP_PASS;
	__u16 out_udp = sizeof(struct udphdr) + CHANNEL_HEADER + data_len;
	struct bpf_fib_lookup fib;
	if (!next_hop(ctx, &fib, client.server_ip, client.client_ip, sizeof(struct iphdr) + out_udp))
		return XDP_PASS;
	if (bpf_xdp_adjust_head(ctx, -CHANNEL_HEADER))
		return XDP_PASS;
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	if (data + ETH_IP_UDP + CHANNEL_HEADER > data_end)
		return XDP_ABORTED;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);
	struct udphdr *udp = (void *)(ip + 1);
	__u16 *channel = (void *)(udp + 1);
	write_headers(eth, ip, udp, &fib, client.server_ip, client.client_ip, client.server_port,
		      client.client_port, out_udp);
	channel[0] = client.channel;
	channel[1] = bpf_htons(data_len);
	count->to_client_packets += 1;
	count->to_client_bytes += data_len;
	return send(ctx, &fib);
}

SEC("xdp")
int turnd_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP))
		return XDP_PASS;
	struct iphdr *ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > data_end)
		return XDP_PASS;
	// No options, no fragments (MF set or an offset): those go up.
	if (ip->version != 4 || ip->ihl != 5 || ip->protocol != IPPROTO_UDP || (ip->frag_off & bpf_htons(0x3fff)))
		return XDP_PASS;
	struct udphdr *udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > data_end)
		return XDP_PASS;
	__u16 ip_len = bpf_ntohs(ip->tot_len);
	__u16 udp_len = bpf_ntohs(udp->len);
	if (udp_len < sizeof(struct udphdr) || ip_len != sizeof(struct iphdr) + udp_len ||
	    (void *)ip + ip_len > data_end)
		return XDP_PASS;

	__u16 *channel = (void *)(udp + 1);
	if ((void *)(channel + 2) <= data_end) {
		struct in_key in = {
			.client_ip = ip->saddr,
			.server_ip = ip->daddr,
			.client_port = udp->source,
			.server_port = udp->dest,
			.channel = channel[0],
		};
		int verdict = to_peer(ctx, &in, udp_len, bpf_ntohs(channel[1]));
		// Not a bound channel of this listener: it may still be a peer's datagram.
		if (verdict != XDP_PASS)
			return verdict;
	}
	// Re-read: to_peer only changes the packet when it does not pass it.
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	ip = data + sizeof(struct ethhdr);
	udp = (void *)(ip + 1);
	if ((void *)(udp + 1) > data_end)
		return XDP_PASS;
	struct out_key out = {
		.peer_ip = ip->saddr,
		.relay_ip = ip->daddr,
		.peer_port = udp->source,
		.relay_port = udp->dest,
	};
	return to_client(ctx, &out, udp_len);
}

char LICENSE[] SEC("license") = "Dual MIT/GPL";
