package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/state"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// takesEffect is how soon an edit of the configuration must be in force.
const takesEffect = 2 * time.Second

// statusDoc is the state the running agent serves on its status socket.
func (p *agentProcess) statusDoc() (state.StateDoc, error) {
	var d state.StateDoc
	out, err := getOnce("unix", filepath.Join(p.dir, "status.sock"), "/status")
	if err != nil {
		return d, err
	}
	_, body, _ := strings.Cut(out, "\r\n\r\n")
	return d, json.Unmarshal([]byte(body), &d)
}

// timeTo returns how long after start the agent said status, failing t
// past takesEffect.
func timeTo(t *testing.T, n *testbed.NotifySocket, status string, start time.Time) time.Duration {
	t.Helper()
	waitNotify(t, n, status, 15*time.Second, func(m string) bool { return m == status })
	took := time.Since(start)
	if took > takesEffect {
		t.Errorf("%s %s after the edit, want within %s", status, took.Round(time.Millisecond), takesEffect)
	}
	return took
}

// An env file that is a symbolic link into another directory: an edit in
// place of its target is in force within 2 s.
func TestRunRereadsTheTargetOfALinkedEnvFile(t *testing.T) {
	b := bed.Get(t)
	reg := b.Registry("main")
	ctx := context.Background()
	for _, ns := range []string{"link-a", "link-b"} {
		if _, err := b.Seed(ctx, reg, ns, []string{"codex"}, testbed.SeedOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	etc, srv := t.TempDir(), t.TempDir()
	target := filepath.Join(srv, "pull-agent.env")
	envOf := func(ns string) string {
		return config.KeyRegistry + "=" + reg.Prefix(ns) + "\n" + config.KeyRuntimes + "=codex\n"
	}
	must(t, os.WriteFile(target, []byte(envOf("link-a")), 0o600))
	envFile := filepath.Join(etc, "pull-agent.env")
	must(t, os.Symlink(target, envFile))
	n := listenNotify(t)
	startProcess(t, []string{"NOTIFY_SOCKET=" + n.Path, "DOCKER_HOST=" + b.DockerHost, "DOCKER_CONFIG=" + t.TempDir()}, "--env-file", envFile)
	waitNotify(t, n, "warm from A", 30*time.Second, func(m string) bool { return m == "STATUS=1/1 images warm from "+reg.Prefix("link-a") })

	f, err := os.OpenFile(target, os.O_WRONLY|os.O_TRUNC, 0)
	must(t, err)
	start := time.Now()
	_, err = f.WriteString(envOf("link-b"))
	must(t, err)
	must(t, f.Close())
	inForce := timeTo(t, n, "STATUS=0/1 images warm from "+reg.Prefix("link-b")+"; pulling 1", start)
	warm := timeTo(t, n, "STATUS=1/1 images warm from "+reg.Prefix("link-b"), start)
	t.Logf("in-place edit of the link's target: in force after %s, the new image warm after %s", inForce.Round(time.Millisecond), warm.Round(time.Millisecond))
}

// A pull that failed on auth is tried again as soon as Docker's
// config.json is fixed (written as 'docker login' writes it: a new file
// renamed over the old), and is warm within 2 s; nothing else (no SIGHUP,
// a refresh 15 minutes away) would have retried it.
func TestRunRetriesAuthFailuresWhenConfigJSONIsFixed(t *testing.T) {
	b := bed.Get(t)
	ctx := context.Background()
	hp, err := testbed.Htpasswd(map[string]string{"watch-user": "watch-s3cret"})
	must(t, err)
	reg, err := b.StartRegistry(ctx, "cfgwatch", testbed.RegistryOptions{Htpasswd: hp})
	must(t, err)
	t.Cleanup(func() { reg.Stop() })
	_, err = b.Seed(ctx, reg, "w", []string{"codex"}, testbed.SeedOptions{Username: "watch-user", Password: "watch-s3cret"})
	must(t, err)
	dockerConfig := t.TempDir()
	writeConfig := func(pass string) {
		auth := base64.StdEncoding.EncodeToString([]byte("watch-user:" + pass))
		tmp := filepath.Join(dockerConfig, "config.json.tmp")
		must(t, os.WriteFile(tmp, []byte(`{"auths": {"`+reg.Addr+`": {"auth": "`+auth+`"}}}`), 0o600))
		must(t, os.Rename(tmp, filepath.Join(dockerConfig, "config.json")))
	}
	writeConfig("wrong-s3cret")
	envFile := writeFile(t, config.KeyRegistry+"="+reg.Prefix("w")+"\n"+config.KeyRuntimes+"=codex\n")
	n := listenNotify(t)
	p := startProcess(t, []string{"NOTIFY_SOCKET=" + n.Path, "DOCKER_HOST=" + b.DockerHost, "DOCKER_CONFIG=" + dockerConfig}, "--env-file", envFile)
	testbed.WaitFor(t, "the pull failing on auth", 30*time.Second, func() bool {
		d, err := p.statusDoc()
		return err == nil && len(d.Images) == 1 && d.Images[0].LastErrorClass == "auth" && d.Images[0].Progress == nil
	})

	start := time.Now()
	writeConfig("watch-s3cret")
	took := timeTo(t, n, "STATUS=1/1 images warm from "+reg.Prefix("w"), start)
	t.Logf("config.json fixed: the image warm after %s", took.Round(time.Millisecond))
	if out := p.Output.String(); strings.Contains(out, "watch-s3cret") || strings.Contains(out, "wrong-s3cret") {
		t.Errorf("a secret in the log:\n%s", out)
	}
}
