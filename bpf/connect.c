/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */

#include "accel.h"
#include "decide.h"
/*
 * cgroup/connect4, cgroup/connect6: capture a meshed pod's TCP (and connected UDP DNS) at
 * connect(), before a packet exists, so there is no NAT and no conntrack.
 *
 * The destination becomes the proxy's listener, chosen so that the kernel picks the source
 * address the iptables rules would have left: the pod's address for a remote destination, the
 * local address itself for a local one (the proxy's hairpin), loopback for loopback. The
 * original destination is kept with the socket for getsockopt(SO_ORIGINAL_DST) and
 * getpeername().
 */

/* Where the proxy is reached for this verdict; returns the port (host order) and fills addr. */
static __always_inline __u16 proxy_address(const struct accel_pod *pod, int verdict, const struct accel_flow *f,
					   int local, __u8 *addr)
{
	if (verdict == VERDICT_INBOUND) {  /* the destination is local: keep it, change the port */
		__builtin_memcpy(addr, f->dst, 16);
		return pod->inbound_port;
	}
	if (verdict == VERDICT_DNS) {  /* the agent's DNS proxy listens on loopback only */
		loopback_of(addr, f->v4);
		return pod->dns_port;
	}
	if (is_loopback(f->dst)) {
		loopback_of(addr, f->v4);
	} else if (local) {
		__builtin_memcpy(addr, f->dst, 16);
	} else if (f->v4 && pod->pod_v4) {
		map_v4(addr, pod->pod_v4);
	} else if (!f->v4 && (pod->pod_v6[0] | pod->pod_v6[15])) {
		__builtin_memcpy(addr, pod->pod_v6, 16);
	} else {
		loopback_of(addr, f->v4);
	}
	return pod->proxy_port;
}

/* bind() to the pod's address, when the destination is not local and nothing is bound: the
 * source iptables' REDIRECT would have kept while the destination becomes loopback. */
static __always_inline void bind_pod_address(struct bpf_sock_addr *ctx, const struct accel_pod *pod, int v4,
					     int socket_v6)
{
	if (socket_v6) {
		struct sockaddr_in6 sa = {.sin6_family = AF_INET6};

		if (v4) {
			if (!pod->pod_v4)
				return;
			map_v4((__u8 *)&sa.sin6_addr, pod->pod_v4);
		} else {
			if (!(pod->pod_v6[0] | pod->pod_v6[15]))
				return;
			__builtin_memcpy(&sa.sin6_addr, pod->pod_v6, 16);
		}
		bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa));
	} else if (pod->pod_v4) {
		struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = pod->pod_v4};

		bpf_bind(ctx, (struct sockaddr *)&sa, sizeof(sa));
	}
}

static __always_inline int capture(struct bpf_sock_addr *ctx, struct accel_flow *f, int socket_v6, int bound)
{
	__u64 netns;
	struct accel_pod *pod;
	int verdict = decide_for_caller(ctx, f, &netns, &pod);

	if (verdict == VERDICT_PASS || !pod)  /* !pod: PASS already; the verifier wants the test */
		return 1;
	struct accel_origin *origin = socket_origins.sk_storage_get(ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	if (!origin)
		return 1;  /* no memory for the record: better uncaptured than unanswerable */
	__builtin_memcpy(origin->addr, f->dst, 16);
	origin->port = bpf_htons(f->port);
	origin->kind = verdict == VERDICT_INBOUND ? ORIGIN_INBOUND : verdict == VERDICT_DNS ? ORIGIN_DNS
											     : ORIGIN_OUTBOUND;
	__u8 addr[16];
	__u16 port = proxy_address(pod, verdict, f, f->local, addr);

	if (verdict == VERDICT_DNS && !f->local && !bound)
		bind_pod_address(ctx, pod, f->v4, socket_v6);
	set_user_addr(ctx, addr, socket_v6);
	ctx->user_port = bpf_htons(port);
	return 1;
}

int connect4(struct bpf_sock_addr *ctx)
{
	struct accel_flow f = {.tcp = ctx->type == SOCK_STREAM, .v4 = 1};

	if (ctx->type != SOCK_STREAM && ctx->type != SOCK_DGRAM)
		return 1;
	map_v4(f.dst, ctx->user_ip4);
	f.port = bpf_ntohs((__u16)ctx->user_port);
	struct bpf_sock *sk = ctx->sk;

	if (!sk)
		return 1;
	__u32 src = sk->src_ip4;

	f.passthrough = src == bpf_htonl(0x7f000006);
	return capture(ctx, &f, 0, src != 0);
}

int connect6(struct bpf_sock_addr *ctx)
{
	struct accel_flow f = {.tcp = ctx->type == SOCK_STREAM};

	if (ctx->type != SOCK_STREAM && ctx->type != SOCK_DGRAM)
		return 1;
	LOAD_IP6(f.dst, ctx->user_ip6);
	f.v4 = is_mapped(f.dst);  /* an IPv4 peer through an IPv6 socket: IPv4 rules apply */
	f.port = bpf_ntohs((__u16)ctx->user_port);
	struct bpf_sock *sk = ctx->sk;

	if (!sk)
		return 1;
	__u32 s[4];

	LOAD_IP6(s, sk->src_ip6);

	if (f.v4)
		f.passthrough = s[2] == bpf_htonl(0x0000ffff) && s[3] == bpf_htonl(0x7f000006);
	else
		f.passthrough = s[0] == 0 && s[1] == 0 && s[2] == 0 && s[3] == bpf_htonl(6);
	return capture(ctx, &f, 1, (s[0] | s[1] | s[2] | s[3]) != 0);
}
