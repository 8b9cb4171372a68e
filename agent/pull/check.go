package pull

import (
	"context"
	"errors"
	"slices"

	"github.com/opencontainers/go-digest"
	"golang.org/x/sync/errgroup"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/auth"
	"github.com/molecule-ai/pull-agent/internal/safetext"
)

// CheckResult is what a registry says about one image, asked through the
// daemon without pulling.
type CheckResult struct {
	Runtime string `json:"runtime"`
	Image   string `json:"image"`
	Present bool   `json:"present"`
	// Digest is the manifest digest the tag names: an index's for a
	// multi-platform image.
	Digest digest.Digest `json:"digest,omitempty"`
	// Platforms are the image's real platforms; attestation manifests
	// are counted in Attestations instead.
	Platforms    []string `json:"platforms,omitempty"`
	Attestations int      `json:"attestations,omitempty"`
	PlatformOK   bool     `json:"platform_ok"`
	// PlatformDigest is the digest of the image manifest for the target
	// platform (Digest itself for a single-platform image).
	PlatformDigest digest.Digest `json:"platform_digest,omitempty"`
	// ImageDigest is the config digest of that manifest: the identity of
	// the image the host would run.
	ImageDigest digest.Digest `json:"image_digest,omitempty"`
	// ContentError says why ImageDigest is unknown.
	ContentError string     `json:"content_error,omitempty"`
	Class        ErrorClass `json:"error_class,omitempty"`
	Error        string     `json:"error,omitempty"`
}

// HostCheck is the authentication outcome for one registry host.
type HostCheck struct {
	Host   string `json:"host"`
	Source string `json:"credential_source"`
	AuthOK bool   `json:"auth_ok"`
	Error  string `json:"error,omitempty"`
}

// CheckReport is the check of one prefix.
type CheckReport struct {
	Prefix   string        `json:"prefix"`
	Platform string        `json:"platform"`
	Images   []CheckResult `json:"images"`
	Hosts    []HostCheck   `json:"hosts"`
}

// OK reports whether every image is present with the platform and every
// host authenticated.
func (r CheckReport) OK() bool {
	for _, i := range r.Images {
		if !i.Present || !i.PlatformOK {
			return false
		}
	}
	for _, h := range r.Hosts {
		if !h.AuthOK {
			return false
		}
	}
	return len(r.Images) > 0
}

// Check asks the registry about every image, with the same credentials a
// pull would use, at most three at a time. platform is os/arch[/variant].
func Check(ctx context.Context, p *Puller, prefix, platform string, images []config.Image) CheckReport {
	rep := CheckReport{Prefix: prefix, Platform: platform, Images: make([]CheckResult, len(images))}
	var g errgroup.Group
	g.SetLimit(3)
	for i, img := range images {
		g.Go(func() error {
			r := checkOne(ctx, p, img, platform)
			rep.Images[i] = r
			return nil // an image's failure is in its result; the others go on
		})
	}
	g.Wait()
	hosts := map[string]*HostCheck{}
	var order []string
	for i, img := range images {
		h := img.Host()
		hc := hosts[h]
		if hc == nil {
			hc = &HostCheck{Host: h, AuthOK: true}
			if d, ok := p.auth.(interface{ Describe(string) auth.Source }); ok {
				hc.Source = string(d.Describe(h))
			}
			hosts[h] = hc
			order = append(order, h)
		}
		if r := rep.Images[i]; r.Class == ClassAuth {
			hc.AuthOK, hc.Error = false, r.Error
		}
	}
	for _, h := range order {
		rep.Hosts = append(rep.Hosts, *hosts[h])
	}
	return rep
}

// checkOne asks the daemon about img, then reads the manifests for
// platform from the registry to learn the image's identity.
func checkOne(ctx context.Context, p *Puller, img config.Image, platform string) CheckResult {
	r := CheckResult{Runtime: img.Runtime, Image: img.Ref}
	ri, err := p.Remote(ctx, img)
	if err != nil {
		r.Class, r.Error = ClassOf(err), errText(err)
		return r
	}
	// The registry names the platforms; they are printed.
	listed, atts := realPlatforms(ri.Platforms)
	r.Present, r.Digest, r.Attestations = true, ri.Digest, atts
	// Docker 20.10 names no platform for a single OCI manifest: its
	// config then says which it is.
	c, err := p.Content(ctx, img, ri.Digest, platform, len(listed) == 0)
	switch {
	case err == nil:
		r.PlatformDigest, r.ImageDigest = c.Manifest, c.Config
		if len(c.Platforms) > 0 {
			listed, r.Attestations = c.Platforms, c.Attestations
		}
	case errors.Is(err, errNoPlatform):
		listed, r.Attestations = c.Platforms, c.Attestations
	default:
		r.ContentError = errText(err)
	}
	for _, pl := range listed {
		r.Platforms = append(r.Platforms, safetext.Line(pl, 64))
	}
	r.PlatformOK = platformIn(platform, r.Platforms)
	if img.Pin != "" && ri.Digest != img.Pin {
		r.Present, r.Error = false, "the registry serves "+safetext.Line(ri.Digest.String(), 80)+", not the pinned digest"
	}
	return r
}

// maxErrorRunes bounds an error kept in a check result, as the agent
// bounds the errors it keeps in its state.
const maxErrorRunes = 512

func errText(err error) string { return safetext.Line(err.Error(), maxErrorRunes) }

func platformIn(want string, have []string) bool {
	if len(have) == 0 {
		return false
	}
	if slices.Contains(have, want) {
		return true
	}
	// linux/arm64 matches linux/arm64/v8 and the reverse.
	for _, h := range have {
		if len(h) > len(want) && h[:len(want)+1] == want+"/" || len(want) > len(h) && want[:len(h)+1] == h+"/" {
			return true
		}
	}
	return false
}

// Parity compares one runtime across two prefixes, P and Q.
type Parity int

// The parities. The zero value is none of them.
const (
	ParitySame     Parity = iota + 1 // present under both, the same image for the platform
	ParityDiffers                    // present under both, different images for the platform
	ParityMissingP                   // missing under P only
	ParityMissingQ                   // missing under Q only
	ParityMissingB                   // missing under both
	ParityUnknown                    // present under both, different manifests, an image unreadable
)

// Comparison is one runtime compared across P and Q, at both levels.
type Comparison struct {
	Parity Parity
	// SameManifest: the tag names the same index or manifest digest.
	SameManifest bool
	// SameImage: the manifest for the target platform has the same config
	// digest (it is the same image), whatever the manifests around it.
	SameImage bool
}

// Compare returns the comparison of each runtime of p and q (by runtime).
// Parity is judged by the image each serves for the platform: a mirror
// that re-packed the manifests (docker push of a multi-platform image,
// skopeo copy without --all) is the same when its image is.
func Compare(p, q CheckReport) map[string]Comparison {
	inQ := map[string]CheckResult{}
	for _, r := range q.Images {
		inQ[r.Runtime] = r
	}
	out := map[string]Comparison{}
	for _, a := range p.Images {
		b, ok := inQ[a.Runtime]
		var c Comparison
		switch {
		case !ok || (!a.Present && !b.Present):
			c.Parity = ParityMissingB
		case !a.Present:
			c.Parity = ParityMissingP
		case !b.Present:
			c.Parity = ParityMissingQ
		default:
			c.SameManifest = a.Digest == b.Digest
			c.SameImage = a.ImageDigest != "" && a.ImageDigest == b.ImageDigest
			switch {
			case c.SameManifest || c.SameImage:
				c.Parity = ParitySame
			case a.ImageDigest == "" || b.ImageDigest == "":
				c.Parity = ParityUnknown
			default:
				c.Parity = ParityDiffers
			}
		}
		out[a.Runtime] = c
	}
	return out
}
