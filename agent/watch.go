package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Watcher tells when a file (the env file, Docker's config.json) may have
// changed. It watches directories, not the file: a rename over the file
// replaces its inode (a watch on the file would be lost), and a
// Kubernetes-style "..data" symlink swap raises events only for other
// names in the directory. It watches every directory whose entries decide
// what the path names: the file's own, the directory of every symbolic
// link followed on the way (chains of links, links among the path's
// directories) and the final target's, re-resolved after every event, so
// an edit in place of a link's target, a target replaced or moved and a
// link re-pointed are all seen. Every event in those directories counts;
// bursts are debounced. While a directory does not exist, its nearest
// existing ancestor is watched until it appears.
type Watcher struct {
	path     string
	debounce time.Duration
	maxWait  time.Duration
	log      *slog.Logger
	fw       *fsnotify.Watcher
	out      chan struct{}
	// watched maps each directory watched now to whether it is one of
	// the wanted directories itself (true) or an ancestor standing in
	// for a missing one (false). It belongs to Start, then to Run.
	watched map[string]bool
}

// NewWatcher returns a Watcher for the file at path. debounce is how long
// the directories must be quiet before a change is reported (reports come
// at most about 1 s after the first event of a burst however long it
// lasts).
func NewWatcher(path string, debounce time.Duration, log *slog.Logger) (*Watcher, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("starting the watcher of %s (inotify): %w", abs, err)
	}
	return &Watcher{
		path:     abs,
		debounce: debounce,
		maxWait:  max(time.Second, 4*debounce),
		log:      log.With("component", "watcher", "file", abs),
		fw:       fw,
		out:      make(chan struct{}, 1),
		watched:  map[string]bool{},
	}, nil
}

// Changes delivers a value after each burst of events in the watched
// directories. Values coalesce: a reader that falls behind gets one.
func (w *Watcher) Changes() <-chan struct{} { return w.out }

// Start sets up the first watches. Run must follow.
func (w *Watcher) Start() error {
	if _, err := w.ensure(); err != nil {
		w.fw.Close()
		return err
	}
	return nil
}

// Run delivers changes until ctx is done, then releases the watcher.
func (w *Watcher) Run(ctx context.Context) {
	defer w.fw.Close()
	var (
		quiet, deadline *time.Timer
		quietC, deadC   <-chan time.Time
	)
	fire := func() {
		if quiet != nil {
			quiet.Stop()
			deadline.Stop()
		}
		quiet, deadline, quietC, deadC = nil, nil, nil, nil
		select {
		case w.out <- struct{}{}:
		default:
		}
	}
	arm := func() {
		if quiet == nil {
			quiet, deadline = time.NewTimer(w.debounce), time.NewTimer(w.maxWait)
			quietC, deadC = quiet.C, deadline.C
			return
		}
		quiet.Reset(w.debounce)
	}
	for {
		select {
		case <-ctx.Done():
			return
		case ev, ok := <-w.fw.Events:
			if !ok {
				return
			}
			if w.event(ev) {
				arm()
			}
		case err, ok := <-w.fw.Errors:
			if !ok {
				return
			}
			// An overflow loses events: re-resolve and re-read to be sure.
			w.log.Warn("file watcher error; re-reading the file", "error", errText(err))
			if _, err := w.ensure(); err != nil {
				w.log.Warn("watching the file's directories", "error", errText(err))
			}
			arm()
		case <-quietC:
			fire()
		case <-deadC:
			fire()
		}
	}
}

// event re-resolves the watches after ev and reports whether the file may
// have changed: ev happened in a wanted directory, or what is watched
// changed (a directory appeared, a link now points elsewhere). Events in
// an ancestor that stands in for a missing directory count only when they
// bring it back.
func (w *Watcher) event(ev fsnotify.Event) bool {
	gone := ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename)
	if _, ok := w.watched[ev.Name]; ok && gone {
		// The directory itself went: its watch is lost with its inode.
		w.log.Warn("a watched directory was removed or moved; waiting for it to come back", "dir", ev.Name)
		_ = w.fw.Remove(ev.Name)
		delete(w.watched, ev.Name)
	}
	changed, err := w.ensure()
	if err != nil {
		w.log.Warn("watching the file's directories", "error", errText(err))
	}
	return changed || w.watched[filepath.Dir(ev.Name)] || w.watched[ev.Name]
}

// ensure watches every wanted directory (linkDirs), or the nearest
// existing ancestor of one that is missing, and stops watching what is no
// longer wanted. It reports whether the watched set changed.
func (w *Watcher) ensure() (bool, error) {
	for range 10 { // a directory can vanish between Stat and Add: look again
		want := map[string]bool{}
		for _, d := range linkDirs(w.path) {
			target, err := existingAncestor(d)
			if err != nil {
				return false, err
			}
			want[target] = want[target] || target == d
		}
		changed, retry, err := w.apply(want)
		if !retry {
			return changed, err
		}
	}
	return true, errors.New("the directories kept changing while being watched")
}

// apply makes the watched set want; retry means a directory vanished
// before it could be watched.
func (w *Watcher) apply(want map[string]bool) (changed, retry bool, err error) {
	for d, self := range want {
		if _, ok := w.watched[d]; ok {
			if w.watched[d] != self {
				w.watched[d], changed = self, true
			}
			continue
		}
		if err := w.fw.Add(d); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return changed, true, nil
			}
			return changed, false, fmt.Errorf("watching %s: %w", d, err)
		}
		w.watched[d], changed = self, true
		if self {
			w.log.Debug("watching a directory of the file", "dir", d)
		} else {
			w.log.Info("a directory of the file is missing; watching an ancestor until it appears", "watching", d)
		}
	}
	for d := range w.watched {
		if _, ok := want[d]; !ok {
			_ = w.fw.Remove(d)
			delete(w.watched, d)
			changed = true
		}
	}
	return changed, false, nil
}

// existingAncestor returns dir, or its nearest ancestor that exists.
func existingAncestor(dir string) (string, error) {
	for {
		st, err := os.Stat(dir)
		if err == nil && st.IsDir() {
			return dir, nil
		}
		if err != nil && !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.ENOTDIR) {
			return "", err
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no existing ancestor directory")
		}
		dir = parent
	}
}

// maxLinks bounds the symbolic links followed, as the kernel does (ELOOP).
const maxLinks = 40

// linkDirs returns the directories whose entries decide what path (an
// absolute path) names: the directory of every symbolic link followed
// while resolving it, component by component as the kernel does, and the
// directory of the final target; each without symbolic links. A missing
// component ends the walk there.
func linkDirs(path string) []string {
	var dirs []string
	add := func(d string) {
		if !slices.Contains(dirs, d) {
			dirs = append(dirs, d)
		}
	}
	resolved := "/"
	rest := strings.Split(path, "/")
	for links := 0; len(rest) > 0; {
		c := rest[0]
		rest = rest[1:]
		switch c {
		case "", ".":
			continue
		case "..":
			resolved = filepath.Dir(resolved)
			continue
		}
		next := filepath.Join(resolved, c)
		fi, err := os.Lstat(next)
		if err != nil || fi.Mode()&fs.ModeSymlink == 0 || links >= maxLinks {
			resolved = next
			if err != nil {
				resolved = filepath.Join(append([]string{next}, rest...)...)
				break
			}
			continue
		}
		add(resolved) // a link re-pointed shows as an event here
		links++
		target, err := os.Readlink(next)
		if err != nil {
			resolved = next
			continue
		}
		if filepath.IsAbs(target) {
			resolved = "/"
		}
		rest = append(strings.Split(target, "/"), rest...)
	}
	add(filepath.Dir(resolved))
	return dirs
}
