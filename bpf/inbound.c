/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */

#include "accel.h"
#include "decide.h"
/*
 * sk_lookup, one link per meshed pod's network namespace, for each new TCP connection:
 * - a captured connect of the pod (connect.c sent it to one of the proxy's spread ports, and
 *   sockops filed its record by 4-tuple): handed to the proxy's outbound listener, or for the
 *   proxy's hairpin its inbound listener;
 * - inbound for a captured port: handed to the proxy's inbound listener instead of the app's
 *   socket. Nothing is rewritten: the client's source address is kept, and the proxy's
 *   accepted socket has the original destination as its local address (the TPROXY contract).
 *
 * Which connections it captures is decide_inbound() (decide.h), after istio-iptables' inbound
 * rules: REDIRECT mode never captures the tunnel port; TPROXY mode does (its mangle chain has no
 * tunnel rule). Connections from the pod itself are left alone. (ingress_ifindex cannot tell
 * them: for a local address of eth0 it is eth0's, as for traffic from outside. The kernel drops
 * IPv4 packets from outside that carry one of the namespace's own addresses as their source;
 * IPv6 does not.)
 *
 * sk_lookup programs may not ask for their namespace's cookie, so each pod gets its own copy of
 * this program with the cookie written into it: the loader replaces every ACCEL_POD_NETNS.
 */

#define ACCEL_POD_NETNS 0x6163636c6e65746eULL  /* "acclnetn": replaced at load, per pod */

/* Hand the connection to the pod's listener of this family on `port`: 0, or why it could not. */
static __always_inline int assign(struct bpf_sk_lookup *ctx, __u64 netns, __u32 family, __u16 port)
{
	struct accel_listener_key key = {.netns = netns, .family = family, .port = port};
	struct bpf_sock *listener = (struct bpf_sock *)listeners.lookup(&key);

	if (!listener)
		return -ENOENT;
	int error = bpf_sk_assign(ctx, listener, 0);

	bpf_sk_release(listener);
	return error;
}

/* To the proxy's listener on `port`: SK_PASS, or SK_DROP (counted) when none can take it (none
 * listens, or only an IPv6-only one for an IPv4 connection): refused, as REDIRECT to a port
 * nobody listens on is, and never handed to anyone else uncaptured. */
static __always_inline int steer(struct bpf_sk_lookup *ctx, __u64 netns, __u16 port)
{
	int error = assign(ctx, netns, ctx->family, port);

	if (error && ctx->family == AF_INET)
		error = assign(ctx, netns, AF_INET6, port);  /* a dual-stack IPv6 listener takes IPv4 too */
	if (error) {
		COUNT(netns, refused);
		return SK_DROP;
	}
	return SK_PASS;
}

/* The ORIGIN_* kind of the captured connect this SYN belongs to (its record is filed by 4-tuple
 * at TCP_CONNECT_CB, before the SYN is sent), or 0: not one. */
static __always_inline int handed_off(struct bpf_sk_lookup *ctx, __u64 netns)
{
	struct accel_tuple t = {.netns = netns, .local_port = bpf_ntohs(ctx->remote_port),
				.remote_port = ctx->local_port};

	if (ctx->family == AF_INET) {
		map_v4(t.local, ctx->remote_ip4);
		map_v4(t.remote, ctx->local_ip4);
	} else {
		LOAD_IP6(t.local, ctx->remote_ip6);
		LOAD_IP6(t.remote, ctx->local_ip6);
	}
	struct accel_origin *record = handoffs.lookup(&t);

	if (record)
		return record->kind;
	__u8 *kind = lost.lookup(&t);

	return kind ? *kind : 0;
}

int inbound(struct bpf_sk_lookup *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	__u64 netns = ACCEL_POD_NETNS;

	/* one ld_imm64 for the loader to find: clang must not fold the constant into its uses */
	asm volatile("" : "+r"(netns));
	struct accel_pod *pod = pod_of(netns);

	if (!pod)
		return SK_PASS;
	__u16 local_port = ctx->local_port;

	if (local_port >= 1 && local_port <= ACCEL_SPREAD_PORTS) {
		int kind = handed_off(ctx, netns);

		if (kind)  /* the proxy's hairpin goes to the inbound listener, everything else outbound */
			return steer(ctx, netns, kind == ORIGIN_INBOUND ? pod->inbound_port : pod->proxy_port);
	}
	__u8 remote[16];

	if (ctx->family == AF_INET)
		map_v4(remote, ctx->remote_ip4);
	else
		LOAD_IP6(remote, ctx->remote_ip6);
	if (decide_inbound(netns, pod, remote, ctx->family == AF_INET, local_port) != VERDICT_INBOUND)
		return SK_PASS;
	int verdict = steer(ctx, netns, pod->inbound_port);

	if (verdict == SK_PASS)
		COUNT(netns, inbound);
	return verdict;
}
