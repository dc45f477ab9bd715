package event

import (
	stdjson "encoding/json"
	"testing"
	"time"
)

// A ~500-byte client event, the size the targets are stated for.
var benchInput = []byte(`{"id":"01JD4X9V6Q3Z8K2M5N7P0R1S2T","createdAt":"2026-11-21T10:15:02.123456Z","type":"queue.message-queued","level":"info","source":"mx1.example.org","data":{"spanId":"7215384719","queueId":"4611686018427387904","remoteIp":"203.0.113.7","remotePort":51234,"from":"newsletter@shop.example.com","to":["alice@example.org","bob@example.org"],"size":52411,"tls":true,"nextRetry":"2026-11-21T10:20:02Z","nextDsn":"2026-11-21T14:15:02Z","expires":"2026-11-26T10:15:02Z","messageId":"<20261121101502.4f2a@shop.example.com>","domain":"example.org","accountName":"","details":"250 2.0.0 queued"}}`)

// BenchmarkDecodeValidateEncode is the producer's per-event CPU path: parse and validate a
// client event, complete it, encode it for the log. Target: ≥ 300k events/s on one core.
func BenchmarkDecodeValidateEncode(b *testing.B) {
	d := Defaults{Now: time.Now, IDs: NewIDs(), Source: "mx"}
	buf := make([]byte, 0, 1024)
	b.SetBytes(int64(len(benchInput)))
	b.ReportAllocs()
	for b.Loop() {
		e, err := d.Parse(benchInput)
		if err != nil {
			b.Fatal(err)
		}
		buf = e.AppendJSON(buf[:0])
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// BenchmarkDecode is what a consumer of the log pays per event.
func BenchmarkDecode(b *testing.B) {
	b.SetBytes(int64(len(benchInput)))
	b.ReportAllocs()
	for b.Loop() {
		if _, err := Decode(benchInput); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// stdEvent is the same envelope decoded the obvious way with encoding/json, the baseline the
// codec choice is measured against.
type stdEvent struct {
	ID        string         `json:"id"`
	CreatedAt time.Time      `json:"createdAt"`
	Type      string         `json:"type"`
	Level     string         `json:"level"`
	Source    string         `json:"source"`
	Data      map[string]any `json:"data"`
}

func BenchmarkStdlibDecodeEncode(b *testing.B) {
	b.SetBytes(int64(len(benchInput)))
	b.ReportAllocs()
	for b.Loop() {
		var e stdEvent
		if err := stdjson.Unmarshal(benchInput, &e); err != nil {
			b.Fatal(err)
		}
		if _, err := stdjson.Marshal(&e); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "events/s")
}
