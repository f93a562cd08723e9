package socketlb

// The BPF object is generated and committed (socketlb_bpfel.go and .o), so
// building svclab needs no clang. Regenerate after editing bpf/socketlb.c:
//
//	BPF2GO_CC=clang-14 BPF2GO_STRIP=llvm-strip-14 go generate ./datapath/socketlb
//
// bpf2go itself reads BPF2GO_CC (default clang), BPF2GO_STRIP (default
// llvm-strip with the compiler's version suffix) and BPF2GO_CFLAGS. The line
// below names neither tool because go generate expands only plain $VAR, not a
// shell-style ${VAR:-default}.
//
// Headers come only from bpf/include (-nostdinc) and bpf2go rewrites source
// paths in the debug info to relative ones, so the output depends on the
// compiler version alone: committed objects are built with clang 14.
//
// Only bpfel is built: every machine svclab benchmarks on is little-endian.

//go:generate go tool bpf2go -target bpfel -tags linux -type svc_key -type svc_entry -type backend_key -type backend_entry -type member_key -type affinity_key -type affinity_entry -type revnat_key -type revnat_entry -type sock_state -type svc_counter socketlb ../../bpf/socketlb.c -- -I../../bpf/include -nostdinc -O2 -g -Wall -Werror -mcpu=v2
