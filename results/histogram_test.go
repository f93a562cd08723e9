package results

import (
	"encoding/json"
	"math"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// hdrPrecision is the relative error of a value read back from a histogram
// with 3 significant digits.
const hdrPrecision = 1e-3

// exactPercentile is the q-th percentile of sorted samples by nearest rank,
// the definition HDR histograms approximate.
func exactPercentile(sorted []int64, q float64) int64 {
	rank := int(math.Ceil(q / 100 * float64(len(sorted))))
	return sorted[max(rank, 1)-1]
}

// logUniform draws n latencies between lo and hi ns, spread over decades as
// real connection latencies are.
func logUniform(r *rand.Rand, n int, lo, hi float64) []int64 {
	out := make([]int64, n)
	for i := range out {
		out[i] = int64(lo * math.Pow(hi/lo, r.Float64()))
	}
	return out
}

// TestHistogramMerge checks that merging per-trial histograms gives the
// histogram of the pooled samples: that is what pooling repetitions relies on.
func TestHistogramMerge(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	// Two different distributions, so a merge that dropped either would
	// move the percentiles far outside HDR precision.
	a := logUniform(r, 10_000, 10e3, 1e6)
	b := logUniform(r, 10_000, 1e6, 5e6)
	ha, hb := NewHistogram(), NewHistogram()
	for _, v := range a {
		ha.Record(v)
	}
	for _, v := range b {
		hb.Record(v)
	}
	ha.Merge(hb)
	ha.Merge(nil) // a missing histogram is not an error

	all := slices.Concat(a, b)
	slices.Sort(all)
	require.Equal(t, int64(len(all)), ha.Count())
	lat := ha.Latency()
	for _, tc := range []struct {
		name string
		q    float64
		got  float64
	}{
		{"p50", 50, lat.P50},
		{"p90", 90, lat.P90},
		{"p99", 99, lat.P99},
	} {
		t.Run(tc.name, func(t *testing.T) {
			want := float64(exactPercentile(all, tc.q)) / 1e3
			assert.InEpsilon(t, want, tc.got, hdrPrecision)
		})
	}
}

// TestHistogramRecordClamps checks that out-of-range latencies are kept at
// the range's edge rather than silently dropped, which would bias the tail.
func TestHistogramRecordClamps(t *testing.T) {
	for _, tc := range []struct {
		name   string
		ns     int64
		wantUs float64
	}{
		{"zero", 0, 0.001},
		{"negative", -5, 0.001},
		{"beyond 60s", 120e9, 60e6},
		{"in range", 123_456, 123.456},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := NewHistogram()
			h.Record(tc.ns)
			require.Equal(t, int64(1), h.Count())
			assert.InEpsilon(t, tc.wantUs, h.Latency().Max, hdrPrecision)
		})
	}
}

// TestHistogramJSON checks the histogram survives results.json whole, and
// that an empty snapshot is refused rather than read as a histogram that
// can hold nothing.
func TestHistogramJSON(t *testing.T) {
	h := NewHistogram()
	for _, v := range logUniform(rand.New(rand.NewPCG(3, 4)), 5000, 5e3, 50e6) {
		h.Record(v)
	}
	b, err := json.Marshal(h)
	require.NoError(t, err)
	var got Histogram
	require.NoError(t, json.Unmarshal(b, &got))
	assert.Equal(t, h.Count(), got.Count())
	assert.Equal(t, h.Latency(), got.Latency())

	assert.Error(t, json.Unmarshal([]byte(`{}`), &got))
	assert.Equal(t, Latency{}, NewHistogram().Latency(), "an empty histogram has no percentiles")
}

// The stored form keeps only non-empty buckets: a trial's histogram is a few
// kilobytes, not HdrHistogram's dense half-megabyte snapshot, and it still
// round-trips exactly.
func TestHistogramJSONIsCompact(t *testing.T) {
	h := NewHistogram()
	for i := int64(1); i <= 20000; i++ {
		h.Record(50_000 + i*37)
	}
	b, err := h.MarshalJSON()
	require.NoError(t, err)
	assert.Less(t, len(b), 64<<10, "stored histogram is %d bytes", len(b))
	var back Histogram
	require.NoError(t, back.UnmarshalJSON(b))
	assert.Equal(t, h.Latency(), back.Latency())
	assert.Equal(t, h.Count(), back.Count())
}
