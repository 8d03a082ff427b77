/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */

#include "accel.h"
/*
 * The short-circuit (a pod with ACCEL_SHORTCUT): data an app and its proxy send each other goes
 * straight into the other end's receive queue instead of through loopback TCP twice.
 *
 * Only the hops between an app and its own proxy join `shortcuts`, both ends in the same pod:
 *   outbound  the app's redirected socket (when its connect completes) and the proxy's accepted
 *             socket of the outbound listener that took its record (sockops.c);
 *   inbound   the proxy's connection from 127.0.0.6 (::6) to the app, and the app's accepted
 *             socket of that connection.
 * Every other socket stays out of the map, so sk_msg never runs for it.
 *
 * sk_msg, per sendmsg of a socket in the map: put the data into the peer's receive queue
 * (BPF_F_INGRESS) when the peer is in the map, else let it go by TCP. Which of the two is decided
 * by the socket's first message and kept (see SHORTCUT_* in accel.h). TCP itself still carries
 * the handshake, FIN and RST, so shutdown, close and resets behave as without the short-circuit.
 */

static __always_inline int is_passthrough(const __u8 *a)
{
	return is_mapped(a) ? v4_of(a) == bpf_htonl(0x7f000006) : is_v6_low(a, 6);
}

static __always_inline int is_proxy_port(const struct accel_pod *pod, __u16 port)
{
	return port == pod->proxy_port || port == pod->inbound_port || port == pod->dns_port;
}

/* sockops: put a socket into `shortcuts` under its own 4-tuple if it is one end of a hop the pod
 * short-circuits. `origin`: the socket's record when it has one (the app's redirected socket, or
 * the proxy's accepted socket that just took its record over), which then keeps the state. */
static __always_inline void shortcut_join(struct bpf_sock_ops *skops, __u64 netns, const struct accel_pod *pod,
					  struct accel_origin *origin, int passive)
{
	struct bpf_sock *sk = skops->sk;
	struct accel_tuple t = {};

	if (!sk || !(pod->flags & ACCEL_SHORTCUT))
		return;
	app_tuple(skops, netns, 0, &t);  /* as this socket sees it */
	if (origin) {
		if (origin->kind != ORIGIN_OUTBOUND)  /* TCP to the outbound listener, on a spread port */
			return;
		origin->shortcut = SHORTCUT_UNDECIDED;
	} else {
		/* the inbound delivery: the proxy's connection from 127.0.0.6 (::6), or the app's side of it */
		if (!is_passthrough(passive ? t.remote : t.local) ||
		    is_proxy_port(pod, passive ? t.local_port : t.remote_port))
			return;
		__u8 *state = shortcut_states.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

		if (!state)
			return;  /* no memory: this hop goes by TCP */
		*state = SHORTCUT_UNDECIDED;
	}
	shortcuts.sock_hash_update(skops, &t, BPF_ANY);
}

int shortcut(struct sk_msg_md *msg)
{
	struct bpf_sock *sk = msg->sk;
	struct accel_tuple peer = {};

	if (!sk)
		return SK_PASS;
	struct accel_origin *origin = socket_origins.sk_storage_get(sk, 0, 0);
	__u8 *state = origin ? &origin->shortcut : shortcut_states.sk_storage_get(sk, 0, 0);

	if (!state || *state == SHORTCUT_TCP)
		return SK_PASS;
	__u64 netns = bpf_get_netns_cookie(msg);

	peer.netns = netns;
	if (msg->family == AF_INET) {
		map_v4(peer.local, CTX_U32(msg->remote_ip4));
		map_v4(peer.remote, CTX_U32(msg->local_ip4));
	} else {
		LOAD_IP6(peer.local, msg->remote_ip6);
		LOAD_IP6(peer.remote, msg->local_ip6);
	}
	peer.local_port = bpf_ntohl(CTX_U32(msg->remote_port));
	peer.remote_port = CTX_U32(msg->local_port);
	__u32 size = msg->size;

	if (shortcuts.msg_redirect_hash(msg, &peer, BPF_F_INGRESS) == SK_PASS) {
		*state = SHORTCUT_DIRECT;
		struct accel_shortcut_counters *counted = shortcut_counters.lookup(&netns);

		if (counted) {
			counted->messages++;
			counted->bytes += size;
		}
		return SK_PASS;
	}
	if (*state == SHORTCUT_UNDECIDED)
		*state = SHORTCUT_TCP;  /* the peer was not there: this socket's data goes by TCP, all of it */
	return SK_PASS;  /* a DIRECT socket whose peer closed: TCP answers as it would */
}
