package metric

import (
	"errors"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"time"
)

func bigSnapshot(counters int) Snapshot {
	s := Snapshot{Source: "mx", Origin: OriginEvents, Instance: "p-1", Time: time.Date(2026, 11, 21, 10, 0, 0, 0, time.UTC), Start: time.Date(2026, 11, 21, 9, 0, 0, 0, time.UTC),
		Counters: map[string]uint64{}, Gauges: map[string]float64{"queue.count": 3, "smtp.active-connections": 1.5},
		Histograms: map[string]Histogram{}}
	for i := range counters {
		s.Counters[fmt.Sprintf("custom.type-%06d", i)] = uint64(i)
	}
	for _, h := range Histograms {
		hh := NewHistogram(h.Bounds)
		hh.Observe(42)
		s.Histograms[h.Name] = hh
	}
	return s
}

// Issue 9 #7: a snapshot larger than the server's max payload failed to publish, forever.
func TestSplitAndMerge(t *testing.T) {
	for _, tt := range []struct {
		name      string
		counters  int
		max       int
		wantParts int // 0: more than one
	}{
		{"fits", 10, 64 << 10, 1},
		{"no limit", 5000, 0, 1},
		{"64 KiB", 10_000, 64 << 10, 0},
		{"tiny parts", 300, 1200, 0},
	} {
		t.Run(tt.name, func(t *testing.T) {
			s := bigSnapshot(tt.counters)
			msgs, err := s.Split(tt.max)
			if err != nil {
				t.Fatalf("Split(%d) = %v", tt.max, err)
			}
			if tt.wantParts == 1 && len(msgs) != 1 || tt.wantParts == 0 && len(msgs) < 2 {
				t.Fatalf("Split(%d) made %d messages, want %d (0: several)", tt.max, len(msgs), tt.wantParts)
			}
			var parts []Snapshot
			for i, m := range msgs {
				if tt.max > 0 && len(m) > tt.max {
					t.Errorf("message %d is %d bytes, more than %d", i, len(m), tt.max)
				}
				p, err := Unmarshal(m)
				if err != nil {
					t.Fatal(err)
				}
				if len(msgs) == 1 && (!p.Whole() || strings.Contains(string(m), `"part"`)) {
					t.Errorf("a snapshot that fits is sent as a part: %s…", m[:80])
				}
				if len(msgs) > 1 && (p.Part != i+1 || p.Parts != len(msgs) || p.Source != s.Source || !p.Time.Equal(s.Time) || !p.Start.Equal(s.Start)) {
					t.Errorf("part %d = %d/%d %s %v: want %d/%d with the snapshot's envelope", i, p.Part, p.Parts, p.Source, p.Time, i+1, len(msgs))
				}
				parts = append(parts, p)
			}
			// Out of order, with a part twice and another snapshot in between: one whole again.
			other := bigSnapshot(1)
			other.Source = "mx2"
			mixed := append([]Snapshot{other}, parts...)
			if len(parts) > 1 {
				mixed = append([]Snapshot{parts[len(parts)-1], other}, parts...)
			}
			got := Merge(mixed)
			if len(got) != 2 {
				t.Fatalf("Merge = %d snapshots, want 2", len(got))
			}
			if len(parts) == 1 {
				got[0], got[1] = got[1], got[0]
			}
			if !got[0].Whole() || got[0].Part != 0 || got[1].Source != "mx2" {
				t.Errorf("Merge = %+v…, want the merged one first, then mx2", got[0].Source)
			}
			want := s
			if !reflect.DeepEqual(got[0].Counters, want.Counters) || !reflect.DeepEqual(got[0].Gauges, want.Gauges) || !reflect.DeepEqual(got[0].Histograms, want.Histograms) {
				t.Errorf("merged snapshot differs from the one split: %d counters, %d gauges, %d histograms; want %d, %d, %d",
					len(got[0].Counters), len(got[0].Gauges), len(got[0].Histograms), len(want.Counters), len(want.Gauges), len(want.Histograms))
			}
		})
	}
}

func TestMergeLeavesOutIncompleteSnapshots(t *testing.T) {
	s := bigSnapshot(2000)
	msgs, err := s.Split(16 << 10)
	if err != nil || len(msgs) < 3 {
		t.Fatalf("Split = %d parts, %v; want at least 3", len(msgs), err)
	}
	var parts []Snapshot
	for _, m := range msgs[1:] { // the first part is lost
		p, _ := Unmarshal(m)
		parts = append(parts, p)
	}
	whole := bigSnapshot(1)
	bogus := whole
	bogus.Part, bogus.Parts = 3, 2
	got := Merge(append(parts, whole, bogus))
	if len(got) != 1 || len(got[0].Counters) != 1 {
		t.Errorf("Merge = %d snapshots, want only the whole one (an incomplete snapshot and a bogus part left out)", len(got))
	}
}

func TestSplitRefusesASeriesLargerThanAPart(t *testing.T) {
	s := bigSnapshot(0)
	s.Counters["custom."+strings.Repeat("x", 2000)] = 1
	if _, err := s.Split(1000); !errors.Is(err, ErrSeriesTooLarge) {
		t.Errorf("Split = %v, want ErrSeriesTooLarge", err)
	}
}
