// Package fleet runs many pull-agent hosts on one machine against one
// origin: each host a Docker daemon of its own (a test bed) with a
// 'pull-agent run' process, the origin a registry with token auth behind
// a shared link and a front door (testbed.OriginProxy) that logs every
// request, counts connections and answers 429 above a request rate.
// Optionally a pull-through cache (distribution in proxy mode) sits
// between the hosts and the origin. 'make fleet' (bench/fleet) measures
// the scenarios of docs/FLEET.md with it; a two-host test keeps the cache
// path working in 'make test'.
package fleet

import (
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// Options configures Start.
type Options struct {
	// Hosts is how many hosts (daemon + agent) run.
	Hosts int
	// Dir holds everything; empty: a new directory under /tmp.
	Dir string
	// AgentBin is the pull-agent binary the hosts run.
	AgentBin string
	// LinkMbit, if positive, puts the origin behind a link of that many
	// Mbit/s that all its connections share (testbed.SharedLink);
	// otherwise it listens on loopback unshaped.
	LinkMbit int
	// Limit is the origin's request rate limit.
	Limit testbed.RateLimit
	// Seed sizes the images (one set of every known runtime per
	// namespace of Namespaces).
	Seed testbed.SeedOptions
	// Namespaces are seeded at the origin, one image set each (the
	// prefixes a fleet flips between).
	Namespaces []string
	// StorageDriver is the hosts' graph driver (default vfs).
	StorageDriver string
	// Logf receives progress lines; nil discards them.
	Logf func(format string, args ...any)
}

// Fleet is a running fleet.
type Fleet struct {
	Dir   string
	Hosts []*Host
	// Origin is the origin registry; Front the door every request to it
	// goes through, the origin's request log.
	Origin *testbed.Registry
	Front  *testbed.OriginProxy
	// Sets are the seeded images by namespace, then runtime.
	Sets map[string]map[string]testbed.Seeded

	opts       Options
	link       *testbed.SharedLink
	tokens     *testbed.TokenServer
	originUser string
	originPass string
	cacheUser  string
	cachePass  string

	mu    sync.Mutex // guards cache
	cache *testbed.Registry
}

// Start starts the origin, its front door, and opts.Hosts daemons, and
// seeds the origin. No agent runs yet. On error everything is stopped.
func Start(ctx context.Context, opts Options) (_ *Fleet, err error) {
	if opts.Hosts < 1 {
		return nil, fmt.Errorf("fleet: %d hosts: need at least one", opts.Hosts)
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	if opts.Dir == "" {
		if opts.Dir, err = os.MkdirTemp("/tmp", "pa-fl-"); err != nil {
			return nil, err
		}
	}
	f := &Fleet{Dir: opts.Dir, opts: opts, Sets: map[string]map[string]testbed.Seeded{},
		originUser: "origin-bot", originPass: secret(), cacheUser: "cache-bot", cachePass: secret()}
	defer func() {
		if err != nil {
			f.Stop()
		}
	}()
	if err := f.startHosts(ctx); err != nil {
		return nil, err
	}
	if err := f.startOrigin(ctx); err != nil {
		return nil, err
	}
	opts.Logf("fleet: %d hosts, origin %s behind %s, %d image sets seeded", opts.Hosts, f.Origin.Addr, f.Front.Addr, len(f.Sets))
	return f, nil
}

// startHosts starts every host's daemon, a few at a time.
func (f *Fleet) startHosts(ctx context.Context) error {
	f.Hosts = make([]*Host, f.opts.Hosts)
	var g errgroup.Group
	g.SetLimit(4)
	for i := range f.Hosts {
		g.Go(func() error {
			dir := filepath.Join(f.Dir, fmt.Sprintf("h%d", i))
			bed, err := testbed.Start(ctx, testbed.Options{Dir: filepath.Join(dir, "bed"), StorageDriver: f.opts.StorageDriver})
			if err != nil {
				return fmt.Errorf("host %d: %w", i, err)
			}
			f.Hosts[i] = &Host{Index: i, Bed: bed, dir: dir, bin: f.opts.AgentBin}
			return nil
		})
	}
	err := g.Wait()
	// A failed start leaves nils; Stop skips them.
	return err
}

// startOrigin seeds the image sets into an open registry's storage,
// then serves that storage from the origin: a registry with token auth
// (the flow GHCR uses; distribution's proxy mode sends its upstream
// credentials to a bearer realm only, never as basic auth), in the shared
// link's namespace when there is one, behind its front door on loopback,
// which also serves the token endpoint as ghcr.io/token does.
func (f *Fleet) startOrigin(ctx context.Context) error {
	seed, err := f.Hosts[0].Bed.StartRegistry(ctx, "origin-seed", testbed.RegistryOptions{})
	if err != nil {
		return err
	}
	for _, ns := range f.opts.Namespaces {
		set, err := f.Hosts[0].Bed.Seed(ctx, seed, ns, config.KnownRuntimes(), f.opts.Seed)
		if err != nil {
			return fmt.Errorf("seeding %s for the origin: %w", ns, err)
		}
		f.Sets[ns] = set
	}
	if err := seed.Stop(); err != nil {
		return err
	}
	if f.tokens, err = testbed.NewTokenServer(map[string]string{f.originUser: f.originPass}); err != nil {
		return err
	}
	ro := testbed.RegistryOptions{Root: seed.Root}
	if f.opts.LinkMbit > 0 {
		f.link, err = testbed.NewSharedLink(fmt.Sprintf("pa-fleet-%d", os.Getpid()), f.opts.LinkMbit)
		if err != nil {
			return err
		}
		ro.Netns, ro.Addr = f.link.Namespace, f.link.NSAddr+":5000"
	} else {
		port, err := testbed.FreePort()
		if err != nil {
			return err
		}
		ro.Addr = fmt.Sprintf("127.0.0.1:%d", port)
	}
	if f.Front, err = testbed.NewOriginProxy(ro.Addr, f.opts.Limit); err != nil {
		return err
	}
	f.Front.Route("/token", strings.TrimSuffix(strings.TrimPrefix(f.tokens.URL, "http://"), "/token"))
	ro.Token = f.tokens.Auth()
	ro.Token.Realm = f.Front.URL() + "/token"
	f.Origin, err = f.Hosts[0].Bed.StartRegistry(ctx, "origin", ro)
	return err
}

// StartCache starts a new, empty pull-through cache of the origin (its
// front door) with the origin's credentials, and basic auth of its own;
// a cache started before is stopped. Hosts reach it on loopback,
// unshaped: an in-region cache.
func (f *Fleet) StartCache(ctx context.Context, name string) (*testbed.Registry, error) {
	f.mu.Lock()
	old := f.cache
	f.cache = nil
	f.mu.Unlock()
	if old != nil {
		_ = old.Stop()
	}
	hp, err := testbed.Htpasswd(map[string]string{f.cacheUser: f.cachePass})
	if err != nil {
		return nil, err
	}
	up := testbed.ProxyUpstream{RemoteURL: f.Front.URL(), Username: f.originUser, Password: f.originPass}
	c, err := f.Hosts[0].Bed.StartProxyCache(ctx, name, up, hp)
	if err != nil {
		return nil, err
	}
	f.mu.Lock()
	f.cache = c
	f.mu.Unlock()
	return c, nil
}

// dockerConfig is every host's config.json: the origin's and the cache's
// credentials, each for its own address only.
func (f *Fleet) dockerConfig() string {
	auth := func(u, p string) string { return base64.StdEncoding.EncodeToString([]byte(u + ":" + p)) }
	s := fmt.Sprintf(`{"auths": {%q: {"auth": %q}`, f.Front.Addr, auth(f.originUser, f.originPass))
	f.mu.Lock()
	if f.cache != nil {
		s += fmt.Sprintf(`, %q: {"auth": %q}`, f.cache.Addr, auth(f.cacheUser, f.cachePass))
	}
	f.mu.Unlock()
	return s + "}}\n"
}

// Stop stops every agent, daemon and registry, removes the shared link
// and the fleet's directory.
func (f *Fleet) Stop() error {
	var errs []error
	for _, h := range f.Hosts {
		if h != nil {
			h.StopAgent()
		}
	}
	if f.Front != nil {
		errs = append(errs, f.Front.Close())
	}
	if f.tokens != nil {
		errs = append(errs, f.tokens.Close())
	}
	for i := len(f.Hosts) - 1; i >= 0; i-- {
		if f.Hosts[i] != nil {
			errs = append(errs, f.Hosts[i].Bed.Stop())
		}
	}
	if f.link != nil {
		errs = append(errs, f.link.Close())
	}
	errs = append(errs, os.RemoveAll(f.Dir))
	return errors.Join(errs...)
}

func secret() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// SetBytes is what one host pulls of the set seeded under ns: each
// distinct blob (layers and configs) once, as the origin stores it.
func (f *Fleet) SetBytes(ns string) (int64, error) { return f.NewBytes("", ns) }

// NewBytes is what a host that holds the set under from (none: "") pulls
// of the set under to: the blobs of to that from lacks (a flip keeps the
// shared base layer).
func (f *Fleet) NewBytes(from, to string) (int64, error) {
	set, ok := f.Sets[to]
	if !ok {
		return 0, fmt.Errorf("no image set %q seeded", to)
	}
	seen := map[digest.Digest]bool{}
	for _, s := range f.Sets[from] {
		for _, d := range s.Layers {
			seen[d] = true
		}
	}
	var n int64
	for _, s := range set {
		ds := slices.Clone(s.Layers)
		for _, pl := range s.Platforms {
			ds = append(ds, pl.Config)
		}
		for _, d := range ds {
			if seen[d] {
				continue
			}
			seen[d] = true
			st, err := os.Stat(f.Origin.BlobPath(d))
			if err != nil {
				return 0, fmt.Errorf("blob %s at the origin: %w", d, err)
			}
			n += st.Size()
		}
	}
	return n, nil
}
