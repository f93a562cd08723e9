#!/usr/bin/env bash
# How much of the noise in a ratio to direct is the pairing's, not the
# datapath's? (Issue 15 part 5.) Brings a socket-LB lab up (svclab up, 12
# backends) and runs ci/slicepair in its client pod: C short connections
# switching every SLICE between the Service and the backend pods' own
# addresses, a ratio per 3 s window. Slices of 1.5 s pair the way the
# harness's trials do (one block each, back to back); 100 ms slices let
# both sides see the same moments of the machine. The two alternate,
# ROUNDS times each, and the lab is taken down however the script ends.
#
#   ci/slicepair.sh [ROUNDS [DURATION]]   (2 120s)
#
# Socket-LB only: with it the direct slices are pod-to-pod connections the
# datapath does not translate (its connect program runs and misses), so
# the ratio is close to the harness's QPS×DIR. A per-packet NAT datapath cannot be measured this way: one
# client pod mixing Service and pod-address connections reuses ports whose
# Service connections the node's conntrack still holds, DNATed to those
# same backends. An iptables lab here stalled at ~5k conn/s both ways
# (likely that clash: harness/world/world_test.go checks untouched pod
# addresses from a second client pod for the same reason),
# while a 10 s svclab bench trial of iptables alone ran 38k conn/s without
# a SYN retransmit. Pairing those needs two labs, the datapath's and
# direct's, taking turns. Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
datapath=socketlb rounds=${1:-2} duration=${2:-120s}
export PATH=$PATH:/usr/local/go/bin

tmp=$(mktemp -d /tmp/svclab-slicepair.XXXXXX)
lab=
cleanup() {
	[[ -n $lab ]] && bin/svclab down "$lab" >/dev/null 2>&1 || true
	rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

go build -o bin/svclab ./cmd/svclab
go build -o "$tmp/slicepair" ./ci/slicepair
bin/svclab up --datapath "$datapath" --backends 12 >"$tmp/up.log"
lab=$(awk '/svclab down/{print $NF}' "$tmp/up.log")
[[ -n $lab ]] || { echo "slicepair.sh: no lab id in svclab up's output:" >&2; cat "$tmp/up.log" >&2; exit 1; }
row=$(bin/svclab status | awk -v id="$lab" '$1 == id')
service=$(grep -o '[0-9.]* 80/TCP' <<<"$row" | awk '{print $1":80"}')
pods=$(grep -o 'backend-[0-9]*=[0-9.]*' <<<"$row" | sed 's/.*=//; s/$/:8080/' | paste -sd, -)
echo "slicepair.sh: $datapath lab $lab, service $service, $(tr , '\n' <<<"$pods" | wc -l) pods; load average $(cut -d' ' -f1-3 /proc/loadavg)"
for ((r = 1; r <= rounds; r++)); do
	for slice in 100ms 1500ms; do
		bin/svclab exec client-0 -- "$tmp/slicepair" -service "$service" -pods "$pods" -slice "$slice" -d "$duration"
	done
done
echo "slicepair.sh: load average $(cut -d' ' -f1-3 /proc/loadavg)"
