package testbed

import (
	"context"
	"fmt"
	"math/rand"
	"runtime"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"
)

// SeedOptions sizes seeded images.
type SeedOptions struct {
	// BaseSize is the size of the base layer every image of the bed shares;
	// default 1 MiB.
	BaseSize int64
	// LayerSize is the size of each image's own layer; default 256 KiB.
	LayerSize int64
	// Username and Password push to a registry with basic auth.
	Username, Password string
}

func (o SeedOptions) withDefaults() SeedOptions {
	if o.BaseSize == 0 {
		o.BaseSize = 1 << 20
	}
	if o.LayerSize == 0 {
		o.LayerSize = 256 << 10
	}
	return o
}

// Seeded is one image pushed to a registry.
type Seeded struct {
	Runtime string
	// Ref is <addr>/<namespace>/workspace-template-<runtime>:latest.
	Ref string
	// Digest is the manifest digest the registry serves for Ref.
	Digest digest.Digest
	// Layers are the compressed layer digests, the shared base first.
	Layers []digest.Digest
}

type seedCache struct {
	mu   sync.Mutex
	base map[int64]v1.Layer
	n    int64
}

func (c *seedCache) baseLayer(size int64) (v1.Layer, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if l, ok := c.base[size]; ok {
		return l, nil
	}
	l, err := random.Layer(size, types.DockerLayer, random.WithSource(rand.NewSource(time.Now().UnixNano())))
	if err != nil {
		return nil, err
	}
	if c.base == nil {
		c.base = map[int64]v1.Layer{}
	}
	c.base[size] = l
	return l, nil
}

func (c *seedCache) source() rand.Source {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	return rand.NewSource(time.Now().UnixNano() + c.n)
}

// Prefix returns the image prefix of namespace ns in r: <addr>/<ns>.
func (r *Registry) Prefix(ns string) string { return r.Addr + "/" + ns }

// Seed pushes one image per runtime to r under namespace ns, each made of
// the bed's shared base layer and a unique random layer, tagged :latest.
func (b *Bed) Seed(ctx context.Context, r *Registry, ns string, runtimes []string, opts SeedOptions) (map[string]Seeded, error) {
	out := make(map[string]Seeded, len(runtimes))
	var mu sync.Mutex
	var g errgroup.Group // no early cancel: every push runs to its end
	g.SetLimit(4)
	for _, rt := range runtimes {
		g.Go(func() error {
			s, err := b.Push(ctx, r, ns, rt, opts)
			if err != nil {
				return err
			}
			mu.Lock()
			out[rt] = s
			mu.Unlock()
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return out, nil
}

// Push builds a new image for runtime (a fresh unique layer over the shared
// base) and pushes it to <r>/<ns>/workspace-template-<runtime>:latest,
// moving the tag if it existed.
func (b *Bed) Push(ctx context.Context, r *Registry, ns, rt string, opts SeedOptions) (Seeded, error) {
	opts = opts.withDefaults()
	base, err := b.seed.baseLayer(opts.BaseSize)
	if err != nil {
		return Seeded{}, fmt.Errorf("building base layer: %w", err)
	}
	own, err := random.Layer(opts.LayerSize, types.DockerLayer, random.WithSource(b.seed.source()))
	if err != nil {
		return Seeded{}, fmt.Errorf("building layer for %s: %w", rt, err)
	}
	cf, err := empty.Image.ConfigFile()
	if err != nil {
		return Seeded{}, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", runtime.GOARCH
	cf.Config.Labels = map[string]string{"ai.molecule.runtime": rt}
	cf.Config.Cmd = []string{"/bin/true"}
	img, err := mutate.ConfigFile(empty.Image, cf)
	if err != nil {
		return Seeded{}, err
	}
	img, err = mutate.AppendLayers(img, base, own)
	if err != nil {
		return Seeded{}, err
	}
	ref := r.Prefix(ns) + "/workspace-template-" + rt + ":latest"
	tag, err := name.NewTag(ref, name.Insecure)
	if err != nil {
		return Seeded{}, fmt.Errorf("seed reference %q: %w", ref, err)
	}
	ropts := []remote.Option{remote.WithContext(ctx)}
	if opts.Username != "" {
		ropts = append(ropts, remote.WithAuth(&authn.Basic{Username: opts.Username, Password: opts.Password}))
	}
	if err := remote.Write(tag, img, ropts...); err != nil {
		return Seeded{}, fmt.Errorf("pushing %s: %w", ref, err)
	}
	md, err := img.Digest()
	if err != nil {
		return Seeded{}, err
	}
	s := Seeded{Runtime: rt, Ref: ref, Digest: digest.Digest(md.String())}
	for _, l := range []v1.Layer{base, own} {
		d, err := l.Digest()
		if err != nil {
			return Seeded{}, err
		}
		s.Layers = append(s.Layers, digest.Digest(d.String()))
	}
	return s, nil
}

// Copy copies the image at src to dst (references with registry), so that
// both serve the same manifest digest: a complete mirror.
func Copy(ctx context.Context, src, dst string) error {
	s, err := name.ParseReference(src, name.Insecure)
	if err != nil {
		return err
	}
	d, err := name.ParseReference(dst, name.Insecure)
	if err != nil {
		return err
	}
	img, err := remote.Image(s, remote.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("reading %s: %w", src, err)
	}
	if err := remote.Write(d, img, remote.WithContext(ctx)); err != nil {
		return fmt.Errorf("writing %s: %w", dst, err)
	}
	return nil
}
