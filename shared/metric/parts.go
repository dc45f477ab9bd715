package metric

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"time"

	json "github.com/goccy/go-json"
)

// Snapshots travel as NATS messages, which the server bounds (max_payload, 1 MiB by
// default). A snapshot larger than that is published in parts; every reader puts the parts
// back together with Merge before using them.

// ErrSeriesTooLarge is Split's error when one series alone does not fit in a part.
var ErrSeriesTooLarge = errors.New("a series alone is larger than a part may be")

// Whole reports whether s is a whole snapshot rather than one part of one.
func (s *Snapshot) Whole() bool { return s.Parts <= 1 }

// Split encodes s for messages of at most maxBytes each. A snapshot that fits (or any
// snapshot when maxBytes ≤ 0) is one message, whole: Part and Parts stay zero. A larger one
// is spread over parts numbered 1 to Parts, its series (counters, then gauges, then
// histograms, each in name order) filling each part in turn; every part carries the
// snapshot's Source, Origin, Instance, Time and Start. s is not changed.
func (s *Snapshot) Split(maxBytes int) ([][]byte, error) {
	whole, err := s.Marshal()
	if err != nil {
		return nil, err
	}
	if maxBytes <= 0 || len(whole) <= maxBytes {
		return [][]byte{whole}, nil
	}
	// What every part holds besides its series: the envelope with the widest part numbers
	// and the three objects, empty.
	env := Snapshot{Source: s.Source, Origin: s.Origin, Instance: s.Instance, Time: s.Time, Start: s.Start, Part: math.MaxInt32, Parts: math.MaxInt32}
	eb, err := env.Marshal()
	if err != nil {
		return nil, err
	}
	budget := maxBytes - len(eb) - len(`,"counters":{},"gauges":{},"histograms":{}`)
	var parts []Snapshot
	used := budget + 1 // no part open yet
	// add puts one series of encoded size n in the open part, or in a new one.
	add := func(n int, put func(p *Snapshot)) error {
		if n > budget {
			return ErrSeriesTooLarge
		}
		if used+n > budget {
			parts = append(parts, Snapshot{Source: s.Source, Origin: s.Origin, Instance: s.Instance, Time: s.Time, Start: s.Start})
			used = 0
		}
		put(&parts[len(parts)-1])
		used += n
		return nil
	}
	// Each series costs its key, a colon, its value and a comma.
	for _, name := range sortedKeys(s.Counters) {
		v := s.Counters[name]
		n, err := entrySize(name, v)
		if err == nil {
			err = add(n, func(p *Snapshot) {
				if p.Counters == nil {
					p.Counters = map[string]uint64{}
				}
				p.Counters[name] = v
			})
		}
		if err != nil {
			return nil, fmt.Errorf("counter %q: %w", name, err)
		}
	}
	for _, name := range sortedKeys(s.Gauges) {
		v := s.Gauges[name]
		n, err := entrySize(name, v)
		if err == nil {
			err = add(n, func(p *Snapshot) {
				if p.Gauges == nil {
					p.Gauges = map[string]float64{}
				}
				p.Gauges[name] = v
			})
		}
		if err != nil {
			return nil, fmt.Errorf("gauge %q: %w", name, err)
		}
	}
	for _, name := range sortedKeys(s.Histograms) {
		v := s.Histograms[name]
		n, err := entrySize(name, v)
		if err == nil {
			err = add(n, func(p *Snapshot) {
				if p.Histograms == nil {
					p.Histograms = map[string]Histogram{}
				}
				p.Histograms[name] = v
			})
		}
		if err != nil {
			return nil, fmt.Errorf("histogram %q: %w", name, err)
		}
	}
	out := make([][]byte, len(parts))
	for i := range parts {
		parts[i].Part, parts[i].Parts = i+1, len(parts)
		if out[i], err = parts[i].Marshal(); err != nil {
			return nil, err
		}
		if len(out[i]) > maxBytes { // the sizes above are exact: this is a bug
			return nil, fmt.Errorf("snapshot part %d is %d bytes, more than %d", i+1, len(out[i]), maxBytes)
		}
	}
	return out, nil
}

// entrySize is the encoded size of one series in its object, with a separating comma.
func entrySize(name string, v any) (int, error) {
	k, err := json.Marshal(name)
	if err != nil {
		return 0, err
	}
	b, err := json.Marshal(v)
	if err != nil {
		return 0, err
	}
	return len(k) + 1 + len(b) + 1, nil
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// Merge puts split snapshots back together. The parts of one snapshot (same Source, Origin,
// Instance, Time and Parts) become one whole snapshot, in the place of the first of them;
// a snapshot with a part missing is left out, because its missing series would read as
// gone (or reset) to whoever compares it with the next one. Whole snapshots pass as they
// are, and the order is kept. The result shares no map with the parts.
func Merge(snaps []Snapshot) []Snapshot {
	type key struct {
		source, origin, instance string
		time                     time.Time
		parts                    int
	}
	type group struct {
		at   int // index in out
		seen map[int]bool
	}
	var out []Snapshot
	groups := map[key]*group{}
	for i := range snaps {
		sn := &snaps[i]
		if sn.Whole() {
			out = append(out, *sn)
			continue
		}
		if sn.Part < 1 || sn.Part > sn.Parts {
			continue // not a part of anything
		}
		k := key{sn.Source, sn.Origin, sn.Instance, sn.Time.UTC(), sn.Parts}
		g := groups[k]
		if g == nil {
			g = &group{at: len(out), seen: map[int]bool{}}
			groups[k] = g
			whole := *sn
			whole.Part, whole.Parts = 0, 0
			whole.Counters, whole.Gauges, whole.Histograms = nil, nil, nil
			out = append(out, whole)
		}
		if g.seen[sn.Part] {
			continue // the same part twice
		}
		g.seen[sn.Part] = true
		addSeries(&out[g.at], sn)
	}
	// Leave out the snapshots with a part missing.
	incomplete := map[int]bool{}
	for k, g := range groups {
		if len(g.seen) != k.parts {
			incomplete[g.at] = true
		}
	}
	if len(incomplete) == 0 {
		return out
	}
	kept := out[:0]
	for i := range out {
		if !incomplete[i] {
			kept = append(kept, out[i])
		}
	}
	return kept
}

// addSeries copies the series of part into s.
func addSeries(s *Snapshot, part *Snapshot) {
	for k, v := range part.Counters {
		if s.Counters == nil {
			s.Counters = make(map[string]uint64, len(part.Counters))
		}
		s.Counters[k] = v
	}
	for k, v := range part.Gauges {
		if s.Gauges == nil {
			s.Gauges = make(map[string]float64, len(part.Gauges))
		}
		s.Gauges[k] = v
	}
	for k, v := range part.Histograms {
		if s.Histograms == nil {
			s.Histograms = make(map[string]Histogram, len(part.Histograms))
		}
		s.Histograms[k] = v.Clone()
	}
}
