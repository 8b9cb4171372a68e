package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
)

// ec2Contender is one way of warming the host; run returns the CPU time
// its process used (0 where not measured).
type ec2Contender struct {
	name string
	run  func() (time.Duration, error)
}

// contenders are the new pull-agent, the baseline (when built), the
// sequential docker pull loop and xargs -P 3, every one given the images
// in ec2Order.
func (e *ec2Env) ec2Contenders(ctx context.Context, prefix string) []ec2Contender {
	images := make([]string, len(ec2Order))
	for i, rt := range ec2Order {
		images[i] = config.ImageRef(prefix, rt)
	}
	cs := []ec2Contender{{cAgent, func() (time.Duration, error) { return e.agentPullCPU(ctx, e.bin, prefix, true) }}}
	if e.baseline != "" {
		cs = append(cs, ec2Contender{cBaseline, func() (time.Duration, error) { return e.agentPullCPU(ctx, e.baseline, prefix, true) }})
	}
	return append(cs,
		ec2Contender{cSeq, func() (time.Duration, error) {
			return 0, e.shell(ctx, "for i in "+strings.Join(images, " ")+"; do docker -H \"$DH\" pull -q \"$i\" >/dev/null; done")
		}},
		ec2Contender{cXargs, func() (time.Duration, error) {
			return 0, e.shell(ctx, "printf '%s\\n' "+strings.Join(images, " ")+" | xargs -P 3 -n 1 docker -H \"$DH\" pull -q >/dev/null")
		}})
}

// agentPullCPU runs 'bin pull' for ec2Order under prefix, from a fresh
// state directory when cold, and returns the CPU time (user + system) it
// used.
func (e *ec2Env) agentPullCPU(ctx context.Context, bin, prefix string, cold bool) (time.Duration, error) {
	envFile := filepath.Join(e.dir, "ec2.env")
	content := fmt.Sprintf("%s=%s\n%s=%s\nDOCKER_HOST=%s\n%s=-1\n", config.KeyRegistry, prefix, config.KeyRuntimes, strings.Join(ec2Order, ","), e.bed.DockerHost, config.KeyDiskMargin)
	if err := os.WriteFile(envFile, []byte(content), 0o600); err != nil {
		return 0, err
	}
	stateDir := filepath.Join(e.dir, "state-"+filepath.Base(bin))
	if cold {
		os.RemoveAll(stateDir)
	}
	cmd := exec.CommandContext(ctx, bin, "pull", "--quiet", "--env-file", envFile, "--state-dir", stateDir)
	if out, err := cmd.CombinedOutput(); err != nil {
		return 0, fmt.Errorf("%s: %v: %s", bin, err, out)
	}
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		return 0, nil
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}

// coldRun is one contender's warm-up from an empty daemon.
type coldRun struct {
	start, end time.Time
	usable     map[string]time.Time
	cpu        time.Duration
	transfers  []transfer
}

// cold empties the daemon and times c, with the daemon's pull events
// (followed from just before c starts) and the registry's transfers.
func (e *ec2Env) cold(ctx context.Context, c ec2Contender, shape string) (coldRun, error) {
	if err := e.empty(ctx); err != nil {
		return coldRun{}, err
	}
	r := coldRun{start: time.Now()}
	ev, err := watchPulls(ctx, e.docker, e.bed.DockerHost, r.start)
	if err != nil {
		return coldRun{}, err
	}
	cpu, runErr := c.run()
	r.end, r.cpu = time.Now(), cpu
	wait := 30 * time.Second
	if runErr != nil {
		wait = 0 // only stop the CLI
	}
	usable, err := ev.wait(ec2Order, wait)
	if runErr != nil {
		return coldRun{}, fmt.Errorf("%s: %w", c.name, runErr)
	}
	if err != nil {
		return coldRun{}, fmt.Errorf("%s: %w", c.name, err)
	}
	r.usable = usable
	if r.transfers, err = blobTransfers(e.regs[shape].LogPath, r.start, r.end); err != nil {
		return coldRun{}, err
	}
	return r, nil
}

// record adds run r to cr.
func (cr *ContenderRuns) record(r coldRun) {
	wall := r.end.Sub(r.start)
	cr.Cold = append(cr.Cold, wall.Seconds())
	u := map[string]float64{}
	var first3 time.Duration
	for i, rt := range ec2Order {
		d := r.usable[rt].Sub(r.start)
		u[rt] = d.Seconds()
		if i < 3 {
			first3 = max(first3, d)
		}
	}
	cr.Usable = append(cr.Usable, u)
	cr.First = append(cr.First, u[ec2Order[0]])
	cr.First3 = append(cr.First3, first3.Seconds())
	if r.cpu > 0 {
		cr.CPU = append(cr.CPU, 100*r.cpu.Seconds()/wall.Seconds())
	}
	cr.Link = append(cr.Link, useOf(r.transfers, r.start, r.end))
}

// measureShape runs every contender runs times, interleaved, on shape's
// workload, then the agents' refresh of the warm images; it returns the
// results and the chart's data (the last run of the two agents).
func (e *ec2Env) measureShape(ctx context.Context, sh ec2Shape, lay Layout, runs, mbit int) (ShapeResult, *chartData, error) {
	sr := ShapeResult{Shape: sh.Name, Workload: sh.describe(), Engine: e.engine, Runs: runs,
		Floor: floorOf(lay, ec2Order, mbit), Contenders: map[string]*ContenderRuns{}, Refresh: map[string]Steady{}}
	fmt.Fprintf(os.Stderr, "harness: %s, shape %s: floor %.2f s (%s), first image %.2f s, first three %.2f s\n",
		e.engine, sh.Name, sr.Floor.Seconds, mbytes(sr.Floor.Bytes), sr.Floor.FirstSeconds, sr.Floor.First3Seconds)
	prefix := e.proxies[sh.Name].Prefix("bench")
	cs := e.ec2Contenders(ctx, prefix)
	chart := &chartData{Shape: sh.Name, Layout: lay, Runs: map[string]coldRun{}}
	for r := range runs {
		for _, c := range cs {
			run, err := e.cold(ctx, c, sh.Name)
			if err != nil {
				return sr, nil, err
			}
			if sr.Contenders[c.name] == nil {
				sr.Contenders[c.name] = &ContenderRuns{}
			}
			cr := sr.Contenders[c.name]
			cr.record(run)
			if c.name == cAgent || c.name == cBaseline {
				chart.Runs[c.name] = run
			}
			i := len(cr.Cold) - 1
			fmt.Fprintf(os.Stderr, "harness: run %d %-26s all %6.2f s (%.2f×), first %6.2f s (%.2f×), first three %6.2f s (%.2f×), link idle %4.1f %%\n",
				r+1, c.name, cr.Cold[i], cr.Cold[i]/sr.Floor.Seconds, cr.First[i], cr.First[i]/sr.Floor.FirstSeconds,
				cr.First3[i], cr.First3[i]/sr.Floor.First3Seconds, 100*cr.Link[i].IdleShare)
		}
	}
	for _, c := range []struct{ name, bin string }{{cAgent, e.bin}, {cBaseline, e.baseline}} {
		if c.bin == "" {
			continue
		}
		t0 := time.Now()
		if _, err := e.agentPullCPU(ctx, c.bin, prefix, false); err != nil {
			return sr, nil, err
		}
		s := Steady{Seconds: time.Since(t0).Seconds()}
		s.Requests, s.BlobGets = requestsSince(e.regs[sh.Name].LogPath, t0)
		for _, n := range s.Requests {
			s.RequestsPerImage += float64(n) / float64(len(ec2Order))
		}
		sr.Refresh[c.name] = s
	}
	return sr, chart, nil
}
