// Package auth decides which credentials sign a pull from which registry
// host. The Docker Engine API never reads ~/.docker/config.json, so the
// caller of the API must choose and send credentials itself; this package
// makes that choice, per host, and never lets a secret reach a log line, an
// error or a status document.
package auth

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/docker/cli/cli/config/configfile"
)

// Secret is a credential value. It never reveals itself: every fmt verb
// (Format), String, GoString, MarshalText and LogValue print a redaction,
// and because the value sits behind a pointer, fmt printing a Secret inside
// an unexported field (where it cannot call these methods) shows an address,
// not the value. Call Reveal where the value must be sent. The zero value
// is the empty secret.
type Secret struct{ v *string }

// NewSecret wraps a credential value.
func NewSecret(s string) Secret {
	if s == "" {
		return Secret{}
	}
	return Secret{v: &s}
}

// Reveal returns the secret value.
func (s Secret) Reveal() string {
	if s.v == nil {
		return ""
	}
	return *s.v
}

// IsZero reports whether the secret is empty (not set).
func (s Secret) IsZero() bool { return s.Reveal() == "" }

// redaction is what a Secret prints: empty when not set, so that "not set"
// stays visible, else a fixed mark.
func (s Secret) redaction() string {
	if s.IsZero() {
		return ""
	}
	return "[redacted]"
}

func (s Secret) String() string { return s.redaction() }

// GoString keeps %#v from printing the value.
func (s Secret) GoString() string { return s.redaction() }

// Format prints the redaction for every verb and flag, %d, %x and %t
// included, which would otherwise bypass String.
func (s Secret) Format(f fmt.State, _ rune) { _, _ = io.WriteString(f, s.redaction()) }

// MarshalText keeps JSON and other encoders from printing the value.
func (s Secret) MarshalText() ([]byte, error) { return []byte(s.redaction()), nil }

// LogValue keeps slog from printing the value.
func (s Secret) LogValue() slog.Value { return slog.StringValue(s.redaction()) }

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
	return c.Username == "" && c.Password.IsZero() && c.IdentityToken.IsZero() && c.RegistryToken.IsZero()
}

// Source names where credentials come from, for logs and status. It is
// never a secret.
type Source string

// The fixed credential sources; helper and ECR sources carry details
// ("config.json credHelpers: ecr-login", "ecr-login (instance role; token
// expires …)").
const (
	SourceAnonymous Source = "anonymous"
	SourceGHCREnv   Source = "ghcr env credentials"
	SourceAuths     Source = "config.json auths"
)

// ErrUnavailable marks a failure to get credentials that should pass on
// its own: a credential helper that did not answer in time, the ECR API
// unreachable, throttling or failing (5xx), or an ECR token that expired
// because its renewal failed that way. The caller retries with backoff;
// other Select errors need an operator (bad config.json, access denied).
var ErrUnavailable = errors.New("credentials temporarily unavailable")

// unavailable wraps err so that errors.Is(err, ErrUnavailable) holds and
// its text is unchanged.
type unavailable struct{ err error }

func (u unavailable) Error() string   { return u.err.Error() }
func (u unavailable) Unwrap() []error { return []error{u.err, ErrUnavailable} }
func markUnavailable(err error) error { return unavailable{err} }

// Selection is the outcome of choosing credentials for one host.
type Selection struct {
	Host        string
	Source      Source
	Credentials Credentials
	// Expires is when the credentials stop working, when known (ECR).
	Expires time.Time
	// HelperFailure says which credential helper failed, and how, when the
	// selection went on without it as the docker CLI does (to the auths
	// entry, or anonymous); empty otherwise. It holds no secret: a pull
	// that then fails on auth names it.
	HelperFailure string
}

// GHCRHost is the GitHub Container Registry host. GHCR_USER and GHCR_TOKEN
// are sent to this host and no other.
const GHCRHost = "ghcr.io"

// DefaultHelperTimeout is how long a credential helper may take.
const DefaultHelperTimeout = 10 * time.Second

// Options configures a Selector.
type Options struct {
	GHCRUser  string
	GHCRToken Secret
	// DockerConfigDir holds config.json (see DockerConfigDir); empty means
	// no config.json.
	DockerConfigDir string
	// ECRCacheDir is where ecr-login caches tokens (the agent's state
	// directory, never $HOME).
	ECRCacheDir string
	// HelperTimeout bounds a credential helper, and a fetch of an ECR
	// token (the instance role's credentials and the ECR API call); 0
	// means DefaultHelperTimeout.
	HelperTimeout time.Duration
	// HelperEnv is the whole environment credential helpers run with; nil
	// means HelperEnv(os.Environ()): PATH, HOME, DOCKER_CONFIG, AWS_* and
	// the proxy variables of the agent's own environment.
	HelperEnv []string
	// Logger receives warnings; nil discards them.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Selector chooses credentials for a registry host. For each host, in
// order: GHCR_USER/GHCR_TOKEN for ghcr.io; the helper config.json names
// for the host (credHelpers[host], else credsStore), combined with the
// auths entry as the docker CLI combines them; ecr-login in-process for
// ECR hosts no credHelpers entry names; the auths entry; anonymous.
// config.json is read at each selection, so an edit takes effect without
// a restart.
type Selector struct {
	opts Options
	ecr  *ecrProvider
}

// NewSelector returns a Selector for opts.
func NewSelector(opts Options) (*Selector, error) {
	if opts.HelperTimeout <= 0 {
		opts.HelperTimeout = DefaultHelperTimeout
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.HelperEnv == nil {
		opts.HelperEnv = HelperEnv(os.Environ())
	}
	return &Selector{opts: opts, ecr: &ecrProvider{cacheDir: opts.ECRCacheDir, log: opts.Logger, now: opts.Now, timeout: opts.HelperTimeout, http: ecrHTTPClient()}}, nil
}

func (s *Selector) hasGHCR(host string) bool {
	return host == GHCRHost && s.opts.GHCRUser != "" && !s.opts.GHCRToken.IsZero()
}

// serverAddress is how config.json and helpers name host.
func serverAddress(host string) string {
	if host == "docker.io" || host == "index.docker.io" || host == "registry-1.docker.io" {
		return DockerHubServer
	}
	return host
}

func (s *Selector) dockerConfig() (*configfile.ConfigFile, error) {
	if s.opts.DockerConfigDir == "" {
		return configfile.New(""), nil
	}
	return loadDockerConfig(s.opts.DockerConfigDir)
}

// helperFor is the credential helper the docker CLI would ask for
// server, and which key of config.json names it ("credHelpers" or
// "credsStore"). A credHelpers entry for the server wins even when it is
// empty: the CLI then reads the auths entry and skips credsStore. ecr
// reports that no helper is named but the host is an ECR host, which
// the ecr-login library serves in-process.
func helperFor(cf *configfile.ConfigFile, host string) (helper, key string, ecr bool) {
	if h, ok := cf.CredentialHelpers[serverAddress(host)]; ok {
		return h, "credHelpers", false
	}
	if IsECRHost(host) {
		return "", "", true
	}
	return cf.CredentialsStore, "credsStore", false
}

// Describe names the source Select would use for host, without running a
// helper or contacting anything.
func (s *Selector) Describe(host string) Source {
	if s.hasGHCR(host) {
		return SourceGHCREnv
	}
	cf, err := s.dockerConfig()
	if err != nil {
		return Source("config.json unreadable")
	}
	helper, key, ecr := helperFor(cf, host)
	switch {
	case ecr:
		return "ecr-login (AWS default credential chain)"
	case helper != "":
		return Source("config.json " + key + ": " + helper)
	}
	if _, ok := fromAuths(cf, serverAddress(host)); ok {
		return SourceAuths
	}
	return SourceAnonymous
}

// Select returns the credentials for host, chosen as the docker CLI
// chooses them from the same config.json (see viaHelper), with ghcr env
// credentials first and ecr-login in-process for ECR hosts no helper is
// named for. An error means credentials should exist but could not be
// had (a helper hung, ECR refused, the config.json is broken): the pull
// would fail on auth, and the error says why.
func (s *Selector) Select(ctx context.Context, host string) (Selection, error) {
	sel := Selection{Host: host, Source: SourceAnonymous}
	if s.hasGHCR(host) {
		sel.Source = SourceGHCREnv
		sel.Credentials = Credentials{Username: s.opts.GHCRUser, Password: s.opts.GHCRToken}
		return sel, nil
	}
	cf, err := s.dockerConfig()
	if err != nil {
		return sel, err
	}
	helper, key, ecr := helperFor(cf, host)
	switch {
	case ecr:
		return s.viaECR(ctx, host)
	case helper != "":
		return s.viaHelper(ctx, cf, host, helper, key)
	}
	if c, ok := fromAuths(cf, serverAddress(host)); ok {
		sel.Source, sel.Credentials = SourceAuths, c
	}
	return sel, nil
}

func (s *Selector) viaECR(ctx context.Context, host string) (Selection, error) {
	sel := Selection{Host: host, Source: "ecr-login"}
	r, err := s.ecr.get(ctx, host)
	if err != nil {
		return sel, err
	}
	sel.Credentials, sel.Expires = r.creds, r.expires
	sel.Source = Source("ecr-login (" + r.chain + ")")
	if !r.expires.IsZero() {
		sel.Source = Source("ecr-login (" + r.chain + "; token expires " + r.expires.UTC().Format(time.RFC3339) + ")")
	}
	return sel, nil
}

// viaHelper asks helper for the credentials of host and combines its
// answer with the config.json auths entry as the docker CLI's native
// store does: the helper's answer replaces the entry's user, password
// and identity token; a helper that has nothing for the host ("credentials
// not found") replaces them with nothing, which means anonymous; a helper
// that fails in any other way (not installed, an error, output that is
// not credentials) leaves the entry as it is, and the CLI ignores the
// failure. Two deliberate differences: a helper that does not answer
// within the helper timeout is killed and the pull retried (the CLI
// waits for ever), and a helper name with a path was refused with the
// whole config.json (ParseDockerConfig).
func (s *Selector) viaHelper(ctx context.Context, cf *configfile.ConfigFile, host, helper, key string) (Selection, error) {
	server := serverAddress(host)
	sel := Selection{Host: host, Source: Source("config.json " + key + ": " + helper)}
	entry, _ := fromAuths(cf, server)
	c, err := runHelper(ctx, helper, server, s.opts.HelperTimeout, s.opts.HelperEnv)
	switch {
	case err == nil:
		c.RegistryToken = entry.RegistryToken
		sel.Credentials = c
		return sel, nil
	case errors.Is(err, ErrNoCredentials):
		sel.Credentials = Credentials{RegistryToken: entry.RegistryToken}
		return sel, nil
	case errors.Is(err, ErrUnavailable):
		return sel, err
	}
	fallback := SourceAnonymous
	if !entry.Anonymous() {
		fallback = SourceAuths
	}
	s.opts.Logger.Warn("credential helper failed; using what config.json auths holds for the host, as the docker CLI does", "host", host, "helper", helper, "using", string(fallback), "error", err.Error())
	sel.HelperFailure = key + ": " + helper + " failed, so " + string(fallback) + " was used, as the docker CLI does: " + err.Error()
	sel.Source = Source(string(fallback) + " (" + key + ": " + helper + " failed)")
	sel.Credentials = entry
	return sel, nil
}
