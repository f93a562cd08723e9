//go:build ignore

/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Test harness for socketlb.c's forward worker. cgroup sock_addr programs
 * cannot be run with BPF_PROG_RUN, so the worker is compiled here into a
 * SEC("syscall") program, which BPF_PROG_RUN runs on an arbitrary context
 * buffer and copies back afterwards. The context begins with a fake
 * struct bpf_sock_addr; the helpers that need a real socket, and the random
 * number generator, are replaced by deterministic stubs before socketlb.c
 * is included. Only svclab_test_fwd is meant to be loaded.
 */

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/*
 * struct bpf_sock_addr with its socket pointer as a plain number, so bpf2go
 * can generate a Go type for it; the worker sees it through a cast.
 */
struct fake_sock_addr {
	__u32 user_family;
	__u32 user_ip4;
	__u32 user_ip6[4];
	__u32 user_port;
	__u32 family;
	__u32 type;
	__u32 protocol;
	__u32 msg_src_ip4;
	__u32 msg_src_ip6[4];
	__u64 sk;
};

_Static_assert(sizeof(struct fake_sock_addr) == sizeof(struct bpf_sock_addr), "fake_sock_addr size");
_Static_assert(__builtin_offsetof(struct fake_sock_addr, protocol) == __builtin_offsetof(struct bpf_sock_addr, protocol),
	       "fake_sock_addr layout");
_Static_assert(__builtin_offsetof(struct fake_sock_addr, sk) == __builtin_offsetof(struct bpf_sock_addr, sk),
	       "fake_sock_addr layout");

/* Input and output of one run; the Go test fills and reads it. */
struct progtest_ctx {
	struct fake_sock_addr sa; /* in: user_family, user_ip4/6, user_port, protocol; out: rewritten */
	__u32 rand;		 /* in: what every bpf_get_prandom_u32() call returns */
	__u32 is_connect;	 /* in: 1 = connect(), 0 = sendmsg() */
	__s32 ret;		 /* out: the worker's return code */
	__u32 pad;
};

/* The socket under test is fresh on every run: its storage starts empty. */
static __u32 test_rand;
static struct sock_state_stub {
	__u8 bytes[64];
} test_sk_storage;
static __u8 test_sk_created;

static __always_inline __u32 test_prandom(void)
{
	return test_rand;
}

static __always_inline void *test_sk_storage_get(void *map, void *sk, void *value, __u64 flags)
{
	if (!test_sk_created && !(flags & BPF_SK_STORAGE_GET_F_CREATE))
		return 0;
	test_sk_created = 1;
	return &test_sk_storage;
}

#define bpf_get_prandom_u32() test_prandom()
#define bpf_sk_storage_get(map, sk, value, flags) test_sk_storage_get((map), (sk), (value), (flags))
#define bpf_get_socket_cookie(ctx) ((__u64)0x5eed)
#define bpf_get_netns_cookie(ctx) ((__u64)0xc00c1e)
#define bpf_set_retval(err) ((void)(err))

#include "../socketlb.c"

_Static_assert(sizeof(struct sock_state) <= sizeof(struct sock_state_stub), "stub socket storage too small");

SEC("syscall")
int svclab_test_fwd(struct progtest_ctx *c)
{
	__u32 i;
	struct bpf_sock_addr *sa = (struct bpf_sock_addr *)&c->sa;

	test_rand = c->rand;
	test_sk_created = 0;
	for (i = 0; i < sizeof(test_sk_storage.bytes); i++)
		test_sk_storage.bytes[i] = 0;
	if (c->sa.user_family == AF_INET)
		c->ret = sock4_xlate_fwd(sa, c->is_connect);
	else
		c->ret = sock6_xlate_fwd(sa, c->is_connect);
	return 0;
}
