package agent

import (
	"context"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/agent/state"
	"github.com/molecule-ai/pull-agent/auth"
)

// step starts what is due: a refresh, a ping while Docker is down, pulls.
func (l *loop) step(ctx context.Context) {
	l.flipDue()
	now := l.clock.Now()
	if !now.Before(l.refreshAt) {
		l.log.Info("refresh: re-pulling moving tags", "images", len(l.images))
		l.requeue(true)
		l.refreshAt = now.Add(l.jitter(l.opts.RefreshInterval))
	}
	if l.engine == nil || l.puller == nil {
		return
	}
	if !l.daemonUp {
		if !l.pinging && !now.Before(l.nextPing) {
			l.ping(ctx)
		}
		return
	}
	// Images are in priority order. A fresh pull waits until the one
	// started before it has queued its layers in the daemon, so that
	// the daemon downloads them in this order (pull/order.go).
	held := l.queueHeld(now)
	for _, img := range l.images {
		if l.inflight >= l.opts.Concurrency*pull.RefreshConcurrencyFactor {
			return
		}
		st := l.states[img.Ref]
		if st == nil || !st.Due || st.cancel != nil || now.Before(st.NextAttempt) {
			continue
		}
		// A refresh of a warm image is a manifest HEAD unless its tag
		// moved: a wider limit; anything else keeps to Concurrency.
		if st.State != state.Warm && (held || l.inflightFresh >= l.opts.Concurrency) {
			continue
		}
		if hs := l.hosts[img.Host()]; hs != nil && now.Before(hs.until) {
			continue
		}
		l.startPull(ctx, st)
		held = held || st.queuing
	}
}

// queueHeld reports whether a fresh pull is still resolving, within
// pull.QueueLead of its start, so that the next fresh pull waits.
func (l *loop) queueHeld(now time.Time) bool {
	for _, st := range l.states {
		if st.queuing && now.Before(st.LastAttempt.Add(pull.QueueLead)) {
			return true
		}
	}
	return false
}

// ping asks the daemon whether it is up, in a goroutine that reports on
// pingRes.
func (l *loop) ping(ctx context.Context) {
	l.pinging = true
	e := l.engine
	l.wg.Go(func() {
		pctx, cancel := context.WithTimeout(ctx, pingTimeout)
		defer cancel()
		err := e.Ping(pctx)
		select {
		case l.pingRes <- err:
		case <-ctx.Done():
		}
	})
}

// startPull pulls st's image in a goroutine that reports on done.
func (l *loop) startPull(ctx context.Context, st *imageState) {
	pctx, cancel := context.WithCancelCause(ctx)
	wasWarm := st.State == state.Warm || st.State == state.Stale
	obs := &pullObserver{log: l.log, refresh: st.State == state.Warm}
	obs.progress.Store(&engine.Progress{Phase: engine.PhaseResolving})
	st.cancel, st.Due, st.obs = cancel, false, obs
	st.LastAttempt = l.clock.Now()
	st.fresh = st.State != state.Warm
	if st.fresh {
		st.State = state.Pulling
		l.inflightFresh++
	}
	// Only a first attempt holds the next fresh pull back: a retry of a
	// pull that failed before it queued anything (a credential helper
	// that hangs, a refusing registry) would otherwise come due again
	// and again and keep the images behind it from ever starting.
	if st.fresh && st.Attempts == 0 {
		st.queuing = true
		obs.queued = func() {
			select {
			case l.queued <- st:
			case <-ctx.Done(): // the loop has stopped reading
			}
		}
	}
	l.inflight++
	img, puller, alias, e := st.Image, l.puller, st.Alias, l.engine
	fb := l.fallbackPlan(st)
	l.wg.Go(func() {
		defer cancel(nil)
		res, pinned := presentPin(pctx, e, img, l.clock)
		if !pinned {
			res = puller.Pull(pctx, img, obs)
		}
		d := pullDone{ref: img.Ref, res: res, st: st}
		if res.Err != nil && fb.applies(pctx, e, img, pull.ClassOf(res.Err)) {
			r := puller.PullFallback(pctx, img, fb.prefixes, obs)
			d.fallback = &r
		}
		if id := d.imageID(); id != "" && alias != "" {
			// The alias follows the image every time it is verified.
			if err := e.ImageTag(pctx, id, alias); err != nil {
				l.log.Warn("tagging the alias failed", "image", img.Ref, "alias", alias, "error", errText(err))
			}
		}
		if c := pull.ClassOf(res.Err); res.Err != nil && wasWarm && !fb.serving && c != pull.ClassCanceled && c != pull.ClassDaemon {
			// Is the registry serving something newer than what we hold?
			if ri, err := puller.Remote(pctx, img); err == nil {
				d.remote = ri.Digest
			}
		}
		select {
		case l.done <- d:
		case <-ctx.Done(): // the loop has stopped reading
		}
	})
}

// presentPin reports a pinned image the daemon already holds as warm
// without asking the registry: a digest cannot move.
func presentPin(ctx context.Context, e engine.Engine, img config.Image, clock Clock) (pull.PullResult, bool) {
	if img.Pin == "" {
		return pull.PullResult{}, false
	}
	info, err := e.ImageInspect(ctx, img.Ref)
	if err != nil || !pull.HasRepoDigest(info.RepoDigests, img.Repository(), img.Pin) {
		return pull.PullResult{}, false
	}
	return pull.PullResult{Image: img, Digest: img.Pin, ImageID: info.ID, Size: info.Size, Started: clock.Now(), UpToDate: true}, true
}

// pullObserver follows one pull: it logs its start and keeps its latest
// progress, which status requests read while the pull runs.
type pullObserver struct {
	log      *slog.Logger
	refresh  bool // of a warm image: only a change is worth a line
	progress atomic.Pointer[engine.Progress]
	// queued, if set, is called once, when the pull has queued its
	// layers in the daemon (pull.Queued).
	queued     func()
	queuedOnce sync.Once
}

// PullStarted implements pull.Observer.
func (o *pullObserver) PullStarted(img config.Image, src auth.Source) {
	lvl := slog.LevelInfo
	if o.refresh {
		lvl = slog.LevelDebug
	}
	o.log.Log(context.Background(), lvl, "pull started", "runtime", img.Runtime, "image", img.Ref, "auth", string(src))
}

// PullProgress implements pull.Observer.
func (o *pullObserver) PullProgress(_ config.Image, p engine.Progress) {
	o.progress.Store(&p)
	if o.queued != nil && pull.Queued(p) {
		o.queuedOnce.Do(o.queued)
	}
}

// PullFinished implements pull.Observer; results are handled in the loop.
func (o *pullObserver) PullFinished(pull.PullResult) {}
