package event

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	json "github.com/goccy/go-json"
	"github.com/tidwall/gjson"
)

// The wire format is pinned by testdata/*.golden. Encoding is hand-written (no reflection);
// decoding uses goccy/go-json, about 5× faster than encoding/json on this shape (limits.md §3).

// AppendJSON appends the wire form of e to b:
//
//	{"id":…,"createdAt":…,"type":…,"level":…,"source":…,"data":{…}}
//
// source is left out when empty; data is always present.
func (e Event) AppendJSON(b []byte) []byte {
	b = append(b, `{"id":`...)
	b = appendString(b, e.ID)
	b = append(b, `,"createdAt":"`...)
	b = e.CreatedAt.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, `","type":`...)
	b = appendString(b, e.Type)
	b = append(b, `,"level":"`...)
	b = append(b, e.Level.String()...)
	b = append(b, '"')
	if e.Source != "" {
		b = append(b, `,"source":`...)
		b = appendString(b, e.Source)
	}
	b = append(b, `,"data":`...)
	if len(e.Data) == 0 {
		b = append(b, '{', '}')
	} else {
		b = append(b, e.Data...)
	}
	return append(b, '}')
}

// MarshalJSON implements json.Marshaler with the wire form.
func (e Event) MarshalJSON() ([]byte, error) { return e.AppendJSON(nil), nil }

// UnmarshalJSON implements json.Unmarshaler; it is as strict as Decode.
func (e *Event) UnmarshalJSON(b []byte) error {
	v, err := Decode(b)
	if err != nil {
		return err
	}
	*e = v
	return nil
}

// wire is the decoded shape of one event before validation.
type wire struct {
	ID        flexString      `json:"id"`
	CreatedAt string          `json:"createdAt"`
	Type      string          `json:"type"`
	Level     string          `json:"level"`
	Source    string          `json:"source"`
	Data      json.RawMessage `json:"data"`
}

// flexString accepts a JSON string or number (Stalwart's ids are decimal numbers, sent as
// strings today; a number must not be rejected for that).
type flexString string

func (s *flexString) UnmarshalJSON(b []byte) error {
	switch {
	case len(b) > 0 && b[0] == '"':
		var v string
		if err := json.Unmarshal(b, &v); err != nil {
			return err
		}
		*s = flexString(v)
	case bytes.Equal(b, []byte("null")):
		*s = ""
	default:
		if _, err := strconv.ParseFloat(string(b), 64); err != nil {
			return errors.New("id: want a string or a number")
		}
		*s = flexString(b)
	}
	return nil
}

// Decode parses one event in the wire form and validates it; every field but source must be
// present. Consumers of the log use it.
func Decode(b []byte) (Event, error) {
	w, err := decodeWire(b)
	if err != nil {
		return Event{}, err
	}
	e := Event{ID: string(w.ID), Type: w.Type, Source: w.Source, Data: Data(w.Data)}
	var errs []error
	if w.CreatedAt == "" {
		errs = append(errs, errors.New("createdAt: missing"))
	} else if e.CreatedAt, err = parseTime(w.CreatedAt); err != nil {
		errs = append(errs, err)
	}
	if e.Level, err = ParseLevel(w.Level); err != nil {
		errs = append(errs, err)
	}
	if len(errs) > 0 {
		return Event{}, errors.Join(errs...)
	}
	if err := errors.Join(e.validateEnvelope(), e.Data.validateDecoded()); err != nil {
		return Event{}, err
	}
	if len(e.Data) > 0 && e.Data.needsNormalizing() {
		return Event{}, errors.New("data: keys must be camelCase (remoteIp, not remote-ip)")
	}
	return e, nil
}

func decodeWire(b []byte) (wire, error) {
	var w wire
	b = bytes.TrimSpace(b)
	if len(b) == 0 || b[0] != '{' {
		return w, errors.New("event: want a JSON object")
	}
	// JSON is UTF-8; raw invalid bytes would be stored as they came and break every client
	// that decodes them. Such an event is refused with the reason.
	if !utf8.Valid(b) {
		return w, errors.New("event: not valid UTF-8 (escape binary data, or send it base64-encoded)")
	}
	if err := json.Unmarshal(b, &w); err != nil {
		return w, fmt.Errorf("event: %w", cleanJSONError(err))
	}
	if bytes.Equal(w.Data, []byte("null")) {
		w.Data = nil
	}
	// Pretty-printed data is stored on one line: an event's JSON travels as one line of
	// NDJSON and one SSE data: field. (A line break can only be formatting: inside a JSON
	// string it is escaped.)
	if bytes.ContainsAny(w.Data, "\r\n") {
		var c bytes.Buffer
		if err := json.Compact(&c, w.Data); err != nil {
			return w, fmt.Errorf("event: data: %w", err)
		}
		w.Data = c.Bytes()
	}
	return w, nil
}

// cleanJSONError drops the Go type names goccy puts in its messages, which mean nothing
// to a client.
func cleanJSONError(err error) error {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		field := te.Field
		if field == "" {
			field = "value"
		}
		return fmt.Errorf("%s: wrong JSON type %s", field, te.Value)
	}
	return err
}

func parseTime(s string) (time.Time, error) {
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("createdAt %q: want an RFC 3339 time", truncate(s, 40))
	}
	return t.UTC(), nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "…"
}

// Defaults completes events sent by clients, which may leave out id, createdAt, level and
// source, and bounds the time they may claim.
type Defaults struct {
	Now    func() time.Time // when nil, time.Now
	IDs    *IDs             // must be set
	Source string           // used when the event has none

	// MaxFuture and MaxAge bound createdAt around Now: an event dated more than MaxFuture
	// ahead, or more than MaxAge back, is refused with the reason. Zero leaves that side
	// unbounded. Every distinct day makes history partitions: without these bounds one
	// client could make any number of them. A time outside 1970–2261 (see Representable) is
	// refused whatever they say.
	MaxFuture time.Duration
	MaxAge    time.Duration
}

// Parse decodes one event as a client sends it, fills what it lacks (a new id, now, the
// type's default level, the default source), and validates it.
func (d *Defaults) Parse(b []byte) (Event, error) {
	w, err := decodeWire(b)
	if err != nil {
		return Event{}, err
	}
	return d.complete(w)
}

func (d *Defaults) complete(w wire) (Event, error) {
	e := Event{ID: string(w.ID), Type: w.Type, Source: w.Source, Data: Data(w.Data)}
	var errs []error
	var err error
	if w.CreatedAt == "" {
		e.CreatedAt = d.now()
	} else if e.CreatedAt, err = parseTime(w.CreatedAt); err != nil {
		errs = append(errs, err)
	} else if err := d.checkTime(e.CreatedAt); err != nil {
		errs = append(errs, err)
	}
	if w.Level == "" {
		e.Level = DefaultLevel(e.Type)
	} else if e.Level, err = ParseLevel(w.Level); err != nil {
		errs = append(errs, err)
	}
	if e.Source == "" {
		e.Source = d.Source
	}
	if e.ID == "" && len(errs) == 0 {
		e.ID = d.IDs.New(e.CreatedAt)
	}
	if err := e.validateEnvelope(); err != nil {
		errs = append(errs, err)
	}
	if err := e.Data.validateDecoded(); err != nil {
		errs = append(errs, err)
	} else if len(e.Data) > 0 {
		e.Data = e.Data.NormalizeKeys()
	}
	if len(errs) > 0 {
		return Event{}, errors.Join(errs...)
	}
	return e, nil
}

// checkTime applies the bounds on createdAt. The messages name the bound, so that the
// sender's administrator can tell a wrong clock from a replay of old events.
func (d *Defaults) checkTime(t time.Time) error {
	at := t.Format(time.RFC3339Nano)
	if !Representable(t) {
		return fmt.Errorf("createdAt %s: outside the years 1970 to 2261", at)
	}
	if d.MaxFuture <= 0 && d.MaxAge <= 0 {
		return nil
	}
	now := d.now()
	if d.MaxFuture > 0 && t.After(now.Add(d.MaxFuture)) {
		return fmt.Errorf("createdAt %s: more than %s ahead of this server's clock (%s); is the sender's clock right?", at, shortDuration(d.MaxFuture), now.Format(time.RFC3339))
	}
	if d.MaxAge > 0 && t.Before(now.Add(-d.MaxAge)) {
		return fmt.Errorf("createdAt %s: older than %s, the oldest an event may be when it is sent", at, shortDuration(d.MaxAge))
	}
	return nil
}

// shortDuration writes 1h rather than 1h0m0s.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = s[:len(s)-2]
	}
	if strings.HasSuffix(s, "h0m") {
		s = s[:len(s)-2]
	}
	return s
}

func (d *Defaults) now() time.Time {
	if d.Now != nil {
		return d.Now().UTC()
	}
	return time.Now().UTC()
}

// ErrEmptyBatch is returned by SplitBatch for a body with no events.
var ErrEmptyBatch = errors.New("no events in the body")

// ErrTooManyEvents is the error of a batch with more events than allowed.
var ErrTooManyEvents = errors.New("too many events in one batch")

// SplitBatch splits a request body holding a JSON array of events or NDJSON (one event per
// line) into the raw events, at most max of them. It checks the outer syntax only; each
// element is parsed on its own so that one bad event gets its own error.
func SplitBatch(body []byte, max int) ([][]byte, error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, ErrEmptyBatch
	}
	var out [][]byte
	if body[0] == '[' {
		if err := checkDepth(body, MaxDepth+2); err != nil {
			return nil, fmt.Errorf("body: %w", err)
		}
		if !gjson.ValidBytes(body) {
			return nil, errors.New("body: not valid JSON")
		}
		var err error
		gjson.ParseBytes(body).ForEach(func(_, v gjson.Result) bool {
			if len(out) == max {
				err = fmt.Errorf("body: more than %d events: %w", max, ErrTooManyEvents)
				return false
			}
			out = append(out, body[v.Index:v.Index+len(v.Raw)])
			return true
		})
		if err != nil {
			return nil, err
		}
	} else {
		for len(body) > 0 {
			line := body
			if i := bytes.IndexByte(body, '\n'); i >= 0 {
				line, body = body[:i], body[i+1:]
			} else {
				body = nil
			}
			line = bytes.TrimSpace(line)
			if len(line) == 0 {
				continue
			}
			if len(out) == max {
				return nil, fmt.Errorf("body: more than %d events: %w", max, ErrTooManyEvents)
			}
			out = append(out, line)
		}
	}
	if len(out) == 0 {
		return nil, ErrEmptyBatch
	}
	return out, nil
}
