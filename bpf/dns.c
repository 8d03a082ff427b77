/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */

#include "accel.h"
#include "decide.h"
/*
 * cgroup/sendmsg4/6, cgroup/recvmsg4/6: DNS over unconnected UDP. A datagram to port 53 that
 * istio-iptables would capture goes to the agent's DNS proxy on loopback; its answer, coming
 * back from there, is shown to the app as coming from the server it asked. (Connected UDP and
 * TCP are captured by connect4/6, which leaves the same record.)
 *
 * Like every per-socket record this keeps one server per socket: a socket asking two servers
 * at once would see both answers as from the last one asked.
 */

static __always_inline int capture_datagram(struct bpf_sock_addr *ctx, struct accel_flow *f, int socket_v6,
					    int sourced)
{
	__u64 netns;
	struct accel_pod *pod;
	int verdict = decide_for_caller(ctx, f, &netns, &pod);

	if (!pod)
		return SYS_PROCEED;
	if (verdict != VERDICT_DNS) {
		COUNT(netns, passed);
		return SYS_PROCEED;
	}
	if (!record_origin(ctx->sk, netns, f->dst, f->port, ORIGIN_DNS, 0)) {
		bpf_set_retval(-ENOBUFS);  /* the answer could not be shown as from the server asked */
		return SYS_REJECT;
	}
	COUNT(netns, dns);
	/* the source REDIRECT would have kept, when neither the socket nor the message names one */
	struct accel_sources *sources = f->local || sourced ? NULL : sources_of(netns);

	__u8 addr[16];

	loopback_of(addr, f->v4);
	set_user_address(ctx, addr, bpf_htons(pod->dns_port), socket_v6);
	if (socket_v6) {
		if (sources && f->v4 && (sources->flags & SOURCE_HAS_V4)) {
			ctx->msg_src_ip6[2] = bpf_htonl(0x0000ffff);
			ctx->msg_src_ip6[3] = sources->v4;
		} else if (sources && !f->v4 && (sources->flags & SOURCE_HAS_V6)) {
			__u32 w[4];

			__builtin_memcpy(w, sources->v6, 16);
			ctx->msg_src_ip6[0] = w[0];
			ctx->msg_src_ip6[1] = w[1];
			ctx->msg_src_ip6[2] = w[2];
			ctx->msg_src_ip6[3] = w[3];
		}
	} else if (sources && (sources->flags & SOURCE_HAS_V4)) {
		ctx->msg_src_ip4 = sources->v4;
	}
	return SYS_PROCEED;
}

int sendmsg4(struct bpf_sock_addr *ctx)
{
	struct accel_flow f = {.v4 = 1};
	struct bpf_sock *sk = ctx->sk;

	if (!sk || ctx->protocol != IPPROTO_UDP)
		return SYS_PROCEED;
	/* the datagram's source: the message's (IP_PKTINFO), else the socket's */
	__u32 src = ctx->msg_src_ip4 ? ctx->msg_src_ip4 : sk->src_ip4;
	__u32 dst = ctx->user_ip4;

	if (dst == 0) {  /* to 0.0.0.0: the kernel sends it to the source, or 127.0.0.1 */
		dst = src ? src : bpf_htonl(0x7f000001);
		f.self = 1;
	}
	map_v4(f.dst, dst);
	f.port = bpf_ntohs((__u16)ctx->user_port);
	f.passthrough = src == bpf_htonl(0x7f000006);
	return capture_datagram(ctx, &f, 0, src != 0);
}

int sendmsg6(struct bpf_sock_addr *ctx)
{
	struct accel_flow f = {};
	struct bpf_sock *sk = ctx->sk;

	if (!sk || ctx->protocol != IPPROTO_UDP)
		return SYS_PROCEED;
	__u8 src[16];

	LOAD_IP6(src, ctx->msg_src_ip6);
	if (is_v6_low(src, 0))
		LOAD_IP6(src, sk->src_ip6);
	LOAD_IP6(f.dst, ctx->user_ip6);
	if (is_unspecified(f.dst)) {  /* udpv6_sendmsg: :: is ::1; ::ffff:0.0.0.0 takes the IPv4 path */
		f.self = 1;
		if (is_mapped(f.dst) && is_mapped(src) && v4_of(src))
			__builtin_memcpy(f.dst, src, 16);
		else
			loopback_of(f.dst, is_mapped(f.dst));
	}
	f.v4 = is_mapped(f.dst);
	f.port = bpf_ntohs((__u16)ctx->user_port);
	f.passthrough = f.v4 ? is_mapped(src) && v4_of(src) == bpf_htonl(0x7f000006) : is_v6_low(src, 6);
	return capture_datagram(ctx, &f, 1, !is_v6_low(src, 0));
}

/* An answer from the DNS proxy on a socket that asked a server: from that server. */
static __always_inline int original_source(struct bpf_sock_addr *ctx, const __u8 *source, int socket_v6)
{
	struct accel_origin *origin = socket_origins.sk_storage_get(ctx->sk, 0, 0);

	if (!origin || origin->role != ROLE_APP || origin->kind != ORIGIN_DNS)
		return SYS_PROCEED;
	__u64 netns = bpf_get_netns_cookie(ctx);
	struct accel_pod *pod = pod_of(netns);

	if (!pod || ctx->user_port != bpf_htons(pod->dns_port) || !is_loopback(source))
		return SYS_PROCEED;
	set_user_address(ctx, origin->addr, origin->port, socket_v6);
	return SYS_PROCEED;
}

int recvmsg4(struct bpf_sock_addr *ctx)
{
	__u8 source[16];

	map_v4(source, ctx->user_ip4);
	return original_source(ctx, source, 0);
}

int recvmsg6(struct bpf_sock_addr *ctx)
{
	__u8 source[16];

	LOAD_IP6(source, ctx->user_ip6);
	return original_source(ctx, source, 1);
}
