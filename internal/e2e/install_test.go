package e2e

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// buildBinary builds pull-agent once per test into dir.
func buildBinary(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "pull-agent")
	cmd := exec.Command("go", "build", "-trimpath", "-o", bin, "./cmd/pull-agent")
	cmd.Dir, cmd.Env = repoRoot(t), append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	return bin
}

func installSh(t *testing.T, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command("bash", append([]string{filepath.Join(repoRoot(t), "install.sh")}, args...)...)
	out, err := cmd.CombinedOutput()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return code, string(out)
}

// tree lists every path under root with its mode and content hash.
func tree(t *testing.T, root string) string {
	t.Helper()
	var b strings.Builder
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(root, p)
		sum := ""
		if info.Mode().IsRegular() {
			data, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			h := sha256.Sum256(data)
			sum = hex.EncodeToString(h[:8])
		}
		fmt.Fprintf(&b, "%s %s %s\n", info.Mode(), rel, sum)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return b.String()
}

// settings is the env file without its comments and blank lines.
func settings(env []byte) string {
	var b strings.Builder
	for _, line := range strings.Split(string(env), "\n") {
		if line != "" && !strings.HasPrefix(line, "#") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

func TestInstallIntoARootIsIdempotent(t *testing.T) {
	bin := buildBinary(t, t.TempDir())
	root := t.TempDir()
	token := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(token, []byte("ghp_install-s3cret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"--root", root, "--binary", bin, "--registry", "123456789012.dkr.ecr.us-east-2.amazonaws.com/molecule-ai", "--ghcr-user", "bot", "--ghcr-token-file", token}
	if code, out := installSh(t, args...); code != 0 {
		t.Fatalf("install: %d\n%s", code, out)
	}
	first := tree(t, root)
	if code, out := installSh(t, args...); code != 0 {
		t.Fatalf("second install: %d\n%s", code, out)
	}
	if second := tree(t, root); second != first {
		t.Fatalf("a second run changed the tree:\n%s\n---\n%s", first, second)
	}
	t.Logf("installed tree:\n%s", first)
	for path, mode := range map[string]os.FileMode{
		"usr/local/bin/pull-agent":              0o755,
		"etc/systemd/system/pull-agent.service": 0o644,
		"etc/pull-agent/pull-agent.env":         0o600,
	} {
		st, err := os.Stat(filepath.Join(root, path))
		if err != nil || st.Mode().Perm() != mode {
			t.Errorf("%s: %v mode %v, want %v", path, err, st.Mode().Perm(), mode)
		}
	}
	env, _ := os.ReadFile(filepath.Join(root, "etc/pull-agent/pull-agent.env"))
	for _, want := range []string{"MOLECULE_IMAGE_REGISTRY='123456789012.dkr.ecr.us-east-2.amazonaws.com/molecule-ai'", "GHCR_USER='bot'", "GHCR_TOKEN='ghp_install-s3cret'"} {
		if strings.Count(string(env), want) != 1 {
			t.Errorf("env file lacks (once) %s:\n%s", want, env)
		}
	}
	// An operator's edits survive a reinstall; only the named keys change.
	envPath := filepath.Join(root, "etc/pull-agent/pull-agent.env")
	if err := os.WriteFile(envPath, append(env, []byte("MOLECULE_RUNTIMES=codex\n")...), 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out := installSh(t, "--root", root, "--binary", bin, "--registry", "ghcr.io/molecule-ai"); code != 0 {
		t.Fatalf("reinstall: %d\n%s", code, out)
	}
	env, _ = os.ReadFile(envPath)
	if !strings.Contains(string(env), "MOLECULE_RUNTIMES=codex") || !strings.Contains(string(env), "MOLECULE_IMAGE_REGISTRY='ghcr.io/molecule-ai'") || strings.Contains(string(env), "MOLECULE_IMAGE_REGISTRY='123456789012") {
		t.Errorf("after reinstall:\n%s", env)
	}
	// The installed binary parses what install.sh wrote.
	cmd := exec.Command(filepath.Join(root, "usr/local/bin/pull-agent"), "images", "--env-file", envPath)
	if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "ghcr.io/molecule-ai/workspace-template-codex:latest") || strings.Contains(string(out), "s3cret") {
		t.Errorf("images on the installed env file: %v\n%s", err, out)
	}

	if code, out := installSh(t, "--root", root, "--uninstall"); code != 0 {
		t.Fatalf("uninstall: %d %s", code, out)
	}
	for _, p := range []string{"usr/local/bin/pull-agent", "etc/systemd/system/pull-agent.service"} {
		if _, err := os.Stat(filepath.Join(root, p)); err == nil {
			t.Errorf("%s survived --uninstall", p)
		}
	}
	if _, err := os.Stat(envPath); err != nil {
		t.Errorf("--uninstall removed the env file: %v", err)
	}
	if code, out := installSh(t, "--root", root, "--uninstall", "--purge"); code != 0 {
		t.Fatalf("purge: %d %s", code, out)
	}
	if _, err := os.Stat(envPath); err == nil {
		t.Error("--purge kept the env file")
	}
}

func TestInstallRefusals(t *testing.T) {
	bin := buildBinary(t, t.TempDir())
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.Write(data) }))
	defer srv.Close()
	good := sha256.Sum256(data)

	notELF := filepath.Join(t.TempDir(), "pull-agent")
	os.WriteFile(notELF, []byte("#!/bin/sh\necho hi\n"), 0o755)
	armELF := filepath.Join(t.TempDir(), "pull-agent")
	arm := append([]byte(nil), data...)
	arm[18], arm[19] = 183, 0 // EM_AARCH64
	os.WriteFile(armELF, arm, 0o755)
	tokenFile := filepath.Join(t.TempDir(), "token")
	os.WriteFile(tokenFile, []byte("tok"), 0o600)

	tests := []struct {
		name string
		args []string
		code int
		want string
	}{
		{"checksum mismatch", []string{"--url", srv.URL + "/pull-agent", "--sha256", strings.Repeat("0", 64)}, 5, "checksum mismatch"},
		{"url without sha256", []string{"--url", srv.URL}, 2, "--url needs --sha256"},
		{"binary with the wrong sha256", []string{"--binary", bin, "--sha256", strings.Repeat("0", 64)}, 5, "checksum mismatch"},
		{"sha256 with nothing to check", []string{"--sha256", hex.EncodeToString(good[:])}, 2, "--sha256 goes with --url or --binary"},
		{"token on the command line", []string{"--binary", bin, "--ghcr-token", "tok"}, 2, "shows in ps"},
		{"token file without user", []string{"--binary", bin, "--ghcr-token-file", tokenFile}, 2, "needs --ghcr-user"},
		{"not an ELF", []string{"--binary", notELF}, 6, "not an ELF executable"},
		{"wrong architecture", []string{"--binary", armELF}, 6, "another architecture"},
		{"unreadable", []string{"--binary", "/nonexistent/pull-agent"}, 6, "cannot read"},
		{"unknown option", []string{"--frobnicate"}, 2, "unknown option"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			code, out := installSh(t, append([]string{"--root", root}, tt.args...)...)
			if code != tt.code || !strings.Contains(out, tt.want) || !strings.Contains(out, "hint:") && tt.code != 2 {
				t.Fatalf("exit %d, want %d with %q:\n%s", code, tt.code, tt.want, out)
			}
			if _, err := os.Stat(filepath.Join(root, "usr/local/bin/pull-agent")); err == nil {
				t.Error("a refused install left a binary")
			}
		})
	}
	// The right checksum installs from the URL, and from a file.
	root := t.TempDir()
	if code, out := installSh(t, "--root", root, "--url", srv.URL+"/pull-agent", "--sha256", hex.EncodeToString(good[:])); code != 0 {
		t.Fatalf("download with the right checksum: %d\n%s", code, out)
	}
	if code, out := installSh(t, "--root", t.TempDir(), "--binary", bin, "--sha256", strings.ToUpper(hex.EncodeToString(good[:]))); code != 0 {
		t.Fatalf("binary with the right checksum: %d\n%s", code, out)
	}
	// Not root, on the live system.
	cmd := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "bash", filepath.Join(repoRoot(t), "install.sh"), "--binary", bin)
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 3 || !strings.Contains(string(out), "must run as root") {
		t.Errorf("as nobody: %v\n%s", err, out)
	}
}

// A refused install changes nothing: every input (prefix, user, token file,
// binary, checksum) is checked before the first file is written, so a bad
// one leaves the binary, the unit and every key of the env file as they
// were. The script used to replace the binary and the unit and write the
// prefix and GHCR_USER before it read the token file; a token with a quote
// then left GHCR_USER without its token, and the agent refused the whole
// env file ("GHCR_USER and GHCR_TOKEN must be set together").
func TestInstallRefusesBeforeChangingAnything(t *testing.T) {
	dir := t.TempDir()
	bin := buildBinary(t, dir)
	data, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	// Another build: the same binary with bytes appended still runs, and
	// installing it would change the tree.
	other := append(data, "another build"...)
	otherBin := filepath.Join(dir, "pull-agent-other")
	if err := os.WriteFile(otherBin, other, 0o755); err != nil {
		t.Fatal(err)
	}
	otherSum := sha256.Sum256(other)

	const ecr = "123456789012.dkr.ecr.us-east-2.amazonaws.com/molecule-ai"
	goodToken := rawToken(t, "ghp_after\n")
	type inputs struct {
		registry, user, token string
		extra                 []string
	}
	args := func(root string, in inputs) []string {
		if in.registry == "" {
			in.registry = ecr
		}
		if in.user == "" {
			in.user = "bot2"
		}
		if in.token == "" {
			in.token = goodToken
		}
		if in.registry == "-" { // an empty prefix, given as such
			in.registry = ""
		}
		return append([]string{"--root", root, "--binary", otherBin, "--registry", in.registry, "--ghcr-user", in.user, "--ghcr-token-file", in.token}, in.extra...)
	}
	tests := []struct {
		name string
		in   inputs
		code int
		want string
	}{
		{"token with a quote", inputs{token: rawToken(t, "ghp_it's\n")}, 2, "quote"},
		{"token with a newline inside", inputs{token: rawToken(t, "ghp_one\nghp_two\n")}, 2, "newline"},
		{"token with a NUL byte", inputs{token: rawToken(t, "ghp_nul\x00after\n")}, 2, "NUL"},
		{"empty token file", inputs{token: rawToken(t, "\n")}, 2, "empty"},
		{"missing token file", inputs{token: filepath.Join(t.TempDir(), "absent")}, 2, "cannot read"},
		{"token file is a directory", inputs{token: t.TempDir()}, 2, "cannot read"},
		{"prefix with a quote", inputs{registry: "ghcr.io/o'brien"}, 2, "quote"},
		{"empty prefix", inputs{registry: "-"}, 2, "--registry"},
		{"user with a newline", inputs{user: "bot\nGHCR_TOKEN=x"}, 2, "newline"},
		{"wrong --sha256 for --binary", inputs{extra: []string{"--sha256", strings.Repeat("0", 64)}}, 5, "checksum mismatch"},
		{"--sha256 that is no digest", inputs{extra: []string{"--sha256", "deadbeef"}}, 2, "--sha256"},
		{"binary that is not ELF", inputs{extra: []string{"--binary", rawToken(t, "#!/bin/sh\n")}}, 6, "not an ELF"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root, before := installed(t, bin)
			refusedInstallChangesNothing(t, root, before, args(root, tt.in), tt.code, tt.want)
		})
	}

	// The control: the same inputs, all good (and the right checksum),
	// change everything, so the rows above could have seen a change.
	root, before := installed(t, bin)
	code, out := installSh(t, args(root, inputs{extra: []string{"--sha256", hex.EncodeToString(otherSum[:])}})...)
	if code != 0 {
		t.Fatalf("install with good inputs: %d\n%s", code, out)
	}
	checkReinstalled(t, root, before, other, ecr)
}

// rawToken writes a token file byte for byte.
func rawToken(t *testing.T, content string) string {
	t.Helper()
	f := filepath.Join(t.TempDir(), "ghcr-token")
	if err := os.WriteFile(f, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// installed is a root with a previous install of bin, and its tree.
func installed(t *testing.T, bin string) (root, before string) {
	t.Helper()
	root = t.TempDir()
	if code, out := installSh(t, "--root", root, "--binary", bin, "--registry", "ghcr.io/molecule-ai", "--ghcr-user", "bot", "--ghcr-token-file", writeToken(t, "ghp_before")); code != 0 {
		t.Fatalf("first install: %d\n%s", code, out)
	}
	return root, tree(t, root)
}

// refusedInstallChangesNothing runs install.sh with args over the install
// in root, whose tree was before: it must exit code saying want, show no
// token and leave the tree as it was.
func refusedInstallChangesNothing(t *testing.T, root, before string, args []string, code int, want string) {
	t.Helper()
	envBefore, _ := os.ReadFile(filepath.Join(root, "etc/pull-agent/pull-agent.env"))
	got, out := installSh(t, args...)
	if got != code || !strings.Contains(out, want) {
		t.Errorf("exit %d, want %d with %q:\n%s", got, code, want, out)
	}
	if strings.Contains(out, "ghp_") {
		t.Errorf("the output shows a token:\n%s", out)
	}
	if after := tree(t, root); after != before {
		t.Errorf("a refused install changed the tree:\n%s\n---\n%s", before, after)
		env, _ := os.ReadFile(filepath.Join(root, "etc/pull-agent/pull-agent.env"))
		t.Logf("settings before:\n%s\nafter:\n%s", settings(envBefore), settings(env))
	}
}

// checkReinstalled checks the install in root, whose tree was before, once
// an install of the other build with registry ecr, user bot2 and token
// ghp_after succeeded: the tree changed, the binary is other, and the env
// file holds the new settings and none of the old.
func checkReinstalled(t *testing.T, root, before string, other []byte, ecr string) {
	t.Helper()
	if tree(t, root) == before {
		t.Fatal("good inputs changed nothing, so the refusals above prove nothing")
	}
	newBin, err := os.ReadFile(filepath.Join(root, "usr/local/bin/pull-agent"))
	if err != nil || string(newBin) != string(other) {
		t.Errorf("the installed binary is not the new build (%v)", err)
	}
	env, err := os.ReadFile(filepath.Join(root, "etc/pull-agent/pull-agent.env"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"MOLECULE_IMAGE_REGISTRY='" + ecr + "'\n", "GHCR_USER='bot2'\n", "GHCR_TOKEN='ghp_after'\n"} {
		if strings.Count(string(env), want) != 1 {
			t.Errorf("env file lacks (once) %q:\n%s", want, env)
		}
	}
	for _, gone := range []string{"ghcr.io/molecule-ai'", "GHCR_USER='bot'", "ghp_before"} {
		if strings.Contains(string(env), gone) {
			t.Errorf("env file still holds %q:\n%s", gone, env)
		}
	}
}

// User-data that handles a secret runs under umask 077 (the README's
// example does); the directories install.sh creates must still be
// readable by everyone but the settings, and the settings private.
func TestInstallUnderAStrictUmask(t *testing.T) {
	bin := buildBinary(t, t.TempDir())
	root := t.TempDir()
	cmd := exec.Command("bash", "-c", `umask 077 && exec bash "$0" "$@"`, filepath.Join(repoRoot(t), "install.sh"),
		"--root", root, "--binary", bin, "--registry", "ghcr.io/molecule-ai", "--ghcr-user", "bot", "--ghcr-token-file", writeToken(t, "ghp_umask"))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("install under umask 077: %v\n%s", err, out)
	}
	for path, mode := range map[string]os.FileMode{
		"usr/local/bin":                         0o755,
		"usr/local/bin/pull-agent":              0o755,
		"etc/systemd/system":                    0o755,
		"etc/systemd/system/pull-agent.service": 0o644,
		"etc/pull-agent":                        0o750,
		"etc/pull-agent/pull-agent.env":         0o600,
	} {
		if st, err := os.Stat(filepath.Join(root, path)); err != nil {
			t.Error(err)
		} else if st.Mode().Perm() != mode {
			t.Errorf("%s: mode %v, want %v", path, st.Mode().Perm(), mode)
		}
	}
}
