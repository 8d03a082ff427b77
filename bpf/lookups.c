/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * The map access the hooks share: a pod's configuration, whether a port, a group, an address is
 * in one of its lists, its counters, and a redirected socket's record. They live in a source
 * file, not in accel.h, because bcc rewrites map access only in the main source, never in
 * included headers; the loader compiles this file first, then the hook files.
 */

#include "accel.h"

#ifndef ACCEL_LOOKUPS_C
#define ACCEL_LOOKUPS_C

/* The configuration of the pod whose network namespace has this cookie; NULL: not meshed. */
static __always_inline struct accel_pod *pod_of(__u64 netns)
{
	return pods.lookup(&netns);
}

/* owner: the configuration's id, or for PREFIX_LOCAL the netns cookie. */
static __always_inline int has_prefix(__u64 owner, __u8 kind, const __u8 *addr)
{
	struct accel_prefix_key key = {};

	key.prefixlen = PREFIX_KEY_BITS + 128;
	__builtin_memcpy(key.owner, &owner, 8);
	key.kind = kind | (is_mapped(addr) ? 0 : PREFIX_V6);
	__builtin_memcpy(key.addr, addr, 16);
	return prefixes.lookup(&key) != NULL;
}

static __always_inline int has_port(__u64 config, __u16 port, __u16 kind)
{
	struct accel_port_key key = {.config = config, .port = port, .kind = kind};

	return ports.lookup(&key) != NULL;
}

static __always_inline int has_group(__u64 config, __u32 gid, __u32 kind)
{
	struct accel_group_key key = {.config = config, .gid = gid, .kind = kind};

	return groups.lookup(&key) != NULL;
}

static __always_inline struct accel_sources *sources_of(__u64 netns)
{
	return sources.lookup(&netns);
}

/* This CPU's counters of the pod; NULL if the pod has none (it is being added or removed). */
static __always_inline struct accel_counters *counters_of(__u64 netns)
{
	return counters.lookup(&netns);
}

#define COUNT(netns, field)                                              \
	do {                                                             \
		struct accel_counters *counters_ = counters_of(netns);  \
		if (counters_)                                           \
			counters_->field++;                              \
	} while (0)

/* Keep a redirected socket's original destination in its storage (the app's side); `shortcut`: its
 * pod short-circuits its hops. NULL, counted,
 * when there is no memory for it: the caller then fails the call, for a connection the proxy
 * could not route must not go out uncaptured. */
static __always_inline struct accel_origin *record_origin(struct bpf_sock *sk, __u64 netns, const __u8 *dst,
							  __u16 port, __u8 kind, int shortcut)
{
	struct accel_origin *origin = socket_origins.sk_storage_get(sk, 0, BPF_SK_STORAGE_GET_F_CREATE);

	if (!origin) {
		COUNT(netns, no_memory);
		return NULL;
	}
	__builtin_memcpy(origin->addr, dst, 16);
	origin->port = bpf_htons(port);
	origin->kind = kind;
	origin->role = ROLE_APP;
	origin->shortcut = shortcut ? SHORTCUT_UNDECIDED : SHORTCUT_OFF;
	return origin;
}

#endif /* ACCEL_LOOKUPS_C */
