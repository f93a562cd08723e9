#!/usr/bin/env bash
# How noisy are svclab's figures, and does a change make them less so?
# Issue 15 part 5: for each configuration (baseline and each change) one
# `svclab bench` run of REPS repetitions × DURATION at CONCURRENCY, then per
# datapath the coefficient of variation (CV) of QPS over the repetitions
# and the CV of the ratio to direct paired per round (each repetition of a
# datapath divided by direct's in the same round: what the gate compares).
#
#   ci/noise.sh [options] [CONFIG ...]
#
# CONFIG is NAME=FLAGS: extra `svclab bench` flags for that configuration,
# e.g. baseline=  split='--placement split'  warm1s='--warmup 1s'
# 'long=--duration 4s --repetitions 3' (trial length against repetitions at
# the same budget). FLAGS may start with bin:PATH to use another svclab
# binary (a build with other client sysctls, say). Default: baseline= and
# split='--placement split'.
#
# Options (defaults in brackets):
#   --reps N          repetitions per run [6]
#   --duration D      measured time per trial [2s]
#   --concurrency C   concurrency level [16]
#   --datapaths L     datapaths, direct among them [socketlb,iptables,direct]
#   --scenario S      scenario the flags override [quick]
#   --busy            also run every configuration with one core kept busy
#                     by an unrelated process (stress-ng --cpu 1, installed
#                     with apt if absent) and report each ratio to direct
#                     relative to the quiet run's, and whether the table's
#                     "machine was busy" flag (outside_fraction > 5 % in a
#                     trial) was raised
#   --output DIR      keep the runs in DIR (default: a temporary directory,
#                     removed at exit)
# Environment: SVCLAB, the svclab binary (default: build bin/svclab).
#
# Exit status: 0, or 1 when a bench wrote no results.json.
#
# Prints one table (tab-separated columns, aligned with column(1) when it is
# installed): configuration, datapath, valid repetitions, median QPS, CV of
# QPS, median paired ratio to direct, CV of that ratio, trials flagged busy;
# with --busy a second table of the busy runs' ratios against the quiet
# runs'. Needs root (svclab bench) and jq.
#
# On a machine that other work shares, the CVs measure that work as much as
# svclab: read the concurrent-runs warnings and the busy column first.
set -euo pipefail
cd "$(dirname "$0")/.."

reps=6 duration=2s concurrency=16 datapaths=socketlb,iptables,direct scenario=quick busy=0 output=
configs=()
while (($#)); do
	case $1 in
	--reps) reps=$2; shift 2 ;;
	--duration) duration=$2; shift 2 ;;
	--concurrency) concurrency=$2; shift 2 ;;
	--datapaths) datapaths=$2; shift 2 ;;
	--scenario) scenario=$2; shift 2 ;;
	--busy) busy=1; shift ;;
	--output) output=$2; shift 2 ;;
	-h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
	-*) echo "noise.sh: unknown option $1" >&2; exit 2 ;;
	*=*) configs+=("$1"); shift ;;
	*) echo "noise.sh: $1 is not NAME=FLAGS" >&2; exit 2 ;;
	esac
done
((${#configs[@]})) || configs=("baseline=" "split=--placement split")
[[ ,$datapaths, == *,direct,* ]] || { echo "noise.sh: --datapaths must include direct (the ratios' reference)" >&2; exit 2; }
command -v jq >/dev/null || { echo "noise.sh: needs jq" >&2; exit 2; }

# Everything this script starts or makes goes at exit, however it ends:
# the busy process and, unless --output was given, the runs.
stress_pid= bench_pid= tmp=
cleanup() {
	if [[ -n $bench_pid ]]; then
		# svclab removes what its run made on SIGINT; wait for it to.
		kill -INT "$bench_pid" 2>/dev/null || true
		wait "$bench_pid" 2>/dev/null || true
	fi
	if [[ -n $stress_pid ]]; then
		kill -- "-$stress_pid" 2>/dev/null || kill "$stress_pid" 2>/dev/null || true
		wait "$stress_pid" 2>/dev/null || true
	fi
	[[ -n $tmp ]] && rm -rf "$tmp"
	return 0
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP

if [[ -z $output ]]; then
	tmp=$(mktemp -d /tmp/svclab-noise.XXXXXX)
	output=$tmp
fi
mkdir -p "$output"

svclab=${SVCLAB:-}
if [[ -z $svclab ]]; then
	PATH=$PATH:/usr/local/go/bin go build -o bin/svclab ./cmd/svclab
	svclab=bin/svclab
fi

if ((busy)) && ! command -v stress-ng >/dev/null; then
	echo "noise.sh: installing stress-ng (apt)" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stress-ng >/dev/null ||
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stress-ng >/dev/null; }
fi

# bench NAME FLAGS MODE: one svclab bench run into $output/NAME-MODE; sets
# res to its results.json (a run with an invalid trial still writes one),
# or returns 1. The bench runs in the background so that a signal to this
# script reaches the trap at once, which stops the bench cleanly.
bench() {
	local name=$1 flags=$2 mode=$3 bin=$svclab dir rc=0
	res=
	if [[ $flags == bin:* ]]; then
		bin=${flags%% *}; bin=${bin#bin:}
		[[ $flags == *" "* ]] && flags=${flags#* } || flags=
	fi
	dir=$output/$name-$mode
	mkdir -p "$dir"
	# shellcheck disable=SC2086 # FLAGS are words by design
	"$bin" bench --scenario "$scenario" --datapaths "$datapaths" --concurrency "$concurrency" \
		--repetitions "$reps" --duration "$duration" --output "$dir" $flags >"$dir/bench.log" 2>&1 </dev/null &
	bench_pid=$!
	wait "$bench_pid" || rc=$?
	bench_pid=
	((rc == 0)) || echo "noise.sh: $name ($mode): svclab bench exited $rc (see $dir/bench.log)" >&2
	res=$(ls -d "$dir"/*/results.json 2>/dev/null | tail -1)
	[[ -n $res ]] || { echo "noise.sh: $name ($mode): no results.json (see $dir/bench.log)" >&2; return 1; }
}

# stats CONFIG: per datapath and concurrency of a results.json on stdin,
# tab-separated: config, datapath, n, median QPS, CV %, median ratio, ratio
# CV %, busy trials/n. Closed-loop trials of this machine only (.model and
# .site empty), valid ones only (.invalid empty).
stats() {
	jq -r --arg cfg "$1" '
	def median: sort | if length == 0 then null else .[(length - 1) / 2 | floor] end;
	def cv: length as $n | if $n < 2 then null else (add / $n) as $m
		| (map((. - $m) * (. - $m)) | add / ($n - 1) | sqrt) / $m * 100 end;
	def pct: if . == null then "-" else (. * 10 | round / 10 | tostring) end;
	[.trials[] | select((.model // "") == "" and (.site // "") == "" and (.invalid // "") == "")] as $t
	| ($t | map(select(.datapath == "direct") | {key: "\(.concurrency)/\(.repetition)", value: .workload.qps}) | from_entries) as $direct
	| $t | group_by(.concurrency, .datapath)[]
	| (map(.workload.qps)) as $q
	| [.[] | $direct["\(.concurrency)/\(.repetition)"] as $d | select($d != null and $d > 0) | .workload.qps / $d] as $r
	| [$cfg, (.[0].datapath + (if ($t | map(.concurrency) | unique | length) > 1 then " c=\(.[0].concurrency)" else "" end)),
	   length, ($q | median | round), ($q | cv | pct),
	   ($r | median | if . == null then "-" else (. * 1000 | round / 1000 | tostring) end),
	   (if .[0].datapath == "direct" then "-" else ($r | cv | pct) end),
	   "\(map(select((.workload.cpu.outside_fraction // 0) > 0.05)) | length)/\(length)"]
	| @tsv'
}

# ratios: datapath → median paired ratio to direct, as a JSON object.
ratios() {
	jq -c '
	def median: sort | if length == 0 then null else .[(length - 1) / 2 | floor] end;
	[.trials[] | select((.model // "") == "" and (.site // "") == "" and (.invalid // "") == "")] as $t
	| ($t | map(select(.datapath == "direct") | {key: "\(.concurrency)/\(.repetition)", value: .workload.qps}) | from_entries) as $direct
	| [$t | group_by(.datapath)[] | {key: .[0].datapath,
		value: ([.[] | $direct["\(.concurrency)/\(.repetition)"] as $d | select($d != null and $d > 0) | .workload.qps / $d] | median)}]
	| from_entries'
}

table() { if command -v column >/dev/null; then column -t -s $'\t'; else cat; fi; }

quiet_rows=() busy_rows=() failed=0
for c in "${configs[@]}"; do
	name=${c%%=*} flags=${c#*=}
	echo "noise.sh: $name: svclab bench $flags (quiet)" >&2
	bench "$name" "$flags" quiet || { failed=1; continue; }
	qres=$res
	loadavg=$(cut -d' ' -f1 /proc/loadavg)
	quiet_rows+=("$(stats "$name" <"$qres")")
	live=$(jq -r '(.concurrent_runs // []) | length' "$qres")
	((live == 0)) || echo "noise.sh: $name (quiet): $live other svclab run(s) were live during it; load average $loadavg at its end" >&2
	if ((busy)); then
		echo "noise.sh: $name: svclab bench $flags (stress-ng --cpu 1 running)" >&2
		# Its own process group, so that cleanup ends it and its workers;
		# the timeout is a backstop should this script be SIGKILLed.
		setsid stress-ng --cpu 1 --timeout 3600s >/dev/null 2>&1 &
		stress_pid=$!
		sleep 1
		bres=
		bench "$name" "$flags" busy && bres=$res || failed=1
		kill -- "-$stress_pid" 2>/dev/null || kill "$stress_pid" 2>/dev/null || true
		wait "$stress_pid" 2>/dev/null || true
		stress_pid=
		[[ -n $bres ]] || continue
		q=$(ratios <"$qres") b=$(ratios <"$bres")
		busy_rows+=("$(jq -rn --arg cfg "$name" --argjson q "$q" --argjson b "$b" --slurpfile run "$bres" '
			($run[0].trials | map(select((.model // "") == "" and (.site // "") == ""))) as $t
			| ($t | map(select((.workload.cpu.outside_fraction // 0) > 0.05)) | length) as $flagged
			| $q | keys[] | select(. != "direct") as $dp
			| [$cfg, $dp, ($q[$dp] * 1000 | round / 1000 | tostring), ($b[$dp] // 0 | . * 1000 | round / 1000 | tostring),
			   (if $q[$dp] > 0 and $b[$dp] != null then (($b[$dp] / $q[$dp] - 1) * 1000 | round / 10 | tostring) + "%" else "-" end),
			   (if $flagged > 0 then "yes (\($flagged)/\($t | length) trials)" else "NO" end)]
			| @tsv')")
	fi
done

echo
echo "QPS noise: $reps repetitions × $duration at concurrency $concurrency, scenario $scenario (load average now $(cut -d' ' -f1-3 /proc/loadavg))"
{
	printf 'CONFIG\tDATAPATH\tREPS\tQPS\tCV%%\tRATIO×DIR\tRATIO CV%%\tBUSY TRIALS\n'
	printf '%s\n' "${quiet_rows[@]}"
} | table
if ((busy)); then
	echo
	echo "one core busy (stress-ng --cpu 1): ratio to direct, busy run against quiet run; target within 5 %, flag raised"
	{
		printf 'CONFIG\tDATAPATH\tQUIET×DIR\tBUSY×DIR\tCHANGE\tBUSY FLAG\n'
		printf '%s\n' "${busy_rows[@]}"
	} | table
fi
[[ -n $tmp ]] || echo "runs kept in $output"
# A configuration without results is a failure, not a shorter table.
exit "$failed"
