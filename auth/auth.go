// Package auth decides which credentials sign a pull from which registry
// host. The Docker Engine API never reads ~/.docker/config.json, so the
// caller of the API must choose and send credentials itself; this package
// makes that choice, per host, and never lets a secret reach a log line, an
// error or a status document.
package auth

import (
	"context"
	"log/slog"
)

// Secret is a credential value. Its String, GoString, MarshalText and
// LogValue methods never reveal it, so a Secret printed by mistake leaks
// nothing; call Reveal where the value must be sent.
type Secret string

// Reveal returns the secret value.
func (s Secret) Reveal() string { return string(s) }

func (s Secret) String() string {
	if s == "" {
		return ""
	}
	return "[redacted]"
}

// GoString keeps %#v from printing the value.
func (s Secret) GoString() string { return s.String() }

// MarshalText keeps JSON and other encoders from printing the value.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.String()), nil }

// LogValue keeps slog from printing the value.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.String()) }

// Credentials are what the Docker daemon is given to authenticate a pull.
// The zero value means anonymous.
type Credentials struct {
	Username string
	Password Secret
	// IdentityToken is an OAuth refresh token the daemon exchanges itself.
	IdentityToken Secret
	// RegistryToken is a bearer token sent to the registry as is.
	RegistryToken Secret
}

// Anonymous reports whether c carries no credentials.
func (c Credentials) Anonymous() bool {
	return c.Username == "" && c.Password == "" && c.IdentityToken == "" && c.RegistryToken == ""
}

// Source names where credentials come from, for logs and status. It is
// never a secret.
type Source string

// The credential sources.
const (
	SourceAnonymous Source = "anonymous"
	SourceGHCREnv   Source = "ghcr env credentials"
)

// Selection is the outcome of choosing credentials for one host.
type Selection struct {
	Host        string
	Source      Source
	Credentials Credentials
}

// GHCRHost is the GitHub Container Registry host. GHCR_USER and GHCR_TOKEN
// are sent to this host and no other.
const GHCRHost = "ghcr.io"

// Options configures a Selector.
type Options struct {
	GHCRUser  string
	GHCRToken Secret
}

// Selector chooses credentials for a registry host.
type Selector struct {
	opts Options
}

// NewSelector returns a Selector for opts.
func NewSelector(opts Options) (*Selector, error) {
	return &Selector{opts: opts}, nil
}

// Describe names the source Select would use for host, without fetching
// anything.
func (s *Selector) Describe(host string) Source {
	if host == GHCRHost && s.opts.GHCRUser != "" && s.opts.GHCRToken != "" {
		return SourceGHCREnv
	}
	return SourceAnonymous
}

// Select returns the credentials for host: GHCR_USER/GHCR_TOKEN for ghcr.io,
// otherwise anonymous.
func (s *Selector) Select(_ context.Context, host string) (Selection, error) {
	sel := Selection{Host: host, Source: s.Describe(host)}
	if sel.Source == SourceGHCREnv {
		sel.Credentials = Credentials{Username: s.opts.GHCRUser, Password: s.opts.GHCRToken}
	}
	return sel, nil
}
