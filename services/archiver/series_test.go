package archiver

import (
	"testing"
	"time"

	"github.com/mailpulse/mailpulse/shared/history"
	"github.com/mailpulse/mailpulse/shared/metric"
)

// TestBuildSeriesNeverAddsOrigins: a server both scraped and sending its events has every
// counter in two origins; the series shows it once, from the origin the policy chooses.
func TestBuildSeriesNeverAddsOrigins(t *testing.T) {
	t0 := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	snap := func(src, origin string, n uint64) metric.Snapshot {
		return metric.Snapshot{Source: src, Origin: origin, Instance: origin, Time: t0.Add(30 * time.Second), Start: t0,
			Counters: map[string]uint64{"smtp.connection-start": n}}
	}
	snaps := []metric.Snapshot{
		snap("mx1", metric.OriginEvents, 100), snap("mx1", metric.OriginPrometheus, 103), // both: one is shown
		snap("mx2", metric.OriginEvents, 7), // events only
	}
	for _, tc := range []struct {
		origin string
		want   float64
	}{
		{"", 103 + 7}, {"auto", 103 + 7}, {"events", 100 + 7}, {"prometheus", 103},
	} {
		got := BuildSeries(snaps, history.MetricsRequest{From: t0, To: t0.Add(time.Minute), Step: time.Minute, Origin: tc.origin})
		if len(got) != 1 || got[0].Points[0].Value != tc.want {
			t.Errorf("origin %q: %+v, want %v", tc.origin, got, tc.want)
		}
	}
}

// TestBuildSeriesDeltasAsStalwart: the first step's delta comes from the snapshot before the
// range (it was 0 before); with none, it is the count since the process started; histograms
// get their increases; no point is stamped after the range.
func TestBuildSeriesDeltasAsStalwart(t *testing.T) {
	t0 := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	h := func(count uint64, sum float64) map[string]metric.Histogram {
		return map[string]metric.Histogram{"delivery.attempt-time": {Bounds: []float64{10}, Counts: []uint64{count, count}, Count: count, Sum: sum}}
	}
	snaps := []metric.Snapshot{
		{Source: "mx", Origin: "events", Instance: "a", Time: t0.Add(-time.Minute), Start: t0.Add(-time.Hour), Counters: map[string]uint64{"auth.failed": 40}, Histograms: h(4, 40)},
		{Source: "mx", Origin: "events", Instance: "a", Time: t0.Add(20 * time.Minute), Start: t0.Add(-time.Hour), Counters: map[string]uint64{"auth.failed": 50}, Histograms: h(6, 100)},
		{Source: "mx", Origin: "events", Instance: "b", Time: t0.Add(30 * time.Minute), Start: t0.Add(25 * time.Minute), Counters: map[string]uint64{"auth.failed": 3}},
		{Source: "mx", Origin: "events", Instance: "a", Time: t0.Add(70 * time.Minute), Start: t0.Add(-time.Hour), Counters: map[string]uint64{"auth.failed": 55}, Histograms: h(7, 130)},
	}
	to := t0.Add(80 * time.Minute) // "now": the second hour is partial
	got := BuildSeries(snaps, history.MetricsRequest{From: t0, To: to, Step: time.Hour})
	if len(got) != 2 {
		t.Fatalf("series = %+v", got)
	}
	af, ht := got[0].Points, got[1].Points
	if len(af) != 2 || af[0].Delta != 10+3 || af[0].Value != 53 || af[1].Delta != 5 || af[1].Value != 55 {
		t.Errorf("auth.failed = %+v, want deltas 13 (10 from the base before the range, 3 since b started) and 5", af)
	}
	if len(ht) != 2 || ht[0].CountDelta != 2 || ht[0].SumDelta != 60 || ht[1].CountDelta != 1 || ht[1].SumDelta != 30 || ht[1].Count != 7 {
		t.Errorf("histogram = %+v, want increases 2/60 then 1/30 and the total count 7", ht)
	}
	if !af[0].Time.Equal(t0.Add(time.Hour)) || !af[1].Time.Equal(to) {
		t.Errorf("stamps %v, %v; want the end of the first hour, then the range's end (not the hour's)", af[0].Time, af[1].Time)
	}
}
