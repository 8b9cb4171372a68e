package main

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/agent/state"
	"github.com/molecule-ai/pull-agent/internal/safetext"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// The agent with MOLECULE_IMAGE_FALLBACK_REGISTRY against the real
// daemon. The primary is a registry with token auth (as GHCR) whose token
// realm can refuse everyone (testbed.TokenGate); the fallback is a plain
// registry behind a proxy that records every request the daemon makes
// of it. Both serve the main registry's storage under namespaces of
// their own, so that the content of the primary and of the fallback
// differ and a change of source shows in the daemon's image IDs.

// Retries of the primary every second at most: "within one retry
// period" is then a few seconds.
var fastRetry = []string{"--retry-initial", "200ms", "--retry-max", "1s"}

const retryMax = time.Second

// fallbackBed is a primary prefix behind a token gate and a fallback
// prefix behind a recording proxy.
type fallbackBed struct {
	b        *testbed.Bed
	main     *testbed.Registry // seeds both: the primary registry shares its storage
	gate     *testbed.TokenGate
	proxy    *testbed.HTTPProxy   // in front of the fallback
	engine   *engine.DockerEngine // the bed's daemon, for what it holds
	pNS, fNS string               // the primary's and the fallback's namespaces
	primary  string               // prefix
	fallback string               // prefix
	// dockerConfig holds the primary's credentials; the fallback needs
	// none.
	dockerConfig string
}

func newFallbackBed(t *testing.T, name string) *fallbackBed {
	t.Helper()
	b := bed.Get(t)
	ctx := context.Background()
	f := &fallbackBed{b: b, main: b.Registry("main"), pNS: name + "-primary", fNS: name + "-fallback"}
	ts, err := testbed.NewTokenServer(map[string]string{"puller": "pull-s3cret"})
	must(t, err)
	t.Cleanup(func() { ts.Close() })
	f.gate, err = testbed.NewTokenGate(ts)
	must(t, err)
	t.Cleanup(func() { f.gate.Close() })
	reg, err := b.StartRegistry(ctx, name, testbed.RegistryOptions{Token: f.gate.Auth(), Root: f.main.Root})
	must(t, err)
	t.Cleanup(func() { reg.Stop() })
	f.proxy, err = testbed.NewHTTPProxy(f.main.Addr)
	must(t, err)
	t.Cleanup(func() { f.proxy.Close() })
	f.engine, err = engine.NewDockerEngine(config.DockerEndpoint{Host: b.DockerHost})
	must(t, err)
	t.Cleanup(func() { f.engine.Close() })
	f.primary, f.fallback = reg.Prefix(f.pNS), f.proxy.Prefix(f.fNS)
	cfg, err := json.Marshal(map[string]any{"auths": map[string]any{reg.Addr: map[string]string{
		"auth": base64.StdEncoding.EncodeToString([]byte("puller:pull-s3cret"))}}})
	must(t, err)
	f.dockerConfig = t.TempDir()
	must(t, os.WriteFile(filepath.Join(f.dockerConfig, "config.json"), cfg, 0o600))
	return f
}

// seed pushes new images for rts under the primary's (primary true) or
// the fallback's namespace.
func (f *fallbackBed) seed(t *testing.T, primary bool, rts ...string) map[string]testbed.Seeded {
	t.Helper()
	ns := f.fNS
	if primary {
		ns = f.pNS
	}
	s, err := f.b.Seed(context.Background(), f.main, ns, rts, testbed.SeedOptions{})
	must(t, err)
	return s
}

// start runs the agent on env file content (the prefixes are in it) with
// fast retries and args.
func (f *fallbackBed) start(t *testing.T, env string, args ...string) *agentProcess {
	t.Helper()
	envFile := writeFile(t, env)
	return startProcess(t, []string{"DOCKER_HOST=" + f.b.DockerHost, "DOCKER_CONFIG=" + f.dockerConfig},
		append(append([]string{"--env-file", envFile}, fastRetry...), args...)...)
}

// envFor is an env file for rts with the fallback, plus extra lines.
func (f *fallbackBed) envFor(rts []string, extra ...string) string {
	return strings.Join(append([]string{
		config.KeyRegistry + "=" + f.primary,
		config.KeyRuntimes + "=" + strings.Join(rts, ","),
		config.KeyFallback + "=" + f.fallback,
	}, extra...), "\n") + "\n"
}

// held is what the daemon holds under ref; ok false when nothing.
func (f *fallbackBed) held(t *testing.T, ref string) (engine.ImageInfo, bool) {
	t.Helper()
	info, err := f.engine.ImageInspect(context.Background(), ref)
	if errors.Is(err, engine.ErrImageNotFound) {
		return info, false
	}
	must(t, err)
	return info, true
}

// checkNamed fails t unless the daemon's image under the primary name of
// rt is the one it pulled as s from prefix from: the same image ID as
// from's name, and s's manifest digest under from's repository.
func (f *fallbackBed) checkNamed(t *testing.T, rt string, s testbed.Seeded, from string) engine.ImageInfo {
	t.Helper()
	name, src := config.ImageRef(f.primary, rt), config.ImageRef(from, rt)
	info, ok := f.held(t, name)
	pulled, _ := f.held(t, src)
	repo := strings.TrimSuffix(src, ":latest")
	if !ok || info.ID != pulled.ID || !pull.HasRepoDigest(info.RepoDigests, repo, s.Digest) {
		t.Errorf("%s: the daemon holds %s as %q (repo digests %v), want %s's image %q, pulled as %s@%s", rt, name, info.ID, info.RepoDigests, src, pulled.ID, repo, s.Digest)
	}
	return info
}

// fallbackRequests is what the daemon asked the fallback, as
// "METHOD path".
func (f *fallbackBed) fallbackRequests() []string {
	var out []string
	for _, r := range f.proxy.Requests() {
		out = append(out, r.Method+" "+r.Path)
	}
	return out
}

// blobGets counts the blob downloads from the fallback.
func (f *fallbackBed) blobGets() int {
	n := 0
	for _, r := range f.proxy.Requests() {
		if r.Method == "GET" && strings.Contains(r.Path, "/blobs/") {
			n++
		}
	}
	return n
}

// waitDocWithin is waitDoc with a timeout of its own.
func waitDocWithin(t *testing.T, p *agentProcess, timeout time.Duration, what string, cond func(state.StateDoc) bool) state.StateDoc {
	t.Helper()
	var doc state.StateDoc
	var err error
	if !testbed.Poll(timeout, func() bool {
		doc, err = statusJSON(t, p)
		return err == nil && cond(doc)
	}) {
		t.Fatalf("timed out after %s waiting for %s; last status: %+v %v", timeout, what, doc, err)
	}
	return doc
}

// allTried reports whether every image of d was tried and is not being
// pulled now: warm or failed.
func allTried(d state.StateDoc) bool {
	for _, i := range d.Images {
		if i.LastAttempt == nil || i.Progress != nil || i.State != state.Warm && i.State != state.Failed {
			return false
		}
	}
	return true
}

// allFrom reports whether every image of d is warm from source.
func allFrom(d state.StateDoc, n int, source string) bool {
	if len(d.Images) != n {
		return false
	}
	for _, i := range d.Images {
		if i.State != state.Warm || i.Source != source {
			return false
		}
	}
	return true
}

// statusRow is status's table row of rt: its state, then its source.
func statusRow(rt, st, source string) *regexp.Regexp {
	return regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(rt) + `\s+` + regexp.QuoteMeta(st) + `\s+` + regexp.QuoteMeta(source) + `\s`)
}

// checkStatusSources runs 'pull-agent status' and fails t unless it
// exits with code and the row of each runtime shows it warm from source.
func checkStatusSources(t *testing.T, p *agentProcess, code int, sources map[string]string) string {
	t.Helper()
	got, out, errOut := p.status(t)
	if got != code {
		t.Errorf("status: exit %d, want %d\n%s%s", got, code, out, errOut)
	}
	for rt, source := range sources {
		if !statusRow(rt, "warm", source).MatchString(out) {
			t.Errorf("status: the row of %s does not show it warm from %q:\n%s", rt, source, out)
		}
	}
	return out
}

// A new host whose primary refuses every image (401 at its token
// service) warms all nine from the fallback, each under the primary's
// name; once the primary serves again, within about one retry period the
// primary's content takes every name back.
func TestRunFallbackServesANewHostUntilThePrimaryServes(t *testing.T) {
	f := newFallbackBed(t, "fbnew")
	rts := config.KnownRuntimes()
	primary, fallback := f.seed(t, true, rts...), f.seed(t, false, rts...)
	f.gate.Refuse(true)
	start := time.Now()
	p := f.start(t, f.envFor(rts))

	fromFallback := state.SourceFallback(f.fallback)
	doc := waitDoc(t, p, "every image tried", func(d state.StateDoc) bool { return len(d.Images) == len(rts) && allTried(d) })
	if !allFrom(doc, len(rts), fromFallback) {
		t.Fatalf("want every image warm from the fallback: %+v", doc.Images)
	}
	t.Logf("%d images warm from the fallback %s after the start", len(rts), time.Since(start).Round(time.Millisecond))
	if f.gate.Refused() == 0 {
		t.Fatal("the primary's token service refused nothing: the test proves nothing")
	}
	fbIDs := map[string]string{}
	sources := map[string]string{}
	for _, i := range doc.Images {
		if want := config.ImageRef(f.fallback, i.Runtime); i.FallbackImage != want || i.LastErrorClass != string(pull.ClassAuth) {
			t.Errorf("%s: fallback_image %q, primary error [%s] %q; want %q and the primary's 401", i.Runtime, i.FallbackImage, i.LastErrorClass, i.LastError, want)
		}
		fbIDs[i.Runtime] = f.checkNamed(t, i.Runtime, fallback[i.Runtime], f.fallback).ID
		sources[i.Runtime] = fromFallback
	}
	checkStatusSources(t, p, exitOK, sources)
	if out := p.Output.String(); strings.Contains(out, "does not read") {
		t.Errorf("the agent says it does not read a key of its env file:\n%s", out)
	}

	f.gate.Refuse(false)
	back := time.Now()
	// One retry period (the backoff's ceiling), and the nine small pulls.
	doc = waitDocWithin(t, p, retryMax+10*time.Second, "every image warm from the primary", func(d state.StateDoc) bool { return allFrom(d, len(rts), state.SourcePrimary) })
	t.Logf("the primary's content took every name back %s after it served again", time.Since(back).Round(time.Millisecond))
	for _, i := range doc.Images {
		if i.FallbackImage != "" || i.LastError != "" {
			t.Errorf("%s: fallback_image %q, error %q once the primary served it", i.Runtime, i.FallbackImage, i.LastError)
		}
		if info := f.checkNamed(t, i.Runtime, primary[i.Runtime], f.primary); info.ID == fbIDs[i.Runtime] {
			t.Errorf("%s: the primary name still holds the fallback's image %s", i.Runtime, info.ID)
		}
		sources[i.Runtime] = state.SourcePrimary
	}
	if out := checkStatusSources(t, p, exitOK, sources); strings.Contains(out, "primary: [") {
		t.Errorf("status still shows a primary error:\n%s", out)
	}
}

// A primary that lacks only hermes: hermes alone comes from the
// fallback, which is asked for nothing else.
func TestRunFallbackOnlyForWhatThePrimaryLacks(t *testing.T) {
	f := newFallbackBed(t, "fbmiss")
	rts := []string{"autogen", "codex", "hermes"}
	primary, fallback := f.seed(t, true, "autogen", "codex"), f.seed(t, false, rts...)
	p := f.start(t, f.envFor(rts))

	fromFallback := state.SourceFallback(f.fallback)
	doc := waitDoc(t, p, "every image tried", func(d state.StateDoc) bool { return len(d.Images) == 3 && allTried(d) })
	sources := map[string]string{"autogen": state.SourcePrimary, "codex": state.SourcePrimary, "hermes": fromFallback}
	for _, i := range doc.Images {
		if i.State != state.Warm || i.Source != sources[i.Runtime] {
			t.Errorf("%s: %s from %q (%s), want warm from %q", i.Runtime, i.State, i.Source, i.LastError, sources[i.Runtime])
		}
	}
	if h := doc.Images[2]; h.LastErrorClass != string(pull.ClassNotFound) || h.FallbackImage != config.ImageRef(f.fallback, "hermes") {
		t.Errorf("hermes: primary error [%s] %q, fallback_image %q; want not-found and %s", h.LastErrorClass, h.LastError, h.FallbackImage, config.ImageRef(f.fallback, "hermes"))
	}
	f.checkNamed(t, "hermes", fallback["hermes"], f.fallback)
	for _, rt := range []string{"autogen", "codex"} {
		f.checkNamed(t, rt, primary[rt], f.primary)
		if _, ok := f.held(t, config.ImageRef(f.fallback, rt)); ok {
			t.Errorf("%s was pulled from the fallback too", rt)
		}
	}
	for _, r := range f.fallbackRequests() {
		if strings.Contains(r, "/workspace-template-") && !strings.Contains(r, "/workspace-template-hermes/") {
			t.Errorf("the fallback was asked %s; want hermes only", r)
		}
	}
	checkStatusSources(t, p, exitOK, sources)
}

// A pinned runtime takes only the pinned image from the fallback: a
// fallback that mirrors the pinned manifest serves it; one that has other
// content is refused, with an error that names the pin and the primary's
// refusal, while the other runtimes warm from the fallback.
func TestRunFallbackServesAPinOnlyItsImage(t *testing.T) {
	f := newFallbackBed(t, "fbpin")
	rts := []string{"autogen", "codex", "hermes"}
	primary := f.seed(t, true, rts...)
	fallback := f.seed(t, false, "autogen", "hermes") // hermes: other content than the pin
	// codex: the fallback mirrors the primary's manifest, digest kept.
	must(t, testbed.Copy(context.Background(), primary["codex"].Ref, config.ImageRef(f.main.Prefix(f.fNS), "codex")))
	pinH, pinC := primary["hermes"].Digest, primary["codex"].Digest
	f.gate.Refuse(true)
	p := f.start(t, f.envFor(rts, config.KeyPins+"=codex="+pinC.String()+",hermes="+pinH.String()))

	fromFallback := state.SourceFallback(f.fallback)
	doc := waitDoc(t, p, "every image tried", func(d state.StateDoc) bool { return len(d.Images) == 3 && allTried(d) })
	for _, i := range doc.Images[:2] {
		if i.State != state.Warm || i.Source != fromFallback {
			t.Errorf("%s: %s from %q (%s), want warm from the fallback", i.Runtime, i.State, i.Source, i.LastError)
		}
	}
	if c := doc.Images[1]; c.FallbackImage != f.fallback+"/workspace-template-codex@"+pinC.String() || c.LocalDigest != pinC.String() {
		t.Errorf("codex: fallback_image %q, digest %s; want the pinned manifest %s from the fallback", c.FallbackImage, c.LocalDigest, pinC)
	}
	if info, ok := f.held(t, f.fallback+"/workspace-template-codex@"+pinC.String()); !ok || !pull.HasRepoDigest(info.RepoDigests, f.fallback+"/workspace-template-codex", pinC) {
		t.Errorf("codex: the daemon does not hold the pinned image from the fallback (%v)", info.RepoDigests)
	}
	f.checkNamed(t, "autogen", fallback["autogen"], f.fallback)

	h := doc.Images[2]
	if h.State != state.Failed {
		t.Errorf("hermes: %s from %q, want failed: the fallback's hermes is not the pinned image", h.State, h.Source)
	}
	// The primary's 401 first (its class, auth, decides when the next
	// try is), then why the fallback was refused.
	if h.LastErrorClass != string(pull.ClassAuth) {
		t.Errorf("hermes: class %q, want the primary's auth", h.LastErrorClass)
	}
	// The whole of the refusal fits, advice included.
	for _, want := range []string{"; no fallback served it: " + f.fallback + ": refused for pinned runtime hermes", safetext.ShortDigest(pinH.String()), "or change the pin"} {
		if !strings.Contains(h.LastError, want) {
			t.Errorf("hermes: error %q lacks %q", h.LastError, want)
		}
	}
	if h.Source != "" || h.FallbackImage != "" {
		t.Errorf("hermes: from %q (%q), want from nowhere", h.Source, h.FallbackImage)
	}
	if _, ok := f.held(t, config.ImageRef(f.fallback, "hermes")); ok {
		t.Error("the fallback's other hermes image was pulled")
	}
	for _, ref := range []string{config.ImageRef(f.primary, "hermes"), f.primary + "/workspace-template-hermes@" + pinH.String()} {
		if _, ok := f.held(t, ref); ok {
			t.Errorf("the daemon holds %s", ref)
		}
	}
	out := checkStatusSources(t, p, statusDegraded, map[string]string{"autogen": fromFallback, "codex": fromFallback})
	if !regexp.MustCompile(`(?m)^hermes\s+failed\s+-\s.*\[auth\] `).MatchString(out) {
		t.Errorf("status does not show hermes failed with the primary's refusal of the pin:\n%s", out)
	}
}

// A host warm from the primary keeps its images when the primary starts
// refusing: nothing is pulled from the fallback, nothing changes source.
func TestRunFallbackNeverSwitchesAWarmHost(t *testing.T) {
	f := newFallbackBed(t, "fbwarm")
	rts := []string{"codex", "hermes"}
	primary := f.seed(t, true, rts...)
	f.seed(t, false, rts...)
	p := f.start(t, f.envFor(rts), "--refresh-interval", "2s")
	waitDoc(t, p, "every image warm from the primary", func(d state.StateDoc) bool { return allFrom(d, len(rts), state.SourcePrimary) })
	ids := map[string]string{}
	for _, rt := range rts {
		ids[rt] = f.checkNamed(t, rt, primary[rt], f.primary).ID
	}

	f.gate.Refuse(true)
	refused := time.Now()
	doc := waitDoc(t, p, "refreshes refused by the primary", func(d state.StateDoc) bool {
		for _, i := range d.Images {
			if i.LastErrorClass != string(pull.ClassAuth) || i.LastAttempt == nil || !i.LastAttempt.After(refused) {
				return false
			}
		}
		return len(d.Images) == len(rts)
	})
	// One more refresh started each: whatever the first refusal led to
	// (a fallback pull included) has finished.
	first := map[string]time.Time{}
	for _, i := range doc.Images {
		first[i.Runtime] = *i.LastAttempt
	}
	doc = waitDoc(t, p, "a second refresh", func(d state.StateDoc) bool {
		for _, i := range d.Images {
			if i.LastAttempt == nil || !i.LastAttempt.After(first[i.Runtime]) {
				return false
			}
		}
		return len(d.Images) == len(rts)
	})
	for _, i := range doc.Images {
		if i.State != state.Warm || i.Source != state.SourcePrimary || i.FallbackImage != "" {
			t.Errorf("%s: %s from %q (%q), want still warm from the primary", i.Runtime, i.State, i.Source, i.FallbackImage)
		}
		if info := f.checkNamed(t, i.Runtime, primary[i.Runtime], f.primary); info.ID != ids[i.Runtime] {
			t.Errorf("%s: the primary name moved from %s to %s", i.Runtime, ids[i.Runtime], info.ID)
		}
		if _, ok := f.held(t, config.ImageRef(f.fallback, i.Runtime)); ok {
			t.Errorf("%s was pulled from the fallback", i.Runtime)
		}
	}
	if r := f.fallbackRequests(); len(r) > 0 {
		t.Errorf("the fallback was asked %q, want nothing", r)
	}
	checkStatusSources(t, p, exitOK, map[string]string{"codex": state.SourcePrimary, "hermes": state.SourcePrimary})
}

// An agent restarted while the fallback serves its images keeps serving
// them from the fallback, without downloading them again, and still
// tries the primary.
func TestRunFallbackSurvivesARestart(t *testing.T) {
	f := newFallbackBed(t, "fbrestart")
	rts := []string{"codex", "hermes"}
	f.seed(t, true, rts...)
	fallback := f.seed(t, false, rts...)
	f.gate.Refuse(true)
	env := f.envFor(rts)
	first := f.start(t, env)
	fromFallback := state.SourceFallback(f.fallback)
	waitDoc(t, first, "every image warm from the fallback", func(d state.StateDoc) bool { return allFrom(d, len(rts), fromFallback) })
	if _, err := first.terminate(t); err != nil {
		t.Fatalf("the first agent: %v", err)
	}
	blobs, refused := f.blobGets(), f.gate.Refused()
	if blobs == 0 {
		t.Fatal("no blob was downloaded from the fallback: the test proves nothing")
	}

	restarted := time.Now()
	second := f.start(t, env, "--state-dir", filepath.Join(first.dir, "state"))
	doc := waitDoc(t, second, "a try of each image after the restart, finished", func(d state.StateDoc) bool {
		for _, i := range d.Images {
			if i.LastAttempt == nil || !i.LastAttempt.After(restarted) || i.Progress != nil {
				return false
			}
		}
		return len(d.Images) == len(rts)
	})
	if f.gate.Refused() == refused {
		t.Error("the restarted agent did not try the primary")
	}
	for _, i := range doc.Images {
		if i.State != state.Warm || i.Source != fromFallback || i.LastSuccess == nil || !i.LastSuccess.After(restarted) {
			t.Errorf("%s: %s from %q after the restart (%s), want served from the fallback again", i.Runtime, i.State, i.Source, i.LastError)
		}
		f.checkNamed(t, i.Runtime, fallback[i.Runtime], f.fallback)
	}
	if n := f.blobGets(); n != blobs {
		t.Errorf("%d blobs downloaded from the fallback after the restart, want none", n-blobs)
	}
	checkStatusSources(t, second, exitOK, map[string]string{"codex": fromFallback, "hermes": fromFallback})
}
