package config

import (
	"strings"
	"testing"

	"github.com/distribution/reference"
)

// Hostile and odd prefixes: each is accepted exactly as the reference
// grammar allows, or refused with a message of its own; whatever is
// accepted is the prefix the daemon is asked for, and builds references
// that parse back to that name.
func TestHostilePrefixes(t *testing.T) {
	for _, tt := range hostilePrefixes {
		checkHostilePrefix(t, tt.in, tt.ok, tt.want)
	}
}

// The same table applies to every fallback prefix, first or later in the
// list: accepted as the same prefix, or refused naming the entry.
func TestHostileFallbackPrefixes(t *testing.T) {
	for _, tt := range hostilePrefixes {
		if strings.Contains(tt.in, ",") {
			continue
		}
		for _, list := range []string{tt.in, "registry.example/mirror," + tt.in} {
			got, err := parseFallbacks(list, "ghcr.io/primary")
			if (err == nil) != tt.ok {
				t.Errorf("parseFallbacks(%q) = %q, %v; want ok=%v", list, got, err, tt.ok)
				continue
			}
			if err != nil {
				if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "prefix ") {
					t.Errorf("parseFallbacks(%q): %v; want the entry named and %q", list, err, tt.want)
				}
				continue
			}
			if got[len(got)-1] != tt.want {
				t.Errorf("parseFallbacks(%q) = %q, want it to end with %q", list, got, tt.want)
			}
		}
	}
}

var hostilePrefixes = []struct {
	in   string
	ok   bool
	want string // accepted: the prefix; refused: a part of the error
}{
	{"ghcr.io/molecule-ai", true, "ghcr.io/molecule-ai"},
	{"https://ghcr.io/molecule-ai", false, "no URL scheme"},
	{"http://127.0.0.1:5000/x", false, "no URL scheme"},
	{"ftp://x/y", false, "no URL scheme"},
	{"user:pass@ghcr.io/molecule-ai", false, "contains a digest ('@')"},
	{"ghcr.io:99999/x", false, "out of range"},
	{"ghcr.io:0/x", false, "out of range"},
	{"ghcr.io:65535/x", true, "ghcr.io:65535/x"},
	{"ghcr.io:/x", false, "does not form a valid image name"},
	{"ghcr.io:-1/x", false, "does not form a valid image name"},
	{"[::1]:5000/x", true, "[::1]:5000/x"},
	{"[::1]/x", true, "[::1]/x"},
	{"[fe80::1%eth0]:5000/x", false, "does not form a valid image name"},
	{"ɡhcr.io/molecule-ai", false, "does not form a valid image name"}, // U+0261 look-alike
	{"ghcr.io/molecule‐ai", false, "does not form a valid image name"}, // U+2010 hyphen
	{"ghcr.io/mоlecule", false, "does not form a valid image name"},    // Cyrillic o
	{"ghcr.io/../etc", false, "does not form a valid image name"},
	{"ghcr.io/./x", false, "does not form a valid image name"},
	{"ghcr.io/x/..", false, "does not form a valid image name"},
	{"ghcr.io/" + strings.Repeat("a", 256), false, "does not form a valid image name"},
	{"ghcr.io/" + strings.Repeat("a/", 130), false, "does not form a valid image name"},
	{strings.Repeat("a", 300), false, "does not form a valid image name"},
	{"ghcr.io./x", false, "does not form a valid image name"},
	{"ghcr.io/x.", false, "does not form a valid image name"},
	{"GHCR.IO/x", false, "upper-case"},
	{"ghcr.io/X", false, "upper-case"},
	{" ghcr.io/x", false, "white space"},
	{"ghcr.io/x ", false, "white space"},
	{"ghcr.io/\tx", false, "white space"},
	{"ghcr.io/x\n", false, "white space"},
	{"ghcr.io/x\x00", false, "does not form a valid image name"},
	{"ghcr.io/x\x1b[31m", false, "does not form a valid image name"},
	{"ghcr.io/x;rm -rf /", false, "white space"},
	{"ghcr.io/x;id", false, "does not form a valid image name"},
	{"ghcr.io/$(id)", false, "does not form a valid image name"},
	{"ghcr.io/`id`", false, "does not form a valid image name"},
	{"ghcr.io/x|y", false, "does not form a valid image name"},
	{"ghcr.io/x&&y", false, "does not form a valid image name"},
	{"ghcr.io/x*", false, "does not form a valid image name"},
	{"ghcr.io/x?y=1", false, "does not form a valid image name"},
	{"ghcr.io/x#frag", false, "does not form a valid image name"},
	{"ghcr.io/x:latest", false, "cannot carry a tag"},
	{"ghcr.io/x@sha256:" + strings.Repeat("0", 64), false, "contains a digest"},
	{"ghcr.io//x", false, "empty path segment"},
	{"/ghcr.io/x", false, "empty path segment"},
	{"ghcr.io/x///", true, "ghcr.io/x"},
	{"localhost/x", true, "localhost/x"},
	{"localhost:5000", true, "localhost:5000"},
	{"a_b/c", true, "a_b/c"},
	{"ghcr.io/a__b", true, "ghcr.io/a__b"},
	{"ghcr.io/a___b", false, "does not form a valid image name"},
	{"ghcr.io/-x", false, "does not form a valid image name"},
	{"ghcr.io/x-", false, "does not form a valid image name"},
	{"123456789012.dkr.ecr.us-east-2.amazonaws.com/molecule-ai", true, "123456789012.dkr.ecr.us-east-2.amazonaws.com/molecule-ai"},
}

// checkHostilePrefix parses in as a prefix: refused with want in the error
// unless ok, else accepted as want, building references that parse back
// to want's images.
func checkHostilePrefix(t *testing.T, in string, ok bool, want string) {
	t.Helper()
	p, err := ParsePrefix(in)
	if (err == nil) != ok {
		t.Errorf("ParsePrefix(%q) = %q, %v; want ok=%v", in, p, err, ok)
		return
	}
	if err != nil {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("ParsePrefix(%q): %v; want %q", in, err, want)
		}
		return
	}
	if p != want {
		t.Errorf("ParsePrefix(%q) = %q, want %q", in, p, want)
		return
	}
	// What is accepted reaches the daemon as exactly what was validated.
	cfg := Config{Prefix: p, Runtimes: []string{"codex"}}
	imgs, err := cfg.Images()
	if err != nil {
		t.Errorf("%q accepted but %v", in, err)
		return
	}
	ref := want + "/workspace-template-codex:latest"
	if imgs[0].Ref != ref {
		t.Errorf("%q: reference %q, want %q", in, imgs[0].Ref, ref)
	}
	back, err := reference.ParseNormalizedNamed(imgs[0].Ref)
	if err != nil || reference.FamiliarString(back) != ref {
		t.Errorf("%q: reference %q parses back as %v (%v), want %q", in, imgs[0].Ref, back, err, ref)
	}
}
