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
 * one of its local addresses) were decided at connect(); they are left alone here. The pod is found by the
 * address the connection is for: sk_lookup programs may not ask for their namespace's cookie.
 */

int inbound(struct bpf_sk_lookup *ctx)
{
	if (ctx->protocol != IPPROTO_TCP)
		return SK_PASS;
	struct accel_address local = {};
	__u8 remote[16];

	if (ctx->family == AF_INET) {
		map_v4(local.addr, ctx->local_ip4);
		map_v4(remote, ctx->remote_ip4);
	} else {
		LOAD_IP6(local.addr, ctx->local_ip6);
		LOAD_IP6(remote, ctx->remote_ip6);
	}
	__u64 *owner = pod_addresses.lookup(&local);

	if (!owner)
		return SK_PASS;
	__u64 netns = *owner;
	struct accel_pod *pod = pods.lookup(&netns);

	if (!pod || !(pod->flags & ACCEL_IN_CAPTURE))
		return SK_PASS;
	/* From the pod itself (over lo): decided at connect() already, as iptables decides such
	 * connections in nat OUTPUT, never in PREROUTING. */
	if (has_prefix(netns, PREFIX_LOCAL, remote))
		return SK_PASS;
	__u16 port = ctx->local_port;

	if (ctx->family == AF_INET6 && !(pod->flags & ACCEL_IPV6))
		return SK_PASS;
	if (pod->flags & ACCEL_IN_ALL) {
		if (!(pod->flags & ACCEL_TPROXY) && port == pod->tunnel_port)
			return SK_PASS;
		if ((pod->flags & ACCEL_HAS_IN_PORTS_EXCLUDE) && has_port(netns, port, PORT_IN_EXCLUDE))
			return SK_PASS;
	} else if (!has_port(netns, port, PORT_IN_INCLUDE)) {
		return SK_PASS;
	}
	struct accel_listener_key key = {.netns = netns, .family = ctx->family};
	struct bpf_sock *listener = (struct bpf_sock *)listeners.lookup(&key);

	if (!listener && ctx->family == AF_INET) {
		key.family = AF_INET6;  /* a dual-stack IPv6 listener takes IPv4 too */
		listener = (struct bpf_sock *)listeners.lookup(&key);
	}
	if (!listener)
		return SK_DROP;  /* captured, but no proxy listens: refused, as under iptables, never
				  * handed to the app uncaptured */
	bpf_sk_assign(ctx, listener, 0);
	bpf_sk_release(listener);
	return SK_PASS;
}
