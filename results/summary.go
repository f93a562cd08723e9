package results

import (
	"cmp"
	"math"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/perf/benchmath"
)

// DirectDatapath names the baseline datapath: a client talking straight to a
// backend pod with no Service translation. Summaries carry ratios to it so a
// reader sees the cost of each datapath rather than absolute numbers that only
// mean something on the machine they were measured on.
const DirectDatapath = "direct"

// overloadError is the Workload.Errors kind of an open-loop arrival that
// found the generator's in-flight cap reached (harness.ErrOverload).
const overloadError = "overload"

// Summarize aggregates trials per (datapath, site, services, endpoints,
// concurrency, load model, load fraction): open-loop trials (Model
// ModelOpen) get their own summaries, one per load fraction, after the
// closed-loop ones of the same datapath. For them QPS is the achieved rate,
// latency runs from each connection's intended start, Errors includes
// overload, OfferedRate is the median offered rate and StartLagP99 the
// generator's p99 start lag per repetition.
//
// Each Stat of a Summary is filled from the metric table (see Metric):
// the per-trial values of the trials that measured the metric.
//
// Cost trials (Model ModelCost: closed loop with the attribution probes
// attached) make no summary of their own and none of their figures reaches
// the plain ones, which the probes would slow: they fill the CostTrials
// metrics (DatapathNsPerConn) and Cost of the summary of the same
// datapath, site, point and concurrency (see summarizeCost).
//
// Summaries come out ordered by datapath (and site) in the order the datapaths first
// appear in trials (the caller's order, e.g. --datapaths, which is also the
// order a reader expects in the table and the chart legend), then by
// services, endpoints and concurrency ascending. Per-repetition values are
// in repetition order so a drift across repetitions (thermal throttling, a
// noisy neighbour) stays visible in results.json. Trials that are not part
// of a scale sweep carry 0 services and endpoints and group as before.
//
// ApplyChangeSeconds summarises the trials that measured a one-endpoint
// change (ApplyChangeSeconds > 0); StateObjects and StateBytes the trials
// whose DatapathState carries those keys as decimal integers. Each stays
// zero when no trial has it.
//
// Latency figures come from each trial's Workload.Latency; a trial that only
// carries a histogram has its percentiles computed from it. QPS, p90 and CPU
// per connection carry a 95% confidence interval of the median (see
// MedianCI). Ratios to DirectDatapath use medians at the same site,
// services, endpoints, concurrency, load model and fraction, and are 0 when
// direct was not measured there
// (0 rather than NaN so results.json stays valid JSON).
func Summarize(trials []Trial) []Summary {
	dpOrder := map[site]int{}
	groups := map[groupKey][]Trial{}
	for _, t := range trials {
		// A cost trial joins the summary of its point's plain trials.
		k := keyOf(t).plain()
		if _, ok := dpOrder[k.site]; !ok {
			dpOrder[k.site] = len(dpOrder)
		}
		groups[k] = append(groups[k], t)
	}
	keys := make([]groupKey, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b groupKey) int {
		return cmp.Or(cmp.Compare(dpOrder[a.site], dpOrder[b.site]), comparePoint(a.point, b.point))
	})

	out := make([]Summary, 0, len(keys))
	for _, k := range keys {
		ts := groups[k]
		// Stable, so trials sharing a repetition number (a retried trial)
		// keep the order they were run in.
		slices.SortStableFunc(ts, func(a, b Trial) int { return cmp.Compare(a.Repetition, b.Repetition) })
		ts, costs := splitCostTrials(ts)
		// Invalid trials are counted and their errors summed, but
		// none of their figures reaches a median.
		valid := validTrials(ts)
		validCosts := validTrials(costs)
		s := Summary{
			Datapath:     k.datapath,
			Site:         k.where,
			Concurrency:  k.concurrency,
			Services:     k.services,
			Endpoints:    k.endpoints,
			Repetitions:  len(valid),
			Invalid:      len(ts) - len(valid),
			Model:        k.model,
			LoadFraction: k.fraction,
		}
		var offered []float64
		for _, t := range ts {
			if t.Model != "" {
				offered = append(offered, t.OfferedRate)
			}
			for _, n := range t.Workload.Errors {
				s.Errors += n
			}
			s.Overload += t.Workload.Errors[overloadError]
			s.SynRetrans += t.Workload.SynRetrans
		}
		if len(offered) > 0 {
			s.OfferedRate = NewStat(offered).Median
		}
		for _, m := range metricTable {
			if m.Stat == nil {
				continue
			}
			var vs []float64
			for _, t := range metricTrials(m, valid, validCosts, len(costs) > 0) {
				if v, ok := m.Trial(t); ok {
					vs = append(vs, v)
				}
			}
			// Left zero (and out of the JSON) when no trial measured it.
			if len(vs) == 0 {
				continue
			}
			st := NewStat(vs)
			if m.CI {
				st = st.WithCI()
			}
			*m.Stat(&s) = st
		}
		s.Cost = summarizeCost(valid, validCosts, len(costs)-len(validCosts))
		out = append(out, s)
	}

	// A datapath measured elsewhere (Site "debian-6.12", measured in a
	// VM) has its ratios to direct measured there too, never to the
	// host's direct.
	direct := map[groupKey]*Summary{}
	for i, s := range out {
		if s.Datapath == DirectDatapath {
			direct[keyOfSummary(s)] = &out[i]
		}
	}
	for i := range out {
		d, ok := direct[keyOfSummary(out[i]).direct()]
		if !ok {
			continue
		}
		for _, m := range metricTable {
			if m.Ratio != nil {
				*m.Ratio(&out[i]) = ratio(m.Stat(&out[i]).Median, m.Stat(d).Median)
			}
		}
	}
	return out
}

// SplitSite splits a legacy datapath name "ipvs@debian-6.12" (how results
// written before Site existed name a datapath measured elsewhere) into the
// datapath and the site ("" for the run's own machine).
func SplitSite(name string) (datapath, site string) {
	datapath, site, _ = strings.Cut(name, "@")
	return datapath, site
}

// SiteName is how tables, charts and messages name a datapath at a site:
// "ipvs @ debian-6.12", or just "ipvs" on the run's own machine.
func SiteName(datapath, site string) string {
	if site == "" {
		return datapath
	}
	return datapath + " @ " + site
}

// site is a datapath where it was measured: what summaries, comparisons,
// tables and charts group by.
type site struct {
	datapath, where string
}

func (s site) String() string { return SiteName(s.datapath, s.where) }

// point is where in a run's parameter space a figure was measured: the
// scale (0, 0 outside sweeps), the load model ("" for the closed loop,
// ModelOpen) with the open loop's load fraction, and the concurrency (0 for
// the open loop). Ratios to direct and comparisons between runs pair figures
// at the same point, so an open-loop figure is only ever paired with one at
// the same fraction of capacity.
type point struct {
	services, endpoints, concurrency int
	model                            string
	fraction                         float64
}

// groupKey is one summary: a datapath at a site and a point.
type groupKey struct {
	site
	point
}

// direct is the key of direct's summary its ratios are taken against:
// same site, same point.
func (k groupKey) direct() groupKey {
	k.datapath = DirectDatapath
	return k
}

// plain is the key of the plain (closed-loop, no probes) summary a cost
// trial's figures go to: the same site and point, model "".
func (k groupKey) plain() groupKey {
	if k.model == ModelCost {
		k.model = ""
	}
	return k
}

func keyOf(t Trial) groupKey {
	return groupKey{site{t.Datapath, t.Site}, point{t.Services, t.Endpoints, t.Concurrency, t.Model, t.LoadFraction}}
}

func keyOfSummary(s Summary) groupKey {
	return groupKey{site{s.Datapath, s.Site}, pointOf(s)}
}

func pointOf(s Summary) point {
	return point{s.Services, s.Endpoints, s.Concurrency, s.Model, s.LoadFraction}
}

// comparePoint orders closed-loop points before open-loop ones (the model
// "" sorts first), open-loop ones by load fraction, then by scale and
// concurrency.
func comparePoint(a, b point) int {
	return cmp.Or(cmp.Compare(a.model, b.model), cmp.Compare(a.fraction, b.fraction),
		cmp.Compare(a.services, b.services), cmp.Compare(a.endpoints, b.endpoints),
		cmp.Compare(a.concurrency, b.concurrency))
}

// trialLatency is the trial's latency percentiles, computed from its
// histogram when only that was recorded.
func trialLatency(t Trial) Latency {
	lat := t.Workload.Latency
	if lat == (Latency{}) && t.Workload.Histogram != nil {
		lat = t.Workload.Histogram.Latency()
	}
	return lat
}

// stateCount reads one of the standard DatapathState counts (StateObjects,
// StateBytes): a decimal integer. A missing or unparsable value is not a
// measurement, so it is skipped rather than counted as 0.
func stateCount(state map[string]string, key string) (float64, bool) {
	v, ok := state[key]
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
	if err != nil {
		return 0, false
	}
	return float64(n), true
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

// CIConfidence is the confidence level of the intervals in summaries and
// comparisons.
const CIConfidence = 0.95

// MedianCI is the confidence interval of the median of values at the given
// level, from order statistics (benchmath's AssumeNothing: no assumption
// about the distribution, which benchmark figures do not follow). It is
// nil when values are too few for a finite interval: at 95% that takes 6.
func MedianCI(values []float64, confidence float64) *Interval {
	if len(values) == 0 {
		return nil
	}
	sum := benchmath.AssumeNothing.Summary(benchmath.NewSample(slices.Clone(values), &benchmath.DefaultThresholds), confidence)
	if math.IsInf(sum.Lo, 0) || math.IsInf(sum.Hi, 0) || math.IsNaN(sum.Lo) || math.IsNaN(sum.Hi) {
		return nil
	}
	return &Interval{Lo: sum.Lo, Hi: sum.Hi, Confidence: sum.Confidence}
}

// WithCI returns s with the CIConfidence interval of its median set (nil
// when its values are too few).
func (s Stat) WithCI() Stat {
	s.CI = MedianCI(s.Values, CIConfidence)
	return s
}

// GeneratorTrials are the run's generator-ceiling trials: Generators, or
// the one Generator of an older run.
func (r *Run) GeneratorTrials() []Trial {
	if len(r.Generators) > 0 || r.Generator == nil {
		return r.Generators
	}
	return []Trial{*r.Generator}
}

// GeneratorCeiling is the trial that stands for the generator's ceiling:
// at the highest concurrency, the repetition with the median QPS (the
// lower middle one of an even count); nil without trials.
func GeneratorCeiling(trials []Trial) *Trial {
	var top []Trial
	for _, t := range trials {
		switch {
		case len(top) == 0 || t.Concurrency > top[0].Concurrency:
			top = []Trial{t}
		case t.Concurrency == top[0].Concurrency:
			top = append(top, t)
		}
	}
	if len(top) == 0 {
		return nil
	}
	slices.SortStableFunc(top, func(a, b Trial) int { return cmp.Compare(a.Workload.QPS, b.Workload.QPS) })
	t := top[(len(top)-1)/2]
	return &t
}

// span is the range a figure's median may be in: its 95% interval, or
// min–max without one.
func (s Stat) span() (lo, hi float64) {
	if s.CI != nil {
		return s.CI.Lo, s.CI.Hi
	}
	return s.Min, s.Max
}

// splitCostTrials separates the cost trials (Model ModelCost) from the
// others, keeping the order of each.
func splitCostTrials(ts []Trial) (plain, costs []Trial) {
	for _, t := range ts {
		if t.Model == ModelCost {
			costs = append(costs, t)
		} else {
			plain = append(plain, t)
		}
	}
	return plain, costs
}

// validTrials are the valid trials of ts, in their order.
func validTrials(ts []Trial) []Trial {
	return slices.DeleteFunc(slices.Clone(ts), func(t Trial) bool { return !t.Valid() })
}

// metricTrials are the trials a metric's figures are read from at one
// point: the cost trials for a CostTrials metric, the plain ones for the
// others. withCost says the point had cost trials (valid or not); without
// any, a CostTrials metric reads the plain trials, which carried Cost in
// runs written before cost trials existed (and carry none now).
func metricTrials(m Metric, plain, costs []Trial, withCost bool) []Trial {
	if m.CostTrials && withCost {
		return costs
	}
	return plain
}

// medians is the median of each key's values; nil when there are none.
func medians(by map[string][]float64) map[string]float64 {
	if len(by) == 0 {
		return nil
	}
	out := make(map[string]float64, len(by))
	for k, vs := range by {
		out[k] = NewStat(vs).Median
	}
	return out
}

// summarizeCost is the CostSummary of one point: from its valid cost
// trials (invalid counts the invalid ones), or, when it has none at all,
// from plain trials carrying Cost (a run from before cost trials). The
// probe overhead pairs each cost trial with the plain trial of the same
// repetition (the later one of a retried repetition). nil when nothing
// measured a cost.
func summarizeCost(plain, costs []Trial, invalid int) *CostSummary {
	paired := len(costs) > 0 || invalid > 0
	src := costs
	if !paired {
		src = slices.DeleteFunc(slices.Clone(plain), func(t Trial) bool { return t.Cost == nil })
		if len(src) == 0 {
			return nil
		}
	}
	cs := &CostSummary{Repetitions: len(src), Invalid: invalid}
	parts, beside := map[string][]float64{}, map[string][]float64{}
	var floors []float64
	for _, t := range src {
		if t.Cost == nil {
			continue
		}
		for p, v := range t.Cost.Parts {
			parts[p] = append(parts[p], v)
		}
		for p, v := range t.Cost.Beside {
			beside[p] = append(beside[p], v)
		}
		floors = append(floors, t.Cost.FloorNS)
		if t.Cost.Missing != "" && !slices.Contains(cs.Missing, t.Cost.Missing) {
			cs.Missing = append(cs.Missing, t.Cost.Missing)
		}
	}
	cs.Parts, cs.Beside = medians(parts), medians(beside)
	if len(floors) > 0 {
		cs.FloorNS = NewStat(floors).Median
	}
	slices.Sort(cs.Missing)
	if !paired {
		return cs
	}
	byRep := map[int]Trial{}
	for _, t := range plain {
		byRep[t.Repetition] = t // plain is in run order within a repetition
	}
	var ratios []float64
	for _, t := range costs {
		if p, ok := byRep[t.Repetition]; ok && p.Workload.QPS > 0 {
			ratios = append(ratios, t.Workload.QPS/p.Workload.QPS)
		}
	}
	if len(ratios) > 0 {
		cs.ProbeOverhead = NewStat(ratios).WithCI()
	}
	return cs
}
