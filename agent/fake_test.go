package agent

import (
	"context"
	"io"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/auth"
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

// okStream is the stream of a successful pull of d.
func okStream(d digest.Digest) io.ReadCloser {
	return io.NopCloser(strings.NewReader(`{"status":"Pulling from x","id":"latest"}
{"status":"Pulling fs layer","progressDetail":{},"id":"aaa"}
{"status":"Downloading","progressDetail":{"current":50,"total":100},"id":"aaa"}
{"status":"Download complete","progressDetail":{},"id":"aaa"}
{"status":"Pull complete","progressDetail":{},"id":"aaa"}
{"status":"Digest: ` + d.String() + `"}
{"status":"Status: Downloaded newer image for x"}
`))
}

// digestOf gives every reference a stable fake digest.
func digestOf(ref string) digest.Digest {
	name, _, _ := strings.Cut(ref, ":latest")
	name, _, _ = strings.Cut(name, "@")
	return digest.FromString(name)
}

func repoOf(ref string) string {
	name, _, _ := strings.Cut(ref, ":latest")
	name, _, _ = strings.Cut(name, "@")
	return name
}

// goodEngine pulls and holds every image with digestOf(ref).
func goodEngine() *fakeEngine {
	return &fakeEngine{
		ping: func(context.Context) error { return nil },
		pull: func(_ context.Context, ref string, _ engine.PullOptions) (io.ReadCloser, error) {
			return okStream(digestOf(ref)), nil
		},
		inspect: func(_ context.Context, ref string) (engine.ImageInfo, error) {
			return engine.ImageInfo{ID: "sha256:id", RepoDigests: []string{repoOf(ref) + "@" + digestOf(ref).String()}, Size: 100}, nil
		},
	}
}
