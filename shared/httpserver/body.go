package httpserver

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"strings"
	"sync/atomic"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/sync/semaphore"
)

// Request bodies are streamed (fasthttp's StreamRequestBody): a handler runs once the
// headers are in, before any of the body but the first 8 KiB fasthttp reads ahead. So a
// request is authenticated before its body costs anything, and a body is read only by
// ReadBody (RequireKey calls it once the key is good) or BodyReader, under the app's bounds:
// its size, its time, and the memory all bodies may hold at once. c.Body() before either
// would read a body of any size: never call it before authentication.
//
// A body left unread (a 401, an early 413, a route that takes none) ends the connection
// (Connection: close) with a lingering close, so the client still reads the answer.

// Errors of request bodies, matched with errors.Is; the error handler answers each.
var (
	ErrBodyTooLarge   = errors.New("body too large")                    // 413, with the limit
	ErrBodyMemory     = errors.New("too many request bodies in memory") // 503 + Retry-After
	ErrBodyTimeout    = errors.New("body not received in time")         // 408
	ErrBodyIncomplete = errors.New("body incomplete")                   // 400
	ErrBodyEncoding   = errors.New("encoded body not supported")        // 415
)

// BodyStatus is the HTTP status that answers a body error of this package (413, 503, 408,
// 400, 415 as listed above), or 0 for any other error. The error handler of New uses it;
// a handler that answers such an error itself (with more to say) uses it too.
func BodyStatus(err error) int {
	switch {
	case errors.Is(err, ErrBodyTooLarge):
		return fiber.StatusRequestEntityTooLarge
	case errors.Is(err, ErrBodyMemory):
		return fiber.StatusServiceUnavailable
	case errors.Is(err, ErrBodyTimeout):
		return fiber.StatusRequestTimeout
	case errors.Is(err, ErrBodyIncomplete):
		return fiber.StatusBadRequest
	case errors.Is(err, ErrBodyEncoding):
		return fiber.StatusUnsupportedMediaType
	}
	return 0
}

// BodyTooLargeError is ErrBodyTooLarge with the limit that was passed.
type BodyTooLargeError struct{ Limit int64 }

func (e *BodyTooLargeError) Error() string { return fmt.Sprintf("body larger than %d bytes", e.Limit) }

// Is makes errors.Is(err, ErrBodyTooLarge) hold.
func (e *BodyTooLargeError) Is(target error) bool { return target == ErrBodyTooLarge }

// localBody is where the guard leaves a request's body state.
const localBody = "mailpulse-body"

// bodies are an app's bounds on request bodies, shared by its requests.
type bodies struct {
	limit       int64
	readTimeout time.Duration
	wait        time.Duration
	mem         *semaphore.Weighted
	memSize     int64
	held        atomic.Int64 // bytes reserved now, for the gauge
	refused     prometheus.Counter
	read        prometheus.Counter
}

func newBodies(cfg Config) *bodies {
	labels := prometheus.Labels{"server": cfg.Name}
	b := &bodies{
		limit:       int64(cfg.BodyLimit),
		readTimeout: cfg.ReadTimeout,
		wait:        cfg.BodyWait,
		mem:         semaphore.NewWeighted(cfg.BodyMemory),
		memSize:     cfg.BodyMemory,
		refused:     prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_http_body_memory_refused_total", Help: "Requests answered 503 because request bodies held all the body memory for longer than the wait allows, by server.", ConstLabels: labels}),
		read:        prometheus.NewCounter(prometheus.CounterOpts{Name: "mailpulse_http_body_read_bytes_total", Help: "Bytes of request bodies read by handlers (after authentication), by server.", ConstLabels: labels}),
	}
	if cfg.Registry != nil {
		cfg.Registry.MustRegister(b.refused, b.read,
			prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "mailpulse_http_body_memory_bytes", Help: "Bytes of body memory held by requests now, by server.", ConstLabels: labels}, func() float64 { return float64(b.held.Load()) }))
	}
	return b
}

// body is one request's body: what it declares, what has been read, what it holds.
type body struct {
	b      *bodies
	length int64 // declared: the Content-Length, -1 for chunked, 0 for none
	read   int64
	done   bool  // read to its end
	held   int64 // reserved in b.mem until the request ends
}

// guard runs first on every request: it refuses encoded bodies (Fiber would decompress
// them without bound), lets the handlers run, then releases the body memory and, when the
// body was not read to its end, closes the connection lingeringly.
func (b *bodies) guard(c *fiber.Ctx) error {
	st := &body{b: b, length: declaredLength(c)}
	c.Locals(localBody, st)
	defer st.release()
	var err error
	if enc := strings.TrimSpace(c.Get(fiber.HeaderContentEncoding)); st.length != 0 && enc != "" && !strings.EqualFold(enc, "identity") {
		err = fmt.Errorf("%w: send it without Content-Encoding", ErrBodyEncoding)
	} else {
		err = c.Next()
	}
	if st.length != 0 && !st.done {
		// The rest of the body is still on the connection: it cannot carry another request.
		c.Response().Header.SetConnectionClose()
		if lc, ok := c.Context().Conn().(*conn); ok {
			rest := int64(math.MaxInt64)
			if st.length > 0 {
				rest = st.length - st.read
			}
			lc.lingerFor(rest)
		}
	}
	return err
}

func declaredLength(c *fiber.Ctx) int64 {
	switch n := c.Request().Header.ContentLength(); {
	case n == -1:
		return -1 // chunked
	case n < 0:
		return 0
	default:
		return int64(n)
	}
}

func bodyOf(c *fiber.Ctx) *body {
	st, _ := c.Locals(localBody).(*body)
	return st
}

// ReserveMemory holds n bytes of the app's body memory (Config.BodyMemory) until the
// request ends, waiting for at most Config.BodyWait; ErrBodyMemory when there is no room by
// then. A handler that streams its body reserves what it holds at once (ReadBody reserves
// the body's size itself). Without an app made by New, it does nothing.
func ReserveMemory(c *fiber.Ctx, n int64) error {
	if st := bodyOf(c); st != nil {
		return st.reserve(n)
	}
	return nil
}

func (st *body) reserve(n int64) error {
	n = min(n, st.b.memSize)
	if n <= 0 {
		return nil
	}
	if !st.b.mem.TryAcquire(n) {
		// Not c.Context(): fasthttp's RequestCtx is not safe as a context while its server
		// stops (Done reads a field Shutdown writes). The wait is short and bounded.
		ctx, cancel := context.WithTimeout(context.Background(), st.b.wait)
		defer cancel()
		if err := st.b.mem.Acquire(ctx, n); err != nil {
			st.b.refused.Inc()
			return fmt.Errorf("%w (waited %s)", ErrBodyMemory, st.b.wait)
		}
	}
	st.held += n
	st.b.held.Add(n)
	return nil
}

func (st *body) unreserve(n int64) {
	n = min(n, st.held)
	if n <= 0 {
		return
	}
	st.held -= n
	st.b.held.Add(-n)
	st.b.mem.Release(n)
}

func (st *body) release() { st.unreserve(st.held) }

// ReadBody reads the request's body into memory, so that c.Body() returns it: at most the
// app's body limit (a longer declared length is refused before reading), within
// Config.ReadTimeout, holding its size of the body memory until the request ends. Errors:
// ErrBodyTooLarge, ErrBodyMemory, ErrBodyTimeout, ErrBodyIncomplete, for the error handler
// to answer. Reading twice is reading once.
func ReadBody(c *fiber.Ctx) error {
	st := bodyOf(c)
	if st == nil || st.done || st.length == 0 {
		return nil
	}
	limit := st.b.limit
	if st.length > limit {
		return &BodyTooLargeError{Limit: limit}
	}
	want := st.length
	if want < 0 {
		want = limit // chunked: the most it may be; what is not used is given back
	}
	if err := st.reserve(want); err != nil {
		return err
	}
	r := st.reader(c, limit, false)
	var buf []byte
	var err error
	if st.length > 0 {
		buf = make([]byte, st.length)
		_, err = io.ReadFull(r, buf)
		st.done = err == nil
	} else {
		buf, err = io.ReadAll(r)
	}
	if err != nil {
		if errors.Is(err, io.ErrUnexpectedEOF) {
			err = fmt.Errorf("%w: %w", ErrBodyIncomplete, err)
		}
		return err
	}
	st.unreserve(want - int64(len(buf)))
	c.Request().SetBodyRaw(buf)
	return nil
}

// BodyReader returns the request's body as a stream, for a handler that reads it itself:
// at most limit bytes (ErrBodyTooLarge past them, or at once when the declared length is
// over), each read waiting at most Config.ReadTimeout for the client (ErrBodyTimeout), a
// body cut short ErrBodyIncomplete. A slow body is not cut as long as it keeps coming; the
// caller bounds the whole. Call it once the request is authenticated.
func BodyReader(c *fiber.Ctx, limit int64) (io.Reader, error) {
	st := bodyOf(c)
	if st == nil {
		return bytes.NewReader(c.Body()), nil // fasthttp read it, under its limit
	}
	if st.length > limit {
		return nil, &BodyTooLargeError{Limit: limit}
	}
	return st.reader(c, limit, true), nil
}

// reader reads the body from fasthttp's stream. stall: each read has ReadTimeout; else the
// whole body has it from now.
func (st *body) reader(c *fiber.Ctx, limit int64, stall bool) io.Reader {
	r := &bodyReader{st: st, r: c.Context().RequestBodyStream(), conn: c.Context().Conn(), limit: limit, stall: stall}
	if r.r == nil || st.length == 0 {
		st.done = true
	}
	if !stall && !st.done {
		_ = r.conn.SetReadDeadline(time.Now().Add(st.b.readTimeout))
	}
	return r
}

type bodyReader struct {
	st    *body
	r     io.Reader
	conn  net.Conn
	limit int64
	stall bool
}

func (r *bodyReader) Read(p []byte) (int, error) {
	st := r.st
	if st.done {
		return 0, io.EOF
	}
	if r.stall {
		_ = r.conn.SetReadDeadline(time.Now().Add(st.b.readTimeout))
	}
	// One byte past the limit tells a body over it.
	if room := r.limit - st.read + 1; int64(len(p)) > room {
		p = p[:room]
	}
	n, err := r.r.Read(p)
	st.read += int64(n)
	st.b.read.Add(float64(n))
	if st.read > r.limit {
		return 0, &BodyTooLargeError{Limit: r.limit}
	}
	switch {
	case err == io.EOF:
		st.done = true
		return n, io.EOF
	case err == nil:
		if st.length > 0 && st.read == st.length {
			st.done = true
		}
		return n, nil
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return n, fmt.Errorf("%w (no data for %s)", ErrBodyTimeout, st.b.readTimeout)
	}
	return n, fmt.Errorf("%w: %w", ErrBodyIncomplete, err)
}
