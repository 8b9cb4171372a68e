// Package safetext makes text that comes from outside the agent safe to
// store, log and print on a terminal: registry and daemon messages, helper
// messages, env-file content and state documents read back.
//
// Line is the one sanitiser. It removes terminal escape sequences and
// control characters (a registry must not be able to set a window title,
// move the cursor to overwrite an earlier line, write the clipboard or plant
// a link), redacts the query of every URL (pre-signed blob URLs carry
// X-Amz-Security-Token, Signature, Key-Pair-Id, token…) and the user
// information in it, and cuts by rune with a visible ellipsis, so that it
// never splits a UTF-8 character or an escape sequence.
package safetext

import (
	"reflect"
	"regexp"
	"strings"
	"unicode"
	"unicode/utf8"
)

// Ellipsis marks text that was cut.
const Ellipsis = "…"

// Redacted replaces a URL's query, its user information, and the value of
// a parameter known to carry a credential.
const Redacted = "REDACTED"

// Line returns s as one line of plain, printable text of at most max runes
// (no limit when max <= 0): escape sequences and control characters
// removed, white space runs folded to one space, URL queries and user
// information redacted, invalid UTF-8 replaced.
func Line(s string, max int) string {
	s = redact(strip(s))
	return Truncate(s, max)
}

// Truncate cuts s to at most max runes, the last one an ellipsis when
// anything was cut (no limit when max <= 0). It never splits a rune.
func Truncate(s string, max int) string {
	if max <= 0 || utf8.RuneCountInString(s) <= max {
		return s
	}
	n := 0
	for i := range s {
		if n == max-1 {
			return strings.TrimRight(s[:i], " ") + Ellipsis
		}
		n++
	}
	return s
}

// Tail keeps the end of s: at most max runes, the first one an ellipsis
// when anything was cut (no limit when max <= 0). It never splits a rune;
// like Truncate, it does not sanitise (a log tail keeps its lines).
func Tail(s string, max int) string {
	if max <= 0 || utf8.RuneCountInString(s) <= max {
		return s
	}
	n := 0
	for i := len(s); i > 0; {
		_, size := utf8.DecodeLastRuneInString(s[:i])
		if n == max-1 {
			return Ellipsis + strings.TrimLeft(s[i:], " ")
		}
		i -= size
		n++
	}
	return s
}

// strip removes escape sequences and control characters and folds white
// space. The result is valid UTF-8 without C0, C1 or DEL characters and
// without the bidirectional controls that reorder what a terminal shows.
func strip(s string) string {
	var b strings.Builder
	b.Grow(len(s))
	space := false // a space is pending
	emit := func(r rune) {
		if space && b.Len() > 0 {
			b.WriteByte(' ')
		}
		space = false
		b.WriteRune(r)
	}
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			emit(utf8.RuneError)
			i++
		case r == 0x1b: // ESC: skip the whole sequence
			i += escapeLen(s[i:])
		case r == 0x9b || r == 0x9d || r == 0x90 || r == 0x98 || r == 0x9e || r == 0x9f:
			// C1 introducers (CSI, OSC, DCS, SOS, PM, APC) as one rune.
			i += size + sequenceBody(s[i+size:], r == 0x9b)
		case r == '\n' || r == '\r' || r == '\t' || r == '\v' || r == '\f' || unicode.IsSpace(r):
			space = true
			i += size
		case r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) || isBidiControl(r):
			i += size
		default:
			emit(r)
			i += size
		}
	}
	return b.String()
}

// escapeLen is the length of the escape sequence at the start of s (which
// starts with ESC), as a terminal would read it; at least 1.
func escapeLen(s string) int {
	if len(s) < 2 {
		return len(s)
	}
	switch c := s[1]; {
	case c == '[': // CSI: parameters and intermediates, then a final byte
		return 2 + sequenceBody(s[2:], true)
	case c == ']' || c == 'P' || c == 'X' || c == '^' || c == '_':
		// OSC, DCS, SOS, PM, APC: a string ended by BEL or ST.
		return 2 + sequenceBody(s[2:], false)
	case c >= 0x20 && c <= 0x2f: // intermediates, then a final byte
		n := 1
		for n < len(s) && s[n] >= 0x20 && s[n] <= 0x2f {
			n++
		}
		if n < len(s) && s[n] >= 0x30 && s[n] <= 0x7e {
			n++
		}
		return n
	case c >= 0x30 && c <= 0x7e: // a two-byte sequence (ESC 7, ESC c…)
		return 2
	default:
		return 1
	}
}

// sequenceBody is the length of a CSI body (csi) or of a control string
// ended by BEL, ESC \ or the C1 ST, from the start of s. An unterminated
// sequence runs to the end of s: what follows it would have been swallowed
// by the terminal too.
func sequenceBody(s string, csi bool) int {
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		if csi {
			c := s[i]
			if c >= 0x40 && c <= 0x7e {
				return i + 1
			}
			if c < 0x20 || c > 0x7e {
				// Not a CSI byte: the sequence ends here, malformed.
				return i
			}
			i++
			continue
		}
		switch {
		case r == 0x07 || r == 0x9c:
			return i + size
		case r == 0x1b:
			if i+1 < len(s) && s[i+1] == '\\' {
				return i + 2
			}
			return i // a new sequence starts
		}
		i += size
	}
	return len(s)
}

func isBidiControl(r rune) bool {
	return (r >= 0x202a && r <= 0x202e) || (r >= 0x2066 && r <= 0x2069) || r == 0x200e || r == 0x200f || r == 0x061c
}

var (
	// A URL: scheme://, then anything up to white space, a character
	// that ends a URL quoted in an error message, or the ellipsis of a cut
	// (so that sanitising a cut text again keeps it as it is).
	urlRE = regexp.MustCompile(`(?i)\b[a-z][a-z0-9+.-]*://[^\s"'<>` + "`" + Ellipsis + `]+`)
	// A parameter that carries a credential, wherever it stands.
	paramRE = regexp.MustCompile(`(?i)\b(x-amz-security-token|x-amz-signature|x-amz-credential|signature|key-pair-id|policy|access_token|refresh_token|id_token|token|sig|password|passwd|secret|client_secret|api_key|apikey)=[^&\s"'<>;,` + "`" + `]+`)
)

// redact replaces every URL's query and fragment with ?REDACTED, its user
// information with REDACTED@, and the value of every credential-bearing
// parameter outside a URL with REDACTED.
func redact(s string) string {
	s = urlRE.ReplaceAllStringFunc(s, redactURL)
	return paramRE.ReplaceAllStringFunc(s, func(m string) string {
		k, _, _ := strings.Cut(m, "=")
		return k + "=" + Redacted
	})
}

func redactURL(u string) string {
	scheme, rest, _ := strings.Cut(u, "://")
	tail := ""
	if i := strings.IndexAny(rest, "?#"); i >= 0 {
		rest, tail = rest[:i], "?"+Redacted
	}
	authority, path, hasPath := strings.Cut(rest, "/")
	if i := strings.LastIndexByte(authority, '@'); i >= 0 {
		authority = Redacted + "@" + authority[i+1:]
	}
	if hasPath {
		authority += "/" + path
	}
	return scheme + "://" + authority + tail
}

// ShortDigest is the first 12 hex digits of a digest ("sha256:<hex>"), for
// tables; whatever the input, it never panics and returns printable text
// ("-" for nothing usable).
func ShortDigest(d string) string {
	_, hex, ok := strings.Cut(d, ":")
	if !ok {
		hex = d
	}
	hex = Line(hex, 0)
	if r := []rune(hex); len(r) > 12 {
		hex = string(r[:12])
	}
	if hex == "" {
		return "-"
	}
	return hex
}

// Strings applies Line(s, max) to every string reachable from v, which
// must be a pointer: struct fields (exported or not), slices, arrays,
// pointers and map values. A document read back from outside (a state file,
// an answer on a socket) is made safe in one call, fields added later
// included.
func Strings(v any, max int) {
	walk(reflect.ValueOf(v), max)
}

func walk(v reflect.Value, max int) {
	switch v.Kind() {
	case reflect.Pointer, reflect.Interface:
		if !v.IsNil() {
			walk(v.Elem(), max)
		}
	case reflect.Struct:
		for i := range v.NumField() {
			walk(v.Field(i), max)
		}
	case reflect.Slice, reflect.Array:
		for i := range v.Len() {
			walk(v.Index(i), max)
		}
	case reflect.Map:
		for _, k := range v.MapKeys() {
			e := reflect.New(v.Type().Elem()).Elem()
			e.Set(v.MapIndex(k))
			walk(e, max)
			v.SetMapIndex(k, e)
		}
	case reflect.String:
		if v.CanSet() {
			v.SetString(Line(v.String(), max))
		}
	}
}
