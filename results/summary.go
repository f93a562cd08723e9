package results

import (
	"cmp"
	"slices"
)

// DirectDatapath names the baseline datapath: a client talking straight to a
// backend pod with no Service translation. Summaries carry ratios to it so a
// reader sees the cost of each datapath rather than absolute numbers that only
// mean something on the machine they were measured on.
const DirectDatapath = "direct"

// Summarize aggregates trials per (datapath, concurrency).
//
// Summaries come out ordered by datapath in the order the datapaths first
// appear in trials (the caller's order, e.g. --datapaths, which is also the
// order a reader expects in the table and the chart legend), then by
// concurrency ascending. Per-repetition values are in repetition order so a
// drift across repetitions (thermal throttling, a noisy neighbour) stays
// visible in results.json.
//
// Latency figures come from each trial's Workload.Latency; a trial that only
// carries a histogram has its percentiles computed from it. Ratios to
// DirectDatapath use medians and are 0 when direct was not measured at that
// concurrency (0 rather than NaN so results.json stays valid JSON).
func Summarize(trials []Trial) []Summary {
	type key struct {
		datapath    string
		concurrency int
	}
	dpOrder := map[string]int{}
	groups := map[key][]Trial{}
	for _, t := range trials {
		if _, ok := dpOrder[t.Datapath]; !ok {
			dpOrder[t.Datapath] = len(dpOrder)
		}
		k := key{t.Datapath, t.Concurrency}
		groups[k] = append(groups[k], t)
	}
	keys := make([]key, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b key) int {
		return cmp.Or(cmp.Compare(dpOrder[a.datapath], dpOrder[b.datapath]),
			cmp.Compare(a.concurrency, b.concurrency))
	})

	out := make([]Summary, 0, len(keys))
	for _, k := range keys {
		ts := groups[k]
		// Stable, so trials sharing a repetition number (a retried trial)
		// keep the order they were run in.
		slices.SortStableFunc(ts, func(a, b Trial) int { return cmp.Compare(a.Repetition, b.Repetition) })
		var qps, p50, p90, p99, apply []float64
		var errs int64
		for _, t := range ts {
			lat := t.Workload.Latency
			if lat == (Latency{}) && t.Workload.Histogram != nil {
				lat = t.Workload.Histogram.Latency()
			}
			qps = append(qps, t.Workload.QPS)
			p50 = append(p50, lat.P50)
			p90 = append(p90, lat.P90)
			p99 = append(p99, lat.P99)
			apply = append(apply, t.ApplySeconds)
			for _, n := range t.Workload.Errors {
				errs += n
			}
		}
		out = append(out, Summary{
			Datapath:     k.datapath,
			Concurrency:  k.concurrency,
			Repetitions:  len(ts),
			QPS:          NewStat(qps),
			P50:          NewStat(p50),
			P90:          NewStat(p90),
			P99:          NewStat(p99),
			Errors:       errs,
			ApplySeconds: NewStat(apply),
		})
	}

	direct := map[int]Summary{}
	for _, s := range out {
		if s.Datapath == DirectDatapath {
			direct[s.Concurrency] = s
		}
	}
	for i := range out {
		d, ok := direct[out[i].Concurrency]
		if !ok {
			continue
		}
		out[i].QPSRatioToDirect = ratio(out[i].QPS.Median, d.QPS.Median)
		out[i].P90RatioToDirect = ratio(out[i].P90.Median, d.P90.Median)
	}
	return out
}

// ratio is a/b, or 0 when b is 0: a zero baseline (direct measured nothing)
// has no meaningful ratio, and 0 is the schema's "no ratio" value.
func ratio(a, b float64) float64 {
	if b == 0 {
		return 0
	}
	return a / b
}

// NewStat summarises per-repetition values, which it keeps in the given order.
// The median is the plain one (mean of the two middle values for an even
// count): with the handful of repetitions a benchmark affords, anything
// fancier is not better founded and is harder to check by hand.
func NewStat(values []float64) Stat {
	s := Stat{Values: slices.Clone(values)}
	if len(values) == 0 {
		return s
	}
	sorted := slices.Clone(values)
	slices.Sort(sorted)
	s.Min, s.Max = sorted[0], sorted[len(sorted)-1]
	if n := len(sorted); n%2 == 1 {
		s.Median = sorted[n/2]
	} else {
		s.Median = (sorted[n/2-1] + sorted[n/2]) / 2
	}
	return s
}
