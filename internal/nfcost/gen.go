package nfcost

// The BPF object is generated and committed (nfcost_bpfel.go and .o), so
// building svclab needs no clang. Regenerate after editing bpf/nfcost.c:
//
//	BPF2GO_CC=clang-14 BPF2GO_STRIP=llvm-strip-14 go generate ./internal/nfcost
//
// The flags are datapath/socketlb's: headers only from bpf/include
// (-nostdinc), bpfel only, committed objects built with clang 14.

//go:generate go tool bpf2go -target bpfel -tags linux -type nfc_part nfcost ../../bpf/nfcost.c -- -I../../bpf/include -nostdinc -O2 -g -Wall -Werror -mcpu=v2
