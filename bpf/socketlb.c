//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * svclab reference socket-level Service load balancer.
 *
 * A ClusterIP is translated when the client names it in a syscall, never
 * per packet: connect() (TCP and UDP) and sendmsg() on an unconnected UDP
 * socket rewrite ClusterIP:port to one backend's address:targetPort, and
 * recvmsg()/getpeername() rewrite the backend back to ClusterIP:port, so the
 * application only ever sees the address it asked for.
 *
 * Layout: one tiny SEC() entry per hook; the family-specific halves
 * (sock4_*, sock6_*) only move addresses between struct bpf_sock_addr and
 * struct dst; the shared workers (sock_xlate_fwd, sock_xlate_rev) are
 * static __always_inline, return 0 or a negative errno, and the
 * errno-to-verdict mapping happens only in the entry points.
 *
 * Connected UDP sockets never pass through a hook again once connected; an
 * iter/udp program (svclab_udp_destroy, Linux 6.5+) destroys those whose
 * backend was removed, and the application reconnects.
 *
 * Addresses are 16 bytes everywhere, in network byte order: IPv6 as is,
 * IPv4 in its v4-mapped form ::ffff:a.b.c.d. One set of maps therefore
 * serves IPv4, IPv6, and AF_INET6 sockets that talk to an IPv4 service
 * through a v4-mapped address, with no family-specific lookup code.
 */

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* -nostdinc: no libc or <linux/in.h>, so spell out the few constants used. */
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17
#define AF_INET 2
#define AF_INET6 10
#define TCP_ESTABLISHED 1 /* also the state of a connected UDP socket */

#define ENOMEM 12
#define ECONNREFUSED 111
#define EHOSTUNREACH 113

/* Verdicts of cgroup sock_addr programs. */
#define SYS_REJECT 0
#define SYS_PROCEED 1

/*
 * Map sizes. The hash maps are BPF_F_NO_PREALLOC, so these are ceilings,
 * not reservations: memory is charged per entry that exists. The LRU maps
 * cannot avoid preallocation and are sized for what they hold (see
 * bpf/README.md). The Go side mirrors every number and a test checks them
 * against this object.
 */
#define SVCLAB_MAX_SERVICES 65536
#define SVCLAB_MAX_BACKENDS (1 << 20)
#define SVCLAB_MAX_AFFINITY 65536
#define SVCLAB_MAX_REVNAT 65536

/* One frontend: ClusterIP, port and L4 protocol, as the socket names them. */
struct svc_key {
	__be32 addr[4];
	__be16 port;
	__u8 proto;
	__u8 pad;
};

#define SVC_F_AFFINITY 1 /* sessionAffinity: ClientIP */

/*
 * id names the service's backend slots. It stays the same while the
 * frontend exists and is never reused, so it also tells a socket's saved
 * state whether the service it was translated for still exists.
 * count == 0: the service exists but has no endpoint to send to.
 */
struct svc_entry {
	__u32 id;
	__u16 count;
	__u16 flags;
	__u32 affinity_timeout_ms;
};

/* Slots of one service are 0..count-1; a new connection picks one. */
struct backend_key {
	__u32 svc_id;
	__u32 slot;
};

struct backend_entry {
	__be32 addr[4];
	__be16 port;
	__u16 pad;
};

/*
 * Membership: {service id, backend} exists while the backend serves the
 * service. Saved choices (a UDP socket's backend, an affinity entry, a
 * connected UDP socket's peer) are checked against it, so they die with
 * the backend even when its slot is reused. The value is the backend's slot.
 * The same key counts connections per backend.
 */
struct member_key {
	__u32 svc_id;
	__be32 addr[4];
	__be16 port;
	__u16 pad;
};

/* ClientIP affinity: client identity is the network namespace. */
struct affinity_key {
	__u64 netns_cookie;
	__u32 svc_id;
	__u32 pad;
};

struct affinity_entry {
	__be32 addr[4];
	__be16 port;
	__u16 pad;
	__u32 pad2;
	__u64 last_used_ns;
};

/* Reverse translation of one socket to one backend. */
struct revnat_key {
	__u64 cookie;
	__be32 addr[4];
	__be16 port;
	__u16 pad;
	__u32 pad2;
};

struct revnat_entry {
	__be32 vip[4];
	__be16 vip_port;
	__u8 proto;
	__u8 pad;
	__u32 svc_id;
};

#define SOCK_F_VALID 1   /* vip/backend below describe the socket's last translation */
#define SOCK_F_SPILLED 2 /* older translations of this socket are in svclab_revnat */

/*
 * Per-socket state in socket-local storage: it lives and dies with the
 * socket, so no other socket can evict it. It holds the socket's latest
 * translation, which is both the reverse mapping for recvmsg/getpeername
 * and, for UDP, the backend the socket sticks to.
 */
struct sock_state {
	__be32 vip[4];
	__be16 vip_port;
	__u8 proto;
	__u8 flags;
	__u32 svc_id;
	__be32 backend[4];
	__be16 backend_port;
	__u16 pad;
};

/* Per-CPU per-service counts. */
struct svc_counter {
	__u64 connections;
	__u64 refused;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct svc_key);
	__type(value, struct svc_entry);
	__uint(max_entries, SVCLAB_MAX_SERVICES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} svclab_services SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct backend_key);
	__type(value, struct backend_entry);
	__uint(max_entries, SVCLAB_MAX_BACKENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} svclab_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__type(key, struct member_key);
	__type(value, __u32);
	__uint(max_entries, SVCLAB_MAX_BACKENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} svclab_members SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct affinity_key);
	__type(value, struct affinity_entry);
	__uint(max_entries, SVCLAB_MAX_AFFINITY);
} svclab_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct revnat_key);
	__type(value, struct revnat_entry);
	__uint(max_entries, SVCLAB_MAX_REVNAT);
} svclab_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__type(key, int);
	__type(value, struct sock_state);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} svclab_sock SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, __u32);
	__type(value, struct svc_counter);
	__uint(max_entries, SVCLAB_MAX_SERVICES);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} svclab_svc_ctr SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_HASH);
	__type(key, struct member_key);
	__type(value, __u64);
	__uint(max_entries, SVCLAB_MAX_BACKENDS);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} svclab_be_ctr SEC(".maps");

/*
 * Set by the loader when the kernel has bpf_set_retval() for sock_addr
 * programs (5.18+). It lives in .rodata, which is frozen before the program
 * is verified, so on older kernels the verifier sees the helper call as dead
 * code and removes it instead of rejecting an unknown helper; a rejected
 * syscall then fails with the kernel's default EPERM.
 */
volatile const __u8 svclab_have_set_retval = 0;

static __always_inline void sock_set_errno(int err)
{
	if (svclab_have_set_retval)
		bpf_set_retval(err);
}

/* Turn a worker result into the hook's verdict and the caller's errno. */
static __always_inline int sock_verdict(int err)
{
	if (err == 0)
		return SYS_PROCEED;
	sock_set_errno(err);
	return SYS_REJECT;
}

/* ---- addresses ---------------------------------------------------------- */

/* A socket address being translated, in network byte order. */
struct dst {
	__be32 addr[4];
	__be16 port;
	__u8 xlated; /* set when the worker rewrote addr/port */
	__u8 pad;
};

static __always_inline void addr_set4(__be32 out[4], __be32 ip4)
{
	out[0] = 0;
	out[1] = 0;
	out[2] = bpf_htonl(0xffff);
	out[3] = ip4;
}

static __always_inline void addr_copy(__be32 dst[4], const __be32 src[4])
{
	dst[0] = src[0];
	dst[1] = src[1];
	dst[2] = src[2];
	dst[3] = src[3];
}

static __always_inline int addr_eq(const __be32 a[4], const __be32 b[4])
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3])) == 0;
}

/*
 * user_port is a __u32 field holding a __be16. Older verifiers only accept
 * a full 4-byte load of it, and clang turns a plain 16-bit use into a
 * 2-byte load, so force the wide read through a volatile local.
 */
static __always_inline __be16 ctx_port(struct bpf_sock_addr *ctx)
{
	volatile __u32 port = ctx->user_port;

	return (__be16)port;
}

static __always_inline void sock4_load(struct bpf_sock_addr *ctx, struct dst *d)
{
	addr_set4(d->addr, ctx->user_ip4);
	d->port = ctx_port(ctx);
}

static __always_inline void sock4_store(struct bpf_sock_addr *ctx, const struct dst *d)
{
	ctx->user_ip4 = d->addr[3];
	ctx->user_port = (__u32)d->port;
}

static __always_inline void sock6_load(struct bpf_sock_addr *ctx, struct dst *d)
{
	d->addr[0] = ctx->user_ip6[0];
	d->addr[1] = ctx->user_ip6[1];
	d->addr[2] = ctx->user_ip6[2];
	d->addr[3] = ctx->user_ip6[3];
	d->port = ctx_port(ctx);
}

static __always_inline void sock6_store(struct bpf_sock_addr *ctx, const struct dst *d)
{
	ctx->user_ip6[0] = d->addr[0];
	ctx->user_ip6[1] = d->addr[1];
	ctx->user_ip6[2] = d->addr[2];
	ctx->user_ip6[3] = d->addr[3];
	ctx->user_port = (__u32)d->port;
}

/* ---- service state -------------------------------------------------------- */

static __always_inline int backend_is_member(__u32 svc_id, const __be32 addr[4], __be16 port)
{
	struct member_key mk = { .svc_id = svc_id, .port = port };

	addr_copy(mk.addr, addr);
	return bpf_map_lookup_elem(&svclab_members, &mk) != NULL;
}

/*
 * A saved translation's service still exists under the same id and still
 * has a backend. A service drained to no endpoint counts as gone (as in
 * Cilium's bpf_sock.c): nothing it could have answered for is served any
 * more, and keeping the mapping would let a stale backend's datagram pass
 * as the VIP's.
 */
static __always_inline int revnat_svc_live(const struct revnat_entry *m)
{
	struct svc_key key = { .port = m->vip_port, .proto = m->proto };
	struct svc_entry *svc;

	addr_copy(key.addr, m->vip);
	svc = bpf_map_lookup_elem(&svclab_services, &key);
	return svc && svc->id == m->svc_id && svc->count > 0;
}

/* Connections per service and per backend; per-CPU, so plain increments. */
static __always_inline void count_connection(__u32 svc_id, const struct backend_entry *be)
{
	struct member_key mk = { .svc_id = svc_id, .port = be->port };
	struct svc_counter *sc, sinit = { .connections = 1 };
	__u64 *bc, binit = 1;

	sc = bpf_map_lookup_elem(&svclab_svc_ctr, &svc_id);
	if (sc)
		sc->connections++;
	else if (bpf_map_update_elem(&svclab_svc_ctr, &svc_id, &sinit, BPF_NOEXIST)) {
		/* Another CPU created it first; this CPU's slot is zero. */
		sc = bpf_map_lookup_elem(&svclab_svc_ctr, &svc_id);
		if (sc)
			sc->connections++;
	}

	addr_copy(mk.addr, be->addr);
	bc = bpf_map_lookup_elem(&svclab_be_ctr, &mk);
	if (bc)
		(*bc)++;
	else if (bpf_map_update_elem(&svclab_be_ctr, &mk, &binit, BPF_NOEXIST)) {
		bc = bpf_map_lookup_elem(&svclab_be_ctr, &mk);
		if (bc)
			(*bc)++;
	}
}

static __always_inline void count_refused(__u32 svc_id)
{
	struct svc_counter *sc, sinit = { .refused = 1 };

	sc = bpf_map_lookup_elem(&svclab_svc_ctr, &svc_id);
	if (sc)
		sc->refused++;
	else if (bpf_map_update_elem(&svclab_svc_ctr, &svc_id, &sinit, BPF_NOEXIST)) {
		sc = bpf_map_lookup_elem(&svclab_svc_ctr, &svc_id);
		if (sc)
			sc->refused++;
	}
}

/* ---- backend selection ---------------------------------------------------- */

/*
 * A random slot, as kube-proxy's iptables cascade picks. If the slot is gone
 * the lookup raced with an Apply that shrank the service after the service
 * entry was read: read the entry again and pick among the new slots, so a
 * resync never shows up as a failed connect. *svc_id follows the entry.
 */
static __always_inline int backend_pick(const struct svc_key *key, __u32 *svc_id, __u16 count,
					struct backend_entry *out)
{
	struct backend_key bkey = { .svc_id = *svc_id, .slot = bpf_get_prandom_u32() % count };
	struct backend_entry *be;
	struct svc_entry *svc;

	be = bpf_map_lookup_elem(&svclab_backends, &bkey);
	if (!be) {
		svc = bpf_map_lookup_elem(&svclab_services, key);
		if (!svc)
			return -EHOSTUNREACH;
		count = svc->count;
		if (count == 0)
			return -ECONNREFUSED;
		bkey.svc_id = svc->id;
		bkey.slot = bpf_get_prandom_u32() % count;
		be = bpf_map_lookup_elem(&svclab_backends, &bkey);
		if (!be)
			return -EHOSTUNREACH;
		*svc_id = bkey.svc_id;
	}
	*out = *be;
	return 0;
}

/*
 * sessionAffinity: ClientIP. The client is identified by its network
 * namespace cookie: the source address is not chosen yet when connect()
 * runs, and in a pod every socket shares the pod's one address anyway. The
 * backend stays while the client keeps using it within the timeout (the
 * timestamp is refreshed on every translation, like kube-proxy's "recent"
 * match) and while it still serves the service.
 */
static __always_inline int backend_affinity(void *ctx, const struct svc_key *key, __u32 *svc_id, __u16 count,
					    __u32 timeout_ms, struct backend_entry *out)
{
	struct affinity_key akey = { .netns_cookie = bpf_get_netns_cookie(ctx), .svc_id = *svc_id };
	struct affinity_entry *ae, fresh = {};
	__u64 now = bpf_ktime_get_ns();
	__u64 timeout_ns = (__u64)timeout_ms * 1000000ULL;
	int err;

	ae = bpf_map_lookup_elem(&svclab_affinity, &akey);
	if (ae && now < ae->last_used_ns + timeout_ns && backend_is_member(*svc_id, ae->addr, ae->port)) {
		ae->last_used_ns = now;
		addr_copy(out->addr, ae->addr);
		out->port = ae->port;
		return 0;
	}
	err = backend_pick(key, svc_id, count, out);
	if (err)
		return err;
	addr_copy(fresh.addr, out->addr);
	fresh.port = out->port;
	fresh.last_used_ns = now;
	akey.svc_id = *svc_id;
	/* Best effort: if the LRU cannot take it, the next call picks again. */
	bpf_map_update_elem(&svclab_affinity, &akey, &fresh, BPF_ANY);
	return 0;
}

/* ---- forward path: connect4/6, sendmsg4/6 ---------------------------------- */

/*
 * The socket connects to a destination that is not a service. If that
 * address is a backend this socket once reached through a service
 * (connect(VIP), connect(AF_UNSPEC), connect(backend)), forget the
 * mapping, or getpeername/recvmsg would still report the VIP. Only
 * connect() does this: an AF_INET6 socket connected to a v4-mapped VIP
 * sends every datagram through sendmsg4 with its (translated) peer as the
 * explicit destination, which must not erase the mapping.
 */
static __always_inline void sock_forget(struct bpf_sock_addr *ctx, const struct dst *d)
{
	struct revnat_key rkey = { .port = d->port };
	struct sock_state *st;

	st = bpf_sk_storage_get(&svclab_sock, ctx->sk, 0, 0);
	if (!st)
		return;
	if ((st->flags & SOCK_F_VALID) && st->backend_port == d->port && addr_eq(st->backend, d->addr))
		st->flags &= ~SOCK_F_VALID;
	if (st->flags & SOCK_F_SPILLED) {
		rkey.cookie = bpf_get_socket_cookie(ctx);
		addr_copy(rkey.addr, d->addr);
		bpf_map_delete_elem(&svclab_revnat, &rkey);
	}
}

/*
 * Forward translation: ClusterIP:port -> backend address:targetPort.
 * Returns 0 when the destination was translated (d->xlated) or is not a
 * service, -ECONNREFUSED for a service without endpoints, -EHOSTUNREACH
 * when the service vanished mid-lookup, -ENOMEM when the socket's state
 * cannot be stored (translating anyway would leave replies and
 * getpeername showing the backend).
 *
 * Backend choice: ClientIP affinity if the service has it; else a UDP
 * socket keeps the backend it already uses for this service while that
 * backend serves it (so an unconnected socket does not spray datagrams
 * over backends, and is re-steered on its next send once its backend is
 * removed); else a random slot.
 */
static __always_inline int sock_xlate_fwd(struct bpf_sock_addr *ctx, struct dst *d, int is_connect)
{
	struct revnat_key rkey = {};
	struct revnat_entry spill = {};
	struct backend_entry be = {};
	struct svc_key key = {};
	struct sock_state *st;
	struct svc_entry *svc;
	__u32 proto = ctx->protocol;
	__u32 svc_id, timeout_ms;
	__u16 count, flags;
	int same_svc, err;

	if (proto != IPPROTO_TCP && proto != IPPROTO_UDP)
		return 0;

	addr_copy(key.addr, d->addr);
	key.port = d->port;
	key.proto = (__u8)proto;
	svc = bpf_map_lookup_elem(&svclab_services, &key);
	if (!svc) {
		if (is_connect)
			sock_forget(ctx, d);
		return 0;
	}
	svc_id = svc->id;
	count = svc->count;
	flags = svc->flags;
	timeout_ms = svc->affinity_timeout_ms;
	if (count == 0) {
		count_refused(svc_id);
		return -ECONNREFUSED;
	}

	st = bpf_sk_storage_get(&svclab_sock, ctx->sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!st)
		return -ENOMEM;
	same_svc = (st->flags & SOCK_F_VALID) && st->svc_id == svc_id && st->vip_port == key.port &&
		   addr_eq(st->vip, key.addr);

	if (flags & SVC_F_AFFINITY)
		err = backend_affinity(ctx, &key, &svc_id, count, timeout_ms, &be);
	else if (proto == IPPROTO_UDP && same_svc && backend_is_member(svc_id, st->backend, st->backend_port)) {
		addr_copy(be.addr, st->backend);
		be.port = st->backend_port;
		err = 0;
	} else
		err = backend_pick(&key, &svc_id, count, &be);
	if (err)
		return err;

	if (same_svc && st->svc_id == svc_id && st->backend_port == be.port && addr_eq(st->backend, be.addr)) {
		/* Unchanged: the common case of a UDP socket sending again. */
		if (is_connect)
			count_connection(svc_id, &be);
	} else {
		/*
		 * The socket moves to another service, or to another backend
		 * of the same one (its backend left the service, or its
		 * affinity expired): keep the previous mapping where recvmsg
		 * can still find it. A reply from the old backend answers a
		 * datagram the application sent to that VIP (a resolver
		 * asking two servers, or a backend answering late after it
		 * was removed), and must show the VIP, not the backend.
		 * Same backend under a new id (the service was recreated)
		 * needs no spill: the current mapping already matches it.
		 */
		if ((st->flags & SOCK_F_VALID) &&
		    !(st->backend_port == be.port && addr_eq(st->backend, be.addr))) {
			rkey.cookie = bpf_get_socket_cookie(ctx);
			addr_copy(rkey.addr, st->backend);
			rkey.port = st->backend_port;
			addr_copy(spill.vip, st->vip);
			spill.vip_port = st->vip_port;
			spill.proto = st->proto;
			spill.svc_id = st->svc_id;
			if (bpf_map_update_elem(&svclab_revnat, &rkey, &spill, BPF_ANY) == 0)
				st->flags |= SOCK_F_SPILLED;
		}
		addr_copy(st->vip, key.addr);
		st->vip_port = key.port;
		st->proto = key.proto;
		st->svc_id = svc_id;
		addr_copy(st->backend, be.addr);
		st->backend_port = be.port;
		st->flags |= SOCK_F_VALID;
		count_connection(svc_id, &be);
	}

	addr_copy(d->addr, be.addr);
	d->port = be.port;
	d->xlated = 1;
	return 0;
}

static __always_inline int sock4_xlate_fwd(struct bpf_sock_addr *ctx, int is_connect)
{
	struct dst d = {};
	int err;

	sock4_load(ctx, &d);
	err = sock_xlate_fwd(ctx, &d, is_connect);
	if (err == 0 && d.xlated)
		sock4_store(ctx, &d);
	return err;
}

static __always_inline int sock6_xlate_fwd(struct bpf_sock_addr *ctx, int is_connect)
{
	struct dst d = {};
	int err;

	sock6_load(ctx, &d);
	err = sock_xlate_fwd(ctx, &d, is_connect);
	if (err == 0 && d.xlated)
		sock6_store(ctx, &d);
	return err;
}

/* ---- reverse path: recvmsg4/6, getpeername4/6, the UDP destroy iterator ---- */

/*
 * Finds how the socket reached the peer address: its own latest
 * translation first, then, for sockets that talked to more than one
 * service, svclab_revnat. Returns REV_OWN or REV_SPILLED with *out
 * filled, or 0. sk is
 * ctx->sk or an iterator's socket; cookie_ctx is what
 * bpf_get_socket_cookie() takes in that program type.
 */
#define REV_OWN 1     /* found in the socket's own state */
#define REV_SPILLED 2 /* found in svclab_revnat */

static __always_inline int sock_rev_lookup(void *sk, void *cookie_ctx, const __be32 peer[4], __be16 peer_port,
					   struct revnat_entry *out)
{
	struct revnat_key rkey = { .port = peer_port };
	struct revnat_entry *m;
	struct sock_state *st;

	st = bpf_sk_storage_get(&svclab_sock, sk, 0, 0);
	if (!st)
		return 0;
	if ((st->flags & SOCK_F_VALID) && st->backend_port == peer_port && addr_eq(st->backend, peer)) {
		addr_copy(out->vip, st->vip);
		out->vip_port = st->vip_port;
		out->proto = st->proto;
		out->svc_id = st->svc_id;
		return REV_OWN;
	}
	if (!(st->flags & SOCK_F_SPILLED))
		return 0;
	rkey.cookie = bpf_get_socket_cookie(cookie_ctx);
	addr_copy(rkey.addr, peer);
	m = bpf_map_lookup_elem(&svclab_revnat, &rkey);
	if (!m)
		return 0;
	*out = *m;
	return REV_SPILLED;
}

/*
 * Reverse translation: backend address:port -> ClusterIP:port. A datagram
 * (validate) is translated while the service it was sent to still exists
 * and has a backend: once a service is deleted or drained its former
 * backends show up as themselves, as under a proxy that flushed its
 * conntrack entries, and a spilled mapping found stale is deleted so that
 * it cannot outlive its service in the LRU. A reply from a backend that
 * was removed from a live service is still translated: it answers a
 * datagram the socket sent to the ClusterIP before the removal (the socket
 * itself sends elsewhere from its next datagram on, and its old mapping
 * was spilled for exactly this). getpeername is not validated: the socket
 * was connected to the ClusterIP, and like under a per-packet NAT it
 * reports that for its whole life.
 * Returns 1 when d was rewritten.
 */
static __always_inline int sock_xlate_rev(struct bpf_sock_addr *ctx, struct dst *d, int validate)
{
	struct revnat_key rkey = { .port = d->port };
	struct revnat_entry m = {};
	int found;

	found = sock_rev_lookup(ctx->sk, ctx, d->addr, d->port, &m);
	if (!found)
		return 0;
	if (validate && !revnat_svc_live(&m)) {
		if (found == REV_SPILLED) {
			rkey.cookie = bpf_get_socket_cookie(ctx);
			addr_copy(rkey.addr, d->addr);
			bpf_map_delete_elem(&svclab_revnat, &rkey);
		}
		return 0;
	}
	addr_copy(d->addr, m.vip);
	d->port = m.vip_port;
	return 1;
}

static __always_inline void sock4_xlate_rev(struct bpf_sock_addr *ctx, int validate)
{
	struct dst d = {};

	sock4_load(ctx, &d);
	/* An AF_INET socket can only have reached an IPv4 service. */
	if (sock_xlate_rev(ctx, &d, validate))
		sock4_store(ctx, &d);
}

static __always_inline void sock6_xlate_rev(struct bpf_sock_addr *ctx, int validate)
{
	struct dst d = {};

	sock6_load(ctx, &d);
	if (sock_xlate_rev(ctx, &d, validate))
		sock6_store(ctx, &d);
}

/* ---- entry points --------------------------------------------------------- */

SEC("cgroup/connect4")
int svclab_sock4_connect(struct bpf_sock_addr *ctx)
{
	return sock_verdict(sock4_xlate_fwd(ctx, 1));
}

SEC("cgroup/connect6")
int svclab_sock6_connect(struct bpf_sock_addr *ctx)
{
	return sock_verdict(sock6_xlate_fwd(ctx, 1));
}

SEC("cgroup/sendmsg4")
int svclab_sock4_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock_verdict(sock4_xlate_fwd(ctx, 0));
}

SEC("cgroup/sendmsg6")
int svclab_sock6_sendmsg(struct bpf_sock_addr *ctx)
{
	return sock_verdict(sock6_xlate_fwd(ctx, 0));
}

/* recvmsg and getpeername programs must return 1; they only rewrite. */
SEC("cgroup/recvmsg4")
int svclab_sock4_recvmsg(struct bpf_sock_addr *ctx)
{
	sock4_xlate_rev(ctx, 1);
	return SYS_PROCEED;
}

SEC("cgroup/recvmsg6")
int svclab_sock6_recvmsg(struct bpf_sock_addr *ctx)
{
	sock6_xlate_rev(ctx, 1);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername4")
int svclab_sock4_getpeername(struct bpf_sock_addr *ctx)
{
	sock4_xlate_rev(ctx, 0);
	return SYS_PROCEED;
}

SEC("cgroup/getpeername6")
int svclab_sock6_getpeername(struct bpf_sock_addr *ctx)
{
	sock6_xlate_rev(ctx, 0);
	return SYS_PROCEED;
}

/* ---- connected UDP sockets to removed backends: iter/udp + bpf_sock_destroy -- */

/*
 * A connected UDP socket never passes through sendmsg4/6 again, so it
 * cannot be re-steered: it is destroyed instead, and the application sees
 * ECONNABORTED and reconnects through connect4/6. Only the fields read
 * below are declared; preserve_access_index makes every access a CO-RE
 * relocation resolved against the running kernel's BTF, so the layouts
 * here need not match the kernel's.
 */
struct seq_file;

struct bpf_iter_meta {
	struct seq_file *seq;
} __attribute__((preserve_access_index));

struct in6_addr {
	union {
		__be32 u6_addr32[4];
	} in6_u;
} __attribute__((preserve_access_index));

struct sock_common {
	__be32 skc_daddr;
	__be16 skc_dport;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	struct in6_addr skc_v6_daddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
} __attribute__((preserve_access_index));

struct udp_sock;

struct bpf_iter__udp {
	struct bpf_iter_meta *meta;
	struct udp_sock *udp_sk;
} __attribute__((preserve_access_index));

extern int bpf_sock_destroy(struct sock_common *sk) __ksym;

/* Is sk a connected UDP socket whose backend no longer serves its service? */
static __always_inline int udp_sock_stale(struct sock *sk)
{
	struct revnat_entry m = {};
	__be32 peer[4];
	__be16 port;

	if (sk->__sk_common.skc_state != TCP_ESTABLISHED)
		return 0;
	if (sk->__sk_common.skc_family == AF_INET)
		addr_set4(peer, sk->__sk_common.skc_daddr);
	else if (sk->__sk_common.skc_family == AF_INET6) {
		peer[0] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[0];
		peer[1] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[1];
		peer[2] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[2];
		peer[3] = sk->__sk_common.skc_v6_daddr.in6_u.u6_addr32[3];
	} else
		return 0;
	port = sk->__sk_common.skc_dport;
	if (!sock_rev_lookup(sk, sk, peer, port, &m))
		return 0;
	return !revnat_svc_live(&m) || !backend_is_member(m.svc_id, peer, port);
}

/*
 * Walks the UDP sockets of the network namespace the iterator was opened
 * in; writes one byte per destroyed socket so the loader can count them.
 */
SEC("iter/udp")
int svclab_udp_destroy(struct bpf_iter__udp *ctx)
{
	struct sock *sk = (struct sock *)ctx->udp_sk;
	char mark = 'x';

	if (!sk || !udp_sock_stale(sk))
		return 0;
	if (bpf_sock_destroy(&sk->__sk_common) == 0)
		bpf_seq_write(ctx->meta->seq, &mark, sizeof(mark));
	return 0;
}

/*
 * bpf_seq_write() and kfuncs are for GPL-compatible programs only; the
 * program is dual-licensed, which the kernel accepts as such.
 */
char _license[] SEC("license") = "Dual BSD/GPL";
