// Package testbed starts the real components pull-agent is tested against:
// a Docker daemon (Debian's docker.io) with its own socket, data-root and
// exec-root, and CNCF distribution registries (Debian's docker-registry) on
// loopback ports, each with its own storage. Everything lives under one
// directory; every process is recorded there by PID and stopped by Stop, or
// by StopDir from another process.
package testbed

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/molecule-ai/pull-agent/internal/safetext"
)

// Binaries the bed runs, from Debian's docker.io and docker-registry.
const (
	DockerdBin  = "dockerd"
	RegistryBin = "docker-registry"
)

// Packages are the Debian packages that provide the binaries.
const Packages = "docker.io docker-registry"

// Available reports why the bed cannot start here, or nil.
func Available() error {
	if os.Geteuid() != 0 {
		return errors.New("the test bed runs dockerd and must run as root")
	}
	for _, b := range []string{DockerdBin, RegistryBin} {
		if _, err := exec.LookPath(b); err != nil {
			return fmt.Errorf("%s not found on PATH: run 'make deps' (apt-get install %s)", b, Packages)
		}
	}
	engine, err := engineOf("")
	if err != nil {
		return err
	}
	return engineAvailable(engine)
}

// Options configures Start.
type Options struct {
	// Dir holds everything the bed creates. Empty: a new directory under
	// /tmp (kept short: unix socket paths are limited to 108 bytes).
	Dir string
	// Detach leaves the processes running after this process exits (for
	// 'testbed up'); otherwise they are killed with it.
	Detach bool
	// Logf receives progress lines; nil discards them.
	Logf func(format string, args ...any)
	// Hosts maps host names to addresses for the Docker daemon only: it
	// runs in a private mount namespace with its own /etc/hosts bound over
	// the machine's (which is never touched). An ECR-shaped name can then
	// point at a local registry.
	Hosts map[string]string
	// DataRootSize, if set (e.g. "64m"), puts the daemon's data root on a
	// tmpfs of that size: a small disk for disk-full tests.
	DataRootSize string
	// PrivateNetwork runs the daemon in a network namespace of its own
	// (loopback only). Registries started with RegistryOptions.InBedNetwork
	// join it, so a registry can answer on port 80 as a real host name
	// (ghcr.io) for this daemon alone.
	PrivateNetwork bool
	// TLS also has the daemon listen on tcp://127.0.0.1:<free port> with
	// --tlsverify and certificates the bed makes (Bed.TLS). Not with
	// PrivateNetwork: the port would be inside the daemon's namespace.
	TLS bool
	// Engine is the Docker engine the bed runs (one of Engines()); empty:
	// the one EngineEnv names, else Debian 12's.
	Engine string
	// StorageDriver, if set, is Debian 12's daemon's graph driver instead
	// of vfs (e.g. "overlay2", which works on this machine's root disk and
	// does not copy each layer as vfs does). The trixie engines keep their
	// own (overlay2, or the containerd store's snapshotter).
	StorageDriver string
}

// Bed is a running test bed.
type Bed struct {
	Dir string
	// DockerHost is the daemon's address, unix://<Dir>/docker.sock.
	DockerHost string
	// TLS is the daemon's TLS listener when Options.TLS is set, else nil.
	TLS *DaemonTLS

	opts   Options
	engine string // resolved Options.Engine

	mu         sync.Mutex
	dockerd    *proc
	procs      []*proc
	registries map[string]*Registry
	seed       seedCache
}

// Start starts a Docker daemon under opts.Dir. On error everything started
// is stopped again.
func Start(ctx context.Context, opts Options) (_ *Bed, err error) {
	if err := Available(); err != nil {
		return nil, err
	}
	engine, err := engineOf(opts.Engine)
	if err != nil {
		return nil, err
	}
	if err := engineAvailable(engine); err != nil {
		return nil, err
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if opts.Dir == "" {
		opts.Dir, err = os.MkdirTemp("/tmp", "pa-tb-")
		if err != nil {
			return nil, fmt.Errorf("creating test bed directory: %w", err)
		}
	}
	for _, d := range []string{opts.Dir, filepath.Join(opts.Dir, "pids"), filepath.Join(opts.Dir, "logs")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("creating %s: %w", d, err)
		}
	}
	b := &Bed{Dir: opts.Dir, opts: opts, engine: engine, registries: map[string]*Registry{}}
	defer func() {
		if err != nil {
			b.Stop()
		}
	}()
	if opts.TLS {
		if opts.PrivateNetwork {
			return nil, errors.New("testbed: TLS and PrivateNetwork together: the TLS port would be unreachable outside the daemon's network namespace")
		}
		port, err := FreePort()
		if err != nil {
			return nil, err
		}
		if b.TLS, err = newDaemonTLS(filepath.Join(opts.Dir, "tls"), port); err != nil {
			return nil, fmt.Errorf("making the daemon's TLS certificates: %w", err)
		}
	}
	if err := b.StartDockerd(ctx); err != nil {
		return nil, err
	}
	return b, nil
}

// DockerdPID is the daemon's own PID (inside any namespace wrapper), from
// its pidfile.
func (b *Bed) DockerdPID() (int, error) {
	data, err := os.ReadFile(filepath.Join(b.Dir, "docker-exec.pid"))
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(data)))
}

// StopDockerd stops the Docker daemon; its data-root stays for
// StartDockerd.
func (b *Bed) StopDockerd() error {
	b.mu.Lock()
	p := b.dockerd
	b.mu.Unlock()
	if p == nil {
		return nil
	}
	return p.stop()
}

// StartDockerd starts the Docker daemon (again, after StopDockerd) with the
// same socket and roots, and waits until it answers. It does nothing while
// the daemon runs, so a test's cleanup may call it unconditionally.
func (b *Bed) StartDockerd(ctx context.Context) error {
	b.mu.Lock()
	running := b.dockerd != nil && b.dockerd.running()
	b.mu.Unlock()
	if running {
		return nil
	}
	sock := filepath.Join(b.Dir, "docker.sock")
	cfg := filepath.Join(b.Dir, "daemon.json")
	daemonJSON, storageArgs := b.daemonConfig()
	if err := os.WriteFile(cfg, []byte(daemonJSON), 0o644); err != nil {
		return err
	}
	if b.opts.DataRootSize != "" {
		dr := filepath.Join(b.Dir, "docker-data")
		if err := os.MkdirAll(dr, 0o711); err != nil {
			return err
		}
		if !isMountpoint(dr) {
			if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size="+b.opts.DataRootSize, "tmpfs", dr).CombinedOutput(); err != nil {
				return fmt.Errorf("mounting a %s tmpfs on %s: %v %s", b.opts.DataRootSize, dr, err, out)
			}
		}
	}
	args := []string{
		"--config-file", cfg,
		"-H", "unix://" + sock,
		"--data-root", filepath.Join(b.Dir, "docker-data"),
		"--exec-root", filepath.Join(b.Dir, "docker-exec"),
		"--pidfile", filepath.Join(b.Dir, "docker-exec.pid"),
		"--iptables=false", "--ip-masq=false", "--bridge=none",
	}
	args = append(args, storageArgs...)
	if b.TLS != nil {
		args = append(args, b.TLS.dockerdArgs()...)
	}
	p, err := b.spawnDockerd(args)
	if err != nil {
		return err
	}
	b.mu.Lock()
	b.dockerd = p
	b.mu.Unlock()
	b.DockerHost = "unix://" + sock
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", sock)
	}}}
	ready := func(ctx context.Context) bool {
		return httpOK(ctx, hc, "http://docker/_ping") && (b.TLS == nil || b.TLS.ready(ctx))
	}
	if err := waitReady(ctx, p, 90*time.Second, ready); err != nil {
		return fmt.Errorf("%s dockerd did not become ready: %w\n%s", b.engine, err, b.logTail("dockerd"))
	}
	b.opts.Logf("%s dockerd ready at %s (pid %d)", b.engine, b.DockerHost, p.cmd.Process.Pid)
	return nil
}

// spawnDockerd starts the engine's daemon with args: Debian 12's
// directly, or in a mount namespace of its own where the daemon needs its
// own /etc/hosts or network; trixie's always so (see trixieScript).
func (b *Bed) spawnDockerd(args []string) (*proc, error) {
	if b.engine != EngineDebian12 {
		hostsFile, err := b.writeHosts()
		if err != nil {
			return nil, err
		}
		bin, full, err := b.trixieCommand(hostsFile, args)
		if err != nil {
			return nil, err
		}
		return b.spawn("dockerd", bin, full...)
	}
	if len(b.opts.Hosts) == 0 && !b.opts.PrivateNetwork {
		return b.spawn("dockerd", DockerdBin, args...)
	}
	hostsFile, err := b.writeHosts()
	if err != nil {
		return nil, err
	}
	script := "set -e; mount --bind \"$0\" /etc/hosts; "
	ns := []string{"--mount", "--propagation", "private", "--fork"}
	if b.opts.PrivateNetwork {
		ns = append(ns, "--net")
		script += "ip link set lo up; "
	}
	script += `exec dockerd "$@"`
	return b.spawn("dockerd", "unshare", append(append(ns, "--", "/bin/sh", "-c", script, hostsFile), args...)...)
}

// Stop stops every process of the bed and removes its directory.
func (b *Bed) Stop() error {
	b.mu.Lock()
	procs := b.procs
	b.procs = nil
	b.mu.Unlock()
	var errs []error
	for i := len(procs) - 1; i >= 0; i-- {
		errs = append(errs, procs[i].stop())
	}
	errs = append(errs, StopDir(b.Dir))
	return errors.Join(errs...)
}

// StopDir stops every process recorded under dir (by the PID files a bed
// writes) and removes dir. It is safe to call on a directory already
// stopped or removed.
func StopDir(dir string) error {
	pids, _ := filepath.Glob(filepath.Join(dir, "pids", "*.pid"))
	for _, f := range pids {
		data, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
		if err != nil || pid <= 1 {
			continue
		}
		killGroup(pid)
		os.Remove(f)
	}
	if _, err := os.Stat(dir); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	// dockerd may leave mounts under its roots; unmount before removing.
	unmountUnder(dir)
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("removing test bed directory: %w", err)
	}
	return nil
}

// killGroup sends SIGTERM to the process group led by pid, waits up to 15 s
// for the leader to exit, then sends SIGKILL.
func killGroup(pid int) {
	if syscall.Kill(pid, 0) != nil {
		return
	}
	_ = syscall.Kill(-pid, syscall.SIGTERM)
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		if !alive(pid) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = syscall.Kill(-pid, syscall.SIGKILL)
}

// alive reports whether pid exists and is not a zombie.
func alive(pid int) bool {
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	s := string(data)
	i := strings.LastIndexByte(s, ')')
	return i < 0 || i+2 >= len(s) || s[i+2] != 'Z'
}

func isMountpoint(dir string) bool {
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[1] == dir {
			return true
		}
	}
	return false
}

func unmountUnder(dir string) {
	data, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return
	}
	lines := strings.Split(string(data), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		f := strings.Fields(lines[i])
		if len(f) > 1 && strings.HasPrefix(f[1], dir+"/") {
			_ = syscall.Unmount(f[1], syscall.MNT_DETACH)
		}
	}
}

// proc is one process of the bed.
type proc struct {
	name   string
	cmd    *exec.Cmd
	pid    string // PID file
	exited chan struct{}
	err    error // set when exited is closed
}

func (b *Bed) spawn(name, bin string, args ...string) (*proc, error) {
	logPath := filepath.Join(b.Dir, "logs", name+".log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	defer lf.Close()
	cmd := exec.Command(bin, args...)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Dir = b.Dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if !b.opts.Detach {
		cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &proc{name: name, cmd: cmd, pid: filepath.Join(b.Dir, "pids", name+".pid"), exited: make(chan struct{})}
	if err := os.WriteFile(p.pid, []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		_ = cmd.Process.Kill()
		return nil, err
	}
	go func() {
		p.err = cmd.Wait()
		close(p.exited)
	}()
	b.mu.Lock()
	b.procs = append(b.procs, p)
	b.mu.Unlock()
	return p, nil
}

func (p *proc) running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

func (p *proc) stop() error {
	select {
	case <-p.exited:
	default:
		_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-p.exited:
		case <-time.After(15 * time.Second):
			_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
			<-p.exited
		}
	}
	// Anything left in the group (a child that ignored SIGTERM) goes too.
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	os.Remove(p.pid)
	return nil
}

// logTail returns the end of a process's log, for error messages.
func (b *Bed) logTail(name string) string {
	data, _ := os.ReadFile(filepath.Join(b.Dir, "logs", name+".log"))
	return safetext.Tail(string(data), 2000)
}

// waitReady polls ready until it is true, the process exits or the timeout
// passes.
func waitReady(ctx context.Context, p *proc, timeout time.Duration, ready func(context.Context) bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		if ready(ctx) {
			return nil
		}
		select {
		case <-p.exited:
			return fmt.Errorf("%s exited: %v", p.name, p.err)
		case <-ctx.Done():
			return fmt.Errorf("%s not ready after %s: %w", p.name, timeout, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func httpOK(ctx context.Context, hc *http.Client, url string) bool {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := hc.Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode < 500
}
