// Package deps holds the test that enforces which package may import what.
package deps

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// rule: an import whose path starts with one of prefixes is allowed only in
// the non-test files of the packages (directories relative to the module
// root) listed in allowed, below a directory listed with a trailing "/",
// or in a file listed by its path ("agent/engine/docker.go").
type rule struct {
	what     string
	prefixes []string
	allowed  []string
}

var rules = []rule{
	// Swapping the Docker SDK for its successor (github.com/moby/moby)
	// must stay a one-file change: of the agent, only agent/engine's
	// docker.go imports it, TLS included (the SDK's own options, no
	// go-connections elsewhere). The test bed and the benchmark harness
	// drive daemons of their own and ship in no binary.
	{"the Docker SDK", []string{"github.com/docker/docker/", "github.com/moby/moby/", "github.com/docker/go-connections/"},
		[]string{"agent/engine/docker.go", "internal/testbed/", "bench/"}},
	{"ecr-login", []string{"github.com/awslabs/amazon-ecr-credential-helper/"},
		[]string{"auth"}},
	{"the credential-helper client and docker's config.json code", []string{"github.com/docker/docker-credential-helpers/", "github.com/docker/cli/"},
		[]string{"auth"}},
	{"the AWS SDK", []string{"github.com/aws/"},
		[]string{"auth"}},
}

// quiet are the packages that must not print: only cmd talks to a
// terminal; the agent and everything below it, auth and safetext log
// through the slog.Logger they are given.
var quiet = []string{"agent/", "auth", "internal/safetext"}

// seen are packages the test must find files of, so that a moved
// directory cannot make a rule vacuous.
var seen = []string{"cmd/pull-agent", "agent", "agent/config", "agent/engine", "agent/pull", "agent/state", "auth", "internal/safetext"}

func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found above the test")
		}
		dir = parent
	}
}

// sourceFiles parses every non-test Go file of the module, by package
// directory relative to the root, each file by its base name.
func sourceFiles(t *testing.T, root string) map[string]map[string]*ast.File {
	t.Helper()
	files := map[string]map[string]*ast.File{}
	fset := token.NewFileSet()
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) && p != root {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, filepath.Dir(p))
		pkg := filepath.ToSlash(rel)
		if files[pkg] == nil {
			files[pkg] = map[string]*ast.File{}
		}
		files[pkg][filepath.Base(p)] = f
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// allowedIn reports whether file (a base name) of pkg is allowed by one
// of allowed: the package, a directory above it ("agent/") or the file.
func allowedIn(pkg, file string, allowed []string) bool {
	for _, a := range allowed {
		if pkg == a || a == pkg+"/"+file || strings.HasSuffix(a, "/") && strings.HasPrefix(pkg+"/", a) {
			return true
		}
	}
	return false
}

// violations lists each import that breaks a rule, and each print from a
// package that must be quiet.
func violations(files map[string]map[string]*ast.File) []string {
	var out []string
	for pkg, fs := range files {
		for base, f := range fs {
			name := pkg + "/" + base
			for _, imp := range f.Imports {
				path, _ := strconv.Unquote(imp.Path.Value)
				for _, r := range rules {
					for _, p := range r.prefixes {
						if strings.HasPrefix(path, p) && !allowedIn(pkg, base, r.allowed) {
							out = append(out, name+" imports "+path+" ("+r.what+" belongs to "+strings.Join(r.allowed, ", ")+")")
						}
					}
				}
				if path == "log" && allowedIn(pkg, base, quiet) {
					out = append(out, name+" imports the standard log package; log through the slog.Logger it is given")
				}
			}
			if !allowedIn(pkg, base, quiet) {
				continue
			}
			ast.Inspect(f, func(n ast.Node) bool {
				sel, ok := n.(*ast.SelectorExpr)
				if !ok {
					return true
				}
				x, ok := sel.X.(*ast.Ident)
				if !ok {
					return true
				}
				switch {
				case x.Name == "fmt" && strings.HasPrefix(sel.Sel.Name, "Print"),
					x.Name == "os" && (sel.Sel.Name == "Stdout" || sel.Sel.Name == "Stderr"):
					out = append(out, name+": "+pkg+" uses "+x.Name+"."+sel.Sel.Name+"; only cmd prints")
				}
				return true
			})
		}
	}
	return out
}

func TestPackageBoundaries(t *testing.T) {
	files := sourceFiles(t, moduleRoot(t))
	for _, pkg := range seen {
		if len(files[pkg]) == 0 {
			t.Fatalf("no source files found for %s: the test no longer sees the module", pkg)
		}
	}
	for _, v := range violations(files) {
		t.Error(v)
	}
}

// The rules bite: a forbidden import or a print added to a quiet package
// is reported.
func TestPackageBoundariesCatchAViolation(t *testing.T) {
	fset := token.NewFileSet()
	parse := func(src string) *ast.File {
		f, err := parser.ParseFile(fset, "x.go", src, 0)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	bad := map[string]map[string]*ast.File{
		"agent":             {"a.go": parse("package agent\nimport _ \"github.com/awslabs/amazon-ecr-credential-helper/ecr-login\"\n")},
		"auth":              {"a.go": parse("package auth\nimport \"fmt\"\nfunc f() { fmt.Println(1) }\n")},
		"internal/safetext": {"a.go": parse("package safetext\nimport \"os\"\nvar w = os.Stderr\n")},
		"cmd/pull-agent":    {"a.go": parse("package main\nimport _ \"github.com/docker/docker/client\"\n")},
		"agent/config":      {"a.go": parse("package config\nimport \"log\"\n")},
		"agent/engine": {
			"docker.go": parse("package engine\nimport _ \"github.com/docker/docker/client\"\n"), // allowed
			"other.go":  parse("package engine\nimport _ \"github.com/docker/go-connections/tlsconfig\"\n"),
		},
	}
	got := violations(bad)
	if len(got) != 6 {
		t.Fatalf("want 6 violations, got %d: %q", len(got), got)
	}
}
