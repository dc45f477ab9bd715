package httpserver

import (
	"errors"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// Connection caps, by default. 10,000 connections is far more than ingest clients and
// dashboards need, and small enough that two listeners and the log's files fit a
// 65,536-file limit; where the process may open fewer files, a quarter of its limit is the
// cap (the rest is for the other listener, NATS, the log's and the history's files). 256
// per address leaves a browser's six connections to each of 40 users behind one NAT, and
// Stalwart's single connection, a wide margin; a reverse proxy in front (every client from
// one address) needs it raised.
const (
	defaultMaxConns      = 10_000
	defaultMaxConnsPerIP = 256
	defaultLingerBytes   = 64 << 20
	defaultLingerTime    = 10 * time.Second
	// lingerIdle bounds one read while lingering: a client that stopped sending is not
	// waited for.
	lingerIdle = 2 * time.Second
	// Accept back-off, as net/http's: 5 ms doubling to 1 s.
	acceptDelayMin = 5 * time.Millisecond
	acceptDelayMax = time.Second
)

// ListenerConfig bounds the connections of a Listener. Zero fields take the defaults in
// parentheses.
type ListenerConfig struct {
	Name string // the listener in metrics and logs ("producer")
	// MaxConns caps the connections open at once; one over it is answered 503 and closed
	// at once (10,000, or a quarter of the process's file limit when that is lower).
	MaxConns int
	// MaxConnsPerIP caps the connections open at once from one client address (256).
	MaxConnsPerIP int
	// LingerBytes and LingerTime bound the lingering close of a connection whose request
	// body was not read in full (an early 401 or 413): after the answer, the server reads
	// and discards at most LingerBytes of what the client still sends (64 MiB), for at
	// most LingerTime (10 s), so that the client, still writing, is not reset before it
	// reads the answer.
	LingerBytes int64
	LingerTime  time.Duration
	Registry    prometheus.Registerer // the listener's metrics (none when nil)
	Log         *slog.Logger          // accept failures (discarded when nil)
}

// Listener is a net.Listener that keeps a server serving when connections run short: it
// retries temporary accept errors (out of file descriptors, a connection aborted) with
// back-off instead of returning them, which would end the server and, through its
// errgroup, the process; it caps the connections open at once, in all and per client
// address; and its connections close lingeringly when asked (Serve and New arrange it).
// Close stops it; connections already accepted keep running.
type Listener struct {
	net.Listener
	cfg ListenerConfig
	log *slog.Logger
	m   listenerMetrics

	mu        sync.Mutex
	open      int
	perIP     map[netip.Addr]int
	lingering map[*conn]struct{}
	quiet     *sync.Cond // signalled when lingering empties
	closed    bool
	done      chan struct{} // closed by Close: ends a back-off wait
	closeOnce sync.Once
}

var _ net.Listener = (*Listener)(nil)

type listenerMetrics struct {
	open         prometheus.GaugeFunc
	refused      *prometheus.CounterVec
	acceptErrors prometheus.Counter
	lingers      prometheus.Counter
	discarded    prometheus.Counter
}

// NewListener wraps ln.
func NewListener(ln net.Listener, cfg ListenerConfig) *Listener {
	if cfg.MaxConns <= 0 {
		cfg.MaxConns = defaultMaxConns
		if lim := fileLimit(); lim > 0 && lim/4 < uint64(cfg.MaxConns) {
			cfg.MaxConns = max(int(lim/4), 16)
		}
	}
	if cfg.MaxConnsPerIP <= 0 {
		cfg.MaxConnsPerIP = defaultMaxConnsPerIP
	}
	if cfg.LingerBytes <= 0 {
		cfg.LingerBytes = defaultLingerBytes
	}
	if cfg.LingerTime <= 0 {
		cfg.LingerTime = defaultLingerTime
	}
	if cfg.Log == nil {
		cfg.Log = slog.New(slog.DiscardHandler)
	}
	l := &Listener{
		Listener:  ln,
		cfg:       cfg,
		log:       cfg.Log.With("listener", cfg.Name),
		perIP:     map[netip.Addr]int{},
		lingering: map[*conn]struct{}{},
		done:      make(chan struct{}),
	}
	l.quiet = sync.NewCond(&l.mu)
	labels := prometheus.Labels{"listener": cfg.Name}
	l.m = listenerMetrics{
		open: prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mailpulse_http_connections_open", Help: "HTTP connections open, by listener.", ConstLabels: labels}, func() float64 {
			l.mu.Lock()
			defer l.mu.Unlock()
			return float64(l.open)
		}),
		refused:      prometheus.NewCounterVec(prometheus.CounterOpts{Name: "mailpulse_http_connections_refused_total", Help: "HTTP connections closed at once because a cap was reached, by listener and cap (limit: all connections; per_ip: one client address).", ConstLabels: labels}, []string{"cap"}),
		acceptErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_http_accept_errors_total", Help: "Temporary accept errors (such as too many open files), retried with back-off, by listener.", ConstLabels: labels}),
		lingers:      prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_http_lingering_closes_total", Help: "Connections closed lingeringly (the rest of an unread request body discarded first), by listener.", ConstLabels: labels}),
		discarded:    prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_http_lingering_discarded_bytes_total", Help: "Bytes of unread request bodies discarded while lingering, by listener.", ConstLabels: labels}),
	}
	if cfg.Registry != nil {
		cfg.Registry.MustRegister(l.m.open, l.m.refused, l.m.acceptErrors, l.m.lingers, l.m.discarded)
	}
	return l
}

// Accept returns the next connection under the caps. Temporary errors are counted, logged
// once per run of them, and retried after 5 ms doubling to 1 s; only a closed listener or
// a permanent error is returned.
func (l *Listener) Accept() (net.Conn, error) {
	var delay time.Duration
	failures := 0
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			if !temporary(err) {
				return nil, err
			}
			l.m.acceptErrors.Inc()
			if failures == 0 {
				l.log.Warn("accept failing; retrying with back-off", "err", err)
			}
			failures++
			delay = min(max(2*delay, acceptDelayMin), acceptDelayMax)
			t := time.NewTimer(delay)
			select {
			case <-l.done:
				t.Stop()
				return nil, net.ErrClosed
			case <-t.C:
			}
			continue
		}
		if failures > 0 {
			l.log.Info("accept recovered", "failures", failures)
			failures, delay = 0, 0
		}
		ip := remoteIP(c)
		if capName := l.admit(ip); capName != "" {
			l.m.refused.WithLabelValues(capName).Inc()
			refuse(c)
			continue
		}
		return &conn{Conn: c, l: l, ip: ip}, nil
	}
}

// temporary tells the accept errors that pass: descriptors or buffers short for now, a
// connection the client aborted, and whatever the net package calls temporary (net/http
// retries those too).
func temporary(err error) bool {
	for _, e := range []error{syscall.EMFILE, syscall.ENFILE, syscall.ECONNABORTED, syscall.ENOBUFS, syscall.ENOMEM} {
		if errors.Is(err, e) {
			return true
		}
	}
	var te interface{ Temporary() bool }
	return errors.As(err, &te) && te.Temporary()
}

// admit counts a new connection from ip, or names the cap that refuses it.
func (l *Listener) admit(ip netip.Addr) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	switch {
	case l.open >= l.cfg.MaxConns:
		return "limit"
	case ip.IsValid() && l.perIP[ip] >= l.cfg.MaxConnsPerIP:
		return "per_ip"
	}
	l.open++
	if ip.IsValid() {
		l.perIP[ip]++
	}
	return ""
}

func (l *Listener) release(ip netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.open--
	if ip.IsValid() {
		if l.perIP[ip]--; l.perIP[ip] <= 0 {
			delete(l.perIP, ip)
		}
	}
}

// refused is the answer of a connection over a cap: written at once into an empty send
// buffer, so it never blocks the accept loop.
const refused = "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: 32\r\n\r\n{\"error\":\"too many connections\"}"

func refuse(c net.Conn) {
	_ = c.SetWriteDeadline(time.Now().Add(10 * time.Millisecond))
	_, _ = c.Write([]byte(refused))
	_ = c.Close()
}

func remoteIP(c net.Conn) netip.Addr {
	if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

// Close stops accepting and cuts lingering closes short; open connections go on.
func (l *Listener) Close() error {
	err := l.Listener.Close()
	l.closeOnce.Do(func() {
		close(l.done)
		l.mu.Lock()
		l.closed = true
		for c := range l.lingering {
			_ = c.Conn.SetReadDeadline(time.Unix(1, 0))
		}
		l.mu.Unlock()
	})
	return err
}

// waitLingering returns once no connection is lingering (after Close, at once).
func (l *Listener) waitLingering() {
	l.mu.Lock()
	defer l.mu.Unlock()
	for len(l.lingering) > 0 {
		l.quiet.Wait()
	}
}

// conn is an accepted connection: its close releases its place under the caps, after a
// lingering close when one was asked for.
type conn struct {
	net.Conn
	l      *Listener
	ip     netip.Addr
	linger atomic.Int64 // bytes of an unread request body to discard before closing
	once   sync.Once
}

// lingerFor asks that the connection's close first discard up to n more bytes (at most
// the listener's LingerBytes).
func (c *conn) lingerFor(n int64) { c.linger.Store(min(n, c.l.cfg.LingerBytes)) }

func (c *conn) Close() error {
	err := net.ErrClosed
	c.once.Do(func() {
		if n := c.linger.Load(); n > 0 {
			c.l.lingerClose(c, n)
		}
		err = c.Conn.Close()
		c.l.release(c.ip)
	})
	return err
}

// lingerClose is nginx's lingering close: the answer has been written; the write side is
// shut (the client sees the answer end), then what the client still sends is read and
// discarded, up to n bytes, LingerTime, or a pause of lingerIdle, whichever comes first.
// Without it, closing a socket with unread data makes the kernel reset the connection, and
// a client still writing its body never reads the answer (Go's net/http among them).
func (l *Listener) lingerClose(c *conn, n int64) {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return
	}
	l.lingering[c] = struct{}{}
	l.mu.Unlock()
	l.m.lingers.Inc()
	defer func() {
		l.mu.Lock()
		delete(l.lingering, c)
		if len(l.lingering) == 0 {
			l.quiet.Broadcast()
		}
		l.mu.Unlock()
	}()
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	end := time.Now().Add(l.cfg.LingerTime)
	buf := make([]byte, 32<<10)
	for n > 0 {
		// The deadline is set under the lock that Close takes to cut lingering short, so
		// that a close cannot slip between the check and the read.
		l.mu.Lock()
		stop := l.closed
		if !stop {
			d := time.Now().Add(lingerIdle)
			if d.After(end) {
				d = end
			}
			_ = c.Conn.SetReadDeadline(d)
		}
		l.mu.Unlock()
		if stop {
			return
		}
		k, err := c.Conn.Read(buf[:min(int64(len(buf)), n)])
		n -= int64(k)
		l.m.discarded.Add(float64(k))
		if err != nil {
			return
		}
	}
}
