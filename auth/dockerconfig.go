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

	"github.com/molecule-ai/pull-agent/internal/safetext"
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
		if h == "" {
			continue // the docker CLI then reads the auths entry for host
		}
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

// helperProgram runs docker-credential-<name> with a deadline and an
// explicit environment, speaking the credential-helper protocol through
// docker-credential-helpers' client.
type helperProgram struct {
	ctx  context.Context
	bin  string
	args []string
	env  []string
	in   io.Reader
}

func (p *helperProgram) Input(in io.Reader) { p.in = in }

func (p *helperProgram) Output() ([]byte, error) {
	cmd := exec.CommandContext(p.ctx, p.bin, p.args...)
	cmd.Stdin = p.in
	cmd.Env = p.env
	if cmd.Env == nil {
		cmd.Env = []string{} // never the agent's own environment
	}
	cmd.WaitDelay = time.Second
	return cmd.Output()
}

// HelperEnv is the environment a credential helper runs with, taken from
// environ: PATH, HOME, DOCKER_CONFIG, the AWS_* settings (a helper such as
// docker-credential-ecr-login needs them) and the proxy variables. Nothing
// else: not GHCR_USER or GHCR_TOKEN, not the agent's other settings, which
// systemd's EnvironmentFile= or a wrapper may have put in the agent's
// environment.
func HelperEnv(environ []string) []string {
	env := []string{}
	for _, kv := range environ {
		k, _, ok := strings.Cut(kv, "=")
		if ok && helperEnvKey(k) {
			env = append(env, kv)
		}
	}
	return env
}

func helperEnvKey(k string) bool {
	switch k {
	case "PATH", "HOME", "DOCKER_CONFIG",
		"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY",
		"http_proxy", "https_proxy", "no_proxy", "all_proxy":
		return true
	}
	return strings.HasPrefix(k, "AWS_")
}

// runHelper asks helper for the credentials of server, giving up after
// timeout. The helper runs with env and nothing else.
func runHelper(ctx context.Context, helper, server string, timeout time.Duration, env []string) (Credentials, error) {
	if err := ValidHelperName(helper); err != nil {
		return Credentials{}, err
	}
	bin := "docker-credential-" + helper
	if _, err := exec.LookPath(bin); err != nil {
		return Credentials{}, fmt.Errorf("credential helper %s not found on PATH", bin)
	}
	hctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	prog := func(args ...string) client.Program { return &helperProgram{ctx: hctx, bin: bin, args: args, env: env} }
	c, err := helperGet(prog, bin, server)
	if err != nil && hctx.Err() != nil && ctx.Err() == nil {
		return Credentials{}, markUnavailable(fmt.Errorf("credential helper %s did not answer within %s; it was killed", bin, timeout))
	}
	return c, err
}

// recordedProgram keeps what a helper run returned, so that an error can
// be built from its exit status rather than from the client's message,
// which quotes the helper's output.
type recordedProgram struct {
	client.Program
	err error
	out []byte
}

func (r *recordedProgram) Output() ([]byte, error) {
	r.out, r.err = r.Program.Output()
	return r.out, r.err
}

// knownHelperAnswers are messages helpers print that hold no secret, as
// the agent says them again. A helper's output is never repeated as is: a
// helper that prints its credentials and then fails must not put them in
// an error.
var knownHelperAnswers = map[string]string{
	"no credentials server url":                              "it was asked without a server URL",
	"no credentials username":                                "it has no user name for this registry",
	"the specified item could not be found in the keychain.": "it has no credentials for this registry",
	"pass not initialized":                                   "its password store is not initialized",
}

// helperGet runs 'get' through the credential-helper protocol and turns
// the helper's answer into Credentials. bin names the helper in errors;
// the helper's output is never part of one.
func helperGet(prog client.ProgramFunc, bin, server string) (Credentials, error) {
	var last *recordedProgram
	rec := func(args ...string) client.Program {
		last = &recordedProgram{Program: prog(args...)}
		return last
	}
	c, err := client.Get(rec, server)
	switch {
	case err == nil:
	case credentials.IsErrCredentialsNotFound(err):
		return Credentials{}, ErrNoCredentials
	case last != nil && last.err != nil:
		return Credentials{}, helperFailed(bin, server, last.err, last.out)
	default:
		// The helper exited 0 but its output did not decode; the output
		// is not repeated here, it may hold a secret.
		return Credentials{}, fmt.Errorf("credential helper %s printed something that is not credentials JSON", bin)
	}
	if c.Username == "<token>" {
		return Credentials{IdentityToken: NewSecret(c.Secret)}, nil
	}
	return Credentials{Username: c.Username, Password: NewSecret(c.Secret)}, nil
}

// helperFailed describes a helper that failed: its name, how it ended and,
// when it printed a known answer, what that answer means. Never its output.
func helperFailed(bin, server string, runErr error, out []byte) error {
	how := "failed"
	var ee *exec.ExitError
	switch {
	case errors.As(runErr, &ee) && ee.ProcessState != nil:
		how = "failed (" + ee.ProcessState.String() + ")"
	case !errors.As(runErr, &ee):
		// It did not start (permission denied, not an executable…); the
		// error names the program, not anything it printed.
		how = "could not be run: " + safetext.Line(runErr.Error(), 200)
	}
	msg := fmt.Sprintf("credential helper %s %s for %s", bin, how, safetext.Line(server, 200))
	if meaning := knownHelperAnswers[strings.ToLower(strings.TrimSpace(string(out)))]; meaning != "" {
		msg += "; " + meaning
	}
	return errors.New(msg + "; what it printed is not shown, it may hold a secret")
}

// fromAuths returns the config.json auths entry for server, matched as the
// docker CLI matches it (exact key, then keys written as URLs), and
// whether it holds any credential.
func fromAuths(cf *configfile.ConfigFile, server string) (Credentials, bool) {
	ac, err := clicreds.NewFileStore(cf).Get(server)
	if err != nil {
		return Credentials{}, false
	}
	c := Credentials{Username: ac.Username, Password: NewSecret(ac.Password), IdentityToken: NewSecret(ac.IdentityToken), RegistryToken: NewSecret(ac.RegistryToken)}
	return c, !c.Anonymous()
}
