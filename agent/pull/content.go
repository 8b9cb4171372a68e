package pull

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"slices"

	"github.com/containerd/platforms"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/opencontainers/go-digest"
	ocispec "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/auth"
)

// Annotations with which docker buildx marks an attestation manifest in an
// index (platform unknown/unknown): it describes an image, it is not one.
const (
	annotationReferenceType = "vnd.docker.reference.type"
	attestationManifest     = "attestation-manifest"
)

// Content is what a manifest (or index) holds for one platform, read from
// the registry.
type Content struct {
	// Platforms are the real platforms of an index, in its order;
	// attestation entries are left out. For a single manifest, the
	// platform its config names, when asked for.
	Platforms []string
	// Attestations is how many attestation manifests the index holds.
	Attestations int
	// Manifest is the digest of the platform's image manifest: the
	// entry of an index, or the manifest itself.
	Manifest digest.Digest
	// Config is the digest of that manifest's config: the image's
	// identity. Mirrors that re-pack manifests (docker push, skopeo copy
	// without --all) keep it.
	Config digest.Digest
}

// errNoPlatform is an index without an image for the wanted platform.
var errNoPlatform = errors.New("no image for the platform")

// registryOptions are the options of a direct registry read of img with
// creds, on a transport of its own that close closes: such reads are rare,
// and a pooled connection would sit idle for 90 s.
func registryOptions(ctx context.Context, img config.Image, creds auth.Credentials) (opts []remote.Option, nopts []name.Option, close func()) {
	if config.IsLoopbackHost(img.Host()) {
		nopts = append(nopts, name.Insecure) // as the daemon treats 127.0.0.0/8
	}
	tr := remote.DefaultTransport.(*http.Transport).Clone()
	opts = []remote.Option{remote.WithContext(ctx), remote.WithTransport(tr), remote.WithAuth(authn.FromConfig(authn.AuthConfig{
		Username: creds.Username, Password: creds.Password.Reveal(),
		IdentityToken: creds.IdentityToken.Reveal(), RegistryToken: creds.RegistryToken.Reveal(),
	}))}
	return opts, nopts, tr.CloseIdleConnections
}

// readContent reads the manifest dg of img's repository and, for an index,
// the manifest of platform in it: two manifest GETs at most, and no blob
// unless configPlatform asks for the platform of a single manifest (its
// config blob holds it).
func readContent(ctx context.Context, img config.Image, creds auth.Credentials, dg digest.Digest, platform string, configPlatform bool) (Content, error) {
	opts, nopts, closeTr := registryOptions(ctx, img, creds)
	defer closeTr()
	ref, err := name.NewDigest(img.Repository()+"@"+dg.String(), nopts...)
	if err != nil {
		return Content{}, err
	}
	desc, err := remote.Get(ref, opts...)
	if err != nil {
		return Content{}, err
	}
	var c Content
	if desc.MediaType.IsIndex() {
		im, err := v1.ParseIndexManifest(bytes.NewReader(desc.Manifest))
		if err != nil {
			return Content{}, fmt.Errorf("reading the index %s: %w", dg, err)
		}
		child, err := c.fromIndex(im, platform)
		if err != nil {
			return c, err
		}
		c.Manifest = child
		if desc, err = remote.Get(ref.Context().Digest(child.String()), opts...); err != nil {
			return c, err
		}
	} else {
		c.Manifest = dg
		if configPlatform {
			im, err := desc.Image()
			if err != nil {
				return c, err
			}
			cf, err := im.ConfigFile()
			if err != nil {
				return c, fmt.Errorf("reading the config of %s: %w", dg, err)
			}
			c.Platforms = []string{platformString(v1.Platform{OS: cf.OS, Architecture: cf.Architecture, Variant: cf.Variant})}
		}
	}
	m, err := v1.ParseManifest(bytes.NewReader(desc.Manifest))
	if err != nil {
		return c, fmt.Errorf("reading the manifest %s: %w", c.Manifest, err)
	}
	c.Config = digest.Digest(m.Config.Digest.String())
	return c, nil
}

// fromIndex fills c's platforms and attestations from im and returns the
// digest of the manifest the daemon would pull for platform.
func (c *Content) fromIndex(im *v1.IndexManifest, platform string) (digest.Digest, error) {
	want, err := platforms.Parse(platform)
	if err != nil {
		return "", err
	}
	match := platforms.Only(want)
	var best *v1.Descriptor
	var bestP ocispec.Platform
	for i, d := range im.Manifests {
		if isAttestation(d) {
			c.Attestations++
			continue
		}
		if d.Platform == nil {
			continue
		}
		c.Platforms = append(c.Platforms, platformString(*d.Platform))
		p := ocispec.Platform{OS: d.Platform.OS, Architecture: d.Platform.Architecture, Variant: d.Platform.Variant}
		if match.Match(p) && (best == nil || match.Less(p, bestP)) {
			best, bestP = &im.Manifests[i], p
		}
	}
	if best == nil {
		return "", fmt.Errorf("%w %s in the index (it has %v)", errNoPlatform, platform, c.Platforms)
	}
	return digest.Digest(best.Digest.String()), nil
}

// isAttestation reports whether an index entry is an attestation manifest
// rather than an image: buildx's annotation, or the unknown/unknown
// platform it always carries.
func isAttestation(d v1.Descriptor) bool {
	if d.Annotations[annotationReferenceType] == attestationManifest {
		return true
	}
	return d.Platform != nil && d.Platform.OS == "unknown" && d.Platform.Architecture == "unknown"
}

func platformString(p v1.Platform) string {
	s := p.OS + "/" + p.Architecture
	if p.Variant != "" {
		s += "/" + p.Variant
	}
	return s
}

// realPlatforms splits platforms the daemon listed into real ones and the
// count of attestation entries (unknown/unknown): the daemon does not pass
// annotations on.
func realPlatforms(listed []string) (real []string, attestations int) {
	for _, p := range listed {
		if p == "unknown/unknown" {
			attestations++
			continue
		}
		if !slices.Contains(real, p) {
			real = append(real, p)
		}
	}
	return real, attestations
}
