package main

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// Without --compare, check compares P with each fallback prefix: a
// fallback that lacks an image is not ready to take over, and check says
// which and fails.
func TestCheckComparesEachFallback(t *testing.T) {
	b := bed.Get(t)
	ctx := context.Background()
	src := b.Registry("main")
	rts := []string{"codex", "hermes"}
	for _, rt := range rts {
		s, err := b.Push(ctx, src, "fbcheck", rt, testbed.SeedOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if err := testbed.Copy(ctx, s.Ref, config.ImageRef(src.Prefix("fbcheck-full"), rt)); err != nil {
			t.Fatal(err)
		}
	}
	// The second fallback mirrors codex only.
	if err := testbed.Copy(ctx, config.ImageRef(src.Prefix("fbcheck"), "codex"), config.ImageRef(src.Prefix("fbcheck-part"), "codex")); err != nil {
		t.Fatal(err)
	}
	full, part := src.Prefix("fbcheck-full"), src.Prefix("fbcheck-part")
	envFile := writeFile(t, config.KeyRegistry+"="+src.Prefix("fbcheck")+"\n"+config.KeyRuntimes+"="+strings.Join(rts, ",")+"\n"+
		config.KeyFallback+"="+full+","+part+"\n")
	env := map[string]string{config.KeyDockerHost: b.DockerHost}

	code, out, errOut := runCLI(t, env, "check", "--env-file", envFile, "--json")
	var doc struct {
		OK        bool `json:"ok"`
		Fallbacks []struct {
			Prefix string            `json:"prefix"`
			Parity map[string]string `json:"parity"`
		} `json:"fallbacks"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatalf("check --json: %v\n%s%s", err, out, errOut)
	}
	if code != checkFailed || doc.OK {
		t.Errorf("exit %d, ok=%v; want %d and not ok (a fallback lacks hermes)", code, doc.OK, checkFailed)
	}
	if len(doc.Fallbacks) != 2 || doc.Fallbacks[0].Prefix != full || doc.Fallbacks[1].Prefix != part {
		t.Fatalf("fallbacks %+v, want %s then %s", doc.Fallbacks, full, part)
	}
	want := []map[string]string{{"codex": "same", "hermes": "same"}, {"codex": "same", "hermes": "missing in Q"}}
	for i, w := range want {
		for rt, p := range w {
			if got := doc.Fallbacks[i].Parity[rt]; got != p {
				t.Errorf("fallback %d, %s: parity %q, want %q", i+1, rt, got, p)
			}
		}
	}

	code, out, _ = runCLI(t, env, "check", "--env-file", envFile)
	if code != checkFailed || !strings.Contains(out, "fallback 1 of 2 (MOLECULE_IMAGE_FALLBACK_REGISTRY)") || !strings.Contains(out, "fallback 2 of 2") || !strings.Contains(out, "missing in Q") {
		t.Errorf("check: exit %d\n%s", code, out)
	}
	// An explicit --compare is compared alone.
	code, out, errOut = runCLI(t, env, "check", "--env-file", envFile, "--compare", full, "--json")
	if d := decodeCheck(t, out, errOut); code != exitOK || !d.OK || d.Parity["hermes"] != "same" {
		t.Errorf("check --compare %s: exit %d ok=%v parity %v", full, code, d.OK, d.Parity)
	}
}

// 'pull' serves from a fallback what the primary lacks: the image is
// tagged under the primary's name and counted as present; what the
// primary has comes from the primary.
func TestPullServesFromAFallback(t *testing.T) {
	b := bed.Get(t)
	ctx := context.Background()
	reg := b.Registry("main")
	primary, fallback := reg.Prefix("fbpull-primary"), reg.Prefix("fbpull-fallback")
	for _, p := range []struct{ ns, rt string }{{"fbpull-primary", "codex"}, {"fbpull-fallback", "codex"}, {"fbpull-fallback", "hermes"}} {
		if _, err := b.Push(ctx, reg, p.ns, p.rt, testbed.SeedOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	envFile := writeFile(t, config.KeyRegistry+"="+primary+"\n"+config.KeyRuntimes+"=codex,hermes\n"+config.KeyFallback+"="+fallback+"\n")
	env := map[string]string{config.KeyDockerHost: b.DockerHost}
	code, out, errOut := runCLI(t, env, "pull", "--env-file", envFile)
	if code != exitOK || !strings.Contains(out, "hermes: the primary refused it (not-found); served from fallback "+fallback) || strings.Contains(out, "codex: the primary refused") {
		t.Fatalf("pull: exit %d\n%s%s", code, out, errOut)
	}
	e, err := engine.NewDockerEngine(config.DockerEndpoint{Host: b.DockerHost})
	must(t, err)
	defer e.Close()
	named, err1 := e.ImageInspect(ctx, config.ImageRef(primary, "hermes"))
	served, err2 := e.ImageInspect(ctx, config.ImageRef(fallback, "hermes"))
	if err1 != nil || err2 != nil || named.ID != served.ID {
		t.Errorf("the primary name holds %s (%v), the fallback's image is %s (%v); want the same", named.ID, err1, served.ID, err2)
	}
	if _, err := e.ImageInspect(ctx, config.ImageRef(fallback, "codex")); err == nil {
		t.Errorf("codex was pulled from the fallback, want the primary only")
	}
}
