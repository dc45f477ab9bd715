package livegateway

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/metric"
	"github.com/mailpulse/mailpulse/shared/poll"
)

func (h *harness) publishSnapshot(s metric.Snapshot) {
	h.t.Helper()
	b, _ := s.Marshal()
	if err := h.pub.Publish(h.t.Context(), bus.Msg{Subject: bus.MetricsSubject(s.Source), ID: s.Instance + s.Time.String(), Data: b}); err != nil {
		h.t.Fatal(err)
	}
}

func TestPrometheusExpositionAndMetricsStream(t *testing.T) {
	h := start(t, Config{}, false)
	t0 := time.Now().Add(-10 * time.Second)
	hist := metric.NewHistogram(metric.SizeBounds)
	hist.Observe(700)
	hist.Observe(2048)
	for i, n := range []uint64{100, 150} {
		h.publishSnapshot(metric.Snapshot{Source: "mx1.example.org", Origin: metric.OriginEvents, Instance: "p1", Time: t0.Add(time.Duration(i*10) * time.Second), Start: t0,
			Counters: map[string]uint64{"smtp.connection-start": n, "auth.failed": 3}, Gauges: map[string]float64{"smtp.active-connections": 4},
			Histograms: map[string]metric.Histogram{"message.size": hist}})
	}
	h.publishSnapshot(metric.Snapshot{Source: "mx1.example.org", Origin: metric.OriginEvents, Instance: "p2", Time: t0, Start: t0,
		Counters: map[string]uint64{"smtp.connection-start": 1}})

	var page string
	poll.Until(t, "the exposition to show the summed counter", func() bool {
		code, body := get(t, h.url+"/metrics/prometheus", withKey(h.viewer))
		if code != 200 {
			t.Fatalf("/metrics/prometheus = %d %s", code, body)
		}
		page = body
		return strings.Contains(body, `smtp_connection_start_total{origin="events",source="mx1.example.org"} 151`)
	})
	for _, want := range []string{
		"# TYPE smtp_connection_start_total counter",
		"# HELP smtp_connection_start_total SMTP connection opened (smtp.connection-start)",
		`smtp_active_connections{origin="events",source="mx1.example.org"} 4`,
		`message_size_bucket{origin="events",source="mx1.example.org",le="500"} 0`,
		`message_size_bucket{origin="events",source="mx1.example.org",le="1000"} 1`,
		`message_size_bucket{origin="events",source="mx1.example.org",le="10000"} 2`,
		`message_size_bucket{origin="events",source="mx1.example.org",le="+Inf"} 2`,
		`message_size_count{origin="events",source="mx1.example.org"} 2`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("exposition lacks %q", want)
		}
	}
	// What promtool check metrics runs.
	problems, err := promlint.New(strings.NewReader(page)).Lint()
	if err != nil {
		t.Fatalf("promlint: %v", err)
	}
	for _, p := range problems {
		if !strings.Contains(p.Text, "unit") { // Stalwart's names carry no unit suffix
			t.Errorf("promlint: %s: %s", p.Metric, p.Text)
		}
	}
	if code, _ := get(t, h.url+"/metrics/prometheus", nil); code != 401 {
		t.Errorf("/metrics/prometheus without a key = %d", code)
	}

	_, tok := get(t, h.url+"/api/token/metrics", withKey(h.viewer))
	c, resp := h.open("/api/live/metrics?token="+tok+"&metrics=smtp.*,message.size&interval=1", nil)
	if c == nil {
		t.Fatalf("metrics stream: %d", resp.StatusCode)
	}
	f := c.next(t, "metrics")
	var items []map[string]any
	if err := json.Unmarshal([]byte(f.data), &items); err != nil {
		t.Fatalf("metrics frame: %s", f.data)
	}
	got := map[string]map[string]any{}
	for _, it := range items {
		got[it["metric"].(string)] = it
	}
	if it := got["smtp.connection-start"]; it == nil || it["@type"] != "Counter" || it["count"].(float64) != 151 || it["rate"].(float64) != 5 {
		t.Errorf("counter item = %v, want count 151 and rate 5/s", it)
	}
	if it := got["message.size"]; it == nil || it["@type"] != "Histogram" || it["count"].(float64) != 2 {
		t.Errorf("histogram item = %v", it)
	}
	if _, ok := got["auth.failed"]; ok {
		t.Error("auth.failed was not asked for")
	}
	c15, _ := h.open("/api/telemetry/metrics/live?metrics=smtp.active-connections&interval=1", withKey(h.viewer))
	if f := c15.next(t, "metrics"); !strings.Contains(f.data, `"type":"gauge"`) || !strings.Contains(f.data, `"id":"smtp.active-connections"`) {
		t.Errorf("0.15 metrics frame = %s", f.data)
	}
	for _, bad := range []string{"interval=0", "interval=abc", "metrics=a**b"} {
		if _, resp := h.open("/api/live/metrics?"+bad, withKey(h.viewer)); resp.StatusCode != 400 {
			t.Errorf("%s: %d, want 400", bad, resp.StatusCode)
		}
	}
}

// A snapshot with a metric Prometheus cannot name (here: an empty name). The scrape fails
// and says why: the histogram used to vanish in silence, and the gauge to panic the gateway.
func TestInvalidMailServerMetricFailsTheScrapeVisibly(t *testing.T) {
	for _, kind := range []string{"histograms", "gauges"} {
		t.Run(kind, func(t *testing.T) {
			h := start(t, Config{}, false)
			value := `{"bounds":[1],"counts":[1,1],"sum":1,"count":1}`
			if kind == "gauges" {
				value = `4`
			}
			snap := `{"source":"mx1.example.org","origin":"events","instance":"p1","time":"2026-11-21T10:00:00Z","start":"2026-11-21T09:00:00Z",` +
				`"counters":{"smtp.connection-start":5},"` + kind + `":{"":` + value + `}}`
			if err := h.pub.Publish(t.Context(), bus.Msg{Subject: bus.MetricsSubject("mx1.example.org"), ID: "bad", Data: []byte(snap)}); err != nil {
				t.Fatal(err)
			}
			poll.Until(t, "the snapshot to be read", func() bool { return h.gw.snaps.updates.Load() == 1 })
			code, body := get(t, h.url+"/metrics/prometheus", withKey(h.viewer))
			if code != 500 || !strings.Contains(body, `"" is not a valid metric name`) {
				t.Fatalf("/metrics/prometheus = %d %s; want 500 naming the invalid metric", code, body)
			}
		})
	}
}

// TestMetricsStreamNeverAddsOrigins: a server both sending its events and scraped has each
// counter twice, once per origin; the live routes show it once, from the origin
// gateway.metrics_origin chooses (its scraped metrics by default), with or without source=.
func TestMetricsStreamNeverAddsOrigins(t *testing.T) {
	for _, tc := range []struct {
		policy       metric.OriginPolicy
		all, onlyMX1 float64
	}{
		{"", 103 + 7, 103},
		{metric.OnlyEvents, 100 + 7, 100},
		{metric.OnlyPrometheus, 103, 103},
	} {
		t.Run(string(tc.policy), func(t *testing.T) {
			h := start(t, Config{MetricsOrigin: tc.policy}, false)
			t0 := time.Now().Add(-5 * time.Second)
			for _, s := range []metric.Snapshot{
				{Source: "mx1", Origin: metric.OriginEvents, Instance: "p1", Time: t0, Start: t0, Counters: map[string]uint64{"smtp.connection-start": 100}},
				{Source: "mx1", Origin: metric.OriginPrometheus, Instance: "scrape", Time: t0, Start: t0, Counters: map[string]uint64{"smtp.connection-start": 103}},
				{Source: "mx2", Origin: metric.OriginEvents, Instance: "p2", Time: t0, Start: t0, Counters: map[string]uint64{"smtp.connection-start": 7}},
			} {
				h.publishSnapshot(s)
			}
			poll.Until(t, "the snapshots to be read", func() bool { return h.gw.snaps.updates.Load() == 3 })
			count := func(query string) float64 {
				c, resp := h.open("/api/live/metrics?metrics=smtp.connection-start&interval=60"+query, withKey(h.viewer))
				if c == nil {
					t.Fatalf("metrics stream: %d", resp.StatusCode)
				}
				var items []map[string]any
				if f := c.next(t, "metrics"); json.Unmarshal([]byte(f.data), &items) != nil || len(items) != 1 {
					t.Fatalf("metrics frame: %s", f.data)
				}
				return items[0]["count"].(float64)
			}
			if got := count(""); got != tc.all {
				t.Errorf("all sources: %v, want %v", got, tc.all)
			}
			if got := count("&source=mx1"); got != tc.onlyMX1 {
				t.Errorf("source=mx1: %v, want %v", got, tc.onlyMX1)
			}
		})
	}
}

// TestStalwart015MetricsUse015Names: WebAdmin's dashboard asks the 0.15 route for
// queue.queue-message and its siblings, which 0.16 renamed (queue.message-queued); the tiles
// read 0. The 0.15 route takes and sends 0.15's names; 0.16's keeps its own.
func TestStalwart015MetricsUse015Names(t *testing.T) {
	h := start(t, Config{}, false)
	t0 := time.Now().Add(-5 * time.Second)
	h.publishSnapshot(metric.Snapshot{Source: "mx1", Origin: metric.OriginEvents, Instance: "p1", Time: t0, Start: t0,
		Counters: map[string]uint64{"queue.message-queued": 7, "queue.authenticated-message-queued": 2, "smtp.connection-start": 9}})
	poll.Until(t, "the snapshot to be read", func() bool { return h.gw.snaps.updates.Load() == 1 })
	items := func(path string) map[string]float64 {
		c, resp := h.open(path, withKey(h.viewer))
		if c == nil {
			t.Fatalf("%s: %d", path, resp.StatusCode)
		}
		var list []map[string]any
		if f := c.next(t, "metrics"); json.Unmarshal([]byte(f.data), &list) != nil {
			t.Fatalf("%s: frame %s", path, f.data)
		}
		out := map[string]float64{}
		for _, it := range list {
			if id, ok := it["id"].(string); ok {
				out[id] = it["value"].(float64)
			} else {
				out[it["metric"].(string)] = it["count"].(float64)
			}
		}
		return out
	}
	got := items("/api/telemetry/metrics/live?interval=3600&metrics=queue.queue-message,queue.queue-message-authenticated,smtp.*")
	if len(got) != 3 || got["queue.queue-message"] != 7 || got["queue.queue-message-authenticated"] != 2 || got["smtp.connection-start"] != 9 {
		t.Errorf("0.15 metrics = %v, want 0.15's names for 0.16's renamed counters", got)
	}
	got = items("/api/live/metrics?interval=3600&metrics=queue.*")
	if len(got) != 2 || got["queue.message-queued"] != 7 {
		t.Errorf("0.16 metrics = %v, want 0.16's names", got)
	}
}

// TestSplitSnapshotsAreShownWhole: a snapshot too large for one message comes in parts; the
// gateway kept only the first (the others were not newer), and lost the rest of the
// series. A snapshot stamped far in the future is ignored: it used to hide every later
// snapshot of its producer until its time came.
func TestSplitSnapshotsAreShownWhole(t *testing.T) {
	h := start(t, Config{}, false)
	t0 := time.Now().Add(-5 * time.Second)
	counters := map[string]uint64{}
	for i := range 300 {
		counters[fmt.Sprintf("group.type-%03d", i)] = uint64(i + 1)
	}
	snap := metric.Snapshot{Source: "mx1", Origin: metric.OriginEvents, Instance: "p1", Time: t0, Start: t0, Counters: counters}
	parts, err := snap.Split(2048)
	if err != nil || len(parts) < 3 {
		t.Fatalf("split: %d parts, %v", len(parts), err)
	}
	future := metric.Snapshot{Source: "mx1", Origin: metric.OriginEvents, Instance: "p1", Time: t0.Add(48 * time.Hour), Start: t0, Counters: map[string]uint64{"group.type-000": 1e9}}
	b, _ := future.Marshal()
	if err := h.pub.Publish(t.Context(), bus.Msg{Subject: bus.MetricsSubject("mx1"), ID: "future", Data: b}); err != nil {
		t.Fatal(err)
	}
	for i, p := range parts {
		if err := h.pub.Publish(t.Context(), bus.Msg{Subject: bus.MetricsSubject("mx1"), ID: fmt.Sprintf("part-%d", i), Data: p}); err != nil {
			t.Fatal(err)
		}
	}
	poll.Until(t, "the whole snapshot to be shown", func() bool { return h.gw.snaps.updates.Load() == 1 })
	c, _ := h.open("/api/live/metrics?interval=3600&metrics=group.*", withKey(h.viewer))
	var items []map[string]any
	if f := c.next(t, "metrics"); json.Unmarshal([]byte(f.data), &items) != nil || len(items) != 300 {
		t.Fatalf("%d items, want the 300 counters of every part", len(items))
	}
	for _, it := range items {
		if it["metric"] == "group.type-000" && it["count"].(float64) != 1 {
			t.Errorf("group.type-000 = %v: the far-future snapshot was shown", it["count"])
		}
	}
}
