/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */

#include "accel.h"
#include "decide.h"
/*
 * sk_lookup, one link per meshed pod's network namespace: a new inbound TCP connection for a
 * captured port is handed to the proxy's inbound listener instead of the app's socket. Nothing
 * is rewritten: the client's source address is kept, and the proxy's accepted socket has the
 * original destination as its local address (the TPROXY contract).
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

	if (!pod)
		return SK_PASS;
	__u8 remote[16];

	if (ctx->family == AF_INET)
		map_v4(remote, ctx->remote_ip4);
	else
		LOAD_IP6(remote, ctx->remote_ip6);
	if (decide_inbound(netns, pod, remote, ctx->family == AF_INET, ctx->local_port) != VERDICT_INBOUND)
		return SK_PASS;
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
