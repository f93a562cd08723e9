package ci_test

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// fakeSvclab stands in for svclab: `bench` makes the next run directory of
// the outcomes listed in $FAKE_OUTCOMES (one per bench, comma-separated),
// `compare REF RUN` prints the outcome of RUN as compare would and exits
// with its status, `cleanup` does nothing. An outcome is "pass", "bad"
// (compare cannot run), "invalid", "benchfail" or the rows that regressed,
// "+"-separated, each "datapath conc=8 metric".
const fakeSvclab = `#!/usr/bin/env bash
set -euo pipefail
state=$FAKE_STATE
case $1 in
cleanup) echo cleaned >>"$state/cleanups" ;;
bench)
  while [[ $1 != --output ]]; do shift; done
  out=$2
  n=$(cat "$state/n" 2>/dev/null || echo 0)
  echo $((n + 1)) >"$state/n"
  IFS=, read -ra outcomes <<<"$FAKE_OUTCOMES"
  outcome=${outcomes[$n]}
  [[ $outcome != benchfail ]] || exit 1
  mkdir -p "$out/run$n"
  echo '{"trials":[{"workload":{"qps":1,"histogram":[1]}}],"generators":[{"workload":{"histogram":[2]}}]}' >"$out/run$n/results.json"
  echo "$outcome" >"$out/run$n/outcome"
  echo "$*" >"$out/run$n/args"
  ;;
compare)
  outcome=$(cat "${@: -1}/outcome")
  case $outcome in
  pass) echo "PASS: no gated figure regressed"; exit 0 ;;
  bad) echo "svclab compare: runs are not comparable" >&2; exit 2 ;;
  invalid) printf 'FAIL: invalid run: 1 invalid trial(s), left out of every row above:\n  NEW: iptables conc=8 repetition 2: no completed connection\n'; exit 1 ;;
  *)
    IFS=+ read -ra rows <<<"$outcome"
    echo "FAIL: ${#rows[@]} regression(s):"
    for r in "${rows[@]}"; do echo "  $r: 0.800 → 0.700 (-12.5%, p=0.001, threshold 5%)"; done
    echo "note: after the list"
    exit 1 ;;
  esac ;;
esac
`

// gate runs ci/gate.sh with the fake svclab and returns its exit status
// and stderr.
func gate(t *testing.T, state, output, outcomes string, args ...string) (int, string) {
	return gateWith(t, []string{"REFERENCE=" + filepath.Join(state, "reference.json")}, state, output, outcomes, args...)
}

func gateWith(t *testing.T, env []string, state, output, outcomes string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command("bash", append([]string{"gate.sh"}, args...)...)
	cmd.Env = append(os.Environ(), "SVCLAB="+filepath.Join(state, "svclab"), "FAKE_STATE="+state,
		"FAKE_OUTCOMES="+outcomes, "GATE_OUTPUT="+output, "REFERENCE=")
	cmd.Env = append(cmd.Env, env...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	err := cmd.Run()
	status := 0
	if ee, ok := err.(*exec.ExitError); ok {
		status = ee.ExitCode()
	} else {
		require.NoError(t, err)
	}
	return status, stderr.String()
}

func fakeState(t *testing.T) string {
	state := t.TempDir()
	require.NoError(t, os.WriteFile(filepath.Join(state, "svclab"), []byte(fakeSvclab), 0o755))
	return state
}

// The gate fails only when a second fresh run regresses again on the same
// datapath at the same point; a first alarm the second run does not
// confirm is a warning, and a pass needs one run only.
func TestGateConfirmsAnAlarmWithASecondRun(t *testing.T) {
	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash")
	}
	for _, tc := range []struct {
		name, outcomes string
		wantStatus     int
		wantBenches    int
		wantErr        []string
		wantKept       bool
	}{
		{"pass", "pass", 0, 1, []string{"gate: PASS"}, false},
		{"confirmed on the same row", "iptables conc=8 qps×direct,iptables conc=8 qps×direct", 1, 2,
			[]string{"confirming with a second fresh run", "FAIL: regression", "confirmed by a second run: iptables conc=8"}, true},
		{"confirmed on another metric of the same datapath", "iptables conc=8 qps×direct,iptables conc=8 p50×direct+socketlb conc=8 qps×direct", 1, 2,
			[]string{"confirmed by a second run: iptables conc=8 ("}, true},
		{"second run clean: warning", "iptables conc=8 qps×direct,pass", 0, 2,
			[]string{"WARNING: unconfirmed alarm on iptables conc=8", "gate: PASS"}, false},
		{"second run alarms elsewhere: warning", "iptables conc=8 qps×direct,socketlb conc=8 p50×direct", 0, 2,
			[]string{"WARNING: unconfirmed alarm on iptables conc=8", "it alarmed on socketlb conc=8 instead, unconfirmed", "gate: PASS"}, false},
		{"invalid twice", "invalid,invalid", 1, 2, []string{"confirmed by a second run: invalid run"}, true},
		{"first bench fails", "benchfail", 2, 1, []string{"the bench failed"}, false},
		{"second bench fails", "iptables conc=8 qps×direct,benchfail", 2, 2, []string{"the bench failed"}, true},
		{"compare cannot run", "bad", 2, 1, []string{"compare could not run (status 2)"}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state, output := fakeState(t), filepath.Join(t.TempDir(), "out")
			status, stderr := gate(t, state, output, tc.outcomes, "--duration", "1s")
			assert.Equal(t, tc.wantStatus, status, stderr)
			for _, s := range tc.wantErr {
				assert.Contains(t, stderr, s)
			}
			n, err := os.ReadFile(filepath.Join(state, "n"))
			require.NoError(t, err)
			assert.Equal(t, strconv.Itoa(tc.wantBenches), strings.TrimSpace(string(n)), "benches run")
			_, err = os.Stat(filepath.Join(state, "cleanups"))
			assert.NoError(t, err, "svclab cleanup runs after the gate")
			runs, _ := filepath.Glob(filepath.Join(output, "run*"))
			if tc.wantKept {
				assert.NotEmpty(t, runs, "a failing gate keeps its runs")
			} else {
				assert.Empty(t, runs, "a passing gate removes its runs")
			}
			for _, r := range runs {
				args, err := os.ReadFile(filepath.Join(r, "args"))
				require.NoError(t, err)
				assert.Contains(t, string(args), "--duration 1s", "bench flags reach every run")
			}
		})
	}
}

// --judge applies the same rule to runs already made (ci/prove-gate.sh
// counts the gate's verdicts with it) and runs no bench.
func TestGateJudge(t *testing.T) {
	state := fakeState(t)
	dir := t.TempDir()
	mk := func(name, outcome string) string {
		d := filepath.Join(dir, name)
		require.NoError(t, os.MkdirAll(d, 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(d, "outcome"), []byte(outcome+"\n"), 0o644))
		return d
	}
	pass, alarm, again := mk("pass", "pass"), mk("alarm", "iptables conc=8 qps×direct"), mk("again", "iptables conc=8 cpu_per_conn×direct")
	for _, tc := range []struct {
		name       string
		args       []string
		wantStatus int
	}{
		{"pass", []string{pass, alarm}, 0},
		{"pass without a second run", []string{pass}, 0},
		{"confirmed", []string{alarm, again}, 1},
		{"unconfirmed", []string{alarm, pass}, 0},
		{"alarm without a second run", []string{alarm}, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			status, stderr := gate(t, state, filepath.Join(dir, "out"), "", append([]string{"--judge"}, tc.args...)...)
			assert.Equal(t, tc.wantStatus, status, stderr)
			_, err := os.Stat(filepath.Join(state, "n"))
			assert.True(t, os.IsNotExist(err), "no bench")
			for _, d := range []string{pass, alarm, again} {
				assert.DirExists(t, d, "judged runs are never removed")
			}
		})
	}
}

// Without REFERENCE the gate compares with the committed reference of the
// run's machine kind; a kind without one cannot be gated (exit 3, its own
// status so that .ci/run can say it skipped the gate and why, saying how to
// make one), never passed.
func TestGateNeedsAReferenceOfThisMachineKind(t *testing.T) {
	if _, err := exec.LookPath("jq"); err != nil {
		t.Skip("no jq")
	}
	state := fakeState(t)
	status, stderr := gateWith(t, nil, state, filepath.Join(t.TempDir(), "out"), "pass")
	assert.Equal(t, 3, status, stderr)
	assert.Contains(t, stderr, "no reference in ci/reference/ for this machine kind")
	assert.Contains(t, stderr, "UPDATE_REFERENCE=1 ci/gate.sh")
}

// UPDATE_REFERENCE=1 makes a 30-repetition run the reference, without
// histograms (the trials' and the generator ceilings'), and keeps the run
// it came from.
func TestGateUpdateReference(t *testing.T) {
	if _, err := exec.LookPath("jq"); err != nil {
		t.Skip("no jq")
	}
	state, output := fakeState(t), filepath.Join(t.TempDir(), "out")
	ref := filepath.Join(t.TempDir(), "ref.json")
	status, stderr := gateWith(t, []string{"UPDATE_REFERENCE=1", "REFERENCE=" + ref}, state, output, "pass")
	require.Equal(t, 0, status, stderr)
	assert.Contains(t, stderr, "wrote "+ref)
	b, err := os.ReadFile(ref)
	require.NoError(t, err)
	assert.JSONEq(t, `{"trials":[{"workload":{"qps":1}}],"generators":[{"workload":{}}]}`, string(b), "every histogram stripped")
	runs, _ := filepath.Glob(filepath.Join(output, "run*"))
	require.Len(t, runs, 1, "the reference's run is kept")
	args, err := os.ReadFile(filepath.Join(runs[0], "args"))
	require.NoError(t, err)
	assert.Contains(t, string(args), "--repetitions 30")
}
