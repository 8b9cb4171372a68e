package auth

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/docker/cli/cli/config/configfile"
	clicreds "github.com/docker/cli/cli/config/credentials"
	"github.com/docker/docker-credential-helpers/client"
	"github.com/docker/docker-credential-helpers/credentials"
)

// DockerHubServer is the server address the docker CLI uses for Docker Hub
// in config.json and with credential helpers.
const DockerHubServer = "https://index.docker.io/v1/"

// DockerConfigDir returns where the docker CLI would read config.json:
// $DOCKER_CONFIG, else $HOME/.docker, else /root/.docker (a systemd service
// has no HOME).
func DockerConfigDir(getenv func(string) string) string {
	if d := getenv("DOCKER_CONFIG"); d != "" {
		return d
	}
	if h := getenv("HOME"); h != "" {
		return filepath.Join(h, ".docker")
	}
	return "/root/.docker"
}

// ParseDockerConfig parses a config.json. name is used in errors.
func ParseDockerConfig(name string, r io.Reader) (*configfile.ConfigFile, error) {
	cf := configfile.New(name)
	if err := cf.LoadFromReader(r); err != nil {
		return nil, fmt.Errorf("%s: not a valid docker config.json: %w", name, err)
	}
	for host, h := range cf.CredentialHelpers {
		if err := ValidHelperName(h); err != nil {
			return nil, fmt.Errorf("%s: credHelpers[%q]: %w", name, host, err)
		}
	}
	if cf.CredentialsStore != "" {
		if err := ValidHelperName(cf.CredentialsStore); err != nil {
			return nil, fmt.Errorf("%s: credsStore: %w", name, err)
		}
	}
	return cf, nil
}

// loadDockerConfig reads dir/config.json; a missing file is an empty
// configuration.
func loadDockerConfig(dir string) (*configfile.ConfigFile, error) {
	path := filepath.Join(dir, "config.json")
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return configfile.New(path), nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", path, err)
	}
	return ParseDockerConfig(path, bytes.NewReader(data))
}

var helperName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)

// ValidHelperName refuses a credential helper name that could name another
// program than docker-credential-<name> on PATH: a path separator, white
// space or anything else unusual.
func ValidHelperName(name string) error {
	if len(name) > 64 || !helperName.MatchString(name) {
		return fmt.Errorf("credential helper name %q refused: use letters, digits, '.', '_' and '-' only (no path, no white space); the helper must be docker-credential-<name> on PATH", name)
	}
	return nil
}

// ErrNoCredentials is returned by a helper that has no credentials for the
// server.
var ErrNoCredentials = errors.New("the credential helper has no credentials for this registry")

// helperProgram runs docker-credential-<name> with a deadline, speaking the
// credential-helper protocol through docker-credential-helpers' client.
type helperProgram struct {
	ctx  context.Context
	bin  string
	args []string
	in   io.Reader
}

func (p *helperProgram) Input(in io.Reader) { p.in = in }

func (p *helperProgram) Output() ([]byte, error) {
	cmd := exec.CommandContext(p.ctx, p.bin, p.args...)
	cmd.Stdin = p.in
	cmd.WaitDelay = time.Second
	return cmd.Output()
}

// runHelper asks helper for the credentials of server, giving up after
// timeout.
func runHelper(ctx context.Context, helper, server string, timeout time.Duration) (Credentials, error) {
	if err := ValidHelperName(helper); err != nil {
		return Credentials{}, err
	}
	bin := "docker-credential-" + helper
	if _, err := exec.LookPath(bin); err != nil {
		return Credentials{}, fmt.Errorf("credential helper %s not found on PATH", bin)
	}
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	prog := func(args ...string) client.Program { return &helperProgram{ctx: hctx, bin: bin, args: args} }
	c, err := helperGet(prog, bin, server)
	if err != nil && hctx.Err() != nil && ctx.Err() == nil {
		return Credentials{}, markUnavailable(fmt.Errorf("credential helper %s did not answer within %s; it was killed", bin, timeout))
	}
	return c, err
}

// helperGet runs 'get' through the credential-helper protocol and turns
// the helper's answer into Credentials. bin names the helper in errors.
func helperGet(prog client.ProgramFunc, bin, server string) (Credentials, error) {
	c, err := client.Get(prog, server)
	switch {
	case err == nil:
	case credentials.IsErrCredentialsNotFound(err):
		return Credentials{}, ErrNoCredentials
	case !strings.HasPrefix(err.Error(), "error getting credentials"):
		// The helper exited 0 but its output did not decode; the output
		// is not repeated here, it may hold a secret.
		return Credentials{}, fmt.Errorf("credential helper %s printed something that is not credentials JSON", bin)
	default:
		return Credentials{}, fmt.Errorf("credential helper %s failed: %s", bin, firstLine(err.Error(), 300))
	}
	if c.Username == "<token>" {
		return Credentials{IdentityToken: Secret(c.Secret)}, nil
	}
	return Credentials{Username: c.Username, Password: Secret(c.Secret)}, nil
}

// fromAuths returns the config.json auths entry for server, matched as the
// docker CLI matches it (exact key, then keys written as URLs).
func fromAuths(cf *configfile.ConfigFile, server string) (Credentials, bool) {
	ac, err := clicreds.NewFileStore(cf).Get(server)
	if err != nil {
		return Credentials{}, false
	}
	c := Credentials{Username: ac.Username, Password: Secret(ac.Password), IdentityToken: Secret(ac.IdentityToken), RegistryToken: Secret(ac.RegistryToken)}
	return c, !c.Anonymous()
}

func firstLine(s string, n int) string {
	s, _, _ = strings.Cut(s, "\n")
	if len(s) > n {
		s = s[:n] + "…"
	}
	return s
}
