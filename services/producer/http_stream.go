package producer

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/gofiber/fiber/v2"

	"github.com/mailpulse/mailpulse/shared/apikey"
	"github.com/mailpulse/mailpulse/shared/event"
	"github.com/mailpulse/mailpulse/shared/httpserver"
)

// Stalwart's webhook batches have no size limit: Stalwart puts a failed batch back in front
// of newer events, so after an outage a busy server's batch is large, and stays large until
// it is accepted. /ingest/stalwart therefore reads its body as a stream (up to
// stalwart.max_batch events and stalwart.max_body_bytes) and stores it in chunks, each
// through the same path as a small batch (content dedup: a batch sent again is stored
// once), holding one chunk in memory at a time. It answers 202 once every chunk is stored.
//
// Authentication comes first. With the ingest key, it is in the headers: the body is then
// read straight from the connection. With Stalwart's signature, it covers the whole body:
// the body is spooled to a file (0600, removed after) while it is hashed, and nothing is
// read as events before the signature holds. Spooling also lets the events be counted
// before any is stored, so a batch over stalwart.max_batch is refused whole; read straight
// from the connection, it is found over only when the limit is passed, after the chunks
// before it are stored (the answer says how many; sent again, they are duplicates).

const (
	chunkEvents = 5000    // events stored at once
	chunkBytes  = 4 << 20 // raw bytes of the events stored at once
	// maxEventBytes bounds one event of a streamed batch as sent (data is at most 64 KiB
	// once compacted; this leaves room for indentation and escapes). A larger event is
	// rejected alone.
	maxEventBytes = 1 << 20
	// chunkMemory is what one streamed request may hold, reserved from the body memory: a
	// chunk's raw events, the events parsed, and their encoding for the log.
	chunkMemory = 3*chunkBytes + 2*maxEventBytes
)

var (
	// errSignature is a missing or wrong X-Signature.
	errSignature = errors.New("missing or invalid X-Signature")
	// errSpool is a failure to keep a signed body on disk (the disk full, say): 503.
	errSpool = errors.New("spool the body")
	// errStopping is a batch cut short because the server is stopping: 503.
	errStopping = errors.New("server stopping")
)

// stalwart is POST /ingest/stalwart: Stalwart's webhook payload.
func (h *httpServer) stalwart(c *fiber.Ctx) (err error) {
	start := time.Now()
	defer func() {
		h.s.metrics.duration.WithLabelValues("stalwart", strconv.Itoa(c.Response().StatusCode())).Observe(time.Since(start).Seconds())
	}()
	// Authentication from the headers, before the body: a signature that cannot be right
	// is refused at once; the key is checked in full.
	secret := h.s.cfg.Stalwart.Secret
	var sig []byte
	if secret != "" {
		if sig = decodeSignature(c.Get("X-Signature")); sig == nil {
			return badSignature(c)
		}
	} else if _, err := h.s.deps.Keys.Check(httpserver.Credential(c), apikey.Ingest); err != nil {
		status := fiber.StatusUnauthorized
		if errors.Is(err, apikey.ErrForbidden) {
			status = fiber.StatusForbidden
		}
		return httpserver.Error(c, status, err.Error())
	}
	d := h.s.defaults
	d.Source = h.s.cfg.Stalwart.Source
	if src := c.Query("source"); src != "" {
		if err := event.ValidateSource(src); err != nil {
			return c.Status(fiber.StatusBadRequest).JSON(fiber.Map{"error": "source parameter: " + err.Error()})
		}
		// Fiber's strings point into the request's buffer, which fasthttp reuses for the
		// next request: a source kept by the events and the metrics projection must be a
		// copy, or a later request rewrites it.
		d.Source = strings.Clone(src)
	}
	body, err := httpserver.BodyReader(c, h.s.cfg.Stalwart.MaxBodyBytes)
	if err != nil {
		return err // over the limit by its declared length: 413 before reading
	}
	if !h.takeSlot() {
		c.Set(fiber.HeaderRetryAfter, "1")
		return httpserver.Error(c, fiber.StatusServiceUnavailable, fmt.Sprintf("%d Stalwart batches are being read; retry", cap(h.stalwartSlots)))
	}
	defer func() { <-h.stalwartSlots }()
	if secret != "" {
		f, err := h.spool(body, secret, sig)
		if errors.Is(err, errSignature) {
			return badSignature(c)
		}
		if err != nil {
			return h.answerStream(c, &tally{}, err)
		}
		defer removeSpool(f)
		if err := countEvents(f, h.s.cfg.Stalwart.MaxBatch); err != nil {
			return h.answerStream(c, &tally{}, err)
		}
		if _, err := f.Seek(0, io.SeekStart); err != nil {
			return h.answerStream(c, &tally{}, fmt.Errorf("%w: %w", errSpool, err))
		}
		body = f
	}
	if err := httpserver.ReserveMemory(c, chunkMemory); err != nil {
		return err
	}
	return h.ingestStream(c, body, d.ParseStalwart)
}

// takeSlot waits for one of the stalwart.max_concurrent places, for at most
// ingest.body_wait, and reports whether it has one.
func (h *httpServer) takeSlot() bool {
	select {
	case h.stalwartSlots <- struct{}{}:
		return true
	default:
	}
	t := time.NewTimer(h.s.cfg.Ingest.BodyWait)
	defer t.Stop()
	select {
	case h.stalwartSlots <- struct{}{}:
		return true
	case <-t.C:
	case <-h.stopping:
	}
	return false
}

func badSignature(c *fiber.Ctx) error {
	c.Set(fiber.HeaderWWWAuthenticate, `Signature header="X-Signature"`)
	return c.Status(fiber.StatusUnauthorized).JSON(fiber.Map{"error": errSignature.Error()})
}

// decodeSignature decodes Stalwart's X-Signature (base64 of an HMAC-SHA256), or returns nil
// when it cannot be one.
func decodeSignature(header string) []byte {
	got, err := base64.StdEncoding.DecodeString(strings.TrimSpace(header))
	if err != nil || len(got) != sha256.Size {
		return nil
	}
	return got
}

// spool copies the body to a new file in stalwart.spool_dir (0600) while hashing it, and
// checks the signature, in constant time. It returns the file, at its start, for the
// caller to read and then removeSpool; errSignature when the signature does not hold; the
// body's own errors (too large, too slow, cut short); errSpool when the disk fails.
func (h *httpServer) spool(body io.Reader, secret string, sig []byte) (*os.File, error) {
	f, err := os.CreateTemp(h.s.cfg.Stalwart.SpoolDir, "mailpulse-stalwart-*.json")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errSpool, err)
	}
	mac := hmac.New(sha256.New, []byte(secret))
	var w io.Writer = &spoolWriter{f: f}
	if _, err = io.Copy(io.MultiWriter(w, mac), body); err == nil && !hmac.Equal(mac.Sum(nil), sig) {
		err = errSignature
	}
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		removeSpool(f)
		return nil, err
	}
	return f, nil
}

// spoolWriter marks the file's write errors as errSpool, apart from the body's.
type spoolWriter struct{ f *os.File }

func (w *spoolWriter) Write(p []byte) (int, error) {
	n, err := w.f.Write(p)
	if err != nil {
		err = fmt.Errorf("%w: %w", errSpool, err)
	}
	return n, err
}

func removeSpool(f *os.File) {
	_ = f.Close()
	_ = os.Remove(f.Name())
}

// countEvents reads a spooled batch through: event.ErrTooManyEvents when it has more than
// max events, or the body's shape error; nothing is stored either way.
func countEvents(r io.Reader, max int) error {
	sr := event.NewStalwartReader(r, maxEventBytes)
	for {
		_, err := sr.Next()
		switch {
		case err == io.EOF:
			return nil
		case errors.Is(err, event.ErrEventTooLarge):
		case err != nil:
			return err
		}
		if sr.Events() > max {
			return fmt.Errorf("body: more than %d events: %w", max, event.ErrTooManyEvents)
		}
	}
}

// ingestStream reads a batch from r and stores it chunk by chunk; each event that is not
// valid is rejected alone, as in a small batch.
func (h *httpServer) ingestStream(c *fiber.Ctx, r io.Reader, parse func([]byte) (event.Event, error)) error {
	t := &tally{}
	defer h.record("stalwart", t)
	max := h.s.cfg.Stalwart.MaxBatch
	sr := event.NewStalwartReader(r, maxEventBytes)
	evs := make([]event.Event, 0, chunkEvents)
	size, valid := 0, 0
	flush := func() bool {
		ok := h.store(t, evs, byContent)
		valid += len(evs)
		evs, size = evs[:0], 0
		return ok
	}
	for i := 0; ; i++ {
		raw, err := sr.Next()
		if err == io.EOF {
			break
		}
		if err == nil && i >= max {
			err = fmt.Errorf("body: more than %d events: %w", max, event.ErrTooManyEvents)
		}
		if errors.Is(err, event.ErrEventTooLarge) {
			t.received++
			t.reject(i, err)
			continue
		}
		if err != nil {
			return h.answerStream(c, t, err)
		}
		t.received++
		e, err := parse(raw)
		if err != nil {
			t.reject(i, err)
			continue
		}
		evs = append(evs, e)
		if size += len(raw); len(evs) < chunkEvents && size < chunkBytes {
			continue
		}
		if !flush() {
			return unstored(c, t)
		}
		select {
		case <-h.stopping:
			// A stop waits for requests within its grace period; a batch of a million
			// events would outlast it. What is stored stays stored; the rest comes again.
			return h.answerStream(c, t, errStopping)
		default:
		}
	}
	if !flush() {
		return unstored(c, t)
	}
	if valid == 0 {
		return c.Status(fiber.StatusBadRequest).JSON(fiber.Map{"error": "no valid event in the batch", "accepted": 0, "rejected": t.rejected, "errors": t.errors()})
	}
	return accepted(c, t)
}

// answerStream answers a batch that could not be read to its end: the status of the error
// (413 over a limit, 400 a broken body, 408 too slow, 503 the disk or a stop), with what
// was stored before it, if anything. Sent again, those events are recognised as duplicates.
func (h *httpServer) answerStream(c *fiber.Ctx, t *tally, err error) error {
	status := httpserver.BodyStatus(err)
	msg := err.Error()
	switch {
	case errors.Is(err, event.ErrTooManyEvents):
		status = fiber.StatusRequestEntityTooLarge
	case errors.Is(err, event.ErrMalformed), errors.Is(err, event.ErrEmptyBatch):
		status = fiber.StatusBadRequest
	case errors.Is(err, errSpool), errors.Is(err, errStopping):
		status = fiber.StatusServiceUnavailable
		c.Set(fiber.HeaderRetryAfter, "1")
		if errors.Is(err, errSpool) {
			h.s.log.Error("Stalwart batch not spooled", "dir", h.s.cfg.Stalwart.SpoolDir, "err", err)
			msg = errSpool.Error() + ": the disk failed" // its path and error are logged, not told
		}
	case status == fiber.StatusBadRequest:
		msg = httpserver.ErrBodyIncomplete.Error()
	case status == 0:
		return err // unexpected: the error handler logs it and answers 500
	}
	return c.Status(status).JSON(fiber.Map{"error": msg, "stored": t.stored - t.dups, "duplicates": t.dups, "rejected": t.rejected, "errors": t.errors()})
}
