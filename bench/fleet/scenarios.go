package main

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/molecule-ai/pull-agent/internal/testbed/fleet"
)

// spreadKey is the setting scenarios 2 and 4 use; an agent binary that
// does not contain it would ignore it, so they are skipped then.
const spreadKey = "MOLECULE_FLIP_SPREAD"

// The two image sets a fleet flips between.
const (
	nsA = "fleet-a"
	nsB = "fleet-b"
)

// Report is docs/fleet.json.
type Report struct {
	Hosts      int     `json:"hosts"`
	LinkMbit   int     `json:"link_mbit"`
	RatePerSec float64 `json:"rate_limit_per_s"`
	Burst      int     `json:"rate_limit_burst"`
	Spread     string  `json:"spread"`
	BaseKiB    int64   `json:"base_kib"`
	LayerKiB   int64   `json:"layer_kib"`
	// OneHost is what one host pulls in each phase, by phase: every
	// distinct blob of set A from cold, of set B less the shared base at
	// the flip.
	OneHost map[string]int64 `json:"one_host_bytes"`
	// Scenarios holds each scenario's cold and flip phases.
	Scenarios []Scenario `json:"scenarios"`
	Skipped   []string   `json:"skipped,omitempty"`
	Seconds   float64    `json:"seconds"`
	Date      string     `json:"date"`
}

// Scenario is one way of flipping a fleet, measured from cold and at a
// flip.
type Scenario struct {
	ID     int          `json:"id"`
	Name   string       `json:"name"`
	Cache  bool         `json:"cache"`
	Spread bool         `json:"spread"`
	Cold   fleet.Result `json:"cold"`
	Flip   fleet.Result `json:"flip"`
	Error  string       `json:"error,omitempty"`
}

var scenarioDefs = []Scenario{
	{ID: 1, Name: "all at once, straight to the origin"},
	{ID: 2, Name: "MOLECULE_FLIP_SPREAD, straight to the origin", Spread: true},
	{ID: 3, Name: "all at once, through the pull-through cache", Cache: true},
	{ID: 4, Name: "MOLECULE_FLIP_SPREAD, through the pull-through cache", Cache: true, Spread: true},
}

func runScenarios(ctx context.Context, f *fleet.Fleet, s settings, spreadOK bool, logf func(string, ...any)) (Report, error) {
	rep := Report{Hosts: s.hosts, LinkMbit: s.linkMbit, RatePerSec: s.rate, Burst: s.burst, Spread: s.spread.String(),
		BaseKiB: s.baseKiB, LayerKiB: s.layerKiB, OneHost: map[string]int64{}, Date: time.Now().UTC().Format(time.RFC3339)}
	var err error
	if rep.OneHost["cold"], err = f.NewBytes("", nsA); err != nil {
		return rep, err
	}
	if rep.OneHost["flip"], err = f.NewBytes(nsA, nsB); err != nil {
		return rep, err
	}
	var failed []string
	for _, sc := range scenarioDefs {
		if !strings.Contains(","+s.scenarios+",", fmt.Sprintf(",%d,", sc.ID)) {
			continue
		}
		if sc.Spread && !spreadOK {
			rep.Skipped = append(rep.Skipped, fmt.Sprintf("%d (%s): %s does not know %s", sc.ID, sc.Name, s.bin, spreadKey))
			continue
		}
		// A scenario whose fleet does not get warm is recorded as such,
		// and the next one runs: that is a result too.
		if err := runScenario(ctx, f, s, &sc, logf); err != nil {
			sc.Error = err.Error()
			failed = append(failed, fmt.Sprintf("scenario %d: %s", sc.ID, firstLine(sc.Error)))
			logf("scenario %d: %v", sc.ID, err)
		}
		rep.Scenarios = append(rep.Scenarios, sc)
		if ctx.Err() != nil {
			return rep, ctx.Err()
		}
	}
	if len(failed) > 0 {
		return rep, fmt.Errorf("%s", strings.Join(failed, "; "))
	}
	return rep, nil
}

// runScenario runs one scenario's cold start on set A, then its flip to
// set B; a cache scenario starts with a new, empty cache.
func runScenario(ctx context.Context, f *fleet.Fleet, s settings, sc *Scenario, logf func(string, ...any)) error {
	prefix := f.Front.Prefix
	if sc.Cache {
		c, err := f.StartCache(ctx, fmt.Sprintf("cache-%d", sc.ID))
		if err != nil {
			return err
		}
		prefix = c.Prefix
	}
	env := ""
	if sc.Spread {
		env = fmt.Sprintf("%s=%s\n", spreadKey, s.spread)
	}
	name := fmt.Sprintf("%d", sc.ID)
	var err error
	logf("scenario %d (%s): cold start on %s", sc.ID, sc.Name, prefix(nsA))
	sc.Cold, err = f.Run(ctx, fleet.Phase{Scenario: name, Cold: true, Prefix: prefix(nsA), Set: nsA, Env: env, Timeout: s.timeout})
	sc.Cold.Samples = trim(sc.Cold.Samples)
	logResult(logf, sc.Cold)
	if err != nil {
		return fmt.Errorf("cold: %w", err)
	}
	logf("scenario %d: flip to %s", sc.ID, prefix(nsB))
	flipTimeout := s.timeout
	if sc.Spread {
		flipTimeout += s.spread // the last host starts up to a spread late
	}
	sc.Flip, err = f.Run(ctx, fleet.Phase{Scenario: name, Prefix: prefix(nsB), Set: nsB, Env: env, Timeout: flipTimeout})
	sc.Flip.Samples = trim(sc.Flip.Samples)
	logResult(logf, sc.Flip)
	if err != nil {
		return fmt.Errorf("flip: %w", err)
	}
	return nil
}

func logResult(logf func(string, ...any), r fleet.Result) {
	o := r.Origin
	logf("  %s: origin %d requests %v, %d × 429, %.1f MB of blobs in %d GETs, peak %d conns / %d blob GETs; first warm %s s, all %s s; %d/%d verified",
		r.Phase, o.Requests, o.Kinds, o.Limited, float64(o.BlobBytes)/1e6, o.BlobGets, o.PeakConns, o.PeakBlobs, secs(r.FirstWarmS), secs(r.AllWarmS), r.Verified, r.Hosts)
}

// printReport writes the table docs/FLEET.md shows.
func printReport(w io.Writer, rep Report) {
	fmt.Fprintf(w, "\n%d hosts, origin link %d Mbit/s, rate limit %.0f GETs/s (burst %d), spread %s; one host pulls %.1f MB cold, %.1f MB at the flip\n\n",
		rep.Hosts, rep.LinkMbit, rep.RatePerSec, rep.Burst, rep.Spread, float64(rep.OneHost["cold"])/1e6, float64(rep.OneHost["flip"])/1e6)
	fmt.Fprintln(w, "| scenario | phase | origin blob MB | × one host | origin requests | 429s | peak conns | peak blob GETs | first warm s | fleet warm s | verified |")
	fmt.Fprintln(w, "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, sc := range rep.Scenarios {
		for _, r := range []fleet.Result{sc.Cold, sc.Flip} {
			if r.Phase == "" {
				continue
			}
			o := r.Origin
			fmt.Fprintf(w, "| %d %s | %s | %.1f | %.2f | %d | %d | %d | %d | %s | %s | %d/%d |\n",
				sc.ID, sc.Name, r.Phase, float64(o.BlobBytes)/1e6, float64(o.BlobBytes)/float64(rep.OneHost[r.Phase]),
				o.Requests, o.Limited, o.PeakConns, o.PeakBlobs, secs(r.FirstWarmS), secs(r.AllWarmS), r.Verified, r.Hosts)
		}
	}
	for _, s := range rep.Skipped {
		fmt.Fprintf(w, "\nskipped: scenario %s\n", s)
	}
	fmt.Fprintf(w, "\nmake fleet took %.0f s\n", rep.Seconds)
}

// secs prints a time in seconds, or "not warm" for -1.
func secs(s float64) string {
	if s < 0 {
		return "not warm"
	}
	return fmt.Sprintf("%.1f", s)
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}

// trim rounds the samples' times to milliseconds, for a JSON file a
// person can read.
func trim(s []fleet.Sample) []fleet.Sample {
	for i := range s {
		s[i].T = float64(int64(s[i].T*1000+0.5)) / 1000
	}
	return s
}
