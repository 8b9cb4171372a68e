package pull

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"github.com/molecule-ai/pull-agent/agent/config"
	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/engine/enginetest"
	"github.com/molecule-ai/pull-agent/auth"
)

func TestPullConcurrencyIsBoundedAndFailuresIsolated(t *testing.T) {
	for _, n := range []int{1, 3, 5} {
		// In a bubble: a pull that names no layer holds the next one back
		// for QueueLead, which passes in virtual time.
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			synctest.Test(t, func(t *testing.T) {
				var inFlight, peak atomic.Int32
				release := make(chan struct{})
				e := goodEngine()
				var mu sync.Mutex
				var order []string
				// The daemon holds nothing until it is pulled: every pull is a download.
				pulled := map[string]bool{}
				good := e.inspect
				e.inspect = func(ctx context.Context, ref string) (engine.ImageInfo, error) {
					mu.Lock()
					ok := pulled[ref]
					mu.Unlock()
					if !ok {
						return engine.ImageInfo{}, engine.ErrImageNotFound
					}
					return good(ctx, ref)
				}
				e.pull = func(ctx context.Context, ref string, _ engine.PullOptions) (io.ReadCloser, error) {
					defer enter(&inFlight, &peak)()
					mu.Lock()
					order = append(order, ref)
					pulled[ref] = true
					mu.Unlock()
					<-release
					if strings.Contains(ref, "crewai") {
						return nil, errors.New("Error response from daemon: manifest unknown")
					}
					return enginetest.OKStream(enginetest.DigestOf(ref)), nil
				}
				imgs := testImages(t, "ghcr.io/molecule-ai")
				done := make(chan []PullResult)
				go func() {
					done <- newTestPuller(t, e, auth.Options{}, PullerOptions{Concurrency: n}).PullAll(context.Background(), imgs, nil)
				}()
				// Let the pullers fill up (each starts QueueLead after the one
				// before it: these name no layer) before releasing them.
				time.Sleep(time.Duration(n) * QueueLead)
				synctest.Wait()
				if got := inFlight.Load(); got != int32(n) {
					t.Fatalf("%d pulls in flight, want %d", got, n)
				}
				close(release)
				res := <-done
				if got := peak.Load(); got != int32(n) {
					t.Errorf("peak concurrency %d, want %d", got, n)
				}
				if n == 1 {
					for i, ref := range order {
						if ref != imgs[i].Ref {
							t.Fatalf("with one worker, pull %d was %s, want %s", i, ref, imgs[i].Ref)
						}
					}
				}
				for _, r := range res {
					if (r.Err != nil) != (r.Image.Runtime == "crewai") {
						t.Errorf("%s: err %v", r.Image.Runtime, r.Err)
					}
				}
			})
		})
	}
}

// Images the daemon does not hold start in the order given, each once the
// one before has named a layer (or after QueueLead); images it holds
// (refreshes) start together.
func TestPullAllStartsDownloadsInOrderAndRefreshesTogether(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		order := []string{"hermes", "codex", "autogen", "crewai", "openclaw"}
		imgs := testImages(t, "ghcr.io/molecule-ai", order...)
		held := map[string]bool{imgs[3].Ref: true, imgs[4].Ref: true} // crewai, openclaw
		resolve := map[string]time.Duration{"hermes": 300 * time.Millisecond, "codex": time.Hour, "autogen": 300 * time.Millisecond}
		var mu sync.Mutex
		started := map[string]time.Duration{}
		t0 := time.Now()
		e := goodEngine()
		good := e.inspect
		e.inspect = func(ctx context.Context, ref string) (engine.ImageInfo, error) {
			mu.Lock()
			ok := held[ref]
			mu.Unlock()
			if !ok {
				return engine.ImageInfo{}, engine.ErrImageNotFound
			}
			return good(ctx, ref)
		}
		e.pull = func(ctx context.Context, ref string, _ engine.PullOptions) (io.ReadCloser, error) {
			mu.Lock()
			started[ref] = time.Since(t0)
			held[ref] = true // once the stream ends, as far as the verification looks
			mu.Unlock()
			r := resolve[imgs[indexOf(imgs, ref)].Runtime]
			return enginetest.PhasedStream(ctx, enginetest.DigestOf(ref), r, 10*time.Second), nil
		}
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		res := newTestPuller(t, e, auth.Options{}, PullerOptions{Concurrency: 3}).PullAll(ctx, imgs, nil)
		// codex never names a layer: autogen starts QueueLead after it.
		want := map[string]time.Duration{"hermes": 0, "codex": 300 * time.Millisecond, "autogen": 300*time.Millisecond + QueueLead, "crewai": 0, "openclaw": 0}
		for i, img := range imgs {
			if got := started[img.Ref]; got != want[img.Runtime] {
				t.Errorf("%s started at %s, want %s", img.Runtime, got, want[img.Runtime])
			}
			if (res[i].Err != nil) != (img.Runtime == "codex") {
				t.Errorf("%s: %v", img.Runtime, res[i].Err)
			}
		}
	})
}

func indexOf(imgs []config.Image, ref string) int {
	for i, img := range imgs {
		if img.Ref == ref {
			return i
		}
	}
	return -1
}
