package results

import (
	"encoding/json"
	"time"
)

// trial builds a trial with the figures Summarize reads; the rest of the
// workload is filled in so round trips exercise every field.
func trial(dp string, conc, rep int, qps, p50, p90, p99, apply float64, errs int64) Trial {
	t := Trial{
		Datapath:     dp,
		Concurrency:  conc,
		Repetition:   rep,
		ApplySeconds: apply,
		Workload: Workload{
			DurationSeconds: 10,
			Connections:     int64(qps * 10),
			QPS:             qps,
			Latency:         Latency{Min: p50 / 2, Mean: p50 * 1.1, P50: p50, P90: p90, P99: p99, P999: p99 * 1.5, Max: p99 * 3},
			PerBackend:      map[string]int64{"backend-0": int64(qps * 5), "backend-1": int64(qps * 5)},
		},
	}
	if errs > 0 {
		t.Workload.Errors = map[string]int64{"ECONNREFUSED": errs}
	}
	return t
}

// sampleRun is a realistic run of three measured datapaths at three
// concurrency levels with three repetitions, one skipped datapath and a
// generator ceiling: what `svclab bench` writes on a typical machine.
func sampleRun() *Run {
	run := &Run{
		SchemaVersion: SchemaVersion,
		ID:            "20260301-101500-a1b2",
		Started:       time.Date(2026, 3, 1, 10, 15, 0, 0, time.UTC),
		Finished:      time.Date(2026, 3, 1, 10, 42, 7, 0, time.UTC),
		Env: Env{
			Kernel: "6.1.0-18-amd64", CPUModel: "AMD EPYC 7B13", CPUs: 2, GoVersion: "go1.26.0",
			GitRev: "abc1234", Hostname: "bench-1",
			Sysctls: map[string]string{"net.ipv4.ip_local_port_range": "1024\t65535"},
		},
		Scenario: json.RawMessage(`{"backends":2,"concurrency":[1,8,64]}`),
		Datapaths: []DatapathInfo{
			{Name: "direct", Description: "client to pod, no Service"},
			{Name: "socketlb", Info: map[string]string{"prog": "cgroup/connect4"}},
			{Name: "iptables"},
			{Name: "ipvs", Skipped: "kernel module ip_vs not available"},
		},
	}
	base := map[string]float64{"direct": 30000, "socketlb": 28500, "iptables": 21000}
	lat := map[string]float64{"direct": 40, "socketlb": 42, "iptables": 58}
	order := 0
	for rep := 0; rep < 3; rep++ {
		for _, conc := range []int{1, 8, 64} {
			for _, dp := range []string{"direct", "socketlb", "iptables"} {
				scale := map[int]float64{1: 0.12, 8: 0.7, 64: 1}[conc]
				jitter := 1 + 0.03*float64(rep-1)
				l := lat[dp] * (1 + float64(conc)/16) / jitter
				t := trial(dp, conc, rep, base[dp]*scale*jitter, l, l*1.6, l*3, 0.2+0.1*float64(rep), 0)
				t.Order = order
				order++
				run.Trials = append(run.Trials, t)
			}
		}
	}
	gen := trial("", 64, 0, 52000, 20, 31, 70, 0, 0)
	run.Generator = &gen
	run.Summary = Summarize(run.Trials)
	return run
}
