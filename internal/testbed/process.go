package testbed

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// Process is a program a test runs (the agent under test), with its
// output collected and its end observable.
type Process struct {
	Cmd *exec.Cmd
	// Output collects stdout and stderr.
	Output *Buffer
	done   chan struct{}
	err    error
}

// StartProcess starts cmd with its output into Output. The process is
// killed if the test process dies first.
func StartProcess(cmd *exec.Cmd) (*Process, error) {
	p := &Process{Cmd: cmd, Output: &Buffer{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.Output, p.Output
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.Pdeathsig = syscall.SIGKILL
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", cmd.Path, err)
	}
	go func() { p.err = cmd.Wait(); close(p.done) }()
	return p, nil
}

// Done is closed once the process has exited.
func (p *Process) Done() <-chan struct{} { return p.done }

// Err is how the process ended (nil: exit 0); valid once Done is closed.
func (p *Process) Err() error { return p.err }

// Running reports whether the process has not exited yet.
func (p *Process) Running() bool {
	select {
	case <-p.done:
		return false
	default:
		return true
	}
}

// Stop sends sig and waits up to timeout for the exit; it returns how
// long the process took and how it ended.
func (p *Process) Stop(sig syscall.Signal, timeout time.Duration) (time.Duration, error) {
	start := time.Now()
	if err := p.Cmd.Process.Signal(sig); err != nil && p.Running() {
		return 0, err
	}
	select {
	case <-p.done:
		return time.Since(start), p.err
	case <-time.After(timeout):
		return 0, fmt.Errorf("pid %d did not exit within %s of %s", p.Cmd.Process.Pid, timeout, sig)
	}
}

// Kill ends the process, if it still runs, and waits for it.
func (p *Process) Kill() {
	if p.Running() {
		_ = p.Cmd.Process.Kill()
	}
	<-p.done
}

// RSS is the resident set size of process pid in bytes, 0 when it cannot
// be read.
func RSS(pid int) int64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmRSS:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}
