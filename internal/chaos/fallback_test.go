package chaos

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os/exec"
	"path"
	"strings"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/agent/state"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// fallbackPrefix is the fallback registry's namespace that holds what
// main's prefix holds (the two registries share their storage), or ""
// for a prefix of another registry.
func (w *world) fallbackPrefix(prefix string) string {
	if !strings.HasPrefix(prefix, w.tcp.Addr+"/") {
		return ""
	}
	return w.fbHTTP.Prefix(path.Base(prefix))
}

// fallbackLine is the env file's MOLECULE_IMAGE_FALLBACK_REGISTRY line
// for prefix, or "".
func (w *world) fallbackLine(prefix string) string {
	fb := w.fallbackPrefix(prefix)
	if fb == "" {
		return ""
	}
	return config.KeyFallback + "=" + fb + "\n"
}

// refuse401 has the HTTP proxy in front of main refuse every registry
// request as a registry refuses credentials it no longer accepts.
var refuse401 = &testbed.Fault{Match: "/v2/", Status: 401,
	Header: map[string]string{"WWW-Authenticate": `Basic realm="chaos"`},
	Body:   `{"errors":[{"code":"UNAUTHORIZED","message":"chaos: authentication required"}]}`}

// hostCreds are the credentials one registry host may be sent.
type hostCreds struct {
	name       string
	proxy      *testbed.HTTPProxy
	user, pass string
	from       int // requests before this one were another row's
}

// hosts are the registry hosts the rig can see requests of, with the
// count of requests seen so far.
func (w *world) hosts() []hostCreds {
	return []hostCreds{
		{name: "the primary (" + w.tcp.Addr + ")", proxy: w.http, user: w.user, pass: w.pass, from: len(w.http.Requests())},
		{name: "the fallback (" + w.fbHTTP.Addr + ")", proxy: w.fbHTTP, user: w.fbUser, pass: w.fbPass, from: len(w.fbHTTP.Requests())},
	}
}

// credentialsPerHost fails the rig if a registry host was sent anything
// but its own credentials (Basic user:password) since the rig started:
// another host's password, a bearer token, or any secret at all.
func (r *rig) credentialsPerHost() {
	r.t.Helper()
	for _, h := range r.hosts {
		reqs := h.proxy.Requests()
		bad := map[string]int{}
		for _, q := range reqs[min(h.from, len(reqs)):] {
			if q.Authorization == "" {
				continue
			}
			scheme, cred, _ := strings.Cut(q.Authorization, " ")
			dec, err := base64.StdEncoding.DecodeString(cred)
			if strings.EqualFold(scheme, "basic") && err == nil && string(dec) == h.user+":"+h.pass {
				continue
			}
			what := "an Authorization header (" + scheme + ") that is not its own credentials"
			for _, s := range r.w.secrets() {
				if s != h.pass && (strings.Contains(q.Authorization, s) || strings.Contains(string(dec), s)) {
					what = fmt.Sprintf("the secret %.12s… of another host", s)
				}
			}
			bad[what]++
		}
		for what, n := range bad {
			r.t.Errorf("%s was sent %s in %d requests", h.name, what, n)
		}
	}
}

// sources waits until every image of the rig's prefix is warm with
// source want, and returns how long that took.
func (r *rig) sources(what, want string, timeout time.Duration) time.Duration {
	r.t.Helper()
	return r.waitFor(what, timeout, func(d state.StateDoc) bool {
		if !r.converged(d) {
			return false
		}
		for _, i := range d.Images {
			if i.Source != want {
				return false
			}
		}
		return true
	})
}

// requestsUnder counts the requests h saw for repositories of namespace
// ns since it was started (for the fallback: since the world was).
func requestsUnder(p *testbed.HTTPProxy, ns string) int {
	n := 0
	for _, q := range p.Requests() {
		if strings.HasPrefix(q.Path, "/v2/"+ns+"/") {
			n++
		}
	}
	return n
}

// primaryRefuses is the matrix row for MOLECULE_IMAGE_FALLBACK_REGISTRY:
// with the primary refusing (401), a warm host keeps what it holds and
// asks the fallback nothing, a new host warms every image from the
// fallback under the primary's names, and once the primary serves again
// its content takes the names back.
func primaryRefuses(r *rig) string {
	t, w := r.t, r.w
	r.fallback = true
	r.args = append(r.args, "--refresh-interval", "2s")
	r.warmUp(fromMain)
	if d, err := r.doc(); err != nil || len(d.Agent.Fallbacks) != 1 || d.Agent.Fallbacks[0] != w.fallbackPrefix(r.want) {
		t.Fatalf("the agent does not list the fallback %s: %v %v", w.fallbackPrefix(r.want), d.Agent.Fallbacks, err)
	}
	w.http.SetFault(refuse401)
	t.Cleanup(func() { w.http.SetFault(nil) })
	refused := warmHostKeeps(r)
	took := newHostFromFallback(r)

	// The primary serves again: its content takes the names back.
	w.http.SetFault(nil)
	back := r.sources("every image from the primary again", state.SourcePrimary, 30*time.Second)
	d, err := r.doc()
	must(t, err)
	for _, i := range d.Images {
		if i.FallbackImage != "" || i.LastError != "" {
			t.Errorf("%s after the primary came back: fallback image %q, last error %q", i.Image, i.FallbackImage, i.LastError)
		}
	}
	return fmt.Sprintf("warm host: two refreshes refused (auth) in %s, images kept, the fallback not asked; new host: all %d warm from the fallback under the primary's names in %s, status exit 0; primary back: source primary after %s",
		secs(refused), len(runtimes), secs(took), secs(back))
}

// warmHostKeeps waits, with the primary refusing, for two refreshes of
// the rig's warm images to be refused, and checks that the host kept
// every image from the primary and asked the fallback nothing.
func warmHostKeeps(r *rig) time.Duration {
	t, w := r.t, r.w
	const refusal = `msg="pull failed; next try at the next refresh`
	before := r.proc.count(refusal)
	refused := r.waitFor("two refreshes of the warm images refused", 30*time.Second, func(d state.StateDoc) bool {
		if d.Agent.Prefix != r.want || len(d.Images) != len(runtimes) {
			return false
		}
		for _, i := range d.Images {
			if i.FromFallback() {
				return true // switched: reported below
			}
		}
		if r.proc.count(refusal)-before < 2*len(runtimes) {
			return false
		}
		for _, i := range d.Images {
			if i.State != state.Warm || i.LastErrorClass != string(pull.ClassAuth) {
				return false
			}
		}
		return true
	})
	d, err := r.doc()
	must(t, err)
	for _, i := range d.Images {
		if i.Source != state.SourcePrimary || i.FallbackImage != "" || i.ImageID != r.warmIDs[i.Image] || i.LocalDigest != r.digests[i.Runtime] {
			t.Errorf("%s switched while its host held it: source %q, fallback image %q, id %s (was %s)", i.Image, i.Source, i.FallbackImage, i.ImageID, r.warmIDs[i.Image])
		}
	}
	if n := requestsUnder(w.fbHTTP, path.Base(r.want)); n > 0 {
		t.Errorf("the fallback was asked %d times for images the host held from the primary", n)
	}
	return refused
}

// newHostFromFallback moves the rig, with the primary refusing, to a
// fresh prefix the host holds nothing of, and checks that every image
// comes from the fallback under the primary's name, with its own
// credentials, as status --json says (exit 0).
func newHostFromFallback(r *rig) time.Duration {
	t, w := r.t, r.w
	next, ds := r.next(fromMain, testbed.SeedOptions{})
	fb := w.fallbackPrefix(next)
	asked := len(w.http.Requests())
	r.flip(next, ds)
	took := r.sources("every image warm from the fallback", state.SourceFallback(fb), 60*time.Second)
	if len(w.http.Requests()) == asked {
		t.Error("the primary was not asked for the new prefix")
	}
	statusFromFallback(r, fb)
	own := "Basic " + encodeAuth(w.fbUser+":"+w.fbPass)
	signed := 0
	for _, q := range w.fbHTTP.Requests() {
		if strings.HasPrefix(q.Path, "/v2/"+path.Base(next)+"/") && q.Authorization == own {
			signed++
		}
	}
	if signed == 0 {
		t.Error("the fallback was never sent its own credentials: the per-host check sees nothing")
	}
	if n := r.proc.count("key=" + config.KeyFallback); n > 0 {
		t.Errorf("the agent logged %d warnings naming %s as a key it does not read", n, config.KeyFallback)
	}
	if n := r.proc.count("image served from a fallback"); n < len(runtimes) {
		t.Errorf("%d log lines say an image was served from a fallback, want at least %d", n, len(runtimes))
	}
	return took
}

// statusFromFallback checks that status --json exits 0 and shows every
// image of the rig's prefix under the primary's name from fallback fb.
func statusFromFallback(r *rig, fb string) {
	t := r.t
	out, err := exec.Command(r.w.bin, "status", "--json", "--status-socket", r.socket, "--state-dir", r.stateDir).Output()
	r.outputs = append(r.outputs, string(out))
	if err != nil {
		t.Errorf("status --json with every image from the fallback: %v, want exit 0", err)
	}
	var doc state.StateDoc
	must(t, json.Unmarshal(out, &doc))
	if doc.SchemaVersion != state.SchemaVersion {
		t.Errorf("status --json: schema_version %d, want %d", doc.SchemaVersion, state.SchemaVersion)
	}
	for _, i := range doc.Images {
		if want := fb + strings.TrimPrefix(i.Image, r.want); i.Source != state.SourceFallback(fb) || i.FallbackImage != want {
			t.Errorf("status --json: %s from %q (%s), want source %q and fallback_image %s", i.Image, i.Source, i.FallbackImage, state.SourceFallback(fb), want)
		}
		if !strings.HasPrefix(i.Image, r.want+"/") {
			t.Errorf("status --json: image %s is not under the primary's name", i.Image)
		}
	}
}

// primaryRefuses is the soak's fault of that name: a new release under a
// fresh namespace of main, which the host does not hold, while the
// primary refuses every request (401). The agent is moved to it and must
// serve every image from the fallback; the removal lets the primary
// serve again, and the soak's end checks that it took the names back.
func (s *soak) primaryRefuses() func() {
	w, r := s.w, s.r
	p := s.prefixes[0] // main's
	prefix, ds := w.seed(s.t, fromMain, testbed.SeedOptions{})
	p.ns, p.prefix, p.digests = path.Base(prefix), prefix, ds
	s.fresh[prefix] = true
	w.http.SetFault(refuse401)
	r.flip(p.prefix, p.digests)
	if d, err := r.doc(); err == nil && cooling(d, w.tcp.Addr) {
		// A rate limit's cooldown holds the primary's pulls back, and
		// with them the fallback: nothing to wait for.
		s.st.faults["primary refuses, in a cooldown"]++
	} else {
		r.sources("every image of a fresh prefix from the fallback while the primary refuses", state.SourceFallback(w.fallbackPrefix(prefix)), 20*time.Second)
	}
	return func() { w.http.SetFault(nil) }
}

// cooling reports whether the agent holds pulls from host back for a
// cooldown.
func cooling(d state.StateDoc, host string) bool {
	for _, h := range d.Hosts {
		if h.Host == host && h.CooldownUntil != nil && h.CooldownUntil.After(time.Now()) {
			return true
		}
	}
	return false
}

// fallbackAfterPrimary lists the images the agent logged as served from
// a fallback although it had logged the primary serving them before: a
// host that holds an image from the primary must never switch it.
// Images of prefixes outside fresh must never come from a fallback.
func (p *agentProc) fallbackAfterPrimary(fresh map[string]bool) []string {
	fromPrimary := map[string]bool{}
	var bad []string
	for _, l := range strings.Split(p.Output.String(), "\n") {
		img := ""
		for _, f := range strings.Fields(l) {
			if v, ok := strings.CutPrefix(f, "image="); ok {
				img = v
			}
		}
		switch {
		case img == "":
		case strings.Contains(l, `msg="image pulled"`), strings.Contains(l, `msg="the primary serves the image again`):
			fromPrimary[img] = true
		case strings.Contains(l, `msg="image served from a fallback`):
			prefix := img[:max(strings.LastIndex(img, "/"), 0)]
			if fromPrimary[img] || !fresh[prefix] {
				bad = append(bad, img)
			}
		}
	}
	return bad
}

// fallbackChecks are the soak's end checks of the fallback: every image
// of the final prefix from the primary again, no held image switched.
func (s *soak) fallbackChecks() {
	r := s.r
	r.waitFor("every image of the final prefix from the primary", 30*time.Second, func(d state.StateDoc) bool {
		for _, i := range d.Images {
			if i.FromFallback() {
				return false
			}
		}
		return r.converged(d)
	})
	for _, img := range r.proc.fallbackAfterPrimary(s.fresh) {
		s.t.Errorf("%s was served from the fallback although the host held it from the primary", img)
	}
	s.st.fallbackServed = r.proc.count(`msg="image served from a fallback`)
	s.st.primaryBack = r.proc.count(`msg="the primary serves the image again`)
}
