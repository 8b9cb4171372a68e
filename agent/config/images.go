package config

import (
	"fmt"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/molecule-ai/pull-agent/internal/safetext"
)

// Image is one workspace-template image the agent keeps warm.
type Image struct {
	Runtime string
	// Ref is the reference as pulled: <prefix>/workspace-template-<runtime>
	// followed by ":latest" or, for a pinned runtime, "@sha256:…".
	Ref string
	// Name is Ref parsed and normalized (docker.io/… for Docker Hub).
	Name reference.Named
	// Pin is the pinned manifest digest, or empty for ":latest".
	Pin digest.Digest
}

// Host is the registry host the image is pulled from.
func (i Image) Host() string { return reference.Domain(i.Name) }

// Repository is the image's normalized name without tag or digest.
func (i Image) Repository() string { return i.Name.Name() }

// ImageRef returns the image reference for runtime under prefix:
// <prefix>/workspace-template-<runtime>:latest. prefix is used as given.
func ImageRef(prefix, runtime string) string {
	return prefix + "/workspace-template-" + runtime + ":latest"
}

// AliasRef is the alias name of runtime's image under alias, or "".
func (c Config) AliasRef(runtime string) string {
	if c.AliasPrefix == "" {
		return ""
	}
	return ImageRef(c.AliasPrefix, runtime)
}

// Images resolves the configured image set, one image per runtime in
// runtime order.
func (c Config) Images() ([]Image, error) {
	out := make([]Image, 0, len(c.Runtimes))
	for _, rt := range c.Runtimes {
		img, err := imageUnder(c.Prefix, rt, c.Pins[rt])
		if err != nil {
			return nil, err
		}
		out = append(out, img)
	}
	return out, nil
}

// Under is the same image (runtime and pin) under another prefix.
func (i Image) Under(prefix string) (Image, error) { return imageUnder(prefix, i.Runtime, i.Pin) }

func imageUnder(prefix, rt string, pin digest.Digest) (Image, error) {
	ref := ImageRef(prefix, rt)
	if pin != "" {
		ref = prefix + "/workspace-template-" + rt + "@" + pin.String()
	}
	named, err := reference.ParseNormalizedNamed(ref)
	if err != nil {
		return Image{}, fmt.Errorf("resolving image for runtime %s: %q: %w", rt, safetext.Line(ref, maxValueRunes), err)
	}
	return Image{Runtime: rt, Ref: ref, Name: named, Pin: pin}, nil
}

// LookupImage returns the image for runtime, or false when the runtime is
// not in the set.
func LookupImage(images []Image, runtime string) (Image, bool) {
	for _, img := range images {
		if img.Runtime == runtime {
			return img, true
		}
	}
	return Image{}, false
}
