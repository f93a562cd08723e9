package results

import (
	"bytes"
	"cmp"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"math"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"

	"golang.org/x/perf/benchmath"
)

// Verdict is compare's judgement of one row.
type Verdict string

// Verdicts. Only VerdictRegression fails the gate.
const (
	// VerdictSame: no significant difference (p >= alpha).
	VerdictSame Verdict = "~"
	// VerdictNTooSmall: too few repetitions for any difference to reach
	// p < alpha, however large; not a failure, but the row proves nothing.
	VerdictNTooSmall Verdict = "n too small"
	// VerdictBetter: a significant change in the good direction.
	VerdictBetter Verdict = "better"
	// VerdictWorse: a significant change in the bad direction, within
	// the threshold.
	VerdictWorse Verdict = "worse, within threshold"
	// VerdictWorseReported: significant and beyond the threshold in the
	// bad direction, on a figure that is reported but not gated.
	VerdictWorseReported Verdict = "worse, not gated"
	// VerdictRegression: significant and beyond the threshold in the bad
	// direction on a gated figure: the gate fails.
	VerdictRegression Verdict = "REGRESSION"
)

// Figure summarises one side of a comparison row.
type Figure struct {
	N      int
	Median float64
	// CI is the 95% interval of the median; nil when N is too small.
	CI     *Interval
	Values []float64
}

// CompareRow is one metric of one datapath at one point, OLD against NEW.
type CompareRow struct {
	Datapath string
	// Site is where the datapath was measured ("" for the run's own
	// machine); rows only ever pair figures of one site.
	Site                             string
	Services, Endpoints, Concurrency int
	// Model and LoadFraction place an open-loop row ("" and 0 for the
	// closed loop).
	Model        string
	LoadFraction float64
	Metric       string
	// Ratio: the figure is the datapath's divided by direct's in the
	// same round (same repetition and point) of the same run.
	Ratio    bool
	Old, New Figure
	// Change is new/old - 1 of the medians (NaN when old is 0).
	Change float64
	// P is the Mann-Whitney U test's p-value (two-sided).
	P float64
	// Threshold is the tolerated change in the bad direction (fraction).
	Threshold float64
	// Gated rows can fail the gate; the others are reported.
	Gated   bool
	Verdict Verdict
}

// point is where the row was measured.
func (r CompareRow) point() point {
	return point{r.Services, r.Endpoints, r.Concurrency, r.Model, r.LoadFraction}
}

// Name identifies the row in messages, e.g. "iptables conc=8 qps×direct"
// or "ipvs @ debian-6.12 conc=8 qps".
func (r CompareRow) Name() string {
	return SiteName(r.Datapath, r.Site) + " " + pointLabel(r.point()) + " " + r.figureName()
}

func (r CompareRow) figureName() string {
	if r.Ratio {
		return r.Metric + "×direct"
	}
	return r.Metric
}

// Comparison is the result of comparing two runs.
type Comparison struct {
	OldID, NewID string
	Thresholds   Thresholds
	Rows         []CompareRow
	// OnlyOld and OnlyNew name what one run measured and the other did
	// not (datapaths, or a datapath at a point): listed, not an error.
	OnlyOld, OnlyNew []string
	// Notes explain the table: fallbacks, unclean measurements, different
	// machines.
	Notes []string
	// Invalid names the invalid trials of either run ("NEW: iptables
	// conc=8 repetition 2: no completed connection"): their figures are
	// left out, and a comparison with any fails as an invalid run, never
	// passes as "better".
	Invalid []string
	// Speeds are the machine's speed in each run, per site both measured
	// it at (see machineSpeeds), in site order.
	Speeds []Speed
	// Unjudged names the datapaths (with their site) whose figures were
	// reported, not gated, because NEW's machine ran slower than OLD's
	// beyond their speed guard (Thresholds.SpeedGuard), each with why.
	Unjudged []string
}

// Speed is the machine's speed at one site in both runs: the median over
// the valid cost trials of the attribution probes' own cost per band
// crossing (Cost.FloorPerCrossingNS), a small in-kernel benchmark that
// every cost trial runs whatever the datapath.
type Speed struct {
	Site         string
	OldNS, NewNS float64
	// Factor is NewNS / OldNS: above 1, NEW's machine ran slower.
	Factor float64
}

// machineSpeeds pairs the two runs' speeds at every site both have one.
func machineSpeeds(o, n side) []Speed {
	floors := func(s side) map[string][]float64 {
		out := map[string][]float64{}
		for _, ts := range s.cost {
			for _, t := range ts {
				if t.Cost != nil && t.Cost.FloorPerCrossingNS > 0 {
					out[t.Site] = append(out[t.Site], t.Cost.FloorPerCrossingNS)
				}
			}
		}
		return out
	}
	of, nf := floors(o), floors(n)
	var out []Speed
	for _, where := range slices.Sorted(maps.Keys(nf)) {
		if len(of[where]) == 0 {
			continue
		}
		sp := Speed{Site: where, OldNS: NewStat(of[where]).Median, NewNS: NewStat(nf[where]).Median}
		sp.Factor = sp.NewNS / sp.OldNS
		out = append(out, sp)
	}
	return out
}

// speedAt is the speed factor at a site, if both runs measured one.
func (c *Comparison) speedAt(where string) (Speed, bool) {
	for _, sp := range c.Speeds {
		if sp.Site == where {
			return sp, true
		}
	}
	return Speed{}, false
}

// Failed reports whether the comparison fails the gate: a regression, or
// an invalid trial in either run.
func (c *Comparison) Failed() bool { return len(c.Regressions()) > 0 || len(c.Invalid) > 0 }

// Gates reports whether any row was gated: a comparison without one has
// tested nothing, whatever it printed.
func (c *Comparison) Gates() bool {
	return slices.ContainsFunc(c.Rows, func(r CompareRow) bool { return r.Gated })
}

// Regressions are the rows that fail the gate.
func (c *Comparison) Regressions() []CompareRow {
	var out []CompareRow
	for _, r := range c.Rows {
		if r.Verdict == VerdictRegression {
			out = append(out, r)
		}
	}
	return out
}

// side is one run's trials, indexed for pairing.
type side struct {
	run    *Run
	groups map[groupKey][]Trial // in repetition order
	// cost has the valid cost trials (Model ModelCost) by the key of
	// their point's plain trials (groupKey.plain), in repetition order:
	// only the CostTrials metrics read them.
	cost  map[groupKey][]Trial
	order []groupKey
	// direct has direct's trial per site, point and repetition (keyed
	// by groupKey.direct()).
	direct map[groupKey]map[int]Trial
	// invalid names the run's invalid trials.
	invalid []string
}

func newSide(run *Run) side {
	s := side{run: run, groups: map[groupKey][]Trial{}, cost: map[groupKey][]Trial{}, direct: map[groupKey]map[int]Trial{}}
	dpOrder := map[site]int{}
	for _, t := range run.Trials {
		k := keyOf(t)
		if !t.Valid() {
			// Named by Compare as an invalid run; never a figure.
			s.invalid = append(s.invalid, fmt.Sprintf("%s %s repetition %d: %s", SiteName(t.Datapath, t.Site), pointLabel(k.point), t.Repetition+1, t.Invalid))
			continue
		}
		if _, ok := dpOrder[k.site]; !ok {
			dpOrder[k.site] = len(dpOrder)
		}
		if k.model == ModelCost {
			k = k.plain()
			if _, ok := s.groups[k]; !ok && s.cost[k] == nil {
				s.order = append(s.order, k)
			}
			s.cost[k] = append(s.cost[k], t)
			continue
		}
		if _, ok := s.groups[k]; !ok && s.cost[k] == nil {
			s.order = append(s.order, k)
		}
		s.groups[k] = append(s.groups[k], t)
		if t.Datapath == DirectDatapath {
			if s.direct[k] == nil {
				s.direct[k] = map[int]Trial{}
			}
			// A retried repetition: the later trial is the one kept.
			s.direct[k][t.Repetition] = t
		}
	}
	for _, g := range []map[groupKey][]Trial{s.groups, s.cost} {
		for _, ts := range g {
			slices.SortStableFunc(ts, func(a, b Trial) int { return cmp.Compare(a.Repetition, b.Repetition) })
		}
	}
	slices.SortStableFunc(s.order, func(a, b groupKey) int {
		return cmp.Or(cmp.Compare(dpOrder[a.site], dpOrder[b.site]), comparePoint(a.point, b.point))
	})
	return s
}

// has reports whether the run measured the point, with plain or cost
// trials.
func (s side) has(k groupKey) bool { return s.groups[k] != nil || s.cost[k] != nil }

// absolute is the metric's per-repetition values of a group.
func (s side) absolute(k groupKey, m Metric) []float64 {
	var out []float64
	_, withCost := s.cost[k]
	for _, t := range metricTrials(m, s.groups[k], s.cost[k], withCost) {
		if v, ok := m.Trial(t); ok {
			out = append(out, v)
		}
	}
	return out
}

// ratios divides each repetition's figure by direct's: by direct's in the
// same round (PairRound), or by the median of direct's repetitions in the
// run (PairMedian). Repetitions without a direct trial, or where direct's
// figure is 0, are left out. ok is false when the run has no direct at
// that point.
func (s side) ratios(k groupKey, m Metric, pairing Pairing) (out []float64, ok bool) {
	d, ok := s.direct[k.direct()]
	if !ok {
		return nil, false
	}
	var dMedian float64
	if pairing == PairMedian {
		dMedian = NewStat(s.absolute(k.direct(), m)).Median
	}
	for _, t := range s.groups[k] {
		v, ok1 := m.Trial(t)
		dv, ok2 := dMedian, dMedian != 0
		if pairing != PairMedian {
			dt, found := d[t.Repetition]
			if !found {
				continue
			}
			dv, ok2 = m.Trial(dt)
		}
		if ok1 && ok2 && dv != 0 {
			out = append(out, v/dv)
		}
	}
	return out, true
}

// Compare tests every metric of every datapath and point measured in both
// runs, OLD against NEW, and judges each row against th.
//
// Each row's p-value is the Mann-Whitney U test over the per-repetition
// values (benchmath's AssumeNothing: benchmark figures are not normal), the
// centres are medians with 95% confidence intervals, and a row fails the
// gate only when it is gated, p < alpha, and the median moved beyond the
// threshold in the bad direction (QPS down; latency or CPU up).
func Compare(old, new *Run, th Thresholds) *Comparison {
	c := &Comparison{OldID: old.ID, NewID: new.ID, Thresholds: th}
	o, n := newSide(old), newSide(new)
	for _, x := range o.invalid {
		c.Invalid = append(c.Invalid, "OLD: "+x)
	}
	for _, x := range n.invalid {
		c.Invalid = append(c.Invalid, "NEW: "+x)
	}

	// Rows in NEW's order, then what only OLD has.
	var keys []groupKey
	oldDP, newDP := map[site]bool{}, map[site]bool{}
	for _, k := range o.order {
		oldDP[k.site] = true
	}
	for _, k := range n.order {
		newDP[k.site] = true
	}
	for _, k := range n.order {
		switch {
		case !oldDP[k.site]:
			c.OnlyNew = appendOnce(c.OnlyNew, k.site.String())
		case !o.has(k):
			c.OnlyNew = append(c.OnlyNew, k.site.String()+" "+pointLabel(k.point))
		default:
			keys = append(keys, k)
		}
	}
	for _, k := range o.order {
		switch {
		case !newDP[k.site]:
			c.OnlyOld = appendOnce(c.OnlyOld, k.site.String())
		case !n.has(k):
			c.OnlyOld = append(c.OnlyOld, k.site.String()+" "+pointLabel(k.point))
		}
	}

	c.Speeds = machineSpeeds(o, n)
	// unjudged says whether a datapath's figures are outside its speed
	// guard, and records why once.
	unjudged := func(s site) bool {
		g, ok := th.speedGuard(s)
		sp, measured := c.speedAt(s.where)
		if !ok || !measured || sp.Factor <= 1+g {
			return false
		}
		c.Unjudged = appendOnce(c.Unjudged, fmt.Sprintf("%s (the machine ran ×%.2f slower than in OLD; its speed guard is %.0f%%)", s, sp.Factor, 100*g))
		return true
	}

	alpha := th.Alpha
	if !(alpha > 0 && alpha < 1) {
		alpha = DefaultThresholds().Alpha
	}
	var tooSmall bool
	var missing []string  // labels of metrics one run or both lack
	var absolute []string // labels of Absolute metrics gated outside the gate mode
	fallback := map[groupKey]bool{}
	for _, k := range keys {
		_, oldHasDirect := o.direct[k.direct()]
		_, newHasDirect := n.direct[k.direct()]
		hasDirect := oldHasDirect && newHasDirect
		if !hasDirect && th.Gate == GateRatio {
			fallback[k.direct()] = true
		}
		// Outside its speed guard a datapath's figures are reported only.
		guarded := unjudged(k.site)
		for _, m := range metricTable {
			if !m.Compared() {
				continue
			}
			ov, nv := o.absolute(k, m), n.absolute(k, m)
			if len(ov) == 0 || len(nv) == 0 {
				// Cost trials run at one concurrency per point: a
				// point neither run measured it at is no gap.
				if !m.CostTrials || len(ov)+len(nv) > 0 {
					missing = appendOnce(missing, m.Label)
				}
				continue
			}
			thr := th.forSite(k.site, m.Key)
			off := math.IsInf(thr, 1) || guarded // reported only
			gateAbs := th.Gate == GateAbsolute || th.Gate == GateBoth || (th.Gate == GateRatio && !hasDirect)
			// Direct is the ratios' reference: gating its absolute
			// figures in ratio mode would gate the machine, not a
			// datapath.
			if (th.Gate == GateRatio && k.datapath == DirectDatapath) || off {
				gateAbs = false
			}
			if m.Absolute {
				// Gated on its own value in every mode; direct's is
				// ≈ 0 and its relative change noise.
				gateAbs = !off && k.datapath != DirectDatapath
				if th.Gate != GateAbsolute && !off {
					absolute = appendOnce(absolute, m.Label)
				}
			}
			if hasDirect && k.datapath != DirectDatapath && !m.Absolute {
				or, _ := o.ratios(k, m, th.Pairing)
				nr, _ := n.ratios(k, m, th.Pairing)
				if len(or) > 0 && len(nr) > 0 {
					r := judge(k, m, true, or, nr, thr, th.Gate != GateAbsolute && !off, alpha)
					tooSmall = tooSmall || r.Verdict == VerdictNTooSmall
					c.Rows = append(c.Rows, r)
				}
			}
			r := judge(k, m, false, ov, nv, thr, gateAbs, alpha)
			tooSmall = tooSmall || r.Verdict == VerdictNTooSmall
			c.Rows = append(c.Rows, r)
		}
	}

	// Whether the gate mode gated any row: with every figure it applies
	// to off (only Absolute ones gated), "ratios are gated" would mislead.
	modeGates := slices.ContainsFunc(c.Rows, func(r CompareRow) bool {
		m, _ := LookupMetric(r.Metric)
		return r.Gated && !m.Absolute
	})
	switch {
	case !modeGates:
		c.Notes = append(c.Notes, "gated: only the figures named below (the thresholds set every other figure off): ratios to direct and absolute figures are reported, not gated")
	case th.Gate == GateRatio:
		c.Notes = append(c.Notes, "gated: ratios to direct ("+pairingPhrase(th.Pairing)+"): they cancel what slows or speeds every datapath alike (a faster or slower machine, a busy neighbour), leaving the datapath's own cost; absolute figures are reported, not gated")
	case th.Gate == GateAbsolute:
		c.Notes = append(c.Notes, "gated: absolute figures (gate: absolute): a slower or busier machine can fail the gate; ratios to direct are reported, not gated")
	case th.Gate == GateBoth:
		c.Notes = append(c.Notes, "gated: ratios to direct ("+pairingPhrase(th.Pairing)+") and absolute figures (gate: both)")
	}
	for _, l := range absolute {
		c.Notes = append(c.Notes, l+" is gated on its absolute figures whatever the gate mode, with no ratio to direct: direct's own figure is ≈ 0 once the probes' floor is subtracted, so a ratio to it would be noise; direct's is reported, not gated")
	}
	for _, d := range slices.SortedFunc(maps.Keys(fallback), func(a, b groupKey) int {
		return cmp.Or(cmp.Compare(a.where, b.where), comparePoint(a.point, b.point))
	}) {
		c.Notes = append(c.Notes, fmt.Sprintf("no %s at %s in both runs: its absolute figures are gated instead of ratios", d.site, pointLabel(d.point)))
	}
	for _, sp := range c.Speeds {
		c.Notes = append(c.Notes, fmt.Sprintf("machine speed%s (the attribution probes' own cost per band crossing, median of the cost trials): OLD %.1f ns, NEW %.1f ns (×%.2f)", siteSuffix(sp.Site), sp.OldNS, sp.NewNS, sp.Factor))
	}
	if len(c.Unjudged) > 0 {
		c.Notes = append(c.Notes, "not gated at this speed, reported only: "+strings.Join(c.Unjudged, "; ")+
			"; rerun when the machine is back near OLD's speed (a slow spell of a shared host passes), or remake OLD if the machine itself changed")
	}
	if tooSmall {
		need := 2
		for minUTestP(need, need) >= alpha && need < 100 {
			need++
		}
		c.Notes = append(c.Notes, fmt.Sprintf("n too small: with so few repetitions no difference can reach p < %g (the U test needs at least %d per side); those rows pass but prove nothing: run more repetitions", alpha, need))
	}
	// Rows whose intervals are wider than their threshold cannot catch a
	// regression of the threshold's size: a pass there says little.
	var noisy []string
	for _, r := range c.Rows {
		if r.Gated && r.Verdict != VerdictRegression && r.Verdict != VerdictNTooSmall &&
			(ciHalfWidth(r.Old) > 2*r.Threshold || ciHalfWidth(r.New) > 2*r.Threshold) {
			noisy = append(noisy, r.Name())
		}
	}
	if len(noisy) > 0 {
		c.Notes = append(c.Notes, fmt.Sprintf("too noisy to catch a regression of its threshold's size (a 95%% interval wider than ±2× the threshold): %s; rerun on a quieter machine or with more repetitions", strings.Join(noisy, ", ")))
	}
	for _, l := range missing {
		c.Notes = append(c.Notes, l+" is missing from one run or both: not compared")
	}
	if len(c.OnlyOld) > 0 {
		c.Notes = append(c.Notes, "only in OLD (not compared): "+strings.Join(c.OnlyOld, ", "))
	}
	if len(c.OnlyNew) > 0 {
		c.Notes = append(c.Notes, "only in NEW (not compared): "+strings.Join(c.OnlyNew, ", "))
	}
	if old.Env.CPUModel != new.Env.CPUModel || old.Env.CPUs != new.Env.CPUs || old.Env.Kernel != new.Env.Kernel {
		c.Notes = append(c.Notes, fmt.Sprintf("the runs come from different machines or kernels (OLD %s ×%d, %s; NEW %s ×%d, %s): absolute figures are not comparable, ratios to direct may be",
			old.Env.CPUModel, old.Env.CPUs, old.Env.Kernel, new.Env.CPUModel, new.Env.CPUs, new.Env.Kernel))
	}
	for _, s := range []struct {
		name string
		run  *Run
	}{{"OLD", old}, {"NEW", new}} {
		var errs, syn int64
		for _, t := range s.run.Trials {
			syn += t.Workload.SynRetrans
			for _, e := range t.Workload.Errors {
				errs += e
			}
		}
		if errs > 0 || syn > 0 {
			c.Notes = append(c.Notes, fmt.Sprintf("%s is not clean: %d failed connections, %d SYN retransmits (lost SYNs stall trials; its figures mix in stalls)", s.name, errs, syn))
		}
	}
	return c
}

func pairingPhrase(p Pairing) string {
	if p == PairMedian {
		return "each repetition ÷ the median of direct's in the same run"
	}
	return "each repetition ÷ direct's in the same round of the same run"
}

// judge compares one figure's samples.
func judge(k groupKey, m Metric, ratio bool, oldV, newV []float64, thr float64, gated bool, alpha float64) CompareRow {
	r := CompareRow{
		Datapath: k.datapath, Site: k.where, Services: k.services, Endpoints: k.endpoints, Concurrency: k.concurrency,
		Model: k.model, LoadFraction: k.fraction,
		Metric: m.Key, Ratio: ratio, Old: figure(oldV), New: figure(newV), Threshold: thr, Gated: gated,
	}
	r.Change = math.NaN()
	if r.Old.Median != 0 {
		r.Change = r.New.Median/r.Old.Median - 1
	}
	thresh := benchmath.Thresholds{CompareAlpha: alpha}
	res := benchmath.AssumeNothing.Compare(benchmath.NewSample(slices.Clone(oldV), &thresh), benchmath.NewSample(slices.Clone(newV), &thresh))
	r.P = res.P
	bad := r.Change < 0
	if m.Better == LowerIsBetter {
		bad = r.Change > 0
	}
	switch {
	case minUTestP(len(oldV), len(newV)) >= alpha:
		r.Verdict = VerdictNTooSmall
	case !(r.P < alpha) || math.IsNaN(r.Change):
		r.Verdict = VerdictSame
	case !bad:
		r.Verdict = VerdictBetter
	case math.IsInf(thr, 1):
		r.Verdict = VerdictWorseReported // the metric is "off": reported only
	case math.Abs(r.Change) <= thr:
		r.Verdict = VerdictWorse
	case gated:
		r.Verdict = VerdictRegression
	default:
		r.Verdict = VerdictWorseReported
	}
	return r
}

func figure(v []float64) Figure {
	return Figure{N: len(v), Median: NewStat(v).Median, CI: MedianCI(v, CIConfidence), Values: slices.Clone(v)}
}

// minUTestP is the smallest two-sided p-value the exact Mann-Whitney U
// test can give for samples of n1 and n2 without ties (complete
// separation): 2 / C(n1+n2, n1).
func minUTestP(n1, n2 int) float64 {
	if n1 == 0 || n2 == 0 {
		return 1
	}
	c := 1.0
	for i := 1; i <= n1; i++ {
		c = c * float64(n2+i) / float64(i)
	}
	return math.Min(1, 2/c)
}

func appendOnce(xs []string, x string) []string {
	if slices.Contains(xs, x) {
		return xs
	}
	return append(xs, x)
}

// pointLabel names a point: "conc=8", or "svcs=1000 eps=12 conc=8" in a
// scale sweep, or "model=open load=0.8" for the open loop (whose
// concurrency is 0 and not named).
func pointLabel(p point) string {
	var parts []string
	switch p.model {
	case "":
	case ModelCost:
		// Closed loop: no load fraction.
		parts = append(parts, "model="+p.model)
	default:
		parts = append(parts, "model="+p.model, "load="+strconv.FormatFloat(p.fraction, 'g', -1, 64))
	}
	if p.services > 0 {
		parts = append(parts, fmt.Sprintf("svcs=%d", p.services))
	}
	if p.endpoints > 0 {
		parts = append(parts, fmt.Sprintf("eps=%d", p.endpoints))
	}
	if p.model == "" || p.concurrency != 0 {
		parts = append(parts, fmt.Sprintf("conc=%d", p.concurrency))
	}
	return strings.Join(parts, " ")
}

// WriteTable prints the comparison like benchstat: per datapath and point,
// one row per figure with OLD and NEW medians ± the 95% CI half-width, the
// change, the p-value and the verdict; then the notes and the outcome.
func (c *Comparison) WriteTable(w io.Writer) error {
	var buf, rows bytes.Buffer
	fmt.Fprintf(&buf, "OLD %s\nNEW %s\n", c.OldID, c.NewID)
	var thr []string
	for _, m := range metricTable {
		if m.Compared() {
			thr = append(thr, m.Key+" "+fmtThreshold(c.Thresholds.Metrics[m.Key], m.Better))
		}
	}
	alpha := c.Thresholds.Alpha
	buf.WriteString(wrap(fmt.Sprintf("fails when a gated figure changes beyond its threshold (%s) with p < %g (Mann-Whitney U test over the repetitions); ± is the 95%% confidence interval of the median",
		strings.Join(thr, ", "), alpha), "", 100))
	buf.WriteString("\n")

	tw := tabwriter.NewWriter(&rows, 0, 0, 2, ' ', 0)
	last := ""
	for _, r := range c.Rows {
		block := SiteName(r.Datapath, r.Site) + "  " + pointLabel(r.point())
		if block != last {
			if last != "" {
				// Cells, not an empty line, so the columns stay aligned
				// across blocks; trimmed below.
				fmt.Fprintln(tw, "\t\t\t\t\t\t")
			}
			fmt.Fprintf(tw, "%s\tGATED\tOLD\tNEW\tCHANGE\tP\tVERDICT\n", block)
			last = block
		}
		gated := ""
		if r.Gated {
			gated = "yes"
		}
		verdict := string(r.Verdict)
		if r.Verdict == VerdictRegression || r.Verdict == VerdictWorseReported {
			if !math.IsInf(r.Threshold, 1) {
				verdict += fmt.Sprintf(" (beyond %.0f%%)", 100*r.Threshold)
			}
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.figureName(), gated,
			fmtFigure(r.Old, r.Ratio), fmtFigure(r.New, r.Ratio), fmtChange(r.Change), fmtP(r.P), verdict)
	}
	if err := tw.Flush(); err != nil {
		return fmt.Errorf("compare table: %w", err)
	}
	for _, l := range strings.SplitAfter(rows.String(), "\n") {
		if l != "" {
			buf.WriteString(strings.TrimRight(l, " \n") + "\n")
		}
	}
	if len(c.Rows) == 0 {
		buf.WriteString("nothing measured in both runs\n")
	}
	buf.WriteString("\n")
	for _, n := range c.Notes {
		buf.WriteString(wrap("note: "+n, "      ", 100))
	}
	// Whatever the outcome, which datapaths it does not cover.
	for _, u := range c.Unjudged {
		fmt.Fprintf(&buf, "NOT JUDGED: %s\n", u)
	}
	regs := c.Regressions()
	if len(c.Invalid) > 0 {
		fmt.Fprintf(&buf, "FAIL: invalid run: %d invalid trial(s), left out of every row above:\n", len(c.Invalid))
		for _, x := range c.Invalid {
			fmt.Fprintf(&buf, "  %s\n", x)
		}
	}
	if len(c.Rows) == 0 {
		// Two runs with nothing in common prove nothing: never a pass.
		buf.WriteString("NOT COMPARED: the runs share no datapath at any point\n")
	} else if !c.Gates() && len(c.Invalid) == 0 && len(c.Unjudged) > 0 {
		// Every gated figure belongs to a datapath outside its speed
		// guard: nothing was judged, which is no pass.
		buf.WriteString("NOT COMPARED: every gated figure is outside its speed guard\n")
	} else if !c.Gates() && len(c.Invalid) == 0 {
		// Figures in common, none of them gated (e.g. a reference made
		// before the gated figure existed): a pass would say nothing.
		var gated []string
		for _, m := range metricTable {
			if m.Compared() && !math.IsInf(c.Thresholds.For("", m.Key), 1) {
				gated = append(gated, m.Label)
			}
		}
		fmt.Fprintf(&buf, "NOT COMPARED: no gated figure (%s) was measured in both runs\n", strings.Join(gated, ", "))
	} else if len(regs) == 0 && len(c.Invalid) == 0 {
		buf.WriteString("PASS: no gated figure regressed beyond its threshold with significance\n")
	} else if len(regs) > 0 {
		fmt.Fprintf(&buf, "FAIL: %d regression(s):\n", len(regs))
		for _, r := range regs {
			fmt.Fprintf(&buf, "  %s: %s → %s (%s, p=%.3g, threshold %.0f%%)\n", r.Name(),
				fmtValue(r.Old.Median, r.Ratio), fmtValue(r.New.Median, r.Ratio), fmtChange(r.Change), r.P, 100*r.Threshold)
		}
	}
	if _, err := w.Write(buf.Bytes()); err != nil {
		return fmt.Errorf("compare table: %w", err)
	}
	return nil
}

// ciHalfWidth is the larger side of a figure's 95% interval relative to
// its median (+Inf without a finite interval).
func ciHalfWidth(f Figure) float64 {
	if f.CI == nil || f.Median == 0 {
		return math.Inf(1)
	}
	return max(f.CI.Hi/f.Median-1, 1-f.CI.Lo/f.Median)
}

// fmtFigure prints "median ±x%" (benchstat's style) or "median ±∞" when
// the repetitions are too few for a finite 95% interval.
func fmtFigure(f Figure, ratio bool) string {
	ci := "±∞"
	if w := ciHalfWidth(f); !math.IsInf(w, 0) {
		ci = fmt.Sprintf("±%.0f%%", 100*w)
	}
	return fmt.Sprintf("%s %s n=%d", fmtValue(f.Median, ratio), ci, f.N)
}

func fmtValue(v float64, ratio bool) string {
	if ratio {
		return fmt.Sprintf("%.3f", v)
	}
	switch {
	case v >= 1000:
		return fmtQPS(v)
	case math.Abs(v) < 1:
		// A fraction (the datapath's share of the CPU): microseconds'
		// two decimals would leave one significant digit of it.
		return fmt.Sprintf("%.4f", v)
	}
	return fmtMicros(v)
}

// fmtThreshold prints a threshold with the bad direction's sign, or "off"
// for a metric that is reported only.
func fmtThreshold(t float64, better Better) string {
	switch {
	case math.IsInf(t, 1):
		return "off"
	case better == HigherIsBetter:
		return fmt.Sprintf("-%.0f%%", 100*t)
	}
	return fmt.Sprintf("+%.0f%%", 100*t)
}

func fmtChange(c float64) string {
	if math.IsNaN(c) {
		return "?"
	}
	return fmt.Sprintf("%+.1f%%", 100*c)
}

func fmtP(p float64) string {
	return fmt.Sprintf("p=%.3f", p)
}

// wrap breaks text into lines of at most width runes at spaces, the lines
// after the first starting with indent; it ends with a newline.
func wrap(text, indent string, width int) string {
	var b strings.Builder
	line := 0
	for i, word := range strings.Fields(text) {
		n := len([]rune(word))
		switch {
		case i == 0:
		case line+1+n > width:
			b.WriteString("\n" + indent)
			line = len([]rune(indent))
		default:
			b.WriteByte(' ')
			line++
		}
		b.WriteString(word)
		line += n
	}
	b.WriteByte('\n')
	return b.String()
}

// ErrNotComparable is returned by Comparable for two runs whose figures do
// not measure the same thing: a comparison of them would print changes
// that are differences of workload or machine, not regressions.
var ErrNotComparable = errors.New("runs are not comparable")

// Comparable checks that two runs measured the same workload on the same
// kind of machine: the same scenario, service protocol, UDP socket mode, IP
// family and load model, the same CPU model and count. A run read from bench.txt
// carries no scenario; its machine is still checked.
func Comparable(old, new *Run) error {
	type scenario struct {
		Name    string `json:"name"`
		Service struct {
			Protocol string `json:"protocol"`
			IPFamily string `json:"ipFamily"`
		} `json:"service"`
		Workload struct {
			UDPMode string `json:"udpMode"`
			Model   string `json:"model"`
		} `json:"workload"`
	}
	var why []string
	if len(old.Scenario) > 0 && len(new.Scenario) > 0 {
		var o, n scenario
		if err := errors.Join(json.Unmarshal(old.Scenario, &o), json.Unmarshal(new.Scenario, &n)); err != nil {
			return fmt.Errorf("%w: scenario: %v", ErrNotComparable, err)
		}
		differ := func(what, a, b string) {
			if a != b {
				why = append(why, fmt.Sprintf("%s %q vs %q", what, a, b))
			}
		}
		differ("scenario", o.Name, n.Name)
		differ("protocol", cmp.Or(o.Service.Protocol, "TCP"), cmp.Or(n.Service.Protocol, "TCP"))
		differ("udpMode", o.Workload.UDPMode, n.Workload.UDPMode)
		// IPv4 and IPv6 go through different hooks, rules and stacks.
		differ("ipFamily", cmp.Or(o.Service.IPFamily, "IPv4"), cmp.Or(n.Service.IPFamily, "IPv4"))
		differ("load model", cmp.Or(o.Workload.Model, "closed"), cmp.Or(n.Workload.Model, "closed"))
	}
	if old.Env.CPUModel != "" && new.Env.CPUModel != "" && (old.Env.CPUModel != new.Env.CPUModel || old.Env.CPUs != new.Env.CPUs) {
		why = append(why, fmt.Sprintf("machine %s ×%d vs %s ×%d", old.Env.CPUModel, old.Env.CPUs, new.Env.CPUModel, new.Env.CPUs))
	}
	if len(why) > 0 {
		return fmt.Errorf("%w: %s (compare runs of one scenario on one kind of machine; make a new reference where this one runs)", ErrNotComparable, strings.Join(why, "; "))
	}
	return nil
}
