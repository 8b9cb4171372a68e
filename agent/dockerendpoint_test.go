package agent

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"log/slog"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// The agent keeps its last good configuration when DOCKER_HOST is refused,
// hands NewEngine the TLS settings, and does not switch daemons without a
// restart.
func TestAgentDockerEndpoint(t *testing.T) {
	certs := filepath.Join(t.TempDir(), "certs")
	writeDockerCerts(t, certs)
	envFile := filepath.Join(t.TempDir(), "pull-agent.env")
	write := func(s string) {
		t.Helper()
		mustNil(t, os.WriteFile(envFile, []byte(config.KeyRegistry+"=r.test/x\n"+s), 0o600))
	}
	var logs bytes.Buffer
	var endpoints []config.DockerEndpoint
	e := newScriptEngine(nil)
	a, err := New(Options{
		EnvFile: envFile,
		Getenv:  func(string) string { return "" },
		NewEngine: func(ep config.DockerEndpoint) (engine.Engine, error) {
			endpoints = append(endpoints, ep)
			return e, nil
		},
		NewAuthorizer: func(config.Config) (pull.Authorizer, error) { return anonymous{}, nil },
		Logger:        slog.New(slog.NewTextHandler(&logs, nil)),
	})
	mustNil(t, err)
	l := newLoop(a)
	l.initialEnv()

	write(config.KeyRuntimes + "=codex\nDOCKER_HOST=tcp://203.0.113.7:2375\n")
	l.loadConfig(true, false)
	if l.cfg != nil || len(endpoints) != 0 || l.cfgErr == nil || !strings.Contains(l.cfgErr.Error(), "clear text") {
		t.Fatalf("a remote DOCKER_HOST without TLS at start: cfg %v, engines %v, error %v", l.cfg, endpoints, l.cfgErr)
	}

	write(config.KeyRuntimes + "=codex\nDOCKER_HOST=tcp://203.0.113.7:2376\nDOCKER_TLS_VERIFY=1\nDOCKER_CERT_PATH=" + certs + "\n")
	l.loadConfig(false, false)
	want := config.DockerEndpoint{Host: "tcp://203.0.113.7:2376", TLSVerify: true, CertPath: certs}
	if l.cfg == nil || len(endpoints) != 1 || endpoints[0] != want {
		t.Fatalf("with TLS: cfg %v, engines %+v, error %v", l.cfg, endpoints, l.cfgErr)
	}

	write(config.KeyRuntimes + "=codex,hermes\nDOCKER_HOST=tcp://203.0.113.7:2376\n")
	l.loadConfig(false, false)
	if l.cfgErr == nil || len(l.cfg.Runtimes) != 1 || l.cfg.DockerEndpoint() != want {
		t.Fatalf("TLS dropped: error %v, runtimes %v, endpoint %+v", l.cfgErr, l.cfg.Runtimes, l.cfg.DockerEndpoint())
	}
	if !strings.Contains(logs.String(), "configuration refused; keeping the last good configuration") {
		t.Fatalf("no refusal logged:\n%s", logs.String())
	}

	write(config.KeyRuntimes + "=codex,hermes\nDOCKER_HOST=tcp://127.0.0.1:2375\n")
	l.loadConfig(false, false)
	if l.cfgErr != nil || len(l.cfg.Runtimes) != 2 || len(endpoints) != 1 || l.cfg.DockerEndpoint() != want {
		t.Fatalf("another daemon: error %v, runtimes %v, engines %+v, endpoint %+v", l.cfgErr, l.cfg.Runtimes, endpoints, l.cfg.DockerEndpoint())
	}
	if !strings.Contains(logs.String(), "changed; restart the agent to use it") {
		t.Fatalf("no restart hint logged:\n%s", logs.String())
	}
}

// writeDockerCerts writes ca.pem, cert.pem and key.pem into dir: a CA and
// a client certificate it signed.
func writeDockerCerts(t *testing.T, dir string) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	mustNil(t, err)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"}, IsCA: true, BasicConstraintsValid: true,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	mustNil(t, err)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	mustNil(t, err)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "client"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caTmpl, &key.PublicKey, caKey)
	mustNil(t, err)
	keyDER, err := x509.MarshalECPrivateKey(key)
	mustNil(t, err)
	mustNil(t, os.MkdirAll(dir, 0o700))
	mustNil(t, os.WriteFile(filepath.Join(dir, "ca.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600))
	mustNil(t, os.WriteFile(filepath.Join(dir, "cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600))
	mustNil(t, os.WriteFile(filepath.Join(dir, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}), 0o600))
}

func mustNil(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}
