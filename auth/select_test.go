package auth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/internal/testbed"
)

// helpersDir holds the test credential helpers, built once.
var helpersDir struct {
	once sync.Once
	dir  string
	err  error
}

func TestMain(m *testing.M) {
	// No test may reach the EC2 instance metadata service.
	os.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	code := m.Run()
	if helpersDir.dir != "" {
		os.RemoveAll(helpersDir.dir)
	}
	os.Exit(code)
}

func withHelpers(t *testing.T) {
	t.Helper()
	helpersDir.once.Do(func() {
		d, err := os.MkdirTemp("", "pa-helpers-")
		if err != nil {
			helpersDir.err = err
			return
		}
		helpersDir.dir, helpersDir.err = testbed.BuildCredentialHelpers(d)
	})
	if helpersDir.err != nil {
		t.Fatal(helpersDir.err)
	}
	t.Setenv("PATH", helpersDir.dir+string(os.PathListSeparator)+os.Getenv("PATH"))
	if err := testbed.ConfigureCredentialHelpers(helpersDir.dir, testbed.HelperConfig{User: "helper-user", Secret: "helper-s3cret"}); err != nil {
		t.Fatal(err)
	}
}

func configDir(t *testing.T, json string) string {
	t.Helper()
	d := t.TempDir()
	if err := os.WriteFile(filepath.Join(d, "config.json"), []byte(json), 0o600); err != nil {
		t.Fatal(err)
	}
	return d
}

func TestSelectOrderAndSources(t *testing.T) {
	withHelpers(t)
	const ecrHost = "123456789012.dkr.ecr.us-east-2.amazonaws.com"
	cfg := `{
		"auths": {
			"auths.example.test": {"auth": "` + "YXV0aHMtdXNlcjphdXRocy1zM2NyZXQ=" + `"},
			"https://url-key.example.test/v1/": {"username": "url-user", "password": "url-s3cret"},
			"idtok.example.test": {"identitytoken": "idtok-s3cret"},
			"ghcr.io": {"username": "cfg-gh", "password": "cfg-gh-s3cret"}
		},
		"credHelpers": {
			"helped.example.test": "pa-good",
			"token.example.test": "pa-token",
			"none.example.test": "pa-none",
			"` + ecrHost + `": "pa-good"
		}
	}`
	dir := configDir(t, cfg)
	tests := []struct {
		name      string
		ghcr      bool
		host      string
		src       Source
		user, pwd string
		idtok     string
	}{
		{"ghcr env wins for ghcr.io", true, "ghcr.io", SourceGHCREnv, "gh-user", "gh-s3cret", ""},
		{"ghcr.io without env falls through to config.json", false, "ghcr.io", SourceAuths, "cfg-gh", "cfg-gh-s3cret", ""},
		{"credHelpers for the host", true, "helped.example.test", "config.json credHelpers: pa-good", "helper-user", "helper-s3cret", ""},
		{"credHelpers beat the built-in ecr-login", false, ecrHost, "config.json credHelpers: pa-good", "helper-user", "helper-s3cret", ""},
		{"helper identity token", false, "token.example.test", "config.json credHelpers: pa-token", "", "", "helper-s3cret"},
		{"helper without credentials: anonymous, as the CLI", false, "none.example.test", "config.json credHelpers: pa-none", "", "", ""},
		{"auths with base64 auth", false, "auths.example.test", SourceAuths, "auths-user", "auths-s3cret", ""},
		{"auths keyed by URL", false, "url-key.example.test", SourceAuths, "url-user", "url-s3cret", ""},
		{"auths identitytoken", false, "idtok.example.test", SourceAuths, "", "", "idtok-s3cret"},
		{"nothing: anonymous", true, "other.example.test", SourceAnonymous, "", "", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := Options{DockerConfigDir: dir}
			if tt.ghcr {
				o.GHCRUser, o.GHCRToken = "gh-user", NewSecret("gh-s3cret")
			}
			s, _ := NewSelector(o)
			sel, err := s.Select(context.Background(), tt.host)
			if err != nil {
				t.Fatal(err)
			}
			c := sel.Credentials
			if sel.Source != tt.src || c.Username != tt.user || c.Password.Reveal() != tt.pwd || c.IdentityToken.Reveal() != tt.idtok {
				t.Fatalf("got %s %q/%q/%q, want %s %q/%q/%q", sel.Source, c.Username, c.Password.Reveal(), c.IdentityToken.Reveal(), tt.src, tt.user, tt.pwd, tt.idtok)
			}
			if d := s.Describe(tt.host); d != tt.src {
				t.Errorf("Describe says %s, Select used %s", d, sel.Source)
			}
		})
	}
}

// TestHelperAndAuthsAsTheDockerCLI: a helper's answer replaces the auths
// entry; "credentials not found" from a helper replaces it with nothing
// (anonymous); an empty credHelpers entry means the auths entry, whatever
// credsStore says. The differential test in cmd/pull-agent checks the
// same rules against the docker CLI itself.
func TestHelperAndAuthsAsTheDockerCLI(t *testing.T) {
	withHelpers(t)
	const entry = `"auths": {"a.test": {"username": "x", "password": "y"}}`
	tests := []struct {
		name, cfg string
		src       Source
		user      string
	}{
		{"credsStore answers", `{"credsStore": "pa-good", ` + entry + `}`, "config.json credsStore: pa-good", "helper-user"},
		{"credsStore has nothing: anonymous", `{"credsStore": "pa-none", ` + entry + `}`, "config.json credsStore: pa-none", ""},
		{"credHelpers has nothing: anonymous", `{"credHelpers": {"a.test": "pa-none"}, ` + entry + `}`, "config.json credHelpers: pa-none", ""},
		{"empty credHelpers entry: auths, not credsStore", `{"credsStore": "pa-none", "credHelpers": {"a.test": ""}, ` + entry + `}`, SourceAuths, "x"},
		{"credHelpers for another host: credsStore", `{"credsStore": "pa-good", "credHelpers": {"b.test": "pa-none"}, ` + entry + `}`, "config.json credsStore: pa-good", "helper-user"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, _ := NewSelector(Options{DockerConfigDir: configDir(t, tt.cfg)})
			sel, err := s.Select(context.Background(), "a.test")
			if err != nil || sel.Source != tt.src || sel.Credentials.Username != tt.user {
				t.Fatalf("got %v %s %q, want %s %q", err, sel.Source, sel.Credentials.Username, tt.src, tt.user)
			}
			if d := s.Describe("a.test"); d != tt.src {
				t.Errorf("Describe says %s, Select used %s", d, sel.Source)
			}
		})
	}
}

// TestHelperFailures: a helper that fails is ignored, as the docker CLI
// ignores it, and the auths entry (or nothing) is used; the failure is
// named in the source and the log, never with the helper's output. A
// helper that hangs is killed and the pull retried (the CLI would wait).
func TestHelperFailures(t *testing.T) {
	withHelpers(t)
	tests := []struct {
		helper, want string
		transient    bool // an error, retried with backoff
	}{
		{"pa-garbage", "docker-credential-pa-garbage printed something that is not credentials JSON", false},
		{"pa-fail", "docker-credential-pa-fail failed (exit status 1) for h.test; what it printed is not shown", false},
		// A helper that prints its credentials and then fails, or is
		// killed after printing: the output must not reach the error.
		{"pa-leak", "docker-credential-pa-leak failed (exit status 1) for h.test", false},
		{"pa-killed", "docker-credential-pa-killed failed (signal: killed) for h.test", false},
		{"pa-hang", "docker-credential-pa-hang did not answer within 300ms; it was killed", true},
		{"pa-missing", "docker-credential-pa-missing not found on PATH", false},
	}
	for _, tt := range tests {
		for _, withEntry := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/auths entry %v", tt.helper, withEntry), func(t *testing.T) {
				cfg := `{"credHelpers": {"h.test": "` + tt.helper + `"}}`
				want := SourceAnonymous
				if withEntry {
					cfg = `{"credHelpers": {"h.test": "` + tt.helper + `"}, "auths": {"h.test": {"username": "file-user", "password": "file-pw"}}}`
					want = SourceAuths
				}
				logs := &testbed.Buffer{}
				s, _ := NewSelector(Options{DockerConfigDir: configDir(t, cfg), HelperTimeout: 300 * time.Millisecond, Logger: slog.New(slog.NewTextHandler(logs, nil))})
				start := time.Now()
				sel, err := s.Select(context.Background(), "h.test")
				said := string(sel.Source) + " " + sel.HelperFailure
				if tt.transient {
					if err == nil || !strings.Contains(err.Error(), tt.want) || !errors.Is(err, ErrUnavailable) {
						t.Fatalf("got %v, want %q, retried", err, tt.want)
					}
					said = err.Error()
				} else {
					if err != nil || string(sel.Source) != string(want)+" (credHelpers: "+tt.helper+" failed)" || !strings.Contains(sel.HelperFailure, tt.want) {
						t.Fatalf("got %v, source %q; want %s naming %q", err, said, want, tt.want)
					}
					if withEntry != (sel.Credentials.Username == "file-user" && sel.Credentials.Password.Reveal() == "file-pw") || withEntry == sel.Credentials.Anonymous() {
						t.Fatalf("credentials %+v, want the auths entry: %v", sel.Credentials, withEntry)
					}
					if !strings.Contains(logs.String(), "credential helper failed") {
						t.Errorf("the failure is not logged:\n%s", logs)
					}
				}
				for _, out := range []string{"helper-s3cret", "helper-user", "keychain is locked", "not json", "file-pw"} {
					if strings.Contains(said, out) || strings.Contains(logs.String(), out) {
						t.Fatalf("the source or log repeats a secret or the helper's output (%q): %s\n%s", out, said, logs)
					}
				}
				if time.Since(start) > 5*time.Second {
					t.Fatalf("took %s", time.Since(start))
				}
			})
		}
	}
}

// TestHelperEnvironment: a helper sees PATH, HOME, DOCKER_CONFIG, AWS_*
// and the proxy variables of the agent's environment, and nothing else:
// no GHCR_TOKEN, no other setting of the agent's env file.
func TestHelperEnvironment(t *testing.T) {
	withHelpers(t)
	dump := filepath.Join(t.TempDir(), "env")
	if err := testbed.ConfigureCredentialHelpers(helpersDir.dir, testbed.HelperConfig{User: "helper-user", Secret: "helper-s3cret", EnvDump: dump}); err != nil {
		t.Fatal(err)
	}
	for k, v := range map[string]string{
		"GHCR_USER": "gh-bot", "GHCR_TOKEN": "ghp_env-s3cret", "MOLECULE_IMAGE_REGISTRY": "ghcr.io/x", "DOCKER_HOST": "unix:///x.sock",
		"AWS_REGION": "eu-west-1", "AWS_ECR_CACHE_DIR": "/var/lib/x", "NO_PROXY": "169.254.169.254", "https_proxy": "http://proxy.test:3128",
		"DOCKER_CONFIG": "/etc/docker-config", "HOME": "/root", "SOME_OTHER": "x",
	} {
		t.Setenv(k, v)
	}
	s, _ := NewSelector(Options{DockerConfigDir: configDir(t, `{"credHelpers": {"h.test": "pa-envdump"}}`)})
	sel, err := s.Select(context.Background(), "h.test")
	if err != nil || sel.Credentials.Username != "helper-user" {
		t.Fatalf("pa-envdump: %v %+v", err, sel)
	}
	data, err := os.ReadFile(dump)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	for _, kv := range strings.Split(strings.TrimSpace(string(data)), "\n") {
		k, _, _ := strings.Cut(kv, "=")
		got[k] = true
	}
	for _, k := range []string{"PATH", "HOME", "DOCKER_CONFIG", "AWS_REGION", "AWS_ECR_CACHE_DIR", "NO_PROXY", "https_proxy"} {
		if !got[k] {
			t.Errorf("the helper did not get %s; it got %v", k, got)
		}
	}
	for k := range got {
		if !helperEnvKey(k) {
			t.Errorf("the helper got %s", k)
		}
	}
	if strings.Contains(string(data), "ghp_env-s3cret") || got["GHCR_TOKEN"] || got["GHCR_USER"] || got["MOLECULE_IMAGE_REGISTRY"] {
		t.Errorf("the helper's environment holds the agent's settings:\n%s", data)
	}
}

func TestHelperNamesRefused(t *testing.T) {
	for _, name := range []string{"../../tmp/evil", "/usr/bin/evil", "pa good", "pa\tgood", "", "-rf"} {
		err := ValidHelperName(name)
		if err == nil {
			t.Errorf("%q accepted", name)
		}
	}
	for _, cfg := range []string{`{"credHelpers": {"h": "../evil"}}`, `{"credsStore": "a b"}`} {
		if _, err := ParseDockerConfig("config.json", strings.NewReader(cfg)); err == nil || !strings.Contains(err.Error(), "refused") {
			t.Errorf("%s: %v", cfg, err)
		}
	}
	s, _ := NewSelector(Options{DockerConfigDir: configDir(t, `{"credHelpers": {"h.test": "x/y"}}`)})
	if _, err := s.Select(context.Background(), "h.test"); err == nil || !strings.Contains(err.Error(), `credential helper name "x/y" refused`) {
		t.Fatalf("got %v", err)
	}
}

func TestMalformedConfigJSON(t *testing.T) {
	s, _ := NewSelector(Options{DockerConfigDir: configDir(t, `{"auths": `)})
	_, err := s.Select(context.Background(), "a.test")
	if err == nil || !strings.Contains(err.Error(), "config.json: not a valid docker config.json") {
		t.Fatalf("got %v", err)
	}
}

func TestDockerConfigDir(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	if d := DockerConfigDir(env(map[string]string{"DOCKER_CONFIG": "/etc/dc", "HOME": "/home/u"})); d != "/etc/dc" {
		t.Error(d)
	}
	if d := DockerConfigDir(env(map[string]string{"HOME": "/home/u"})); d != "/home/u/.docker" {
		t.Error(d)
	}
	if d := DockerConfigDir(env(nil)); d != "/root/.docker" {
		t.Error(d)
	}
}

// awsEnv points the AWS SDK at the fake ECR API and at nothing else: no
// instance metadata, no shared files.
func awsEnv(t *testing.T, endpoint string) {
	t.Setenv("AWS_ENDPOINT_URL_ECR", endpoint)
	t.Setenv("AWS_ACCESS_KEY_ID", "AKIDTESTTESTTEST")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-key-s3cret")
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "none"))
	t.Setenv("AWS_ECR_DISABLE_CACHE", "")
}

func TestECRTokensCachedRefreshedAndExpired(t *testing.T) {
	const host = "123456789012.dkr.ecr.us-east-2.amazonaws.com"
	const life = 3 * time.Second
	api, err := testbed.NewFakeECR(host, "ecr-pass-s3cret", life)
	if err != nil {
		t.Fatal(err)
	}
	defer api.Close()
	awsEnv(t, api.URL)
	logs := &testbed.Buffer{}
	log := slog.New(slog.NewTextHandler(logs, nil))
	RouteECRLogs(log)
	s, _ := NewSelector(Options{ECRCacheDir: t.TempDir(), Logger: log})
	ctx := context.Background()

	sel, err := s.Select(ctx, host+":5000")
	if err != nil {
		t.Fatal(err)
	}
	if sel.Credentials.Username != "AWS" || sel.Credentials.Password.Reveal() != "ecr-pass-s3cret" {
		t.Fatalf("credentials %+v", sel.Credentials)
	}
	if !strings.HasPrefix(string(sel.Source), "ecr-login (AWS environment keys; token expires ") || sel.Expires.IsZero() {
		t.Fatalf("source %q expires %s", sel.Source, sel.Expires)
	}
	if _, err := s.Select(ctx, host); err != nil || api.Calls() != 1 {
		t.Fatalf("a fresh token must come from the cache: %v, %d API calls", err, api.Calls())
	}
	// ecr-login renews a token once half its life has passed, and reads
	// the real clock: wait for that instant, then for the renewed token's
	// expiry.
	time.Sleep(time.Until(sel.Expires.Add(-life/2 + 300*time.Millisecond)))
	renewed, err := s.Select(ctx, host)
	if err != nil || api.Calls() != 2 {
		t.Fatalf("a token past half its life must be renewed: %v, %d API calls", err, api.Calls())
	}
	api.Fail(500, "ServerException")
	t.Setenv("AWS_MAX_ATTEMPTS", "1") // the SDK's own retries of the 500 would only slow this down
	time.Sleep(time.Until(renewed.Expires.Add(300 * time.Millisecond)))
	_, err = s.Select(ctx, host)
	if err == nil || !strings.Contains(err.Error(), "expired at") {
		t.Fatalf("an expired cached token was offered: %v", err)
	}
	if !errors.Is(err, ErrUnavailable) {
		t.Errorf("an expired token after a failed renewal must be retried: %v", err)
	}
	out := logs.String()
	if !strings.Contains(out, "ServerException") {
		t.Errorf("the ECR API's failure is not in the log:\n%s", out)
	}
	for _, secret := range []string{"ecr-pass-s3cret", "aws-secret-key-s3cret"} {
		if strings.Contains(out, secret) || strings.Contains(err.Error(), secret) {
			t.Errorf("%s leaked", secret)
		}
	}
}

func TestECRAPIFailureIsAnAuthErrorWithCause(t *testing.T) {
	const host = "123456789012.dkr.ecr.us-east-2.amazonaws.com"
	tests := []struct {
		status    int
		code      string
		transient bool
	}{
		{400, "ThrottlingException", true},
		{500, "ServerException", true},
		{503, "ServiceUnavailable", true},
		{400, "AccessDeniedException", false},
		{400, "UnrecognizedClientException", false},
	}
	for _, tt := range tests {
		t.Run(tt.code, func(t *testing.T) {
			api, err := testbed.NewFakeECR(host, "p", time.Hour)
			if err != nil {
				t.Fatal(err)
			}
			defer api.Close()
			awsEnv(t, api.URL)
			t.Setenv("AWS_MAX_ATTEMPTS", "1") // the SDK's own retries would only slow this down
			api.Fail(tt.status, tt.code)
			s, _ := NewSelector(Options{ECRCacheDir: t.TempDir()})
			_, err = s.Select(context.Background(), host)
			if err == nil || !strings.Contains(err.Error(), tt.code) {
				t.Fatalf("got %v", err)
			}
			if got := errors.Is(err, ErrUnavailable); got != tt.transient {
				t.Errorf("errors.Is(%v, ErrUnavailable) = %v, want %v", err, got, tt.transient)
			}
		})
	}
	t.Run("API unreachable", func(t *testing.T) {
		port, err := testbed.FreePort()
		if err != nil {
			t.Fatal(err)
		}
		awsEnv(t, fmt.Sprintf("http://127.0.0.1:%d", port))
		t.Setenv("AWS_MAX_ATTEMPTS", "1")
		s, _ := NewSelector(Options{ECRCacheDir: t.TempDir()})
		_, err = s.Select(context.Background(), host)
		if !errors.Is(err, ErrUnavailable) {
			t.Errorf("connection refused by the ECR API must be retried: %v", err)
		}
	})
}
