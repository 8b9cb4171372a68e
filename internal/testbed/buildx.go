package testbed

import (
	"context"
	"fmt"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// PushBuildx pushes imgs, one per MultiPlatforms entry in that order, to
// ref (a tag, plain HTTP) as 'docker buildx build --push' does (see
// ShapeBuildx): each image, one attestation manifest per image, then the
// OCI index naming them. It returns the index's bytes, whose digest the
// registry serves for ref. Callers build the images (the benchmark's
// realistic workloads); Push builds the bed's own.
func PushBuildx(ctx context.Context, ref string, imgs []v1.Image) ([]byte, error) {
	if len(imgs) != len(MultiPlatforms) {
		return nil, fmt.Errorf("buildx index for %s: %d images, want one per platform of %v", ref, len(imgs), MultiPlatforms)
	}
	tag, err := name.NewTag(ref, name.Insecure)
	if err != nil {
		return nil, fmt.Errorf("reference %q: %w", ref, err)
	}
	children, idx, err := index(ShapeBuildx, imgs)
	if err != nil {
		return nil, fmt.Errorf("building the index of %s: %w", ref, err)
	}
	for _, c := range children {
		d, err := c.Digest()
		if err != nil {
			return nil, err
		}
		if err := remote.Write(tag.Context().Digest(d.String()), c, remote.WithContext(ctx)); err != nil {
			return nil, fmt.Errorf("pushing %s@%s: %w", ref, d, err)
		}
	}
	if err := remote.Put(tag, idx, remote.WithContext(ctx)); err != nil {
		return nil, fmt.Errorf("pushing the index %s: %w", ref, err)
	}
	return idx.raw, nil
}
