package livegateway

import (
	"bufio"
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/mailpulse/mailpulse/shared/event"
)

// FuzzFrames feeds arbitrary text (control characters, quotes, invalid UTF-8, line breaks)
// into events' types, keys and values, and arbitrary JSON as their data, through the
// native, Stalwart 0.15 and 0.16 writers and the named frames. Every frame must keep the SSE
// framing (each line a field, one data line per frame) and carry valid JSON, and Stalwart's
// frames must hold only what Stalwart's clients decode: WebAdmin's closed set of keys and
// its values (no null), the registry's TraceValues, times at whole seconds.
// The seed corpus is in testdata/fuzz/FuzzFrames.
func FuzzFrames(f *testing.F) {
	f.Add("smtp.rcpt-to", "remoteIp", "203.0.113.7", []byte(`{"to":["b@example.org"],"size":10}`))
	f.Add("smtp.rcpt-to", "nextRetry", "2026-11-21T10:00:00.5+01:00", []byte(`{"spanId":"18446744073709551616","elapsed":-1,"ip":"::1%eth0","tenant":{}}`))
	keys := map[string]bool{}
	for _, k := range stalwartKeyList(f) {
		keys[k] = true
	}
	f.Fuzz(func(t *testing.T, typ, key, value string, rawData []byte) {
		data := fuzzData(key, value, rawData)
		e := event.Event{ID: "id-" + value, CreatedAt: time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC), Type: typ, Level: event.Info, Source: value, Data: data}
		start := event.Event{ID: "start", CreatedAt: e.CreatedAt, Type: "smtp.connection-start", Level: event.Info, Data: fuzzData(value, key, nil)}
		fr := frame{seq: 7, typ: typ, data: e.AppendJSON(nil), spanStart: start.AppendJSON(nil)}
		for _, fm := range []format{formatNative, formatStalwart15, formatStalwart16} {
			var out bytes.Buffer
			w := bufio.NewWriter(&out)
			sw := &sseWriter{w: w, fm: fm}
			sw.event(fr)
			sw.event(fr)
			sw.flushBatch()
			sw.named("gap", gapData{Reason: value, From: 1, To: 2})
			sw.named("error", errorData{Error: value + key, LastSequence: 3})
			sw.named("shutdown", shutdownData{Reason: typ})
			_ = w.Flush()
			items := checkFrames(t, fm, out.String())
			if fm == formatStalwart15 && utf8.ValidString(typ) {
				if _, known := event.Known().Lookup(typ); !known && items[0]["text"] != typ {
					t.Fatalf("0.15 text = %q, want the type %q", items[0]["text"], typ)
				}
			}
			if fm != formatNative {
				checkStalwartItems(t, fm, keys, out.String())
			}
		}
	})
}

// fuzzData is a data object holding key: value in several shapes, or rawData when it is a
// JSON object (whitespace and all, as the log may hold it).
func fuzzData(key, value string, rawData []byte) event.Data {
	var obj map[string]any
	if json.Unmarshal(rawData, &obj) == nil && obj != nil {
		return event.Data(rawData)
	}
	b, _ := json.MarshalIndent(map[string]any{
		key:        value,
		"list":     []any{value, 1.5, -2, true, nil},
		"to":       []any{value, 1.5, -2, true, nil, map[string]any{key: value}},
		"nested":   map[string]any{"type": value, "data": map[string]any{key: value}},
		"causedBy": map[string]any{"type": value, "data": map[string]any{key: value, "causedBy": map[string]any{"type": key}}},
	}, "", "\n")
	return event.Data(b)
}

// checkStalwartItems decodes the items of a stream's trace frame as Stalwart's clients do.
func checkStalwartItems(t *testing.T, fm format, keys map[string]bool, stream string) {
	t.Helper()
	for _, line := range strings.Split(stream, "\n") {
		d, ok := strings.CutPrefix(line, "data: ")
		if !ok || !strings.HasPrefix(d, "[") {
			continue
		}
		var items []map[string]any
		decodeJSON(t, d, &items)
		for _, it := range items {
			if fm == formatStalwart15 {
				checkWebAdminEvent(t, keys, it, false)
			} else {
				checkTraceEvent(t, keys, it)
			}
		}
		return
	}
	t.Fatalf("%s: no trace frame in %q", fm, stream)
}

// checkFrames checks a stream's framing and JSON, and returns the first trace frame's items.
func checkFrames(t *testing.T, fm format, stream string) []map[string]any {
	t.Helper()
	if !strings.HasSuffix(stream, "\n\n") {
		t.Fatalf("%s: the stream does not end with a blank line:\n%q", fm, stream)
	}
	var items []map[string]any
	frames := strings.Split(strings.TrimSuffix(stream, "\n\n"), "\n\n")
	if want := 5; fm == formatNative && len(frames) != want || fm != formatNative && len(frames) != 4 {
		t.Fatalf("%s: %d frames:\n%q", fm, len(frames), stream)
	}
	for _, frame := range frames {
		data := 0
		for _, line := range strings.Split(frame, "\n") {
			switch {
			case strings.ContainsRune(line, '\r'):
				t.Fatalf("%s: a carriage return in %q", fm, line)
			case strings.HasPrefix(line, "data: "):
				data++
				d := []byte(line[len("data: "):])
				if !json.Valid(d) {
					t.Fatalf("%s: data is not JSON: %q", fm, d)
				}
				if items == nil && fm != formatNative && d[0] == '[' {
					if err := json.Unmarshal(d, &items); err != nil || len(items) != 2 {
						t.Fatalf("%s: trace frame %q: %v", fm, d, err)
					}
				}
			case strings.HasPrefix(line, "id: "), strings.HasPrefix(line, "event: "):
			default:
				t.Fatalf("%s: a line that is not a field: %q in frame %q", fm, line, frame)
			}
		}
		if data != 1 {
			t.Fatalf("%s: %d data lines in frame %q", fm, data, frame)
		}
	}
	return items
}
