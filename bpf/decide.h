/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The capture decisions: for a socket leaving a meshed pod, istio-iptables' nat ISTIO_OUTPUT
 * chain (research/istio-capture.md, section 4), rule by rule and in the same order, so that
 * the first rule that matches decides, exactly as it does in the kernel's chain walk; for a
 * connection coming in, its ISTIO_INBOUND chain. tests/bpf/decide_run.c runs both under
 * BPF_PROG_RUN against the packet tracer's reading of the rules.
 *
 * "-o lo" (the packet leaves by the loopback device) becomes "the destination is local": in
 * 127.0.0.0/8 or ::1, in the pod's local routing table (its addresses and local routes, followed
 * as they change), or unspecified (the kernel then connects the socket to itself).
 *
 * Owner rules compare the caller's ids with the pod's proxy ids as the node sees them, i.e.
 * mapped through the pod's user namespace, as iptables' owner match does.
 */
#ifndef ACCEL_DECIDE_H
#define ACCEL_DECIDE_H

#define VERDICT_PASS     0  /* not captured */
#define VERDICT_OUTBOUND 1  /* to the proxy's outbound listener (ISTIO_REDIRECT) */
#define VERDICT_INBOUND  2  /* to the proxy's inbound listener (ISTIO_IN_REDIRECT) */
#define VERDICT_DNS      3  /* to the agent's DNS proxy (ISTIO_OUTPUT_DNS) */

#define DNS_PORT 53

struct accel_flow {
	__u8 dst[16];     /* mapped for IPv4 */
	__u16 port;       /* destination port, host byte order */
	__u8 tcp;         /* TCP, else UDP */
	__u8 v4;          /* an IPv4 flow (also through an IPv6 socket, mapped) */
	__u8 passthrough; /* the socket is bound to 127.0.0.6 or ::6, the proxy's inbound source */
	__u8 self;        /* the destination was unspecified: the kernel connects the socket to itself */
	__u8 local;       /* filled by decide(): the destination is reached over lo */
	__u8 from_loopback; /* the socket is bound to a loopback address: the kernel routes it over lo only */
	__u32 uid;        /* the caller's, as the node sees them */
	__u32 gid;
	__u32 mark;       /* the socket's mark (SO_MARK) */
};

/* Whether `id` is one of the first `n` of `ids`. */
static __always_inline int id_in(const __u32 *ids, __u8 n, __u32 id)
{
	int i;

#pragma unroll
	for (i = 0; i < ACCEL_MAX_IDS; i++) {
		if (i >= n)
			return 0;
		if (ids[i] == id)
			return 1;
	}
	return 0;
}

/* The chain's owner rules, for each -u id and then each -g id in turn: (a) the proxy's own TCP to
 * its pod (not to the loopback CIDR or the tunnel port, and for uids with DNS capture not to 53)
 * goes to the inbound listener; (b) anyone else's traffic to a local address is left alone (with
 * DNS capture only TCP not to 53; absent when -i names a loopback CIDR); (c) the proxy's own
 * traffic is never captured. Walked id by id they come to this: (b) fires at the first id
 * already, for every socket not of that id, so a later id decides only where (b) does not apply.
 * What they decide, or -1 to go on. (Each id of its own, as the chain has them, makes the verifier
 * walk every combination: seconds per load.) */
static __always_inline int owner_rules(const struct accel_pod *pod, const struct accel_flow *f, int local)
{
	int dns = pod->flags & ACCEL_DNS;
	int to_pod = local && f->tcp && !is_loopback_cidr(pod, f->dst) && f->port != pod->tunnel_port;
	int uid_to_pod = to_pod && !(dns && f->port == DNS_PORT);
	int others_left = !(pod->flags & ACCEL_INCLUDE_LO) && local && (!dns || (f->tcp && f->port != DNS_PORT));

	if (pod->n_uids) {
		if (f->uid == pod->uids[0] || (!others_left && id_in(pod->uids, pod->n_uids, f->uid)))
			return uid_to_pod ? VERDICT_INBOUND : VERDICT_PASS;
		if (others_left)
			return VERDICT_PASS;
	} else if (pod->n_gids) {  /* no -u ids: the first -g id's (b) fires for everyone else */
		if (f->gid == pod->gids[0] || (!others_left && id_in(pod->gids, pod->n_gids, f->gid)))
			return to_pod ? VERDICT_INBOUND : VERDICT_PASS;
		return others_left ? VERDICT_PASS : -1;
	}
	if (id_in(pod->gids, pod->n_gids, f->gid))
		return to_pod ? VERDICT_INBOUND : VERDICT_PASS;
	return -1;
}

/* "-o lo": the destination is reached over the loopback device. */
static __always_inline int is_local(__u64 netns, const struct accel_flow *f)
{
	return f->self || is_loopback(f->dst) || has_prefix(netns, PREFIX_LOCAL, f->dst);
}

/* nat ISTIO_OUTPUT, rule by rule (the caller checked the pod has rules of this family). */
static __always_inline int decide_nat(__u64 netns, const struct accel_pod *pod, struct accel_flow *f)
{
	int verdict;

	f->local = 0;
	/* -o: excluded ports, TCP and UDP */
	if ((pod->flags & ACCEL_HAS_OUT_PORTS_EXCLUDE) && has_port(pod->config, f->port, PORT_OUT_EXCLUDE))
		return VERDICT_PASS;
	int local = is_local(netns, f);

	f->local = local;
	/* -o lo -s 127.0.0.6/32 (::6/128): the proxy's inbound passthrough */
	if (local && f->passthrough)
		return VERDICT_PASS;
	verdict = owner_rules(pod, f, local);
	if (verdict >= 0)
		return verdict;
	/* owner groups: capture only the included groups, or all but the excluded ones */
	if (pod->flags & ACCEL_GROUPS_ALL) {
		if ((pod->flags & ACCEL_HAS_GROUPS_EXCLUDE) && has_group(pod->config, f->gid, GROUP_EXCLUDE))
			return VERDICT_PASS;
	} else if (!has_group(pod->config, f->gid, GROUP_INCLUDE)) {
		return VERDICT_PASS;
	}
	/* DNS, TCP and UDP, to resolv.conf's servers or to any server */
	if ((pod->flags & ACCEL_DNS) && f->port == DNS_PORT &&
	    ((pod->flags & ACCEL_DNS_ALL) || has_prefix(pod->config, PREFIX_DNS, f->dst)))
		return VERDICT_DNS;
	if (is_loopback_cidr(pod, f->dst))
		return VERDICT_PASS;
	if ((pod->flags & ACCEL_HAS_OUT_EXCLUDE) && has_prefix(pod->config, PREFIX_EXCLUDE, f->dst))
		return VERDICT_PASS;
	/* ISTIO_REDIRECT only redirects TCP */
	if (!f->tcp)
		return VERDICT_PASS;
	if ((pod->flags & ACCEL_HAS_OUT_PORTS_INCLUDE) && has_port(pod->config, f->port, PORT_OUT_INCLUDE))
		return VERDICT_OUTBOUND;
	if (pod->flags & (f->v4 ? ACCEL_OUT_ALL_V4 : ACCEL_OUT_ALL_V6))
		return VERDICT_OUTBOUND;
	if ((pod->flags & ACCEL_HAS_OUT_INCLUDE) && has_prefix(pod->config, PREFIX_INCLUDE, f->dst))
		return VERDICT_OUTBOUND;
	return VERDICT_PASS;
}

/* Whether ISTIO_INBOUND's port rules capture a connection to `port` (host byte order). */
static __always_inline int inbound_port_captured(const struct accel_pod *pod, __u16 port)
{
	/* nat ISTIO_INBOUND's first rule returns the tunnel port, before any include or exclude
	 * (TPROXY captures in mangle, which has no such rule) */
	if (!(pod->flags & ACCEL_TPROXY) && port == pod->tunnel_port)
		return 0;
	if (pod->flags & ACCEL_IN_ALL)
		return !((pod->flags & ACCEL_HAS_IN_PORTS_EXCLUDE) && has_port(pod->config, port, PORT_IN_EXCLUDE));
	return has_port(pod->config, port, PORT_IN_INCLUDE);
}

/* The capture decision for a new inbound TCP connection (sk_lookup, inbound.c): istio-iptables'
 * ISTIO_INBOUND chain. `remote`: the client's address (mapped for IPv4); `port`: the local port
 * it asks for, host byte order. Connections from the pod itself (from one of its local
 * addresses) were decided at connect(), as iptables decides them in nat OUTPUT, never in
 * PREROUTING: they pass here. */
static __always_inline int decide_inbound(__u64 netns, const struct accel_pod *pod, const __u8 *remote, int v4,
					  __u16 port)
{
	if (!(pod->flags & ACCEL_IN_CAPTURE))
		return VERDICT_PASS;
	if (is_loopback(remote) || has_prefix(netns, PREFIX_LOCAL, remote))
		return VERDICT_PASS;
	if (!v4 && !(pod->flags & ACCEL_IPV6))
		return VERDICT_PASS;
	return inbound_port_captured(pod, port) ? VERDICT_INBOUND : VERDICT_PASS;
}

/* TPROXY mode's hairpin (mangle, istio-capture.md section 4 step 19): a local TCP connection of
 * one of the proxy's uids or gids, to anything but the loopback CIDR, without the TPROXY mark, is
 * marked in OUTPUT and taken in again on lo by ISTIO_INBOUND, whose port rules then TPROXY it to
 * the inbound listener (unless it is from 127.0.0.6 or ::6). It matters
 * where nat let the connection go: a process with a proxy gid but not a proxy uid, the proxy's
 * own connections to the tunnel port, and with DNS capture to port 53. */
static __always_inline int tproxy_hairpin(__u64 netns, const struct accel_pod *pod, struct accel_flow *f)
{
	if (!(pod->flags & ACCEL_IN_CAPTURE) || !f->tcp || f->passthrough || f->mark == pod->tproxy_mark)
		return VERDICT_PASS;
	if (!f->local && !(f->local = is_local(netns, f)))  /* nat may have left before asking */
		return VERDICT_PASS;
	if (is_loopback_cidr(pod, f->dst))  /* both the mark rule and ISTIO_TPROXY leave it */
		return VERDICT_PASS;
	if (!id_in(pod->uids, pod->n_uids, f->uid) && !id_in(pod->gids, pod->n_gids, f->gid))
		return VERDICT_PASS;
	return inbound_port_captured(pod, f->port) ? VERDICT_INBOUND : VERDICT_PASS;
}

/* Where a socket leaving the pod goes: nat's verdict, or when nat leaves it, TPROXY's hairpin. */
static __always_inline int decide(__u64 netns, const struct accel_pod *pod, struct accel_flow *f)
{
	if (!f->v4 && !(pod->flags & ACCEL_IPV6))
		return VERDICT_PASS;  /* no ip6tables rules at all for a pod without IPv6 */
	int verdict = decide_nat(netns, pod, f);

	if (verdict != VERDICT_PASS || !(pod->flags & ACCEL_TPROXY))
		return verdict;
	return tproxy_hairpin(netns, pod, f);
}

/* The verdict for a socket of the calling process, and its pod (NULL: not meshed, PASS). */
static __always_inline int decide_for_caller(void *ctx, struct accel_flow *f, __u64 *netns,
					     struct accel_pod **pod)
{
	*netns = bpf_get_netns_cookie(ctx);
	*pod = pod_of(*netns);
	if (!*pod)
		return VERDICT_PASS;
	__u64 ids = bpf_get_current_uid_gid();

	f->uid = (__u32)ids;
	f->gid = (__u32)(ids >> 32);
	return decide(*netns, *pod, f);
}

#endif /* ACCEL_DECIDE_H */
