package webhooker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/ssrf"
)

// Errors of the endpoint store.
var (
	ErrNotFound = errors.New("webhook endpoint not found")
	ErrTooMany  = errors.New("too many webhook endpoints")
	// ErrConflict: the endpoint changed (on another replica, say) while it was being
	// updated; nothing was written.
	ErrConflict = errors.New("webhook endpoint changed concurrently; try again")
)

// Endpoints is the set of webhook endpoints, kept in the WEBHOOKS bucket and followed by
// watching it: a change made through any replica applies on every replica at once. Open
// it with OpenEndpoints; it follows the bucket until the context given there ends.
type Endpoints struct {
	js    jetstream.JetStream
	kv    jetstream.KeyValue
	cfg   Config
	guard *ssrf.Guard
	max   int
	log   *slog.Logger
	now   func() time.Time

	// work hands background work (replays, replay.go) to runWork, which runs it until the
	// store's context ends; stopping is closed when it no longer takes any.
	work     chan func(context.Context)
	stopping chan struct{}

	mu   sync.RWMutex
	byID map[string]stored
	// gone holds the last revision seen of each deleted endpoint, so that the watcher's
	// late echo of an older write does not bring it back for a moment.
	gone map[string]uint64
	subs map[chan struct{}]bool // told (without blocking) of every change
}

// stored is an endpoint as the bucket holds it, with its revision and compiled plan (nil
// when the stored definition no longer compiles: it is listed but never delivered to).
type stored struct {
	ep   Endpoint
	rev  uint64
	plan *plan
	err  error
}

// OpenEndpoints loads every endpoint of the WEBHOOKS bucket and follows it until ctx ends,
// after seeding the endpoints cfg declares (seed.go). cfg gives the networks URLs may
// point to and the maximum number of endpoints. The background work of the API (replays)
// runs until ctx ends too.
func OpenEndpoints(ctx context.Context, js jetstream.JetStream, cfg Config, log *slog.Logger) (*Endpoints, error) {
	cfg.setDefaults()
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	seeds, probs := cfg.seeds()
	if len(probs) > 0 {
		return nil, fmt.Errorf("webhooker.%s: %s", probs[0].key, probs[0].problem)
	}
	kv, err := js.KeyValue(ctx, bus.BucketWebhooks)
	if err != nil {
		return nil, fmt.Errorf("webhooks bucket: %w", err)
	}
	s := &Endpoints{js: js, kv: kv, cfg: cfg, guard: cfg.guard(nil), max: cfg.MaxEndpoints, log: log, now: time.Now,
		byID: map[string]stored{}, gone: map[string]uint64{}, subs: map[chan struct{}]bool{},
		work: make(chan func(context.Context)), stopping: make(chan struct{})}
	// Endpoints are the keys of one token (ids have no dots); the repair routes keep their
	// state beside them under replay.<id> and redeliver.<id> (replay.go, api_repair.go),
	// which this watch leaves out.
	w, err := kv.Watch(ctx, "*")
	if err != nil {
		return nil, fmt.Errorf("watch webhooks: %w", err)
	}
	if err := bus.LoadWatch(ctx, w, s.applyEntry); err != nil {
		return nil, fmt.Errorf("watch webhooks: %w", err)
	}
	if err := s.seed(ctx, seeds); err != nil {
		_ = w.Stop()
		return nil, err
	}
	go bus.FollowWatch(ctx, w, s.applyEntry)
	go s.runWork(ctx)
	return s, nil
}

func (s *Endpoints) applyEntry(e jetstream.KeyValueEntry) {
	s.apply(e.Key(), e.Operation(), e.Value(), e.Revision())
}

// apply records a change of the bucket. Changes older than what is held (a local write
// already applied, echoed later by the watcher) are ignored.
func (s *Endpoints) apply(id string, op jetstream.KeyValueOp, value []byte, rev uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if cur, ok := s.byID[id]; ok && cur.rev >= rev {
		return
	}
	if last, ok := s.gone[id]; ok && last >= rev {
		return
	}
	if op != jetstream.KeyValuePut {
		if cur, ok := s.byID[id]; ok {
			s.gone[id] = max(rev, cur.rev)
		}
		delete(s.byID, id)
	} else {
		var ep Endpoint
		st := stored{rev: rev}
		if err := json.Unmarshal(value, &ep); err != nil {
			st.err = fmt.Errorf("unreadable: %w", err)
			ep.ID = id
		} else {
			st.plan, st.err = ep.compile(s.guard)
		}
		if st.err != nil {
			s.log.Warn("webhook endpoint in the bucket is invalid; it gets nothing", "endpoint", id, "err", st.err)
		}
		st.ep = ep
		s.byID[id] = st
	}
	for ch := range s.subs {
		select {
		case ch <- struct{}{}:
		default: // a change is already signalled; the reader reads the whole set
		}
	}
}

// subscribe returns a channel that receives (coalesced) after every change, and its
// cancellation.
func (s *Endpoints) subscribe() (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	s.mu.Lock()
	s.subs[ch] = true
	s.mu.Unlock()
	return ch, func() {
		s.mu.Lock()
		delete(s.subs, ch)
		s.mu.Unlock()
	}
}

// snapshot returns every stored endpoint.
func (s *Endpoints) snapshot() map[string]stored {
	s.mu.RLock()
	defer s.mu.RUnlock()
	out := make(map[string]stored, len(s.byID))
	for id, st := range s.byID {
		out[id] = st
	}
	return out
}

// List returns every endpoint (secrets included: callers that show them mask them), by
// creation time.
func (s *Endpoints) List() []Endpoint {
	s.mu.RLock()
	out := make([]Endpoint, 0, len(s.byID))
	for _, st := range s.byID {
		out = append(out, st.ep)
	}
	s.mu.RUnlock()
	sort.Slice(out, func(i, j int) bool {
		if !out[i].CreatedAt.Equal(out[j].CreatedAt) {
			return out[i].CreatedAt.Before(out[j].CreatedAt)
		}
		return out[i].ID < out[j].ID
	})
	return out
}

// Get returns an endpoint.
func (s *Endpoints) Get(id string) (Endpoint, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	st, ok := s.byID[id]
	return st.ep, ok
}

// Create stores a new endpoint from a definition: id, timestamps and state are the
// store's; defaults fill what is missing, and a secret is generated when none is given.
// It returns the endpoint as stored, its secret in clear: the only time it is shown.
func (s *Endpoints) Create(ctx context.Context, def Endpoint) (Endpoint, error) {
	s.mu.RLock()
	n := len(s.byID)
	s.mu.RUnlock()
	if n >= s.max {
		return Endpoint{}, fmt.Errorf("%w: at most %d", ErrTooMany, s.max)
	}
	ep := def
	ep.ID = newID()
	ep.Paused, ep.Disabled, ep.DisabledReason, ep.DisabledAt = def.Paused, false, "", nil
	ep.CreatedAt = s.now().UTC()
	ep.UpdatedAt = ep.CreatedAt
	ep.setDefaults()
	if len(ep.Secrets) == 0 {
		ep.Secrets = []string{newSecret()}
	}
	if _, err := ep.compile(s.guard); err != nil {
		return Endpoint{}, err
	}
	b, err := json.Marshal(ep)
	if err != nil {
		return Endpoint{}, err
	}
	rev, err := s.kv.Create(ctx, ep.ID, b)
	if err != nil {
		return Endpoint{}, fmt.Errorf("store webhook endpoint: %w", err)
	}
	s.apply(ep.ID, jetstream.KeyValuePut, b, rev)
	return ep, nil
}

// Update replaces an endpoint's definition, keeping its id, creation time and state.
// Secrets and auth credentials left out (the API never shows them again, so a client
// cannot send them back) keep their current values.
func (s *Endpoints) Update(ctx context.Context, id string, def Endpoint) (Endpoint, error) {
	return s.modify(ctx, id, func(cur Endpoint) (Endpoint, error) {
		ep := def
		ep.ID, ep.CreatedAt = cur.ID, cur.CreatedAt
		ep.Paused, ep.Disabled, ep.DisabledReason, ep.DisabledAt = cur.Paused, cur.Disabled, cur.DisabledReason, cur.DisabledAt
		if len(ep.Secrets) == 0 {
			ep.Secrets = slices.Clone(cur.Secrets)
		}
		if ep.Auth != nil && cur.Auth != nil && ep.Auth.Type == cur.Auth.Type {
			a := *ep.Auth
			if a.Password == "" {
				a.Password = cur.Auth.Password
			}
			if a.Token == "" {
				a.Token = cur.Auth.Token
			}
			ep.Auth = &a
		}
		if ep.Start == "" {
			ep.Start = cur.Start // the start only applies to a new consumer anyway
		}
		ep.setDefaults()
		return ep, nil
	})
}

// SetPaused pauses or resumes an endpoint. Resuming also re-enables a disabled endpoint;
// either way delivery continues exactly where it stopped, as the events waited in the log.
func (s *Endpoints) SetPaused(ctx context.Context, id string, paused bool) (Endpoint, error) {
	return s.modify(ctx, id, func(ep Endpoint) (Endpoint, error) {
		ep.Paused = paused
		if !paused {
			ep.Disabled, ep.DisabledReason, ep.DisabledAt = false, "", nil
		}
		return ep, nil
	})
}

// Disable stops deliveries to an endpoint until it is resumed, with the reason.
func (s *Endpoints) Disable(ctx context.Context, id, reason string) (Endpoint, error) {
	return s.modify(ctx, id, func(ep Endpoint) (Endpoint, error) {
		now := s.now().UTC()
		ep.Disabled, ep.DisabledReason, ep.DisabledAt = true, reason, &now
		return ep, nil
	})
}

// Delete removes an endpoint. Its consumer is deleted by the webhookers when they see it
// go (webhooker.go); the events stay in the log for others.
func (s *Endpoints) Delete(ctx context.Context, id string) error {
	s.mu.RLock()
	cur, ok := s.byID[id]
	s.mu.RUnlock()
	if !ok {
		return ErrNotFound
	}
	if err := s.kv.Delete(ctx, id); err != nil {
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return ErrNotFound
		}
		return fmt.Errorf("delete webhook endpoint %s: %w", id, err)
	}
	// Applied at once, so this replica's next read does not find it; the delete's own
	// revision is later than any write seen so far.
	s.apply(id, jetstream.KeyValueDelete, nil, cur.rev+1)
	// Its replay's progress and redelivery lease go too (a replay under way sees its
	// state gone and stops).
	for _, key := range []string{replayKey(id), redeliverKey(id)} {
		if err := s.kv.Purge(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
			s.log.Warn("repair state of a deleted webhook endpoint not removed", "endpoint", id, "key", key, "err", err)
		}
	}
	return nil
}

// modify reads an endpoint from the bucket, changes it and writes it back only if nobody
// wrote it meanwhile (compare-and-set on the revision), trying again a few times.
func (s *Endpoints) modify(ctx context.Context, id string, change func(Endpoint) (Endpoint, error)) (Endpoint, error) {
	for range 5 {
		e, err := s.kv.Get(ctx, id)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			return Endpoint{}, ErrNotFound
		}
		if err != nil {
			return Endpoint{}, fmt.Errorf("read webhook endpoint %s: %w", id, err)
		}
		var cur Endpoint
		if err := json.Unmarshal(e.Value(), &cur); err != nil {
			return Endpoint{}, fmt.Errorf("webhook endpoint %s is unreadable: %w", id, err)
		}
		ep, err := change(cur)
		if err != nil {
			return Endpoint{}, err
		}
		ep.UpdatedAt = s.now().UTC()
		if _, err := ep.compile(s.guard); err != nil {
			return Endpoint{}, err
		}
		b, err := json.Marshal(ep)
		if err != nil {
			return Endpoint{}, err
		}
		rev, err := s.kv.Update(ctx, id, b, e.Revision())
		if err != nil {
			if errors.Is(err, jetstream.ErrKeyRevisionMismatch) {
				continue
			}
			return Endpoint{}, fmt.Errorf("store webhook endpoint %s: %w", id, err)
		}
		s.apply(id, jetstream.KeyValuePut, b, rev)
		return ep, nil
	}
	return Endpoint{}, ErrConflict
}
