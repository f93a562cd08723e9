#!/usr/bin/env bash
# Measures how far the gate can be trusted on this machine, counting the
# gate's own confirmed verdict (ci/gate.sh --judge: an alarm fails only when
# a second fresh run regresses again on the same datapath and point):
#   - its false-alarm rate: N A/A gate runs of the unchanged build against
#     the reference;
#   - its detection rate: M gate runs with iptables slowed by PAD
#     never-matching rules ahead of its service rules
#     (SVCLAB_IPTABLES_PAD_RULES); the default PAD (50) raises iptables'
#     share of the run's CPU, the figure the gate compares, by about 10%
#     (evaluate prints the measured effect).
#
#   ci/prove-gate.sh collect DIR [N] [M] [PAD]   defaults 40, 20, 50
#   ci/prove-gate.sh evaluate DIR                rates, effect size, CVs
#
# A gate run is made as the gate makes it: an A/A gate run makes its second
# bench only when the first alarms; an injected one always makes both (so
# evaluate can judge it again with other thresholds, THRESHOLDS=...). A/A
# and injected gate runs alternate so machine drift hits both alike; a gate
# run already collected in DIR is kept, so an interrupted collect resumes.
# One ci-gate bench takes ~50 s: 40 + 20 gate runs take about 55 minutes.
#
# Environment: SVCLAB (default bin/svclab), REFERENCE, THRESHOLDS, SCENARIO
# as for ci/gate.sh. Needs root and jq.
set -euo pipefail
cd "$(dirname "$0")/.."
svclab=${SVCLAB:-bin/svclab}
export SVCLAB=$svclab

bench() { # bench OUTDIR [env...]: one ci-gate run into OUTDIR/<id>
  local out=$1; shift
  mkdir -p "$out"
  env "$@" "$svclab" bench --scenario "${SCENARIO:-ci-gate}" --output "$out" >/dev/null 2>"$out.log" || {
    echo "bench failed, see $out.log" >&2; return 1; }
}

# gaterun DIR always|onalarm [env...]: one gate run, its first bench in
# DIR/1 and its second in DIR/2 (always, or only when the first alarms, as
# ci/gate.sh does).
gaterun() {
  local dir=$1 second=$2; shift 2
  [[ -f $dir/done ]] && return 0
  rm -rf "$dir"
  bench "$dir/1" "$@"
  if [[ $second == always ]] || ! ci/gate.sh --judge "$(rundir "$dir/1")" 2>/dev/null; then
    bench "$dir/2" "$@"
  fi
  touch "$dir/done"
}

rundir() { ls -d "$1"/*/ | head -n 1; } # the run directory a bench made in $1

# judge GATERUN: the gate's verdict on it (status 0 pass, 1 confirmed
# regression) with its log in GATERUN/judge.log; exits on status 2.
judge() {
  local s=0 runs=("$(rundir "$1/1")")
  [[ -d $1/2 ]] && runs+=("$(rundir "$1/2")")
  ci/gate.sh --judge "${runs[@]}" 2>"$1/judge.log" || s=$?
  ((s <= 1)) || { echo "gate --judge $1 could not run (status $s), see $1/judge.log" >&2; exit 2; }
  return $s
}

# confirmed GATERUN: what its judge.log says the gate confirmed, one per line.
confirmed() { sed -n 's/^gate: FAIL: .* confirmed by a second run: \(.*\) (.*/\1/p' "$1/judge.log" | tr , '\n'; }

# ratio DIR...: median over the runs of each run's median iptables
# qps×direct (paired per round), e.g. "0.781 (0.70-0.83, 40 runs)".
ratio() {
  cat "$@" | jq -rs '
    def median: sort | if length % 2 == 1 then .[length/2|floor] else (.[length/2-1] + .[length/2]) / 2 end;
    [ .[] | (.trials | map(select((.invalid // "") == "" and (.model // "") == ""))) as $t
      | [ $t[] | select(.datapath == "iptables") | . as $i
          | ($t[] | select(.datapath == "direct" and .repetition == $i.repetition) | .workload.qps) as $d
          | $i.workload.qps / $d ] | select(length > 0) | median ]
    | "\(median * 1000 | round / 1000) (\(min * 1000 | round / 1000)-\(max * 1000 | round / 1000), \(length) runs)"'
}

# share DIR...: median over the runs of each run's median iptables share
# of the run's CPU (the gated figure), e.g. "0.0821 (0.080-0.083, 40 runs)".
share() {
  cat "$@" | jq -rs '
    def median: sort | if length % 2 == 1 then .[length/2|floor] else (.[length/2-1] + .[length/2]) / 2 end;
    [ .[] | .summary[] | select(.datapath == "iptables" and (.site // "") == "") | .datapath_cpu_share.median // empty ]
    | "\(median * 10000 | round / 10000) (\(min * 10000 | round / 10000)-\(max * 10000 | round / 10000), \(length) runs)"'
}

# cv DIR... -- JQFILTER: per datapath, the coefficient of variation across a
# run's repetitions of the value JQFILTER picks from a trial of the model
# (median over runs, min-max).
cv() {
  local model=$1 filter=$2; shift 2
  for dp in direct socketlb iptables; do
    cat "$@" | jq -rs --arg dp "$dp" --arg model "$model" "
      [ .[] | [ .trials[] | select(.datapath == \$dp and (.model // \"\") == \$model and (.invalid // \"\") == \"\") | $filter | select(. != null) ]
        | select(length > 1)
        | (add / length) as \$m | select(\$m != 0)
        | ((map(. - \$m | . * .) | add) / (length - 1) | sqrt) / (if \$m < 0 then -\$m else \$m end) ]
      | if length == 0 then \"  \(\$dp): - (no nonzero figure)\" else
        sort | \"  \(\$dp): \(.[length/2|floor] * 1000 | round / 10)% (\(.[0] * 1000 | round / 10)-\(.[-1] * 1000 | round / 10)%) over \(length) runs\" end"
  done
}

case ${1:-} in
collect)
  dir=${2:?DIR}; n=${3:-40}; m=${4:-20}; pad=${5:-50}
  for i in $(seq 1 $((n > m ? n : m))); do
    if ((i <= n)); then
      echo "$(date -u +%T) A/A gate run $i/$n" >&2
      gaterun "$dir/aa$i" onalarm
    fi
    if ((i <= m)); then
      echo "$(date -u +%T) injected gate run $i/$m (pad $pad)" >&2
      gaterun "$dir/inj$i" always SVCLAB_IPTABLES_PAD_RULES="$pad"
    fi
  done
  ;;
evaluate)
  dir=${2:?DIR}
  aa=0 aafalse=0 aawarn=0 aaslow=0 inj=0 det=0 injwarn=0 injfalse=0 injslow=0
  for g in "$dir"/aa*/; do
    g=${g%/}; [[ -f $g/done ]] || continue
    aa=$((aa + 1))
    if judge "$g"; then
      if grep -q '^gate: WARNING: unconfirmed' "$g/judge.log"; then aawarn=$((aawarn + 1)); fi
    else
      aafalse=$((aafalse + 1)); echo "A/A ${g##*/}: false alarm: $(confirmed "$g" | paste -sd,)" >&2
    fi
    # A datapath its gate left unjudged for the machine's speed (speed_guard).
    if grep -q '^gate: WARNING: not judged' "$g/judge.log"; then aaslow=$((aaslow + 1)); fi
  done
  for g in "$dir"/inj*/; do
    g=${g%/}; [[ -f $g/done ]] || continue
    inj=$((inj + 1))
    if judge "$g"; then
      if grep -q '^gate: WARNING: unconfirmed' "$g/judge.log"; then injwarn=$((injwarn + 1)); fi
      echo "injected ${g##*/}: missed" >&2
    else
      # Only iptables was slowed: a confirmed alarm on another datapath
      # is a false alarm even in an injected run.
      if confirmed "$g" | grep -q '^iptables '; then det=$((det + 1)); else echo "injected ${g##*/}: iptables missed" >&2; fi
      if others=$(confirmed "$g" | grep -v '^iptables '); then
        injfalse=$((injfalse + 1)); echo "injected ${g##*/}: false alarm on $(paste -sd, <<<"$others")" >&2
      fi
    fi
    if grep -q '^gate: WARNING: not judged' "$g/judge.log"; then injslow=$((injslow + 1)); fi
  done
  echo "A/A gate runs: $aafalse/$aa false alarms (confirmed); $aawarn/$aa passed with an unconfirmed first-run alarm; $aaslow/$aa left a datapath not judged for the machine's speed"
  echo "injected gate runs: iptables detected in $det/$inj (confirmed); $injwarn/$inj passed with an unconfirmed alarm; $injfalse/$inj confirmed another datapath; $injslow/$inj left a datapath not judged for the machine's speed"
  echo "iptables qps×direct (median per run, then over runs): unpadded $(ratio "$dir"/aa*/[12]/*/results.json); padded $(ratio "$dir"/inj*/[12]/*/results.json)"
  echo "iptables share of the run's CPU (gated; median per run, then over runs): unpadded $(share "$dir"/aa*/[12]/*/results.json); padded $(share "$dir"/inj*/[12]/*/results.json)"
  echo "coefficient of variation across repetitions (median over runs, min-max), unpadded runs:"
  echo " datapath share of the run's CPU (cost trials):"
  cv cost '.cost.cpu_share' "$dir"/aa*/[12]/*/results.json
  echo " QPS (plain trials):"
  cv "" '.workload.qps' "$dir"/aa*/[12]/*/results.json
  ;;
*)
  sed -n '2,/^set -euo/p' "$0" | sed '$d' >&2; exit 2 ;;
esac
