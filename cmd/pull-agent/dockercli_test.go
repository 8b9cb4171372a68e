package main

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// debianDocker is the docker CLI of Debian's docker.io package, the
// reference the agent's credential choice is compared with. (Another
// docker binary may sit earlier on PATH.)
const debianDocker = "/usr/bin/docker"

// cliShape is one config.json and what it must lead to. HOST stands for
// the registry's host:port, PORT for its port; RIGHT and WRONG for base64
// "user:password" with the right and a wrong password.
type cliShape struct {
	name, config string
	want         string // "pulled" or "refused", for the CLI and the agent alike
	// differs names a deliberate difference: cli is what the docker CLI
	// does then, want what the agent does.
	differs, cli string
}

func cliShapes() []cliShape {
	const entry = `"auths": {"HOST": {"auth": "RIGHT"}}`
	return []cliShape{
		{name: "nothing", config: `{}`, want: "refused"},
		{name: "auths auth", config: `{` + entry + `}`, want: "pulled"},
		{name: "auths username and password", config: `{"auths": {"HOST": {"username": "cli-user", "password": "cli-s3cret"}}}`, want: "pulled"},
		{name: "auths wrong password", config: `{"auths": {"HOST": {"auth": "WRONG"}}}`, want: "refused"},
		{name: "auths auth beats username and password", config: `{"auths": {"HOST": {"auth": "WRONG", "username": "cli-user", "password": "cli-s3cret"}}}`, want: "refused"},
		{name: "auths key http scheme", config: `{"auths": {"http://HOST": {"auth": "RIGHT"}}}`, want: "pulled"},
		{name: "auths key https scheme and path", config: `{"auths": {"https://HOST/v2/": {"auth": "RIGHT"}}}`, want: "pulled"},
		{name: "auths key with a path, no scheme", config: `{"auths": {"HOST/some/path": {"auth": "RIGHT"}}}`, want: "pulled"},
		{name: "auths key without the port", config: `{"auths": {"127.0.0.1": {"auth": "RIGHT"}}}`, want: "refused"},
		{name: "auths key for another host, same port", config: `{"auths": {"localhost:PORT": {"auth": "RIGHT"}}}`, want: "refused"},
		{name: "auths auth not base64, nothing else", config: `{"auths": {"HOST": {"auth": "%%%"}}}`, want: "refused"},
		{name: "config.json not JSON", config: `{"auths": {"HOST": {"auth": "RIGHT"}`, want: "refused"},
		{name: "credHelpers answers", config: `{"credHelpers": {"HOST": "pa-good"}}`, want: "pulled"},
		{name: "credHelpers answers wrong, auths right", config: `{"credHelpers": {"HOST": "pa-wrong"}, ` + entry + `}`, want: "refused"},
		{name: "credHelpers answers for another server URL", config: `{"credHelpers": {"HOST": "pa-elsewhere"}}`, want: "pulled"},
		{name: "credHelpers not found, auths right", config: `{"credHelpers": {"HOST": "pa-none"}, ` + entry + `}`, want: "refused"},
		{name: "credHelpers not installed, auths right", config: `{"credHelpers": {"HOST": "pa-missing"}, ` + entry + `}`, want: "pulled"},
		{name: "credHelpers not installed, no auths", config: `{"credHelpers": {"HOST": "pa-missing"}}`, want: "refused"},
		{name: "credHelpers fails, auths right", config: `{"credHelpers": {"HOST": "pa-fail"}, ` + entry + `}`, want: "pulled"},
		{name: "credHelpers prints garbage, auths right", config: `{"credHelpers": {"HOST": "pa-garbage"}, ` + entry + `}`, want: "pulled"},
		{name: "credHelpers prints credentials then fails, auths wrong", config: `{"credHelpers": {"HOST": "pa-leak"}, "auths": {"HOST": {"auth": "WRONG"}}}`, want: "refused"},
		{name: "credHelpers for another host, auths right", config: `{"credHelpers": {"localhost:PORT": "pa-wrong"}, ` + entry + `}`, want: "pulled"},
		{name: "credHelpers key with a scheme does not apply", config: `{"credHelpers": {"http://HOST": "pa-good"}}`, want: "refused"},
		{name: "credsStore answers", config: `{"credsStore": "pa-good"}`, want: "pulled"},
		{name: "credsStore answers wrong, auths right", config: `{"credsStore": "pa-wrong", ` + entry + `}`, want: "refused"},
		{name: "credsStore not found, auths right", config: `{"credsStore": "pa-none", ` + entry + `}`, want: "refused"},
		{name: "credsStore not installed, auths right", config: `{"credsStore": "pa-missing", ` + entry + `}`, want: "pulled"},
		{name: "credsStore fails, auths right", config: `{"credsStore": "pa-fail", ` + entry + `}`, want: "pulled"},
		{name: "credHelpers beats credsStore", config: `{"credsStore": "pa-good", "credHelpers": {"HOST": "pa-none"}}`, want: "refused"},
		{name: "empty credHelpers entry: auths, not credsStore", config: `{"credsStore": "pa-none", "credHelpers": {"HOST": ""}, ` + entry + `}`, want: "pulled"},
		{name: "credsStore not found, credHelpers for another host", config: `{"credsStore": "pa-good", "credHelpers": {"localhost:PORT": "pa-none"}}`, want: "pulled"},
		{name: "credHelpers hangs, auths right", config: `{"credHelpers": {"HOST": "pa-hang"}, ` + entry + `}`, want: "refused", cli: "hung",
			differs: "a helper that does not answer is killed after --helper-timeout and the pull retried; the CLI waits for ever"},
		{name: "credHelpers named with a path, auths right", config: `{"credHelpers": {"HOST": "../pa-good"}, ` + entry + `}`, want: "refused", cli: "pulled",
			differs: "a helper name with a path is refused with the whole config.json; the CLI runs whatever the path names and, when that fails, uses auths"},
		{name: "auths auth not base64 beside username and password", config: `{"auths": {"HOST": {"auth": "%%%", "username": "cli-user", "password": "cli-s3cret"}}}`, want: "refused", cli: "pulled",
			differs: "a config.json the CLI's own parser rejects is refused; the CLI warns and goes on with what it had decoded when it stopped, which depends on the order it met the auths entries in"},
	}
}

// TestCredentialsAsTheDockerCLI pulls the same image from the same
// authenticating registry into the same daemon, once with Debian's docker
// CLI and once with the pull-agent binary, given the same config.json and
// the same credential helpers on PATH, and asserts the same outcome.
func TestCredentialsAsTheDockerCLI(t *testing.T) {
	b := bed.Get(t)
	if _, err := os.Stat(debianDocker); err != nil {
		testbed.SkipOrFail(t, fmt.Errorf("Debian's docker CLI (%s, package docker.io): %w", debianDocker, err))
	}
	ctx := context.Background()
	hp, err := testbed.Htpasswd(map[string]string{"cli-user": "cli-s3cret"})
	must(t, err)
	reg, err := b.StartRegistry(ctx, "dockercli", testbed.RegistryOptions{Htpasswd: hp})
	must(t, err)
	t.Cleanup(func() { reg.Stop() })
	_, err = b.Seed(ctx, reg, "diff", []string{"codex"}, testbed.SeedOptions{Username: "cli-user", Password: "cli-s3cret"})
	must(t, err)
	helpers, err := testbed.BuildCredentialHelpers(t.TempDir())
	must(t, err)
	must(t, testbed.ConfigureCredentialHelpers(helpers, testbed.HelperConfig{User: "cli-user", Secret: "cli-s3cret"}))
	d := &differential{t: t, bed: b, helpers: helpers, home: t.TempDir(), ref: reg.Prefix("diff") + "/workspace-template-codex:latest"}
	d.envFile = writeFile(t, config.KeyRegistry+"="+reg.Prefix("diff")+"\n"+config.KeyRuntimes+"=codex\n"+config.KeyDockerHost+"="+b.DockerHost+"\n")
	_, port, _ := strings.Cut(reg.Addr, ":")
	b64 := func(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
	expand := strings.NewReplacer("HOST", reg.Addr, "PORT", port, "RIGHT", b64("cli-user:cli-s3cret"), "WRONG", b64("cli-user:wrong-s3cret"))
	for _, s := range cliShapes() {
		t.Run(s.name, func(t *testing.T) {
			dir := t.TempDir()
			must(t, os.WriteFile(filepath.Join(dir, "config.json"), []byte(expand.Replace(s.config)), 0o600))
			cli, cliOut := d.cli(dir)
			agent, agentOut := d.agent(dir)
			wantCLI := s.want
			if s.differs != "" {
				wantCLI = s.cli
				t.Logf("deliberate difference: %s", s.differs)
			}
			t.Logf("docker CLI: %s; pull-agent: %s", cli, agent)
			if cli != wantCLI || agent != s.want {
				t.Errorf("docker CLI %s (want %s), pull-agent %s (want %s)\nCLI:\n%s\nagent:\n%s", cli, wantCLI, agent, s.want, cliOut, agentOut)
			}
			for _, out := range []string{cliOut, agentOut} {
				if strings.Contains(out, "cli-s3cret") {
					t.Errorf("a secret in the output:\n%s", out)
				}
			}
		})
	}
}

// differential runs the two pulls of TestCredentialsAsTheDockerCLI.
type differential struct {
	t                  *testing.T
	bed                *testbed.Bed
	helpers, home, ref string
	envFile            string
}

// cliTimeout is how long the docker CLI may take; past it, it hangs.
const cliTimeout = 8 * time.Second

// run runs argv with env alone (PATH holds only the test helpers, so no
// helper of this machine is found), in its own process group, killed
// with its helpers after timeout; it says "hung" when it was.
func (d *differential) run(argv, env []string, timeout time.Duration) (string, string) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Env = append(env, "PATH="+d.helpers, "HOME="+d.home, "AWS_EC2_METADATA_DISABLED=true")
	cmd.Dir = d.home
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return "hung", string(out)
	case err == nil:
		return "pulled", string(out)
	case errors.As(err, &ee):
		return "refused", string(out)
	}
	d.t.Fatalf("running %v: %v", argv, err)
	return "", ""
}

// removeImage leaves the daemon without the image, so each pull starts cold.
func (d *differential) removeImage() {
	_, _ = d.run([]string{debianDocker, "--config", d.home, "rmi", "-f", d.ref}, []string{"DOCKER_HOST=" + d.bed.DockerHost}, time.Minute)
}

func (d *differential) cli(dir string) (string, string) {
	d.removeImage()
	return d.run([]string{debianDocker, "--config", dir, "pull", d.ref}, []string{"DOCKER_HOST=" + d.bed.DockerHost}, cliTimeout)
}

func (d *differential) agent(dir string) (string, string) {
	d.removeImage()
	argv := []string{os.Args[0], "pull", "--env-file", d.envFile, "--helper-timeout", "1s", "--quiet"}
	return d.run(argv, []string{"PULL_AGENT_TEST_MAIN=1", "DOCKER_CONFIG=" + dir}, time.Minute)
}
