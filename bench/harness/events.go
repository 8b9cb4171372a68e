package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"os/exec"
	"regexp"
	"sync"
	"syscall"
	"time"
)

// pullEvents follows the daemon's image pull events with the docker CLI
// ('docker events'), from a moment given, by runtime: the moment the
// daemon holds each image, which is when it is usable.
type pullEvents struct {
	cmd  *exec.Cmd
	done chan struct{}

	mu   sync.Mutex
	seen map[string]time.Time // runtime → first pull event
}

var templateRe = regexp.MustCompile(`workspace-template-([a-z0-9-]+)[:@]`)

// watchPulls starts 'docker events' for image pulls since since (the
// daemon replays from there, so nothing is lost while the CLI connects).
func watchPulls(ctx context.Context, docker, dockerHost string, since time.Time) (*pullEvents, error) {
	cmd := exec.CommandContext(ctx, docker, "-H", dockerHost, "events",
		"--since", fmt.Sprintf("%d.%09d", since.Unix(), since.Nanosecond()),
		"--filter", "type=image", "--filter", "event=pull", "--format", "{{json .}}")
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("docker events: %w", err)
	}
	p := &pullEvents{cmd: cmd, done: make(chan struct{}), seen: map[string]time.Time{}}
	go func() {
		defer close(p.done)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			var ev struct {
				ID       string `json:"id"`
				TimeNano int64  `json:"timeNano"`
			}
			if json.Unmarshal(sc.Bytes(), &ev) != nil {
				continue
			}
			m := templateRe.FindStringSubmatch(ev.ID + ":")
			if m == nil {
				continue
			}
			p.mu.Lock()
			if _, ok := p.seen[m[1]]; !ok {
				p.seen[m[1]] = time.Unix(0, ev.TimeNano)
			}
			p.mu.Unlock()
		}
	}()
	return p, nil
}

// wait returns the pull time of each of rts once all are seen (or what
// was seen after timeout, with an error), and stops the CLI.
func (p *pullEvents) wait(rts []string, timeout time.Duration) (map[string]time.Time, error) {
	defer func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		<-p.done
		_ = p.cmd.Wait()
	}()
	deadline := time.Now().Add(timeout)
	for {
		p.mu.Lock()
		got := make(map[string]time.Time, len(p.seen))
		for k, v := range p.seen {
			got[k] = v
		}
		p.mu.Unlock()
		missing := 0
		for _, rt := range rts {
			if _, ok := got[rt]; !ok {
				missing++
			}
		}
		if missing == 0 {
			return got, nil
		}
		if time.Now().After(deadline) {
			return got, fmt.Errorf("docker events: %d of %d pull events after %s", len(rts)-missing, len(rts), timeout)
		}
		select {
		case <-p.done:
			return got, fmt.Errorf("docker events exited with %d of %d pull events", len(rts)-missing, len(rts))
		case <-time.After(20 * time.Millisecond):
		}
	}
}
