package auth

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os/exec"
	"strings"
	"testing"

	"github.com/docker/docker-credential-helpers/client"
	"github.com/docker/docker-credential-helpers/credentials"
)

// cannedHelper is a helper program that answers with fixed output.
type cannedHelper struct {
	out  []byte
	fail bool
}

func (c *cannedHelper) Input(io.Reader) {}
func (c *cannedHelper) Output() ([]byte, error) {
	if c.fail {
		return c.out, &exec.ExitError{}
	}
	return c.out, nil
}

// FuzzHelperOutput feeds arbitrary helper output to the parser: it never
// panics, never echoes the output in an error (whether the helper exited 0
// or failed after printing), and a decoded answer is kept.
func FuzzHelperOutput(f *testing.F) {
	f.Add([]byte(`{"ServerURL":"h","Username":"u","Secret":"s"}`), false)
	f.Add([]byte(`{"Username":"<token>","Secret":"t"}`), false)
	f.Add([]byte("credentials not found in native keychain"), true)
	f.Add([]byte("<<<garbage>>>"), false)
	f.Add([]byte(`{"ServerURL":"h","Username":"robot","Secret":"s3cret-printed-then-failed"}`), true)
	f.Add([]byte("the keychain is locked"), true)
	f.Add([]byte(""), false)
	f.Fuzz(func(t *testing.T, out []byte, fail bool) {
		prog := func(...string) client.Program { return &cannedHelper{out: out, fail: fail} }
		c, err := helperGet(prog, "docker-credential-fuzz", "h.test")
		if err != nil {
			if !errors.Is(err, ErrNoCredentials) && !strings.Contains(err.Error(), "docker-credential-fuzz") {
				t.Fatalf("error does not name the helper: %v", err)
			}
			// Our own words may hold a short output by chance; anything
			// longer that shows up came from the helper.
			own := helperFailed("docker-credential-fuzz", "h.test", &exec.ExitError{}, nil).Error() + " printed something that is not credentials JSON"
			if o := strings.TrimSpace(string(out)); len(o) > 8 && strings.Contains(err.Error(), o) && !strings.Contains(own, o) {
				t.Fatalf("helper output echoed: %v", err)
			}
			return
		}
		if fail {
			t.Fatalf("a failing helper yielded credentials %+v", c)
		}
		// What the helper answered is what is kept: its user and secret,
		// or the secret as an identity token for the user "<token>".
		var answer credentials.Credentials
		if err := json.NewDecoder(bytes.NewReader(out)).Decode(&answer); err != nil {
			t.Fatalf("credentials %+v from output that does not decode: %v", c, err)
		}
		want := Credentials{Username: answer.Username, Password: NewSecret(answer.Secret)}
		if answer.Username == "<token>" {
			want = Credentials{IdentityToken: NewSecret(answer.Secret)}
		}
		if c.Username != want.Username || c.Password.Reveal() != want.Password.Reveal() || c.IdentityToken.Reveal() != want.IdentityToken.Reveal() {
			t.Fatalf("helper answered user %q, secret of %d bytes; kept %q, password of %d bytes, identity token of %d bytes",
				answer.Username, len(answer.Secret), c.Username, len(c.Password.Reveal()), len(c.IdentityToken.Reveal()))
		}
	})
}

// FuzzParseDockerConfig: any config.json either parses with valid helper
// names (or an empty credHelpers entry, which means the auths entry) or is
// refused naming the file; never a panic.
func FuzzParseDockerConfig(f *testing.F) {
	for _, s := range []string{`{}`, `{"auths":{"a":{"auth":"dTpw"}}}`, `{"credHelpers":{"h":"ecr-login"}}`, `{"credHelpers":{"h":""}}`, `{"credsStore":"a b"}`, `{"auths":`, `[]`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		cf, err := ParseDockerConfig("config.json", strings.NewReader(string(data)))
		if err != nil {
			if !strings.HasPrefix(err.Error(), "config.json") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		for _, h := range cf.CredentialHelpers {
			if h != "" && ValidHelperName(h) != nil {
				t.Fatalf("accepted helper %q", h)
			}
		}
		if cf.CredentialsStore != "" && ValidHelperName(cf.CredentialsStore) != nil {
			t.Fatalf("accepted credsStore %q", cf.CredentialsStore)
		}
	})
}
