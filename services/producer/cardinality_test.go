package producer_test

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpulse/mailpulse/services/producer"
	"github.com/mailpulse/mailpulse/shared/broker/brokertest"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/metric"
)

// postTypes sends one event of each of n distinct types from source, in batches.
func (h *harness) postTypes(source string, n int) {
	h.t.Helper()
	for from := 0; from < n; from += 10_000 {
		var b strings.Builder
		for i := from; i < min(from+10_000, n); i++ {
			fmt.Fprintf(&b, `{"type":"custom.type-%06d","source":%q}`+"\n", i, source)
		}
		if r := h.post("/api/v1/events", b.String(), h.bearer()); r.Status != 202 {
			h.t.Fatalf("post types: %+v", r)
		}
	}
}

// latestSnapshot reads the snapshots of a source until one is as wanted, and returns it
// with the sizes of its message(s).
func latestSnapshot(t *testing.T, js jetstream.JetStream, source string, want func(metric.Snapshot) bool) (metric.Snapshot, []int) {
	t.Helper()
	cons, err := js.OrderedConsumer(t.Context(), bus.StreamMetrics, jetstream.OrderedConsumerConfig{FilterSubjects: []string{bus.MetricsSubject(source)}})
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(20 * time.Second)
	var parts []metric.Snapshot
	var sizes []int
	for time.Now().Before(deadline) {
		msg, err := cons.Next(jetstream.FetchMaxWait(time.Second))
		if err != nil {
			continue
		}
		snap, err := metric.Unmarshal(msg.Data())
		if err != nil {
			t.Fatal(err)
		}
		if snap.Part <= 1 {
			parts, sizes = parts[:0], sizes[:0]
		}
		parts, sizes = append(parts, snap), append(sizes, len(msg.Data()))
		if merged := metric.Merge(parts); len(merged) == 1 && want(merged[0]) {
			return merged[0], sizes
		}
	}
	t.Fatalf("no snapshot of %s as wanted", source)
	return metric.Snapshot{}, nil
}

func (h *harness) ownMetrics() string {
	h.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, h.url+"/metrics", nil)
	req.Header.Set("Authorization", "Bearer "+h.viewer)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		h.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return string(b)
}

// Issue 9 #7: 100,000 distinct types from one source made a 1.7 MB snapshot every 10 s and
// a 12.9 MB /metrics/prometheus. The types counted per source are bounded; the others are
// counted under _overflow, and the limit shows in the producer's own metrics.
func TestCardinalityIsBounded(t *testing.T) {
	h := start(t, producer.Config{Metrics: producer.Metrics{Interval: time.Second}}, false)
	h.postTypes("mx1", 100_000)
	snap, sizes := latestSnapshot(t, h.js, "mx1", func(s metric.Snapshot) bool { return s.Counters["_overflow"] >= 99_000 })
	if n := len(snap.Counters); n != 1001 {
		t.Errorf("%d counters in the snapshot, want 1000 types and _overflow", n)
	}
	if n := snap.Counters["_overflow"]; n != 99_000 {
		t.Errorf("_overflow = %d, want the 99,000 events of types past the limit", n)
	}
	if len(sizes) != 1 || sizes[0] > 64<<10 {
		t.Errorf("snapshot messages of %v bytes, want one under 64 KiB", sizes)
	}
	body := h.ownMetrics()
	for _, want := range []string{
		`mailpulse_producer_metrics_overflow_total{limit="max_types"} 99000`,
		`mailpulse_producer_metrics_overflow_total{limit="max_sources"} 0`,
		`mailpulse_producer_snapshot_parts_total 0`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}

func TestSourcesAndSeriesAreBounded(t *testing.T) {
	h := start(t, producer.Config{Metrics: producer.Metrics{Interval: time.Second, MaxSources: 3, MaxTypes: 50, MaxSeries: 120}}, false)
	for i := range 5 {
		h.postTypes(fmt.Sprintf("mx%d", i), 60)
	}
	// mx0: 50 types and _overflow (51 series); mx1 the same (102); the series limit (120)
	// stops mx2 at 18 types and its _overflow; mx3 and mx4 are counted under the source
	// _overflow, whose types are all past the series limit.
	for src, want := range map[string]struct{ counters, overflow int }{"mx0": {51, 10}, "mx1": {51, 10}, "mx2": {19, 42}, "_overflow": {1, 120}} {
		snap, _ := latestSnapshot(t, h.js, src, func(s metric.Snapshot) bool { return s.Counters["_overflow"] >= uint64(want.overflow) })
		if len(snap.Counters) != want.counters || snap.Counters["_overflow"] != uint64(want.overflow) {
			t.Errorf("%s: %d counters, _overflow %d; want %d and %d", src, len(snap.Counters), snap.Counters["_overflow"], want.counters, want.overflow)
		}
	}
	body := h.ownMetrics()
	for _, want := range []string{
		`mailpulse_producer_metrics_overflow_total{limit="max_sources"} 120`,
		`mailpulse_producer_metrics_overflow_total{limit="max_types"} 20`,
		`mailpulse_producer_metrics_overflow_total{limit="max_series"} 162`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if _, err := producer.New(producer.Config{Addr: "127.0.0.1:0", Metrics: producer.Metrics{MaxTypes: -1}}, producer.Deps{}); err == nil || !strings.Contains(err.Error(), "metrics.max_types") {
		t.Errorf("New(max_types -1) = %v, want it refused by name", err)
	}
}

// Issue 9 #7: on a NATS with the default 1 MiB max payload, a larger snapshot failed on
// every interval, for ever. It is published in parts, each within the server's limit, that
// put back together give the whole snapshot.
func TestSnapshotLargerThanMaxPayloadIsSplit(t *testing.T) {
	h := startOn(t, producer.Config{Metrics: producer.Metrics{Interval: time.Second, MaxTypes: 20_000}}, brokertest.StartMaxPayload(t, 64<<10))
	h.postTypes("mx1", 10_000)
	snap, sizes := latestSnapshot(t, h.js, "mx1", func(s metric.Snapshot) bool { return len(s.Counters) == 10_000 })
	if len(sizes) < 3 {
		t.Errorf("snapshot in %d messages, want several", len(sizes))
	}
	for i, n := range sizes {
		if n > 64<<10 {
			t.Errorf("part %d is %d bytes, over the server's 64 KiB", i+1, n)
		}
	}
	if len(snap.Counters) != 10_000 || snap.Counters["custom.type-000000"] != 1 || snap.Counters["custom.type-009999"] != 1 {
		t.Errorf("merged snapshot: %d counters, want the 10,000 types", len(snap.Counters))
	}
	if body := h.ownMetrics(); strings.Contains(body, "mailpulse_producer_snapshot_parts_total 0\n") {
		t.Error("mailpulse_producer_snapshot_parts_total is 0 after a split snapshot")
	}
}
