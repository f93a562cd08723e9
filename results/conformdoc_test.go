package results

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func docRun() *ConformRun {
	t0 := time.Date(2026, 12, 6, 1, 0, 0, 0, time.UTC)
	return &ConformRun{ID: "20261206-010000-abcdef01", Started: t0, Finished: t0.Add(7*time.Minute + 3*time.Second),
		Env:       Env{Kernel: "6.18.44", CPUs: 2},
		Datapaths: []DatapathInfo{{Name: "direct"}, {Name: "ipvs", Site: "debian-6.12"}, {Name: "tc-ebpf"}, {Name: "gone", Skipped: "no support"}},
		Scenarios: []ConformScenario{{Name: "aff", Behaviour: "affinity"}, {Name: "host", Behaviour: "host client", Advisory: "known"}},
		Cells: []ConformCell{
			{Scenario: "aff", Datapath: "direct", Status: CellNA, Summary: "no Service"},
			{Scenario: "aff", Datapath: "ipvs", Site: "debian-6.12", Status: CellPass},
			{Scenario: "aff", Datapath: "tc-ebpf", Status: CellFail, Summary: "single-backend: 3 backends"},
			{Scenario: "aff", Datapath: "gone", Status: CellSkip, Summary: "datapath unavailable: no support"},
			{Scenario: "host", Datapath: "direct", Status: CellPass},
			{Scenario: "host", Datapath: "ipvs", Site: "debian-6.12", Status: CellError, Summary: "apply: refused"},
			{Scenario: "host", Datapath: "tc-ebpf", Status: CellSkip, Summary: "hostNetwork client not served: veths"},
			{Scenario: "host", Datapath: "gone", Status: CellSkip, Summary: "datapath unavailable: no support"},
		}}
}

// Each kind has the run line, its table, a count line per datapath with
// the n/a and skip reasons, and the cells it lists.
func TestConformanceDoc(t *testing.T) {
	tests := []struct {
		kind     string
		contains []string
		absent   []string
	}{
		{DocSummary, []string{
			"Run `20261206-010000-abcdef01`: kernel 6.18.44, 2 CPUs, 2 scenarios × 4 datapaths in 7m3s; `ipvs` under debian-6.12 in QEMU",
			"| Behaviour | direct | ipvs @ debian-6.12 | tc-ebpf | gone |",
			"| `aff` | n/a | pass | **FAIL** | skip |",
			"| `host` (advisory) | pass | **ERROR** | skip | skip |",
			"- **direct**: 1 pass, 1 n/a; n/a: no Service\n",
			"- **tc-ebpf**: 1 FAIL, 1 skip; skip: hostNetwork client not served: veths (`host`)\n",
			"- **gone**: 2 skip (unavailable here: no support)\n",
			"- `aff` × **tc-ebpf**: FAIL: single-backend: 3 backends\n",
			"- `host` (advisory) × **ipvs @ debian-6.12**: ERROR: apply: refused\n",
		}, []string{"× **tc-ebpf**: skip", "× **gone**"}},
		{DocTable, []string{
			"| `aff`: affinity | n/a | pass | **FAIL**: single-backend: 3 backends | skip: datapath unavailable: no support |",
			"- `host` (advisory) × **tc-ebpf**: skip: hostNetwork client not served: veths\n",
		}, []string{"× **gone**", "× **direct**"}},
	}
	for _, tt := range tests {
		t.Run(tt.kind, func(t *testing.T) {
			out, err := ConformanceDoc(docRun(), tt.kind)
			require.NoError(t, err)
			for _, s := range tt.contains {
				assert.Contains(t, out, s)
			}
			for _, s := range tt.absent {
				assert.NotContains(t, out, s)
			}
		})
	}
	_, err := ConformanceDoc(docRun(), "other")
	assert.Error(t, err)
}

// Every marked region is replaced and the text around it and the markers
// kept; a document without markers, or with an unclosed one, is refused.
func TestUpdateConformanceDoc(t *testing.T) {
	summary, _ := ConformanceDoc(docRun(), DocSummary)
	table, _ := ConformanceDoc(docRun(), DocTable)
	tests := []struct {
		name, doc, want, err string
	}{
		{"summary", "a\n<!-- svclab conform:summary begin -->\nold\n<!-- svclab conform:summary end -->\nb\n",
			"a\n<!-- svclab conform:summary begin -->\n" + summary + "<!-- svclab conform:summary end -->\nb\n", ""},
		{"both", "<!-- svclab conform:table begin --><!-- svclab conform:table end -->|<!-- svclab conform:summary begin -->x<!-- svclab conform:summary end -->",
			"<!-- svclab conform:table begin -->\n" + table + "<!-- svclab conform:table end -->|<!-- svclab conform:summary begin -->\n" + summary + "<!-- svclab conform:summary end -->", ""},
		{"no markers", "just text", "", "no '<!-- svclab conform"},
		{"unclosed", "<!-- svclab conform:table begin -->", "", "without"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := UpdateConformanceDoc(tt.doc, docRun())
			if tt.err != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tt.want, got)
			again, err := UpdateConformanceDoc(got, docRun())
			require.NoError(t, err)
			assert.Equal(t, got, again, "updating twice changes nothing")
		})
	}
}
