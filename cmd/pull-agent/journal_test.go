package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// streamPair is a connected pair of unix stream sockets, what systemd gives
// a service as stderr when StandardError=journal: w is the service's end,
// r the reader's.
func streamPair(t *testing.T) (w, r *os.File) {
	t.Helper()
	fds, err := syscall.Socketpair(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	w, r = os.NewFile(uintptr(fds[0]), "stderr"), os.NewFile(uintptr(fds[1]), "journal")
	t.Cleanup(func() { w.Close(); r.Close() })
	return w, r
}

// journalStream is the value systemd sets in JOURNAL_STREAM for f.
func journalStream(t *testing.T, f *os.File) string {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf("%d:%d", st.Dev, st.Ino)
}

// drain closes w and returns everything written to it.
func drain(t *testing.T, w, r *os.File) string {
	t.Helper()
	w.Close()
	data, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	return string(data)
}

func TestOnJournal(t *testing.T) {
	stderr, _ := streamPair(t)
	other, _ := streamPair(t)
	file, err := os.Create(filepath.Join(t.TempDir(), "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	var st syscall.Stat_t
	if err := syscall.Fstat(int(stderr.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		stream string
		w      io.Writer
		want   bool
	}{
		{"stderr is the journal stream", journalStream(t, stderr), stderr, true},
		{"no JOURNAL_STREAM", "", stderr, false},
		{"inherited: another socket's", journalStream(t, other), stderr, false},
		{"inherited: stderr is a file", journalStream(t, stderr), file, false},
		{"a file named by its own inode", journalStream(t, file), file, true},
		{"same inode, other device", fmt.Sprintf("%d:%d", st.Dev+1, st.Ino), stderr, false},
		{"no colon", fmt.Sprint(st.Ino), stderr, false},
		{"not numbers", "dev:ino", stderr, false},
		{"negative", fmt.Sprintf("-%d:%d", st.Dev, st.Ino), stderr, false},
		{"not a file", journalStream(t, stderr), &bytes.Buffer{}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			getenv := func(k string) string {
				if k == "JOURNAL_STREAM" {
					return tc.stream
				}
				return ""
			}
			if got := onJournal(getenv, tc.w); got != tc.want {
				t.Errorf("onJournal(JOURNAL_STREAM=%q) = %v, want %v", tc.stream, got, tc.want)
			}
		})
	}
}

// logEveryLevel logs one line at each level, through a child logger with
// an attribute and a group, as the agent's components do.
func logEveryLevel(log *slog.Logger) {
	log = log.With("component", "pull")
	log.Debug("debug line", "n", 1)
	log.Info("image pulled", "image", "r/a:latest")
	log.Warn("env file sets a key pull-agent does not read", "key", "X")
	log.WithGroup("g").Error("pull failed", "error", "manifest unknown\nsecond line")
}

func TestLoggerOnTheJournal(t *testing.T) {
	for _, tc := range []struct {
		format string
		want   string
	}{
		{"text", `<7>level=DEBUG msg="debug line" component=pull n=1
<6>level=INFO msg="image pulled" component=pull image=r/a:latest
<4>level=WARN msg="env file sets a key pull-agent does not read" component=pull key=X
<3>level=ERROR msg="pull failed" component=pull g.error="manifest unknown\nsecond line"
`},
		{"json", `<7>{"level":"DEBUG","msg":"debug line","component":"pull","n":1}
<6>{"level":"INFO","msg":"image pulled","component":"pull","image":"r/a:latest"}
<4>{"level":"WARN","msg":"env file sets a key pull-agent does not read","component":"pull","key":"X"}
<3>{"level":"ERROR","msg":"pull failed","component":"pull","g":{"error":"manifest unknown\nsecond line"}}
`},
	} {
		t.Run(tc.format, func(t *testing.T) {
			w, r := streamPair(t)
			stream := journalStream(t, w)
			c := common{logLevel: "debug", logFormat: tc.format}
			log, err := c.logger(w, func(k string) string { return map[string]string{"JOURNAL_STREAM": stream}[k] })
			if err != nil {
				t.Fatal(err)
			}
			logEveryLevel(log)
			if got := drain(t, w, r); got != tc.want {
				t.Errorf("on the journal:\n%s\nwant:\n%s", got, tc.want)
			}
		})
	}
}

// Elsewhere, the lines are slog's own, with their time, even where
// JOURNAL_STREAM was inherited from a service.
func TestLoggerElsewhere(t *testing.T) {
	for _, tc := range []struct {
		format string
		line   *regexp.Regexp
	}{
		{"text", regexp.MustCompile(`^time=\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+(Z|[+-]\d\d:\d\d) level=(INFO|WARN|ERROR) msg="[^"]+" component=pull `)},
		{"json", regexp.MustCompile(`^\{"time":"\d{4}-\d\d-\d\dT[^"]+","level":"(INFO|WARN|ERROR)","msg":"[^"]+","component":"pull",`)},
	} {
		t.Run(tc.format, func(t *testing.T) {
			journal, _ := streamPair(t)
			w, r := streamPair(t)
			inherited := journalStream(t, journal)
			c := common{logLevel: "info", logFormat: tc.format}
			log, err := c.logger(w, func(k string) string { return map[string]string{"JOURNAL_STREAM": inherited}[k] })
			if err != nil {
				t.Fatal(err)
			}
			logEveryLevel(log)
			lines := strings.Split(strings.TrimSuffix(drain(t, w, r), "\n"), "\n")
			if len(lines) != 3 {
				t.Fatalf("want 3 lines (info and up), got %d: %q", len(lines), lines)
			}
			for _, l := range lines {
				if !tc.line.MatchString(l) {
					t.Errorf("not slog's own %s line: %s", tc.format, l)
				}
			}
		})
	}
}

// Lines logged at once from many goroutines through derived loggers each
// arrive whole, each behind its own priority.
func TestJournalLinesStayWhole(t *testing.T) {
	w, r := streamPair(t)
	stream := journalStream(t, w)
	c := common{logLevel: "info", logFormat: "text"}
	log, err := c.logger(w, func(k string) string { return map[string]string{"JOURNAL_STREAM": stream}[k] })
	if err != nil {
		t.Fatal(err)
	}
	var out string
	read := make(chan struct{})
	go func() { defer close(read); data, _ := io.ReadAll(r); out = string(data) }()
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			l := log.With("worker", g)
			for i := range 50 {
				if i%2 == 0 {
					l.Warn("warned", "i", i)
				} else {
					l.Info("informed", "i", i)
				}
			}
		})
	}
	wg.Wait()
	w.Close()
	<-read
	line := regexp.MustCompile(`^(<4>level=WARN msg=warned|<6>level=INFO msg=informed) worker=\d i=\d+$`)
	lines := strings.Split(strings.TrimSuffix(out, "\n"), "\n")
	if len(lines) != 400 {
		t.Fatalf("%d lines, want 400", len(lines))
	}
	for _, l := range lines {
		if !line.MatchString(l) {
			t.Fatalf("a line broken or without its priority: %q", l)
		}
	}
}

// A refused start (the error main prints before exiting) is an error in the
// journal, each of its lines; elsewhere it is printed as before.
func TestRefusedStartIsAnErrorInTheJournal(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.env")
	runMain := func(stderr *os.File, stream string) {
		t.Helper()
		cmd := exec.Command(os.Args[0], "images", "--env-file", missing, "--log-format", "json")
		cmd.Env = []string{"PULL_AGENT_TEST_MAIN=1", "JOURNAL_STREAM=" + stream, "DOCKER_CONFIG=" + t.TempDir()}
		cmd.Stderr = stderr
		if err := cmd.Run(); err == nil {
			t.Fatal("images with a missing --env-file succeeded")
		}
	}
	w, r := streamPair(t)
	runMain(w, journalStream(t, w))
	got := drain(t, w, r)
	if !strings.HasPrefix(got, "<3>pull-agent: ") || !strings.Contains(got, missing) {
		t.Fatalf("on the journal, want <3>pull-agent: … naming %s, got:\n%s", missing, got)
	}
	for _, l := range strings.Split(strings.TrimSuffix(got, "\n"), "\n") {
		if !strings.HasPrefix(l, "<3>") {
			t.Errorf("a line of the error without <3>: %q\n%s", l, got)
		}
	}

	journal, _ := streamPair(t)
	w, r = streamPair(t)
	runMain(w, journalStream(t, journal))
	if got := drain(t, w, r); !strings.HasPrefix(got, "pull-agent: ") || strings.Contains(got, "<3>") {
		t.Errorf("elsewhere, want the plain error, got:\n%s", got)
	}
}

// The journal handler keeps slog's level filter.
func TestJournalHandlerEnabled(t *testing.T) {
	h := newJournalHandler(io.Discard, "text", slog.LevelWarn)
	if h.Enabled(context.Background(), slog.LevelInfo) || !h.Enabled(context.Background(), slog.LevelWarn) {
		t.Error("the journal handler ignores --log-level")
	}
}
