package pull

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"reflect"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/engine/enginetest"
	"github.com/molecule-ai/pull-agent/auth"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// fakeEngine is an Engine whose behaviour each test sets.
type fakeEngine struct {
	ping    func(ctx context.Context) error
	pull    func(ctx context.Context, ref string, opts engine.PullOptions) (io.ReadCloser, error)
	inspect func(ctx context.Context, ref string) (engine.ImageInfo, error)
	remote  func(ctx context.Context, ref string) (engine.RemoteInfo, error)
}

func (f *fakeEngine) ImageTag(context.Context, string, string) error { return nil }
func (f *fakeEngine) ImageRemove(context.Context, string) (engine.RemoveResult, error) {
	return engine.RemoveResult{}, nil
}
func (f *fakeEngine) ContainerImageIDs(context.Context) (map[string]bool, error) { return nil, nil }
func (f *fakeEngine) RootDir(context.Context) (string, error)                    { return "", nil }

func (f *fakeEngine) DistributionInspect(ctx context.Context, ref string, _ auth.Credentials) (engine.RemoteInfo, error) {
	return f.remote(ctx, ref)
}

var _ engine.Engine = (*fakeEngine)(nil)

func (f *fakeEngine) Ping(ctx context.Context) error { return f.ping(ctx) }
func (f *fakeEngine) ImagePull(ctx context.Context, ref string, opts engine.PullOptions) (io.ReadCloser, error) {
	return f.pull(ctx, ref, opts)
}
func (f *fakeEngine) ImageInspect(ctx context.Context, ref string) (engine.ImageInfo, error) {
	return f.inspect(ctx, ref)
}

// goodEngine pulls and holds every image with enginetest.DigestOf(ref).
func goodEngine() *fakeEngine {
	return &fakeEngine{
		ping: func(context.Context) error { return nil },
		pull: func(_ context.Context, ref string, _ engine.PullOptions) (io.ReadCloser, error) {
			return enginetest.OKStream(enginetest.DigestOf(ref)), nil
		},
		inspect: func(_ context.Context, ref string) (engine.ImageInfo, error) {
			return engine.ImageInfo{ID: "sha256:id", RepoDigests: []string{enginetest.RepoOf(ref) + "@" + enginetest.DigestOf(ref).String()}, Size: 100}, nil
		},
	}
}

func testImages(t *testing.T, prefix string, runtimes ...string) []config.Image {
	t.Helper()
	env := map[string]string{config.KeyRegistry: prefix}
	if len(runtimes) > 0 {
		env[config.KeyRuntimes] = strings.Join(runtimes, ",")
	}
	return mustImages(t, mustLoad(t, nil, env))
}

func newTestPuller(t *testing.T, e engine.Engine, opts auth.Options, po PullerOptions) *Puller {
	t.Helper()
	sel, err := auth.NewSelector(opts)
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewPuller(e, sel, slog.New(slog.NewTextHandler(io.Discard, nil)), po)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestPullSuccess(t *testing.T) {
	imgs := testImages(t, "ghcr.io/molecule-ai")
	var finished atomic.Int32
	obs := &recordingObserver{onFinish: func(PullResult) { finished.Add(1) }}
	res := newTestPuller(t, goodEngine(), auth.Options{}, PullerOptions{}).PullAll(context.Background(), imgs, obs)
	for i, r := range res {
		if r.Image.Runtime != imgs[i].Runtime {
			t.Fatalf("results out of order: %d is %s", i, r.Image.Runtime)
		}
		if r.Err != nil || r.Digest != enginetest.DigestOf(r.Image.Ref) || r.Bytes != 100 {
			t.Errorf("%s: %+v", r.Image.Runtime, r)
		}
	}
	if finished.Load() != 9 {
		t.Errorf("observer saw %d finishes", finished.Load())
	}
}

func TestPullStreamErrorIsAFailure(t *testing.T) {
	e := goodEngine()
	e.pull = func(context.Context, string, engine.PullOptions) (io.ReadCloser, error) {
		// The SDK call succeeds; the failure is inside the stream.
		return io.NopCloser(strings.NewReader(`{"status":"Pulling fs layer","id":"a"}` + "\n" + `{"errorDetail":{"message":"unknown blob"},"error":"unknown blob"}`)), nil
	}
	e.inspect = func(context.Context, string) (engine.ImageInfo, error) {
		t.Fatal("a failed stream must not be verified as a success")
		return engine.ImageInfo{}, nil
	}
	r := newTestPuller(t, e, auth.Options{}, PullerOptions{}).Pull(context.Background(), testImages(t, "ghcr.io/x", "codex")[0], nil)
	if r.Err == nil || ClassOf(r.Err) != ClassServer || !strings.Contains(r.Err.Error(), "unknown blob") {
		t.Fatalf("got %v (%s)", r.Err, ClassOf(r.Err))
	}
}

func TestPullVerification(t *testing.T) {
	pin := digest.FromString("pinned")
	tests := []struct {
		name    string
		pins    string
		stream  func(ref string) io.ReadCloser
		inspect func(ref string) (engine.ImageInfo, error)
		want    string
	}{
		{
			name:   "daemon holds another digest",
			stream: func(ref string) io.ReadCloser { return enginetest.OKStream(enginetest.DigestOf(ref)) },
			inspect: func(ref string) (engine.ImageInfo, error) {
				return engine.ImageInfo{ID: "sha256:old", RepoDigests: []string{enginetest.RepoOf(ref) + "@" + digest.FromString("old").String()}}, nil
			},
			want: "none is",
		},
		{
			name:   "right digest under another repository",
			stream: func(ref string) io.ReadCloser { return enginetest.OKStream(enginetest.DigestOf(ref)) },
			inspect: func(ref string) (engine.ImageInfo, error) {
				return engine.ImageInfo{RepoDigests: []string{"ghcr.io/other/workspace-template-codex@" + enginetest.DigestOf(ref).String()}}, nil
			},
			want: "none is",
		},
		{
			name:    "image missing after success",
			stream:  func(ref string) io.ReadCloser { return enginetest.OKStream(enginetest.DigestOf(ref)) },
			inspect: func(ref string) (engine.ImageInfo, error) { return engine.ImageInfo{}, engine.ErrImageNotFound },
			want:    "not in the daemon",
		},
		{
			name: "no digest reported",
			stream: func(string) io.ReadCloser {
				return io.NopCloser(strings.NewReader(`{"status":"Status: Downloaded newer image for x"}`))
			},
			inspect: func(ref string) (engine.ImageInfo, error) { return engine.ImageInfo{}, nil },
			want:    "did not report the manifest digest",
		},
		{
			name:    "pin differs from the served digest",
			pins:    "codex=" + pin.String(),
			stream:  func(string) io.ReadCloser { return enginetest.OKStream(digest.FromString("other")) },
			inspect: func(ref string) (engine.ImageInfo, error) { return engine.ImageInfo{}, nil },
			want:    "not the pinned",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := goodEngine()
			e.pull = func(_ context.Context, ref string, _ engine.PullOptions) (io.ReadCloser, error) {
				return tt.stream(ref), nil
			}
			e.inspect = func(_ context.Context, ref string) (engine.ImageInfo, error) { return tt.inspect(ref) }
			imgs := mustImages(t, mustLoad(t, nil, map[string]string{config.KeyRuntimes: "codex", config.KeyPins: tt.pins}))
			r := newTestPuller(t, e, auth.Options{}, PullerOptions{}).Pull(context.Background(), imgs[0], nil)
			if ClassOf(r.Err) != ClassVerify || !strings.Contains(r.Err.Error(), tt.want) {
				t.Fatalf("got %v (%s), want verify error with %q", r.Err, ClassOf(r.Err), tt.want)
			}
		})
	}
}

func TestPullPinnedVerifiesThePin(t *testing.T) {
	pin := digest.FromString("pinned")
	e := goodEngine()
	var pulled string
	e.pull = func(_ context.Context, ref string, _ engine.PullOptions) (io.ReadCloser, error) {
		pulled = ref
		return enginetest.OKStream(pin), nil
	}
	e.inspect = func(_ context.Context, ref string) (engine.ImageInfo, error) {
		return engine.ImageInfo{RepoDigests: []string{enginetest.RepoOf(ref) + "@" + pin.String()}}, nil
	}
	imgs := mustImages(t, mustLoad(t, nil, map[string]string{config.KeyRuntimes: "codex", config.KeyPins: "codex=" + pin.String()}))
	r := newTestPuller(t, e, auth.Options{}, PullerOptions{}).Pull(context.Background(), imgs[0], nil)
	if r.Err != nil || r.Digest != pin || pulled != "ghcr.io/molecule-ai/workspace-template-codex@"+pin.String() {
		t.Fatalf("err %v digest %s pulled %s", r.Err, r.Digest, pulled)
	}
}

// Once the caller cancels, no further pull reaches the daemon: the first
// (in flight) ends canceled, the other eight are canceled without starting.
func TestPullCanceledBeforeStart(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	e := goodEngine()
	// Nothing held: every image is a download, one worker at a time.
	e.inspect = func(context.Context, string) (engine.ImageInfo, error) {
		return engine.ImageInfo{}, engine.ErrImageNotFound
	}
	var mu sync.Mutex
	var started []string
	e.pull = func(ctx context.Context, ref string, _ engine.PullOptions) (io.ReadCloser, error) {
		mu.Lock()
		started = append(started, ref)
		mu.Unlock()
		cancel()
		<-ctx.Done()
		return nil, ctx.Err()
	}
	imgs := testImages(t, "ghcr.io/x")
	res := newTestPuller(t, e, auth.Options{}, PullerOptions{Concurrency: 1}).PullAll(ctx, imgs, nil)
	if len(started) != 1 || started[0] != imgs[0].Ref {
		t.Errorf("pulls started: %q; want only %s, the one in flight when the caller cancelled", started, imgs[0].Ref)
	}
	if len(res) != len(imgs) {
		t.Fatalf("%d results for %d images", len(res), len(imgs))
	}
	for i, r := range res {
		if ClassOf(r.Err) != ClassCanceled || (i > 0) != strings.Contains(r.Err.Error(), "not started") {
			t.Errorf("%s: %v (%s)", r.Image.Runtime, r.Err, ClassOf(r.Err))
		}
	}
}

func TestCredentialsGoToGHCROnly(t *testing.T) {
	opts := auth.Options{GHCRUser: "bot", GHCRToken: auth.NewSecret("tok")}
	for _, tt := range []struct {
		prefix   string
		wantUser string
		wantSrc  auth.Source
	}{
		{"ghcr.io/molecule-ai", "bot", auth.SourceGHCREnv},
		{"registry.example.test/m", "", auth.SourceAnonymous},
		{"ghcr.io.evil.test/molecule-ai", "", auth.SourceAnonymous},
		{"127.0.0.1:5000/molecule-ai", "", auth.SourceAnonymous},
	} {
		t.Run(tt.prefix, func(t *testing.T) {
			e := goodEngine()
			var mu sync.Mutex
			sent := map[string]auth.Credentials{}
			e.pull = func(_ context.Context, ref string, o engine.PullOptions) (io.ReadCloser, error) {
				mu.Lock()
				sent[ref] = o.Credentials
				mu.Unlock()
				return enginetest.OKStream(enginetest.DigestOf(ref)), nil
			}
			for _, r := range newTestPuller(t, e, opts, PullerOptions{}).PullAll(context.Background(), testImages(t, tt.prefix), nil) {
				if r.Err != nil || r.Source != tt.wantSrc {
					t.Errorf("%s: err %v source %s", r.Image.Runtime, r.Err, r.Source)
				}
				c := sent[r.Image.Ref]
				if c.Username != tt.wantUser || (tt.wantUser == "") != c.Anonymous() {
					t.Errorf("%s: sent %+v", r.Image.Ref, c)
				}
			}
		})
	}
}

type recordingObserver struct {
	NopObserver
	onFinish func(PullResult)
}

func (o *recordingObserver) PullFinished(r PullResult) { o.onFinish(r) }

type progressObserver struct {
	NopObserver
	onProgress func(engine.Progress)
}

func (o *progressObserver) PullProgress(_ config.Image, p engine.Progress) { o.onProgress(p) }

func TestPullStalledStreamIsCut(t *testing.T) {
	e := goodEngine()
	e.pull = func(ctx context.Context, ref string, _ engine.PullOptions) (io.ReadCloser, error) {
		pr, pw := io.Pipe()
		go func() {
			pw.Write([]byte(`{"status":"Downloading","progressDetail":{"current":10,"total":100},"id":"a"}` + "\n"))
			<-ctx.Done() // the daemon sends nothing more until the client goes
			pw.CloseWithError(ctx.Err())
		}()
		return pr, nil
	}
	img := testImages(t, "ghcr.io/x", "codex")[0]
	p := newTestPuller(t, e, auth.Options{}, PullerOptions{Timeouts: PullTimeouts{Stall: 200 * time.Millisecond}})
	r := p.Pull(context.Background(), img, nil)
	if ClassOf(r.Err) != ClassStalled || !strings.Contains(r.Err.Error(), "no new bytes") {
		t.Fatalf("got %v (%s), want stalled", r.Err, ClassOf(r.Err))
	}

	// The caller's cancellation, once bytes flowed, is not a stall.
	ctx, cancel := context.WithCancel(context.Background())
	obs := &progressObserver{onProgress: func(engine.Progress) { cancel() }}
	p = newTestPuller(t, e, auth.Options{}, PullerOptions{Timeouts: PullTimeouts{Stall: time.Hour}})
	if r := p.Pull(ctx, img, obs); ClassOf(r.Err) != ClassCanceled {
		t.Fatalf("got %v (%s), want canceled", r.Err, ClassOf(r.Err))
	}
}

func TestRefreshesOfHeldImagesGetAWiderPool(t *testing.T) {
	var inFlight, peak atomic.Int32
	release := make(chan struct{})
	e := goodEngine() // the daemon holds every image: all refreshes
	e.pull = func(ctx context.Context, ref string, _ engine.PullOptions) (io.ReadCloser, error) {
		defer enter(&inFlight, &peak)()
		<-release
		return enginetest.OKStream(enginetest.DigestOf(ref)), nil
	}
	done := make(chan []PullResult)
	go func() {
		done <- newTestPuller(t, e, auth.Options{}, PullerOptions{Concurrency: 2}).PullAll(context.Background(), testImages(t, "ghcr.io/x"), nil)
	}()
	want := int32(2 * RefreshConcurrencyFactor)
	testbed.WaitFor(t, fmt.Sprintf("%d refreshes in flight", want), 5*time.Second, func() bool { return inFlight.Load() >= want })
	time.Sleep(20 * time.Millisecond) // a fixed wait: room for a refresh beyond the bound to start
	close(release)
	for _, r := range <-done {
		if r.Err != nil {
			t.Fatal(r.Err)
		}
	}
	if got := peak.Load(); got != want {
		t.Fatalf("peak %d refreshes at once, want %d (concurrency 2 × %d)", got, want, RefreshConcurrencyFactor)
	}
}

// enter counts a call in flight and records the peak; call the result on
// the way out.
func enter(inFlight, peak *atomic.Int32) (leave func()) {
	cur := inFlight.Add(1)
	for {
		p := peak.Load()
		if cur <= p || peak.CompareAndSwap(p, cur) {
			break
		}
	}
	return func() { inFlight.Add(-1) }
}

func envOf(m map[string]string) func(string) string {
	return func(k string) string { return m[k] }
}

func mustLoad(t *testing.T, file []config.EnvVar, env map[string]string) config.Config {
	t.Helper()
	cfg, err := config.LoadConfig("test.env", file, envOf(env))
	if err != nil {
		t.Fatalf("LoadConfig: %v", err)
	}
	return cfg
}

func mustImages(t *testing.T, cfg config.Config) []config.Image {
	t.Helper()
	imgs, err := cfg.Images()
	if err != nil {
		t.Fatal(err)
	}
	return imgs
}

// The resolver rules of the original RegistryPrefix/RuntimeImages, which
// are the contract.

// The platform and the puller options come from a Config in one place,
// for the agent, pull and check alike.
func TestTargetPlatformAndPullerOptions(t *testing.T) {
	timeouts := PullTimeouts{Stall: time.Minute}
	for _, tt := range []struct {
		name     string
		env      map[string]string
		platform string
		want     PullerOptions
	}{
		{"defaults", nil, "linux/" + runtime.GOARCH,
			PullerOptions{Concurrency: 2, Timeouts: timeouts, DiskGuard: true, DiskMargin: config.DefaultDiskMarginMB << 20}},
		{"a platform, the guard off", map[string]string{config.KeyPlatform: "linux/arm64/v8", config.KeyDiskMargin: "-1"}, "linux/arm64/v8",
			PullerOptions{Concurrency: 2, Timeouts: timeouts, Platform: "linux/arm64/v8"}},
		{"another margin", map[string]string{config.KeyDiskMargin: "0"}, "linux/" + runtime.GOARCH,
			PullerOptions{Concurrency: 2, Timeouts: timeouts, DiskGuard: true}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := mustLoad(t, nil, tt.env)
			if got := cfg.TargetPlatform(); got != tt.platform {
				t.Errorf("TargetPlatform() = %q, want %q", got, tt.platform)
			}
			if got := OptionsFor(cfg, 2, timeouts); !reflect.DeepEqual(got, tt.want) {
				t.Errorf("PullerOptions = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestClassify(t *testing.T) {
	tests := []struct {
		msg  string
		want ErrorClass
	}{
		{`Error response from daemon: Head "https://ghcr.io/v2/x/manifests/latest": unauthorized`, ClassAuth},
		{"Error response from daemon: Get https://x/v2/: no basic auth credentials", ClassAuth},
		// Docker 26's containerd image store
		{`Error response from daemon: failed to resolve reference "127.0.0.1:5000/x:latest": unexpected status from HEAD request to http://127.0.0.1:5000/v2/x/manifests/latest: 403 Forbidden`, ClassAuth},
		{"Error response from daemon: pull access denied for x, repository does not exist or may require 'docker login': denied: requested access to the resource is denied", ClassAuth},
		{"Error response from daemon: manifest for x:latest not found: manifest unknown: manifest unknown", ClassNotFound},
		{"toomanyrequests: You have reached your pull rate limit", ClassRateLimited},
		{`Get "https://127.0.0.1:1/v2/": dial tcp 127.0.0.1:1: connect: connection refused`, ClassNetwork},
		{`Error response from daemon: Get "http://127.0.0.1:5000/v2/": EOF`, ClassNetwork}, // connection closed, no answer (soak)
		{`Get "http://127.0.0.1:5000/v2/x/blobs/sha256:aa": write tcp 127.0.0.1:1->127.0.0.1:2: write: broken pipe`, ClassNetwork},
		{"Error response from daemon: error creating temporary lease: grpc: the client connection is closing: context canceled", ClassDaemon}, // dockerd stopping (soak)
		{"write /var/lib/docker/tmp/x: no space left on device", ClassDisk},
		{"received unexpected HTTP status: 503 Service Unavailable", ClassServer},
		{"something else entirely", ClassUnknown},
	}
	for _, tt := range tests {
		if got := classify(errors.New(tt.msg)); got != tt.want {
			t.Errorf("classify(%q) = %s, want %s", tt.msg, got, tt.want)
		}
	}
	if got := classify(engine.ErrDaemonUnreachable); got != ClassDaemon {
		t.Errorf("daemon unreachable: %s", got)
	}
	// What DecodeStream returns for testdata/streams/blob-missing.jsonl.
	if got := classify(&engine.StreamError{Message: "unknown blob"}); got != ClassServer {
		t.Errorf("a stream error: %s", got)
	}
}
