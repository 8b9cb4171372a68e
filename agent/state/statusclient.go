package state

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"
)

// maxStatusAnswer bounds what a client reads from the status socket, as
// DecodeState bounds a state document.
const maxStatusAnswer = 16 << 20

// StatusClient asks a running agent over its status socket: 'pull-agent
// status' and the tests use it. Every request, the answer read in full
// included, is bounded by the client's timeout, and each uses a connection
// of its own, closed after the answer: a client leaves nothing open in the
// agent, whose leak checks count its file descriptors.
type StatusClient struct {
	socket  string
	timeout time.Duration
	hc      *http.Client
}

// NewStatusClient returns a client of the status socket at socket whose
// requests must be answered within timeout.
func NewStatusClient(socket string, timeout time.Duration) *StatusClient {
	return &StatusClient{socket: socket, timeout: timeout, hc: &http.Client{Transport: &http.Transport{
		DisableKeepAlives: true,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", socket)
		},
	}}}
}

// Get asks for path (such as "/status") and returns the body of a 200
// answer as the agent sent it. Its errors say what an operator can do
// about them (no socket, permission, no answer in time).
func (c *StatusClient) Get(ctx context.Context, path string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://pull-agent"+path, nil)
	if err != nil {
		return nil, err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		var opErr *net.OpError
		switch {
		case errors.Is(err, os.ErrPermission):
			return nil, fmt.Errorf("permission denied on %s (run as root or a member of its group)", c.socket)
		case errors.Is(err, os.ErrNotExist):
			return nil, fmt.Errorf("no status socket at %s", c.socket)
		case errors.Is(err, context.DeadlineExceeded):
			return nil, c.late()
		case errors.As(err, &opErr):
			return nil, fmt.Errorf("nothing answers on %s", c.socket)
		}
		return nil, fmt.Errorf("asking %s: %v", c.socket, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("the agent at %s answered %s", c.socket, resp.Status)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxStatusAnswer))
	if err != nil {
		if ctx.Err() != nil {
			return nil, c.late()
		}
		return nil, fmt.Errorf("reading the answer of the agent at %s: %w", c.socket, err)
	}
	return body, nil
}

func (c *StatusClient) late() error {
	return fmt.Errorf("the agent at %s did not answer within %s s", c.socket, strconv.FormatFloat(c.timeout.Seconds(), 'f', -1, 64))
}

// Status returns the agent's live state document, sanitised as
// DecodeState does with whatever it reads.
func (c *StatusClient) Status(ctx context.Context) (StateDoc, error) {
	body, err := c.Get(ctx, "/status")
	if err != nil {
		return StateDoc{}, err
	}
	return DecodeState(c.socket, bytes.NewReader(body))
}

// Counts returns the agent process's goroutines and open file
// descriptors; closeIdle first drops the Docker client's idle connections.
func (c *StatusClient) Counts(ctx context.Context, closeIdle bool) (Counts, error) {
	path := "/debug/counts"
	if closeIdle {
		path += "?close_idle"
	}
	body, err := c.Get(ctx, path)
	if err != nil {
		return Counts{}, err
	}
	var n Counts
	if err := json.Unmarshal(body, &n); err != nil {
		return Counts{}, fmt.Errorf("the agent at %s answered %s with no counts: %w", c.socket, path, err)
	}
	return n, nil
}

// Counts are the process's goroutines and open file descriptors, for leak
// checks (GET /debug/counts on the status socket).
type Counts struct {
	Goroutines int `json:"goroutines"`
	FDs        int `json:"fds"`
}

// WaitHealthy asks fetch for the state document every 500 ms until it is
// healthy (every image warm, the configuration valid, no flip waiting),
// ctx is done or timeout has passed, and returns the last answer.
func WaitHealthy(ctx context.Context, fetch func(context.Context) (StateDoc, error), timeout time.Duration) (StateDoc, error) {
	deadline := time.Now().Add(timeout)
	for {
		doc, err := fetch(ctx)
		if err == nil && doc.Healthy() || time.Now().After(deadline) || ctx.Err() != nil {
			return doc, err
		}
		select {
		case <-ctx.Done():
		case <-time.After(500 * time.Millisecond):
		}
	}
}
