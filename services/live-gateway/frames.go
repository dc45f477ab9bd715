package livegateway

import (
	"bufio"
	"bytes"
	"encoding/json"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/tidwall/gjson"

	"github.com/mailpulse/mailpulse/shared/event"
)

// The SSE frames of every stream. Events are forwarded as the log holds them (native) or
// re-shaped without decoding them (Stalwart's formats, from gjson's raw values); every
// other frame's data is a struct encoded by encoding/json, never text quoted by hand.

type format int

const (
	formatNative     format = iota // one frame per event, id = stream sequence
	formatStalwart15               // Stalwart 0.15: event: trace, JSON array of {text, details, createdAt, type, data}
	formatStalwart16               // Stalwart 0.16: event: ping first, event: trace, JSON array of TraceEvent
)

func (f format) String() string {
	return [...]string{"native", "stalwart-0.15", "stalwart-0.16"}[f]
}

// The data of the named frames.
type (
	// gapData: events of the log the stream will never get (the log dropped them, or the
	// resume point is past its end), From to To inclusive.
	gapData struct {
		Reason       string `json:"reason"`
		From         uint64 `json:"from,omitempty"`
		To           uint64 `json:"to,omitempty"`
		LastSequence uint64 `json:"lastSequence,omitempty"`
	}
	// droppedData: events a slow stream lost since the last report, and in all.
	droppedData struct {
		Dropped uint64 `json:"dropped"`
		Total   uint64 `json:"total"`
	}
	// errorData ends a stream that failed. LastSequence is the last event it delivered (the
	// Last-Event-ID to resume from); From and To, when known, the events it missed.
	errorData struct {
		Error        string `json:"error"`
		From         uint64 `json:"from,omitempty"`
		To           uint64 `json:"to,omitempty"`
		LastSequence uint64 `json:"lastSequence"`
	}
	shutdownData struct {
		Reason string `json:"reason"`
	}
	// pingData: Stalwart 0.16's heartbeat, with its interval in milliseconds.
	pingData struct {
		Interval int64 `json:"interval"`
	}
	// endData ends a replay that read its whole range.
	endData struct {
		Events int `json:"events"`
	}
)

// sseWriter writes frames of one format; Stalwart formats gather events into one frame.
// Write errors are kept in err (the first one) and end the stream at its next check.
type sseWriter struct {
	w       *bufio.Writer
	fm      format
	items   []byte // the JSON array being gathered (Stalwart formats)
	count   int
	lastSeq uint64
	touched bool // something was written since the last heartbeat tick
	err     error
	descs   map[string][]byte // JSON of 0.15 descriptions by type, so each is encoded once
	scratch bytes.Buffer      // compaction of data that holds line breaks
}

func (sw *sseWriter) raw(s string) {
	if _, err := sw.w.WriteString(s); err != nil && sw.err == nil {
		sw.err = err
	}
	sw.touched = true
}

func (sw *sseWriter) write(b []byte) {
	if _, err := sw.w.Write(b); err != nil && sw.err == nil {
		sw.err = err
	}
}

func (sw *sseWriter) idle() bool { return !sw.touched }

func (sw *sseWriter) comment(s string) { sw.raw(": " + s + "\n\n") }

// named writes a frame whose data is v in JSON.
func (sw *sseWriter) named(name string, v any) {
	b, err := json.Marshal(v)
	if err != nil { // the frame types above always encode
		b, _ = json.Marshal(errorData{Error: "encode " + name + " frame: " + err.Error()})
	}
	sw.namedJSON(name, b)
}

// namedJSON writes a frame whose data is already JSON.
func (sw *sseWriter) namedJSON(name string, data []byte) {
	sw.raw("event: " + name + "\ndata: ")
	sw.data(data)
	sw.raw("\n\n")
}

// data writes a frame's data on one line. JSON may hold line breaks between its tokens
// (the log keeps events as they were sent): they would end the data line, so such data is
// compacted first. Looking for them is the only cost on the hot path.
func (sw *sseWriter) data(b []byte) {
	if bytes.IndexByte(b, '\n') >= 0 || bytes.IndexByte(b, '\r') >= 0 {
		b = oneLine(&sw.scratch, b)
	}
	sw.write(b)
}

// oneLine returns JSON without line breaks: compacted, or, if it is not valid JSON, with
// each line break replaced by a space.
func oneLine(buf *bytes.Buffer, b []byte) []byte {
	buf.Reset()
	if err := json.Compact(buf, b); err == nil {
		return buf.Bytes()
	}
	buf.Reset()
	for _, c := range b {
		if c == '\n' || c == '\r' {
			c = ' '
		}
		buf.WriteByte(c)
	}
	return buf.Bytes()
}

func (sw *sseWriter) ping(interval time.Duration) {
	sw.named("ping", pingData{Interval: interval.Milliseconds()})
}

func (sw *sseWriter) event(f frame) {
	if sw.fm == formatNative {
		sw.raw("id: " + strconv.FormatUint(f.seq, 10) + "\nevent: event\ndata: ")
		sw.data(f.data)
		sw.raw("\n\n")
		return
	}
	if sw.count == 0 {
		sw.items = sw.items[:0]
	}
	mark := len(sw.items)
	if sw.count == 0 {
		sw.items = append(sw.items, '[')
	} else {
		sw.items = append(sw.items, ',')
	}
	var ok bool
	if sw.fm == formatStalwart15 {
		if sw.descs == nil {
			sw.descs = map[string][]byte{}
		}
		sw.items, ok = appendStalwart15(sw.items, f, sw.descs)
	} else {
		sw.items, ok = appendStalwart16(sw.items, f)
	}
	sw.lastSeq = f.seq
	if !ok { // an event Stalwart's formats cannot show: the log holds none such
		sw.items = sw.items[:mark]
		return
	}
	sw.count++
	if sw.count >= 1000 {
		sw.flushBatch()
	}
}

// flushBatch writes the gathered Stalwart frame, with the last sequence as its id so that
// EventSource resumes from it after a reconnect.
func (sw *sseWriter) flushBatch() {
	if sw.count == 0 {
		return
	}
	sw.items = append(sw.items, ']')
	sw.raw("id: " + strconv.FormatUint(sw.lastSeq, 10) + "\nevent: trace\ndata: ")
	sw.data(sw.items)
	sw.raw("\n\n")
	sw.count = 0
}

// Stalwart's formats, checked against its source:
//
//   - 0.15 (trc crate, serializers/json.rs, as the live tracer and the history handlers of
//     http/src/management/enterprise/telemetry.rs call it): {"text","details","createdAt",
//     "type","data"}; createdAt in RFC 3339 at whole seconds in UTC (mail_parser's
//     DateTime::to_rfc3339); data the event's keys, then its span start's keys it lacks;
//     values as JSON (a Timestamp as RFC 3339, a Duration as milliseconds, an IP as text, a
//     nested event as {"type","text","details","data"}); a None value is left out.
//   - 0.16 (common/src/telemetry/tracers/mod.rs, build_trace_events, with the registry's
//     TraceEvent of registry/src/schema/structs.rs): {"event","timestamp","keyValues":
//     [{"key","value":{"@type",…}}]} with the event's own keys only; timestamp a
//     UTCDateTime, RFC 3339 at whole seconds (registry/src/types/datetime.rs).
//
// Stalwart's registry writes a List (keyValues, a List's or an Event's value) as a JSON
// object keyed "0", "1", … (registry/src/types/list.rs), but the WebUI's live tracing page
// reads keyValues as an array (webui src/features/tracing/types.ts, TraceTimeline.tsx:
// keyValues.length and .map) and shows no key of Stalwart's own object form; its history
// view accepts both (lib/jmapUtils.ts, jmapMapToArray). These frames send arrays, the form
// the WebUI reads on both pages.
//
// Only Stalwart's keys are sent (stalwart_keys.go), each once, and never a JSON null:
// WebAdmin decodes data into its closed Key enum and an untagged Value of String, Int,
// Float, Bool, Event or Array (webadmin src/pages/enterprise/tracing/event.rs), and one
// key or null it cannot decode loses the whole frame. An object that is not an event is
// left out for the same reason. Events are read with gjson, never decoded into Go values.

// maxDescs bounds a stream's cache of 0.15 descriptions (types are not a closed set).
const maxDescs = 1024

// maxDepth bounds the nesting of values written (the log's data is bounded already).
const maxDepth = 8

// stalwartEvent is what Stalwart's formats read of an event of the log: the raw values of
// its createdAt, type and data.
type stalwartEvent struct{ createdAt, typ, data gjson.Result }

// readStalwartEvent reads an event in one pass over its top level, with one copy of it.
func readStalwartEvent(raw []byte) stalwartEvent {
	var e stalwartEvent
	gjson.ParseBytes(raw).ForEach(func(k, v gjson.Result) bool {
		switch k.Str {
		case "createdAt":
			e.createdAt = v
		case "type":
			e.typ = v
		case "data":
			e.data = v
		}
		return true
	})
	return e
}

// stalwartWriter writes events in one of Stalwart's formats.
type stalwartWriter struct {
	fm    format
	descs map[string][]byte // JSON of 0.15 descriptions by type, so each is encoded once; may be nil
}

// appendStalwart15 writes Stalwart 0.15's item, {"text","details","createdAt","type","data"},
// with the keys of the span's start merged in as Stalwart's JSON merges them (the event's own
// keys win). spanId is kept: Stalwart's live and trace items leave it out (no with_spans),
// its list items keep it, and WebAdmin reads it as one of its keys. descs, when not nil,
// caches the encoded descriptions. ok is false, and nothing is written, for an event without
// a type or a time (the log holds none such).
func appendStalwart15(b []byte, f frame, descs map[string][]byte) (_ []byte, ok bool) {
	w := stalwartWriter{fm: formatStalwart15, descs: descs}
	e := readStalwartEvent(f.data)
	if e.typ.Type != gjson.String {
		return b, false
	}
	start := len(b)
	desc := w.describe(e.typ.Str)
	b = append(b, `{"text":`...)
	b = append(b, desc...)
	b = append(b, `,"details":`...)
	b = append(b, desc...)
	b = append(b, `,"createdAt":`...)
	if b, ok = appendCreatedAt(b, e.createdAt); !ok {
		return b[:start], false
	}
	b = append(b, `,"type":`...)
	if old := event.To015(e.typ.Str); old != e.typ.Str { // 0.15's name of a type 0.16 renamed
		b = appendJSONString(b, old)
	} else {
		b = append(b, e.typ.Raw...)
	}
	b = append(b, `,"data":{`...)
	var seen keySet
	n := 0
	b = w.appendKeys(b, e.data, &seen, &n, 0)
	if f.spanStart != nil {
		b = w.appendKeys(b, gjson.GetBytes(f.spanStart, "data"), &seen, &n, 0)
	}
	return append(b, "}}"...), true
}

// appendStalwart16 writes Stalwart 0.16's TraceEvent: {"event","timestamp","keyValues":[{key,
// value:{"@type",value}}]}, with the event's own keys (build_trace_events merges no span
// keys). ok is false, and nothing is written, for an event without a type or a time.
func appendStalwart16(b []byte, f frame) (_ []byte, ok bool) {
	w := stalwartWriter{fm: formatStalwart16}
	e := readStalwartEvent(f.data)
	if e.typ.Type != gjson.String {
		return b, false
	}
	start := len(b)
	b = append(b, `{"event":`...)
	b = append(b, e.typ.Raw...)
	b = append(b, `,"timestamp":`...)
	if b, ok = appendCreatedAt(b, e.createdAt); !ok {
		return b[:start], false
	}
	b = append(b, `,"keyValues":[`...)
	var seen keySet
	n := 0
	b = w.appendKeys(b, e.data, &seen, &n, 0)
	return append(b, "]}"...), true
}

// describe returns the JSON of a type's description: the catalogue's, or the type itself.
// Stalwart's 0.15 items carry a short description (text) and a longer explanation
// (details); the catalogue has one description, which serves as both.
func (w *stalwartWriter) describe(typ string) []byte {
	if d, ok := w.descs[typ]; ok {
		return d
	}
	desc := typ
	if info, ok := event.Known().Lookup(typ); ok {
		desc = info.Description
	}
	d := appendJSONString(nil, desc)
	if w.descs != nil && len(w.descs) < maxDescs {
		w.descs[strings.Clone(typ)] = d // typ may point into the event's copy
	}
	return d
}

// aliased is an alias's value, kept until the object's own Stalwart keys are known.
type aliased struct {
	key stalwartKey
	v   gjson.Result
}

// appendKeys appends the entries of data (a JSON object) under Stalwart's keys: its
// Stalwart keys, then the aliases whose key it lacks, skipping keys in seen and adding those
// written to it. n counts the entries written, for their separators.
func (w *stalwartWriter) appendKeys(b []byte, data gjson.Result, seen *keySet, n *int, depth int) []byte {
	if !data.IsObject() {
		return b
	}
	var aliases [8]aliased
	na := 0
	data.ForEach(func(k, v gjson.Result) bool {
		key, alias, ok := lookupKey(k.Str)
		switch {
		case !ok || seen.has(key.id):
		case alias:
			if na < len(aliases) {
				aliases[na] = aliased{key, v}
				na++
			}
		default:
			b = w.appendEntry(b, key, v, seen, n, depth)
		}
		return true
	})
	for _, a := range aliases[:na] {
		if !seen.has(a.key.id) {
			b = w.appendEntry(b, a.key, a.v, seen, n, depth)
		}
	}
	return b
}

// appendEntry appends one key and its value, or nothing when the value has no form in
// Stalwart's (a null, an object that is not an event).
func (w *stalwartWriter) appendEntry(b []byte, key stalwartKey, v gjson.Result, seen *keySet, n *int, depth int) []byte {
	mark := len(b)
	if *n > 0 {
		b = append(b, ',')
	}
	var ok bool
	if w.fm == formatStalwart15 {
		b = append(b, '"')
		b = append(b, key.name...)
		b = append(b, `":`...)
		b, ok = w.appendValue15(b, key.kind, v, depth)
	} else {
		b = append(b, `{"key":"`...)
		b = append(b, key.name...)
		b = append(b, `","value":`...)
		b, ok = w.appendTagged(b, key.kind, v, depth)
		b = append(b, '}')
	}
	if !ok {
		return b[:mark]
	}
	seen.add(key.id)
	*n++
	return b
}

// appendValue15 appends a value as Stalwart 0.15's JSON has it; ok is false, and nothing is
// written, for a value it has no form of.
func (w *stalwartWriter) appendValue15(b []byte, kind keyKind, v gjson.Result, depth int) (_ []byte, ok bool) {
	switch v.Type {
	case gjson.String:
		switch kind {
		case kindIP: // as Rust writes an IpAddr
			if ip, err := netip.ParseAddr(v.Str); err == nil && ip.Zone() == "" {
				b = append(b, '"')
				b = ip.AppendTo(b)
				return append(b, '"'), true
			}
		case kindUint:
			if isDecimal(v.Str) {
				return append(b, v.Str...), true
			}
		case kindTime:
			if t, ok := appendTime(b, v.Str); ok {
				return t, true
			}
		}
		return append(b, v.Raw...), true
	case gjson.Number:
		if kind == kindDuration {
			if ms, ok := appendMillis(b, v); ok {
				return ms, true
			}
		}
		return append(b, v.Raw...), true
	case gjson.True, gjson.False:
		return append(b, v.Raw...), true
	case gjson.JSON:
		if depth >= maxDepth {
			return b, false
		}
		if v.IsArray() {
			b = append(b, '[')
			n := 0
			v.ForEach(func(_, e gjson.Result) bool {
				mark := len(b)
				if n > 0 {
					b = append(b, ',')
				}
				if b, ok = w.appendValue15(b, kind, e, depth+1); ok {
					n++
				} else {
					b = b[:mark]
				}
				return true
			})
			return append(b, ']'), true
		}
		typ := v.Get("type")
		if typ.Type != gjson.String {
			return b, false
		}
		desc := w.describe(typ.Str)
		b = append(b, `{"type":`...)
		b = append(b, typ.Raw...)
		b = append(b, `,"text":`...)
		b = append(b, desc...)
		b = append(b, `,"details":`...)
		b = append(b, desc...)
		b = append(b, `,"data":{`...)
		var seen keySet
		n := 0
		b = w.appendKeys(b, v.Get("data"), &seen, &n, depth+1)
		return append(b, "}}"...), true
	}
	return b, false
}

// appendTagged appends a value as Stalwart 0.16's registry does, {"@type": …, "value": …}
// (TraceValue, filled by map_value in tracers/mod.rs); ok is false, and nothing is written,
// for a value it has no form of.
func (w *stalwartWriter) appendTagged(b []byte, kind keyKind, v gjson.Result, depth int) (_ []byte, ok bool) {
	switch v.Type {
	case gjson.String:
		switch kind {
		case kindIP:
			if ip, err := netip.ParseAddr(v.Str); err == nil && ip.Zone() == "" {
				b = append(b, `{"@type":"IpAddr","value":"`...)
				b = ip.AppendTo(b)
				return append(b, `"}`...), true
			}
		case kindUint:
			if isDecimal(v.Str) {
				return appendTag(b, "UnsignedInt", v.Str), true
			}
		case kindTime:
			if t, ok := appendTime(append(b, `{"@type":"UTCDateTime","value":`...), v.Str); ok {
				return append(t, '}'), true
			}
		}
		return appendTag(b, "String", v.Raw), true
	case gjson.Number:
		if kind == kindDuration {
			if ms, ok := appendMillis(append(b, `{"@type":"Duration","value":`...), v); ok {
				return append(ms, '}'), true
			}
		}
		return appendTag(b, numberTag(v.Raw), v.Raw), true
	case gjson.True, gjson.False:
		return appendTag(b, "Boolean", v.Raw), true
	case gjson.JSON:
		if depth >= maxDepth {
			return b, false
		}
		if v.IsArray() {
			b = append(b, `{"@type":"List","value":[`...)
			n := 0
			v.ForEach(func(_, e gjson.Result) bool {
				mark := len(b)
				if n > 0 {
					b = append(b, ',')
				}
				if b, ok = w.appendTagged(b, kind, e, depth+1); ok {
					n++
				} else {
					b = b[:mark]
				}
				return true
			})
			return append(b, "]}"...), true
		}
		typ := v.Get("type")
		if typ.Type != gjson.String {
			return b, false
		}
		b = append(b, `{"@type":"Event","event":`...)
		b = append(b, typ.Raw...)
		b = append(b, `,"value":[`...)
		var seen keySet
		n := 0
		b = w.appendKeys(b, v.Get("data"), &seen, &n, depth+1)
		return append(b, "]}"...), true
	}
	return b, false
}

func appendTag(b []byte, tag, raw string) []byte {
	b = append(b, `{"@type":"`...)
	b = append(b, tag...)
	b = append(b, `","value":`...)
	b = append(b, raw...)
	return append(b, '}')
}

// numberTag is the TraceValue of a JSON number: UnsignedInt (u64), Integer (i64), else Float.
func numberTag(raw string) string {
	if strings.ContainsAny(raw, ".eE") {
		return "Float"
	}
	if digits, neg := strings.CutPrefix(raw, "-"); neg {
		if fitsDecimal(digits, "9223372036854775808") {
			return "Integer"
		}
	} else if fitsDecimal(digits, "18446744073709551615") {
		return "UnsignedInt"
	}
	return "Float"
}

// fitsDecimal reports whether digits, a decimal without sign, is at most max (of the same
// type's width), without parsing it.
func fitsDecimal(digits, max string) bool {
	return len(digits) < len(max) || len(digits) == len(max) && digits <= max
}

// isDecimal reports whether s is a u64 written as Stalwart writes one: decimal digits, no
// leading zero. Such a string of an id or a count is sent as the number it is (a span id
// "7215384719" of the native API is 7215384719, as Stalwart's span ids are).
func isDecimal(s string) bool {
	if s == "" || s[0] == '0' && len(s) > 1 {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return fitsDecimal(s, "18446744073709551615")
}

// appendMillis appends a duration in milliseconds as Stalwart's u64 (a fraction is cut);
// ok is false for a negative or too large one.
func appendMillis(b []byte, v gjson.Result) (_ []byte, ok bool) {
	if isDecimal(v.Raw) {
		return append(b, v.Raw...), true
	}
	if v.Num < 0 || v.Num >= 1<<64 {
		return b, false
	}
	return strconv.AppendUint(b, uint64(v.Num), 10), true
}

// appendCreatedAt appends an event's time as Stalwart does: RFC 3339 in UTC, whole seconds.
// The log's own form (2026-11-21T10:15:02.123456Z) is cut without parsing it.
func appendCreatedAt(b []byte, r gjson.Result) ([]byte, bool) {
	if r.Type != gjson.String {
		return b, false
	}
	if s := r.Str; isLogTime(s) {
		b = append(b, '"')
		b = append(b, s[:19]...)
		return append(b, `Z"`...), true
	}
	return appendTime(b, r.Str)
}

// isLogTime reports whether s is a UTC time as the log writes it (Go's RFC3339Nano).
func isLogTime(s string) bool {
	if len(s) < 20 || s[len(s)-1] != 'Z' || len(s) > 20 && (s[19] != '.' || len(s) == 21) {
		return false
	}
	for i := 0; i < len(s)-1; i++ {
		c := s[i]
		switch i {
		case 4, 7:
			if c != '-' {
				return false
			}
		case 10:
			if c != 'T' {
				return false
			}
		case 13, 16:
			if c != ':' {
				return false
			}
		case 19:
		default:
			if c < '0' || c > '9' {
				return false
			}
		}
	}
	return true
}

// appendTime appends an RFC 3339 time as a JSON string in UTC at whole seconds; ok is false,
// and nothing is written, when s is not such a time.
func appendTime(b []byte, s string) ([]byte, bool) {
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return b, false
	}
	if t = t.UTC(); t.Year() < 0 || t.Year() > 9999 {
		return b, false
	}
	b = append(b, '"')
	b = t.AppendFormat(b, "2006-01-02T15:04:05Z")
	return append(b, '"'), true
}

// appendJSONString appends s as a JSON string, encoded by encoding/json.
func appendJSONString(b []byte, s string) []byte {
	q, err := json.Marshal(s)
	if err != nil { // a string always encodes
		return append(b, `""`...)
	}
	return append(b, q...)
}
