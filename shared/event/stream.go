package event

import (
	"bytes"
	stdjson "encoding/json"
	"errors"
	"fmt"
	"io"
)

// ErrMalformed is the error of a streamed body whose outer structure is broken (not
// Stalwart's {"events":[...]}, brackets that do not match, nesting too deep, a body cut
// short): where its events begin and end cannot be told, so reading stops.
var ErrMalformed = errors.New("body: malformed")

// ErrEventTooLarge is the error of one event of a streamed batch that is larger than the
// reader's bound. It concerns that event only: reading goes on with the next one.
var ErrEventTooLarge = errors.New("event too large")

// StalwartReader reads the events of Stalwart's webhook payload {"events":[...]} one at a
// time from a stream, holding at most one event in memory, so that a batch of any size is
// read in constant memory. It checks the outer structure (the object, the array, matching
// brackets and strings, the nesting depth SplitStalwart allows); each event's own JSON is
// the event parser's to check, so that one bad event gets its own error. Where
// SplitStalwart accepts a body, the reader returns the same events, byte for byte (a fuzz
// test holds it to that).
type StalwartReader struct {
	r        io.Reader
	maxEvent int
	buf      []byte
	pos, end int
	off      int64 // bytes of r consumed before buf[0], for error messages
	rerr     error // r's error, reported once buf is drained

	capturing bool   // an event is being read: buf[mark:pos] belongs to it
	mark      int    // where the captured part of buf starts
	elem      []byte // the captured event, when it spans refills
	tooLarge  bool   // the event being captured passed maxEvent: it is skipped
	depth     int    // nesting of the value being scanned, top-level object included
	stack     []byte // the closing brackets expected

	state  int
	events int   // events returned (too large ones included)
	err    error // the error that ended reading, returned again
}

const (
	stateStart = iota
	stateFirst // after '[': an event or ']'
	stateNext  // after an event: ',' or ']'
	stateAfter // after the array: more members or '}'
	stateDone
)

// maxBodyDepth is the nesting SplitStalwart allows in a whole body (checkDepth with
// MaxDepth+3: the object, the array, the event, its data and MaxDepth levels in data).
const maxBodyDepth = MaxDepth + 4

// NewStalwartReader returns a reader of r's events, each at most maxEvent bytes.
func NewStalwartReader(r io.Reader, maxEvent int) *StalwartReader {
	if maxEvent <= 0 {
		maxEvent = 1 << 20
	}
	return &StalwartReader{r: r, maxEvent: maxEvent, buf: make([]byte, 64<<10)}
}

// Next returns the next event's raw JSON, valid until the following call, or io.EOF after
// the last one once the body has ended (a body is read to its end, so that what follows
// the array is checked too). An error wrapping ErrEventTooLarge is about that event alone:
// call Next again for the following one. Any other error ends the reading and is returned
// again by later calls: ErrMalformed (with where and why), ErrEmptyBatch for a body without
// events, or r's own error, wrapped.
func (s *StalwartReader) Next() ([]byte, error) {
	if s.err != nil {
		return nil, s.err
	}
	ev, err := s.next()
	if err == io.EOF && s.state != stateDone {
		err = s.malformed("the body ends early")
	}
	if err != nil && !errors.Is(err, ErrEventTooLarge) {
		s.err = err
		s.state = stateDone
	}
	return ev, err
}

// Events is how many events Next has returned so far, too large ones included.
func (s *StalwartReader) Events() int { return s.events }

func (s *StalwartReader) next() ([]byte, error) {
	for {
		switch s.state {
		case stateStart:
			b, err := s.nonSpace()
			if err == io.EOF || err == nil && b != '{' {
				return nil, s.shape()
			}
			if err != nil {
				return nil, err
			}
			s.depth = 1
			if err := s.members(true); err != nil {
				return nil, err
			}
			// members returned at the events array's '['.
			s.state = stateFirst
		case stateFirst, stateNext:
			b, err := s.nonSpace()
			if err != nil {
				return nil, err
			}
			if b == ']' {
				s.depth--
				s.state = stateAfter
				continue
			}
			if s.state == stateNext {
				if b != ',' {
					return nil, s.malformed("want ',' or ']' after an event")
				}
			} else {
				s.pos-- // the event's first byte
			}
			s.state = stateNext
			return s.event()
		case stateAfter:
			if err := s.members(false); err != nil {
				return nil, err
			}
			// Nothing may follow the object.
			if _, err := s.nonSpace(); err == nil {
				return nil, s.malformed("data after the object")
			} else if !errors.Is(err, io.EOF) {
				return nil, err
			}
			s.state = stateDone
		case stateDone:
			if s.events == 0 {
				return nil, ErrEmptyBatch
			}
			return nil, io.EOF
		}
	}
}

// members reads the object's members. Before the events array (first), it returns at the
// array's '['; after it, it returns at the object's '}'. Other members' values are
// skipped, as are events keys after the first (the first wins, as in SplitStalwart).
func (s *StalwartReader) members(first bool) error {
	for n := 0; ; n++ {
		b, err := s.nonSpace()
		if err != nil {
			return err
		}
		if b == '}' {
			if first {
				return s.shape() // the object ended without events
			}
			s.depth--
			return nil
		}
		if n > 0 || !first {
			if b != ',' {
				return s.malformed("want ',' or '}' after a member")
			}
			if b, err = s.nonSpace(); err != nil {
				return err
			}
		}
		if b != '"' {
			return s.malformed("want a member name")
		}
		key, err := s.key()
		if err != nil {
			return err
		}
		if b, err = s.nonSpace(); err != nil {
			return err
		}
		if b != ':' {
			return s.malformed("want ':' after a member name")
		}
		if first && key == "events" {
			if b, err = s.nonSpace(); err != nil {
				return err
			}
			if b != '[' {
				return s.shape()
			}
			s.depth++
			return nil
		}
		if err := s.value(); err != nil {
			return err
		}
	}
}

// key reads a member name after its opening quote; names longer than "events" are cut
// (only that name matters). Escapes are decoded, as SplitStalwart's gjson does.
func (s *StalwartReader) key() (string, error) {
	var k []byte
	escaped := false
	for {
		b, err := s.byte()
		if err != nil {
			return "", err
		}
		switch {
		case escaped:
			escaped = false
		case b == '\\':
			escaped = true
		case b == '"':
			if bytes.IndexByte(k, '\\') >= 0 {
				var u string
				if stdjson.Unmarshal(append(append([]byte{'"'}, k...), '"'), &u) == nil {
					return u, nil
				}
			}
			return string(k), nil
		}
		if len(k) < 64 {
			k = append(k, b)
		}
	}
}

// event captures one value of the array.
func (s *StalwartReader) event() ([]byte, error) {
	if _, err := s.nonSpace(); err != nil {
		return nil, err
	}
	s.pos--
	s.capturing, s.mark, s.elem, s.tooLarge = true, s.pos, s.elem[:0], false
	err := s.value()
	s.capturing = false
	if err != nil {
		return nil, err
	}
	s.events++
	if !s.tooLarge {
		s.keep(s.buf[s.mark:s.pos])
	}
	if s.tooLarge {
		s.elem = s.elem[:0]
		return nil, fmt.Errorf("event %d: more than %d bytes: %w", s.events-1, s.maxEvent, ErrEventTooLarge)
	}
	return s.elem, nil
}

// keep appends part of the event being captured, unless it has grown past maxEvent.
func (s *StalwartReader) keep(p []byte) {
	if s.tooLarge {
		return
	}
	if len(s.elem)+len(p) > s.maxEvent {
		s.tooLarge = true
		s.elem = s.elem[:0]
		return
	}
	s.elem = append(s.elem, p...)
}

// value scans one JSON value: strings and brackets are followed exactly, anything else up
// to the next delimiter.
func (s *StalwartReader) value() error {
	b, err := s.nonSpace()
	if err != nil {
		return err
	}
	switch b {
	case '"':
		return s.str()
	case '{', '[':
		return s.compound(b)
	case ',', ':', ']', '}':
		return s.malformed("want a value")
	}
	for {
		b, err := s.byte()
		if errors.Is(err, io.EOF) {
			return nil // a scalar that ends the body: the caller finds the body cut short
		}
		if err != nil {
			return err
		}
		switch b {
		case ',', ']', '}', ' ', '\t', '\r', '\n':
			s.pos--
			return nil
		case '"', '{', '[', ':':
			return s.malformed("unexpected " + string(b))
		}
	}
}

// compound scans an object or array after its opening bracket, to the matching close.
func (s *StalwartReader) compound(open byte) error {
	base := len(s.stack)
	push := func(open byte) error {
		s.depth++
		if s.depth > maxBodyDepth {
			return fmt.Errorf("%w: nested deeper than %d levels", ErrMalformed, maxBodyDepth-1)
		}
		s.stack = append(s.stack, open+2) // '{'+2 is '}', '['+2 is ']'
		return nil
	}
	if err := push(open); err != nil {
		return err
	}
	for len(s.stack) > base {
		if s.pos == s.end && !s.fill() {
			return s.cut()
		}
		// Skip to the next byte that matters.
		i := bytes.IndexAny(s.buf[s.pos:s.end], `"{}[]`)
		if i < 0 {
			s.pos = s.end
			continue
		}
		s.pos += i
		b := s.buf[s.pos]
		s.pos++
		switch b {
		case '"':
			if err := s.str(); err != nil {
				return err
			}
		case '{', '[':
			if err := push(b); err != nil {
				return err
			}
		default:
			if s.stack[len(s.stack)-1] != b {
				return s.malformed("brackets do not match")
			}
			s.stack = s.stack[:len(s.stack)-1]
			s.depth--
		}
	}
	return nil
}

// str scans a string after its opening quote.
func (s *StalwartReader) str() error {
	for {
		if s.pos == s.end && !s.fill() {
			return s.cut()
		}
		i := bytes.IndexAny(s.buf[s.pos:s.end], `"\`)
		if i < 0 {
			s.pos = s.end
			continue
		}
		s.pos += i + 1
		if s.buf[s.pos-1] == '"' {
			return nil
		}
		if _, err := s.byte(); err != nil { // the escaped byte
			return err
		}
	}
}

// nonSpace returns the next byte that is not JSON white space.
func (s *StalwartReader) nonSpace() (byte, error) {
	for {
		b, err := s.byte()
		if err != nil {
			return 0, err
		}
		switch b {
		case ' ', '\t', '\r', '\n':
			continue
		}
		return b, nil
	}
}

// byte returns the next byte; io.EOF only at the body's end, r's other errors wrapped.
func (s *StalwartReader) byte() (byte, error) {
	if s.pos == s.end && !s.fill() {
		return 0, s.eof()
	}
	b := s.buf[s.pos]
	s.pos++
	return b, nil
}

// fill reads more of r into buf, first saving the captured part of the current one. It
// reports whether there is anything to read.
func (s *StalwartReader) fill() bool {
	if s.rerr != nil {
		return false
	}
	if s.capturing {
		s.keep(s.buf[s.mark:s.end])
		s.mark = 0
	}
	s.off += int64(s.end)
	n, err := io.ReadAtLeast(s.r, s.buf, 1)
	s.pos, s.end = 0, n
	if err != nil {
		s.rerr = err
	}
	return n > 0
}

// eof is the error of the body's end: io.EOF, or r's error.
func (s *StalwartReader) eof() error {
	if s.rerr == nil || errors.Is(s.rerr, io.EOF) {
		return io.EOF
	}
	return fmt.Errorf("read body: %w", s.rerr)
}

// cut is the error of a body that ends inside a value.
func (s *StalwartReader) cut() error {
	if err := s.eof(); !errors.Is(err, io.EOF) {
		return err
	}
	return s.malformed("the body ends inside a value")
}

func (s *StalwartReader) shape() error {
	return fmt.Errorf(`%w: want Stalwart's {"events":[...]}`, ErrMalformed)
}

func (s *StalwartReader) malformed(why string) error {
	return fmt.Errorf("%w: %s at byte %d", ErrMalformed, why, s.off+int64(s.pos))
}
