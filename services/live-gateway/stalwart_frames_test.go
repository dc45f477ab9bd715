package livegateway

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/poll"
)

// stalwartKeyList reads testdata/stalwart-keys.txt: Stalwart's keys in the order of their ids.
func stalwartKeyList(t testing.TB) []string {
	t.Helper()
	b, err := os.ReadFile("testdata/stalwart-keys.txt")
	if err != nil {
		t.Fatal(err)
	}
	var keys []string
	for _, line := range strings.Split(string(b), "\n") {
		if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
			keys = append(keys, line)
		}
	}
	return keys
}

// The keys Stalwart's routes send are Stalwart's, with Stalwart's ids, and an alias stands
// for one of them.
func TestStalwartKeysAreStalwarts(t *testing.T) {
	keys := stalwartKeyList(t)
	if len(keys) != stalwartKeyCount {
		t.Fatalf("testdata/stalwart-keys.txt has %d keys, want %d", len(keys), stalwartKeyCount)
	}
	isKey := map[string]bool{}
	for id, k := range keys {
		isKey[k] = true
		key, alias, ok := lookupKey(k)
		if !ok || alias || key.name != k || int(key.id) != id {
			t.Errorf("lookupKey(%q) = %+v, alias %v, ok %v; want Stalwart's key %d", k, key, alias, ok, id)
		}
	}
	for _, k := range []string{"user", "username", "login", "account", "error", "errorMessage", "durationMs", "sender", "mailFrom",
		"envelopeFrom", "host", "serverIp", "serverPort", "mailbox", "ip", "clientIp", "peerIp", "sourceIp", "clientPort", "peerPort",
		"sourcePort", "messageSize", "sessionId", "recipient", "recipients", "rcpt", "rcptTo", "envelopeTo", "queue"} {
		key, alias, ok := lookupKey(k)
		if !ok || !alias || isKey[k] || !isKey[key.name] || keys[key.id] != key.name {
			t.Errorf("lookupKey(%q) = %+v, alias %v, ok %v; want an alias of one of Stalwart's keys", k, key, alias, ok)
		}
		if want, _, _ := lookupKey(key.name); want.kind != key.kind {
			t.Errorf("alias %q is of kind %d, its key %q of kind %d", k, key.kind, key.name, want.kind)
		}
	}
	for _, k := range []string{"tenant", "score", "RemoteIp", "remote-ip", "spanID", ""} {
		if key, _, ok := lookupKey(k); ok {
			t.Errorf("lookupKey(%q) = %+v, want no Stalwart key", k, key)
		}
	}
}

// A session whose events carry keys and values Stalwart has no form of (a key of ours, an
// alias, nulls, an object that is not an event, a span id as text, a fractional duration, a
// time with a fraction and an offset), in the wire formats of Stalwart's live routes.
func foreignSession() []event.Event {
	at := time.Date(2026, 11, 21, 10, 15, 2, 987654000, time.UTC)
	mk := func(i int, typ, data string) event.Event {
		return event.Event{ID: fmt.Sprintf("f%d", i), CreatedAt: at.Add(time.Duration(i) * time.Millisecond), Type: typ,
			Level: event.DefaultLevel(typ), Source: "mx1.example.org", Data: event.Data(data)}
	}
	return []event.Event{
		mk(1, "smtp.connection-start", `{"spanId":"7215384719","remoteIp":"203.0.113.7","localPort":25,"tenant":"acme"}`),
		mk(2, "smtp.rcpt-to", `{"spanId":"7215384719","to":["bob@example.org",null],"tenant":"acme","ip":"2001:DB8::1","reason":null,`+
			`"elapsed":1500.7,"nextRetry":"2026-11-21T11:00:00.5+01:00","contents":{"not":"an event"},"delta":-3,`+
			`"causedBy":{"type":"store.not-found","data":{"tenant":"acme","details":"gone","size":null}}}`),
	}
}

// webAdminKeys is the Key enum WebAdmin decodes data into.
func webAdminKeys(t *testing.T) map[string]bool {
	keys := map[string]bool{}
	for _, k := range stalwartKeyList(t) {
		keys[k] = true
	}
	return keys
}

// checkWebAdminEvent decodes an item as WebAdmin does (webadmin src/pages/enterprise/tracing/
// event.rs: Event {type, text?, details?, createdAt: RFC 3339, data: map of Key to Value},
// Value untagged String | Int(u64) | Float(f64) | Bool | Event(SubEvent) | Array) and fails
// where it would fail.
func checkWebAdminEvent(t *testing.T, keys map[string]bool, item map[string]any, sub bool) {
	t.Helper()
	if _, ok := item["type"].(string); !ok {
		t.Fatalf("type %v is not a string: %v", item["type"], item)
	}
	for _, f := range []string{"text", "details"} {
		if v, ok := item[f]; ok && v != nil {
			if _, ok := v.(string); !ok {
				t.Fatalf("%s %v is not a string", f, v)
			}
		}
	}
	if !sub {
		at, _ := item["createdAt"].(string)
		if _, err := time.Parse(time.RFC3339, at); err != nil || !wholeSeconds.MatchString(at) {
			t.Fatalf("createdAt %q: want RFC 3339 in UTC at whole seconds, as Stalwart writes it", at)
		}
	}
	data, ok := item["data"].(map[string]any)
	if !ok {
		t.Fatalf("data %v is not an object", item["data"])
	}
	for k, v := range data {
		if !keys[k] {
			t.Fatalf("data key %q is not one of Stalwart's: WebAdmin drops the batch", k)
		}
		checkWebAdminValue(t, keys, k, v)
	}
}

func checkWebAdminValue(t *testing.T, keys map[string]bool, k string, v any) {
	t.Helper()
	switch v := v.(type) {
	case string, json.Number, bool:
	case []any:
		for _, e := range v {
			checkWebAdminValue(t, keys, k, e)
		}
	case map[string]any:
		checkWebAdminEvent(t, keys, v, true)
	default:
		t.Fatalf("%s = %v (%T): WebAdmin cannot decode it and drops the batch", k, v, v)
	}
}

var wholeSeconds = regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$`)

// checkTraceEvent checks a 0.16 TraceEvent as Stalwart's registry types it and the WebUI
// reads it (webui src/features/tracing/types.ts): keyValues an array of {key, value}, value
// one of Stalwart's TraceValue variants.
func checkTraceEvent(t *testing.T, keys map[string]bool, ev map[string]any) map[string]map[string]any {
	t.Helper()
	if _, ok := ev["event"].(string); !ok {
		t.Fatalf("event %v is not a string", ev["event"])
	}
	if at, _ := ev["timestamp"].(string); !wholeSeconds.MatchString(at) {
		t.Fatalf("timestamp %q: want a UTCDateTime, whole seconds", at)
	}
	return checkKeyValues(t, keys, ev["keyValues"])
}

func checkKeyValues(t *testing.T, keys map[string]bool, kvs any) map[string]map[string]any {
	t.Helper()
	list, ok := kvs.([]any)
	if !ok {
		t.Fatalf("keyValues %v is not an array", kvs)
	}
	out := map[string]map[string]any{}
	for _, kv := range list {
		kv, _ := kv.(map[string]any)
		k, _ := kv["key"].(string)
		if !keys[k] {
			t.Fatalf("key %q is not one of Stalwart's", k)
		}
		if _, dup := out[k]; dup {
			t.Fatalf("key %q twice", k)
		}
		v, _ := kv["value"].(map[string]any)
		checkTraceValue(t, keys, k, v)
		out[k] = v
	}
	return out
}

func checkTraceValue(t *testing.T, keys map[string]bool, k string, v map[string]any) {
	t.Helper()
	var ok bool
	switch v["@type"] {
	case "String", "IpAddr":
		_, ok = v["value"].(string)
	case "UTCDateTime":
		s, _ := v["value"].(string)
		ok = wholeSeconds.MatchString(s)
	case "UnsignedInt", "Duration":
		n, isNum := v["value"].(json.Number)
		ok = isNum && regexp.MustCompile(`^\d+$`).MatchString(string(n))
	case "Integer":
		n, isNum := v["value"].(json.Number)
		ok = isNum && regexp.MustCompile(`^-?\d+$`).MatchString(string(n))
	case "Float":
		_, ok = v["value"].(json.Number)
	case "Boolean":
		_, ok = v["value"].(bool)
	case "List":
		var list []any
		if list, ok = v["value"].([]any); ok {
			for _, e := range list {
				e, _ := e.(map[string]any)
				checkTraceValue(t, keys, k, e)
			}
		}
	case "Event":
		_, ok = v["event"].(string)
		checkKeyValues(t, keys, v["value"])
	}
	if !ok {
		t.Fatalf("%s = %v: not one of Stalwart's TraceValues", k, v)
	}
}

func decodeJSON(t *testing.T, s string, v any) {
	t.Helper()
	d := json.NewDecoder(strings.NewReader(s))
	d.UseNumber()
	if err := d.Decode(v); err != nil {
		t.Fatalf("%v: %s", err, s)
	}
}

// Stalwart's live routes send Stalwart's keys and value types only, decodable by WebAdmin
// (0.15) and the WebUI (0.16): keys of ours mapped or left out, no null, IPs, durations and
// timestamps typed, times at whole seconds, span ids as numbers (#8.9).
func TestStalwartLiveSendsOnlyStalwartKeysAndTypes(t *testing.T) {
	h := start(t, Config{Heartbeat: time.Hour}, false)
	keys := webAdminKeys(t)
	h.publishEvents(foreignSession()...)
	poll.Until(t, "the hub to dispatch the events", func() bool { return h.gw.hub.lastSeq.Load() == 2 })
	hdr := map[string]string{"Authorization": "Bearer " + h.viewer, "Last-Event-ID": "0"}

	// 0.15, with a key filter, so that the span start's keys are merged in.
	c15, resp := h.open("/api/telemetry/traces/live?remote-ip=203.0.113", hdr)
	if c15 == nil {
		t.Fatalf("0.15 stream: %d", resp.StatusCode)
	}
	var items []map[string]any
	decodeJSON(t, c15.next(t, "trace").data, &items)
	if len(items) != 2 {
		t.Fatalf("0.15: %d items, want 2", len(items))
	}
	for _, it := range items {
		checkWebAdminEvent(t, keys, it, false)
	}
	rcpt := items[1]["data"].(map[string]any)
	for k, want := range map[string]any{
		"spanId":    json.Number("7215384719"),
		"remoteIp":  "2001:db8::1", // the event's alias wins over the span's remoteIp
		"localPort": json.Number("25"),
		"elapsed":   json.Number("1500"),
		"nextRetry": "2026-11-21T10:00:00Z",
	} {
		if got := rcpt[k]; fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("0.15 data %s = %v, want %v", k, got, want)
		}
	}
	if to := rcpt["to"].([]any); len(to) != 1 {
		t.Errorf("0.15 to = %v, want the one address (null left out)", to)
	}
	for _, k := range []string{"tenant", "reason", "contents", "delta", "ip"} {
		if v, ok := rcpt[k]; ok {
			t.Errorf("0.15 data %s = %v, want it left out", k, v)
		}
	}
	if d := items[0]["details"]; d == nil || d == "" {
		t.Errorf("0.15 item has no details: %v", items[0])
	}

	// 0.16: the event's own keys, tagged.
	c16, resp := h.open("/api/live/tracing", hdr)
	if c16 == nil {
		t.Fatalf("0.16 stream: %d", resp.StatusCode)
	}
	var evs []map[string]any
	decodeJSON(t, c16.next(t, "trace").data, &evs)
	if len(evs) != 2 {
		t.Fatalf("0.16: %d events, want 2", len(evs))
	}
	start := checkTraceEvent(t, keys, evs[0])
	kv := checkTraceEvent(t, keys, evs[1])
	for k, want := range map[string]string{
		"spanId":    `{"@type":"UnsignedInt","value":7215384719}`,
		"remoteIp":  `{"@type":"IpAddr","value":"2001:db8::1"}`,
		"elapsed":   `{"@type":"Duration","value":1500}`,
		"nextRetry": `{"@type":"UTCDateTime","value":"2026-11-21T10:00:00Z"}`,
		"to":        `{"@type":"List","value":[{"@type":"String","value":"bob@example.org"}]}`,
		"causedBy":  `{"@type":"Event","event":"store.not-found","value":[{"key":"details","value":{"@type":"String","value":"gone"}}]}`,
	} {
		if got, _ := json.Marshal(kv[k]); string(got) != want {
			t.Errorf("0.16 %s = %s, want %s", k, got, want)
		}
	}
	if got, _ := json.Marshal(start["remoteIp"]); string(got) != `{"@type":"IpAddr","value":"203.0.113.7"}` {
		t.Errorf("0.16 span start remoteIp = %s", got)
	}
	if _, ok := kv["localPort"]; ok {
		t.Error("0.16 merged the span start's keys into the event; Stalwart's build_trace_events sends the event's own")
	}
	if evs[1]["timestamp"] != "2026-11-21T10:15:02Z" {
		t.Errorf("0.16 timestamp = %v, want whole seconds", evs[1]["timestamp"])
	}
}

// The simulator's span ids reach Stalwart's routes as numbers.
func TestStalwartFramesOfNumericSpanIDs(t *testing.T) {
	data := func(span string) []byte {
		e := event.Event{ID: "n", CreatedAt: goldenTime, Type: "smtp.ehlo", Level: event.Info, Data: event.Data(`{"spanId":` + span + `}`)}
		return e.AppendJSON(nil)
	}
	for _, tc := range []struct{ span, want15, want16 string }{
		{`7215384719`, `"spanId":7215384719`, `{"@type":"UnsignedInt","value":7215384719}`},
		{`"7215384719"`, `"spanId":7215384719`, `{"@type":"UnsignedInt","value":7215384719}`},
		{`"18446744073709551615"`, `"spanId":18446744073709551615`, `{"@type":"UnsignedInt","value":18446744073709551615}`},
		// Not a u64: sent as the text it is.
		{`"18446744073709551616"`, `"spanId":"18446744073709551616"`, `{"@type":"String","value":"18446744073709551616"}`},
		{`"007"`, `"spanId":"007"`, `{"@type":"String","value":"007"}`},
		{`"s1"`, `"spanId":"s1"`, `{"@type":"String","value":"s1"}`},
	} {
		f := frame{seq: 1, data: data(tc.span)}
		b15, _ := appendStalwart15(nil, f, nil)
		b16, _ := appendStalwart16(nil, f)
		if !bytes.Contains(b15, []byte(tc.want15)) || !bytes.Contains(b16, []byte(tc.want16)) {
			t.Errorf("span id %s:\n0.15 %s\n0.16 %s\nwant %s and %s", tc.span, b15, b16, tc.want15, tc.want16)
		}
	}
}

// BenchmarkStalwartFrames measures the per-event cost of Stalwart's live formats: an event
// of a session, with its span start to merge (0.15) or not (0.16).
func BenchmarkStalwartFrames(b *testing.B) {
	evs := goldenEvents()
	f := frame{seq: 2, typ: evs[1].Type, data: evs[1].AppendJSON(nil), spanStart: evs[0].AppendJSON(nil)}
	for _, fm := range []format{formatStalwart15, formatStalwart16} {
		b.Run(fm.String(), func(b *testing.B) {
			sw := &sseWriter{w: bufio.NewWriter(io.Discard), fm: fm}
			b.ReportAllocs()
			for b.Loop() {
				sw.event(f)
				if sw.count >= 100 {
					sw.flushBatch()
				}
			}
		})
	}
}
