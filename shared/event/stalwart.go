package event

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/tidwall/gjson"
)

// StalwartType returns the 0.16 name of a Stalwart event id: 0.15 names are renamed
// (From015), so history and filters see one name whichever version sent the event.
func StalwartType(t string) string { return From015(t) }

// ParseStalwart converts one event of Stalwart's JSON ({id, createdAt, type, data}, plus the
// text and details fields 0.15 may add, which are dropped) in either generation: 0.15 type
// names are renamed and kebab-case keys become camelCase. Stalwart sends no level, so the
// type's default level applies unless one is given; Stalwart's id is kept.
func (d *Defaults) ParseStalwart(b []byte) (Event, error) {
	w, err := decodeWire(b)
	if err != nil {
		return Event{}, err
	}
	w.Type = StalwartType(w.Type)
	if w.ID == "" {
		// Stalwart always sends an id; without one a retried batch could not be told from
		// a new one, so refuse rather than store duplicates.
		return Event{}, errors.New("id: missing (Stalwart always sends one)")
	}
	return d.complete(w)
}

// SplitStalwart returns the raw events of a Stalwart webhook payload {"events":[...]}, at
// most max of them.
func SplitStalwart(body []byte, max int) ([][]byte, error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 || body[0] != '{' {
		return nil, errors.New(`body: want Stalwart's {"events":[...]}`)
	}
	if err := checkDepth(body, MaxDepth+3); err != nil {
		return nil, fmt.Errorf("body: %w", err)
	}
	if !gjson.ValidBytes(body) {
		return nil, errors.New("body: not valid JSON")
	}
	evs := gjson.GetBytes(body, "events")
	if !evs.IsArray() {
		return nil, errors.New(`body: want Stalwart's {"events":[...]}`)
	}
	var out [][]byte
	var err error
	evs.ForEach(func(_, v gjson.Result) bool {
		if len(out) == max {
			err = fmt.Errorf("body: more than %d events: %w", max, ErrTooManyEvents)
			return false
		}
		out = append(out, body[v.Index:v.Index+len(v.Raw)])
		return true
	})
	if err != nil {
		return nil, err
	}
	if len(out) == 0 {
		return nil, ErrEmptyBatch
	}
	return out, nil
}
