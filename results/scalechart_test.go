package results

import (
	"bytes"
	"image/png"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// scaleRun is a scale run as `svclab bench` writes one: a services sweep
// (1…10,000 services × 12 endpoints) and an endpoints sweep (1 service ×
// 12…1,000 endpoints) at concurrency 8, three repetitions, iptables
// stopped at 10,000 services by the apply timeout, ipvs skipped. Figures
// grow with scale for iptables (linear rule walk) and stay flat for
// socketlb, as they do on a real machine.
func scaleRun() *Run {
	run := &Run{
		SchemaVersion: SchemaVersion,
		ID:            "20260301-120000-scal",
		Env:           Env{Kernel: "6.1.0-18-amd64", CPUModel: "AMD EPYC 7B13", CPUs: 2},
		Datapaths: []DatapathInfo{
			{Name: "direct"}, {Name: "socketlb"}, {Name: "iptables"},
			{Name: "ipvs", Skipped: "kernel module ip_vs not available"},
		},
		ScaleLimits: []ScaleLimit{{Datapath: "iptables", Services: 10000, Endpoints: 12,
			Reason: "apply did not finish within 1m0s", ApplySeconds: 60}},
	}
	points := [][2]int{{1, 12}, {100, 12}, {1000, 12}, {10000, 12}, {1, 100}, {1, 1000}}
	for rep := range 3 {
		for _, pt := range points {
			for _, dp := range []string{"direct", "socketlb", "iptables"} {
				if dp == "iptables" && pt[0] == 10000 {
					continue
				}
				size := float64(pt[0] * pt[1])
				jitter := 1 + 0.02*float64(rep-1)
				lat := map[string]float64{"direct": 40, "socketlb": 42, "iptables": 50 + size/200}[dp] * jitter
				apply := map[string]float64{"direct": 0.001, "socketlb": 0.01 + size/1e5, "iptables": 0.05 + size/4e3}[dp] * jitter
				tr := trial(dp, 8, rep, 8e5/lat, lat, lat*1.6, lat*3, apply, 0)
				tr.Services, tr.Endpoints = pt[0], pt[1]
				tr.Workload.CPU = &CPUUsage{PerConnectionUS: lat * 2}
				if dp != "direct" {
					tr.ApplyChangeSeconds = apply / 10
					tr.DatapathState = map[string]string{StateObjects: strconv.Itoa(pt[0]*pt[1] + pt[0])}
				}
				run.Trials = append(run.Trials, tr)
			}
		}
	}
	run.Summary = Summarize(run.Trials)
	return run
}

// TestWriteScaleCharts checks the file set of a two-sweep run, that every
// file is a PNG of the standard size, and that the same run renders the
// same bytes; SVCLAB_CHART_DIR keeps the charts for a look.
func TestWriteScaleCharts(t *testing.T) {
	dir := os.Getenv("SVCLAB_CHART_DIR")
	if dir == "" {
		dir = t.TempDir()
	}
	withoutChange := scaleRun()
	for i := range withoutChange.Trials {
		withoutChange.Trials[i].ApplyChangeSeconds = 0
		withoutChange.Trials[i].DatapathState = nil
		withoutChange.Trials[i].Workload.CPU = nil
	}
	withoutChange.Summary = nil
	twoConc := scaleRun()
	for _, tr := range twoConc.Trials {
		tr.Concurrency = 64
		twoConc.Trials = append(twoConc.Trials, tr)
	}
	twoConc.Summary = Summarize(twoConc.Trials)
	// socketlb measured again in a guest: thirty times slower, its own
	// charts, its own limit.
	withGuest := scaleRun()
	for _, tr := range slices.Clone(withGuest.Trials) {
		if tr.Datapath == "socketlb" || tr.Datapath == "direct" {
			tr.Site = "debian-6.12"
			tr.Workload.QPS /= 30
			withGuest.Trials = append(withGuest.Trials, tr)
		}
	}
	withGuest.ScaleLimits = append(withGuest.ScaleLimits, ScaleLimit{Datapath: "socketlb", Site: "debian-6.12",
		Services: 10000, Endpoints: 12, Reason: "guest limit"})
	withGuest.Summary = Summarize(withGuest.Trials)

	all := []string{"qps", "p50", "p90", "p99", "cpu", "apply", "change", "state"}
	basic := []string{"qps", "p50", "p90", "p99", "apply"}
	files := func(suffix string, metrics ...string) []string {
		var out []string
		for _, axis := range []string{"services", "endpoints"} {
			for _, m := range metrics {
				out = append(out, "scale-"+axis+"-"+m+suffix+".png")
			}
		}
		return out
	}
	for _, tc := range []struct {
		name string
		run  *Run
		want []string
	}{
		{"two sweeps", scaleRun(), files("", all...)},
		{"no cpu change or state", withoutChange, files("", basic...)},
		{"two concurrencies", twoConc, append(files("-c8", all...), files("-c64", all...)...)},
		{"a guest's sweeps apart", withGuest, append(files("", all...), files("-debian-6.12", all...)...)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out := filepath.Join(dir, filepath.Base(t.Name()))
			require.NoError(t, os.MkdirAll(out, 0o755))
			paths, err := WriteScaleCharts(out, tc.run)
			require.NoError(t, err)
			var got []string
			for _, p := range paths {
				assert.Equal(t, out, filepath.Dir(p))
				got = append(got, filepath.Base(p))
			}
			assert.Equal(t, tc.want, got)
			for _, p := range paths {
				f, err := os.Open(p)
				require.NoError(t, err)
				img, err := png.Decode(f)
				f.Close()
				require.NoError(t, err, p)
				assert.Equal(t, 1200, img.Bounds().Dx(), p)
				assert.Equal(t, 675, img.Bounds().Dy(), p)
			}

			// Deterministic: a second rendering is byte for byte the same.
			again := t.TempDir()
			paths2, err := WriteScaleCharts(again, tc.run)
			require.NoError(t, err)
			require.Len(t, paths2, len(paths))
			for i := range paths {
				a, err := os.ReadFile(paths[i])
				require.NoError(t, err)
				b, err := os.ReadFile(paths2[i])
				require.NoError(t, err)
				assert.True(t, bytes.Equal(a, b), "%s differs between renderings", filepath.Base(paths[i]))
			}
		})
	}
}

// TestScaleSweepsPerSite checks a limit goes to the sweeps of its own
// site, and a guest's sweep says where it was measured.
func TestScaleSweepsPerSite(t *testing.T) {
	run := scaleRun()
	for _, tr := range slices.Clone(run.Trials) {
		tr.Site = "debian-6.12"
		run.Trials = append(run.Trials, tr)
	}
	run.ScaleLimits = append(run.ScaleLimits, ScaleLimit{Datapath: "socketlb", Site: "debian-6.12", Services: 10000, Endpoints: 12, Reason: "guest limit"})
	run.Summary = Summarize(run.Trials)
	host := scaleSweeps(sumsAt(run.Summary, ""), run.ScaleLimits)
	guest := scaleSweeps(sumsAt(run.Summary, "debian-6.12"), run.ScaleLimits)
	require.NotEmpty(t, host)
	require.NotEmpty(t, guest)
	assert.Equal(t, []ScaleLimit{run.ScaleLimits[0]}, host[0].limits)
	assert.Equal(t, []ScaleLimit{run.ScaleLimits[1]}, guest[0].limits)
	assert.Equal(t, "", host[0].site)
	assert.Equal(t, "debian-6.12", guest[0].site, "a sweep of one site's summaries is that site's")
	m := mustMetric("qps")
	assert.True(t, strings.HasSuffix(scaleTitle(guest[0], m), " at debian-6.12"), scaleTitle(guest[0], m))
	capText := scaleCaption(run, guest[0], m)
	assert.Contains(t, capText, "socketlb @ debian-6.12: guest limit at 10,000 services")
	assert.Contains(t, capText, "Measured in a QEMU guest running the debian-6.12 kernel")
	assert.NotContains(t, capText, "Not measured on this host")
}

// TestWriteScaleChartsNoSweep checks a run that is not a sweep gets no
// scale charts and no error: WriteRun calls it for every run.
func TestWriteScaleChartsNoSweep(t *testing.T) {
	onePoint := sampleRun()
	for i := range onePoint.Trials {
		onePoint.Trials[i].Services, onePoint.Trials[i].Endpoints = 1, 12
	}
	onePoint.Summary = nil
	for _, tc := range []struct {
		name string
		run  *Run
	}{
		{"no scale", sampleRun()},
		{"one scale point", onePoint},
		{"no trials", &Run{}},
		{"nil run", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			paths, err := WriteScaleCharts(dir, tc.run)
			require.NoError(t, err)
			assert.Nil(t, paths)
			entries, err := os.ReadDir(dir)
			require.NoError(t, err)
			assert.Empty(t, entries)
		})
	}
}

// TestScaleSweeps checks how the sweeps are read off the summaries: the
// services sweep at the endpoint count with the most services values, the
// shared point (1, E0) in both sweeps, limits on the sweep they belong to,
// and a single axis when only one varies.
func TestScaleSweeps(t *testing.T) {
	at := func(svcs, eps int) Summary {
		return Summary{Datapath: "direct", Concurrency: 8, Services: svcs, Endpoints: eps}
	}
	points := func(sw scaleSweep) [][2]int {
		var out [][2]int
		for _, s := range sw.sums {
			out = append(out, [2]int{s.Services, s.Endpoints})
		}
		return out
	}
	t.Run("two sweeps", func(t *testing.T) {
		sums := []Summary{at(1, 12), at(1, 100), at(1, 1000), at(100, 12), at(1000, 12), at(1000, 1)}
		limits := []ScaleLimit{{Datapath: "iptables", Services: 10000, Endpoints: 12}, {Datapath: "iptables", Services: 1, Endpoints: 1000}}
		sw := scaleSweeps(sums, limits)
		require.Len(t, sw, 2)
		assert.Equal(t, axisServices, sw[0].axis)
		assert.Equal(t, 12, sw[0].fixed)
		assert.Equal(t, [][2]int{{1, 12}, {100, 12}, {1000, 12}}, points(sw[0]))
		assert.Equal(t, limits[:1], sw[0].limits)
		assert.Equal(t, axisEndpoints, sw[1].axis)
		assert.Equal(t, [][2]int{{1, 12}, {1, 100}, {1, 1000}}, points(sw[1]))
		assert.Equal(t, limits[1:], sw[1].limits)
	})
	t.Run("services only", func(t *testing.T) {
		sw := scaleSweeps([]Summary{at(1, 12), at(1000, 12)}, nil)
		require.Len(t, sw, 1)
		assert.Equal(t, axisServices, sw[0].axis)
		assert.Equal(t, []int{1, 1000}, sw[0].xs())
	})
	t.Run("endpoints only", func(t *testing.T) {
		sw := scaleSweeps([]Summary{at(1, 12), at(1, 100)}, nil)
		require.Len(t, sw, 1)
		assert.Equal(t, axisEndpoints, sw[0].axis)
	})
	t.Run("not a sweep", func(t *testing.T) {
		assert.Empty(t, scaleSweeps([]Summary{at(0, 0)}, nil))
		assert.Empty(t, scaleSweeps([]Summary{at(1, 12)}, nil))
	})
}

// TestLogTicks checks the log axis reads as plain numbers: powers of ten
// and the sweep's own points labelled, no two labels on top of each other.
func TestLogTicks(t *testing.T) {
	labels := func(tk logTicks, lo, hi float64) []string {
		var out []string
		for _, x := range tk.Ticks(lo, hi) {
			if x.Label != "" {
				out = append(out, x.Label)
			}
		}
		return out
	}
	assert.Equal(t, []string{"1", "10", "100", "1,000", "10,000"}, labels(logTicks{marks: []float64{1, 100, 1000, 10000}}, 0.8, 13000))
	assert.Equal(t, []string{"12", "100", "1,000"}, labels(logTicks{marks: []float64{12, 100, 1000}}, 9.2, 1300),
		"10 is too close to the mark 12 to be labelled")
	assert.Equal(t, []string{"0.001", "0.01", "0.1", "1", "10"}, labels(logTicks{}, 0.0007, 40))
	assert.Equal(t, []string{"20", "50"}, labels(logTicks{}, 15, 60), "less than a decade: 2× and 5× labelled")
	assert.Empty(t, logTicks{}.Ticks(0, 10), "no log ticks from 0")
}
