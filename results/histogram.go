package results

import (
	"encoding/json"
	"fmt"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
)

// Latency histograms cover 1 ns to 60 s with 3 significant digits.
const (
	histMin     = 1
	histMax     = int64(60e9)
	histSigFigs = 3
)

// Histogram is an HDR histogram of latencies in nanoseconds. It is kept whole
// in results.json so percentiles can be recomputed and trials merged later.
type Histogram struct {
	h *hdrhistogram.Histogram
}

// NewHistogram returns an empty latency histogram.
func NewHistogram() *Histogram {
	return &Histogram{h: hdrhistogram.New(histMin, histMax, histSigFigs)}
}

// Record adds one latency in nanoseconds; values beyond the range are clamped.
func (h *Histogram) Record(ns int64) {
	if ns < histMin {
		ns = histMin
	}
	if ns > histMax {
		ns = histMax
	}
	_ = h.h.RecordValue(ns)
}

// Merge adds every value of o into h.
func (h *Histogram) Merge(o *Histogram) {
	if o == nil {
		return
	}
	h.h.Merge(o.h)
}

// Count is the number of recorded values.
func (h *Histogram) Count() int64 { return h.h.TotalCount() }

// Latency returns the percentiles in microseconds.
func (h *Histogram) Latency() Latency {
	us := func(ns int64) float64 { return float64(ns) / 1e3 }
	if h.h.TotalCount() == 0 {
		return Latency{}
	}
	return Latency{
		Min:  us(h.h.Min()),
		Mean: h.h.Mean() / 1e3,
		P50:  us(h.h.ValueAtQuantile(50)),
		P90:  us(h.h.ValueAtQuantile(90)),
		P99:  us(h.h.ValueAtQuantile(99)),
		P999: us(h.h.ValueAtQuantile(99.9)),
		Max:  us(h.h.Max()),
	}
}

// histogramJSON is the stored form: only the buckets that hold values, as
// [lowest value of the bucket, count] pairs. HdrHistogram's own snapshot
// stores every bucket of the 1 ns–60 s range, mostly zeros: about half a
// megabyte per trial.
type histogramJSON struct {
	Lowest  int64      `json:"lowest"`
	Highest int64      `json:"highest"`
	SigFigs int        `json:"sigfigs"`
	Buckets [][2]int64 `json:"buckets"`
}

// MarshalJSON encodes the non-empty buckets.
func (h *Histogram) MarshalJSON() ([]byte, error) {
	out := histogramJSON{Lowest: h.h.LowestTrackableValue(), Highest: h.h.HighestTrackableValue(),
		SigFigs: int(h.h.SignificantFigures()), Buckets: [][2]int64{}}
	for _, b := range h.h.Distribution() {
		if b.Count > 0 {
			out.Buckets = append(out.Buckets, [2]int64{b.From, b.Count})
		}
	}
	return json.Marshal(out)
}

// UnmarshalJSON restores a histogram from its buckets (or from an
// HdrHistogram snapshot, the format of earlier results).
func (h *Histogram) UnmarshalJSON(b []byte) error {
	var probe map[string]json.RawMessage
	if err := json.Unmarshal(b, &probe); err != nil {
		return fmt.Errorf("decode histogram: %w", err)
	}
	if _, ok := probe["buckets"]; !ok {
		var s hdrhistogram.Snapshot
		if err := json.Unmarshal(b, &s); err != nil {
			return fmt.Errorf("decode histogram: %w", err)
		}
		if s.SignificantFigures == 0 {
			return fmt.Errorf("decode histogram: no significant figures in snapshot")
		}
		h.h = hdrhistogram.Import(&s)
		return nil
	}
	var in histogramJSON
	if err := json.Unmarshal(b, &in); err != nil {
		return fmt.Errorf("decode histogram: %w", err)
	}
	if in.SigFigs < 1 || in.SigFigs > 5 || in.Lowest < 1 || in.Highest <= in.Lowest {
		return fmt.Errorf("decode histogram: bad range %d..%d or significant figures %d", in.Lowest, in.Highest, in.SigFigs)
	}
	h.h = hdrhistogram.New(in.Lowest, in.Highest, in.SigFigs)
	for _, bk := range in.Buckets {
		if err := h.h.RecordValues(bk[0], bk[1]); err != nil {
			return fmt.Errorf("decode histogram: bucket %d: %w", bk[0], err)
		}
	}
	return nil
}
