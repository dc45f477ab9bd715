package main

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

// TestServicesDoNotImportEachOther keeps the services independent: they meet only on NATS
// subjects, KV buckets and the shared packages (design.md §3).
func TestServicesDoNotImportEachOther(t *testing.T) {
	const module = "github.com/mailpulse/mailpulse/"
	checked := 0
	err := filepath.WalkDir("services", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") {
			return err
		}
		parts := strings.Split(filepath.ToSlash(path), "/")
		service := parts[1]
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		checked++
		for _, imp := range f.Imports {
			p := strings.Trim(imp.Path.Value, `"`)
			rest, ok := strings.CutPrefix(p, module+"services/")
			if !ok {
				if strings.HasPrefix(p, module+"internal/") {
					t.Errorf("%s imports %s: services may use shared/ only", path, p)
				}
				continue
			}
			if other, _, _ := strings.Cut(rest, "/"); other != service {
				t.Errorf("%s (service %s) imports service %s", path, service, other)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if checked == 0 {
		t.Fatal("no service files found")
	}
}
