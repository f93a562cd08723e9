package results

import (
	"bytes"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Reference values of the chi-square distribution's upper tail (critical
// values from standard tables).
func TestChiSquareP(t *testing.T) {
	tests := []struct {
		x    float64
		df   int
		want float64
	}{
		{0, 11, 1},
		{19.675, 11, 0.05},
		{31.264, 11, 0.001},
		{3.841, 1, 0.05},
		{6.635, 1, 0.01},
		{124.342, 100, 0.05},
		{200, 11, 0},
	}
	for _, tt := range tests {
		p := ChiSquareP(tt.x, tt.df)
		assert.InDelta(t, tt.want, p, 2e-4, "x=%v df=%d", tt.x, tt.df)
	}
}

// The markdown table has one row per scenario, one column per datapath and
// the status of every cell, with failures' observations in the details.
func TestWriteConformanceMarkdown(t *testing.T) {
	run := &ConformRun{ID: "20260101-000000-00000000",
		Datapaths: []DatapathInfo{{Name: "a"}, {Name: "b", Skipped: "no kernel support"}},
		Scenarios: []ConformScenario{{Name: "s1", Behaviour: "does x | y", Source: "e2e z", Family: "ipv4"}},
		Cells: []ConformCell{
			{Scenario: "s1", Datapath: "a", Status: CellFail, Summary: "errno: connect EHOSTUNREACH ×5",
				Checks: []CheckResult{{Step: "steps[0]", Check: "errno", Want: "errno ECONNREFUSED", Observed: "connect EHOSTUNREACH ×5"}}},
			{Scenario: "s1", Datapath: "b", Status: CellSkip, Summary: "datapath unavailable: no kernel support"},
		}}
	var b bytes.Buffer
	require.NoError(t, WriteConformanceMarkdown(&b, run))
	out := b.String()
	assert.Contains(t, out, "| Behaviour | a | b |")
	assert.Contains(t, out, "| `s1`: does x / y | **FAIL**: errno: connect EHOSTUNREACH ×5 | skip: datapath unavailable: no kernel support |")
	assert.Contains(t, out, "want errno ECONNREFUSED; observed connect EHOSTUNREACH ×5")
	assert.Contains(t, out, "Source: e2e z.")
}

// n/a cells show as "n/a" in the table, their reason once under the
// datapath; a VM-run column is headed with its site; neither is listed as a
// cell that did not pass.
func TestWriteConformanceMarkdownNotApplicable(t *testing.T) {
	run := &ConformRun{ID: "20260101-000000-00000000",
		Datapaths: []DatapathInfo{{Name: "direct"}, {Name: "ipvs", Site: "debian-6.12"}},
		Scenarios: []ConformScenario{{Name: "s1", Behaviour: "b1"}, {Name: "s2", Behaviour: "b2"}},
		Cells: []ConformCell{
			{Scenario: "s1", Datapath: "direct", Status: CellNA, Summary: "no Service here"},
			{Scenario: "s2", Datapath: "direct", Status: CellNA, Summary: "no Service here"},
			{Scenario: "s1", Datapath: "ipvs", Site: "debian-6.12", Status: CellPass},
			{Scenario: "s2", Datapath: "ipvs", Site: "debian-6.12", Status: CellPass},
		}}
	var b bytes.Buffer
	require.NoError(t, WriteConformanceMarkdown(&b, run))
	out := b.String()
	assert.Contains(t, out, "| Behaviour | direct | ipvs @ debian-6.12 |")
	assert.Contains(t, out, "| `s1`: b1 | n/a | pass |")
	assert.Equal(t, 1, strings.Count(out, "n/a: no Service here."), out)
	assert.NotContains(t, out, "Cells that did not pass")
	assert.Empty(t, run.Failing("direct"), "n/a is not a failure")
}

func TestCellText(t *testing.T) {
	tests := []struct {
		c    ConformCell
		want string
	}{
		{ConformCell{Status: CellPass}, "pass"},
		{ConformCell{Status: CellPass, Summary: "4 backends"}, "pass (4 backends)"},
		{ConformCell{Status: CellFail, Summary: "ok: timeout ×3"}, "FAIL: ok: timeout ×3"},
		{ConformCell{Status: CellSkip, Summary: "why"}, "skip: why"},
		{ConformCell{Status: CellNA, Summary: "no Service"}, "n/a: no Service"},
		{ConformCell{Status: CellNA}, "n/a"},
		{ConformCell{Status: CellError, Summary: "x | y"}, "ERROR: x / y"},
		{ConformCell{Status: CellFail, Summary: "0123456789abcdefghij"}, "FAIL: 0123456789abc…"},
	}
	for _, tt := range tests {
		t.Run(tt.want, func(t *testing.T) {
			assert.Equal(t, tt.want, CellText(tt.c, 20))
		})
	}
}

// --strict counts failures and errors of requirements, not of advisory
// scenarios, and never skips.
func TestFailingIgnoresAdvisory(t *testing.T) {
	run := &ConformRun{
		Scenarios: []ConformScenario{{Name: "req"}, {Name: "adv", Advisory: "structural"}, {Name: "other"}},
		Cells: []ConformCell{
			{Scenario: "req", Datapath: "a", Status: CellFail},
			{Scenario: "adv", Datapath: "a", Status: CellFail},
			{Scenario: "other", Datapath: "a", Status: CellSkip},
			{Scenario: "other", Datapath: "b", Status: CellError},
		}}
	got := run.Failing("a")
	require.Len(t, got, 1)
	assert.Equal(t, "req", got[0].Scenario)
	assert.Len(t, run.Failing("b"), 1, "an error counts")
}
