package e2e

import (
	"archive/tar"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// What the README's user-data example holds that a test host cannot have,
// each replaced exactly once; every other line runs as written. A change
// of the example that drops one of them fails the test here, so the
// example and the test cannot part ways.
const (
	// The host's packages: Docker is the test bed's daemon, bound in at
	// /run/docker.sock, and curl is in the root filesystem
	// (scripts/rootfs.sh).
	readmeProvision = "apt-get update && apt-get install -y docker.io curl"
	// Where the release is downloaded from, and the digest of its
	// SHA256SUMS as published with it.
	readmeDownload = "https://artifacts.example.internal/pull-agent"
	readmeSumsPin  = `"<sha256 of SHA256SUMS, published with the release>"`
	// The secret, from SSM Parameter Store on EC2.
	readmeSecret = "aws ssm get-parameter --with-decryption --name /molecule/ghcr-token \\\n  --query Parameter.Value --output text"
	// The registry: an ECR mirror there, the test bed's here.
	readmeRegistry = "123456789012.dkr.ecr.us-east-2.amazonaws.com/molecule-ai"
	// readmeGHCRUser is the GHCR user the example installs with.
	readmeGHCRUser = "molecule-bot"
)

// readmeUserData returns the user-data example of README.md in the
// checkout at root (the first sh block after "## Install") and the release
// version it installs (its V=).
func readmeUserData(t *testing.T, root string) (script, version string) {
	t.Helper()
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	must(t, err)
	_, install, ok := strings.Cut(string(readme), "\n## Install\n")
	if !ok {
		t.Fatal("README.md has no '## Install' section")
	}
	_, block, ok := strings.Cut(install, "\n```sh\n")
	if !ok {
		t.Fatal("README.md's Install section has no sh block")
	}
	script, _, ok = strings.Cut(block, "\n```\n")
	if !ok || !strings.HasPrefix(script, "#!/bin/bash\n# EC2 user-data") {
		t.Fatalf("README.md's Install section does not start with the user-data script:\n%.200s", block)
	}
	m := regexp.MustCompile(`(?m)^V=([0-9A-Za-z._+-]+)$`).FindStringSubmatch(script)
	if m == nil {
		t.Fatalf("README.md's user-data sets no V=VERSION:\n%s", script)
	}
	return script + "\n", m[1]
}

// substitute replaces old by new in script, where old must occur once.
func substitute(t *testing.T, script, old, new string) string {
	t.Helper()
	if n := strings.Count(script, old); n != 1 {
		t.Fatalf("README.md's user-data holds %q %d times, want once: the example changed, change the test with it:\n%s", old, n, script)
	}
	return strings.Replace(script, old, new, 1)
}

// release is a release built by 'make dist', served over HTTP on loopback
// under /pull-agent/vVERSION/ as the example downloads it.
type release struct {
	version string
	dir     string
	srv     *httptest.Server
	mu      sync.Mutex
	served  []string // paths answered 200, in order; guarded by mu
}

// serveRelease builds the release of the checkout at root with version and
// serves it until the test ends.
func serveRelease(t *testing.T, root, version string) *release {
	t.Helper()
	r := &release{version: version, dir: t.TempDir()}
	t.Logf("make dist: %s", makeDist(t, root, version, r.dir))
	files := http.StripPrefix("/pull-agent/v"+version+"/", http.FileServer(http.Dir(r.dir)))
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, code: http.StatusOK}
		files.ServeHTTP(rec, req)
		if rec.code == http.StatusOK {
			r.mu.Lock()
			r.served = append(r.served, req.URL.Path)
			r.mu.Unlock()
		}
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// statusRecorder remembers the status code a handler answered.
type statusRecorder struct {
	http.ResponseWriter
	code int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.code = code
	s.ResponseWriter.WriteHeader(code)
}

// servedPaths is what the release server answered so far.
func (r *release) servedPaths() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.served...)
}

// userData is the README's example for this release, with only the
// download, the published digest, the secret and the registry replaced
// (see the constants above): the token comes from tokenFile.
func (r *release) userData(t *testing.T, script, registry, tokenFile string) string {
	t.Helper()
	sums, err := os.ReadFile(filepath.Join(r.dir, "SHA256SUMS"))
	must(t, err)
	h := sha256.Sum256(sums)
	script = substitute(t, script, readmeProvision, ": provisioned, the Docker of the test bed bound in and curl installed")
	if strings.Count(script, readmeDownload) == 0 {
		t.Fatalf("README.md's user-data downloads nothing from %s: the example changed, change the test with it:\n%s", readmeDownload, script)
	}
	script = strings.ReplaceAll(script, readmeDownload, r.srv.URL+"/pull-agent")
	script = substitute(t, script, readmeSumsPin, hex.EncodeToString(h[:]))
	script = substitute(t, script, readmeSecret, "cat "+tokenFile)
	return substitute(t, script, readmeRegistry, registry)
}

// checkInstalledRelease checks that user-data fetched SHA256SUMS and this
// host's tarball from the release server, and that the service runs the
// release's binary.
func checkInstalledRelease(t *testing.T, c *container, rel *release) {
	t.Helper()
	arch := hostArch(t)
	name := "pull-agent-" + rel.version + "-linux-" + arch
	want := []string{"/pull-agent/v" + rel.version + "/SHA256SUMS", "/pull-agent/v" + rel.version + "/" + name + ".tar.gz"}
	if got := rel.servedPaths(); !slices.Equal(got, want) {
		t.Errorf("user-data downloaded %q, want %q", got, want)
	}
	binary := tarballFile(t, filepath.Join(rel.dir, name+".tar.gz"), name+"/pull-agent")
	h := sha256.Sum256(binary)
	if out := c.must(t, 10*time.Second, "sha256sum", "/usr/local/bin/pull-agent"); !strings.HasPrefix(out, hex.EncodeToString(h[:])+" ") {
		t.Errorf("/usr/local/bin/pull-agent is not the release's linux/%s binary: %s", arch, out)
	}
	if out := c.must(t, 10*time.Second, "pull-agent", "version"); !strings.HasPrefix(out, "pull-agent "+rel.version+" (") {
		t.Errorf("pull-agent version: %q, want version %s", out, rel.version)
	}
}

// tarballFile returns the content of name in the gzipped tarball at path.
func tarballFile(t *testing.T, path, name string) []byte {
	t.Helper()
	f, err := os.Open(path)
	must(t, err)
	defer f.Close()
	zr, err := gzip.NewReader(f)
	must(t, err)
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err != nil {
			t.Fatalf("%s in %s: %v", name, path, err)
		}
		if h.Name == name {
			data, err := io.ReadAll(tr)
			must(t, err)
			return data
		}
	}
}
