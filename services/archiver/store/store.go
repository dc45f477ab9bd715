// Package store is the archiver's history store: the interface every implementation
// (SQLite, PostgreSQL) satisfies, and what they share: the records, the terms that index
// keywords and key values, and the span summaries.
package store

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"strings"
	"time"

	"github.com/tidwall/gjson"

	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/history"
	"github.com/mailpulse/mailpulse/shared/metric"
)

// Record is one event to store: its sequence in the log (the idempotency key: a redelivered
// or replayed event has the same one) and the decoded event.
type Record struct {
	Seq   uint64
	Event event.Event
}

// Store keeps events and answers history queries. Implementations are safe for concurrent
// use.
type Store interface {
	// Write stores a batch in one transaction: when it returns nil every record is stored
	// (records already stored are skipped), otherwise none is.
	Write(ctx context.Context, recs []Record) error
	// Query runs an event search.
	Query(ctx context.Context, q history.Query) (history.Page, error)
	// Span returns a session and its events in order; ErrNotFound if unknown.
	Span(ctx context.Context, id string) (history.Span, []history.Stored, error)
	// Spans searches session summaries, newest first, and returns a page and the total.
	Spans(ctx context.Context, q SpanQuery) ([]history.Span, int, error)
	// WriteSnapshots stores metric snapshots; one already stored (same Seq) is skipped.
	WriteSnapshots(ctx context.Context, snaps []SnapshotRecord) error
	// Snapshots returns the snapshots taken in [from, to] (of one source, when not empty),
	// oldest first, at most limit.
	Snapshots(ctx context.Context, from, to time.Time, source string, limit int) ([]metric.Snapshot, error)
	// DropSnapshotsBefore removes the snapshots taken before t.
	DropSnapshotsBefore(ctx context.Context, t time.Time) (int64, error)
	// Stats reports the size of the store.
	Stats(ctx context.Context) (Stats, error)
	// DropBefore removes whole partitions that end before t and returns how many.
	DropBefore(ctx context.Context, t time.Time) (int, error)
	// DropAfter removes whole partitions that start after t and returns how many: days
	// ahead that the archiver no longer files anything under (made before it bounded
	// the days ahead), which retention by age would never reach.
	DropAfter(ctx context.Context, t time.Time) (int, error)
	Close() error
}

// SnapshotRecord is a metric snapshot and its sequence in the METRICS log.
type SnapshotRecord struct {
	Seq      uint64
	Snapshot metric.Snapshot
}

// SpanQuery searches sessions: those that started in [From, To], of a kind (the start
// event's type; empty: any), holding a queue id, and whose sender, recipients or remote IP
// match every term (whole value or address domain, case-insensitive).
type SpanQuery struct {
	From, To time.Time
	Kind     string
	QueueID  string
	Terms    []string
	Offset   int
	Limit    int
}

// SpanMatches verifies a span against the query's queue id and terms, the parts an index
// only narrows.
func SpanMatches(sp *history.Span, q *SpanQuery) bool {
	if q.QueueID != "" && !contains(sp.QueueIDs, q.QueueID) {
		return false
	}
	for _, t := range q.Terms {
		vals := append([]string{sp.From, sp.RemoteIP}, sp.To...)
		found := false
		for _, v := range vals {
			v = strings.ToLower(v)
			if v == t || (strings.LastIndexByte(v, '@') >= 0 && v[strings.LastIndexByte(v, '@')+1:] == t) {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}

// Stats describes a store's size.
type Stats struct {
	Events     int64 `json:"events"`
	Bytes      int64 `json:"bytes"`
	Partitions int   `json:"partitions"`
}

// Errors.
var (
	ErrNotFound = errors.New("not found")
	// ErrInvalid marks a query the store cannot run as asked.
	ErrInvalid = errors.New("invalid query")
	// ErrUnrepresentable marks a write with a time the stores cannot hold: they keep times
	// as int64 nanoseconds since 1970, which would wrap (year 9999 read back as 1816).
	// Nothing of such a batch is written; retrying it cannot help.
	ErrUnrepresentable = errors.New("time outside 1970 to 2261, which the history cannot hold")
)

// CheckRecords returns ErrUnrepresentable, naming the first such record, when a record's
// time is outside what the stores hold (event.Representable). Writers call it before
// writing anything.
func CheckRecords(recs []Record) error {
	for i := range recs {
		if t := recs[i].Event.CreatedAt; !event.Representable(t) {
			return fmt.Errorf("event %q (sequence %d) dated %s: %w", recs[i].Event.ID, recs[i].Seq, t.Format(time.RFC3339), ErrUnrepresentable)
		}
	}
	return nil
}

// CheckSnapshots is CheckRecords for metric snapshots.
func CheckSnapshots(snaps []SnapshotRecord) error {
	for i := range snaps {
		if t := snaps[i].Snapshot.Time; !event.Representable(t) {
			return fmt.Errorf("snapshot %d dated %s: %w", snaps[i].Seq, t.Format(time.RFC3339), ErrUnrepresentable)
		}
	}
	return nil
}

// The times the stores hold: event.Representable's.
var (
	minTime = time.Unix(0, 0).UTC()
	maxTime = time.Date(2262, 1, 1, 0, 0, 0, 0, time.UTC).Add(-time.Nanosecond)
)

// Clamp brings a query bound into the times the stores hold, so that a bound far out
// means "from the start" or "to the end" rather than a wrapped time. The zero time (no
// bound) stays zero.
func Clamp(t time.Time) time.Time {
	switch {
	case t.IsZero():
		return t
	case t.Before(minTime):
		return minTime
	case t.After(maxTime):
		return maxTime
	}
	return t
}

// Nanos is t in int64 nanoseconds since 1970, clamped into the times the stores hold
// first (the zero time is 1970): it never wraps.
func Nanos(t time.Time) int64 {
	if t.IsZero() {
		return 0
	}
	return Clamp(t).UnixNano()
}

// KeywordKeys are the keys whose values the keyword search (text=) finds, as Stalwart's
// history indexes from, to, domain, hostname and remote IP, plus the identifiers people look
// for.
var KeywordKeys = map[string]bool{"from": true, "to": true, "domain": true, "hostname": true, "remoteIp": true,
	"accountName": true, "queueId": true, "messageId": true}

// maxTermValue bounds the values indexed as terms.
const maxTermValue = 256

// Term hashes an indexed value. Keyword keys are indexed by value alone (so a keyword finds
// them whatever the key, and a key filter on them uses the same entry); other string keys by
// key and value. Lookups through terms are always verified against the event, so a hash
// collision costs a row read, never a wrong answer.
func Term(key, value string) int64 {
	h := fnv.New64a()
	if !KeywordKeys[key] {
		h.Write([]byte(key))
		h.Write([]byte{'='})
	}
	h.Write([]byte(strings.ToLower(value)))
	return int64(h.Sum64())
}

// KeywordTerm hashes a keyword of a text search.
func KeywordTerm(word string) int64 { return Term("from", word) }

// Terms returns the terms of an event: one per string value of its data (each element of a
// list), and the domain of e-mail addresses in keyword keys.
func Terms(e *event.Event) []int64 {
	var out []int64
	add := func(key, v string) {
		if v == "" || len(v) > maxTermValue {
			return
		}
		out = append(out, Term(key, v))
		if KeywordKeys[key] {
			if at := strings.LastIndexByte(v, '@'); at >= 0 && at < len(v)-1 {
				out = append(out, Term(key, v[at+1:]))
			}
		}
	}
	e.Data.Each(func(key string, v gjson.Result) bool {
		if key == "spanId" {
			return true // spans have their own index
		}
		switch {
		case v.Type == gjson.String:
			add(key, v.Str)
		case v.IsArray():
			v.ForEach(func(_, el gjson.Result) bool {
				if el.Type == gjson.String {
					add(key, el.Str)
				}
				return true
			})
		}
		return true
	})
	return dedupe(out)
}

func dedupe(xs []int64) []int64 {
	if len(xs) < 2 {
		return xs
	}
	seen := make(map[int64]bool, len(xs))
	out := xs[:0]
	for _, x := range xs {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

// Matches verifies an event against the filters that an index only narrows: key filters
// (exact; a list matches any element; numbers and booleans by their text) and keywords (a
// whole value, or the domain of an address, of a keyword key, case-insensitive).
func Matches(e *event.Event, q *history.Query) bool {
	for k, want := range q.Keys {
		if !valueMatches(e.Data.Get(k), want) {
			return false
		}
	}
	for _, t := range q.Terms {
		found := false
		e.Data.Each(func(key string, v gjson.Result) bool {
			if KeywordKeys[key] && keywordIn(v, t) {
				found = true
			}
			return !found
		})
		if !found {
			return false
		}
	}
	return true
}

func valueMatches(v gjson.Result, want string) bool {
	switch {
	case !v.Exists():
		return false
	case v.IsArray():
		found := false
		v.ForEach(func(_, el gjson.Result) bool {
			found = valueMatches(el, want)
			return !found
		})
		return found
	case v.Type == gjson.String:
		return v.Str == want
	}
	return v.Raw == want
}

func keywordIn(v gjson.Result, t string) bool {
	if v.IsArray() {
		found := false
		v.ForEach(func(_, el gjson.Result) bool {
			found = keywordIn(el, t)
			return !found
		})
		return found
	}
	if v.Type != gjson.String {
		return false
	}
	s := strings.ToLower(v.Str)
	if s == t {
		return true
	}
	at := strings.LastIndexByte(s, '@')
	return at >= 0 && s[at+1:] == t
}

// SpanUpdate is what one event adds to its span's summary.
type SpanUpdate struct {
	ID       string
	Source   string
	Kind     string // set by the start event
	Start    time.Time
	End      time.Time // set by the end event
	Duration int64
	RemoteIP string
	QueueIDs []string
	From     string
	To       []string
	Outcome  string
	Events   int
}

// SpanUpdates folds a batch's events into one update per span, in order.
func SpanUpdates(recs []Record) []SpanUpdate {
	idx := map[string]int{}
	var out []SpanUpdate
	for i := range recs {
		e := &recs[i].Event
		id := e.Data.Get("spanId").String()
		if id == "" {
			continue
		}
		j, ok := idx[id]
		if !ok {
			j = len(out)
			idx[id] = j
			out = append(out, SpanUpdate{ID: id, Source: e.Source, Start: e.CreatedAt})
		}
		u := &out[j]
		u.Events++
		if e.CreatedAt.Before(u.Start) {
			u.Start = e.CreatedAt
		}
		typ := e.Type
		switch {
		case strings.HasSuffix(typ, ".connection-start") || typ == "delivery.attempt-start":
			u.Kind, u.Start = typ, e.CreatedAt
		case strings.HasSuffix(typ, ".connection-end") || typ == "delivery.attempt-end":
			u.End = e.CreatedAt
			u.Duration = e.Data.Get("elapsed").Int()
		}
		if v := e.Data.Get("remoteIp").Str; v != "" && u.RemoteIP == "" {
			u.RemoteIP = v
		}
		if v := e.Data.Get("queueId").String(); v != "" && !contains(u.QueueIDs, v) && len(u.QueueIDs) < 16 {
			u.QueueIDs = append(u.QueueIDs, v)
		}
		if v := e.Data.Get("from").Str; v != "" && u.From == "" {
			u.From = v
		}
		e.Data.Get("to").ForEach(func(_, t gjson.Result) bool {
			if t.Str != "" && !contains(u.To, t.Str) && len(u.To) < 64 {
				u.To = append(u.To, t.Str)
			}
			return true
		})
		if to := e.Data.Get("to"); to.Type == gjson.String && !contains(u.To, to.Str) && len(u.To) < 64 {
			u.To = append(u.To, to.Str)
		}
		if notable(typ) {
			u.Outcome = typ
		}
	}
	return out
}

// notable events decide a session's outcome: the last one wins.
func notable(typ string) bool {
	switch typ {
	case "delivery.delivered", "delivery.failed", "delivery.completed", "delivery.connect-error", "delivery.rcpt-to-rejected",
		"delivery.rcpt-to-failed", "delivery.dsn-perm-fail", "delivery.dsn-temp-fail", "queue.rescheduled",
		"message-ingest.ham", "message-ingest.spam", "message-ingest.error", "auth.success", "auth.failed",
		"auth.too-many-attempts", "security.authentication-ban", "smtp.relay-not-allowed", "smtp.mailbox-does-not-exist",
		"smtp.message-too-large", "smtp.rcpt-to-greylisted":
		return true
	}
	return false
}

func contains(xs []string, s string) bool {
	for _, x := range xs {
		if x == s {
			return true
		}
	}
	return false
}
