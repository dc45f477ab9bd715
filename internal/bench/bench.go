// Package bench is mailpulse's load command: it measures a path of the pipeline against the
// raw baseline of the same work, in the same process and run, and prints both rates and
// their ratio, because this machine is shared and absolute figures drift between runs.
package bench

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime"
	"sort"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/mailpulse/mailpulse/services/producer"
	"github.com/mailpulse/mailpulse/shared/apikey"
	"github.com/mailpulse/mailpulse/shared/broker"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
)

// Main runs "mailpulse bench <what>".
func Main(args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" {
		fmt.Fprintln(stdout, "usage: mailpulse bench ingest|live|archive|consume|pipeline|webhooks|abuse [flags]   (<what> -h lists the flags)")
		return 0
	}
	switch args[0] {
	case "ingest":
		if err := ingest(args[1:], stdout); err != nil {
			fmt.Fprintln(stderr, "bench ingest:", err)
			return 1
		}
		return 0
	case "archive":
		if err := archive(args[1:], stdout); err != nil {
			fmt.Fprintln(stderr, "bench archive:", err)
			return 1
		}
		return 0
	case "consume":
		if err := consume(args[1:], stdout); err != nil {
			fmt.Fprintln(stderr, "bench consume:", err)
			return 1
		}
		return 0
	case "pipeline":
		if err := pipeline(args[1:], stdout); err != nil {
			fmt.Fprintln(stderr, "bench pipeline:", err)
			return 1
		}
		return 0
	case "webhooks":
		if err := webhooks(args[1:], stdout); err != nil {
			fmt.Fprintln(stderr, "bench webhooks:", err)
			return 1
		}
		return 0
	case "abuse":
		if err := abuse(args[1:], stdout); err != nil {
			fmt.Fprintln(stderr, "bench abuse:", err)
			return 1
		}
		return 0
	case "live":
		if err := live(args[1:], stdout); err != nil {
			fmt.Fprintln(stderr, "bench live:", err)
			return 1
		}
		return 0
	}
	fmt.Fprintf(stderr, "bench: unknown measurement %q (want ingest, live, archive, consume, pipeline, webhooks or abuse)\n", args[0])
	return 2
}

func ingest(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("bench ingest", flag.ContinueOnError)
	n := fs.Int("events", 200_000, "events per phase")
	batch := fs.Int("batch", 500, "events per HTTP request")
	clients := fs.Int("clients", 4, "concurrent HTTP clients")
	window := fs.Int("window", 4000, "async publish window (both phases)")
	rounds := fs.Int("rounds", 3, "rounds of both phases; the median is reported")
	size := fs.Int("size", 500, "pad events with a details key to about this many bytes of JSON (0: as simulated)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	env, err := newEnv(*window, apikey.Ingest)
	if err != nil {
		return err
	}
	defer env.close()
	ctx, nc, pub, js, keys, key := context.Background(), env.nc, env.pub, env.js, env.keys, env.key

	// The same simulated events for both phases, each round with fresh ids.
	sim := producer.NewSimulator(1, "bench.example.org", nil)
	evs := make([]event.Event, *n)
	var total int
	for i := range evs {
		evs[i] = sim.Next()
		if pad := *size - len(evs[i].AppendJSON(nil)) - len(`,"details":""`); *size > 0 && pad > 0 {
			d := evs[i].Data
			evs[i].Data = append(append(append(append(event.Data{}, d[:len(d)-1]...), `,"details":"`...), bytes.Repeat([]byte("x"), pad)...), `"}`...)
		}
		total += len(evs[i].AppendJSON(nil))
	}
	fmt.Fprintf(out, "events: %d per phase, mean %d bytes of JSON; batch %d; %d HTTP clients; window %d; GOMAXPROCS %d\n",
		*n, total / *n, *batch, *clients, *window, runtime.GOMAXPROCS(0))

	pctx, stop := context.WithCancel(ctx)
	defer stop()
	prod, err := producer.New(producer.Config{Addr: "127.0.0.1:0", Ingest: producer.Ingest{MaxBatch: *batch, Timeout: 30 * time.Second}, Metrics: producer.Metrics{Interval: time.Hour}},
		producer.Deps{Conn: nc, Publisher: pub, Keys: keys, Log: slog.New(slog.DiscardHandler)})
	if err != nil {
		return err
	}
	done := make(chan error, 1)
	go func() { done <- prod.Run(pctx) }()
	url := "http://" + prod.Addr().String() + "/api/v1/events"

	var raws, https, ratios []float64
	for r := range *rounds {
		for i := range evs {
			evs[i].ID = fmt.Sprintf("r%d-%d", r, i)
		}
		if err := purge(ctx, js); err != nil {
			return err
		}
		raw, err := rawPublish(ctx, js, evs)
		if err != nil {
			return err
		}
		if err := purge(ctx, js); err != nil {
			return err
		}
		for i := range evs {
			evs[i].ID = fmt.Sprintf("h%d-%d", r, i)
		}
		rate, err := httpIngest(url, key, evs, *batch, *clients)
		if err != nil {
			return err
		}
		raws, https, ratios = append(raws, raw), append(https, rate), append(ratios, rate/raw)
		fmt.Fprintf(out, "round %d: raw JetStream PublishAsync+Nats-Msg-Id %8.0f events/s   HTTP ingest %8.0f events/s   ratio %.2f\n", r+1, raw, rate, rate/raw)
	}
	stop()
	<-done
	rm, hm := median(raws), median(https)
	fmt.Fprintf(out, "median:  raw %.0f events/s, HTTP ingest %.0f events/s; median of the rounds' ratios %.2f (target ≥ 0.70)\n", rm, hm, median(ratios))
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) == nil {
		fmt.Fprintf(out, "max RSS of the whole run (broker, producer, clients): %d MB\n", ru.Maxrss/1024)
	}
	return nil
}

// env is what every load command starts from: an embedded server in a temporary directory,
// a connection, a publisher, the provisioned log, the key store and one key of a role.
type env struct {
	srv   *broker.Server
	nc    *nats.Conn
	pub   *bus.Publisher
	js    jetstream.JetStream
	keys  *apikey.Store
	key   string
	close func()
}

func newEnv(window int, role apikey.Role) (*env, error) {
	var undo []func()
	fail := func(err error) (*env, error) {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
		return nil, err
	}
	dir, err := os.MkdirTemp("", "mailpulse-bench-")
	if err != nil {
		return nil, err
	}
	undo = append(undo, func() { os.RemoveAll(dir) })
	srv, err := broker.Start(broker.Config{StoreDir: dir, Name: "bench"}, nil)
	if err != nil {
		return fail(err)
	}
	undo = append(undo, srv.Shutdown)
	nc, err := srv.Connect()
	if err != nil {
		return fail(err)
	}
	undo = append(undo, nc.Close)
	pub, err := bus.NewPublisher(nc, bus.PublisherConfig{Window: window})
	if err != nil {
		return fail(err)
	}
	ctx := context.Background()
	if err := bus.Provision(ctx, pub.JetStream(), bus.Limits{}, nil); err != nil {
		return fail(err)
	}
	kv, err := pub.JetStream().KeyValue(ctx, bus.BucketKeys)
	if err != nil {
		return fail(err)
	}
	kctx, cancel := context.WithCancel(ctx)
	undo = append(undo, cancel)
	keys, err := apikey.Open(kctx, kv, nil)
	if err != nil {
		return fail(err)
	}
	key, _, err := keys.Create(ctx, "bench", role)
	if err != nil {
		return fail(err)
	}
	return &env{srv: srv, nc: nc, pub: pub, js: pub.JetStream(), keys: keys, key: key, close: func() {
		for i := len(undo) - 1; i >= 0; i-- {
			undo[i]()
		}
	}}, nil
}

func purge(ctx context.Context, js jetstream.JetStream) error {
	st, err := js.Stream(ctx, bus.StreamEvents)
	if err != nil {
		return err
	}
	return st.Purge(ctx)
}

// rawPublish is the baseline: the encoded events published asynchronously with their ids,
// waiting for every acknowledgement.
func rawPublish(ctx context.Context, js jetstream.JetStream, evs []event.Event) (float64, error) {
	payloads := make([][]byte, len(evs))
	for i := range evs {
		payloads[i] = evs[i].AppendJSON(nil)
	}
	var failed atomic.Int64
	start := time.Now()
	futures := make([]jetstream.PubAckFuture, 0, len(evs))
	for i := range evs {
		f, err := js.PublishAsync(evs[i].Subject(), payloads[i], jetstream.WithMsgID(evs[i].ID))
		if err != nil {
			return 0, err
		}
		futures = append(futures, f)
	}
	select {
	case <-js.PublishAsyncComplete():
	case <-time.After(time.Minute):
		return 0, fmt.Errorf("raw publish: acknowledgements missing after a minute")
	}
	elapsed := time.Since(start)
	for _, f := range futures {
		select {
		case <-f.Ok():
		default:
			failed.Add(1)
		}
	}
	if failed.Load() > 0 {
		return 0, fmt.Errorf("raw publish: %d not acknowledged", failed.Load())
	}
	return float64(len(evs)) / elapsed.Seconds(), nil
}

// httpIngest posts the events in batches from concurrent clients, as a mail server would.
func httpIngest(url, key string, evs []event.Event, batch, clients int) (float64, error) {
	var bodies [][]byte
	for i := 0; i < len(evs); i += batch {
		var b bytes.Buffer
		b.WriteByte('[')
		for j := i; j < min(i+batch, len(evs)); j++ {
			if j > i {
				b.WriteByte(',')
			}
			b.Write(evs[j].AppendJSON(nil))
		}
		b.WriteByte(']')
		bodies = append(bodies, b.Bytes())
	}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: clients}, Timeout: time.Minute}
	var next atomic.Int64
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	start := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= len(bodies) {
					return
				}
				req, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(bodies[i]))
				req.Header.Set("Authorization", "Bearer "+key)
				req.Header.Set("Content-Type", "application/json")
				resp, err := client.Do(req)
				if err != nil {
					errs <- err
					return
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if resp.StatusCode != http.StatusAccepted {
					errs <- fmt.Errorf("HTTP %d: %s", resp.StatusCode, body)
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errs)
	if err := <-errs; err != nil {
		return 0, err
	}
	return float64(len(evs)) / elapsed.Seconds(), nil
}

func median(xs []float64) float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s[len(s)/2]
}
