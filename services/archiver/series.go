package archiver

import (
	"sort"
	"time"

	"github.com/mailpulse/mailpulse/shared/history"
	"github.com/mailpulse/mailpulse/shared/metric"
)

// baseLookback is how far before a range the snapshots that give its first deltas a base
// are read: one step, within bounds (snapshots come every few seconds).
func baseLookback(step time.Duration) time.Duration {
	return min(max(step, 5*time.Minute), time.Hour)
}

// snapKey names the snapshots of one counting process: a producer instance, or a scrape, of
// one source.
type snapKey struct{ origin, instance, source string }

// BuildSeries turns snapshots into one series per selected metric, step by step.
//
//   - Each source counts once, from the origin req.Origin chooses for it (never the sum of
//     its events and its scraped metrics).
//   - A counter's value is, summed over the producer instances (and scrapes), each one's
//     last snapshot of the step; its delta is the sum of each one's increases during the
//     step. A process that restarted (a new Start, or a counter that went down) counts
//     from zero again, so a delta is never negative. A process whose earlier snapshots are
//     not among snaps gives its whole count since it started, as Stalwart's first sample
//     after a restart does. Snapshots before req.From only give the first step its base.
//   - Gauges: the last value of each process, summed.
//   - Histograms: the cumulative count and sum, and their increases during the step.
//
// A point is stamped at the end of its step, or at req.To for the last, partial one: never
// later than the range.
func BuildSeries(snaps []metric.Snapshot, req history.MetricsRequest) []history.Series {
	if req.Step <= 0 {
		req.Step = time.Minute
	}
	steps := int(req.To.Sub(req.From)/req.Step) + 1
	if steps > 10_000 {
		steps, req.Step = 10_000, req.To.Sub(req.From)/9_999+1
	}
	policy, err := metric.ParseOriginPolicy(req.Origin)
	if err != nil {
		policy = metric.PreferPrometheus
	}
	pairs := map[[2]string]bool{}
	for i := range snaps {
		pairs[[2]string{snaps[i].Source, snaps[i].Origin}] = true
	}
	chosen := policy.Chosen(pairs)
	order := make([]int, 0, len(snaps))
	for i := range snaps {
		if chosen[snaps[i].Source] == snaps[i].Origin {
			order = append(order, i)
		}
	}
	sort.SliceStable(order, func(a, b int) bool { return snaps[order[a]].Time.Before(snaps[order[b]].Time) })

	selected := func(id string) bool {
		if len(req.Metrics) == 0 {
			return true
		}
		for _, p := range req.Metrics {
			if history.MatchMetric(p, id) {
				return true
			}
		}
		return false
	}
	type stepData struct {
		last        map[snapKey]*metric.Snapshot
		deltas      map[string]float64
		countDeltas map[string]uint64
		sumDeltas   map[string]float64
	}
	data := make([]*stepData, steps)
	prev := map[snapKey]*metric.Snapshot{}
	for _, i := range order {
		sn := &snaps[i]
		k := snapKey{sn.Origin, sn.Instance, sn.Source}
		base := prev[k]
		prev[k] = sn
		if sn.Time.Before(req.From) {
			continue
		}
		b := int(sn.Time.Sub(req.From) / req.Step)
		if b >= steps {
			continue
		}
		d := data[b]
		if d == nil {
			d = &stepData{last: map[snapKey]*metric.Snapshot{}, deltas: map[string]float64{}, countDeltas: map[string]uint64{}, sumDeltas: map[string]float64{}}
			data[b] = d
		}
		d.last[k] = sn
		restarted := base == nil || !base.Start.Equal(sn.Start)
		for id, v := range sn.Counters {
			if !selected(id) {
				continue
			}
			old := uint64(0)
			if !restarted {
				old = base.Counters[id]
			}
			if v < old { // reset without a new Start (a scraped server restarted)
				old = 0
			}
			d.deltas[id] += float64(v - old)
		}
		for id, h := range sn.Histograms {
			if !selected(id) {
				continue
			}
			var old metric.Histogram
			if !restarted {
				old = base.Histograms[id]
			}
			if h.Count < old.Count {
				old = metric.Histogram{}
			}
			d.countDeltas[id] += h.Count - old.Count
			d.sumDeltas[id] += h.Sum - old.Sum
		}
	}

	series := map[string]*history.Series{}
	get := func(id, kind string) *history.Series {
		s := series[id]
		if s == nil {
			s = &history.Series{Metric: id, Kind: kind}
			series[id] = s
		}
		return s
	}
	for b, d := range data {
		if d == nil {
			continue
		}
		start := req.From.Add(req.Step * time.Duration(b))
		t := start.Add(req.Step)
		if t.After(req.To) {
			t = req.To
		}
		if t.Before(start) {
			t = start
		}
		secs := t.Sub(start).Seconds()
		counters, gauges := map[string]float64{}, map[string]float64{}
		hists := map[string]metric.Histogram{}
		for _, sn := range d.last {
			for id, v := range sn.Counters {
				if selected(id) {
					counters[id] += float64(v)
				}
			}
			for id, v := range sn.Gauges {
				if selected(id) {
					gauges[id] += v
				}
			}
			for id, h := range sn.Histograms {
				if selected(id) {
					cur := hists[id]
					cur.Count += h.Count
					cur.Sum += h.Sum
					hists[id] = cur
				}
			}
		}
		for id, v := range counters {
			p := history.Point{Time: t, Value: v, Delta: d.deltas[id]}
			if secs > 0 {
				p.Rate = p.Delta / secs
			}
			s := get(id, "counter")
			s.Points = append(s.Points, p)
		}
		for id, v := range gauges {
			s := get(id, "gauge")
			s.Points = append(s.Points, history.Point{Time: t, Value: v})
		}
		for id, h := range hists {
			s := get(id, "histogram")
			s.Points = append(s.Points, history.Point{Time: t, Count: h.Count, Sum: h.Sum, CountDelta: d.countDeltas[id], SumDelta: d.sumDeltas[id]})
		}
	}
	out := make([]history.Series, 0, len(series))
	for _, s := range series {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Metric < out[j].Metric })
	return out
}
