package chaos

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// ecrHost is an ECR-shaped name that only the bed's Docker daemon resolves
// (to 127.0.0.1, through its private /etc/hosts).
const ecrHost = "123456789012.dkr.ecr.us-east-2.amazonaws.com"

// runtimes are the images of every row: three are enough to have pulls
// run side by side at the agent's concurrency.
var runtimes = []string{"codex", "hermes", "langgraph"}

// world is what every row shares: one bed, its registries and proxies,
// the agent binary, and the secrets no output may contain.
type world struct {
	bed *testbed.Bed
	dir string // holds bin and helpers
	bin string // the pull-agent binary under test
	// helpers is the directory of the test credential helpers (on PATH).
	helpers string

	// main is an htpasswd registry reached through tcp (toxiproxy:
	// reset, stall, bandwidth) in front of http (500, 429), so every
	// row's prefix is tcp.Prefix(ns) and carries config.json credentials.
	main *testbed.Registry
	http *testbed.HTTPProxy
	tcp  *testbed.TCPProxy
	user string
	pass string

	// tok is a registry with token auth and tokens its token server.
	tok     *testbed.Registry
	tokens  *testbed.TokenServer
	tokPass string

	// ecr wants AWS:<ecrPass>, the password ecrAPI hands out.
	ecr     *testbed.Registry
	ecrAPI  *testbed.FakeECR
	ecrPass string
	awsKey  string

	// fb is a second htpasswd registry on main's storage, so that it
	// holds the same images under the same names, reached through
	// fbHTTP, which records what the daemon sends it: the fallback
	// (MOLECULE_IMAGE_FALLBACK_REGISTRY) of main's prefixes, with
	// credentials of its own.
	fb     *testbed.Registry
	fbHTTP *testbed.HTTPProxy
	fbUser string
	fbPass string

	// ghcrToken is in every env file; it must never be sent or printed.
	ghcrToken string
	// urlToken is the token in the pre-signed URL a hostile registry
	// names in its error.
	urlToken string

	mu     sync.Mutex
	serial int
	// rotated are token passwords the soak rotated in.
	rotated []string
}

var (
	flagAll    = flag.Bool("chaos.all", false, "run every row of the fault matrix, not only the fast ones")
	flagReport = flag.String("chaos.report", "", "write the matrix results (markdown) between the chaos markers of this file")
)

var shared struct {
	once sync.Once
	w    *world
	err  error
}

func TestMain(m *testing.M) {
	flag.Parse()
	code := testbed.IntegrationMain(m) // under -short (make unit): nothing runs
	if w := shared.w; w != nil {
		w.close()
	}
	os.Exit(code)
}

// getWorld starts the world on first use; it skips (or fails under CI)
// where the bed cannot run.
func getWorld(t *testing.T) *world {
	t.Helper()
	testbed.Require(t)
	shared.once.Do(func() { shared.w, shared.err = newWorld(t.Logf) })
	if shared.err != nil {
		t.Fatalf("starting the chaos world: %v", shared.err)
	}
	return shared.w
}

func secret(prefix string) string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return prefix + "-s3cret-" + hex.EncodeToString(b)
}

func newWorld(logf func(string, ...any)) (_ *world, err error) {
	ctx := context.Background()
	w := &world{user: "chaos", pass: secret("main"), fbUser: "mirror", fbPass: secret("fallback"), tokPass: secret("tok"), ecrPass: secret("ecr"), awsKey: secret("aws"), ghcrToken: secret("ghcr"), urlToken: secret("url")}
	defer func() {
		if err != nil {
			w.close()
		}
	}()
	dir, err := os.MkdirTemp("/tmp", "pa-chaos-")
	if err != nil {
		return nil, err
	}
	w.dir = dir
	w.bin = filepath.Join(dir, "pull-agent")
	args := []string{"build", "-o", w.bin}
	if raceEnabled {
		args = append(args, "-race") // the agent runs the faults with the race detector on
	}
	build := exec.Command("go", append(args, "github.com/molecule-ai/pull-agent/cmd/pull-agent")...)
	if out, err := build.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("building pull-agent: %v\n%s", err, out)
	}
	hdir := filepath.Join(dir, "helpers")
	if err := os.Mkdir(hdir, 0o755); err != nil {
		return nil, err
	}
	if w.helpers, err = testbed.BuildCredentialHelpers(hdir); err != nil {
		return nil, err
	}
	// The helpers answer with the main registry's credentials: those
	// that work, and those that must never be printed.
	if err := testbed.ConfigureCredentialHelpers(w.helpers, testbed.HelperConfig{User: w.user, Secret: w.pass}); err != nil {
		return nil, err
	}
	w.bed, err = testbed.Start(ctx, testbed.Options{Logf: logf, Hosts: map[string]string{ecrHost: "127.0.0.1"}})
	if err != nil {
		return nil, err
	}
	ht, err := testbed.Htpasswd(map[string]string{w.user: w.pass})
	if err != nil {
		return nil, err
	}
	if w.main, err = w.bed.StartRegistry(ctx, "main", testbed.RegistryOptions{Htpasswd: ht}); err != nil {
		return nil, err
	}
	if w.http, err = testbed.NewHTTPProxy(w.main.Addr); err != nil {
		return nil, err
	}
	if w.tcp, err = testbed.NewTCPProxy("chaos", w.http.Addr); err != nil {
		return nil, err
	}
	if ht, err = testbed.Htpasswd(map[string]string{w.fbUser: w.fbPass}); err != nil {
		return nil, err
	}
	if w.fb, err = w.bed.StartRegistry(ctx, "fallback", testbed.RegistryOptions{Htpasswd: ht, Root: w.main.Root}); err != nil {
		return nil, err
	}
	if w.fbHTTP, err = testbed.NewHTTPProxy(w.fb.Addr); err != nil {
		return nil, err
	}
	if w.tokens, err = testbed.NewTokenServer(map[string]string{w.user: w.tokPass}); err != nil {
		return nil, err
	}
	if w.tok, err = w.bed.StartRegistry(ctx, "tok", testbed.RegistryOptions{Token: w.tokens.Auth()}); err != nil {
		return nil, err
	}
	ht, err = testbed.Htpasswd(map[string]string{"AWS": w.ecrPass})
	if err != nil {
		return nil, err
	}
	if w.ecr, err = w.bed.StartRegistry(ctx, "ecr", testbed.RegistryOptions{Htpasswd: ht}); err != nil {
		return nil, err
	}
	if w.ecrAPI, err = testbed.NewFakeECR(w.ecrRegistryHost(), w.ecrPass, time.Hour); err != nil {
		return nil, err
	}
	return w, nil
}

func (w *world) close() {
	if w.tcp != nil {
		w.tcp.Close()
	}
	if w.http != nil {
		w.http.Close()
	}
	if w.fbHTTP != nil {
		w.fbHTTP.Close()
	}
	if w.tokens != nil {
		w.tokens.Close()
	}
	if w.ecrAPI != nil {
		w.ecrAPI.Close()
	}
	if w.bed != nil {
		w.bed.Stop()
	}
	if w.dir != "" {
		os.RemoveAll(w.dir)
	}
}

// ecrRegistryHost is the ECR registry's name with its port.
func (w *world) ecrRegistryHost() string {
	return ecrHost + ":" + w.ecr.Addr[strings.LastIndex(w.ecr.Addr, ":")+1:]
}

// secrets are the values no output of the agent may contain.
func (w *world) secrets() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]string{w.pass, w.fbPass, w.tokPass, w.ecrPass, w.awsKey, w.ghcrToken, w.urlToken, "helper-s3cret"}, w.rotated...)
}

// source is where a row's images come from.
type source int

const (
	fromMain source = iota // htpasswd registry behind toxiproxy and the HTTP fault proxy
	fromTok                // token-auth registry
	fromECR                // ECR-shaped registry, token from the fake ECR API
)

// target is where images of src are pushed, with which credentials, and
// the prefix the agent is given for namespace ns.
func (w *world) target(t *testing.T, src source) (*testbed.Registry, testbed.SeedOptions, func(ns string) string) {
	t.Helper()
	switch src {
	case fromMain:
		return w.main, testbed.SeedOptions{Username: w.user, Password: w.pass}, w.tcp.Prefix
	case fromTok:
		// Pushed to the storage through an open twin: the token registry
		// itself only lets the token server's users pull.
		return w.twin(t, w.tok), testbed.SeedOptions{}, w.tok.Prefix
	default:
		return w.ecr, testbed.SeedOptions{Username: "AWS", Password: w.ecrPass}, func(ns string) string { return w.ecrRegistryHost() + "/" + ns }
	}
}

// seed pushes the row's runtimes to a fresh namespace of src and returns
// the prefix the agent is given and the digest of each runtime.
func (w *world) seed(t *testing.T, src source, opts testbed.SeedOptions) (string, map[string]string) {
	t.Helper()
	w.mu.Lock()
	w.serial++
	ns := fmt.Sprintf("c%03d", w.serial)
	w.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reg, creds, prefix := w.target(t, src)
	opts.Username, opts.Password = creds.Username, creds.Password
	seeded, err := w.bed.Seed(ctx, reg, ns, runtimes, opts)
	if err != nil {
		t.Fatal(err)
	}
	return prefix(ns), digests(seeded)
}

// twin returns an open registry on r's storage, for seeding r.
func (w *world) twin(t *testing.T, r *testbed.Registry) *testbed.Registry {
	t.Helper()
	name := "twin-" + r.Name
	if tw := w.bed.Registry(name); tw != nil {
		return tw
	}
	tw, err := w.bed.StartRegistry(context.Background(), name, testbed.RegistryOptions{Root: r.Root})
	if err != nil {
		t.Fatal(err)
	}
	return tw
}

func digests(seeded map[string]testbed.Seeded) map[string]string {
	out := map[string]string{}
	for rt, s := range seeded {
		out[rt] = s.Digest.String()
	}
	return out
}

// dockerConfig is the config.json of every row: Basic credentials for the
// main, fallback and token registries, keyed as the docker CLI keys them.
func (w *world) dockerConfig() string { return w.authsConfig(w.user, w.tokPass) }

// authsConfig is that config.json with the token registry's user as
// given (the soak rotates it).
func (w *world) authsConfig(tokUser, tokPass string) string {
	return fmt.Sprintf(`{"auths": {%q: {"auth": %q}, %q: {"auth": %q}, %q: {"auth": %q}}}`,
		w.tcp.Addr, encodeAuth(w.user+":"+w.pass), w.fbHTTP.Addr, encodeAuth(w.fbUser+":"+w.fbPass), w.tok.Addr, encodeAuth(tokUser+":"+tokPass))
}

// envFile is the content of a row's env file for prefix.
func (w *world) envFile(prefix string) string {
	return config.KeyRegistry + "=" + prefix + "\n" +
		config.KeyRuntimes + "=" + strings.Join(runtimes, ",") + "\n" +
		config.KeyGHCRUser + "=molecule-bot\n" +
		config.KeyGHCRToken + "=" + w.ghcrToken + "\n"
}
