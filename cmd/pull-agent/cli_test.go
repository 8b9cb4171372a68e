package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/molecule-ai/pull-agent/agent/config"
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
	env := map[string]string{config.KeyRegistry: "ignored.example.test/x"}
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

// Every command ends a usage error with the same code, 64: a bad flag, a
// bad flag value, a stray argument, a refused env file or configuration.
// 'run' is the exception for the env file alone: the agent starts with a
// refused one and waits for a good one (TestRunStartsWithARefusedEnvFile).
func TestUsageErrorsExit64InEveryCommand(t *testing.T) {
	if exitUsage != 64 {
		t.Fatalf("exitUsage = %d; the usage code is EX_USAGE, 64", exitUsage)
	}
	badLine := writeFile(t, "A=1\nnot an assignment\n")
	badPrefix := writeFile(t, config.KeyRegistry+"=https://ghcr.io/x\n")
	missing := filepath.Join(t.TempDir(), "none.env")
	good := writeFile(t, config.KeyRuntimes+"=codex\n")
	type tc struct {
		name string
		args []string
		want string // in stderr
	}
	common := func(cmd string) []tc {
		return []tc{
			{"unknown flag", []string{"--bogus"}, "flag provided but not defined: -bogus"},
			{"stray argument", []string{"--env-file", good, "extra"}, `unexpected argument "extra"`},
			{"bad --log-level", []string{"--env-file", good, "--log-level", "loud"}, `--log-level "loud"`},
			{"bad --log-format", []string{"--env-file", good, "--log-format", "xml"}, `--log-format "xml"`},
			{"flag without value", []string{"--env-file"}, "flag needs an argument"},
		}
	}
	refused := []tc{
		{"env file with a bad line", []string{"--env-file", badLine}, badLine + ":2: the line has no '='"},
		{"configuration refused", []string{"--env-file", badPrefix}, "configuration refused"},
		{"named env file missing", []string{"--env-file", missing}, "no such file"},
	}
	tests := map[string][]tc{
		"images": append(common("images"), refused...),
		"pull": append(append(common("pull"), refused...),
			tc{"--concurrency 0", []string{"--env-file", good, "--concurrency", "0"}, "--concurrency 0: must be 1 or more"}),
		"check": append(append(common("check"), refused...),
			tc{"bad --prefix", []string{"--env-file", good, "--prefix", "https://ghcr.io/x"}, `--prefix "https://ghcr.io/x"`},
			tc{"bad --compare", []string{"--env-file", good, "--compare", "ghcr.io/X"}, `--compare "ghcr.io/X"`}),
		"run": append(common("run"),
			tc{"--concurrency 0", []string{"--concurrency", "0"}, "--concurrency 0: must be 1 or more"},
			tc{"negative duration", []string{"--debounce", "-1s"}, "durations must not be negative"},
			tc{"--retry-max below --retry-initial", []string{"--retry-initial", "2s", "--retry-max", "1s"}, "--retry-max 1s is below --retry-initial 2s"}),
		"status": {
			{"unknown flag", []string{"--bogus"}, "flag provided but not defined: -bogus"},
			{"stray argument", []string{"extra"}, `unexpected argument "extra"`},
			{"--json and --quiet", []string{"--json", "--quiet"}, "exclude each other"},
			{"--timeout 0", []string{"--wait", "--timeout", "0s"}, "--timeout 0s: must be positive"},
			{"bad duration", []string{"--timeout", "soon"}, `invalid value "soon" for flag -timeout`},
		},
	}
	if len(tests) != len(commands()) {
		t.Fatalf("cases for %d commands, %d have exit codes", len(tests), len(commands()))
	}
	for _, cmd := range commands() {
		for _, tt := range tests[cmd] {
			t.Run(cmd+"/"+tt.name, func(t *testing.T) {
				code, _, errOut := runCLI(t, nil, append([]string{cmd}, tt.args...)...)
				if code != exitUsage || !strings.Contains(errOut, tt.want) {
					t.Errorf("exit %d, want %d; stderr %q, want it to contain %q", code, exitUsage, errOut, tt.want)
				}
			})
		}
	}
}

// 'run' with a refused env file is no usage error: the agent starts, says
// why it has nothing to pull, and waits for a good file (here, until its
// context, cancelled from the start, stops it: exit 0).
func TestRunStartsWithARefusedEnvFile(t *testing.T) {
	dir := t.TempDir()
	bad := writeFile(t, "A=1\nnot an assignment\n")
	code, errOut := runCLICancelled(t, nil, "run", "--env-file", bad, "--state-dir", filepath.Join(dir, "state"), "--status-socket", filepath.Join(dir, "status.sock"))
	if code != exitOK || !strings.Contains(errOut, "configuration refused; nothing to pull until the env file is fixed") {
		t.Fatalf("exit %d, want %d; stderr:\n%s", code, exitOK, errOut)
	}
}

// Every command's -h prints its exit codes from the one table, usage
// included, and exits 0; so does the overview.
func TestHelpPrintsTheExitCodes(t *testing.T) {
	for _, cmd := range commands() {
		code, _, errOut := runCLI(t, nil, cmd, "-h")
		if code != exitOK {
			t.Errorf("%s -h: exit %d", cmd, code)
		}
		for _, m := range exitCodes(cmd) {
			if !strings.Contains(errOut, fmt.Sprintf("\n  %-3d ", m.code)) {
				t.Errorf("%s -h does not list exit code %d:\n%s", cmd, m.code, errOut)
			}
		}
		if !strings.Contains(errOut, "  64  usage error") {
			t.Errorf("%s -h: no usage code:\n%s", cmd, errOut)
		}
	}
	_, out, _ := runCLI(t, nil, "help")
	for _, want := range []string{"64 is a usage error in every command", "  status   0 all warm, 1 degraded, 2 agent down, 3 no state\n", "  check    0 ok, 1 not ok, 2 Docker unreachable\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("help lacks %q:\n%s", want, out)
		}
	}
}

func TestConfigErrorsExitUsageAndNameTheLine(t *testing.T) {
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
			for _, cmd := range []string{"images", "pull", "check"} {
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
	all := config.KnownRuntimes()
	if _, err := b.Seed(ctx, reg, "cli-all", all, testbed.SeedOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Seed(ctx, reg, "cli-partial", slices.DeleteFunc(slices.Clone(all), func(s string) bool { return s == "langgraph" }), testbed.SeedOptions{}); err != nil {
		t.Fatal(err)
	}
	env := map[string]string{config.KeyDockerHost: b.DockerHost}

	t.Run("all present", func(t *testing.T) {
		f := writeFile(t, config.KeyRegistry+"="+reg.Prefix("cli-all")+"\n")
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
		f := writeFile(t, config.KeyRegistry+"="+reg.Prefix("cli-partial")+"\n")
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
		f := writeFile(t, config.KeyRegistry+"="+prefix+"\n"+config.KeyRuntimes+"=codex\n")
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
