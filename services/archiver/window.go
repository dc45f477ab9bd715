package archiver

import (
	"encoding/json"
	"time"

	"github.com/tidwall/gjson"

	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/metric"
)

// The history's window (issue 9 #3). Every day an event is dated makes partitions (five
// schema objects each on SQLite): 20,000 events with distinct dates made every later batch
// time out for 25 minutes, and days ahead were never dropped. So the history holds the
// days of [now - Retention, now + MaxFuture] only, whatever the log holds:
//
//   - an event dated before now - Retention is not kept (acknowledged, and counted): the
//     next retention pass would drop its day anyway;
//   - an event dated after now + MaxFuture (a clock ahead) is filed under the time the log
//     stored it, with its own createdAt kept in data as originalCreatedAt; if the log's
//     time is ahead too, under now.
//
// The ingest refuses such events (ingest.max_future, and the 1970–2261 range); this is the
// defence for what reaches the log anyway: events stored before that check, and clients
// that publish on NATS directly.

// originalKey is the data key that keeps the createdAt of an event filed under another time.
const originalKey = "originalCreatedAt"

// placement is what the window does with an event or a snapshot.
type placement int

const (
	inWindow placement = iota
	tooOld             // before now - retention: not kept
	refiled            // after now + max future: filed under its arrival time
)

// Labels of mailpulse_archiver_out_of_window_total.
const (
	sidePast   = "past"
	sideFuture = "future"
)

// place puts e in the window at now; arrival is when the log stored it. It changes e when
// it files it under another time.
func (c *Config) place(e *event.Event, arrival, now time.Time) placement {
	lo, hi := now.Add(-c.Retention), now.Add(c.MaxFuture)
	switch {
	case e.CreatedAt.Before(lo):
		return tooOld
	case !e.CreatedAt.After(hi):
		return inWindow
	}
	at := arrival
	if at.IsZero() || at.After(hi) {
		at = now
	}
	if at.Before(lo) {
		return tooOld // read again from a log older than the history keeps
	}
	e.Data = withOriginal(e.Data, e.CreatedAt)
	e.CreatedAt = at.UTC()
	return refiled
}

// keepSnapshot bounds the snapshots kept likewise, to [now - MetricsRetention, now +
// MaxFuture], without refiling: a snapshot is the state at its time, and the next one of
// its producer supersedes it. It returns the side of the window a snapshot is left out on.
func (c *Config) keepSnapshot(s *metric.Snapshot, now time.Time) (side string, keep bool) {
	switch {
	case s.Time.Before(now.Add(-c.MetricsRetention)):
		return sidePast, false
	case s.Time.After(now.Add(c.MaxFuture)):
		return sideFuture, false
	}
	return "", true
}

// withOriginal returns d with originalCreatedAt first (replacing one d had).
func withOriginal(d event.Data, t time.Time) event.Data {
	b := make([]byte, 0, len(d)+64)
	b = append(b, `{"`+originalKey+`":"`...)
	b = t.UTC().AppendFormat(b, time.RFC3339Nano)
	b = append(b, '"')
	d.Each(func(key string, v gjson.Result) bool {
		if key == originalKey {
			return true
		}
		k, _ := json.Marshal(key) // a string always encodes
		b = append(b, ',')
		b = append(b, k...)
		b = append(b, ':')
		b = append(b, v.Raw...)
		return true
	})
	return append(b, '}')
}
