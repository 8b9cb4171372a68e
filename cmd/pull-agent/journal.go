package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
)

// onJournal reports whether w is the stream systemd connected to the
// journal: JOURNAL_STREAM ("DEV:INODE", set by systemd for a service whose
// stderr is the journal) names the device and inode of w's file. A copy of
// the variable inherited by a process whose stderr went elsewhere (a shell
// started from the service, a pipe) does not match, and neither does a
// writer that is no file. go-systemd's journal.StderrIsJournalStream does
// the same for the process's own fd 2 and os.Getenv; this one takes the
// writer and the environment run was given, so tests use real files.
func onJournal(getenv func(string) string, w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	devText, inoText, ok := strings.Cut(getenv("JOURNAL_STREAM"), ":")
	if !ok {
		return false
	}
	dev, err1 := strconv.ParseUint(devText, 10, 64)
	ino, err2 := strconv.ParseUint(inoText, 10, 64)
	if err1 != nil || err2 != nil {
		return false
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		return false
	}
	return uint64(st.Dev) == dev && st.Ino == ino
}

// journalPriority is the sd-daemon prefix (sd-daemon(3)) journald reads as
// the line's priority: err, warning, info or debug.
func journalPriority(l slog.Level) string {
	switch {
	case l >= slog.LevelError:
		return "<3>"
	case l >= slog.LevelWarn:
		return "<4>"
	case l >= slog.LevelInfo:
		return "<6>"
	default:
		return "<7>"
	}
}

// withoutTime drops the record's time: journald stamps every line itself.
func withoutTime(groups []string, a slog.Attr) slog.Attr {
	if len(groups) == 0 && a.Key == slog.TimeKey {
		return slog.Attr{}
	}
	return a
}

// journalHandler writes each record as one line that starts with its
// sd-daemon priority. The inner handler formats into buf, which every
// handler derived by WithAttrs or WithGroup shares under mu, and the line
// goes to w in one write.
type journalHandler struct {
	inner slog.Handler
	mu    *sync.Mutex   // guards buf and orders the writes to w
	buf   *bytes.Buffer // the inner handler's output, one record at a time
	w     io.Writer
}

// newJournalHandler returns a handler in format ("text" or "json") for the
// journal stream w.
func newJournalHandler(w io.Writer, format string, level slog.Leveler) slog.Handler {
	h := &journalHandler{mu: &sync.Mutex{}, buf: &bytes.Buffer{}, w: w}
	ho := &slog.HandlerOptions{Level: level, ReplaceAttr: withoutTime}
	if format == "json" {
		h.inner = slog.NewJSONHandler(h.buf, ho)
	} else {
		h.inner = slog.NewTextHandler(h.buf, ho)
	}
	return h
}

func (h *journalHandler) Enabled(ctx context.Context, l slog.Level) bool {
	return h.inner.Enabled(ctx, l)
}

func (h *journalHandler) Handle(ctx context.Context, r slog.Record) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.buf.Reset()
	h.buf.WriteString(journalPriority(r.Level))
	if err := h.inner.Handle(ctx, r); err != nil {
		return err
	}
	_, err := h.w.Write(h.buf.Bytes())
	return err
}

func (h *journalHandler) WithAttrs(as []slog.Attr) slog.Handler {
	c := *h
	c.inner = h.inner.WithAttrs(as)
	return &c
}

func (h *journalHandler) WithGroup(name string) slog.Handler {
	c := *h
	c.inner = h.inner.WithGroup(name)
	return &c
}

// journalText prefixes each line of an error printed on stderr with the
// priority err when stderr is the journal, so that a refused start shows
// under journalctl -p err; elsewhere it returns s as it is.
func journalText(getenv func(string) string, w io.Writer, s string) string {
	if !onJournal(getenv, w) {
		return s
	}
	return "<3>" + strings.ReplaceAll(s, "\n", "\n<3>")
}
