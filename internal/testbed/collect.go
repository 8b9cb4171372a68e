package testbed

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"time"
)

// Buffer is a bytes.Buffer safe for the goroutines that write a process's
// or a logger's output while a test reads it.
type Buffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

// Write implements io.Writer.
func (l *Buffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// String returns what was written so far.
func (l *Buffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// NotifySocket is a NOTIFY_SOCKET: it collects every sd_notify assignment
// a service sends, one per line of each datagram.
type NotifySocket struct {
	// Path is the socket to put in NOTIFY_SOCKET (keep it short: unix
	// socket paths are limited to 108 bytes).
	Path string
	conn *net.UnixConn
	mu   sync.Mutex
	msgs []string
}

// ListenNotify opens a NotifySocket at path.
func ListenNotify(path string) (*NotifySocket, error) {
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return nil, err
	}
	n := &NotifySocket{Path: path, conn: c}
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				return
			}
			n.mu.Lock()
			n.msgs = append(n.msgs, strings.Split(strings.TrimSpace(string(buf[:k])), "\n")...)
			n.mu.Unlock()
		}
	}()
	return n, nil
}

// Close stops listening.
func (n *NotifySocket) Close() error { return n.conn.Close() }

// All returns the assignments received so far.
func (n *NotifySocket) All() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return slices.Clone(n.msgs)
}

// Reset forgets what was received.
func (n *NotifySocket) Reset() {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.msgs = nil
}

// Count returns how many assignments start with prefix.
func (n *NotifySocket) Count(prefix string) int {
	c := 0
	for _, m := range n.All() {
		if strings.HasPrefix(m, prefix) {
			c++
		}
	}
	return c
}

// Wait returns once an assignment satisfies cond, or an error naming what
// after timeout.
func (n *NotifySocket) Wait(ctx context.Context, what string, timeout time.Duration, cond func(string) bool) error {
	deadline := time.Now().Add(timeout)
	for {
		if slices.ContainsFunc(n.All(), cond) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no sd_notify message %s within %s; got %q", what, timeout, n.All())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
	}
}
