package archiver

import (
	"testing"
	"time"

	"github.com/mailpulse/mailpulse/shared/history"
	"github.com/mailpulse/mailpulse/shared/metric"
)

func TestBuildSeries(t *testing.T) {
	t0 := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	snap := func(inst string, at time.Duration, n uint64, g float64) metric.Snapshot {
		return metric.Snapshot{Source: "mx", Origin: metric.OriginEvents, Instance: inst, Time: t0.Add(at), Start: t0,
			Counters: map[string]uint64{"auth.failed": n, "smtp.ehlo": 1}, Gauges: map[string]float64{"queue.count": g}}
	}
	snaps := []metric.Snapshot{
		snap("a", 10*time.Second, 10, 1), snap("a", 50*time.Second, 20, 2), snap("b", 55*time.Second, 5, 3), // step 1
		snap("a", 70*time.Second, 80, 4), snap("b", 100*time.Second, 25, 1), // step 2
		snap("a", 130*time.Second, 30, 0), // step 3: instance a restarted (80 → 30); b had nothing new
	}
	got := BuildSeries(snaps, history.MetricsRequest{From: t0, To: t0.Add(3 * time.Minute), Step: time.Minute, Metrics: []string{"auth.*", "queue.count"}})
	if len(got) != 2 || got[0].Metric != "auth.failed" || got[1].Metric != "queue.count" {
		t.Fatalf("series = %+v", got)
	}
	af := got[0].Points
	if len(af) != 3 || af[0].Value != 25 || af[1].Value != 105 || af[1].Delta != 80 || af[1].Rate != 80.0/60 {
		t.Errorf("auth.failed points = %+v", af)
	}
	// Step 3 holds only instance a's snapshot (30): the sum went down, a reset, so the delta
	// is the new value, never negative.
	if af[2].Value != 30 || af[2].Delta != 30 {
		t.Errorf("after a reset: %+v", af[2])
	}
	if q := got[1].Points; q[0].Value != 5 || q[1].Value != 5 {
		t.Errorf("queue.count = %+v (last value per instance, summed)", q)
	}
}
