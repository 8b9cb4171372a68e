package fleet

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/state"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// buildAgent builds pull-agent into a temporary directory.
func buildAgent(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "pull-agent")
	cmd := exec.Command("go", "build", "-o", bin, "github.com/molecule-ai/pull-agent/cmd/pull-agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building pull-agent: %v\n%s", err, out)
	}
	return bin
}

// TestCacheTwoHosts is scenario 3 of docs/FLEET.md at two hosts: both
// cold at once through a pull-through cache (distribution 2.8 in proxy
// mode, basic auth of its own) in front of an origin with token auth.
// Both agents end warm and verified; the origin served the set's blobs
// (the cache really fetched them, with the origin's credentials) and at
// most twice per host (distribution stores a missed blob with a fetch of
// its own besides the one it streams, and coalesces nothing). Then both
// hosts start cold again: the cache serves every blob, the origin none.
// Last, 'pull-agent check --compare' finds every image the same at the
// origin and through the cache.
func TestCacheTwoHosts(t *testing.T) {
	testbed.RequireRoot(t, "a fleet of Docker daemons")
	testbed.Require(t)
	ctx := context.Background()
	f, err := Start(ctx, Options{Hosts: 2, AgentBin: buildAgent(t), Namespaces: []string{"fleet-a"},
		Seed: testbed.SeedOptions{BaseSize: 2 << 20, LayerSize: 512 << 10}, Logf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Stop() })
	cache, err := f.StartCache(ctx, "cache")
	if err != nil {
		t.Fatal(err)
	}
	one, err := f.SetBytes("fleet-a")
	if err != nil {
		t.Fatal(err)
	}
	phase := Phase{Scenario: "cache", Cold: true, Prefix: cache.Prefix("fleet-a"), Set: "fleet-a", Timeout: 90 * time.Second}
	for i, want := range []string{"cold cache", "warm cache"} {
		res, err := f.Run(ctx, phase)
		if err != nil {
			t.Fatalf("%s: %v", want, err)
		}
		o := res.Origin
		t.Logf("%s: one host's set %d bytes; origin %+v; warm first %.1f s, all %.1f s", want, one, o, res.FirstWarmS, res.AllWarmS)
		if res.Verified != 2 {
			t.Errorf("%s: %d hosts verified, want 2", want, res.Verified)
		}
		if i == 0 && (o.BlobBytes < one || o.BlobBytes > 2*2*one) {
			t.Errorf("%s: the origin served %d blob bytes, want between one host's set (%d) and twice it per host (%d)", want, o.BlobBytes, one, 4*one)
		}
		if i == 1 && o.BlobGets != 0 {
			t.Errorf("%s: the origin served %d blobs (%d bytes), want none: the cache holds the set", want, o.BlobGets, o.BlobBytes)
		}
		if o.Limited != 0 {
			t.Errorf("%s: %d requests answered 429 without a limit", want, o.Limited)
		}
	}
	// How an operator proves the cache serves the origin's images.
	out, err := f.Hosts[0].Check(ctx, f.Front.Prefix("fleet-a"), cache.Prefix("fleet-a"))
	if err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Compared map[string]struct{ Parity string } `json:"compared"`
	}
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("check --json: %v\n%s", err, out)
	}
	for rt := range f.Sets["fleet-a"] {
		if got := rep.Compared[rt].Parity; got != "same" {
			t.Errorf("check --compare: %s is %q, want same", rt, got)
		}
	}
}

func TestWarmAt(t *testing.T) {
	set := map[string]testbed.Seeded{"codex": {Digest: "sha256:aa"}, "hermes": {Digest: "sha256:bb"}}
	t1, t2 := time.Unix(100, 0), time.Unix(200, 0)
	img := func(rt, prefix, st, d string, at *time.Time) state.ImageDoc {
		return state.ImageDoc{Runtime: rt, Image: config.ImageRef(prefix, rt), State: st, LocalDigest: d, LastSuccess: at}
	}
	doc := func(prefix string, ims ...state.ImageDoc) state.StateDoc {
		return state.StateDoc{Agent: state.AgentDoc{Prefix: prefix}, Images: ims}
	}
	tests := []struct {
		name string
		doc  state.StateDoc
		ok   bool
	}{
		{"all warm", doc("r/b", img("codex", "r/b", "warm", "sha256:aa", &t1), img("hermes", "r/b", "warm", "sha256:bb", &t2)), true},
		{"other prefix", doc("r/a", img("codex", "r/a", "warm", "sha256:aa", &t1), img("hermes", "r/a", "warm", "sha256:bb", &t2)), false},
		{"one pulling", doc("r/b", img("codex", "r/b", "warm", "sha256:aa", &t1), img("hermes", "r/b", "pulling", "", nil)), false},
		{"old digest", doc("r/b", img("codex", "r/b", "warm", "sha256:aa", &t1), img("hermes", "r/b", "warm", "sha256:cc", &t2)), false},
		{"image missing", doc("r/b", img("codex", "r/b", "warm", "sha256:aa", &t1)), false},
		{"old images under the new prefix", doc("r/b", img("codex", "r/a", "warm", "sha256:aa", &t1), img("hermes", "r/a", "warm", "sha256:bb", &t2)), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			at, ok := warmAt(tt.doc, "r/b", set)
			if ok != tt.ok || ok && !at.Equal(t2) {
				t.Errorf("warmAt = %v, %v; want %v (at %v)", at, ok, tt.ok, t2)
			}
		})
	}
}
