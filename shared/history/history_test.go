package history_test

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/history"
)

// now is the clock of every ParseQuery call in these tests.
var now = time.Date(2026, 11, 21, 12, 0, 0, 0, time.UTC)

// values parses a raw query string, as the gateway does before calling ParseQuery.
func values(t testing.TB, raw string) url.Values {
	t.Helper()
	v, err := url.ParseQuery(raw)
	if err != nil {
		t.Fatalf("url.ParseQuery(%q) = %v", raw, err)
	}
	return v
}

// defaults is what ParseQuery returns for an empty query at now.
func defaults() history.Query {
	return history.Query{From: now.Add(-24 * time.Hour), To: now, Limit: history.DefaultLimit, Desc: true, Keys: map[string]string{}}
}

func level(l event.Level) *event.Level { return &l }

func repeat(format string, n int) string {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = fmt.Sprintf(format, i)
	}
	return strings.Join(parts, "")
}

// sameQuery compares queries, times by instant (a parsed offset is a zone of its own).
func sameQuery(a, b history.Query) bool {
	if !a.From.Equal(b.From) || !a.To.Equal(b.To) {
		return false
	}
	a.From, a.To, b.From, b.To = time.Time{}, time.Time{}, time.Time{}, time.Time{}
	return reflect.DeepEqual(a, b)
}

func TestParseQueryAccepts(t *testing.T) {
	cursor := history.EncodeCursor(history.Cursor{TS: 1_795_000_000_123_456, Seq: 77})
	tests := []struct {
		name  string
		query string
		want  func(q *history.Query) // applied to defaults()
	}{
		{"empty: the last 24 h, newest first, default limit", "", func(q *history.Query) {}},
		{"end alone: start is 24 h before it", "end=2026-11-20T08:00:00Z", func(q *history.Query) {
			q.To = time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
			q.From = q.To.Add(-24 * time.Hour)
		}},
		{"start alone: end is now", "start=2026-11-01T00:00:00Z", func(q *history.Query) {
			q.From = time.Date(2026, 11, 1, 0, 0, 0, 0, time.UTC)
		}},
		{"both, with an offset and fractions of a second", "start=2026-11-20T08:00:00.5%2B02:00&end=2026-11-20T10:00:00.123456789Z", func(q *history.Query) {
			q.From = time.Date(2026, 11, 20, 6, 0, 0, 500_000_000, time.UTC)
			q.To = time.Date(2026, 11, 20, 10, 0, 0, 123_456_789, time.UTC)
		}},
		{"an empty range is not reversed", "start=2026-11-20T08:00:00Z&end=2026-11-20T08:00:00Z", func(q *history.Query) {
			q.From = time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
			q.To = q.From
		}},
		{"times are trimmed", "start=+2026-11-20T08:00:00Z+", func(q *history.Query) {
			q.From = time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
		}},
		{"types and type, comma lists, blanks skipped", "types=smtp.*,+*.connection-start,,&type=auth.failed&types=+", func(q *history.Query) {
			q.Types = []string{"smtp.*", "*.connection-start", "auth.failed"}
		}},
		{"type wildcards: all, a bare group, prefix and suffix", "types=*,delivery,smtp.conn*,*.*-start", func(q *history.Query) {
			q.Types = []string{"*", "delivery", "smtp.conn*", "*.*-start"}
		}},
		{"as many types as allowed", "types=" + strings.TrimSuffix(repeat("g%d.*,", history.MaxTypes), ","), func(q *history.Query) {
			for i := range history.MaxTypes {
				q.Types = append(q.Types, fmt.Sprintf("g%d.*", i))
			}
		}},
		{"level", "level=warn", func(q *history.Query) { q.MinLevel = level(event.Warn) }},
		{"level in any case, and warning", "level=WARNING", func(q *history.Query) { q.MinLevel = level(event.Warn) }},
		{"level trace is kept, not mistaken for none", "level=trace", func(q *history.Query) { q.MinLevel = level(event.Trace) }},
		{"sources: comma lists and repeats", "source=mx1,+mx2&source=mx3,", func(q *history.Query) {
			q.Sources = []string{"mx1", "mx2", "mx3"}
		}},
		{"text: keywords lowercased, phrases kept whole", `text=Bounce+"Mailbox++Full"+quota`, func(q *history.Query) {
			q.Terms = []string{"bounce", "mailbox  full", "quota"}
		}},
		{"text: tabs separate, empty phrases vanish", "text=a%09b+%22%22+%22+%22", func(q *history.Query) {
			q.Terms = []string{"a", "b"}
		}},
		{"text: a phrase right after a keyword", "text=%22a+b%22c", func(q *history.Query) { q.Terms = []string{"a b", "c"} }},
		{"text: as many terms as allowed", "text=" + repeat("t%d+", history.MaxTerms), func(q *history.Query) {
			for i := range history.MaxTerms {
				q.Terms = append(q.Terms, fmt.Sprintf("t%d", i))
			}
		}},
		{"text: a term of the longest length", "text=" + strings.Repeat("x", history.MaxValueLen), func(q *history.Query) {
			q.Terms = []string{strings.Repeat("x", history.MaxValueLen)}
		}},
		{"text: blank", "text=+", func(q *history.Query) {}},
		{"order asc", "order=asc", func(q *history.Query) { q.Desc = false }},
		{"order desc", "order=desc", func(q *history.Query) {}},
		{"limit 1", "limit=1", func(q *history.Query) { q.Limit = 1 }},
		{"limit max", fmt.Sprintf("limit=%d", history.MaxLimit), func(q *history.Query) { q.Limit = history.MaxLimit }},
		{"limit trimmed", "limit=+7+", func(q *history.Query) { q.Limit = 7 }},
		{"cursor", "cursor=" + cursor, func(q *history.Query) { q.Cursor = cursor }},
		{"key filters in camelCase, kebab-case and snake_case", "remoteIp=203.0.113.7&queue-id=ABC123&listener_id=smtp", func(q *history.Query) {
			q.Keys = map[string]string{"remoteIp": "203.0.113.7", "queueId": "ABC123", "listenerId": "smtp"}
		}},
		{"a repeated key filter joins its values", "end=2026-11-20T08:00:00Z&rcpt=a@example.org&rcpt=b@example.org", func(q *history.Query) {
			q.To = time.Date(2026, 11, 20, 8, 0, 0, 0, time.UTC)
			q.From = q.To.Add(-24 * time.Hour)
			q.Keys = map[string]string{"rcpt": "a@example.org,b@example.org"}
		}},
		{"a key value of the longest length", "from-addr=" + strings.Repeat("v", history.MaxValueLen), func(q *history.Query) {
			q.Keys = map[string]string{"fromAddr": strings.Repeat("v", history.MaxValueLen)}
		}},
		{"as many key filters as allowed", strings.TrimSuffix(repeat("k%d=v&", history.MaxKeys), "&"), func(q *history.Query) {
			for i := range history.MaxKeys {
				q.Keys[fmt.Sprintf("k%d", i)] = "v"
			}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := defaults()
			tt.want(&want)
			got, err := history.ParseQuery(values(t, tt.query), now)
			if err != nil {
				t.Fatalf("ParseQuery(%q) error = %v, want none", tt.query, err)
			}
			if !sameQuery(got, want) {
				t.Errorf("ParseQuery(%q) = %+v, want %+v", tt.query, got, want)
			}
		})
	}
}

func TestParseQueryRejects(t *testing.T) {
	tests := []struct {
		name  string
		query string
		want  string // the whole error
	}{
		{"start not a time", "start=yesterday", `start "yesterday": want an RFC 3339 time`},
		{"end not a time", "end=1700000000", `end "1700000000": want an RFC 3339 time`},
		{"a date without a time", "start=2026-11-20", `start "2026-11-20": want an RFC 3339 time`},
		{"a long bad value is cut in the message", "start=" + strings.Repeat("9", 100), `start "` + strings.Repeat("9", 40) + `…": want an RFC 3339 time`},
		{"reversed range", "start=2026-11-20T10:00:00Z&end=2026-11-20T09:59:59Z", "start is after end: the range is reversed"},
		{"start in the future and no end", "start=2026-11-21T12:00:01Z", "start is after end: the range is reversed"},
		{"level unknown", "level=loud", `level: level "loud": want one of trace, debug, info, warn, error`},
		{"order unknown", "order=sideways", "order: want asc or desc"},
		{"limit zero", "limit=0", fmt.Sprintf("limit: want 1 to %d", history.MaxLimit)},
		{"limit negative", "limit=-1", fmt.Sprintf("limit: want 1 to %d", history.MaxLimit)},
		{"limit over the maximum", fmt.Sprintf("limit=%d", history.MaxLimit+1), fmt.Sprintf("limit: want 1 to %d", history.MaxLimit)},
		{"limit not a number", "limit=ten", fmt.Sprintf("limit: want 1 to %d", history.MaxLimit)},
		{"limit in exponent form", "limit=1e2", fmt.Sprintf("limit: want 1 to %d", history.MaxLimit)},
		{"limit overflowing int", "limit=99999999999999999999999", fmt.Sprintf("limit: want 1 to %d", history.MaxLimit)},
		{"text with an unterminated phrase", `text=a+"b+c`, `text: unterminated "quoted phrase"`},
		{"text with too many terms", "text=" + repeat("t%d+", history.MaxTerms+1), fmt.Sprintf("text: at most %d terms", history.MaxTerms)},
		{"text with a term too long", "text=" + strings.Repeat("x", history.MaxValueLen+1), fmt.Sprintf("text: a term is longer than %d characters", history.MaxValueLen)},
		{"too many types", "types=" + strings.TrimSuffix(repeat("g%d.*,", history.MaxTypes+1), ","), fmt.Sprintf("types: at most %d patterns", history.MaxTypes)},
		{"a key filter value too long", "remote-ip=" + strings.Repeat("1", history.MaxValueLen+1), fmt.Sprintf("remoteIp: longer than %d characters", history.MaxValueLen)},
		{"repeated values joined too long", "rcpt=" + strings.Repeat("a", history.MaxValueLen/2) + "&rcpt=" + strings.Repeat("b", history.MaxValueLen/2), fmt.Sprintf("rcpt: longer than %d characters", history.MaxValueLen)},
		{"too many key filters", strings.TrimSuffix(repeat("k%d=v&", history.MaxKeys+1), "&"), fmt.Sprintf("at most %d key filters", history.MaxKeys)},
		{"a parameter that is no key: uppercase first", "Level=warn", `parameter "Level": not a known parameter nor an event key`},
		{"a parameter that is no key: a dot", "meta.size=1", `parameter "meta.size": not a known parameter nor an event key`},
		{"a parameter that is no key: a digit first", "9lives=1", `parameter "9lives": not a known parameter nor an event key`},
		{"a parameter that is no key: a long name is cut", strings.Repeat("Z", 60) + "=1", `parameter "` + strings.Repeat("Z", 40) + `…": not a known parameter nor an event key`},
		{"cursor not base64", "cursor=!!!", "cursor: not one this API made"},
		{"cursor too short", "cursor=" + base64.RawURLEncoding.EncodeToString([]byte{1, 2, 3}), "cursor: not one this API made"},
		{"cursor of another version", "cursor=" + base64.RawURLEncoding.EncodeToString(append([]byte{2}, make([]byte, 16)...)), "cursor: not one this API made"},
		{"cursor with padding", "cursor=" + base64.URLEncoding.EncodeToString(append([]byte{1}, make([]byte, 16)...)), "cursor: not one this API made"},
		{"cursor of the standard alphabet", "cursor=" + url.QueryEscape(base64.RawStdEncoding.EncodeToString(append([]byte{1}, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfb, 0xef, 0xbe, 0xfb, 0xef, 0xbe, 0xfb, 0xef))), "cursor: not one this API made"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := history.ParseQuery(values(t, tt.query), now)
			if err == nil || err.Error() != tt.want {
				t.Errorf("ParseQuery(%q) = %+v, %v; want error %q", tt.query, got, err, tt.want)
			}
			if !reflect.DeepEqual(got, history.Query{}) {
				t.Errorf("ParseQuery(%q) = %+v with an error, want the zero Query", tt.query, got)
			}
		})
	}
}

// TestParseQueryRejectsTypePatterns: type patterns are validated like the live filter's, and
// each bad one is named.
func TestParseQueryRejectsTypePatterns(t *testing.T) {
	for _, p := range []string{"SMTP.*", "smtp.**", "smtp.a*b", "smtp.rcpt_to", "smtp.", ".ehlo", "a.b.c", "smtp.*x*", strings.Repeat("a", event.MaxTypeLen+1)} {
		q := url.Values{"types": {p}}
		_, err := history.ParseQuery(q, now)
		if err == nil || !strings.HasPrefix(err.Error(), "types: ") {
			t.Errorf("ParseQuery(%q) = %v, want a types error", q.Encode(), err)
		}
		if err != nil && len(p) <= event.MaxTypeLen && !strings.Contains(err.Error(), fmt.Sprintf("%q", p)) {
			t.Errorf("ParseQuery(%q) = %v, want the pattern named", q.Encode(), err)
		}
	}
}

// TestParseQueryReportsEveryProblem: one request with many mistakes gets all of them back
// at once, in a stable (sorted) order, so a user fixes them in one round.
func TestParseQueryReportsEveryProblem(t *testing.T) {
	raw := `start=x&end=y&types=Bad,smtp.*,also..bad&level=loud&text="open&order=up&limit=0&cursor=zz&9x=1&remote-ip=` + strings.Repeat("1", history.MaxValueLen+1)
	_, err := history.ParseQuery(values(t, raw), now)
	if err == nil {
		t.Fatalf("ParseQuery(%q) = nil error, want every problem", raw)
	}
	got := strings.Split(err.Error(), "\n")
	want := []string{
		`cursor: not one this API made`,
		`end "y": want an RFC 3339 time`,
		`level: level "loud": want one of trace, debug, info, warn, error`,
		fmt.Sprintf("limit: want 1 to %d", history.MaxLimit),
		`order: want asc or desc`,
		`parameter "9x": not a known parameter nor an event key`,
		fmt.Sprintf("remoteIp: longer than %d characters", history.MaxValueLen),
		`start "x": want an RFC 3339 time`,
		`text: unterminated "quoted phrase"`,
		`types: pattern "Bad": want group.name where each part is kebab-case, *, prefix* or *suffix (smtp.*, *.connection-start, auth.failed)`,
		`types: pattern "also..bad": want group.name where each part is kebab-case, *, prefix* or *suffix (smtp.*, *.connection-start, auth.failed)`,
	}
	if !slices.Equal(got, want) {
		t.Errorf("ParseQuery(%q) errors =\n%s\nwant\n%s", raw, strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestParseQueryReservedNamesAreNotKeys: every parameter with a meaning of its own stays out
// of the key filters, even when empty.
func TestParseQueryReservedNamesAreNotKeys(t *testing.T) {
	raw := "start=&end=&types=&type=&level=&source=&text=&order=&limit=&cursor="
	got, err := history.ParseQuery(values(t, raw), now)
	if err != nil || !sameQuery(got, defaults()) {
		t.Errorf("ParseQuery(%q) = %+v, %v; want the defaults %+v", raw, got, err, defaults())
	}
}

// TestParseQueryDoesNotKeepCallersSlices: the query owns its lists; a caller reusing its
// url.Values does not change a parsed query.
func TestParseQueryDoesNotKeepCallersSlices(t *testing.T) {
	q := url.Values{"source": {"mx1"}, "types": {"smtp.*"}}
	got, err := history.ParseQuery(q, now)
	if err != nil {
		t.Fatal(err)
	}
	q["source"][0], q["types"][0] = "changed", "changed"
	if !slices.Equal(got.Sources, []string{"mx1"}) || !slices.Equal(got.Types, []string{"smtp.*"}) {
		t.Errorf("after the caller changed its values: Sources %q Types %q, want [mx1] [smtp.*]", got.Sources, got.Types)
	}
}

func TestCursorRoundTrip(t *testing.T) {
	for _, c := range []history.Cursor{
		{},
		{TS: 1_795_000_000_123_456, Seq: 77},
		{TS: -62_135_596_800_000_000, Seq: 1}, // year 1: before the epoch
		{TS: 1<<63 - 1, Seq: 1<<64 - 1},       // the largest of both
		{TS: -1 << 63, Seq: 0},                // the smallest
		{TS: time.Date(2026, 11, 21, 10, 15, 2, 123456000, time.UTC).UnixMicro(), Seq: 12345678901},
	} {
		s := history.EncodeCursor(c)
		if strings.ContainsAny(s, "+/=%&?# ") {
			t.Errorf("EncodeCursor(%+v) = %q, not safe in a URL unescaped", c, s)
		}
		got, err := history.DecodeCursor(s)
		if err != nil || got != c {
			t.Errorf("DecodeCursor(EncodeCursor(%+v)) = %+v, %v; want it back", c, got, err)
		}
		q, err := history.ParseQuery(url.Values{"cursor": {s}}, now)
		if err != nil || q.Cursor != s {
			t.Errorf("ParseQuery(cursor=%s) = cursor %q, %v; want it kept", s, q.Cursor, err)
		}
	}
}

func TestDecodeCursorRejectsGarbage(t *testing.T) {
	valid := history.EncodeCursor(history.Cursor{TS: 5, Seq: 6})
	for _, s := range []string{
		"",
		"x",
		"not a cursor",
		valid[:len(valid)-1],
		valid + "A",
		valid + "==",
		base64.RawURLEncoding.EncodeToString(make([]byte, 17)),                       // version 0
		base64.RawURLEncoding.EncodeToString(append([]byte{1}, make([]byte, 17)...)), // one byte too many
		"\x00\x01",
	} {
		if c, err := history.DecodeCursor(s); err == nil {
			t.Errorf("DecodeCursor(%q) = %+v, want an error", s, c)
		} else if err.Error() != "cursor: not one this API made" {
			t.Errorf("DecodeCursor(%q) = %v, want %q", s, err, "cursor: not one this API made")
		}
	}
}

func TestParseTerms(t *testing.T) {
	tests := []struct {
		in   string
		want []string
	}{
		{"", nil},
		{"   ", nil},
		{"Auth", []string{"auth"}},
		{"a  b\tc", []string{"a", "b", "c"}},
		{`"Relay Denied" spam`, []string{"relay denied", "spam"}},
		{`spam "relay denied"`, []string{"spam", "relay denied"}},
		{`" padded phrase "`, []string{"padded phrase"}},
		{`"" x`, []string{"x"}},
		{`a"b`, []string{`a"b`}}, // a quote inside a keyword is part of it
		{"ÉCHEC", []string{"échec"}},
	}
	for _, tt := range tests {
		got, err := history.ParseTerms(tt.in)
		if err != nil || !slices.Equal(got, tt.want) {
			t.Errorf("ParseTerms(%q) = %q, %v; want %q", tt.in, got, err, tt.want)
		}
	}
}

func TestMatchType(t *testing.T) {
	tests := []struct {
		pattern, typ string
		want         bool
	}{
		{"auth.failed", "auth.failed", true},
		{"auth.failed", "auth.success", false},
		{"auth.fail", "auth.failed", false},
		{"smtp.*", "smtp.rcpt-to", true},
		{"smtp.*", "smtpx.rcpt-to", false},
		{"smtp.*", "imap.login", false},
		{"*.connection-start", "smtp.connection-start", true},
		{"*.connection-start", "imap.connection-start", true},
		{"*.connection-start", "smtp.connection-end", false},
		{"smtp.conn*", "smtp.connection-start", true},
		{"smtp.conn*", "smtp.ehlo", false},
		{"*.*-start", "delivery.attempt-start", true},
		{"*.*-start", "delivery.attempt-end", false},
		{"deliv*.*", "delivery.attempt-start", true},
		{"smtp", "smtp.ehlo", true}, // a bare group: all its types
		{"smtp", "imap.login", false},
		{"*", "anything.at-all", true},
		{">", "anything.at-all", true},
		{"SMTP.*", "SMTP.ehlo", false}, // an invalid pattern matches nothing
		{"smtp.**", "smtp.ehlo", false},
		{"", "smtp.ehlo", false},
	}
	for _, tt := range tests {
		if got := history.MatchType(tt.pattern, tt.typ); got != tt.want {
			t.Errorf("MatchType(%q, %q) = %v, want %v", tt.pattern, tt.typ, got, tt.want)
		}
	}
}

// TestMatchTypeAgreesWithParseQuery: every pattern ParseQuery accepts can match something.
func TestMatchTypeAgreesWithParseQuery(t *testing.T) {
	for _, info := range event.Known().All() {
		q, err := history.ParseQuery(url.Values{"types": {info.Type}}, now)
		if err != nil {
			t.Fatalf("ParseQuery(types=%s) = %v; a catalogued type is not a valid pattern", info.Type, err)
		}
		if !history.MatchType(q.Types[0], info.Type) {
			t.Errorf("MatchType(%q, %q) = false, want a type to match itself", q.Types[0], info.Type)
		}
	}
}

func TestMatchMetric(t *testing.T) {
	tests := []struct {
		pattern, id string
		want        bool
	}{
		{"queue.count", "queue.count", true},
		{"queue.count", "queue.counts", false},
		{"queue.count", "queue", false},
		{"queue.*", "queue.count", true},
		{"queue.*", "queues.count", false},
		{"*.count", "queue.count", true},
		{"*.count", "queue.counter", false},
		{"message.*.bytes", "message.in.bytes", true},
		{"message.*.bytes", "message.bytes", false}, // prefix and suffix may not overlap
		{"ab*ba", "aba", false},
		{"ab*ba", "abba", true},
		{"*", "", true},
		{"*", "anything", true},
		{"", "", true},
		{"", "x", false},
	}
	for _, tt := range tests {
		if got := history.MatchMetric(tt.pattern, tt.id); got != tt.want {
			t.Errorf("MatchMetric(%q, %q) = %v, want %v", tt.pattern, tt.id, got, tt.want)
		}
	}
}

// sampleRaw is an event in its wire form, as the stores keep it.
func sampleRaw(t testing.TB) []byte {
	t.Helper()
	var b event.Builder
	b.Str("spanId", "7215384719").Str("remoteIp", "203.0.113.7").Strs("to", []string{"b@example.org"}).Int("size", 52_411)
	e := event.Event{
		ID:        "01JD4X9V6Q3Z8K2M5N7P0R1S2T",
		CreatedAt: time.Date(2026, 11, 21, 10, 15, 2, 123456000, time.UTC),
		Type:      "smtp.rcpt-to",
		Level:     event.Info,
		Source:    "mx1.example.org",
		Data:      b.Data(),
	}
	if err := e.Validate(); err != nil {
		t.Fatalf("sample event invalid: %v", err)
	}
	return e.AppendJSON(nil)
}

// TestStoredKeepsTheEventAsIs: a stored event is its wire form, not a re-encoding: a page
// marshals it verbatim and a reader gets the same bytes back.
func TestStoredKeepsTheEventAsIs(t *testing.T) {
	raw := sampleRaw(t)
	page := history.Page{Events: []history.Stored{history.NewStored(42, raw)}, Next: "abc"}
	b, err := json.Marshal(page)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"events":[{"seq":42,"event":` + string(raw) + `}],"next":"abc"}`
	if string(b) != want {
		t.Errorf("json.Marshal(page) =\n%s\nwant\n%s", b, want)
	}
	var back history.Page
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if len(back.Events) != 1 || back.Events[0].Seq != 42 || string(back.Events[0].Raw()) != string(raw) {
		t.Errorf("json.Unmarshal(%s) = %+v, want seq 42 and the event's bytes", b, back)
	}
	// The event is one the event package reads back as it was.
	if _, err := event.Decode(back.Events[0].Raw()); err != nil {
		t.Errorf("event.Decode(stored) = %v", err)
	}
}

// TestStoredUnmarshalKeepsBytes: decoding keeps exactly the bytes received (spacing too),
// and decoding again into the same value does not leave the old event's tail behind.
func TestStoredUnmarshalKeepsBytes(t *testing.T) {
	var s history.Stored
	long := `{"seq":1,"event":{"type" : "smtp.ehlo",  "data":{"a":[1, 2, 3]}}}`
	if err := json.Unmarshal([]byte(long), &s); err != nil {
		t.Fatal(err)
	}
	if got, want := string(s.Raw()), `{"type" : "smtp.ehlo",  "data":{"a":[1, 2, 3]}}`; got != want {
		t.Errorf("Raw() = %s, want %s", got, want)
	}
	if err := json.Unmarshal([]byte(`{"seq":2,"event":{"t":1}}`), &s); err != nil {
		t.Fatal(err)
	}
	if s.Seq != 2 || string(s.Raw()) != `{"t":1}` {
		t.Errorf("after a second Unmarshal: seq %d event %s, want 2 and {\"t\":1}", s.Seq, s.Raw())
	}
}

func TestStoredWithoutEventMarshalsNull(t *testing.T) {
	for _, s := range []history.Stored{{Seq: 3}, history.NewStored(3, nil), history.NewStored(3, []byte{})} {
		b, err := json.Marshal(s)
		if err != nil || string(b) != `{"seq":3,"event":null}` {
			t.Errorf("json.Marshal(%+v) = %s, %v; want {\"seq\":3,\"event\":null}", s, b, err)
		}
	}
}

// TestStoredRefusesInvalidJSON: a corrupt stored event makes the page fail to encode, rather
// than sending a reply no client can read.
func TestStoredRefusesInvalidJSON(t *testing.T) {
	_, err := json.Marshal(history.Page{Events: []history.Stored{history.NewStored(1, []byte(`{"cut`))}})
	var me *json.MarshalerError
	if !errors.As(err, &me) {
		t.Errorf("json.Marshal(page with a corrupt event) = %v, want a *json.MarshalerError", err)
	}
}

// Bugs found by reading: a range whose default start falls before year 1 could not be sent
// to an archiver (a 503 instead of a 400), and two spellings of one key kept a random one.
func TestParseQueryEdges(t *testing.T) {
	now := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	if _, err := history.ParseQuery(url.Values{"end": {"0000-01-01T00:00:00Z"}}, now); err == nil || !strings.Contains(err.Error(), "want times from 1970") {
		t.Errorf("end=0000-01-01: %v, want the range refused", err)
	}
	for range 20 {
		q, err := history.ParseQuery(url.Values{"remote-ip": {"a"}, "remoteIp": {"b"}}, now)
		if err != nil || q.Keys["remoteIp"] != "a,b" {
			t.Fatalf("remote-ip=a&remoteIp=b = %v, %v; want both values, in name order", q.Keys, err)
		}
	}
}

// TestParseQueryMailKeysAreFilters: from and to are the commonest mail keys, so the time
// range is start and end, and every key, even one named like a parameter, is filterable
// (data.<key>). The README's "deliveries to bob" example is the first case.
func TestParseQueryMailKeysAreFilters(t *testing.T) {
	tests := []struct {
		query string
		keys  map[string]string
	}{
		{"types=delivery.*&to=bob@example.org&limit=50", map[string]string{"to": "bob@example.org"}},
		{"from=alice@example.com&to=bob@example.org", map[string]string{"from": "alice@example.com", "to": "bob@example.org"}},
		{"data.type=dmarc&data.source=x&data.limit=5", map[string]string{"type": "dmarc", "source": "x", "limit": "5"}},
		{"data.remote-ip=1.2.3.4&remoteIp=5.6.7.8", map[string]string{"remoteIp": "1.2.3.4,5.6.7.8"}},
	}
	for _, tt := range tests {
		q, err := history.ParseQuery(values(t, tt.query), now)
		if err != nil || !maps.Equal(q.Keys, tt.keys) {
			t.Errorf("ParseQuery(%q) keys = %v, %v; want %v", tt.query, q.Keys, err, tt.keys)
		}
	}
	if _, err := history.ParseQuery(values(t, "data.=x"), now); err == nil {
		t.Errorf(`ParseQuery("data.=x") = nil error, want the empty key refused`)
	}
}
