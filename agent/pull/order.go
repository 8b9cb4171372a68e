package pull

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
)

// The order of pulls. Images are listed in priority order (the order of
// MOLECULE_RUNTIMES), and the image a host needs first should be usable
// first while the link stays busy. The classic image store downloads at
// most max-concurrent-downloads layers (3) at a time for the whole daemon
// and hands a freed slot to the layer that has waited longest. So pulls
// started together race each other to that queue, and whichever manifest
// comes back first gets the link. Started one after another, each once
// the one before has queued its layers (the daemon has named one),
// they queue in priority order: the daemon downloads the first image's
// layers first, the next image's as soon as slots free up, and the link
// never waits for a manifest.

// QueueLead is how long the next pull waits for the one before it to queue
// its layers. A pull still resolving after that (a slow token server, a
// registry that does not answer) no longer holds the others back.
const QueueLead = 2 * time.Second

// Queued reports whether a pull has queued its layers in the daemon: the
// daemon has named at least one of them (to download, or already present).
func Queued(p engine.Progress) bool { return p.Layers > 0 }

// PullAll pulls every image, at most Concurrency at once, and returns the
// results in the order of images. Images the daemon does not hold start
// one after another in the order given, each once the one before has
// queued its layers or QueueLead has passed. One failure never stops the
// others.
func (p *Puller) PullAll(ctx context.Context, images []config.Image, obs Observer) []PullResult {
	if obs == nil {
		obs = NopObserver{}
	}
	results := make([]PullResult, len(images))
	// Images the daemon already holds are refreshes: a manifest HEAD each
	// unless the tag moved, bound by round trips rather than bandwidth, so
	// they get a wider pool of their own and start together.
	var fresh, held []int
	for i, img := range images {
		if _, err := p.engine.ImageInspect(ctx, img.Ref); err == nil {
			held = append(held, i)
		} else {
			fresh = append(fresh, i)
		}
	}
	var wg sync.WaitGroup
	for _, q := range []struct {
		idx     []int
		limit   int
		stagger bool
	}{{fresh, p.opts.Concurrency, true}, {held, p.opts.Concurrency * RefreshConcurrencyFactor, false}} {
		wg.Go(func() { p.pullQueue(ctx, images, q.idx, q.limit, q.stagger, obs, results) })
	}
	wg.Wait()
	return results
}

// pullQueue pulls images[i] for each i of idx, at most limit at once, in
// that order; stagger starts each once the one before has queued its
// layers. Once ctx is done, those not started are not pulled.
func (p *Puller) pullQueue(ctx context.Context, images []config.Image, idx []int, limit int, stagger bool, obs Observer, results []PullResult) {
	sem := make(chan struct{}, limit)
	var wg sync.WaitGroup
	var prev *startGate
	for _, i := range idx {
		gate := newStartGate(!stagger)
		select {
		case sem <- struct{}{}:
		case <-ctx.Done():
		}
		if prev != nil {
			select {
			case <-prev.open:
			case <-ctx.Done():
			}
		}
		if ctx.Err() != nil {
			results[i] = PullResult{Image: images[i], Started: p.opts.Now(), Err: &pullError{Class: ClassCanceled, Err: fmt.Errorf("pull of %s not started: %w", images[i].Ref, ctx.Err())}}
			obs.PullFinished(results[i])
			gate.release()
			prev = gate
			continue
		}
		stop := time.AfterFunc(QueueLead, gate.release)
		wg.Go(func() {
			defer func() { <-sem }()
			results[i] = p.Pull(ctx, images[i], gatedObserver{Observer: obs, gate: gate})
			stop.Stop()
			gate.release() // a pull that ended without naming a layer
		})
		prev = gate
	}
	wg.Wait()
}

// startGate opens once its pull has queued its layers, ended, or waited
// QueueLead: the next pull may start.
type startGate struct {
	open chan struct{}
	once sync.Once
}

func newStartGate(open bool) *startGate {
	g := &startGate{open: make(chan struct{})}
	if open {
		g.release()
	}
	return g
}

func (g *startGate) release() { g.once.Do(func() { close(g.open) }) }

// gatedObserver opens its pull's gate at the pull's first layer.
type gatedObserver struct {
	Observer
	gate *startGate
}

// PullProgress implements Observer.
func (o gatedObserver) PullProgress(img config.Image, pr engine.Progress) {
	if Queued(pr) {
		o.gate.release()
	}
	o.Observer.PullProgress(img, pr)
}
