/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */

#include "accel.h"
/*
 * cgroup/getsockopt: answer SO_ORIGINAL_DST (and IP6T_SO_ORIGINAL_DST) for the proxy, as
 * netfilter does under iptables, so an unmodified proxy finds the original destination.
 *
 * The proxy's accepted socket is the other end of the app's captured one: its remote address is
 * the app's local one. With a record, the answer is the app's original destination. Without one
 * (a connection steered by sk_lookup, or one nobody captured), it is the socket's own local
 * address, which is what netfilter answers for a tracked connection it did not NAT, and, for
 * sk_lookup's connections, the original destination. Every other option passes through
 * untouched, including those with an optlen over a page.
 */

int getsockopt(struct bpf_sockopt *ctx)
{
	if (ctx->optname != SO_ORIGINAL_DST || (ctx->level != SOL_IP && ctx->level != SOL_IPV6)) {
		if (ctx->optlen > ACCEL_PAGE_SIZE)
			ctx->optlen = 0;  /* the kernel's rule for "use the original buffer as is" */
		return 1;
	}
	struct bpf_sock *sk = ctx->sk;

	if (!sk)
		return 1;
	__u64 netns = bpf_get_netns_cookie(ctx);

	if (!pods.lookup(&netns))
		return 1;
	struct accel_tuple t = {.netns = netns};

	if (sk->family == AF_INET) {
		map_v4(t.local, sk->dst_ip4);
		map_v4(t.remote, sk->src_ip4);
	} else {
		LOAD_IP6(t.local, sk->dst_ip6);
		LOAD_IP6(t.remote, sk->src_ip6);
	}
	t.local_port = bpf_ntohs(sk->dst_port);
	t.remote_port = sk->src_port;
	struct accel_origin *origin = tuple_origins.lookup(&t);
	__u8 addr[16];
	__u16 port;

	if (origin) {
		__builtin_memcpy(addr, origin->addr, 16);
		port = origin->port;
	} else {
		if (ctx->retval == 0)
			return 1;  /* netfilter answered (Istio's own rules are in place too): keep it */
		__builtin_memcpy(addr, t.remote, 16);
		port = bpf_htons(t.remote_port);
	}
	if (ctx->level == SOL_IP) {
		struct sockaddr_in *sin = ctx->optval;

		if (!is_mapped(addr) || (void *)(sin + 1) > ctx->optval_end)
			return 1;
		sin->sin_family = AF_INET;
		sin->sin_port = port;
		sin->sin_addr.s_addr = v4_of(addr);
		*(volatile int *)&ctx->optlen = sizeof(*sin);
	} else {
		struct sockaddr_in6 *sin6 = ctx->optval;

		if ((void *)(sin6 + 1) > ctx->optval_end)
			return 1;
		__builtin_memset(sin6, 0, sizeof(*sin6));
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = port;
		__builtin_memcpy(&sin6->sin6_addr, addr, 16);
		*(volatile int *)&ctx->optlen = sizeof(*sin6);
	}
	/* separate volatile stores: clang would merge optlen and retval into one 8-byte store,
	 * which the verifier refuses */
	*(volatile int *)&ctx->retval = 0;
	return 1;
}
