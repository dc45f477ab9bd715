// Package config loads mailpulse's settings into the sections the services own: each
// service declares its settings in its own Config struct (TOML key, help and defaults) and
// validates them itself; this package composes the sections into one document and loads
// it from defaults, then a TOML file, then MAILPULSE_* environment variables, then
// command-line flags, each overriding the one before. The variable and flag names are
// derived from the key, so the three can never disagree, and nothing copies a setting from
// one struct into another.
package config

import (
	"errors"
	"flag"
	"fmt"
	"net/url"
	"reflect"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/knadh/koanf/parsers/toml/v2"
	"github.com/knadh/koanf/providers/confmap"
	"github.com/knadh/koanf/providers/file"
	"github.com/knadh/koanf/v2"
)

// EnvPrefix starts every environment variable mailpulse reads.
const EnvPrefix = "MAILPULSE_"

// Section is one service's settings: a pointer to a struct whose fields carry the tags
// koanf (the key; "-" or none: not a setting), help (its explanation) and secret ("true"
// keeps the value out of help and logs), and top ("true": the key stands at the top level,
// not under the section's). Nested structs with a koanf tag are sub-sections.
// The values the struct holds when it is added are the defaults.
type Section interface {
	// Validate reports every problem at once (errors.Join), each naming its key with
	// Problem so that the document can say where it is.
	Validate() error
}

// Document is the settings of one process: sections at their keys, each for some roles.
type Document struct {
	sections []section
	rules    []func(role string) error
	defaults map[string]string // each setting's default, as text, for Redacted
}

type section struct {
	key   string // "" for the top level
	ptr   Section
	roles []string // none: every role
}

// Add mounts s at key ("" for the top level; a section's own keys then stand alone) for
// the given roles (none: every role). s must be a pointer to a struct.
func (d *Document) Add(key string, s Section, roles ...string) {
	if v := reflect.ValueOf(s); v.Kind() != reflect.Pointer || v.Elem().Kind() != reflect.Struct {
		panic(fmt.Sprintf("config: section %q is not a pointer to a struct", key))
	}
	d.sections = append(d.sections, section{key: key, ptr: s, roles: roles})
	if d.defaults == nil {
		d.defaults = map[string]string{}
	}
	for _, f := range fieldsOf(&d.sections[len(d.sections)-1]) {
		d.defaults[f.key] = f.def
	}
}

// Rule adds a check across sections, run after every section is valid on its own.
func (d *Document) Rule(check func(role string) error) { d.rules = append(d.rules, check) }

// FieldError is a problem with one setting.
type FieldError struct {
	Key string
	Err error
}

func (e *FieldError) Error() string { return e.Key + ": " + e.Err.Error() }
func (e *FieldError) Unwrap() error { return e.Err }

// Problem is a FieldError for key, with a message.
func Problem(key, format string, a ...any) error {
	return &FieldError{Key: key, Err: fmt.Errorf(format, a...)}
}

// field is one setting, found by walking a section.
type field struct {
	key    string // TOML path: stalwart.metrics_url
	env    string // MAILPULSE_STALWART_METRICS_URL
	flag   string // stalwart-metrics-url
	help   string
	roles  []string
	secret bool
	value  reflect.Value // settable, inside the section
	def    string        // the default, as text
	sect   *section
	local  string // the key within its section, as Validate names it
}

func (d *Document) fields() []field {
	var out []field
	for i := range d.sections {
		out = append(out, fieldsOf(&d.sections[i])...)
	}
	return out
}

func fieldsOf(s *section) []field {
	var out []field
	{
		var walk func(v reflect.Value, prefix, local string)
		walk = func(v reflect.Value, prefix, local string) {
			t := v.Type()
			for i := 0; i < t.NumField(); i++ {
				f := t.Field(i)
				tag := f.Tag.Get("koanf")
				if tag == "" || tag == "-" || !f.IsExported() {
					continue
				}
				key, lkey := join(prefix, tag), join(local, tag)
				if f.Tag.Get("top") == "true" {
					key = tag // a key the section keeps at the top level (http_addr)
				}
				fv := v.Field(i)
				if f.Type.Kind() == reflect.Struct && !isLeaf(f.Type) {
					walk(fv, key, lkey)
					continue
				}
				help := f.Tag.Get("help")
				if help == "" {
					help = strings.ReplaceAll(key, "_", " ")
				}
				flat := strings.ReplaceAll(key, ".", "_")
				out = append(out, field{
					key: key, local: lkey, env: EnvPrefix + strings.ToUpper(flat),
					flag: strings.ReplaceAll(flat, "_", "-"), help: help, roles: s.roles,
					secret: f.Tag.Get("secret") == "true", value: fv, def: text(fv), sect: s,
				})
			}
		}
		walk(reflect.ValueOf(s.ptr).Elem(), s.key, "")
	}
	return out
}

func join(a, b string) string {
	if a == "" {
		return b
	}
	return a + "." + b
}

// isLeaf tells structs that are one value (a time, a compiled list) from sub-sections.
func isLeaf(t reflect.Type) bool {
	if t == reflect.TypeOf(time.Time{}) {
		return true
	}
	_, ok := reflect.New(t).Interface().(interface{ UnmarshalText([]byte) error })
	return ok
}

// text renders a value as help and the start-up log show it.
func text(v reflect.Value) string {
	if m, ok := v.Interface().(interface{ MarshalText() ([]byte, error) }); ok {
		if b, err := m.MarshalText(); err == nil {
			return string(b)
		}
	}
	if s, ok := v.Interface().([]string); ok {
		return strings.Join(s, ",")
	}
	return fmt.Sprint(v.Interface())
}

func (f field) forRole(role string) bool { return len(f.roles) == 0 || slices.Contains(f.roles, role) }

// Loader parses a role's command line and loads the document.
type Loader struct {
	role   string
	doc    *Document
	fs     *flag.FlagSet
	config *string
	fields []field
}

// NewLoader returns a loader whose flag set has the flags of the role's sections, plus
// --config.
func NewLoader(role string, doc *Document) *Loader {
	l := &Loader{role: role, doc: doc, fs: flag.NewFlagSet("mailpulse "+role, flag.ContinueOnError), fields: doc.fields()}
	l.config = l.fs.String("config", "", "TOML configuration file")
	for _, f := range l.fields {
		if f.forRole(role) {
			// Flag defaults are not shown: the effective default may come from the file or
			// the environment. Usage prints the built-in defaults.
			l.fs.Var(&rawValue{}, f.flag, f.help+" ("+f.env+")")
		}
	}
	return l
}

// rawValue keeps a flag's text, so flags are converted by the same rules as variables.
type rawValue struct{ s string }

func (r *rawValue) String() string     { return r.s }
func (r *rawValue) Set(s string) error { r.s = s; return nil }

// Usage describes every setting of the role with its default, variable and flag.
func (l *Loader) Usage() string {
	var b strings.Builder
	fmt.Fprintf(&b, "Settings (flag, environment variable, TOML key; later sources override earlier ones:\ndefaults < --config file < environment < flags):\n\n")
	fmt.Fprintf(&b, "  --config FILE\n        TOML configuration file\n")
	for _, f := range l.fields {
		if !f.forRole(l.role) {
			continue
		}
		def := f.def
		if f.secret || def == "" {
			def = "none"
		}
		fmt.Fprintf(&b, "  --%s  (%s, key %s, default %s)\n        %s\n", f.flag, f.env, f.key, def, f.help)
	}
	return b.String()
}

// Load parses args, reads the file named by --config, the environment (environ, as
// os.Environ returns it) and the flags into the document's sections, then validates the
// sections of the role. The error lists every problem found; flag.ErrHelp is returned for
// -h and --help.
func (l *Loader) Load(args, environ []string) error {
	l.fs.SetOutput(discard{})
	if err := l.fs.Parse(args); err != nil {
		return err
	}
	if l.fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", l.fs.Arg(0))
	}
	known := map[string]*field{}
	byEnv := map[string]*field{}
	byFlag := map[string]*field{}
	for i := range l.fields {
		f := &l.fields[i]
		known[f.key], byEnv[f.env], byFlag[f.flag] = f, f, f
	}
	var problems []error
	ko := koanf.New(".")
	if *l.config != "" {
		if err := ko.Load(file.Provider(*l.config), toml.Parser()); err != nil {
			return fmt.Errorf("config file %s: %w", *l.config, err)
		}
		for _, k := range ko.Keys() {
			if _, ok := known[k]; !ok {
				problems = append(problems, fmt.Errorf("config file %s: unknown key %q", *l.config, k))
			}
		}
	}
	envs := map[string]any{}
	for _, kv := range environ {
		name, value, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, EnvPrefix) {
			continue
		}
		f, ok := byEnv[name]
		if !ok {
			problems = append(problems, fmt.Errorf("unknown environment variable %s", name))
			continue
		}
		envs[f.key] = value
	}
	if err := ko.Load(confmap.Provider(envs, "."), nil); err != nil {
		return fmt.Errorf("environment: %w", err)
	}
	flags := map[string]any{}
	l.fs.Visit(func(fl *flag.Flag) {
		if f, ok := byFlag[fl.Name]; ok {
			flags[f.key] = fl.Value.String()
		}
	})
	if err := ko.Load(confmap.Provider(flags, "."), nil); err != nil {
		return fmt.Errorf("flags: %w", err)
	}
	// Each setting is decoded on its own, so a bad value is reported under its key and
	// the rest are still decoded and validated: every problem is listed at once.
	failed := map[string]bool{}
	for i := range l.fields {
		f := &l.fields[i]
		if !ko.Exists(f.key) {
			continue
		}
		if err := decode(ko.Get(f.key), f.value); err != nil {
			problems = append(problems, &FieldError{Key: f.key, Err: err})
			failed[f.key] = true
		}
	}
	for i := range l.doc.sections {
		s := &l.doc.sections[i]
		if len(s.roles) > 0 && !slices.Contains(s.roles, l.role) {
			continue
		}
		if r, ok := s.ptr.(interface{ ForRole(string) }); ok {
			r.ForRole(l.role)
		}
		for _, err := range flatten(s.ptr.Validate()) {
			var fe *FieldError
			if errors.As(err, &fe) {
				key := join(s.key, fe.Key)
				for _, f := range l.fields {
					if f.sect == s && f.local == fe.Key {
						key = f.key
					}
				}
				if failed[key] {
					continue // already reported as undecodable
				}
				err = &FieldError{Key: key, Err: fe.Err}
			} else if s.key != "" {
				err = fmt.Errorf("%s: %w", s.key, err)
			}
			problems = append(problems, err)
		}
	}
	if len(problems) == 0 {
		for _, rule := range l.doc.rules {
			problems = append(problems, flatten(rule(l.role))...)
		}
	}
	return errors.Join(problems...)
}

func flatten(err error) []error {
	if err == nil {
		return nil
	}
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		var out []error
		for _, e := range j.Unwrap() {
			out = append(out, flatten(e)...)
		}
		return out
	}
	return []error{err}
}

type discard struct{}

func (discard) Write(p []byte) (int, error) { return len(p), nil }

// Redacted returns the settings that differ from the defaults, secrets masked, for the
// start-up log.
func (d *Document) Redacted() map[string]string {
	out := map[string]string{}
	for _, f := range d.fields() {
		s := f.def // walked now: the current value
		if s == d.defaults[f.key] {
			continue
		}
		if f.secret && s != "" {
			s = "<set>"
		}
		out[f.key] = redactUserInfo(s)
	}
	return out
}

// redactUserInfo masks credentials written into URLs (nats://user:pass@host), which may
// hold several comma-separated URLs.
func redactUserInfo(v string) string {
	if !strings.Contains(v, "@") || !strings.Contains(v, "://") {
		return v
	}
	parts := strings.Split(v, ",")
	for i, p := range parts {
		if u, err := url.Parse(strings.TrimSpace(p)); err == nil && u.User != nil {
			u.User = url.User("<redacted>")
			parts[i] = u.String()
		}
	}
	return strings.Join(parts, ",")
}

// EnvNames lists every variable the document reads, sorted.
func (d *Document) EnvNames() []string {
	var out []string
	for _, f := range d.fields() {
		out = append(out, f.env)
	}
	sort.Strings(out)
	return out
}
