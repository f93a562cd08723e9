package results

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// invalidRun has a datapath whose second repetition completed nothing and
// a second datapath whose every trial is invalid.
func invalidRun(id string) *Run {
	var trials []Trial
	for rep := range 3 {
		trials = append(trials, trial(DirectDatapath, 8, rep, 10000, 100, 200, 400, 0, 0))
		t := trial("iptables", 8, rep, 8000, 120, 240, 480, 0, 0)
		if rep == 1 {
			t.Workload = Workload{Errors: map[string]int64{"ETIMEDOUT": 40}}
			t.Invalid = "no completed connection (40 failed)"
		}
		trials = append(trials, t)
		stuck := trial("stuck", 8, rep, 0, 0, 0, 0, 0, 0)
		stuck.Invalid = "no completed connection (0 failed)"
		trials = append(trials, stuck)
	}
	return &Run{SchemaVersion: SchemaVersion, ID: id, Trials: trials, Summary: Summarize(trials)}
}

// An invalid trial is counted but none of its figures reaches a median: a
// failed repetition's zeros would otherwise pull latency down ("better").
func TestSummarizeLeavesInvalidTrialsOut(t *testing.T) {
	run := invalidRun("a")
	byDP := map[string]Summary{}
	for _, s := range run.Summary {
		byDP[s.Datapath] = s
	}
	ipt := byDP["iptables"]
	assert.Equal(t, 2, ipt.Repetitions)
	assert.Equal(t, 1, ipt.Invalid)
	assert.Equal(t, []float64{8000, 8000}, ipt.QPS.Values)
	assert.Equal(t, 240.0, ipt.P90.Median, "the failed repetition's p90 of 0 is not in the median")
	assert.Equal(t, int64(40), ipt.Errors, "its errors still count")
	assert.InDelta(t, 0.8, ipt.QPSRatioToDirect, 1e-9)

	stuck := byDP["stuck"]
	assert.Equal(t, 0, stuck.Repetitions)
	assert.Equal(t, 3, stuck.Invalid)
	assert.Empty(t, stuck.QPS.Values)
	assert.Zero(t, stuck.QPSRatioToDirect)
}

// The table says how many repetitions count and names every invalid trial;
// the charts' caption says some were left out.
func TestTableNamesInvalidTrials(t *testing.T) {
	run := invalidRun("a")
	var b bytes.Buffer
	require.NoError(t, WriteTable(&b, run))
	out := b.String()
	assert.Contains(t, out, "2 of 3")
	assert.Contains(t, out, "0 of 3")
	assert.Contains(t, out, "invalid, left out of the figures: iptables conc=8 repetition 2: no completed connection (40 failed)")
	assert.Contains(t, caption(run, chartSpec{name: "qps"}), "4 invalid trial(s) left out")
}

// Comparing a run that has an invalid trial fails as an invalid run, never
// as better or the same; two valid runs do not.
func TestCompareFailsOnInvalidRun(t *testing.T) {
	bad := invalidRun("new")
	good := invalidRun("old")
	good.Trials = slicesDeleteInvalid(good.Trials)
	good.Summary = Summarize(good.Trials)

	c := Compare(good, bad, DefaultThresholds())
	assert.True(t, c.Failed())
	assert.Len(t, c.Invalid, 4)
	assert.Contains(t, c.Invalid, "NEW: iptables conc=8 repetition 2: no completed connection (40 failed)")
	var b bytes.Buffer
	require.NoError(t, c.WriteTable(&b))
	assert.Contains(t, b.String(), "FAIL: invalid run: 4 invalid trial(s)")
	assert.NotContains(t, b.String(), "PASS")

	assert.False(t, Compare(good, good, DefaultThresholds()).Failed())
}

func slicesDeleteInvalid(ts []Trial) []Trial {
	var out []Trial
	for _, t := range ts {
		if t.Valid() {
			out = append(out, t)
		}
	}
	return out
}

// Runs of different workloads or kinds of machine are refused: a TCP run
// against a UDP one would print "+176 %" and pass.
func TestComparable(t *testing.T) {
	mk := func(scenario string, cpu string, cpus int) *Run {
		return &Run{Scenario: []byte(scenario), Env: Env{CPUModel: cpu, CPUs: cpus}}
	}
	tcp := `{"name":"default","service":{"protocol":"TCP"},"workload":{}}`
	tests := []struct {
		name     string
		old, new *Run
		want     string
	}{
		{"same", mk(tcp, "EPYC", 2), mk(tcp, "EPYC", 2), ""},
		{"protocol", mk(tcp, "EPYC", 2), mk(`{"name":"default","service":{"protocol":"UDP"},"workload":{}}`, "EPYC", 2), `protocol "TCP" vs "UDP"`},
		{"scenario", mk(tcp, "EPYC", 2), mk(`{"name":"scale","service":{"protocol":"TCP"}}`, "EPYC", 2), `scenario "default" vs "scale"`},
		{"udp mode", mk(`{"name":"udp","service":{"protocol":"UDP"},"workload":{"udpMode":"long-lived"}}`, "EPYC", 2),
			mk(`{"name":"udp","service":{"protocol":"UDP"},"workload":{}}`, "EPYC", 2), `udpMode "long-lived" vs ""`},
		{"load model", mk(tcp, "EPYC", 2), mk(`{"name":"default","service":{"protocol":"TCP"},"workload":{"model":"open"}}`, "EPYC", 2), `load model "closed" vs "open"`},
		{"ip family", mk(tcp, "EPYC", 2), mk(`{"name":"default","service":{"protocol":"TCP","ipFamily":"IPv6"},"workload":{}}`, "EPYC", 2), `ipFamily "IPv4" vs "IPv6"`},
		{"IPv4 spelled out is the default", mk(tcp, "EPYC", 2), mk(`{"name":"default","service":{"protocol":"TCP","ipFamily":"IPv4"},"workload":{}}`, "EPYC", 2), ""},
		{"udp connected", mk(`{"name":"udp","service":{"protocol":"UDP"},"workload":{"udpMode":"connected"}}`, "EPYC", 2),
			mk(`{"name":"udp","service":{"protocol":"UDP"},"workload":{"udpMode":"socket-per-request"}}`, "EPYC", 2), `udpMode "connected" vs "socket-per-request"`},
		{"machine", mk(tcp, "EPYC", 2), mk(tcp, "Xeon", 8), "machine EPYC ×2 vs Xeon ×8"},
		{"bench.txt has no scenario", mk("", "EPYC", 2), mk(tcp, "EPYC", 2), ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := Comparable(tt.old, tt.new)
			if tt.want == "" {
				assert.NoError(t, err)
				return
			}
			require.ErrorIs(t, err, ErrNotComparable)
			assert.Contains(t, err.Error(), tt.want)
		})
	}
}

// CPU busy outside the run (another tenant, steal) is computed from the
// machine's and the run's figures, and the table flags trials above 5 %.
func TestBusyOutsideTheRun(t *testing.T) {
	u := &CPUUsage{WindowSeconds: 2, CPUs: 2, UserSeconds: 1.5, SystemSeconds: 1.0, SoftirqSeconds: 0.6, IRQSeconds: 0.1, StealSeconds: 0.1}
	u.AddRun(2*time.Second, map[string]time.Duration{"clients": 1200 * time.Millisecond, "servers": 800 * time.Millisecond}, 1000)
	assert.InDelta(t, 1.3, u.OutsideSeconds, 1e-9, "user+system+irq+softirq 3.2 s, 2 s of it the run's, plus 0.1 s steal")
	assert.InDelta(t, 0.325, u.OutsideFraction, 1e-9)
	assert.InDelta(t, 2000.0, u.RunPerConnectionUS, 1e-9)
	assert.Equal(t, map[string]float64{"clients": 1.2, "servers": 0.8}, u.RunRoleSeconds)

	run := invalidRun("a")
	run.Trials[0].Workload.CPU = u
	var b bytes.Buffer
	require.NoError(t, WriteTable(&b, run))
	assert.Contains(t, b.String(), "warning: the machine was busy outside this run during 1 of 9 trials (up to 33% of its CPU, in direct conc=8 repetition 1)")

	// The run's cgroups were charged the softirq they ran (more than the
	// machine's user and system time): nothing was busy outside.
	charged := &CPUUsage{WindowSeconds: 2, CPUs: 2, UserSeconds: 0.1, SystemSeconds: 2.0, SoftirqSeconds: 1.6}
	charged.AddRun(3680*time.Millisecond, nil, 1000)
	assert.InDelta(t, 0.02, charged.OutsideSeconds, 1e-9)
	// One core busy beside such a run (measured with --placement split).
	beside := &CPUUsage{WindowSeconds: 2, CPUs: 2, UserSeconds: 1.08, SystemSeconds: 1.11, SoftirqSeconds: 0.87}
	beside.AddRun(2488*time.Millisecond, nil, 1000)
	assert.Greater(t, beside.OutsideFraction, busyThreshold, "user+system (2.19 s) alone is below the run's 2.49 s")

	quiet := invalidRun("b")
	b.Reset()
	require.NoError(t, WriteTable(&b, quiet))
	assert.NotContains(t, b.String(), "busy outside")
}

// UDP loss is named per datapath and point, by its worst repetition.
func TestTableNamesUDPLoss(t *testing.T) {
	run := invalidRun("a")
	run.Trials[0].Workload.Lost, run.Trials[0].Workload.LossRate = 3, 0.001
	run.Trials[3].Workload.Lost, run.Trials[3].Workload.LossRate = 30, 0.012
	var b bytes.Buffer
	require.NoError(t, WriteTable(&b, run))
	assert.Contains(t, b.String(), "UDP loss: direct conc=8: up to 1.2% of requests got no reply (30 lost in repetition 2)")
	assert.NotContains(t, b.String(), "UDP loss: iptables")
}

// A padded datapath (the gate's injected regression) is named above the
// table.
func TestTableNamesInjectedRegression(t *testing.T) {
	run := invalidRun("a")
	run.Datapaths = []DatapathInfo{{Name: "iptables", Info: map[string]string{"pad_rules": "4000"}}, {Name: DirectDatapath}}
	var b bytes.Buffer
	require.NoError(t, WriteTable(&b, run))
	assert.True(t, strings.HasPrefix(b.String(), "INJECTED REGRESSION: iptables has 4000 never-matching rules ahead of its services"), b.String()[:80])
	run.Datapaths[0].Info["pad_rules"] = "0"
	b.Reset()
	require.NoError(t, WriteTable(&b, run))
	assert.NotContains(t, b.String(), "INJECTED")
}
