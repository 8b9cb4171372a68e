package e2e

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// distArchs are the architectures a release is built for, with the ELF
// machine of each.
var distArchs = map[string]elf.Machine{"amd64": elf.EM_X86_64, "arm64": elf.EM_AARCH64}

// distFiles are the names of a release, relative to the directory each
// tarball holds, as tar lists them (sorted).
var distFiles = []string{"", "LICENSE", "README.md", "deploy/", "deploy/prometheus/", "deploy/prometheus/pull-agent.rules.yml", "install.sh", "pull-agent", "systemd/", "systemd/pull-agent.env", "systemd/pull-agent.service"}

// makeDist runs 'make dist' of the checkout at root with VERSION and
// DISTDIR=out and returns how long it took.
func makeDist(t *testing.T, root, version, out string) time.Duration {
	t.Helper()
	start := time.Now()
	cmd := exec.Command("make", "-s", "dist", "VERSION="+version, "DISTDIR="+out)
	cmd.Dir = root
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("make dist: %v\n%s", err, b)
	}
	return time.Since(start)
}

// commitTime is the time of the last commit of the checkout at root.
func commitTime(t *testing.T, root string) int64 {
	t.Helper()
	out, err := exec.Command("git", "-C", root, "log", "-1", "--format=%ct").Output()
	if err != nil {
		t.Fatalf("git log: %v", err)
	}
	n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// copyCheckout copies the files of the checkout at root that git tracks or
// would track (no .git, nothing ignored) into a new directory, under umask
// 077: other paths, other mtimes, other modes.
func copyCheckout(t *testing.T, root string) string {
	t.Helper()
	dst := filepath.Join(t.TempDir(), "elsewhere")
	script := `umask 077 && mkdir "$1" && git ls-files -z -co --exclude-standard | xargs -0 cp --parents -t "$1"`
	cmd := exec.Command("bash", "-c", script, "bash", dst)
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("copying the checkout: %v\n%s", err, out)
	}
	return dst
}

// The same commit gives the same bytes: 'make dist' in the checkout, and
// scripts/dist.sh in a copy of it at another path, under another umask,
// with other mtimes, no git and a GOAMD64 that would change the binary.
func TestDistIsReproducible(t *testing.T) {
	root := repoRoot(t)
	const version = "9.9.9-rc.1"
	first := t.TempDir()
	took := makeDist(t, root, version, first)
	t.Logf("make dist: %s", took.Round(100*time.Millisecond))

	epoch := commitTime(t, root)
	copied := copyCheckout(t, root)
	second := t.TempDir()
	cmd := exec.Command("bash", "-c", `umask 077 && exec scripts/dist.sh "$@"`, "bash", version, second)
	cmd.Dir = copied
	cmd.Env = append(os.Environ(), "SOURCE_DATE_EPOCH="+strconv.FormatInt(epoch, 10), "GOAMD64=v3", "GOFLAGS=-tags=other")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("dist.sh in a copy: %v\n%s", err, out)
	}

	names := []string{"SHA256SUMS"}
	for arch := range distArchs {
		names = append(names, "pull-agent-"+version+"-linux-"+arch+".tar.gz")
	}
	for _, name := range names {
		a, err := os.ReadFile(filepath.Join(first, name))
		must(t, err)
		b, err := os.ReadFile(filepath.Join(second, name))
		must(t, err)
		if !bytes.Equal(a, b) {
			t.Errorf("%s differs between two builds of the same sources (%d and %d bytes)", name, len(a), len(b))
		} else {
			t.Logf("%s: %d bytes, identical", name, len(a))
		}
	}
	checkSums(t, first)
	for arch, machine := range distArchs {
		checkTarball(t, filepath.Join(first, "pull-agent-"+version+"-linux-"+arch+".tar.gz"), version, arch, machine, epoch)
	}
}

// checkSums checks that SHA256SUMS in dir lists each tarball by name with
// its digest, as sha256sum -c reads it, and nothing else.
func checkSums(t *testing.T, dir string) {
	t.Helper()
	sums, err := os.ReadFile(filepath.Join(dir, "SHA256SUMS"))
	must(t, err)
	lines := strings.Split(strings.TrimSuffix(string(sums), "\n"), "\n")
	if len(lines) != len(distArchs) {
		t.Fatalf("SHA256SUMS has %d lines, want %d:\n%s", len(lines), len(distArchs), sums)
	}
	for _, l := range lines {
		sum, name, ok := strings.Cut(l, "  ")
		data, err := os.ReadFile(filepath.Join(dir, name))
		if !ok || err != nil {
			t.Fatalf("SHA256SUMS line %q: %v", l, err)
		}
		if h := sha256.Sum256(data); hex.EncodeToString(h[:]) != sum {
			t.Errorf("SHA256SUMS says %s for %s, it is %x", sum, name, h)
		}
	}
}

// checkTarball checks one release tarball: gzip without name or time; one
// directory named for version and arch holding distFiles in order, owned
// by 0:0 (by number), with the commit's mtime and fixed modes; a static
// binary for arch that, on this host's arch, runs and prints version.
func checkTarball(t *testing.T, path, version, arch string, machine elf.Machine, epoch int64) {
	t.Helper()
	f, err := os.Open(path)
	must(t, err)
	defer f.Close()
	zr, err := gzip.NewReader(f)
	must(t, err)
	if zr.Name != "" || !zr.ModTime.IsZero() {
		t.Errorf("%s: gzip header holds name %q, time %v", path, zr.Name, zr.ModTime)
	}
	top := "pull-agent-" + version + "-linux-" + arch + "/"
	tr := tar.NewReader(zr)
	var names []string
	var binary []byte
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		must(t, err)
		names = append(names, strings.TrimPrefix(h.Name, top))
		want := int64(0o644)
		if h.Typeflag == tar.TypeDir || strings.HasSuffix(h.Name, "/pull-agent") || strings.HasSuffix(h.Name, "/install.sh") {
			want = 0o755
		}
		if !strings.HasPrefix(h.Name, top) || h.Uid != 0 || h.Gid != 0 || h.Uname != "" || h.Gname != "" || h.ModTime.Unix() != epoch || h.Mode != want {
			t.Errorf("%s: %s: uid %d gid %d (%q %q), mtime %d (want %d), mode %o (want %o)",
				path, h.Name, h.Uid, h.Gid, h.Uname, h.Gname, h.ModTime.Unix(), epoch, h.Mode, want)
		}
		if h.Name == top+"pull-agent" {
			binary, err = io.ReadAll(tr)
			must(t, err)
		}
	}
	if !slices.Equal(names, distFiles) {
		t.Fatalf("%s holds %q, want %q", path, names, distFiles)
	}
	checkBinary(t, binary, version, arch, machine)
}

// checkBinary checks a release binary: ELF for machine, no interpreter
// (static); on this host's architecture it runs and prints its version.
func checkBinary(t *testing.T, binary []byte, version, arch string, machine elf.Machine) {
	t.Helper()
	ef, err := elf.NewFile(bytes.NewReader(binary))
	if err != nil {
		t.Fatalf("linux/%s binary: %v", arch, err)
	}
	if ef.Machine != machine {
		t.Errorf("linux/%s binary is for %v", arch, ef.Machine)
	}
	for _, p := range ef.Progs {
		if p.Type == elf.PT_INTERP {
			t.Errorf("linux/%s binary is dynamically linked (it has an interpreter)", arch)
		}
	}
	if arch != hostArch(t) {
		return
	}
	bin := filepath.Join(t.TempDir(), "pull-agent")
	must(t, os.WriteFile(bin, binary, 0o755))
	out, err := exec.Command(bin, "version").CombinedOutput()
	if want := fmt.Sprintf("pull-agent %s (", version); err != nil || !strings.HasPrefix(string(out), want) {
		t.Errorf("pull-agent version: %v: %q, want %q…", err, out, want)
	}
}

// hostArch is this machine's architecture as Go and the release names
// spell it (uname -m, mapped as install.sh maps it).
func hostArch(t *testing.T) string {
	t.Helper()
	out, err := exec.Command("uname", "-m").Output()
	must(t, err)
	switch m := strings.TrimSpace(string(out)); m {
	case "x86_64":
		return "amd64"
	case "aarch64":
		return "arm64"
	default:
		t.Fatalf("no release for this machine (%s)", m)
		return ""
	}
}

// install.sh of an extracted release installs the release's own binary
// when it is built for this host, and refuses it, naming the tarball to
// use, when it is not.
func TestInstallFromARelease(t *testing.T) {
	root := repoRoot(t)
	const version = "1.2.3"
	dist := t.TempDir()
	makeDist(t, root, version, dist)
	host := hostArch(t)
	for arch := range distArchs {
		t.Run(arch, func(t *testing.T) {
			dir := t.TempDir()
			tarball := filepath.Join(dist, "pull-agent-"+version+"-linux-"+arch+".tar.gz")
			if out, err := exec.Command("tar", "-C", dir, "-xzf", tarball).CombinedOutput(); err != nil {
				t.Fatalf("tar: %v\n%s", err, out)
			}
			release := filepath.Join(dir, "pull-agent-"+version+"-linux-"+arch)
			target := t.TempDir()
			cmd := exec.Command("bash", filepath.Join(release, "install.sh"), "--root", target)
			out, err := cmd.CombinedOutput()
			installed := filepath.Join(target, "usr/local/bin/pull-agent")
			if arch == host {
				if err != nil {
					t.Fatalf("install.sh of the linux/%s release on a linux/%s host: %v\n%s", arch, host, err, out)
				}
				want, _ := os.ReadFile(filepath.Join(release, "pull-agent"))
				if got, err := os.ReadFile(installed); err != nil || !bytes.Equal(got, want) {
					t.Fatalf("installed %s is not the release's binary (%v)", installed, err)
				}
				return
			}
			var ee *exec.ExitError
			wantErr := "is built for another architecture: linux/" + arch + ", and this host is linux/" + host
			wantHint := "use the linux/" + host + " build: pull-agent-VERSION-linux-" + host + ".tar.gz"
			if !errors.As(err, &ee) || ee.ExitCode() != 6 || !strings.Contains(string(out), wantErr) || !strings.Contains(string(out), wantHint) {
				t.Fatalf("install.sh of the linux/%s release on a linux/%s host: %v, want exit 6 with %q and %q:\n%s", arch, host, err, wantErr, wantHint, out)
			}
			if entries, _ := os.ReadDir(target); len(entries) != 0 {
				t.Errorf("a refused install wrote into %s: %v", target, entries)
			}
		})
	}
}
