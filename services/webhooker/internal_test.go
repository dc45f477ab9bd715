package webhooker

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"flag"
	"net/http"
	"os"
	"path/filepath"
	"testing"
	"time"

	standardwebhooks "github.com/standard-webhooks/standard-webhooks/libraries/go"
)

var update = flag.Bool("update", false, "rewrite the golden files")

// events are two native events as the log holds them: a Stalwart event (numeric-looking
// id, whole seconds) and a native one (ULID, sub-second time, nested data).
var events = [][]byte{
	[]byte(`{"id":"1724000000123437","createdAt":"2024-08-18T16:53:20Z","type":"auth.success","level":"info","source":"mx1.example.org","data":{"accountName":"jdoe","accountId":5,"spanId":9876,"listenerId":"imap","localPort":993,"remoteIp":"203.0.113.7","remotePort":51234}}`),
	[]byte(`{"id":"01JD4X9V6Q3Z8K2M5N7P0R1S2T","createdAt":"2026-11-21T10:15:02.123456Z","type":"smtp.rcpt-to","level":"info","source":"mx1.example.org","data":{"spanId":"7215384719","from":"a@example.com","to":["b@example.org"],"note":"caf\u00e9 \"quoted\""}}`),
}

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
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if string(got) != string(want) {
		t.Errorf("%s:\ngot  %s\nwant %s", name, got, want)
	}
}

func TestBodiesArePinned(t *testing.T) {
	golden(t, "stalwart-body.json", appendBody(nil, FormatStalwart, events))
	golden(t, "standard-body.json", appendBody(nil, FormatStandard, events))
}

func TestStalwartSignatureIsBase64HMACOfTheBody(t *testing.T) {
	body := appendBody(nil, FormatStalwart, events)
	h := http.Header{}
	newSigner(FormatStalwart, []string{"stalwart-key", "ignored"}).sign(h, "msg", time.Now(), body)
	m := hmac.New(sha256.New, []byte("stalwart-key"))
	m.Write(body)
	if got, want := h.Get("X-Signature"), base64.StdEncoding.EncodeToString(m.Sum(nil)); got != want {
		t.Errorf("X-Signature = %s, want %s", got, want)
	}
	if len(h) != 1 {
		t.Errorf("headers %v: a Stalwart request has X-Signature only", h)
	}
}

func TestStandardSignatureMatchesTheReferenceLibrary(t *testing.T) {
	body := appendBody(nil, FormatStandard, events)
	secret := newSecret()
	at := time.Unix(1_700_000_000, 0)
	h := http.Header{}
	newSigner(FormatStandard, []string{secret}).sign(h, "msg_1", at, body)
	wh, err := standardwebhooks.NewWebhook(secret)
	if err != nil {
		t.Fatal(err)
	}
	want, err := wh.Sign("msg_1", at, body)
	if err != nil {
		t.Fatal(err)
	}
	if got := h.Get(HeaderWebhookSignature); got != want {
		t.Errorf("webhook-signature = %s, want %s", got, want)
	}
	if err := wh.VerifyIgnoringTimestamp(body, h); err != nil {
		t.Error(err)
	}
}

func TestMessageIDFollowsTheEvents(t *testing.T) {
	a := messageID("ep", []uint64{1, 2, 3})
	if a != messageID("ep", []uint64{1, 2, 3}) {
		t.Error("same batch, different ids")
	}
	for _, other := range []string{messageID("ep", []uint64{1, 2, 3, 4}), messageID("ep2", []uint64{1, 2, 3})} {
		if other == a {
			t.Error("different batches share an id")
		}
	}
}

func TestRetrySchedule(t *testing.T) {
	r := Retry{Initial: Duration(time.Second), Max: Duration(10 * time.Second), MaxAge: Duration(time.Minute)}
	for k, want := range map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second, 5: 10 * time.Second, 50: 10 * time.Second} {
		if got := r.nominal(k); got != want {
			t.Errorf("nominal(%d) = %v, want %v", k, got, want)
		}
	}
	// 1+2+4+8 = 15 s before attempt 5; then 10 s steps: attempt 9 starts at 55 s.
	if r.elapsed(5) != 15*time.Second || r.elapsed(9) != 55*time.Second {
		t.Errorf("elapsed(5) = %v, elapsed(9) = %v", r.elapsed(5), r.elapsed(9))
	}
	if r.giveUp(8, 10*time.Second) || !r.giveUp(9, 10*time.Second) {
		t.Error("giveUp: want the batch kept until its next attempt would pass maxAge")
	}
	r.MaxAttempts = 3
	if !r.giveUp(3, time.Second) || r.giveUp(2, time.Second) {
		t.Error("giveUp: want it to stop at maxAttempts")
	}
	s := Retry{Schedule: []Duration{Duration(5 * time.Second), Duration(5 * time.Minute)}, MaxAge: Duration(time.Hour)}
	if s.nominal(1) != 5*time.Second || s.nominal(2) != 5*time.Minute || s.nominal(7) != 5*time.Minute {
		t.Error("schedule: want its entries, the last one repeating")
	}
	for range 100 {
		if d := jitter(10 * time.Second); d < 8*time.Second || d > 12*time.Second {
			t.Fatalf("jitter(10s) = %v, want within ±20%%", d)
		}
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"120": 2 * time.Minute, "0": 0, "999999999": 24 * time.Hour,
		now.Add(90 * time.Second).Format(http.TimeFormat): 90 * time.Second,
	} {
		if got, ok := retryAfter(http.Header{"Retry-After": {v}}, now); !ok || got != want {
			t.Errorf("Retry-After %q = %v %v, want %v", v, got, ok, want)
		}
	}
	for _, v := range []string{"", "soon", "-5"} {
		if _, ok := retryAfter(http.Header{"Retry-After": {v}}, now); ok {
			t.Errorf("Retry-After %q accepted", v)
		}
	}
}

func TestDurationJSON(t *testing.T) {
	var d Duration
	for in, want := range map[string]Duration{`"1.5s"`: Duration(1500 * time.Millisecond), `250`: Duration(250 * time.Millisecond), `"x"`: invalidDuration, `true`: invalidDuration, `-1`: invalidDuration} {
		if err := d.UnmarshalJSON([]byte(in)); err != nil || d != want {
			t.Errorf("UnmarshalJSON(%s) = %v %v, want %v", in, time.Duration(d), err, time.Duration(want))
		}
	}
	if b, _ := Duration(time.Minute).MarshalJSON(); string(b) != `"1m0s"` {
		t.Errorf("MarshalJSON = %s", b)
	}
}
