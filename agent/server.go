package agent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/molecule-ai/pull-agent/agent/state"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"time"
)

// ListenStatus opens the status socket at path, mode 0660 from the moment
// it exists. A socket left by an agent that is gone is replaced; one that
// answers means another agent runs, and is an error; anything else at the
// path (a file, a directory, a link) is left alone and is an error.
func ListenStatus(path string) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("status socket directory: %w", err)
	}
	if st, err := os.Lstat(path); err == nil {
		if st.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("status socket %s: something that is not a socket is there (%s); it is not removed: move it away or choose another --status-socket", path, st.Mode().Type())
		}
		c, err := net.DialTimeout("unix", path, time.Second)
		if err == nil {
			c.Close()
			return nil, fmt.Errorf("status socket %s answers: another pull-agent is running (stop it first)", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("removing the stale status socket %s: %w", path, err)
		}
	}
	// The umask gives the socket its final mode as bind(2) creates it:
	// there is no moment at which others could connect. Nothing else
	// creates files while the agent starts.
	old := syscall.Umask(0o117)
	ln, err := net.Listen("unix", path)
	syscall.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("status socket %s: %w", path, err)
	}
	return ln, nil
}

// ServerTimeouts bound every client of the status socket and of the
// metrics listener: one that never sends a request, never reads the answer
// or keeps an idle connection open is cut off, so that no client holds a
// goroutine and a file descriptor for long.
type ServerTimeouts struct {
	ReadHeader time.Duration // to send the request's headers
	Write      time.Duration // to read the whole answer
	Idle       time.Duration // between requests on a kept-alive connection
}

// DefaultServerTimeouts are the timeouts the agent serves with.
func DefaultServerTimeouts() ServerTimeouts {
	return ServerTimeouts{ReadHeader: 5 * time.Second, Write: 10 * time.Second, Idle: 10 * time.Second}
}

// NewHTTPServer is an HTTP server for h bounded by t.
func NewHTTPServer(h http.Handler, t ServerTimeouts) *http.Server {
	return &http.Server{Handler: h, ReadHeaderTimeout: t.ReadHeader, ReadTimeout: t.ReadHeader + t.Write, WriteTimeout: t.Write, IdleTimeout: t.Idle}
}

// Serve serves the agent's live state (GET /status) and metrics
// (GET /metrics) on ln until ctx is done.
func (a *Agent) Serve(ctx context.Context, ln net.Listener, log *slog.Logger) {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(a.Document())
	})
	mux.Handle("GET /metrics", a.metrics.Handler())
	mux.HandleFunc("GET /debug/counts", func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Query().Has("close_idle") {
			// Pooled idle connections come and go with load; without
			// them, what is counted is held by something alive.
			closeIdleConnections(a.view.Load().engine)
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(ProcessCounts())
	})
	if err := ServeUntil(ctx, NewHTTPServer(mux, DefaultServerTimeouts()), ln, time.Second); err != nil {
		log.Error("status server stopped", "error", errText(err))
	}
}

// ServeUntil serves srv on ln until ctx is done, then stops it: requests
// in progress get grace to finish (none when grace is 0) before their
// connections are closed. It returns once the server has stopped, with
// the error that stopped it before ctx was done, else nil.
func ServeUntil(ctx context.Context, srv *http.Server, ln net.Listener, grace time.Duration) error {
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	var stopping sync.WaitGroup
	stopping.Go(func() {
		<-sctx.Done()
		if grace > 0 {
			gctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), grace)
			defer cancel()
			if srv.Shutdown(gctx) == nil {
				return
			}
		}
		_ = srv.Close()
	})
	err := srv.Serve(ln)
	stop() // a server that failed on its own is stopped too
	stopping.Wait()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// ProcessCounts reads the current counts (file descriptors from
// /proc/self/fd; -1 where that cannot be read).
func ProcessCounts() state.Counts {
	c := state.Counts{Goroutines: runtime.NumGoroutine(), FDs: -1}
	if ents, err := os.ReadDir("/proc/self/fd"); err == nil {
		c.FDs = len(ents)
	}
	return c
}
