package testbed

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"
)

// FakeECR answers the ECR API's GetAuthorizationToken, the one AWS call
// pull-agent makes. It is the only stand-in of the test bed: there is no
// AWS here. Clients reach it through the SDK's endpoint override
// (AWS_ENDPOINT_URL_ECR=URL).
type FakeECR struct {
	URL string
	// Password is what every token decodes to ("AWS:<Password>").
	Password string

	srv *http.Server
	ln  net.Listener

	mu       sync.Mutex
	ttl      time.Duration
	endpoint string // proxyEndpoint host
	fail     int    // HTTP status to answer with instead, 0 = none
	failType string
	calls    int
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

func (f *FakeECR) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	f.mu.Lock()
	f.calls++
	fail, failType, ttl := f.fail, f.failType, f.ttl
	f.mu.Unlock()
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

// Calls is how many requests the API answered.
func (f *FakeECR) Calls() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls
}

// Close stops the server.
func (f *FakeECR) Close() error { return f.srv.Close() }
