package auth

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// leaky holds Secrets where fmt cannot call their methods (unexported
// fields) and where it can (exported fields, slices, maps, pointers).
type leaky struct {
	hidden   Secret
	hiddenP  *Secret
	hiddenS  []Secret
	hiddenM  map[string]Secret
	hiddenC  Credentials
	Shown    Secret
	ShownS   []Secret
	ShownM   map[Secret]Secret
	ShownP   *Secret
	ShownC   Credentials
	ShownAny any
}

func TestSecretNeverPrints(t *testing.T) {
	const tok = "ghp_do-not-print-me"
	sec := NewSecret(tok)
	c := Credentials{Username: "bot", Password: sec, IdentityToken: sec, RegistryToken: sec}
	l := leaky{hidden: sec, hiddenP: &sec, hiddenS: []Secret{sec}, hiddenM: map[string]Secret{"k": sec}, hiddenC: c,
		Shown: sec, ShownS: []Secret{sec}, ShownM: map[Secret]Secret{sec: sec}, ShownP: &sec, ShownC: c, ShownAny: sec}
	values := map[string]any{"secret": sec, "pointer": &sec, "credentials": c, "nested": l, "nested pointer": &l,
		"slice": []Secret{sec}, "map": map[string]Secret{"k": sec}, "selection": Selection{Credentials: c}}
	var outs []string
	for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%d", "%t", "%x", "%X", "%o", "%b", "%c", "%U", "%e", "%f", "%g", "%p", "%T", "%10.3s", "%-8v", "%08d", "% x", "%+q", "%#x"} {
		for name, v := range values {
			out := fmt.Sprintf(verb, v)
			outs = append(outs, verb+" "+name+": "+out)
		}
	}
	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("x", "creds", c, "token", sec, "nested", l)
	slog.New(slog.NewTextHandler(&logs, nil)).Info("x", "creds", c, "token", sec, "nested", l)
	js, err := json.Marshal(map[string]any{"c": c, "l": l, "s": sec})
	if err != nil {
		t.Fatal(err)
	}
	outs = append(outs, "json: "+string(js), "slog: "+logs.String(), "Sprint: "+fmt.Sprint(sec, c, l), "Sprintln: "+fmt.Sprintln(sec, c, l))
	for _, out := range outs {
		// Neither the value nor any run of it long enough to matter.
		for _, part := range []string{tok, "do-not-print", hex.EncodeToString([]byte(tok))[:16], strings.ToUpper(hex.EncodeToString([]byte(tok)))[:16]} {
			if strings.Contains(out, part) {
				t.Errorf("leaks the secret: %s", out)
			}
		}
	}
	if c.Password.Reveal() != tok {
		t.Fatal("Reveal must return the value")
	}
	if NewSecret("").String() != "" || fmt.Sprintf("%v", Secret{}) != "" || !(Secret{}).IsZero() {
		t.Fatal("an empty secret prints as empty, so 'not set' stays visible")
	}
	if fmt.Sprintf("%d", sec) != "[redacted]" {
		t.Fatalf("%%d prints %q", fmt.Sprintf("%d", sec))
	}
}

func TestSelect(t *testing.T) {
	s, err := NewSelector(Options{GHCRUser: "bot", GHCRToken: NewSecret("tok")})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		host string
		src  Source
	}{
		{"ghcr.io", SourceGHCREnv},
		{"GHCR.IO", SourceAnonymous}, // hosts come normalized; no case folding guesses
		{"ghcr.io:443", SourceAnonymous},
		{"docker.io", SourceAnonymous},
		{"evil-ghcr.io", SourceAnonymous},
		{"ghcr.io.evil.test", SourceAnonymous},
	}
	for _, tt := range tests {
		sel, err := s.Select(context.Background(), tt.host)
		if err != nil {
			t.Fatal(err)
		}
		if sel.Source != tt.src || s.Describe(tt.host) != tt.src {
			t.Errorf("%s: source %s, want %s", tt.host, sel.Source, tt.src)
		}
		if (tt.src == SourceAnonymous) != sel.Credentials.Anonymous() {
			t.Errorf("%s: credentials %+v with source %s", tt.host, sel.Credentials, sel.Source)
		}
	}
	anon, _ := NewSelector(Options{})
	if got := anon.Describe("ghcr.io"); got != SourceAnonymous {
		t.Errorf("without GHCR credentials: %s", got)
	}
}
