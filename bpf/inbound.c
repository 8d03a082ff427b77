/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */

#include "accel.h"
/*
 * sk_lookup, one link per meshed pod's network namespace: a new inbound TCP connection for a
 * captured port is handed to the proxy's inbound listener instead of the app's socket. Nothing
 * is rewritten: the client's source address is kept, and the proxy's accepted socket has the
 * original destination as its local address (the TPROXY contract).
 *
 * It follows istio-iptables' inbound rules: REDIRECT mode never captures the tunnel port;
 * TPROXY mode does (its mangle chain has no tunnel rule). Connections from the pod itself (from
 * one of its local addresses) were decided at connect(), as iptables decides them in nat OUTPUT,
 * never in PREROUTING, and are left alone here. (ingress_ifindex cannot tell them: for a local
 * address of eth0 it is eth0's, as for traffic from outside. The kernel drops IPv4 packets from
 * outside that carry one of the namespace's own addresses as their source; IPv6 does not.)
 *
 * sk_lookup programs may not ask for their namespace's cookie, so each pod gets its own copy of
 * this program with the cookie written into it: the loader replaces every ACCEL_POD_NETNS.
 */

#define ACCEL_POD_NETNS 0x6163636c6e65746eULL  /* "acclnetn": replaced at load, per pod */

/* Hand the connection to the pod's listener of this family: 0, or why it could not. */
static __always_inline int assign(struct bpf_sk_lookup *ctx, __u64 netns, __u32 family)
{
	struct accel_listener_key key = {.netns = netns, .family = family};
	struct bpf_sock *listener = (struct bpf_sock *)listeners.lookup(&key);

	if (!listener)
		return -ENOENT;
	int error = bpf_sk_assign(ctx, listener, 0);

	bpf_sk_release(listener);
	return error;
}

int inbound(struct bpf_sk_lookup *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	__u64 netns = ACCEL_POD_NETNS;

	/* one ld_imm64 for the loader to find: clang must not fold the constant into its uses */
	asm volatile("" : "+r"(netns));
	struct accel_pod *pod = pod_of(netns);

	if (!pod || !(pod->flags & ACCEL_IN_CAPTURE))
		return SK_PASS;
	__u8 remote[16];

	if (ctx->family == AF_INET)
		map_v4(remote, ctx->remote_ip4);
	else
		LOAD_IP6(remote, ctx->remote_ip6);
	if (is_loopback(remote) || has_prefix(netns, PREFIX_LOCAL, remote))
		return SK_PASS;
	if (ctx->family == AF_INET6 && !(pod->flags & ACCEL_IPV6))
		return SK_PASS;
	__u16 port = ctx->local_port;

	if (pod->flags & ACCEL_IN_ALL) {
		if (!(pod->flags & ACCEL_TPROXY) && port == pod->tunnel_port)
			return SK_PASS;
		if ((pod->flags & ACCEL_HAS_IN_PORTS_EXCLUDE) && has_port(pod->config, port, PORT_IN_EXCLUDE))
			return SK_PASS;
	} else if (!has_port(pod->config, port, PORT_IN_INCLUDE)) {
		return SK_PASS;
	}
	int error = assign(ctx, netns, ctx->family);

	if (error && ctx->family == AF_INET)
		error = assign(ctx, netns, AF_INET6);  /* a dual-stack IPv6 listener takes IPv4 too */
	if (error) {
		/* captured, but no proxy listener can take it (none listens, or only an IPv6-only one
		 * for an IPv4 connection): refused, as REDIRECT to a port nobody listens on is, and
		 * never handed to the app uncaptured */
		COUNT(netns, refused);
		return SK_DROP;
	}
	COUNT(netns, inbound);
	return SK_PASS;
}
