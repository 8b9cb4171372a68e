package config

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/url"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/molecule-ai/pull-agent/internal/safetext"
)

// DockerEndpoint is how to reach the Docker Engine API: its address and,
// for a TCP address, the TLS material. Build it with Config.DockerEndpoint.
type DockerEndpoint struct {
	// Host is DOCKER_HOST: unix:///path or tcp://host:port.
	Host string
	// TLSVerify speaks TLS to Host, verifies the daemon's certificate
	// against CertPath/ca.pem and presents CertPath/cert.pem and key.pem.
	TLSVerify bool
	// CertPath is the directory of ca.pem, cert.pem and key.pem.
	CertPath string
}

// The files of DOCKER_CERT_PATH, named as the docker CLI names them.
const (
	certFileCA     = "ca.pem"
	certFileClient = "cert.pem"
	certFileKey    = "key.pem"
)

// CAFile is the CA certificate that signed the daemon's certificate.
func (e DockerEndpoint) CAFile() string { return filepath.Join(e.CertPath, certFileCA) }

// CertFile is this host's client certificate.
func (e DockerEndpoint) CertFile() string { return filepath.Join(e.CertPath, certFileClient) }

// KeyFile is the private key of CertFile.
func (e DockerEndpoint) KeyFile() string { return filepath.Join(e.CertPath, certFileKey) }

// RedactedHost is Host without a user name or password, for a message.
func (e DockerEndpoint) RedactedHost() string { return redactDockerHost(e.Host) }

// Check refuses an endpoint LoadConfig refuses: a Host where registry
// credentials would cross the network in clear text, and TLS without a
// usable ca.pem, cert.pem and key.pem in CertPath.
func (e DockerEndpoint) Check() error {
	if err := checkDockerHost(e.Host, e.TLSVerify); err != nil {
		return fmt.Errorf("%s=%q: %w", KeyDockerHost, e.RedactedHost(), err)
	}
	if e.TLSVerify {
		if err := checkDockerCertFiles(e.CertPath); err != nil {
			return fmt.Errorf("%s: %w", KeyDockerCertPath, err)
		}
	}
	return nil
}

// DockerEndpoint returns where and how to reach the Docker daemon. The
// cert path is part of it only with TLS: without, it is never read.
func (c Config) DockerEndpoint() DockerEndpoint {
	ep := DockerEndpoint{Host: c.DockerHost, TLSVerify: c.DockerTLSVerify}
	if c.DockerTLSVerify {
		ep.CertPath = c.DockerCertPath
	}
	return ep
}

// checkDockerHost checks that host (DOCKER_HOST) is an address the agent
// may send registry credentials to: unix:///path, or tcp://host:port
// (http:// and https:// alike) with TLS (tlsVerify) unless the host is a
// loopback address. Any other scheme is refused: the Docker client would
// dial it as plain TCP. The error says why and what to do; it never
// repeats a password written into the address.
func checkDockerHost(host string, tlsVerify bool) error {
	scheme, rest, ok := strings.Cut(host, "://")
	if !ok {
		return fmt.Errorf("has no scheme; write unix:///path/to/docker.sock, or tcp://host:port with %s", KeyDockerTLSVerify)
	}
	switch scheme {
	case "unix":
		if rest == "" {
			return fmt.Errorf("names no socket; write e.g. %s", defaultDockerHost)
		}
		if tlsVerify {
			return fmt.Errorf("is a unix socket, but %s is set (any value turns it on, even 0 or false): dockerd serves its unix socket without TLS, so every call would fail; unset %s, or use tcp:// with TLS", KeyDockerTLSVerify, KeyDockerTLSVerify)
		}
		return nil
	case "tcp", "http", "https":
	case "ssh":
		return errors.New("ssh:// is not supported (the docker CLI runs ssh for it, the Engine API client cannot); use tcp://host:2376 with TLS, or run the agent on the daemon's host with its unix socket")
	case "npipe":
		return errors.New("npipe:// is a Windows named pipe; on Linux use the unix socket, e.g. " + defaultDockerHost)
	case "fd":
		return errors.New("fd:// is how dockerd listens under systemd socket activation, not an address a client can dial; use the socket it is bound to, e.g. " + defaultDockerHost)
	default:
		if lower := strings.ToLower(scheme); lower != scheme && (lower == "unix" || lower == "tcp" || lower == "http" || lower == "https") {
			return fmt.Errorf("write the scheme in lower case (%s://)", lower)
		}
		return fmt.Errorf("scheme %q is not supported (the Docker client would dial it as plain TCP); use unix:///path/to/docker.sock, or tcp://host:port with %s", safetext.Line(scheme, maxValueRunes), KeyDockerTLSVerify)
	}
	u, err := url.Parse("tcp://" + rest)
	if err != nil {
		return fmt.Errorf("is not a valid address (%v); write %s://host:port", errors.Unwrap(err), scheme)
	}
	if u.User != nil {
		return errors.New("carries a user name or password, which the Docker daemon never reads; remove it")
	}
	if u.Hostname() == "" {
		return fmt.Errorf("names no host; write %s://host:port", scheme)
	}
	if n, err := strconv.Atoi(u.Port()); err != nil || n < 1 || n > 65535 {
		return fmt.Errorf("names no port (1-65535); write %s://%s:2376 (dockerd's TLS port)", scheme, u.Hostname())
	}
	if tlsVerify {
		return nil
	}
	if scheme == "https" {
		return fmt.Errorf("is https://, but %s is not set, and the Docker client takes TLS from %s, not from the scheme: it would speak plain HTTP; set %s=1 and %s", KeyDockerTLSVerify, KeyDockerTLSVerify, KeyDockerTLSVerify, KeyDockerCertPath)
	}
	// localhost, 127.0.0.0/8 or ::1; a name that merely resolves there does
	// not count: DNS can change its answer.
	if !IsLoopbackHost(u.Hostname()) {
		return fmt.Errorf("%s is not a loopback address and %s is not set: every registry credential sent with a pull would cross the network in clear text, to whoever answers at that address; set %s=1 and %s (the directory of %s, %s, %s), or use the daemon's unix socket (%s)",
			safetext.Line(u.Hostname(), maxValueRunes), KeyDockerTLSVerify, KeyDockerTLSVerify, KeyDockerCertPath, certFileCA, certFileClient, certFileKey, defaultDockerHost)
	}
	return nil
}

// redactDockerHost removes a user name and password from host for an error
// message.
func redactDockerHost(host string) string {
	scheme, rest, ok := strings.Cut(host, "://")
	if !ok {
		return host
	}
	end := strings.IndexByte(rest, '/')
	if end < 0 {
		end = len(rest)
	}
	if i := strings.LastIndexByte(rest[:end], '@'); i >= 0 {
		return scheme + "://" + safetext.Redacted + "@" + rest[i+1:]
	}
	return host
}

// checkDockerCertFiles checks what TLS needs in dir: ca.pem with at least
// one certificate, cert.pem and key.pem a certificate and its key. The
// error names the file, what it must hold and what to do. The key's
// content never appears in it.
func checkDockerCertFiles(dir string) error {
	ep := DockerEndpoint{CertPath: dir}
	hint := fmt.Sprintf("copy it there, or set %s to the directory that holds %s, %s and %s", KeyDockerCertPath, certFileCA, certFileClient, certFileKey)
	read := func(path, what string) ([]byte, error) {
		data, err := os.ReadFile(path)
		if err != nil {
			var pe *fs.PathError
			if errors.As(err, &pe) {
				err = pe.Err
			}
			return nil, fmt.Errorf("%s (%s) cannot be read: %v; %s", path, what, err, hint)
		}
		return data, nil
	}
	ca, err := read(ep.CAFile(), "the CA certificate that signed the daemon's certificate")
	if err != nil {
		return err
	}
	cert, err := read(ep.CertFile(), "this host's client certificate, signed by a CA the daemon trusts")
	if err != nil {
		return err
	}
	key, err := read(ep.KeyFile(), "the private key of "+certFileClient)
	if err != nil {
		return err
	}
	if !x509.NewCertPool().AppendCertsFromPEM(ca) {
		return fmt.Errorf("%s holds no PEM certificate; put the CA certificate that signed the daemon's certificate there", ep.CAFile())
	}
	if _, err := tls.X509KeyPair(cert, key); err != nil {
		return fmt.Errorf("%s and %s are not a certificate and its unencrypted private key (%v); put this host's client certificate and key there", ep.CertFile(), ep.KeyFile(), err)
	}
	return nil
}

// socketOwnerRisks says who, besides root and the docker group, could be
// the process behind the Docker socket st describes: its owner unless that
// is root or uid (this process), its group unless that is root, dockerGID
// (-1 when there is no docker group) or gid. dockerd makes its socket
// root:docker; anyone else owning it may have bound it, impersonate the
// daemon and receive every registry credential the agent sends. Nothing is
// said of a file that is not a socket, or without an owner to read.
func socketOwnerRisks(st fs.FileInfo, uid, gid, dockerGID int) (owner, group bool) {
	if st == nil || st.Mode().Type() != fs.ModeSocket {
		return false, false
	}
	sys, ok := st.Sys().(*syscall.Stat_t)
	if !ok {
		return false, false
	}
	owner = sys.Uid != 0 && int64(sys.Uid) != int64(uid)
	group = sys.Gid != 0 && int64(sys.Gid) != int64(dockerGID) && int64(sys.Gid) != int64(gid)
	return owner, group
}

// WarnDockerSocketOwner logs a warning when host is a unix socket that a
// user other than root (or this process's) owns, or whose group is neither
// root nor docker (nor this process's): see socketOwnerRisks.
func WarnDockerSocketOwner(log *slog.Logger, host string) {
	path, ok := strings.CutPrefix(host, "unix://")
	if !ok {
		return
	}
	st, err := os.Stat(path)
	if err != nil {
		return // the ping says what is wrong
	}
	dockerGID := -1
	if g, err := user.LookupGroup("docker"); err == nil {
		if n, err := strconv.Atoi(g.Gid); err == nil {
			dockerGID = n
		}
	}
	owner, group := socketOwnerRisks(st, os.Geteuid(), os.Getegid(), dockerGID)
	sys, _ := st.Sys().(*syscall.Stat_t)
	if owner {
		log.Warn("Docker socket is owned by a user other than root, who could listen there in the daemon's place and receive every registry credential; check who serves it (ss -xlp), then chown root",
			"socket", path, "uid", sys.Uid)
	}
	if group {
		log.Warn("Docker socket's group is neither root nor docker, so another program may have created it and would receive every registry credential; check who serves it (ss -xlp), then chgrp docker",
			"socket", path, "gid", sys.Gid)
	}
}

// IsLoopbackHost reports whether host (with or without a port) is
// localhost or a loopback IP address. A name that merely resolves there
// does not count: DNS can change its answer.
func IsLoopbackHost(host string) bool {
	h := host
	if hh, _, err := net.SplitHostPort(host); err == nil {
		h = hh
	}
	if strings.EqualFold(h, "localhost") {
		return true
	}
	ip := net.ParseIP(strings.Trim(h, "[]"))
	return ip != nil && ip.IsLoopback()
}
