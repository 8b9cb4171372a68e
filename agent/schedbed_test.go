package agent

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/engine/enginetest"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/auth"
)

// The scheduler tests run the agent in a testing/synctest bubble: time is
// virtual (it moves only when every goroutine of the bubble waits), so
// hours of backoff, cooldowns and refreshes take no real time, and
// synctest.Wait lets the loop finish what an event started.

// errHang makes a pull wait until it is cancelled.
var errHang = errors.New("hang until cancelled")

// scriptEngine is an Engine whose pulls follow a script and which records
// every call with its (virtual) time.
type scriptEngine struct {
	mu sync.Mutex
	// outcome is the result of the n-th pull (from 0) of ref: nil
	// succeeds, errHang waits for cancellation, any other error is what
	// the daemon answers. nil outcome: every pull succeeds.
	outcome func(ref string, n int) error
	// phases, if set, is how long a successful pull of ref resolves
	// before it names its layer, and then downloads (virtual time).
	phases  func(ref string) (resolve, download time.Duration)
	served  map[string]digest.Digest // repository → what the registry serves
	held    map[string]digest.Digest // ref → what the daemon holds
	pulls   []call
	remotes []call
	removed []string
	causes  map[string]error // ref → why its last hung pull was cancelled
	tags    []string
}

type call struct {
	ref string
	at  time.Time
}

func newScriptEngine(outcome func(ref string, n int) error) *scriptEngine {
	return &scriptEngine{outcome: outcome, served: map[string]digest.Digest{}, held: map[string]digest.Digest{}, causes: map[string]error{}}
}

// serves is what the registry serves for ref: a pin, or the repository's
// current digest.
func (e *scriptEngine) serves(ref string) digest.Digest {
	if _, d, ok := strings.Cut(ref, "@"); ok {
		return digest.Digest(d)
	}
	if d, ok := e.served[enginetest.RepoOf(ref)]; ok {
		return d
	}
	return enginetest.DigestOf(ref)
}

func (e *scriptEngine) ImagePull(ctx context.Context, ref string, _ engine.PullOptions) (io.ReadCloser, error) {
	e.mu.Lock()
	n := 0
	for _, c := range e.pulls {
		if c.ref == ref {
			n++
		}
	}
	e.pulls = append(e.pulls, call{ref, time.Now()})
	e.mu.Unlock()
	var err error
	if e.outcome != nil {
		err = e.outcome(ref, n)
	}
	switch {
	case errors.Is(err, errHang):
		<-ctx.Done()
		e.mu.Lock()
		e.causes[ref] = context.Cause(ctx)
		e.mu.Unlock()
		return nil, ctx.Err()
	case err != nil:
		return nil, err
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	d := e.serves(ref)
	e.held[ref] = d
	if e.phases != nil {
		resolve, download := e.phases(ref)
		return enginetest.PhasedStream(ctx, d, resolve, download), nil
	}
	return enginetest.OKStream(d), nil
}

func (e *scriptEngine) ImageInspect(_ context.Context, ref string) (engine.ImageInfo, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	d, ok := e.held[ref]
	if !ok {
		return engine.ImageInfo{}, fmt.Errorf("%w: %s", engine.ErrImageNotFound, ref)
	}
	return engine.ImageInfo{ID: "sha256:" + d.Encoded(), RepoDigests: []string{enginetest.RepoOf(ref) + "@" + d.String()}, Size: 100}, nil
}

func (e *scriptEngine) DistributionInspect(_ context.Context, ref string, _ auth.Credentials) (engine.RemoteInfo, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.remotes = append(e.remotes, call{ref, time.Now()})
	return engine.RemoteInfo{Digest: e.serves(ref)}, nil
}

func (e *scriptEngine) ImageRemove(_ context.Context, ref string) (engine.RemoveResult, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.removed = append(e.removed, ref)
	delete(e.held, ref)
	return engine.RemoveResult{}, nil
}

func (e *scriptEngine) Ping(context.Context) error                                 { return nil }
func (e *scriptEngine) ContainerImageIDs(context.Context) (map[string]bool, error) { return nil, nil }
func (e *scriptEngine) RootDir(context.Context) (string, error)                    { return "", nil }

// ImageTag names the held image whose ID is id target as well.
func (e *scriptEngine) ImageTag(_ context.Context, id, target string) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, d := range e.held {
		if "sha256:"+d.Encoded() == id {
			e.held[target] = d
			e.tags = append(e.tags, target)
			return nil
		}
	}
	return fmt.Errorf("%w: %s", engine.ErrImageNotFound, id)
}

// pullTimes are the times ref was pulled, as offsets from t0.
func (e *scriptEngine) pullTimes(ref string, t0 time.Time) []time.Duration {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []time.Duration
	for _, c := range e.pulls {
		if c.ref == ref {
			out = append(out, c.at.Sub(t0))
		}
	}
	return out
}

// scriptAuth is anonymous, but for the times when it says that
// credentials are temporarily unavailable (as a metadata service that does
// not answer makes ecr-login do).
type scriptAuth struct {
	unavailableUntil time.Time
}

func (s scriptAuth) Select(_ context.Context, host string) (auth.Selection, error) {
	if time.Now().Before(s.unavailableUntil) {
		return auth.Selection{}, fmt.Errorf("fetching a token for %s: %w", host, auth.ErrUnavailable)
	}
	return auth.Selection{Host: host, Source: auth.SourceAnonymous}, nil
}

// sched is an agent running on a scriptEngine in the current bubble.
type sched struct {
	t       *testing.T
	a       *Agent
	e       *scriptEngine
	env     string
	changes chan struct{}
	t0      time.Time
	stop    func()
}

const schedPrefix = "r.test/x"

// ref is the image of runtime rt under schedPrefix.
func ref(rt string) string { return config.ImageRef(schedPrefix, rt) }

// startSched starts an agent on e with the env file env. Call it inside
// synctest.Test and defer stop.
func startSched(t *testing.T, e *scriptEngine, env string, authz pull.Authorizer, mod func(*Options)) *sched {
	t.Helper()
	s := &sched{t: t, e: e, env: filepath.Join(t.TempDir(), "env"), changes: make(chan struct{}, 1), t0: time.Now()}
	s.write(env)
	if authz == nil {
		authz = anonymous{}
	}
	o := Options{
		EnvFile:         s.env,
		Changes:         s.changes,
		Getenv:          func(string) string { return "" },
		NewEngine:       func(config.DockerEndpoint) (engine.Engine, error) { return e, nil },
		NewAuthorizer:   func(config.Config) (pull.Authorizer, error) { return authz, nil },
		Logger:          slog.New(slog.DiscardHandler),
		RefreshInterval: time.Hour,
		Retry:           RetryPolicy{Initial: time.Second, Max: 8 * time.Second, Attempts: 5},
		Random:          func() float64 { return 0.5 },
	}
	if mod != nil {
		mod(&o)
	}
	a, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	s.a = a
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	s.stop = func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	}
	synctest.Wait()
	return s
}

// write replaces the env file; change also tells the agent.
func (s *sched) write(env string) {
	s.t.Helper()
	if err := os.WriteFile(s.env, []byte(env), 0o600); err != nil {
		s.t.Fatal(err)
	}
}

func (s *sched) change(env string) {
	s.write(env)
	s.changes <- struct{}{}
	synctest.Wait()
}

// after lets d of virtual time pass and the agent act on it.
func (s *sched) after(d time.Duration) {
	time.Sleep(d)
	synctest.Wait()
}

// status is the image of runtime rt as the agent publishes it.
func (s *sched) status(rt string) ImageStatus {
	s.t.Helper()
	for _, i := range s.a.Snapshot().Images {
		if i.Image.Runtime == rt {
			return i
		}
	}
	s.t.Fatalf("no image of runtime %s in the snapshot", rt)
	return ImageStatus{}
}

// envOf is an env file for runtimes under schedPrefix, with extra lines.
func envOf(runtimes string, extra ...string) string {
	s := config.KeyRegistry + "=" + schedPrefix + "\n" + config.KeyRuntimes + "=" + runtimes + "\n"
	for _, e := range extra {
		s += e + "\n"
	}
	return s
}

// topOfRange is the largest value Random may return.
const topOfRange = 1 - 1e-12
