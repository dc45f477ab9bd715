package livegateway

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/mailpulse/mailpulse/shared/debtest"
	"github.com/mailpulse/mailpulse/shared/metric"
	"github.com/mailpulse/mailpulse/shared/poll"
)

// publishEveryKind publishes a snapshot with a metric of every kind the exposition has:
// counters, the gauges named *.count by Stalwart, a gauge of another name, and histograms.
func (h *harness) publishEveryKind() {
	h.t.Helper()
	t0 := time.Now().Add(-5 * time.Second)
	hist := metric.NewHistogram(metric.MediumBounds)
	hist.Observe(300)
	hist.Observe(7000)
	h.publishSnapshot(metric.Snapshot{Source: "mx1.example.org", Origin: metric.OriginEvents, Instance: "p1", Time: t0, Start: t0,
		Counters:   map[string]uint64{"smtp.connection-start": 5, "queue.message-queued": 2, "auth.failed": 1, "_overflow": 4}, // _overflow: events past the projection's caps
		Gauges:     map[string]float64{"queue.count": 3, "user.count": 10, "domain.count": 2, "server.memory": 1 << 20, "smtp.active-connections": 1},
		Histograms: map[string]metric.Histogram{"delivery.attempt-time": hist}})
	poll.Until(h.t, "the snapshot to be read", func() bool { return h.gw.snaps.updates.Load() == 1 })
}

// TestExpositionPassesPromtool runs Prometheus' own checker (Debian's prometheus package) on
// the exposition: queue_count used to fail it ("non-histogram and non-summary metrics should
// not have _count suffix").
func TestExpositionPassesPromtool(t *testing.T) {
	promtool := debtest.Command(t, "promtool", "prometheus")
	h := start(t, Config{}, false)
	h.publishEveryKind()
	code, body := get(t, h.url+"/metrics/prometheus", withKey(h.viewer))
	if code != 200 {
		t.Fatalf("/metrics/prometheus = %d %s", code, body)
	}
	for _, want := range []string{"queue_messages{", "users{", "domains{", "smtp_connection_start_total{", `delivery_attempt_time_bucket{origin="events",source="mx1.example.org",le="500"} 1`} {
		if !strings.Contains(body, want) {
			t.Errorf("exposition lacks %q:\n%s", want, body)
		}
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(body)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil || out.Len() > 0 {
		t.Errorf("promtool check metrics: %v\n%s\non:\n%s", err, out.String(), body)
	}
}

// TestExpositionWithStalwartNames: names=stalwart (or gateway.prometheus_names) gives the names
// of Stalwart's exporter, so that dashboards built on it work unchanged, with buckets that
// are cumulative (Stalwart's are per bucket).
func TestExpositionWithStalwartNames(t *testing.T) {
	for _, tc := range []struct {
		cfg   Config
		query string
	}{{Config{}, "?names=stalwart"}, {Config{PrometheusNames: namesStalwart}, ""}} {
		h := start(t, tc.cfg, false)
		h.publishEveryKind()
		code, body := get(t, h.url+"/metrics/prometheus"+tc.query, withKey(h.viewer))
		if code != 200 {
			t.Fatalf("/metrics/prometheus%s = %d %s", tc.query, code, body)
		}
		for _, want := range []string{
			`smtp_connection_start{source="mx1.example.org"} 5`,
			`queue_count{source="mx1.example.org"} 3`,
			`delivery_attempt_time_bucket{source="mx1.example.org",le="500"} 1`,
			`delivery_attempt_time_bucket{source="mx1.example.org",le="10000"} 2`,
			`delivery_attempt_time_count{source="mx1.example.org"} 2`,
		} {
			if !strings.Contains(body, want) {
				t.Errorf("%+v%s: exposition lacks %q:\n%s", tc.cfg, tc.query, want, body)
			}
		}
		if strings.Contains(body, "_total") || strings.Contains(body, "origin=") {
			t.Errorf("Stalwart names with _total or an origin label:\n%s", body)
		}
	}
	h := start(t, Config{}, false)
	if code, _ := get(t, h.url+"/metrics/prometheus?names=grafana", withKey(h.viewer)); code != 400 {
		t.Errorf("names=grafana: %d, want 400", code)
	}
}
