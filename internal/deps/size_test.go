package deps

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

const (
	// maxFuncLines is the most lines a function may span, from its func
	// line to its closing brace, tests included.
	maxFuncLines = 80
	// maxFileLines is the most lines a non-test file may have.
	maxFileLines = 499
)

// longTables are the functions allowed over maxFuncLines, by file (a path
// relative to the module root): each is one table of test data, which
// reads best whole.
var longTables = map[string]string{
	// The fault matrix: one row per fault (47 in eight groups), each a
	// literal with the script that injects and removes its fault. The
	// rows are the matrix docs/RELIABILITY.md reports, in its order.
	"internal/chaos/matrix_test.go": "rows",
}

// goFiles parses every Go file of the module, tests included, by its path
// relative to root; vendor, testdata and hidden directories are skipped.
func goFiles(t *testing.T, root string) (*token.FileSet, map[string]*ast.File) {
	t.Helper()
	fset := token.NewFileSet()
	files := map[string]*ast.File{}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && p != root && (d.Name() == "vendor" || d.Name() == "testdata" || strings.HasPrefix(d.Name(), ".")) {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(p, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		files[filepath.ToSlash(rel)] = f
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return fset, files
}

// funcName is a function's name, a method's prefixed with its receiver's
// type ("Agent.finished").
func funcName(fd *ast.FuncDecl) string {
	if fd.Recv == nil || len(fd.Recv.List) == 0 {
		return fd.Name.Name
	}
	typ := fd.Recv.List[0].Type
	if star, ok := typ.(*ast.StarExpr); ok {
		typ = star.X
	}
	switch x := typ.(type) {
	case *ast.IndexExpr:
		typ = x.X
	case *ast.IndexListExpr:
		typ = x.X
	}
	if id, ok := typ.(*ast.Ident); ok {
		return id.Name + "." + fd.Name.Name
	}
	return fd.Name.Name
}

// sizeViolations lists each function of files over maxFuncLines that
// allowed does not name for its file, and each non-test file over
// maxFileLines, sorted by path.
func sizeViolations(fset *token.FileSet, files map[string]*ast.File, allowed map[string]string) []string {
	var out []string
	for path, f := range files {
		if n := fset.File(f.Pos()).LineCount(); n > maxFileLines && !strings.HasSuffix(path, "_test.go") {
			out = append(out, fmt.Sprintf("%s: %d lines (limit %d): split the file by concern", path, n, maxFileLines))
		}
		for _, decl := range f.Decls {
			fd, ok := decl.(*ast.FuncDecl)
			if !ok {
				continue
			}
			start, end := fset.Position(fd.Pos()).Line, fset.Position(fd.End()).Line
			name := funcName(fd)
			if n := end - start + 1; n > maxFuncLines && allowed[path] != name {
				out = append(out, fmt.Sprintf("%s:%d: func %s is %d lines (limit %d): split it", path, start, name, n, maxFuncLines))
			}
		}
	}
	slices.Sort(out)
	return out
}

// staleAllowances lists each entry of allowed whose file or function is
// gone, or no longer over maxFuncLines: an allowance outlives no table.
func staleAllowances(fset *token.FileSet, files map[string]*ast.File, allowed map[string]string) []string {
	var out []string
	for path, name := range allowed {
		long := false
		if f, ok := files[path]; ok {
			for _, decl := range f.Decls {
				if fd, ok := decl.(*ast.FuncDecl); ok && funcName(fd) == name {
					long = fset.Position(fd.End()).Line-fset.Position(fd.Pos()).Line+1 > maxFuncLines
				}
			}
		}
		if !long {
			out = append(out, fmt.Sprintf("%s: func %s is allowed over %d lines but is not (or is gone): remove it from longTables", path, name, maxFuncLines))
		}
	}
	slices.Sort(out)
	return out
}

func TestSizeLimits(t *testing.T) {
	fset, files := goFiles(t, moduleRoot(t))
	for _, want := range []string{"cmd/pull-agent/main.go", "internal/deps/size_test.go"} {
		if files[want] == nil {
			t.Fatalf("%s not found: the test no longer sees the module", want)
		}
	}
	for _, v := range sizeViolations(fset, files, longTables) {
		t.Error(v)
	}
	for _, v := range staleAllowances(fset, files, longTables) {
		t.Error(v)
	}
}

// The limits bite: a function one line over, a file one line over, and
// an allowance of a function that is short are reported; a function at
// the limit, a long test file and an allowed table are not.
func TestSizeLimitsCatchAViolation(t *testing.T) {
	fset := token.NewFileSet()
	parse := func(name, src string) *ast.File {
		f, err := parser.ParseFile(fset, name, src, 0)
		if err != nil {
			t.Fatal(err)
		}
		return f
	}
	body := func(lines int) string { return strings.Repeat("\t_ = 0\n", lines-2) }
	files := map[string]*ast.File{
		"a/a.go":      parse("a/a.go", "package a\n\nfunc long() {\n"+body(maxFuncLines+1)+"}\n\nfunc atLimit() {\n"+body(maxFuncLines)+"}\n"),
		"a/b.go":      parse("a/b.go", "package a\n\ntype T struct{}\n\nfunc (*T) long() {\n"+body(maxFuncLines+1)+"}\n"),
		"a/big.go":    parse("a/big.go", "package a\n"+strings.Repeat("\n", maxFileLines)),
		"a/a_test.go": parse("a/a_test.go", "package a\n"+strings.Repeat("\n", maxFileLines)+"func table() {\n"+body(maxFuncLines+1)+"}\n"),
	}
	allowed := map[string]string{"a/a_test.go": "table", "a/b.go": "short"}
	want := []string{
		"a/a.go:3: func long is 81 lines (limit 80): split it",
		"a/b.go:5: func T.long is 81 lines (limit 80): split it",
		"a/big.go: 500 lines (limit 499): split the file by concern",
	}
	if got := sizeViolations(fset, files, allowed); !slices.Equal(got, want) {
		t.Errorf("violations:\n%s\nwant:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	stale := []string{"a/b.go: func short is allowed over 80 lines but is not (or is gone): remove it from longTables"}
	if got := staleAllowances(fset, files, allowed); !slices.Equal(got, stale) {
		t.Errorf("stale allowances: %q, want %q", got, stale)
	}
}
