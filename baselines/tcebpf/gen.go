package tcebpf

// The BPF object is generated and committed (tcebpf_bpfel.go and .o), so
// building svclab needs no clang. Regenerate after editing bpf/tc_dnat.c:
//
//	BPF2GO_CC=clang-14 BPF2GO_STRIP=llvm-strip-14 go generate ./baselines/tcebpf
//
// The flags are datapath/socketlb's: headers only from bpf/include
// (-nostdinc), bpfel only, committed objects built with clang 14.

//go:generate go tool bpf2go -target bpfel -tags linux -type svc_key -type svc_entry -type backend_key -type backend_entry -type conn_key -type conn_fwd -type conn_rev tcebpf ../../bpf/tc_dnat.c -- -I../../bpf/include -nostdinc -O2 -g -Wall -Werror -mcpu=v2
