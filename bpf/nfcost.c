//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * svclab netfilter cost probes: where a packet's time goes inside the
 * netfilter hooks of one network namespace, measured in the kernel.
 *
 * BPF_PROG_TYPE_NETFILTER programs (Linux 6.4+) are attached with one
 * bpf_link each, per network namespace, protocol family, hook and priority.
 * Each hook gets NFC_NPOS probes at the priorities below, chosen to fall
 * between the priorities the kernel's own netfilter users register at:
 *
 *   pos  priority      what runs before the next probe (the part)
 *   0    INT_MIN + 1   defrag (-400), raw (-300)          "early"
 *   1    -201          conntrack (-200), mangle (-150)    "conntrack"
 *   2    -101          DNAT: nat PREROUTING/OUTPUT (-100) "dnat"
 *   3    -1            filter (0), security (50)          "filter"
 *   4    99            SNAT/masquerade (100), helpers     "snat"
 *   5    INT_MAX - 2   nothing: the calibration band       "floor"
 *   6    INT_MAX - 1   (last: conntrack confirm at INT_MAX runs after it
 *                       and cannot be bracketed; the kernel refuses BPF
 *                       hooks at INT_MIN and INT_MAX)
 *
 * No netfilter user registers between INT_MAX - 2 and INT_MAX - 1 (there
 * is no priority between them), so the "floor" part holds nothing but the
 * dispatch from one BPF hook to the next: the probes' own cost per
 * crossing, measured in the same trial, packets and CPUs as the other
 * parts, which each include one such dispatch too. The reader subtracts
 * count x floor from each part.
 *
 * nftables base chains register at the priority their `priority` clause
 * names (kube-proxy's nftables mode uses dstnat -100, filter 0, srcnat 100),
 * so the same bands hold for them.
 *
 * Every probe records, per CPU, when it finished and which traversal it
 * belongs to (the nf_hook_state pointer: one per hook traversal of one
 * packet, the same for every hook function of that traversal). The next
 * probe adds the time since then to its part only if it is the next
 * position of the same hook and the same traversal; anything else (a
 * packet dropped or stolen in the middle, a softirq that ran hooks of
 * another packet on this CPU in between) loses that one sample instead of
 * attributing time to the wrong part.
 *
 * The timestamp is taken at the end of a probe and compared at the start
 * of the next, so a part holds the hook functions between two probes plus
 * the dispatch of one BPF hook (measured alone by the "floor" band).
 */

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* -nostdinc and a 6.1 UAPI copy: the netfilter verdict and context. */
#define NF_ACCEPT 1

/* The program's context (include/net/netfilter/nf_bpf_link.h): only the
 * pointer values are read, never what they point at. */
struct bpf_nf_ctx {
	const void *state;
	void *skb;
};

/* enum nf_inet_hooks: PRE_ROUTING, LOCAL_IN, FORWARD, LOCAL_OUT, POST_ROUTING. */
#define NFC_NHOOKS 5
#define NFC_NPOS 7
#define NFC_NPARTS (NFC_NPOS - 1)

/* The last probe this CPU ran. */
struct nfc_last {
	__u64 ts;
	__u64 state;
	__u32 slot; /* hook * NFC_NPOS + pos, or ~0 before the first probe */
	__u32 pad;
};

/* Time between two consecutive probes of one hook, summed per CPU. */
struct nfc_part {
	__u64 ns;
	__u64 count;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nfc_last);
} svclab_nfc_last SEC(".maps");

/* Index hook * NFC_NPARTS + part. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, NFC_NHOOKS * NFC_NPARTS);
	__type(key, __u32);
	__type(value, struct nfc_part);
} svclab_nfc_parts SEC(".maps");

static __always_inline int nfc_probe(struct bpf_nf_ctx *ctx, __u32 hook, __u32 pos)
{
	__u64 now = bpf_ktime_get_ns();
	__u64 state = (__u64)(unsigned long)ctx->state;
	__u32 zero = 0;
	struct nfc_last *last = bpf_map_lookup_elem(&svclab_nfc_last, &zero);

	if (!last)
		return NF_ACCEPT;
	if (pos > 0 && last->slot == hook * NFC_NPOS + pos - 1 && last->state == state && last->ts) {
		__u32 idx = hook * NFC_NPARTS + pos - 1;
		struct nfc_part *p = bpf_map_lookup_elem(&svclab_nfc_parts, &idx);

		if (p) {
			p->ns += now - last->ts;
			p->count++;
		}
	}
	last->state = state;
	last->slot = hook * NFC_NPOS + pos;
	/* After the bookkeeping: the next part starts when this probe ends. */
	last->ts = bpf_ktime_get_ns();
	return NF_ACCEPT;
}

#define NFC_PROBE(name, hook, pos)                         \
	SEC("netfilter")                                   \
	int svclab_nfc_##name##_##pos(struct bpf_nf_ctx *ctx) \
	{                                                  \
		return nfc_probe(ctx, hook, pos);          \
	}

#define NFC_HOOK(name, hook) \
	NFC_PROBE(name, hook, 0) \
	NFC_PROBE(name, hook, 1) \
	NFC_PROBE(name, hook, 2) \
	NFC_PROBE(name, hook, 3) \
	NFC_PROBE(name, hook, 4) \
	NFC_PROBE(name, hook, 5) \
	NFC_PROBE(name, hook, 6)

NFC_HOOK(pre, 0)
NFC_HOOK(in, 1)
NFC_HOOK(fwd, 2)
NFC_HOOK(out, 3)
NFC_HOOK(post, 4)

char _license[] SEC("license") = "Dual BSD/GPL";
