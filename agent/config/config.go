package config

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/containerd/platforms"
	"github.com/opencontainers/go-digest"

	"github.com/molecule-ai/pull-agent/auth"
	"github.com/molecule-ai/pull-agent/internal/safetext"
)

// The keys pull-agent reads from its env file and the process environment.
const (
	KeyRegistry   = "MOLECULE_IMAGE_REGISTRY"
	KeyRuntimes   = "MOLECULE_RUNTIMES"
	KeyPins       = "MOLECULE_RUNTIME_PINS"
	KeyPlatform   = "MOLECULE_IMAGE_PLATFORM"
	KeyGHCRUser   = "GHCR_USER"
	KeyGHCRToken  = "GHCR_TOKEN"
	KeyDockerHost = "DOCKER_HOST"
	KeyAlias      = "MOLECULE_IMAGE_ALIAS_PREFIX"
	KeyPrune      = "MOLECULE_PRUNE_PREVIOUS"
	KeyDiskMargin = "MOLECULE_DISK_MARGIN_MB"
	KeyFallback   = "MOLECULE_IMAGE_FALLBACK_REGISTRY"
	KeySpread     = "MOLECULE_FLIP_SPREAD"
)

// The keys of the Docker daemon's TLS, read like DOCKER_HOST and named as
// the docker CLI names them: DOCKER_TLS_VERIFY set to any value (even 0)
// turns TLS on; DOCKER_CERT_PATH holds ca.pem, cert.pem and key.pem.
const (
	KeyDockerTLSVerify = "DOCKER_TLS_VERIFY"
	KeyDockerCertPath  = "DOCKER_CERT_PATH"
)

// maxValueRunes bounds a value from outside quoted in an error message,
// as safetext.Line makes it one sanitised line: a 1 MB line must not come
// back as a 1 MB error in the log and the state document.
const maxValueRunes = 160

// defaultPrefix is the registry prefix used when MOLECULE_IMAGE_REGISTRY is
// unset or empty.
const defaultPrefix = "ghcr.io/molecule-ai"

// DefaultEnvFile is where the systemd unit keeps the env file.
const DefaultEnvFile = "/etc/pull-agent/pull-agent.env"

// defaultDockerHost is the Docker daemon's socket when DOCKER_HOST is unset.
const defaultDockerHost = "unix:///var/run/docker.sock"

// KnownRuntimes returns the workspace-template runtimes the platform ships,
// in the order images are resolved (alphabetical).
func KnownRuntimes() []string {
	return []string{"autogen", "claude-code", "codex", "crewai", "deepagents", "gemini-cli", "hermes", "langgraph", "openclaw"}
}

// Config is the effective configuration: the env file layered over the
// process environment, validated. The zero value is not valid; build one
// with LoadConfig.
type Config struct {
	// Prefix is the registry and path every image name starts with, without
	// a trailing slash, e.g. "ghcr.io/molecule-ai".
	Prefix string
	// Runtimes are the runtimes to keep warm, de-duplicated, in priority
	// order: the order MOLECULE_RUNTIMES lists them in (KnownRuntimes'
	// order by default). The first is pulled first.
	Runtimes []string
	// Fallbacks are prefixes, in order, that serve an image the host does
	// not hold when the primary (Prefix) refuses it; the image is then
	// tagged under the primary's name.
	Fallbacks []string
	// Pins maps a runtime to the manifest digest it is pinned to.
	Pins map[string]digest.Digest
	// Platform is the normalized platform passed to every pull ("linux/amd64"),
	// or empty for the daemon's own.
	Platform string
	// GHCRUser and GHCRToken are basic credentials for ghcr.io.
	GHCRUser  string
	GHCRToken auth.Secret
	// DockerHost is the Docker Engine API address: a unix socket, or a
	// TCP address that is loopback or used with DockerTLSVerify.
	DockerHost string
	// DockerTLSVerify (DOCKER_TLS_VERIFY set to any value) speaks TLS to
	// DockerHost: the daemon's certificate is verified against ca.pem in
	// DockerCertPath, and cert.pem and key.pem there are presented.
	DockerTLSVerify bool
	// DockerCertPath is the directory of ca.pem, cert.pem and key.pem
	// (DOCKER_CERT_PATH; default the docker CLI's config directory). Its
	// files are checked only with DockerTLSVerify.
	DockerCertPath string
	// AliasPrefix, if set, also names every pulled image
	// <AliasPrefix>/workspace-template-<runtime>:latest.
	AliasPrefix string
	// PrunePrevious removes the previous prefix's images (those the agent
	// pulled, no container uses, not alias targets) once the new set is warm.
	PrunePrevious bool
	// DiskMarginBytes is kept free beyond an image's compressed size before
	// a pull starts; -1 turns the disk guard off.
	DiskMarginBytes int64
	// FlipSpread spreads a fleet's prefix change: each host waits a delay
	// of its own in [0, FlipSpread) before pulling the new set.
	FlipSpread time.Duration
}

// TargetPlatform is the platform images are checked and sized for: the
// configured one, or linux/<this machine's architecture> when none is
// (pulls then leave the choice to the daemon).
func (c Config) TargetPlatform() string { return PlatformOrDefault(c.Platform) }

// PlatformOrDefault is p, or linux/<this machine's architecture> when p
// is empty.
func PlatformOrDefault(p string) string {
	if p == "" {
		return "linux/" + runtime.GOARCH
	}
	return p
}

// DefaultDiskMarginMB is the disk guard's default safety margin.
const DefaultDiskMarginMB = 1024

// configError is one configuration value that was refused.
type configError struct {
	Key    string
	Value  string // may be abbreviated; never a secret
	Source string // "path:line" or "environment"
	Reason string
}

func (e *configError) Error() string {
	return fmt.Sprintf("%s: %s=%q: %s", e.Source, e.Key, safetext.Line(e.Value, maxValueRunes), e.Reason)
}

// ReadEnvFile opens and parses the env file at path. A missing file is
// reported with an error matching fs.ErrNotExist.
func ReadEnvFile(path string) ([]EnvVar, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("opening env file: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("opening env file: %w", err)
	}
	if st.IsDir() {
		return nil, &envFileError{File: path, Msg: "is a directory, not a file"}
	}
	return parseEnvFile(path, f)
}

// WarnEnvFileMode logs a warning for each way the env file at path lets
// someone other than root steer the agent or read its secret: the file
// writable by group or others, owned by another user than root or this
// process, its directory writable by group or others (without the sticky
// bit: anyone there can rename a file over it), or, when it assigns
// GHCR_TOKEN, readable by group or others. Whoever writes the file chooses
// the images this host runs.
func WarnEnvFileMode(log *slog.Logger, path string, vars []EnvVar) {
	st, err := os.Stat(path)
	if err != nil {
		return
	}
	mode := fmt.Sprintf("%04o", st.Mode().Perm())
	if st.Mode().Perm()&0o022 != 0 {
		log.Warn("env file is writable by group or others, who can then choose the images this host runs; run chmod go-w", "env_file", path, "mode", mode)
	}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok && sys.Uid != 0 && int(sys.Uid) != os.Geteuid() {
		log.Warn("env file is owned by another user, who can then choose the images this host runs; run chown root", "env_file", path, "uid", sys.Uid)
	}
	if dir, err := os.Stat(filepath.Dir(path)); err == nil && dir.Mode().Perm()&0o022 != 0 && dir.Mode()&os.ModeSticky == 0 {
		log.Warn("env file directory is writable by group or others, who can then replace the file; run chmod go-w", "dir", filepath.Dir(path), "mode", fmt.Sprintf("%04o", dir.Mode().Perm()))
	}
	for _, v := range vars {
		if v.Key == KeyGHCRToken && v.Value != "" && st.Mode().Perm()&0o044 != 0 {
			log.Warn("env file holds GHCR_TOKEN and is readable by group or others; run chmod 600", "env_file", path, "mode", mode)
			return
		}
	}
}

// keys are the keys pull-agent reads from its env file.
func keys() []string {
	return []string{KeyRegistry, KeyRuntimes, KeyPins, KeyPlatform, KeyGHCRUser, KeyGHCRToken, KeyDockerHost, KeyDockerTLSVerify, KeyDockerCertPath, KeyAlias, KeyPrune, KeyDiskMargin, KeyFallback, KeySpread}
}

// WarnUnusedKeys logs a warning for each key of the env file that
// pull-agent does not read. The unit has no EnvironmentFile=, so such a key
// reaches nothing: a variable for the process itself (HTTPS_PROXY,
// AWS_REGION…) belongs in a systemd drop-in as Environment=. Only key names
// are logged.
func WarnUnusedKeys(log *slog.Logger, path string, vars []EnvVar) {
	for _, v := range vars {
		if !slices.Contains(keys(), v.Key) {
			log.Warn("env file sets a key pull-agent does not read; for the process environment (proxy, AWS_*) use a systemd drop-in with Environment=", "env_file", path, "key", v.Key, "line", v.Line)
		}
	}
}

// IsNotExist reports whether err says the env file does not exist.
func IsNotExist(err error) bool { return errors.Is(err, fs.ErrNotExist) }

// LoadConfig builds the effective configuration. A key assigned in fileVars
// (read from file) wins; a key absent there falls back to getenv, then to the
// default. Every refused value is reported, joined into one error; nothing
// partial is returned.
func LoadConfig(file string, fileVars []EnvVar, getenv func(string) string) (Config, error) {
	l := layered{file: file, vars: map[string]EnvVar{}, getenv: getenv}
	for _, v := range fileVars {
		l.vars[v.Key] = v
	}
	var cfg Config
	// In this order, so that the joined error lists the keys as before.
	errs := l.loadImageSet(&cfg)
	errs = append(errs, l.loadCredentials(&cfg)...)
	errs = append(errs, l.loadPolicy(&cfg)...)
	errs = append(errs, l.loadDocker(&cfg)...)
	if err := errors.Join(errs...); err != nil {
		return Config{}, err
	}
	return cfg, nil
}

// loadImageSet reads what names the images: prefix, runtimes, pins and
// platform.
func (l layered) loadImageSet(cfg *Config) []error {
	var errs []error
	prefix, src := l.get(KeyRegistry)
	p, err := ParsePrefix(prefix)
	if err != nil {
		errs = append(errs, &configError{Key: KeyRegistry, Value: prefix, Source: src, Reason: err.Error()})
	}
	cfg.Prefix = p

	rts, src := l.get(KeyRuntimes)
	cfg.Runtimes, err = parseRuntimes(rts)
	if err != nil {
		errs = append(errs, &configError{Key: KeyRuntimes, Value: rts, Source: src, Reason: err.Error()})
	}

	pins, src := l.get(KeyPins)
	cfg.Pins, err = parsePins(pins, cfg.Runtimes)
	if err != nil {
		errs = append(errs, &configError{Key: KeyPins, Value: pins, Source: src, Reason: err.Error()})
	}

	fb, src := l.get(KeyFallback)
	cfg.Fallbacks, err = parseFallbacks(fb, cfg.Prefix)
	if err != nil {
		errs = append(errs, &configError{Key: KeyFallback, Value: fb, Source: src, Reason: err.Error()})
	}

	plat, src := l.get(KeyPlatform)
	cfg.Platform, err = parsePlatform(plat)
	if err != nil {
		errs = append(errs, &configError{Key: KeyPlatform, Value: plat, Source: src, Reason: err.Error()})
	}
	return errs
}

// loadCredentials reads the ghcr.io user and token, which go together.
func (l layered) loadCredentials(cfg *Config) []error {
	cfg.GHCRUser, _ = l.get(KeyGHCRUser)
	tok, _ := l.get(KeyGHCRToken)
	cfg.GHCRToken = auth.NewSecret(tok)
	if (cfg.GHCRUser == "") != (tok == "") {
		return []error{fmt.Errorf("%s and %s must be set together; only one of them is set", KeyGHCRUser, KeyGHCRToken)}
	}
	return nil
}

// loadPolicy reads what the agent does besides pulling: the alias, the
// pruning of the previous prefix and the disk guard's margin.
func (l layered) loadPolicy(cfg *Config) []error {
	var errs []error
	if alias, src := l.get(KeyAlias); alias != "" {
		a, err := ParsePrefix(alias)
		switch {
		case err != nil:
			errs = append(errs, &configError{Key: KeyAlias, Value: alias, Source: src, Reason: err.Error()})
		case a == cfg.Prefix:
			errs = append(errs, &configError{Key: KeyAlias, Value: alias, Source: src, Reason: "is the image prefix itself; set it to the prefix other software still uses (the previous one)"})
		default:
			cfg.AliasPrefix = a
		}
	}
	if v, src := l.get(KeyPrune); v != "" {
		switch strings.ToLower(v) {
		case "true", "yes", "1", "on":
			cfg.PrunePrevious = true
		case "false", "no", "0", "off":
		default:
			errs = append(errs, &configError{Key: KeyPrune, Value: v, Source: src, Reason: "write true or false"})
		}
	}
	if v, src := l.get(KeySpread); v != "" {
		d, err := parseSpread(v)
		if err != nil {
			errs = append(errs, &configError{Key: KeySpread, Value: v, Source: src, Reason: err.Error()})
		}
		cfg.FlipSpread = d
	}
	cfg.DiskMarginBytes = DefaultDiskMarginMB << 20
	if v, src := l.get(KeyDiskMargin); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		switch {
		case err != nil || n < -1:
			errs = append(errs, &configError{Key: KeyDiskMargin, Value: v, Source: src, Reason: "write a number of MiB (0 or more), or -1 to turn the disk guard off"})
		case n == -1:
			cfg.DiskMarginBytes = -1
		default:
			cfg.DiskMarginBytes = n << 20
		}
	}
	return errs
}

// loadDocker reads where the Docker daemon is and, with TLS, the files
// that reach it.
func (l layered) loadDocker(cfg *Config) []error {
	host, hostSrc := l.get(KeyDockerHost)
	if host == "" {
		host, hostSrc = defaultDockerHost, "default ("+KeyDockerHost+" unset)"
	}
	verify, _ := l.get(KeyDockerTLSVerify)
	certPath, certSrc := l.get(KeyDockerCertPath)
	if certPath == "" {
		certPath, certSrc = auth.DockerConfigDir(l.processEnv), "default ("+KeyDockerCertPath+" unset)"
	}
	cfg.DockerHost, cfg.DockerTLSVerify, cfg.DockerCertPath = host, verify != "", certPath
	if err := checkDockerHost(host, cfg.DockerTLSVerify); err != nil {
		return []error{&configError{Key: KeyDockerHost, Value: redactDockerHost(host), Source: hostSrc, Reason: err.Error()}}
	}
	if cfg.DockerTLSVerify {
		if err := checkDockerCertFiles(certPath); err != nil {
			return []error{&configError{Key: KeyDockerCertPath, Value: certPath, Source: certSrc, Reason: err.Error()}}
		}
	}
	return nil
}

type layered struct {
	file   string
	vars   map[string]EnvVar
	getenv func(string) string
}

// processEnv is key in the process environment alone (HOME and
// DOCKER_CONFIG, which locate the docker CLI's directory).
func (l layered) processEnv(key string) string {
	if l.getenv == nil {
		return ""
	}
	return l.getenv(key)
}

// get returns the value of key and where it came from.
func (l layered) get(key string) (string, string) {
	if v, ok := l.vars[key]; ok {
		return v.Value, fmt.Sprintf("%s:%d", l.file, v.Line)
	}
	if l.getenv != nil {
		return l.getenv(key), "environment"
	}
	return "", "environment"
}

// MaxFlipSpread bounds MOLECULE_FLIP_SPREAD: a day is a slow rollout.
const MaxFlipSpread = 24 * time.Hour

// parseSpread parses a duration ("90s", "15m", "1h30m"; "0" for none).
func parseSpread(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	switch {
	case err != nil:
		return 0, errors.New("write a duration such as 90s, 15m or 1h (0 flips at once)")
	case d < 0:
		return 0, errors.New("must not be negative")
	case d > MaxFlipSpread:
		return 0, fmt.Errorf("is more than %s", MaxFlipSpread)
	}
	return d, nil
}

var runtimeName = regexp.MustCompile(`^[a-z0-9]+(-+[a-z0-9]+)*$`)

// parseRuntimes parses a comma-separated runtime list. An empty value selects
// KnownRuntimes. Names are trimmed and de-duplicated; the order is kept:
// it is the priority order.
func parseRuntimes(s string) ([]string, error) {
	if strings.TrimSpace(s) == "" {
		return KnownRuntimes(), nil
	}
	var out []string
	seen := map[string]bool{}
	for _, name := range strings.Split(s, ",") {
		name = strings.TrimSpace(name)
		if name == "" {
			continue // a trailing or doubled comma
		}
		if len(name) > 64 || !runtimeName.MatchString(name) {
			return nil, fmt.Errorf("runtime %q is not a valid name: use lower-case letters, digits and '-', not at either end, at most 64 characters", safetext.Line(name, maxValueRunes))
		}
		if !seen[name] {
			seen[name] = true
			out = append(out, name)
		}
	}
	if len(out) == 0 {
		return nil, errors.New("names no runtime; leave it empty for the default nine")
	}
	return out, nil
}

// parsePins parses comma-separated runtime=sha256:<hex> pairs. Every pinned
// runtime must be in runtimes.
func parsePins(s string, runtimes []string) (map[string]digest.Digest, error) {
	pins := map[string]digest.Digest{}
	for _, pair := range strings.Split(s, ",") {
		pair = strings.TrimSpace(pair)
		if pair == "" {
			continue
		}
		rt, d, ok := strings.Cut(pair, "=")
		rt, d = strings.TrimSpace(rt), strings.TrimSpace(d)
		if !ok || rt == "" || d == "" {
			return nil, fmt.Errorf("%q is not runtime=sha256:<64 hex digits>", safetext.Line(pair, maxValueRunes))
		}
		if !slices.Contains(runtimes, rt) {
			return nil, fmt.Errorf("pin for runtime %q, which is not in the runtime list %v", rt, runtimes)
		}
		dg, err := digest.Parse(d)
		if err != nil || dg.Algorithm() != digest.SHA256 {
			return nil, fmt.Errorf("pin for %s: %q is not a digest of the form sha256:<64 lower-case hex digits>", rt, safetext.Line(d, maxValueRunes))
		}
		if _, dup := pins[rt]; dup {
			return nil, fmt.Errorf("runtime %q is pinned twice", rt)
		}
		pins[rt] = dg
	}
	return pins, nil
}

// parsePlatform validates an os/arch[/variant] platform and returns its
// normalized form. Empty means the daemon's own platform.
func parsePlatform(s string) (string, error) {
	if s == "" {
		return "", nil
	}
	if n := strings.Count(s, "/"); n < 1 || n > 2 {
		return "", errors.New("write the platform as os/arch or os/arch/variant, e.g. linux/amd64")
	}
	p, err := platforms.Parse(s)
	if err != nil {
		return "", fmt.Errorf("not a platform: %v", err)
	}
	if q, err := platforms.Parse(p.OS); err != nil || q.OS != p.OS {
		return "", fmt.Errorf("unknown operating system %q", p.OS)
	}
	if q, err := platforms.Parse(p.Architecture); err != nil || q.Architecture != p.Architecture {
		return "", fmt.Errorf("unknown architecture %q", p.Architecture)
	}
	return platforms.Format(p), nil
}
