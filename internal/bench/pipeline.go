package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"runtime/pprof"
	"sort"
	"strconv"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"golang.org/x/sync/errgroup"

	"github.com/mailpulse/mailpulse/internal/app"
	"github.com/mailpulse/mailpulse/shared/apikey"
	"github.com/mailpulse/mailpulse/shared/bus"
	"github.com/mailpulse/mailpulse/shared/event"
)

// pipeline measures the whole monolith at once: the producer taking HTTP ingest, the
// gateway with SSE clients, the archiver (and the services to come), against a raw
// baseline of the same run: JetStream publishing with 4 raw durable consumers reading.
// For each it finds the highest rate at which every consumer keeps up (its lag bounded
// over a probe), and at a fixed rate it reports the gateway's latency and the HTTP ingest
// ratio while everything runs.
func pipeline(args []string, out io.Writer) error {
	fs := flag.NewFlagSet("bench pipeline", flag.ContinueOnError)
	seconds := fs.Int("seconds", 60, "length of one probe at a rate")
	start := fs.Int("start", 4000, "first rate probed, events/s")
	steps := fs.Int("steps", 6, "probes per search (doubling, then bisecting)")
	clients := fs.Int("clients", 100, "SSE clients on the gateway (each filtered to one of 10 types)")
	rate := fs.Int("latency-rate", 5000, "events/s of the latency phase")
	latSeconds := fs.Int("latency-seconds", 20, "length of the latency phase")
	burst := fs.Int("ingest-events", 100_000, "events of the HTTP ingest ratio phase")
	cpuprofile := fs.String("cpuprofile", "", "write a CPU profile of the latency phase to this file")
	skipSearch := fs.Bool("skip-search", false, "skip the two rate searches (latency and ingest phases only)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	probe := time.Duration(*seconds) * time.Second

	// The raw baseline: its own embedded server, 4 durable consumers that decode and ack.
	env, err := newEnv(4000, apikey.Viewer)
	if err != nil {
		return err
	}
	raw := &rawPipeline{js: env.js}
	if err := raw.start(context.Background(), 4); err != nil {
		env.close()
		return err
	}
	fmt.Fprintf(out, "raw baseline: JetStream publish (async, with ids) → 4 durable pull consumers (decode, ack); probes of %s\n", probe)
	rawRate := 0
	if !*skipSearch {
		rawRate = search(out, "raw", *start, *steps, func(r int) (bool, string) { return raw.probe(r, probe) })
	}
	raw.stop()
	env.close()

	// The monolith, as `mailpulse` runs it, on a fresh data dir.
	m, err := startMonolith(*clients)
	if err != nil {
		return err
	}
	defer m.close()
	fmt.Fprintf(out, "pipeline: HTTP ingest (batches of 100, 4 clients) → producer → log → gateway (%d SSE clients) + archiver (SQLite)\n", *clients)
	if !*skipSearch {
		pipeRate := search(out, "pipeline", *start, *steps, func(r int) (bool, string) { return m.probe(r, probe) })
		fmt.Fprintf(out, "highest rate kept up: pipeline %d/s, raw %d/s: ratio %.2f (target ≥ 0.8)\n", pipeRate, rawRate, float64(pipeRate)/float64(rawRate))
	}

	// Latency with everything running: the load comes over HTTP; probe events published
	// straight to JetStream (1 in 50) time publish → SSE as bench live does.
	if *cpuprofile != "" {
		f, err := os.Create(*cpuprofile)
		if err != nil {
			return err
		}
		if err := pprof.StartCPUProfile(f); err != nil {
			return err
		}
		defer f.Close()
	}
	lat, httpLat, err := m.latency(*rate, time.Duration(*latSeconds)*time.Second)
	if *cpuprofile != "" {
		pprof.StopCPUProfile()
	}
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "at %d events/s with every consumer running: publish→SSE p50 %.2f ms p99 %.2f ms (target p99 ≤ 5 ms); HTTP send→SSE p99 %.2f ms\n",
		*rate, ms(lat.p50), ms(lat.p99), ms(httpLat.p99))

	// HTTP ingest against raw publishing of the same events, consumers running.
	evs := make([]event.Event, *burst)
	for i := range evs {
		evs[i] = pipelineEvent(i, "bench.t"+strconv.Itoa(i%10), time.Now())
	}
	// Each phase starts with the consumers caught up, and is timed until they have caught
	// up again: a burst the consumers have not read yet is not ingested, only buffered.
	m.drain()
	t0 := time.Now()
	if _, err := rawPublish(context.Background(), m.js, evs); err != nil {
		return err
	}
	m.drain()
	rawPub := float64(len(evs)) / time.Since(t0).Seconds()
	for i := range evs {
		evs[i].ID = "h" + evs[i].ID
	}
	t0 = time.Now()
	if _, err := httpIngest(m.ingestURL, m.ingestKey, evs, 500, 4); err != nil {
		return err
	}
	m.drain()
	viaHTTP := float64(len(evs)) / time.Since(t0).Seconds()
	fmt.Fprintf(out, "%d events until every consumer has them: over HTTP %.0f/s; published raw %.0f/s; ratio %.2f (target ≥ 0.7)\n", len(evs), viaHTTP, rawPub, viaHTTP/rawPub)
	fmt.Fprintf(out, "RSS of the whole process at the end: %d MB\n", rssKB()/1024)
	return nil
}

// search finds the highest rate a probe keeps up with: doubling from start until a probe
// fails, then bisecting.
func search(out io.Writer, name string, start, steps int, probe func(rate int) (bool, string)) int {
	good, bad, rate := 0, 0, start
	for i := 0; i < steps; i++ {
		ok, detail := probe(rate)
		verdict := "kept up"
		if !ok {
			verdict = "fell behind"
		}
		fmt.Fprintf(out, "  %s at %d/s: %s (%s)\n", name, rate, verdict, detail)
		if ok {
			good = rate
		} else {
			bad = rate
		}
		switch {
		case bad == 0:
			rate *= 2
		case good == 0:
			rate /= 2
		default:
			rate = (good + bad) / 2
		}
		if bad > 0 && good > 0 && bad-good <= max(good/20, 100) {
			break
		}
	}
	return good
}

// keptUp judges a probe from the lags sampled once a second: in its second half no
// consumer was more than one second of events behind, and the publisher achieved the rate.
func keptUp(rate int, achieved float64, lags []uint64) (bool, string) {
	worst := uint64(0)
	for _, l := range lags[len(lags)/2:] {
		worst = max(worst, l)
	}
	ok := achieved >= 0.95*float64(rate) && worst <= uint64(max(rate, 1000))
	return ok, fmt.Sprintf("achieved %.0f/s, worst lag in the second half %d events", achieved, worst)
}

// pace calls send(n) every 10 ms with the events due, for d, and returns the rate achieved.
func pace(rate int, d time.Duration, sample func(), send func(n int) error) (float64, error) {
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	start, lastSample := time.Now(), time.Now()
	sent := 0
	for time.Since(start) < d {
		<-tick.C
		due := int(float64(rate)*time.Since(start).Seconds()) - sent
		if due > 0 {
			if err := send(due); err != nil {
				return 0, err
			}
			sent += due
		}
		if time.Since(lastSample) >= time.Second {
			sample()
			lastSample = time.Now()
		}
	}
	return float64(sent) / time.Since(start).Seconds(), nil
}

// rawPipeline is 4 raw durable consumers on the bench's own server.
type rawPipeline struct {
	js    jetstream.JetStream
	last  []atomic.Uint64
	stops []func()
	i     int
}

func (p *rawPipeline) start(ctx context.Context, n int) error {
	p.last = make([]atomic.Uint64, n)
	for c := 0; c < n; c++ {
		cons, err := p.js.CreateConsumer(ctx, bus.StreamEvents, jetstream.ConsumerConfig{Durable: "raw-" + strconv.Itoa(c), AckPolicy: jetstream.AckExplicitPolicy, MaxAckPending: 4000, DeliverPolicy: jetstream.DeliverNewPolicy})
		if err != nil {
			return err
		}
		last := &p.last[c]
		cc, err := cons.Consume(func(m jetstream.Msg) {
			_, _ = event.Decode(m.Data())
			_ = m.Ack()
			if meta, err := m.Metadata(); err == nil {
				last.Store(meta.Sequence.Stream)
			}
		}, jetstream.PullMaxMessages(500))
		if err != nil {
			return err
		}
		p.stops = append(p.stops, cc.Stop)
	}
	return nil
}

func (p *rawPipeline) stop() {
	for _, s := range p.stops {
		s()
	}
}

// lag is how far the slowest raw consumer is behind the end of the log.
func (p *rawPipeline) lag() uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, end, err := bus.Bounds(ctx, p.js, bus.StreamEvents)
	if err != nil {
		return 1 << 62
	}
	worst := uint64(0)
	for i := range p.last {
		if l := p.last[i].Load(); end > l {
			worst = max(worst, end-l)
		}
	}
	return worst
}

func (p *rawPipeline) probe(rate int, d time.Duration) (bool, string) {
	// A probe that fell behind leaves a backlog: the next one starts once it is read.
	if !drain(p.lag, 3*time.Minute) {
		return false, "the backlog of the previous probe was not read within 3 minutes"
	}
	var lags []uint64
	sample := func() { lags = append(lags, p.lag()) }
	achieved, err := pace(rate, d, sample, func(n int) error {
		for k := 0; k < n; k++ {
			p.i++
			m, _ := benchEvent(p.i, "bench.t"+strconv.Itoa(p.i%10))
			if err := publishAsync(p.js, m); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return false, err.Error()
	}
	<-p.js.PublishAsyncComplete()
	return keptUp(rate, achieved, lags)
}

// monolith is mailpulse in all mode in this process, with SSE clients on its gateway.
type monolith struct {
	js         jetstream.JetStream
	ingestURL  string
	ingestKey  string
	readers    []*sseReader
	stopSSE    func()
	stopApp    func()
	dir        string
	i          atomic.Int64
	httpClient *http.Client
}

func startMonolith(clients int) (*monolith, error) {
	dir, err := os.MkdirTemp("", "mailpulse-pipeline-")
	if err != nil {
		return nil, err
	}
	set := app.NewSettings()
	set.Process.DataDir = dir
	set.Process.AdminKey, set.Process.IngestKey = randomKey(), randomKey()
	set.Process.Shutdown.Grace = 5 * time.Second
	set.Producer.Addr, set.Gateway.Addr = "127.0.0.1:0", "127.0.0.1:0"
	set.Producer.Simulate = 0
	// A listener, so the bench can publish its probe events and read the consumers' state.
	set.Process.NATS.Listen, set.Process.NATS.User, set.Process.NATS.Password = "127.0.0.1:0", "bench", randomKey()
	set.Gateway.MaxStreamsPerKey, set.Gateway.MaxStreams, set.Gateway.QueueSize = 10_000, 10_000, 4096
	ctx, cancel := context.WithCancel(context.Background())
	ready := make(chan app.Ready, 1)
	done := make(chan error, 1)
	go func() {
		done <- app.Run(ctx, "all", set, slog.New(slog.DiscardHandler), func(r app.Ready) { ready <- r })
	}()
	m := &monolith{dir: dir, ingestKey: set.Process.IngestKey, httpClient: &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{MaxIdleConnsPerHost: 8}}}
	m.stopApp = func() { cancel(); <-done; os.RemoveAll(dir) }
	var r app.Ready
	select {
	case r = <-ready:
	case err := <-done:
		os.RemoveAll(dir)
		return nil, fmt.Errorf("mailpulse did not start: %w", err)
	}
	m.ingestURL = "http://" + r.IngestAddr.String() + "/api/v1/events"
	base := "http://" + r.HTTPAddr.String()
	if err := waitReady(base + "/readyz"); err != nil {
		m.stopApp()
		return nil, err
	}
	nc, err := nats.Connect(r.NATSURL, nats.UserInfo(set.Process.NATS.User, set.Process.NATS.Password))
	if err != nil {
		m.stopApp()
		return nil, err
	}
	stopApp := m.stopApp
	m.stopApp = func() { nc.Close(); stopApp() }
	if m.js, err = jetstream.New(nc); err != nil {
		m.stopApp()
		return nil, err
	}
	m.readers, m.stopSSE, err = openStreams(base+"/api/v1/live/events", set.Process.AdminKey, clients, func(i int) string {
		return "?types=bench.t" + strconv.Itoa(i%10) + ",bench.probe"
	})
	if err != nil {
		m.stopApp()
		return nil, err
	}
	return m, nil
}

func (m *monolith) close() {
	m.stopSSE()
	m.stopApp()
}

// lag returns the larger of the archiver's lag (messages not yet acknowledged) and the gateway's (the
// log's last sequence minus the last one any client received).
func (m *monolith) lag() uint64 {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, last, err := bus.Bounds(ctx, m.js, bus.StreamEvents)
	if err != nil {
		return 1 << 62
	}
	worst := uint64(0)
	if cons, err := m.js.Consumer(ctx, bus.StreamEvents, "archiver"); err == nil {
		info := cons.CachedInfo()
		worst = info.NumPending + uint64(info.NumAckPending)
	}
	seen := uint64(0)
	for _, r := range m.readers {
		seen = max(seen, r.last.Load())
	}
	if last > seen {
		worst = max(worst, last-seen)
	}
	return worst
}

// drain waits until the consumers have caught up with the log (or a minute has passed).
func (m *monolith) drain() { drain(m.lag, time.Minute) }

// drain waits until lag is 0, at most d, and reports whether it got there.
func drain(lag func() uint64, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for lag() > 0 {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(20 * time.Millisecond)
	}
	return true
}

func (m *monolith) probe(rate int, d time.Duration) (bool, string) {
	if !drain(m.lag, 3*time.Minute) {
		return false, "the backlog of the previous probe was not read within 3 minutes"
	}
	var lags []uint64
	achieved, err := pace(rate, d, func() { lags = append(lags, m.lag()) }, func(n int) error {
		return m.post(n, "bench.t")
	})
	if err != nil {
		return false, err.Error()
	}
	return keptUp(rate, achieved, lags)
}

// post sends n events over HTTP in batches of at most 100, by up to 4 requests at once, the
// i-th of type prefix+(i%10).
func (m *monolith) post(n int, prefix string) error {
	var g errgroup.Group
	g.SetLimit(4)
	for n > 0 {
		k := min(n, 100)
		n -= k
		var b bytes.Buffer
		b.WriteByte('[')
		now := time.Now()
		for j := 0; j < k; j++ {
			i := int(m.i.Add(1))
			if j > 0 {
				b.WriteByte(',')
			}
			e := pipelineEvent(i, prefix+strconv.Itoa(i%10), now)
			b.Write(e.AppendJSON(nil))
		}
		b.WriteByte(']')
		g.Go(func() error {
			req, _ := http.NewRequest(http.MethodPost, m.ingestURL, &b)
			req.Header.Set("Authorization", "Bearer "+m.ingestKey)
			resp, err := m.httpClient.Do(req)
			if err != nil {
				return err
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				return fmt.Errorf("ingest answered %d", resp.StatusCode)
			}
			return nil
		})
	}
	return g.Wait()
}

// latency loads the pipeline at rate over HTTP for d; 1 event in 50 is published straight
// to JetStream instead, to time publish → SSE. It returns both latency distributions.
func (m *monolith) latency(rate int, d time.Duration) (probe, viaHTTP liveResult, err error) {
	for _, r := range m.readers {
		r.reset()
	}
	var n atomic.Int64
	_, err = pace(rate, d, func() {}, func(k int) error {
		direct := 0
		for j := 0; j < k; j++ {
			if n.Add(1)%50 == 0 {
				direct++
			}
		}
		for j := 0; j < direct; j++ {
			msg, _ := benchEvent(int(n.Load())+j, "bench.probe")
			if err := publishAsync(m.js, msg); err != nil {
				return err
			}
		}
		return m.post(k-direct, "bench.t")
	})
	if err != nil {
		return liveResult{}, liveResult{}, err
	}
	<-m.js.PublishAsyncComplete()
	var direct, overHTTP []time.Duration
	for _, r := range m.readers {
		d, h := r.split()
		direct, overHTTP = append(direct, d...), append(overHTTP, h...)
	}
	return quantiles(direct), quantiles(overHTTP), nil
}

func quantiles(d []time.Duration) liveResult {
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	if len(d) == 0 {
		return liveResult{}
	}
	// The first 10% are warm-up.
	d = d[len(d)/10:]
	return liveResult{p50: d[len(d)/2], p99: d[len(d)*99/100], max: d[len(d)-1]}
}

// pipelineEvent is a native event whose data carries its send time, as benchEvent's.
func pipelineEvent(i int, typ string, now time.Time) event.Event {
	var b event.Builder
	b.Int("t", now.UnixNano()).Str("remoteIp", "203.0.113.7").Str("from", "bench@example.org").Str("details", "x")
	return event.Event{ID: "p" + strconv.Itoa(i) + "-" + strconv.FormatInt(now.UnixNano(), 36), CreatedAt: now, Type: typ, Level: event.Info, Source: "bench", Data: b.Data()}
}

func randomKey() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return "mpk_bench_" + hex.EncodeToString(b)
}
