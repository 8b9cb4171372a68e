package auth

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

func TestSecretNeverPrints(t *testing.T) {
	const tok = "ghp_do-not-print-me"
	c := Credentials{Username: "bot", Password: Secret(tok), IdentityToken: Secret(tok)}
	var logs bytes.Buffer
	slog.New(slog.NewJSONHandler(&logs, nil)).Info("x", "creds", c, "token", c.Password)
	js, err := json.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	for name, out := range map[string]string{
		"%v":   fmt.Sprintf("%v", c),
		"%+v":  fmt.Sprintf("%+v", c),
		"%#v":  fmt.Sprintf("%#v", c),
		"%s":   fmt.Sprintf("%s", c.Password), //lint:ignore S1025 the %s verb itself is under test
		"json": string(js),
		"slog": logs.String(),
	} {
		if strings.Contains(out, tok) {
			t.Errorf("%s leaks the secret: %s", name, out)
		}
	}
	if c.Password.Reveal() != tok {
		t.Fatal("Reveal must return the value")
	}
	if Secret("").String() != "" {
		t.Fatal("an empty secret prints as empty, so 'not set' stays visible")
	}
}

func TestSelect(t *testing.T) {
	s, err := NewSelector(Options{GHCRUser: "bot", GHCRToken: "tok"})
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
