package webhooker_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/tidwall/gjson"

	"github.com/mailpulse/mailpulse/services/webhooker"
	"github.com/mailpulse/mailpulse/shared/broker/brokertest"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/poll"
	"github.com/mailpulse/mailpulse/shared/ssrf"
)

// harness is a real embedded NATS with the streams and buckets provisioned, and helpers to
// run webhookers and receivers against it.
type harness struct {
	t   *testing.T
	srv *brokertest.Server
	nc  *nats.Conn
	js  jetstream.JetStream
	pub *bus.Publisher
	cfg webhooker.Config
	eps *webhooker.Endpoints
	reg *prometheus.Registry
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	s := brokertest.Start(t)
	nc := s.Conn()
	pub, err := bus.NewPublisher(nc, bus.PublisherConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := bus.Provision(t.Context(), pub.JetStream(), bus.Limits{}, nil); err != nil {
		t.Fatal(err)
	}
	cfg := webhooker.DefaultConfig()
	cfg.AllowNetworks = ssrf.Networks{netip.MustParsePrefix("127.0.0.0/8"), netip.MustParsePrefix("::1/128")}
	cfg.Grace = 2 * time.Second
	h := &harness{t: t, srv: s, nc: nc, js: pub.JetStream(), pub: pub, cfg: cfg}
	h.eps = h.openEndpoints(nc)
	return h
}

func (h *harness) openEndpoints(nc *nats.Conn) *webhooker.Endpoints {
	h.t.Helper()
	js, err := jetstream.New(nc)
	if err != nil {
		h.t.Fatal(err)
	}
	eps, err := webhooker.OpenEndpoints(h.t.Context(), js, h.cfg, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	return eps
}

// run starts a webhooker on its own connection; stop ends it (and is also a cleanup). kill
// closes its NATS connection first, as a crash would.
func (h *harness) run(deps webhooker.Deps) (stop func(), kill func()) {
	h.t.Helper()
	nc := h.srv.Conn()
	deps.Conn = nc
	if deps.Endpoints == nil {
		deps.Endpoints = h.openEndpoints(nc)
	}
	if deps.Registry == nil {
		h.reg = prometheus.NewRegistry()
		deps.Registry = h.reg
	}
	svc, err := webhooker.New(h.cfg, deps)
	if err != nil {
		h.t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- svc.Run(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				h.t.Errorf("Run = %v", err)
			}
		})
	}
	kill = func() {
		nc.Close()
		stop()
	}
	h.t.Cleanup(stop)
	return stop, kill
}

// endpoint creates an endpoint with test-sized defaults, changed by edit.
func (h *harness) endpoint(url string, edit func(*webhooker.Endpoint)) webhooker.Endpoint {
	h.t.Helper()
	wait := webhooker.Duration(20 * time.Millisecond)
	def := webhooker.Endpoint{
		URL:     url,
		Types:   []string{"auth.*"},
		Batch:   webhooker.Batch{MaxEvents: 10, MaxWait: &wait},
		Timeout: webhooker.Duration(2 * time.Second),
		Retry:   webhooker.Retry{Initial: webhooker.Duration(50 * time.Millisecond), Max: webhooker.Duration(200 * time.Millisecond)},
	}
	if edit != nil {
		edit(&def)
	}
	ep, err := h.eps.Create(h.t.Context(), def)
	if err != nil {
		h.t.Fatalf("create endpoint: %v", err)
	}
	return ep
}

// publish publishes n events of typ, ids <prefix>-<i>.
func (h *harness) publish(n int, typ, prefix string) []string {
	h.t.Helper()
	msgs := make([]bus.Msg, n)
	ids := make([]string, n)
	for i := range n {
		e := event.Event{ID: fmt.Sprintf("%s-%d", prefix, i), CreatedAt: time.Now().UTC(), Type: typ, Level: event.Warn,
			Source: "mx1.example.org", Data: event.Data(fmt.Sprintf(`{"accountName":"user%d","remoteIp":"203.0.113.7"}`, i))}
		ids[i] = e.ID
		msgs[i] = bus.Msg{Subject: e.Subject(), ID: e.ID, Data: e.AppendJSON(nil)}
	}
	errs := make([]error, n)
	h.pub.PublishAll(h.t.Context(), msgs, errs)
	for _, err := range errs {
		if err != nil {
			h.t.Fatal(err)
		}
	}
	return ids
}

// waitConsumer waits until an endpoint's consumer exists: from then on, events published
// reach it (its start is "now").
func (h *harness) waitConsumer(id string) {
	h.t.Helper()
	poll.Until(h.t, "the endpoint's consumer", func() bool {
		_, err := h.js.Consumer(h.t.Context(), bus.StreamEvents, webhooker.ConsumerName(id))
		return err == nil
	})
}

// deadLetters returns the dead letters of an endpoint.
func (h *harness) deadLetters(id string) []*nats.Msg {
	h.t.Helper()
	name, _ := bus.DeadLetterStream("webhooker")
	str, err := h.js.Stream(h.t.Context(), name)
	if err != nil {
		h.t.Fatal(err)
	}
	info, err := str.Info(h.t.Context())
	if err != nil {
		h.t.Fatal(err)
	}
	var out []*nats.Msg
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := str.GetMsg(h.t.Context(), seq)
		if err != nil {
			continue
		}
		if m.Subject == "dlq.webhooker."+webhooker.ConsumerName(id) {
			out = append(out, &nats.Msg{Subject: m.Subject, Data: m.Data, Header: m.Header})
		}
	}
	return out
}

// records returns the delivery records (telemetry.webhook-*) in the log about an endpoint.
func (h *harness) records(id, typ string) []gjson.Result {
	h.t.Helper()
	var out []gjson.Result
	_, err := bus.ReadRange(h.t.Context(), h.js, bus.Range{Stream: bus.StreamEvents, Subjects: []string{bus.EventSubject(typ)}}, func(m bus.Message) error {
		if r := gjson.ParseBytes(m.Data); r.Get("data.endpoint").Str == id {
			out = append(out, r)
		}
		return nil
	})
	if err != nil {
		h.t.Fatal(err)
	}
	return out
}

// received is one request a receiver got.
type received struct {
	at     time.Time
	header http.Header
	body   []byte
	status int
}

// receiver is a real HTTP server that answers as respond says (n counts its requests from
// 0) and counts the events of every request it answered with a 2xx.
type receiver struct {
	srv *httptest.Server

	mu      sync.Mutex
	reqs    []received
	got     map[string]int // event id -> times received in a 2xx-answered request
	order   []string       // event ids in the order received (2xx only)
	respond func(n int, w http.ResponseWriter, r *http.Request) int
}

func newReceiver(t *testing.T, respond func(n int, w http.ResponseWriter, r *http.Request) int) *receiver {
	t.Helper()
	rc := &receiver{got: map[string]int{}, respond: respond}
	rc.srv = httptest.NewServer(http.HandlerFunc(rc.serve))
	t.Cleanup(rc.srv.Close)
	return rc
}

func ok(int, http.ResponseWriter, *http.Request) int { return http.StatusOK }

func (rc *receiver) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rc.mu.Lock()
	n := len(rc.reqs)
	rc.reqs = append(rc.reqs, received{at: time.Now(), header: r.Header.Clone(), body: body})
	rc.mu.Unlock()
	status := http.StatusOK
	if rc.respond != nil {
		status = rc.respond(n, w, r)
	}
	w.WriteHeader(status)
	rc.mu.Lock()
	defer rc.mu.Unlock()
	rc.reqs[n].status = status
	if status/100 != 2 {
		return
	}
	events := gjson.GetBytes(body, "events")
	if !events.Exists() {
		events = gjson.GetBytes(body, "data.events")
	}
	for _, e := range events.Array() {
		id := e.Get("id").String()
		rc.got[id]++
		rc.order = append(rc.order, id)
	}
}

func (rc *receiver) requests() []received {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]received(nil), rc.reqs...)
}

// hasAll reports whether every id was received at least once.
func (rc *receiver) hasAll(ids []string) bool {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	for _, id := range ids {
		if rc.got[id] == 0 {
			return false
		}
	}
	return true
}

func (rc *receiver) count(id string) int {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return rc.got[id]
}

func (rc *receiver) ids() []string {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return append([]string(nil), rc.order...)
}
