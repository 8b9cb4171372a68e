package testbed

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// DaemonTLS is the daemon's TLS listener (Options.TLS): dockerd runs with
// --tlsverify, so it speaks only TLS there and serves only clients that
// present a certificate signed by the bed's CA.
type DaemonTLS struct {
	// Host is the listener's DOCKER_HOST, tcp://127.0.0.1:<port>.
	Host string
	// CertDir is a DOCKER_CERT_PATH the daemon accepts: ca.pem (the CA
	// that signed the daemon's certificate), cert.pem and key.pem (a
	// client certificate signed by the same CA).
	CertDir string

	caKey  *ecdsa.PrivateKey
	ca     *x509.Certificate
	caPEM  []byte
	daemon string // directory of the daemon's ca.pem, cert.pem, key.pem
}

// newDaemonTLS makes a CA, a server certificate for 127.0.0.1 and a client
// certificate, and writes them under dir.
func newDaemonTLS(dir string, port int) (*DaemonTLS, error) {
	caKey, caDER, err := newCA("testbed docker CA")
	if err != nil {
		return nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	d := &DaemonTLS{
		Host:    "tcp://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(port)),
		CertDir: filepath.Join(dir, "client"),
		caKey:   caKey,
		ca:      ca,
		caPEM:   pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		daemon:  filepath.Join(dir, "daemon"),
	}
	server, err := issue(ca, caKey, "dockerd", x509.ExtKeyUsageServerAuth, []net.IP{net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return nil, err
	}
	if err := writeCertDir(d.daemon, d.caPEM, server); err != nil {
		return nil, err
	}
	if err := d.WriteCertDir(d.CertDir, true, true); err != nil {
		return nil, err
	}
	return d, nil
}

// WriteCertDir writes a DOCKER_CERT_PATH into dir. With trustDaemon false,
// ca.pem is another CA's certificate: a client that verifies the daemon
// must refuse it. With knownClient false, another CA signs cert.pem: the
// daemon must refuse the client.
func (d *DaemonTLS) WriteCertDir(dir string, trustDaemon, knownClient bool) error {
	caPEM := d.caPEM
	if !trustDaemon {
		_, otherDER, err := newCA("another docker CA")
		if err != nil {
			return err
		}
		caPEM = pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: otherDER})
	}
	signer, signerKey := d.ca, d.caKey
	if !knownClient {
		otherKey, otherDER, err := newCA("an unknown client CA")
		if err != nil {
			return err
		}
		if signer, err = x509.ParseCertificate(otherDER); err != nil {
			return err
		}
		signerKey = otherKey
	}
	client, err := issue(signer, signerKey, "pull-agent test client", x509.ExtKeyUsageClientAuth, nil)
	if err != nil {
		return err
	}
	return writeCertDir(dir, caPEM, client)
}

// dockerdArgs are the daemon's flags for the listener.
func (d *DaemonTLS) dockerdArgs() []string {
	return []string{
		"--tlsverify",
		"--tlscacert", filepath.Join(d.daemon, "ca.pem"),
		"--tlscert", filepath.Join(d.daemon, "cert.pem"),
		"--tlskey", filepath.Join(d.daemon, "key.pem"),
		"-H", d.Host,
	}
}

// ready reports whether the daemon answers a ping on the listener with the
// client certificate of CertDir.
func (d *DaemonTLS) ready(ctx context.Context) bool {
	cert, err := tls.LoadX509KeyPair(filepath.Join(d.CertDir, "cert.pem"), filepath.Join(d.CertDir, "key.pem"))
	if err != nil {
		return false
	}
	pool := x509.NewCertPool()
	pool.AddCert(d.ca)
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12}}
	defer tr.CloseIdleConnections()
	return httpOK(ctx, &http.Client{Transport: tr}, "https://"+strings.TrimPrefix(d.Host, "tcp://")+"/_ping")
}

// issue makes a key and a certificate for it signed by ca, for usage
// (server or client authentication), valid for ips.
func issue(ca *x509.Certificate, caKey *ecdsa.PrivateKey, cn string, usage x509.ExtKeyUsage, ips []net.IP) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		return tls.Certificate{}, err
	}
	tmpl := &x509.Certificate{SerialNumber: serial, Subject: pkix.Name{CommonName: cn}, IPAddresses: ips,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}

// writeCertDir writes ca.pem, cert.pem and key.pem (0600) into dir, as the
// docker CLI expects them in DOCKER_CERT_PATH and dockerd in --tlscacert,
// --tlscert and --tlskey.
func writeCertDir(dir string, caPEM []byte, cert tls.Certificate) error {
	keyDER, err := x509.MarshalECPrivateKey(cert.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	files := map[string][]byte{
		"ca.pem":   caPEM,
		"cert.pem": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: cert.Certificate[0]}),
		"key.pem":  pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o600); err != nil {
			return fmt.Errorf("writing %s: %w", name, err)
		}
	}
	return nil
}
