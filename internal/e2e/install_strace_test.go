package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// straceInstall runs install.sh under strace, following every child, and
// returns its exit code, its output and the trace of the given system calls
// (strace's -e trace= list). Without strace the test skips, or fails when CI
// is set.
func straceInstall(t *testing.T, syscalls string, args ...string) (code int, out, trace string) {
	t.Helper()
	if _, err := exec.LookPath("strace"); err != nil {
		testbed.SkipOrFail(t, fmt.Errorf("strace not found: run 'make deps' (apt-get install strace): %w", err))
	}
	traceFile := filepath.Join(t.TempDir(), "strace.out")
	argv := append([]string{"-f", "-qq", "-e", "trace=" + syscalls, "-s", "4096", "-o", traceFile,
		"bash", filepath.Join(repoRoot(t), "install.sh")}, args...)
	output, err := exec.Command("strace", argv...).CombinedOutput()
	var ee *exec.ExitError
	switch {
	case errors.As(err, &ee):
		code = ee.ExitCode()
	case err != nil:
		t.Fatal(err)
	}
	data, err := os.ReadFile(traceFile)
	if err != nil {
		t.Fatalf("strace left no trace (%v); its output:\n%s", err, output)
	}
	return code, string(output), string(data)
}

// writeToken writes a token file the way user-data does: the value and a
// newline, mode 0600.
func writeToken(t *testing.T, value string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "ghcr-token")
	if err := os.WriteFile(f, []byte(value+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// The GHCR token must never be an argument of any program install.sh starts:
// every local user can read every process's command line (/proc/*/cmdline,
// ps). Runs as the README's user-data does, plus --root so no systemctl is
// needed: a first install, the same again (the nothing-changed path) and a
// rotated token.
func TestInstallKeepsTheTokenOffEveryCommandLine(t *testing.T) {
	bin := buildBinary(t, t.TempDir())
	root := t.TempDir()
	envPath := filepath.Join(root, "etc/pull-agent/pull-agent.env")
	first, rotated := "ghp_argvCanary0first0Zq7", "ghp_argvCanary1rotated0Xw3"
	for _, step := range []struct{ name, token string }{
		{"first install", first},
		{"same inputs again", first},
		{"rotated token", rotated},
	} {
		code, out, trace := straceInstall(t, "execve,execveat",
			"--root", root, "--binary", bin,
			"--registry", "123456789012.dkr.ecr.us-east-2.amazonaws.com/molecule-ai",
			"--ghcr-user", "bot", "--ghcr-token-file", writeToken(t, step.token))
		if code != 0 {
			t.Fatalf("%s: install.sh exit %d\n%s", step.name, code, out)
		}
		// The trace must have followed the children, or it proves nothing:
		// install.sh runs the binary with 'version'.
		if !strings.Contains(trace, `execve("`+bin+`", ["`+bin+`", "version"]`) {
			t.Fatalf("%s: the trace lacks the binary's 'version' run; did strace follow the children?\n%s", step.name, trace)
		}
		for _, line := range strings.Split(trace, "\n") {
			for _, tok := range []string{first, rotated} {
				if strings.Contains(line, tok) {
					t.Errorf("%s: the token is on a command line:\n%s", step.name, line)
				}
			}
		}
		if strings.Contains(out, step.token) {
			t.Errorf("%s: install.sh printed the token:\n%s", step.name, out)
		}
		env, err := os.ReadFile(envPath)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(env), "GHCR_TOKEN='"+step.token+"'\n") {
			t.Fatalf("%s: the env file lacks the token, so the trace proves nothing:\n%s", step.name, env)
		}
	}
}
