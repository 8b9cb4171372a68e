package testbed

import (
	"encoding/json"
	"fmt"
	"runtime"
	"slices"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/opencontainers/go-digest"
)

// Shape is how a seeded image is laid out in the registry: the manifest
// types real build tools push.
type Shape string

// The shapes.
const (
	// ShapeDocker is one Docker schema 2 manifest for this machine's
	// platform (what 'docker push' uploads). The default.
	ShapeDocker Shape = "docker"
	// ShapeOCI is one OCI image manifest for this machine's platform.
	ShapeOCI Shape = "oci"
	// ShapeDockerList is a Docker manifest list of linux/amd64 and
	// linux/arm64 Docker schema 2 images.
	ShapeDockerList Shape = "docker-list"
	// ShapeBuildx is what 'docker buildx build --platform
	// linux/amd64,linux/arm64 --push' uploads by default: an OCI index of
	// two OCI images plus one attestation manifest per image (platform
	// unknown/unknown, annotated vnd.docker.reference.type:
	// attestation-manifest and vnd.docker.reference.digest).
	ShapeBuildx Shape = "buildx"
)

// Shapes are every shape, for tests that go through them all.
var Shapes = []Shape{ShapeDocker, ShapeOCI, ShapeDockerList, ShapeBuildx}

// Annotations buildx puts on an attestation manifest's index entry.
const (
	AnnotationReferenceType   = "vnd.docker.reference.type"
	AnnotationReferenceDigest = "vnd.docker.reference.digest"
	AttestationManifest       = "attestation-manifest"
)

// MultiPlatforms are the platforms of the multi-platform shapes.
var MultiPlatforms = []string{"linux/amd64", "linux/arm64"}

// multi reports whether s is an index of several platforms.
func (s Shape) multi() bool { return s == ShapeDockerList || s == ShapeBuildx }

// oci reports whether s uses OCI media types for its images.
func (s Shape) oci() bool { return s == ShapeOCI || s == ShapeBuildx }

// platforms are the platforms an image of shape s holds.
func (s Shape) platforms() []string {
	if s.multi() {
		return MultiPlatforms
	}
	return []string{"linux/" + runtime.GOARCH}
}

// platformImage builds the image of runtime rt for platform (os/arch): the
// shared base layer and opts.Layers unique layers, in shape s's media
// types.
func (b *Bed) platformImage(rt, platform string, s Shape, opts SeedOptions) (v1.Image, []digest.Digest, error) {
	base, err := b.seed.baseLayer(opts.BaseSize)
	if err != nil {
		return nil, nil, fmt.Errorf("building base layer: %w", err)
	}
	layerType, img := types.DockerLayer, empty.Image
	if s.oci() {
		layerType = types.OCILayer
		img = mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	}
	layers := []v1.Layer{base}
	for range opts.Layers {
		l, err := random.Layer(opts.LayerSize, layerType, random.WithSource(b.seed.source()))
		if err != nil {
			return nil, nil, fmt.Errorf("building a layer for %s: %w", rt, err)
		}
		layers = append(layers, l)
	}
	cf, err := empty.Image.ConfigFile()
	if err != nil {
		return nil, nil, err
	}
	cf = cf.DeepCopy()
	osName, arch, _ := strings.Cut(platform, "/")
	cf.OS, cf.Architecture = osName, arch
	cf.Config.Labels = map[string]string{"ai.molecule.runtime": rt}
	cf.Config.Cmd = []string{"/bin/true"}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, nil, err
	}
	if img, err = mutate.AppendLayers(img, layers...); err != nil {
		return nil, nil, err
	}
	var ds []digest.Digest
	for _, l := range layers {
		d, err := l.Digest()
		if err != nil {
			return nil, nil, err
		}
		ds = append(ds, digest.Digest(d.String()))
	}
	return img, ds, nil
}

// attestation builds the attestation manifest buildx pushes for an image:
// an OCI manifest with an in-toto statement as its one layer.
func attestation(of v1.Image) (v1.Image, error) {
	subject, err := of.Digest()
	if err != nil {
		return nil, err
	}
	stmt := fmt.Sprintf(`{"_type":"https://in-toto.io/Statement/v0.1","predicateType":"https://spdx.dev/Document","subject":[{"name":"seed","digest":{"sha256":%q}}],"predicate":{}}`, subject.Hex)
	img := mutate.ConfigMediaType(mutate.MediaType(empty.Image, types.OCIManifestSchema1), types.OCIConfigJSON)
	return mutate.Append(img, mutate.Addendum{
		Layer:       static.NewLayer([]byte(stmt), "application/vnd.in-toto+json"),
		Annotations: map[string]string{"in-toto.io/predicate-type": "https://spdx.dev/Document"},
	})
}

// rawIndex is an index as its raw bytes, written in the field order of
// the tools that push such indexes (buildx: containerd's image-spec types;
// docker manifest: distribution's), without the artifactType
// go-containerregistry would add to each entry.
type rawIndex struct {
	raw []byte
	mt  types.MediaType
}

func (r rawIndex) RawManifest() ([]byte, error)        { return r.raw, nil }
func (r rawIndex) MediaType() (types.MediaType, error) { return r.mt, nil }

// indexEntry is one manifest of an index, fields in buildx's order.
type indexEntry struct {
	MediaType   types.MediaType   `json:"mediaType"`
	Digest      string            `json:"digest"`
	Size        int64             `json:"size"`
	Annotations map[string]string `json:"annotations,omitempty"`
	Platform    struct {
		Architecture string `json:"architecture"`
		OS           string `json:"os"`
	} `json:"platform"`
}

// listEntry is one manifest of a Docker manifest list, fields in
// distribution's order.
type listEntry struct {
	MediaType types.MediaType `json:"mediaType"`
	Size      int64           `json:"size"`
	Digest    string          `json:"digest"`
	Platform  struct {
		Architecture string `json:"architecture"`
		OS           string `json:"os"`
	} `json:"platform"`
}

// index returns the images an index of shape s refers to (one per platform
// in s.platforms() order, then buildx's attestations) and the index.
func index(s Shape, imgs []v1.Image) ([]v1.Image, rawIndex, error) {
	var entries []indexEntry
	children := slices.Clone(imgs)
	for i, p := range s.platforms() {
		e, err := entryOf(imgs[i])
		if err != nil {
			return nil, rawIndex{}, err
		}
		e.Platform.OS, e.Platform.Architecture, _ = strings.Cut(p, "/")
		entries = append(entries, e)
	}
	if s == ShapeBuildx {
		for i := range imgs {
			att, err := attestation(imgs[i])
			if err != nil {
				return nil, rawIndex{}, err
			}
			e, err := entryOf(att)
			if err != nil {
				return nil, rawIndex{}, err
			}
			e.Platform.OS, e.Platform.Architecture = "unknown", "unknown"
			e.Annotations = map[string]string{AnnotationReferenceType: AttestationManifest, AnnotationReferenceDigest: entries[i].Digest}
			entries = append(entries, e)
			children = append(children, att)
		}
		raw, err := json.Marshal(struct {
			SchemaVersion int             `json:"schemaVersion"`
			MediaType     types.MediaType `json:"mediaType"`
			Manifests     []indexEntry    `json:"manifests"`
		}{2, types.OCIImageIndex, entries})
		return children, rawIndex{raw, types.OCIImageIndex}, err
	}
	var list []listEntry
	for _, e := range entries {
		l := listEntry{MediaType: e.MediaType, Size: e.Size, Digest: e.Digest}
		l.Platform = e.Platform
		list = append(list, l)
	}
	raw, err := json.Marshal(struct {
		SchemaVersion int             `json:"schemaVersion"`
		MediaType     types.MediaType `json:"mediaType"`
		Manifests     []listEntry     `json:"manifests"`
	}{2, types.DockerManifestList, list})
	return children, rawIndex{raw, types.DockerManifestList}, err
}

func entryOf(img v1.Image) (indexEntry, error) {
	var e indexEntry
	mt, err := img.MediaType()
	if err != nil {
		return e, err
	}
	d, err := img.Digest()
	if err != nil {
		return e, err
	}
	n, err := img.Size()
	if err != nil {
		return e, err
	}
	e.MediaType, e.Digest, e.Size = mt, d.String(), n
	return e, nil
}
