#!/usr/bin/env bash
# Fault campaign (issue 20): end svclab runs every way they can end and count
# what is left after `svclab cleanup`, what panicked, and whether the root
# network namespace changed. Run as root from the repository root:
#
#   ci/fault-campaign.sh [KILLS]        # KILLS SIGKILLs of a quick bench (default 15)
#
# It prints one line per fault and a summary; the exit status is 1 when
# anything was left, a panic was seen, an exit status was wrong or the root
# namespace changed. Other svclab runs on the machine are left alone (their
# run locks are held), but they skew timings: run it on a quiet machine.
set -uo pipefail

KILLS=${1:-15}
[ "$(id -u)" = 0 ] || { echo "fault-campaign: needs root" >&2; exit 2; }
export PATH=$PATH:/usr/local/go/bin

work=$(mktemp -d /tmp/svclab-fault-XXXXXX)
trap 'rm -rf "$work"' EXIT
bin=$work/svclab
go build -o "$bin" ./cmd/svclab || exit 2
out=$work/results
logs=$work/logs
mkdir -p "$out" "$logs"

bad=0
fail() { echo "  FAIL: $*"; bad=$((bad + 1)); }

# root_state is what svclab must never change: the root namespace's links,
# addresses, routes, rules and netfilter rules (counters left out).
root_state() {
	{
		ip -o link show | sed 's/ state [A-Z]*//; s/ qlen [0-9]*//'
		ip -o addr show
		ip route show table all
		ip rule show
		nft list ruleset 2>/dev/null | grep -v 'counter packets'
		iptables-save 2>/dev/null | grep -v '^#' | sed 's/\[[0-9]*:[0-9]*\]//'
	} | sha256sum | cut -d' ' -f1
}

# alive ID: does the run with this id still hold its lock?
alive() {
	local f=/run/svclab/runs/$1.lock
	[ -e "$f" ] && ! flock -n "$f" true 2>/dev/null
}

# dead_objects lists the svclab objects of runs that are not alive: what
# cleanup should have removed.
dead_objects() {
	local n id
	for n in $(ls /var/run/netns 2>/dev/null; ls /sys/fs/cgroup 2>/dev/null); do
		[[ $n =~ ^svclab-([0-9a-f]{8})(-|$) ]] || continue
		id=${BASH_REMATCH[1]}
		alive "$id" || echo "$n"
	done
	# Datapath probes run before the run lock: their namespaces carry the
	# prober's pid (older ones only a random suffix, which no live probe
	# keeps for more than a second or two).
	for n in $(ls /var/run/netns 2>/dev/null | grep '^svclab-probe-'); do
		if [[ $n =~ ^svclab-probe-([0-9]+)- ]]; then
			kill -0 "${BASH_REMATCH[1]}" 2>/dev/null || echo "probe netns $n"
		elif sleep 3 && [ -e "/var/run/netns/$n" ]; then
			# Another svclab's live probe lasts a second or two.
			echo "old probe netns $n"
		fi
	done
	for n in /run/svclab/runs/*.lock; do
		[ -e "$n" ] || continue
		id=$(basename "$n" .lock)
		alive "$id" || echo "lock $id"
	done
	for n in /run/svclab/labs/*.json; do
		[ -e "$n" ] || continue
		id=$(basename "$n" .json)
		alive "$id" || echo "lab state $id"
	done
	for n in "${TMPDIR:-/tmp}"/svclab-vm-*; do
		[ -d "$n" ] || continue
		if [ ! -e "$n/.owner.lock" ] || flock -n "$n/.owner.lock" true 2>/dev/null; then
			echo "vm temp dir $n"
		fi
	done
}

# wait_for FILE PATTERN SECONDS: wait until FILE contains PATTERN.
wait_for() {
	local i
	for ((i = 0; i < $2 * 10; i++)); do
		grep -q -- "$3" "$1" 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

before=$(root_state)
echo "fault campaign: $KILLS SIGKILLs, signals, a killed lab, a killed VM; load average $(cut -d' ' -f1-3 /proc/loadavg)"
"$bin" cleanup >/dev/null

left_total=0
made_total=0
# count_left WHAT: count what the fault left (so that the campaign shows it
# tested something), run cleanup, then count what is still left.
count_left() {
	local made
	made=$(dead_objects | wc -l)
	made_total=$((made_total + made))
	echo "  left by the fault: $made objects"
	"$bin" cleanup >>"$logs/cleanup.log" 2>&1 || fail "$1: cleanup failed"
	local left
	left=$(dead_objects)
	if [ -n "$left" ]; then
		fail "$1: left after cleanup: $(echo "$left" | tr '\n' ' ')"
		left_total=$((left_total + $(echo "$left" | wc -l)))
	fi
}

# 1. SIGKILL at random points of a quick bench.
for ((k = 1; k <= KILLS; k++)); do
	delay=$(awk -v s=$RANDOM 'BEGIN { srand(s); printf "%.2f", rand() * 6 }')
	"$bin" bench --scenario quick --output "$out/kill" >"$logs/kill-$k.out" 2>"$logs/kill-$k.err" &
	pid=$!
	sleep "$delay"
	kill -KILL $pid 2>/dev/null
	wait $pid 2>/dev/null
	echo "SIGKILL $k/$KILLS after ${delay}s"
	count_left "SIGKILL $k"
done

# 2. Every interrupting signal, mid-trial: exit 130, nothing left, no empty
#    run directory. SIGHUP goes to the whole process group, as a dropped ssh
#    session sends it.
for sig in INT TERM HUP QUIT; do
	d=$out/sig-$sig
	setsid "$bin" bench --scenario quick --repetitions 10 --output "$d" >"$logs/sig-$sig.out" 2>"$logs/sig-$sig.err" &
	pid=$!
	if ! wait_for "$logs/sig-$sig.err" 30 "repetition 2/"; then
		fail "SIG$sig: bench did not reach a trial"
	fi
	if [ $sig = HUP ]; then kill -HUP -- -$pid; else kill -$sig $pid; fi
	wait $pid
	code=$?
	echo "SIG$sig: exit $code"
	[ $code = 130 ] || fail "SIG$sig: exit $code, want 130"
	[ -z "$(ls -A "$d" 2>/dev/null)" ] || fail "SIG$sig: run directory left in $d"
	count_left "SIG$sig"
done

# 3. A killed lab: status says it is dead and what it left, down removes it.
"$bin" up --datapath direct --backends 2 >"$logs/lab.out" 2>"$logs/lab.err" &
pid=$!
if wait_for "$logs/lab.out" 30 " is up"; then
	id=$(sed -n 's/^lab \([0-9a-f]\{8\}\) is up.*/\1/p' "$logs/lab.out")
	kill -KILL $pid
	wait $pid 2>/dev/null
	"$bin" status >"$logs/lab-status.out" 2>&1
	grep -q "lab $id .* is dead, left: netns svclab-$id-" "$logs/lab-status.out" || fail "killed lab: status does not say it is dead: $(cat "$logs/lab-status.out")"
	"$bin" down "$id" >"$logs/lab-down.out" 2>&1 || fail "killed lab: down failed: $(cat "$logs/lab-down.out")"
	left=$(dead_objects)
	[ -z "$left" ] || fail "killed lab: left after down: $left"
	echo "killed lab $id: $(head -1 "$logs/lab-down.out" | cut -c1-100)"
else
	fail "lab did not come up: $(cat "$logs/lab.err")"
	kill -KILL $pid 2>/dev/null
fi
count_left "killed lab"

# 4. A killed `svclab vm` (if QEMU is here): its temporary directory goes
#    with cleanup.
if command -v qemu-system-x86_64 >/dev/null && command -v busybox >/dev/null; then
	"$bin" vm --kernel debian-6.1 -- datapaths >"$logs/vm.out" 2>"$logs/vm.err" &
	pid=$!
	if wait_for "$logs/vm.err" 120 "booting with"; then
		kill -KILL $pid
		wait $pid 2>/dev/null
		sleep 1 # QEMU dies by Pdeathsig
		echo "killed svclab vm while booting: $(ls -d "${TMPDIR:-/tmp}"/svclab-vm-* 2>/dev/null | wc -l) temp dirs before cleanup"
	else
		kill -KILL $pid 2>/dev/null
		echo "svclab vm did not reach its boot (no kernel cache or network?): $(tail -1 "$logs/vm.err")"
	fi
	count_left "killed vm"
else
	echo "no qemu-system-x86_64/busybox: VM fault skipped"
fi

panics=$(grep -l "^panic:\|goroutine [0-9]* \[running\]" "$logs"/*.err 2>/dev/null | wc -l)
[ "$panics" = 0 ] || fail "panics in: $(grep -l '^panic:' "$logs"/*.err | tr '\n' ' ')"
after=$(root_state)
root_changed=0
[ "$before" = "$after" ] || { root_changed=1; fail "the root network namespace changed"; }
empty_after_kill=$(find "$out/kill" -mindepth 1 -maxdepth 1 -type d -empty 2>/dev/null | wc -l)

echo
echo "summary: objects the faults left: $made_total; left after cleanup: $left_total; panics: $panics; root namespace changed: $root_changed; failures: $bad"
echo "         (empty run directories after SIGKILL, which no process can remove: $empty_after_kill)"
echo "         load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
[ $bad = 0 ]
