package main

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"

	"github.com/docker/go-units"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/auth"
	"github.com/molecule-ai/pull-agent/internal/safetext"
)

// ttyDisplay draws one live line per image on a terminal, redrawn in place.
type ttyDisplay struct {
	mu     sync.Mutex
	w      io.Writer
	color  bool
	order  []string // runtimes, display order
	rows   map[string]*displayRow
	drawn  int // lines drawn last time
	stop   chan struct{}
	done   chan struct{}
	start  time.Time
	finish sync.Once
}

type displayRow struct {
	runtime string
	phase   engine.Phase
	prog    engine.Progress
	note    string
	failed  bool
}

var _ pull.Observer = (*ttyDisplay)(nil)

func newTTYDisplay(w io.Writer, images []config.Image, color bool) *ttyDisplay {
	d := &ttyDisplay{w: w, color: color, rows: map[string]*displayRow{}, stop: make(chan struct{}), done: make(chan struct{}), start: time.Now()}
	for _, img := range images {
		d.order = append(d.order, img.Runtime)
		d.rows[img.Runtime] = &displayRow{runtime: img.Runtime, phase: "waiting"}
	}
	go d.loop()
	return d
}

func (d *ttyDisplay) loop() {
	defer close(d.done)
	t := time.NewTicker(150 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-t.C:
			d.draw()
		case <-d.stop:
			d.draw()
			return
		}
	}
}

// Stop draws the final frame and stops redrawing.
func (d *ttyDisplay) Stop() {
	d.finish.Do(func() { close(d.stop) })
	<-d.done
}

func (d *ttyDisplay) PullStarted(img config.Image, src auth.Source) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := d.rows[img.Runtime]
	r.phase = engine.PhaseResolving
	r.note = string(src)
}

func (d *ttyDisplay) PullProgress(img config.Image, p engine.Progress) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := d.rows[img.Runtime]
	r.phase, r.prog = p.Phase, p
}

func (d *ttyDisplay) PullFinished(res pull.PullResult) {
	d.mu.Lock()
	defer d.mu.Unlock()
	r := d.rows[res.Image.Runtime]
	if res.Err != nil {
		r.phase, r.failed = engine.PhaseFailed, true
		r.note = fmt.Sprintf("[%s] %s", pull.ClassOf(res.Err), res.Err.Error())
		return
	}
	r.phase = engine.PhaseDone
	r.note = safetext.ShortDigest(res.Digest.String())
	if res.UpToDate {
		r.note += " (up to date)"
	}
}

func (d *ttyDisplay) draw() {
	d.mu.Lock()
	defer d.mu.Unlock()
	var b strings.Builder
	if d.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", d.drawn)
	}
	for _, rt := range d.order {
		b.WriteString("\r\x1b[2K")
		b.WriteString(d.line(d.rows[rt]))
		b.WriteByte('\n')
	}
	d.drawn = len(d.order)
	io.WriteString(d.w, b.String())
}

func (d *ttyDisplay) line(r *displayRow) string {
	phase := fmt.Sprintf("%-11s", r.phase)
	if d.color {
		switch {
		case r.failed:
			phase = "\x1b[31m" + phase + "\x1b[0m"
		case r.phase == engine.PhaseDone:
			phase = "\x1b[32m" + phase + "\x1b[0m"
		}
	}
	bytes := ""
	if r.prog.Total > 0 {
		bytes = fmt.Sprintf("%9s / %-9s %s", units.HumanSize(float64(r.prog.Current)), units.HumanSize(float64(r.prog.Total)), bar(r.prog.Current, r.prog.Total, 20))
	} else if r.prog.Layers > 0 {
		bytes = fmt.Sprintf("%d/%d layers", r.prog.LayersDone, r.prog.Layers)
	}
	// The note may carry a registry's words: plain text only, cut by
	// rune, so that no escape sequence reaches the terminal whole or cut.
	note := safetext.Line(r.note, 100)
	return fmt.Sprintf("%-14s %s %-42s %s", r.runtime, phase, bytes, note)
}

func bar(cur, total int64, width int) string {
	n := 0
	if total > 0 {
		n = int(float64(width) * float64(cur) / float64(total))
	}
	n = min(max(n, 0), width)
	return "[" + strings.Repeat("=", n) + strings.Repeat(" ", width-n) + "]"
}
