// Package e2e runs pull-agent the way hosts run it: installed by install.sh
// from a user-data script, as a systemd service, in a Debian 12 system
// booted with systemd-nspawn, pulling into the test bed's Docker daemon.
package e2e

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// repoRoot is the checkout this test belongs to.
func repoRoot(t *testing.T) string {
	_, file, _, ok := runtime.Caller(0)
	if !ok {
		t.Fatal("no caller")
	}
	return filepath.Clean(filepath.Join(filepath.Dir(file), "..", ".."))
}

// container is a booted nspawn container.
type container struct {
	cmd    *exec.Cmd
	exited chan error
	leader int // PID of the container's systemd, as seen from here
	log    *testbed.Buffer
}

// findInit returns the PID of the container's systemd: the first process
// named systemd among the descendants of pid (nspawn forks helpers first).
func findInit(pid int) int {
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		if p != pid {
			if comm, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", p)); strings.TrimSpace(string(comm)) == "systemd" {
				return p
			}
		}
		tasks, _ := os.ReadDir(fmt.Sprintf("/proc/%d/task", p))
		for _, tk := range tasks {
			data, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", p, tk.Name()))
			for _, f := range strings.Fields(string(data)) {
				if c, err := strconv.Atoi(f); err == nil {
					queue = append(queue, c)
				}
			}
		}
	}
	return 0
}

// exec runs a command inside the container (all its namespaces).
func (c *container) exec(t *testing.T, timeout time.Duration, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append([]string{"-t", strconv.Itoa(c.leader), "-a", "--"}, args...)...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8"}
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func (c *container) must(t *testing.T, timeout time.Duration, args ...string) string {
	t.Helper()
	out, err := c.exec(t, timeout, args...)
	if err != nil {
		t.Fatalf("in the container, %q: %v\n%s", args, err, out)
	}
	return out
}

func boot(t *testing.T, rootfs, stage, dockerSock string) *container {
	t.Helper()
	c := &container{exited: make(chan error, 1), log: &testbed.Buffer{}}
	c.cmd = exec.Command("systemd-nspawn", "--quiet", "-D", rootfs, "--ephemeral", "--boot", "--register=no", "--keep-unit",
		"--console=pipe", "--bind-ro="+stage+":/opt/pa", "--bind="+dockerSock+":/run/docker.sock")
	c.cmd.Stdout, c.cmd.Stderr = c.log, c.log
	c.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.exited <- c.cmd.Wait() }()
	t.Cleanup(func() { c.poweroff(t) })
	deadline := time.Now().Add(90 * time.Second)
	for {
		// Look for init again each round: the first process seen may be
		// one of nspawn's short-lived helpers.
		if c.leader = findInit(c.cmd.Process.Pid); c.leader == 0 {
			if time.Now().After(deadline) {
				t.Fatalf("the container's init never appeared:\n%s", c.log)
			}
			time.Sleep(50 * time.Millisecond)
			continue
		}
		out, _ := c.exec(t, 10*time.Second, "systemctl", "is-system-running")
		s := strings.TrimSpace(out)
		if s == "running" || s == "degraded" {
			t.Logf("container booted: %s", s)
			return c
		}
		if time.Now().After(deadline) {
			t.Fatalf("the container did not boot (%q):\n%s", s, c.log)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// poweroff stops the container and makes sure nothing of it is left.
func (c *container) poweroff(t *testing.T) {
	select {
	case <-c.exited:
		return
	default:
	}
	// systemd-nspawn turns SIGTERM into an orderly shutdown of the container.
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.exited:
	case <-time.After(30 * time.Second):
		_ = syscall.Kill(-c.cmd.Process.Pid, syscall.SIGKILL)
		<-c.exited
	}
	if c.leader != 0 {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", c.leader)); err == nil {
			_ = syscall.Kill(c.leader, syscall.SIGKILL)
			t.Errorf("the container's init (pid %d) outlived systemd-nspawn", c.leader)
		}
	}
}

func TestInstalledServiceInABootedSystemd(t *testing.T) {
	root := repoRoot(t)
	rootfs := requireRootfs(t, root)
	bed, reg, authReg := startE2EBed(t)
	// A is open; B needs the credentials in /root/.docker/config.json.
	prefixA, prefixB := reg.Prefix("first"), authReg.Prefix("second")
	const ghcrToken = "ghp_e2eTokenS3cret"
	stage, dockerConfig, rel := stageUserData(t, root, authReg.Addr, prefixA, ghcrToken)

	c := boot(t, rootfs, stage, strings.TrimPrefix(bed.DockerHost, "unix://"))
	c.must(t, 10*time.Second, "install", "-d", "-m", "0700", "/root/.docker", "/root/.ssh")
	c.must(t, 10*time.Second, "install", "-m", "0600", "/opt/pa/docker-config.json", "/root/.docker/config.json")
	c.must(t, 10*time.Second, "install", "-m", "0600", "/opt/pa/id_ed25519", "/root/.ssh/id_ed25519")

	out := c.must(t, 3*time.Minute, "bash", "/opt/pa/user-data.sh")
	t.Logf("user-data:\n%s", out)
	checkInstalledRelease(t, c, rel)
	checkServiceStarted(t, c, prefixA)

	mainPID := strings.TrimSpace(c.must(t, 10*time.Second, "systemctl", "show", "-p", "MainPID", "--value", "pull-agent"))
	checkServiceMounts(t, c, mainPID, dockerConfig)
	checkServiceEnviron(t, c, mainPID, ghcrToken)

	// install.sh again: nothing changes, nothing restarts.
	pid1 := c.must(t, 10*time.Second, "systemctl", "show", "-p", "MainPID", "pull-agent")
	c.must(t, 2*time.Minute, "bash", "/opt/pa/user-data.sh")
	if pid2 := c.must(t, 10*time.Second, "systemctl", "show", "-p", "MainPID", "pull-agent"); pid2 != pid1 {
		t.Errorf("a second install restarted the service: %s → %s", pid1, pid2)
	}

	// The prefix flipped in the env file to the registry behind basic auth:
	// warm from B with the credentials of /root/.docker/config.json, as the
	// service sees it, no restart.
	c.must(t, 10*time.Second, "sed", "-i", "s#^MOLECULE_IMAGE_REGISTRY=.*#MOLECULE_IMAGE_REGISTRY="+prefixB+"#", "/etc/pull-agent/pull-agent.env")
	waitStatus(t, c, "warm from B with config.json credentials", func(s string) bool {
		return strings.Contains(s, "prefix:         "+prefixB) && strings.Contains(s, "images warm:    9/9") &&
			strings.Contains(s, "credentials:    "+authReg.Addr+": config.json auths")
	})
	if n := c.must(t, 10*time.Second, "systemctl", "show", "-p", "NRestarts", "pull-agent"); strings.TrimSpace(n) != "NRestarts=0" {
		t.Errorf("the flip restarted the service: %s", n)
	}

	// systemctl reload: a re-read, logged.
	c.must(t, 10*time.Second, "systemctl", "reload", "pull-agent")
	waitJournal(t, c, `msg="reload requested"`)

	checkKillAndStop(t, c, prefixB)
	checkJournalPriorities(t, c, reg.Prefix("partial"), config.KnownRuntimes()[0])
}

// must fails t on err.
func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// requireRootfs returns the Debian root filesystem the container boots,
// built (or brought up to date) by scripts/rootfs.sh of the checkout at
// root; without the test bed, systemd-nspawn or the root filesystem the
// test skips, or fails under CI.
func requireRootfs(t *testing.T, root string) string {
	t.Helper()
	testbed.Require(t)
	if _, err := exec.LookPath("systemd-nspawn"); err != nil {
		testbed.SkipOrFail(t, errors.New("systemd-nspawn missing: run 'make deps'"))
	}
	rootfs := os.Getenv("PULL_AGENT_ROOTFS")
	if rootfs == "" {
		rootfs = "/var/cache/pull-agent-test/rootfs-bookworm-curl"
	}
	if out, err := exec.Command(filepath.Join(root, "scripts", "rootfs.sh"), rootfs).CombinedOutput(); err != nil {
		testbed.SkipOrFail(t, fmt.Errorf("building the root filesystem: %v\n%s", err, out))
	}
	return rootfs
}

// startE2EBed starts a bed with a registry seeded with every runtime in
// namespaces first and second and all but the first in partial, and a
// second registry on the same storage that wants basic auth (puller).
func startE2EBed(t *testing.T) (*testbed.Bed, *testbed.Registry, *testbed.Registry) {
	t.Helper()
	ctx := context.Background()
	bed, err := testbed.Start(ctx, testbed.Options{Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { bed.Stop() })
	reg, err := bed.StartRegistry(ctx, "main", testbed.RegistryOptions{})
	must(t, err)
	for _, ns := range []string{"first", "second"} {
		if _, err := bed.Seed(ctx, reg, ns, config.KnownRuntimes(), testbed.SeedOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	// Every runtime but the first: a run from there has one failing image.
	if _, err := bed.Seed(ctx, reg, "partial", config.KnownRuntimes()[1:], testbed.SeedOptions{}); err != nil {
		t.Fatal(err)
	}
	// The same storage behind basic auth: the service pulls from it only
	// with the credentials in /root/.docker/config.json.
	users, err := testbed.Htpasswd(map[string]string{"puller": "e2e-basic-s3cret"})
	must(t, err)
	authReg, err := bed.StartRegistry(ctx, "authed", testbed.RegistryOptions{Htpasswd: users, Root: reg.Root})
	must(t, err)
	return bed, reg, authReg
}

// stageUserData writes what the host holds besides user-data into a
// directory the container mounts at /opt/pa (root's config.json with the
// credentials of authAddr, an SSH key, the GHCR token), builds and serves
// the release the README's user-data example installs, and writes that
// example as user-data.sh, installing from prefixA. It returns the
// directory, the config.json and the release.
func stageUserData(t *testing.T, root, authAddr, prefixA, ghcrToken string) (stage, dockerConfig string, rel *release) {
	t.Helper()
	stage = t.TempDir()
	// What root's home holds on a host: registry credentials the service
	// needs, and an SSH key it has no business reading.
	dockerConfig = `{"auths":{"` + authAddr + `":{"auth":"` + base64.StdEncoding.EncodeToString([]byte("puller:e2e-basic-s3cret")) + `"}}}`
	must(t, os.WriteFile(filepath.Join(stage, "docker-config.json"), []byte(dockerConfig), 0o600))
	must(t, os.WriteFile(filepath.Join(stage, "id_ed25519"), []byte("-----BEGIN OPENSSH PRIVATE KEY-----\ne2e-not-a-key\n-----END OPENSSH PRIVATE KEY-----\n"), 0o600))
	must(t, os.WriteFile(filepath.Join(stage, "ghcr-token"), []byte(ghcrToken+"\n"), 0o600))
	script, version := readmeUserData(t, root)
	rel = serveRelease(t, root, version)
	userdata := rel.userData(t, script, prefixA, "/opt/pa/ghcr-token")
	must(t, os.WriteFile(filepath.Join(stage, "user-data.sh"), []byte(userdata), 0o755))
	return stage, dockerConfig, rel
}

// checkServiceStarted checks the service once user-data has run: active,
// warm from prefixA, its unit valid in the booted system, READY and
// STATUS= seen by systemd.
func checkServiceStarted(t *testing.T, c *container, prefixA string) {
	t.Helper()
	if s := strings.TrimSpace(c.must(t, 10*time.Second, "systemctl", "is-active", "pull-agent")); s != "active" {
		t.Fatalf("pull-agent is %s", s)
	}
	out := c.must(t, 10*time.Second, "pull-agent", "status")
	if !strings.Contains(out, "images warm:    9/9") || !strings.Contains(out, "prefix:         "+prefixA) {
		t.Fatalf("status after install:\n%s", out)
	}
	if v := c.must(t, 10*time.Second, "systemd-analyze", "verify", "/etc/systemd/system/pull-agent.service"); strings.TrimSpace(v) != "" {
		t.Errorf("systemd-analyze verify in the booted system:\n%s", v)
	}
	journal := c.must(t, 10*time.Second, "journalctl", "-u", "pull-agent", "--no-pager")
	if !strings.Contains(journal, "Started pull-agent") || !strings.Contains(journal, `msg="agent started"`) {
		t.Errorf("journal lacks the READY (Started) or start lines:\n%s", journal)
	}
	if st := c.must(t, 10*time.Second, "systemctl", "show", "-p", "StatusText", "pull-agent"); !strings.Contains(st, "StatusText=9/9 images warm from "+prefixA) {
		t.Errorf("STATUS= not seen by systemd: %s", st)
	}
}

// checkKillAndStop kills the service with SIGKILL: systemd restarts it
// and it is warm from prefixB again; then systemctl stop ends it within
// 10 s.
func checkKillAndStop(t *testing.T, c *container, prefixB string) {
	t.Helper()
	// kill -9: systemd restarts it and it recovers.
	c.must(t, 10*time.Second, "systemctl", "kill", "-s", "KILL", "pull-agent")
	start := time.Now()
	waitStatus(t, c, "recovered after kill -9", func(s string) bool {
		return strings.Contains(s, "running, all warm") && strings.Contains(s, "prefix:         "+prefixB)
	})
	t.Logf("recovered %s after kill -9 (RestartSec=20)", time.Since(start).Round(time.Second))
	if n := c.must(t, 10*time.Second, "systemctl", "show", "-p", "NRestarts", "pull-agent"); strings.TrimSpace(n) != "NRestarts=1" {
		t.Errorf("after kill -9: %s", n)
	}

	// systemctl stop: within 10 s.
	start = time.Now()
	c.must(t, 30*time.Second, "systemctl", "stop", "pull-agent")
	if d := time.Since(start); d > 10*time.Second {
		t.Errorf("stop took %s", d)
	}
	if out, _ := c.exec(t, 10*time.Second, "pull-agent", "status"); !strings.Contains(out, "NOT RUNNING") {
		t.Errorf("status after stop:\n%s", out)
	}
}

// checkServiceMounts looks at the files from inside the service's own mount
// namespace (the process pid, as the container numbers it): root's home
// shows /root/.docker and nothing else, and /proc shows processes only.
func checkServiceMounts(t *testing.T, c *container, pid, dockerConfig string) {
	t.Helper()
	svc := strings.TrimSpace(c.must(t, 10*time.Second, "readlink", "/proc/"+pid+"/ns/mnt"))
	if init := strings.TrimSpace(c.must(t, 10*time.Second, "readlink", "/proc/1/ns/mnt")); svc == init {
		t.Fatalf("the service (pid %s) runs in the container's own mount namespace %s", pid, svc)
	}
	inService := func(args ...string) (string, error) {
		return c.exec(t, 10*time.Second, append([]string{"nsenter", "-t", pid, "-m", "--"}, args...)...)
	}
	if out, err := inService("cat", "/root/.docker/config.json"); err != nil || out != dockerConfig {
		t.Errorf("the service cannot read /root/.docker/config.json: %v\n%s", err, out)
	}
	c.must(t, 10*time.Second, "test", "-s", "/root/.ssh/id_ed25519") // there, outside the service
	if out, err := inService("cat", "/root/.ssh/id_ed25519"); err == nil || !strings.Contains(out, "No such file or directory") {
		t.Errorf("the service can read /root/.ssh/id_ed25519 (err %v, %d bytes read); ProtectHome= must hide it", err, len(out))
	}
	if out, err := inService("ls", "-A", "/root"); err != nil || strings.Join(strings.Fields(out), " ") != ".docker" {
		t.Errorf("/root as the service sees it holds %q (err %v), want .docker alone", strings.Fields(out), err)
	}
	if out, err := inService("cat", "/proc/"+pid+"/status"); err != nil || !strings.Contains(out, "Name:\tpull-agent") {
		t.Errorf("the service's /proc lacks its own process: %v\n%s", err, out)
	}
	if out, err := inService("cat", "/proc/meminfo"); err == nil {
		t.Errorf("the service's /proc shows /proc/meminfo (%d bytes); ProcSubset=pid must hide it", len(out))
	}
}

// checkServiceEnviron reads the service's environment from outside: none of
// the env file's keys, above all GHCR_TOKEN, may be there (every credential
// helper the agent starts inherits it), although the file sets them.
func checkServiceEnviron(t *testing.T, c *container, pid, ghcrToken string) {
	t.Helper()
	file := c.must(t, 10*time.Second, "cat", "/etc/pull-agent/pull-agent.env")
	if !strings.Contains(file, "\nGHCR_TOKEN='"+ghcrToken+"'\n") || !strings.Contains(file, "\nGHCR_USER='"+readmeGHCRUser+"'\n") {
		t.Fatalf("install.sh did not put GHCR_USER and GHCR_TOKEN into the env file")
	}
	vars := strings.Split(strings.TrimRight(c.must(t, 10*time.Second, "cat", "/proc/"+pid+"/environ"), "\x00"), "\x00")
	if !slices.Contains(vars, "AWS_ECR_CACHE_DIR=/var/lib/pull-agent/ecr-cache") {
		t.Fatalf("pid %s has not the service's environment (no AWS_ECR_CACHE_DIR from Environment=); keys: %s", pid, envKeys(vars))
	}
	var leaked []string
	for _, v := range vars {
		if k, _, _ := strings.Cut(v, "="); k == config.KeyGHCRToken || k == config.KeyGHCRUser || k == config.KeyRegistry || strings.Contains(v, ghcrToken) {
			leaked = append(leaked, k)
		}
	}
	if leaked != nil {
		t.Errorf("the service's environment holds %s from the env file, and every credential helper inherits it (keys: %s)", strings.Join(leaked, ", "), envKeys(vars))
	}
}

// envKeys lists the names of environment entries, never their values.
func envKeys(vars []string) string {
	keys := make([]string, 0, len(vars))
	for _, v := range vars {
		k, _, _ := strings.Cut(v, "=")
		keys = append(keys, k)
	}
	return strings.Join(keys, " ")
}

func waitStatus(t *testing.T, c *container, what string, ok func(string) bool) {
	t.Helper()
	deadline := time.Now().Add(90 * time.Second)
	var out string
	for time.Now().Before(deadline) {
		out, _ = c.exec(t, 10*time.Second, "pull-agent", "status")
		if ok(out) {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("status never showed %s:\n%s", what, out)
}

func waitJournal(t *testing.T, c *container, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		out, _ := c.exec(t, 10*time.Second, "journalctl", "-u", "pull-agent", "--no-pager")
		if strings.Contains(out, want) {
			return
		}
		time.Sleep(250 * time.Millisecond)
	}
	t.Fatalf("the journal never showed %q", want)
}
