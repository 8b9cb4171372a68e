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

	// fallbackServed and primaryBack count the images the fallback
	// served and those the primary then took back.
	fallbackServed, primaryBack int
}

// TestSoak runs the agent while a driver flips the prefix among three
// registries at random intervals (50 ms to 3 s, log-uniform), injects the
// matrix's faults at random, moves tags and rotates credentials. At the
// end every image of the final prefix must be warm and verified, RSS
// within 10 % of where it was after the first tenth of the run, goroutines and file
// descriptors back to their starting counts, and no panic in the log.
func TestSoak(t *testing.T) {
	s := startSoak(t)
	faults := s.faults()
	names := faultNames(t, faults)
	start := time.Now()
	s.drive(faults, names, start)
	s.finish(start)
}

// soak is TestSoak's driver: the agent's rig, the registries it flips
// between, the credentials of the moment and what it has done so far.
// It belongs to the test's goroutine.
type soak struct {
	t        *testing.T
	w        *world
	r        *rig
	api      *testbed.FakeECR
	rng      *rand.Rand
	prefixes []*soakPrefix
	pid      int
	st       soakStats
	// user and tokPass are the token registry's credentials, rotated as
	// the soak goes; rotation counts the rotations.
	user, tokPass string
	rotation      int
	// heal removes the fault in force (healName), at healAt; at
	// revokeAt the user a rotation replaced is revoked.
	heal             func()
	healName         string
	healAt, revokeAt time.Time
	// fresh are the prefixes "primary refuses" seeded: the only ones
	// whose images the fallback may serve.
	fresh map[string]bool
}

// startSoak starts the agent, warms it on every prefix and takes the
// baseline counts and RSS.
func startSoak(t *testing.T) *soak {
	w := getWorld(t)
	r := newRig(t, w)
	// ECR tokens live 10 s, so they are renewed (after 5 s) all through
	// the soak: rotation by expiry.
	api, err := testbed.NewFakeECR(w.ecrRegistryHost(), w.ecrPass, 10*time.Second)
	must(t, err)
	t.Cleanup(func() { api.Close() })
	r.env = append(r.env, "AWS_ENDPOINT_URL_ECR="+api.URL)
	r.args = append(r.args, "--refresh-interval", "5s")

	r.fallback = true // main's prefixes have the fallback registry's namespace
	s := &soak{t: t, w: w, r: r, api: api, fresh: map[string]bool{}}
	for _, src := range []source{fromMain, fromTok, fromECR} {
		p, ds := w.seed(t, src, testbed.SeedOptions{})
		s.prefixes = append(s.prefixes, &soakPrefix{src: src, ns: path.Base(p), prefix: p, digests: ds})
	}
	// Warm every prefix once, then take the baseline.
	r.flip(s.prefixes[0].prefix, s.prefixes[0].digests)
	r.start()
	for _, p := range s.prefixes {
		r.flip(p.prefix, p.digests)
		r.waitFor("warm-up of "+p.prefix, 60*time.Second, r.converged)
	}
	r.recordWarm()
	time.Sleep(time.Second)
	r.baseline, err = r.counts()
	must(t, err)
	s.pid = r.proc.Cmd.Process.Pid
	s.st = soakStats{faults: map[string]int{}, classes: map[string]int{}, base: r.baseline, warm: testbed.RSS(s.pid) >> 10}
	s.st.rssMax = s.st.warm

	s.rng = rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
	s.user, s.tokPass = w.user, w.tokPass
	return s
}

// faults are the faults the soak injects, by name: each injects its fault
// and returns its removal.
func (s *soak) faults() map[string]func() func() {
	t, w, r, api, rng := s.t, s.w, s.r, s.api, s.rng
	return map[string]func() func(){
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
			return func() { r.writeEnv(r.envFor(r.want)) }
		},
		"env file deleted": func() func() { os.Remove(r.envFile); return func() { r.writeEnv(r.envFor(r.want)) } },
		"primary refuses":  s.primaryRefuses,
		"config.json malformed": func() func() {
			r.writeDockerConfig(`{"auths": {`)
			return func() { r.writeDockerConfig(w.authsConfig(s.user, s.tokPass)) }
		},
		"credential helper hang": func() func() {
			r.writeDockerConfig(`{"credHelpers": {"` + w.tcp.Addr + `": "pa-hang"}}`)
			return func() { r.writeDockerConfig(w.authsConfig(s.user, s.tokPass)) }
		},
		"docker daemon restart": func() func() {
			must(t, w.bed.StopDockerd())
			return func() { must(t, w.bed.StartDockerd(context.Background())) }
		},
	}
}

// faultNames are the names of faults that -soak.faults matches, sorted.
func faultNames(t *testing.T, faults map[string]func() func()) []string {
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
	return names
}

// drive acts at random until -soak.duration has passed since start,
// sampling RSS, goroutines and descriptors as it goes.
func (s *soak) drive(faults map[string]func() func(), names []string, start time.Time) {
	deadline := start.Add(*flagSoak)
	baselineAt := start.Add(*flagSoak / 10)
	nextSample := time.Now()
	for time.Now().Before(deadline) {
		// Log-uniform pause: many short (down to 50 ms), some long.
		time.Sleep(time.Duration(50 * math.Pow(60, s.rng.Float64()) * float64(time.Millisecond)))
		if !s.r.proc.Running() {
			s.t.Fatalf("the agent died: %v", s.r.proc.Err())
		}
		if !s.revokeAt.IsZero() && time.Now().After(s.revokeAt) {
			s.w.tokens.SetUsers(map[string]string{s.user: s.tokPass})
			s.revokeAt = time.Time{}
		}
		if s.heal != nil && time.Now().After(s.healAt) {
			s.heal()
			s.heal, s.healName = nil, ""
		}
		if !s.act(faults, names) {
			continue
		}
		if s.st.rss0 == 0 && time.Now().After(baselineAt) {
			s.st.rss0 = testbed.RSS(s.pid) >> 10
		}
		if time.Now().After(nextSample) {
			nextSample = time.Now().Add(2 * time.Second)
			s.sample()
		}
	}
}

// act does one thing at random: a flip, a fault (when none is in force),
// a tag move, a rotation or a SIGHUP. It returns false when it passed
// over a daemon restart, which comes a quarter as often as the others.
func (s *soak) act(faults map[string]func() func(), names []string) bool {
	switch x := s.rng.IntN(100); {
	case x < 55:
		p := s.prefixes[s.rng.IntN(len(s.prefixes))]
		s.r.flip(p.prefix, p.digests)
		s.st.flips++
	case x < 75 && s.heal == nil:
		n := names[s.rng.IntN(len(names))]
		if n == "docker daemon restart" && s.rng.IntN(4) != 0 {
			return false // costly: a quarter as often as the others
		}
		s.heal, s.healName, s.healAt = faults[n](), n, time.Now().Add(time.Duration(200+s.rng.IntN(4800))*time.Millisecond)
		s.st.faults[n]++
	case x < 85:
		s.moveTag()
	case x < 92:
		s.rotate()
	default:
		must(s.t, s.r.proc.Cmd.Process.Signal(syscall.SIGHUP))
		s.st.hup++
	}
	return true
}

// moveTag pushes a new image for one runtime of one prefix: the agent
// must pull the new digest.
func (s *soak) moveTag() {
	p := s.prefixes[s.rng.IntN(len(s.prefixes))]
	reg, creds, _ := s.w.target(s.t, p.src)
	rt := runtimes[s.rng.IntN(len(runtimes))]
	pushed, err := s.w.bed.Push(context.Background(), reg, p.ns, rt, creds)
	must(s.t, err)
	p.digests[rt] = pushed.Digest.String()
	if s.r.want == p.prefix {
		s.r.digests = p.digests
	}
	s.st.pushes++
}

// rotate rotates the token registry's credentials with an overlap, as an
// operator would: new user valid, config.json updated, old user revoked
// 3 s later (pulls in flight keep theirs).
func (s *soak) rotate() {
	s.rotation++
	newUser, newPass := fmt.Sprintf("%s-%d", s.w.user, s.rotation), secret("tok")
	s.w.tokens.SetUsers(map[string]string{s.user: s.tokPass, newUser: newPass})
	s.w.mu.Lock()
	s.w.rotated = append(s.w.rotated, newPass)
	s.w.mu.Unlock()
	s.user, s.tokPass = newUser, newPass
	if !strings.Contains(s.healName, "config.json") && !strings.Contains(s.healName, "helper") {
		s.r.writeDockerConfig(s.w.authsConfig(s.user, s.tokPass)) // else its heal writes it
	}
	s.revokeAt = time.Now().Add(3 * time.Second)
	s.st.rotations++
}

// sample records the agent's RSS, goroutines and descriptors where they
// exceed the highest seen.
func (s *soak) sample() {
	if v := testbed.RSS(s.pid) >> 10; v > s.st.rssMax {
		s.st.rssMax = v
	}
	if c, err := s.r.counts(); err == nil {
		s.st.maxGoroutines, s.st.maxFDs = max(s.st.maxGoroutines, c.Goroutines), max(s.st.maxFDs, c.FDs)
	}
}

// finish removes the fault in force, restores the good files, flips a
// last time and checks the invariants and RSS; it logs what the soak did
// and writes the report if -chaos.report asks for one.
func (s *soak) finish(start time.Time) {
	t, r, st := s.t, s.r, &s.st
	if s.heal != nil {
		s.heal()
	}
	if st.rss0 == 0 {
		st.rss0 = testbed.RSS(s.pid) >> 10
	}
	// Faults removed, good files back, a last flip.
	r.writeDockerConfig(s.w.authsConfig(s.user, s.tokPass))
	p := s.prefixes[s.rng.IntN(len(s.prefixes))]
	r.flip(p.prefix, p.digests)
	st.duration = time.Since(start)
	o := r.invariants()
	st.converge, st.end = o.converge, o.counts
	s.fallbackChecks()
	time.Sleep(2 * time.Second)
	st.rss = testbed.RSS(s.pid) >> 10
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
		if err := writeSoakReport(*flagReport, *st); err != nil {
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
