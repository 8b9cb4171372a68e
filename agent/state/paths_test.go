package state

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
)

// A lock path that is a symbolic link is refused, and its target is left
// as it was (it used to be truncated and overwritten with the pid).
func TestLockStateDirRefusesALink(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(t.TempDir(), "precious")
	if err := os.WriteFile(target, []byte("keep me\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(target, filepath.Join(dir, "lock")); err != nil {
		t.Fatal(err)
	}
	release, err := LockStateDir(dir)
	if err == nil {
		release()
		t.Fatal("a lock that is a symbolic link was accepted")
	}
	if !strings.Contains(err.Error(), "symbolic link") {
		t.Errorf("error does not say why: %v", err)
	}
	if data, _ := os.ReadFile(target); string(data) != "keep me\n" {
		t.Fatalf("the link's target was written: %q", data)
	}
}

func TestLockStateDirRefusesANonFile(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mkfifo(filepath.Join(dir, "lock"), 0o600); err != nil {
		t.Fatal(err)
	}
	if release, err := LockStateDir(dir); err == nil {
		release()
		t.Fatal("a FIFO at the lock path was accepted")
	}
}

func TestLockStateDirHoldsAndNamesTheHolder(t *testing.T) {
	dir := t.TempDir()
	release, err := LockStateDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	st, err := os.Stat(filepath.Join(dir, "lock"))
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("lock file mode: %v %v", st.Mode(), err)
	}
	_, err = LockStateDir(dir)
	if err == nil || !strings.Contains(err.Error(), "pid "+strconv.Itoa(os.Getpid())) {
		t.Fatalf("second lock: %v", err)
	}
}

func TestPrepareStateDir(t *testing.T) {
	old := syscall.Umask(0)
	defer syscall.Umask(old)
	base := t.TempDir()

	created := filepath.Join(base, "new", "state")
	if err := PrepareStateDir(created); err != nil {
		t.Fatal(err)
	}
	if st, err := os.Stat(created); err != nil || st.Mode().Perm() != 0o750 {
		t.Fatalf("created with mode %v (%v), want 0750 whatever the umask", st.Mode().Perm(), err)
	}
	if err := PrepareStateDir(created); err != nil {
		t.Fatalf("its own directory refused: %v", err)
	}

	for mode, ok := range map[os.FileMode]bool{0o700: true, 0o755: true, 0o750: true, 0o775: false, 0o777: false, 0o757: false, 0o1777: false} {
		d := filepath.Join(base, "m"+strconv.FormatUint(uint64(mode), 8))
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, mode); err != nil {
			t.Fatal(err)
		}
		err := PrepareStateDir(d)
		if (err == nil) != ok {
			t.Errorf("mode %04o: %v, want accepted=%v", mode, err, ok)
		}
		if err != nil && !strings.Contains(err.Error(), "writable by group or others") {
			t.Errorf("mode %04o: error does not say why: %v", mode, err)
		}
	}

	link := filepath.Join(base, "link")
	if err := os.Symlink(created, link); err != nil {
		t.Fatal(err)
	}
	if err := PrepareStateDir(link); err == nil {
		t.Error("a symbolic link as the state directory was accepted")
	}
}
