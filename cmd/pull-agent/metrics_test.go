package main

import (
	"bufio"
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/molecule-ai/pull-agent/agent"
)

// The metrics listener cuts off clients the way the status socket does: a
// kept-alive connection left idle is closed, and so is one that never
// sends its request. Without limits each held a goroutine and a file
// descriptor for ever.
func TestMetricsListenerTimesOutIdleClients(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		metrics := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "pull_agent_up 1\n") })
		serveMetrics(ctx, ln, metrics, agent.ServerTimeouts{ReadHeader: 200 * time.Millisecond, Write: time.Second, Idle: 200 * time.Millisecond}, slog.New(slog.DiscardHandler))
	}()
	defer func() { cancel(); <-done }()

	// closedWithin reports whether the server closes c within d (whatever
	// it says before closing, such as a 408).
	closedWithin := func(c net.Conn, r io.Reader, d time.Duration) bool {
		c.SetReadDeadline(time.Now().Add(d))
		_, err := io.Copy(io.Discard, r)
		return !errors.Is(err, os.ErrDeadlineExceeded)
	}

	idle, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	if _, err := io.WriteString(idle, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(idle)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || resp.Close {
		t.Fatalf("answer %s, close %v: want a kept-alive 200", resp.Status, resp.Close)
	}
	if !closedWithin(idle, br, 3*time.Second) {
		t.Error("an idle kept-alive connection was still open after 3 s (idle limit 200 ms)")
	}

	silent, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	io.WriteString(silent, "GET /metr")
	if !closedWithin(silent, silent, 3*time.Second) {
		t.Error("a client that never finished its request was still connected after 3 s (header limit 200 ms)")
	}
}
