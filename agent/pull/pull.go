package pull

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/distribution/reference"
	"github.com/opencontainers/go-digest"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/auth"
)

// DefaultConcurrency is how many pulls run at once unless configured.
const DefaultConcurrency = 3

// RefreshConcurrencyFactor widens the concurrency for refreshes of images
// the daemon already holds (latency-bound manifest HEADs, no download
// unless the tag moved).
const RefreshConcurrencyFactor = 3

// Authorizer chooses the credentials for a registry host.
type Authorizer interface {
	Select(ctx context.Context, host string) (auth.Selection, error)
}

// Observer is told about every pull. Its methods are called from the
// pulling goroutines, concurrently for different images.
type Observer interface {
	PullStarted(img config.Image, source auth.Source)
	PullProgress(img config.Image, p engine.Progress)
	PullFinished(r PullResult)
}

// NopObserver ignores every event.
type NopObserver struct{}

// PullStarted implements Observer.
func (NopObserver) PullStarted(config.Image, auth.Source) {}

// PullProgress implements Observer.
func (NopObserver) PullProgress(config.Image, engine.Progress) {}

// PullFinished implements Observer.
func (NopObserver) PullFinished(PullResult) {}

// PullResult is the outcome of one pull.
type PullResult struct {
	Image  config.Image
	Source auth.Source
	// Digest is the manifest digest the registry served and the daemon now
	// holds for the image.
	Digest digest.Digest
	// ImageID is the local image ID; Size its size in the daemon.
	ImageID string
	Size    int64
	// Bytes is how much was downloaded (layers already present excluded).
	Bytes    int64
	Started  time.Time
	Duration time.Duration
	// UpToDate is true when the daemon already had the image.
	UpToDate bool
	// CredentialsExpire is when the credentials used expire, when known.
	CredentialsExpire time.Time
	// Err is nil on success, otherwise an error whose class ClassOf tells.
	Err error
}

// ErrorClass sorts pull failures into what an operator would do about them.
type ErrorClass string

// The error classes.
const (
	ClassAuth        ErrorClass = "auth"         // credentials missing, wrong or refused
	ClassNotFound    ErrorClass = "not-found"    // no such repository, tag or digest
	ClassRateLimited ErrorClass = "rate-limited" // the registry said 429 / toomanyrequests
	ClassNetwork     ErrorClass = "network"      // the registry could not be reached or the connection broke
	ClassServer      ErrorClass = "server"       // the registry failed (5xx, a blob it lists but cannot serve)
	ClassStalled     ErrorClass = "stalled"      // the pull stopped making progress or ran past its deadline
	ClassDaemon      ErrorClass = "daemon"       // the Docker daemon could not be reached
	ClassDisk        ErrorClass = "disk"         // the daemon ran out of space
	ClassVerify      ErrorClass = "verify"       // the pull finished but the digest check failed
	ClassCanceled    ErrorClass = "canceled"     // the agent stopped the pull
	ClassUnknown     ErrorClass = "unknown"
)

// pullError is a failed pull.
type pullError struct {
	Class ErrorClass
	Err   error
}

func (e *pullError) Error() string { return e.Err.Error() }
func (e *pullError) Unwrap() error { return e.Err }

// ClassOf returns the class of a pull error, ClassUnknown for other errors.
func ClassOf(err error) ErrorClass {
	var pe *pullError
	if errors.As(err, &pe) {
		return pe.Class
	}
	return ClassUnknown
}

// classify sorts an error the daemon returned. The daemon reports registry
// failures as text (often behind HTTP 500), so the text decides.
func classify(err error) ErrorClass {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return ClassCanceled
	}
	if errors.Is(err, engine.ErrDaemonUnreachable) {
		return ClassDaemon
	}
	s := strings.ToLower(err.Error())
	has := func(subs ...string) bool {
		for _, sub := range subs {
			if strings.Contains(s, sub) {
				return true
			}
		}
		return false
	}
	switch {
	case has("grpc: the client connection is closing", "error creating temporary lease"):
		// The daemon is shutting down (its containerd connection is
		// going): wait for it as for a daemon that does not answer.
		return ClassDaemon
	case has("toomanyrequests", "too many requests", "rate limit"):
		return ClassRateLimited
	case has("unauthorized", "authentication required", "no basic auth credentials", "access denied", "denied:", "access to the resource is denied", "incorrect username or password"),
		// The containerd image store asks with HEAD and reports a refusal
		// by its status line alone (a HEAD answer has no body to quote).
		has("403 forbidden"):
		return ClassAuth
	case has("manifest unknown", "not found", "name unknown", "repository does not exist", "no such image"):
		return ClassNotFound
	case has("no space left on device"):
		return ClassDisk
	case has("connection refused", "no such host", "i/o timeout", "connection reset", "tls handshake", "network is unreachable", "dial tcp", "unexpected eof", "server misbehaving", "broken pipe") ||
		strings.HasSuffix(s, ": eof"): // the registry closed the connection without an answer
		return ClassNetwork
	case has("blob unknown", "500 internal server error", "502 bad gateway", "503 service unavailable", "504 gateway timeout", "unknown blob", "filesystem layer verification failed"):
		return ClassServer
	}
	var se *engine.StreamError
	if errors.As(err, &se) {
		return ClassServer
	}
	return ClassUnknown
}

// PullTimeouts bound one pull. A zero field means no limit of that kind.
type PullTimeouts struct {
	// Begin is how long the daemon may take to send the first message of
	// the pull stream (it resolves the manifest first).
	Begin time.Duration
	// Stall is how long a pull may go without a new downloaded byte while
	// it is resolving or downloading.
	Stall time.Duration
	// Extract is how long the extraction phase, which reports no download
	// bytes, may go without any message from the daemon.
	Extract time.Duration
	// Overall is the deadline of the whole pull.
	Overall time.Duration
}

// DefaultPullTimeouts suit multi-gigabyte images on a slow link: a stall is
// two minutes without a byte, not a slow download.
func DefaultPullTimeouts() PullTimeouts {
	return PullTimeouts{Begin: 2 * time.Minute, Stall: 2 * time.Minute, Extract: 15 * time.Minute, Overall: 2 * time.Hour}
}

// stallError is why a pull was stopped by its timeouts.
type stallError struct {
	What string
}

func (e *stallError) Error() string { return "pull stalled: " + e.What }

// PullerOptions configures a Puller.
type PullerOptions struct {
	// Timeouts bound each pull; the zero value means none.
	Timeouts PullTimeouts
	// Concurrency is how many pulls run at once; 0 means DefaultConcurrency.
	Concurrency int
	// Platform is passed to every pull.
	Platform string
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// DiskGuard refuses pulls that would not fit on the daemon's data
	// root, keeping DiskMargin bytes free beyond the compressed size.
	DiskGuard  bool
	DiskMargin int64
}

// OptionsFor are the options of a Puller for cfg (its platform and disk
// guard), with the concurrency and timeouts the caller chose.
func OptionsFor(cfg config.Config, concurrency int, timeouts PullTimeouts) PullerOptions {
	return PullerOptions{Concurrency: concurrency, Timeouts: timeouts, Platform: cfg.Platform,
		DiskGuard: cfg.DiskMarginBytes >= 0, DiskMargin: max(cfg.DiskMarginBytes, 0)}
}

// Puller pulls images into the Docker daemon, verifies them and reports.
type Puller struct {
	engine engine.Engine
	auth   Authorizer
	log    *slog.Logger
	opts   PullerOptions
	disk   *diskGuard
}

// NewPuller returns a Puller.
func NewPuller(e engine.Engine, authz Authorizer, logger *slog.Logger, opts PullerOptions) (*Puller, error) {
	if e == nil || authz == nil || logger == nil {
		return nil, errors.New("NewPuller: engine, authorizer and logger are required")
	}
	if opts.Concurrency < 0 {
		return nil, fmt.Errorf("concurrency %d: must be 1 or more", opts.Concurrency)
	}
	if opts.Concurrency == 0 {
		opts.Concurrency = DefaultConcurrency
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	p := &Puller{engine: e, auth: authz, log: logger.With("component", "puller"), opts: opts}
	if opts.DiskGuard {
		p.disk = &diskGuard{margin: opts.DiskMargin, platform: config.PlatformOrDefault(opts.Platform)}
	}
	return p, nil
}

// Pull pulls one image, decodes the daemon's stream and verifies that the
// daemon holds the digest the registry served.
func (p *Puller) Pull(ctx context.Context, img config.Image, obs Observer) PullResult {
	if obs == nil {
		obs = NopObserver{}
	}
	res := PullResult{Image: img, Started: p.opts.Now()}
	var helperFailure string // a credential helper the selection went on without
	finish := func(err error) PullResult {
		res.Duration = p.opts.Now().Sub(res.Started)
		if err != nil {
			var pe *pullError
			if !errors.As(err, &pe) {
				err = &pullError{Class: classify(err), Err: err}
			}
			if helperFailure != "" && ClassOf(err) == ClassAuth {
				err = &pullError{Class: ClassAuth, Err: fmt.Errorf("%w (%s)", err, helperFailure)}
			}
			res.Err = err
		}
		obs.PullFinished(res)
		return res
	}

	sel, err := p.auth.Select(ctx, img.Host())
	res.Source, res.CredentialsExpire, helperFailure = sel.Source, sel.Expires, sel.HelperFailure
	if err != nil {
		return finish(&pullError{Class: ClassAuth, Err: fmt.Errorf("choosing credentials for %s: %w", img.Host(), err)})
	}
	if p.disk != nil {
		// Only for an image the daemon does not hold: a refresh of a
		// warm image must cost the registry no more than a HEAD.
		if _, err := p.engine.ImageInspect(ctx, img.Ref); errors.Is(err, engine.ErrImageNotFound) {
			note, err := p.disk.check(ctx, p.engine, img, sel.Credentials)
			if err != nil {
				return finish(err)
			}
			if note != "" {
				p.log.Debug(note, "image", img.Ref)
			}
		}
	}
	obs.PullStarted(img, sel.Source)

	pctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	if d := p.opts.Timeouts.Overall; d > 0 {
		var cancelT context.CancelFunc
		pctx, cancelT = context.WithTimeoutCause(pctx, d, &stallError{What: fmt.Sprintf("not finished within the %s deadline", d)})
		defer cancelT()
	}
	mon := newPullMonitor(p.opts.Now, p.opts.Timeouts)
	stopMon := mon.watch(pctx, cancel)
	defer stopMon()

	rc, err := p.engine.ImagePull(pctx, img.Ref, engine.PullOptions{Platform: p.opts.Platform, Credentials: sel.Credentials})
	if err != nil {
		return finish(p.stopped(ctx, pctx, fmt.Errorf("pulling %s: %w", img.Ref, err)))
	}
	sr, err := engine.DecodeStream(rc, func(pr engine.Progress) {
		mon.message(pr)
		obs.PullProgress(img, pr)
	})
	rc.Close()
	res.Bytes = sr.Progress.Current
	if err != nil {
		return finish(p.stopped(ctx, pctx, fmt.Errorf("pulling %s: %w", img.Ref, err)))
	}
	stopMon()
	res.UpToDate = strings.HasPrefix(sr.Status, "Image is up to date")

	pr := sr.Progress
	pr.Phase = engine.PhaseVerifying
	obs.PullProgress(img, pr)
	info, dg, err := p.verify(ctx, img, sr.Digest)
	if err != nil {
		return finish(err)
	}
	res.Digest, res.ImageID, res.Size = dg, info.ID, info.Size
	return finish(nil)
}

// Remote asks the registry, through the daemon and with the same
// credentials as a pull, which manifest img names now.
func (p *Puller) Remote(ctx context.Context, img config.Image) (engine.RemoteInfo, error) {
	sel, err := p.auth.Select(ctx, img.Host())
	if err != nil {
		return engine.RemoteInfo{}, &pullError{Class: ClassAuth, Err: fmt.Errorf("choosing credentials for %s: %w", img.Host(), err)}
	}
	ri, err := p.engine.DistributionInspect(ctx, img.Ref, sel.Credentials)
	if err != nil {
		return engine.RemoteInfo{}, &pullError{Class: classify(err), Err: fmt.Errorf("asking the registry about %s: %w", img.Ref, err)}
	}
	return ri, nil
}

// stopped turns an error seen after pctx was cancelled into the reason it
// was cancelled: a stall (a timeout of this pull) or the caller's
// cancellation.
func (p *Puller) stopped(ctx, pctx context.Context, err error) error {
	if ctx.Err() != nil {
		return &pullError{Class: ClassCanceled, Err: fmt.Errorf("%w: %v", context.Cause(ctx), err)}
	}
	var se *stallError
	if cause := context.Cause(pctx); errors.As(cause, &se) {
		return &pullError{Class: ClassStalled, Err: fmt.Errorf("%w (%v)", se, err)}
	}
	return err
}

// verify checks that the daemon holds img with the digest the registry
// served (for a pin, the pinned digest).
func (p *Puller) verify(ctx context.Context, img config.Image, served digest.Digest) (engine.ImageInfo, digest.Digest, error) {
	verr := func(format string, args ...any) error {
		return &pullError{Class: ClassVerify, Err: fmt.Errorf("verifying %s: "+format, append([]any{img.Ref}, args...)...)}
	}
	want := served
	if img.Pin != "" {
		if served != "" && served != img.Pin {
			return engine.ImageInfo{}, "", verr("the daemon reported digest %s, not the pinned %s", served, img.Pin)
		}
		want = img.Pin
	}
	if want == "" {
		return engine.ImageInfo{}, "", verr("the daemon did not report the manifest digest it pulled")
	}
	info, err := p.engine.ImageInspect(ctx, img.Ref)
	if err != nil {
		if errors.Is(err, engine.ErrImageNotFound) {
			return engine.ImageInfo{}, "", verr("the pull reported success but the image is not in the daemon")
		}
		return engine.ImageInfo{}, "", fmt.Errorf("verifying %s: %w", img.Ref, err)
	}
	if !HasRepoDigest(info.RepoDigests, img.Repository(), want) {
		return engine.ImageInfo{}, "", verr("the daemon's image %s has repo digests %v, none is %s@%s", info.ID, info.RepoDigests, img.Repository(), want)
	}
	return info, want, nil
}

// HasRepoDigest reports whether one of repoDigests names repo@want.
func HasRepoDigest(repoDigests []string, repo string, want digest.Digest) bool {
	for _, rd := range repoDigests {
		n, err := reference.ParseNormalizedNamed(rd)
		if err != nil {
			continue
		}
		c, ok := n.(reference.Canonical)
		if ok && n.Name() == repo && c.Digest() == want {
			return true
		}
	}
	return false
}

// Content reads from the registry, with the same credentials as a pull,
// the manifest dg of img's repository and, for an index, the manifest of
// platform in it; configPlatform also reads a single manifest's platform
// from its config.
func (p *Puller) Content(ctx context.Context, img config.Image, dg digest.Digest, platform string, configPlatform bool) (Content, error) {
	sel, err := p.auth.Select(ctx, img.Host())
	if err != nil {
		return Content{}, fmt.Errorf("choosing credentials for %s: %w", img.Host(), err)
	}
	c, err := readContent(ctx, img, sel.Credentials, dg, platform, configPlatform)
	if err != nil {
		return c, fmt.Errorf("reading the manifests of %s: %w", img.Ref, err)
	}
	return c, nil
}
