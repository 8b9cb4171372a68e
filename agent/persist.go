package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"time"

	"github.com/molecule-ai/pull-agent/agent/engine"
	"github.com/molecule-ai/pull-agent/agent/state"
)

// maybePrune starts removing the previous prefix's images once every
// current image is warm, if configured. The removal runs until done or
// until ctx (Run's) is done, and reports on pruned.
func (l *loop) maybePrune(ctx context.Context) {
	if l.cfg == nil || !l.cfg.PrunePrevious || len(l.previous) == 0 || l.pruning {
		return
	}
	current := map[string]bool{}
	for _, img := range l.images {
		st := l.states[img.Ref]
		if st == nil || st.State != state.Warm {
			return
		}
		current[img.Ref] = true
		if st.Alias != "" {
			current[st.Alias] = true
		}
	}
	var candidates []string
	for _, ref := range l.previous {
		if current[ref] {
			continue // back in use, or an alias target
		}
		if _, mine := l.pulled[ref]; !mine {
			l.log.Info("not pruning an image the agent did not pull", "image", ref)
			continue
		}
		candidates = append(candidates, ref)
	}
	l.previous = nil
	if len(candidates) == 0 {
		return
	}
	l.pruning = true
	e, log := l.engine, l.log
	l.wg.Go(func() {
		removed := prune(ctx, e, candidates, log)
		select {
		case l.pruned <- removed:
		case <-ctx.Done():
		}
	})
}

// prunedRefs forgets the images a prune removed.
func (l *loop) prunedRefs(refs []string) {
	for _, r := range refs {
		delete(l.pulled, r)
	}
	l.pulledDirty = l.pulledDirty || len(refs) > 0
	l.pruning = false
}

// prune removes refs no container uses and returns the ones removed.
func prune(ctx context.Context, e engine.Engine, refs []string, log *slog.Logger) []string {
	inUse, err := e.ContainerImageIDs(ctx)
	if err != nil {
		log.Warn("not pruning: cannot list containers", "error", errText(err))
		return nil
	}
	var removed []string
	var freed int64
	for _, ref := range refs {
		info, err := e.ImageInspect(ctx, ref)
		if err != nil {
			continue
		}
		if inUse[info.ID] {
			log.Info("not pruning an image a container uses", "image", ref, "image_id", info.ID)
			continue
		}
		res, err := e.ImageRemove(ctx, ref)
		if err != nil {
			log.Warn("pruning failed", "image", ref, "error", errText(err))
			continue
		}
		removed = append(removed, ref)
		for _, d := range res.Deleted {
			if d == info.ID {
				freed += info.Size
			}
		}
	}
	log.Info("previous prefix pruned", "images_removed", len(removed), "bytes_freed", freed)
	return removed
}

// pulledRecord is the file format of PulledFile.
type pulledRecord struct {
	Pulled map[string]string `json:"pulled"`
	// Fallback are the primary names given to images from a fallback.
	Fallback map[string]fallbackTag `json:"fallback,omitempty"`
}

func (l *loop) loadPulled() {
	if l.opts.PulledFile == "" {
		return
	}
	data, err := os.ReadFile(l.opts.PulledFile)
	if err != nil {
		return
	}
	var rec pulledRecord
	if err := json.Unmarshal(data, &rec); err != nil {
		l.log.Warn("ignoring an unreadable record of pulled images", "file", l.opts.PulledFile, "error", errText(err))
		return
	}
	for k, v := range rec.Pulled {
		l.pulled[k] = v
	}
	for k, v := range rec.Fallback {
		l.fallbackTags[k] = v
	}
}

// savePulled writes the record of pulled images when it changed.
func (l *loop) savePulled() {
	if !l.pulledDirty {
		return
	}
	l.pulledDirty = false
	if l.opts.PulledFile == "" {
		return
	}
	data, _ := json.MarshalIndent(pulledRecord{l.pulled, l.fallbackTags}, "", "  ")
	if err := state.WriteFileAtomic(l.opts.PulledFile, append(data, '\n'), 0o644); err != nil {
		l.log.Warn("recording pulled images failed", "file", l.opts.PulledFile, "error", errText(err))
	}
}

// saveState writes the state document when it changed (progress aside).
func (l *loop) saveState() {
	doc := l.a.view.Load().document(l.a, l.clock.Now())
	l.a.metrics.setState(doc)
	if l.opts.StateFile == "" {
		return
	}
	key := doc
	key.WrittenAt = time.Time{}
	key.Images = append([]state.ImageDoc(nil), doc.Images...)
	for i := range key.Images {
		key.Images[i].Progress = nil
	}
	b, _ := json.Marshal(key)
	if bytes.Equal(b, l.lastSaved) {
		return
	}
	if err := state.WriteStateFile(l.opts.StateFile, doc); err != nil {
		// Said once, not at every change; retried until it works.
		if l.saveRetry.IsZero() {
			l.log.Warn("saving state failed; the live status is unaffected; retrying every few seconds", "state_file", l.opts.StateFile, "error", errText(err))
		}
		l.saveRetry = l.clock.Now().Add(stateSaveRetry)
		return
	}
	if !l.saveRetry.IsZero() {
		l.log.Info("saving state works again", "state_file", l.opts.StateFile)
		l.saveRetry = time.Time{}
	}
	l.lastSaved = b
}

// stateSaveRetry is how soon a failed state save is tried again.
const stateSaveRetry = 5 * time.Second
