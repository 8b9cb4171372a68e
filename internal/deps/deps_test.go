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
// root) listed in allowed, or below a directory listed with a trailing "/".
type rule struct {
	what     string
	prefixes []string
	allowed  []string
}

var rules = []rule{
	{"the Docker SDK", []string{"github.com/docker/docker/", "github.com/moby/moby/", "github.com/docker/go-connections/"},
		[]string{"agent", "internal/testbed", "bench/"}},
	{"ecr-login", []string{"github.com/awslabs/amazon-ecr-credential-helper/"},
		[]string{"auth"}},
	{"the credential-helper client and docker's config.json code", []string{"github.com/docker/docker-credential-helpers/", "github.com/docker/cli/"},
		[]string{"auth"}},
	{"the AWS SDK", []string{"github.com/aws/"},
		[]string{"auth"}},
}

// quiet are the packages that must not print: only cmd talks to a
// terminal; everything below it logs through the slog.Logger it is given.
var quiet = []string{"agent", "auth", "internal/safetext"}

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
// directory relative to the root.
func sourceFiles(t *testing.T, root string) map[string][]*ast.File {
	t.Helper()
	files := map[string][]*ast.File{}
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
		files[filepath.ToSlash(rel)] = append(files[filepath.ToSlash(rel)], f)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

func allowedIn(pkg string, allowed []string) bool {
	for _, a := range allowed {
		if pkg == a || strings.HasSuffix(a, "/") && strings.HasPrefix(pkg+"/", a) {
			return true
		}
	}
	return false
}

// violations lists each import that breaks a rule, and each print from a
// package that must be quiet.
func violations(files map[string][]*ast.File) []string {
	var out []string
	for pkg, fs := range files {
		for _, f := range fs {
			name := pkg + "/" + filepath.Base(f.Name.Name)
			for _, imp := range f.Imports {
				path, _ := strconv.Unquote(imp.Path.Value)
				for _, r := range rules {
					for _, p := range r.prefixes {
						if strings.HasPrefix(path, p) && !allowedIn(pkg, r.allowed) {
							out = append(out, pkg+" imports "+path+" ("+r.what+" belongs to "+strings.Join(r.allowed, ", ")+")")
						}
					}
				}
				if path == "log" && allowedIn(pkg, quiet) {
					out = append(out, pkg+" imports the standard log package; log through the slog.Logger it is given")
				}
			}
			if !allowedIn(pkg, quiet) {
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
	for _, pkg := range append([]string{"cmd/pull-agent"}, quiet...) {
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
	bad := map[string][]*ast.File{
		"agent":             {parse("package agent\nimport _ \"github.com/awslabs/amazon-ecr-credential-helper/ecr-login\"\n")},
		"auth":              {parse("package auth\nimport \"fmt\"\nfunc f() { fmt.Println(1) }\n")},
		"internal/safetext": {parse("package safetext\nimport \"os\"\nvar w = os.Stderr\n")},
		"cmd/pull-agent":    {parse("package main\nimport _ \"github.com/docker/docker/client\"\n")},
	}
	got := violations(bad)
	if len(got) != 4 {
		t.Fatalf("want 4 violations, got %d: %q", len(got), got)
	}
}
