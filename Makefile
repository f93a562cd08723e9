# svclab: make bench runs the default comparison; make test runs the tests.
# Both install what they need first (Debian packages, Go modules).

GO      ?= go
CLANG   ?= clang
STRIP   ?= llvm-strip
BIN     ?= bin/svclab
# Extra flags for `svclab bench`, e.g. make bench BENCH_FLAGS="--repetitions 5"
BENCH_FLAGS ?=
# Extra flags for `svclab conform` (make conformance), e.g. CONFORM_FLAGS="--datapaths socketlb,iptables"
CONFORM_FLAGS ?=
# Extra flags for `go test`, e.g. make test TESTFLAGS="-run Privileged -v"
TESTFLAGS ?=

export PATH := $(PATH):/usr/local/go/bin
# bpf2go reads these; the committed objects are built with Debian 12's clang 14.
export BPF2GO_CC    := $(CLANG)
export BPF2GO_STRIP := $(STRIP)

GENERATED := datapath/socketlb/socketlb_bpfel.go datapath/socketlb/socketlb_bpfel.o datapath/socketlb/progtest/progtest_bpfel.go datapath/socketlb/progtest/progtest_bpfel.o baselines/tcebpf/tcebpf_bpfel.go baselines/tcebpf/tcebpf_bpfel.o internal/nfcost/nfcost_bpfel.go internal/nfcost/nfcost_bpfel.o

.PHONY: all deps build generate check-generate test bench cleanup clean

all: build

## deps: install Debian packages and Go modules svclab needs
deps:
	@ci/install-deps.sh

## build: the svclab binary
build: deps
	$(GO) build -o $(BIN) ./cmd/svclab

## generate: rebuild the BPF objects and their Go bindings from bpf/*.c
generate: deps
	$(GO) generate ./datapath/... ./baselines/... ./internal/nfcost

## check-generate: fail if the committed BPF objects are not what bpf/*.c compiles to
check-generate: generate
	@git diff --exit-code -- $(GENERATED) || { echo "generated BPF files are stale: run 'make generate' and commit them" >&2; exit 1; }

## test: vet, unit and privileged integration tests (as root: the privileged ones run for real),
## then the conformance-critical ones again under Debian's 6.1 kernel in QEMU (test-vm: IPVS exists there)
# -p 1: packages share the machine's namespaces, cgroups and BPF; run them one at a time.
test: deps check-generate
	$(GO) vet ./...
	$(GO) test -p 1 -count=1 -timeout 20m $(TESTFLAGS) ./...
	$(MAKE) test-vm

## bench: the default scenario against every datapath; those this kernel lacks (IPVS) under Debian's 6.12 in QEMU
VM_BENCH_KERNEL ?= debian-6.12
bench: build
	./$(BIN) bench --vm-kernel $(VM_BENCH_KERNEL) $(BENCH_FLAGS)

## conformance: every conformance scenario against every datapath, those this kernel lacks (IPVS) under
## Debian's 6.12 in QEMU, and the tables of README.md and docs/conformance.md regenerated from that run
.PHONY: conformance
conformance: build
	./$(BIN) conform --vm-kernel $(VM_BENCH_KERNEL) --update-docs README.md,docs/conformance.md $(CONFORM_FLAGS)

## bench-scale: how each datapath's cost grows with services (1 to 10,000) and endpoints (12 to 1,000),
## with Apply times; line charts scale-*.png (about 10 minutes on 2 cores, plus IPVS under Debian 6.12 in QEMU)
.PHONY: bench-scale bench-scale-quick
bench-scale: build
	./$(BIN) bench --scenario scale --vm-kernel $(VM_BENCH_KERNEL) $(BENCH_FLAGS)

## bench-scale-quick: the CI variant (1 and 1,000 services, 100 endpoints, one 1 s repetition)
bench-scale-quick: build
	./$(BIN) bench --scenario scale --quick --vm-kernel $(VM_BENCH_KERNEL) $(BENCH_FLAGS)

## cleanup: remove objects left by killed svclab runs
cleanup: build
	./$(BIN) cleanup

clean:
	rm -rf bin

## report: regenerate the example report (results/example/report.html) from the committed CI reference run
# (ci/reference/intel-xeon-processor-x2.json, the machine kind CI runs on: results/example keeps a table and charts but no results.json), and its
# ratio-to-direct chart as results/example/report-ratio.svg for the README
.PHONY: report
report:
	$(GO) run ./cmd/svclab report --output results/example ci/reference/intel-xeon-processor-x2.json
	awk '/<svg class="chart"/{on=1} on{print} /<\/svg>/{if(on)exit}' results/example/report.html > results/example/report-ratio.svg

## gate: the CI regression gate (.ci/run runs it after test): a short bench compared with this machine kind's
## reference in ci/reference, an alarm confirmed by a second bench before it fails; ~50 s, ~100 s with an
## alarm (see ci/README.md). Make's own status hides the gate's (ci/gate.sh: 0 pass, 1 confirmed regression,
## 2 could not run, 3 no reference for this machine kind).
.PHONY: gate
gate: build
	SVCLAB=$(BIN) ci/gate.sh $(BENCH_FLAGS)

## test-vm: the conformance-critical privileged tests under Debian's 6.1 kernel in QEMU
# (IPVS and loadable modules exist there, not on every host): every datapath's
# real-socket check for socketlb and ipvs (TCP, UDP, IPv6 TCP, two nodes, extra
# endpoints: the socket kinds' full matrix runs on the host), socket-LB TCP, IPVS apply. One boot
# per line; VM_KERNEL=debian-6.12 runs them under the other kernel.
VM_KERNEL ?= debian-6.1
.PHONY: test-vm
test-vm: build
	./$(BIN) vm --kernel $(VM_KERNEL) --timeout 12m --go-test ./harness/world/ -- -test.run '^TestPrivilegedEveryDatapathReachesAllBackends$$/^(socketlb|ipvs)$$/^(TCP|UDP|IPv6_TCP|TCP_two_nodes|TCP_extra_endpoints)$$'
	./$(BIN) vm --kernel $(VM_KERNEL) --timeout 12m --go-test ./datapath/socketlb/,./baselines/ipvs/ -- -test.run '^TestPrivileged(TCP|Apply)$$'
