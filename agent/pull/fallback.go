package pull

import (
	"context"
	"fmt"
	"strings"

	"github.com/opencontainers/go-digest"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/internal/safetext"
)

// FallbackResult is an image served from a fallback prefix
// (MOLECULE_IMAGE_FALLBACK_REGISTRY) after the primary refused it.
type FallbackResult struct {
	// PullResult is the pull of the fallback that served the image (its
	// Image is the fallback's), or of the last one tried; Err is nil
	// when one served it.
	PullResult
	// Prefix is the fallback prefix that served the image.
	Prefix string
}

// FallbackAttempts is how many failures in a row of a registry that
// fails or cannot be reached fall back.
const FallbackAttempts = 3

// FallbackCures reports whether a fallback can cure a primary failure of
// class c after failures such failures in a row (this one included). A
// refusal or a missing image is not retried on the primary, so it falls
// back at once; a registry failing or unreachable gets three tries, a rate
// limit one cooldown. disk, daemon, canceled (and the rest) never fall
// back: another registry does not cure them.
func FallbackCures(c ErrorClass, failures int) bool {
	failures = min(failures, FallbackAttempts)
	switch c {
	case ClassAuth, ClassNotFound:
		return true
	case ClassServer, ClassNetwork:
		return failures >= FallbackAttempts
	case ClassRateLimited:
		return failures >= 2
	}
	return false
}

// PullFallback pulls primary's image from each of prefixes in turn until
// one serves it, with the credentials chosen for that prefix's host
// alone, and verifies the digest it served. An image without a pin is
// then tagged under primary's name, so that whoever asks the daemon for
// primary.Ref finds it. A pinned runtime is served only the pinned
// image: the pinned manifest, or one whose config for the platform is the
// pin's (as check --compare judges a mirror), when the primary still says
// what the pin is; any other is refused.
func (p *Puller) PullFallback(ctx context.Context, primary config.Image, prefixes []string, obs Observer) FallbackResult {
	var refused []string
	var last FallbackResult
	for _, prefix := range prefixes {
		last = FallbackResult{Prefix: prefix, PullResult: p.pullFallback(ctx, primary, prefix, obs)}
		if last.Err == nil {
			return last
		}
		refused = append(refused, fmt.Sprintf("%s: %s", prefix, errText(last.Err)))
		switch ClassOf(last.Err) {
		case ClassDisk, ClassDaemon, ClassCanceled:
			return last // no other registry cures these
		}
	}
	if len(refused) > 0 {
		last.Err = &pullError{Class: ClassOf(last.Err), Err: fmt.Errorf("no fallback served it: %s", strings.Join(refused, "; "))}
	}
	return last
}

func (p *Puller) pullFallback(ctx context.Context, primary config.Image, prefix string, obs Observer) PullResult {
	fb, err := primary.Under(prefix)
	if err != nil {
		return PullResult{Image: primary, Err: &pullError{Class: ClassUnknown, Err: err}}
	}
	if primary.Pin != "" {
		return p.pullPinnedFallback(ctx, primary, prefix, fb, obs)
	}
	res := p.Pull(ctx, fb, obs)
	if res.Err != nil {
		return res
	}
	if err := p.engine.ImageTag(ctx, res.ImageID, primary.Ref); err != nil {
		res.Err = &pullError{Class: classify(err), Err: fmt.Errorf("tagging %s as %s: %w", fb.Ref, primary.Ref, err)}
		return res
	}
	if info, err := p.engine.ImageInspect(ctx, primary.Ref); err != nil || info.ID != res.ImageID {
		res.Err = &pullError{Class: ClassVerify, Err: fmt.Errorf("verifying the tag %s: it does not name the image pulled from %s (%s)", primary.Ref, fb.Ref, res.ImageID)}
	}
	return res
}

// pullPinnedFallback pulls the pinned manifest from the fallback, or the
// fallback's :latest where its image for the platform is the pin's.
func (p *Puller) pullPinnedFallback(ctx context.Context, primary config.Image, prefix string, fb config.Image, obs Observer) PullResult {
	res := p.Pull(ctx, fb, obs)
	if res.Err == nil || ClassOf(res.Err) != ClassNotFound {
		return res
	}
	platform := config.PlatformOrDefault(p.opts.Platform)
	refuse := func(format string, args ...any) PullResult {
		res.Err = &pullError{Class: ClassVerify, Err: fmt.Errorf("refused for pinned runtime %s: "+format, append([]any{primary.Runtime}, args...)...)}
		return res
	}
	want, err := p.Content(ctx, primary, primary.Pin, platform, true)
	if err != nil {
		return refuse("%s does not serve the pinned manifest %s; mirror with digests kept (skopeo copy --all) or change the pin (the primary, which could say which image the pin is, refused: %s)",
			fb.Repository(), shortDigest(primary.Pin), safetext.Line(errText(err), 120))
	}
	latest, err := (config.Image{Runtime: primary.Runtime}).Under(prefix)
	if err != nil {
		return refuse("%v", err)
	}
	ri, err := p.Remote(ctx, latest)
	if err != nil {
		return refuse("%s does not serve the pinned manifest %s, nor :latest (%s)", fb.Repository(), shortDigest(primary.Pin), safetext.Line(errText(err), 120))
	}
	got, err := p.Content(ctx, latest, ri.Digest, platform, true)
	if err != nil {
		return refuse("reading %s: %s", latest.Ref, errText(err))
	}
	if got.Config != want.Config {
		return refuse("%s serves the %s image %s, not the pinned image %s (config digests)", latest.Ref, platform, shortDigest(got.Config), shortDigest(want.Config))
	}
	same, err := (config.Image{Runtime: primary.Runtime, Pin: ri.Digest}).Under(prefix)
	if err != nil {
		return refuse("%v", err)
	}
	return p.Pull(ctx, same, obs)
}

func shortDigest(d digest.Digest) string { return safetext.ShortDigest(d.String()) }
