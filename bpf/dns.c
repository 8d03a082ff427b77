/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */

#include "accel.h"
#include "decide.h"
/*
 * cgroup/sendmsg4/6, cgroup/recvmsg4/6: DNS over unconnected UDP. A datagram to port 53 that
 * istio-iptables would capture goes to the agent's DNS proxy on loopback; its answer, coming
 * back from there, is shown to the app as coming from the server it asked. (Connected UDP and
 * TCP are captured by connect4/6, which leaves the same record.)
 *
 * Like every per-socket record this keeps one server per socket: a socket asking two servers
 * at once would see both answers as from the last one asked.
 */

static __always_inline int capture_datagram(struct bpf_sock_addr *ctx, struct accel_flow *f, int socket_v6)
{
	__u64 netns;
	struct accel_pod *pod;

	if (decide_for_caller(ctx, f, &netns, &pod) != VERDICT_DNS || !pod)  /* !pod: for the verifier */
		return 1;
	struct accel_origin *origin = socket_origins.sk_storage_get(ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	if (!origin)
		return 1;
	__builtin_memcpy(origin->addr, f->dst, 16);
	origin->port = bpf_htons(f->port);
	origin->kind = ORIGIN_DNS;
	int local = f->local;

	if (socket_v6) {
		__u8 addr[16];
		__u32 w[4];

		loopback_of(addr, f->v4);
		set_user_addr(ctx, addr, 1);
		if (!local && !(CTX_U32(ctx->msg_src_ip6[0]) | CTX_U32(ctx->msg_src_ip6[1]) |
				CTX_U32(ctx->msg_src_ip6[2]) | CTX_U32(ctx->msg_src_ip6[3]))) {
			if (f->v4 && pod->pod_v4) {
				ctx->msg_src_ip6[2] = bpf_htonl(0x0000ffff);
				ctx->msg_src_ip6[3] = pod->pod_v4;
			} else if (!f->v4 && (pod->pod_v6[0] | pod->pod_v6[15])) {
				__builtin_memcpy(w, pod->pod_v6, 16);
				ctx->msg_src_ip6[0] = w[0];
				ctx->msg_src_ip6[1] = w[1];
				ctx->msg_src_ip6[2] = w[2];
				ctx->msg_src_ip6[3] = w[3];
			}
		}
	} else {
		ctx->user_ip4 = bpf_htonl(0x7f000001);
		if (!local && !ctx->msg_src_ip4 && pod->pod_v4)
			ctx->msg_src_ip4 = pod->pod_v4;  /* the source REDIRECT would have kept */
	}
	ctx->user_port = bpf_htons(pod->dns_port);
	return 1;
}

int sendmsg4(struct bpf_sock_addr *ctx)
{
	struct accel_flow f = {.v4 = 1};
	struct bpf_sock *sk = ctx->sk;

	if (!sk)
		return 1;
	map_v4(f.dst, ctx->user_ip4);
	f.port = bpf_ntohs((__u16)ctx->user_port);
	f.passthrough = sk->src_ip4 == bpf_htonl(0x7f000006);
	return capture_datagram(ctx, &f, 0);
}

int sendmsg6(struct bpf_sock_addr *ctx)
{
	struct accel_flow f = {};

	LOAD_IP6(f.dst, ctx->user_ip6);
	f.v4 = is_mapped(f.dst);
	f.port = bpf_ntohs((__u16)ctx->user_port);
	return capture_datagram(ctx, &f, 1);
}

/* An answer from the DNS proxy on a socket that asked a server: from that server. */
static __always_inline int original_source(struct bpf_sock_addr *ctx, const __u8 *source, int socket_v6)
{
	struct accel_origin *origin = socket_origins.sk_storage_get(ctx->sk, 0, 0);

	if (!origin || origin->kind != ORIGIN_DNS)
		return 1;
	__u64 netns = bpf_get_netns_cookie(ctx);
	struct accel_pod *pod = pods.lookup(&netns);

	if (!pod || ctx->user_port != bpf_htons(pod->dns_port) || !is_loopback(source))
		return 1;
	set_user_addr(ctx, origin->addr, socket_v6);
	ctx->user_port = origin->port;
	return 1;
}

int recvmsg4(struct bpf_sock_addr *ctx)
{
	__u8 source[16];

	map_v4(source, ctx->user_ip4);
	return original_source(ctx, source, 0);
}

int recvmsg6(struct bpf_sock_addr *ctx)
{
	__u8 source[16];

	LOAD_IP6(source, ctx->user_ip6);
	return original_source(ctx, source, 1);
}
