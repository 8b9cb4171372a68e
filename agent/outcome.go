package agent

import (
	"context"
	"errors"
	"log/slog"
	"regexp"
	"strconv"
	"time"

	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/pull"
	"github.com/molecule-ai/pull-agent/agent/state"
	"github.com/molecule-ai/pull-agent/auth"
)

// finished records a pull's result and schedules what follows from it.
func (l *loop) finished(ctx context.Context, d pullDone) {
	l.inflight--
	if d.st.fresh {
		l.inflightFresh--
	}
	st := l.states[d.ref]
	if st != d.st {
		return // the image left the set (or came back as a new entry)
	}
	st.cancel, st.obs, st.queuing = nil, nil, false
	r := d.res
	st.Duration, st.Bytes = r.Duration, r.Bytes
	now := l.clock.Now()
	if r.Source != "" {
		l.hostInfo[r.Image.Host()] = state.HostDoc{Host: r.Image.Host(), CredentialSource: string(r.Source), TokenExpiresAt: tp(r.CredentialsExpire)}
	}
	l.a.metrics.observePull(r)
	if fb := d.fallback; fb != nil {
		if fb.Source != "" {
			l.hostInfo[fb.Image.Host()] = state.HostDoc{Host: fb.Image.Host(), CredentialSource: string(fb.Source), TokenExpiresAt: tp(fb.CredentialsExpire)}
		}
		l.a.metrics.observePull(fb.PullResult)
	}
	log := l.log.With("runtime", r.Image.Runtime, "image", r.Image.Ref)
	switch {
	case r.Err == nil:
		l.succeeded(ctx, st, r, now, log)
	case d.fallback != nil && d.fallback.Err == nil:
		l.primaryFailed(st, pull.ClassOf(r.Err))
		l.servedFromFallback(st, d, now, log)
	default:
		l.primaryFailed(st, pull.ClassOf(r.Err))
		d.res.Err = fallbackError(r.Err, d.fallback)
		l.failed(st, d, now, log)
	}
	l.checkConverged(now)
}

// succeeded marks the image warm and records it as pulled by the agent.
func (l *loop) succeeded(ctx context.Context, st *imageState, r pull.PullResult, now time.Time, log *slog.Logger) {
	l.primaryBack(st, st.Digest.String(), r.Digest.String(), log)
	st.Source, st.FallbackRef, st.primaryFailures = state.SourcePrimary, "", 0
	st.State, st.Digest, st.ImageID, st.Size, st.RemoteDigest = state.Warm, r.Digest, r.ImageID, r.Size, r.Digest
	st.LastSuccess, st.Attempts, st.LastError, st.LastClass, st.NextAttempt = now, 0, "", "", time.Time{}
	st.Progress = engine.Progress{Phase: engine.PhaseDone}
	if hs := l.hosts[r.Image.Host()]; hs != nil {
		hs.strikes = 0
	}
	if r.UpToDate {
		log.Debug("image up to date", "digest", r.Digest.String())
	} else {
		log.Info("image pulled", "digest", r.Digest.String(), "bytes", r.Bytes, "duration_s", r.Duration.Seconds())
	}
	if r.ImageID != "" && l.pulled[r.Image.Ref] != r.ImageID {
		l.pulled[r.Image.Ref] = r.ImageID
		l.pulledDirty = true
	}
	l.maybePrune(ctx)
}

// failed records a failure and schedules the next try by its class.
func (l *loop) failed(st *imageState, d pullDone, now time.Time, log *slog.Logger) {
	r := d.res
	class := pull.ClassOf(r.Err)
	defer l.keepTryingPrimary(st, now)
	st.LastError, st.LastClass = errText(r.Err), class
	if d.remote != "" {
		st.RemoteDigest = d.remote
		if d.remote != st.Digest && st.Digest != "" {
			st.State = state.Stale
		}
	}
	if st.State != state.Warm && st.State != state.Stale {
		st.State = state.Failed
	}
	st.Progress = engine.Progress{Phase: engine.PhaseFailed}
	switch class {
	case pull.ClassCanceled:
		st.Due = true
		if st.State == state.Failed {
			st.State = state.Pending
		}
	case pull.ClassDaemon:
		l.daemonLost(st, now, log)
	case pull.ClassRateLimited:
		l.rateLimited(st, r.Image.Host(), now, log)
	case pull.ClassAuth, pull.ClassNotFound, pull.ClassDisk:
		if errors.Is(r.Err, auth.ErrUnavailable) {
			l.retry(st, class, now, log)
			return
		}
		if class == pull.ClassAuth && r.Started.Before(l.credsAt) {
			// The credentials changed while this pull ran with the old ones.
			st.Attempts++
			st.Due, st.NextAttempt = true, now
			log.Warn("pull failed on auth with credentials since changed; trying again at once", "error", st.LastError)
			return
		}
		l.waitForRefresh(st, class, log)
	default: // network, server, stalled, verify, unknown
		l.retry(st, class, now, log)
	}
}

// keepTryingPrimary: an image a fallback serves has its primary tried
// again with backoff, whatever the failure.
func (l *loop) keepTryingPrimary(st *imageState, now time.Time) {
	if !st.Due && st.fromFallback() {
		l.retryPrimary(st, now)
	}
}

// daemonLost keeps the image due and starts pinging the daemon.
func (l *loop) daemonLost(st *imageState, now time.Time, log *slog.Logger) {
	st.Due = true
	if l.daemonUp {
		l.daemonUp, l.pingFails, l.nextPing = false, 0, now
		log.Warn("docker daemon unreachable; waiting for it", "error", st.LastError)
	}
}

// rateLimited backs off the image's host. A delay the registry names is
// honoured. Otherwise pulls that were already running when the host
// refused the first of them come back with 429 at the same moment: one
// episode, one strike; only a 429 after a cooldown ended doubles it.
func (l *loop) rateLimited(st *imageState, host string, now time.Time, log *slog.Logger) {
	hs := l.hosts[host]
	if hs == nil {
		hs = &hostState{}
		l.hosts[host] = hs
	}
	delay, named := retryAfter(st.LastError)
	if !named {
		if now.Before(hs.until) {
			delay = 0
		} else {
			hs.strikes++
			delay = equalJitter(l.opts.RateLimit, hs.strikes, l.opts.Random)
		}
	}
	if until := now.Add(delay); until.After(hs.until) {
		hs.until = until
	}
	st.Due, st.NextAttempt = true, hs.until
	log.Warn("registry rate-limited the pull; backing off this host", "host", host, "delay_s", hs.until.Sub(now).Seconds(), "retry_after", named)
}

// waitForRefresh parks an image whose failure a retry cannot cure (bad
// credentials, a missing image, a full disk) until the next refresh, a
// configuration change or SIGHUP.
func (l *loop) waitForRefresh(st *imageState, class pull.ErrorClass, log *slog.Logger) {
	st.Attempts++
	st.Due = false
	log.Error("pull failed; next try at the next refresh, on a configuration change or on SIGHUP", "class", string(class), "error", st.LastError)
}

// retry schedules a bounded retry with backoff of a failure that should
// pass on its own.
func (l *loop) retry(st *imageState, class pull.ErrorClass, now time.Time, log *slog.Logger) {
	st.Attempts++
	if st.Attempts > l.opts.Retry.Attempts {
		st.Due = false
		log.Error("pull failed; retries exhausted until the next refresh", "class", string(class), "attempts", st.Attempts, "error", st.LastError)
		return
	}
	delay := backoff(l.opts.Retry, st.Attempts, l.opts.Random)
	st.Due, st.NextAttempt = true, now.Add(delay)
	log.Warn("pull failed; retry scheduled", "class", string(class), "attempt", st.Attempts, "delay_s", delay.Seconds(), "error", st.LastError)
}

// checkConverged records a finished reconcile: nothing in flight and
// nothing due now.
func (l *loop) checkConverged(now time.Time) {
	if l.inflight > 0 {
		return
	}
	for _, st := range l.states {
		if st.Due && !now.Before(st.NextAttempt) {
			return
		}
	}
	l.lastReconcile = now
	l.a.metrics.reconciled(now)
}

// ceiling is the n-th doubling of p.Initial, capped at p.Max.
func ceiling(p RetryPolicy, n int) time.Duration {
	ceil := p.Initial
	for i := 1; i < n && ceil < p.Max; i++ {
		ceil *= 2
	}
	return max(min(ceil, p.Max), 0)
}

// backoff is the delay before try n+1: full jitter over an exponential
// cap, random in [0, ceiling].
func backoff(p RetryPolicy, n int, random func() float64) time.Duration {
	ceil := ceiling(p, n)
	return min(time.Duration(random()*float64(ceil+1)), ceil)
}

// equalJitter is half the doubling ceiling plus a random part of the other
// half: spread out, but never a near-immediate retry.
func equalJitter(p RetryPolicy, n int, random func() float64) time.Duration {
	half := ceiling(p, n) / 2
	return half + min(time.Duration(random()*float64(half+1)), half)
}

var retryAfterRE = regexp.MustCompile(`(?i)retry[- ]after[":= ]+(\d+)`)

// retryAfter finds a Retry-After delay in seconds in a registry's message,
// where registries put it; the daemon does not pass the header on.
func retryAfter(msg string) (time.Duration, bool) {
	m := retryAfterRE.FindStringSubmatch(msg)
	if m == nil {
		return 0, false
	}
	n, err := strconv.Atoi(m[1])
	if err != nil || n <= 0 || n > 3600 {
		return 0, false
	}
	return time.Duration(n) * time.Second, true
}
