package livegateway

import (
	"context"
	"log/slog"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/metric"
)

// snapshots keeps the latest metric snapshot of every source, origin and producer instance,
// and the one before it for rates, by following the METRICS stream.
type snapshots struct {
	js  jetstream.JetStream
	log *slog.Logger

	mu      sync.RWMutex
	latest  map[string]metric.Snapshot // by origin/instance/source
	prev    map[string]metric.Snapshot
	updates atomic.Uint64

	// pending gathers the parts of snapshots too large for one message (metric.Split),
	// by origin/instance/source, until the last one comes. Only the consumer uses it.
	pending map[string][]metric.Snapshot
	now     func() time.Time
}

// maxFuture is how far ahead of the gateway's clock a snapshot may be stamped: a later one
// would hide every snapshot of its producer until its time came.
const maxFuture = time.Hour

const maxSnapshotSeries = 10_000 // bounds the map against a flood of sources

// snapshotLookback is how far back the gateway reads snapshots when it starts: longer than
// any sensible snapshot or scrape interval.
const snapshotLookback = 10 * time.Minute

func newSnapshots(js jetstream.JetStream, log *slog.Logger) *snapshots {
	return &snapshots{js: js, log: log, latest: map[string]metric.Snapshot{}, prev: map[string]metric.Snapshot{},
		pending: map[string][]metric.Snapshot{}, now: time.Now}
}

// run follows the METRICS stream until ctx ends, starting over whenever the read fails, for
// instance while NATS restarts.
func (s *snapshots) run(ctx context.Context) error {
	wait := 100 * time.Millisecond
	for ctx.Err() == nil {
		err := s.consume(ctx)
		if ctx.Err() != nil {
			break
		}
		s.log.Warn("metrics consumer stopped; restarting", "err", err, "retry_in", wait)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		wait = min(wait*2, 5*time.Second)
	}
	return nil
}

// consume reads the snapshots of the last minutes, then every new one, until ctx ends or
// the read fails. Not "last per subject": several producer instances publish on the same
// subject (metrics.<source>), and the gateway needs the latest of each of them.
func (s *snapshots) consume(ctx context.Context) error {
	r := bus.Range{
		Stream:   bus.StreamMetrics,
		Subjects: []string{bus.SubjectMetrics},
		FromTime: time.Now().Add(-snapshotLookback),
		Follow:   true,
		OnGap: func(g bus.Gap) error {
			// A later snapshot of the same source replaces a lost one.
			s.log.Warn("metric snapshots dropped by the log before they were read", "from_seq", g.From, "to_seq", g.To)
			return nil
		},
	}
	_, err := bus.ReadRange(ctx, s.js, r, func(m bus.Message) error {
		snap, err := metric.Unmarshal(m.Data)
		if err != nil {
			s.log.Debug("undecodable metric snapshot skipped", "seq", m.Seq, "err", err)
			return nil
		}
		if whole, ok := s.assemble(snap); ok {
			s.add(whole)
		}
		return nil
	})
	return err
}

// assemble returns a whole snapshot: snap itself, or, once its last part has come, the
// parts of a split one put together. A part of a newer snapshot replaces the parts of an
// older one that never completed.
func (s *snapshots) assemble(snap metric.Snapshot) (metric.Snapshot, bool) {
	if snap.Whole() {
		return snap, true
	}
	k := snap.Origin + "/" + snap.Instance + "/" + snap.Source
	parts := s.pending[k]
	if len(parts) > 0 && (!parts[0].Time.Equal(snap.Time) || parts[0].Parts != snap.Parts) {
		parts = nil
	}
	if len(parts) == 0 && len(s.pending) >= maxSnapshotSeries {
		return metric.Snapshot{}, false
	}
	parts = append(parts, snap)
	if merged := metric.Merge(parts); len(merged) == 1 {
		delete(s.pending, k)
		return merged[0], true
	}
	s.pending[k] = parts
	return metric.Snapshot{}, false
}

func (s *snapshots) add(snap metric.Snapshot) {
	if snap.Time.After(s.now().Add(maxFuture)) {
		return
	}
	k := snap.Origin + "/" + snap.Instance + "/" + snap.Source
	s.mu.Lock()
	defer s.mu.Unlock()
	old, ok := s.latest[k]
	if !ok && len(s.latest) >= maxSnapshotSeries {
		return
	}
	if ok && !snap.Time.After(old.Time) {
		return
	}
	if ok {
		s.prev[k] = old
	}
	s.latest[k] = snap
	s.updates.Add(1)
}

// view is the metrics of one source and origin, summed over producer instances.
type view struct {
	source, origin string
	counters       map[string]float64
	rates          map[string]float64 // per second, from the previous snapshots
	gauges         map[string]float64
	hists          map[string]metric.Histogram
}

// views returns the current metrics, one view per source and origin.
func (s *snapshots) views() []view {
	s.mu.RLock()
	defer s.mu.RUnlock()
	by := map[string]*view{}
	for k, snap := range s.latest {
		vk := snap.Origin + "/" + snap.Source
		v := by[vk]
		if v == nil {
			v = &view{source: snap.Source, origin: snap.Origin, counters: map[string]float64{}, rates: map[string]float64{}, gauges: map[string]float64{}, hists: map[string]metric.Histogram{}}
			by[vk] = v
		}
		prev, hasPrev := s.prev[k]
		dt := snap.Time.Sub(prev.Time).Seconds()
		for name, c := range snap.Counters {
			v.counters[name] += float64(c)
			if hasPrev && dt > 0 && prev.Start.Equal(snap.Start) && c >= prev.Counters[name] {
				v.rates[name] += float64(c-prev.Counters[name]) / dt
			} else if _, ok := v.rates[name]; !ok {
				v.rates[name] = 0
			}
		}
		for name, g := range snap.Gauges {
			v.gauges[name] += g
		}
		for name, h := range snap.Histograms {
			cur, ok := v.hists[name]
			if !ok || len(cur.Counts) != len(h.Counts) {
				v.hists[name] = h.Clone()
				continue
			}
			for i := range cur.Counts {
				cur.Counts[i] += h.Counts[i]
			}
			cur.Sum += h.Sum
			cur.Count += h.Count
			v.hists[name] = cur
		}
	}
	out := make([]view, 0, len(by))
	for _, v := range by {
		out = append(out, *v)
	}
	sort.Slice(out, func(i, j int) bool {
		return out[i].source+out[i].origin < out[j].source+out[j].origin
	})
	return out
}
