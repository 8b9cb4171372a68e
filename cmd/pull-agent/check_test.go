package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

func TestCheckMirrorParity(t *testing.T) {
	b := bed.Get(t)
	ctx := context.Background()
	ghcr := b.Registry("main")
	mirror, err := b.StartRegistry(ctx, "mirror-check", testbed.RegistryOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mirror.Stop() })
	rts := config.KnownRuntimes()
	if _, err := b.Seed(ctx, ghcr, "check", rts, testbed.SeedOptions{}); err != nil {
		t.Fatal(err)
	}
	copyTo := func(ns string, skip ...string) {
		t.Helper()
		for _, rt := range rts {
			if strings.Contains(strings.Join(skip, ","), rt) {
				continue
			}
			if err := testbed.Copy(ctx, config.ImageRef(ghcr.Prefix("check"), rt), config.ImageRef(mirror.Prefix(ns), rt)); err != nil {
				t.Fatal(err)
			}
		}
	}
	env := map[string]string{config.KeyDockerHost: b.DockerHost}
	envFile := writeFile(t, config.KeyRegistry+"="+ghcr.Prefix("check")+"\n")
	check := func(q string, extra ...string) (int, string, string) {
		return runCLI(t, env, append([]string{"check", "--env-file", envFile, "--compare", q}, extra...)...)
	}

	copyTo("complete")
	code, out, errOut := check(mirror.Prefix("complete"))
	if code != exitOK || strings.Count(out, " same\n") != 9 {
		t.Fatalf("complete mirror: exit %d\n%s%s", code, out, errOut)
	}
	t.Logf("complete mirror:\n%s", out)

	copyTo("partial", "hermes")
	code, out, _ = check(mirror.Prefix("partial"))
	if code != checkFailed || !regexp.MustCompile(`hermes\s+present.*MISSING.*missing in Q`).MatchString(out) {
		t.Fatalf("mirror without hermes: exit %d\n%s", code, out)
	}

	copyTo("drift")
	if _, err := b.Push(ctx, mirror, "drift", "codex", testbed.SeedOptions{}); err != nil {
		t.Fatal(err)
	}
	code, out, _ = check(mirror.Prefix("drift"), "--json")
	var doc struct {
		OK     bool              `json:"ok"`
		Parity map[string]string `json:"parity"`
	}
	if err := json.Unmarshal([]byte(out), &doc); err != nil {
		t.Fatal(err)
	}
	if code != checkFailed || doc.OK || doc.Parity["codex"] != "differs" || doc.Parity["hermes"] != "same" {
		t.Fatalf("drifted mirror: exit %d %+v", code, doc)
	}

	// A mirror that wants credentials this host lacks.
	codexOnly := writeFile(t, config.KeyRegistry+"="+ghcr.Prefix("check")+"\n"+config.KeyRuntimes+"=codex\n")
	checkLockedMirror(t, b, codexOnly)
	// The daemon unreachable: 2.
	if code, _, _ := runCLI(t, map[string]string{config.KeyDockerHost: "unix:///nonexistent.sock"}, "check", "--env-file", codexOnly); code != checkUnreachable {
		t.Errorf("daemon unreachable: exit %d", code)
	}
}

// checkLockedMirror compares the images of envFile with a mirror that
// wants credentials: without them the host's authentication fails, with
// them in config.json it succeeds, and the password is never shown.
func checkLockedMirror(t *testing.T, b *testbed.Bed, envFile string) {
	t.Helper()
	ctx := context.Background()
	hp, err := testbed.Htpasswd(map[string]string{"mirror": "mirror-s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	locked, err := b.StartRegistry(ctx, "mirror-locked", testbed.RegistryOptions{Htpasswd: hp})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { locked.Stop() })
	env := map[string]string{config.KeyDockerHost: b.DockerHost}
	check := func(q string) (int, string, string) {
		return runCLI(t, env, "check", "--env-file", envFile, "--compare", q)
	}
	if _, err := b.Seed(ctx, locked, "m", []string{"codex"}, testbed.SeedOptions{Username: "mirror", Password: "mirror-s3cret"}); err != nil {
		t.Fatal(err)
	}
	code, out, _ := check(locked.Prefix("m"))
	if code != checkFailed || !strings.Contains(out, "host "+locked.Addr+": anonymous; AUTHENTICATION FAILED") || !strings.Contains(out, "ERROR [auth]") {
		t.Fatalf("locked mirror: exit %d\n%s", code, out)
	}
	// With the credentials in config.json it authenticates.
	dir := t.TempDir()
	cfg := `{"auths": {"` + locked.Addr + `": {"username": "mirror", "password": "mirror-s3cret"}}}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(cfg), 0o600); err != nil {
		t.Fatal(err)
	}
	env["DOCKER_CONFIG"] = dir
	code, out, _ = check(locked.Prefix("m"))
	if !strings.Contains(out, "host "+locked.Addr+": config.json auths; authentication ok") || strings.Contains(out, "mirror-s3cret") {
		t.Fatalf("locked mirror with credentials: exit %d\n%s", code, out)
	}
}
