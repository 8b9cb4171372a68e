package agent_test

import (
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/agent"
	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// TestAgentBuildxImagesWarmRefreshCheaplyAndFlip: nine images as buildx
// pushes them (an OCI index of two platforms and two attestations each)
// are pulled and verified by the agent; a refresh of the warm set costs
// each image at most two registry requests and no blob; a flip to another
// set warms that set.
func TestAgentBuildxImagesWarmRefreshCheaplyAndFlip(t *testing.T) {
	f := newFixture(t)
	regB := secondRegistry(t, f.bed)
	rts := config.KnownRuntimes()
	buildx := testbed.SeedOptions{Shape: testbed.ShapeBuildx}
	seedA, err := f.bed.Seed(ctxT(t), f.reg, f.ns, rts, buildx)
	must(t, err)
	seedB, err := f.bed.Seed(ctxT(t), regB, f.ns, rts, buildx)
	must(t, err)
	px, err := testbed.NewHTTPProxy(f.reg.Addr)
	must(t, err)
	t.Cleanup(func() { px.Close() })
	prefix := px.Prefix(f.ns)
	path := plainFile(t, t.TempDir(), prefix)
	start := time.Now()
	r := startAgent(t, f.bed.DockerHost, path, nil, func(o *agent.Options) { o.RefreshInterval = 2 * time.Second })
	r.waitFor(t, "nine buildx images warm", 90*time.Second, warmOn(prefix, seedA))
	t.Logf("nine buildx images warm in %s", time.Since(start).Round(time.Millisecond))
	for _, rt := range []string{rts[0], rts[8]} {
		ref := config.ImageRef(prefix, rt)
		if p, err := testbed.ImagePlatform(ctxT(t), f.bed.DockerHost, ref); err != nil || p != "linux/"+runtime.GOARCH {
			t.Errorf("%s: the daemon holds the %q image (%v), want this host's", ref, p, err)
		}
	}

	idle := func(s agent.Snapshot) bool {
		for _, i := range s.Images {
			if i.InFlight {
				return false
			}
		}
		return s.Warm() == len(rts)
	}
	first := r.a.Snapshot().NextRefresh
	r.waitFor(t, "one refresh done", 20*time.Second, func(s agent.Snapshot) bool { return s.NextRefresh.After(first) && idle(s) })
	before := len(px.Requests())
	second := r.a.Snapshot().NextRefresh
	r.waitFor(t, "another refresh done", 20*time.Second, func(s agent.Snapshot) bool { return s.NextRefresh.After(second) && idle(s) })
	reqs := px.Requests()[before:]
	perImage := map[string]int{}
	for _, q := range reqs {
		if strings.Contains(q.Path, "/blobs/") || q.Method != http.MethodHead && q.Path != "/v2/" {
			t.Errorf("a refresh of warm images sent %s %s", q.Method, q.Path)
		}
		if rt, ok := strings.CutPrefix(q.Path, "/v2/"+f.ns+"/workspace-template-"); ok {
			rt, _, _ = strings.Cut(rt, "/")
			perImage[rt]++
		}
	}
	for _, rt := range rts {
		if perImage[rt] == 0 {
			t.Errorf("the refresh did not ask about %s: the count proves nothing", rt)
		}
	}
	if n := len(reqs); n > 2*len(rts) {
		t.Errorf("one refresh of %d warm images sent %d requests, more than 2 per image: %v", len(rts), n, perImage)
	}
	t.Logf("one refresh of %d warm buildx images: %d requests (%.2f per image), %v", len(rts), len(reqs), float64(len(reqs))/float64(len(rts)), perImage)

	writeEnv(t, path, regB.Prefix(f.ns))
	flipped := time.Now()
	r.waitFor(t, "the new set warm after the flip", 90*time.Second, warmOn(regB.Prefix(f.ns), seedB))
	t.Logf("flip warmed nine buildx images in %s", time.Since(flipped).Round(time.Millisecond))
}
