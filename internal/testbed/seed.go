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
	// LayerSize is the size of each image's own layers; default 256 KiB.
	LayerSize int64
	// Layers is how many own layers each image has over the shared base;
	// default 1.
	Layers int
	// Shape is how the image is laid out (default ShapeDocker).
	Shape Shape
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
	if o.Layers == 0 {
		o.Layers = 1
	}
	if o.Shape == "" {
		o.Shape = ShapeDocker
	}
	return o
}

// Seeded is one image pushed to a registry.
type Seeded struct {
	Runtime string
	// Ref is <addr>/<namespace>/workspace-template-<runtime>:latest.
	Ref string
	// Digest is the manifest digest the registry serves for Ref: for a
	// multi-platform shape, the index's.
	Digest digest.Digest
	// Layers are the compressed layer digests of this machine's platform's
	// image, the shared base first.
	Layers []digest.Digest
	// Shape is the image's layout.
	Shape Shape
	// Platforms holds the image of each platform (os/arch), by platform.
	Platforms map[string]PlatformImage
	// Attestations is how many attestation manifests the index holds.
	Attestations int
}

// PlatformImage is the image of one platform.
type PlatformImage struct {
	// Manifest is the digest of the platform's image manifest (Digest for
	// a single-platform shape).
	Manifest digest.Digest
	// Config is the digest of its config: the image's identity, which
	// mirrors keep even when they re-pack the manifests.
	Config digest.Digest
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

// Push builds a new image for runtime (fresh unique layers over the shared
// base, in opts.Shape) and pushes it to
// <r>/<ns>/workspace-template-<runtime>:latest, moving the tag if it
// existed.
func (b *Bed) Push(ctx context.Context, r *Registry, ns, rt string, opts SeedOptions) (Seeded, error) {
	opts = opts.withDefaults()
	ref := r.Prefix(ns) + "/workspace-template-" + rt + ":latest"
	s := Seeded{Runtime: rt, Ref: ref, Shape: opts.Shape, Platforms: map[string]PlatformImage{}}
	var imgs []v1.Image
	for _, p := range opts.Shape.platforms() {
		img, layers, err := b.platformImage(rt, p, opts.Shape, opts)
		if err != nil {
			return Seeded{}, err
		}
		md, err := img.Digest()
		if err != nil {
			return Seeded{}, err
		}
		cd, err := img.ConfigName()
		if err != nil {
			return Seeded{}, err
		}
		s.Platforms[p] = PlatformImage{Manifest: digest.Digest(md.String()), Config: digest.Digest(cd.String())}
		if p == "linux/"+runtime.GOARCH {
			s.Layers = layers
		}
		imgs = append(imgs, img)
	}
	tag, err := name.NewTag(ref, name.Insecure)
	if err != nil {
		return Seeded{}, fmt.Errorf("seed reference %q: %w", ref, err)
	}
	ropts := []remote.Option{remote.WithContext(ctx)}
	if opts.Username != "" {
		ropts = append(ropts, remote.WithAuth(&authn.Basic{Username: opts.Username, Password: opts.Password}))
	}
	var top remote.Taggable = imgs[0]
	if opts.Shape.multi() {
		children, idx, err := index(opts.Shape, imgs)
		if err != nil {
			return Seeded{}, fmt.Errorf("building the index of %s: %w", rt, err)
		}
		for _, c := range children {
			d, err := c.Digest()
			if err != nil {
				return Seeded{}, err
			}
			if err := remote.Write(tag.Context().Digest(d.String()), c, ropts...); err != nil {
				return Seeded{}, fmt.Errorf("pushing %s@%s: %w", ref, d, err)
			}
		}
		s.Attestations = len(children) - len(imgs)
		top = idx
		err = remote.Put(tag, idx, ropts...)
	} else {
		err = remote.Write(tag, imgs[0], ropts...)
	}
	if err != nil {
		return Seeded{}, fmt.Errorf("pushing %s: %w", ref, err)
	}
	d, err := partialDigest(top)
	if err != nil {
		return Seeded{}, err
	}
	s.Digest = d
	return s, nil
}

func partialDigest(t remote.Taggable) (digest.Digest, error) {
	raw, err := t.RawManifest()
	if err != nil {
		return "", err
	}
	return digest.FromBytes(raw), nil
}

// Copy copies the image or index at src to dst (references with
// registry) as go-containerregistry's crane copy does, so that both serve
// the same manifest digest: a complete mirror.
func Copy(ctx context.Context, src, dst string) error {
	s, err := name.ParseReference(src, name.Insecure)
	if err != nil {
		return err
	}
	d, err := name.ParseReference(dst, name.Insecure)
	if err != nil {
		return err
	}
	desc, err := remote.Get(s, remote.WithContext(ctx))
	if err != nil {
		return fmt.Errorf("reading %s: %w", src, err)
	}
	if desc.MediaType.IsIndex() {
		idx, err := desc.ImageIndex()
		if err == nil {
			err = remote.WriteIndex(d, idx, remote.WithContext(ctx))
		}
		if err != nil {
			return fmt.Errorf("writing %s: %w", dst, err)
		}
		return nil
	}
	img, err := desc.Image()
	if err == nil {
		err = remote.Write(d, img, remote.WithContext(ctx))
	}
	if err != nil {
		return fmt.Errorf("writing %s: %w", dst, err)
	}
	return nil
}
