package config

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io/fs"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestCheckDockerHost(t *testing.T) {
	const clearText = "would cross the network in clear text"
	tests := []struct {
		name string
		host string
		tls  bool
		want string // a part of the error; "" = accepted
	}{
		{"default socket", defaultDockerHost, false, ""},
		{"socket elsewhere", "unix:///run/user/1000/docker.sock", false, ""},
		{"loopback 127.0.0.1", "tcp://127.0.0.1:2375", false, ""},
		{"loopback anywhere in 127/8", "tcp://127.45.6.7:2375", false, ""},
		{"localhost", "tcp://localhost:2375", false, ""},
		{"localhost in capitals", "tcp://LocalHost:2375", false, ""},
		{"ipv6 loopback", "tcp://[::1]:2375", false, ""},
		{"ipv4-mapped loopback", "tcp://[::ffff:127.0.0.1]:2375", false, ""},
		{"http loopback", "http://127.0.0.1:2375", false, ""},
		{"loopback with a base path", "tcp://127.0.0.1:2375/prefix", false, ""},
		{"loopback with TLS", "tcp://127.0.0.1:2376", true, ""},
		{"remote name with TLS", "tcp://docker.example.test:2376", true, ""},
		{"remote address with TLS", "tcp://203.0.113.7:2376", true, ""},
		{"remote ipv6 with TLS", "tcp://[2001:db8::7]:2376", true, ""},
		{"https with TLS", "https://docker.example.test:2376", true, ""},

		{"remote address without TLS", "tcp://203.0.113.7:2375", false, "203.0.113.7 is not a loopback address and DOCKER_TLS_VERIFY is not set: every registry credential sent with a pull " + clearText},
		{"remote name without TLS", "tcp://docker.example.test:2375", false, clearText},
		{"private address without TLS", "tcp://10.0.0.5:2375", false, clearText},
		{"http remote without TLS", "http://10.0.0.5:2375", false, clearText},
		{"remote ipv6 without TLS", "tcp://[2001:db8::7]:2375", false, clearText},
		{"a name that resolves to loopback", "tcp://127.0.0.1.nip.io:2375", false, clearText},
		{"localhost as a subdomain", "tcp://localhost.example.test:2375", false, clearText},
		{"the unspecified address", "tcp://0.0.0.0:2375", false, clearText},
		{"ipv4-mapped remote", "tcp://[::ffff:10.0.0.5]:2375", false, clearText},
		{"link-local with a zone", "tcp://[fe80::1%25eth0]:2375", false, clearText},
		{"https without TLS is plain HTTP", "https://docker.example.test:2376", false, "the Docker client takes TLS from DOCKER_TLS_VERIFY, not from the scheme"},
		{"https loopback without TLS", "https://127.0.0.1:2376", false, "not from the scheme"},

		{"empty socket path", "unix://", false, "names no socket"},
		{"socket with TLS", defaultDockerHost, true, "dockerd serves its unix socket without TLS"},
		{"no scheme, a path", "/var/run/docker.sock", false, "has no scheme"},
		{"no scheme, host:port", "docker.example.test:2375", false, "has no scheme"},
		{"empty", "", false, "has no scheme"},
		{"ssh", "ssh://me@docker.example.test", false, "ssh:// is not supported"},
		{"npipe", "npipe:////./pipe/docker_engine", false, "Windows named pipe"},
		{"fd", "fd://", false, "not an address a client can dial"},
		{"capital scheme", "TCP://10.0.0.5:2375", false, "write the scheme in lower case (tcp://)"},
		{"unknown scheme is dialled as TCP", "tls://10.0.0.5:2376", true, `scheme "tls" is not supported (the Docker client would dial it as plain TCP)`},
		{"no host", "tcp://:2375", false, "names no host"},
		{"no port", "tcp://127.0.0.1", false, "names no port"},
		{"port out of range", "tcp://127.0.0.1:99999", false, "names no port (1-65535)"},
		{"user and password", "tcp://bob:hunter2@docker.example.test:2376", true, "carries a user name or password"},
		{"not a URL", "tcp://[::1", false, "is not a valid address"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkDockerHost(tt.host, tt.tls)
			switch {
			case tt.want == "" && err != nil:
				t.Fatalf("refused: %v", err)
			case tt.want != "" && err == nil:
				t.Fatalf("accepted, want an error containing %q", tt.want)
			case tt.want != "" && !strings.Contains(err.Error(), tt.want):
				t.Fatalf("error %q does not contain %q", err, tt.want)
			}
			if err != nil && strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("the error repeats the password: %v", err)
			}
		})
	}
}

func TestRedactDockerHost(t *testing.T) {
	for in, want := range map[string]string{
		"tcp://bob:hunter2@h:2376":      "tcp://REDACTED@h:2376",
		"tcp://bob:hun@ter2@h:2376/p@x": "tcp://REDACTED@h:2376/p@x",
		"tcp://h:2376/p@x":              "tcp://h:2376/p@x",
		defaultDockerHost:               defaultDockerHost,
		"no scheme@all":                 "no scheme@all",
	} {
		if got := redactDockerHost(in); got != want {
			t.Errorf("redactDockerHost(%q) = %q, want %q", in, got, want)
		}
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

func TestLoadConfigDockerTLS(t *testing.T) {
	certs := filepath.Join(t.TempDir(), "certs")
	writeDockerCerts(t, certs)
	const remote = "tcp://docker.example.test:2376"

	t.Run("TLS to a remote daemon", func(t *testing.T) {
		cfg := mustLoad(t, nil, map[string]string{KeyDockerHost: remote, KeyDockerTLSVerify: "1", KeyDockerCertPath: certs})
		want := DockerEndpoint{Host: remote, TLSVerify: true, CertPath: certs}
		if cfg.DockerEndpoint() != want {
			t.Fatalf("endpoint %+v, want %+v", cfg.DockerEndpoint(), want)
		}
	})
	t.Run("any value turns TLS on, as for the docker CLI", func(t *testing.T) {
		cfg := mustLoad(t, nil, map[string]string{KeyDockerHost: remote, KeyDockerTLSVerify: "0", KeyDockerCertPath: certs})
		if !cfg.DockerTLSVerify {
			t.Fatal("DOCKER_TLS_VERIFY=0 left TLS off")
		}
	})
	t.Run("the env file wins over the environment", func(t *testing.T) {
		file := []EnvVar{{Key: KeyDockerHost, Value: remote, Line: 1}, {Key: KeyDockerTLSVerify, Value: "1", Line: 2}, {Key: KeyDockerCertPath, Value: certs, Line: 3}}
		cfg := mustLoad(t, file, map[string]string{KeyDockerHost: defaultDockerHost, KeyDockerCertPath: "/elsewhere"})
		if cfg.DockerEndpoint() != (DockerEndpoint{Host: remote, TLSVerify: true, CertPath: certs}) {
			t.Fatalf("endpoint %+v", cfg.DockerEndpoint())
		}
		// An empty DOCKER_TLS_VERIFY in the file turns off the environment's.
		file = []EnvVar{{Key: KeyDockerTLSVerify, Value: "", Line: 1}}
		if cfg := mustLoad(t, file, map[string]string{KeyDockerTLSVerify: "1"}); cfg.DockerTLSVerify {
			t.Fatal("the environment's DOCKER_TLS_VERIFY beat the file's empty one")
		}
	})
	t.Run("cert path defaults", func(t *testing.T) {
		for _, tt := range []struct {
			env  map[string]string
			want string
		}{
			{map[string]string{"HOME": "/home/op"}, "/home/op/.docker"},
			{map[string]string{"HOME": "/home/op", "DOCKER_CONFIG": "/etc/docker-cli"}, "/etc/docker-cli"},
			{nil, "/root/.docker"}, // a systemd service has no HOME
			{map[string]string{"HOME": "/home/op", KeyDockerCertPath: "/etc/pull-agent/docker"}, "/etc/pull-agent/docker"},
		} {
			if got := mustLoad(t, nil, tt.env).DockerCertPath; got != tt.want {
				t.Errorf("env %v: cert path %q, want %q", tt.env, got, tt.want)
			}
		}
		home := t.TempDir()
		writeDockerCerts(t, filepath.Join(home, ".docker"))
		if cfg := mustLoad(t, nil, map[string]string{"HOME": home, KeyDockerHost: remote, KeyDockerTLSVerify: "1"}); cfg.DockerCertPath != filepath.Join(home, ".docker") {
			t.Fatalf("cert path %q", cfg.DockerCertPath)
		}
	})
	t.Run("TLS off: the cert path is not read", func(t *testing.T) {
		cfg := mustLoad(t, nil, map[string]string{KeyDockerHost: "tcp://127.0.0.1:2375", KeyDockerCertPath: "/nonexistent"})
		// Nor part of the endpoint: changing it needs no restart.
		if cfg.DockerEndpoint() != (DockerEndpoint{Host: "tcp://127.0.0.1:2375"}) {
			t.Fatalf("endpoint %+v", cfg.DockerEndpoint())
		}
	})
}

func TestLoadConfigRefusesDockerHosts(t *testing.T) {
	certs := filepath.Join(t.TempDir(), "certs")
	writeDockerCerts(t, certs)
	noCA := filepath.Join(t.TempDir(), "no-ca")
	writeDockerCerts(t, noCA)
	mustNil(t, os.Remove(filepath.Join(noCA, "ca.pem")))
	noKey := filepath.Join(t.TempDir(), "no-key")
	writeDockerCerts(t, noKey)
	mustNil(t, os.Remove(filepath.Join(noKey, "key.pem")))
	badCA := filepath.Join(t.TempDir(), "bad-ca")
	writeDockerCerts(t, badCA)
	mustNil(t, os.WriteFile(filepath.Join(badCA, "ca.pem"), []byte("not a certificate\n"), 0o600))
	otherKey := filepath.Join(t.TempDir(), "other-key")
	writeDockerCerts(t, otherKey)
	other := filepath.Join(t.TempDir(), "other")
	writeDockerCerts(t, other)
	data, err := os.ReadFile(filepath.Join(other, "key.pem"))
	mustNil(t, err)
	mustNil(t, os.WriteFile(filepath.Join(otherKey, "key.pem"), data, 0o600))
	keyPEM, err := os.ReadFile(filepath.Join(otherKey, "key.pem"))
	mustNil(t, err)

	tests := []struct {
		name      string
		file      []EnvVar
		env       map[string]string
		key, want string
	}{
		{"remote without TLS, from the file", []EnvVar{{Key: KeyDockerHost, Value: "tcp://203.0.113.7:2375", Line: 4}}, nil,
			KeyDockerHost, `test.env:4: DOCKER_HOST="tcp://203.0.113.7:2375": 203.0.113.7 is not a loopback address and DOCKER_TLS_VERIFY is not set: every registry credential sent with a pull would cross the network in clear text, to whoever answers at that address; set DOCKER_TLS_VERIFY=1 and DOCKER_CERT_PATH (the directory of ca.pem, cert.pem, key.pem), or use the daemon's unix socket (unix:///var/run/docker.sock)`},
		{"remote without TLS, from the environment", nil, map[string]string{KeyDockerHost: "tcp://docker.example.test:2375", KeyDockerCertPath: certs},
			KeyDockerHost, `environment: DOCKER_HOST="tcp://docker.example.test:2375": docker.example.test is not a loopback address`},
		{"TLS on the default socket", nil, map[string]string{KeyDockerTLSVerify: "1"},
			KeyDockerHost, `default (DOCKER_HOST unset): DOCKER_HOST="unix:///var/run/docker.sock": is a unix socket, but DOCKER_TLS_VERIFY is set`},
		{"a password in the address", nil, map[string]string{KeyDockerHost: "tcp://bob:hunter2@10.0.0.5:2376", KeyDockerTLSVerify: "1", KeyDockerCertPath: certs},
			KeyDockerHost, `DOCKER_HOST="tcp://REDACTED@10.0.0.5:2376": carries a user name or password`},
		{"ca.pem missing", nil, map[string]string{KeyDockerHost: "tcp://10.0.0.5:2376", KeyDockerTLSVerify: "1", KeyDockerCertPath: noCA},
			KeyDockerCertPath, noCA + "/ca.pem (the CA certificate that signed the daemon's certificate) cannot be read: no such file or directory; copy it there, or set DOCKER_CERT_PATH to the directory that holds ca.pem, cert.pem and key.pem"},
		{"key.pem missing", nil, map[string]string{KeyDockerHost: "tcp://10.0.0.5:2376", KeyDockerTLSVerify: "1", KeyDockerCertPath: noKey},
			KeyDockerCertPath, noKey + "/key.pem (the private key of cert.pem) cannot be read"},
		{"the default cert path missing", nil, map[string]string{"HOME": "/nonexistent", KeyDockerHost: "tcp://10.0.0.5:2376", KeyDockerTLSVerify: "1"},
			KeyDockerCertPath, `default (DOCKER_CERT_PATH unset): DOCKER_CERT_PATH="/nonexistent/.docker": /nonexistent/.docker/ca.pem`},
		{"ca.pem not a certificate", nil, map[string]string{KeyDockerHost: "tcp://10.0.0.5:2376", KeyDockerTLSVerify: "1", KeyDockerCertPath: badCA},
			KeyDockerCertPath, badCA + "/ca.pem holds no PEM certificate"},
		{"key.pem of another certificate", nil, map[string]string{KeyDockerHost: "tcp://10.0.0.5:2376", KeyDockerTLSVerify: "1", KeyDockerCertPath: otherKey},
			KeyDockerCertPath, otherKey + "/cert.pem and " + otherKey + "/key.pem are not a certificate and its unencrypted private key"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := LoadConfig("test.env", tt.file, envOf(tt.env))
			if err == nil {
				t.Fatal("accepted")
			}
			var ce *configError
			if !errors.As(err, &ce) || ce.Key != tt.key {
				t.Fatalf("error %v is not a configError for %s", err, tt.key)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error\n%s\ndoes not contain\n%s", err, tt.want)
			}
			for _, secret := range []string{"hunter2", strings.TrimSpace(string(keyPEM))} {
				if strings.Contains(err.Error(), secret) {
					t.Fatalf("the error repeats a secret: %v", err)
				}
			}
		})
	}
}

// fakeStat is a stat result for socketOwnerRisks.
type fakeStat struct {
	mode fs.FileMode
	sys  any
}

func (f fakeStat) Name() string       { return "docker.sock" }
func (f fakeStat) Size() int64        { return 0 }
func (f fakeStat) Mode() fs.FileMode  { return f.mode }
func (f fakeStat) ModTime() time.Time { return time.Time{} }
func (f fakeStat) IsDir() bool        { return false }
func (f fakeStat) Sys() any           { return f.sys }

func TestSocketOwnerRisks(t *testing.T) {
	const docker = 998
	sock := func(uid, gid uint32) fakeStat {
		return fakeStat{mode: fs.ModeSocket | 0o660, sys: &syscall.Stat_t{Uid: uid, Gid: gid}}
	}
	tests := []struct {
		name         string
		st           fs.FileInfo
		uid, gid     int // this process
		dockerGID    int
		owner, group bool
	}{
		{"root:docker, as dockerd makes it", sock(0, docker), 0, 0, docker, false, false},
		{"root:root", sock(0, 0), 0, 0, docker, false, false},
		{"root:root without a docker group", sock(0, 0), 0, 0, -1, false, false},
		{"owned by a user", sock(1000, docker), 0, 0, docker, true, false},
		{"a user's group", sock(0, 1000), 0, 0, docker, false, true},
		{"a user's socket, entirely", sock(1000, 1000), 0, 0, docker, true, true},
		{"a group when there is no docker group", sock(0, docker), 0, 0, -1, false, true},
		{"rootless: the agent's own user", sock(1000, 1000), 1000, 1000, docker, false, false},
		{"rootless: another user than the agent's", sock(1001, 1000), 1000, 1000, docker, true, false},
		{"nobody", sock(65534, 65534), 0, 0, docker, true, true},
		{"not a socket", fakeStat{mode: 0o644, sys: &syscall.Stat_t{Uid: 1000, Gid: 1000}}, 0, 0, docker, false, false},
		{"no owner to read", fakeStat{mode: fs.ModeSocket}, 0, 0, docker, false, false},
		{"nothing", nil, 0, 0, docker, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			owner, group := socketOwnerRisks(tt.st, tt.uid, tt.gid, tt.dockerGID)
			if owner != tt.owner || group != tt.group {
				t.Fatalf("owner risk %v, group risk %v; want %v, %v", owner, group, tt.owner, tt.group)
			}
		})
	}
}
