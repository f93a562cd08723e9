package bench

import (
	"slices"

	"svclab/harness/internal/progress"
	"svclab/harness/runlock"
)

// noteConcurrentRuns records in seen the other svclab runs live now and
// warns once per run found: a second run on the machine halves both runs'
// throughput, and nothing else in the figures says so.
func noteConcurrentRuns(prog *progress.Progress, self string, seen []string) []string {
	for _, id := range runlock.LiveRuns(self) {
		if slices.Contains(seen, id) {
			continue
		}
		seen = append(seen, id)
		prog.Logf("warning: another svclab run (%s) is live; it shares this machine's CPUs and may skew both runs' figures (results.json concurrent_runs)", id)
	}
	return seen
}
