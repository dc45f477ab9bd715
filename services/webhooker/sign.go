package webhooker

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/tidwall/gjson"
)

// Headers the webhooker sets.
const (
	HeaderSignature        = "X-Signature" // Stalwart's
	HeaderWebhookID        = "webhook-id"
	HeaderWebhookTimestamp = "webhook-timestamp"
	HeaderWebhookSignature = "webhook-signature"
	// HeaderReplay marks a request that sends again events already delivered (a replay of
	// a time range or of dead letters).
	HeaderReplay = "webhook-replay"
)

// StandardEventType is the type of the Standard Webhooks message that carries a batch.
const StandardEventType = "mailpulse.events"

// appendBody appends the request body of a batch of events (native wire form, in log order).
//
// Stalwart's format is exactly what its sender writes (crates/common/src/telemetry/
// webhooks/mod.rs and crates/trc/src/serializers/json.rs): {"events":[…]} without spaces,
// each event {"id","createdAt","type","data"} in that order, createdAt in whole seconds
// with a Z. Our level and source are left out (Stalwart sends neither; a Stalwart receiver
// might refuse unknown fields), and the type is the 0.16 name.
//
// The standard format follows Standard Webhooks' payload shape {type, timestamp, data}:
// one message per request, whose data holds the batch's events in the native form (level
// and source included) and whose timestamp is the first event's. The body depends only on
// the events, so a retry of the same batch sends the same bytes under the same webhook-id.
func appendBody(b []byte, f Format, events [][]byte) []byte {
	if f == FormatStalwart {
		b = append(b, `{"events":[`...)
		for i, raw := range events {
			if i > 0 {
				b = append(b, ',')
			}
			b = appendStalwartEvent(b, raw)
		}
		return append(b, "]}"...)
	}
	b = append(b, `{"type":"`+StandardEventType+`","timestamp":`...)
	ts := gjson.GetBytes(events[0], "createdAt")
	if ts.Type == gjson.String {
		b = append(b, ts.Raw...)
	} else {
		b = append(b, `null`...)
	}
	b = append(b, `,"data":{"events":[`...)
	for i, raw := range events {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, raw...)
	}
	return append(b, "]}}"...)
}

func appendStalwartEvent(b []byte, raw []byte) []byte {
	r := gjson.GetManyBytes(raw, "id", "createdAt", "type", "data")
	b = append(b, `{"id":`...)
	b = appendRawString(b, r[0])
	b = append(b, `,"createdAt":`...)
	if t, err := time.Parse(time.RFC3339Nano, r[1].Str); err == nil {
		b = append(b, '"')
		b = t.UTC().Truncate(time.Second).AppendFormat(b, "2006-01-02T15:04:05Z")
		b = append(b, '"')
	} else {
		b = appendRawString(b, r[1])
	}
	b = append(b, `,"type":`...)
	b = appendRawString(b, r[2])
	b = append(b, `,"data":`...)
	if r[3].IsObject() {
		b = append(b, r[3].Raw...)
	} else {
		b = append(b, `{}`...)
	}
	return append(b, '}')
}

// appendRawString writes a string token as it was encoded, or "" for anything else.
func appendRawString(b []byte, r gjson.Result) []byte {
	if r.Type == gjson.String {
		return append(b, r.Raw...)
	}
	if r.Type == gjson.Number { // Stalwart's ids may come as numbers
		return strconv.AppendQuote(b, r.Raw)
	}
	return append(b, `""`...)
}

// signer signs an endpoint's requests.
type signer struct {
	format Format
	keys   [][]byte // stalwart: the first secret's text; standard: each secret's bytes
}

func newSigner(f Format, secrets []string) signer {
	s := signer{format: f}
	for _, sec := range secrets {
		if f == FormatStalwart {
			// Stalwart keys its HMAC with the bytes of its configured key text, and sends
			// one signature.
			s.keys = append(s.keys, []byte(sec))
			break
		}
		if k, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(sec, secretPrefix)); err == nil {
			s.keys = append(s.keys, k)
		}
	}
	return s
}

// sign sets the signature headers of a request.
func (s signer) sign(h http.Header, msgID string, at time.Time, body []byte) {
	if s.format == FormatStalwart {
		if len(s.keys) > 0 {
			m := hmac.New(sha256.New, s.keys[0])
			m.Write(body)
			h.Set(HeaderSignature, base64.StdEncoding.EncodeToString(m.Sum(nil)))
		}
		return
	}
	ts := strconv.FormatInt(at.Unix(), 10)
	h.Set(HeaderWebhookID, msgID)
	h.Set(HeaderWebhookTimestamp, ts)
	sigs := make([]string, 0, len(s.keys))
	for _, k := range s.keys {
		m := hmac.New(sha256.New, k)
		m.Write([]byte(msgID))
		m.Write([]byte{'.'})
		m.Write([]byte(ts))
		m.Write([]byte{'.'})
		m.Write(body)
		sigs = append(sigs, "v1,"+base64.StdEncoding.EncodeToString(m.Sum(nil)))
	}
	h.Set(HeaderWebhookSignature, strings.Join(sigs, " "))
}

// messageID is a batch's webhook-id: the same for every attempt of the same events to the
// same endpoint (receivers deduplicate on it), different as soon as the events differ (a
// retried batch that grew is a new message).
func messageID(endpoint string, seqs []uint64) string {
	h := sha256.New()
	h.Write([]byte(endpoint))
	var b [8]byte
	for _, s := range seqs {
		binary.BigEndian.PutUint64(b[:], s)
		h.Write(b[:])
	}
	return "msg_" + hex.EncodeToString(h.Sum(nil)[:16])
}
