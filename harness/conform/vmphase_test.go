package conform

import (
	"encoding/json"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/results"
	"svclab/scenarios"
)

// The VM phase hands the guest every scenario as JSON in a .yaml file: each
// built-in one must read back as the same scenario.
func TestScenariosRoundTripForTheGuest(t *testing.T) {
	all, err := scenarios.LoadAllConformance()
	require.NoError(t, err)
	for _, sc := range all {
		t.Run(sc.Name, func(t *testing.T) {
			b, err := json.Marshal(sc)
			require.NoError(t, err)
			back, err := scenarios.ParseConformance(b, sc.Name)
			require.NoError(t, err)
			assert.Equal(t, sc, back)
		})
	}
}

// The guest's cells replace the host's "unavailable" column in place, each
// marked with the kernel; other columns and the guest's unknown datapaths
// are left alone.
func TestMergeVMConform(t *testing.T) {
	run := &results.ConformRun{
		Datapaths: []results.DatapathInfo{{Name: "socketlb"}, {Name: "ipvs", Description: "IPVS", Skipped: "no IP_VS"}},
		Cells: []results.ConformCell{
			{Scenario: "a", Datapath: "socketlb", Status: results.CellPass},
			{Scenario: "a", Datapath: "ipvs", Status: results.CellSkip, Summary: "datapath unavailable: no IP_VS"},
			{Scenario: "b", Datapath: "socketlb", Status: results.CellFail},
			{Scenario: "b", Datapath: "ipvs", Status: results.CellSkip, Summary: "datapath unavailable: no IP_VS"},
		}}
	guest := &results.ConformRun{
		Env:       results.Env{Kernel: "6.12.95+deb12-amd64", Extra: map[string]string{"svclab_vm_accel": "tcg"}},
		Datapaths: []results.DatapathInfo{{Name: "ipvs", Description: "IPVS", Info: map[string]string{"k": "v"}}},
		Cells: []results.ConformCell{
			{Scenario: "a", Datapath: "ipvs", Status: results.CellPass},
			{Scenario: "b", Datapath: "ipvs", Status: results.CellFail, Summary: "ok: timeout"},
		}}
	mergeVMConform(run, guest, "debian-6.12")
	require.Len(t, run.Datapaths, 2)
	ipvs := run.Datapaths[1]
	assert.Equal(t, "debian-6.12", ipvs.Site)
	assert.Empty(t, ipvs.Skipped)
	assert.Equal(t, "IPVS; checked under debian-6.12 (6.12.95+deb12-amd64) in QEMU/tcg, this machine's kernel cannot run it", ipvs.Description)
	assert.Equal(t, "no IP_VS", ipvs.Info["unavailable_on_host"])
	assert.Equal(t, "v", ipvs.Info["k"])
	tests := []struct {
		scenario, dp, status, site string
	}{
		{"a", "socketlb", results.CellPass, ""},
		{"a", "ipvs", results.CellPass, "debian-6.12"},
		{"b", "socketlb", results.CellFail, ""},
		{"b", "ipvs", results.CellFail, "debian-6.12"},
	}
	for _, tt := range tests {
		c, ok := run.Cell(tt.scenario, tt.dp)
		require.True(t, ok)
		assert.Equal(t, tt.status, c.Status, "%s × %s", tt.scenario, tt.dp)
		assert.Equal(t, tt.site, c.Site, "%s × %s", tt.scenario, tt.dp)
	}
	assert.Equal(t, []string{"ipvs"}, unavailable(&results.ConformRun{Datapaths: []results.DatapathInfo{{Name: "x"}, {Name: "ipvs", Skipped: "no"}}}))
}
