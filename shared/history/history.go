// Package history defines the questions mailpulse's history answers and their answers:
// event searches, sessions (spans) and metric series. The gateway asks them over NATS
// request-reply; any archiver replica answers from its store. Parsing a query from HTTP
// parameters lives here too, so every front end validates the same way.
package history

import (
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/filter"
)

// Subjects of the request-reply API; archivers answer in a queue group.
const (
	SubjectQuery   = "history.query"
	SubjectSpan    = "history.span"
	SubjectSpans   = "history.spans"
	SubjectMetrics = "history.metrics"
	QueueGroup     = "archiver"
)

// The range of times a query may name: what the stores' int64 nanoseconds hold.
var (
	minTime = time.Unix(0, 0).UTC()
	maxTime = time.Date(2262, 1, 1, 0, 0, 0, 0, time.UTC)
)

// ParseRange reads a time range from two parameters (RFC 3339, any of them may be empty):
// to defaults to now and from to span before to. It reports a bad time, a reversed range,
// and times outside what the stores' int64 nanoseconds hold (1970 to 2261), so that every
// history route refuses the same ranges the same way.
func ParseRange(fromName, fromValue, toName, toValue string, span time.Duration, now time.Time) (from, to time.Time, errs []error) {
	ok := true
	to = now
	if toValue != "" {
		var err error
		if to, err = time.Parse(time.RFC3339Nano, toValue); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: want an RFC 3339 time", toName, trunc(toValue)))
			ok = false
		}
	}
	from = to.Add(-span)
	if fromValue != "" {
		var err error
		if from, err = time.Parse(time.RFC3339Nano, fromValue); err != nil {
			errs = append(errs, fmt.Errorf("%s %q: want an RFC 3339 time", fromName, trunc(fromValue)))
			ok = false
		}
	}
	if !ok {
		return from, to, errs
	}
	if to.Before(from) {
		errs = append(errs, fmt.Errorf("%s is after %s: the range is reversed", fromName, toName))
	}
	if from.Before(minTime) || to.After(maxTime) {
		errs = append(errs, fmt.Errorf("%s and %s: want times from %d to %d", fromName, toName, minTime.Year(), maxTime.Year()-1))
	}
	return from, to, errs
}

// Limits on one query.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
	MaxTerms     = 16
	MaxKeys      = 16
	MaxTypes     = 32
	MaxValueLen  = 256
)

// Query is an event search. Times are event times (createdAt).
type Query struct {
	From     time.Time         `json:"from,omitzero"`
	To       time.Time         `json:"to,omitzero"`
	Types    []string          `json:"types,omitempty"`   // patterns: smtp.*, *.connection-start, auth.failed
	MinLevel *event.Level      `json:"level,omitempty"`   // minimum level
	Sources  []string          `json:"sources,omitempty"` // any of
	Terms    []string          `json:"terms,omitempty"`   // keywords and phrases: all must match
	Keys     map[string]string `json:"keys,omitempty"`    // camelCase key -> exact value (a list matches any element)
	Desc     bool              `json:"desc,omitempty"`    // newest first
	Limit    int               `json:"limit"`
	Cursor   string            `json:"cursor,omitempty"` // from a previous page
}

// Page is a page of events, in the wire form, with the cursor of the next page.
type Page struct {
	Events []Stored `json:"events"`
	Next   string   `json:"next,omitempty"`
}

// Stored is an event as the history keeps it: its sequence in the log and its wire form.
type Stored struct {
	Seq   uint64  `json:"seq"`
	Event jsonRaw `json:"event"`
}

// jsonRaw is raw JSON that marshals as itself.
type jsonRaw []byte

// MarshalJSON implements json.Marshaler.
func (r jsonRaw) MarshalJSON() ([]byte, error) {
	if len(r) == 0 {
		return []byte("null"), nil
	}
	return r, nil
}

// UnmarshalJSON implements json.Unmarshaler.
func (r *jsonRaw) UnmarshalJSON(b []byte) error { *r = append((*r)[:0], b...); return nil }

// Raw returns the stored event's JSON.
func (s Stored) Raw() []byte { return s.Event }

// NewStored wraps an event's JSON.
func NewStored(seq uint64, raw []byte) Stored { return Stored{Seq: seq, Event: raw} }

// Span is a session summary: one row to find, one query to open.
type Span struct {
	ID       string    `json:"id"`
	Source   string    `json:"source"`
	Kind     string    `json:"kind"` // the start event's type: smtp.connection-start, delivery.attempt-start, …
	Start    time.Time `json:"start"`
	End      time.Time `json:"end,omitzero"`
	Duration int64     `json:"durationMs,omitempty"`
	RemoteIP string    `json:"remoteIp,omitempty"`
	QueueIDs []string  `json:"queueIds,omitempty"`
	From     string    `json:"from,omitempty"`
	To       []string  `json:"to,omitempty"`
	Outcome  string    `json:"outcome,omitempty"` // the last notable event type
	Events   int       `json:"events"`
}

// SpanReply answers SubjectSpan.
type SpanReply struct {
	Span   *Span    `json:"span,omitempty"`
	Events []Stored `json:"events,omitempty"`
	Error  string   `json:"error,omitempty"`
	Code   int      `json:"code,omitempty"` // the HTTP status an error maps to (404: no such span)
}

// SpansRequest searches sessions (SubjectSpans): started in [From, To], of a kind (the
// start event's type), holding a queue id, matching keywords; newest first.
type SpansRequest struct {
	From    time.Time `json:"from"`
	To      time.Time `json:"to"`
	Kind    string    `json:"kind,omitempty"`
	QueueID string    `json:"queueId,omitempty"`
	Terms   []string  `json:"terms,omitempty"`
	Offset  int       `json:"offset,omitempty"`
	Limit   int       `json:"limit"`
}

// SpansReply answers SubjectSpans.
type SpansReply struct {
	Spans []Span `json:"spans"`
	Total int    `json:"total"`
	Error string `json:"error,omitempty"`
}

// MetricsRequest asks for metric series (SubjectMetrics): the metrics matching Metrics
// (ids, each with at most one *; none: all) between From and To in steps of Step, of one
// source or summed over all, each source from the origin Origin chooses (a
// metric.OriginPolicy; "" is its default).
type MetricsRequest struct {
	From    time.Time     `json:"from"`
	To      time.Time     `json:"to"`
	Step    time.Duration `json:"step"`
	Source  string        `json:"source,omitempty"`
	Metrics []string      `json:"metrics,omitempty"`
	Origin  string        `json:"origin,omitempty"`
}

// Series is one metric over time. Counters carry their cumulative value, the delta over the
// step and the rate per second; gauges their value; histograms their count and sum.
type Series struct {
	Metric string  `json:"metric"`
	Kind   string  `json:"kind"` // counter, gauge, histogram
	Points []Point `json:"points"`
}

// Point is a series value at the end of a step.
type Point struct {
	Time  time.Time `json:"t"`
	Value float64   `json:"value"`
	Delta float64   `json:"delta,omitempty"`
	Rate  float64   `json:"rate,omitempty"`
	Count uint64    `json:"count,omitempty"`
	Sum   float64   `json:"sum,omitempty"`
	// A histogram's increases during the step.
	CountDelta uint64  `json:"countDelta,omitempty"`
	SumDelta   float64 `json:"sumDelta,omitempty"`
}

// MetricsReply answers SubjectMetrics.
type MetricsReply struct {
	Series []Series `json:"series"`
	Error  string   `json:"error,omitempty"`
}

// MatchMetric reports whether a metric id matches a pattern with at most one *.
func MatchMetric(pattern, id string) bool {
	if pre, suf, ok := strings.Cut(pattern, "*"); ok {
		return len(id) >= len(pre)+len(suf) && strings.HasPrefix(id, pre) && strings.HasSuffix(id, suf)
	}
	return pattern == id
}

// QueryReply answers SubjectQuery.
type QueryReply struct {
	Page  *Page  `json:"page,omitempty"`
	Error string `json:"error,omitempty"`
	Code  int    `json:"code,omitempty"` // an HTTP status for the error
}

// Reserved parameters of ParseQuery; every other one is a key filter.
// The time range is start and end, Loki's names, because from and to are the commonest mail
// keys and must stay filterable.
var reserved = map[string]bool{"start": true, "end": true, "types": true, "type": true, "level": true, "source": true,
	"text": true, "order": true, "limit": true, "cursor": true}

// ParseQuery reads the native search parameters: start, end (RFC 3339; default the last
// 24 h), types, level, source, text (keywords and "quoted phrases"), order (asc|desc), limit
// (≤ MaxLimit), cursor, and any other parameter as an exact key filter (camelCase or
// kebab-case; data.<key> names any key, one of these parameters' names included). Every
// problem is reported at once.
func ParseQuery(q url.Values, now time.Time) (Query, error) {
	var errs []error
	out := Query{Limit: DefaultLimit, Desc: true, Keys: map[string]string{}}
	get := func(k string) string { return strings.TrimSpace(q.Get(k)) }
	var rangeErrs []error
	out.From, out.To, rangeErrs = ParseRange("start", get("start"), "end", get("end"), 24*time.Hour, now)
	errs = append(errs, rangeErrs...)
	for _, name := range []string{"types", "type"} {
		for _, p := range splitList(q[name]) {
			if err := filter.ValidPattern(p); err != nil {
				errs = append(errs, err)
				continue
			}
			out.Types = append(out.Types, p)
		}
	}
	if len(out.Types) > MaxTypes {
		errs = append(errs, fmt.Errorf("types: at most %d patterns", MaxTypes))
	}
	if v := get("level"); v != "" {
		l, err := event.ParseLevel(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("level: %w", err))
		} else {
			out.MinLevel = &l
		}
	}
	out.Sources = splitList(q["source"])
	if v := get("text"); v != "" {
		terms, err := ParseTerms(v)
		if err != nil {
			errs = append(errs, err)
		}
		out.Terms = terms
	}
	switch get("order") {
	case "", "desc":
	case "asc":
		out.Desc = false
	default:
		errs = append(errs, errors.New("order: want asc or desc"))
	}
	if v := get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 || n > MaxLimit {
			errs = append(errs, fmt.Errorf("limit: want 1 to %d", MaxLimit))
		} else {
			out.Limit = n
		}
	}
	if v := get("cursor"); v != "" {
		if _, err := DecodeCursor(v); err != nil {
			errs = append(errs, err)
		}
		out.Cursor = v
	}
	// In name order, so that two spellings of one key (remote-ip, remoteIp) merge the same
	// way every time.
	names := make([]string, 0, len(q))
	for name := range q {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		vals := q[name]
		if reserved[name] {
			continue
		}
		key := event.CamelKey(strings.TrimPrefix(name, filter.KeyPrefix))
		if !event.ValidKey(key) {
			errs = append(errs, fmt.Errorf("parameter %q: not a known parameter nor an event key", trunc(name)))
			continue
		}
		v := strings.Join(vals, ",")
		if len(v) > MaxValueLen {
			errs = append(errs, fmt.Errorf("%s: longer than %d characters", key, MaxValueLen))
			continue
		}
		if prev, ok := out.Keys[key]; ok {
			v = prev + "," + v
		}
		out.Keys[key] = v
	}
	if len(out.Keys) > MaxKeys {
		errs = append(errs, fmt.Errorf("at most %d key filters", MaxKeys))
	}
	if len(errs) > 0 {
		sort.Slice(errs, func(i, j int) bool { return errs[i].Error() < errs[j].Error() })
		return Query{}, errors.Join(errs...)
	}
	return out, nil
}

func trunc(s string) string {
	if len(s) > 40 {
		return s[:40] + "…"
	}
	return s
}

func splitList(vals []string) []string {
	var out []string
	for _, v := range vals {
		for _, p := range strings.Split(v, ",") {
			if p = strings.TrimSpace(p); p != "" {
				out = append(out, p)
			}
		}
	}
	return out
}

// MatchType reports whether typ matches a pattern of ParseQuery.
func MatchType(pattern, typ string) bool { return filter.MatchPattern(pattern, typ) }

// ParseTerms splits Stalwart's filter syntax: keywords separated by spaces, "quoted
// phrases" kept whole. Terms are matched as whole values or words of indexed values, case
// insensitively.
func ParseTerms(s string) ([]string, error) {
	var out []string
	for s = strings.TrimSpace(s); s != ""; s = strings.TrimSpace(s) {
		var t string
		if s[0] == '"' {
			end := strings.IndexByte(s[1:], '"')
			if end < 0 {
				return nil, errors.New(`text: unterminated "quoted phrase"`)
			}
			t, s = s[1:end+1], s[end+2:]
		} else if i := strings.IndexAny(s, " \t"); i >= 0 {
			t, s = s[:i], s[i:]
		} else {
			t, s = s, ""
		}
		if t = strings.ToLower(strings.TrimSpace(t)); t != "" {
			if len(t) > MaxValueLen {
				return nil, fmt.Errorf("text: a term is longer than %d characters", MaxValueLen)
			}
			out = append(out, t)
		}
	}
	if len(out) > MaxTerms {
		return nil, fmt.Errorf("text: at most %d terms", MaxTerms)
	}
	return out, nil
}

// Cursor is a position in a result, ordered by event time then log sequence: the last
// event of the previous page.
type Cursor struct {
	TS  int64 // event time, unix microseconds
	Seq uint64
}

// EncodeCursor makes an opaque cursor.
func EncodeCursor(c Cursor) string {
	var b [17]byte
	b[0] = 1 // version
	binary.BigEndian.PutUint64(b[1:], uint64(c.TS))
	binary.BigEndian.PutUint64(b[9:], c.Seq)
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// DecodeCursor reads a cursor made by EncodeCursor.
func DecodeCursor(s string) (Cursor, error) {
	b, err := base64.RawURLEncoding.DecodeString(s)
	if err != nil || len(b) != 17 || b[0] != 1 {
		return Cursor{}, errors.New("cursor: not one this API made")
	}
	return Cursor{TS: int64(binary.BigEndian.Uint64(b[1:])), Seq: binary.BigEndian.Uint64(b[9:])}, nil
}
