//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * svclab tc eBPF baseline: a ClusterIP implemented by per-packet DNAT in tc
 * programs, the cls_bpf way Service datapaths worked before socket-level
 * load balancing.
 *
 * Two programs sit on each client pod's host-side veth in the node
 * namespace:
 *
 *   svclab_tc_ingress  packets from the client. A packet to a service
 *                      frontend (ClusterIP, port, protocol) is looked up in
 *                      a connection map keyed by its 5-tuple; a new flow
 *                      picks a random backend and records both directions.
 *                      The destination is rewritten to the backend and the
 *                      node routes the packet to the backend's veth.
 *   svclab_tc_egress   packets towards the client. A packet from a backend
 *                      that answers a translated flow gets its source
 *                      rewritten back to ClusterIP:port, so the client's
 *                      socket stays connected to the VIP.
 *
 * The programs keep their own flow state in two LRU hashes (no kernel
 * conntrack): forward {client, VIP} -> backend and reverse
 * {backend, client} -> VIP. Entries age out by LRU eviction only. A TCP SYN
 * with a new initial sequence number on an existing entry is a new
 * connection reusing the client port (TIME_WAIT reuse) and picks afresh; a
 * retransmitted SYN (same sequence number) keeps its backend.
 *
 * Layout as in socketlb.c: tiny SEC() entries, static inline workers that
 * return 0 or a negative errno, and the errno-to-verdict mapping only at the
 * entry.
 */

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* -nostdinc: no <linux/if_ether.h>, <linux/ip.h>, <linux/pkt_cls.h>. */
#define ETH_HLEN 14
#define ETH_P_IP 0x0800
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

#define TC_ACT_OK 0
#define TC_ACT_SHOT 2

#define ENOENT 2
#define EFAULT 14
#define EHOSTUNREACH 113

/* Offsets inside the IPv4 header (options come after daddr). */
#define IP_CSUM_OFF 10
#define IP_SADDR_OFF 12
#define IP_DADDR_OFF 16
/* More-fragments flag and fragment offset, in host order. */
#define IP_MF_OFFSET 0x3fff

/* Offsets inside the L4 headers. */
#define L4_SPORT_OFF 0
#define L4_DPORT_OFF 2
#define TCP_CSUM_OFF 16
#define UDP_CSUM_OFF 6

#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_ACK 0x10

/* Same ceilings as socketlb.c; the Go side mirrors them. */
#define SVCLAB_MAX_SERVICES 65536
#define SVCLAB_MAX_BACKENDS (1 << 20)
/*
 * Flow entries are preallocated (LRU maps cannot be NO_PREALLOC): about
 * 20 MiB per map at this size. Eviction takes the least recently used
 * flows, so an entry is only lost once 1<<18 other flows were used after
 * it: at 20000 new connections per second, a flow idle for ~13 s. Such a
 * flow's next packet starts a new flow (a new backend, for TCP a reset).
 */
#define SVCLAB_MAX_FLOWS (1 << 18)

/* Frontend and backend maps: the same layout as socketlb.c. */
struct svc_key {
	__be32 addr;
	__be16 port;
	__u8 proto;
	__u8 pad;
};

/* count == 0: the service exists but has no ready endpoint. */
struct svc_entry {
	__u32 id;
	__u16 count;
	__u16 flags;
};

struct backend_key {
	__u32 svc_id;
	__u32 slot;
};

struct backend_entry {
	__be32 addr;
	__be16 port;
	__u16 pad;
};

/*
 * A packet's 5-tuple as it is on the wire, in network byte order: the
 * forward map is keyed by {client, VIP} as the client sends it, the reverse
 * map by {backend, client} as the backend answers.
 */
struct conn_key {
	__be32 saddr;
	__be32 daddr;
	__be16 sport;
	__be16 dport;
	__u8 proto;
	__u8 pad[3];
};

/* Forward: where the flow goes. syn_seq is the SYN's sequence number. */
struct conn_fwd {
	__be32 addr;
	__be16 port;
	__u16 pad;
	__be32 syn_seq;
};

/* Reverse: what the backend's source is rewritten to. */
struct conn_rev {
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

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct conn_key);
	__type(value, struct conn_fwd);
	__uint(max_entries, SVCLAB_MAX_FLOWS);
} svclab_tc_fwd SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__type(key, struct conn_key);
	__type(value, struct conn_rev);
	__uint(max_entries, SVCLAB_MAX_FLOWS);
} svclab_tc_rev SEC(".maps");

/*
 * Event counters, per CPU. Only rare events are counted (a new flow, a
 * drop), never every packet, so the counters cost nothing on the
 * established path.
 */
enum stat_index {
	STAT_NEW_FLOW = 0,
	STAT_DROP_NO_BACKEND = 1,
	STAT_DROP_ERROR = 2,
	STAT_STALE_REV = 3,
	STAT_MAX = 4,
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__type(key, __u32);
	__type(value, __u64);
	__uint(max_entries, STAT_MAX);
} svclab_tc_stats SEC(".maps");

static __always_inline void stat_inc(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&svclab_tc_stats, &idx);

	if (v)
		*v += 1;
}

/* The first bytes of an IPv4 header. */
struct ipv4_hdr {
	__u8 ver_ihl;
	__u8 tos;
	__be16 tot_len;
	__be16 id;
	__be16 frag_off;
	__u8 ttl;
	__u8 protocol;
	__sum16 check;
	__be32 saddr;
	__be32 daddr;
};

/* Ports, and for TCP the sequence number and flags. */
struct l4_hdr {
	__be16 sport;
	__be16 dport;
	__be32 seq;
	__be32 ack_seq;
	__u8 doff;
	__u8 flags;
};

/* What the workers need of a parsed packet. */
struct pkt {
	struct conn_key tuple;
	__u32 l4_off;
	/* Absolute offset of the L4 checksum and the csum helper flags. */
	__u32 csum_off;
	__u64 csum_flags;
	__be32 seq;
	__u8 tcp_flags;
};

/*
 * Parse an unfragmented IPv4 TCP or UDP packet. Headers are read with
 * bpf_skb_load_bytes, which also works on non-linear skbs and keeps the
 * variable IP header length simple for the verifier. Returns 0 for a packet
 * the programs translate, -ENOENT for anything else (which passes as is).
 *
 * Fragments are passed untouched: only the first one carries the ports, so
 * a fragmented datagram to a ClusterIP is not translated (the node routes
 * it towards the service CIDR's next hop, where it is lost).
 */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	struct ipv4_hdr ip;
	struct l4_hdr l4 = {};
	__u32 ihl;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return -ENOENT;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) < 0)
		return -ENOENT;
	ihl = ip.ver_ihl & 0x0f;
	if ((ip.ver_ihl >> 4) != 4 || ihl < 5)
		return -ENOENT;
	if (ip.frag_off & bpf_htons(IP_MF_OFFSET))
		return -ENOENT;

	p->l4_off = ETH_HLEN + ihl * 4;
	switch (ip.protocol) {
	case IPPROTO_TCP:
		if (bpf_skb_load_bytes(skb, p->l4_off, &l4, sizeof(l4)) < 0)
			return -ENOENT;
		p->csum_off = p->l4_off + TCP_CSUM_OFF;
		p->csum_flags = 0;
		break;
	case IPPROTO_UDP:
		/* A UDP header is 8 bytes: ports only are read. */
		if (bpf_skb_load_bytes(skb, p->l4_off, &l4, 4) < 0)
			return -ENOENT;
		p->csum_off = p->l4_off + UDP_CSUM_OFF;
		/* A zero UDP checksum means "none" and must stay zero. */
		p->csum_flags = BPF_F_MARK_MANGLED_0;
		break;
	default:
		return -ENOENT;
	}

	p->tuple.saddr = ip.saddr;
	p->tuple.daddr = ip.daddr;
	p->tuple.sport = l4.sport;
	p->tuple.dport = l4.dport;
	p->tuple.proto = ip.protocol;
	p->seq = l4.seq;
	p->tcp_flags = l4.flags;
	return 0;
}

/*
 * Rewrite one address and one port of the packet (source or destination,
 * chosen by the offsets) and fix the IP and L4 checksums incrementally. The
 * address is part of the L4 pseudo-header, hence BPF_F_PSEUDO_HDR, which
 * also handles skbs whose checksum the NIC (here: the veth peer) is still to
 * compute.
 */
static __always_inline int rewrite(struct __sk_buff *skb, const struct pkt *p,
				   __u32 addr_off, __be32 old_addr, __be32 new_addr,
				   __u32 port_off, __be16 old_port, __be16 new_port)
{
	if (old_addr != new_addr) {
		if (bpf_l4_csum_replace(skb, p->csum_off, old_addr, new_addr,
					p->csum_flags | BPF_F_PSEUDO_HDR | sizeof(new_addr)) < 0)
			return -EFAULT;
		if (bpf_l3_csum_replace(skb, ETH_HLEN + IP_CSUM_OFF, old_addr, new_addr,
					sizeof(new_addr)) < 0)
			return -EFAULT;
		if (bpf_skb_store_bytes(skb, ETH_HLEN + addr_off, &new_addr, sizeof(new_addr), 0) < 0)
			return -EFAULT;
	}
	if (old_port != new_port) {
		if (bpf_l4_csum_replace(skb, p->csum_off, old_port, new_port,
					p->csum_flags | sizeof(new_port)) < 0)
			return -EFAULT;
		if (bpf_skb_store_bytes(skb, p->l4_off + port_off, &new_port, sizeof(new_port), 0) < 0)
			return -EFAULT;
	}
	return 0;
}

/* The reverse key of a flow to backend be: what the backend's answers carry. */
static __always_inline void rev_key(struct conn_key *rk, const struct conn_key *fwd,
				    __be32 be_addr, __be16 be_port)
{
	rk->saddr = be_addr;
	rk->sport = be_port;
	rk->daddr = fwd->saddr;
	rk->dport = fwd->sport;
	rk->proto = fwd->proto;
}

/* A SYN that opens a connection, as opposed to a SYN-ACK. */
static __always_inline int is_syn(const struct pkt *p)
{
	return p->tuple.proto == IPPROTO_TCP &&
	       (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/*
 * A packet that is not for a service may reuse the exact tuple of an
 * earlier translated flow: the client talks directly to a backend from a
 * port it once used for the VIP. Its answers must not be rewritten to the
 * VIP, so a connection-opening packet (TCP SYN, any UDP datagram) drops the
 * reverse entry for its tuple. The newest flow wins, as it does in the
 * client's own socket table.
 */
static __always_inline void forget_stale_rev(const struct pkt *p)
{
	struct conn_key rk = {};

	if (!is_syn(p) && p->tuple.proto != IPPROTO_UDP)
		return;
	rev_key(&rk, &p->tuple, p->tuple.daddr, p->tuple.dport);
	if (bpf_map_lookup_elem(&svclab_tc_rev, &rk)) {
		bpf_map_delete_elem(&svclab_tc_rev, &rk);
		stat_inc(STAT_STALE_REV);
	}
}

/*
 * Start a flow: pick a random slot of the service (as kube-proxy's random
 * cascade does, per connection) and record both directions. old is the
 * entry this flow replaces (TIME_WAIT reuse), or NULL. Returns 0 with the
 * backend in *be_addr and *be_port, -ENOENT for a service without backends and
 * -EHOSTUNREACH when a slot vanished under a concurrent resync.
 */
static __always_inline int new_flow(const struct pkt *p, const struct svc_entry *svc,
				    const struct conn_fwd *old, __be32 *be_addr, __be16 *be_port)
{
	struct backend_key bkey = {};
	struct conn_fwd fwd = {};
	struct conn_rev rev = {};
	struct conn_key rk = {};
	struct backend_entry *be;

	if (svc->count == 0)
		return -ENOENT;
	bkey.svc_id = svc->id;
	bkey.slot = bpf_get_prandom_u32() % svc->count;
	be = bpf_map_lookup_elem(&svclab_backends, &bkey);
	if (!be)
		return -EHOSTUNREACH;
	fwd.addr = be->addr;
	fwd.port = be->port;
	fwd.syn_seq = p->seq;

	/* Read the old entry before the update below replaces it. */
	if (old && (old->addr != fwd.addr || old->port != fwd.port)) {
		rev_key(&rk, &p->tuple, old->addr, old->port);
		bpf_map_delete_elem(&svclab_tc_rev, &rk);
	}

	rev_key(&rk, &p->tuple, fwd.addr, fwd.port);
	rev.addr = p->tuple.daddr;
	rev.port = p->tuple.dport;
	/* Reverse first: the backend's first answer must find it. */
	if (bpf_map_update_elem(&svclab_tc_rev, &rk, &rev, BPF_ANY) < 0)
		return -EFAULT;
	if (bpf_map_update_elem(&svclab_tc_fwd, &p->tuple, &fwd, BPF_ANY) < 0)
		return -EFAULT;
	stat_inc(STAT_NEW_FLOW);
	*be_addr = fwd.addr;
	*be_port = fwd.port;
	return 0;
}

/*
 * Forward translation: ClusterIP:port -> backend address:targetPort.
 * Returns 0 when the packet was translated or is not ours, a negative errno
 * when it must be dropped.
 */
static __always_inline int tc_xlate_fwd(struct __sk_buff *skb, const struct pkt *p)
{
	struct svc_key key = {};
	struct svc_entry *svc;
	struct conn_fwd *ct;
	__be32 be_addr;
	__be16 be_port;
	int err;

	key.addr = p->tuple.daddr;
	key.port = p->tuple.dport;
	key.proto = p->tuple.proto;
	svc = bpf_map_lookup_elem(&svclab_services, &key);
	if (!svc) {
		forget_stale_rev(p);
		return 0;
	}

	/*
	 * An established flow keeps its backend even when the service lost it
	 * or all of its endpoints meanwhile, as a conntrack entry would.
	 */
	ct = bpf_map_lookup_elem(&svclab_tc_fwd, &p->tuple);
	if (ct && !(is_syn(p) && ct->syn_seq != p->seq)) {
		be_addr = ct->addr;
		be_port = ct->port;
	} else {
		err = new_flow(p, svc, ct, &be_addr, &be_port);
		if (err)
			return err;
	}
	return rewrite(skb, p, IP_DADDR_OFF, p->tuple.daddr, be_addr,
		       L4_DPORT_OFF, p->tuple.dport, be_port);
}

/* Reverse translation: backend address:targetPort -> ClusterIP:port. */
static __always_inline int tc_xlate_rev(struct __sk_buff *skb, const struct pkt *p)
{
	struct conn_rev *rev;
	__be32 addr;
	__be16 port;

	rev = bpf_map_lookup_elem(&svclab_tc_rev, &p->tuple);
	if (!rev)
		return 0;
	addr = rev->addr;
	port = rev->port;
	return rewrite(skb, p, IP_SADDR_OFF, p->tuple.saddr, addr,
		       L4_SPORT_OFF, p->tuple.sport, port);
}

/*
 * Turn a worker result into a tc verdict. A service without backends drops
 * the packet silently, as the cls_bpf datapaths of the seed's era did (no
 * ICMP or RST is generated): a TCP client times out.
 */
static __always_inline int tc_verdict(int err)
{
	if (err == 0)
		return TC_ACT_OK;
	stat_inc(err == -ENOENT ? STAT_DROP_NO_BACKEND : STAT_DROP_ERROR);
	return TC_ACT_SHOT;
}

SEC("tc")
int svclab_tc_ingress(struct __sk_buff *skb)
{
	struct pkt p = {};

	if (parse(skb, &p) < 0)
		return TC_ACT_OK;
	return tc_verdict(tc_xlate_fwd(skb, &p));
}

SEC("tc")
int svclab_tc_egress(struct __sk_buff *skb)
{
	struct pkt p = {};

	if (parse(skb, &p) < 0)
		return TC_ACT_OK;
	return tc_verdict(tc_xlate_rev(skb, &p));
}

/* No GPL-only helper is used; the string only has to be GPL-compatible. */
char _license[] SEC("license") = "Dual BSD/GPL";
