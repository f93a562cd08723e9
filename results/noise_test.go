package results

import (
	"bytes"
	"math"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// sampleCV is the coefficient of variation in % of vs, written out.
func sampleCV(vs ...float64) float64 {
	mean := 0.0
	for _, v := range vs {
		mean += v
	}
	mean /= float64(len(vs))
	ss := 0.0
	for _, v := range vs {
		ss += (v - mean) * (v - mean)
	}
	return 100 * math.Sqrt(ss/float64(len(vs)-1)) / mean
}

// noiseBlock is the table's noise block of run: its rows by their first
// two fields (datapath and concurrency), the rest of each row's fields.
func noiseBlock(t *testing.T, run *Run) map[string][]string {
	t.Helper()
	var b bytes.Buffer
	require.NoError(t, WriteTable(&b, run))
	_, after, found := strings.Cut(b.String(), "\nnoise: ")
	if !found {
		return nil
	}
	lines := strings.Split(after, "\n")
	require.GreaterOrEqual(t, len(lines), 2)
	rows := map[string][]string{"head": strings.Fields(lines[1])}
	for _, l := range lines[2:] {
		f := strings.Fields(l)
		if len(f) < 6 || strings.HasSuffix(f[0], ":") {
			break
		}
		rows[f[0]+" "+f[1]] = f[2:]
	}
	return rows
}

// TestWriteNoise checks the noise block's figures against the trials:
// QPS's CV, QPS paired per round with direct's, the cost trials' CVs, a
// retried repetition counted once (its later trial) and an invalid trial
// left out.
func TestWriteNoise(t *testing.T) {
	run := costRun()
	// Repetition 2 of iptables at 8 retried: the first attempt's figure
	// must not count. And an invalid trial in repetition 6.
	retried := trial("iptables", 8, 2, 1, 40, 60, 90, 0.1, 0)
	bad := trial("iptables", 8, 6, 50000, 40, 60, 90, 0.1, 0)
	bad.Invalid = "connections failed"
	run.Trials = append([]Trial{retried}, append(run.Trials, bad)...)
	run.Summary = Summarize(run.Trials)

	rows := noiseBlock(t, run)
	assert.Equal(t, []string{"DATAPATH", "CONC", "QPS", "QPS×DIR", "DP", "ns/C", "DP", "%CPU"}, rows["head"])
	var ipt, dir, ratios, ns, directNs []float64
	for i := range 6 {
		j := float64(i)
		ipt = append(ipt, 8000+100*j)
		dir = append(dir, 10000+100*j)
		ratios = append(ratios, (8000+100*j)/(10000+100*j))
		ns = append(ns, 2698+13*j)
		directNs = append(directNs, 298+2*j)
	}
	f := formatCV
	assert.Equal(t, []string{f(sampleCV(ipt...)), f(sampleCV(ratios...)), f(sampleCV(ns...)), rows["iptables 8"][3]}, rows["iptables 8"])
	// direct's ratio to itself is 1 in every round: no CV.
	assert.Equal(t, []string{f(sampleCV(dir...)), "-", f(sampleCV(directNs...)), rows["direct 8"][3]}, rows["direct 8"])
	assert.Equal(t, []string{f(sampleCV(ipt...)), f(sampleCV(ratios...)), "-", "-"}, rows["iptables 1"])
	assert.NotEqual(t, "-", rows["iptables 8"][3], "the share's CV")
}

// TestWriteNoiseNone checks there is no noise block with fewer than three
// repetitions, nor in a sweep (its scale block is the table there).
func TestWriteNoiseNone(t *testing.T) {
	two := costRun()
	var kept []Trial
	for _, tr := range two.Trials {
		if tr.Repetition < 2 {
			kept = append(kept, tr)
		}
	}
	two.Trials, two.Summary = kept, nil
	assert.Nil(t, noiseBlock(t, two))
	assert.Nil(t, noiseBlock(t, scaleRun()))
	// No cost trials: no cost columns.
	assert.Equal(t, []string{"DATAPATH", "CONC", "QPS", "QPS×DIR"}, noiseBlock(t, sampleRun())["head"])
}

// TestCoefficientOfVariation pins the edges: too few values, a zero mean.
func TestCoefficientOfVariation(t *testing.T) {
	_, ok := coefficientOfVariation([]float64{1, 2})
	assert.False(t, ok)
	_, ok = coefficientOfVariation([]float64{-1, 0, 1})
	assert.False(t, ok)
	v, ok := coefficientOfVariation([]float64{9, 10, 11})
	require.True(t, ok)
	assert.InDelta(t, 10, v, 1e-9)
}
