package webhooker

import (
	"context"
	"net/url"
	"strings"
	"time"

	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/nats-io/nats.go/jetstream"
)

// Delivery records are events of the telemetry group, published to the log like any other,
// so the live view, the history and the alerter see them, and endpoints may subscribe to
// them. Two rules keep them from looping: an endpoint never receives the records about its
// own deliveries, and a request that carried nothing but records is not recorded itself
// (otherwise two endpoints subscribed to records would feed each other for ever).
const (
	outcomeDelivered = "telemetry.webhook-delivered"
	outcomeError     = "telemetry.webhook-error"
	outcomeDisabled  = "telemetry.webhook-disabled"
)

// isOutcome reports whether an event type is one of the delivery records.
func isOutcome(typ string) bool { return strings.HasPrefix(typ, "telemetry.webhook-") }

// record is what a delivery record says about one attempt.
type record struct {
	attempt int
	events  int
	ids     []string
	res     result
	reason  string        // why it failed, what became of the batch
	next    time.Duration // when it is tried again (0: it is not)
	// kind names what was not a delivery of the log (a repair route's: replay, redeliver,
	// test), and job the replay it belongs to.
	kind, job string
}

// record publishes a delivery record. A record that cannot be published is counted and
// dropped: the delivery it describes is settled already, and holding it would hold the
// endpoint. Records of successes are not waited for; errors and disablings are.
func (s *Service) record(ctx context.Context, p *plan, typ string, r record) {
	level := event.Info
	switch typ {
	case outcomeError:
		level = event.Warn
	case outcomeDisabled:
		level = event.Error
	}
	var b event.Builder
	b.Str("endpoint", p.ID).Str("url", redactURL(p.URL))
	if r.res.status != 0 {
		b.Int("code", int64(r.res.status))
	}
	b.Int("elapsed", r.res.elapsed.Milliseconds()).Int("attempt", int64(r.attempt)).Int("total", int64(r.events))
	b.Strs("eventIds", r.ids)
	if r.res.snippet != "" {
		b.Str("contents", r.res.snippet)
	}
	if r.reason != "" {
		b.Str("reason", r.reason)
	}
	if r.next > 0 {
		b.Int("nextRetry", r.next.Milliseconds())
	}
	if r.kind != "" {
		b.Str("kind", r.kind)
	}
	if r.job != "" {
		b.Str("job", r.job)
	}
	now := time.Now().UTC()
	e := event.Event{ID: s.ids.New(now), CreatedAt: now, Type: typ, Level: level, Source: s.cfg.Source, Data: b.Data()}
	if typ == outcomeDelivered && r.kind == "" && s.records != nil {
		// The hot path: not waited for (PublishAsync's error handler counts a refusal).
		if _, err := s.records.PublishAsync(bus.EventSubject(e.Type), e.AppendJSON(nil), jetstream.WithMsgID(e.ID)); err != nil {
			s.m.outcomeDropped.Inc()
		}
		return
	}
	pctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if err := s.pub.Publish(pctx, bus.Msg{Subject: bus.EventSubject(e.Type), ID: e.ID, Data: e.AppendJSON(nil)}); err != nil {
		s.m.outcomeDropped.Inc()
		s.log.Debug("delivery record not published", "endpoint", p.ID, "type", typ, "err", err)
	}
}

// redactURL keeps the scheme, host and path of a URL: its query may carry a token.
func redactURL(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return ""
	}
	return u.Scheme + "://" + u.Host + u.EscapedPath()
}
