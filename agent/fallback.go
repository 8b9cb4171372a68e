package agent

import (
	"context"
	"errors"
	"log/slog"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/agent/state"
	"github.com/molecule-ai/pull-agent/internal/safetext"
)

// Fallback prefixes (MOLECULE_IMAGE_FALLBACK_REGISTRY). An image the host
// does not hold, which the primary refuses for a reason another registry
// can cure (pull.FallbackCures), is pulled from the first fallback that
// serves it and tagged under the primary's name. The primary keeps being
// tried with the usual backoff; once it serves the image, its content
// takes the name back. An image the host holds from the primary is never
// switched: a stale image is better than a silent change of source.

// fallbackTag is a primary name the agent gave to an image from a
// fallback, as recorded with the pulled images.
type fallbackTag struct {
	Prefix  string `json:"prefix"`
	Ref     string `json:"ref"` // the reference pulled from the fallback
	ImageID string `json:"image_id"`
}

// fallbackPlan is what a pull goroutine needs to decide on a fallback,
// copied from the loop's state when the pull starts.
type fallbackPlan struct {
	prefixes []string
	failures int    // the primary's curable failures in a row so far
	tagged   string // the image ID the agent tagged from a fallback, if any
	serving  bool   // the image is served from a fallback now
}

func (l *loop) fallbackPlan(st *imageState) fallbackPlan {
	if l.cfg == nil || len(l.cfg.Fallbacks) == 0 {
		return fallbackPlan{}
	}
	return fallbackPlan{
		prefixes: l.cfg.Fallbacks,
		failures: st.primaryFailures,
		tagged:   l.fallbackTags[st.Image.Ref].ImageID,
		serving:  st.fromFallback(),
	}
}

// applies reports whether a primary failure of class c falls back: a
// fallback is configured, cures c by now, and the daemon does not hold
// the image from the primary.
func (f fallbackPlan) applies(ctx context.Context, e engine.Engine, img config.Image, c pull.ErrorClass) bool {
	if len(f.prefixes) == 0 || !pull.FallbackCures(c, f.failures+1) {
		return false
	}
	if img.Pin != "" {
		return true // presentPin found no pinned image under the primary's name
	}
	info, err := e.ImageInspect(ctx, img.Ref)
	switch {
	case errors.Is(err, engine.ErrImageNotFound):
		return true
	case err != nil:
		return false // the daemon cannot say: keep what it may hold
	}
	return f.tagged != "" && info.ID == f.tagged
}

// primaryFailed counts a failure of the primary that a fallback may cure.
func (l *loop) primaryFailed(st *imageState, c pull.ErrorClass) {
	if pull.FallbackCures(c, pull.FallbackAttempts) {
		st.primaryFailures++
	}
}

// servedFromFallback records an image a fallback served after the primary
// failed with d.res, and schedules the next try of the primary.
func (l *loop) servedFromFallback(st *imageState, d pullDone, now time.Time, log *slog.Logger) {
	fb := d.fallback
	r := fb.PullResult
	source := state.SourceFallback(fb.Prefix)
	changed := st.Source != source || st.Digest != r.Digest
	st.State, st.Digest, st.ImageID, st.Size, st.RemoteDigest = state.Warm, r.Digest, r.ImageID, r.Size, r.Digest
	st.Source, st.FallbackRef = source, r.Image.Ref
	st.LastSuccess = now
	st.LastError, st.LastClass = errText(d.res.Err), pull.ClassOf(d.res.Err)
	st.Progress = engine.Progress{Phase: engine.PhaseDone}
	delay := l.retryPrimary(st, now)
	lvl := slog.LevelDebug
	if changed {
		lvl = slog.LevelWarn
	}
	log.Log(context.Background(), lvl, "image served from a fallback; the primary is tried again with backoff",
		"fallback", fb.Prefix, "fallback_image", r.Image.Ref, "digest", r.Digest.String(),
		"primary_class", string(st.LastClass), "primary_error", st.LastError, "next_primary_try_s", delay.Seconds())
	tag := fallbackTag{Prefix: fb.Prefix, Ref: r.Image.Ref, ImageID: r.ImageID}
	if l.fallbackTags[st.Image.Ref] != tag {
		l.fallbackTags[st.Image.Ref] = tag
		l.pulledDirty = true
	}
	for _, ref := range []string{r.Image.Ref, st.Image.Ref} {
		if l.pulled[ref] != r.ImageID {
			l.pulled[ref] = r.ImageID
			l.pulledDirty = true
		}
	}
}

// retryPrimary schedules the next try of the primary for an image served
// from a fallback: the usual backoff, never given up while it serves.
func (l *loop) retryPrimary(st *imageState, now time.Time) time.Duration {
	st.Attempts = min(st.Attempts+1, 30)
	delay := backoff(l.opts.Retry, st.Attempts, l.opts.Random)
	st.Due, st.NextAttempt = true, now.Add(delay)
	return delay
}

// primaryBack records that the primary served an image a fallback had
// served: the primary's content has the name again.
func (l *loop) primaryBack(st *imageState, fallbackDigest, primaryDigest string, log *slog.Logger) {
	tag, ok := l.fallbackTags[st.Image.Ref]
	if !ok && !st.fromFallback() {
		return
	}
	log.Info("the primary serves the image again; its name points at the primary's content",
		"fallback", tag.Prefix, "fallback_digest", fallbackDigest, "primary_digest", primaryDigest)
	delete(l.fallbackTags, st.Image.Ref)
	l.pulledDirty = true
	if tag.Ref != "" && l.cfg != nil && l.cfg.PrunePrevious {
		l.previous = append(l.previous, tag.Ref)
	}
}

// fallbackError is the primary's failure with what the fallbacks said,
// the primary's words cut short so that the fallbacks' fit in the error
// kept (maxErrorRunes); its class is the primary's.
func fallbackError(primary error, fb *pull.FallbackResult) error {
	if fb == nil || fb.Err == nil {
		return primary
	}
	return &withFallbacks{primary: primary, text: safetext.Line(primary.Error(), maxErrorRunes/3) + "; " + errText(fb.Err)}
}

type withFallbacks struct {
	primary error
	text    string
}

func (e *withFallbacks) Error() string { return e.text }
func (e *withFallbacks) Unwrap() error { return e.primary }
