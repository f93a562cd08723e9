package results

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestRunRoundTrip checks that results.json keeps everything a later
// `svclab report` needs: a run written and read back is the same run,
// histograms included, so percentiles can be recomputed from the file.
func TestRunRoundTrip(t *testing.T) {
	want := sampleRun()
	h := NewHistogram()
	for ns := int64(20_000); ns < 2_000_000; ns += 997 {
		h.Record(ns)
	}
	want.Trials[0].Workload.Histogram = h
	want.Trials[0].Workload.Latency = h.Latency()
	want.Trials[0].Workload.SynRetrans = 2

	path := filepath.Join(t.TempDir(), "results.json")
	require.NoError(t, want.Write(path))
	got, err := Read(path)
	require.NoError(t, err)

	// Histograms hold unexported HDR state; compare what they answer.
	gh := got.Trials[0].Workload.Histogram
	require.NotNil(t, gh)
	assert.Equal(t, h.Count(), gh.Count())
	assert.Equal(t, h.Latency(), gh.Latency())
	// Write re-indents the raw scenario, so compare it as JSON.
	assert.JSONEq(t, string(want.Scenario), string(got.Scenario))

	want.Trials[0].Workload.Histogram, got.Trials[0].Workload.Histogram = nil, nil
	want.Scenario, got.Scenario = nil, nil
	assert.Equal(t, want, got)
}

// TestReadRejectsSchemaVersion checks that a results.json from another
// schema is refused by name rather than misread with zero values.
func TestReadRejectsSchemaVersion(t *testing.T) {
	for _, tc := range []struct {
		name, body, wantErr string
	}{
		{"newer", `{"schema_version": 2, "id": "x"}`, "schema_version 2"},
		{"missing", `{"id": "x"}`, "schema_version 0"},
		{"not json", `{`, "decode results"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "results.json")
			require.NoError(t, os.WriteFile(path, []byte(tc.body), 0o644))
			_, err := Read(path)
			require.Error(t, err)
			assert.Contains(t, err.Error(), tc.wantErr)
		})
	}
}
