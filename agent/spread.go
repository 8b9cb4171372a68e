package agent

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"strings"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/state"
)

// Spread flips (MOLECULE_FLIP_SPREAD). When the prefix changes, each host
// waits a delay of its own in [0, spread) before it pulls the new set, so
// that a fleet flipped in the same second does not reach the new
// registry in the same second. The old set stays warm meanwhile. The
// delay is drawn from the host's seed and the new prefix: the same on
// every restart, different from host to host. The scheduled flip is kept
// in FlipFile, so that a restart neither skips nor re-rolls it.

// flipPlan is a prefix change waiting for its time.
type flipPlan struct {
	cfg  config.Config // applied at at
	from string
	at   time.Time
}

// flipRecord is FlipFile's format.
type flipRecord struct {
	From string    `json:"from"`
	To   string    `json:"to"`
	At   time.Time `json:"at"`
}

// spreadDelay is the host's delay for a flip to prefix: uniform in
// [0, spread) over hosts, fixed for a host and prefix.
func spreadDelay(seed []byte, prefix string, spread time.Duration) time.Duration {
	if spread <= 0 {
		return 0
	}
	h := sha256.New()
	h.Write(seed)
	h.Write([]byte{0})
	h.Write([]byte(prefix))
	frac := float64(binary.BigEndian.Uint64(h.Sum(nil)[:8])) / math.Exp2(64)
	return time.Duration(frac * float64(spread))
}

// holdFlip decides whether cfg, read from the env file, waits: a prefix
// change with a spread is scheduled (the running configuration stays);
// a flip back to the running prefix cancels a scheduled one. It reports
// whether cfg was held.
func (l *loop) holdFlip(cfg config.Config) bool {
	now := l.clock.Now()
	if l.cfg == nil {
		return l.resumeFlip(cfg, now)
	}
	if cfg.Prefix == l.cfg.Prefix || cfg.FlipSpread <= 0 {
		if l.flip != nil {
			l.log.Info("scheduled flip cancelled", "to", l.flip.cfg.Prefix, "was_at", l.flip.at.UTC().Format(time.RFC3339), "prefix", cfg.Prefix)
			l.setFlip(nil)
		}
		return false
	}
	if l.flip != nil && l.flip.cfg.Prefix == cfg.Prefix {
		l.flip.cfg = cfg // another edit while it waits: applied with it
		return true
	}
	delay := spreadDelay(l.opts.HostSeed, cfg.Prefix, cfg.FlipSpread)
	l.setFlip(&flipPlan{cfg: cfg, from: l.cfg.Prefix, at: now.Add(delay)})
	l.log.Info("flip scheduled; the current images stay warm until then", "to", cfg.Prefix, "from", l.cfg.Prefix,
		"at", l.flip.at.UTC().Format(time.RFC3339), "delay_s", delay.Seconds(), "spread", cfg.FlipSpread.String())
	return true
}

// resumeFlip, at start, takes up a flip that was scheduled before a
// restart: the previous prefix runs until its time.
func (l *loop) resumeFlip(cfg config.Config, now time.Time) bool {
	rec, ok := l.readFlip()
	if !ok {
		return false
	}
	if rec.To != cfg.Prefix || cfg.FlipSpread <= 0 || !now.Before(rec.At) || rec.From == cfg.Prefix {
		l.setFlip(nil)
		return false
	}
	old := cfg
	old.Prefix = rec.From
	if _, err := old.Images(); err != nil {
		l.setFlip(nil)
		return false
	}
	l.apply(old)
	if l.cfg == nil || l.cfg.Prefix != rec.From {
		return false // refused: apply refused it, cfg goes through
	}
	l.flip = &flipPlan{cfg: cfg, from: rec.From, at: rec.At}
	l.log.Info("flip still scheduled from before the restart", "to", cfg.Prefix, "from", rec.From, "at", rec.At.UTC().Format(time.RFC3339))
	return true
}

// flipDue applies a scheduled flip whose time has come.
func (l *loop) flipDue() {
	if l.flip == nil || l.clock.Now().Before(l.flip.at) {
		return
	}
	cfg := l.flip.cfg
	l.log.Info("flip: pulling the new set", "to", cfg.Prefix, "from", l.flip.from)
	l.setFlip(nil)
	l.apply(cfg)
}

// setFlip replaces the scheduled flip and records it.
func (l *loop) setFlip(f *flipPlan) {
	l.flip = f
	if l.opts.FlipFile == "" {
		return
	}
	if f == nil {
		if err := os.Remove(l.opts.FlipFile); err != nil && !errors.Is(err, fs.ErrNotExist) {
			l.log.Warn("removing the record of a scheduled flip failed", "file", l.opts.FlipFile, "error", errText(err))
		}
		return
	}
	data, _ := json.Marshal(flipRecord{From: f.from, To: f.cfg.Prefix, At: f.at.UTC()})
	if err := state.WriteFileAtomic(l.opts.FlipFile, append(data, '\n'), 0o644); err != nil {
		l.log.Warn("recording a scheduled flip failed; a restart would flip at once", "file", l.opts.FlipFile, "error", errText(err))
	}
}

func (l *loop) readFlip() (flipRecord, bool) {
	if l.opts.FlipFile == "" {
		return flipRecord{}, false
	}
	data, err := os.ReadFile(l.opts.FlipFile)
	if err != nil {
		return flipRecord{}, false
	}
	var rec flipRecord
	if err := json.Unmarshal(data, &rec); err != nil || rec.At.IsZero() {
		l.log.Warn("ignoring an unreadable record of a scheduled flip", "file", l.opts.FlipFile)
		return flipRecord{}, false
	}
	if _, err := config.ParsePrefix(rec.From); err != nil {
		return flipRecord{}, false
	}
	return rec, true
}

// HostSeed is this host's seed for the spread of flips: the contents of
// machineID (systemd's /etc/machine-id, unique per host and stable), or
// else a random seed kept in seedFile, made on first use.
func HostSeed(machineID, seedFile string) ([]byte, error) {
	if b, err := os.ReadFile(machineID); err == nil && len(strings.TrimSpace(string(b))) >= 16 {
		return []byte(strings.TrimSpace(string(b))), nil
	}
	if b, err := os.ReadFile(seedFile); err == nil && len(strings.TrimSpace(string(b))) >= 16 {
		return []byte(strings.TrimSpace(string(b))), nil
	}
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return nil, err
	}
	seed := hex.EncodeToString(raw[:])
	if err := state.WriteFileAtomic(seedFile, []byte(seed+"\n"), 0o600); err != nil {
		return nil, fmt.Errorf("no %s, and keeping a seed for the spread of flips in %s failed: %w", machineID, seedFile, err)
	}
	return []byte(seed), nil
}
