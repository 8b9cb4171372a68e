package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// Debian's docker-credential-ecr-login (0.6) cannot have its endpoint
// overridden, so it reaches the fake ECR API under the real API host name:
// the command runs in a private mount namespace whose /etc/hosts points
// api.ecr.us-east-2.amazonaws.com at 127.0.0.1:443, where the fake API
// answers over TLS with a certificate the helper trusts via AWS_CA_BUNDLE.
// The test daemon resolves the ECR-shaped registry name the same way.
func TestPullWithDebiansECRCredentialHelper(t *testing.T) {
	testbed.Require(t)
	if _, err := exec.LookPath("docker-credential-ecr-login"); err != nil {
		testbed.SkipOrFail(t, fmt.Errorf("docker-credential-ecr-login not installed (make deps installs amazon-ecr-credential-helper): %w", err))
	}
	const (
		ecrHost = "123456789012.dkr.ecr.us-east-2.amazonaws.com"
		apiHost = "api.ecr.us-east-2.amazonaws.com"
		secret  = "ecr-helper-s3cret"
	)
	ctx := context.Background()
	own, err := testbed.Start(ctx, testbed.Options{Logf: t.Logf, Hosts: map[string]string{ecrHost: "127.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { own.Stop() })
	hp, err := testbed.Htpasswd(map[string]string{"AWS": secret})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := own.StartRegistry(ctx, "ecr", testbed.RegistryOptions{Htpasswd: hp})
	if err != nil {
		t.Fatal(err)
	}
	seed, err := own.Seed(ctx, reg, "molecule-ai", []string{"codex"}, testbed.SeedOptions{Username: "AWS", Password: secret})
	if err != nil {
		t.Fatal(err)
	}
	api, caPEM, err := testbed.NewFakeECRTLS("127.0.0.1:443", apiHost, ecrHost, secret, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { api.Close() })

	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	_, port, _ := strings.Cut(reg.Addr, ":")
	registryHost := ecrHost + ":" + port
	cfg, _ := json.Marshal(map[string]any{"credHelpers": map[string]string{registryHost: "ecr-login"}})
	if err := os.MkdirAll(filepath.Join(dir, "docker"), 0o700); err != nil {
		t.Fatal(err)
	}
	write("docker/config.json", string(cfg))
	ca := write("ca.pem", string(caPEM))
	hosts := write("hosts", "127.0.0.1 localhost\n127.0.0.1 "+apiHost+"\n")
	envFile := write("pull-agent.env", config.KeyRegistry+"="+registryHost+"/molecule-ai\n"+config.KeyRuntimes+"=codex\nDOCKER_HOST="+own.DockerHost+"\n")

	out, err := pullWithHosts(hosts, envFile, dir, ca)
	t.Logf("output:\n%s", out)
	if err != nil {
		t.Fatalf("pull through docker-credential-ecr-login: %v", err)
	}
	if !strings.Contains(string(out), "1/1 images present and verified") || !strings.Contains(string(out), `auth="config.json credHelpers: ecr-login"`) {
		t.Fatal("the pull did not go through the helper")
	}
	if !strings.Contains(string(out), seed["codex"].Digest.String()) {
		t.Errorf("pulled digest is not the seeded %s", seed["codex"].Digest)
	}
	if api.Calls() == 0 {
		t.Error("the helper never called the (fake) ECR API")
	}
	for _, s := range []string{secret, "aws-helper-s3cret"} {
		if strings.Contains(string(out), s) {
			t.Errorf("%s leaked into the output", s)
		}
	}
}

// pullWithHosts runs this binary as 'pull-agent pull' on envFile in a
// private mount namespace whose /etc/hosts is hosts, with an environment
// of its own: dir as HOME, dir/docker as DOCKER_CONFIG, AWS keys and ca
// as the AWS CA bundle.
func pullWithHosts(hosts, envFile, dir, ca string) ([]byte, error) {
	cmd := exec.Command("unshare", "--mount", "--propagation", "private", "--fork", "--",
		"/bin/sh", "-c", `mount --bind "$0" /etc/hosts && exec "$@"`, hosts,
		os.Args[0], "pull", "--env-file", envFile, "--state-dir", filepath.Join(dir, "state"))
	cmd.Env = []string{
		"PULL_AGENT_TEST_MAIN=1", "PATH=" + os.Getenv("PATH"), "HOME=" + dir,
		"DOCKER_CONFIG=" + filepath.Join(dir, "docker"),
		"AWS_ACCESS_KEY_ID=AKIDTESTTESTTEST", "AWS_SECRET_ACCESS_KEY=aws-helper-s3cret",
		"AWS_CA_BUNDLE=" + ca, "AWS_EC2_METADATA_DISABLED=true",
		"AWS_CONFIG_FILE=" + filepath.Join(dir, "none"), "AWS_SHARED_CREDENTIALS_FILE=" + filepath.Join(dir, "none"),
	}
	return cmd.CombinedOutput()
}
