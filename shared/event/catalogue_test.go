package event

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"
)

// stalwartType is one line of testdata/stalwart-types-*.txt, which stalwart-types-gen.go
// generates from Stalwart's source.
type stalwartType struct {
	level Level
	id    int
}

func readStalwartTypes(t *testing.T, name string) map[string]stalwartType {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]stalwartType{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		fields := strings.Fields(line)
		if len(fields) != 3 {
			t.Fatalf("%s: bad line %q", name, line)
		}
		l, err := ParseLevel(fields[1])
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		id, err := strconv.Atoi(fields[2])
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		out[fields[0]] = stalwartType{l, id}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// compareLevels reports every type missing from got, every extra one and every level that
// differs from want.
func compareLevels(t *testing.T, what string, got map[string]Level, want map[string]stalwartType) {
	t.Helper()
	for typ, w := range want {
		g, ok := got[typ]
		switch {
		case !ok:
			t.Errorf("%s: %s (%v) is missing from the catalogue", what, typ, w.level)
		case g != w.level:
			t.Errorf("%s: DefaultLevel(%s) = %v, want %v", what, typ, g, w.level)
		}
	}
	for typ := range got {
		if _, ok := want[typ]; !ok {
			t.Errorf("%s: %s is in the catalogue but not in Stalwart's list", what, typ)
		}
	}
}

// The catalogue's Stalwart types are exactly Stalwart 0.16.18's 637 (TOTAL_EVENT_COUNT in
// crates/trc/src/event/enums.rs), with Stalwart's default levels.
func TestCatalogueIsStalwarts(t *testing.T) {
	want := readStalwartTypes(t, "stalwart-types-0.16.txt")
	if len(want) != 637 {
		t.Fatalf("stalwart-types-0.16.txt has %d types, want Stalwart 0.16.18's 637", len(want))
	}
	got := map[string]Level{}
	perLevel := map[Level]int{}
	for _, i := range Known().All() {
		if !i.Legacy && !i.Own {
			got[i.Type] = i.Level
			perLevel[i.Level]++
		}
		if i.Legacy && i.Own {
			t.Errorf("%s is both legacy and our own", i.Type)
		}
	}
	compareLevels(t, "Stalwart 0.16", got, want)
	wantPerLevel := map[Level]int{Trace: 31, Debug: 296, Info: 206, Warn: 57, Error: 47}
	for l, n := range wantPerLevel {
		if perLevel[l] != n {
			t.Errorf("%d Stalwart types at level %v, want %d", perLevel[l], l, n)
		}
	}
}

// The legacy types are exactly the types of Stalwart 0.15.5 that 0.16.18 does not have,
// with 0.15's default levels (591 in 0.15, 51 gone in 0.16: 23 renamed, 28 removed).
func TestCatalogueLegacy(t *testing.T) {
	v15 := readStalwartTypes(t, "stalwart-types-0.15.txt")
	v16 := readStalwartTypes(t, "stalwart-types-0.16.txt")
	if len(v15) != 591 {
		t.Fatalf("stalwart-types-0.15.txt has %d types, want Stalwart 0.15.5's 591", len(v15))
	}
	want := map[string]stalwartType{}
	for typ, s := range v15 {
		if _, ok := v16[typ]; !ok {
			want[typ] = s
		}
	}
	got := map[string]Level{}
	for _, i := range Known().All() {
		if i.Legacy {
			got[i.Type] = i.Level
		}
	}
	compareLevels(t, "Stalwart 0.15", got, want)
	if len(want) != 51 {
		t.Errorf("%d types of 0.15 are gone from 0.16, want 51", len(want))
	}
}

// ownTypes are the types mailpulse emits itself. There are none today: the simulator emits
// only Stalwart's types, and the load command's synthetic bench.* types are not catalogued.
var ownTypes = []string{}

func TestCatalogueOwn(t *testing.T) {
	v15 := readStalwartTypes(t, "stalwart-types-0.15.txt")
	v16 := readStalwartTypes(t, "stalwart-types-0.16.txt")
	var got []string
	for _, i := range Known().All() {
		if i.Own {
			got = append(got, i.Type)
		}
	}
	if !slices.Equal(got, ownTypes) {
		t.Errorf("own types = %q, want %q", got, ownTypes)
	}
	for _, typ := range got {
		if _, ok := v15[typ]; ok {
			t.Errorf("own type %s is Stalwart 0.15's", typ)
		}
		if _, ok := v16[typ]; ok {
			t.Errorf("own type %s is Stalwart 0.16's", typ)
		}
	}
}

func TestCatalogueDescriptions(t *testing.T) {
	seen := map[string]string{}
	for _, i := range Known().All() {
		d := i.Description
		if d == "" || strings.HasSuffix(d, ".") || len(d) > 72 || !unicode.IsUpper([]rune(d)[0]) {
			t.Errorf("%s: description %q: want a short capitalised phrase without a final period", i.Type, d)
		}
		if i.Legacy && From015(i.Type) != i.Type {
			continue // a renamed type shares its 0.16 name's description
		}
		if o, dup := seen[d]; dup {
			t.Errorf("%s and %s share the description %q", o, i.Type, d)
		}
		seen[d] = i.Type
	}
}

// The API the rest of the repository uses.
func TestCatalogueAPI(t *testing.T) {
	c := Known()
	for _, tt := range []struct {
		typ   string
		known bool
		level Level
	}{
		{"smtp.connection-start", true, Debug},
		{"auth.too-many-attempts", true, Warn},
		{"store.sqlite-error", true, Error},
		{"smtp.raw-input", true, Trace},
		{"delivery.delivered", true, Info},
		{"queue.queue-message", true, Info},  // 0.15's name of queue.message-queued
		{"config.parse-error", true, Error},  // removed in 0.16
		{"telemetry.alert", true, Warn},      // 0.15's name of telemetry.alert-event
		{"cluster.node-joined", false, Info}, // never a Stalwart type
		{"nobody.knows", false, Info},
	} {
		i, ok := c.Lookup(tt.typ)
		if ok != tt.known || ok && i.Type != tt.typ {
			t.Errorf("Lookup(%s) = %+v, %v; want known=%v", tt.typ, i, ok, tt.known)
		}
		if got := DefaultLevel(tt.typ); got != tt.level {
			t.Errorf("DefaultLevel(%s) = %v, want %v", tt.typ, got, tt.level)
		}
	}
	if i, _ := c.Lookup("queue.queue-message"); !i.Legacy || i.Own {
		t.Errorf("Lookup(queue.queue-message) = %+v, want a legacy type", i)
	}
	if i, _ := c.Lookup("queue.message-queued"); i.Legacy || i.Own {
		t.Errorf("Lookup(queue.message-queued) = %+v, want a current Stalwart type", i)
	}
	all := c.All()
	if len(all) != 637+51+len(ownTypes) {
		t.Errorf("All() has %d types, want %d", len(all), 637+51+len(ownTypes))
	}
	if !slices.IsSortedFunc(all, func(a, b TypeInfo) int { return strings.Compare(a.Type, b.Type) }) {
		t.Error("All() is not sorted")
	}
	for _, i := range all {
		if typ, ok := c.FromPromName(PromName(i.Type)); !ok || typ != i.Type {
			t.Errorf("FromPromName(%s) = %q, %v; want %s", PromName(i.Type), typ, ok, i.Type)
		}
	}
	groups := c.Groups()
	if len(groups) != 43+5 || !slices.IsSorted(groups) { // 0.16's 43, and 0.15's config, housekeeper, manage, purge, task-queue
		t.Errorf("Groups() = %q, want 48 sorted groups", groups)
	}
}

func TestParseCatalogueErrors(t *testing.T) {
	renames := []Rename{{"a.old", "a.new"}}
	ok := "[stalwart]\na.new info New\n[stalwart-0.15]\na.gone debug Gone\n[mailpulse]\nm.own warn Ours\n"
	c, err := parseCatalogue(ok, renames)
	if err != nil {
		t.Fatalf("parseCatalogue(good) = %v", err)
	}
	want := []TypeInfo{
		{Type: "a.gone", Level: Debug, Description: "Gone", Legacy: true},
		{Type: "a.new", Level: Info, Description: "New"},
		{Type: "a.old", Level: Info, Description: "New", Legacy: true},
		{Type: "m.own", Level: Warn, Description: "Ours", Own: true},
	}
	if got := c.All(); !slices.Equal(got, want) {
		t.Errorf("parseCatalogue(good).All() = %+v, want %+v", got, want)
	}
	for _, tt := range []struct{ name, text string }{
		{"outside a section", "a.new info New\n"},
		{"unknown section", "[nope]\na.new info New\n"},
		{"bad level", "[stalwart]\na.new loud New\n"},
		{"no description", "[stalwart]\na.new info\n"},
		{"bad type", "[stalwart]\nA.new info New\n"},
		{"twice", "[stalwart]\na.new info New\n[mailpulse]\na.new info New\n"},
		{"same Prometheus name", "[stalwart]\na.new info New\na.b-c info X\na-b.c info Y\n"},
		{"rename to an unknown type", "[stalwart]\na.other info New\n"},
		{"rename to a legacy type", "[stalwart-0.15]\na.new info New\n"},
		{"rename from a listed type", "[stalwart]\na.new info New\n[stalwart-0.15]\na.old info Old\n"},
	} {
		if _, err := parseCatalogue(tt.text, renames); err == nil {
			t.Errorf("parseCatalogue(%s) accepted %q", tt.name, tt.text)
		}
	}
}

// docs/events.md is the catalogue as a reference page, rewritten by go test -update.
func TestEventsDoc(t *testing.T) {
	got := eventsDoc(Known())
	path := filepath.Join("..", "..", "docs", "events.md")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("read %s (run go test -update once): %v", path, err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is out of date with catalogue.txt: run go test ./shared/event -run TestEventsDoc -update", path)
	}
}

func eventsDoc(c *Catalogue) []byte {
	var b bytes.Buffer
	var current, legacy, own []TypeInfo
	perLevel := map[Level]int{}
	for _, i := range c.All() {
		switch {
		case i.Own:
			own = append(own, i)
		case i.Legacy:
			legacy = append(legacy, i)
		default:
			current = append(current, i)
			perLevel[i.Level]++
		}
	}
	b.WriteString("# Event types\n\n")
	b.WriteString("<!-- Generated from shared/event/catalogue.txt by go test ./shared/event -run TestEventsDoc -update; do not edit. -->\n\n")
	b.WriteString("mailpulse knows every event type of Stalwart and its default level (the level an event gets when ")
	b.WriteString("its sender gives none). Other well-formed types are accepted too, at level `info`. ")
	b.WriteString("The descriptions are mailpulse's own.\n\n")
	fmt.Fprintf(&b, "- **Stalwart 0.16** (0.16.18): %d types: %d trace, %d debug, %d info, %d warn, %d error.\n",
		len(current), perLevel[Trace], perLevel[Debug], perLevel[Info], perLevel[Warn], perLevel[Error])
	fmt.Fprintf(&b, "- **Stalwart 0.15 only** (0.15.5): %d types that 0.16 renamed or removed; a 0.15 server still sends them.\n", len(legacy))
	fmt.Fprintf(&b, "- **mailpulse's own**: %d types.\n\n", len(own))
	b.WriteString("## Stalwart 0.16\n\n| Type | Level | Description |\n|---|---|---|\n")
	for _, i := range current {
		fmt.Fprintf(&b, "| `%s` | %s | %s |\n", i.Type, i.Level, i.Description)
	}
	b.WriteString("\n## Stalwart 0.15 only\n\n")
	b.WriteString("A renamed type has the level and description of its 0.16 name; `event.From015` and ")
	b.WriteString("`event.To015` translate names, of metrics too.\n\n")
	b.WriteString("| Type | Level | 0.16 name | Description |\n|---|---|---|---|\n")
	for _, i := range legacy {
		now := "(removed)"
		if n := From015(i.Type); n != i.Type {
			now = "`" + n + "`"
		}
		fmt.Fprintf(&b, "| `%s` | %s | %s | %s |\n", i.Type, i.Level, now, i.Description)
	}
	b.WriteString("\n## mailpulse's own\n\n")
	if len(own) == 0 {
		b.WriteString("None: mailpulse emits only Stalwart's types.\n")
	} else {
		b.WriteString("| Type | Level | Description |\n|---|---|---|\n")
		for _, i := range own {
			fmt.Fprintf(&b, "| `%s` | %s | %s |\n", i.Type, i.Level, i.Description)
		}
	}
	return b.Bytes()
}
