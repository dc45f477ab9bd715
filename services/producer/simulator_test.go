package producer

import (
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/tidwall/gjson"
)

func fixedClock() func() time.Time {
	t := time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC)
	return func() time.Time { t = t.Add(time.Millisecond); return t }
}

func TestSimulatorDeterministicAndRealistic(t *testing.T) {
	a, b := NewSimulator(42, "sim", fixedClock()), NewSimulator(42, "sim", fixedClock())
	types := map[string]int{}
	open := map[string]bool{}
	for i := range 20_000 {
		ea, eb := a.Next(), b.Next()
		ja, jb := ea.AppendJSON(nil), eb.AppendJSON(nil)
		if string(ja) != string(jb) {
			t.Fatalf("event %d differs between two runs with the same seed:\n%s\n%s", i, ja, jb)
		}
		if err := ea.Validate(); err != nil {
			t.Fatalf("event %d invalid: %v: %s", i, err, ja)
		}
		types[ea.Type]++
		sp := ea.Data.Get("spanId")
		if sp.Exists() && (sp.Type != gjson.Number || sp.Raw != strconv.FormatUint(sp.Uint(), 10)) {
			t.Fatalf("event %d: spanId %s, want a number, as Stalwart's span ids are: %s", i, sp.Raw, ja)
		}
		span := sp.Raw
		switch {
		case strings.HasSuffix(ea.Type, ".connection-start"):
			open[span] = true
		case strings.HasSuffix(ea.Type, ".connection-end"):
			if !open[span] {
				t.Fatalf("span %s ends without a start", span)
			}
			delete(open, span)
		}
	}
	if c := NewSimulator(43, "sim", fixedClock()).Next(); string(c.AppendJSON(nil)) == string(NewSimulator(42, "sim", fixedClock()).Next().AppendJSON(nil)) {
		t.Error("different seeds gave the same first event")
	}
	for _, want := range []string{"smtp.connection-start", "smtp.ehlo", "smtp.mail-from", "smtp.rcpt-to", "smtp.spf-from-pass", "smtp.dkim-pass",
		"smtp.dmarc-pass", "queue.message-queued", "delivery.attempt-start", "delivery.mx-lookup", "delivery.delivered", "delivery.completed",
		"delivery.connect-error", "imap.connection-start", "pop3.connection-start", "jmap.method-call", "auth.success", "auth.failed",
		"auth.too-many-attempts", "security.authentication-ban", "message-ingest.ham", "message-ingest.spam", "spam.classify", "queue.rescheduled"} {
		if types[want] == 0 {
			t.Errorf("no %s in 20000 simulated events", want)
		}
	}
	if len(open) > maxActiveSessions {
		t.Errorf("%d sessions left open, more than the %d interleaved", len(open), maxActiveSessions)
	}
}

// BenchmarkSimulator measures the simulator on one core, encoding included (target ≥ 50k
// events/s).
func BenchmarkSimulator(b *testing.B) {
	s := NewSimulator(1, "sim", nil)
	buf := make([]byte, 0, 1024)
	b.ReportAllocs()
	for b.Loop() {
		e := s.Next()
		buf = e.AppendJSON(buf[:0])
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
