package results

import (
	"image/png"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestWriteCharts checks both charts are written as PNGs of the documented
// size; SVCLAB_CHART_DIR keeps them for a look.
func TestWriteCharts(t *testing.T) {
	dir := os.Getenv("SVCLAB_CHART_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	oneRep := sampleRun()
	oneRep.Trials = oneRep.Trials[:9] // repetition 0 only: no whiskers
	oneRep.Summary = nil
	// A services sweep: one slot per scale point, none overwritten.
	sweep := sampleRun()
	for i := range sweep.Trials {
		sweep.Trials[i].Services, sweep.Trials[i].Endpoints = []int{1, 1000}[sweep.Trials[i].Repetition%2], 12
	}
	sweep.Summary = nil
	for _, tc := range []struct {
		name string
		run  *Run
	}{
		{"sample", sampleRun()},
		{"single repetition", oneRep},
		{"services sweep", sweep},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(dir, filepath.Base(t.Name()))
			require.NoError(t, os.MkdirAll(out, 0o755))
			paths, err := WriteCharts(out, tc.run)
			require.NoError(t, err)
			require.Equal(t, []string{filepath.Join(out, "qps.png"), filepath.Join(out, "p90.png")}, paths)
			for _, p := range paths {
				f, err := os.Open(p)
				require.NoError(t, err)
				img, err := png.Decode(f)
				f.Close()
				require.NoError(t, err, p)
				assert.Equal(t, 1200, img.Bounds().Dx(), p)
				assert.Equal(t, 675, img.Bounds().Dy(), p)
			}
		})
	}
}

// TestWriteChartsNoData checks a run without trials is an error, not a
// blank chart that would pass for a result.
func TestWriteChartsNoData(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		run  *Run
	}{
		{"no trials", &Run{ID: "empty", Datapaths: []DatapathInfo{{Name: "ipvs", Skipped: "no ip_vs"}}}},
		{"nil run", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			paths, err := WriteCharts(dir, tc.run)
			require.ErrorIs(t, err, ErrNoData)
			assert.Empty(t, paths)
			entries, _ := os.ReadDir(dir)
			assert.Empty(t, entries, "no file is left behind")
		})
	}
}

// TestBarGeometry checks the data-unit layout that keeps whiskers on their
// bars: bars sit inside their group's slot, in series order, and do not
// overlap.
func TestBarGeometry(t *testing.T) {
	for _, n := range []int{1, 2, 3, 7} {
		g := &groupedBars{series: make([]barSeries, n), groups: 3}
		for group := range 3 {
			prevRight := float64(group) - 0.5
			for slot := range n {
				c, half := g.barX(group, slot)
				assert.Greater(t, half, 0.0)
				assert.GreaterOrEqual(t, c-half, prevRight, "n=%d group=%d slot=%d", n, group, slot)
				prevRight = c + half
			}
			assert.LessOrEqual(t, prevRight, float64(group)+0.5)
		}
	}
}

// TestTickLabels checks axis labels read as plain numbers.
func TestTickLabels(t *testing.T) {
	for _, tc := range []struct {
		name   string
		lo, hi float64
		want   []string
	}{
		{"rates", 0, 31000, []string{"0", "10,000", "20,000", "30,000"}},
		{"latency", 0, 500, []string{"0", "250", "500"}},
		{"fractional", 0, 1.2, []string{"0", "0.5", "1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var got []string
			for _, tk := range (groupedTicks{}).Ticks(tc.lo, tc.hi) {
				if tk.Label != "" {
					got = append(got, tk.Label)
				}
			}
			assert.Equal(t, tc.want, got)
		})
	}
}

// TestGroupThousands checks tick and caption numbers read as rates.
func TestGroupThousands(t *testing.T) {
	for in, want := range map[float64]string{0: "0", 999: "999", 1000: "1,000", 52000.4: "52,000", 1234567: "1,234,567", -40000: "-40,000"} {
		assert.Equal(t, want, groupThousands(in))
	}
}

// The caption names a skipped datapath, and where it was measured instead
// when it was (in a VM: a Site).
func TestSkippedNotes(t *testing.T) {
	run := sampleRun()
	assert.Equal(t, []string{"Not measured: ipvs (kernel module ip_vs not available)."}, skippedNotes(run))
	for _, dp := range []string{"ipvs", "direct", "ipvs"} {
		run.Trials = append(run.Trials, Trial{Datapath: dp, Site: "debian-6.12", Concurrency: 1})
	}
	assert.Equal(t, []string{"Not measured on this host: ipvs (kernel module ip_vs not available); measured as ipvs @ debian-6.12."}, skippedNotes(run))
}
