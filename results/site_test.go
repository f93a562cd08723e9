package results

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

const vmSite = "debian-6.12"

// siteRun is a host run with ipvs and direct also measured in a VM (as
// mergeVMRun adds them): the VM is ten times slower, so a ratio taken
// against the host's direct would be off by that much.
func siteRun(id string, ipvsQPS float64) *Run {
	run := &Run{SchemaVersion: SchemaVersion, ID: id, Env: Env{Kernel: "6.18", CPUModel: "test CPU", CPUs: 2},
		Datapaths: []DatapathInfo{{Name: "direct"}, {Name: "ipvs", Skipped: "no ip_vs"},
			{Name: "ipvs", Site: vmSite}, {Name: "direct", Site: vmSite}}}
	for rep := range 6 {
		jitter := 1 + 0.01*float64(rep%3)
		for _, tr := range []Trial{
			trial("direct", 8, rep, 10000*jitter, 50, 80, 120, 0.01, 0),
			trial("ipvs", 8, rep, ipvsQPS*jitter, 500, 800, 1200, 0.01, 0),
			trial("direct", 8, rep, 1000*jitter, 500, 800, 1200, 0.01, 0),
		} {
			if len(run.Trials)%3 > 0 {
				tr.Site = vmSite
			}
			tr.Order = len(run.Trials)
			run.Trials = append(run.Trials, tr)
		}
	}
	run.Summary = Summarize(run.Trials)
	return run
}

// A site keeps datapaths apart, pairs them with direct of the same site
// and shows as "ipvs @ debian-6.12" in the table, compare and bench.txt.
func TestSite(t *testing.T) {
	run := siteRun("new", 750)

	t.Run("summary", func(t *testing.T) {
		require.Len(t, run.Summary, 3)
		got := map[string]float64{}
		for _, s := range run.Summary {
			got[SiteName(s.Datapath, s.Site)] = s.QPSRatioToDirect
		}
		assert.InDeltaMapValues(t, map[string]float64{"direct": 1, "ipvs @ debian-6.12": 0.75, "direct @ debian-6.12": 1}, got, 1e-9)
	})

	t.Run("table", func(t *testing.T) {
		var buf bytes.Buffer
		require.NoError(t, WriteTable(&buf, run))
		var ipvs string
		for _, l := range strings.Split(buf.String(), "\n") {
			// The main table's row, not the noise block's.
			if strings.HasPrefix(l, "ipvs @ debian-6.12 ") && ipvs == "" {
				ipvs = l
			}
		}
		require.NotEmpty(t, ipvs, buf.String())
		assert.Contains(t, strings.Fields(ipvs), "0.75", "QPS×DIR against the VM's direct")
		assert.Contains(t, buf.String(), "skipped ipvs: no ip_vs\n")
		assert.NotContains(t, buf.String(), "no trials for")
	})

	t.Run("compare", func(t *testing.T) {
		c := Compare(siteRun("old", 750), siteRun("new", 600), DefaultThresholds())
		r, ok := rowByName(c, "ipvs @ debian-6.12 conc=8 qps×direct")
		require.True(t, ok, table(t, c))
		assert.InDelta(t, 0.75, r.Old.Median, 1e-9)
		assert.InDelta(t, 0.6, r.New.Median, 1e-9)
		assert.Equal(t, VerdictRegression, r.Verdict)
		assert.Contains(t, table(t, c), "ipvs @ debian-6.12  conc=8")
	})

	t.Run("bench format", func(t *testing.T) {
		var buf bytes.Buffer
		require.NoError(t, WriteBenchFormat(&buf, run))
		assert.Contains(t, buf.String(), "BenchmarkSvc/dp=ipvs/site=debian-6.12/conc=8-2 ")
		back, err := ReadBenchFormat(&buf, "bench.txt")
		require.NoError(t, err)
		assert.Equal(t, []DatapathInfo{{Name: "direct"}, {Name: "ipvs", Site: vmSite}, {Name: "direct", Site: vmSite}}, back.Datapaths)
		assert.Equal(t, vmSite, back.Trials[1].Site)
	})

	t.Run("legacy bench format", func(t *testing.T) {
		back, err := ReadBenchFormat(strings.NewReader("BenchmarkSvc/dp=ipvs@debian-6.12/conc=8-2 100 1 conn/s\n"), "bench.txt")
		require.NoError(t, err)
		require.Len(t, back.Trials, 1)
		assert.Equal(t, "ipvs", back.Trials[0].Datapath)
		assert.Equal(t, vmSite, back.Trials[0].Site)
	})
}

// Results written before Site named a VM's datapath "ipvs@debian-6.12":
// Read moves the suffix into Site, so such a run summarises, tables and
// compares like a new one.
func TestReadMovesSiteOutOfName(t *testing.T) {
	run := siteRun("old", 750)
	legacy := func(name, site string) string {
		if site == "" {
			return name
		}
		return name + "@" + site
	}
	old := *run
	old.Datapaths = append([]DatapathInfo(nil), run.Datapaths...)
	old.Trials = append([]Trial(nil), run.Trials...)
	old.Summary = append([]Summary(nil), run.Summary...)
	for i := range old.Datapaths {
		d := &old.Datapaths[i]
		d.Name, d.Site = legacy(d.Name, d.Site), ""
	}
	for i := range old.Trials {
		tr := &old.Trials[i]
		tr.Datapath, tr.Site = legacy(tr.Datapath, tr.Site), ""
	}
	for i := range old.Summary {
		s := &old.Summary[i]
		s.Datapath, s.Site = legacy(s.Datapath, s.Site), ""
	}
	path := filepath.Join(t.TempDir(), "results.json")
	require.NoError(t, old.Write(path))
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	require.Contains(t, string(b), `"datapath": "ipvs@debian-6.12"`)
	require.NotContains(t, string(b), `"site"`)

	got, err := Read(path)
	require.NoError(t, err)
	assert.Equal(t, run.Datapaths, got.Datapaths)
	assert.Equal(t, run.Trials, got.Trials)
	assert.Equal(t, run.Summary, got.Summary)
}

// The committed CI reference (written before the metric table and Site)
// still reads into the same JSON and summarises to the summary it holds,
// so `svclab compare` of it against a new run compares like with like.
func TestReadCIReference(t *testing.T) {
	const path = "../ci/reference/results.json"
	b, err := os.ReadFile(path)
	require.NoError(t, err)
	run, err := Read(path)
	require.NoError(t, err)
	again, err := json.Marshal(run)
	require.NoError(t, err)
	var want, got any
	require.NoError(t, json.Unmarshal(b, &want))
	require.NoError(t, json.Unmarshal(again, &got))
	assert.Equal(t, want, got, "a field of results.json was lost or renamed")

	wantSum, err := json.Marshal(run.Summary)
	require.NoError(t, err)
	gotSum, err := json.Marshal(Summarize(run.Trials))
	require.NoError(t, err)
	assert.JSONEq(t, string(wantSum), string(gotSum))
}
