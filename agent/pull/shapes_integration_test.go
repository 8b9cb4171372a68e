package pull_test

import (
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/auth"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// seedShaped pushes one image per runtime, each with its own options.
func (f *fixture) seedShaped(t *testing.T, opts map[string]testbed.SeedOptions) map[string]testbed.Seeded {
	t.Helper()
	out := map[string]testbed.Seeded{}
	for rt, o := range opts {
		s, err := f.bed.Push(ctxT(t), f.reg, f.ns, rt, o)
		must(t, err)
		out[rt] = s
	}
	return out
}

// daemonPlatform is the platform of the image the daemon holds for ref.
func (f *fixture) daemonPlatform(t *testing.T, ref string) string {
	t.Helper()
	p, err := testbed.ImagePlatform(ctxT(t), f.bed.DockerHost, ref)
	must(t, err)
	return p
}

func TestPullNineBuildxImagesVerified(t *testing.T) {
	f := newFixture(t)
	opts := map[string]testbed.SeedOptions{}
	for _, rt := range config.KnownRuntimes() {
		opts[rt] = testbed.SeedOptions{Shape: testbed.ShapeBuildx}
	}
	seeded := f.seedShaped(t, opts)
	imgs := f.images(t, map[string]string{})
	if len(imgs) != 9 {
		t.Fatalf("resolved %d images, want 9", len(imgs))
	}
	host := "linux/" + runtime.GOARCH
	for _, r := range f.puller(t, auth.Options{}, pull.PullerOptions{}).PullAll(ctxT(t), imgs, nil) {
		s := seeded[r.Image.Runtime]
		if r.Err != nil || r.Digest != s.Digest {
			t.Errorf("%s: digest %s, err %v; the registry serves the index %s", r.Image.Runtime, r.Digest, r.Err, s.Digest)
			continue
		}
		if got := f.daemonPlatform(t, r.Image.Ref); got != host {
			t.Errorf("%s: the daemon holds the %s image, want %s", r.Image.Runtime, got, host)
		}
	}
	for _, r := range f.puller(t, auth.Options{}, pull.PullerOptions{}).PullAll(ctxT(t), imgs, nil) {
		if r.Err != nil || !r.UpToDate {
			t.Errorf("%s: second pull: err=%v up_to_date=%v", r.Image.Runtime, r.Err, r.UpToDate)
		}
	}
}

// TestCheckEveryShape: check names real platforms only, counts the
// attestations apart, and finds the image for the platform in every
// layout, a twelve-layer image included.
func TestCheckEveryShape(t *testing.T) {
	f := newFixture(t)
	byRuntime := map[string]testbed.SeedOptions{
		"autogen":     {Shape: testbed.ShapeDocker},
		"claude-code": {Shape: testbed.ShapeOCI},
		"codex":       {Shape: testbed.ShapeDockerList},
		"crewai":      {Shape: testbed.ShapeBuildx},
		"deepagents":  {Shape: testbed.ShapeBuildx, Layers: 12, LayerSize: 32 << 10},
	}
	seeded := f.seedShaped(t, byRuntime)
	host := "linux/" + runtime.GOARCH
	for _, platform := range []string{host, "linux/arm64"} {
		imgs := f.images(t, map[string]string{config.KeyRuntimes: "autogen,claude-code,codex,crewai,deepagents", config.KeyPlatform: platform})
		rep := pull.Check(ctxT(t), f.puller(t, auth.Options{}, pull.PullerOptions{Platform: platform}), f.reg.Prefix(f.ns), platform, imgs)
		for _, r := range rep.Images {
			s := seeded[r.Runtime]
			want, multi := s.Platforms[platform], len(s.Platforms) > 1
			if !multi && platform != host {
				if r.PlatformOK || r.ImageDigest != s.Platforms[host].Config {
					t.Errorf("%s for %s: platform_ok=%v image %s; a %s-only image", r.Runtime, platform, r.PlatformOK, r.ImageDigest, host)
				}
				continue
			}
			if !r.Present || !r.PlatformOK || r.Digest != s.Digest || r.PlatformDigest != want.Manifest || r.ImageDigest != want.Config || r.ContentError != "" {
				t.Errorf("%s (%s) for %s: %+v; want index %s, manifest %s, config %s", r.Runtime, s.Shape, platform, r, s.Digest, want.Manifest, want.Config)
			}
			wantPlatforms := []string{host}
			if multi {
				wantPlatforms = testbed.MultiPlatforms
			}
			if !slices.Equal(r.Platforms, wantPlatforms) || r.Attestations != s.Attestations {
				t.Errorf("%s (%s): platforms %v and %d attestations, want %v and %d", r.Runtime, s.Shape, r.Platforms, r.Attestations, wantPlatforms, s.Attestations)
			}
		}
		if !rep.OK() && platform == host {
			t.Errorf("check for %s not ok: %+v", platform, rep)
		}
	}
	if n := len(seeded["deepagents"].Layers); n < 11 {
		t.Fatalf("the many-layer image has %d layers", n)
	}
	imgs := f.images(t, map[string]string{config.KeyRuntimes: "autogen,claude-code,codex,crewai,deepagents"})
	for _, r := range f.puller(t, auth.Options{}, pull.PullerOptions{}).PullAll(ctxT(t), imgs, nil) {
		if r.Err != nil || r.Digest != seeded[r.Image.Runtime].Digest {
			t.Errorf("%s (%s): digest %s, err %v", r.Image.Runtime, seeded[r.Image.Runtime].Shape, r.Digest, r.Err)
		}
	}
}

// TestPullArm64Variant: MOLECULE_IMAGE_PLATFORM=linux/arm64 on another
// host pulls and verifies the arm64 image of an index, by tag and by pin.
func TestPullArm64Variant(t *testing.T) {
	if runtime.GOARCH == "arm64" {
		t.Skip("this host is arm64: pulling arm64 is the default case, tested elsewhere")
	}
	f := newFixture(t)
	seeded := f.seedShaped(t, map[string]testbed.SeedOptions{
		"codex": {Shape: testbed.ShapeBuildx}, "crewai": {Shape: testbed.ShapeDockerList}, "hermes": {Shape: testbed.ShapeBuildx},
	})
	const arm = "linux/arm64"
	imgs := f.images(t, map[string]string{config.KeyRuntimes: "codex,crewai,hermes", config.KeyPlatform: arm,
		config.KeyPins: "hermes=" + seeded["hermes"].Digest.String()})
	if !strings.Contains(imgs[2].Ref, "@sha256:") {
		t.Fatalf("hermes is not pinned: %s", imgs[2].Ref)
	}
	for _, r := range f.puller(t, auth.Options{}, pull.PullerOptions{Platform: arm}).PullAll(ctxT(t), imgs, nil) {
		if r.Err != nil || r.Digest != seeded[r.Image.Runtime].Digest {
			t.Errorf("%s: digest %s, err %v", r.Image.Runtime, r.Digest, r.Err)
			continue
		}
		if got := f.daemonPlatform(t, r.Image.Ref); !strings.HasPrefix(got, arm) {
			t.Errorf("%s: the daemon holds the %s image, want %s", r.Image.Runtime, got, arm)
		}
	}
}
