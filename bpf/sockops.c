/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */

#include "accel.h"
/*
 * sockops: the bookkeeping between the app's socket and the proxy's.
 *
 * TCP_CONNECT_CB  a captured socket now has its 4-tuple: file its original destination under
 *                 it, where getsockopt on the proxy's accepted socket will look.
 * STATE_CB        that connection closed: forget the entry.
 * TCP_LISTEN_CB   a socket of a meshed pod listens on the inbound capture port: it is the
 *                 proxy's inbound listener, the socket sk_lookup steers inbound traffic to.
 */

static __always_inline void tuple_of(struct bpf_sock_ops *skops, __u64 netns, struct accel_tuple *t)
{
	t->netns = netns;
	if (skops->family == AF_INET) {
		map_v4(t->local, skops->local_ip4);
		map_v4(t->remote, skops->remote_ip4);
	} else {
		LOAD_IP6(t->local, skops->local_ip6);
		LOAD_IP6(t->remote, skops->remote_ip6);
	}
	t->local_port = skops->local_port;
	t->remote_port = bpf_ntohl(skops->remote_port);
}

int sockops(struct bpf_sock_ops *skops)
{
	struct accel_tuple t = {};
	__u32 op = skops->op;

	/* Most callbacks (RTT, window, ECN, established...) are not ours: leave at once. */
	if (op != BPF_SOCK_OPS_TCP_CONNECT_CB && op != BPF_SOCK_OPS_STATE_CB && op != BPF_SOCK_OPS_TCP_LISTEN_CB)
		return 1;
	if (skops->family != AF_INET && skops->family != AF_INET6)
		return 1;
	__u64 netns = bpf_get_netns_cookie(skops);

	switch (op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB: {
		struct bpf_sock *sk = skops->sk;

		if (!sk)
			return 1;
		struct accel_origin *origin = socket_origins.sk_storage_get(sk, 0, 0);

		if (!origin)
			return 1;
		tuple_of(skops, netns, &t);
		tuple_origins.update(&t, origin);
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
		return 1;
	}
	case BPF_SOCK_OPS_STATE_CB:
		if (skops->args[1] == BPF_TCP_CLOSE) {
			tuple_of(skops, netns, &t);
			tuple_origins.delete(&t);
		}
		return 1;
	case BPF_SOCK_OPS_TCP_LISTEN_CB: {
		struct accel_pod *pod = pods.lookup(&netns);

		if (pod && (pod->flags & ACCEL_IN_CAPTURE) && skops->local_port == pod->inbound_port) {
			struct accel_listener_key key = {.netns = netns, .family = skops->family};

			listeners.sock_hash_update(skops, &key, BPF_ANY);
		}
		return 1;
	}
	}
	return 1;
}
