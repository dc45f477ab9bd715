package metric

import (
	"math"
	"testing"
	"time"
)

func TestHistogramIsCumulativeWithInclusiveBounds(t *testing.T) {
	h := NewHistogram([]float64{10, 100})
	for _, v := range []float64{10, 11, 100, 1000, math.NaN()} {
		h.Observe(v)
	}
	// 10 ≤ 10; 11 and 100 ≤ 100; 1000 only in +Inf; NaN ignored.
	want := []uint64{1, 3, 4}
	for i, w := range want {
		if h.Counts[i] != w {
			t.Fatalf("Counts = %v, want %v", h.Counts, want)
		}
	}
	if h.Count != 4 || h.Sum != 1121 {
		t.Errorf("Count %d Sum %v, want 4 and 1121", h.Count, h.Sum)
	}
	c := h.Clone()
	c.Counts[0] = 99
	if h.Counts[0] == 99 {
		t.Error("Clone shares its counts")
	}
}

func TestSnapshotRoundTrip(t *testing.T) {
	s := Snapshot{Source: "mx", Origin: OriginEvents, Instance: "i", Time: time.Unix(1, 0).UTC(), Start: time.Unix(0, 0).UTC(),
		Counters: map[string]uint64{"auth.failed": 3}, Gauges: map[string]float64{"queue.count": 2},
		Histograms: map[string]Histogram{"message.size": NewHistogram(SizeBounds)}}
	b, err := s.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	back, err := Unmarshal(b)
	if err != nil || back.Counters["auth.failed"] != 3 || len(back.Histograms["message.size"].Counts) != len(SizeBounds)+1 || !back.Time.Equal(s.Time) {
		t.Errorf("round trip = %+v, %v", back, err)
	}
	for _, h := range Histograms {
		for i := 1; i < len(h.Bounds); i++ {
			if h.Bounds[i] <= h.Bounds[i-1] {
				t.Errorf("%s: bounds not increasing", h.Name)
			}
		}
	}
}
