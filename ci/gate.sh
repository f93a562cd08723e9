#!/usr/bin/env bash
# The CI regression gate: run the short ci-gate bench on this machine and
# compare it with the committed reference result for this machine kind.
#
#   ci/gate.sh [extra svclab bench flags]
#
# Environment:
#   SVCLAB      svclab binary (default: build bin/svclab)
#   REFERENCE   reference result (default: ci/reference/results.json)
#   THRESHOLDS  thresholds file (default: ci/thresholds.yaml)
#   GATE_OUTPUT directory that receives the run (default: results/ci-gate)
#   SCENARIO    scenario (default: the built-in ci-gate; the reference must
#               have been made with the same one)
#   UPDATE_REFERENCE=1  make this run the new reference instead of comparing
#               (histograms stripped: compare needs the percentiles only;
#               needs jq). Do it on the machine kind CI uses, when the
#               harness or the workload changes, and commit the file.
#
# Exit status: 0 pass, 1 a gated figure regressed (significantly, beyond its
# threshold), 2 the gate could not run (bench failed, bad input).
# Needs root, like every svclab bench.
set -euo pipefail
cd "$(dirname "$0")/.."

reference=${REFERENCE:-ci/reference/results.json}
thresholds=${THRESHOLDS:-ci/thresholds.yaml}
output=${GATE_OUTPUT:-results/ci-gate}

svclab=${SVCLAB:-}
if [[ -z $svclab ]]; then
  export PATH=$PATH:/usr/local/go/bin
  go build -o bin/svclab ./cmd/svclab || exit 2
  svclab=bin/svclab
fi

mkdir -p "$output"
before=$(mktemp)
trap 'rm -f "$before"' EXIT
ls -1 "$output" >"$before"

echo "gate: svclab bench --scenario ${SCENARIO:-ci-gate} $*" >&2
if ! "$svclab" bench --scenario "${SCENARIO:-ci-gate}" --output "$output" "$@" >&2; then
  echo "gate: the bench failed; nothing was compared" >&2
  exit 2
fi
# The run directory the bench just made.
run=$(ls -1 "$output" | grep -vxF -f "$before" | tail -n 1 || true)
if [[ -z $run || ! -f $output/$run/results.json ]]; then
  echo "gate: no new results.json under $output" >&2
  exit 2
fi

if [[ ${UPDATE_REFERENCE:-} == 1 ]]; then
  mkdir -p "$(dirname "$reference")"
  jq 'del(.trials[].workload.histogram, .generator.workload.histogram)' "$output/$run/results.json" >"$reference.tmp"
  mv "$reference.tmp" "$reference"
  echo "gate: wrote $reference from $output/$run; commit it" >&2
  exit 0
fi

echo "gate: svclab compare --thresholds $thresholds $reference $output/$run" >&2
status=0
"$svclab" compare --thresholds "$thresholds" "$reference" "$output/$run" || status=$?
case $status in
  0) echo "gate: PASS ($output/$run)" >&2 ;;
  1) echo "gate: FAIL: regression against $reference ($output/$run)" >&2 ;;
  *) echo "gate: compare could not run (status $status)" >&2; status=2 ;;
esac
exit "$status"
