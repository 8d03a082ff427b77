/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */

#include "accel.h"
/*
 * cgroup/getpeername4, cgroup/getpeername6: the app asks whom its socket is connected to and
 * hears its original destination, as under iptables (where conntrack undoes the NAT for it),
 * not the proxy's listener its connect() was steered to. Only the app's redirected socket: the
 * proxy's side of the connection has a record too, and its peer is the app.
 */

static __always_inline int original_peer(struct bpf_sock_addr *ctx, int socket_v6)
{
	struct accel_origin *origin = socket_origins.sk_storage_get(ctx->sk, 0, 0);

	if (!origin || origin->role != ROLE_APP)
		return SYS_PROCEED;
	set_user_address(ctx, origin->addr, origin->port, socket_v6);
	return SYS_PROCEED;
}

int getpeername4(struct bpf_sock_addr *ctx)
{
	return original_peer(ctx, 0);
}

int getpeername6(struct bpf_sock_addr *ctx)
{
	return original_peer(ctx, 1);
}
