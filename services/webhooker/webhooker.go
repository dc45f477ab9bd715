// Package webhooker delivers the log's events to outside HTTP endpoints: durably (each
// endpoint reads the log through its own durable consumer, and an event is acknowledged
// only after a 2xx), signed (Stalwart's X-Signature or Standard Webhooks), batched, rate
// limited, retried on a schedule that survives restarts, and dead-lettered with the reason
// when it cannot be delivered. An endpoint that is down costs no memory: its events wait
// in the log.
//
// Endpoints live in the WEBHOOKS bucket (Endpoints) and are managed over HTTP (API). Every
// webhooker replica follows the bucket and runs a worker per active endpoint on the
// endpoint's consumer, which the replicas share.
package webhooker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/ssrf"
)

// Deps are what the webhooker uses but does not own.
type Deps struct {
	Conn *nats.Conn
	// Endpoints is the endpoint store (OpenEndpoints), which the API shares in the same
	// process.
	Endpoints *Endpoints
	Log       *slog.Logger
	Registry  prometheus.Registerer
	// Resolver resolves endpoint host names at delivery time (nil: the system's). Tests
	// give one that maps a name to a private address.
	Resolver ssrf.Resolver
}

// Service is a running webhooker.
type Service struct {
	cfg       Config
	js        jetstream.JetStream
	pub       *bus.Publisher
	records   jetstream.JetStream // publishes the records of deliveries asynchronously
	endpoints *Endpoints
	guard     *ssrf.Guard
	log       *slog.Logger
	m         *metrics
	ids       *event.IDs
}

// reconcileEvery is how often the workers are checked against the endpoints even when
// nothing changed, so that a worker that ended on its own is started again.
const reconcileEvery = 30 * time.Second

// New prepares a webhooker.
func New(cfg Config, deps Deps) (*Service, error) {
	cfg.setDefaults()
	if err := cfg.Validate(); err != nil {
		return nil, fmt.Errorf("webhooker: %w", err)
	}
	if deps.Conn == nil || deps.Endpoints == nil {
		return nil, errors.New("webhooker: Conn and Endpoints are required")
	}
	if deps.Log == nil {
		deps.Log = slog.New(slog.DiscardHandler)
	}
	if deps.Registry == nil {
		deps.Registry = prometheus.NewRegistry()
	}
	js, err := jetstream.New(deps.Conn)
	if err != nil {
		return nil, err
	}
	pub, err := bus.NewPublisher(deps.Conn, bus.PublisherConfig{Window: 256})
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(deps.Registry, js)
	if err != nil {
		return nil, fmt.Errorf("webhooker metrics: %w", err)
	}
	// Records of successful deliveries are published without waiting for their
	// acknowledgement (a round trip per batch, a tenth of the throughput); one the log
	// refuses is counted as dropped.
	records, err := jetstream.New(deps.Conn, jetstream.WithPublishAsyncMaxPending(1024),
		jetstream.WithPublishAsyncErrHandler(func(jetstream.JetStream, *nats.Msg, error) { m.outcomeDropped.Inc() }))
	if err != nil {
		return nil, err
	}
	return &Service{cfg: cfg, js: js, pub: pub, records: records, endpoints: deps.Endpoints, guard: cfg.guard(deps.Resolver),
		log: deps.Log, m: m, ids: event.NewIDs()}, nil
}

// running is a worker and how to stop it.
type running struct {
	rev    uint64
	cancel context.CancelFunc
	done   chan struct{}
}

func (r *running) ended() bool {
	select {
	case <-r.done:
		return true
	default:
		return false
	}
}

// Run delivers until ctx ends: it starts a worker for every active endpoint, and starts,
// restarts and stops them as endpoints are added, changed, paused, resumed or deleted, on
// any replica. On stop each worker finishes its request in flight (within the grace
// period) and hands back what it fetched.
func (s *Service) Run(ctx context.Context) error {
	changes, unsubscribe := s.endpoints.subscribe()
	defer unsubscribe()
	s.removeOrphans(ctx)
	workers := map[string]*running{}
	known := map[string]bool{}
	defer func() {
		for _, r := range workers {
			r.cancel()
		}
		for _, r := range workers {
			<-r.done
		}
		s.m.workers.Set(0)
	}()
	tick := time.NewTicker(reconcileEvery)
	defer tick.Stop()
	for {
		s.reconcile(ctx, workers, known)
		select {
		case <-ctx.Done():
			return nil
		case <-changes:
		case <-tick.C:
		}
	}
}

// reconcile makes the workers match the endpoints.
func (s *Service) reconcile(ctx context.Context, workers map[string]*running, known map[string]bool) {
	snap := s.endpoints.snapshot()
	var stopping []*running
	for id, r := range workers {
		st, ok := snap[id]
		if !ok || !st.active() || st.rev != r.rev || r.ended() {
			r.cancel()
			stopping = append(stopping, r)
			delete(workers, id)
		}
	}
	for _, r := range stopping {
		<-r.done
	}
	for id := range known {
		if _, ok := snap[id]; !ok {
			// Deleted: every replica deletes the consumer (once is enough; the others
			// find it gone), and the endpoint's metrics go with it.
			s.deleteConsumer(ctx, id)
			s.m.forget(id)
			delete(known, id)
		}
	}
	for id, st := range snap {
		known[id] = true
		if workers[id] != nil || !st.active() || ctx.Err() != nil {
			continue
		}
		wctx, cancel := context.WithCancel(ctx)
		r := &running{rev: st.rev, cancel: cancel, done: make(chan struct{})}
		w := s.newWorker(st.plan)
		go func() {
			defer close(r.done)
			w.run(wctx)
		}()
		workers[id] = r
	}
	s.m.workers.Set(float64(len(workers)))
}

func (st stored) active() bool { return st.plan != nil && !st.ep.Paused && !st.ep.Disabled }

func (s *Service) deleteConsumer(ctx context.Context, id string) {
	dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	err := s.js.DeleteConsumer(dctx, bus.StreamEvents, ConsumerName(id))
	if err != nil && !errors.Is(err, jetstream.ErrConsumerNotFound) {
		s.log.Warn("consumer of a deleted webhook endpoint not deleted", "endpoint", id, "err", err)
	}
}

// removeOrphans deletes the consumers of endpoints deleted while no webhooker ran. An
// endpoint is only taken for deleted when the bucket itself no longer has it (not merely
// this replica's view), so the consumer of an endpoint created a moment ago is safe.
func (s *Service) removeOrphans(ctx context.Context) {
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	str, err := s.js.Stream(lctx, bus.StreamEvents)
	if err != nil {
		return
	}
	names := str.ConsumerNames(lctx)
	var orphans []string
	for name := range names.Name() {
		id, ok := strings.CutPrefix(name, "webhook-")
		if !ok {
			continue
		}
		if _, known := s.endpoints.Get(id); known {
			continue
		}
		if _, err := s.endpoints.kv.Get(lctx, id); errors.Is(err, jetstream.ErrKeyNotFound) {
			orphans = append(orphans, id)
		}
	}
	for _, id := range orphans {
		s.deleteConsumer(ctx, id)
		s.log.Info("consumer of a deleted webhook endpoint removed", "endpoint", id)
	}
}
