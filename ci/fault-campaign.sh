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
"$bin" up --foreground --datapath direct --backends 2 >"$logs/lab.out" 2>"$logs/lab.err" &
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

# 5. Malformed input: each mutation of the default scenario (one field set
#    to a value a pod, a Service or a run cannot use, or a broken file) must
#    be refused before anything is built: exit 2 with the field named. An
#    input that is accepted is run (a tiny bench) and counted if it fails.
mutations=(
	'  clients: 1|  clients: 0' '  clients: 1|  clients: -1' '  clients: 1|  clients: 1000' '  clients: 1|  clients: x' '  clients: 1|  clients: 1.5' '  clients: 1|  clients: []'
	'  backends: 12|  backends: 0' '  backends: 12|  backends: -3' '  backends: 12|  backends: 100000' '  backends: 12|  backends: twelve' '  backends: 12|  backends: 2.5' '  backends: 12|  backends: null'
	'  podCIDR: 10.244.0.0/16|  podCIDR: 224.0.0.0/16' '  podCIDR: 10.244.0.0/16|  podCIDR: 127.0.0.0/16' '  podCIDR: 10.244.0.0/16|  podCIDR: 169.254.0.0/16'
	'  podCIDR: 10.244.0.0/16|  podCIDR: 0.0.0.0/0' '  podCIDR: 10.244.0.0/16|  podCIDR: 240.0.0.0/8' '  podCIDR: 10.244.0.0/16|  podCIDR: 10.96.0.0/16'
	'  podCIDR: 10.244.0.0/16|  podCIDR: fd00::/64' '  podCIDR: 10.244.0.0/16|  podCIDR: garbage' '  podCIDR: 10.244.0.0/16|  podCIDR: 10.244.0.0/33'
	'  podCIDR: 10.244.0.0/16|  podCIDR: 10.244.0.1/16' '  podCIDR: 10.244.0.0/16|  podCIDR: 10.244.0.0/30' '  podCIDR: 10.244.0.0/16|  podCIDR: 255.255.255.255/32'
	'  podCIDR: 10.244.0.0/16|  podCIDR: 0.0.0.0/8' '  podCIDR: 10.244.0.0/16|  podCIDR: ""'
	'  serviceCIDR: 10.96.0.0/16|  serviceCIDR: 127.0.0.0/8' '  serviceCIDR: 10.96.0.0/16|  serviceCIDR: 224.0.0.0/4' '  serviceCIDR: 10.96.0.0/16|  serviceCIDR: 10.244.0.0/16'
	'  serviceCIDR: 10.96.0.0/16|  serviceCIDR: x' '  serviceCIDR: 10.96.0.0/16|  serviceCIDR: 0.0.0.0/0' '  serviceCIDR: 10.96.0.0/16|  serviceCIDR: 169.254.0.0/16'
	'  serviceCIDR: 10.96.0.0/16|  serviceCIDR: 10.96.0.0/31' '  serviceCIDR: 10.96.0.0/16|  serviceCIDR: 10.244.1.0/24' '  serviceCIDR: 10.96.0.0/16|  serviceCIDR: ::1/128'
	'  namespace: default|  namespace: "a\"b"' '  namespace: default|  namespace: UPPER' '  namespace: default|  namespace: -lead'
	'  namespace: default|  namespace: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa' '  namespace: default|  namespace: "a b"' '  namespace: default|  namespace: ""'
	'  namespace: default|  namespace: "def;ault"' '  namespace: default|  namespace: "a\nb"' '  namespace: default|  namespace: [a]'
	'  name: echo|  name: "echo\"; flush ruleset; #"' '  name: echo|  name: Echo' '  name: echo|  name: 1echo' '  name: echo|  name: echo-'
	'  name: echo|  name: "ec ho"' '  name: echo|  name: "echo\nfoo"' '  name: echo|  name: ""' '  name: echo|  name: eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee'
	'  name: echo|  name: "e.cho"' '  name: echo|  name: "e_cho"'
	'  port: 80|  port: 0' '  port: 80|  port: 65536' '  port: 80|  port: -1' '  port: 80|  port: http' '  port: 80|  port: 1.5'
	'  targetPort: 8080|  targetPort: 0' '  targetPort: 8080|  targetPort: 70000' '  targetPort: 8080|  targetPort: x'
	'  protocol: TCP|  protocol: SCTP' '  protocol: TCP|  protocol: ICMP' '  protocol: TCP|  protocol: ""' '  protocol: TCP|  protocol: 6'
	'  concurrency: \[1, 8, 32\]|  concurrency: []' '  concurrency: \[1, 8, 32\]|  concurrency: [0]' '  concurrency: \[1, 8, 32\]|  concurrency: [-1]'
	'  concurrency: \[1, 8, 32\]|  concurrency: [100000000]' '  concurrency: \[1, 8, 32\]|  concurrency: [a]' '  concurrency: \[1, 8, 32\]|  concurrency: 5'
	'  warmup: 500ms|  warmup: -1s' '  warmup: 500ms|  warmup: 100000h' '  warmup: 500ms|  warmup: soon' '  warmup: 500ms|  warmup: 25h'
	'  duration: 3s|  duration: 0s' '  duration: 3s|  duration: -1s' '  duration: 3s|  duration: 100000h' '  duration: 3s|  duration: 1ns' '  duration: 3s|  duration: x'
	'  repetitions: 3|  repetitions: 0' '  repetitions: 3|  repetitions: -1' '  repetitions: 3|  repetitions: 100000' '  repetitions: 3|  repetitions: three'
	'  model: open|  model: half-open' '  model: open|  model: 7'
	'  loadFractions: \[0.8\]|  loadFractions: [0]' '  loadFractions: \[0.8\]|  loadFractions: [-0.5]' '  loadFractions: \[0.8\]|  loadFractions: [30]' '  loadFractions: \[0.8\]|  loadFractions: [x]'
	'^datapaths: .*|datapaths: []' '^datapaths: .*|datapaths: [nope]' '^datapaths: .*|datapaths: ["socketlb; rm -rf /"]' '^datapaths: .*|datapaths: 5'
	'^name: default|name: "de fault"' '^name: default|name: "../../etc"'
	'^topology:|topologyy:' '  backends: 12|  backends: 12\n  extra: 1' '^service:|service:\n  sessionAffinity: Sticky' '  port: 80|  port: 80\n  port: 81'
	'  clients: 1|  Clients: 1'
)
accepted_failed=0 refused=0 accepted_ok=0
i=0
# The default scenario cut to direct, so that an input that is accepted
# runs a tiny bench rather than every datapath.
base=$work/base.yaml
sed -E 's|^datapaths: .*|datapaths: [direct]|' scenarios/default.yaml >"$base"
for m in "${mutations[@]}" BINARY EMPTY BRACES LIST TABS; do
	i=$((i + 1))
	f=$work/bad-$i.yaml
	case $m in
	BINARY) head -c 512 /dev/urandom >"$f" ;;
	EMPTY) : >"$f" ;;
	BRACES) echo '{{{' >"$f" ;;
	LIST) printf -- '- a\n- b\n' >"$f" ;;
	TABS) sed 's/^  /\t/' "$base" >"$f" ;;
	*) sed -E "s|${m%%|*}|${m#*|}|" "$base" >"$f" ;;
	esac
	if cmp -s "$f" "$base"; then
		fail "malformed input $i ($m) did not change the file"
		continue
	fi
	"$bin" bench --scenario "$f" --concurrency 1 --repetitions 1 --warmup 0s --duration 200ms \
		--output "$out/bad" >"$logs/bad-$i.out" 2>"$logs/bad-$i.err"
	rc=$?
	case $rc in
	2) refused=$((refused + 1)) ;;
	0) accepted_ok=$((accepted_ok + 1)); echo "malformed input $i accepted and ran cleanly: $m" ;;
	*) accepted_failed=$((accepted_failed + 1)); fail "malformed input $i ($m) was accepted, then failed (exit $rc): $(tail -1 "$logs/bad-$i.err")" ;;
	esac
done
echo "malformed inputs: $i tried, $refused refused before anything was built, $accepted_ok accepted and ran cleanly, $accepted_failed accepted then failed"
count_left "malformed inputs"

panics=$(grep -l "^panic:\|goroutine [0-9]* \[running\]" "$logs"/*.err 2>/dev/null | wc -l)
[ "$panics" = 0 ] || fail "panics in: $(grep -l '^panic:' "$logs"/*.err | tr '\n' ' ')"
after=$(root_state)
root_changed=0
[ "$before" = "$after" ] || { root_changed=1; fail "the root network namespace changed"; }
empty_after_kill=$(find "$out/kill" -mindepth 1 -maxdepth 1 -type d -empty 2>/dev/null | wc -l)

echo
echo "summary: objects the faults left: $made_total; left after cleanup: $left_total; panics: $panics; root namespace changed: $root_changed; malformed inputs accepted then failed: $accepted_failed of $i; failures: $bad"
echo "         (empty run directories after SIGKILL, which no process can remove: $empty_after_kill)"
echo "         load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
[ $bad = 0 ]
