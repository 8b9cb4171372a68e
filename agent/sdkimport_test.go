package agent

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Swapping the Docker SDK for its successor must stay a one-file change:
// of the module's code, only agent/docker.go imports it (TLS included: the
// SDK's own options, no go-connections elsewhere). The test bed, which
// drives a daemon of its own to seed registries and ships in no binary,
// is the one exception.
func TestOnlyDockerGoImportsTheDockerSDK(t *testing.T) {
	root := filepath.Clean("..") // this test runs in agent/
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("the module root is not %s: %v", root, err)
	}
	allowed := map[string]bool{filepath.Join(root, "agent", "docker.go"): true}
	skipDirs := map[string]bool{filepath.Join(root, "internal", "testbed"): true}
	checked := map[string]int{} // files per directory
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if skipDirs[path] || d.Name() == "testdata" || (path != root && strings.HasPrefix(d.Name(), ".")) {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") || allowed[path] {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		checked[filepath.Dir(path)]++
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			for _, sdk := range []string{"github.com/docker/docker/", "github.com/moby/moby/", "github.com/docker/go-connections/"} {
				if strings.HasPrefix(p, sdk) {
					t.Errorf("%s imports %s; only agent/docker.go may use the Docker SDK", path, p)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range []string{"agent", "auth", filepath.Join("cmd", "pull-agent")} {
		if checked[filepath.Join(root, dir)] == 0 {
			t.Errorf("no file of %s was checked: %v", dir, checked)
		}
	}
	if checked[filepath.Join(root, "agent")] < 10 {
		t.Errorf("checked only %d files of agent/", checked[filepath.Join(root, "agent")])
	}
}
