package main

import (
	"context"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// checkDoc is the part of 'check --json --compare' the mirror tests read.
type checkDoc struct {
	OK       bool                    `json:"ok"`
	Reports  []pull.CheckReport      `json:"reports"`
	Parity   map[string]string       `json:"parity"`
	Compared map[string]comparedJSON `json:"compared"`
}

// mirrorShapes are the layouts the source registry serves, by runtime.
var mirrorShapes = map[string]testbed.Shape{
	"autogen": testbed.ShapeDocker, "codex": testbed.ShapeBuildx,
	"crewai": testbed.ShapeDockerList, "hermes": testbed.ShapeOCI,
}

// TestCheckParityOfRealMirrors makes mirrors the ways operators do and
// checks that check --compare judges them by the image for the platform:
// same for every faithful copy, whatever it did to the manifests, and
// differs for a rebuilt image.
func TestCheckParityOfRealMirrors(t *testing.T) {
	b := bed.Get(t)
	if err := testbed.SkopeoAvailable(); err != nil {
		testbed.SkipOrFail(t, err)
	}
	ctx := context.Background()
	src := b.Registry("main")
	mirror, err := b.StartRegistry(ctx, "mirror-shapes", testbed.RegistryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mirror.Stop() })
	seeded, rts := seedMirrorSource(t, b, src)
	dir := t.TempDir()
	makers := []struct {
		ns string
		// repacks: the mirror's tag names this host's image manifest, not
		// the source's index.
		repacks bool
		copy    func(src, dst string) error
	}{
		{"docker-push", true, func(s, d string) error { return mirrorByDockerPush(ctx, b, dir, seeded, s, d) }},
		{"skopeo", true, func(s, d string) error { return testbed.MirrorBySkopeo(ctx, s, d, false) }},
		{"skopeo-all", false, func(s, d string) error { return testbed.MirrorBySkopeo(ctx, s, d, true) }},
		{"ggcr-copy", false, func(s, d string) error { return testbed.Copy(ctx, s, d) }},
	}
	envFile := writeFile(t, config.KeyRegistry+"="+src.Prefix("shapes")+"\n"+config.KeyRuntimes+"="+strings.Join(rts, ",")+"\n")
	env := map[string]string{config.KeyDockerHost: b.DockerHost}
	host := "linux/" + runtime.GOARCH
	for _, m := range makers {
		t.Run(m.ns, func(t *testing.T) {
			for _, rt := range rts {
				if err := m.copy(config.ImageRef(src.Prefix("shapes"), rt), config.ImageRef(mirror.Prefix(m.ns), rt)); err != nil {
					t.Fatal(err)
				}
			}
			code, out, errOut := runCLI(t, env, "check", "--env-file", envFile, "--compare", mirror.Prefix(m.ns), "--json")
			doc := decodeCheck(t, out, errOut)
			if code != exitOK || !doc.OK {
				t.Errorf("exit %d, ok=%v; want 0 and ok", code, doc.OK)
			}
			for _, rt := range rts {
				s, q, c := seeded[rt], doc.image(1, rt), doc.Compared[rt]
				multi := len(s.Platforms) > 1
				if doc.Parity[rt] != "same" || c.Parity != "same" || !c.SameImage || q.ImageDigest != s.Platforms[host].Config || q.Digest == "" {
					t.Errorf("%s (%s): parity %q, compared %+v, mirror image %s; want same, the image %s", rt, s.Shape, doc.Parity[rt], c, q.ImageDigest, s.Platforms[host].Config)
				}
				if multi && c.SameManifest == m.repacks {
					t.Errorf("%s (%s): same_manifest=%v (mirror %s, source %s); this maker repacks: %v", rt, s.Shape, c.SameManifest, q.Digest, s.Digest, m.repacks)
				}
			}
			if m.ns == "docker-push" {
				code, out, _ := runCLI(t, env, "check", "--env-file", envFile, "--compare", mirror.Prefix(m.ns))
				if code != exitOK || !strings.Contains(out, "linux/amd64,linux/arm64 (+2 attestations)") || !strings.Contains(out, "same with MANIFEST differs") {
					t.Errorf("table: exit %d\n%s", code, out)
				}
				t.Logf("docker push mirror:\n%s", out)
			}
		})
	}
	t.Run("rebuilt", func(t *testing.T) { checkRebuiltMirror(t, b, mirror, envFile, rts) })
}

// mirrorByDockerPush mirrors src to dst with docker pull, tag and push.
// On the containerd store, a push of a multi-platform tag is refused (the
// daemon holds one platform's content, and Docker 26 pushes the index
// whole): that is checked, and the host platform's manifest is pulled by
// digest and pushed instead, as an operator must do there.
func mirrorByDockerPush(ctx context.Context, b *testbed.Bed, dir string, seeded map[string]testbed.Seeded, src, dst string) error {
	_, rt, _ := strings.Cut(strings.TrimSuffix(src, ":latest"), "/workspace-template-")
	s := seeded[rt]
	if !b.ContainerdStore() || len(s.Platforms) < 2 {
		return testbed.MirrorByDockerPush(ctx, b.DockerHost, dir, src, dst)
	}
	err := testbed.MirrorByDockerPush(ctx, b.DockerHost, dir, src, dst)
	if err == nil || !strings.Contains(err.Error(), "missing content") {
		return fmt.Errorf("docker push of the multi-platform tag on the containerd store: %v; want it refused for missing content", err)
	}
	byDigest := strings.TrimSuffix(src, ":latest") + "@" + s.Platforms["linux/"+runtime.GOARCH].Manifest.String()
	return testbed.MirrorByDockerPush(ctx, b.DockerHost, dir, byDigest, dst)
}

// checkRebuiltMirror: a complete copy whose codex image is then rebuilt
// under the same tag and layout (new layers, so a new config) differs.
func checkRebuiltMirror(t *testing.T, b *testbed.Bed, mirror *testbed.Registry, envFile string, rts []string) {
	ctx := context.Background()
	for _, rt := range rts {
		must(t, testbed.Copy(ctx, config.ImageRef(b.Registry("main").Prefix("shapes"), rt), config.ImageRef(mirror.Prefix("rebuilt"), rt)))
	}
	if _, err := b.Push(ctx, mirror, "rebuilt", "codex", testbed.SeedOptions{Shape: testbed.ShapeBuildx}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{config.KeyDockerHost: b.DockerHost}
	code, out, errOut := runCLI(t, env, "check", "--env-file", envFile, "--compare", mirror.Prefix("rebuilt"), "--json")
	doc := decodeCheck(t, out, errOut)
	if code != checkFailed || doc.OK {
		t.Errorf("exit %d, ok=%v; want %d and not ok", code, doc.OK, checkFailed)
	}
	for _, rt := range rts {
		want := comparedJSON{Parity: "same", SameManifest: true, SameImage: true}
		if rt == "codex" {
			want = comparedJSON{Parity: "differs"}
		}
		if doc.Compared[rt] != want || doc.Parity[rt] != want.Parity {
			t.Errorf("%s: %+v (parity %q), want %+v", rt, doc.Compared[rt], doc.Parity[rt], want)
		}
	}
}

// image is the result for runtime rt in report i.
func (d checkDoc) image(i int, rt string) pull.CheckResult {
	for _, r := range d.Reports[i].Images {
		if r.Runtime == rt {
			return r
		}
	}
	return pull.CheckResult{}
}

// seedMirrorSource pushes one image of each shape to src under "shapes".
func seedMirrorSource(t *testing.T, b *testbed.Bed, src *testbed.Registry) (map[string]testbed.Seeded, []string) {
	t.Helper()
	seeded := map[string]testbed.Seeded{}
	var rts []string
	for rt, shape := range mirrorShapes {
		s, err := b.Push(context.Background(), src, "shapes", rt, testbed.SeedOptions{Shape: shape})
		if err != nil {
			t.Fatal(err)
		}
		seeded[rt] = s
		rts = append(rts, rt)
	}
	return seeded, rts
}

func decodeCheck(t *testing.T, out, errOut string) checkDoc {
	t.Helper()
	var doc checkDoc
	if err := json.Unmarshal([]byte(out), &doc); err != nil || len(doc.Reports) != 2 {
		t.Fatalf("check --json: %v\n%s%s", err, out, errOut)
	}
	return doc
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// TestArm64FromTheEnvFile: MOLECULE_IMAGE_PLATFORM=linux/arm64 in the env
// file makes 'pull' fetch and verify the arm64 image of a buildx index on
// a host of another architecture, and 'check' judge that image.
func TestArm64FromTheEnvFile(t *testing.T) {
	if runtime.GOARCH == "arm64" {
		t.Skip("this host is arm64: the default platform is tested elsewhere")
	}
	b := bed.Get(t)
	ctx := context.Background()
	s, err := b.Push(ctx, b.Registry("main"), "arm", "codex", testbed.SeedOptions{Shape: testbed.ShapeBuildx})
	must(t, err)
	envFile := writeFile(t, config.KeyRegistry+"="+b.Registry("main").Prefix("arm")+"\n"+config.KeyRuntimes+"=codex\n"+config.KeyPlatform+"=linux/arm64\n")
	env := map[string]string{config.KeyDockerHost: b.DockerHost}
	if code, out, errOut := runCLI(t, env, "pull", "--env-file", envFile); code != exitOK {
		t.Fatalf("pull: exit %d\n%s%s", code, out, errOut)
	}
	if p, err := testbed.ImagePlatform(ctx, b.DockerHost, s.Ref); err != nil || p != "linux/arm64" {
		t.Errorf("the daemon holds the %q image (%v), want linux/arm64", p, err)
	}
	code, out, errOut := runCLI(t, env, "check", "--env-file", envFile, "--json")
	var doc checkDoc
	if err := json.Unmarshal([]byte(out), &doc); err != nil || len(doc.Reports) != 1 {
		t.Fatalf("check --json: exit %d, %v\n%s%s", code, err, out, errOut)
	}
	r, want := doc.image(0, "codex"), s.Platforms["linux/arm64"]
	if code != exitOK || doc.Reports[0].Platform != "linux/arm64" || r.PlatformDigest != want.Manifest || r.ImageDigest != want.Config ||
		strings.Join(r.Platforms, ",") != "linux/amd64,linux/arm64" || r.Attestations != 2 {
		t.Errorf("check: exit %d, platform %s, %+v; want the arm64 image %s (config %s)", code, doc.Reports[0].Platform, r, want.Manifest, want.Config)
	}
}
