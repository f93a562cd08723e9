package results

import (
	"bytes"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestWriteTable checks the rows a reader looks for, the notes on what was
// not measured, and that the table fits a 120-column terminal.
func TestWriteTable(t *testing.T) {
	run := sampleRun()
	withoutSummary := sampleRun()
	withoutSummary.Summary = nil
	for _, tc := range []struct {
		name string
		run  *Run
	}{
		{"with summary", run},
		{"summary computed from trials", withoutSummary},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			require.NoError(t, WriteTable(&buf, tc.run))
			out := buf.String()
			lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
			for _, l := range lines {
				assert.LessOrEqual(t, utf8.RuneCountInString(l), 120, "line too wide: %q", l)
			}
			header := strings.Fields(lines[0])
			assert.Equal(t, []string{"DATAPATH", "CONC", "REPS", "QPS"}, header[:4])

			rows := map[string][]string{}
			for _, l := range lines[1 : 1+len(run.Summary)] {
				f := strings.Fields(l)
				rows[f[0]+"/"+f[1]] = f
			}
			require.Len(t, rows, 9, "one row per datapath and concurrency")
			// socketlb at 64: median 28500 over 27645..29355, 0.95 of direct.
			assert.Equal(t, []string{"socketlb", "64", "3", "28500", "27645–29355", "0.95"}, rows["socketlb/64"][:6])
			assert.Equal(t, "0.70", rows["iptables/8"][5])
			assert.Equal(t, "1.00", rows["direct/1"][5])

			assert.Contains(t, out, "skipped ipvs: kernel module ip_vs not available")
			assert.Contains(t, out, "generator ceiling (no datapath): 52000 conn/s at concurrency 64")
			assert.NotContains(t, out, "warning", "no datapath is near the generator ceiling")
		})
	}
}

// TestWriteTableNotes checks the lines that keep a reader from
// misreading the table: a datapath with no rows and a generator-bound result.
func TestWriteTableNotes(t *testing.T) {
	run := sampleRun()
	run.Datapaths = append(run.Datapaths, DatapathInfo{Name: "nftables"})
	run.Generator.Workload.QPS = 31000 // direct at 64 reaches ~97% of it

	var buf bytes.Buffer
	require.NoError(t, WriteTable(&buf, run))
	out := buf.String()
	assert.Contains(t, out, "no trials for nftables")
	assert.Contains(t, out, "warning: direct at concurrency 64 reaches 97% of the generator ceiling")
	assert.NotContains(t, out, "warning: iptables")

	assert.Error(t, WriteTable(&buf, nil))
}

// TestWriteTableEmpty checks a run without trials prints its header and
// notes rather than failing: the skipped reasons are then all there is.
func TestWriteTableEmpty(t *testing.T) {
	run := &Run{Datapaths: []DatapathInfo{{Name: "ipvs", Skipped: "no ip_vs"}}}
	var buf bytes.Buffer
	require.NoError(t, WriteTable(&buf, run))
	assert.Contains(t, buf.String(), "DATAPATH")
	assert.Contains(t, buf.String(), "skipped ipvs: no ip_vs")
}
