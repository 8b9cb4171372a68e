package agent_test

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/agent"
	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/agent/state"
	"github.com/molecule-ai/pull-agent/auth"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

type running struct {
	a       *agent.Agent
	logs    *testbed.Buffer
	envFile string
	stop    func() error
}

// fastOptions are agent options scaled for tests: short debounce,
// backoffs and timeouts, refresh far away.
func fastOptions() agent.Options {
	o := agent.DefaultOptions()
	o.RefreshInterval = time.Hour
	o.Debounce = 100 * time.Millisecond
	o.Retry = agent.RetryPolicy{Initial: 200 * time.Millisecond, Max: time.Second, Attempts: 50}
	o.RateLimit = agent.RetryPolicy{Initial: 3 * time.Second, Max: 6 * time.Second}
	o.DaemonRetry = agent.RetryPolicy{Initial: 100 * time.Millisecond, Max: 500 * time.Millisecond}
	o.Timeouts = pull.PullTimeouts{Begin: 20 * time.Second, Stall: stallTimeout(), Extract: 30 * time.Second, Overall: 2 * time.Minute}
	return o
}

// stallTimeout is the tests' stall timeout: 2 s, but 10 s on the
// containerd image store, which reports a layer's progress in steps of
// 1 MiB (its content writer's buffer), 8 s apart on the tests' 128 KB/s
// proxies: a shorter timeout would call every slow pull stalled.
func stallTimeout() time.Duration {
	if testbed.DefaultEngine() == testbed.EngineTrixieContainerd {
		return 10 * time.Second
	}
	return 2 * time.Second
}

// startAgent runs an agent on envFile against dockerHost until the test ends.
func startAgent(t *testing.T, dockerHost, envFile string, env map[string]string, mod func(*agent.Options)) *running {
	t.Helper()
	logs := &testbed.Buffer{}
	o := fastOptions()
	o.EnvFile = envFile
	if env == nil {
		env = map[string]string{}
	}
	env[config.KeyDockerHost] = dockerHost
	o.Getenv = func(k string) string { return env[k] }
	o.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	o.NewEngine = func(ep config.DockerEndpoint) (engine.Engine, error) { return engine.NewDockerEngine(ep) }
	o.NewAuthorizer = func(c config.Config) (pull.Authorizer, error) {
		return auth.NewSelector(auth.Options{GHCRUser: c.GHCRUser, GHCRToken: c.GHCRToken})
	}
	if mod != nil {
		mod(&o)
	}
	w, err := agent.NewWatcher(o.EnvFile, o.Debounce, o.Logger)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	o.Changes = w.Changes()
	a, err := agent.New(o)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		var watching sync.WaitGroup
		watching.Go(func() { w.Run(ctx) })
		done <- a.Run(ctx)
		watching.Wait()
	}()
	var once sync.Once
	var runErr error
	stop := func() error {
		once.Do(func() {
			cancel()
			select {
			case runErr = <-done:
			case <-time.After(15 * time.Second):
				runErr = fmt.Errorf("agent did not stop within 15 s")
			}
		})
		return runErr
	}
	t.Cleanup(func() {
		if err := stop(); err != nil {
			t.Error(err)
		}
		if t.Failed() {
			t.Logf("agent log:\n%s", logs.String())
		}
	})
	return &running{a: a, logs: logs, envFile: envFile, stop: stop}
}

// waitFor returns the first snapshot that satisfies cond; on a timeout
// the test fails with the last snapshot seen.
func (r *running) waitFor(t *testing.T, what string, timeout time.Duration, cond func(agent.Snapshot) bool) agent.Snapshot {
	t.Helper()
	var s agent.Snapshot
	ok := false
	defer func() {
		if !ok {
			t.Logf("last snapshot: %s", describe(s))
		}
	}()
	testbed.WaitFor(t, what, timeout, func() bool { s = r.a.Snapshot(); return cond(s) })
	ok = true
	return s
}

func describe(s agent.Snapshot) string {
	var b strings.Builder
	if s.Config != nil {
		fmt.Fprintf(&b, "prefix=%s ", s.Config.Prefix)
	}
	fmt.Fprintf(&b, "config_error=%q daemon_up=%v\n", s.ConfigError, s.DaemonUp)
	for _, i := range s.Images {
		fmt.Fprintf(&b, "  %s %s %s attempts=%d class=%s err=%s\n", i.Image.Ref, i.State, i.Digest, i.Attempts, i.LastClass, i.LastError)
	}
	return b.String()
}

// warmOn reports whether every image is warm from prefix with the digests
// seeded there.
func warmOn(prefix string, seeded map[string]testbed.Seeded) func(agent.Snapshot) bool {
	return func(s agent.Snapshot) bool {
		if s.Config == nil || s.Config.Prefix != prefix || len(s.Images) != len(seeded) {
			return false
		}
		for _, i := range s.Images {
			if i.State != state.Warm || i.Digest != seeded[i.Image.Runtime].Digest || !strings.HasPrefix(i.Image.Ref, prefix+"/") {
				return false
			}
		}
		return true
	}
}

// secondRegistry returns the bed's registry "b", starting it on first use.
func secondRegistry(t *testing.T, b *testbed.Bed) *testbed.Registry {
	t.Helper()
	if r := b.Registry("b"); r != nil {
		return r
	}
	r, err := b.StartRegistry(context.Background(), "b", testbed.RegistryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func writeEnv(t *testing.T, path, prefix string) {
	t.Helper()
	if err := os.WriteFile(path, []byte("# test\n"+config.KeyRegistry+"="+prefix+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}

// The write styles an operator (or a config tool) uses to change the file.
var writeStyles = []struct {
	name  string
	setup func(t *testing.T, dir, prefix string) string // returns the env file path
	flip  func(t *testing.T, path, prefix string)
}{
	{
		name:  "append in place",
		setup: plainFile,
		flip: func(t *testing.T, path, prefix string) {
			f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			fmt.Fprintf(f, "%s=%s\n", config.KeyRegistry, prefix) // a later assignment wins
		},
	},
	{
		name:  "truncate and rewrite in place",
		setup: plainFile,
		flip:  func(t *testing.T, path, prefix string) { writeEnv(t, path, prefix) },
	},
	{
		name:  "sed -i",
		setup: plainFile,
		flip: func(t *testing.T, path, prefix string) {
			out, err := exec.Command("sed", "-i", "s#^"+config.KeyRegistry+"=.*#"+config.KeyRegistry+"="+prefix+"#", path).CombinedOutput()
			if err != nil {
				t.Fatalf("sed: %v %s", err, out)
			}
		},
	},
	{
		name:  "write temp then rename over",
		setup: plainFile,
		flip: func(t *testing.T, path, prefix string) {
			tmp := path + ".tmp"
			writeEnv(t, tmp, prefix)
			if err := os.Rename(tmp, path); err != nil {
				t.Fatal(err)
			}
		},
	},
	{
		name: "symlink swap (..data)",
		setup: func(t *testing.T, dir, prefix string) string {
			gen := filepath.Join(dir, "..gen1")
			if err := os.Mkdir(gen, 0o755); err != nil {
				t.Fatal(err)
			}
			writeEnv(t, filepath.Join(gen, "pull-agent.env"), prefix)
			must(t, os.Symlink("..gen1", filepath.Join(dir, "..data")))
			must(t, os.Symlink("..data/pull-agent.env", filepath.Join(dir, "pull-agent.env")))
			return filepath.Join(dir, "pull-agent.env")
		},
		flip: func(t *testing.T, path, prefix string) {
			dir := filepath.Dir(path)
			gen := filepath.Join(dir, "..gen2")
			must(t, os.Mkdir(gen, 0o755))
			writeEnv(t, filepath.Join(gen, "pull-agent.env"), prefix)
			must(t, os.Symlink("..gen2", filepath.Join(dir, "..data_tmp")))
			must(t, os.Rename(filepath.Join(dir, "..data_tmp"), filepath.Join(dir, "..data")))
			must(t, os.RemoveAll(filepath.Join(dir, "..gen1")))
		},
	},
	{
		name:  "delete then recreate",
		setup: plainFile,
		flip: func(t *testing.T, path, prefix string) {
			must(t, os.Remove(path))
			time.Sleep(300 * time.Millisecond) // long enough to be seen as gone
			writeEnv(t, path, prefix)
		},
	},
	{
		name: "directory missing at start",
		setup: func(t *testing.T, dir, prefix string) string {
			// The file's directory does not exist: the process
			// environment (prefix A) applies until it appears.
			return filepath.Join(dir, "later", "deeper", "pull-agent.env")
		},
		flip: func(t *testing.T, path, prefix string) {
			must(t, os.MkdirAll(filepath.Dir(path), 0o755))
			writeEnv(t, path, prefix)
		},
	},
}

func plainFile(t *testing.T, dir, prefix string) string {
	p := filepath.Join(dir, "pull-agent.env")
	writeEnv(t, p, prefix)
	return p
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestAgentFlipsPrefixOnEveryWriteStyle(t *testing.T) {
	f := newFixture(t)
	regB := secondRegistry(t, f.bed)
	rts := []string{"autogen", "codex", "hermes"}
	for i, style := range writeStyles {
		t.Run(style.name, func(t *testing.T) {
			nsA, nsB := fmt.Sprintf("flip-a-%d", i), fmt.Sprintf("flip-b-%d", i)
			seedA, err := f.bed.Seed(ctxT(t), f.reg, nsA, rts, testbed.SeedOptions{})
			must(t, err)
			seedB, err := f.bed.Seed(ctxT(t), regB, nsB, rts, testbed.SeedOptions{})
			must(t, err)
			prefixA, prefixB := f.reg.Prefix(nsA), regB.Prefix(nsB)
			path := style.setup(t, t.TempDir(), prefixA)
			env := map[string]string{config.KeyRuntimes: strings.Join(rts, ","), config.KeyRegistry: prefixA}
			r := startAgent(t, f.bed.DockerHost, path, env, nil)
			r.waitFor(t, "warm on A", 30*time.Second, warmOn(prefixA, seedA))

			start := time.Now()
			style.flip(t, path, prefixB)
			r.waitFor(t, "warm on B", 15*time.Second, warmOn(prefixB, seedB))
			t.Logf("flip to B warm and verified %s after the write", time.Since(start).Round(time.Millisecond))
		})
	}
}

func TestAgentReloadReadsAtOnce(t *testing.T) {
	f := newFixture(t)
	rts := []string{"codex"}
	seedA := f.seed(t, rts)
	seedB, err := f.bed.Seed(ctxT(t), f.reg, f.ns+"-b", rts, testbed.SeedOptions{})
	must(t, err)
	path := plainFile(t, t.TempDir(), f.reg.Prefix(f.ns))
	// A debounce of a minute: only Reload (SIGHUP) can pick the change up in time.
	r := startAgent(t, f.bed.DockerHost, path, map[string]string{config.KeyRuntimes: "codex"}, func(o *agent.Options) { o.Debounce = time.Minute })
	r.waitFor(t, "warm on A", 30*time.Second, warmOn(f.reg.Prefix(f.ns), seedA))
	writeEnv(t, path, f.reg.Prefix(f.ns+"-b"))
	time.Sleep(500 * time.Millisecond) // a fixed wait: the check is that nothing happens in it
	if p := r.a.Snapshot().Config.Prefix; p != f.reg.Prefix(f.ns) {
		t.Fatalf("prefix changed to %s before Reload: the debounce is not what this test assumes", p)
	}
	r.a.Reload()
	r.waitFor(t, "warm on B after Reload", 10*time.Second, warmOn(f.reg.Prefix(f.ns+"-b"), seedB))
}

func TestAgentKeepsLastGoodConfiguration(t *testing.T) {
	f := newFixture(t)
	rts := []string{"codex", "crewai"}
	seedA := f.seed(t, rts)
	prefixA := f.reg.Prefix(f.ns)
	dir := t.TempDir()
	path := plainFile(t, dir, prefixA)
	r := startAgent(t, f.bed.DockerHost, path, map[string]string{config.KeyRuntimes: strings.Join(rts, ",")}, nil)
	r.waitFor(t, "warm on A", 30*time.Second, warmOn(prefixA, seedA))

	bad := []struct {
		name    string
		write   func()
		wantErr string
	}{
		{"garbage bytes", func() { must(t, os.WriteFile(path, []byte("\x01\x02garbage without equals\n"), 0o644)) }, "has no '='"},
		{"invalid prefix", func() { must(t, os.WriteFile(path, []byte(config.KeyRegistry+"=HTTPS://Nope\n"), 0o644)) }, "no URL scheme"},
		{"10 MB file", func() {
			must(t, os.WriteFile(path, bytes.Repeat([]byte("# padding line\n"), 10<<20/15), 0o644))
		}, "larger than"},
		{"NUL byte", func() { must(t, os.WriteFile(path, []byte("A=1\x00\n"), 0o644)) }, "NUL byte"},
		{"deleted", func() { must(t, os.Remove(path)) }, "is gone"},
	}
	for _, b := range bad {
		b.write()
		s := r.waitFor(t, b.name+" reported", 5*time.Second, func(s agent.Snapshot) bool { return strings.Contains(s.ConfigError, b.wantErr) })
		if !warmOn(prefixA, seedA)(s) {
			t.Fatalf("%s: the running configuration changed: %s", b.name, describe(s))
		}
	}
	if !strings.Contains(r.logs.String(), "keeping the last good configuration") {
		t.Error("no log line says the last good configuration is kept")
	}
	// Still alive and listening: a good file is picked up.
	seedB, err := f.bed.Seed(ctxT(t), f.reg, f.ns+"-b", rts, testbed.SeedOptions{})
	must(t, err)
	writeEnv(t, path, f.reg.Prefix(f.ns+"-b"))
	s := r.waitFor(t, "warm on B", 15*time.Second, warmOn(f.reg.Prefix(f.ns+"-b"), seedB))
	if s.ConfigError != "" {
		t.Errorf("config error still shown after a good file: %s", s.ConfigError)
	}
}

func TestAgentConvergesAfterRegistryRestart(t *testing.T) {
	f := newFixture(t)
	reg, err := f.bed.StartRegistry(ctxT(t), "restart", testbed.RegistryOptions{})
	must(t, err)
	t.Cleanup(func() { reg.Stop() })
	rts := []string{"codex", "hermes"}
	seedA, err := f.bed.Seed(ctxT(t), reg, "a", rts, testbed.SeedOptions{})
	must(t, err)
	seedB, err := f.bed.Seed(ctxT(t), reg, "b", rts, testbed.SeedOptions{})
	must(t, err)
	path := plainFile(t, t.TempDir(), reg.Prefix("a"))
	r := startAgent(t, f.bed.DockerHost, path, map[string]string{config.KeyRuntimes: strings.Join(rts, ",")}, nil)
	r.waitFor(t, "warm on a", 30*time.Second, warmOn(reg.Prefix("a"), seedA))

	must(t, reg.Stop())
	writeEnv(t, path, reg.Prefix("b"))
	r.waitFor(t, "a network failure with a retry scheduled", 10*time.Second, func(s agent.Snapshot) bool {
		for _, i := range s.Images {
			if i.LastClass == pull.ClassNetwork && i.Attempts >= 2 {
				return true
			}
		}
		return false
	})
	must(t, reg.Start(ctxT(t)))
	r.waitFor(t, "warm on b after the registry came back", 20*time.Second, warmOn(reg.Prefix("b"), seedB))
	if !strings.Contains(r.logs.String(), `msg="pull failed; retry scheduled" component=agent runtime=codex`) {
		t.Error("no retry was logged")
	}
}

func TestAgentSurvivesDockerRestartAndAbsence(t *testing.T) {
	testbed.Require(t)
	f := newFixture(t) // for the registry
	own, err := testbed.Start(ctxT(t), testbed.Options{Logf: t.Logf})
	must(t, err)
	t.Cleanup(func() { own.Stop() })
	rts := []string{"codex", "crewai"}
	seedA := f.seed(t, rts)
	seedB, err := f.bed.Seed(ctxT(t), f.reg, f.ns+"-b", rts, testbed.SeedOptions{})
	must(t, err)
	path := plainFile(t, t.TempDir(), f.reg.Prefix(f.ns))

	// Docker absent at start: not fatal.
	must(t, own.StopDockerd())
	r := startAgent(t, own.DockerHost, path, map[string]string{config.KeyRuntimes: strings.Join(rts, ",")}, nil)
	// Started: the configuration accepted and the first refresh
	// scheduled, with Docker seen down.
	s := r.waitFor(t, "the agent to start with Docker unreachable", 10*time.Second, func(s agent.Snapshot) bool {
		return !s.NextRefresh.IsZero() && s.Config != nil
	})
	if s.DaemonUp || s.Warm() != 0 {
		t.Fatalf("with Docker down: %s", describe(s))
	}
	must(t, own.StartDockerd(ctxT(t)))
	r.waitFor(t, "warm once Docker is up", 30*time.Second, warmOn(f.reg.Prefix(f.ns), seedA))

	// Docker stopped mid-run, the prefix flipped meanwhile, Docker back.
	must(t, own.StopDockerd())
	writeEnv(t, path, f.reg.Prefix(f.ns+"-b"))
	r.waitFor(t, "docker seen down", 10*time.Second, func(s agent.Snapshot) bool { return !s.DaemonUp })
	must(t, own.StartDockerd(ctxT(t)))
	r.waitFor(t, "warm on B after Docker came back", 30*time.Second, warmOn(f.reg.Prefix(f.ns+"-b"), seedB))
}

func TestAgentStallIsDetectedAndRetried(t *testing.T) {
	f := newFixture(t)
	seed, err := f.bed.Seed(ctxT(t), f.reg, f.ns, []string{"codex"}, testbed.SeedOptions{BaseSize: 256 << 10, LayerSize: 8 << 20})
	must(t, err)
	px, err := testbed.NewTCPProxy("stall", f.reg.Addr)
	must(t, err)
	t.Cleanup(px.Close)
	must(t, px.Throttle(512)) // 8 MiB at 512 KB/s: ~16 s, time to stall it mid-blob
	prefix := px.Prefix(f.ns)
	path := plainFile(t, t.TempDir(), prefix)
	r := startAgent(t, f.bed.DockerHost, path, map[string]string{config.KeyRuntimes: "codex"}, func(o *agent.Options) {
		o.Retry = agent.RetryPolicy{Initial: 500 * time.Millisecond, Max: time.Second, Attempts: 50}
	})
	r.waitFor(t, "download under way", 20*time.Second, func(s agent.Snapshot) bool {
		return len(s.Images) == 1 && s.Images[0].Progress.Current > 0 && s.Images[0].Progress.Phase == engine.PhaseDownloading
	})
	must(t, px.Stall())
	stalledAt := time.Now()
	r.waitFor(t, "the pull failing as stalled", stallTimeout()+8*time.Second, func(s agent.Snapshot) bool {
		return s.Images[0].LastClass == pull.ClassStalled
	})
	t.Logf("stall detected %s after forwarding stopped (stall timeout %s)", time.Since(stalledAt).Round(time.Millisecond), stallTimeout())
	px.Clear()
	seeded := map[string]testbed.Seeded{"codex": {Digest: seed["codex"].Digest}}
	r.waitFor(t, "warm after the link recovered", 60*time.Second, warmOn(prefix, seeded))
	if !strings.Contains(r.logs.String(), "class=stalled") {
		t.Error("the stall was not logged with its class")
	}
}

func TestAgentRateLimitBacksOffThatHostOnly(t *testing.T) {
	f := newFixture(t)
	regB := secondRegistry(t, f.bed)
	rts := []string{"autogen", "codex", "crewai", "hermes"}
	_ = f.seed(t, rts)
	seedB, err := f.bed.Seed(ctxT(t), regB, f.ns, rts, testbed.SeedOptions{})
	must(t, err)
	px, err := testbed.NewHTTPProxy(f.reg.Addr)
	must(t, err)
	t.Cleanup(func() { px.Close() })
	px.SetFault(&testbed.Fault{Match: "/manifests/", Status: 429, Header: map[string]string{"Retry-After": "30"},
		Body: `{"errors":[{"code":"TOOMANYREQUESTS","message":"slow down"}]}`})
	limitedHost := px.Addr
	path := plainFile(t, t.TempDir(), px.Prefix(f.ns))
	r := startAgent(t, f.bed.DockerHost, path, map[string]string{config.KeyRuntimes: strings.Join(rts, ",")}, func(o *agent.Options) {
		o.Concurrency = 1
		// A first cooldown of 10–20 s: the other host's four pulls must
		// fit in it even on a loaded machine (they took 5 s at a load
		// average of 18). Nothing waits for its end.
		o.RateLimit = agent.RetryPolicy{Initial: 20 * time.Second, Max: 40 * time.Second}
	})
	s := r.waitFor(t, "a cooldown on the limited host", 10*time.Second, func(s agent.Snapshot) bool { return !s.Cooldowns[limitedHost].IsZero() })
	until := s.Cooldowns[limitedHost]
	manifestHits := func() int {
		n := 0
		for _, q := range px.Requests() {
			if strings.Contains(q.Path, "/manifests/") {
				n++
			}
		}
		return n
	}
	hits := manifestHits()
	if hits == 0 {
		t.Fatal("the limited host saw no manifest request")
	}
	time.Sleep(time.Second) // a fixed wait: the check is that no request arrives in it
	if got := manifestHits(); got != hits {
		t.Fatalf("%d manifest requests reached the rate-limited host during its cooldown", got-hits)
	}
	if !strings.Contains(r.logs.String(), "backing off this host") {
		t.Error("the backoff was not logged")
	}
	// Another host is unaffected: flipping there pulls at once, while the
	// limited host is still cooling down.
	writeEnv(t, path, regB.Prefix(f.ns))
	r.waitFor(t, "warm on the other host", 15*time.Second, warmOn(regB.Prefix(f.ns), seedB))
	if time.Now().After(until) {
		t.Errorf("the other host warmed only after the limited host's cooldown ended (%s)", until)
	}
}

func TestAgentRefreshCostsOnlyManifestHeadsAndSkipsPins(t *testing.T) {
	f := newFixture(t)
	rts := []string{"autogen", "codex", "hermes"}
	seed := f.seed(t, rts)
	px, err := testbed.NewHTTPProxy(f.reg.Addr)
	must(t, err)
	t.Cleanup(func() { px.Close() })
	prefix := px.Prefix(f.ns)
	pin := seed["hermes"].Digest
	path := t.TempDir() + "/pull-agent.env"
	must(t, os.WriteFile(path, []byte(fmt.Sprintf("%s=%s\n%s=%s\n%s=hermes=%s\n", config.KeyRegistry, prefix, config.KeyRuntimes, strings.Join(rts, ","), config.KeyPins, pin)), 0o644))
	r := startAgent(t, f.bed.DockerHost, path, nil, func(o *agent.Options) { o.RefreshInterval = 2 * time.Second })
	r.waitFor(t, "warm", 30*time.Second, func(s agent.Snapshot) bool { return s.Warm() == 3 })
	first := r.a.Snapshot().NextRefresh
	r.waitFor(t, "first refresh scheduled", 5*time.Second, func(s agent.Snapshot) bool { return !s.NextRefresh.IsZero() })
	// Count the requests of exactly one refresh.
	r.waitFor(t, "one refresh done", 10*time.Second, func(s agent.Snapshot) bool {
		return s.NextRefresh.After(first) && s.Warm() == 3 && !s.Images[0].InFlight && !s.Images[1].InFlight && !s.Images[2].InFlight
	})
	before := len(px.Requests())
	second := r.a.Snapshot().NextRefresh
	r.waitFor(t, "another refresh done", 10*time.Second, func(s agent.Snapshot) bool {
		return s.NextRefresh.After(second) && !s.Images[0].InFlight && !s.Images[1].InFlight && !s.Images[2].InFlight
	})
	reqs := px.Requests()[before:]
	perRepo := map[string][]string{}
	for _, q := range reqs {
		perRepo[q.Path] = append(perRepo[q.Path], q.Method)
		if q.Path != "/v2/" && !(q.Method == http.MethodHead && strings.Contains(q.Path, "/manifests/")) {
			t.Errorf("a refresh of up-to-date images sent %s %s", q.Method, q.Path)
		}
		if strings.Contains(q.Path, "workspace-template-hermes") {
			t.Errorf("the pinned image present locally reached the registry: %s %s", q.Method, q.Path)
		}
	}
	heads := 0
	for _, q := range reqs {
		if q.Method == http.MethodHead {
			heads++
		}
	}
	if heads != 2 {
		t.Errorf("%d manifest HEADs in one refresh of 2 moving tags, want 2 (requests: %v)", heads, perRepo)
	}
	t.Logf("one refresh: %d requests: %v", len(reqs), perRepo)
}

func TestAgentNoHotRetryOnNotFoundAndCancelOnLeave(t *testing.T) {
	f := newFixture(t)
	seed := f.seed(t, []string{"codex"})
	big, err := f.bed.Seed(ctxT(t), f.reg, f.ns+"-big", []string{"crewai"}, testbed.SeedOptions{LayerSize: 16 << 20})
	must(t, err)
	px, err := testbed.NewTCPProxy("leave", f.reg.Addr)
	must(t, err)
	t.Cleanup(px.Close)
	must(t, px.Throttle(128))
	if len(big) != 1 {
		t.Fatal("seeding the big image failed")
	}

	// hermes is not in the registry: not-found, and no retry until told.
	path := plainFile(t, t.TempDir(), f.reg.Prefix(f.ns))
	r := startAgent(t, f.bed.DockerHost, path, map[string]string{config.KeyRuntimes: "codex,hermes"}, nil)
	r.waitFor(t, "hermes not found", 20*time.Second, func(s agent.Snapshot) bool {
		h, _ := config.LookupImage(imagesOf(s), "hermes")
		return h.Runtime != "" && statusOf(s, "hermes").LastClass == pull.ClassNotFound
	})
	time.Sleep(1500 * time.Millisecond) // ≥ several retry delays of the test policy
	if a := statusOf(r.a.Snapshot(), "hermes").Attempts; a != 1 {
		t.Fatalf("not-found was retried on its own: %d attempts", a)
	}
	seeded2, err := f.bed.Seed(ctxT(t), f.reg, f.ns, []string{"hermes"}, testbed.SeedOptions{})
	must(t, err)
	r.a.Reload()
	seed["hermes"] = seeded2["hermes"]
	r.waitFor(t, "hermes warm after Reload", 15*time.Second, warmOn(f.reg.Prefix(f.ns), seed))

	// A pull in flight for an image that leaves the set is cancelled.
	must(t, os.WriteFile(path, []byte(config.KeyRegistry+"="+px.Prefix(f.ns+"-big")+"\n"+config.KeyRuntimes+"=crewai\n"), 0o644))
	r.waitFor(t, "slow pull in flight", 15*time.Second, func(s agent.Snapshot) bool {
		return len(s.Images) == 1 && s.Images[0].InFlight && s.Images[0].Progress.Current > 0
	})
	must(t, os.WriteFile(path, []byte(config.KeyRegistry+"="+f.reg.Prefix(f.ns)+"\n"+config.KeyRuntimes+"=codex,hermes\n"), 0o644))
	r.waitFor(t, "back on the first set", 15*time.Second, warmOn(f.reg.Prefix(f.ns), seed))
	if !strings.Contains(r.logs.String(), "pull cancelled: image left the configured set") {
		t.Error("the pull of the image that left the set was not cancelled")
	}
}

func imagesOf(s agent.Snapshot) []config.Image {
	var out []config.Image
	for _, i := range s.Images {
		out = append(out, i.Image)
	}
	return out
}

func statusOf(s agent.Snapshot, runtime string) agent.ImageStatus {
	for _, i := range s.Images {
		if i.Image.Runtime == runtime {
			return i
		}
	}
	return agent.ImageStatus{}
}

func TestAgentMarksStaleWhenTheRegistryMovedOnButThePullFails(t *testing.T) {
	f := newFixture(t)
	seed := f.seed(t, []string{"codex"})
	path := plainFile(t, t.TempDir(), f.reg.Prefix(f.ns))
	r := startAgent(t, f.bed.DockerHost, path, map[string]string{config.KeyRuntimes: "codex"}, func(o *agent.Options) {
		o.RefreshInterval = 2 * time.Second
		o.Retry = agent.RetryPolicy{Initial: time.Minute, Max: time.Minute, Attempts: 1}
	})
	r.waitFor(t, "warm", 30*time.Second, warmOn(f.reg.Prefix(f.ns), seed))
	moved, err := f.bed.Push(ctxT(t), f.reg, f.ns, "codex", testbed.SeedOptions{})
	must(t, err)
	must(t, f.reg.DeleteBlob(moved.Layers[1])) // the new image cannot be pulled
	s := r.waitFor(t, "stale", 20*time.Second, func(s agent.Snapshot) bool { return len(s.Images) == 1 && s.Images[0].State == state.Stale })
	i := s.Images[0]
	if i.Digest != seed["codex"].Digest || i.RemoteDigest != moved.Digest {
		t.Fatalf("stale image: local %s remote %s, want local %s remote %s", i.Digest, i.RemoteDigest, seed["codex"].Digest, moved.Digest)
	}
	doc := r.a.Document()
	if doc.Images[0].State != state.Stale || doc.Healthy() {
		t.Fatalf("document: %+v healthy=%v", doc.Images[0], doc.Healthy())
	}
}

func TestAgentAliasFollowsTheImage(t *testing.T) {
	f := newFixture(t)
	regB := secondRegistry(t, f.bed)
	rts := []string{"langgraph", "codex"}
	seedA := f.seed(t, rts)
	seedB, err := f.bed.Seed(ctxT(t), regB, f.ns, rts, testbed.SeedOptions{})
	must(t, err)
	prefixA, prefixB := f.reg.Prefix(f.ns), regB.Prefix(f.ns)
	path := plainFile(t, t.TempDir(), prefixA)
	r := startAgent(t, f.bed.DockerHost, path, map[string]string{config.KeyRuntimes: strings.Join(rts, ",")}, func(o *agent.Options) { o.RefreshInterval = 2 * time.Second })
	r.waitFor(t, "warm on A", 30*time.Second, warmOn(prefixA, seedA))
	// The flip, with the old prefix as alias: software still asking for A finds B's images.
	must(t, os.WriteFile(path, []byte(config.KeyRegistry+"="+prefixB+"\n"+config.KeyAlias+"="+prefixA+"\n"), 0o644))
	s := r.waitFor(t, "warm on B", 20*time.Second, warmOn(prefixB, seedB))
	aliasID := func() string {
		info, err := f.engine.ImageInspect(ctxT(t), config.ImageRef(prefixA, "langgraph"))
		must(t, err)
		return info.ID
	}
	if id := aliasID(); id != statusOf(s, "langgraph").ImageID {
		t.Fatalf("%s resolves to %s, want B's image %s", config.ImageRef(prefixA, "langgraph"), id, statusOf(s, "langgraph").ImageID)
	}
	if d := r.a.Document(); d.Images[0].Alias != config.ImageRef(prefixA, d.Images[0].Runtime) {
		t.Errorf("status does not show the alias: %+v", d.Images[0])
	}
	// B's tag moves: after the next refresh the alias follows.
	moved, err := f.bed.Push(ctxT(t), regB, f.ns, "langgraph", testbed.SeedOptions{})
	must(t, err)
	s = r.waitFor(t, "the moved tag pulled", 20*time.Second, func(s agent.Snapshot) bool { return statusOf(s, "langgraph").Digest == moved.Digest })
	testbed.WaitFor(t, "the alias to follow the moved tag", 5*time.Second, func() bool { return aliasID() == statusOf(s, "langgraph").ImageID })
}

func TestAgentPrunesThePreviousPrefix(t *testing.T) {
	f := newFixture(t)
	regB := secondRegistry(t, f.bed)
	rts := []string{"autogen", "codex", "crewai"}
	seedA := f.seed(t, rts)
	seedB, err := f.bed.Seed(ctxT(t), regB, f.ns+"-prune", rts, testbed.SeedOptions{})
	must(t, err)
	// An image on the daemon the agent never pulled, under the same prefix.
	other, err := f.bed.Seed(ctxT(t), f.reg, f.ns, []string{"hermes"}, testbed.SeedOptions{})
	must(t, err)
	if rc, err := f.engine.ImagePull(ctxT(t), other["hermes"].Ref, engine.PullOptions{}); err == nil {
		io.Copy(io.Discard, rc)
		rc.Close()
	}
	prefixA, prefixB := f.reg.Prefix(f.ns), regB.Prefix(f.ns+"-prune")
	dir := t.TempDir()
	path := plainFile(t, dir, prefixA)
	r := startAgent(t, f.bed.DockerHost, path, map[string]string{config.KeyRuntimes: strings.Join(rts, ","), config.KeyPrune: "true"},
		func(o *agent.Options) { o.PulledFile = filepath.Join(dir, "pulled.json") })
	r.waitFor(t, "warm on A", 30*time.Second, warmOn(prefixA, seedA))
	// A stopped container uses A's codex image.
	_, err = testbed.CreateContainer(ctxT(t), f.bed.DockerHost, config.ImageRef(prefixA, "codex"))
	must(t, err)
	writeEnv(t, path, prefixB)
	r.waitFor(t, "warm on B", 20*time.Second, warmOn(prefixB, seedB))
	// A prune ends by dropping what it removed from the record of pulled
	// images.
	testbed.WaitFor(t, "the previous prefix pruned", 10*time.Second, func() bool {
		data, err := os.ReadFile(filepath.Join(dir, "pulled.json"))
		return err == nil && !strings.Contains(string(data), config.ImageRef(prefixA, "autogen")) &&
			!strings.Contains(string(data), config.ImageRef(prefixA, "crewai"))
	})
	present := func(ref string) bool {
		_, err := f.engine.ImageInspect(ctxT(t), ref)
		return err == nil
	}
	for _, rt := range []string{"autogen", "crewai"} {
		if present(config.ImageRef(prefixA, rt)) {
			t.Errorf("%s was not pruned", config.ImageRef(prefixA, rt))
		}
	}
	if !present(config.ImageRef(prefixA, "codex")) {
		t.Error("the image a stopped container uses was pruned")
	}
	if !present(other["hermes"].Ref) {
		t.Error("an image the agent never pulled was pruned")
	}
	for _, rt := range rts {
		if !present(config.ImageRef(prefixB, rt)) {
			t.Errorf("the current image %s is gone", rt)
		}
	}
	if !regexp.MustCompile(`msg="previous prefix pruned" component=agent images_removed=2 bytes_freed=[1-9]`).MatchString(r.logs.String()) {
		t.Errorf("prune log:\n%s", r.logs.String())
	}
}
