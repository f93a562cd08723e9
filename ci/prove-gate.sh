#!/usr/bin/env bash
# Measures how far the gate can be trusted on this machine: its false-alarm
# rate (A/A: two independent ci-gate runs of the same build) and its
# detection rate (a deliberately slowed iptables: SVCLAB_IPTABLES_PAD_RULES
# puts that many never-matching rules ahead of the service rules).
#
#   ci/prove-gate.sh collect DIR [N] [PAD]   N rounds (default 10) of: base A, padded P, base B
#   ci/prove-gate.sh evaluate DIR            compare A/B (A/A), A/P (injected), and every run
#                                            against the reference; print rates and QPS CVs
#
# Environment: SVCLAB (default bin/svclab), REFERENCE, THRESHOLDS, SCENARIO
# as for ci/gate.sh. Each round takes about 2.5 minutes. Needs root and jq.
set -euo pipefail
cd "$(dirname "$0")/.."
svclab=${SVCLAB:-bin/svclab}
reference=${REFERENCE:-ci/reference/results.json}
thresholds=${THRESHOLDS:-ci/thresholds.yaml}

bench() { # bench OUTDIR [env...]: one ci-gate run into OUTDIR/<id>
  local out=$1; shift
  mkdir -p "$out"
  env "$@" "$svclab" bench --scenario "${SCENARIO:-ci-gate}" --output "$out" >/dev/null 2>"$out.log" || {
    echo "bench failed, see $out.log" >&2; return 1; }
}

compare() { # compare OLD NEW -> status 0 pass, 1 regression
  local s=0
  "$svclab" compare --thresholds "$thresholds" "$1" "$2" >/dev/null || s=$?
  ((s <= 1)) || { echo "compare $1 $2 failed (status $s)" >&2; exit 2; }
  return $s
}

case ${1:-} in
collect)
  dir=${2:?DIR}; n=${3:-10}; pad=${4:-3000}
  for i in $(seq 1 "$n"); do
    echo "round $i/$n" >&2
    bench "$dir/a$i"
    bench "$dir/p$i" SVCLAB_IPTABLES_PAD_RULES="$pad"
    bench "$dir/b$i"
  done
  ;;
evaluate)
  dir=${2:?DIR}
  aa=0 aafail=0 inj=0 injdet=0 ref=0 reffail=0 refinj=0 refdet=0
  for a in "$dir"/a*/; do
    i=${a%/}; i=${i##*/a}
    A=$(ls -d "$dir/a$i"/*/) B=$(ls -d "$dir/b$i"/*/) P=$(ls -d "$dir/p$i"/*/)
    aa=$((aa + 1)); compare "$A" "$B" || { aafail=$((aafail + 1)); echo "A/A round $i: false alarm" >&2; }
    inj=$((inj + 1)); if compare "$A" "$P"; then echo "injected round $i: missed" >&2; else injdet=$((injdet + 1)); fi
    for r in "$A" "$B"; do ref=$((ref + 1)); compare "$reference" "$r" || { reffail=$((reffail + 1)); echo "vs reference: false alarm $r" >&2; }; done
    refinj=$((refinj + 1)); if compare "$reference" "$P"; then echo "vs reference: missed $P" >&2; else refdet=$((refdet + 1)); fi
  done
  echo "A/A false alarms: $aafail/$aa; injected detected: $injdet/$inj"
  echo "against the reference: false alarms $reffail/$ref; injected detected $refdet/$refinj"
  echo "QPS coefficient of variation across repetitions (median over runs, min-max), unpadded runs:"
  for dp in direct socketlb iptables; do
    cat "$dir"/[ab]*/*/results.json | jq -rs --arg dp "$dp" '
      [ .[] | [ .trials[] | select(.datapath == $dp) | .workload.qps ] | select(length > 1)
        | (add / length) as $m | ((map(. - $m | . * .) | add) / (length - 1) | sqrt) / $m ]
      | sort | "  \($dp): \(.[length/2|floor] * 1000 | round / 10)% (\(.[0] * 1000 | round / 10)-\(.[-1] * 1000 | round / 10)%) over \(length) runs"'
  done
  ;;
*)
  sed -n '2,14p' "$0" >&2; exit 2 ;;
esac
