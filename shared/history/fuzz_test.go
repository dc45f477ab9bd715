package history_test

import (
	"encoding/json"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/filter"
	"github.com/mailpulse/mailpulse/shared/history"
)

// FuzzParseQuery feeds ParseQuery arbitrary query strings, as any HTTP client can send them:
// it must never panic, and a query it accepts must be one the archivers can run within the
// limits (a decodable cursor, a bounded limit and bounded lists, a range in order) and
// receive intact over NATS.
func FuzzParseQuery(f *testing.F) {
	for _, seed := range []string{
		"",
		"start=2026-11-20T08:00:00Z&end=2026-11-21T08:00:00Z",
		"to=2026-11-20T08:00:00.123%2B02:00",
		"types=smtp.*,*.connection-start&type=auth.failed&level=warn&source=mx1,mx2",
		`text=bounce+"mailbox+full"&order=asc&limit=1000`,
		"cursor=" + history.EncodeCursor(history.Cursor{TS: 1_795_000_000_123_456, Seq: 77}),
		"cursor=AQAAAAAAAAAAAAAAAAAAAAA&limit=0",
		"remote-ip=203.0.113.7&queueId=Q1&listener_id=smtp",
		"remote-ip=1&remoteIp=2",
		"to=0000-01-01T00:00:00Z",
		`text="unterminated&limit=-1&order=up&start=x`,
		"9x=1&Level=warn&a.b=c",
		"limit=%2B5&level=WARNING",
		"start=0000-01-01T00:00:00Z&end=9999-12-31T23:59:59.999999999Z",
		"types=" + strings.Repeat("a.b,", history.MaxTypes+1),
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		v, _ := url.ParseQuery(raw) // what it could read: ParseQuery must cope with anything
		q, err := history.ParseQuery(v, now)
		if err != nil {
			if !reflect.DeepEqual(q, history.Query{}) {
				t.Fatalf("ParseQuery(%q) = %+v with error %v, want the zero Query", raw, q, err)
			}
			return
		}
		if q.Limit < 1 || q.Limit > history.MaxLimit {
			t.Errorf("ParseQuery(%q).Limit = %d, want 1 to %d", raw, q.Limit, history.MaxLimit)
		}
		if q.Cursor != "" {
			if _, err := history.DecodeCursor(q.Cursor); err != nil {
				t.Errorf("ParseQuery(%q).Cursor = %q, which DecodeCursor refuses: %v", raw, q.Cursor, err)
			}
		}
		if q.From.IsZero() || q.To.IsZero() || q.To.Before(q.From) {
			t.Errorf("ParseQuery(%q) range = %v to %v, want both set and in order", raw, q.From, q.To)
		}
		if len(q.Types) > history.MaxTypes {
			t.Errorf("ParseQuery(%q) has %d types, want at most %d", raw, len(q.Types), history.MaxTypes)
		}
		for _, p := range q.Types {
			if err := filter.ValidPattern(p); err != nil {
				t.Errorf("ParseQuery(%q) kept type pattern %q: %v", raw, p, err)
			}
		}
		if q.MinLevel != nil {
			if _, err := q.MinLevel.MarshalText(); err != nil {
				t.Errorf("ParseQuery(%q).MinLevel = %v, not a level", raw, *q.MinLevel)
			}
		}
		if len(q.Terms) > history.MaxTerms {
			t.Errorf("ParseQuery(%q) has %d terms, want at most %d", raw, len(q.Terms), history.MaxTerms)
		}
		for _, term := range q.Terms {
			if term == "" || len(term) > history.MaxValueLen {
				t.Errorf("ParseQuery(%q) kept term %q, want 1 to %d bytes", raw, term, history.MaxValueLen)
			}
		}
		for _, s := range q.Sources {
			if s == "" || strings.TrimSpace(s) != s || strings.Contains(s, ",") {
				t.Errorf("ParseQuery(%q) kept source %q, want a trimmed, non-empty name", raw, s)
			}
		}
		if len(q.Keys) > history.MaxKeys {
			t.Errorf("ParseQuery(%q) has %d key filters, want at most %d", raw, len(q.Keys), history.MaxKeys)
		}
		for k, val := range q.Keys {
			if !event.ValidKey(k) || len(val) > history.MaxValueLen {
				t.Errorf("ParseQuery(%q) kept key filter %q=%q, want a camelCase key and at most %d bytes", raw, k, val, history.MaxValueLen)
			}
		}

		// The gateway sends the query to an archiver as JSON. Years outside 0–9999 have no
		// JSON form; ParseQuery can produce one (reported: to=0000-01-01T00:00:00Z without
		// from), which this target does not chase further.
		if y := q.From.Year(); y < 0 || y > 9999 {
			return
		}
		b, err := json.Marshal(q)
		if err != nil {
			t.Fatalf("json.Marshal(ParseQuery(%q)) = %v", raw, err)
		}
		var back history.Query
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("json.Unmarshal(%s) = %v", b, err)
		}
		if !back.From.Equal(q.From) || !back.To.Equal(q.To) || back.Limit != q.Limit || back.Desc != q.Desc ||
			back.Cursor != q.Cursor || !reflect.DeepEqual(back.MinLevel, q.MinLevel) ||
			!reflect.DeepEqual(back.Types, q.Types) || !reflect.DeepEqual(back.Terms, q.Terms) || len(back.Keys) != len(q.Keys) {
			t.Errorf("ParseQuery(%q) = %+v, but an archiver reads %+v from %s", raw, q, back, b)
		}
	})
}
