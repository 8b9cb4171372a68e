package agent

import (
	"bufio"
	"context"
	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/agent/state"
	"github.com/molecule-ai/pull-agent/internal/testbed"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// blockingEngine pulls every image at once but those of runtime slow,
// whose pulls run until they are cancelled.
func blockingEngine(slow string) *scriptEngine {
	return newScriptEngine(func(ref string, _ int) error {
		if strings.Contains(ref, slow) {
			return errHang
		}
		return nil
	})
}

// lifecycleAgent is an agent on a fake engine, with its env file, state
// file and record of pulled images in a temporary directory. run runs it
// as cmd does: with a Watcher of the env file, joined before run returns.
func lifecycleAgent(t *testing.T, e engine.Engine) (a *Agent, run func(context.Context) error) {
	t.Helper()
	dir := t.TempDir()
	env := filepath.Join(dir, "env")
	if err := os.WriteFile(env, []byte(config.KeyRegistry+"=r.test/x\n"+config.KeyRuntimes+"=codex,crewai,hermes\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	log := slog.New(slog.DiscardHandler)
	w, err := NewWatcher(env, 10*time.Millisecond, log)
	if err != nil {
		t.Fatal(err)
	}
	a, err = New(Options{
		EnvFile:       env,
		Changes:       w.Changes(),
		StateFile:     filepath.Join(dir, state.StateFileName),
		PulledFile:    filepath.Join(dir, "pulled.json"),
		Getenv:        func(string) string { return "" },
		NewEngine:     func(config.DockerEndpoint) (engine.Engine, error) { return e, nil },
		NewAuthorizer: func(config.Config) (pull.Authorizer, error) { return anonymous{}, nil },
		Logger:        log,
	})
	if err != nil {
		t.Fatal(err)
	}
	return a, func(ctx context.Context) error {
		if err := w.Start(); err != nil {
			return err
		}
		var watching sync.WaitGroup
		defer watching.Wait()
		watching.Go(func() { w.Run(ctx) })
		return a.Run(ctx)
	}
}

// baseline counts goroutines and file descriptors once the runtime's
// network poller exists (it lives as long as the process, with its fds).
func baseline(t *testing.T) state.Counts {
	t.Helper()
	ln, err := net.Listen("unix", filepath.Join(t.TempDir(), "warm.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	return ProcessCounts()
}

// noGoroutinesLeft fails t unless the goroutine count comes back to
// before's within a short wait (a goroutine that has signalled its end
// may still be on its way out), and shows what is still running.
func noGoroutinesLeft(t *testing.T, before state.Counts) {
	t.Helper()
	if testbed.Poll(2*time.Second, func() bool { return runtime.NumGoroutine() <= before.Goroutines }) {
		return
	}
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	t.Errorf("%d goroutines outlived Run, were %d:\n%s", runtime.NumGoroutine(), before.Goroutines, buf)
}

// Run and Serve return only once what they started has stopped: the env
// file watcher (its inotify descriptor closed), the pulls in flight, the
// status server and its connections, a silent client's included (the
// status server gives it a second, then closes it, instead of leaving it
// to the 5 s header timeout).
func TestRunAndServeLeaveNothingBehind(t *testing.T) {
	before := baseline(t)
	a, run := lifecycleAgent(t, blockingEngine("codex"))
	ln, err := ListenStatus(filepath.Join(t.TempDir(), "status.sock"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	ran, served := make(chan error, 1), make(chan struct{})
	go func() { a.Serve(ctx, ln, slog.New(slog.DiscardHandler)); close(served) }()
	go func() { ran <- run(ctx) }()

	silent, err := net.Dial("unix", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	inFlight := func() bool {
		for _, i := range a.Snapshot().Images {
			if i.Image.Runtime == "codex" && i.InFlight {
				return true
			}
		}
		return false
	}
	testbed.WaitFor(t, "the slow pull to start", 5*time.Second, inFlight)
	// The status server has accepted the silent client once it answers
	// the next one.
	if c, err := net.Dial("unix", ln.Addr().String()); err != nil {
		t.Fatal(err)
	} else {
		io.WriteString(c, "GET /status HTTP/1.0\r\n\r\n")
		b, _ := io.ReadAll(c)
		c.Close()
		if !strings.Contains(string(b), `"schema_version"`) {
			t.Fatalf("status answered %q", b)
		}
	}

	cancel()
	for name, done := range map[string]<-chan struct{}{"Serve": served, "Run": waitErr(t, ran)} {
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("%s did not return within 10 s of its cancellation", name)
		}
	}
	// At once, not after a wait: descriptors are closed before the
	// goroutines holding them are joined. The silent client holds one.
	if got := ProcessCounts().FDs; got > before.FDs+1 {
		t.Errorf("%d file descriptors open once Run and Serve returned, want %d (before) + 1 (the test's client):\n%s", got, before.FDs, openFDs())
	}
	noGoroutinesLeft(t, before)
}

// waitErr turns a result channel into a done channel, failing t on an
// error.
func waitErr(t *testing.T, ch <-chan error) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := <-ch; err != nil {
			t.Errorf("Run: %v", err)
		}
	}()
	return done
}

// openFDs lists what the process's descriptors point at.
func openFDs() string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var b strings.Builder
	for _, e := range ents {
		target, _ := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		b.WriteString(e.Name() + " → " + target + "\n")
	}
	return b.String()
}

// Starts and stops in a row, each cancelled at a random point of the
// start or of the pulls, with readers spinning on Snapshot, Document and
// the status socket: under -race, no race, no deadlock, nothing left open
// when Run and Serve return, and nothing left running at the end.
func TestRunStartStopCycles(t *testing.T) {
	before := baseline(t)
	e := blockingEngine("hermes")
	for i := range 100 {
		a, run := lifecycleAgent(t, e)
		ln, err := ListenStatus(filepath.Join(t.TempDir(), "status.sock"))
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		var running sync.WaitGroup
		for range 2 {
			running.Go(func() {
				for ctx.Err() == nil {
					_ = a.Snapshot()
					_ = a.Document()
				}
			})
		}
		// And one through the status socket, as 'pull-agent status' reads,
		// on a kept-alive connection.
		running.Go(func() {
			c, err := net.Dial("unix", ln.Addr().String())
			if err != nil {
				if ctx.Err() == nil { // not a socket already closed
					t.Error(err)
				}
				return
			}
			defer c.Close()
			br := bufio.NewReader(c)
			for ctx.Err() == nil {
				if _, err := io.WriteString(c, "GET /status HTTP/1.1\r\nHost: agent\r\n\r\n"); err != nil {
					return
				}
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					return // the server stopped
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
			}
		})
		running.Go(func() { a.Serve(ctx, ln, slog.New(slog.DiscardHandler)) })
		ran := make(chan error, 1)
		running.Go(func() { ran <- run(ctx) })
		time.Sleep(time.Duration(rand.IntN(8000)) * time.Microsecond)
		cancel()
		stopped := make(chan struct{})
		go func() { running.Wait(); close(stopped) }()
		select {
		case <-stopped:
		case <-time.After(10 * time.Second):
			t.Fatalf("cycle %d: Run or Serve did not return within 10 s of its cancellation", i)
		}
		if err := <-ran; err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		// At once: the watcher's inotify descriptor, the status socket
		// and every file written are closed before Run and Serve return.
		if got := ProcessCounts().FDs; got > before.FDs {
			t.Fatalf("cycle %d: %d file descriptors open once Run and Serve returned, want %d:\n%s", i, got, before.FDs, openFDs())
		}
	}
	noGoroutinesLeft(t, before)
}
