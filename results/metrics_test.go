package results

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// measuredTrials are trials that between them measure every metric of the
// table: a closed-loop trial at a scale point with CPU accounting, a
// one-endpoint change and state counts, a cost trial at the same point
// (the datapath's own ns/conn) and an open-loop one (start lag).
// A new metric the test reports as unmeasured needs its field set here.
func measuredTrials(dp string, services int) []Trial {
	closed := trial(dp, 8, 0, 12000, 80, 120, 300, 1.5, 0)
	closed.Services, closed.Endpoints = services, 12
	closed.ApplyChangeSeconds = 0.25
	closed.DatapathState = map[string]string{StateObjects: "120", StateBytes: "4096"}
	closed.Workload.CPU = &CPUUsage{PerConnectionUS: 150, RunPerConnectionUS: 120}
	// The datapath's own cost comes from a cost trial at the same point.
	cost := costTrial(dp, 8, 0, 11000, map[string]float64{"nf-dnat": 2000, "nf-filter": 500}, 80)
	cost.Services, cost.Endpoints = services, 12
	open := openTrial(dp, 0.5, 0, 6000, 5900, 400, 30, 0)
	open.Services, open.Endpoints = services, 12
	return []Trial{closed, cost, open}
}

// TestMetricTable checks every entry of the metric table is wired through
// everything it declares: a metric that is compared has a default
// threshold, a thresholds-file key and compare rows (from results.json and
// from bench.txt); one with a unit is written to bench.txt with its
// direction and read back; one with a Stat is summarised; one with a scale
// chart is charted and has its column in the table's scale block.
func TestMetricTable(t *testing.T) {
	require.NoError(t, checkMetrics(Metrics()))
	var trials []Trial
	order := 0
	for _, dp := range []string{DirectDatapath, "socketlb"} {
		for _, svcs := range []int{1, 10} {
			for _, tr := range measuredTrials(dp, svcs) {
				tr.Order = order
				order++
				trials = append(trials, tr)
			}
		}
	}
	run := &Run{SchemaVersion: SchemaVersion, ID: "metrics", Env: Env{CPUs: 2}, Trials: trials, Summary: Summarize(trials)}

	var bench bytes.Buffer
	require.NoError(t, WriteBenchFormat(&bench, run))
	back, err := ReadBenchFormat(bytes.NewReader(bench.Bytes()), "bench.txt")
	require.NoError(t, err)
	var tableText bytes.Buffer
	require.NoError(t, WriteTable(&tableText, run))
	scaleBlock := tableText.String()[strings.Index(tableText.String(), "\nscale ("):]
	scaleHeader := strings.Fields(strings.Split(scaleBlock, "\n")[2])
	dir := t.TempDir()
	_, err = WriteScaleCharts(dir, run)
	require.NoError(t, err)
	fromJSON := Compare(run, run, DefaultThresholds())
	fromBench := Compare(back, back, DefaultThresholds())

	keys, units := map[string]bool{}, map[string]bool{}
	for _, m := range Metrics() {
		t.Run(m.Key, func(t *testing.T) {
			require.NotEmpty(t, m.Key)
			require.NotEmpty(t, m.Label)
			require.NotNil(t, m.Trial)
			assert.False(t, keys[m.Key], "key used twice")
			keys[m.Key] = true
			got, ok := LookupMetric(m.Key)
			require.True(t, ok)
			assert.Equal(t, m.Key, got.Key)

			i := slices.IndexFunc(measuredTrials("x", 10), func(tr Trial) bool { _, ok := m.Trial(tr); return ok })
			require.GreaterOrEqual(t, i, 0, "no trial of measuredTrials measures %s: set its field there", m.Key)
			want, _ := m.Trial(measuredTrials("x", 10)[i])

			if m.Compared() {
				assert.Contains(t, MetricKeys(), m.Key)
				assert.Equal(t, m.Threshold, DefaultThresholds().Metrics[m.Key])
				th, err := ParseThresholds([]byte(fmt.Sprintf("metrics:\n  %s: 20%%\n", m.Key)))
				require.NoError(t, err)
				assert.Equal(t, 0.20, th.Metrics[m.Key])
				assert.True(t, slices.ContainsFunc(fromJSON.Rows, func(r CompareRow) bool { return r.Metric == m.Key }), "no compare row from results.json")
				require.NotEmpty(t, m.Unit, "a compared metric must be in bench.txt, which compare reads too")
				require.NotNil(t, m.SetTrial, "a compared metric must be read back from bench.txt")
				assert.True(t, slices.ContainsFunc(fromBench.Rows, func(r CompareRow) bool { return r.Metric == m.Key }), "no compare row from bench.txt")
			} else {
				assert.NotContains(t, MetricKeys(), m.Key)
				_, err := ParseThresholds([]byte(fmt.Sprintf("metrics:\n  %s: 20%%\n", m.Key)))
				assert.ErrorContains(t, err, "unknown metric")
			}

			if m.Unit != "" {
				assert.False(t, units[m.Unit], "unit used twice")
				units[m.Unit] = true
				assert.Contains(t, bench.String(), fmt.Sprintf("Unit %s better=%s\n", m.Unit, m.Better))
				assert.Contains(t, bench.String(), fmt.Sprintf(" %s", m.Unit))
				if m.SetTrial != nil {
					j := slices.IndexFunc(back.Trials, func(tr Trial) bool { _, ok := m.Trial(tr); return ok })
					require.GreaterOrEqual(t, j, 0, "not read back from bench.txt")
					v, _ := m.Trial(back.Trials[j])
					assert.Equal(t, round(want, m.Digits), v)
				}
			}

			if m.Stat != nil {
				k := slices.IndexFunc(run.Summary, func(s Summary) bool { return len(m.Stat(&s).Values) > 0 })
				require.GreaterOrEqual(t, k, 0, "not summarised")
				assert.Equal(t, want, m.Stat(&run.Summary[k]).Median)
			}
			if m.Ratio != nil {
				require.NotNil(t, m.Stat, "a ratio to direct is of the summarised median")
				for _, s := range run.Summary {
					if len(m.Stat(&s).Values) > 0 {
						// Every datapath measured the same figures.
						assert.Equal(t, 1.0, *m.Ratio(&s), "%s ratio of %s", m.Key, s.name())
					}
				}
			}

			if m.Scale != nil {
				require.NotNil(t, m.Stat, "a scale chart plots the summarised figure")
				require.NotEmpty(t, m.Column)
				require.NotNil(t, m.Format)
				assert.Contains(t, strings.Join(scaleHeader, " "), m.Column)
				_, err := os.Stat(filepath.Join(dir, "scale-services-"+m.Scale.Name+".png"))
				assert.NoError(t, err, "no scale chart")
			}
		})
	}
}

// Better's String is the benchfmt "better" metadata value benchstat reads.
func TestBetterString(t *testing.T) {
	for _, tc := range []struct {
		b    Better
		want string
	}{{HigherIsBetter, "higher"}, {LowerIsBetter, "lower"}} {
		t.Run(tc.want, func(t *testing.T) { assert.Equal(t, tc.want, tc.b.String()) })
	}
}

// checkMetrics, which the package runs on its table when it loads, refuses
// an entry that declares a use without what that use needs.
func TestCheckMetrics(t *testing.T) {
	ok := Metric{Key: "k", Label: "k", Trial: func(Trial) (float64, bool) { return 1, true }}
	stat := func(s *Summary) *Stat { return &s.QPS }
	with := func(f func(*Metric)) Metric { m := ok; f(&m); return m }
	for _, tc := range []struct {
		name string
		ms   []Metric
		want string
	}{
		{"fine", []Metric{ok}, ""},
		{"no key", []Metric{with(func(m *Metric) { m.Key = "" })}, "no Key"},
		{"key twice", []Metric{ok, ok}, "Key used twice"},
		{"no trial", []Metric{with(func(m *Metric) { m.Trial = nil })}, "Trial are required"},
		{"compared without unit", []Metric{with(func(m *Metric) { m.Threshold = 0.1 })}, "needs a Unit and SetTrial"},
		{"absolute with a ratio", []Metric{with(func(m *Metric) {
			m.Absolute, m.Stat, m.Ratio = true, stat, func(s *Summary) *float64 { return &s.QPSRatioToDirect }
		})}, "Absolute, so it has no ratio"},
		{"ratio without stat", []Metric{with(func(m *Metric) { m.Ratio = func(s *Summary) *float64 { return &s.QPSRatioToDirect } })}, "Ratio without a Stat"},
		{"column without format", []Metric{with(func(m *Metric) { m.Column, m.Stat = "K", stat })}, "needs Column, Format and Stat"},
		{"chart without stat", []Metric{with(func(m *Metric) { m.Scale = &ScaleChart{Name: "k"} })}, "needs Stat, Column and Scale.Name"},
		{"unit twice", []Metric{with(func(m *Metric) { m.Unit = "u" }), with(func(m *Metric) { m.Key, m.Unit = "j", "u" })}, "Unit \"u\" used twice"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkMetrics(tc.ms)
			if tc.want == "" {
				assert.NoError(t, err)
				return
			}
			assert.ErrorContains(t, err, tc.want)
		})
	}
}
