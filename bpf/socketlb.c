//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * svclab reference socket-level Service load balancer.
 *
 * A ClusterIP is translated once, when the client calls connect(): the
 * cgroup/connect4 hook rewrites the destination of the socket address the
 * kernel is about to connect to from ClusterIP:port to one backend's
 * address:targetPort. After that the socket talks to the backend directly,
 * so no packet is ever NATed and no per-packet lookup happens.
 *
 * Layout: one tiny SEC() entry per hook, a shared static inline worker that
 * returns 0 or a negative errno, and the errno-to-verdict mapping done only
 * at the entry. sendmsg4 (unconnected UDP) will call the same forward
 * worker; recvmsg4/getpeername4 will get a reverse worker.
 */

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* -nostdinc: no libc or <linux/in.h>, so spell out the few constants used. */
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

#define ECONNREFUSED 111
#define EHOSTUNREACH 113

/* Verdicts of cgroup sock_addr programs. */
#define SYS_REJECT 0
#define SYS_PROCEED 1

/*
 * Map sizes are ceilings, not reservations: both maps are created with
 * BPF_F_NO_PREALLOC, so memory is only charged for entries that exist.
 * They are generous so that the datapath is never what limits a scale
 * scenario: 65536 service ports is more than the largest Kubernetes
 * scalability target for Services per cluster, and 1<<20 backend slots
 * allows e.g. 10000 services with 100 endpoints each. The backend count of
 * one service is a __u16, which bounds a single service at 65535 backends.
 * The Go side mirrors these numbers and checks them against the ELF.
 */
#define SVCLAB_MAX_SERVICES 65536
#define SVCLAB_MAX_BACKENDS (1 << 20)

/* One frontend: ClusterIP, port and L4 protocol, all as the socket sees them. */
struct svc_key {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

/*
 * id names the service's backend slots; it stays the same while the
 * frontend exists, so a resync only rewrites the slots that changed.
 * count == 0 means the service exists but has no ready endpoint.
 * flags is reserved (session affinity, traffic policies) and is 0 today.
 */
struct svc_entry {
	__u32 id;
	__u16 count;
	__u16 flags;
};

/* Slots of one service are 0..count-1. */
struct backend_key {
	__u32 svc_id;
	__u32 slot;
};

struct backend_entry {
	__be32 addr;
	__be16 port;
	__u16 pad;
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

/*
 * Set by the loader when the kernel has bpf_set_retval() for sock_addr
 * programs (5.18+). It lives in .rodata, which is frozen before the program
 * is verified, so on older kernels the verifier sees the helper call as dead
 * code and removes it instead of rejecting an unknown helper; a rejected
 * connect() then fails with the kernel's default EPERM.
 */
volatile const __u8 svclab_have_set_retval = 0;

static __always_inline void sock_set_errno(int err)
{
	if (svclab_have_set_retval)
		bpf_set_retval(err);
}

/*
 * Which sockets the forward path translates. Connected UDP also passes
 * through connect4, but a UDP socket must keep one backend across sendmsg
 * calls, which needs the reverse path for replies; until the UDP hooks
 * exist, UDP is left alone rather than half translated.
 */
static __always_inline int sock_proto_enabled(__u32 proto)
{
	return proto == IPPROTO_TCP;
}

/*
 * A TCP socket is translated exactly once, at connect(), so a fresh random
 * slot per call spreads connections like kube-proxy's random iptables
 * cascade. (UDP will select by socket cookie to stay sticky.)
 */
static __always_inline __u32 sock_select_slot(__u16 count)
{
	return bpf_get_prandom_u32() % count;
}

/*
 * Forward translation: ClusterIP:port -> backend address:targetPort.
 * Returns 0 when the socket was translated or is not ours to touch,
 * -ECONNREFUSED for a service without backends, and -EHOSTUNREACH when the
 * chosen slot vanished under a concurrent resync.
 */
static __always_inline int sock4_xlate_fwd(struct bpf_sock_addr *ctx)
{
	struct backend_entry *be;
	struct backend_key bkey = {};
	struct svc_key key = {};
	struct svc_entry *svc;
	__u32 proto = ctx->protocol;

	if (!sock_proto_enabled(proto))
		return 0;

	/*
	 * user_port is a __u32 field holding a __be16. Older verifiers only
	 * accept a full 4-byte load of it, and clang turns a plain 16-bit use
	 * into a 2-byte load, so force the wide read through a volatile local.
	 */
	volatile __u32 user_port = ctx->user_port;

	key.addr = ctx->user_ip4;
	key.port = (__be16)user_port;
	key.proto = (__u8)proto;

	svc = bpf_map_lookup_elem(&svclab_services, &key);
	if (!svc)
		return 0;
	if (svc->count == 0)
		return -ECONNREFUSED;

	bkey.svc_id = svc->id;
	bkey.slot = sock_select_slot(svc->count);
	be = bpf_map_lookup_elem(&svclab_backends, &bkey);
	if (!be)
		return -EHOSTUNREACH;

	ctx->user_ip4 = be->addr;
	ctx->user_port = (__u32)be->port;
	return 0;
}

/* Turn a worker result into the hook's verdict and the caller's errno. */
static __always_inline int sock_verdict(int err)
{
	if (err == 0)
		return SYS_PROCEED;
	sock_set_errno(err);
	return SYS_REJECT;
}

SEC("cgroup/connect4")
int svclab_sock4_connect(struct bpf_sock_addr *ctx)
{
	return sock_verdict(sock4_xlate_fwd(ctx));
}

/* No GPL-only helper is used; the string only has to be GPL-compatible. */
char _license[] SEC("license") = "Dual BSD/GPL";
