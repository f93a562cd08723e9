package results

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"os"
	"slices"
	"strconv"
	"strings"

	"sigs.k8s.io/yaml"
)

// GateMode says which figures the regression gate fails on.
type GateMode string

// Gate modes. GateRatio is the default: a datapath's figure divided by
// direct's in the same round of the same run cancels what slows or speeds
// every datapath alike (a faster or slower machine, a noisy neighbour), so
// what is left is the datapath's own cost. Absolute figures are reported
// in every mode.
const (
	GateRatio    GateMode = "ratio"
	GateAbsolute GateMode = "absolute"
	GateBoth     GateMode = "both"
)

// Pairing says what each repetition of a datapath is divided by to form
// its ratio to direct.
type Pairing string

// Pairings. PairRound divides by direct's trial in the same round (the
// same repetition, run next to it): it cancels load that changes from one
// round to the next, but adds direct's own trial-to-trial noise. PairMedian
// divides by the median of direct's repetitions in the run: it cancels what
// differs between the two runs (machine, steady load) and adds only the
// noise of a median.
const (
	PairRound  Pairing = "round"
	PairMedian Pairing = "median"
)

// Thresholds configure `svclab compare`: how large a significant change in
// the bad direction must be to fail the gate, per metric and optionally per
// datapath, and the significance level.
type Thresholds struct {
	// Alpha is the significance level: a change counts only when the
	// Mann-Whitney U test gives p < Alpha.
	Alpha float64
	// Gate selects the gated figures (ratios to direct by default).
	Gate GateMode
	// Pairing selects how ratios to direct are formed.
	Pairing Pairing
	// Metrics maps a metric key (see MetricKeys) to the largest tolerated
	// change in the bad direction, as a fraction (0.10 = 10%); +Inf
	// ("off" in the file) reports the metric without gating it.
	Metrics map[string]float64
	// Datapaths overrides Metrics for one datapath.
	Datapaths map[string]map[string]float64
	// SpeedGuard maps a datapath to how much slower NEW's machine may
	// run than OLD's (a fraction: 0.20 = up to 1.2× slower) for its
	// figures to be gated. The speed is the attribution probes' own cost
	// per band crossing, a small in-kernel benchmark every cost trial
	// runs (Cost.FloorPerCrossingNS). Beyond the guard the datapath's
	// figures are reported, not gated, and compare says so: for a
	// datapath whose cost share moves with the machine's speed alone
	// (socket-LB's few hundred ns of map lookups grow faster than the
	// rest of a connection on a slowed machine), a slow spell would
	// otherwise read as a regression. A faster machine moves such a share
	// the other way, towards "better", so it is judged. Datapaths without
	// an entry are gated at any speed.
	SpeedGuard map[string]float64
}

// speedGuard is the datapath's speed guard at a site (see SpeedGuard).
func (th Thresholds) speedGuard(s site) (float64, bool) {
	if v, ok := th.SpeedGuard[s.datapath]; ok && !math.IsInf(v, 1) {
		return v, true
	}
	return 0, false
}

// DefaultThresholds is used for metrics a thresholds file leaves out, and
// when there is no file.
func DefaultThresholds() Thresholds {
	return Thresholds{
		Alpha:   0.05,
		Gate:    GateRatio,
		Pairing: PairRound,
		Metrics: defaultMetricThresholds(),
	}
}

// defaultMetricThresholds are the metric table's thresholds of the metrics
// compare tests.
func defaultMetricThresholds() map[string]float64 {
	out := map[string]float64{}
	for _, m := range metricTable {
		if m.Compared() {
			out[m.Key] = m.Threshold
		}
	}
	return out
}

// For returns the threshold of a metric for a datapath.
func (th Thresholds) For(datapath, metric string) float64 {
	if v, ok := th.Datapaths[datapath][metric]; ok {
		return v
	}
	return th.Metrics[metric]
}

// forSite is For for a datapath measured at a site: an override for the
// legacy name "ipvs@debian-6.12" (which a thresholds file written before
// Site existed may hold) wins over one for "ipvs".
func (th Thresholds) forSite(s site, metric string) float64 {
	if s.where != "" {
		if v, ok := th.Datapaths[s.datapath+"@"+s.where][metric]; ok {
			return v
		}
	}
	return th.For(s.datapath, metric)
}

// ReadThresholds reads a thresholds file (YAML):
//
//	alpha: 0.05          # significance level, 0 < alpha < 1
//	gate: ratio          # ratio (to direct), absolute or both
//	pairing: round       # ratio of each repetition to direct's in the same round, or to direct's median
//	metrics:             # tolerated change in the bad direction
//	  qps: 10%
//	  p90: 15%
//	  p99: off           # reported, never gated
//	datapaths:           # per-datapath overrides
//	  iptables:
//	    p99: 40%
//	speed_guard:         # gate a datapath only while the machine runs at most
//	  socketlb: 20%      # this much slower than in OLD (see Thresholds.SpeedGuard)
//
// Metrics it leaves out keep DefaultThresholds' values. Errors name the
// file and the field at fault.
func ReadThresholds(path string) (Thresholds, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Thresholds{}, fmt.Errorf("thresholds: %w", err)
	}
	th, err := ParseThresholds(b)
	if err != nil {
		return Thresholds{}, fmt.Errorf("thresholds %s: %w", path, err)
	}
	return th, nil
}

// ParseThresholds parses the content of a thresholds file (see
// ReadThresholds).
func ParseThresholds(b []byte) (Thresholds, error) {
	th := DefaultThresholds()
	j, err := yaml.YAMLToJSONStrict(b)
	if err != nil {
		return th, fmt.Errorf("not valid YAML: %w", err)
	}
	if s := bytes.TrimSpace(j); len(s) == 0 || bytes.Equal(s, []byte("null")) {
		return th, nil // an empty file: the defaults
	}
	var top map[string]json.RawMessage
	if err := json.Unmarshal(j, &top); err != nil {
		return th, fmt.Errorf("want a mapping of alpha, gate, pairing, metrics, datapaths, speed_guard: %w", err)
	}
	for _, k := range slices.Sorted(maps.Keys(top)) {
		v := top[k]
		switch k {
		case "alpha":
			if err := json.Unmarshal(v, &th.Alpha); err != nil || !(th.Alpha > 0 && th.Alpha < 1) {
				return th, fmt.Errorf("alpha: %s is not a number between 0 and 1 (exclusive)", v)
			}
		case "gate":
			var g string
			_ = json.Unmarshal(v, &g)
			switch GateMode(g) {
			case GateRatio, GateAbsolute, GateBoth:
				th.Gate = GateMode(g)
			default:
				return th, fmt.Errorf("gate: %s is not one of %q, %q, %q", v, GateRatio, GateAbsolute, GateBoth)
			}
		case "pairing":
			var p string
			_ = json.Unmarshal(v, &p)
			switch Pairing(p) {
			case PairRound, PairMedian:
				th.Pairing = Pairing(p)
			default:
				return th, fmt.Errorf("pairing: %s is not one of %q, %q", v, PairRound, PairMedian)
			}
		case "metrics":
			m, err := parseMetricThresholds("metrics", v)
			if err != nil {
				return th, err
			}
			maps.Copy(th.Metrics, m)
		case "datapaths":
			var dps map[string]json.RawMessage
			if err := json.Unmarshal(v, &dps); err != nil {
				return th, fmt.Errorf("datapaths: want a mapping of datapath name to metric thresholds")
			}
			th.Datapaths = map[string]map[string]float64{}
			for _, dp := range slices.Sorted(maps.Keys(dps)) {
				m, err := parseMetricThresholds("datapaths."+dp, dps[dp])
				if err != nil {
					return th, err
				}
				th.Datapaths[dp] = m
			}
		case "speed_guard":
			var dps map[string]json.RawMessage
			if err := json.Unmarshal(v, &dps); err != nil {
				return th, fmt.Errorf("speed_guard: want a mapping of datapath name to a percentage")
			}
			th.SpeedGuard = map[string]float64{}
			for _, dp := range slices.Sorted(maps.Keys(dps)) {
				g, err := parsePercent(dps[dp])
				if err != nil {
					return th, fmt.Errorf("speed_guard.%s: %w", dp, err)
				}
				th.SpeedGuard[dp] = g
			}
		default:
			return th, fmt.Errorf("%s: unknown field (want alpha, gate, pairing, metrics, datapaths, speed_guard)", k)
		}
	}
	return th, nil
}

// parseMetricThresholds reads {metric: "10%"}; field names the mapping in
// errors.
func parseMetricThresholds(field string, b json.RawMessage) (map[string]float64, error) {
	var raw map[string]json.RawMessage
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("%s: want a mapping of metric (%s) to a percentage", field, strings.Join(MetricKeys(), ", "))
	}
	out := map[string]float64{}
	for _, k := range slices.Sorted(maps.Keys(raw)) {
		if !slices.Contains(MetricKeys(), k) {
			return nil, fmt.Errorf("%s.%s: unknown metric (want %s)", field, k, strings.Join(MetricKeys(), ", "))
		}
		v, err := parsePercent(raw[k])
		if err != nil {
			return nil, fmt.Errorf("%s.%s: %w", field, k, err)
		}
		out[k] = v
	}
	return out, nil
}

// parsePercent reads "10%" as 0.10, and "off" (the metric is reported,
// never gated) as +Inf. A bare number is refused: 0.1 could mean 10% or
// 0.1%, and a gate that silently reads the wrong one is worse than one that
// asks.
func parsePercent(b json.RawMessage) (float64, error) {
	var s string
	// YAML reads a bare off as false.
	if err := json.Unmarshal(b, &s); (err == nil && s == "off") || string(b) == "false" {
		return math.Inf(1), nil
	}
	if err := json.Unmarshal(b, &s); err != nil || !strings.HasSuffix(s, "%") {
		return 0, fmt.Errorf("%s is not a percentage: write it like \"10%%\", or off", b)
	}
	v, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(s, "%")), 64)
	if err != nil || !(v > 0 && v < 1000) {
		return 0, fmt.Errorf("%q is not a percentage above 0%% and below 1000%%", s)
	}
	return v / 100, nil
}
