/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * accel: what the eBPF capture programs share. Structs here are mirrored, field for field,
 * by accel/ebpf/maps.py; change both together.
 *
 * Every meshed pod is a network namespace. Its capture configuration (the CaptureSpec, as
 * data) lives in maps keyed by the namespace's cookie, so one set of programs attached at one
 * cgroup serves every pod of a node, and adding a pod is a map update. A namespace without an
 * entry is not meshed: every program lets its traffic through untouched.
 *
 * Addresses are kept as 16 bytes, IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d), so that an IPv6
 * socket talking to an IPv4 peer and an IPv4 socket give the same keys and decisions.
 */
#ifndef ACCEL_H
#define ACCEL_H

#include <uapi/linux/bpf.h>
#include <uapi/linux/in.h>
#include <uapi/linux/in6.h>
#include <linux/socket.h>
#include <net/sock.h>

/* The licence the kernel sees (bcc emits it): GPL-compatible, as the helpers used require. */
#define BPF_LICENSE Dual BSD/GPL

#define ACCEL_MAX_IDS 8           /* proxy uids and gids per pod */
#define ACCEL_MAX_PODS 4096
#define ACCEL_MAX_PORTS 65536     /* (pod, port, kind) entries, all pods */
#define ACCEL_MAX_PREFIXES 131072 /* (pod, kind, CIDR) entries, all pods */
#define ACCEL_MAX_ORIGINS 65536   /* connections between an app and its proxy, in flight */

#define SO_ORIGINAL_DST 80        /* also IP6T_SO_ORIGINAL_DST */
#define ACCEL_PAGE_SIZE 4096

/* accel_pod.flags */
#define ACCEL_IPV6           (1 << 0)  /* the pod has IPv6: istio-iptables writes ip6tables rules */
#define ACCEL_DNS            (1 << 1)  /* DNS capture is on */
#define ACCEL_DNS_ALL        (1 << 2)  /* ... for every server, not only resolv.conf's */
#define ACCEL_OUT_ALL_V4     (1 << 3)  /* -i '*': every IPv4 destination */
#define ACCEL_OUT_ALL_V6     (1 << 4)
#define ACCEL_INCLUDE_LO     (1 << 5)  /* -i names a loopback CIDR: lo RETURN rules are absent */
#define ACCEL_GROUPS_ALL     (1 << 6)  /* owner groups include '*' */
#define ACCEL_IN_CAPTURE     (1 << 7)  /* -b not empty */
#define ACCEL_IN_ALL         (1 << 8)  /* -b '*' */
#define ACCEL_TPROXY         (1 << 9)  /* inbound in TPROXY mode: the tunnel port is not exempt */
/* Which lists are not empty: a connect() skips the lookups an empty list cannot answer. */
#define ACCEL_HAS_OUT_PORTS_EXCLUDE (1 << 10)
#define ACCEL_HAS_OUT_PORTS_INCLUDE (1 << 11)
#define ACCEL_HAS_OUT_EXCLUDE       (1 << 12)  /* excluded CIDRs, either family */
#define ACCEL_HAS_OUT_INCLUDE       (1 << 13)  /* included CIDRs, either family */
#define ACCEL_HAS_GROUPS_EXCLUDE    (1 << 14)
#define ACCEL_HAS_IN_PORTS_EXCLUDE  (1 << 15)

struct accel_pod {
	__u16 proxy_port;    /* -p, host byte order */
	__u16 inbound_port;  /* -z */
	__u16 tunnel_port;   /* -e */
	__u16 dns_port;      /* the agent's DNS proxy, 15053 */
	__u32 flags;
	__u32 loopback_v4;       /* ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR, network byte order */
	__u32 loopback_v4_mask;  /* its netmask, network byte order */
	__u32 pod_v4;            /* the pod's IPv4 address (network order), 0 if none */
	__u8 pod_v6[16];         /* the pod's IPv6 address, zero if none */
	__u32 uids[ACCEL_MAX_IDS];
	__u32 gids[ACCEL_MAX_IDS];
	__u8 n_uids;
	__u8 n_gids;
	__u8 pad[6];
};

/* ports: (pod, port, kind) is present or not */
#define PORT_OUT_EXCLUDE 1  /* -o */
#define PORT_OUT_INCLUDE 2  /* -q */
#define PORT_IN_EXCLUDE  3  /* -d */
#define PORT_IN_INCLUDE  4  /* -b list */

struct accel_port_key {
	__u64 netns;
	__u16 port;  /* host byte order */
	__u16 kind;
	__u32 pad;
};

/* owner groups: (pod, gid, kind) is present or not */
#define GROUP_INCLUDE 1
#define GROUP_EXCLUDE 2

struct accel_group_key {
	__u64 netns;
	__u32 gid;
	__u32 kind;
};

/* prefixes, one LPM trie: (pod, kind, address/len) */
#define PREFIX_INCLUDE 1  /* -i */
#define PREFIX_EXCLUDE 2  /* -x */
#define PREFIX_LOCAL   3  /* the pod's local routes: addresses whose traffic leaves by lo */
#define PREFIX_DNS     4  /* resolv.conf's nameservers */
/* In the kind byte: an IPv6 prefix. IPv4 addresses are kept IPv4-mapped, so without it an IPv6
 * range such as ::/0 or ::ffff:0:0/96 would also cover IPv4 destinations, which ip6tables never
 * sees. */
#define PREFIX_V6      0x80
#define PREFIX_KEY_BITS (64 + 8)  /* bits of netns and kind before the address */

struct accel_prefix_key {
	__u32 prefixlen;
	__u8 netns[8];
	__u8 kind;
	__u8 addr[16];
} __attribute__((packed));

/* What a captured socket was really going to. */
#define ORIGIN_OUTBOUND 1
#define ORIGIN_INBOUND  2  /* the proxy's own hairpin to its pod, sent to the inbound listener */
#define ORIGIN_DNS      3

struct accel_origin {
	__u8 addr[16];  /* mapped for IPv4 */
	__u16 port;     /* network byte order, as in a sockaddr */
	__u8 kind;
	__u8 pad[5];
};

/* A connection from the app's side: local (app) and remote (proxy) address and port. */
struct accel_tuple {
	__u64 netns;
	__u8 local[16];
	__u8 remote[16];
	__u16 local_port;   /* host byte order */
	__u16 remote_port;
	__u32 pad;
};

/* The proxy's inbound listener of a pod, by address family. */
struct accel_listener_key {
	__u64 netns;
	__u32 family;
	__u32 pad;
};

BPF_HASH(pods, __u64, struct accel_pod, ACCEL_MAX_PODS);
BPF_HASH(ports, struct accel_port_key, __u8, ACCEL_MAX_PORTS);
BPF_HASH(groups, struct accel_group_key, __u8, ACCEL_MAX_PODS * 16);
BPF_LPM_TRIE(prefixes, struct accel_prefix_key, __u8, ACCEL_MAX_PREFIXES);
/* The app's socket carries its original destination, and frees it when it goes. */
BPF_SK_STORAGE(socket_origins, struct accel_origin);
/* The same, by 4-tuple, for the proxy's accepted socket to find. LRU bounds it if a close is
 * ever missed; sockops deletes each entry when its connection closes. */
BPF_TABLE("lru_hash", struct accel_tuple, struct accel_origin, tuple_origins, ACCEL_MAX_ORIGINS);
/* The proxy's inbound listeners. Declared by hand: bcc's BPF_SOCKHASH has sock_hash_update()
 * (sockops needs it) but no lookup() (sk_lookup needs it); this is bcc's generic table layout
 * with the one extra method, and bcc rewrites both. */
struct listeners_table_t {
	struct accel_listener_key key;
	int leaf;
	int *(*lookup)(struct accel_listener_key *);
	int *(*lookup_or_init)(struct accel_listener_key *, int *);
	int *(*lookup_or_try_init)(struct accel_listener_key *, int *);
	int (*update)(struct accel_listener_key *, int *);
	int (*insert)(struct accel_listener_key *, int *);
	int (*delete)(struct accel_listener_key *);
	int (*sock_hash_update)(void *, void *, u64);
	u32 max_entries;
	int flags;
};
__attribute__((section("maps/sockhash"))) struct listeners_table_t listeners = {
	.flags = 0, .max_entries = ACCEL_MAX_PODS * 2};
BPF_ANNOTATE_KV_PAIR(listeners, struct accel_listener_key, int);
/* sk_lookup cannot ask for its namespace's cookie: it finds the pod by the address a
 * connection is for. Pod addresses are unique on a node. */
struct accel_address {
	__u8 addr[16];
};
BPF_HASH(pod_addresses, struct accel_address, __u64, ACCEL_MAX_PODS * 4);

/* ---- helpers --------------------------------------------------------------------------- */

/* One 4-byte load of a context field: clang would merge neighbouring ones into an 8-byte load,
 * which the verifier refuses for these contexts. */
#define CTX_U32(field) (*(volatile __u32 *)&(field))
/* An IPv6 address held in a context as four 32-bit words, copied to 16 bytes at `out`, one
 * 4-byte load a word (see CTX_U32). */
#define LOAD_IP6(out, words)                                                                       \
	do {                                                                                       \
		__u32 _words[4] = {CTX_U32((words)[0]), CTX_U32((words)[1]), CTX_U32((words)[2]), \
				   CTX_U32((words)[3])};                                            \
		__builtin_memcpy((out), _words, 16);                                               \
	} while (0)

static __always_inline void map_v4(__u8 *out, __u32 ip4)
{
	__builtin_memset(out, 0, 10);
	out[10] = 0xff;
	out[11] = 0xff;
	__builtin_memcpy(out + 12, &ip4, 4);
}

static __always_inline int is_mapped(const __u8 *a)
{
	__u32 w0, w1, w2;

	__builtin_memcpy(&w0, a, 4);
	__builtin_memcpy(&w1, a + 4, 4);
	__builtin_memcpy(&w2, a + 8, 4);
	return w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff);
}

static __always_inline __u32 v4_of(const __u8 *a)
{
	__u32 ip4;

	__builtin_memcpy(&ip4, a + 12, 4);
	return ip4;
}

/* The destination istio-iptables never captures: 127.0.0.1/32 (or the configured loopback
 * CIDR) and ::1/128. */
static __always_inline int is_loopback_cidr(const struct accel_pod *pod, const __u8 *addr)
{
	if (is_mapped(addr))
		return (v4_of(addr) & pod->loopback_v4_mask) == pod->loopback_v4;
	__u32 w[4];

	__builtin_memcpy(w, addr, 16);
	return w[0] == 0 && w[1] == 0 && w[2] == 0 && w[3] == bpf_htonl(1);
}

static __always_inline int is_loopback(const __u8 *addr)
{
	if (is_mapped(addr))
		return (v4_of(addr) & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000);
	__u32 w[4];

	__builtin_memcpy(w, addr, 16);
	return w[0] == 0 && w[1] == 0 && w[2] == 0 && w[3] == bpf_htonl(1);
}

static __always_inline void loopback_of(__u8 *out, int v4)
{
	if (v4) {
		map_v4(out, bpf_htonl(0x7f000001));
	} else {
		__builtin_memset(out, 0, 16);
		out[15] = 1;
	}
}

/* Hand an address back to a sock_addr hook's caller: user_ip6 (IPv4 as mapped) on an IPv6
 * socket, else user_ip4. Four 32-bit stores: the context takes no wider ones. */
static __always_inline void set_user_addr(struct bpf_sock_addr *ctx, const __u8 *addr, int socket_v6)
{
	if (socket_v6) {
		__u32 w[4];

		__builtin_memcpy(w, addr, 16);
		ctx->user_ip6[0] = w[0];
		ctx->user_ip6[1] = w[1];
		ctx->user_ip6[2] = w[2];
		ctx->user_ip6[3] = w[3];
	} else {
		ctx->user_ip4 = v4_of(addr);
	}
}

#endif /* ACCEL_H */
