package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/tidwall/gjson"
	"golang.org/x/crypto/bcrypt"

	"github.com/mailpulse/mailpulse/shared/broker"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
)

// webhooks runs "mailpulse bench webhooks": the webhooker as a process of its own
// ("mailpulse webhooker", this binary) against a NATS server of this process, with real HTTP
// receivers here, measured against a raw baseline of the same run.
func webhooks(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("bench webhooks", flag.ContinueOnError)
	drain := fs.Int("events", 50_000, "events of the throughput phase")
	endpoints := fs.Int("endpoints", 50, "endpoints of the fan-out phase")
	rate := fs.Int("rate", 2000, "events/s of the fan-out phase")
	seconds := fs.Int("seconds", 10, "length of each fan-out run")
	outage := fs.Int("outage", 60, "seconds an endpoint is down in the catch-up phase (the issue's target: 600)")
	behind := fs.Int("behind", 1_000_000, "events one endpoint is behind in the memory phase")
	skip := fs.String("skip", "", "comma-separated phases to skip: throughput, fanout, catchup, memory")
	if err := fs.Parse(args); err != nil {
		return err
	}
	skipped := map[string]bool{}
	for _, p := range strings.Split(*skip, ",") {
		skipped[strings.TrimSpace(p)] = true
	}
	b, err := startHookBench()
	if err != nil {
		return err
	}
	defer b.close()
	if !skipped["throughput"] {
		if err := b.throughput(out, *drain); err != nil {
			return fmt.Errorf("throughput: %w", err)
		}
	}
	if err := b.startWebhooker(); err != nil {
		return err
	}
	fmt.Fprintf(out, "webhooker: pid %d (its own process), NATS and receivers in this one; RSS at start %s\n", b.wh.pid(), mib(b.rss()))
	if !skipped["fanout"] {
		if err := b.fanout(out, *endpoints, *rate, time.Duration(*seconds)*time.Second); err != nil {
			return fmt.Errorf("fan-out: %w", err)
		}
	}
	if !skipped["catchup"] {
		if err := b.catchUp(out, time.Duration(*outage)*time.Second); err != nil {
			return fmt.Errorf("catch-up: %w", err)
		}
	}
	if !skipped["memory"] {
		if err := b.memory(out, *behind); err != nil {
			return fmt.Errorf("memory: %w", err)
		}
	}
	return nil
}

type hookBench struct {
	srv   *broker.Server
	nc    *nats.Conn
	js    jetstream.JetStream
	wh    *child
	base  string // the webhooker's API
	admin string
	dir   string
	// tcp is a connection over the server's TCP listener, as the webhooker's: the raw
	// baseline pays the same network costs as what it is compared with.
	tcp     jetstream.JetStream
	tcpConn *nats.Conn
	pass    string // the NATS password of the TCP listener
}

func startHookBench() (*hookBench, error) {
	dir, err := os.MkdirTemp("", "mailpulse-bench-webhooks-")
	if err != nil {
		return nil, err
	}
	b := &hookBench{dir: dir, admin: randomKey()}
	pass := randomKey()
	b.pass = pass
	hash, err := bcrypt.GenerateFromPassword([]byte(pass), bcrypt.MinCost)
	if err != nil {
		return nil, err
	}
	if b.srv, err = broker.Start(broker.Config{StoreDir: dir, Listen: "127.0.0.1:0", User: "bench", Password: string(hash), Name: "bench"}, nil); err != nil {
		os.RemoveAll(dir)
		return nil, err
	}
	if b.nc, err = b.srv.Connect(); err != nil {
		b.close()
		return nil, err
	}
	if b.js, err = jetstream.New(b.nc); err != nil {
		b.close()
		return nil, err
	}
	if err := bus.Provision(context.Background(), b.js, bus.Limits{}, nil); err != nil {
		b.close()
		return nil, err
	}
	tcp, err := nats.Connect("nats://127.0.0.1:"+strconv.Itoa(b.srv.Port()), nats.UserInfo("bench", pass))
	if err != nil {
		b.close()
		return nil, err
	}
	b.tcpConn = tcp
	if b.tcp, err = jetstream.New(tcp); err != nil {
		b.close()
		return nil, err
	}
	return b, nil
}

// startWebhooker starts "mailpulse webhooker" as a process of its own.
func (b *hookBench) startWebhooker() error {
	addr, err := freeAddr()
	if err != nil {
		return err
	}
	b.base = "http://" + addr
	b.wh, err = startChild([]string{"webhooker"}, []string{"MAILPULSE_NATS_URL=nats://127.0.0.1:" + strconv.Itoa(b.srv.Port()), "MAILPULSE_NATS_USER=bench",
		"MAILPULSE_NATS_PASSWORD=" + b.pass, "MAILPULSE_WEBHOOKER_ADDR=" + addr, "MAILPULSE_WEBHOOKER_ALLOW_NETWORKS=127.0.0.0/8",
		"MAILPULSE_ADMIN_KEY=" + b.admin, "MAILPULSE_LOG_LEVEL=error"}, 0, func() bool { return answers(http.DefaultClient, b.base+"/healthz") })
	return err
}

func (b *hookBench) close() {
	if b.wh != nil {
		b.wh.stop()
	}
	if b.tcpConn != nil {
		b.tcpConn.Close()
	}
	if b.nc != nil {
		b.nc.Close()
	}
	if b.srv != nil {
		b.srv.Shutdown()
	}
	os.RemoveAll(b.dir)
}

func (b *hookBench) rss() int64 { return b.wh.rss() }

// endpoint creates an endpoint and returns its id.
func (b *hookBench) endpoint(def map[string]any) (string, error) {
	body, _ := json.Marshal(def)
	req, _ := http.NewRequest(http.MethodPost, b.base+"/api/v1/webhooks", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+b.admin)
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	rb, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusCreated {
		return "", fmt.Errorf("create endpoint: %d %s", resp.StatusCode, rb)
	}
	return gjson.GetBytes(rb, "id").Str, nil
}

// hookReceiver is a real HTTP receiver that counts the events it gets (standard or Stalwart
// format) and the latency from their publication (data.t, Unix nanoseconds).
type hookReceiver struct {
	srv  *httptest.Server
	mode func(w http.ResponseWriter, r *http.Request) bool // true: answered, do not count

	mu    sync.Mutex
	ids   map[string]bool
	lat   []time.Duration
	first time.Time
}

func newHookReceiver() *hookReceiver {
	h := &hookReceiver{ids: map[string]bool{}}
	h.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		h.mu.Lock()
		mode := h.mode
		h.mu.Unlock()
		if mode != nil && mode(w, r) {
			return
		}
		now := time.Now()
		evs := gjson.GetBytes(body, "data.events")
		if !evs.Exists() {
			evs = gjson.GetBytes(body, "events")
		}
		h.mu.Lock()
		if h.first.IsZero() {
			h.first = now
		}
		evs.ForEach(func(_, e gjson.Result) bool {
			id := e.Get("id").Str
			if !h.ids[id] {
				h.ids[id] = true
				if t := e.Get("data.t").Int(); t > 0 {
					h.lat = append(h.lat, now.Sub(time.Unix(0, t)))
				}
			}
			return true
		})
		h.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	return h
}

func (h *hookReceiver) count() int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return len(h.ids)
}

func (h *hookReceiver) setMode(m func(w http.ResponseWriter, r *http.Request) bool) {
	h.mu.Lock()
	h.mode = m
	h.mu.Unlock()
}

// reset forgets the events received so far (a run's maps would otherwise grow into the
// next run's garbage collections, and its latencies).
func (h *hookReceiver) reset() {
	h.mu.Lock()
	h.ids, h.lat = map[string]bool{}, nil
	h.mu.Unlock()
}

// latencies returns and forgets the latencies recorded so far.
func (h *hookReceiver) latencies() []time.Duration {
	h.mu.Lock()
	defer h.mu.Unlock()
	l := h.lat
	h.lat = nil
	return l
}

func hookEvents(typ string, n int, at func(i int) time.Time) []event.Event {
	evs := make([]event.Event, n)
	tag := strconv.FormatInt(time.Now().UnixNano(), 36)
	for i := range evs {
		var b event.Builder
		t := at(i)
		b.Int("t", t.UnixNano()).Str("remoteIp", "203.0.113.7").Str("from", "bench@example.org")
		evs[i] = event.Event{ID: typ + "-" + tag + "-" + strconv.Itoa(i), CreatedAt: t, Type: typ, Level: event.Info, Source: "bench", Data: b.Data()}
	}
	return evs
}

// paced publishes events of typ at rate per second for d, each stamped when it is sent,
// counting them in progress when it is not nil.
func (b *hookBench) paced(typ string, rate int, d time.Duration, progress *atomic.Int64) (int, error) {
	tick := 10 * time.Millisecond
	per := max(rate/100, 1)
	t := time.NewTicker(tick)
	defer t.Stop()
	end := time.Now().Add(d)
	sent := 0
	tag := strconv.FormatInt(time.Now().UnixNano(), 36)
	for now := range t.C {
		if now.After(end) {
			break
		}
		for range per {
			var eb event.Builder
			eb.Int("t", time.Now().UnixNano()).Str("remoteIp", "203.0.113.7")
			e := event.Event{ID: typ + "-" + tag + "-" + strconv.Itoa(sent), CreatedAt: time.Now(), Type: typ, Level: event.Info, Source: "bench", Data: eb.Data()}
			if _, err := b.js.PublishAsync(e.Subject(), e.AppendJSON(nil), jetstream.WithMsgID(e.ID)); err != nil {
				return sent, err
			}
			sent++
			if progress != nil {
				progress.Add(1)
			}
		}
	}
	select {
	case <-b.js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		return sent, errors.New("publish acknowledgements missing after a minute")
	}
	return sent, nil
}

func quantile(l []time.Duration, q float64) time.Duration {
	if len(l) == 0 {
		return 0
	}
	sort.Slice(l, func(i, j int) bool { return l[i] < l[j] })
	return l[min(len(l)-1, int(float64(len(l))*q))]
}
