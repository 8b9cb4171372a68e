package config

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/distribution/reference"

	"github.com/molecule-ai/pull-agent/internal/safetext"
)

// ParsePrefix validates a registry prefix and returns it with trailing
// slashes removed. An empty value selects defaultPrefix.
func ParsePrefix(s string) (string, error) {
	if s == "" {
		return defaultPrefix, nil
	}
	switch {
	case strings.Contains(s, "://"):
		return "", fmt.Errorf("a prefix has no URL scheme; write the registry host and path only, e.g. %q", defaultPrefix)
	case strings.ContainsFunc(s, func(r rune) bool { return r == ' ' || r == '\t' || r == '\n' || r == '\r' || r == '\v' || r == '\f' }):
		return "", errors.New("contains white space (an inline comment? the env file has none); remove it")
	case strings.ContainsAny(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZ"):
		return "", errors.New("contains upper-case letters; image names are lower-case")
	case strings.Contains(s, "@"):
		return "", errors.New("contains a digest ('@'); the prefix names a registry path, pin digests with " + KeyPins)
	}
	p := strings.TrimRight(s, "/")
	if p == "" {
		return "", errors.New("is only slashes; set a registry host and path or leave it empty for the default")
	}
	segs := strings.Split(p, "/")
	for i, seg := range segs {
		if seg == "" {
			return "", errors.New("has an empty path segment ('//' or a leading '/')")
		}
		if i > 0 && strings.Contains(seg, ":") {
			return "", fmt.Errorf("path segment %q contains ':' (a tag?); the prefix cannot carry a tag, images always use :latest or a pin", safetext.Line(seg, maxValueRunes))
		}
	}
	if len(segs) == 1 && strings.Contains(p, ":") && !strings.HasPrefix(p, "[") {
		if _, port, _ := strings.Cut(p, ":"); strings.Trim(port, "0123456789") != "" {
			return "", fmt.Errorf("%q is neither a host:port nor a path: a prefix cannot carry a tag", safetext.Line(p, maxValueRunes))
		}
	}
	if i := strings.LastIndex(segs[0], ":"); i >= 0 && !strings.HasSuffix(segs[0], "]") {
		if port := segs[0][i+1:]; port != "" && strings.Trim(port, "0123456789") == "" {
			if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
				return "", fmt.Errorf("port %s of registry host %q is out of range (1-65535)", safetext.Line(port, maxValueRunes), safetext.Line(segs[0], maxValueRunes))
			}
		}
	}
	// The prefix is valid when every image name built from it is.
	probe := p + "/workspace-template-x"
	if _, err := reference.ParseNormalizedNamed(probe); err != nil {
		return "", fmt.Errorf("does not form a valid image name (%v)", err)
	}
	return p, nil
}

// MaxFallbacks bounds MOLECULE_IMAGE_FALLBACK_REGISTRY: each one is tried
// in turn for every image the primary refuses.
const MaxFallbacks = 4

// parseFallbacks parses the comma-separated fallback prefixes, each
// validated as the primary is, in order; none may repeat or be primary.
func parseFallbacks(s, primary string) ([]string, error) {
	if s == "" {
		return nil, nil
	}
	items := strings.Split(s, ",")
	if len(items) > MaxFallbacks {
		return nil, fmt.Errorf("lists %d prefixes; at most %d are tried, list the registries that mirror the images", len(items), MaxFallbacks)
	}
	var out []string
	for n, item := range items {
		// Entries are validated as given, white space included, as
		// the primary is.
		if item == "" {
			return nil, fmt.Errorf("entry %d is empty; separate prefixes with single commas", n+1)
		}
		p, err := ParsePrefix(item)
		if err != nil {
			return nil, fmt.Errorf("prefix %q (entry %d): %v", safetext.Line(item, maxValueRunes), n+1, err)
		}
		switch {
		case p == primary:
			return nil, fmt.Errorf("prefix %q is the primary (%s) itself; list other registries or paths", safetext.Line(p, maxValueRunes), KeyRegistry)
		case slices.Contains(out, p):
			return nil, fmt.Errorf("prefix %q is listed twice", safetext.Line(p, maxValueRunes))
		}
		out = append(out, p)
	}
	return out, nil
}
