package main

import (
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/molecule-ai/pull-agent/internal/testbed"
)

const mb = 1_000_000

// ec2Shape is one realistic workload: nine buildx images (OCI index of
// linux/amd64 and linux/arm64 plus their attestations), each amd64 image a
// shared base under layers of its own, gzip-compressed random bytes.
type ec2Shape struct {
	Name string
	// Base are the sizes of the shared base's layers, bottom first.
	Base []int64
	// Own are the sizes of each image's own layers, bottom first, before
	// the image's scale (0.85 to 1.15 across the nine, 1 on average).
	Own []int64
}

// ec2Shapes are the two workloads of the ec2 profile: A as images over a
// Python-like base, B sharing little.
var ec2Shapes = map[string]ec2Shape{
	"A": {Name: "A", Base: []int64{120 * mb, 80 * mb, 50 * mb, 30 * mb, 20 * mb}, Own: []int64{12 * mb, 55 * mb, 18 * mb, 8 * mb, 5 * mb, 2 * mb}},
	"B": {Name: "B", Base: []int64{10 * mb}, Own: []int64{8 * mb, 80 * mb, 25 * mb, 15 * mb, 10 * mb, 5 * mb, 3 * mb, 2 * mb, 1 * mb, 1 * mb}},
}

// describe says what the shape is, for the report.
func (s ec2Shape) describe() string {
	var base, own int64
	for _, n := range s.Base {
		base += n
	}
	for _, n := range s.Own {
		own += n
	}
	return fmt.Sprintf("shape %s: a shared base of %d MB in %s + %d MB in %d layers of its own per image on average (the largest %d MB; image n has 0.85 + 0.3·(n-1)/8 times these sizes), %d layers per amd64 image",
		s.Name, base/mb, layers(len(s.Base)), own/mb, len(s.Own), maxOf(s.Own)/mb, len(s.Base)+len(s.Own))
}

func layers(n int) string {
	if n == 1 {
		return "one layer"
	}
	return fmt.Sprintf("%d layers", n)
}

func maxOf(v []int64) int64 {
	var m int64
	for _, n := range v {
		m = max(m, n)
	}
	return m
}

// scale is image i's factor on its own layers.
func scale(i int) float64 { return 0.85 + 0.3*float64(i)/8 }

// Blob is one blob of the registry.
type Blob struct {
	Digest string `json:"digest"`
	Size   int64  `json:"size"`
}

// ImageBlobs are what a linux/amd64 pull of one index fetches.
type ImageBlobs struct {
	Index    Blob   `json:"index"`
	Manifest Blob   `json:"manifest"`
	Config   Blob   `json:"config"`
	Layers   []Blob `json:"layers"`
}

// all is every blob and manifest of the image.
func (ib ImageBlobs) all() []Blob {
	return append([]Blob{ib.Index, ib.Manifest, ib.Config}, ib.Layers...)
}

// Layout is a pushed workload: the amd64 blobs of each runtime's image.
type Layout struct {
	Shape  string                `json:"shape"`
	Images map[string]ImageBlobs `json:"images"`
}

// shapeDir is where a shape's registry storage and layout are cached.
func shapeDir(cache, shape string) string { return filepath.Join(cache, "ec2-v1-shape-"+shape) }

// ensureShape returns the layout of shape's workload, pushing it first
// (through a loopback registry of bed on the cached storage) unless a
// complete earlier push is cached.
func ensureShape(ctx context.Context, bed *testbed.Bed, cache string, s ec2Shape, rts []string) (Layout, error) {
	dir := shapeDir(cache, s.Name)
	layoutPath := filepath.Join(dir, "layout.json")
	var lay Layout
	if data, err := os.ReadFile(layoutPath); err == nil && json.Unmarshal(data, &lay) == nil && len(lay.Images) == len(rts) {
		return lay, nil
	}
	fmt.Fprintf(os.Stderr, "harness: generating and pushing workload %s into %s (once)\n", s.Name, dir)
	os.RemoveAll(dir)
	if err := os.MkdirAll(filepath.Join(dir, "layers"), 0o755); err != nil {
		return Layout{}, err
	}
	reg, err := bed.StartRegistry(ctx, "push-"+s.Name, testbed.RegistryOptions{Root: filepath.Join(dir, "registry")})
	if err != nil {
		return Layout{}, err
	}
	defer reg.Stop()
	lay = Layout{Shape: s.Name, Images: map[string]ImageBlobs{}}
	base, err := genLayers(filepath.Join(dir, "layers"), "base", s.Base)
	if err != nil {
		return Layout{}, err
	}
	for i, rt := range rts {
		ib, err := pushShapeImage(ctx, reg.Prefix("bench"), dir, rt, base, s, i)
		if err != nil {
			return Layout{}, err
		}
		lay.Images[rt] = ib
	}
	os.RemoveAll(filepath.Join(dir, "layers"))
	data, _ := json.MarshalIndent(lay, "", "  ")
	return lay, os.WriteFile(layoutPath, data, 0o644)
}

// genLayers writes one gzip layer of random bytes per size under dir,
// named <prefix>-<n>, two at a time.
func genLayers(dir, prefix string, sizes []int64) ([]v1.Layer, error) {
	out := make([]v1.Layer, len(sizes))
	var g errgroup.Group
	g.SetLimit(2)
	for i, n := range sizes {
		g.Go(func() error {
			name := fmt.Sprintf("%s-%02d", prefix, i)
			l, err := cachedNamedLayer(filepath.Join(dir, name+".tar.gz"), name+".bin", n)
			out[i] = l
			return err
		})
	}
	return out, g.Wait()
}

// pushShapeImage builds runtime rt's amd64 image (base + its own layers,
// scaled by image i's factor) and a small arm64 one, pushes them as a
// buildx index and returns the amd64 pull's blobs.
func pushShapeImage(ctx context.Context, prefix, dir, rt string, base []v1.Layer, s ec2Shape, i int) (ImageBlobs, error) {
	sizes := make([]int64, len(s.Own))
	for j, n := range s.Own {
		sizes[j] = int64(float64(n) * scale(i))
	}
	own, err := genLayers(filepath.Join(dir, "layers"), rt, sizes)
	if err != nil {
		return ImageBlobs{}, err
	}
	amd, err := ociImage(rt, "amd64", append(append([]v1.Layer{}, base...), own...))
	if err != nil {
		return ImageBlobs{}, err
	}
	small := make([]byte, 64<<10)
	_, _ = rand.Read(small)
	arm, err := ociImage(rt, "arm64", []v1.Layer{static.NewLayer(small, types.OCIUncompressedLayer)})
	if err != nil {
		return ImageBlobs{}, err
	}
	raw, err := testbed.PushBuildx(ctx, prefix+"/workspace-template-"+rt+":latest", []v1.Image{amd, arm})
	if err != nil {
		return ImageBlobs{}, err
	}
	ib := ImageBlobs{Index: Blob{Digest: sha256Of(raw), Size: int64(len(raw))}}
	return ib, describeImage(amd, &ib)
}

// ociImage is an OCI image of linux/arch with layers.
func ociImage(rt, arch string, layers []v1.Layer) (v1.Image, error) {
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	cf, err := empty.Image.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", arch
	cf.Config.Labels = map[string]string{"ai.molecule.runtime": rt}
	cf.Config.Cmd = []string{"/bin/true"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, err
	}
	return mutate.AppendLayers(img, layers...)
}

// describeImage fills ib's manifest, config and layers from img.
func describeImage(img v1.Image, ib *ImageBlobs) error {
	raw, err := img.RawManifest()
	if err != nil {
		return err
	}
	ib.Manifest = Blob{Digest: sha256Of(raw), Size: int64(len(raw))}
	m, err := img.Manifest()
	if err != nil {
		return err
	}
	ib.Config = Blob{Digest: m.Config.Digest.String(), Size: m.Config.Size}
	for _, l := range m.Layers {
		ib.Layers = append(ib.Layers, Blob{Digest: l.Digest.String(), Size: l.Size})
	}
	return nil
}

func sha256Of(b []byte) string { return digest.FromBytes(b).String() }

// cachedNamedLayer is cachedLayer with the one file named member.
func cachedNamedLayer(path, member string, size int64) (v1.Layer, error) {
	if err := writeRandomLayer(path, member, size); err != nil {
		return nil, err
	}
	return tarball.LayerFromFile(path, tarball.WithMediaType(types.OCILayer))
}
