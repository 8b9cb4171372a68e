package agent

import (
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// Swapping the Docker SDK for its successor must stay a one-file change:
// only docker.go imports it (TLS included: the SDK's own options, no
// go-connections elsewhere).
func TestOnlyDockerGoImportsTheDockerSDK(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	checked := 0
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") || f == "docker.go" {
			continue
		}
		ast, err := parser.ParseFile(token.NewFileSet(), f, nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		checked++
		for _, imp := range ast.Imports {
			path, _ := strconv.Unquote(imp.Path.Value)
			for _, sdk := range []string{"github.com/docker/docker/", "github.com/moby/moby/", "github.com/docker/go-connections/"} {
				if strings.HasPrefix(path, sdk) {
					t.Errorf("%s imports %s; only docker.go may use the Docker SDK", f, path)
				}
			}
		}
	}
	if checked < 10 {
		t.Fatalf("checked only %d files; is the test in the agent directory?", checked)
	}
}
