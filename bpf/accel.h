/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * accel: what the eBPF capture programs share. Structs and #defines here are mirrored, field for
 * field, by accel/ebpf/maps.py; change both together (the loader checks the mirrors against the
 * compiled object's BTF and refuses to run if they drifted apart).
 *
 * Every meshed pod is a network namespace. Its capture configuration (the CaptureSpec, as data)
 * is an entry in `pods` keyed by the namespace's cookie, plus list entries (ports, groups,
 * prefixes) keyed by the configuration's id. One set of programs attached at one cgroup serves
 * every pod of a node, adding a pod is a map update, and changing a pod's spec is one update of
 * its `pods` entry to a configuration whose lists are already in place. A namespace without an
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
#include <uapi/linux/errno.h>
#include <linux/socket.h>
#include <net/sock.h>

/* The licence the kernel sees (bcc emits it): GPL-compatible, as the helpers used require. */
#define BPF_LICENSE Dual BSD/GPL

/* What a cgroup socket hook answers the kernel. */
#define SYS_PROCEED 1  /* let the call go on (with whatever the program rewrote) */
#define SYS_REJECT  0  /* fail the call: EPERM, or the error set with bpf_set_retval() */

#define ACCEL_MAX_IDS 8            /* proxy uids and gids per pod */
#define ACCEL_MAX_PODS 4096
#define ACCEL_MAX_PORTS 65536      /* (configuration, port, kind) entries, all pods */
#define ACCEL_MAX_PREFIXES 131072  /* (configuration or netns, kind, CIDR) entries, all pods */
/* Redirected connections between an app and its proxy whose handshake is in flight, node-wide:
 * a record lives in `handoffs` only from the app's SYN until the proxy's side of the connection
 * exists, then moves into that socket's storage. */
#define ACCEL_MAX_HANDOFFS 65536
#define ACCEL_MAX_LOST 4096        /* handoffs that could not be recorded, remembered for ENOENT */
#define ACCEL_MAX_SHORTCUTS 262144  /* sockets of short-circuited hops, node-wide: 4 a proxied connection */
/* A captured TCP connect goes to the proxy's address on one of ports 1..ACCEL_SPREAD_PORTS, chosen
 * by its original destination (spread_port), and sk_lookup (inbound.c) hands it to the proxy's
 * listener. Under REDIRECT the app's socket stays connected to the original destination, so
 * source ports and TIME_WAIT are per destination; one proxy address and port for all of them
 * would make every destination share one port space. Below 1024 a port is never ephemeral, so
 * the kernel cannot pick it as the source of the very connection (no self-connect). */
#define ACCEL_SPREAD_PORTS 1023

#define SO_ORIGINAL_DST 80         /* also IP6T_SO_ORIGINAL_DST */
#define ACCEL_PAGE_SIZE 4096
#define IPPROTO_MPTCP_ 262         /* IPPROTO_MPTCP: headers older than the kernel may lack it */

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
#define ACCEL_SHORTCUT              (1 << 16)  /* app <-> proxy hops short-circuited (shortcut.c) */

struct accel_pod {
	__u64 config;        /* this configuration's id: the key of its list entries */
	__u16 proxy_port;    /* -p, host byte order */
	__u16 inbound_port;  /* -z */
	__u16 tunnel_port;   /* -e */
	__u16 dns_port;      /* the agent's DNS proxy, 15053 */
	__u32 flags;
	__u32 loopback_v4;       /* ISTIO_OUTBOUND_IPV4_LOOPBACK_CIDR, network byte order */
	__u32 loopback_v4_mask;  /* its netmask, network byte order */
	/* The proxy's uids and gids as the node sees them (bpf_get_current_uid_gid()): the pod's
	 * ids mapped through its network namespace's user namespace, as iptables' owner match maps
	 * them. An id the user namespace does not map is 0xffffffff and matches no one. */
	__u32 uids[ACCEL_MAX_IDS];
	__u32 gids[ACCEL_MAX_IDS];
	__u8 n_uids;
	__u8 n_gids;
	__u8 pad[2];
	__u32 tproxy_mark;  /* -t: TPROXY mode's socket mark, which exempts a socket from its hairpin */
	__u32 pad2;
};

/* ports: (configuration, port, kind) is present or not */
#define PORT_OUT_EXCLUDE 1  /* -o */
#define PORT_OUT_INCLUDE 2  /* -q */
#define PORT_IN_EXCLUDE  3  /* -d */
#define PORT_IN_INCLUDE  4  /* -b list */

struct accel_port_key {
	__u64 config;
	__u16 port;  /* host byte order */
	__u16 kind;
	__u32 pad;
};

/* owner groups: (configuration, gid as the node sees it, kind) is present or not */
#define GROUP_INCLUDE 1
#define GROUP_EXCLUDE 2

struct accel_group_key {
	__u64 config;
	__u32 gid;
	__u32 kind;
};

/* prefixes, one LPM trie: (owner, kind, address/len). The owner is the configuration's id for
 * the spec's lists, and the netns cookie for PREFIX_LOCAL, a fact of the namespace that is
 * followed as it changes and outlives spec changes. */
#define PREFIX_INCLUDE 1  /* -i */
#define PREFIX_EXCLUDE 2  /* -x */
#define PREFIX_LOCAL   3  /* the pod's local routes: destinations its traffic reaches over lo */
#define PREFIX_DNS     4  /* resolv.conf's nameservers */
/* In the kind byte: an IPv6 prefix. IPv4 addresses are kept IPv4-mapped, so without it an IPv6
 * range such as ::/0 or ::ffff:0:0/96 would also cover IPv4 destinations, which ip6tables never
 * sees. */
#define PREFIX_V6      0x80
#define PREFIX_KEY_BITS (64 + 8)  /* bits of owner and kind before the address */

struct accel_prefix_key {
	__u32 prefixlen;
	__u8 owner[8];
	__u8 kind;
	__u8 addr[16];
} __attribute__((packed));

/* The pod's own addresses, by netns cookie: the source a redirected connection keeps, as
 * REDIRECT keeps the source routing chose. Followed as they change. */
#define SOURCE_HAS_V4 (1 << 0)
#define SOURCE_HAS_V6 (1 << 1)

struct accel_sources {
	__u32 v4;     /* network byte order */
	__u32 flags;
	__u8 v6[16];
};

/* What a socket was really going to, kept in its socket storage. */
#define ORIGIN_OUTBOUND 1
#define ORIGIN_INBOUND  2  /* the proxy's own hairpin to its pod, sent to the inbound listener */
#define ORIGIN_DNS      3
#define ORIGIN_LOST     4  /* redirected, but the record never reached the proxy's side */
/* `lost` keeps the ORIGIN_* kind of a record it stands for: sk_lookup needs it to choose the
 * listener (outbound or inbound) for a connection whose record could not be filed. */
/* Whose socket it is. */
#define ROLE_APP   1  /* the connecting side, redirected at connect() or sendmsg() */
#define ROLE_PROXY 2  /* the proxy's accepted side of an app's redirected connection */

struct accel_origin {
	__u8 addr[16];  /* mapped for IPv4 */
	__u16 port;     /* network byte order, as in a sockaddr */
	__u8 kind;
	__u8 role;
	__u8 shortcut;  /* SHORTCUT_*: how a short-circuited socket's data goes (shortcut.c) */
	__u8 pad[3];
};

/* A connection as the app's side sees it: local (app) and remote (proxy) address and port. */
struct accel_tuple {
	__u64 netns;
	__u8 local[16];
	__u8 remote[16];
	__u16 local_port;   /* host byte order */
	__u16 remote_port;
	__u32 pad;
};

/* A short-circuited socket: how its data goes, decided by its first message and then kept.
 * Mixing the two ways would let the peer read later data (put straight into its queue) before
 * earlier data (still in its TCP receive queue, which it reads second). */
#define SHORTCUT_UNDECIDED 0
#define SHORTCUT_DIRECT    1  /* every message straight into the peer's receive queue */
#define SHORTCUT_TCP       2  /* the peer was not there for the first message: TCP, as without */
#define SHORTCUT_OFF       3  /* an app's record in a pod without the short-circuit: never joins */

/* What the short-circuit carried, per pod (netns cookie) and per CPU. */
struct accel_shortcut_counters {
	__u64 messages;  /* sendmsg calls (or parts of them) put straight into the peer's queue */
	__u64 bytes;
};

/* A listener of the pod's proxy (on its outbound or inbound port), by address family and port:
 * where sk_lookup hands captured connections. */
struct accel_listener_key {
	__u64 netns;
	__u32 family;
	__u16 port;  /* host byte order */
	__u16 pad;
};

/* What the programs did, per pod (netns cookie) and per CPU; userspace sums the CPUs. */
struct accel_counters {
	__u64 outbound;          /* connects redirected to the outbound listener */
	__u64 inbound;           /* inbound connections steered to the inbound listener, and the proxy's hairpins */
	__u64 dns;               /* DNS (UDP datagrams, connected UDP, TCP) redirected to the DNS proxy */
	__u64 passed;            /* connects and datagrams decided and left alone */
	__u64 refused;           /* captured inbound that no proxy listener could take: refused, as REDIRECT would */
	__u64 no_memory;         /* captured, but no memory for the socket's record: the call failed (fail closed) */
	__u64 handoff_failed;    /* a redirected connection's record could not be handed to the proxy's side */
	__u64 lost;              /* SO_ORIGINAL_DST for a connection whose record was lost: answered ENOENT */
	__u64 foreign_listener;  /* a socket not of the proxy's uids/gids listened on a proxy port: ignored */
};

BPF_HASH(pods, __u64, struct accel_pod, ACCEL_MAX_PODS);
BPF_HASH(ports, struct accel_port_key, __u8, ACCEL_MAX_PORTS);
BPF_HASH(groups, struct accel_group_key, __u8, ACCEL_MAX_PODS * 16);
BPF_LPM_TRIE(prefixes, struct accel_prefix_key, __u8, ACCEL_MAX_PREFIXES);
BPF_HASH(sources, __u64, struct accel_sources, ACCEL_MAX_PODS);
BPF_PERCPU_HASH(counters, __u64, struct accel_counters, ACCEL_MAX_PODS);
/* Each redirected socket carries its original destination, and frees it when it goes: the app's
 * socket (getpeername, DNS answers) and the proxy's accepted socket (SO_ORIGINAL_DST). */
BPF_SK_STORAGE(socket_origins, struct accel_origin);
/* From the app's SYN until the proxy's side exists (sockops): by 4-tuple, the only thing both
 * sides know. A plain hash, never evicting: a record is either handed over, deleted when the
 * app's socket closes before the handshake completed, or refused (counted, and then remembered
 * with its kind in `lost` so that the proxy hears ENOENT rather than a made-up destination). */
BPF_HASH(handoffs, struct accel_tuple, struct accel_origin, ACCEL_MAX_HANDOFFS);
BPF_TABLE("lru_hash", struct accel_tuple, __u8, lost, ACCEL_MAX_LOST);
/* Both ends of each short-circuited app <-> proxy hop, by the 4-tuple each end sees (netns,
 * local, remote): an end finds its peer under the tuple reversed. sk_msg (shortcut.c) is attached
 * to this map, so it runs for these sockets and no others. A socket leaves the map when it closes. */
BPF_SOCKHASH(shortcuts, struct accel_tuple, ACCEL_MAX_SHORTCUTS);
/* The SHORTCUT_* state of a short-circuited socket that has no record of its own (the inbound
 * delivery's two ends); the outbound hop's keep it in their record, which they have anyway. */
BPF_SK_STORAGE(shortcut_states, __u8);
BPF_PERCPU_HASH(shortcut_counters, __u64, struct accel_shortcut_counters, ACCEL_MAX_PODS);
/* The proxy's listeners, two ports and two families a pod. Declared by hand: bcc's BPF_SOCKHASH has sock_hash_update()
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
	.flags = 0, .max_entries = ACCEL_MAX_PODS * 4};
BPF_ANNOTATE_KV_PAIR(listeners, struct accel_listener_key, int);

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

/* An IPv6 address, word by word: is it `last` in the final word and zero elsewhere (::, ::1, ::6). */
static __always_inline int is_v6_low(const __u8 *a, __u32 last)
{
	__u32 w[4];

	__builtin_memcpy(w, a, 16);
	return w[0] == 0 && w[1] == 0 && w[2] == 0 && w[3] == bpf_htonl(last);
}

/* 0.0.0.0, ::ffff:0.0.0.0 or :: : the kernel connects such a socket to itself (see connect.c). */
static __always_inline int is_unspecified(const __u8 *a)
{
	return is_mapped(a) ? v4_of(a) == 0 : is_v6_low(a, 0);
}

/* The destination istio-iptables never captures: 127.0.0.1/32 (or the configured loopback
 * CIDR) and ::1/128. */
static __always_inline int is_loopback_cidr(const struct accel_pod *pod, const __u8 *addr)
{
	if (is_mapped(addr))
		return (v4_of(addr) & pod->loopback_v4_mask) == pod->loopback_v4;
	return is_v6_low(addr, 1);
}

static __always_inline int is_loopback(const __u8 *addr)
{
	if (is_mapped(addr))
		return (v4_of(addr) & bpf_htonl(0xff000000)) == bpf_htonl(0x7f000000);
	return is_v6_low(addr, 1);
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

/* The connection's 4-tuple as the app's side sees it; `passive`: skops is the proxy's side. */
static __always_inline void app_tuple(struct bpf_sock_ops *skops, __u64 netns, int passive, struct accel_tuple *t)
{
	__u8 local[16], remote[16];

	if (skops->family == AF_INET) {
		map_v4(local, skops->local_ip4);
		map_v4(remote, skops->remote_ip4);
	} else {
		LOAD_IP6(local, skops->local_ip6);
		LOAD_IP6(remote, skops->remote_ip6);
	}
	__u16 local_port = skops->local_port;
	__u16 remote_port = bpf_ntohl(skops->remote_port);

	t->netns = netns;
	if (passive) {
		__builtin_memcpy(t->local, remote, 16);
		__builtin_memcpy(t->remote, local, 16);
		t->local_port = remote_port;
		t->remote_port = local_port;
	} else {
		__builtin_memcpy(t->local, local, 16);
		__builtin_memcpy(t->remote, remote, 16);
		t->local_port = local_port;
		t->remote_port = remote_port;
	}
}

/* The proxy port (1..ACCEL_SPREAD_PORTS) a captured TCP connect to this destination goes to: a
 * hash of the address and port, so a destination always gets the same one (its own port space,
 * as under REDIRECT; two destinations that hash alike share one). */
static __always_inline __u16 spread_port(const __u8 *addr, __u16 port)
{
	__u32 w[4];

	__builtin_memcpy(w, addr, 16);
	__u32 h = (w[0] ^ w[1] ^ w[2] ^ w[3] ^ ((__u32)port << 16 | port)) * 2654435761u;

	return 1 + (h >> 16) % ACCEL_SPREAD_PORTS;
}

/* Make clang forget what it knows of a context pointer: it may otherwise keep ctx + offset in a
 * register and store through it, which the verifier refuses for context pointers. */
#define CTX_BARRIER(ctx) asm volatile("" : "+r"(ctx))

/* Hand an address and port (network order) back to a sock_addr hook's caller: user_ip6 (IPv4 as
 * mapped) on an IPv6 socket, else user_ip4. Four 32-bit stores: the context takes no wider ones. */
static __always_inline void set_user_address(struct bpf_sock_addr *ctx, const __u8 *addr, __u16 port, int socket_v6)
{
	__u32 w[4];

	__builtin_memcpy(w, addr, 16);
	CTX_BARRIER(ctx);
	if (socket_v6) {
		ctx->user_ip6[0] = w[0];
		ctx->user_ip6[1] = w[1];
		ctx->user_ip6[2] = w[2];
		ctx->user_ip6[3] = w[3];
	} else {
		ctx->user_ip4 = w[3];
	}
	CTX_BARRIER(ctx);
	ctx->user_port = port;
}

#endif /* ACCEL_H */
