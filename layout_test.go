package main

import (
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/mailpulse/mailpulse/"

// imports calls check with every import of every Go file under dir.
func imports(t *testing.T, dir string, check func(path, imp string)) {
	t.Helper()
	files := 0
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") {
			return err
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		files++
		for _, imp := range f.Imports {
			check(filepath.ToSlash(path), strings.Trim(imp.Path.Value, `"`))
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if files == 0 {
		t.Fatalf("no Go files under %s", dir)
	}
}

// TestServicesDoNotImportEachOther keeps the services independent: they meet only on NATS
// subjects, KV buckets and the shared packages (design.md §3).
func TestServicesDoNotImportEachOther(t *testing.T) {
	imports(t, "services", func(path, imp string) {
		service := strings.Split(path, "/")[1]
		if strings.HasPrefix(imp, module+"internal/") {
			t.Errorf("%s imports %s: services may use shared/ only", path, imp)
		}
		if rest, ok := strings.CutPrefix(imp, module+"services/"); ok {
			if other, _, _ := strings.Cut(rest, "/"); other != service {
				t.Errorf("%s (service %s) imports service %s", path, service, other)
			}
		}
	})
}

// TestSharedImportsNoService keeps the shared packages below the services: a shared
// package that needs a service's code is in the wrong place.
func TestSharedImportsNoService(t *testing.T) {
	imports(t, "shared", func(path, imp string) {
		if strings.HasPrefix(imp, module+"services/") || strings.HasPrefix(imp, module+"internal/") {
			t.Errorf("%s imports %s: shared packages may not depend on services or internal", path, imp)
		}
	})
}
