/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */

#include "accel.h"
#include "decide.h"
/*
 * cgroup/connect4, cgroup/connect6: capture a meshed pod's TCP (and connected UDP DNS) at
 * connect(), before a packet exists, so there is no NAT and no conntrack.
 *
 * The destination becomes the proxy (for TCP on a port of its own, see spread_port), chosen so that the kernel picks the source
 * address the iptables rules would have left: the pod's address for a remote destination, the
 * local address itself for a local one (the proxy's hairpin), loopback for loopback. The
 * original destination is kept with the socket for getsockopt(SO_ORIGINAL_DST) and
 * getpeername(). A connect that is not captured clears what an earlier connect of the same
 * socket left, and a capture that cannot keep its record fails the connect rather than letting
 * the connection out uncaptured.
 */

/* Where the proxy is reached for this verdict; returns the port (host order) and fills addr. TCP
 * to the outbound or inbound listener goes to the port spread_port() gives the original
 * destination, which sk_lookup hands to that listener (inbound.c): the destinations keep port
 * spaces of their own, as under REDIRECT. */
static __always_inline __u16 proxy_address(__u64 netns, const struct accel_pod *pod, int verdict,
					   const struct accel_flow *f, __u8 *addr)
{
	if (verdict == VERDICT_INBOUND) {  /* the destination is local: keep it, change the port */
		__builtin_memcpy(addr, f->dst, 16);
		return spread_port(f->dst, f->port);
	}
	if (verdict == VERDICT_DNS) {  /* the agent's DNS proxy listens on loopback only */
		loopback_of(addr, f->v4);
		return pod->dns_port;
	}
	struct accel_sources *sources = sources_of(netns);

	if (is_loopback(f->dst)) {
		loopback_of(addr, f->v4);
	} else if (f->local) {
		__builtin_memcpy(addr, f->dst, 16);
	} else if (f->v4 && sources && (sources->flags & SOURCE_HAS_V4)) {
		map_v4(addr, sources->v4);
	} else if (!f->v4 && sources && (sources->flags & SOURCE_HAS_V6)) {
		__builtin_memcpy(addr, sources->v6, 16);
	} else {
		loopback_of(addr, f->v4);
	}
	return f->tcp ? spread_port(f->dst, f->port) : pod->proxy_port;
}

/* bind() to the pod's address, when the destination is not local and nothing is bound: the
 * source iptables' REDIRECT would have kept while the destination becomes loopback. */
static __always_inline void bind_pod_address(struct bpf_sock_addr *ctx, __u64 netns, int v4, int socket_v6)
{
	struct accel_sources *sources = sources_of(netns);

	if (!sources)
		return;
	if (socket_v6) {
		struct sockaddr_in6 sa = {.sin6_family = AF_INET6};

		if (v4) {
			if (!(sources->flags & SOURCE_HAS_V4))
				return;
			map_v4((__u8 *)&sa.sin6_addr, sources->v4);
		} else {
			if (!(sources->flags & SOURCE_HAS_V6))
				return;
			__builtin_memcpy(&sa.sin6_addr, sources->v6, 16);
		}
		bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa));
	} else if (sources->flags & SOURCE_HAS_V4) {
		struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = sources->v4};

		bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa));
	}
}

static __always_inline int capture(struct bpf_sock_addr *ctx, struct accel_flow *f, int socket_v6, int bound)
{
	__u64 netns;
	struct accel_pod *pod;
	int verdict = decide_for_caller(ctx, f, &netns, &pod);

	if (!pod)
		return SYS_PROCEED;
	if (verdict == VERDICT_PASS) {
		/* The socket connects again (TCP after a failed connect, UDP at any time): what an
		 * earlier, captured connect recorded is not this connection's. */
		socket_origins.sk_storage_delete(ctx->sk);
		COUNT(netns, passed);
		return SYS_PROCEED;
	}
	if (f->from_loopback && !f->local) {
		/* Bound to loopback, to a destination off lo: the kernel refuses the route (EINVAL)
		 * before iptables' NAT could act. Steered to the proxy it would find one: refuse alike. */
		socket_origins.sk_storage_delete(ctx->sk);
		bpf_set_retval(-EINVAL);
		return SYS_REJECT;
	}
	__u8 kind = verdict == VERDICT_INBOUND ? ORIGIN_INBOUND : verdict == VERDICT_DNS ? ORIGIN_DNS : ORIGIN_OUTBOUND;

	if (!record_origin(ctx->sk, netns, f->dst, f->port, kind, pod->flags & ACCEL_SHORTCUT)) {
		bpf_set_retval(-ENOBUFS);
		return SYS_REJECT;
	}
	__u8 addr[16];
	__u16 port = proxy_address(netns, pod, verdict, f, addr);

	if (verdict == VERDICT_INBOUND) {
		COUNT(netns, inbound);
	} else if (verdict == VERDICT_DNS) {
		COUNT(netns, dns);
		if (!f->local && !bound)
			bind_pod_address(ctx, netns, f->v4, socket_v6);
	} else {
		COUNT(netns, outbound);
	}
	set_user_address(ctx, addr, bpf_htons(port), socket_v6);
	return SYS_PROCEED;
}

/* TCP (and MPTCP, whose subflows are TCP to iptables' -p tcp) or UDP: the protocols the rules
 * name. SCTP, UDP-Lite, ping sockets and the rest are not ours. */
static __always_inline int ours(struct bpf_sock_addr *ctx, struct accel_flow *f)
{
	__u32 protocol = ctx->protocol;

	f->tcp = protocol == IPPROTO_TCP || protocol == IPPROTO_MPTCP_;
	return f->tcp || protocol == IPPROTO_UDP;
}

int connect4(struct bpf_sock_addr *ctx)
{
	struct accel_flow f = {.v4 = 1};
	struct bpf_sock *sk = ctx->sk;

	if (!sk || !ours(ctx, &f))
		return SYS_PROCEED;
	__u32 src = sk->src_ip4;
	__u32 dst = ctx->user_ip4;

	/* connect(0.0.0.0): the kernel connects to the socket's own address, or to 127.0.0.1
	 * (ip_route_output_key_hash_rcu), over lo */
	if (dst == 0) {
		dst = src ? src : bpf_htonl(0x7f000001);
		f.self = 1;
	}
	map_v4(f.dst, dst);
	f.port = bpf_ntohs((__u16)ctx->user_port);
	f.passthrough = src == bpf_htonl(0x7f000006);
	f.from_loopback = (src & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000);
	f.mark = sk->mark;
	return capture(ctx, &f, 0, src != 0);
}

int connect6(struct bpf_sock_addr *ctx)
{
	struct accel_flow f = {};
	struct bpf_sock *sk = ctx->sk;

	if (!sk || !ours(ctx, &f))
		return SYS_PROCEED;
	__u8 src[16];

	LOAD_IP6(f.dst, ctx->user_ip6);
	LOAD_IP6(src, sk->src_ip6);
	if (is_unspecified(f.dst)) {
		f.self = 1;
		/* tcp_v6_connect, __ip6_datagram_connect: :: is ::1, or 127.0.0.1 for a socket bound to
		 * an IPv4-mapped address; ::ffff:0.0.0.0 is connect(0.0.0.0) on the IPv4 path */
		if (is_mapped(f.dst) && is_mapped(src) && v4_of(src))
			__builtin_memcpy(f.dst, src, 16);
		else
			loopback_of(f.dst, is_mapped(f.dst) || is_mapped(src));
	}
	f.v4 = is_mapped(f.dst);  /* an IPv4 peer through an IPv6 socket: IPv4 rules apply */
	f.port = bpf_ntohs((__u16)ctx->user_port);
	f.passthrough = f.v4 ? is_mapped(src) && v4_of(src) == bpf_htonl(0x7f000006) : is_v6_low(src, 6);
	f.from_loopback = is_loopback(src);
	f.mark = sk->mark;
	return capture(ctx, &f, 1, !is_v6_low(src, 0));
}
