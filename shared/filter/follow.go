package filter

import "github.com/tidwall/gjson"

// MaxFollowedSpans bounds the spans one stream follows; the oldest is forgotten first.
const MaxFollowedSpans = 10_000

// Follower applies a filter to one stream with Stalwart's span semantics: once an event of a
// span passes the text and key filters, the later events of that span pass them too (type,
// level and source filters still apply). It remembers at most MaxFollowedSpans spans. It is
// not safe for concurrent use: one per stream.
type Follower struct {
	f     *Filter
	spans map[string]struct{}
	ring  []string
	next  int
}

// NewFollower returns a follower of f.
func NewFollower(f *Filter) *Follower {
	fl := &Follower{f: f}
	if f.NeedsSpan() {
		fl.spans = map[string]struct{}{}
	}
	return fl
}

// Match reports whether the event passes, and remembers its span if it does.
func (fl *Follower) Match(typ string, raw, spanStart []byte) bool {
	f := fl.f
	if !f.MatchType(typ) {
		return false
	}
	if !f.HasContentFilter() {
		return true
	}
	if !f.matchLevelSource(raw) {
		return false
	}
	if fl.spans == nil {
		return true
	}
	span := gjson.GetBytes(raw, "data.spanId")
	id := span.String()
	if id != "" {
		if _, ok := fl.spans[id]; ok {
			return true
		}
	}
	if !f.MatchContent(raw, spanStart) {
		return false
	}
	if id != "" {
		fl.remember(id)
	}
	return true
}

func (fl *Follower) remember(id string) {
	if len(fl.ring) < MaxFollowedSpans {
		fl.ring = append(fl.ring, id)
	} else {
		delete(fl.spans, fl.ring[fl.next])
		fl.ring[fl.next] = id
		fl.next = (fl.next + 1) % MaxFollowedSpans
	}
	fl.spans[id] = struct{}{}
}
