package chaos

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/agent/state"
	"github.com/molecule-ai/pull-agent/internal/safetext"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// row is one fault of the matrix. run starts with the agent warm on a
// first prefix (unless own is set), injects the fault, checks what the
// agent does while it lasts, removes it and returns what it measured;
// the invariants are checked after it.
type row struct {
	group, fault string
	inject       string // how the test injects it
	expect       string // what the agent must do
	fast         bool   // also part of 'make test'
	src          source // where the first prefix comes from
	noDAC        bool   // the agent runs without CAP_DAC_OVERRIDE
	own          bool   // run starts the agent itself
	run          func(r *rig) string
}

func secs(d time.Duration) string { return fmt.Sprintf("%.1f s", d.Seconds()) }

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// next seeds a fresh prefix for the row to move to.
func (r *rig) next(src source, opts testbed.SeedOptions) (string, map[string]string) {
	r.t.Helper()
	return r.w.seed(r.t, src, opts)
}

// big images: each has a 2 MiB layer, so that a throttled pull is in the
// middle of a blob for seconds.
var big = testbed.SeedOptions{LayerSize: 2 << 20}

func throttled(r *rig) {
	must(r.t, r.w.tcp.Throttle(256))
	r.t.Cleanup(r.w.tcp.Clear)
}

// midPull moves the agent to a fresh prefix of big images through a
// throttled link and returns once a pull is moving bytes.
func (r *rig) midPull() {
	r.t.Helper()
	p, ds := r.next(fromMain, big)
	throttled(r)
	r.flip(p, ds)
	r.pulling()
}

// anyFailed waits until an image of the rig's prefix has failed with one
// of classes and returns how long that took and the class.
func (r *rig) anyFailed(timeout time.Duration, classes ...string) (time.Duration, string) {
	r.t.Helper()
	class := ""
	took := r.waitFor("a pull failing with "+strings.Join(classes, " or "), timeout, func(d state.StateDoc) bool {
		for _, i := range d.Images {
			if d.Agent.Prefix != r.want {
				continue
			}
			for _, c := range classes {
				if i.LastErrorClass != "" && (c == "" || i.LastErrorClass == c) {
					class = i.LastErrorClass
					return true
				}
			}
		}
		return false
	})
	return took, class
}

// refusedAtStart starts the agent, which must exit non-zero at once with
// an error containing want, and returns that error.
func (r *rig) refusedAtStart(want string) string {
	r.t.Helper()
	p := r.start()
	select {
	case <-p.Done():
	case <-time.After(15 * time.Second):
		r.t.Fatal("the agent did not refuse to start")
	}
	msg := strings.TrimSpace(p.Output.String())
	if p.Err() == nil || !strings.Contains(msg, want) {
		r.t.Errorf("agent start: %v, %q; want an error with %q", p.Err(), msg, want)
	}
	r.outputs = append(r.outputs, msg)
	return msg
}

// serverRow is a registry answer injected by the HTTP proxy.
func serverRow(status int, header map[string]string, body, class string) func(r *rig) string {
	return func(r *rig) string {
		p, ds := r.next(fromMain, testbed.SeedOptions{})
		r.w.http.SetFault(&testbed.Fault{Match: "/manifests/", Status: status, Header: header, Body: body})
		r.t.Cleanup(func() { r.w.http.SetFault(nil) })
		r.flip(p, ds)
		took := r.failing(60*time.Second, class)
		note := ""
		if class == string(pull.ClassRateLimited) {
			d, err := r.doc()
			must(r.t, err)
			var until time.Time
			for _, h := range d.Hosts {
				if h.Host == r.w.tcp.Addr && h.CooldownUntil != nil {
					until = *h.CooldownUntil
				}
			}
			if until.IsZero() {
				r.t.Fatalf("no cooldown on %s:\n%s", r.w.tcp.Addr, describe(d))
			}
			// Three pulls refused at once are one episode: the first
			// cooldown (30 s ceiling), not a doubled one.
			if left := time.Until(until); left > 31*time.Second {
				r.t.Errorf("cooldown of %s after one burst of 429s, want at most 30 s", left)
			}
			seen := len(r.w.http.Requests())
			time.Sleep(2 * time.Second)
			if n := len(r.w.http.Requests()) - seen; n > 0 {
				r.t.Errorf("%d requests reached the registry during its cooldown", n)
			}
			note = fmt.Sprintf("; host cooled down for %s, no request in it", secs(time.Until(until)+2*time.Second))
		}
		r.w.http.SetFault(nil)
		return fmt.Sprintf("every image %s after %s%s", class, secs(took), note)
	}
}

// envRow writes a bad env file, expects it refused with want while the
// previous prefix stays, then heals it with fix (nil: write a good file).
func envRow(bad func(r *rig), want string, fix func(r *rig)) func(r *rig) string {
	return func(r *rig) string {
		keep := r.want
		bad(r)
		took := r.configRefused(keep, want)
		d, err := r.doc()
		must(r.t, err)
		if len(d.Agent.ConfigError) > 1024 {
			r.t.Errorf("config error of %d bytes: it repeats the input", len(d.Agent.ConfigError))
		}
		time.Sleep(300 * time.Millisecond) // and it stays so
		d, err = r.doc()
		must(r.t, err)
		if d.Agent.Prefix != keep || d.Agent.Warm != d.Agent.Total {
			r.t.Fatalf("the last good configuration was not kept:\n%s", describe(d))
		}
		p, ds := r.next(fromMain, testbed.SeedOptions{})
		if fix != nil {
			fix(r)
		}
		r.flip(p, ds)
		return fmt.Sprintf("refused in %s (%q); last good prefix kept, all warm", secs(took), shorten(d.Agent.ConfigError))
	}
}

// shorten is a message as the report quotes it: at most 90 runes, its last
// clause (after the last ": ") when the whole does not fit.
func shorten(s string) string {
	const max = 90
	if i := strings.LastIndex(s, ": "); i >= 0 && utf8.RuneCountInString(s) > max {
		s = safetext.Ellipsis + s[i:]
	}
	return safetext.Truncate(s, max)
}

// configRow breaks config.json, moves to a new prefix, expects its pulls
// to fail as auth with want, then restores config.json. Failures that
// need an operator are retried on SIGHUP (systemctl reload); transient
// ones on their own.
func configRow(cfg, want string, transient bool) func(r *rig) string {
	return func(r *rig) string {
		p, ds := r.next(fromMain, testbed.SeedOptions{})
		seen := strings.Count(r.proc.Output.String(), "credentials changed")
		r.writeDockerConfig(strings.ReplaceAll(cfg, "HOST", r.w.tcp.Addr))
		// The agent watches config.json and re-tries auth failures when it
		// changes: let it see this change before the flip, so that only
		// the flip's pulls are counted below.
		testbed.WaitFor(r.t, "the agent seeing config.json change", 10*time.Second, func() bool {
			return strings.Count(r.proc.Output.String(), "credentials changed") > seen
		})
		r.flip(p, ds)
		took := r.failing(30*time.Second, string(pull.ClassAuth))
		d, err := r.doc()
		must(r.t, err)
		if !strings.Contains(d.Images[0].LastError, want) {
			r.t.Errorf("error %q does not say %q", d.Images[0].LastError, want)
		}
		time.Sleep(2500 * time.Millisecond)
		d, err = r.doc()
		must(r.t, err)
		attempts := 0
		for _, i := range d.Images {
			attempts = max(attempts, i.Attempts)
		}
		switch {
		case transient && attempts < 2:
			r.t.Errorf("a transient credential failure was not retried (%d attempts)", attempts)
		case !transient && attempts > 1:
			r.t.Errorf("an auth failure needing the operator was retried %d times (hot loop)", attempts)
		}
		r.writeDockerConfig(r.w.dockerConfig())
		how := "retried on its own (" + fmt.Sprint(attempts) + " attempts in 2.5 s)"
		if !transient {
			must(r.t, r.proc.Cmd.Process.Signal(syscall.SIGHUP))
			how = "not retried (1 attempt in 2.5 s) until config.json changed"
		}
		return fmt.Sprintf("every image auth after %s: %q; %s", secs(took), shorten(d.Images[0].LastError), how)
	}
}

// ecrRow moves to an ECR prefix while the fake ECR API fails.
func ecrRow(status int, code string) func(r *rig) string {
	return func(r *rig) string {
		p, ds := r.next(fromECR, testbed.SeedOptions{})
		r.w.ecrAPI.Fail(status, code)
		r.t.Cleanup(func() { r.w.ecrAPI.Fail(0, "") })
		r.flip(p, ds)
		took := r.failing(30*time.Second, string(pull.ClassAuth))
		r.waitFor("retries of the token fetch", 15*time.Second, func(d state.StateDoc) bool {
			return len(d.Images) > 0 && d.Images[0].Attempts >= 2
		})
		d, err := r.doc()
		must(r.t, err)
		if !strings.Contains(d.Images[0].LastError, code) {
			r.t.Errorf("error %q does not name %s", d.Images[0].LastError, code)
		}
		r.w.ecrAPI.Fail(0, "")
		return fmt.Sprintf("auth after %s naming %s; retried with backoff, no SIGHUP needed", secs(took), code)
	}
}

// rapidFlips flips between two prefixes every 20 ms (a state write each)
// and calls during(i) at each step.
func rapidFlips(r *rig, steps int, during func(i int) bool) {
	a, da := r.want, r.digests
	b, db := r.next(fromMain, testbed.SeedOptions{})
	for i := range steps {
		if i%2 == 0 {
			r.flip(b, db)
		} else {
			r.flip(a, da)
		}
		time.Sleep(20 * time.Millisecond)
		if !during(i) {
			return
		}
	}
}

// randIn is a random int in [lo, hi).
func randIn(lo, hi int) int {
	var b [1]byte
	_, _ = rand.Read(b[:])
	return lo + int(b[0])%(hi-lo)
}

// restart starts a new agent on the rig's state directory and socket.
func restart(r *rig) {
	r.start()
	r.ready()
}

// stateFileFrom checks the state file after a stop: it parses and comes
// from the stopped process.
func stateFileFrom(r *rig, pid int) {
	doc, err := state.ReadStateFile(filepath.Join(r.stateDir, state.StateFileName))
	if err != nil {
		r.t.Fatalf("the state file does not parse after the stop: %v", err)
	}
	if doc.Agent.PID != pid {
		r.t.Fatalf("the state file is from pid %d, want %d", doc.Agent.PID, pid)
	}
}

func corruptState(mutate func([]byte) []byte, wantStatus string) func(r *rig) string {
	return func(r *rig) string {
		r.proc.stop(r.t, syscall.SIGTERM)
		path := filepath.Join(r.stateDir, state.StateFileName)
		b, err := os.ReadFile(path)
		must(r.t, err)
		must(r.t, os.WriteFile(path, mutate(b), 0o644))
		out, err := exec.Command(r.w.bin, "status", "--status-socket", r.socket, "--state-dir", r.stateDir).CombinedOutput()
		code := -1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		}
		r.outputs = append(r.outputs, string(out))
		if code != 3 || !strings.Contains(string(out), wantStatus) || strings.Count(strings.TrimSpace(string(out)), "\n") > 1 {
			r.t.Errorf("status on a bad state file: exit %d, want 3 and %q:\n%s", code, wantStatus, out)
		}
		p, ds := r.next(fromMain, testbed.SeedOptions{})
		r.flip(p, ds)
		restart(r)
		return fmt.Sprintf("status exit 3: %q; the agent starts and rewrites it", shorten(strings.TrimSpace(string(out))))
	}
}

func rows() []row {
	return []row{
		// Registry
		{group: "registry", fault: "refusing connections", inject: "the registry's port closed (proxy down)", expect: "network failures, retried with backoff; warm images kept", fast: true,
			run: func(r *rig) string {
				p, ds := r.next(fromMain, testbed.SeedOptions{})
				r.w.tcp.Down()
				up := false
				r.t.Cleanup(func() {
					if !up {
						_ = r.w.tcp.Up()
					}
				})
				r.flip(p, ds)
				took := r.failing(30*time.Second, string(pull.ClassNetwork))
				must(r.t, r.w.tcp.Up())
				up = true
				return "every image network after " + secs(took)
			}},
		{group: "registry", fault: "an error carrying escapes and a signed URL", inject: "HTTP proxy answers 403 DENIED, its message holding OSC title, cursor-up + erase-line, OSC 8, OSC 52, a C1 CSI and a pre-signed URL", expect: "auth failure showing the registry's words; no escape byte and no URL token in log, state, socket, status, check or pull output", fast: true,
			run: func(r *rig) string {
				msg := "access revoked by the mirror\x1b]0;owned\x07\x1b[1A\x1b[2K\rall warm\x1b]8;;http://evil.test/\x1b\\here\x1b]8;;\x1b\\" +
					"\x1b]52;c;cm0gLXJmIH4=\x07\u009b2J see https://bucket.s3.amazonaws.com/b?X-Amz-Security-Token=" + r.w.urlToken + "&X-Amz-Signature=" + r.w.urlToken
				body, err := json.Marshal(map[string]any{"errors": []map[string]string{{"code": "DENIED", "message": msg}}})
				must(r.t, err)
				p, ds := r.next(fromMain, testbed.SeedOptions{})
				r.w.http.SetFault(&testbed.Fault{Match: "/manifests/", Status: 403, Body: string(body)})
				r.t.Cleanup(func() { r.w.http.SetFault(nil) })
				r.flip(p, ds)
				took := r.failing(30*time.Second, string(pull.ClassAuth))
				status := r.command("status", "--status-socket", r.socket, "--state-dir", r.stateDir)
				check := r.command("check", "--env-file", r.envFile, "--state-dir", r.stateDir)
				pull := r.command("pull", "--env-file", r.envFile, "--state-dir", r.stateDir)
				for name, out := range map[string]string{"status": status, "check": check, "pull": pull} {
					if !strings.Contains(out, "access revoked by the mirror") {
						r.t.Errorf("%s does not show the registry's words:\n%s", name, out)
					}
				}
				r.w.http.SetFault(nil)
				must(r.t, r.proc.Cmd.Process.Signal(syscall.SIGHUP))
				return fmt.Sprintf("every image auth after %s; status, check and pull show %q", secs(took), "access revoked by the mirror … ?REDACTED")
			}},
		{group: "registry", fault: "answering 500", inject: "HTTP proxy answers 500 to manifest requests", expect: "server failures, retried with backoff", fast: true,
			run: serverRow(500, nil, `{"errors":[{"code":"UNKNOWN","message":"chaos: internal error"}]}`, string(pull.ClassServer))},
		{group: "registry", fault: "429 with Retry-After", inject: "HTTP proxy answers 429, Retry-After: 3", expect: "rate-limited; the host is cooled down, nothing sent to it meanwhile",
			run: serverRow(429, map[string]string{"Retry-After": "3"}, `{"errors":[{"code":"TOOMANYREQUESTS","message":"chaos: slow down"}]}`, string(pull.ClassRateLimited))},
		{group: "registry", fault: "429 without Retry-After", inject: "HTTP proxy answers 429", expect: "as above, with the agent's own backoff",
			run: serverRow(429, nil, `{"errors":[{"code":"TOOMANYREQUESTS","message":"chaos: slow down"}]}`, string(pull.ClassRateLimited))},
		{group: "registry", fault: "reset mid-blob", inject: "toxiproxy: 256 KB/s and reset_peer 1 s into every connection", expect: "the failed pull retried; converges once connections hold", fast: true,
			run: func(r *rig) string {
				p, ds := r.next(fromMain, big)
				throttled(r)
				must(r.t, r.w.tcp.ResetAfter(1000))
				r.flip(p, ds)
				took, class := r.anyFailed(60*time.Second, "")
				r.w.tcp.Clear()
				return fmt.Sprintf("first failure after %s (%s); retried", secs(took), class)
			}},
		{group: "registry", fault: "stalling mid-blob", inject: "toxiproxy: 256 KB/s, then no bytes at all (timeout toxic)", expect: "stalled after the stall timeout (2 s here), retried", fast: true,
			run: func(r *rig) string {
				r.midPull()
				must(r.t, r.w.tcp.Stall())
				stalledAt := time.Now()
				r.anyFailed(30*time.Second, string(pull.ClassStalled))
				took := time.Since(stalledAt)
				r.w.tcp.Clear()
				return "stalled detected " + secs(took) + " after the bytes stopped"
			}},
		{group: "registry", fault: "token server down", src: fromTok, inject: "the token server's port closed", expect: "failures retried with backoff; converges when it is back", fast: true,
			run: func(r *rig) string {
				p, ds := r.next(fromTok, testbed.SeedOptions{})
				must(r.t, r.w.tokens.Close())
				up := false
				r.t.Cleanup(func() {
					if !up {
						_ = r.w.tokens.Restart()
					}
				})
				r.flip(p, ds)
				took := r.failing(30*time.Second, string(pull.ClassNetwork), string(pull.ClassServer), string(pull.ClassAuth))
				d, _ := r.doc()
				r.waitFor("retries while the token server is down", 15*time.Second, func(d state.StateDoc) bool {
					return len(d.Images) > 0 && d.Images[0].Attempts >= 2
				})
				must(r.t, r.w.tokens.Restart())
				up = true
				return fmt.Sprintf("every image %s after %s; retried", d.Images[0].LastErrorClass, secs(took))
			}},
		{group: "registry", fault: "primary refuses (401) with a fallback configured", own: true, inject: "MOLECULE_IMAGE_FALLBACK_REGISTRY = a second htpasswd registry with the same images and its own credentials; HTTP proxy answers 401 to every request to the primary, then forwards again",
			expect: "a warm host keeps its images (refreshes refused, the fallback not asked); a new host warms every image from the fallback under the primary's names (source fallback, status exit 0); the primary serving again takes the names back (source primary); each host is sent its own credentials only", fast: true,
			run: primaryRefuses},
		// ECR
		{group: "ECR", fault: "API answering 500", inject: "fake ECR API: 500 ServerException", expect: "auth failure naming the cause, retried with backoff", fast: true,
			run: ecrRow(500, "ServerException")},
		{group: "ECR", fault: "API throttling", inject: "fake ECR API: 400 ThrottlingException", expect: "as above", fast: true,
			run: ecrRow(400, "ThrottlingException")},
		{group: "ECR", fault: "token expired", src: fromECR, own: true, inject: "4 s tokens; the API fails (500) until the cached one expired", expect: "the expired token is not sent; auth 'expired at', retried; renewed once the API answers", fast: true,
			run: func(r *rig) string {
				api, err := testbed.NewFakeECR(r.w.ecrRegistryHost(), r.w.ecrPass, 4*time.Second)
				must(r.t, err)
				r.t.Cleanup(func() { api.Close() })
				r.env = append(r.env, "AWS_ENDPOINT_URL_ECR="+api.URL)
				r.warmUp(fromECR)
				p, ds := r.next(fromECR, testbed.SeedOptions{})
				api.Fail(500, "ServerException")
				time.Sleep(4500 * time.Millisecond)
				r.flip(p, ds)
				took := r.failing(30*time.Second, string(pull.ClassAuth))
				d, _ := r.doc()
				if !strings.Contains(d.Images[0].LastError, "expired at") {
					r.t.Errorf("error %q does not say the token expired", d.Images[0].LastError)
				}
				api.Fail(0, "")
				return fmt.Sprintf("auth after %s: %q; renewed on retry", secs(took), shorten(d.Images[0].LastError))
			}},
		// Docker
		{group: "Docker", fault: "daemon stopped mid-pull, restarted", inject: "dockerd killed during a throttled pull, started again", expect: "docker_up false, pings with backoff; pulls resume when it is back", fast: true,
			run: func(r *rig) string {
				r.midPull()
				must(r.t, r.w.bed.StopDockerd())
				stopped := time.Now()
				r.t.Cleanup(func() { _ = r.w.bed.StartDockerd(context.Background()) })
				r.waitFor("docker_up false", 30*time.Second, func(d state.StateDoc) bool { return !d.Agent.DockerUp })
				seen := time.Since(stopped)
				must(r.t, r.w.bed.StartDockerd(context.Background()))
				r.w.tcp.Clear()
				return "docker_up false " + secs(seen) + " after the kill"
			}},
		{group: "Docker", fault: "daemon absent at agent start", own: true, inject: "dockerd stopped before the agent starts", expect: "the agent starts, serves status (docker_up false), converges when Docker comes", fast: true,
			run: func(r *rig) string {
				r.warmUp(fromMain)
				r.proc.stop(r.t, syscall.SIGTERM)
				must(r.t, r.w.bed.StopDockerd())
				r.t.Cleanup(func() { _ = r.w.bed.StartDockerd(context.Background()) })
				p, ds := r.next(fromMain, testbed.SeedOptions{})
				r.flip(p, ds)
				restart(r)
				r.waitFor("docker_up false", 10*time.Second, func(d state.StateDoc) bool { return !d.Agent.DockerUp })
				time.Sleep(time.Second)
				must(r.t, r.w.bed.StartDockerd(context.Background()))
				return "status served with docker_up false; alive after 1 s"
			}},
		{group: "Docker", fault: "data-root full", own: true, inject: "dockerd on a 64 MiB tmpfs; three 40 MiB images", expect: "disk class (the guard, or the daemon's ENOSPC), not retried in a loop; converges after space is freed and SIGHUP", fast: true,
			run: func(r *rig) string {
				small, err := testbed.Start(context.Background(), testbed.Options{Logf: r.t.Logf, DataRootSize: "64m"})
				must(r.t, err)
				r.t.Cleanup(func() { small.Stop() })
				r.dockerHost = small.DockerHost
				r.envExtra = config.KeyDiskMargin + "=1\n" // of 1 GiB by default: more than this disk
				r.warmUp(fromMain)
				p, ds := r.next(fromMain, testbed.SeedOptions{LayerSize: 40 << 20})
				r.flip(p, ds)
				took, _ := r.anyFailed(60*time.Second, string(pull.ClassDisk))
				d, _ := r.doc()
				msg := ""
				for _, i := range d.Images {
					if i.LastErrorClass == string(pull.ClassDisk) {
						msg = i.LastError
					}
				}
				engine, err := engine.NewDockerEngine(config.DockerEndpoint{Host: small.DockerHost})
				must(r.t, err)
				root, err := engine.RootDir(context.Background())
				engine.Close()
				must(r.t, err)
				if out, err := exec.Command("mount", "-o", "remount,size=512m", root).CombinedOutput(); err != nil {
					r.t.Fatalf("growing %s: %v %s", root, err, out)
				}
				must(r.t, r.proc.Cmd.Process.Signal(syscall.SIGHUP))
				return fmt.Sprintf("disk after %s: %q", secs(took), shorten(msg))
			}},
		// Signals
		{group: "signals", fault: "SIGTERM during a pull", inject: "SIGTERM while a throttled pull runs", expect: "exit 0 promptly; the next start converges", fast: true,
			run: func(r *rig) string {
				r.midPull()
				pid := r.proc.Cmd.Process.Pid
				took := r.proc.stop(r.t, syscall.SIGTERM)
				if r.proc.Err() != nil {
					r.t.Errorf("exit after SIGTERM: %v", r.proc.Err())
				}
				stateFileFrom(r, pid)
				r.w.tcp.Clear()
				restart(r)
				return "exit 0 in " + took.Round(time.Millisecond).String()
			}},
		{group: "signals", fault: "SIGTERM during a state write", inject: "SIGTERM at a random moment of 20 ms prefix flips (a state write each)", expect: "exit 0; state file parses", fast: true,
			run: func(r *rig) string {
				at := randIn(5, 30)
				var took time.Duration
				pid := r.proc.Cmd.Process.Pid
				rapidFlips(r, 40, func(i int) bool {
					if i == at {
						took = r.proc.stop(r.t, syscall.SIGTERM)
						return false
					}
					return true
				})
				if r.proc.Err() != nil {
					r.t.Errorf("exit after SIGTERM: %v", r.proc.Err())
				}
				stateFileFrom(r, pid)
				restart(r)
				return fmt.Sprintf("exit 0 in %s after flip %d; state parsed", took.Round(time.Millisecond), at)
			}},
		{group: "signals", fault: "SIGHUP during a pull", inject: "3 SIGHUPs while a throttled pull runs", expect: "the file is re-read, the pull goes on (same configuration)", fast: true,
			run: func(r *rig) string {
				r.midPull()
				for range 3 {
					must(r.t, r.proc.Cmd.Process.Signal(syscall.SIGHUP))
					time.Sleep(100 * time.Millisecond)
				}
				r.w.tcp.Clear()
				r.waitFor("warm", 60*time.Second, r.converged)
				d, _ := r.doc()
				for _, i := range d.Images {
					if i.LastErrorClass != "" {
						r.t.Errorf("%s failed after SIGHUP: %s %s", i.Image, i.LastErrorClass, i.LastError)
					}
				}
				starts := 0
				for _, l := range strings.Split(r.proc.Output.String(), "\n") {
					if strings.Contains(l, `msg="pull started"`) && strings.Contains(l, r.want) {
						starts++
					}
				}
				if starts != len(runtimes) {
					r.t.Errorf("%d pulls started for %d images: SIGHUP restarted pulls", starts, len(runtimes))
				}
				return fmt.Sprintf("re-read 3 times; %d pulls for %d images, none failed or restarted", starts, len(runtimes))
			}},
		{group: "signals", fault: "SIGHUP during state writes", inject: "SIGHUP at every step of 20 ms prefix flips", expect: "alive; ends on the last prefix written", fast: true,
			run: func(r *rig) string {
				rapidFlips(r, 30, func(int) bool {
					must(r.t, r.proc.Cmd.Process.Signal(syscall.SIGHUP))
					return true
				})
				return "alive after 30 SIGHUPs among 30 flips"
			}},
		{group: "signals", fault: "SIGKILL during a pull", inject: "SIGKILL while a throttled pull runs; restart", expect: "state file parses; stale socket replaced; lock free; converges", fast: true,
			run: func(r *rig) string {
				r.midPull()
				pid := r.proc.Cmd.Process.Pid
				r.proc.stop(r.t, syscall.SIGKILL)
				stateFileFrom(r, pid)
				r.w.tcp.Clear()
				restart(r)
				return "restarted; state parsed"
			}},
		{group: "signals", fault: "SIGKILL during a state write", inject: "SIGKILL at a random moment of 20 ms prefix flips; restart", expect: "state file parses (old or new), no temp file left", fast: true,
			run: func(r *rig) string {
				at := randIn(5, 30)
				pid := r.proc.Cmd.Process.Pid
				rapidFlips(r, 40, func(i int) bool {
					if i == at {
						r.proc.stop(r.t, syscall.SIGKILL)
						return false
					}
					return true
				})
				stateFileFrom(r, pid)
				restart(r)
				return fmt.Sprintf("killed after flip %d; state parsed; restarted", at)
			}},
		{group: "signals", fault: "two agents on one state directory", inject: "a second agent with the same --state-dir", expect: "the second exits non-zero naming the first's pid; the first is untouched", fast: true,
			run: func(r *rig) string {
				second := r.spawn(r.stateDir, filepath.Join(r.dir, "second.sock"))
				select {
				case <-second.Done():
				case <-time.After(10 * time.Second):
					r.t.Fatal("the second agent did not exit")
				}
				msg := strings.TrimSpace(second.Output.String())
				want := fmt.Sprintf("another pull-agent (pid %d)", r.proc.Cmd.Process.Pid)
				if second.Err() == nil || !strings.Contains(msg, want) {
					r.t.Errorf("second agent: %v, %q; want an error with %q", second.Err(), msg, want)
				}
				p, ds := r.next(fromMain, testbed.SeedOptions{})
				r.flip(p, ds)
				return fmt.Sprintf("second: %v, %q", second.Err(), shorten(msg))
			}},
		// Env file
		{group: "env file", fault: "garbage bytes", inject: "4 KiB from crypto/rand", expect: "refused with file:line; last good kept", fast: true,
			run: envRow(func(r *rig) {
				b := make([]byte, 4096)
				_, _ = rand.Read(b)
				b[0] = 0xff // never valid UTF-8
				writeAtomic(r.t, r.envFile, string(b), 0o600)
			}, "env", nil)},
		{group: "env file", fault: "a token on a line without '='", inject: "GHCR_TOKEN ghp_… (a blank instead of '=')", expect: "refused naming the line and the key, never the token; last good kept", fast: true,
			run: envRow(func(r *rig) {
				r.writeEnv(strings.Replace(r.w.envFile(r.want), config.KeyGHCRToken+"=", config.KeyGHCRToken+" ", 1))
			}, "the line setting GHCR_TOKEN has no '='", nil)},
		{group: "env file", fault: "a NUL byte", inject: "a good file with a NUL in a value", expect: "refused; last good kept", fast: true,
			run: envRow(func(r *rig) { r.writeEnv(strings.Replace(r.w.envFile(r.want), "codex", "co\x00dex", 1)) }, "NUL", nil)},
		{group: "env file", fault: "10 MB", inject: "10 MB of comment lines", expect: "refused by size without reading it all; last good kept", fast: true,
			run: envRow(func(r *rig) { r.writeEnv(strings.Repeat("# "+strings.Repeat("x", 97)+"\n", 100_000)) }, "larger than", nil)},
		{group: "env file", fault: "a 1 MB line", inject: "MOLECULE_IMAGE_REGISTRY= a 1 000 000-byte value", expect: "refused without echoing the value; last good kept", fast: true,
			run: envRow(func(r *rig) { r.writeEnv(config.KeyRegistry + "=" + strings.Repeat("a", 1_000_000) + "\n") }, config.KeyRegistry, nil)},
		{group: "env file", fault: "permission denied", noDAC: true, inject: "new content with mode 0000 (agent without CAP_DAC_OVERRIDE)", expect: "refused; last good kept; a chmod is noticed", fast: true,
			run: envRow(func(r *rig) { writeAtomic(r.t, r.envFile, r.w.envFile(r.want), 0) }, "permission denied",
				func(r *rig) { must(r.t, os.Chmod(r.envFile, 0o600)) })},
		{group: "env file", fault: "deleted", inject: "rm", expect: "last good kept; a new file is read", fast: true,
			run: envRow(func(r *rig) { must(r.t, os.Remove(r.envFile)) }, "is gone", nil)},
		{group: "env file", fault: "directory deleted and recreated", inject: "rm -r of its directory, then mkdir and a new file", expect: "last good kept; the watch follows the new directory", fast: true,
			run: envRow(func(r *rig) { must(r.t, os.RemoveAll(filepath.Dir(r.envFile))) }, "is gone",
				func(r *rig) { must(r.t, os.MkdirAll(filepath.Dir(r.envFile), 0o755)) })},
		{group: "env file", fault: "replaced by a directory", inject: "rm, mkdir at its path", expect: "refused; last good kept", fast: true,
			run: envRow(func(r *rig) { must(r.t, os.Remove(r.envFile)); must(r.t, os.Mkdir(r.envFile, 0o755)) }, "is a directory",
				func(r *rig) { must(r.t, os.Remove(r.envFile)) })},
		{group: "env file", fault: "a symlink loop", inject: "env → env.loop → env", expect: "refused; last good kept", fast: true,
			run: envRow(func(r *rig) {
				must(r.t, os.Remove(r.envFile))
				must(r.t, os.Symlink(r.envFile+".loop", r.envFile))
				must(r.t, os.Symlink(r.envFile, r.envFile+".loop"))
			}, "too many levels of symbolic links", func(r *rig) {
				must(r.t, os.Remove(r.envFile))
				must(r.t, os.Remove(r.envFile+".loop"))
			})},
		// config.json
		{group: "config.json", fault: "malformed JSON", inject: `config.json = {"auths": {`, expect: "auth failure naming config.json; no hot loop; the fix converges (config.json is watched)", fast: true,
			run: configRow(`{"auths": {`, "config.json", false)},
		{group: "config.json", fault: "a credHelper that hangs", inject: "credHelpers → a helper that never answers (--helper-timeout 1s)", expect: "killed at the timeout; retried with backoff", fast: true,
			run: configRow(`{"credHelpers": {"HOST": "pa-hang"}}`, "did not answer within 1s", true)},
		{group: "config.json", fault: "a credHelper that exits non-zero", inject: "credHelpers → a helper exiting 1", expect: "the helper ignored, as the docker CLI ignores it: with no auths entry, an auth failure naming the helper; no hot loop", fast: true,
			run: configRow(`{"credHelpers": {"HOST": "pa-fail"}}`, "docker-credential-pa-fail", false)},
		{group: "config.json", fault: "a credHelper that prints garbage", inject: "credHelpers → a helper printing non-JSON (with a secret in it)", expect: "auth failure; the helper's output is never repeated", fast: true,
			run: configRow(`{"credHelpers": {"HOST": "pa-garbage"}}`, "not credentials JSON", false)},
		{group: "config.json", fault: "a credHelper named with a path", inject: `credHelpers → "../pa-good"`, expect: "refused, nothing run", fast: true,
			run: configRow(`{"credHelpers": {"HOST": "../pa-good"}}`, "refused", false)},
		{group: "config.json", fault: "a credHelper that prints credentials, then exits 1", inject: "credHelpers → a helper printing the registry's credentials JSON, exit 1", expect: "auth failure naming the helper and its exit status; its output never repeated", fast: true,
			run: configRow(`{"credHelpers": {"HOST": "pa-leak"}}`, "docker-credential-pa-leak failed (exit status 1)", false)},
		{group: "config.json", fault: "a credHelper killed after printing credentials", inject: "credHelpers → a helper printing the credentials JSON, then SIGKILL", expect: "auth failure naming the helper and the signal; its output never repeated", fast: true,
			run: configRow(`{"credHelpers": {"HOST": "pa-killed"}}`, "docker-credential-pa-killed failed (signal: killed)", false)},
		{group: "config.json", fault: "a credHelper that dumps its environment", own: true, inject: "the agent's environment holds the env file's keys (as EnvironmentFile= puts them); credHelpers → a helper writing its environment to a file", expect: "pulled with the helper's credentials; the helper saw PATH, HOME, DOCKER_CONFIG, AWS_* and proxies only: no GHCR_*, no env-file key", fast: true,
			run: func(r *rig) string {
				r.env = append(r.env, config.KeyGHCRUser+"=molecule-bot", config.KeyGHCRToken+"="+r.w.ghcrToken, config.KeyRegistry+"=ghcr.io/molecule-ai", config.KeyRuntimes+"=codex")
				r.warmUp(fromMain)
				r.helperDump = filepath.Join(r.dir, "helper-env")
				must(r.t, testbed.ConfigureCredentialHelpers(r.w.helpers, testbed.HelperConfig{User: r.w.user, Secret: r.w.pass, EnvDump: r.helperDump}))
				r.t.Cleanup(func() {
					_ = testbed.ConfigureCredentialHelpers(r.w.helpers, testbed.HelperConfig{User: r.w.user, Secret: r.w.pass})
				})
				r.writeDockerConfig(fmt.Sprintf(`{"credHelpers": {%q: "pa-envdump"}}`, r.w.tcp.Addr))
				p, ds := r.next(fromMain, testbed.SeedOptions{})
				r.flip(p, ds)
				took := r.waitFor("the new prefix warm through the helper", 60*time.Second, r.converged)
				dump, err := os.ReadFile(r.helperDump)
				must(r.t, err)
				var keys []string
				for _, line := range strings.Split(strings.TrimSpace(string(dump)), "\n") {
					k, _, _ := strings.Cut(line, "=")
					keys = append(keys, k)
				}
				return fmt.Sprintf("warm through the helper in %s; it saw %s", secs(took), strings.Join(keys, " "))
			}},
		// State file
		{group: "state file", fault: "truncated", inject: "state.json cut in half while the agent is stopped", expect: "status exits 3 with one line; the agent starts and rewrites it", fast: true,
			run: corruptState(func(b []byte) []byte { return b[:len(b)/2] }, "state.json")},
		{group: "state file", fault: "not JSON", inject: "state.json = binary garbage", expect: "as above", fast: true,
			run: corruptState(func([]byte) []byte { return []byte("\x00\x01garbage\xff") }, "state.json")},
		{group: "state file", fault: "a future schema version", inject: "schema_version 99", expect: "status refuses it naming the version; the agent rewrites it", fast: true,
			run: corruptState(func(b []byte) []byte {
				return regexp.MustCompile(`"schema_version": \d+`).ReplaceAll(b, []byte(`"schema_version": 99`))
			}, "99")},
		{group: "state file", fault: "unwritable directory", noDAC: true, inject: "chmod 0500 on the state directory (agent without CAP_DAC_OVERRIDE)", expect: "alive, live status still served; the file is written again once possible", fast: true,
			run: func(r *rig) string {
				must(r.t, os.Chmod(r.stateDir, 0o500))
				r.t.Cleanup(func() { _ = os.Chmod(r.stateDir, 0o700) })
				p, ds := r.next(fromMain, testbed.SeedOptions{})
				r.flip(p, ds)
				r.waitFor("the new prefix warm (live)", 60*time.Second, r.converged)
				if n := r.proc.count("saving state failed"); n != 1 {
					r.t.Errorf("%d log lines about the failed save, want 1", n)
				}
				must(r.t, os.Chmod(r.stateDir, 0o700))
				start := time.Now()
				for {
					doc, err := state.ReadStateFile(filepath.Join(r.stateDir, state.StateFileName))
					if err == nil && doc.Agent.Prefix == r.want && doc.Healthy() {
						break
					}
					if time.Since(start) > 15*time.Second {
						r.t.Fatalf("the state file was not written again after the directory became writable: %v %s", err, doc.Agent.Prefix)
					}
					time.Sleep(100 * time.Millisecond)
				}
				return fmt.Sprintf("converged live; one warning; state file current again %s after chmod 0700", secs(time.Since(start)))
			}},
		{group: "state file", fault: "the lock is a symbolic link", own: true, inject: "state/lock → a file elsewhere, before the agent starts", expect: "the agent refuses to start, naming the link; the link's target is untouched; starts once it is gone", fast: true,
			run: func(r *rig) string {
				must(r.t, os.MkdirAll(r.stateDir, 0o700))
				target := filepath.Join(r.dir, "precious")
				must(r.t, os.WriteFile(target, []byte("keep me\n"), 0o600))
				must(r.t, os.Symlink(target, filepath.Join(r.stateDir, "lock")))
				first, ds := r.w.seed(r.t, fromMain, testbed.SeedOptions{})
				r.flip(first, ds)
				msg := r.refusedAtStart("symbolic link")
				if data, _ := os.ReadFile(target); string(data) != "keep me\n" {
					r.t.Errorf("the lock link's target was written: %q", data)
				}
				must(r.t, os.Remove(filepath.Join(r.stateDir, "lock")))
				r.warmUp(fromMain)
				return fmt.Sprintf("refused: %q; target untouched; started once the link was gone", shorten(msg))
			}},
		// Status socket
		{group: "status socket", fault: "stale socket of a killed agent", inject: "SIGKILL, then a new agent on the same path", expect: "the new agent replaces the socket", fast: true,
			run: func(r *rig) string {
				r.proc.stop(r.t, syscall.SIGKILL)
				if _, err := os.Lstat(r.socket); err != nil {
					r.t.Fatalf("no stale socket to replace: %v", err)
				}
				p, ds := r.next(fromMain, testbed.SeedOptions{})
				r.flip(p, ds)
				restart(r)
				return "replaced; status served"
			}},
		{group: "status socket", fault: "a regular file at the socket path", own: true, inject: "a file where --status-socket points, before the agent starts", expect: "the agent refuses to start and leaves the file; starts once it is gone", fast: true,
			run: func(r *rig) string {
				must(r.t, os.WriteFile(r.socket, []byte("not a socket\n"), 0o600))
				first, ds := r.w.seed(r.t, fromMain, testbed.SeedOptions{})
				r.flip(first, ds)
				msg := r.refusedAtStart("not a socket")
				if data, _ := os.ReadFile(r.socket); string(data) != "not a socket\n" {
					r.t.Errorf("the file at the socket path was touched: %q", data)
				}
				must(r.t, os.Remove(r.socket))
				r.warmUp(fromMain)
				return fmt.Sprintf("refused: %q; the file kept; started once it was gone", shorten(msg))
			}},
		{group: "status socket", fault: "clients that connect and never read", inject: "20 clients silent after connecting, 20 that send GET /status and never read", expect: "other clients served at once; the connections are closed by timeouts", fast: true,
			run: func(r *rig) string {
				var conns []net.Conn
				r.t.Cleanup(func() {
					for _, c := range conns {
						c.Close()
					}
				})
				for i := range 40 {
					c, err := net.Dial("unix", r.socket)
					must(r.t, err)
					if i%2 == 1 {
						_, err = c.Write([]byte("GET /status HTTP/1.1\r\nHost: agent\r\n\r\n"))
						must(r.t, err)
					}
					conns = append(conns, c)
				}
				start := time.Now()
				out, err := exec.Command(r.w.bin, "status", "--status-socket", r.socket, "--state-dir", r.stateDir).CombinedOutput()
				if err != nil {
					r.t.Errorf("status while 40 clients hang: %v\n%s", err, out)
				}
				took := time.Since(start)
				p, ds := r.next(fromMain, testbed.SeedOptions{})
				r.flip(p, ds)
				return "status answered in " + took.Round(time.Millisecond).String() + " with 40 clients hanging"
			}},
	}
}

// result is one row's measured outcome.
type result struct {
	row
	measured string
	outcome
	err bool
}

func TestChaos(t *testing.T) {
	w := getWorld(t)
	var results []result
	for _, rw := range rows() {
		if !rw.fast && !*flagAll {
			continue
		}
		res := result{row: rw}
		t.Run(rw.group+"/"+rw.fault, func(t *testing.T) {
			r := newRig(t, w)
			r.noDAC = rw.noDAC
			if !rw.own {
				r.warmUp(rw.src)
			}
			res.measured = rw.run(r)
			res.outcome = r.invariants()
			res.err = t.Failed()
			t.Logf("%s: %s; converged %s after the fault was removed; goroutines %d→%d, fds %d→%d",
				rw.fault, res.measured, secs(res.converge), r.baseline.Goroutines, res.counts.Goroutines, r.baseline.FDs, res.counts.FDs)
		})
		results = append(results, res)
	}
	if *flagReport != "" {
		if err := writeReport(*flagReport, results); err != nil {
			t.Fatal(err)
		}
	}
}
