package pull_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/auth"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

var bed testbed.Shared

func TestMain(m *testing.M) {
	// No test may reach the EC2 instance metadata service.
	os.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	os.Exit(bed.Main(m))
}

// fixture is a namespace of its own in the bed's main registry, so tests
// never see each other's images.
type fixture struct {
	bed    *testbed.Bed
	reg    *testbed.Registry
	ns     string
	engine *engine.DockerEngine
}

func newFixture(t *testing.T) *fixture {
	t.Helper()
	b := bed.Get(t)
	e, err := engine.NewDockerEngine(config.DockerEndpoint{Host: b.DockerHost})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	ns := strings.ToLower(strings.NewReplacer("/", "-", "_", "-").Replace(t.Name()))
	return &fixture{bed: b, reg: b.Registry("main"), ns: ns, engine: e}
}

func (f *fixture) seed(t *testing.T, runtimes []string) map[string]testbed.Seeded {
	t.Helper()
	s, err := f.bed.Seed(context.Background(), f.reg, f.ns, runtimes, testbed.SeedOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// images resolves the image set for env (the prefix defaults to the
// fixture's namespace).
func (f *fixture) images(t *testing.T, env map[string]string) []config.Image {
	t.Helper()
	if _, ok := env[config.KeyRegistry]; !ok {
		env[config.KeyRegistry] = f.reg.Prefix(f.ns)
	}
	cfg, err := config.LoadConfig("test.env", nil, func(k string) string { return env[k] })
	if err != nil {
		t.Fatal(err)
	}
	imgs, err := cfg.Images()
	if err != nil {
		t.Fatal(err)
	}
	return imgs
}

func (f *fixture) puller(t *testing.T, opts auth.Options, po pull.PullerOptions) *pull.Puller {
	t.Helper()
	sel, err := auth.NewSelector(opts)
	if err != nil {
		t.Fatal(err)
	}
	p, err := pull.NewPuller(f.engine, sel, slog.New(slog.NewTextHandler(io.Discard, nil)), po)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	t.Cleanup(cancel)
	return ctx
}

func TestPullAllNineVerifiedByDigest(t *testing.T) {
	f := newFixture(t)
	seeded := f.seed(t, config.KnownRuntimes())
	imgs := f.images(t, map[string]string{})
	if len(imgs) != 9 {
		t.Fatalf("resolved %d images, want 9", len(imgs))
	}
	results := f.puller(t, auth.Options{}, pull.PullerOptions{}).PullAll(ctxT(t), imgs, nil)
	for _, r := range results {
		if r.Err != nil {
			t.Errorf("%s: %v", r.Image.Runtime, r.Err)
			continue
		}
		want := seeded[r.Image.Runtime].Digest
		if r.Digest != want {
			t.Errorf("%s: digest %s, registry serves %s", r.Image.Runtime, r.Digest, want)
		}
		info, err := f.engine.ImageInspect(ctxT(t), r.Image.Ref)
		if err != nil {
			t.Fatalf("%s: %v", r.Image.Runtime, err)
		}
		if !slices.Contains(info.RepoDigests, r.Image.Repository()+"@"+want.String()) {
			t.Errorf("%s: RepoDigests %v lack %s", r.Image.Runtime, info.RepoDigests, want)
		}
		// Each seeded image is a shared 1 MiB base plus its own 256 KiB
		// layer (compressed a little larger, being random); the base
		// counts for the pulls that downloaded it. The containerd image
		// store reports the size only of a layer still downloading at one
		// of its 100 ms polls; on loopback most finish sooner, so it may
		// report nothing at all.
		low := int64(256 << 10)
		if f.bed.ContainerdStore() {
			low = 0
		}
		if r.Bytes < low || r.Bytes > 2<<20 {
			t.Errorf("%s: a first pull reported %d bytes downloaded, want %d to 2 MiB", r.Image.Runtime, r.Bytes, low)
		}
	}
	// A second pull finds everything up to date.
	for _, r := range f.puller(t, auth.Options{}, pull.PullerOptions{}).PullAll(ctxT(t), imgs, nil) {
		if r.Err != nil || !r.UpToDate {
			t.Errorf("%s: second pull: err=%v up_to_date=%v", r.Image.Runtime, r.Err, r.UpToDate)
		}
	}
}

func TestPullMovedTagIsPulledAnew(t *testing.T) {
	f := newFixture(t)
	old := f.seed(t, []string{"codex"})["codex"]
	imgs := f.images(t, map[string]string{config.KeyRuntimes: "codex"})
	p := f.puller(t, auth.Options{}, pull.PullerOptions{})
	if r := p.Pull(ctxT(t), imgs[0], nil); r.Err != nil || r.Digest != old.Digest {
		t.Fatalf("first pull: digest %s err %v, want %s", r.Digest, r.Err, old.Digest)
	}
	moved, err := f.bed.Push(ctxT(t), f.reg, f.ns, "codex", testbed.SeedOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if moved.Digest == old.Digest {
		t.Fatal("the pushed image has the old digest")
	}
	r := p.Pull(ctxT(t), imgs[0], nil)
	if r.Err != nil {
		t.Fatal(r.Err)
	}
	if r.Digest != moved.Digest || r.UpToDate {
		t.Fatalf("after the tag moved: digest %s up_to_date %v, want %s pulled anew", r.Digest, r.UpToDate, moved.Digest)
	}
	info, err := f.engine.ImageInspect(ctxT(t), imgs[0].Ref)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(info.RepoDigests, imgs[0].Repository()+"@"+moved.Digest.String()) {
		t.Fatalf("tag now points at an image with RepoDigests %v, want %s", info.RepoDigests, moved.Digest)
	}
}

func TestPullOneMissingImageFailsAloneAndIsNamed(t *testing.T) {
	f := newFixture(t)
	all := config.KnownRuntimes()
	f.seed(t, slices.DeleteFunc(slices.Clone(all), func(s string) bool { return s == "hermes" }))
	results := f.puller(t, auth.Options{}, pull.PullerOptions{}).PullAll(ctxT(t), f.images(t, map[string]string{}), nil)
	for _, r := range results {
		switch {
		case r.Image.Runtime == "hermes":
			if r.Err == nil {
				t.Fatal("hermes is not in the registry but its pull succeeded")
			}
			t.Logf("hermes: %v", r.Err)
			if c := pull.ClassOf(r.Err); c != pull.ClassNotFound {
				t.Errorf("hermes: class %s, want not-found (err: %v)", c, r.Err)
			}
			if !strings.Contains(r.Err.Error(), "workspace-template-hermes") {
				t.Errorf("error does not name the image: %v", r.Err)
			}
		case r.Err != nil:
			t.Errorf("%s failed although present: %v", r.Image.Runtime, r.Err)
		default:
			if _, err := f.engine.ImageInspect(ctxT(t), r.Image.Ref); err != nil {
				t.Errorf("%s: %v", r.Image.Runtime, err)
			}
		}
	}
}

func TestPullRegistryNotListening(t *testing.T) {
	f := newFixture(t)
	port, err := testbed.FreePort()
	if err != nil {
		t.Fatal(err)
	}
	imgs := f.images(t, map[string]string{config.KeyRegistry: fmt.Sprintf("127.0.0.1:%d/nobody", port)})
	for _, r := range f.puller(t, auth.Options{}, pull.PullerOptions{}).PullAll(ctxT(t), imgs, nil) {
		if r.Err == nil {
			t.Fatalf("%s: pull from a closed port succeeded", r.Image.Runtime)
		}
		if c := pull.ClassOf(r.Err); c != pull.ClassNetwork {
			t.Errorf("%s: class %s, want network (err: %v)", r.Image.Runtime, c, r.Err)
		}
		if !strings.Contains(r.Err.Error(), "connection refused") || !strings.Contains(r.Err.Error(), r.Image.Ref) {
			t.Errorf("%s: error should name the image and say the connection was refused: %v", r.Image.Runtime, r.Err)
		}
	}
}

func TestPullFailureInsideStreamIsAFailure(t *testing.T) {
	f := newFixture(t)
	s := f.seed(t, []string{"crewai"})["crewai"]
	if err := f.reg.DeleteBlob(s.Layers[1]); err != nil {
		t.Fatal(err)
	}
	imgs := f.images(t, map[string]string{config.KeyRuntimes: "crewai"})
	r := f.puller(t, auth.Options{}, pull.PullerOptions{}).Pull(ctxT(t), imgs[0], nil)
	if r.Err == nil {
		t.Fatal("a pull whose layer blob is gone reported success")
	}
	t.Logf("error: %v", r.Err)
	var se *engine.StreamError
	if !errors.As(r.Err, &se) {
		t.Fatalf("want the failure from inside the pull stream, got %T: %v", r.Err, r.Err)
	}
	if c := pull.ClassOf(r.Err); c != pull.ClassServer && c != pull.ClassNotFound {
		t.Errorf("class %s, want server or not-found (err: %v)", c, r.Err)
	}
	if _, err := f.engine.ImageInspect(ctxT(t), imgs[0].Ref); !errors.Is(err, engine.ErrImageNotFound) {
		t.Errorf("the image should be absent after the failed pull; inspect: %v", err)
	}
}

func TestPullPinnedDigest(t *testing.T) {
	f := newFixture(t)
	s := f.seed(t, []string{"autogen", "codex"})
	// Move autogen's tag, so that the pin names an image that is no longer :latest.
	if _, err := f.bed.Push(ctxT(t), f.reg, f.ns, "autogen", testbed.SeedOptions{}); err != nil {
		t.Fatal(err)
	}
	imgs := f.images(t, map[string]string{
		config.KeyRuntimes: "autogen,codex",
		config.KeyPins:     "autogen=" + s["autogen"].Digest.String(),
		config.KeyPlatform: "linux/amd64",
	})
	p := f.puller(t, auth.Options{}, pull.PullerOptions{Platform: "linux/amd64"})
	for _, r := range p.PullAll(ctxT(t), imgs, nil) {
		if r.Err != nil {
			t.Fatalf("%s: %v", r.Image.Runtime, r.Err)
		}
	}
	if !strings.HasSuffix(imgs[0].Ref, "@"+s["autogen"].Digest.String()) {
		t.Fatalf("pinned ref %s", imgs[0].Ref)
	}

	wrong := digest.FromString("not an image")
	bad := f.images(t, map[string]string{config.KeyRuntimes: "codex", config.KeyPins: "codex=" + wrong.String()})
	r := p.Pull(ctxT(t), bad[0], nil)
	if r.Err == nil {
		t.Fatal("a pin to a digest the registry does not have succeeded")
	}
	t.Logf("error: %v", r.Err)
	if c := pull.ClassOf(r.Err); c != pull.ClassNotFound {
		t.Errorf("class %s, want not-found (err: %v)", c, r.Err)
	}
}

func TestGHCRCredentialsAreNotSentToOtherHosts(t *testing.T) {
	f := newFixture(t)
	reg, err := f.bed.StartRegistry(ctxT(t), "htpasswd-"+f.ns, testbed.RegistryOptions{Htpasswd: htpasswd(t, map[string]string{"puller": "s3cret-token"})})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Stop() })
	if _, err := f.bed.Seed(ctxT(t), reg, "private", []string{"codex"}, testbed.SeedOptions{Username: "puller", Password: "s3cret-token"}); err != nil {
		t.Fatal(err)
	}
	imgs := f.images(t, map[string]string{config.KeyRegistry: reg.Prefix("private"), config.KeyRuntimes: "codex"})
	// The GHCR credentials are right for this registry, but it is not
	// ghcr.io: they must not be sent, so the pull is refused.
	p := f.puller(t, auth.Options{GHCRUser: "puller", GHCRToken: auth.NewSecret("s3cret-token")}, pull.PullerOptions{})
	r := p.Pull(ctxT(t), imgs[0], nil)
	if r.Err == nil {
		t.Fatal("the pull succeeded: GHCR credentials reached a host that is not ghcr.io")
	}
	t.Logf("error: %v", r.Err)
	if r.Source != auth.SourceAnonymous {
		t.Errorf("source %q, want anonymous", r.Source)
	}
	if c := pull.ClassOf(r.Err); c != pull.ClassAuth {
		t.Errorf("class %s, want auth (err: %v)", c, r.Err)
	}
	if strings.Contains(r.Err.Error(), "s3cret-token") {
		t.Error("the error leaks the token")
	}
}
