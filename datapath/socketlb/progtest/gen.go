// Package progtest runs bpf/socketlb.c's forward worker through
// BPF_PROG_RUN. The worker is compiled into a SEC("syscall") program by
// bpf/tests/socketlb_test.c, with deterministic stubs for the random number
// generator and the socket helpers, so its service lookup, backend choice
// and address rewrite are tested without sockets or a cgroup.
//
// Regenerate after editing bpf/socketlb.c or bpf/tests/socketlb_test.c:
//
//	BPF2GO_CC=clang-14 BPF2GO_STRIP=llvm-strip-14 go generate ./datapath/socketlb/progtest
package progtest

//go:generate go tool bpf2go -target bpfel -tags linux -type progtest_ctx -type svc_key -type svc_entry -type backend_key -type backend_entry -type member_key progtest ../../../bpf/tests/socketlb_test.c -- -I../../../bpf/include -nostdinc -O2 -g -Wall -Werror -mcpu=v2
