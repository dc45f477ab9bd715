package archiver

import (
	"context"
	"encoding/json"
	"sort"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/mailpulse/mailpulse/shared/history"
	"github.com/mailpulse/mailpulse/shared/metric"
)

// maxSnapshots bounds the snapshots one series request reads.
const maxSnapshots = 200_000

func (s *Service) answerMetrics(ctx context.Context, m *nats.Msg) {
	start := time.Now()
	var req history.MetricsRequest
	var reply history.MetricsReply
	if err := json.Unmarshal(m.Data, &req); err != nil {
		reply.Error = "request: " + err.Error()
	} else {
		qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		snaps, err := s.st.Snapshots(qctx, req.From, req.To, req.Source, maxSnapshots)
		cancel()
		if err != nil {
			reply.Error = err.Error()
		} else {
			reply.Series = BuildSeries(snaps, req)
		}
	}
	respond(m, reply)
	s.metrics.querySeconds.WithLabelValues("metrics").Observe(time.Since(start).Seconds())
}

// BuildSeries turns snapshots into one series per selected metric: for every step, each
// producer instance's (and scrape's) last snapshot of the step, summed; counters also get
// their delta and rate (a counter that went down was reset: its delta is its new value).
func BuildSeries(snaps []metric.Snapshot, req history.MetricsRequest) []history.Series {
	if req.Step <= 0 {
		req.Step = time.Minute
	}
	steps := int(req.To.Sub(req.From)/req.Step) + 1
	if steps > 10_000 {
		steps, req.Step = 10_000, req.To.Sub(req.From)/9_999+1
	}
	type key struct{ origin, instance, source string }
	last := make([]map[key]*metric.Snapshot, steps)
	for i := range snaps {
		sn := &snaps[i]
		b := int(sn.Time.Sub(req.From) / req.Step)
		if b < 0 || b >= steps {
			continue
		}
		if last[b] == nil {
			last[b] = map[key]*metric.Snapshot{}
		}
		k := key{sn.Origin, sn.Instance, sn.Source}
		if cur := last[b][k]; cur == nil || !sn.Time.Before(cur.Time) {
			last[b][k] = sn
		}
	}
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
	series := map[string]*history.Series{}
	get := func(id, kind string) *history.Series {
		s := series[id]
		if s == nil {
			s = &history.Series{Metric: id, Kind: kind}
			series[id] = s
		}
		return s
	}
	prev := map[string]float64{}
	for b := 0; b < steps; b++ {
		if last[b] == nil {
			continue
		}
		t := req.From.Add(req.Step * time.Duration(b+1))
		counters, gauges := map[string]float64{}, map[string]float64{}
		hists := map[string]metric.Histogram{}
		for _, sn := range last[b] {
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
			p := history.Point{Time: t, Value: v}
			if old, ok := prev[id]; ok {
				if p.Delta = v - old; p.Delta < 0 {
					p.Delta = v
				}
				p.Rate = p.Delta / req.Step.Seconds()
			}
			prev[id] = v
			s := get(id, "counter")
			s.Points = append(s.Points, p)
		}
		for id, v := range gauges {
			s := get(id, "gauge")
			s.Points = append(s.Points, history.Point{Time: t, Value: v})
		}
		for id, h := range hists {
			s := get(id, "histogram")
			s.Points = append(s.Points, history.Point{Time: t, Count: h.Count, Sum: h.Sum})
		}
	}
	out := make([]history.Series, 0, len(series))
	for _, s := range series {
		out = append(out, *s)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Metric < out[j].Metric })
	return out
}
