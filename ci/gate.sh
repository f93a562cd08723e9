#!/usr/bin/env bash
# The CI regression gate: run the short ci-gate bench on this machine and
# compare it with the committed reference result for this machine kind. An
# alarm is confirmed by a second fresh run before the gate fails (below).
#
#   ci/gate.sh [extra svclab bench flags]
#   ci/gate.sh --judge FIRST [SECOND]   no bench: judge runs already made
#                                       (run directories) by the same rule;
#                                       ci/prove-gate.sh uses it. Without
#                                       SECOND, an alarm in FIRST exits 2.
#
# Confirmation: a first run with an alarm (a gated row regressed:
# significant and beyond its threshold) triggers a second fresh bench, and
# the gate fails only if the second run regresses again on the same
# datapath at the same point (any gated metric of it). Why that rule:
#   - noise alarms are independent between runs and spread over the
#     datapaths, so requiring the second one on the same datapath squares
#     their rate (and divides it by the number of gated datapaths) instead
#     of merely squaring it;
#   - a real slowdown of a datapath shows in all of its figures at once
#     (in a closed loop QPS, p50 and CPU per connection move together), so
#     which of its metrics crosses the threshold in each run is partly
#     luck: demanding the very same metric twice would lose detection and
#     buy no protection (those figures are correlated anyway).
# An alarm that the second run does not confirm is printed as a warning
# and the gate passes. Both runs are compared with the same reference, so
# confirmation removes chance alarms, not a stale reference: remake it
# when the harness or the machine kind changes.
#
# Environment:
#   SVCLAB      svclab binary (default: build bin/svclab)
#   REFERENCE   reference result (default: the ci/reference/*.json made on
#               this machine kind, i.e. whose CPU model and count match the
#               run's: compare refuses runs of other machine kinds; none
#               there exits 2 and says how to make one)
#   THRESHOLDS  thresholds file (default: ci/thresholds.yaml)
#   GATE_OUTPUT directory that receives the runs (default: results/ci-gate);
#               a passing gate removes its runs, a failing one keeps them
#   GATE_KEEP=1 keep the runs of a passing gate too
#   SCENARIO    scenario (default: the built-in ci-gate; the reference must
#               have been made with the same one)
#   UPDATE_REFERENCE=1  make this run the new reference of this machine
#               kind instead of comparing (REFERENCE_REPETITIONS
#               repetitions, default 30: a reference measured twice as
#               long as a gate run narrows its median's interval, so the
#               U test gains power and a chance-high or -low reference
#               biases every later gate less; histograms stripped; needs
#               jq). Do it on a quiet machine of the kind CI uses, when
#               the harness or the workload changes, and commit the file.
#
# Exit status: 0 pass (possibly with an unconfirmed warning), 1 a gated
# figure regressed in both runs, 2 the gate could not run (bench failed,
# bad input, runs not comparable, no gated figure in both), 3 no reference
# for this machine kind (nothing to judge against: make one). Needs root,
# like every svclab bench.
set -euo pipefail
cd "$(dirname "$0")/.."

reference=${REFERENCE:-}
thresholds=${THRESHOLDS:-ci/thresholds.yaml}
output=${GATE_OUTPUT:-results/ci-gate}

judge=0
if [[ ${1:-} == --judge ]]; then
  judge=1
  shift
  (($# == 1 || $# == 2)) || { echo "usage: ci/gate.sh --judge FIRST [SECOND]" >&2; exit 2; }
fi

svclab=${SVCLAB:-}
if [[ -z $svclab ]]; then
  export PATH=$PATH:/usr/local/go/bin
  go build -o bin/svclab ./cmd/svclab || exit 2
  svclab=bin/svclab
fi

made=() # run directories this gate made
cleanup() {
  local status=$?
  # Objects of a bench killed mid-run (namespaces, cgroups, BPF links);
  # svclab cleanup removes only those of runs that are no longer alive.
  if ((judge == 0)); then
    "$svclab" cleanup >/dev/null 2>&1 || true
  fi
  if ((status == 0)) && [[ ${GATE_KEEP:-} != 1 ]] && ((${#made[@]} > 0)); then
    rm -rf "${made[@]}"
  fi
  exit "$status"
}
trap cleanup EXIT

# bench: one ci-gate run; sets $run to its directory. Exits 2 on failure.
bench() {
  mkdir -p "$output"
  local before
  before=$(ls -1 "$output")
  echo "gate: svclab bench --scenario ${SCENARIO:-ci-gate} $*" >&2
  if ! "$svclab" bench --scenario "${SCENARIO:-ci-gate}" --output "$output" "$@" >&2; then
    echo "gate: the bench failed; nothing was compared" >&2
    exit 2
  fi
  # The run directory the bench just made.
  local id
  id=$(ls -1 "$output" | grep -vxF -e "$before" | tail -n 1 || true)
  if [[ -z $id || ! -f $output/$id/results.json ]]; then
    echo "gate: no new results.json under $output" >&2
    exit 2
  fi
  run=$output/$id
  made+=("$run")
}

# alarms RUN: compare RUN with the reference (table to stderr) and set
# $alarmed to what regressed, one "datapath point" per line (the rows'
# names without their metric; "invalid run" for invalid trials). Exits 2
# when compare cannot run.
alarms() {
  local out status=0
  echo "gate: svclab compare --thresholds $thresholds $reference $1" >&2
  out=$("$svclab" compare --thresholds "$thresholds" "$reference" "$1") || status=$?
  printf '%s\n' "$out" >&2
  # Datapaths outside their speed guard were reported, not judged.
  if grep -q '^NOT JUDGED: ' <<<"$out"; then
    echo "gate: WARNING: not judged in $1 (the machine's speed, ci/thresholds.yaml speed_guard): $(grep '^NOT JUDGED: ' <<<"$out" | sed 's/^NOT JUDGED: //' | paste -sd';')" >&2
  fi
  case $status in
    0) alarmed= ;;
    1)
      # The lines under "FAIL: N regression(s):" read
      # "  <datapath> <point> <metric>: old → new (...)".
      alarmed=$(printf '%s\n' "$out" | awk '
        /^FAIL: invalid run/ { print "invalid run"; section = 0; next }
        /^FAIL: [0-9]+ regression/ { section = 1; next }
        section && /^  / { sub(/^  /, ""); sub(/: .*/, ""); sub(/ [^ ]+$/, ""); print; next }
        { section = 0 }' | sort -u)
      if [[ -z $alarmed ]]; then
        echo "gate: compare failed but named no regression" >&2
        exit 2
      fi
      ;;
    *) echo "gate: compare could not run (status $status)" >&2; exit 2 ;;
  esac
}

# kind RUN: the run's machine kind, "CPU model<TAB>CPU count".
kind() { jq -r '[.env.cpu_model, (.env.cpus | tostring)] | join("\t")' "$1"; }

# pick_reference RUN: unless REFERENCE is set, the committed reference of
# RUN's machine kind.
pick_reference() {
  [[ -z $reference ]] || return 0
  local want f
  want=$(kind "$1/results.json")
  for f in ci/reference/*.json; do
    if [[ -f $f && $(kind "$f") == "$want" ]]; then
      reference=$f
      return 0
    fi
  done
  echo "gate: no reference in ci/reference/ for this machine kind ($(tr '\t' ' ' <<<"$want") CPUs): make one on a quiet machine of this kind with UPDATE_REFERENCE=1 ci/gate.sh and commit it" >&2
  exit 3
}

if [[ ${UPDATE_REFERENCE:-} == 1 ]]; then
  bench --repetitions "${REFERENCE_REPETITIONS:-30}" "$@"
  made=() # the reference's source run is kept
  if [[ -z $reference ]]; then
    # This machine kind's file if there is one, else a new file named
    # after the kind.
    reference=$( (pick_reference "$run" 2>/dev/null && echo "$reference") || true)
    if [[ -z $reference ]]; then
      reference=ci/reference/$(kind "$run/results.json" | sed 's/([^)]*)//g; s/\t/ x/' | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '-' | sed 's/^-//; s/-$//').json
    fi
  fi
  mkdir -p "$(dirname "$reference")"
  # Every histogram (trials, generator ceilings): compare reads the
  # percentiles only, and they are most of the file.
  jq 'del(.. | .histogram?)' "$run/results.json" >"$reference.tmp"
  mv "$reference.tmp" "$reference"
  echo "gate: wrote $reference from $run; commit it" >&2
  exit 0
fi

if ((judge)); then run=${1%/}; else bench "$@"; fi
first=$run
pick_reference "$first"
alarms "$first"
if [[ -z $alarmed ]]; then
  echo "gate: PASS ($first)" >&2
  exit 0
fi
first_alarmed=$alarmed
echo "gate: the first run alarms on: $(paste -sd, <<<"$first_alarmed"); confirming with a second fresh run" >&2

if ((judge)); then
  [[ -n ${2:-} ]] || { echo "gate: --judge: the first run alarms and no second run was given" >&2; exit 2; }
  run=${2%/}
else
  bench "$@"
fi
second=$run
alarms "$second"
confirmed=$(comm -12 <(printf '%s\n' "$first_alarmed") <(printf '%s\n' "$alarmed" | sed '/^$/d'))
if [[ -n $confirmed ]]; then
  echo "gate: FAIL: regression against $reference confirmed by a second run: $(paste -sd, <<<"$confirmed") ($first, $second)" >&2
  exit 1
fi
echo "gate: WARNING: unconfirmed alarm on $(paste -sd, <<<"$first_alarmed") (first run $first only; the second run $second did not regress there${alarmed:+; it alarmed on $(paste -sd, <<<"$alarmed") instead, unconfirmed}): passing" >&2
echo "gate: PASS ($second)" >&2
exit 0
