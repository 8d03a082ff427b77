/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Reading a pod's capture configuration from the maps: is a port, a group, an address in one
 * of the pod's lists. These live in a source file, not in accel.h, because bcc rewrites map
 * access only in the main source, never in included headers; the loader compiles this file
 * first, then the hook files.
 */

#include "accel.h"

#ifndef ACCEL_CONFIG_C
#define ACCEL_CONFIG_C

/* The configuration of the pod whose network namespace has this cookie; NULL: not meshed. */
static __always_inline struct accel_pod *pod_of(__u64 netns)
{
	return pods.lookup(&netns);
}

static __always_inline int has_prefix(__u64 netns, __u8 kind, const __u8 *addr)
{
	struct accel_prefix_key key = {};

	key.prefixlen = PREFIX_KEY_BITS + 128;
	__builtin_memcpy(key.netns, &netns, 8);
	key.kind = kind | (is_mapped(addr) ? 0 : PREFIX_V6);
	__builtin_memcpy(key.addr, addr, 16);
	return prefixes.lookup(&key) != NULL;
}

static __always_inline int has_port(__u64 netns, __u16 port, __u16 kind)
{
	struct accel_port_key key = {.netns = netns, .port = port, .kind = kind};

	return ports.lookup(&key) != NULL;
}

static __always_inline int has_group(__u64 netns, __u32 gid, __u32 kind)
{
	struct accel_group_key key = {.netns = netns, .gid = gid, .kind = kind};

	return groups.lookup(&key) != NULL;
}

#endif /* ACCEL_CONFIG_C */
