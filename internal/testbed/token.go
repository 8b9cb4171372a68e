package testbed

import (
	"crypto/ecdsa"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
)

// TokenServer is a registry token server (the bearer flow GHCR uses): it
// checks basic credentials and issues ES256 JWTs whose x5c header carries a
// self-signed certificate, the one the registry trusts through
// TokenAuth.RootCertBundle.
type TokenServer struct {
	URL     string
	Service string
	Issuer  string

	key  *ecdsa.PrivateKey
	cert []byte // DER
	addr string

	srvMu sync.Mutex
	srv   *http.Server

	mu    sync.Mutex
	users map[string]string
	seen  []string // "user scope" of each request, "" user for anonymous
}

// NewTokenServer starts a token server on loopback for users (name →
// password), who may pull every repository.
func NewTokenServer(users map[string]string) (*TokenServer, error) {
	key, der, err := newCA("testbed token signer")
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	ts := &TokenServer{URL: "http://" + ln.Addr().String() + "/token", Service: "testbed-registry", Issuer: "testbed-token-issuer", key: key, cert: der, users: users, addr: ln.Addr().String()}
	ts.serveOn(ln)
	return ts, nil
}

func (ts *TokenServer) serveOn(ln net.Listener) {
	ts.srvMu.Lock()
	defer ts.srvMu.Unlock()
	ts.srv = &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(ts.serve)}
	go ts.srv.Serve(ln)
}

// Restart listens again on the address Close released: a token server
// that was down comes back.
func (ts *TokenServer) Restart() error {
	ln, err := listenTCP(ts.addr)
	if err != nil {
		return fmt.Errorf("token server back on %s: %w", ts.addr, err)
	}
	ts.serveOn(ln)
	return nil
}

// SetUsers replaces the users (name → password) the server accepts: a
// credential rotation.
func (ts *TokenServer) SetUsers(users map[string]string) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	ts.users = users
}

// Auth is the registry configuration that trusts this server.
func (ts *TokenServer) Auth() *TokenAuth {
	return &TokenAuth{Realm: ts.URL, Service: ts.Service, Issuer: ts.Issuer,
		RootCertBundle: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: ts.cert})}
}

// Requests lists "user scope" for each token request ("" user: anonymous).
func (ts *TokenServer) Requests() []string {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return append([]string(nil), ts.seen...)
}

// Close stops the server; its port refuses connections until Restart.
func (ts *TokenServer) Close() error {
	ts.srvMu.Lock()
	defer ts.srvMu.Unlock()
	return ts.srv.Close()
}

// credentials are the caller's name, password and scope: from a GET with
// basic auth (the classic image store's client), or from an OAuth2
// password grant POSTed as a form (containerd's client, which the
// containerd image store uses; registries such as GHCR and Docker Hub
// accept both).
func credentials(r *http.Request) (user, pass, scope string, hasAuth bool, err error) {
	if r.Method != http.MethodPost {
		user, pass, hasAuth = r.BasicAuth()
		return user, pass, r.URL.Query().Get("scope"), hasAuth, nil
	}
	if err := r.ParseForm(); err != nil {
		return "", "", "", false, err
	}
	if g := r.PostForm.Get("grant_type"); g != "password" {
		return "", "", "", false, fmt.Errorf("unsupported grant_type %q", g)
	}
	return r.PostForm.Get("username"), r.PostForm.Get("password"), r.PostForm.Get("scope"), true, nil
}

func (ts *TokenServer) serve(w http.ResponseWriter, r *http.Request) {
	user, pass, scope, hasAuth, err := credentials(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ts.mu.Lock()
	ts.seen = append(ts.seen, user+" "+scope)
	want, known := ts.users[user]
	ts.mu.Unlock()
	if hasAuth && (!known || want != pass) {
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusUnauthorized)
		fmt.Fprint(w, `{"errors":[{"code":"UNAUTHORIZED","message":"wrong username or token"}]}`)
		return
	}
	access := []map[string]any{}
	// Anonymous callers get a token without access: the registry then
	// refuses the pull, as a private GHCR package does.
	if hasAuth {
		if parts := strings.Split(scope, ":"); len(parts) == 3 && parts[0] == "repository" {
			access = append(access, map[string]any{"type": "repository", "name": parts[1], "actions": []string{"pull"}})
		}
	}
	now := time.Now()
	claims := jwt.MapClaims{
		"iss": ts.Issuer, "sub": user, "aud": ts.Service, // aud a plain string, as registry 2.8 wants
		"exp": now.Add(5 * time.Minute).Unix(), "nbf": now.Add(-time.Minute).Unix(), "iat": now.Unix(),
		"jti": fmt.Sprint(now.UnixNano()), "access": access,
	}
	tok := jwt.NewWithClaims(jwt.SigningMethodES256, claims)
	tok.Header["x5c"] = []string{base64.StdEncoding.EncodeToString(ts.cert)}
	signed, err := tok.SignedString(ts.key)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(map[string]any{"token": signed, "access_token": signed, "expires_in": 300, "issued_at": now.UTC().Format(time.RFC3339)})
}
