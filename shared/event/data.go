package event

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/tidwall/gjson"
)

// Data is an event's keys and values: a JSON object, kept encoded. Keys are camelCase
// (remoteIp, queueId); values are strings, numbers, booleans, timestamps (RFC 3339 strings),
// durations (integer milliseconds), IP addresses (strings), lists and nested events
// ({"type":..., "data":{...}}). A nil Data is the empty object.
type Data []byte

// Get returns the value of a top-level key; Result.Exists reports whether it is there.
func (d Data) Get(key string) gjson.Result {
	if len(d) == 0 {
		return gjson.Result{}
	}
	return gjson.GetBytes(d, escapeKey(key))
}

// escapeKey protects gjson's path syntax; keys that passed validation need nothing.
func escapeKey(k string) string {
	if !strings.ContainsAny(k, ".*?|#@\\!=<>%") {
		return k
	}
	var b strings.Builder
	for _, r := range k {
		if strings.ContainsRune(".*?|#@\\!=<>%", r) {
			b.WriteByte('\\')
		}
		b.WriteRune(r)
	}
	return b.String()
}

// Each calls fn for every top-level key in order until fn returns false.
func (d Data) Each(fn func(key string, value gjson.Result) bool) {
	if len(d) == 0 {
		return
	}
	gjson.ParseBytes(d).ForEach(func(k, v gjson.Result) bool { return fn(k.Str, v) })
}

// Validate checks that d is a JSON object within the size, key and depth limits, with
// camelCase keys.
func (d Data) Validate() error {
	if len(d) == 0 {
		return nil
	}
	if len(d) > MaxDataBytes {
		return fmt.Errorf("data: larger than %d bytes", MaxDataBytes)
	}
	if err := checkDepth(d, MaxDepth); err != nil {
		return fmt.Errorf("data: %w", err)
	}
	if !gjson.ValidBytes(d) {
		return errors.New("data: not valid JSON")
	}
	if _, err := scanObject(d); err != nil {
		return err
	}
	if d.needsNormalizing() {
		return errors.New("data: keys must be camelCase (remoteIp, not remote-ip)")
	}
	return nil
}

// scanObject walks a syntactically valid JSON value once: it checks that it is an object
// within the depth and key limits, with top-level keys that are camelCase or can be made
// so, and reports whether NormalizeKeys has anything to do. It does not recurse, so a
// hostile body costs one pass and no stack.
func scanObject(d []byte) (needsNormalizing bool, err error) {
	i := skipSpace(d, 0)
	if i >= len(d) || d[i] != '{' {
		return false, errors.New("data: must be a JSON object")
	}
	i = skipSpace(d, i+1)
	if i < len(d) && d[i] == '}' {
		return false, nil
	}
	keys := 0
	for i < len(d) {
		// key
		if d[i] != '"' {
			return false, errors.New("data: not valid JSON")
		}
		end := i + 1
		for end < len(d) && d[end] != '"' {
			if d[end] == '\\' {
				return false, errors.New("data: keys must be plain camelCase letters and digits")
			}
			end++
		}
		key := d[i+1 : end]
		keys++
		if keys > MaxDataKeys {
			return false, fmt.Errorf("data: more than %d keys", MaxDataKeys)
		}
		if !validKey(string(key)) {
			if !validKey(CamelKey(string(key))) {
				return false, fmt.Errorf("data: key %q: want camelCase letters and digits, at most %d", key, MaxKeyLen)
			}
			needsNormalizing = true
		}
		i = skipSpace(d, end+1)
		if i >= len(d) || d[i] != ':' {
			return false, errors.New("data: not valid JSON")
		}
		i = skipSpace(d, i+1)
		// value: skip it, tracking depth
		start := i
		depth, inString, escaped := 0, false, false
	value:
		for ; i < len(d); i++ {
			c := d[i]
			switch {
			case inString:
				switch {
				case escaped:
					escaped = false
				case c == '\\':
					escaped = true
				case c == '"':
					inString = false
				}
			case c == '"':
				inString = true
			case c == '{' || c == '[':
				depth++
				if depth > MaxDepth {
					return false, fmt.Errorf("data: nested deeper than %d levels", MaxDepth)
				}
			case c == '}' || c == ']':
				if depth == 0 {
					break value
				}
				depth--
			case c == ',' && depth == 0:
				break value
			}
		}
		if d[start] == '{' && !needsNormalizing && (bytes.IndexByte(d[start:i], '-') >= 0 || bytes.IndexByte(d[start:i], '_') >= 0) {
			needsNormalizing = true // a nested event may have kebab-case keys; NormalizeKeys decides
		}
		if i >= len(d) {
			return false, errors.New("data: not valid JSON")
		}
		if d[i] == '}' {
			return needsNormalizing, nil
		}
		i = skipSpace(d, i+1)
	}
	return false, errors.New("data: not valid JSON")
}

func skipSpace(d []byte, i int) int {
	for i < len(d) && (d[i] == ' ' || d[i] == '\t' || d[i] == '\n' || d[i] == '\r') {
		i++
	}
	return i
}

// checkDepth rejects nesting deeper than max without recursion, so a hostile body of
// brackets costs one pass and no stack.
func checkDepth(b []byte, max int) error {
	depth, inString, escaped := 0, false, false
	for _, c := range b {
		switch {
		case inString:
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			}
		case c == '"':
			inString = true
		case c == '{' || c == '[':
			depth++
			if depth > max+1 { // the data object itself is level 0
				return fmt.Errorf("nested deeper than %d levels", max)
			}
		case c == '}' || c == ']':
			depth--
		}
	}
	return nil
}

// ValidKey reports whether k is a data key: camelCase letters and digits, starting with a
// lowercase letter, at most MaxKeyLen long.
func ValidKey(k string) bool { return validKey(k) }

func validKey(k string) bool {
	if k == "" || len(k) > MaxKeyLen || k[0] < 'a' || k[0] > 'z' {
		return false
	}
	for i := 1; i < len(k); i++ {
		c := k[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			return false
		}
	}
	return true
}

// CamelKey turns a kebab-case or snake_case key (remote-ip, queue_id) into camelCase
// (remoteIp, queueId); a camelCase key is returned as it is.
func CamelKey(k string) string {
	if strings.IndexByte(k, '-') < 0 && strings.IndexByte(k, '_') < 0 {
		return k
	}
	b := make([]byte, 0, len(k))
	upper := false
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c == '-' || c == '_' {
			upper = len(b) > 0
			continue
		}
		if upper && c >= 'a' && c <= 'z' {
			c -= 'a' - 'A'
		}
		upper = false
		b = append(b, c)
	}
	return string(b)
}

// NormalizeKeys rewrites kebab-case and snake_case keys as camelCase, recursing into nested
// events' data, and returns d unchanged (no copy) when there is nothing to rewrite. When
// two keys collide after rewriting, the first one wins. d must be valid JSON.
func (d Data) NormalizeKeys() Data {
	if len(d) == 0 || (bytes.IndexByte(d, '-') < 0 && bytes.IndexByte(d, '_') < 0) {
		return d
	}
	r := gjson.ParseBytes(d)
	if !r.IsObject() || !needsNormalizing(r) {
		return d
	}
	return Data(appendNormalized(make([]byte, 0, len(d)), r))
}

func needsNormalizing(obj gjson.Result) bool {
	found := false
	obj.ForEach(func(k, v gjson.Result) bool {
		if CamelKey(k.Str) != k.Str || (v.IsObject() && needsNormalizing(v)) {
			found = true
		}
		return !found
	})
	return found
}

func appendNormalized(b []byte, obj gjson.Result) []byte {
	b = append(b, '{')
	seen := make(map[string]bool)
	first := true
	obj.ForEach(func(k, v gjson.Result) bool {
		key := CamelKey(k.Str)
		if seen[key] {
			return true
		}
		seen[key] = true
		if !first {
			b = append(b, ',')
		}
		first = false
		b = appendString(b, key)
		b = append(b, ':')
		if v.IsObject() {
			b = appendNormalized(b, v)
		} else {
			b = append(b, v.Raw...)
		}
		return true
	})
	return append(b, '}')
}

// Builder builds a Data object key by key without reflection. The zero value is ready.
type Builder struct {
	buf []byte
}

func (b *Builder) key(k string) {
	if len(b.buf) == 0 {
		b.buf = append(b.buf, '{')
	} else {
		b.buf = append(b.buf, ',')
	}
	b.buf = appendString(b.buf, k)
	b.buf = append(b.buf, ':')
}

// Str adds a string value.
func (b *Builder) Str(k, v string) *Builder { b.key(k); b.buf = appendString(b.buf, v); return b }

// Int adds an integer value.
func (b *Builder) Int(k string, v int64) *Builder {
	b.key(k)
	b.buf = strconv.AppendInt(b.buf, v, 10)
	return b
}

// Uint adds an unsigned integer value.
func (b *Builder) Uint(k string, v uint64) *Builder {
	b.key(k)
	b.buf = strconv.AppendUint(b.buf, v, 10)
	return b
}

// Float adds a floating-point value; NaN and infinities become null, which JSON lacks.
func (b *Builder) Float(k string, v float64) *Builder {
	b.key(k)
	if math.IsNaN(v) || math.IsInf(v, 0) {
		b.buf = append(b.buf, "null"...)
	} else {
		b.buf = strconv.AppendFloat(b.buf, v, 'g', -1, 64)
	}
	return b
}

// Bool adds a boolean value.
func (b *Builder) Bool(k string, v bool) *Builder {
	b.key(k)
	b.buf = strconv.AppendBool(b.buf, v)
	return b
}

// Time adds a timestamp as an RFC 3339 string with sub-second precision.
func (b *Builder) Time(k string, v time.Time) *Builder {
	b.key(k)
	b.buf = append(b.buf, '"')
	b.buf = v.UTC().AppendFormat(b.buf, time.RFC3339Nano)
	b.buf = append(b.buf, '"')
	return b
}

// Duration adds a duration as integer milliseconds, as Stalwart does.
func (b *Builder) Duration(k string, v time.Duration) *Builder {
	return b.Int(k, v.Milliseconds())
}

// IP adds an IP address as a string.
func (b *Builder) IP(k string, v netip.Addr) *Builder { return b.Str(k, v.String()) }

// Strs adds a list of strings.
func (b *Builder) Strs(k string, v []string) *Builder {
	b.key(k)
	b.buf = append(b.buf, '[')
	for i, s := range v {
		if i > 0 {
			b.buf = append(b.buf, ',')
		}
		b.buf = appendString(b.buf, s)
	}
	b.buf = append(b.buf, ']')
	return b
}

// Event adds a nested event (Stalwart's causedBy), as {"type":..., "data":{...}}.
func (b *Builder) Event(k, typ string, data Data) *Builder {
	b.key(k)
	b.buf = append(b.buf, `{"type":`...)
	b.buf = appendString(b.buf, typ)
	if len(data) > 0 {
		b.buf = append(b.buf, `,"data":`...)
		b.buf = append(b.buf, data...)
	}
	b.buf = append(b.buf, '}')
	return b
}

// Any adds a value of one of the types the other methods take, or fails.
func (b *Builder) Any(k string, v any) error {
	switch v := v.(type) {
	case string:
		b.Str(k, v)
	case int:
		b.Int(k, int64(v))
	case int8:
		b.Int(k, int64(v))
	case int16:
		b.Int(k, int64(v))
	case int32:
		b.Int(k, int64(v))
	case int64:
		b.Int(k, v)
	case uint:
		b.Uint(k, uint64(v))
	case uint8:
		b.Uint(k, uint64(v))
	case uint16:
		b.Uint(k, uint64(v))
	case uint32:
		b.Uint(k, uint64(v))
	case uint64:
		b.Uint(k, v)
	case float32:
		b.Float(k, float64(v))
	case float64:
		b.Float(k, v)
	case bool:
		b.Bool(k, v)
	case time.Time:
		b.Time(k, v)
	case time.Duration:
		b.Duration(k, v)
	case netip.Addr:
		b.IP(k, v)
	case []string:
		b.Strs(k, v)
	case fmt.Stringer:
		b.Str(k, v.String())
	default:
		return fmt.Errorf("key %s: unsupported value type %T", k, v)
	}
	return nil
}

// Data returns the object built so far. The Builder may be reused after Reset.
func (b *Builder) Data() Data {
	if len(b.buf) == 0 {
		return nil
	}
	out := make(Data, len(b.buf)+1)
	copy(out, b.buf)
	out[len(b.buf)] = '}'
	return out
}

// Reset empties the builder, keeping its buffer.
func (b *Builder) Reset() { b.buf = b.buf[:0] }

// Pairs builds Data from alternating keys and values, as slog does: Pairs("remoteIp", ip,
// "size", 1024). Keys are normalized to camelCase.
func Pairs(kv ...any) (Data, error) {
	if len(kv)%2 != 0 {
		return nil, errors.New("odd number of key/value arguments")
	}
	var b Builder
	for i := 0; i < len(kv); i += 2 {
		k, ok := kv[i].(string)
		if !ok {
			return nil, fmt.Errorf("argument %d: key must be a string, not %T", i, kv[i])
		}
		k = CamelKey(k)
		if !validKey(k) {
			return nil, fmt.Errorf("key %q: want camelCase letters and digits", k)
		}
		if err := b.Any(k, kv[i+1]); err != nil {
			return nil, err
		}
	}
	return b.Data(), nil
}

const hexDigits = "0123456789abcdef"

// appendString appends s as a JSON string. Invalid UTF-8 becomes U+FFFD so the output is
// always valid JSON.
func appendString(b []byte, s string) []byte {
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		c := s[i]
		if c < utf8.RuneSelf {
			if c >= 0x20 && c != '"' && c != '\\' {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			switch c {
			case '"', '\\':
				b = append(b, '\\', c)
			case '\n':
				b = append(b, '\\', 'n')
			case '\r':
				b = append(b, '\\', 'r')
			case '\t':
				b = append(b, '\\', 't')
			default:
				b = append(b, '\\', 'u', '0', '0', hexDigits[c>>4], hexDigits[c&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r == utf8.RuneError && size == 1 {
			b = append(b, s[start:i]...)
			b = append(b, "\ufffd"...)
			i += size
			start = i
			continue
		}
		if r == '\u2028' || r == '\u2029' {
			b = append(b, s[start:i]...)
			b = append(b, '\\', 'u', '2', '0', '2', hexDigits[r&0xf])
			i += size
			start = i
			continue
		}
		i += size
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// validateDecoded is Validate for data that a JSON decoder has already found well-formed:
// it skips the syntax pass. Keys that NormalizeKeys can fix are accepted.
func (d Data) validateDecoded() error {
	if len(d) == 0 {
		return nil
	}
	if len(d) > MaxDataBytes {
		return fmt.Errorf("data: larger than %d bytes", MaxDataBytes)
	}
	_, err := scanObject(d)
	return err
}

func (d Data) needsNormalizing() bool {
	needs, err := scanObject(d)
	return err == nil && needs && !bytes.Equal(d.NormalizeKeys(), d)
}
