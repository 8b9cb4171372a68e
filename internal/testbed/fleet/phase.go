package fleet

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// Phase is one measured transition of the whole fleet: a cold start
// (empty daemons, agents started on Prefix) or a flip (running agents'
// env files rewritten to Prefix at once).
type Phase struct {
	Scenario string
	// Cold wipes every host and starts its agent; otherwise the agents
	// that run are flipped.
	Cold bool
	// Prefix is where the hosts go; Set the namespace whose seeded
	// images it serves.
	Prefix, Set string
	// Env is extra env file lines (MOLECULE_FLIP_SPREAD=…).
	Env string
	// Timeout bounds the wait for the fleet to be warm.
	Timeout time.Duration
}

// Sample is the origin's bytes sent up to T seconds into a phase.
type Sample struct {
	T     float64 `json:"t_s"`
	Bytes int64   `json:"bytes"`
}

// Result is what a phase measured.
type Result struct {
	Scenario string `json:"scenario"`
	Phase    string `json:"phase"` // "cold" or "flip"
	Hosts    int    `json:"hosts"`
	Prefix   string `json:"prefix"`
	Env      string `json:"env,omitempty"`
	// Origin sums the origin's request log over the phase.
	Origin testbed.OriginStats `json:"origin"`
	// FirstWarmS and AllWarmS are the seconds from the phase's start
	// until the first host, and every host, held the whole set (the
	// agent's time of its last successful pull).
	FirstWarmS float64   `json:"first_warm_s"`
	AllWarmS   float64   `json:"all_warm_s"`
	HostWarmS  []float64 `json:"host_warm_s"` // -1: not warm by the timeout
	// Warm counts the hosts warm by the phase's timeout.
	Warm int `json:"warm"`
	// OpenAtEnd counts the origin's requests still open when the phase
	// was measured (up to 10 s after the fleet was warm).
	OpenAtEnd int `json:"open_at_end"`
	// Verified counts the hosts whose 'pull-agent status' exited 0 and
	// whose daemon holds every image with the seeded digest.
	Verified int `json:"verified"`
	// Samples are the origin's bytes sent over time, every 100 ms.
	Samples []Sample `json:"samples"`
}

// Run runs one phase and measures it.
func (f *Fleet) Run(ctx context.Context, p Phase) (Result, error) {
	set, ok := f.Sets[p.Set]
	if !ok {
		return Result{}, fmt.Errorf("phase %s: no image set %q seeded", p.Scenario, p.Set)
	}
	res := Result{Scenario: p.Scenario, Phase: "flip", Hosts: len(f.Hosts), Prefix: p.Prefix, Env: strings.TrimSpace(p.Env)}
	if p.Cold {
		res.Phase = "cold"
		if err := f.wipe(ctx); err != nil {
			return res, err
		}
	}
	f.Front.Reset()
	t0 := time.Now()
	stopSampling := f.sample(t0, &res.Samples)
	env, cfg := EnvFile(p.Prefix, p.Env), f.dockerConfig()
	for _, h := range f.Hosts {
		var err error
		if p.Cold {
			err = h.StartAgent(cfg, env)
		} else {
			err = h.WriteEnv(env)
		}
		if err != nil {
			stopSampling()
			return res, err
		}
	}
	warm, err := f.waitWarm(ctx, p.Prefix, set, t0, p.Timeout)
	res.OpenAtEnd = f.quiesce(ctx, 10*time.Second)
	stopSampling()
	res.Origin = f.Front.Stats()
	res.HostWarmS = warm
	res.FirstWarmS, res.AllWarmS = -1, -1
	for _, w := range warm {
		if w < 0 {
			continue
		}
		res.Warm++
		if res.FirstWarmS < 0 || w < res.FirstWarmS {
			res.FirstWarmS = w
		}
		res.AllWarmS = max(res.AllWarmS, w)
	}
	if res.Warm < len(warm) {
		res.AllWarmS = -1
	}
	if err != nil {
		return res, err
	}
	var errs []error
	for _, h := range f.Hosts {
		if err := h.Verify(ctx, p.Prefix, set); err != nil {
			errs = append(errs, err)
			continue
		}
		res.Verified++
	}
	return res, errors.Join(errs...)
}

// wipe makes every host cold, a few at a time.
func (f *Fleet) wipe(ctx context.Context) error {
	var g errgroup.Group
	g.SetLimit(4)
	for _, h := range f.Hosts {
		g.Go(func() error { return h.Wipe(ctx) })
	}
	return g.Wait()
}

// sample records the origin's bytes sent since t0 every 100 ms until the
// returned function is called.
func (f *Fleet) sample(t0 time.Time, into *[]Sample) (stop func()) {
	base := f.Front.Sent()
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			*into = append(*into, Sample{T: time.Since(t0).Seconds(), Bytes: f.Front.Sent() - base})
			select {
			case <-done:
				return
			case <-tick.C:
			}
		}
	}()
	return func() { close(done); wg.Wait() }
}

// waitWarm polls every host's agent until each holds set under prefix,
// and returns each host's seconds from t0 to its last pull.
func (f *Fleet) waitWarm(ctx context.Context, prefix string, set map[string]testbed.Seeded, t0 time.Time, timeout time.Duration) ([]float64, error) {
	warm := make([]float64, len(f.Hosts))
	for i := range warm {
		warm[i] = -1
	}
	done := make([]bool, len(f.Hosts))
	left := len(f.Hosts)
	deadline := time.Now().Add(timeout)
	for left > 0 {
		for i, h := range f.Hosts {
			if done[i] {
				continue
			}
			doc, err := h.Status(ctx)
			if err != nil && h.agent != nil && !h.agent.Running() {
				return warm, err
			}
			if at, ok := warmAt(doc, prefix, set); err == nil && ok {
				warm[i], done[i] = at.Sub(t0).Seconds(), true
				left--
			}
		}
		if left == 0 {
			break
		}
		if time.Now().After(deadline) {
			return warm, f.notWarm(ctx, prefix, timeout)
		}
		select {
		case <-ctx.Done():
			return warm, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
	return warm, nil
}

// notWarm says which hosts were not warm, with what their agents said.
func (f *Fleet) notWarm(ctx context.Context, prefix string, timeout time.Duration) error {
	var b strings.Builder
	fmt.Fprintf(&b, "the fleet was not warm on %s after %s:", prefix, timeout)
	for _, h := range f.Hosts {
		doc, err := h.Status(ctx)
		if err != nil {
			fmt.Fprintf(&b, "\nhost %d: %v", h.Index, err)
			continue
		}
		fmt.Fprintf(&b, "\nhost %d: prefix %s, %d/%d warm", h.Index, doc.Agent.Prefix, doc.Agent.Warm, doc.Agent.Total)
		for _, im := range doc.Images {
			if im.State != "warm" {
				fmt.Fprintf(&b, "; %s %s %s", im.Runtime, im.State, im.LastError)
			}
		}
	}
	fmt.Fprintf(&b, "\nhost 0's agent:\n%s", f.Hosts[0].AgentOutput())
	return errors.New(b.String())
}

// quiesce waits until the origin has answered everything and seen no new
// request for a second (a cache may still be storing what it streamed),
// at most timeout, and returns how many requests were still open then:
// a daemon that dropped a pull midway can leave a blob response unread
// for minutes.
func (f *Fleet) quiesce(ctx context.Context, timeout time.Duration) int {
	deadline := time.Now().Add(timeout)
	n, since := -1, time.Now()
	for time.Now().Before(deadline) && ctx.Err() == nil {
		if m := len(f.Front.Requests()); m != n || f.Front.InFlight() > 0 {
			n, since = m, time.Now()
		} else if time.Since(since) >= time.Second {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	return f.Front.InFlight()
}
