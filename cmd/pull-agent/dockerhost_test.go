package main

import (
	"bytes"
	"context"
	"errors"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// runCLICancelled is runCLI with a context cancelled before the command
// starts: whatever it would send to a daemon fails before a connection is
// dialled, so a test of a refused remote address can never reach it.
func runCLICancelled(t *testing.T, env map[string]string, args ...string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	var out, errb bytes.Buffer
	err := run(ctx, args, func(k string) string { return env[k] }, &out, &errb)
	var ee *exitError
	switch {
	case err == nil:
		return 0, errb.String()
	case errors.As(err, &ee):
		if ee.err != nil {
			errb.WriteString(ee.err.Error())
		}
		return ee.code, errb.String()
	default:
		return 1, errb.String() + err.Error()
	}
}

// A DOCKER_HOST where credentials would cross the network in clear text is
// a configuration error: each command exits 64 (usage) and says why,
// before any connection.
func TestCommandsRefuseACleartextDockerHost(t *testing.T) {
	f := writeFile(t, config.KeyRuntimes+"=codex\n")
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"remote without TLS", map[string]string{config.KeyDockerHost: "tcp://203.0.113.7:2375"},
			`environment: DOCKER_HOST="tcp://203.0.113.7:2375": 203.0.113.7 is not a loopback address and DOCKER_TLS_VERIFY is not set: every registry credential sent with a pull would cross the network in clear text`},
		{"https without TLS", map[string]string{config.KeyDockerHost: "https://docker.example.test:2376"},
			"the Docker client takes TLS from DOCKER_TLS_VERIFY, not from the scheme"},
		{"an unknown scheme", map[string]string{config.KeyDockerHost: "tls://203.0.113.7:2376"},
			`scheme "tls" is not supported (the Docker client would dial it as plain TCP)`},
		{"TLS without its files", map[string]string{config.KeyDockerHost: "tcp://203.0.113.7:2376", config.KeyDockerTLSVerify: "1", config.KeyDockerCertPath: "/nonexistent/certs"},
			`DOCKER_CERT_PATH="/nonexistent/certs": /nonexistent/certs/ca.pem (the CA certificate that signed the daemon's certificate) cannot be read: no such file or directory; copy it there`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, cmd := range []string{"images", "pull", "check"} {
				got, errOut := runCLICancelled(t, tt.env, cmd, "--env-file", f)
				if got != exitUsage || !strings.Contains(errOut, "configuration refused") || !strings.Contains(errOut, tt.want) {
					t.Errorf("%s: exit %d (want %d), stderr:\n%s\nwant it to contain:\n%s", cmd, got, exitUsage, errOut, tt.want)
				}
			}
		})
	}
}

// startTLSBed starts a bed whose daemon also listens with --tlsverify on
// 127.0.0.1, with a registry that wants basic auth, seeded with codex and
// hermes.
func startTLSBed(t *testing.T) (*testbed.Bed, *testbed.Registry) {
	t.Helper()
	testbed.Require(t)
	ctx := context.Background()
	b, err := testbed.Start(ctx, testbed.Options{Logf: t.Logf, TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { b.Stop() })
	users, err := testbed.Htpasswd(map[string]string{"bot": "reg-s3cret"})
	if err != nil {
		t.Fatal(err)
	}
	reg, err := b.StartRegistry(ctx, "tls", testbed.RegistryOptions{Htpasswd: users})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.Seed(ctx, reg, "molecule-ai", []string{"codex", "hermes"}, testbed.SeedOptions{Username: "bot", Password: "reg-s3cret"}); err != nil {
		t.Fatal(err)
	}
	return b, reg
}

// The daemon at tcp://127.0.0.1:<port> serves only TLS clients with a
// certificate of its CA. With DOCKER_TLS_VERIFY and DOCKER_CERT_PATH, pull
// and check go through it, credentials included; without them, with a
// client certificate of another CA, or with a ca.pem that did not sign the
// daemon's certificate, nothing does, and the error says which.
func TestPullThroughADaemonThatWantsTLS(t *testing.T) {
	b, reg := startTLSBed(t)
	dockerConfig := t.TempDir()
	if err := os.WriteFile(filepath.Join(dockerConfig, "config.json"), []byte(`{"auths": {"`+reg.Addr+`": {"auth": "Ym90OnJlZy1zM2NyZXQ="}}}`), 0o600); err != nil { // bot:reg-s3cret
		t.Fatal(err)
	}
	f := writeFile(t, config.KeyRegistry+"="+reg.Prefix("molecule-ai")+"\n"+config.KeyRuntimes+"=codex\n")
	tlsEnv := func(certDir string) map[string]string {
		return map[string]string{"DOCKER_CONFIG": dockerConfig, config.KeyDockerHost: b.TLS.Host, config.KeyDockerTLSVerify: "1", config.KeyDockerCertPath: certDir}
	}

	t.Run("with TLS", func(t *testing.T) { pullAndCheckThroughTLS(t, b, reg, tlsEnv(b.TLS.CertDir), f) })

	t.Run("run", func(t *testing.T) {
		envFile := writeFile(t, config.KeyRegistry+"="+reg.Prefix("molecule-ai")+"\n"+config.KeyRuntimes+"=hermes\n")
		var env []string
		for k, v := range tlsEnv(b.TLS.CertDir) {
			env = append(env, k+"="+v)
		}
		p := startProcess(t, env, "--env-file", envFile)
		code, out, errOut := p.status(t, "--wait", "--timeout", "60s")
		if code != exitOK || !strings.Contains(out, "running, all warm") {
			t.Fatalf("status --wait: exit %d\n%s%s", code, out, errOut)
		}
		if out := p.Output.String(); !regexp.MustCompile(`msg="image pulled" .*runtime=hermes`).MatchString(out) {
			t.Fatalf("the agent pulled nothing:\n%s", out)
		}
	})

	// want follows "no image can be pulled: cannot reach the Docker daemon
	// at <host>: "; DIR stands for the DOCKER_CERT_PATH of the case.
	refused := []struct {
		name string
		env  func() map[string]string
		want string
	}{
		{"plain tcp to the TLS port", func() map[string]string {
			return map[string]string{"DOCKER_CONFIG": dockerConfig, config.KeyDockerHost: b.TLS.Host}
		}, "it speaks TLS (dockerd --tlsverify) and the agent does not: set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH"},
		{"a client certificate of another CA", func() map[string]string {
			dir := t.TempDir()
			if err := b.TLS.WriteCertDir(dir, true, false); err != nil {
				t.Fatal(err)
			}
			return tlsEnv(dir)
		}, "the daemon refused this host's client certificate " + filepath.Join("DIR", "cert.pem")},
		{"a ca.pem that did not sign the daemon's certificate", func() map[string]string {
			dir := t.TempDir()
			if err := b.TLS.WriteCertDir(dir, false, true); err != nil {
				t.Fatal(err)
			}
			return tlsEnv(dir)
		}, "its certificate does not verify against " + filepath.Join("DIR", "ca.pem")},
		{"a host name the daemon's certificate does not name", func() map[string]string {
			env := tlsEnv(b.TLS.CertDir)
			env[config.KeyDockerHost] = strings.Replace(b.TLS.Host, "127.0.0.1", "localhost", 1)
			return env
		}, "its certificate does not verify against " + filepath.Join("DIR", "ca.pem") + ": error during connect: Head \"https://localhost:"},
		{"TLS to a port that speaks plain HTTP", func() map[string]string {
			env := tlsEnv(b.TLS.CertDir)
			env[config.KeyDockerHost] = "tcp://" + reg.Addr
			return env
		}, "it does not speak TLS there, and DOCKER_TLS_VERIFY is set"},
	}
	for _, tt := range refused {
		t.Run(tt.name, func(t *testing.T) { pullAndCheckRefused(t, tt.env(), tt.want, f) })
	}
}

// pullAndCheckThroughTLS runs pull and check on f with env, which names
// the TLS port of b's daemon, and finds the pulled image in that daemon
// through its unix socket.
func pullAndCheckThroughTLS(t *testing.T, b *testbed.Bed, reg *testbed.Registry, env map[string]string, f string) {
	t.Helper()
	code, out, errOut := runCLI(t, env, "pull", "--env-file", f)
	if code != 0 || !strings.Contains(out, "1/1 images present and verified") {
		t.Fatalf("pull: exit %d\nstdout %s\nstderr %s", code, out, errOut)
	}
	if !strings.Contains(errOut, `auth="config.json auths"`) {
		t.Errorf("the pull was not a credentialed one:\n%s", errOut)
	}
	code, out, errOut = runCLI(t, env, "check", "--env-file", f)
	if code != exitOK {
		t.Fatalf("check: exit %d\nstdout %s\nstderr %s", code, out, errOut)
	}
	// The image is in the daemon, as its unix socket shows.
	e, err := engine.NewDockerEngine(config.DockerEndpoint{Host: b.DockerHost})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := e.ImageInspect(context.Background(), config.ImageRef(reg.Prefix("molecule-ai"), "codex")); err != nil {
		t.Fatalf("after the pull through TLS: %v", err)
	}
}

// pullAndCheckRefused runs pull and check on f with env, under which the
// daemon cannot be reached: both fail and say why, with want after the
// daemon's address (DIR standing for env's DOCKER_CERT_PATH).
func pullAndCheckRefused(t *testing.T, env map[string]string, want, f string) {
	t.Helper()
	want = "no image can be pulled: cannot reach the Docker daemon at " + env[config.KeyDockerHost] + ": " + strings.ReplaceAll(want, "DIR", env[config.KeyDockerCertPath])
	code, out, errOut := runCLI(t, env, "pull", "--env-file", f)
	if code != exitFailed || !strings.HasPrefix(errOut, want) {
		t.Fatalf("pull: exit %d (want %d)\nstdout %s\nstderr %s\nwant: %s", code, exitFailed, out, errOut, want)
	}
	t.Logf("pull: %s", errOut)
	code, _, errOut = runCLI(t, env, "check", "--env-file", f)
	if code != checkUnreachable || !strings.Contains(errOut, strings.TrimPrefix(want, "no image can be pulled: ")) {
		t.Fatalf("check: exit %d (want %d)\nstderr %s", code, checkUnreachable, errOut)
	}
}

// fakeDaemonSocket serves a unix socket that answers pings like dockerd
// and fails everything else, owned by uid:gid.
func fakeDaemonSocket(t *testing.T, uid, gid int) string {
	t.Helper()
	testbed.RequireRoot(t, "giving a socket to another user")
	dir, err := os.MkdirTemp("/tmp", "pa-sock-") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "docker.sock")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(path, uid, gid); err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/_ping") {
			w.Header().Set("Api-Version", "1.41")
			w.Write([]byte("OK"))
			return
		}
		http.Error(w, `{"message":"a fake daemon"}`, http.StatusInternalServerError)
	})}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return "unix://" + path
}

const ownerWarning = "Docker socket is owned by a user other than root"

// A socket owned by someone else than root could be anyone's: pull and
// check warn on stderr, run logs the warning once, when it connects.
func TestWarnsWhenTheDockerSocketHasAnotherOwner(t *testing.T) {
	f := writeFile(t, config.KeyRegistry+"=registry.example.test/m\n"+config.KeyRuntimes+"=codex\n")
	dockerConfig := t.TempDir()
	t.Run("pull and check", func(t *testing.T) {
		env := map[string]string{"DOCKER_CONFIG": dockerConfig, config.KeyDockerHost: fakeDaemonSocket(t, 65534, 65534)}
		for _, cmd := range []string{"pull", "check"} {
			_, _, errOut := runCLI(t, env, cmd, "--env-file", f)
			if strings.Count(errOut, ownerWarning) != 1 || !strings.Contains(errOut, "uid=65534") ||
				!strings.Contains(errOut, "Docker socket's group is neither root nor docker") {
				t.Errorf("%s: no warning, or not once:\n%s", cmd, errOut)
			}
		}
	})
	t.Run("root's socket", func(t *testing.T) {
		env := map[string]string{"DOCKER_CONFIG": dockerConfig, config.KeyDockerHost: fakeDaemonSocket(t, 0, 0)}
		for _, cmd := range []string{"pull", "check"} {
			if _, _, errOut := runCLI(t, env, cmd, "--env-file", f); strings.Contains(errOut, "Docker socket") {
				t.Errorf("%s warned about root's socket:\n%s", cmd, errOut)
			}
		}
	})
	t.Run("run", func(t *testing.T) {
		envFile := writeFile(t, config.KeyRegistry+"=registry.example.test/m\n"+config.KeyRuntimes+"=codex\n")
		p := startProcess(t, []string{"DOCKER_CONFIG=" + dockerConfig, "DOCKER_HOST=" + fakeDaemonSocket(t, 65534, 0)}, "--env-file", envFile, "--debounce", "10ms")
		waitOutput(t, p, "the first configuration", func(s string) bool { return strings.Count(s, `msg="configuration loaded"`) == 1 })
		// A new configuration does not connect again, nor warn again.
		if err := os.WriteFile(envFile, []byte(config.KeyRegistry+"=registry.example.test/m\n"+config.KeyRuntimes+"=codex,hermes\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		waitOutput(t, p, "the second configuration", func(s string) bool { return strings.Count(s, `msg="configuration loaded"`) == 2 })
		if out := p.Output.String(); strings.Count(out, ownerWarning) != 1 || strings.Contains(out, "group is neither") {
			t.Fatalf("want one owner warning and no group warning:\n%s", out)
		}
	})
}

// waitOutput waits until the agent's output satisfies cond; it fails at
// once if the agent exits.
func waitOutput(t *testing.T, p *agentProcess, what string, cond func(string) bool) {
	t.Helper()
	testbed.WaitFor(t, what, 20*time.Second, func() bool {
		if cond(p.Output.String()) {
			return true
		}
		if !p.Running() {
			t.Fatalf("the agent exited (%v) while waiting for %s", p.Err(), what)
		}
		return false
	})
}
