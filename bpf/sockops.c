/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */

#include "accel.h"
/*
 * sockops: hand a redirected connection's original destination from the app's socket to the
 * proxy's, and register the proxy's listeners.
 *
 * TCP_CONNECT_CB         a redirected socket now has its 4-tuple: file its record in `handoffs`
 *                        (or, if that fails, its kind in `lost`), and watch the socket's state.
 *                        sk_lookup finds it there for the SYN that follows (inbound.c).
 * PASSIVE_ESTABLISHED_CB the proxy's side of the connection exists (before the proxy accepts
 *                        it): move the record into that socket's storage, where it lives as
 *                        long as the proxy's socket and nothing can evict it. The app may close
 *                        at once, even before the proxy accepts.
 * STATE_CB               the app's socket closed before the proxy's side took its record: drop
 *                        the record. Watched only until the record is taken (on_state).
 * TCP_LISTEN_CB          a socket of the proxy's uids/gids listens on its outbound or inbound
 *                        port: a listener sk_lookup steers captured connections to.
 * ACTIVE_ESTABLISHED_CB  and PASSIVE_ESTABLISHED_CB: the ends of an app <-> proxy hop join the
 *                        short-circuit (shortcut.c), in a pod that has it.
 */

static __always_inline int is_proxy(const struct accel_pod *pod, __u32 uid, __u32 gid)
{
	int i;

#pragma unroll
	for (i = 0; i < ACCEL_MAX_IDS; i++) {
		if ((i < pod->n_uids && uid == pod->uids[i]) || (i < pod->n_gids && gid == pod->gids[i]))
			return 1;
	}
	return 0;
}

static __always_inline void on_connect(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;
	struct accel_tuple t = {};

	if (!sk)
		return;
	struct accel_origin *origin = socket_origins.sk_storage_get(sk, 0, 0);

	if (!origin || origin->role != ROLE_APP)
		return;  /* not redirected: nothing to hand over (the netns cookie is not even needed) */
	__u64 netns = bpf_get_netns_cookie(skops);

	app_tuple(skops, netns, 0, &t);
	if (handoffs.update(&t, origin) != 0) {
		COUNT(netns, handoff_failed);
		lost.update(&t, &origin->kind);  /* an LRU: this always finds room */
	}
	bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags | BPF_SOCK_OPS_STATE_CB_FLAG);
}

/* The app's redirected socket changed state (only it watches, from on_connect). Its record is
 * usually gone already, moved to the proxy's side at PASSIVE_ESTABLISHED: then the watch ends at
 * the first change after ESTABLISHED, two callbacks in all rather than one a state up to the
 * close. While the record waits (the proxy's side not yet established), the close removes it.
 * ESTABLISHED comes before the proxy's side exists (SYN-ACK, then the final ACK): nothing to ask
 * yet. */
static __always_inline void on_state(struct bpf_sock_ops *skops)
{
	__u32 state = skops->args[1];
	struct accel_tuple t = {};

	if (state == BPF_TCP_ESTABLISHED)
		return;
	app_tuple(skops, bpf_get_netns_cookie(skops), 0, &t);
	if (state == BPF_TCP_CLOSE)
		handoffs.delete(&t);
	else if (!handoffs.lookup(&t))
		bpf_sock_ops_cb_flags_set(skops, skops->bpf_sock_ops_cb_flags & ~BPF_SOCK_OPS_STATE_CB_FLAG);
}

static __always_inline void on_passive_established(struct bpf_sock_ops *skops, __u64 netns)
{
	struct accel_pod *pod = pod_of(netns);
	struct bpf_sock *sk = skops->sk;
	struct accel_tuple t = {};

	if (!pod || !sk)
		return;
	__u16 port = skops->local_port;

	/* a redirected connection arrives on a spread port (TCP) or the DNS port: nowhere else */
	if (port > ACCEL_SPREAD_PORTS && !is_proxy_port(pod, port)) {
		shortcut_join(skops, netns, pod, NULL, 1);  /* perhaps the app's side of an inbound delivery */
		return;
	}
	app_tuple(skops, netns, 1, &t);
	struct accel_origin *record = handoffs.lookup(&t);
	struct accel_origin moved = {};

	if (record) {
		moved = *record;
		handoffs.delete(&t);
	} else if (lost.lookup(&t)) {
		moved.kind = ORIGIN_LOST;
		lost.delete(&t);
	} else {
		/* not a redirected connection: an app's own low port (perhaps the inbound delivery's
		 * app side), or someone dialled the proxy's port itself */
		shortcut_join(skops, netns, pod, NULL, 1);
		return;
	}
	struct accel_origin *origin = socket_origins.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	if (!origin) {
		COUNT(netns, no_memory);
		lost.update(&t, &moved.kind);  /* getsockopt finds it there: ENOENT, never a made-up answer */
		return;
	}
	*origin = moved;
	origin->role = ROLE_PROXY;
	shortcut_join(skops, netns, pod, origin, 1);
}

static __always_inline void on_listen(struct bpf_sock_ops *skops, __u64 netns)
{
	struct accel_pod *pod = pod_of(netns);

	__u16 port = skops->local_port;

	if (!pod || (port != pod->proxy_port && port != pod->inbound_port))
		return;
	/* listen() runs in the listening process: only the proxy's sockets may take captured
	 * inbound traffic, never an app's that happens to use the port */
	__u64 ids = bpf_get_current_uid_gid();

	if (!is_proxy(pod, (__u32)ids, (__u32)(ids >> 32))) {
		COUNT(netns, foreign_listener);
		return;
	}
	struct accel_listener_key key = {.netns = netns, .family = skops->family, .port = port};

	listeners.sock_hash_update(skops, &key, BPF_ANY);
}

/* The connecting socket is bound to 127.0.0.6 (::6): the proxy's inbound delivery to its app. */
static __always_inline int from_passthrough(struct bpf_sock_ops *skops)
{
	__u8 local[16];

	if (skops->family == AF_INET)
		return CTX_U32(skops->local_ip4) == bpf_htonl(0x7f000006);
	LOAD_IP6(local, skops->local_ip6);
	return is_passthrough(local);
}

/* The connecting side is established: an app's redirected socket, or the proxy's inbound
 * delivery, may join the short-circuit. Cheap tests first: most sockets are neither. */
static __always_inline void on_active_established(struct bpf_sock_ops *skops)
{
	struct bpf_sock *sk = skops->sk;

	if (!sk)
		return;
	struct accel_origin *origin = socket_origins.sk_storage_get(sk, 0, 0);

	if (origin ? origin->role != ROLE_APP || origin->shortcut == SHORTCUT_OFF : !from_passthrough(skops))
		return;
	__u64 netns = bpf_get_netns_cookie(skops);
	struct accel_pod *pod = pod_of(netns);

	if (pod)
		shortcut_join(skops, netns, pod, origin, 0);
}

int sockops(struct bpf_sock_ops *skops)
{
	__u32 op = skops->op;

	/* Most callbacks (RTT, window, ECN...) are not ours: leave at once, before anything costs. */
	if (op == BPF_SOCK_OPS_STATE_CB) {
		on_state(skops);
		return 1;
	}
	if (op != BPF_SOCK_OPS_TCP_CONNECT_CB && op != BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB &&
	    op != BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB && op != BPF_SOCK_OPS_TCP_LISTEN_CB)
		return 1;
	if (skops->family != AF_INET && skops->family != AF_INET6)
		return 1;
	switch (op) {
	case BPF_SOCK_OPS_TCP_CONNECT_CB:
		on_connect(skops);
		break;
	case BPF_SOCK_OPS_ACTIVE_ESTABLISHED_CB:
		on_active_established(skops);
		break;
	case BPF_SOCK_OPS_PASSIVE_ESTABLISHED_CB:
		on_passive_established(skops, bpf_get_netns_cookie(skops));
		break;
	case BPF_SOCK_OPS_TCP_LISTEN_CB:
		on_listen(skops, bpf_get_netns_cookie(skops));
		break;
	}
	return 1;
}
