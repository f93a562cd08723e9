package main

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"svclab/results"
)

func TestReportCommand(t *testing.T) {
	dir := t.TempDir()
	a := writeRun(t, dir, "run-a", compareRun("a", 9000))
	b := writeRun(t, dir, "run-b", compareRun("b", 9500))
	other := compareRun("c", 9000)
	other.Scenario = json.RawMessage(`{"name":"scale"}`)
	c := writeRun(t, dir, "run-c", other)
	conf := filepath.Join(dir, "conf")
	require.NoError(t, os.MkdirAll(conf, 0o755))
	require.NoError(t, results.WriteJSON(filepath.Join(conf, "conformance.json"), &results.ConformRun{
		SchemaVersion: results.ConformanceSchemaVersion, ID: "conf-1",
		Datapaths: []results.DatapathInfo{{Name: "iptables"}},
		Scenarios: []results.ConformScenario{{Name: "basic", Behaviour: "reaches every backend"}},
		Cells:     []results.ConformCell{{Scenario: "basic", Datapath: "iptables", Status: results.CellPass}}}))
	notRun := filepath.Join(dir, "empty")
	require.NoError(t, os.MkdirAll(notRun, 0o755))
	out := filepath.Join(dir, "out")

	tests := []struct {
		name    string
		args    []string
		report  string // where report.html is written
		want    []string
		wantErr string
	}{
		{"one run directory", []string{a}, filepath.Join(a, "report.html"), []string{"<h3>this host</h3>", `id="ratio"`}, ""},
		{"results.json file", []string{filepath.Join(b, "results.json")}, filepath.Join(b, "report.html"), []string{"Summary"}, ""},
		{"two runs side by side, flag last", []string{a, b, "--output", out}, filepath.Join(out, "report.html"),
			[]string{"<th>run-a</th><th>run-b</th>", "run-a — this host", "run-b — this host"}, ""},
		{"runs and a conformance run", []string{"--output", out, a, conf}, filepath.Join(out, "report.html"), []string{`id="conformance"`, "✓ pass"}, ""},
		{"different scenarios", []string{a, c}, "", nil, "runs of different scenarios"},
		{"a directory without a run", []string{notRun}, "", nil, "no results.json or conformance.json"},
		{"a missing run", []string{filepath.Join(dir, "nope")}, "", nil, "no such file"},
		{"no run", nil, "", nil, "no RUN given"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var stdout, stderr bytes.Buffer
			err := cmdReport(tt.args, &stdout, &stderr)
			if tt.wantErr != "" {
				require.Error(t, err)
				assert.Contains(t, err.Error(), tt.wantErr)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, "wrote "+tt.report+"\n", stdout.String())
			html, err := os.ReadFile(tt.report)
			require.NoError(t, err)
			for _, w := range tt.want {
				assert.True(t, strings.Contains(string(html), w), "%q missing", w)
			}
		})
	}
}
