package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/molecule-ai/pull-agent/agent"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

var update = flag.Bool("update", false, "rewrite golden files")

var bed testbed.Shared

func TestMain(m *testing.M) {
	// Process tests run this binary as the real command.
	if os.Getenv("PULL_AGENT_TEST_MAIN") == "1" {
		main()
		os.Exit(0)
	}
	// No test may reach the EC2 instance metadata service.
	os.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	os.Exit(bed.Main(m))
}

// runCLI runs the program and returns its exit code and output. Unless env
// names a Docker config directory (DOCKER_CONFIG or HOME), it gets an empty
// one: the machine's own (/root/.docker) is never read.
func runCLI(t *testing.T, env map[string]string, args ...string) (int, string, string) {
	t.Helper()
	if env["DOCKER_CONFIG"] == "" && env["HOME"] == "" {
		env = maps.Clone(env)
		if env == nil {
			env = map[string]string{}
		}
		env["DOCKER_CONFIG"] = t.TempDir()
	}
	var out, errb bytes.Buffer
	err := run(context.Background(), args, func(k string) string { return env[k] }, &out, &errb)
	code := 0
	if err != nil {
		var ee *exitError
		if errors.As(err, &ee) {
			code = ee.code
			if ee.err != nil {
				errb.WriteString(ee.err.Error())
			}
		} else {
			code = 1
			errb.WriteString(err.Error())
		}
	}
	return code, out.String(), errb.String()
}

func writeFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "pull-agent.env")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func golden(t *testing.T, name, got string) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.WriteFile(p, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("%v (run go test -update to create it)", err)
	}
	if got != string(want) {
		t.Errorf("output differs from %s:\n--- got\n%s\n--- want\n%s", p, got, want)
	}
}

func TestVersionAndUsage(t *testing.T) {
	code, out, _ := runCLI(t, nil, "version")
	if code != 0 || !strings.HasPrefix(out, "pull-agent "+version+" (go") {
		t.Fatalf("version: %d %q", code, out)
	}
	if code, _, errOut := runCLI(t, nil); code != exitUsage || !strings.Contains(errOut, "no command") {
		t.Fatalf("no args: %d %q", code, errOut)
	}
	if code, _, errOut := runCLI(t, nil, "frobnicate"); code != exitUsage || !strings.Contains(errOut, `unknown command "frobnicate"`) {
		t.Fatalf("unknown: %d %q", code, errOut)
	}
	if code, _, _ := runCLI(t, nil, "pull", "--concurrency", "0", "--env-file", writeFile(t, "")); code != exitUsage {
		t.Fatalf("concurrency 0: %d", code)
	}
	if code, _, _ := runCLI(t, nil, "images", "-h"); code != 0 {
		t.Fatalf("-h: %d", code)
	}
}

func TestImagesGolden(t *testing.T) {
	file := writeFile(t, "# test\nMOLECULE_IMAGE_REGISTRY=ghcr.io/molecule-ai/\nGHCR_USER=bot\nGHCR_TOKEN='secret-token'\nMOLECULE_RUNTIME_PINS=hermes=sha256:"+strings.Repeat("0", 64)+"\n")
	env := map[string]string{agent.KeyRegistry: "ignored.example.test/x"}
	code, out, errOut := runCLI(t, env, "images", "--env-file", file)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	golden(t, "images.txt", out)
	code, out, errOut = runCLI(t, env, "images", "--env-file", file, "--json")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errOut)
	}
	golden(t, "images.json", out)
	if strings.Contains(out, "secret-token") {
		t.Fatal("images prints the token")
	}
	// The same file naming another registry: credentials stay with ghcr.io.
	file2 := writeFile(t, "MOLECULE_IMAGE_REGISTRY=127.0.0.1:5000/m\nGHCR_USER=bot\nGHCR_TOKEN=secret-token\n")
	_, out, _ = runCLI(t, nil, "images", "--env-file", file2)
	if strings.Contains(out, "ghcr env credentials") || strings.Count(out, "anonymous") != 9 {
		t.Fatalf("non-ghcr host shows credentials:\n%s", out)
	}
}

func TestConfigErrorsExitTwoAndNameTheLine(t *testing.T) {
	tests := []struct {
		name, file, want string
	}{
		{"unparsable line", "A=1\nnot an assignment\n", ":2: the line has no '='; write KEY=VALUE"},
		{"token on a line without '='", "A=1\nGHCR_TOKEN: ghp_cli-s3cret\n", ":2: the line setting GHCR_TOKEN has no '='"},
		{"refused prefix", "\n\nMOLECULE_IMAGE_REGISTRY=https://ghcr.io/x\n", `:3: MOLECULE_IMAGE_REGISTRY="https://ghcr.io/x": a prefix has no URL scheme`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := writeFile(t, tt.file)
			for _, cmd := range []string{"images", "pull"} {
				code, _, errOut := runCLI(t, nil, cmd, "--env-file", f)
				if code != exitUsage || !strings.Contains(errOut, f+tt.want) {
					t.Errorf("%s: exit %d, stderr %q, want %q", cmd, code, errOut, f+tt.want)
				}
				if strings.Contains(errOut, "s3cret") {
					t.Errorf("%s: the error repeats the token: %q", cmd, errOut)
				}
			}
		})
	}
	code, _, errOut := runCLI(t, nil, "images", "--env-file", "/nonexistent/pull-agent.env")
	if code != exitUsage || !strings.Contains(errOut, "no such file") {
		t.Errorf("explicit missing file: %d %q", code, errOut)
	}
}

func TestPullDaemonUnreachable(t *testing.T) {
	f := writeFile(t, "DOCKER_HOST=unix://"+filepath.Join(t.TempDir(), "none.sock")+"\n")
	code, _, errOut := runCLI(t, nil, "pull", "--env-file", f)
	if code != exitFailed || !strings.Contains(errOut, "cannot reach the Docker daemon") {
		t.Fatalf("exit %d, stderr %q", code, errOut)
	}
}

func TestPullAgainstTheBed(t *testing.T) {
	b := bed.Get(t)
	reg := b.Registry("main")
	ctx := context.Background()
	all := agent.KnownRuntimes()
	if _, err := b.Seed(ctx, reg, "cli-all", all, testbed.SeedOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Seed(ctx, reg, "cli-partial", slices.DeleteFunc(slices.Clone(all), func(s string) bool { return s == "langgraph" }), testbed.SeedOptions{}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{agent.KeyDockerHost: b.DockerHost}

	t.Run("all present", func(t *testing.T) {
		f := writeFile(t, agent.KeyRegistry+"="+reg.Prefix("cli-all")+"\n")
		code, out, errOut := runCLI(t, env, "pull", "--env-file", f)
		if code != 0 || !strings.Contains(out, "9/9 images present and verified") {
			t.Fatalf("exit %d\nstdout %s\nstderr %s", code, out, errOut)
		}
		// Not a terminal: one structured line per start and finish.
		if n := strings.Count(errOut, `msg="image pulled"`); n != 9 {
			t.Errorf("%d 'image pulled' lines, want 9:\n%s", n, errOut)
		}
		code, out, errOut = runCLI(t, env, "pull", "--quiet", "--env-file", f)
		if code != 0 || out != "" || errOut != "" {
			t.Fatalf("--quiet: exit %d, stdout %q, stderr %q", code, out, errOut)
		}
	})
	t.Run("one missing", func(t *testing.T) {
		f := writeFile(t, agent.KeyRegistry+"="+reg.Prefix("cli-partial")+"\n")
		code, out, errOut := runCLI(t, env, "pull", "--env-file", f, "--concurrency", "2")
		if code != exitFailed {
			t.Fatalf("exit %d, want 1\n%s\n%s", code, out, errOut)
		}
		if !strings.Contains(out, "8/9 images present") {
			t.Errorf("stdout %q", out)
		}
		if !strings.Contains(errOut, "1 image(s) failed:\n  langgraph  "+reg.Prefix("cli-partial")+"/workspace-template-langgraph:latest  [not-found]") {
			t.Errorf("summary does not name the missing image:\n%s", errOut)
		}
	})
}

func TestImagesExplainsCredentialSources(t *testing.T) {
	const ecr = "123456789012.dkr.ecr.us-east-2.amazonaws.com"
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(`{"credHelpers": {"helped.example.test": "ecr-login"}, "auths": {"auths.example.test": {"auth": "dTpw"}}}`), 0o600); err != nil {
		t.Fatal(err)
	}
	for prefix, want := range map[string]string{
		"helped.example.test/m": "config.json credHelpers: ecr-login",
		"auths.example.test/m":  "config.json auths",
		ecr + "/m":              "ecr-login (AWS default credential chain)",
		"other.example.test/m":  "anonymous",
	} {
		f := writeFile(t, agent.KeyRegistry+"="+prefix+"\n"+agent.KeyRuntimes+"=codex\n")
		code, out, errOut := runCLI(t, map[string]string{"DOCKER_CONFIG": dir}, "images", "--env-file", f)
		if code != 0 || !strings.Contains(out, want) {
			t.Errorf("%s: exit %d, want %q in:\n%s%s", prefix, code, want, out, errOut)
		}
	}
}

func TestWarnsWhenTheEnvFileWithATokenIsReadable(t *testing.T) {
	f := writeFile(t, "GHCR_USER=bot\nGHCR_TOKEN=tok-s3cret\n")
	if err := os.Chmod(f, 0o644); err != nil {
		t.Fatal(err)
	}
	_, out, errOut := runCLI(t, nil, "images", "--env-file", f)
	if !strings.Contains(errOut, "env file holds GHCR_TOKEN and is readable by group or others") || !strings.Contains(errOut, "mode=0644") {
		t.Fatalf("no warning:\n%s", errOut)
	}
	if strings.Contains(out+errOut, "tok-s3cret") {
		t.Fatal("the token leaked")
	}
	if err := os.Chmod(f, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, _, errOut := runCLI(t, nil, "images", "--env-file", f); strings.Contains(errOut, "readable by group") {
		t.Fatalf("warned about a 0600 file:\n%s", errOut)
	}
}
