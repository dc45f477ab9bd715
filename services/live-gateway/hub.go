package livegateway

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/tidwall/gjson"

	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/filter"
)

// frame is one event on its way to a stream: the raw bytes from the log, never decoded and
// encoded again.
type frame struct {
	seq       uint64
	typ       string
	data      []byte
	spanStart []byte // the span's start event, when a filter of the stream needs it
}

// client is one open stream, as the hub sees it.
type client struct {
	key     string // the API key id, for the per-key cap
	follow  *filter.Follower
	needs   bool // the filter reads span starts
	ch      chan frame
	dropped atomic.Uint64 // frames that did not fit the queue
	mu      sync.Mutex    // guards follow, used by the hub and by a replay
}

// match applies the stream's filter. Only a filter that follows spans has state to guard:
// the others are read-only and need no lock on this hot path.
func (c *client) match(typ string, data, spanStart []byte) bool {
	if !c.needs {
		return c.follow.Match(typ, data, spanStart)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.follow.Match(typ, data, spanStart)
}

// hub reads the log with one ordered consumer per process and fans each event out to the
// streams whose filter it passes. Dispatch never blocks: a stream whose queue is full loses
// the frame, and the count is reported to it.
type hub struct {
	js  jetstream.JetStream
	log *slog.Logger

	mu      sync.RWMutex
	clients map[*client]struct{}
	lastSeq atomic.Uint64 // the last sequence dispatched to every registered stream
	needs   atomic.Int64  // streams whose filter reads span starts

	spans spanCache

	delivered atomic.Uint64
	drops     atomic.Uint64
	restarts  atomic.Uint64
	ready     chan struct{}
}

func newHub(js jetstream.JetStream, log *slog.Logger) *hub {
	return &hub{js: js, log: log, clients: map[*client]struct{}{}, spans: newSpanCache(50_000), ready: make(chan struct{})}
}

// register adds a stream and returns the last sequence dispatched before it: every event
// after that sequence reaches the stream's queue (if its filter passes and there is room).
func (h *hub) register(c *client) uint64 {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.clients[c] = struct{}{}
	if c.needs {
		h.needs.Add(1)
	}
	return h.lastSeq.Load()
}

func (h *hub) unregister(c *client) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if _, ok := h.clients[c]; ok {
		delete(h.clients, c)
		if c.needs {
			h.needs.Add(-1)
		}
	}
}

func (h *hub) count() int {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return len(h.clients)
}

// run follows the log from its current end until ctx ends, starting over (from the next
// sequence) whenever the consumer fails, for instance while NATS restarts.
func (h *hub) run(ctx context.Context) error {
	wait := 100 * time.Millisecond
	first := true
	for ctx.Err() == nil {
		start, err := h.startSeq(ctx, first)
		if err == nil {
			first = false
			err = h.consume(ctx, start)
		}
		if ctx.Err() != nil {
			break
		}
		h.restarts.Add(1)
		h.log.Warn("live consumer stopped; restarting", "err", err, "from_seq", h.lastSeq.Load()+1, "retry_in", wait)
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
		wait = min(wait*2, 5*time.Second)
	}
	return nil
}

// startSeq is where the consumer starts: the end of the log at first, then just after the
// last dispatched event, so a restart neither loses nor repeats anything.
func (h *hub) startSeq(ctx context.Context, first bool) (uint64, error) {
	if !first {
		return h.lastSeq.Load() + 1, nil
	}
	sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := h.js.Stream(sctx, bus.StreamEvents)
	if err != nil {
		return 0, err
	}
	info, err := st.Info(sctx)
	if err != nil {
		return 0, err
	}
	h.lastSeq.Store(info.State.LastSeq)
	return info.State.LastSeq + 1, nil
}

func (h *hub) consume(ctx context.Context, start uint64) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	cons, err := h.js.OrderedConsumer(cctx, bus.StreamEvents, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{bus.SubjectEvents},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    start,
	})
	cancel()
	if err != nil {
		return err
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(500))
	if err != nil {
		return err
	}
	defer it.Stop()
	select {
	case <-h.ready:
	default:
		close(h.ready)
	}
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()
	for {
		msg, err := it.Next()
		if err != nil {
			if errors.Is(err, jetstream.ErrMsgIteratorClosed) && ctx.Err() != nil {
				return nil
			}
			return err
		}
		meta, err := msg.Metadata()
		if err != nil {
			continue
		}
		h.dispatch(meta.Sequence.Stream, msg.Subject(), msg.Data())
	}
}

func (h *hub) dispatch(seq uint64, subject string, data []byte) {
	typ := strings.TrimPrefix(subject, bus.EventsPrefix)
	spanEvent := isSpanStart(typ) || isSpanEnd(typ)
	var spanID string
	if spanEvent || h.needs.Load() > 0 {
		spanID = gjson.GetBytes(data, "data.spanId").String()
	}
	f := frame{seq: seq, typ: typ, data: data}
	if spanID != "" && !isSpanStart(typ) {
		f.spanStart = h.spans.get(spanID)
	}
	delivered, dropped := uint64(0), uint64(0)
	h.mu.RLock()
	for c := range h.clients {
		if !c.match(typ, data, f.spanStart) {
			continue
		}
		select {
		case c.ch <- f:
			delivered++
		default:
			c.dropped.Add(1)
			dropped++
		}
	}
	h.lastSeq.Store(seq)
	h.mu.RUnlock()
	// One update per event, not per stream: these counters are shared by every core.
	h.delivered.Add(delivered)
	if dropped > 0 {
		h.drops.Add(dropped)
	}
	switch {
	case spanID == "":
	case isSpanStart(typ):
		h.spans.put(spanID, data)
	case isSpanEnd(typ):
		h.spans.remove(spanID)
	}
}

func isSpanStart(typ string) bool {
	return strings.HasSuffix(typ, ".connection-start") || typ == "delivery.attempt-start"
}

func isSpanEnd(typ string) bool {
	return strings.HasSuffix(typ, ".connection-end") || typ == "delivery.attempt-end"
}

// spanCache keeps the start events of open spans, at most max of them (the oldest is
// forgotten first), for the filters that look at a span's keys as Stalwart's do.
type spanCache struct {
	mu   sync.Mutex
	max  int
	m    map[string][]byte
	ring []string
	next int
}

func newSpanCache(max int) spanCache { return spanCache{max: max, m: map[string][]byte{}} }

func (s *spanCache) get(id string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m[id]
}

func (s *spanCache) put(id string, raw []byte) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[id]; !ok {
		if len(s.ring) < s.max {
			s.ring = append(s.ring, id)
		} else {
			delete(s.m, s.ring[s.next])
			s.ring[s.next] = id
			s.next = (s.next + 1) % s.max
		}
	}
	s.m[id] = raw
}

func (s *spanCache) remove(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.m, id) // its ring slot is reused in turn
}
