package livegateway

import (
	"bufio"
	"bytes"
	"encoding/json"
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
	formatStalwart15               // Stalwart 0.15: event: trace, JSON array of {text, createdAt, type, data}
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
		sw.items = append(sw.items[:0], '[')
	} else {
		sw.items = append(sw.items, ',')
	}
	if sw.fm == formatStalwart15 {
		if sw.descs == nil {
			sw.descs = map[string][]byte{}
		}
		sw.items = appendStalwart15(sw.items, f, sw.descs)
	} else {
		sw.items = appendStalwart16(sw.items, f)
	}
	sw.count++
	sw.lastSeq = f.seq
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

// mergedData is the event's data followed by its span start's keys the event lacks, as
// Stalwart's JSON merges them (the event's own keys win).
func mergedData(f frame) []gjson.Result {
	data := gjson.GetBytes(f.data, "data")
	var out []gjson.Result
	seen := map[string]bool{}
	if data.IsObject() {
		data.ForEach(func(k, v gjson.Result) bool {
			seen[k.Str] = true
			out = append(out, k, v)
			return true
		})
	}
	if f.spanStart != nil {
		if start := gjson.GetBytes(f.spanStart, "data"); start.IsObject() {
			start.ForEach(func(k, v gjson.Result) bool {
				if !seen[k.Str] {
					out = append(out, k, v)
				}
				return true
			})
		}
	}
	return out
}

// appendRaw appends a value as the event holds it, or null when it has none.
func appendRaw(b []byte, r gjson.Result) []byte {
	if !r.Exists() || r.Raw == "" {
		return append(b, "null"...)
	}
	return append(b, r.Raw...)
}

// maxDescs bounds a stream's cache of 0.15 descriptions (types are not a closed set).
const maxDescs = 1024

// appendStalwart15 writes Stalwart 0.15's item: {"text","createdAt","type","data"}. descs,
// when not nil, caches the encoded descriptions.
func appendStalwart15(b []byte, f frame, descs map[string][]byte) []byte {
	r := gjson.GetManyBytes(f.data, "createdAt", "type")
	b = append(b, `{"text":`...)
	if d, ok := descs[f.typ]; ok {
		b = append(b, d...)
	} else {
		desc := f.typ
		if info, ok := event.Known().Lookup(f.typ); ok {
			desc = info.Description
		}
		d := appendJSONString(nil, desc)
		if descs != nil && len(descs) < maxDescs {
			descs[f.typ] = d
		}
		b = append(b, d...)
	}
	b = append(b, `,"createdAt":`...)
	b = appendRaw(b, r[0])
	b = append(b, `,"type":`...)
	b = appendRaw(b, r[1])
	b = append(b, `,"data":{`...)
	kv := mergedData(f)
	for i := 0; i < len(kv); i += 2 {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, kv[i].Raw...)
		b = append(b, ':')
		b = append(b, kv[i+1].Raw...)
	}
	return append(b, "}}"...)
}

// appendStalwart16 writes Stalwart 0.16's TraceEvent: {"event","timestamp","keyValues":[{key,
// value:{"@type",value}}]}.
func appendStalwart16(b []byte, f frame) []byte {
	r := gjson.GetManyBytes(f.data, "createdAt", "type")
	b = append(b, `{"event":`...)
	b = appendRaw(b, r[1])
	b = append(b, `,"timestamp":`...)
	b = appendRaw(b, r[0])
	b = append(b, `,"keyValues":[`...)
	kv := mergedData(f)
	for i := 0; i < len(kv); i += 2 {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, `{"key":`...)
		b = append(b, kv[i].Raw...)
		b = append(b, `,"value":`...)
		b = appendTagged(b, kv[i+1])
		b = append(b, '}')
	}
	return append(b, "]}"...)
}

// appendTagged writes a value as Stalwart's registry does: {"@type": …, "value": …}.
func appendTagged(b []byte, v gjson.Result) []byte {
	tag := "String"
	switch v.Type {
	case gjson.Number:
		switch {
		case strings.ContainsAny(v.Raw, ".eE"):
			tag = "Float"
		case strings.HasPrefix(v.Raw, "-"):
			tag = "Integer"
		default:
			tag = "UnsignedInt"
		}
	case gjson.True, gjson.False:
		tag = "Boolean"
	case gjson.Null:
		return append(b, `{"@type":"Null"}`...)
	case gjson.String:
		if _, err := time.Parse(time.RFC3339Nano, v.Str); err == nil {
			tag = "UTCDateTime"
		}
	case gjson.JSON:
		if v.IsArray() {
			b = append(b, `{"@type":"List","value":[`...)
			first := true
			v.ForEach(func(_, e gjson.Result) bool {
				if !first {
					b = append(b, ',')
				}
				first = false
				b = appendTagged(b, e)
				return true
			})
			return append(b, "]}"...)
		}
		return appendNested(b, v)
	}
	b = append(b, `{"@type":"`...)
	b = append(b, tag...)
	b = append(b, `","value":`...)
	b = append(b, v.Raw...)
	return append(b, '}')
}

// appendNested writes a nested event, {"type","data"}, as Stalwart's Event value.
func appendNested(b []byte, v gjson.Result) []byte {
	b = append(b, `{"@type":"Event","event":`...)
	if t := v.Get("type"); t.Type == gjson.String {
		b = append(b, t.Raw...)
	} else {
		b = append(b, `""`...)
	}
	b = append(b, `,"value":[`...)
	if data := v.Get("data"); data.IsObject() {
		first := true
		data.ForEach(func(k, e gjson.Result) bool {
			if !first {
				b = append(b, ',')
			}
			first = false
			b = append(b, `{"key":`...)
			b = append(b, k.Raw...)
			b = append(b, `,"value":`...)
			b = appendTagged(b, e)
			b = append(b, '}')
			return true
		})
	}
	return append(b, "]}"...)
}

// appendJSONString appends s as a JSON string, encoded by encoding/json.
func appendJSONString(b []byte, s string) []byte {
	q, err := json.Marshal(s)
	if err != nil { // a string always encodes
		return append(b, `""`...)
	}
	return append(b, q...)
}
