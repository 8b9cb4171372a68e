package agent

import (
	"net"
	"os"
	"path/filepath"
	"testing"
)

// Only a socket is ever removed from the status socket's path.
func TestListenStatusRemovesOnlyASocket(t *testing.T) {
	dir := t.TempDir()

	file := filepath.Join(dir, "file.sock")
	if err := os.WriteFile(file, []byte("not a socket"), 0o600); err != nil {
		t.Fatal(err)
	}
	if ln, err := ListenStatus(file); err == nil {
		ln.Close()
		t.Fatal("a regular file at the socket path was replaced")
	}
	if data, err := os.ReadFile(file); err != nil || string(data) != "not a socket" {
		t.Fatalf("the regular file was touched: %q %v", data, err)
	}

	sub := filepath.Join(dir, "dir.sock")
	if err := os.Mkdir(sub, 0o700); err != nil {
		t.Fatal(err)
	}
	if ln, err := ListenStatus(sub); err == nil {
		ln.Close()
		t.Fatal("a directory at the socket path was replaced")
	}

	// A stale socket (nobody listening) is replaced, and the new one has
	// its final mode.
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	l.(*net.UnixListener).SetUnlinkOnClose(false)
	l.Close()
	ln, err := ListenStatus(stale)
	if err != nil {
		t.Fatalf("stale socket: %v", err)
	}
	defer ln.Close()
	if st, err := os.Lstat(stale); err != nil || st.Mode().Perm() != 0o660 || st.Mode().Type() != os.ModeSocket {
		t.Fatalf("socket mode %v (%v), want a socket 0660", st.Mode(), err)
	}

	// One that answers is another agent's.
	if ln2, err := ListenStatus(stale); err == nil {
		ln2.Close()
		t.Fatal("a live socket was taken over")
	}
}
