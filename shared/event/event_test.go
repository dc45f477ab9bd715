package event

import (
	"bytes"
	stdjson "encoding/json"
	"flag"
	"math/rand/v2"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files")

func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read golden file (run go test -update once): %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s changed:\ngot:\n%s\nwant:\n%s", name, got, want)
	}
}

func sampleEvent() Event {
	var b Builder
	b.Str("spanId", "7215384719").
		IP("remoteIp", netip.MustParseAddr("203.0.113.7")).
		Str("from", "a@example.com").
		Strs("to", []string{"b@example.org", "c\"quoted\"@example.org"}).
		Int("size", 52_411).
		Duration("elapsed", 1500*time.Millisecond).
		Bool("tls", true).
		Float("score", 4.25).
		Time("nextRetry", time.Date(2026, 11, 21, 10, 20, 0, 0, time.UTC)).
		Event("causedBy", "network.timeout", Data(`{"elapsed":3000}`))
	return Event{
		ID:        "01JD4X9V6Q3Z8K2M5N7P0R1S2T",
		CreatedAt: time.Date(2026, 11, 21, 10, 15, 2, 123456000, time.UTC),
		Type:      "smtp.rcpt-to",
		Level:     Info,
		Source:    "mx1.example.org",
		Data:      b.Data(),
	}
}

func TestWireFormatGolden(t *testing.T) {
	e := sampleEvent()
	if err := e.Validate(); err != nil {
		t.Fatalf("sample event invalid: %v", err)
	}
	got := e.AppendJSON(nil)
	golden(t, "event.golden", append(got, '\n'))

	if !stdjson.Valid(got) {
		t.Fatalf("AppendJSON produced invalid JSON: %s", got)
	}
	back, err := Decode(got)
	if err != nil {
		t.Fatalf("Decode(AppendJSON(e)) = %v", err)
	}
	if again := back.AppendJSON(nil); !bytes.Equal(again, got) {
		t.Errorf("round trip changed the event:\n%s\n%s", got, again)
	}
	if v := back.Data.Get("size").Int(); v != 52411 {
		t.Errorf("Data.Get(size) = %d, want 52411", v)
	}
	if v := back.Data.Get("to").Array(); len(v) != 2 || v[1].Str != `c"quoted"@example.org` {
		t.Errorf("Data.Get(to) = %v", v)
	}
}

func TestEncodingJSONAgrees(t *testing.T) {
	e := sampleEvent()
	b, err := stdjson.Marshal(e)
	if err != nil {
		t.Fatal(err)
	}
	var back Event
	if err := stdjson.Unmarshal(b, &back); err != nil {
		t.Fatalf("encoding/json Unmarshal: %v", err)
	}
	if back.ID != e.ID || !back.CreatedAt.Equal(e.CreatedAt) || back.Type != e.Type || back.Source != e.Source {
		t.Errorf("encoding/json round trip = %+v, want %+v", back, e)
	}
}

func TestDecodeRejects(t *testing.T) {
	cases := []struct {
		name, in, want string
	}{
		{"not an object", `[1]`, "want a JSON object"},
		{"malformed", `{"id":`, "event:"},
		{"wrong type for type", `{"id":"a","createdAt":"2026-01-01T00:00:00Z","type":5,"level":"info"}`, "wrong JSON type"},
		{"missing id", `{"createdAt":"2026-01-01T00:00:00Z","type":"smtp.ehlo","level":"info"}`, "id: missing"},
		{"missing createdAt", `{"id":"a","type":"smtp.ehlo","level":"info"}`, "createdAt: missing"},
		{"bad time", `{"id":"a","createdAt":"yesterday","type":"smtp.ehlo","level":"info"}`, "RFC 3339"},
		{"unknown level", `{"id":"a","createdAt":"2026-01-01T00:00:00Z","type":"smtp.ehlo","level":"loud"}`, "level \"loud\""},
		{"bad type", `{"id":"a","createdAt":"2026-01-01T00:00:00Z","type":"SMTP.Ehlo","level":"info"}`, "kebab-case"},
		{"type without group", `{"id":"a","createdAt":"2026-01-01T00:00:00Z","type":"ehlo","level":"info"}`, "kebab-case"},
		{"type with wildcard", `{"id":"a","createdAt":"2026-01-01T00:00:00Z","type":"smtp.*","level":"info"}`, "kebab-case"},
		{"type with subject token", `{"id":"a","createdAt":"2026-01-01T00:00:00Z","type":"smtp.a.b","level":"info"}`, "kebab-case"},
		{"id with space", `{"id":"a b","createdAt":"2026-01-01T00:00:00Z","type":"smtp.ehlo","level":"info"}`, "printable"},
		{"id too long", `{"id":"` + strings.Repeat("x", 129) + `","createdAt":"2026-01-01T00:00:00Z","type":"smtp.ehlo","level":"info"}`, "longer than 128"},
		{"data not object", `{"id":"a","createdAt":"2026-01-01T00:00:00Z","type":"smtp.ehlo","level":"info","data":[1]}`, "must be a JSON object"},
		{"data bad key", `{"id":"a","createdAt":"2026-01-01T00:00:00Z","type":"smtp.ehlo","level":"info","data":{"Remote IP":1}}`, "camelCase"},
		{"data too deep", `{"id":"a","createdAt":"2026-01-01T00:00:00Z","type":"smtp.ehlo","level":"info","data":{"a":` + strings.Repeat("[", 40) + strings.Repeat("]", 40) + `}}`, "nested deeper"},
		{"source with space", `{"id":"a","createdAt":"2026-01-01T00:00:00Z","type":"smtp.ehlo","level":"info","source":"a b"}`, "source"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Decode([]byte(tc.in))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("Decode(%q) error = %v, want it to mention %q", tc.in, err, tc.want)
			}
		})
	}
}

func TestDefaultsParseFillsMissing(t *testing.T) {
	now := time.Date(2026, 11, 21, 12, 0, 0, 500_000_000, time.UTC)
	d := Defaults{Now: func() time.Time { return now }, IDs: NewIDs(), Source: "mx9"}
	e, err := d.Parse([]byte(`{"type":"auth.too-many-attempts","data":{"remote-ip":"192.0.2.1","account_name":"bob"}}`))
	if err != nil {
		t.Fatalf("Parse = %v", err)
	}
	if e.ID == "" || len(e.ID) != 26 {
		t.Errorf("ID = %q, want a generated ULID", e.ID)
	}
	if !e.CreatedAt.Equal(now) {
		t.Errorf("CreatedAt = %v, want %v", e.CreatedAt, now)
	}
	if e.Level != Warn {
		t.Errorf("Level = %v, want the catalogue default warn", e.Level)
	}
	if e.Source != "mx9" {
		t.Errorf("Source = %q, want mx9", e.Source)
	}
	if got := string(e.Data); got != `{"remoteIp":"192.0.2.1","accountName":"bob"}` {
		t.Errorf("Data = %s, want keys in camelCase", got)
	}

	e, err = d.Parse([]byte(`{"id":"client-1","createdAt":"2026-11-20T08:00:00.25+01:00","type":"custom.thing","level":"ERROR","source":"mx2"}`))
	if err != nil {
		t.Fatalf("Parse = %v", err)
	}
	if e.ID != "client-1" || e.Level != Error || e.Source != "mx2" || e.CreatedAt.Format(time.RFC3339Nano) != "2026-11-20T07:00:00.25Z" {
		t.Errorf("Parse kept = %+v", e)
	}
}

func TestIDsSortable(t *testing.T) {
	g := NewIDs()
	now := time.Now()
	prev := ""
	for i := range 1000 {
		id := g.New(now.Add(time.Duration(i/10) * time.Millisecond))
		if id <= prev {
			t.Fatalf("id %q after %q is not increasing", id, prev)
		}
		prev = id
	}
	a := NewIDsFrom(rand.NewChaCha8([32]byte{1}))
	b := NewIDsFrom(rand.NewChaCha8([32]byte{1}))
	if x, y := a.New(now), b.New(now); x != y {
		t.Errorf("seeded ids differ: %s %s", x, y)
	}
}

func TestSplitBatch(t *testing.T) {
	cases := []struct {
		name  string
		in    string
		max   int
		want  int
		error string
	}{
		{"array", `[{"type":"a.b"}, {"type":"c.d"}]`, 10, 2, ""},
		{"ndjson", "{\"type\":\"a.b\"}\n\n{\"type\":\"c.d\"}\r\n{\"broken\n", 10, 3, ""},
		{"empty", "  ", 10, 0, "no events"},
		{"empty array", "[]", 10, 0, "no events"},
		{"too many", `[{},{},{}]`, 2, 0, "more than 2"},
		{"too many lines", "{}\n{}\n{}", 2, 0, "more than 2"},
		{"bad array", `[{"a":1},`, 10, 0, "not valid JSON"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := SplitBatch([]byte(tc.in), tc.max)
			if tc.error != "" {
				if err == nil || !strings.Contains(err.Error(), tc.error) {
					t.Fatalf("SplitBatch error = %v, want %q", err, tc.error)
				}
				return
			}
			if err != nil || len(got) != tc.want {
				t.Fatalf("SplitBatch = %d items, %v; want %d", len(got), err, tc.want)
			}
		})
	}
	got, _ := SplitBatch([]byte(`[ {"type":"a.b"} ,{"type":"c.d"}]`), 10)
	if string(got[0]) != `{"type":"a.b"}` || string(got[1]) != `{"type":"c.d"}` {
		t.Errorf("SplitBatch elements = %q", got)
	}
}

func TestStalwartConversion(t *testing.T) {
	d := Defaults{Now: time.Now, IDs: NewIDs(), Source: "stalwart"}
	for _, name := range []string{"stalwart-0.16", "stalwart-0.15"} {
		t.Run(name, func(t *testing.T) {
			body, err := os.ReadFile(filepath.Join("testdata", name+".json"))
			if err != nil {
				t.Fatal(err)
			}
			raw, err := SplitStalwart(body, 100)
			if err != nil {
				t.Fatalf("SplitStalwart = %v", err)
			}
			var out []byte
			for i, r := range raw {
				e, err := d.ParseStalwart(r)
				if err != nil {
					t.Fatalf("event %d: %v", i, err)
				}
				out = append(e.AppendJSON(out), '\n')
			}
			golden(t, name+".golden", out)
		})
	}
	if _, err := d.ParseStalwart([]byte(`{"createdAt":"2024-08-18T16:53:20Z","type":"auth.success"}`)); err == nil {
		t.Error("ParseStalwart accepted an event without an id")
	}
	for _, bad := range []string{``, `[]`, `{"events":3}`, `{"events":[]}`, `{"events":[`} {
		if _, err := SplitStalwart([]byte(bad), 10); err == nil {
			t.Errorf("SplitStalwart(%q) accepted it", bad)
		}
	}
}

func TestCatalogue(t *testing.T) {
	c := Known()
	if n := len(c.All()); n < 150 {
		t.Errorf("catalogue has %d types, want at least 150", n)
	}
	stalwartGroups := strings.Fields(`acme ai arc auth calendar cluster dane delivery dkim dmarc dns eval http imap
		incoming-report iprev jmap limit mail-auth manage-sieve message-ingest milter mta-hook mta-sts network
		outgoing-report pop3 push-subscription queue registry resource security server sieve smtp spam spf store
		task-manager telemetry tls tls-rpt web-dav`)
	have := map[string]bool{}
	for _, g := range c.Groups() {
		have[g] = true
	}
	for _, g := range stalwartGroups {
		if !have[g] {
			t.Errorf("group %s of Stalwart is missing from the catalogue", g)
		}
	}
	if got := DefaultLevel("auth.too-many-attempts"); got != Warn {
		t.Errorf("DefaultLevel(auth.too-many-attempts) = %v, want warn", got)
	}
	if got := DefaultLevel("nobody.knows"); got != Info {
		t.Errorf("DefaultLevel(unknown) = %v, want info", got)
	}
	if typ, ok := c.FromPromName("smtp_connection_start"); !ok || typ != "smtp.connection-start" {
		t.Errorf("FromPromName(smtp_connection_start) = %q, %v", typ, ok)
	}
}

func TestKeys(t *testing.T) {
	for in, want := range map[string]string{"remote-ip": "remoteIp", "queue_id": "queueId", "remoteIp": "remoteIp", "to": "to", "-x": "x"} {
		if got := CamelKey(in); got != want {
			t.Errorf("CamelKey(%q) = %q, want %q", in, got, want)
		}
	}
	d, err := Pairs("remote-ip", netip.MustParseAddr("::1"), "size", 3, "ok", true, "when", time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	if string(d) != `{"remoteIp":"::1","size":3,"ok":true,"when":"1970-01-01T00:00:00Z"}` {
		t.Errorf("Pairs = %s", d)
	}
	if _, err := Pairs("a"); err == nil {
		t.Error("Pairs with an odd count succeeded")
	}
	if _, err := Pairs("a", struct{}{}); err == nil {
		t.Error("Pairs with an unsupported value succeeded")
	}
}

func TestDataValidateNested(t *testing.T) {
	ok := Data(`{"causedBy":{"type":"network.timeout","data":{"at":"2026-11-21T10:00:00Z","host_name":"a"}}}`)
	if err := Data(`{"causedBy":{"type":"net.x","data":{"at":"2026-11-21"}}}`).Validate(); err != nil {
		t.Errorf("Validate(nested with dashes in values) = %v", err)
	}
	if err := ok.Validate(); err == nil {
		t.Error("Validate accepted a nested snake_case key")
	}
	if got := string(ok.NormalizeKeys()); got != `{"causedBy":{"type":"network.timeout","data":{"at":"2026-11-21T10:00:00Z","hostName":"a"}}}` {
		t.Errorf("NormalizeKeys = %s", got)
	}
}

func TestAppendStringValidJSON(t *testing.T) {
	for _, s := range []string{"plain", "quote\"back\\slash", "ctl\x00\x1f\n\t\r", "bad utf8 \xff\xfe", "sep\u2028\u2029", "ünïcødé"} {
		b := appendString(nil, s)
		var back string
		if err := stdjson.Unmarshal(b, &back); err != nil {
			t.Errorf("appendString(%q) = %s: invalid JSON: %v", s, b, err)
		}
	}
}

func FuzzDecode(f *testing.F) {
	sample := sampleEvent()
	f.Add(sample.AppendJSON(nil))
	f.Add([]byte(`{"id":1,"createdAt":"2026-01-01T00:00:00Z","type":"a.b","level":"info","data":{"x":[1,{"y":null}]}}`))
	f.Add([]byte(`{"data":{"a-b":{"c-d":1}}}`))
	d := Defaults{Now: time.Now, IDs: NewIDs()}
	f.Fuzz(func(t *testing.T, b []byte) {
		if e, err := Decode(b); err == nil {
			out := e.AppendJSON(nil)
			if !stdjson.Valid(out) {
				t.Fatalf("Decode accepted %q but AppendJSON made invalid JSON %q", b, out)
			}
			if _, err := Decode(out); err != nil {
				t.Fatalf("re-decoding %q: %v", out, err)
			}
		}
		for _, parse := range []func([]byte) (Event, error){d.Parse, d.ParseStalwart} {
			if e, err := parse(b); err == nil {
				if err := e.Validate(); err != nil {
					t.Fatalf("parse returned an invalid event: %v", err)
				}
				if !stdjson.Valid(e.AppendJSON(nil)) {
					t.Fatalf("parse of %q encodes to invalid JSON", b)
				}
			}
		}
	})
}

func FuzzSplitBatch(f *testing.F) {
	f.Add([]byte(`[{"type":"a.b"},{"type":"c.d"}]`))
	f.Add([]byte("{}\n{}\n"))
	f.Add([]byte(`{"events":[{"id":"1"}]}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, split := range []func([]byte, int) ([][]byte, error){SplitBatch, SplitStalwart} {
			items, err := split(b, 50)
			if err == nil && (len(items) == 0 || len(items) > 50) {
				t.Fatalf("split returned %d items without error", len(items))
			}
			for _, it := range items {
				if !bytes.Contains(b, it) {
					t.Fatalf("item %q is not part of the body", it)
				}
			}
		}
	})
}

func TestInvalidUTF8IsRefused(t *testing.T) {
	d := &Defaults{IDs: NewIDs(), Source: "s"}
	_, err := d.Parse([]byte("{\"type\":\"a.b\",\"data\":{\"x\":\"bad \xff\xfe\"}}"))
	if err == nil || !strings.Contains(err.Error(), "UTF-8") {
		t.Fatalf("Parse of invalid UTF-8 = %v, want a UTF-8 error", err)
	}
	if _, err := d.Parse([]byte(`{"type":"a.b","data":{"x":"ünïcødé"}}`)); err != nil {
		t.Fatalf("Parse of valid UTF-8 = %v", err)
	}
}

func TestValidateSourceRefusesWhatIsNoSubjectToken(t *testing.T) {
	for _, bad := range []string{"a..b", ".a", "a.", "a*", "a>b", "a b"} {
		if ValidateSource(bad) == nil {
			t.Errorf("ValidateSource(%q) = nil, want an error", bad)
		}
	}
	for _, good := range []string{"mx1.example.org", "stalwart", "mx-1_eu:25"} {
		if err := ValidateSource(good); err != nil {
			t.Errorf("ValidateSource(%q) = %v", good, err)
		}
	}
}

func TestPrettyPrintedDataIsStoredOnOneLine(t *testing.T) {
	d := &Defaults{IDs: NewIDs(), Source: "s"}
	e, err := d.Parse([]byte("{\"type\":\"a.b\",\"data\":{\n  \"x\": \"line\\nbreak\",\n  \"n\": 1\n}}"))
	if err != nil {
		t.Fatal(err)
	}
	if got := string(e.AppendJSON(nil)); strings.ContainsAny(got, "\r\n") || !strings.Contains(got, `"x":"line\nbreak"`) {
		t.Fatalf("encoded %q: want one line, the escaped newline kept", got)
	}
}
