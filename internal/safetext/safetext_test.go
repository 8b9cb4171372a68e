package safetext

import (
	"strings"
	"testing"
	"unicode/utf8"
)

func TestLine(t *testing.T) {
	for _, tc := range []struct {
		name, in, want string
		max            int
	}{
		{"plain", "denied: requested access to the resource is denied", "denied: requested access to the resource is denied", 0},
		{"OSC 0 window title, BEL", "denied\x1b]0;pwned\x07 here", "denied here", 0},
		{"OSC 0 window title, ST", "denied\x1b]0;pwned\x1b\\ here", "denied here", 0},
		{"cursor up and erase line", "denied\x1b[1A\x1b[2K\rall warm", "denied all warm", 0},
		{"OSC 8 link", "\x1b]8;;https://evil.example/\x1b\\click\x1b]8;;\x1b\\ denied", "click denied", 0},
		{"OSC 52 clipboard", "denied\x1b]52;c;Y3VybCBldmlsIHwgc2g=\x07", "denied", 0},
		{"SGR colour", "\x1b[31mred\x1b[0m", "red", 0},
		{"C1 CSI rune", "a\u009b2Jb", "ab", 0},
		{"C1 OSC rune, ST", "a\u009d0;title\u009cb", "ab", 0},
		{"8-bit C1 bytes are invalid UTF-8", "a\x9b2Jb", "a\uFFFD2Jb", 0},
		{"two-byte escape", "a\x1bcb", "ab", 0},
		{"unterminated OSC swallows the rest", "denied\x1b]0;title", "denied", 0},
		{"lone ESC at end", "denied\x1b", "denied", 0},
		{"C0 and DEL", "a\x00b\x07c\x08d\x7fe", "abcde", 0},
		{"newlines fold", "line one\r\nline two\n\n\tthree  ", "line one line two three", 0},
		{"bidi override", "abc\u202edcba\u202c", "abcdcba", 0},
		{"invalid UTF-8", "a\xffb", "a\uFFFDb", 0},
		{"cut by rune", "ééééé", "éé…", 3},
		{"no cut needed", "ééé", "ééé", 3},
		{"cut drops trailing space", "ab cd", "ab…", 4},
		{"pre-signed S3 URL", `Get "https://bucket.s3.amazonaws.com/blobs/sha256/ab?X-Amz-Algorithm=AWS4&X-Amz-Security-Token=FQoGZXIvYXdzEJr&X-Amz-Signature=deadbeef": dial tcp`,
			`Get "https://bucket.s3.amazonaws.com/blobs/sha256/ab?REDACTED": dial tcp`, 0},
		{"CloudFront URL", "https://d1.cloudfront.net/x?Expires=1&Signature=abc~def&Key-Pair-Id=K2", "https://d1.cloudfront.net/x?REDACTED", 0},
		{"fragment", "http://h/p#token=abc", "http://h/p?REDACTED", 0},
		{"user information", "https://robot:s3cret@registry.example:5000/v2/ denied", "https://REDACTED@registry.example:5000/v2/ denied", 0},
		{"URL without query kept", "https://registry.example/v2/x/manifests/latest", "https://registry.example/v2/x/manifests/latest", 0},
		{"parameter outside a URL", "failed with X-Amz-Signature=abc123&token=zzz; retry", "failed with X-Amz-Signature=REDACTED&token=REDACTED; retry", 0},
		{"escape inside a URL cannot hide the query", "https://h/p\x1b[0m?token=abc", "https://h/p?REDACTED", 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := Line(tc.in, tc.max); got != tc.want {
				t.Errorf("Line(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.want)
			}
		})
	}
}

func TestTruncateAndTail(t *testing.T) {
	for _, tc := range []struct {
		in        string
		max       int
		head, end string
	}{
		{"ééééé", 3, "éé…", "…éé"},
		{"ééé", 3, "ééé", "ééé"},
		{"ab cd", 4, "ab…", "…cd"},
		{"ab cd", 3, "ab…", "…cd"},
		{"abc", 0, "abc", "abc"},
		{"abc", 1, "…", "…"},
		{"a\nlog\ntail", 5, "a\nlo…", "…tail"},
		{"", 3, "", ""},
	} {
		if got := Truncate(tc.in, tc.max); got != tc.head {
			t.Errorf("Truncate(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.head)
		}
		if got := Tail(tc.in, tc.max); got != tc.end {
			t.Errorf("Tail(%q, %d) = %q, want %q", tc.in, tc.max, got, tc.end)
		}
	}
}

func TestShortDigest(t *testing.T) {
	for in, want := range map[string]string{
		"sha256:0123456789abcdef0123": "0123456789ab",
		"sha256:ab":                   "ab",
		"sha256:":                     "-",
		"":                            "-",
		"ab":                          "ab",
		"sha256:\x1b[2Jéééééééééééééé": "éééééééééééé",
	} {
		if got := ShortDigest(in); got != want {
			t.Errorf("ShortDigest(%q) = %q, want %q", in, got, want)
		}
	}
}

// checkSafe fails when out could do anything on a terminal but show text.
func checkSafe(t *testing.T, in, out string, max int) {
	t.Helper()
	if !utf8.ValidString(out) {
		t.Fatalf("Line(%q) = %q: not valid UTF-8", in, out)
	}
	for _, r := range out {
		if r < 0x20 || (r >= 0x7f && r <= 0x9f) || isBidiControl(r) {
			t.Fatalf("Line(%q) = %q: holds control character %U", in, out, r)
		}
	}
	if max > 0 && utf8.RuneCountInString(out) > max {
		t.Fatalf("Line(%q, %d) = %q: longer than %d runes", in, max, out, max)
	}
	for _, q := range []string{"?", "#"} {
		for _, u := range urlRE.FindAllString(out, -1) {
			if i := strings.Index(u, q); i >= 0 && !strings.HasPrefix(u[i:], "?"+Redacted) && !strings.HasSuffix(out, Ellipsis) {
				t.Fatalf("Line(%q) = %q: URL %q keeps its query", in, out, u)
			}
		}
	}
}

func FuzzLine(f *testing.F) {
	for _, s := range []string{"denied\x1b]0;x\x07", "\x1b[1A\x1b[2Kall warm", "https://u:p@h/p?X-Amz-Signature=1", "ééé\u202e", "\x9b\xc2\x9b"} {
		f.Add(s, 40)
	}
	f.Fuzz(func(t *testing.T, s string, max int) {
		max %= 300
		out := Line(s, max)
		checkSafe(t, s, out, max)
		if Line(out, max) != out {
			t.Fatalf("Line is not idempotent on %q: %q then %q", s, out, Line(out, max))
		}
		// The cuts alone, on raw input: at most max runes, never a rune
		// split, the kept part as it was.
		if !utf8.ValidString(s) {
			return
		}
		for name, cut := range map[string]string{"Truncate": Truncate(s, max), "Tail": Tail(s, max)} {
			kept := strings.TrimSuffix(strings.TrimPrefix(cut, Ellipsis), Ellipsis)
			switch {
			case !utf8.ValidString(cut):
				t.Fatalf("%s(%q, %d) = %q: not valid UTF-8", name, s, max, cut)
			case max > 0 && utf8.RuneCountInString(cut) > max:
				t.Fatalf("%s(%q, %d) = %q: longer than %d runes", name, s, max, cut, max)
			case !strings.Contains(s, kept):
				t.Fatalf("%s(%q, %d) = %q: not a part of the input", name, s, max, cut)
			}
		}
	})
}

func TestStrings(t *testing.T) {
	type inner struct {
		A string
		b string
	}
	type doc struct {
		S   string
		P   *string
		In  []inner
		M   map[string]string
		Ptr *inner
		N   int
	}
	const bad = "x\x1b]0;t\x07y"
	p := bad
	d := doc{S: bad, P: &p, In: []inner{{A: bad, b: bad}}, M: map[string]string{"k": bad}, Ptr: &inner{A: bad}, N: 3}
	Strings(&d, 0)
	for name, got := range map[string]string{"S": d.S, "P": *d.P, "In.A": d.In[0].A, "M": d.M["k"], "Ptr.A": d.Ptr.A} {
		if got != "xy" {
			t.Errorf("%s = %q", name, got)
		}
	}
	if d.In[0].b != bad {
		t.Errorf("unexported fields cannot be set and are left: %q", d.In[0].b)
	}
}
