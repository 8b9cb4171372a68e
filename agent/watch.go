package agent

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/fsnotify/fsnotify"
)

// Watcher tells when the env file may have changed. It watches the file's
// directory, not the file: a rename over the file replaces its inode (a
// watch on the file would be lost), and a Kubernetes-style "..data" symlink
// swap raises events only for other names in the directory. Every event in
// the directory counts; bursts are debounced. While the directory does not
// exist, the nearest existing ancestor is watched until it appears.
type Watcher struct {
	path     string
	dir      string
	debounce time.Duration
	maxWait  time.Duration
	log      *slog.Logger
	fw       *fsnotify.Watcher
	out      chan struct{}
	watched  string // the directory watched now: dir, or an ancestor while dir is missing
}

// NewWatcher returns a Watcher for the file at path. debounce is how long
// the directory must be quiet before a change is reported (reports come at
// most about 1 s after the first event of a burst however long it lasts).
func NewWatcher(path string, debounce time.Duration, log *slog.Logger) (*Watcher, error) {
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, err
	}
	fw, err := fsnotify.NewWatcher()
	if err != nil {
		return nil, fmt.Errorf("starting the env file watcher (inotify): %w", err)
	}
	return &Watcher{
		path:     abs,
		dir:      filepath.Dir(abs),
		debounce: debounce,
		maxWait:  max(time.Second, 4*debounce),
		log:      log.With("component", "watcher"),
		fw:       fw,
		out:      make(chan struct{}, 1),
	}, nil
}

// Changes delivers a value after each burst of events in the directory.
// Values coalesce: a reader that falls behind gets one.
func (w *Watcher) Changes() <-chan struct{} { return w.out }

// Start sets up the first watch. Run must follow.
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
			if w.watched != w.dir {
				// Waiting for the directory: anything created on the way
				// may be it, or a step towards it.
				if ev.Has(fsnotify.Create) || ev.Has(fsnotify.Rename) {
					if found, err := w.ensure(); err != nil {
						w.log.Warn("watching the env file directory", "dir", w.dir, "error", errText(err))
					} else if found {
						arm()
					}
				}
				continue
			}
			if ev.Name == w.dir && (ev.Has(fsnotify.Remove) || ev.Has(fsnotify.Rename)) {
				w.log.Warn("env file directory removed; waiting for it to come back", "dir", w.dir)
				if _, err := w.ensure(); err != nil {
					w.log.Warn("watching the env file directory", "dir", w.dir, "error", errText(err))
				}
			}
			arm()
		case err, ok := <-w.fw.Errors:
			if !ok {
				return
			}
			// An overflow loses events: re-read to be sure.
			w.log.Warn("env file watcher error; re-reading the file", "error", errText(err))
			arm()
		case <-quietC:
			fire()
		case <-deadC:
			fire()
		}
	}
}

// ensure watches the directory, or its nearest existing ancestor while it
// is missing. It reports whether the directory itself is now watched after
// not being watched before.
func (w *Watcher) ensure() (bool, error) {
	for {
		target := w.dir
		for {
			st, err := os.Stat(target)
			if err == nil && st.IsDir() {
				break
			}
			if err != nil && !errors.Is(err, fs.ErrNotExist) {
				return false, err
			}
			parent := filepath.Dir(target)
			if parent == target {
				return false, errors.New("no existing ancestor directory")
			}
			target = parent
		}
		if target == w.watched {
			return false, nil
		}
		if err := w.fw.Add(target); err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				continue // removed between Stat and Add: look again
			}
			return false, fmt.Errorf("watching %s: %w", target, err)
		}
		if w.watched != "" {
			_ = w.fw.Remove(w.watched)
		}
		prev := w.watched
		w.watched = target
		if target != w.dir {
			w.log.Info("env file directory missing; watching an ancestor until it appears", "dir", w.dir, "watching", target)
			// It may have appeared between Stat and Add.
			if _, err := os.Stat(w.dir); err == nil {
				continue
			}
			return false, nil
		}
		if prev != "" {
			w.log.Info("env file directory appeared", "dir", w.dir)
		}
		return prev != "", nil
	}
}
