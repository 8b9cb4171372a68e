package testbed

import (
	"net/http"
	"strings"
)

// TokenGate is the token realm of a registry, in front of a TokenServer:
// it forwards token requests until Refuse(true), then answers each with
// 401, as a registry host does whose credentials were revoked or whose
// token service is refusing everyone. The registry itself keeps running
// and keeps its storage; only its answer to "may I pull?" changes.
type TokenGate struct {
	px *HTTPProxy
	ts *TokenServer
}

// refusal is the token service's 401 body, in the registry error format.
const refusal = `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`

// NewTokenGate starts a gate in front of ts on a free loopback port.
func NewTokenGate(ts *TokenServer) (*TokenGate, error) {
	px, err := NewHTTPProxy(ts.addr)
	if err != nil {
		return nil, err
	}
	return &TokenGate{px: px, ts: ts}, nil
}

// Auth is the registry configuration that trusts ts and asks the gate
// for tokens.
func (g *TokenGate) Auth() *TokenAuth {
	a := g.ts.Auth()
	a.Realm = "http://" + g.px.Addr + "/token"
	return a
}

// Refuse makes the gate answer every token request with 401 (on) or
// forward them to the token server again (off).
func (g *TokenGate) Refuse(on bool) {
	if !on {
		g.px.SetFault(nil)
		return
	}
	g.px.SetFault(&Fault{Match: "/", Status: http.StatusUnauthorized, Body: refusal})
}

// Refused is how many token requests the gate answered with 401.
func (g *TokenGate) Refused() int {
	n := 0
	for _, r := range g.px.Requests() {
		if r.Status == http.StatusUnauthorized && strings.HasSuffix(r.Path, "/token") {
			n++
		}
	}
	return n
}

// Close stops the gate (not the token server).
func (g *TokenGate) Close() error { return g.px.Close() }
