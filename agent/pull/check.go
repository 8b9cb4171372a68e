package pull

import (
	"context"
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
	Runtime    string        `json:"runtime"`
	Image      string        `json:"image"`
	Present    bool          `json:"present"`
	Digest     digest.Digest `json:"digest,omitempty"`
	Platforms  []string      `json:"platforms,omitempty"`
	PlatformOK bool          `json:"platform_ok"`
	Class      ErrorClass    `json:"error_class,omitempty"`
	Error      string        `json:"error,omitempty"`
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
			r := CheckResult{Runtime: img.Runtime, Image: img.Ref}
			ri, err := p.Remote(ctx, img)
			if err != nil {
				r.Class, r.Error = ClassOf(err), errText(err)
			} else {
				// The registry names the platforms; they are printed.
				for _, pl := range ri.Platforms {
					r.Platforms = append(r.Platforms, safetext.Line(pl, 64))
				}
				r.Present, r.Digest = true, ri.Digest
				r.PlatformOK = platformIn(platform, ri.Platforms)
				if img.Pin != "" && ri.Digest != img.Pin {
					r.Present, r.Error = false, "the registry serves "+safetext.Line(ri.Digest.String(), 80)+", not the pinned digest"
				}
			}
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
	ParitySame     Parity = iota + 1 // present under both, the same digest
	ParityDiffers                    // present under both, different digests
	ParityMissingP                   // missing under P only
	ParityMissingQ                   // missing under Q only
	ParityMissingB                   // missing under both
)

// Compare returns the parity of each runtime of p and q (by runtime).
func Compare(p, q CheckReport) map[string]Parity {
	inQ := map[string]CheckResult{}
	for _, r := range q.Images {
		inQ[r.Runtime] = r
	}
	out := map[string]Parity{}
	for _, a := range p.Images {
		b, ok := inQ[a.Runtime]
		switch {
		case !ok || (!a.Present && !b.Present):
			out[a.Runtime] = ParityMissingB
		case !a.Present:
			out[a.Runtime] = ParityMissingP
		case !b.Present:
			out[a.Runtime] = ParityMissingQ
		case a.Digest == b.Digest:
			out[a.Runtime] = ParitySame
		default:
			out[a.Runtime] = ParityDiffers
		}
	}
	return out
}
