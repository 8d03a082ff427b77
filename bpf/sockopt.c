/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */

#include "accel.h"
/*
 * cgroup/getsockopt: answer SO_ORIGINAL_DST (and IP6T_SO_ORIGINAL_DST) in a meshed pod, as
 * netfilter does under iptables, so an unmodified proxy finds the original destination.
 *
 * - A socket with a record (the proxy's side of a redirected connection, or the app's own
 *   redirected socket): the original destination.
 * - A redirected connection whose record was lost: ENOENT, what netfilter answers when it has
 *   no entry, and counted; never the socket's own address, which would send the proxy into
 *   itself.
 * - Any other connection (steered by sk_lookup, or not redirected at all): the socket's own
 *   local address, which is what netfilter answers for an accepted connection it did not NAT,
 *   and, for sk_lookup's connections, the original destination. When netfilter itself answered
 *   (Istio's rules are in place too), its answer stands.
 * Every other option passes through untouched, including those with an optlen over a page.
 */

int getsockopt(struct bpf_sockopt *ctx)
{
	if (ctx->optname != SO_ORIGINAL_DST || (ctx->level != SOL_IP && ctx->level != SOL_IPV6)) {
		if (ctx->optlen > ACCEL_PAGE_SIZE)
			ctx->optlen = 0;  /* the kernel's rule for "use the original buffer as is" */
		return SYS_PROCEED;
	}
	struct bpf_sock *sk = ctx->sk;

	if (!sk)
		return SYS_PROCEED;
	__u64 netns = bpf_get_netns_cookie(ctx);

	if (!pod_of(netns))
		return SYS_PROCEED;
	__u8 local[16], remote[16], addr[16];
	__u16 port;

	if (sk->family == AF_INET) {
		map_v4(local, sk->src_ip4);
		map_v4(remote, sk->dst_ip4);
	} else {
		LOAD_IP6(local, sk->src_ip6);
		LOAD_IP6(remote, sk->dst_ip6);
	}
	struct accel_origin *origin = socket_origins.sk_storage_get(sk, 0, 0);
	int lost_record = origin && origin->kind == ORIGIN_LOST;

	if (!origin) {
		/* the proxy's side whose record could not be stored with it: remembered in `lost` */
		struct accel_tuple t = {.netns = netns, .local_port = bpf_ntohs(sk->dst_port),
					.remote_port = sk->src_port};

		__builtin_memcpy(t.local, remote, 16);
		__builtin_memcpy(t.remote, local, 16);
		lost_record = lost.lookup(&t) != NULL;
	}
	if (lost_record) {
		COUNT(netns, lost);
		bpf_set_retval(-ENOENT);
		return SYS_PROCEED;
	}
	if (origin) {
		__builtin_memcpy(addr, origin->addr, 16);
		port = origin->port;
	} else {
		if (ctx->retval == 0)
			return SYS_PROCEED;  /* netfilter answered: keep it */
		__builtin_memcpy(addr, local, 16);
		port = bpf_htons(sk->src_port);
	}
	if (ctx->level == SOL_IP) {
		struct sockaddr_in *sin = ctx->optval;

		if (!is_mapped(addr) || (void *)(sin + 1) > ctx->optval_end)
			return SYS_PROCEED;
		sin->sin_family = AF_INET;
		sin->sin_port = port;
		sin->sin_addr.s_addr = v4_of(addr);
		*(volatile int *)&ctx->optlen = sizeof(*sin);
	} else {
		struct sockaddr_in6 *sin6 = ctx->optval;

		if ((void *)(sin6 + 1) > ctx->optval_end)
			return SYS_PROCEED;
		__builtin_memset(sin6, 0, sizeof(*sin6));
		sin6->sin6_family = AF_INET6;
		sin6->sin6_port = port;
		__builtin_memcpy(&sin6->sin6_addr, addr, 16);
		*(volatile int *)&ctx->optlen = sizeof(*sin6);
	}
	/* separate volatile stores: clang would merge optlen and retval into one 8-byte store,
	 * which the verifier refuses */
	*(volatile int *)&ctx->retval = 0;
	return SYS_PROCEED;
}
