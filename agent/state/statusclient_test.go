package state

import (
	"context"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// serveUnix serves h on a fresh unix socket and returns its path.
func serveUnix(t *testing.T, h http.Handler) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "pa-sc-") // short: socket paths are limited
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sock := filepath.Join(dir, "status.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: h}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return sock
}

func TestStatusClient(t *testing.T) {
	var mu sync.Mutex
	var closes []bool
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		closes = append(closes, r.Close)
		mu.Unlock()
		w.Write([]byte(`{"schema_version": 1, "agent": {"prefix": "ghcr.io/x\u001b]0;pwned\u0007", "total": 1}}`))
	})
	mux.HandleFunc("GET /debug/counts", func(w http.ResponseWriter, r *http.Request) {
		if !r.URL.Query().Has("close_idle") {
			http.Error(w, "want close_idle", http.StatusBadRequest)
			return
		}
		w.Write([]byte(`{"goroutines": 7, "fds": 9}`))
	})
	mux.HandleFunc("GET /silent", func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte("{"))
		w.(http.Flusher).Flush()
		<-r.Context().Done() // the headers went out; the body never ends
	})
	sock := serveUnix(t, mux)
	c := NewStatusClient(sock, 300*time.Millisecond)
	ctx := context.Background()

	doc, err := c.Status(ctx)
	if err != nil || doc.Agent.Prefix != "ghcr.io/x" || doc.Agent.Total != 1 {
		t.Errorf("Status: %+v, %v (want the prefix sanitised)", doc.Agent, err)
	}
	if n, err := c.Counts(ctx, true); err != nil || n.Goroutines != 7 || n.FDs != 9 {
		t.Errorf("Counts: %+v, %v", n, err)
	}
	if _, err := c.Counts(ctx, false); err == nil || !strings.Contains(err.Error(), "answered 400 Bad Request") {
		t.Errorf("a 400: %v", err)
	}
	c.Status(ctx)
	mu.Lock()
	got := closes
	mu.Unlock()
	if len(got) != 2 || !got[0] || !got[1] {
		t.Errorf("requests asked to keep the connection: close %v", got)
	}
	start := time.Now()
	if _, err := c.Get(ctx, "/silent"); err == nil || !strings.Contains(err.Error(), "did not answer within 0.3 s") {
		t.Errorf("a body that never ends: %v", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("the timeout took %s", d)
	}

	// A socket that accepts and never answers, and no socket at all.
	ln, err := net.Listen("unix", filepath.Join(filepath.Dir(sock), "mute.sock"))
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	if _, err := NewStatusClient(ln.Addr().String(), 200*time.Millisecond).Status(ctx); err == nil || !strings.Contains(err.Error(), "did not answer within 0.2 s") {
		t.Errorf("a mute socket: %v", err)
	}
	none := filepath.Join(filepath.Dir(sock), "none.sock")
	if _, err := NewStatusClient(none, time.Second).Status(ctx); err == nil || err.Error() != "no status socket at "+none {
		t.Errorf("no socket: %v", err)
	}
}
