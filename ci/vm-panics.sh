#!/usr/bin/env bash
# Count guest kernel crashes over N VM boots (issue 15 part 8: "Oops: int3"
# in __ip_local_out under QEMU's multi-threaded TCG), one QEMU at a time.
#
#   ci/vm-panics.sh N
#
# Environment:
#   SVCLAB      svclab binary (default: build bin/svclab)
#   KERNEL      guest kernel (default: debian-6.12, the bench's)
#   TCG_THREAD  single (the default, the fix) or multi (what VM phases used
#               before: reproduces the crash)
#   WORKLOAD    stress (default): ci/vmstress flips netfilter's static keys
#               (IPVS service add/delete) while loopback TCP runs on the
#               other vCPU, for STRESS_SECONDS (default 30); it crashed a
#               multi-threaded guest in most boots.
#               bench: the bench's VM phase as `make bench` runs it for
#               IPVS, with the quick scenario (svclab vm -- bench
#               --scenario quick --datapaths ipvs,direct); crashes are rare.
#   LOGS        directory for each boot's log (default: a temporary one,
#               kept and printed)
#
# A boot counts as a crash when its console shows "Oops", "Kernel panic" or
# "BUG:". Prints one line per boot (outcome, wall time, the guest's rate:
# loopback requests/s for stress, direct's conn/s for bench) and the total.
# Exit status: 0 no crash, 1 at least one, 2 could not run. Needs root and
# qemu-system-x86_64 (the guest runs with --accel tcg here: no KVM).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH=$PATH:/usr/local/go/bin

n=${1:?usage: ci/vm-panics.sh N}
kernel=${KERNEL:-debian-6.12}
thread=${TCG_THREAD:-single}
workload=${WORKLOAD:-stress}
seconds=${STRESS_SECONDS:-30}
logs=${LOGS:-$(mktemp -d /tmp/svclab-vm-panics.XXXXXX)}
mkdir -p "$logs"

svclab=${SVCLAB:-}
if [[ -z $svclab ]]; then
	go build -o bin/svclab ./cmd/svclab || exit 2
	svclab=bin/svclab
fi
vmflags=(--kernel "$kernel" --tcg-thread "$thread")
case $workload in
stress)
	CGO_ENABLED=0 go build -o "$logs/vmstress" ./ci/vmstress || exit 2
	cmd=(--binary "$logs/vmstress" -- stress -seconds "$seconds")
	;;
bench)
	cmd=(-- bench --scenario quick --datapaths ipvs,direct --output "$logs/results")
	;;
*)
	echo "WORKLOAD: $workload is not stress or bench" >&2
	exit 2
	;;
esac

echo "$n boots of $kernel, tcg thread=$thread, workload $workload; logs in $logs"
crashes=0
for i in $(seq 1 "$n"); do
	log=$logs/boot-$i.log
	start=$(date +%s)
	rc=0
	"$svclab" vm "${vmflags[@]}" "${cmd[@]}" >"$log" 2>&1 || rc=$?
	wall=$(($(date +%s) - start))
	rate=
	case $workload in
	stress) rate=$(sed -n 's/.*loopback TCP requests (\([0-9]*\)\/s).*/\1 req\/s/p' "$log" | head -1) ;;
	bench) rate=$(awk '/^\[[0-9]+\/[0-9]+\] direct /{getline; print $1 " direct conn/s"; exit}' "$log") ;;
	esac
	if grep -qE 'Oops|Kernel panic|BUG:' "$log"; then
		crashes=$((crashes + 1))
		what=$(grep -m1 -oE '(Oops|Kernel panic|BUG:).*' "$log")
		echo "boot $i: CRASH ($what) after ${wall}s, exit $rc"
	else
		echo "boot $i: ok, exit $rc, ${wall}s${rate:+, $rate}"
	fi
done
echo "crashes: $crashes/$n ($kernel, tcg thread=$thread, workload $workload)"
[[ $crashes -eq 0 ]]
