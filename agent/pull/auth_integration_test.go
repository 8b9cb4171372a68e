package pull_test

import (
	"encoding/base64"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/auth"
	"github.com/molecule-ai/pull-agent/internal/testbed"
)

func htpasswd(t *testing.T, users map[string]string) string {
	t.Helper()
	h, err := testbed.Htpasswd(users)
	must(t, err)
	return h
}

// dockerConfig writes a config.json and returns its directory.
func dockerConfig(t *testing.T, cfg map[string]any) string {
	t.Helper()
	data, err := json.Marshal(cfg)
	must(t, err)
	d := t.TempDir()
	must(t, os.WriteFile(filepath.Join(d, "config.json"), data, 0o600))
	return d
}

func basic(user, pass string) map[string]string {
	return map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(user + ":" + pass))}
}

// pullOne pulls the images of rts under prefix through eng with the
// credentials opts selects, logging into logs.
func pullOne(t *testing.T, eng engine.Engine, prefix string, rts []string, opts auth.Options, logs io.Writer) []pull.PullResult {
	t.Helper()
	cfg, err := config.LoadConfig("t", nil, func(k string) string {
		return map[string]string{config.KeyRegistry: prefix, config.KeyRuntimes: strings.Join(rts, ",")}[k]
	})
	must(t, err)
	imgs, err := cfg.Images()
	must(t, err)
	if logs == nil {
		logs = io.Discard
	}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	opts.Logger = log
	sel, err := auth.NewSelector(opts)
	must(t, err)
	p, err := pull.NewPuller(eng, sel, log, pull.PullerOptions{Timeouts: pull.PullTimeouts{Overall: 2 * time.Minute}})
	must(t, err)
	return p.PullAll(ctxT(t), imgs, nil)
}

// noSecrets fails if any secret appears in any of the texts.
func noSecrets(t *testing.T, secrets []string, texts ...string) {
	t.Helper()
	for _, s := range secrets {
		for _, txt := range texts {
			if strings.Contains(txt, s) {
				t.Errorf("secret %q leaked into: %.300s", s, txt)
			}
		}
	}
}

func errText(rs []pull.PullResult) string {
	var b strings.Builder
	for _, r := range rs {
		if r.Err != nil {
			b.WriteString(r.Err.Error() + "\n")
		}
	}
	return b.String()
}

func TestAuthBasicViaConfigJSONAuths(t *testing.T) {
	f := newFixture(t)
	reg, err := f.bed.StartRegistry(ctxT(t), "basic", testbed.RegistryOptions{Htpasswd: htpasswd(t, map[string]string{"puller": "basic-s3cret"})})
	must(t, err)
	t.Cleanup(func() { reg.Stop() })
	seed, err := f.bed.Seed(ctxT(t), reg, "p", []string{"codex"}, testbed.SeedOptions{Username: "puller", Password: "basic-s3cret"})
	must(t, err)
	logs := &testbed.Buffer{}
	secrets := []string{"basic-s3cret", "wrong-s3cret", base64.StdEncoding.EncodeToString([]byte("puller:basic-s3cret"))}

	ok := pullOne(t, f.engine, reg.Prefix("p"), []string{"codex"}, auth.Options{DockerConfigDir: dockerConfig(t, map[string]any{"auths": map[string]any{reg.Addr: basic("puller", "basic-s3cret")}})}, logs)
	if ok[0].Err != nil || ok[0].Digest != seed["codex"].Digest || ok[0].Source != auth.SourceAuths {
		t.Fatalf("right credentials: %+v", ok[0])
	}
	for name, cfg := range map[string]map[string]any{
		"wrong":   {"auths": map[string]any{reg.Addr: basic("puller", "wrong-s3cret")}},
		"missing": {},
	} {
		rs := pullOne(t, f.engine, reg.Prefix("p"), []string{"codex"}, auth.Options{DockerConfigDir: dockerConfig(t, cfg)}, logs)
		if pull.ClassOf(rs[0].Err) != pull.ClassAuth {
			t.Errorf("%s credentials: %v (%s), want auth", name, rs[0].Err, pull.ClassOf(rs[0].Err))
		}
		t.Logf("%s credentials: %v", name, rs[0].Err)
	}
	noSecrets(t, secrets, logs.String())
}

func TestAuthCredentialHelpersAgainstARegistry(t *testing.T) {
	f := newFixture(t)
	dir, err := testbed.BuildCredentialHelpers(t.TempDir())
	must(t, err)
	t.Setenv("PATH", dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	callLog := filepath.Join(t.TempDir(), "calls")
	must(t, testbed.ConfigureCredentialHelpers(dir, testbed.HelperConfig{User: "helped", Secret: "helper-s3cret", Log: callLog}))
	reg, err := f.bed.StartRegistry(ctxT(t), "helped", testbed.RegistryOptions{Htpasswd: htpasswd(t, map[string]string{"helped": "helper-s3cret"})})
	must(t, err)
	t.Cleanup(func() { reg.Stop() })
	_, err = f.bed.Seed(ctxT(t), reg, "h", []string{"codex", "hermes"}, testbed.SeedOptions{Username: "helped", Password: "helper-s3cret"})
	must(t, err)
	logs := &testbed.Buffer{}

	for _, tc := range []struct {
		name string
		cfg  map[string]any
		src  auth.Source
	}{
		{"credHelpers", map[string]any{"credHelpers": map[string]string{reg.Addr: "pa-good"}}, "config.json credHelpers: pa-good"},
		{"credsStore", map[string]any{"credsStore": "pa-good"}, "config.json credsStore: pa-good"},
	} {
		rs := pullOne(t, f.engine, reg.Prefix("h"), []string{"codex", "hermes"}, auth.Options{DockerConfigDir: dockerConfig(t, tc.cfg)}, logs)
		for _, r := range rs {
			if r.Err != nil || r.Source != tc.src {
				t.Errorf("%s: %s: %v source %s", tc.name, r.Image.Runtime, r.Err, r.Source)
			}
		}
	}
	calls, _ := os.ReadFile(callLog)
	if !strings.Contains(string(calls), "pa-good get "+reg.Addr) {
		t.Errorf("the helper was not asked for %s:\n%s", reg.Addr, calls)
	}
	start := time.Now()
	rs := pullOne(t, f.engine, reg.Prefix("h"), []string{"codex"}, auth.Options{HelperTimeout: 500 * time.Millisecond, DockerConfigDir: dockerConfig(t, map[string]any{"credHelpers": map[string]string{reg.Addr: "pa-hang"}})}, logs)
	if pull.ClassOf(rs[0].Err) != pull.ClassAuth || !strings.Contains(rs[0].Err.Error(), "did not answer within 500ms") {
		t.Errorf("hanging helper: %v", rs[0].Err)
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("a hanging helper held the pull for %s", time.Since(start))
	}
	// A helper that prints the credentials and then fails: the pull fails
	// as auth, naming the helper and its exit status, never its output.
	rs = pullOne(t, f.engine, reg.Prefix("h"), []string{"codex"}, auth.Options{DockerConfigDir: dockerConfig(t, map[string]any{"credHelpers": map[string]string{reg.Addr: "pa-leak"}})}, logs)
	if pull.ClassOf(rs[0].Err) != pull.ClassAuth || !strings.Contains(rs[0].Err.Error(), "docker-credential-pa-leak failed (exit status 1)") {
		t.Errorf("helper printing and failing: %v", rs[0].Err)
	}
	rs = pullOne(t, f.engine, reg.Prefix("h"), []string{"codex"}, auth.Options{DockerConfigDir: dockerConfig(t, map[string]any{"credHelpers": map[string]string{reg.Addr: "../pa-good"}})}, logs)
	if rs[0].Err == nil || !strings.Contains(rs[0].Err.Error(), "refused") {
		t.Errorf("helper name with a path: %v", rs[0].Err)
	}
	noSecrets(t, []string{"helper-s3cret"}, logs.String(), errText(rs))
}

func TestAuthTokenFlowLikeGHCR(t *testing.T) {
	f := newFixture(t)
	ts, err := testbed.NewTokenServer(map[string]string{"gh-bot": "gh-token-s3cret"})
	must(t, err)
	t.Cleanup(func() { ts.Close() })
	// Seed through a plain registry, then serve the same storage with token auth.
	plain, err := f.bed.StartRegistry(ctxT(t), "tok-seed", testbed.RegistryOptions{})
	must(t, err)
	seed, err := f.bed.Seed(ctxT(t), plain, "molecule-ai", []string{"codex"}, testbed.SeedOptions{})
	must(t, err)
	must(t, plain.Stop())
	reg, err := f.bed.StartRegistry(ctxT(t), "tok", testbed.RegistryOptions{Token: ts.Auth(), Root: plain.Root})
	must(t, err)
	t.Cleanup(func() { reg.Stop() })
	logs := &testbed.Buffer{}
	cfgFor := func(user, pass string) string {
		return dockerConfig(t, map[string]any{"auths": map[string]any{reg.Addr: basic(user, pass)}})
	}
	rs := pullOne(t, f.engine, reg.Prefix("molecule-ai"), []string{"codex"}, auth.Options{DockerConfigDir: cfgFor("gh-bot", "gh-token-s3cret")}, logs)
	if rs[0].Err != nil || rs[0].Digest != seed["codex"].Digest {
		t.Fatalf("token flow: %v", rs[0].Err)
	}
	found := false
	for _, q := range ts.Requests() {
		found = found || q == "gh-bot repository:molecule-ai/workspace-template-codex:pull"
	}
	if !found {
		t.Errorf("the daemon did not fetch a token as gh-bot for the repository: %q", ts.Requests())
	}
	for name, dir := range map[string]string{"wrong token": cfgFor("gh-bot", "nope-s3cret"), "anonymous": ""} {
		rs := pullOne(t, f.engine, reg.Prefix("molecule-ai"), []string{"codex"}, auth.Options{DockerConfigDir: dir}, logs)
		if c := pull.ClassOf(rs[0].Err); c != pull.ClassAuth {
			t.Errorf("%s: %v (%s), want auth", name, rs[0].Err, c)
		}
		t.Logf("%s: %v", name, rs[0].Err)
	}
	noSecrets(t, []string{"gh-token-s3cret", "nope-s3cret"}, logs.String())
}

func TestAuthScopingSeenAtTheRegistry(t *testing.T) {
	f := newFixture(t)
	regX, err := f.bed.StartRegistry(ctxT(t), "scope-x", testbed.RegistryOptions{Htpasswd: htpasswd(t, map[string]string{"user-x": "x-s3cret"})})
	must(t, err)
	t.Cleanup(func() { regX.Stop() })
	regY, err := f.bed.StartRegistry(ctxT(t), "scope-y", testbed.RegistryOptions{Htpasswd: htpasswd(t, map[string]string{"user-y": "y-s3cret"})})
	must(t, err)
	t.Cleanup(func() { regY.Stop() })
	_, err = f.bed.Seed(ctxT(t), regX, "m", []string{"codex"}, testbed.SeedOptions{Username: "user-x", Password: "x-s3cret"})
	must(t, err)
	_, err = f.bed.Seed(ctxT(t), regY, "m", []string{"codex"}, testbed.SeedOptions{Username: "user-y", Password: "y-s3cret"})
	must(t, err)
	px, err := testbed.NewHTTPProxy(regY.Addr)
	must(t, err)
	t.Cleanup(func() { px.Close() })
	opts := auth.Options{
		GHCRUser: "gh-bot", GHCRToken: auth.NewSecret("gh-s3cret"),
		DockerConfigDir: dockerConfig(t, map[string]any{"auths": map[string]any{regX.Addr: basic("user-x", "x-s3cret"), px.Addr: basic("user-y", "y-s3cret")}}),
	}
	for _, prefix := range []string{regX.Prefix("m"), px.Prefix("m")} {
		if rs := pullOne(t, f.engine, prefix, []string{"codex"}, opts, nil); rs[0].Err != nil {
			t.Fatalf("%s: %v", prefix, rs[0].Err)
		}
	}
	sawAuth := false
	for _, q := range px.Requests() {
		if q.Authorization == "" {
			continue
		}
		sawAuth = true
		if want := "Basic " + base64.StdEncoding.EncodeToString([]byte("user-y:y-s3cret")); q.Authorization != want {
			t.Errorf("%s %s reached registry Y with foreign credentials %q", q.Method, q.Path, q.Authorization)
		}
	}
	if !sawAuth {
		t.Fatal("registry Y never saw credentials: the test proves nothing")
	}
}

// The real ecr-login path end to end: an ECR-shaped registry name that
// only the test daemon resolves (private /etc/hosts), a fake ECR API
// reached through AWS_ENDPOINT_URL_ECR, a registry that wants AWS:<token>.
func TestAuthECREndToEnd(t *testing.T) {
	testbed.Require(t)
	const ecrHost = "123456789012.dkr.ecr.us-east-2.amazonaws.com"
	own, err := testbed.Start(ctxT(t), testbed.Options{Logf: t.Logf, Hosts: map[string]string{ecrHost: "127.0.0.1"}})
	must(t, err)
	t.Cleanup(func() { own.Stop() })
	reg, err := own.StartRegistry(ctxT(t), "ecr", testbed.RegistryOptions{Htpasswd: htpasswd(t, map[string]string{"AWS": "ecr-token-s3cret"})})
	must(t, err)
	seed, err := own.Seed(ctxT(t), reg, "molecule-ai", []string{"codex", "hermes"}, testbed.SeedOptions{Username: "AWS", Password: "ecr-token-s3cret"})
	must(t, err)
	const life = 4 * time.Second
	api, err := testbed.NewFakeECR(ecrHost, "ecr-token-s3cret", life)
	must(t, err)
	t.Cleanup(func() { api.Close() })
	t.Setenv("AWS_ENDPOINT_URL_ECR", api.URL)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDTESTTESTTEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-s3cret")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	eng, err := engine.NewDockerEngine(config.DockerEndpoint{Host: own.DockerHost})
	must(t, err)
	_, port, _ := strings.Cut(reg.Addr, ":")
	prefix := ecrHost + ":" + port + "/molecule-ai"
	logs := &testbed.Buffer{}
	auth.RouteECRLogs(slog.New(slog.NewTextHandler(logs, nil)))
	opts := auth.Options{ECRCacheDir: t.TempDir(), GHCRUser: "gh-bot", GHCRToken: auth.NewSecret("gh-s3cret")}

	rs := pullOne(t, eng, prefix, []string{"codex", "hermes"}, opts, logs)
	for _, r := range rs {
		if r.Err != nil || r.Digest != seed[r.Image.Runtime].Digest {
			t.Fatalf("%s: %v", r.Image.Runtime, r.Err)
		}
		if !strings.HasPrefix(string(r.Source), "ecr-login (AWS environment keys; token expires ") || r.CredentialsExpire.IsZero() {
			t.Fatalf("source %q, expiry %s", r.Source, r.CredentialsExpire)
		}
	}
	if api.Calls() != 1 {
		t.Errorf("%d ECR API calls for two pulls, want 1 (cached)", api.Calls())
	}
	// Past half the token's life (ecr-login reads the real clock): a new
	// token before the next pull.
	time.Sleep(time.Until(rs[0].CredentialsExpire.Add(-life/2 + 400*time.Millisecond)))
	renewed := pullOne(t, eng, prefix, []string{"codex"}, opts, logs)
	if renewed[0].Err != nil || api.Calls() != 2 {
		t.Fatalf("after half the token's life: %v, %d API calls", renewed[0].Err, api.Calls())
	}
	// The API fails and the cached token expires: an auth failure with the cause logged.
	api.Fail(500, "ServerException")
	time.Sleep(time.Until(renewed[0].CredentialsExpire.Add(400 * time.Millisecond)))
	rs = pullOne(t, eng, prefix, []string{"codex"}, opts, logs)
	if pull.ClassOf(rs[0].Err) != pull.ClassAuth || !strings.Contains(rs[0].Err.Error(), "expired at") {
		t.Fatalf("expired token: %v (%s)", rs[0].Err, pull.ClassOf(rs[0].Err))
	}
	if !strings.Contains(logs.String(), "ServerException") {
		t.Errorf("the cause is not in the log:\n%s", logs.String())
	}
	noSecrets(t, []string{"ecr-token-s3cret", "aws-secret-s3cret", "gh-s3cret"}, logs.String(), errText(rs))
}

// ghcr.io itself, for the test daemon only: a private network namespace
// where /etc/hosts says ghcr.io is 127.0.0.1 (so the daemon treats it as
// insecure) and a plain-HTTP registry answers on ports 443 and 80. Both
// stores try https on 443 first. The classic store then tries http on 80
// whatever 443 did; the containerd store falls back to http only when 443
// answered in plain HTTP (a refused connection there is final), and then
// on port 80 as well.
func TestAuthGHCRUnderItsRealName(t *testing.T) {
	testbed.Require(t)
	f := newFixture(t)
	plain, err := f.bed.StartRegistry(ctxT(t), "ghcr-seed", testbed.RegistryOptions{})
	must(t, err)
	seed, err := f.bed.Seed(ctxT(t), plain, "molecule-ai", []string{"codex"}, testbed.SeedOptions{})
	must(t, err)
	must(t, plain.Stop())
	own, err := testbed.Start(ctxT(t), testbed.Options{Logf: t.Logf, PrivateNetwork: true, Hosts: map[string]string{"ghcr.io": "127.0.0.1"}})
	must(t, err)
	t.Cleanup(func() { own.Stop() })
	users := htpasswd(t, map[string]string{"gh-bot": "gh-token-s3cret"})
	for name, addr := range map[string]string{"ghcr": "127.0.0.1:80", "ghcr-443": "127.0.0.1:443"} {
		_, err = own.StartRegistry(ctxT(t), name, testbed.RegistryOptions{Addr: addr, InBedNetwork: true, Root: plain.Root, Htpasswd: users})
		must(t, err)
	}
	eng, err := engine.NewDockerEngine(config.DockerEndpoint{Host: own.DockerHost})
	must(t, err)
	logs := &testbed.Buffer{}
	rs := pullOne(t, eng, "ghcr.io/molecule-ai", []string{"codex"}, auth.Options{GHCRUser: "gh-bot", GHCRToken: auth.NewSecret("gh-token-s3cret")}, logs)
	if rs[0].Err != nil || rs[0].Digest != seed["codex"].Digest || rs[0].Source != auth.SourceGHCREnv {
		t.Fatalf("ghcr.io with GHCR_USER/GHCR_TOKEN: %+v", rs[0])
	}
	for name, o := range map[string]auth.Options{"no credentials": {}, "wrong token": {GHCRUser: "gh-bot", GHCRToken: auth.NewSecret("wrong-s3cret")}} {
		rs := pullOne(t, eng, "ghcr.io/molecule-ai", []string{"codex"}, o, logs)
		if pull.ClassOf(rs[0].Err) != pull.ClassAuth {
			t.Errorf("%s: %v (%s)", name, rs[0].Err, pull.ClassOf(rs[0].Err))
		}
		t.Logf("%s: %v", name, rs[0].Err)
	}
	noSecrets(t, []string{"gh-token-s3cret", "wrong-s3cret"}, logs.String())
}
