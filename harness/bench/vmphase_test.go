package bench

import (
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/results"
	"svclab/scenarios"
)

// mergeVMRun adds the guest's datapaths, trials and scale limits at the
// kernel's site, after the host's trials, and summarises each against direct of its own
// site (the VM is far slower, so the host's direct would be the wrong
// reference).
func TestMergeVMRun(t *testing.T) {
	tr := func(dp string, order int, qps float64) results.Trial {
		return results.Trial{Datapath: dp, Concurrency: 8, Order: order,
			Workload: results.Workload{QPS: qps, Latency: results.Latency{P90: 1e6 / qps}}}
	}
	run := &results.Run{
		Datapaths: []results.DatapathInfo{{Name: "direct"}, {Name: "ipvs", Skipped: "no ip_vs"}},
		Trials:    []results.Trial{tr("direct", 0, 10000)},
	}
	guest := &results.Run{
		Env:       results.Env{Kernel: "6.12.9-amd64", Extra: map[string]string{"svclab_vm_accel": "tcg"}},
		Datapaths: []results.DatapathInfo{{Name: "ipvs"}, {Name: "direct", Description: "no Service"}},
		Trials:    []results.Trial{tr("ipvs", 0, 600), tr("direct", 1, 800)},
		ScaleLimits: []results.ScaleLimit{{Datapath: "ipvs", Services: 10000, Endpoints: 12,
			Reason: "apply did not finish within 1m0s"}},
	}
	run.ScaleLimits = []results.ScaleLimit{{Datapath: "nftables", Services: 10000, Endpoints: 12}}
	mergeVMRun(run, guest, "debian-6.12")

	// A limit the guest met is the VM site's, not the host's ipvs's.
	assert.Equal(t, []results.ScaleLimit{{Datapath: "nftables", Services: 10000, Endpoints: 12},
		{Datapath: "ipvs", Services: 10000, Endpoints: 12, Reason: "apply did not finish within 1m0s", Site: "debian-6.12"}},
		run.ScaleLimits)

	require.Len(t, run.Datapaths, 4)
	assert.Equal(t, results.DatapathInfo{Name: "ipvs", Site: "debian-6.12",
		Description: "measured under debian-6.12 (6.12.9-amd64) in QEMU/tcg; compare only with direct @ debian-6.12"}, run.Datapaths[2])
	assert.Equal(t, "direct", run.Datapaths[3].Name)
	assert.Equal(t, "debian-6.12", run.Datapaths[3].Site)

	type placed struct {
		datapath, site string
		order          int
	}
	var got []placed
	for _, t := range run.Trials {
		got = append(got, placed{t.Datapath, t.Site, t.Order})
	}
	assert.Equal(t, []placed{{"direct", "", 0}, {"ipvs", "debian-6.12", 1}, {"direct", "debian-6.12", 2}}, got)

	ratios := map[string]float64{}
	for _, s := range run.Summary {
		ratios[results.SiteName(s.Datapath, s.Site)] = s.QPSRatioToDirect
	}
	assert.InDeltaMapValues(t, map[string]float64{"direct": 1, "ipvs @ debian-6.12": 0.75, "direct @ debian-6.12": 1}, ratios, 1e-9)
}

// A VM phase is tried twice; when both fail, the datapaths it was for are
// named as skipped at the kernel's site and the run fails loudly.
func TestRunVMPhaseRetriesThenSaysWhatIsMissing(t *testing.T) {
	plan := &Plan{Skipped: []results.DatapathInfo{{Name: "ipvs", Skipped: "no IP_VS"}}}
	for _, tt := range []struct {
		name     string
		failures int
		wantErr  bool
	}{
		{"first try", 0, false},
		{"second try", 1, false},
		{"both fail", 2, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			old := benchVM
			t.Cleanup(func() { benchVM = old })
			var names []string
			benchVM = func(_ context.Context, _ string, _ *Plan, _ *results.Run, _, name string, _ io.Writer) error {
				calls++
				names = append(names, name)
				if calls <= tt.failures {
					return errors.New("guest kernel panicked")
				}
				return nil
			}
			run := &results.Run{}
			err := runVMPhase(context.Background(), "debian-6.12", plan, run, t.TempDir(), io.Discard)
			assert.Equal(t, min(tt.failures+1, 2), calls)
			if !tt.wantErr {
				require.NoError(t, err)
				assert.Empty(t, run.Datapaths)
				return
			}
			require.ErrorIs(t, err, ErrMissingDatapath)
			assert.Equal(t, []string{"vm-debian-6.12", "vm-debian-6.12-retry"}, names, "each attempt has its own output")
			require.Len(t, run.Datapaths, 1)
			assert.Equal(t, "ipvs", run.Datapaths[0].Name)
			assert.Equal(t, "debian-6.12", run.Datapaths[0].Site)
			assert.Contains(t, run.Datapaths[0].Skipped, "the debian-6.12 VM phase failed twice: guest kernel panicked")
		})
	}
}

// Under emulation a scale point's Apply gets ten times the host's bound,
// so the emulator's slowness is not recorded as the datapath's limit; the
// scenario itself is left as it was.
func TestEmulatedScale(t *testing.T) {
	sc, err := scenarios.Load("scale")
	require.NoError(t, err)
	got := emulatedScale(sc)
	require.NotNil(t, got)
	assert.Equal(t, 10*time.Minute, time.Duration(got.ApplyTimeout))
	assert.Equal(t, sc.Scale.Services, got.Services)
	assert.Equal(t, time.Minute, sc.ApplyTimeout(), "the host's scenario is unchanged")

	d, err := scenarios.Load("default")
	require.NoError(t, err)
	assert.Nil(t, emulatedScale(d), "no scale block, none made")
}
