package filter

import (
	"fmt"
	"net/url"
	"reflect"
	"strings"
	"testing"
)

func mustParse(t *testing.T, q string) *Filter {
	t.Helper()
	v, err := url.ParseQuery(q)
	if err != nil {
		t.Fatal(err)
	}
	f, err := Parse(v)
	if err != nil {
		t.Fatalf("Parse(%q) = %v", q, err)
	}
	return f
}

func ev(typ, level, source, data string) []byte {
	return []byte(fmt.Sprintf(`{"id":"x","createdAt":"2026-11-21T10:00:00Z","type":%q,"level":%q,"source":%q,"data":%s}`, typ, level, source, data))
}

func TestSubjects(t *testing.T) {
	cases := map[string][]string{
		"":                                     {"events.>"},
		"types=smtp.*":                         {"events.smtp.*"},
		"types=*.connection-start,auth.failed": {"events.*.connection-start", "events.auth.failed"},
		"types=smtp.*,smtp.ehlo":               {"events.smtp.*"},
		"types=smtp.conn*":                     {"events.smtp.*"},
		"types=*":                              {"events.>"},
		"types=delivery":                       {"events.delivery.*"},
		"types=auth.failed&types=auth.success": {"events.auth.failed", "events.auth.success"},
	}
	for q, want := range cases {
		if got := mustParse(t, q).Subjects(); !reflect.DeepEqual(got, want) {
			t.Errorf("Subjects(%q) = %v, want %v", q, got, want)
		}
	}
}

func TestMatch(t *testing.T) {
	start := ev("smtp.connection-start", "debug", "mx1", `{"spanId":"7","remoteIp":"203.0.113.7","listenerId":"smtp"}`)
	rcpt := ev("smtp.rcpt-to", "info", "mx1", `{"spanId":"7","to":["bob@example.org"],"size":2048,"tls":true}`)
	cases := []struct {
		q     string
		typ   string
		raw   []byte
		span  []byte
		match bool
	}{
		{"types=smtp.*", "smtp.rcpt-to", rcpt, nil, true},
		{"types=imap.*", "smtp.rcpt-to", rcpt, nil, false},
		{"types=*.rcpt-*", "smtp.rcpt-to", rcpt, nil, true},
		{"types=*-to", "smtp.rcpt-to", rcpt, nil, false},
		{"level=info", "smtp.rcpt-to", rcpt, nil, true},
		{"level=warn", "smtp.rcpt-to", rcpt, nil, false},
		{"source=mx2,mx1", "smtp.rcpt-to", rcpt, nil, true},
		{"source=mx2", "smtp.rcpt-to", rcpt, nil, false},
		{"to=bob@", "smtp.rcpt-to", rcpt, nil, true},
		{"to=carol", "smtp.rcpt-to", rcpt, nil, false},
		{"size=2048", "smtp.rcpt-to", rcpt, nil, true},
		{"size=20", "smtp.rcpt-to", rcpt, nil, false},
		{"remoteIp=203.0.113", "smtp.rcpt-to", rcpt, start, true},
		{"remote-ip=203.0.113", "smtp.rcpt-to", rcpt, start, true},
		{"remote-ip=203.0.113", "smtp.rcpt-to", rcpt, nil, false},
		{"filter=example.org", "smtp.rcpt-to", rcpt, nil, false}, // lists do not match filter=
		{"filter=203.0", "smtp.rcpt-to", rcpt, start, true},      // the span's values do
		{"filter=true", "smtp.rcpt-to", rcpt, nil, true},
		{"filter=2048", "smtp.rcpt-to", rcpt, nil, false}, // numbers do not
		{"types=smtp.*&level=info&remoteIp=203&filter=smtp", "smtp.rcpt-to", rcpt, start, true},
		// data.<key> names a key even when a parameter has its name.
		{"data.to=bob@", "smtp.rcpt-to", rcpt, nil, true},
		{"data.listener-id=smtp", "smtp.rcpt-to", rcpt, start, true},
		{"data.type=dmarc", "smtp.rcpt-to", rcpt, nil, false},
		{"data.type=dmarc", "report.x", ev("report.x", "info", "mx1", `{"type":"dmarc"}`), nil, true},
		{"data.source=relay", "report.x", ev("report.x", "info", "mx1", `{"source":"relay"}`), nil, true},
	}
	for _, tc := range cases {
		f := mustParse(t, tc.q)
		if got := f.Match(tc.typ, tc.raw, tc.span); got != tc.match {
			t.Errorf("Parse(%q).Match = %v, want %v", tc.q, got, tc.match)
		}
	}
}

func TestParseRejects(t *testing.T) {
	cases := map[string]string{
		"level=loud":                          "level",
		"types=sm*tp.x":                       "pattern",
		"types=**":                            "pattern",
		"types=smtp.a.b":                      "pattern",
		"types=SMTP.*":                        "pattern",
		"filter=" + strings.Repeat("x", 300):  "longer than 256",
		"Bad%20Key=1":                         "not a filter",
		"types=" + strings.Repeat("a.b,", 40): "at most 32",
	}
	for q, want := range cases {
		v, _ := url.ParseQuery(q)
		_, err := Parse(v)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) error = %v, want it to mention %q", q, err, want)
		}
	}
	v, _ := url.ParseQuery("level=loud&types=**")
	if _, err := Parse(v); err == nil || !strings.Contains(err.Error(), "level") || !strings.Contains(err.Error(), "pattern") {
		t.Errorf("Parse does not report every problem: %v", err)
	}
	v, _ = url.ParseQuery("token=x&since=5&interval=3&metrics=a")
	if _, err := Parse(v); err != nil {
		t.Errorf("reserved parameters are not filters: %v", err)
	}
}

func TestFollowerFollowsMatchedSpans(t *testing.T) {
	fl := NewFollower(mustParse(t, "to=bob"))
	rcpt := ev("smtp.rcpt-to", "info", "mx", `{"spanId":"7","to":["bob@example.org"]}`)
	end := ev("smtp.connection-end", "debug", "mx", `{"spanId":"7","elapsed":10}`)
	other := ev("smtp.connection-end", "debug", "mx", `{"spanId":"8","elapsed":10}`)
	if fl.Match("smtp.connection-end", end, nil) {
		t.Error("matched a span before any of its events matched")
	}
	if !fl.Match("smtp.rcpt-to", rcpt, nil) || !fl.Match("smtp.connection-end", end, nil) {
		t.Error("the span's later event does not follow its matching event")
	}
	if fl.Match("smtp.connection-end", other, nil) {
		t.Error("another span followed")
	}
	for i := range MaxFollowedSpans + 10 {
		fl.Match("smtp.rcpt-to", ev("smtp.rcpt-to", "info", "mx", fmt.Sprintf(`{"spanId":"s%d","to":["bob"]}`, i)), nil)
	}
	if len(fl.spans) > MaxFollowedSpans || fl.Match("smtp.connection-end", end, nil) {
		t.Errorf("follower holds %d spans; the oldest should be forgotten", len(fl.spans))
	}
}

func FuzzParse(f *testing.F) {
	f.Add("types=smtp.*,*.connection-start&level=info&remote-ip=1.2&filter=x")
	f.Add("types=a*.*b&source=x")
	f.Fuzz(func(t *testing.T, q string) {
		v, err := url.ParseQuery(q)
		if err != nil {
			return
		}
		flt, err := Parse(v)
		if err != nil {
			return
		}
		for _, s := range flt.Subjects() {
			if !strings.HasPrefix(s, "events.") || strings.ContainsAny(s, " \t\r\n") {
				t.Fatalf("bad subject %q from %q", s, q)
			}
		}
		flt.Match("smtp.ehlo", ev("smtp.ehlo", "info", "mx", `{"a":"b"}`), nil)
	})
}

func TestParseTypes(t *testing.T) {
	ts, err := ParseTypes([]string{"smtp.*", " auth.failed ", "*.connection-start", ""})
	if err != nil {
		t.Fatalf("ParseTypes = %v", err)
	}
	for typ, want := range map[string]bool{"smtp.ehlo": true, "auth.failed": true, "auth.success": false, "imap.connection-start": true} {
		if got := ts.Match(typ); got != want {
			t.Errorf("Match(%q) = %v, want %v", typ, got, want)
		}
	}
	if ts.String() != "smtp.*,auth.failed,*.connection-start" {
		t.Errorf("String = %q", ts.String())
	}
	var bad Types
	if err := bad.UnmarshalText([]byte("SMTP.*,ok.fine,a..b")); err == nil || !strings.Contains(err.Error(), "SMTP.*") || !strings.Contains(err.Error(), "a..b") {
		t.Errorf("UnmarshalText of bad patterns = %v, want an error naming each", err)
	}
	if !(Types{}).Empty() || ts.Empty() {
		t.Error("Empty wrong")
	}
}
