package agent

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

// watchRig is a Watcher of root/etc/pull-agent.env with its events read
// by the test.
type watchRig struct {
	t    *testing.T
	root string
	w    *Watcher
}

func newWatchRig(t *testing.T, setup func(r *watchRig)) *watchRig {
	t.Helper()
	root, err := filepath.EvalSymlinks(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	r := &watchRig{t: t, root: root}
	setup(r)
	w, err := NewWatcher(r.p("etc/pull-agent.env"), 20*time.Millisecond, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Start(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { w.Run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	r.w = w
	return r
}

func (r *watchRig) p(rel string) string { return filepath.Join(r.root, rel) }

func (r *watchRig) mkdir(rel string) {
	if err := os.MkdirAll(r.p(rel), 0o755); err != nil {
		r.t.Fatal(err)
	}
}

// write writes rel in place (the inode stays).
func (r *watchRig) write(rel, content string) {
	f, err := os.OpenFile(r.p(rel), os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		r.t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(content); err != nil {
		r.t.Fatal(err)
	}
}

// link makes rel a symbolic link to target, replacing what was there in
// one rename, as 'ln -sfn' through a temporary name does.
func (r *watchRig) link(target, rel string) {
	tmp := r.p(rel) + ".tmp"
	if err := os.Symlink(target, tmp); err != nil {
		r.t.Fatal(err)
	}
	if err := os.Rename(tmp, r.p(rel)); err != nil {
		r.t.Fatal(err)
	}
}

func (r *watchRig) rename(from, to string) {
	if err := os.Rename(r.p(from), r.p(to)); err != nil {
		r.t.Fatal(err)
	}
}

// drain forgets changes reported so far, after a quiet spell.
func (r *watchRig) drain() {
	for {
		select {
		case <-r.w.Changes():
		case <-time.After(150 * time.Millisecond):
			return
		}
	}
}

// changed fails unless a change is reported within 2 s.
func (r *watchRig) changed(what string) {
	r.t.Helper()
	select {
	case <-r.w.Changes():
	case <-time.After(2 * time.Second):
		r.t.Fatalf("%s: no change reported within 2 s", what)
	}
}

// quiet fails if a change is reported within 300 ms.
func (r *watchRig) quiet(what string) {
	r.t.Helper()
	select {
	case <-r.w.Changes():
		r.t.Fatalf("%s: a change was reported", what)
	case <-time.After(300 * time.Millisecond):
	}
}

// TestWatcherFollowsLinksToFiles: the env file as a link into another
// directory and as a chain of links, each target edited in place,
// replaced, moved, each link re-pointed; every change is reported, and a
// directory no longer on the way is no longer watched.
func TestWatcherFollowsLinksToFiles(t *testing.T) {
	t.Run("link to another directory, target edited in place", func(t *testing.T) {
		r := newWatchRig(t, func(r *watchRig) {
			r.mkdir("etc")
			r.mkdir("srv/conf")
			r.write("srv/conf/real.env", "A=1\n")
			r.link(r.p("srv/conf/real.env"), "etc/pull-agent.env")
		})
		r.write("srv/conf/real.env", "A=2\n")
		r.changed("in-place edit of the target")
		r.drain()
		r.write("srv/conf/real.env.new", "A=3\n")
		r.rename("srv/conf/real.env.new", "srv/conf/real.env")
		r.changed("target replaced by a rename")
		r.drain()
		r.rename("srv/conf/real.env", "srv/conf/moved.env")
		r.changed("target moved away")
	})
	t.Run("chain of links, each re-pointed", func(t *testing.T) {
		r := newWatchRig(t, func(r *watchRig) {
			for _, d := range []string{"etc", "a", "b", "c"} {
				r.mkdir(d)
			}
			r.write("b/one.env", "A=1\n")
			r.write("c/two.env", "A=2\n")
			r.link("../a/hop", "etc/pull-agent.env") // relative
			r.link(r.p("b/one.env"), "a/hop")
		})
		r.write("b/one.env", "A=11\n")
		r.changed("end of the chain edited in place")
		r.drain()
		r.link(r.p("c/two.env"), "a/hop")
		r.changed("middle link re-pointed")
		r.drain()
		r.write("c/two.env", "A=22\n")
		r.changed("new target edited in place")
		r.drain()
		r.write("b/one.env", "A=111\n")
		r.quiet("the old target, no longer on the way, edited")
		if got := linkDirs(r.p("etc/pull-agent.env")); !slices.Equal(got, []string{r.p("etc"), r.p("a"), r.p("c")}) {
			t.Errorf("watched %v", got)
		}
	})
}

// TestWatcherFollowsLinkedDirectories: a link among the env file's
// directories re-pointed, a target directory made after start, a
// Kubernetes-style ..data swap; then each new target edited in place.
func TestWatcherFollowsLinkedDirectories(t *testing.T) {
	t.Run("link among the directories, re-pointed", func(t *testing.T) {
		r := newWatchRig(t, func(r *watchRig) {
			r.mkdir("v1")
			r.mkdir("v2")
			r.write("v1/pull-agent.env", "A=1\n")
			r.write("v2/pull-agent.env", "A=2\n")
			r.link("v1", "etc")
		})
		r.write("v1/pull-agent.env", "A=11\n")
		r.changed("file under a linked directory edited in place")
		r.drain()
		r.link("v2", "etc")
		r.changed("directory link re-pointed")
		r.drain()
		r.write("v2/pull-agent.env", "A=22\n")
		r.changed("file under the new directory edited in place")
	})
	t.Run("target directory appears later", func(t *testing.T) {
		r := newWatchRig(t, func(r *watchRig) {
			r.mkdir("etc")
			r.link(r.p("later/deep/real.env"), "etc/pull-agent.env")
		})
		r.mkdir("later/deep")
		r.drain()
		r.write("later/deep/real.env", "A=1\n")
		r.changed("target created in a directory made after start")
		r.drain()
		r.write("later/deep/real.env", "A=2\n")
		r.changed("then edited in place")
	})
	t.Run("Kubernetes ..data swap, then the new target edited", func(t *testing.T) {
		r := newWatchRig(t, func(r *watchRig) {
			for _, d := range []string{"etc/..gen1", "etc/..gen2"} {
				r.mkdir(d)
			}
			r.write("etc/..gen1/pull-agent.env", "A=1\n")
			r.write("etc/..gen2/pull-agent.env", "A=2\n")
			r.link("..gen1", "etc/..data")
			r.link("..data/pull-agent.env", "etc/pull-agent.env")
		})
		r.link("..gen2", "etc/..data")
		r.changed("..data swapped")
		r.drain()
		r.write("etc/..gen2/pull-agent.env", "A=22\n")
		r.changed("new generation edited in place")
	})
}

func TestLinkDirsEndsOnLoops(t *testing.T) {
	d := t.TempDir()
	a, b := filepath.Join(d, "a"), filepath.Join(d, "b")
	if err := os.Symlink(b, a); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(a, b); err != nil {
		t.Fatal(err)
	}
	if got := linkDirs(a); len(got) == 0 {
		t.Fatal("no directory to watch")
	}
}
