package livegateway

import (
	"bufio"
	"bytes"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/metric"
	"github.com/mailpulse/mailpulse/shared/poll"
)

// The wire formats, pinned by golden files in testdata (go test -run Golden -update rewrites
// them). Every input is fixed, so nothing needs masking: the log's sequences start at 1 on a
// new server, and times and ids are the events' own.

var goldenTime = time.Date(2026, 11, 21, 10, 15, 2, 123456000, time.UTC)

// goldenEvents: a session (its start, then a recipient with values of every type, keys and
// values Stalwart has no form of: a key of ours, an alias of a Stalwart key, nulls, an object
// that is not an event), text to escape, a delivery attempt sent pretty-printed (the log keeps
// it so), an unknown type. Span ids are text here, as the native API may send them; Stalwart's
// routes send them as numbers.
func goldenEvents() []event.Event {
	mk := func(i int, typ, data string) event.Event {
		return event.Event{ID: fmt.Sprintf("g%d", i), CreatedAt: goldenTime.Add(time.Duration(i) * time.Millisecond), Type: typ,
			Level: event.DefaultLevel(typ), Source: "mx1.example.org", Data: event.Data(data)}
	}
	return []event.Event{
		mk(1, "smtp.connection-start", `{"spanId":"7215384719","remoteIp":"203.0.113.7","localPort":25}`),
		mk(2, "smtp.rcpt-to", `{"spanId":"7215384719","to":["bob@example.org",null],"size":10,"value":0.5,"limit":-3,"nextRetry":"2026-11-21T11:00:00.5+01:00","tls":true,`+
			`"elapsed":1500,"reason":null,"tenant":"acme","ip":"2001:DB8::1","contents":{"not":"an event"},"causedBy":{"type":"store.not-found","data":{"details":"gone","a":1}}}`),
		mk(3, "auth.failed", `{"remoteIp":"203.0.113.7","accountName":"zoë","details":"line one\nline \"two\" \u2028 <tag> & \u0000 😀"}`),
		mk(4, "delivery.attempt-start", "{\n  \"spanId\": \"7215384720\",\n  \"remoteIp\": \"203.0.113.9\",\n  \"to\": [\n    \"carol@example.net\"\n  ]\n}"),
		mk(5, "custom.thing-happened", `{"remoteIp":"203.0.113.7"}`),
	}
}

// goldenSnapshots: two snapshots of one producer (for rates) and one of another.
func goldenSnapshots() []metric.Snapshot {
	hist := metric.NewHistogram(metric.SizeBounds)
	hist.Observe(700)
	hist.Observe(2048)
	var out []metric.Snapshot
	for i, n := range []uint64{100, 150} {
		out = append(out, metric.Snapshot{Source: "mx1.example.org", Origin: metric.OriginEvents, Instance: "p1",
			Time: goldenTime.Add(time.Duration(i*10) * time.Second), Start: goldenTime,
			Counters:   map[string]uint64{"smtp.connection-start": n, "auth.failed": 3},
			Gauges:     map[string]float64{"smtp.active-connections": 4},
			Histograms: map[string]metric.Histogram{"message.size": hist}})
	}
	return append(out, metric.Snapshot{Source: "mx1.example.org", Origin: metric.OriginEvents, Instance: "p2", Time: goldenTime, Start: goldenTime,
		Counters: map[string]uint64{"smtp.connection-start": 1}})
}

// capture reads a stream's blocks as sent (comments included) until count frames of the
// kind until.
func capture(t *testing.T, r *slowReader, until string, count int) []byte {
	t.Helper()
	var out bytes.Buffer
	for count > 0 {
		f, err := readFrame(r.br)
		if err != nil {
			t.Fatalf("stream ended (%v) before %d more %s frames; got:\n%s", err, count, until, out.String())
		}
		out.WriteString(f.raw)
		if f.event == until {
			count--
		}
	}
	return out.Bytes()
}

func TestGoldenEventStreams(t *testing.T) {
	h := start(t, Config{Heartbeat: time.Hour, StalwartBatch: time.Hour}, false)
	h.publishEvents(goldenEvents()...)
	poll.Until(t, "the hub to dispatch the events", func() bool { return h.gw.hub.lastSeq.Load() == 5 })
	resume := func(key string) map[string]string {
		return map[string]string{"Authorization": "Bearer " + key, "Last-Event-ID": "0"}
	}
	for _, tc := range []struct {
		file, path string
		hdr        map[string]string
		until      string
		count      int
	}{
		{"sse/native.txt", "/api/v1/live/events", resume(h.viewer), "event", 5},
		// A key filter: the session's events follow its start, with its keys merged in (0.15;
		// 0.16 sends each event's own keys, as Stalwart's build_trace_events does).
		{"sse/stalwart15-traces.txt", "/api/telemetry/traces/live?remoteIp=203.0.113", resume(h.viewer), "trace", 1},
		{"sse/stalwart16-traces.txt", "/api/live/tracing?remoteIp=203.0.113", resume(h.viewer), "trace", 1},
		{"sse/gap-past-the-end.txt", "/api/v1/live/events", map[string]string{"Authorization": "Bearer " + h.viewer, "Last-Event-ID": "999"}, "gap", 1},
	} {
		r := h.openSlow(tc.path, tc.hdr)
		golden(t, tc.file, capture(t, r, tc.until, tc.count))
		r.close()
	}

	// A stream that lost events is told so after the next one it gets.
	known := h.clients()
	r := h.openSlow("/api/v1/live/events", withKey(h.viewer))
	newClient(t, h, known).dropped.Add(20)
	e := goldenEvents()[4]
	e.ID = "g6"
	h.publishEvents(e)
	golden(t, "sse/dropped.txt", capture(t, r, "dropped", 1))

	// The gateway stops.
	go h.stop()
	golden(t, "sse/shutdown.txt", capture(t, r, "shutdown", 1))
}

func TestGoldenGapOfAPurgedLog(t *testing.T) {
	h := start(t, Config{Heartbeat: time.Hour}, false)
	h.publishEvents(goldenEvents()...)
	st, _ := h.pub.JetStream().Stream(t.Context(), bus.StreamEvents)
	if err := st.Purge(t.Context()); err != nil {
		t.Fatal(err)
	}
	e := goldenEvents()[4]
	e.ID = "g6"
	h.publishEvents(e)
	poll.Until(t, "the hub to dispatch the event", func() bool { return h.gw.hub.lastSeq.Load() == 6 })
	r := h.openSlow("/api/v1/live/events", map[string]string{"Authorization": "Bearer " + h.viewer, "Last-Event-ID": "1"})
	golden(t, "sse/gap-purged.txt", capture(t, r, "event", 1))
}

// A replay selects events by their own time and by the time the log stored them, which is
// now: these events are of now, and their times are masked.
func TestGoldenReplay(t *testing.T) {
	h := start(t, Config{}, false)
	base := time.Now().UTC().Add(-time.Minute)
	evs := goldenEvents()
	for i := range evs {
		evs[i].CreatedAt = base.Add(time.Duration(i) * time.Millisecond)
	}
	h.publishEvents(evs...)
	q := "/api/v1/replay?types=smtp.*,auth.*,delivery.*&start=" + base.Add(-time.Minute).Format(time.RFC3339) + "&end=" + base.Add(time.Minute).Format(time.RFC3339)
	masked := regexp.MustCompile(`"createdAt":"[^"]+"`)
	for _, tc := range []struct{ file, format string }{{"sse/replay.txt", "sse"}, {"replay.ndjson", "ndjson"}} {
		code, body := get(t, h.url+q+"&format="+tc.format, withKey(h.viewer))
		if code != 200 {
			t.Fatalf("%s replay = %d %s", tc.format, code, body)
		}
		golden(t, tc.file, masked.ReplaceAll([]byte(body), []byte(`"createdAt":"(masked)"`)))
	}
}

// The frames that end a stream that failed, as the functions that write them make them.
func TestGoldenErrorFrames(t *testing.T) {
	h := start(t, Config{Hopeless: time.Minute}, false)
	var out bytes.Buffer
	w := bufio.NewWriter(&out)

	// A stream that keeps losing events for the whole hopeless period.
	st := &stream{s: h.gw, w: w, sw: &sseWriter{w: w}, cl: &client{}, fm: formatNative, written: 41}
	st.cl.dropped.Add(3)
	st.hopeless(goldenTime)
	st.cl.dropped.Add(2)
	st.hopeless(goldenTime.Add(time.Minute + time.Second))

	// A resume that failed after event 41 of a range to 50.
	unavailable := fmt.Errorf("read EVENTS after sequence 41: %w: nats: connection closed", bus.ErrUnavailable)
	st.sw.named("error", resumeFailed(unavailable, resumePoint{afterSeq: 10, set: true}, 50, bus.RangeResult{Read: 31, Last: 41, End: 50}))

	// A replay that failed after event 41, in SSE and in NDJSON.
	(&replayWriter{w: w, sw: &sseWriter{w: w}, sse: true, lastSeq: 41}).fail(unavailable)
	(&replayWriter{w: w, sw: &sseWriter{w: w}, lastSeq: 41}).fail(unavailable)
	golden(t, "sse/errors.txt", out.Bytes())
}

func TestGoldenMetrics(t *testing.T) {
	h := start(t, Config{Heartbeat: time.Hour}, false)
	for _, s := range goldenSnapshots() {
		h.publishSnapshot(s)
	}
	poll.Until(t, "the snapshots to be read", func() bool { return h.gw.snaps.updates.Load() == 3 })
	golden(t, "sse/stalwart15-metrics.txt", capture(t, h.openSlow("/api/telemetry/metrics/live?interval=3600", withKey(h.viewer)), "metrics", 1))
	golden(t, "sse/stalwart16-metrics.txt", capture(t, h.openSlow("/api/live/metrics?metrics=smtp.*,message.size&interval=3600", withKey(h.viewer)), "metrics", 1))
	code, body := get(t, h.url+"/metrics/prometheus", withKey(h.viewer))
	if code != 200 {
		t.Fatalf("/metrics/prometheus = %d %s", code, body)
	}
	golden(t, "prometheus.txt", []byte(body))
}

// The history's JSON, as the gateway shapes what an archiver answers.
func TestGoldenHistory(t *testing.T) {
	h := start(t, Config{}, false)
	h.fakeArchiver()
	for _, tc := range []struct{ name, path string }{
		{"events", "/api/v1/events?types=smtp.*&limit=3"},
		{"span", "/api/v1/spans/7215384719"},
		{"span-not-found", "/api/v1/spans/gone"},
		{"metrics-history", "/api/v1/metrics/history?start=2026-11-21T09:00:00Z&end=2026-11-21T11:00:00Z&step=1h"},
		{"stalwart-traces", "/api/telemetry/traces?type=smtp.connection-start"},
		{"stalwart-traces-values", "/api/telemetry/traces?type=smtp.connection-start&values=1"},
		{"stalwart-trace", "/api/telemetry/trace/7215384719"},
		{"stalwart-trace-ids", "/api/telemetry/trace?id=7215384719,gone"},
		{"stalwart-metrics", "/api/telemetry/metrics?after=2026-11-21T09:00:00Z&before=2026-11-21T11:00:00Z"},
	} {
		code, hdr, body := getWithHeader(t, h.url+tc.path, withKey(h.viewer))
		golden(t, "history/"+tc.name+".json", []byte(fmt.Sprintf("%d %s\n%s\n", code, hdr.Get("Content-Type"), body)))
	}
}

// The error frame of a failed resume names the events missed: after the last one sent, to
// the end of the range; a resume by time that read nothing cannot say where it began.
func TestResumeFailedNamesTheMissedEvents(t *testing.T) {
	stalled := fmt.Errorf("read EVENTS: %w", bus.ErrStalled)
	for _, tc := range []struct {
		name           string
		from           resumePoint
		res            bus.RangeResult
		wantFrom, want uint64
	}{
		{"by sequence", resumePoint{afterSeq: 10, set: true}, bus.RangeResult{Read: 5, Last: 15, End: 50}, 16, 50},
		{"by sequence, nothing read", resumePoint{afterSeq: 10, set: true}, bus.RangeResult{Last: 10}, 11, 50},
		{"by time", resumePoint{since: goldenTime, set: true}, bus.RangeResult{Read: 3, Last: 33, End: 50}, 34, 50},
		{"by time, nothing read", resumePoint{since: goldenTime, set: true}, bus.RangeResult{}, 0, 0},
	} {
		e := resumeFailed(stalled, tc.from, 50, tc.res)
		if e.From != tc.wantFrom || e.To != tc.want || e.LastSequence != tc.res.Last || !strings.Contains(e.Error, bus.ErrStalled.Error()) {
			t.Errorf("%s: resumeFailed = %+v, want from %d to %d after %d", tc.name, e, tc.wantFrom, tc.want, tc.res.Last)
		}
	}
}
