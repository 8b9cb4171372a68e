package agent

import (
	"context"
	"log/slog"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/auth"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

func TestBackoffIsFullJitterUnderADoublingCap(t *testing.T) {
	p := RetryPolicy{Initial: time.Second, Max: 8 * time.Second}
	caps := map[int]time.Duration{1: time.Second, 2: 2 * time.Second, 3: 4 * time.Second, 4: 8 * time.Second, 10: 8 * time.Second}
	for n, ceil := range caps {
		var lo, hi time.Duration = ceil, 0
		for range 2000 {
			d := backoff(p, n, rand.Float64)
			if d < 0 || d > ceil {
				t.Fatalf("try %d: delay %s outside [0, %s]", n, d, ceil)
			}
			lo, hi = min(lo, d), max(hi, d)
		}
		// Full jitter spreads over the whole range.
		if lo > ceil/10 || hi < ceil*9/10 {
			t.Errorf("try %d: delays only in [%s, %s] of [0, %s]", n, lo, hi, ceil)
		}
	}
}

func TestEqualJitterHasAFloor(t *testing.T) {
	p := RetryPolicy{Initial: 30 * time.Second, Max: 10 * time.Minute}
	for n, ceil := range map[int]time.Duration{1: 30 * time.Second, 3: 2 * time.Minute, 20: 10 * time.Minute} {
		for range 1000 {
			if d := equalJitter(p, n, rand.Float64); d < ceil/2 || d > ceil {
				t.Fatalf("strike %d: %s outside [%s, %s]", n, d, ceil/2, ceil)
			}
		}
	}
}

func TestRetryAfterInMessage(t *testing.T) {
	for msg, want := range map[string]time.Duration{
		"toomanyrequests: slow down":              0,
		"toomanyrequests: retry after 12 seconds": 12 * time.Second,
		`toomanyrequests: {"Retry-After": "30"}`:  30 * time.Second,
		"toomanyrequests: Retry-After: 999999":    0,
		"toomanyrequests: please retry-after=5":   5 * time.Second,
	} {
		got, ok := retryAfter(msg)
		if got != want || ok != (want > 0) {
			t.Errorf("retryAfter(%q) = %s %v, want %s", msg, got, ok, want)
		}
	}
}

func TestJitterStaysWithinTenPercent(t *testing.T) {
	l := &loop{opts: Options{Random: rand.Float64}}
	for range 1000 {
		d := l.jitter(15 * time.Minute)
		if d < 810*time.Second || d > 990*time.Second {
			t.Fatalf("jitter gave %s", d)
		}
	}
}

// The status socket serves Snapshot before Run starts and while it sets
// up: readers must share nothing with the loop but the published view.
// The race detector sees a shared write only when a read falls near it,
// so the start is repeated with readers spinning.
func TestSnapshotWhileRunStarts(t *testing.T) {
	env := filepath.Join(t.TempDir(), "env")
	if err := os.WriteFile(env, []byte(config.KeyRegistry+"=r.test/x\n"+config.KeyRuntimes+"=codex\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	e := newScriptEngine(nil)
	for range 100 {
		a := newTestAgent(t, env, e, nil)
		ctx, cancel := context.WithCancel(context.Background())
		var readers sync.WaitGroup
		for range 2 {
			readers.Go(func() {
				for ctx.Err() == nil {
					_ = a.Document()
				}
			})
		}
		done := make(chan error, 1)
		go func() { done <- a.Run(ctx) }()
		// Readers spin through all of Run's setup: it ends with the first
		// refresh scheduled.
		testbed.WaitFor(t, "Run to schedule the first refresh", 10*time.Second, func() bool { return !a.Snapshot().NextRefresh.IsZero() })
		cancel()
		readers.Wait()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
}

// newTestAgent is an agent on e reading env, told of its changes on
// changes, logging nowhere.
func newTestAgent(t *testing.T, env string, e engine.Engine, changes <-chan struct{}) *Agent {
	t.Helper()
	a, err := New(Options{
		EnvFile:       env,
		Changes:       changes,
		Getenv:        func(string) string { return "" },
		NewEngine:     func(config.DockerEndpoint) (engine.Engine, error) { return e, nil },
		NewAuthorizer: func(config.Config) (pull.Authorizer, error) { return anonymous{}, nil },
		Logger:        slog.New(slog.DiscardHandler),
	})
	if err != nil {
		t.Fatal(err)
	}
	return a
}

type anonymous struct{}

func (anonymous) Select(_ context.Context, host string) (auth.Selection, error) {
	return auth.Selection{Host: host, Source: auth.SourceAnonymous}, nil
}

// A status request never waits for the disk: while the agent reads its env
// file (here a FIFO that a writer holds open, as a hung network file system
// would), Snapshot and Document answer.
func TestStatusDoesNotWaitForTheEnvFile(t *testing.T) {
	dir := t.TempDir()
	env := filepath.Join(dir, "env")
	if err := os.WriteFile(env, []byte(config.KeyRegistry+"=r.test/x\n"+config.KeyRuntimes+"=codex\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	changes := make(chan struct{}, 1)
	a := newTestAgent(t, env, newScriptEngine(nil), changes)
	ctx, cancel := context.WithCancel(context.Background())
	ran := make(chan error, 1)
	go func() { ran <- a.Run(ctx) }()
	prefix := func() string {
		if c := a.Snapshot().Config; c != nil {
			return c.Prefix
		}
		return ""
	}
	waitPrefix := func(want string) {
		t.Helper()
		testbed.WaitFor(t, "prefix "+want, 5*time.Second, func() bool { return prefix() == want })
	}
	waitPrefix("r.test/x")

	// The env file becomes a FIFO: the agent's next read blocks until
	// something writes to it.
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(fifo, env); err != nil {
		t.Fatal(err)
	}
	// writer opens the writing end once the agent has opened the FIFO;
	// the agent then waits in read until it is closed.
	writer := func() (*os.File, error) { return os.OpenFile(env, os.O_WRONLY|syscall.O_NONBLOCK, 0) }
	var w *os.File
	changes <- struct{}{}
	testbed.WaitFor(t, "the agent to open the env file after it changed", 5*time.Second, func() bool {
		var err error
		w, err = writer()
		return err == nil
	})
	// Whatever happens below, every later read of the FIFO ends (on an
	// empty file, which is refused), so that Run can stop.
	defer func() {
		cancel()
		for {
			select {
			case err := <-ran:
				if err != nil {
					t.Error(err)
				}
				return
			case <-time.After(5 * time.Millisecond):
				if f, err := writer(); err == nil {
					f.Close()
				}
			}
		}
	}()

	answered := make(chan struct{})
	go func() { a.Snapshot(); a.Document(); close(answered) }()
	select {
	case <-answered:
	case <-time.After(2 * time.Second):
		w.Close() // the agent reads an empty file and lets go of the lock
		<-answered
		t.Fatal("a status request waited for the agent to read the env file")
	}
	if _, err := w.WriteString(config.KeyRegistry + "=r.test/y\n" + config.KeyRuntimes + "=codex\n"); err != nil {
		t.Fatal(err)
	}
	w.Close()
	waitPrefix("r.test/y")
}
