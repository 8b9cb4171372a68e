package e2e

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
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

// ranVersion matches the execve of 'pull-agent version' in a trace.
var ranVersion = regexp.MustCompile(`execve\("[^"]*/pull-agent", \["[^"]*/pull-agent", "version"\]`)

// execs is the execve lines of a trace.
func execs(trace string) string {
	var b strings.Builder
	for _, line := range strings.Split(trace, "\n") {
		if strings.Contains(line, "execve") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
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
		// install.sh runs the binary (or its copy) with 'version'.
		if !ranVersion.MatchString(trace) {
			t.Fatalf("%s: the trace lacks the binary's 'version' run; did strace follow the children?\n%s", step.name, execs(trace))
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

// envWrites lists the system calls in trace that wrote path and succeeded:
// an open for writing, or a rename or link onto it.
func envWrites(trace, path string) []string {
	var writes []string
	for _, line := range strings.Split(trace, "\n") {
		_, call, _ := strings.Cut(line, " ") // after the pid
		call = strings.TrimSpace(call)
		if !strings.Contains(call, `"`+path+`"`) || strings.Contains(call, "= -1 ") {
			continue
		}
		switch {
		case strings.HasPrefix(call, "rename"), strings.HasPrefix(call, "link"):
			writes = append(writes, call)
		case strings.HasPrefix(call, "open"), strings.HasPrefix(call, "creat"):
			for _, flag := range []string{"O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "creat("} {
				if strings.Contains(call, flag) {
					writes = append(writes, call)
					break
				}
			}
		}
	}
	return writes
}

// The agent watches the env file and reloads on every change, so the keys
// install.sh sets must arrive together: one rename of a complete file,
// never GHCR_USER without its GHCR_TOKEN, never a file written in place.
// A run that changes no key writes nothing.
func TestInstallWritesTheEnvFileInOneRename(t *testing.T) {
	bin := buildBinary(t, t.TempDir())
	root := t.TempDir()
	envPath := filepath.Join(root, "etc/pull-agent/pull-agent.env")
	const ecr = "123456789012.dkr.ecr.us-east-2.amazonaws.com/molecule-ai"
	for _, step := range []struct {
		name, registry, user, token string
		writes                      int
	}{
		{"first install: example settings and three keys", ecr, "bot", "ghp_one", 1},
		{"same inputs again", ecr, "bot", "ghp_one", 0},
		{"new prefix, user and token", "ghcr.io/molecule-ai", "bot2", "ghp_two", 1},
	} {
		code, out, trace := straceInstall(t, "open,openat,creat,rename,renameat,renameat2,link,linkat",
			"--root", root, "--binary", bin, "--registry", step.registry,
			"--ghcr-user", step.user, "--ghcr-token-file", writeToken(t, step.token))
		if code != 0 {
			t.Fatalf("%s: install.sh exit %d\n%s", step.name, code, out)
		}
		if !strings.Contains(trace, `"`+bin+`"`) {
			t.Fatalf("%s: the trace never opened the binary; did strace trace anything?\n%s", step.name, trace)
		}
		if writes := envWrites(trace, envPath); len(writes) != step.writes {
			t.Errorf("%s: %d writes of the env file, want %d:\n%s", step.name, len(writes), step.writes, strings.Join(writes, "\n"))
		}
		env, err := os.ReadFile(envPath)
		if err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"MOLECULE_IMAGE_REGISTRY='" + step.registry + "'\n", "GHCR_USER='" + step.user + "'\n", "GHCR_TOKEN='" + step.token + "'\n", "#MOLECULE_RUNTIMES="} {
			if strings.Count(string(env), want) != 1 {
				t.Errorf("%s: env file lacks (once) %q:\n%s", step.name, want, env)
			}
		}
		if st, err := os.Stat(envPath); err != nil {
			t.Fatal(err)
		} else if st.Mode().Perm() != 0o600 {
			t.Errorf("%s: env file mode %v, want 0600", step.name, st.Mode().Perm())
		}
		leftovers, _ := filepath.Glob(filepath.Join(root, "etc/pull-agent/.*"))
		if len(leftovers) != 0 {
			t.Errorf("%s: temp files left: %v", step.name, leftovers)
		}
	}
}
