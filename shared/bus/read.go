package bus

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Errors of ReadRange.
var (
	// ErrBeyondEnd: the range starts after the last sequence of the log; nothing was read.
	ErrBeyondEnd = errors.New("the range starts past the end of the log")
	// ErrStalled: the log stopped delivering before the end of the range although it still
	// holds messages of it (or can no longer say where it stands).
	ErrStalled = errors.New("the log stopped delivering before the end of the range")
	// ErrGap: the log dropped messages of the range before they were read (age or size
	// limits, a purge) and the range has no OnGap to report them to.
	ErrGap = errors.New("the log no longer holds part of the range")
)

// Range is a part of a stream to read in order, once, with an ordered consumer: from a
// sequence or a time, to a sequence, a time, or the end of the log as of the call.
type Range struct {
	Stream   string
	Subjects []string // subject filters; none: the whole stream

	// The start: after AfterSeq (0: from the first message), or at the first message stored
	// at or after FromTime when it is set.
	AfterSeq uint64
	FromTime time.Time

	// The end: the message ToSeq (0: the last sequence of the log when the read starts), or
	// earlier, the last message stored at or before ToTime when it is set. Follow reads on
	// past the end for as long as ctx lasts (a live tail that starts with a catch-up).
	ToSeq  uint64
	ToTime time.Time
	Follow bool

	// OnGap is told about messages of the range that the log dropped before they could be
	// read. Without it, a gap ends the read with ErrGap.
	OnGap func(Gap) error

	// Stall is how long the read waits for the next message before it asks the log where
	// it stands (5 s); after three such waits with messages still due, it fails with
	// ErrStalled.
	Stall time.Duration
}

// Gap is a run of sequences, From to To inclusive, that the log dropped before the reader
// got to them. Some of them may not have matched the subject filters: a gap is reported
// whenever the log's first sequence moved past the reader.
type Gap struct {
	From, To uint64
}

// Message is one message of a range.
type Message struct {
	Seq     uint64
	Subject string
	Data    []byte    // owned by the caller once handed over
	Time    time.Time // when the log stored it
	Pending uint64    // messages matching the filters still after this one, as the log saw it
}

// RangeResult says how far a read got.
type RangeResult struct {
	Read  int    // messages handed to the function
	Last  uint64 // the last sequence handed over or reported in a gap (AfterSeq if none)
	End   uint64 // the end of the range, as a sequence
	First uint64 // the log's first sequence when the read started
}

// ReadRange calls fn with each message of r in order, and returns nil only when the whole
// range was read: it never ends early in silence. An error of fn ends the read and is
// returned as it is; every other failure (NATS gone, the consumer lost, the log stalled)
// is returned wrapped, with how far the read got.
func ReadRange(ctx context.Context, js jetstream.JetStream, r Range, fn func(Message) error) (RangeResult, error) {
	if r.Stall <= 0 {
		r.Stall = 5 * time.Second
	}
	res := RangeResult{Last: r.AfterSeq}
	first, last, err := bounds(ctx, js, r.Stream)
	if err != nil {
		return res, err
	}
	res.First = first
	res.End = r.ToSeq
	if res.End == 0 || res.End > last {
		res.End = last
	}
	if r.Follow {
		res.End = math.MaxUint64
	}
	cfg := jetstream.OrderedConsumerConfig{
		FilterSubjects:    r.Subjects,
		MaxResetAttempts:  3,
		InactiveThreshold: 30 * time.Second,
	}
	switch {
	case !r.FromTime.IsZero():
		from := r.FromTime
		cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &from
	case r.AfterSeq > last && !r.Follow:
		return res, fmt.Errorf("%w: resume point %d, last sequence %d", ErrBeyondEnd, r.AfterSeq, last)
	default:
		start := r.AfterSeq + 1
		if r.AfterSeq == 0 && first > 0 {
			// From the beginning: wherever the log begins now.
			start, res.Last = first, first-1
		}
		if first > start && last > 0 {
			// The log no longer holds the start of the range.
			if err := res.gap(r, Gap{From: start, To: first - 1}); err != nil {
				return res, err
			}
			start = first
			res.Last = first - 1
		}
		cfg.DeliverPolicy, cfg.OptStartSeq = jetstream.DeliverByStartSequencePolicy, start
	}
	if !r.Follow && (last == 0 || res.Last >= res.End) && r.FromTime.IsZero() {
		return res, nil // nothing after the start
	}
	if !r.Follow && last == 0 {
		return res, nil
	}
	cons, err := js.OrderedConsumer(ctx, r.Stream, cfg)
	if err != nil {
		return res, fmt.Errorf("read %s: %w: %w", r.Stream, ErrUnavailable, err)
	}
	if info := cons.CachedInfo(); info != nil && info.NumPending == 0 && !r.Follow {
		return res, nil
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(500))
	if err != nil {
		return res, fmt.Errorf("read %s: %w: %w", r.Stream, ErrUnavailable, err)
	}
	defer it.Stop()
	stop := context.AfterFunc(ctx, it.Stop)
	defer stop()

	rd := reader{r: r, js: js, res: &res}
	// With a start time, the first sequence is whatever the log finds: no skip before it.
	timed := !r.FromTime.IsZero()
	stalls := 0
	for {
		m, err := it.Next(jetstream.NextMaxWait(r.Stall))
		switch {
		case ctx.Err() != nil:
			return res, ctx.Err()
		case errors.Is(err, nats.ErrTimeout):
			if r.Follow {
				continue
			}
			if err := rd.settle(ctx, math.MaxUint64); err != nil {
				return res, err
			}
			done, err := res.stalled(ctx, js, r)
			if err != nil || done {
				return res, err
			}
			if stalls++; stalls >= 3 {
				return res, fmt.Errorf("read %s after sequence %d of %d: %w", r.Stream, res.Last, res.End, ErrStalled)
			}
			continue
		case err != nil:
			return res, fmt.Errorf("read %s after sequence %d: %w: %w", r.Stream, res.Last, ErrUnavailable, err)
		}
		stalls = 0
		meta, err := m.Metadata()
		if err != nil {
			return res, fmt.Errorf("read %s after sequence %d: message metadata: %w", r.Stream, res.Last, err)
		}
		seq := meta.Sequence.Stream
		if (!r.ToTime.IsZero() && meta.Timestamp.After(r.ToTime)) || seq > res.End {
			return res, rd.settle(ctx, math.MaxUint64)
		}
		if seq > res.Last+1 && !(timed && res.Read == 0) {
			// Messages were skipped: those of other subjects, or dropped by the log.
			if err := rd.skipped(ctx, Gap{From: res.Last + 1, To: seq - 1}); err != nil {
				return res, err
			}
		}
		if err := fn(Message{Seq: seq, Subject: m.Subject(), Data: m.Data(), Time: meta.Timestamp, Pending: meta.NumPending}); err != nil {
			return res, err
		}
		res.Read++
		res.Last = seq
		if !r.Follow && (seq >= res.End || meta.NumPending == 0) {
			return res, rd.settle(ctx, math.MaxUint64)
		}
	}
}

// reader tells skipped sequences that were filtered out from ones the log dropped before
// they were read. A skip alone cannot say which: the log is asked for its first sequence,
// and a skipped run that lies below it is reported as a gap. With subject filters skips are
// the rule, so the log is asked at most every checkEvery, for every run skipped since.
type reader struct {
	r       Range
	js      jetstream.JetStream
	res     *RangeResult
	holes   []Gap
	checked time.Time
}

const (
	checkEvery = 200 * time.Millisecond
	maxHoles   = 4096
)

func (rd *reader) skipped(ctx context.Context, h Gap) error {
	if n := len(rd.holes); n >= maxHoles {
		rd.holes[n-1].To = h.To // coalesce: the report may be wider, never narrower
	} else {
		rd.holes = append(rd.holes, h)
	}
	if len(rd.r.Subjects) > 0 && time.Since(rd.checked) < checkEvery {
		return nil
	}
	return rd.settle(ctx, h.To+1)
}

// settle asks the log for its first sequence and reports the skipped runs below it (up to
// before next) as gaps.
func (rd *reader) settle(ctx context.Context, next uint64) error {
	if len(rd.holes) == 0 {
		return nil
	}
	rd.checked = time.Now()
	first, _, err := bounds(ctx, rd.js, rd.r.Stream)
	if err != nil {
		return err
	}
	rd.res.First = first
	holes := rd.holes
	rd.holes = rd.holes[:0]
	for _, h := range holes {
		if h.From >= first {
			continue // the log still held it when asked: it was filtered out
		}
		g := Gap{From: h.From, To: min(h.To, first-1, next-1)}
		if err := rd.res.gap(rd.r, g); err != nil {
			return err
		}
	}
	return nil
}

func (res *RangeResult) gap(r Range, g Gap) error {
	if r.OnGap == nil {
		return fmt.Errorf("%w: sequences %d to %d", ErrGap, g.From, g.To)
	}
	if err := r.OnGap(g); err != nil {
		return err
	}
	return nil
}

// stalled runs when no message came for a while: it reports whether the range is complete
// (the log dropped the rest of it, which is a gap) or fails when the log does not answer.
func (res *RangeResult) stalled(ctx context.Context, js jetstream.JetStream, r Range) (done bool, err error) {
	first, last, err := bounds(ctx, js, r.Stream)
	if err != nil {
		return false, err
	}
	res.First = first
	if first > res.Last+1 {
		to := min(first-1, res.End)
		if err := res.gap(r, Gap{From: res.Last + 1, To: to}); err != nil {
			return false, err
		}
		res.Last = to
		if to >= res.End {
			return true, nil
		}
	}
	if last < res.End {
		// The end itself was dropped (a purge of the whole log): nothing more will come.
		if last < res.Last+1 {
			return true, nil
		}
	}
	return false, nil
}

// bounds returns a stream's first and last sequences.
func bounds(ctx context.Context, js jetstream.JetStream, stream string) (first, last uint64, err error) {
	ictx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	st, err := js.Stream(ictx, stream)
	if err != nil {
		return 0, 0, fmt.Errorf("stream %s: %w: %w", stream, ErrUnavailable, err)
	}
	info, err := st.Info(ictx)
	if err != nil {
		return 0, 0, fmt.Errorf("stream %s: %w: %w", stream, ErrUnavailable, err)
	}
	return info.State.FirstSeq, info.State.LastSeq, nil
}

// Bounds returns a stream's first and last sequences; an error wraps ErrUnavailable.
func Bounds(ctx context.Context, js jetstream.JetStream, stream string) (first, last uint64, err error) {
	return bounds(ctx, js, stream)
}
