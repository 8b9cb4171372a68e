package testbed

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// FakeECR answers the ECR API's GetAuthorizationToken, the one AWS call
// pull-agent makes, and the EC2 instance metadata service (IMDSv2) calls
// that fetch an instance role's credentials. It is the only stand-in of
// the test bed: there is no AWS here. Clients reach it through the SDK's
// endpoint overrides (AWS_ENDPOINT_URL_ECR=URL, and for the instance role
// AWS_EC2_METADATA_SERVICE_ENDPOINT=URL with AWS_EC2_METADATA_DISABLED
// false).
type FakeECR struct {
	URL string
	// Password is what every token decodes to ("AWS:<Password>").
	Password string

	srv *http.Server
	ln  net.Listener

	mu        sync.Mutex
	ttl       time.Duration
	endpoint  string // proxyEndpoint host
	fail      int    // HTTP status to answer with instead, 0 = none
	failType  string
	delay     time.Duration // before each API answer
	roleDelay time.Duration // before each instance-role credentials answer
	calls     int
	roleCalls int
}

// InstanceRole is the role whose credentials the fake IMDS hands out.
const InstanceRole = "pull-agent-test-role"

// serveIMDS answers IMDSv2: the session token, the role list and the
// role's credentials (after the role delay).
func (f *FakeECR) serveIMDS(w http.ResponseWriter, r *http.Request) {
	const creds = "/latest/meta-data/iam/security-credentials/"
	switch {
	case r.Method == http.MethodPut && r.URL.Path == "/latest/api/token":
		w.Header().Set("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", r.Header.Get("X-Aws-Ec2-Metadata-Token-Ttl-Seconds"))
		fmt.Fprint(w, "fake-imds-session-token")
	case r.Method == http.MethodGet && r.URL.Path == creds:
		fmt.Fprintln(w, InstanceRole)
	case r.Method == http.MethodGet && r.URL.Path == creds+InstanceRole:
		f.mu.Lock()
		f.roleCalls++
		delay := f.roleDelay
		f.mu.Unlock()
		if !sleepCtx(r, delay) {
			return
		}
		_ = json.NewEncoder(w).Encode(map[string]any{
			"Code": "Success", "Type": "AWS-HMAC", "LastUpdated": time.Now().UTC().Format(time.RFC3339),
			"AccessKeyId": "ASIATESTTESTTEST", "SecretAccessKey": "role-secret-s3cret", "Token": "role-session-s3cret",
			"Expiration": time.Now().Add(6 * time.Hour).UTC().Format(time.RFC3339),
		})
	default:
		http.NotFound(w, r)
	}
}

// sleepCtx waits d or until the client gives up; it reports whether to
// answer.
func sleepCtx(r *http.Request, d time.Duration) bool {
	if d <= 0 {
		return true
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-r.Context().Done():
		return false
	}
}

// NewFakeECR starts a fake ECR API on loopback issuing tokens for
// registryHost (an ECR-shaped host without port) that expire after ttl.
func NewFakeECR(registryHost, password string, ttl time.Duration) (*FakeECR, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &FakeECR{URL: "http://" + ln.Addr().String(), Password: password, ln: ln, ttl: ttl, endpoint: registryHost}
	f.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(f.serve)}
	go f.srv.Serve(ln)
	return f, nil
}

// NewFakeECRTLS is NewFakeECR serving HTTPS on addr (e.g. 127.0.0.1:443)
// as apiHost (api.ecr.<region>.amazonaws.com), for clients that cannot
// override the endpoint and reach it through a private /etc/hosts. It
// returns the PEM of the CA that signed its certificate (AWS_CA_BUNDLE).
func NewFakeECRTLS(addr, apiHost, registryHost, password string, ttl time.Duration) (*FakeECR, []byte, error) {
	cert, caPEM, err := selfSignedTLS(apiHost)
	if err != nil {
		return nil, nil, err
	}
	ln, err := tls.Listen("tcp", addr, &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12})
	if err != nil {
		return nil, nil, err
	}
	f := &FakeECR{URL: "https://" + apiHost, Password: password, ln: ln, ttl: ttl, endpoint: registryHost}
	f.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(f.serve)}
	go f.srv.Serve(ln)
	return f, caPEM, nil
}

// newCA makes a self-signed CA certificate (DER) and its key.
func newCA(cn string) (*ecdsa.PrivateKey, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, err
	}
	return key, der, nil
}

// selfSignedTLS makes a CA and a server certificate for host signed by it.
func selfSignedTLS(host string) (tls.Certificate, []byte, error) {
	caKey, caDER, err := newCA("testbed CA")
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: host}, DNSNames: []string{host},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, nil, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), nil
}

func (f *FakeECR) serve(w http.ResponseWriter, r *http.Request) {
	if strings.HasPrefix(r.URL.Path, "/latest/") {
		f.serveIMDS(w, r)
		return
	}
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.calls++
	fail, failType, ttl, delay := f.fail, f.failType, f.ttl, f.delay
	f.mu.Unlock()
	if !sleepCtx(r, delay) {
		return
	}
	w.Header().Set("Content-Type", "application/x-amz-json-1.1")
	if !strings.HasSuffix(r.Header.Get("X-Amz-Target"), ".GetAuthorizationToken") {
		w.WriteHeader(http.StatusBadRequest)
		fmt.Fprintf(w, `{"__type":"UnknownOperationException","message":"only GetAuthorizationToken"}`)
		return
	}
	if fail != 0 {
		w.Header().Set("X-Amzn-ErrorType", failType)
		w.WriteHeader(fail)
		fmt.Fprintf(w, `{"__type":%q,"message":"injected by the test: %s"}`, failType, failType)
		return
	}
	var req struct {
		RegistryIDs []string `json:"registryIds"`
	}
	_ = json.Unmarshal(body, &req)
	tok := base64.StdEncoding.EncodeToString([]byte("AWS:" + f.Password))
	exp := float64(time.Now().Add(ttl).UnixMilli()) / 1000
	_ = json.NewEncoder(w).Encode(map[string]any{"authorizationData": []map[string]any{{
		"authorizationToken": tok,
		"expiresAt":          exp,
		"proxyEndpoint":      "https://" + f.endpoint,
	}}})
}

// Fail makes the API answer status with an AWS error type
// ("ServerException", "ThrottlingException"); status 0 heals it.
func (f *FakeECR) Fail(status int, errType string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fail, f.failType = status, errType
}

// Delay makes the API answer each request d after it arrives (the call
// counts at once); 0 answers at once.
func (f *FakeECR) Delay(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.delay = d
}

// DelayRole makes the IMDS answer each request for the instance role's
// credentials d after it arrives (the call counts at once).
func (f *FakeECR) DelayRole(d time.Duration) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.roleDelay = d
}

// RoleCalls is how many requests for the instance role's credentials the
// IMDS answered.
func (f *FakeECR) RoleCalls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.roleCalls
}

// Calls is how many requests the API answered.
func (f *FakeECR) Calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// Close stops the server.
func (f *FakeECR) Close() error { return f.srv.Close() }
