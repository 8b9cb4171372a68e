package chaos

import (
	"context"
	"flag"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path"
	"regexp"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/agent/state"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

var (
	flagSoak       = flag.Duration("soak.duration", 20*time.Second, "how long TestSoak drives the agent (make soak: DURATION=10m)")
	flagSoakFaults = flag.String("soak.faults", "", "a regular expression: inject only the faults whose names match (default: all)")
)

// soakPrefix is one of the three registries the soak flips between.
type soakPrefix struct {
	src     source
	ns      string
	prefix  string
	digests map[string]string
}

// soakStats is what the soak did and measured.
type soakStats struct {
	duration                      time.Duration
	flips, pushes, rotations, hup int
	faults                        map[string]int
	// RSS in kB: after the three prefixes were warmed (warm), at the end
	// of the soak's first tenth (rss0, the baseline: the heap has grown
	// to its working size by then), at most, and at the end.
	warm, rss0, rssMax, rss int64
	base, end               state.Counts
	maxGoroutines, maxFDs   int
	converge                time.Duration
	classes                 map[string]int
	unknown                 []string // distinct errors of class unknown
	failed                  bool
}

// TestSoak runs the agent while a driver flips the prefix among three
// registries at random intervals (50 ms to 3 s, log-uniform), injects the
// matrix's faults at random, moves tags and rotates credentials. At the
// end every image of the final prefix must be warm and verified, RSS
// within 10 % of where it was after the first tenth of the run, goroutines and file
// descriptors back to their starting counts, and no panic in the log.
func TestSoak(t *testing.T) {
	w := getWorld(t)
	r := newRig(t, w)
	// ECR tokens live 10 s, so they are renewed (after 5 s) all through
	// the soak: rotation by expiry.
	api, err := testbed.NewFakeECR(w.ecrRegistryHost(), w.ecrPass, 10*time.Second)
	must(t, err)
	t.Cleanup(func() { api.Close() })
	r.env = append(r.env, "AWS_ENDPOINT_URL_ECR="+api.URL)
	r.args = append(r.args, "--refresh-interval", "5s")

	var prefixes []*soakPrefix
	for _, src := range []source{fromMain, fromTok, fromECR} {
		p, ds := w.seed(t, src, testbed.SeedOptions{})
		prefixes = append(prefixes, &soakPrefix{src: src, ns: path.Base(p), prefix: p, digests: ds})
	}
	// Warm every prefix once, then take the baseline.
	r.flip(prefixes[0].prefix, prefixes[0].digests)
	r.start()
	for _, p := range prefixes {
		r.flip(p.prefix, p.digests)
		r.waitFor("warm-up of "+p.prefix, 60*time.Second, r.converged)
	}
	r.recordWarm()
	time.Sleep(time.Second)
	r.baseline, err = r.counts()
	must(t, err)
	pid := r.proc.Cmd.Process.Pid
	st := soakStats{faults: map[string]int{}, classes: map[string]int{}, base: r.baseline, warm: testbed.RSS(pid) >> 10}
	st.rssMax = st.warm

	rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	user, tokPass := w.user, w.tokPass
	rotation := 0
	// Each fault: inject returns its removal.
	faults := map[string]func() func(){
		"registry stall": func() func() { must(t, w.tcp.Stall()); return w.tcp.Clear },
		"registry reset": func() func() { must(t, w.tcp.ResetAfter(rng.IntN(500))); return w.tcp.Clear },
		"registry slow":  func() func() { must(t, w.tcp.Throttle(128)); return w.tcp.Clear },
		"registry down":  func() func() { w.tcp.Down(); return func() { must(t, w.tcp.Up()) } },
		"registry 500": func() func() {
			w.http.SetFault(&testbed.Fault{Match: "/manifests/", Status: 500})
			return func() { w.http.SetFault(nil) }
		},
		"registry 429": func() func() {
			w.http.SetFault(&testbed.Fault{Match: "/manifests/", Status: 429, Body: `{"errors":[{"code":"TOOMANYREQUESTS","message":"soak: retry after 2 seconds"}]}`})
			return func() { w.http.SetFault(nil) }
		},
		"token server down":  func() func() { must(t, w.tokens.Close()); return func() { must(t, w.tokens.Restart()) } },
		"ECR API 500":        func() func() { api.Fail(500, "ServerException"); return func() { api.Fail(0, "") } },
		"ECR API throttling": func() func() { api.Fail(400, "ThrottlingException"); return func() { api.Fail(0, "") } },
		"env file garbage": func() func() {
			writeAtomic(t, r.envFile, "\x00\xff garbage", 0o600)
			return func() { r.writeEnv(w.envFile(r.want)) }
		},
		"env file deleted": func() func() { os.Remove(r.envFile); return func() { r.writeEnv(w.envFile(r.want)) } },
		"config.json malformed": func() func() {
			r.writeDockerConfig(`{"auths": {`)
			return func() { r.writeDockerConfig(w.authsConfig(user, tokPass)) }
		},
		"credential helper hang": func() func() {
			r.writeDockerConfig(`{"credHelpers": {"` + w.tcp.Addr + `": "pa-hang"}}`)
			return func() { r.writeDockerConfig(w.authsConfig(user, tokPass)) }
		},
		"docker daemon restart": func() func() {
			must(t, w.bed.StopDockerd())
			return func() { must(t, w.bed.StartDockerd(context.Background())) }
		},
	}
	only, err := regexp.Compile(*flagSoakFaults)
	must(t, err)
	names := make([]string, 0, len(faults))
	for n := range faults {
		if only.MatchString(n) {
			names = append(names, n)
		}
	}
	if len(names) == 0 {
		t.Fatalf("-soak.faults %q matches none of the faults", *flagSoakFaults)
	}
	sort.Strings(names)

	start := time.Now()
	deadline := start.Add(*flagSoak)
	baselineAt := start.Add(*flagSoak / 10)
	var heal func()
	var healName string
	var healAt, revokeAt time.Time
	nextSample := time.Now()
	for time.Now().Before(deadline) {
		// Log-uniform pause: many short (down to 50 ms), some long.
		time.Sleep(time.Duration(50 * math.Pow(60, rng.Float64()) * float64(time.Millisecond)))
		if !r.proc.Running() {
			t.Fatalf("the agent died: %v", r.proc.Err())
		}
		if !revokeAt.IsZero() && time.Now().After(revokeAt) {
			w.tokens.SetUsers(map[string]string{user: tokPass})
			revokeAt = time.Time{}
		}
		if heal != nil && time.Now().After(healAt) {
			heal()
			heal, healName = nil, ""
		}
		switch x := rng.IntN(100); {
		case x < 55:
			p := prefixes[rng.IntN(len(prefixes))]
			r.flip(p.prefix, p.digests)
			st.flips++
		case x < 75 && heal == nil:
			n := names[rng.IntN(len(names))]
			if n == "docker daemon restart" && rng.IntN(4) != 0 {
				continue // costly: a quarter as often as the others
			}
			heal, healName, healAt = faults[n](), n, time.Now().Add(time.Duration(200+rng.IntN(4800))*time.Millisecond)
			st.faults[n]++
		case x < 85:
			// Move one tag: the agent must pull the new digest.
			p := prefixes[rng.IntN(len(prefixes))]
			reg, creds, _ := w.target(t, p.src)
			rt := runtimes[rng.IntN(len(runtimes))]
			s, err := w.bed.Push(context.Background(), reg, p.ns, rt, creds)
			must(t, err)
			p.digests[rt] = s.Digest.String()
			if r.want == p.prefix {
				r.digests = p.digests
			}
			st.pushes++
		case x < 92:
			// Rotate the token registry's credentials with an overlap,
			// as an operator would: new user valid, config.json updated,
			// old user revoked 3 s later (pulls in flight keep theirs).
			rotation++
			newUser, newPass := fmt.Sprintf("%s-%d", w.user, rotation), secret("tok")
			w.tokens.SetUsers(map[string]string{user: tokPass, newUser: newPass})
			w.mu.Lock()
			w.rotated = append(w.rotated, newPass)
			w.mu.Unlock()
			user, tokPass = newUser, newPass
			if !strings.Contains(healName, "config.json") && !strings.Contains(healName, "helper") {
				r.writeDockerConfig(w.authsConfig(user, tokPass)) // else its heal writes it
			}
			revokeAt = time.Now().Add(3 * time.Second)
			st.rotations++
		default:
			must(t, r.proc.Cmd.Process.Signal(syscall.SIGHUP))
			st.hup++
		}
		if st.rss0 == 0 && time.Now().After(baselineAt) {
			st.rss0 = testbed.RSS(pid) >> 10
		}
		if time.Now().After(nextSample) {
			nextSample = time.Now().Add(2 * time.Second)
			if v := testbed.RSS(pid) >> 10; v > st.rssMax {
				st.rssMax = v
			}
			if c, err := r.counts(); err == nil {
				st.maxGoroutines, st.maxFDs = max(st.maxGoroutines, c.Goroutines), max(st.maxFDs, c.FDs)
			}
		}
	}
	if heal != nil {
		heal()
	}
	if st.rss0 == 0 {
		st.rss0 = testbed.RSS(pid) >> 10
	}
	// Faults removed, good files back, a last flip.
	r.writeDockerConfig(w.authsConfig(user, tokPass))
	p := prefixes[rng.IntN(len(prefixes))]
	r.flip(p.prefix, p.digests)
	st.duration = time.Since(start)
	o := r.invariants()
	st.converge, st.end = o.converge, o.counts
	time.Sleep(2 * time.Second)
	st.rss = testbed.RSS(pid) >> 10
	growth := float64(st.rss-st.rss0) / float64(st.rss0)
	// RSS says little about a run of seconds (the heap is still growing
	// to its working size); the criterion holds for runs of 5 minutes
	// and more, as make soak's.
	if growth > 0.10 && *flagSoak >= 5*time.Minute {
		t.Errorf("RSS grew %.1f%% (%d → %d kB), more than 10%%", 100*growth, st.rss0, st.rss)
	}
	st.classes = r.proc.classes()
	st.unknown = r.proc.unclassified()
	for _, e := range st.unknown {
		t.Logf("class unknown: %s", e)
	}
	st.failed = t.Failed()
	t.Logf("soak %s: %d flips, %d tag moves, %d rotations, %d SIGHUPs, faults %v; failures by class %v; RSS %d after warm-up, %d → %d kB (max %d, %+.1f%%); goroutines %d → %d (max %d), fds %d → %d (max %d); converged %s after the last fault",
		st.duration.Round(time.Second), st.flips, st.pushes, st.rotations, st.hup, st.faults, st.classes, st.warm, st.rss0, st.rss, st.rssMax, 100*growth,
		st.base.Goroutines, st.end.Goroutines, st.maxGoroutines, st.base.FDs, st.end.FDs, st.maxFDs, secs(st.converge))
	if *flagReport != "" {
		if err := writeSoakReport(*flagReport, st); err != nil {
			t.Fatal(err)
		}
	}
}

// classes counts the agent's logged pull failures by class.
func (p *agentProc) classes() map[string]int {
	out := map[string]int{}
	for _, l := range strings.Split(p.Output.String(), "\n") {
		if !strings.Contains(l, `msg="pull failed`) {
			continue
		}
		if i := strings.Index(l, " class="); i >= 0 {
			f := strings.Fields(l[i+len(" class="):])
			if len(f) > 0 {
				out[f[0]]++
			}
		}
	}
	return out
}

// unclassified lists the distinct errors the agent logged as class
// unknown: each is a failure it could not name.
func (p *agentProc) unclassified() []string { return p.errorsOf("unknown") }

// errorsOf lists the distinct errors the agent logged with class.
func (p *agentProc) errorsOf(class string) []string {
	seen := map[string]bool{}
	var out []string
	for _, l := range strings.Split(p.Output.String(), "\n") {
		if !strings.Contains(l, `msg="pull failed`) || !strings.Contains(l, " class="+class+" ") {
			continue
		}
		if i := strings.Index(l, " error="); i >= 0 && !seen[l[i:]] {
			seen[l[i:]] = true
			out = append(out, l[i+len(" error="):])
		}
	}
	return out
}
