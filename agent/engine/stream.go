package engine

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/opencontainers/go-digest"
)

// Phase is where a pull is.
type Phase string

// The phases of a pull, in order.
const (
	PhaseResolving   Phase = "resolving"
	PhaseDownloading Phase = "downloading"
	PhaseExtracting  Phase = "extracting"
	PhaseVerifying   Phase = "verifying"
	PhaseDone        Phase = "done"
	PhaseFailed      Phase = "failed"
)

// Progress is a snapshot of one pull.
type Progress struct {
	Phase Phase
	// Current and Total are compressed bytes downloaded so far and to
	// download, as far as the daemon has said. Layers the daemon already
	// has count in neither. The containerd image store polls its downloads
	// (every 100 ms on Docker 26) and reports a layer that finished between
	// two polls as complete without any size: such layers count in
	// LayersDone but add nothing here.
	Current, Total int64
	// Layers is the number of layers seen, LayersDone those complete
	// (downloaded and extracted, or already present).
	Layers, LayersDone int
}

// streamMessage is one JSON message of the Engine API's pull stream.
type streamMessage struct {
	ID             string `json:"id"`
	Status         string `json:"status"`
	ProgressDetail struct {
		Current int64 `json:"current"`
		Total   int64 `json:"total"`
		// HideCounts marks the containerd image store's messages
		// without sizes.
		HideCounts bool `json:"hidecounts"`
	} `json:"progressDetail"`
	Error       string `json:"error"`
	ErrorDetail *struct {
		Code    int    `json:"code"`
		Message string `json:"message"`
	} `json:"errorDetail"`
}

type layerState struct {
	current, total int64
	downloaded     bool
	done           bool
	skipped        bool // already present
}

// StreamError is a failure the daemon reported inside the pull stream after
// the API call itself succeeded.
type StreamError struct {
	Message string
}

func (e *StreamError) Error() string { return e.Message }

func (l *layerState) apply(m streamMessage) {
	switch m.Status {
	case "Downloading":
		l.current, l.total = m.ProgressDetail.Current, m.ProgressDetail.Total
	case "Verifying Checksum", "Download complete":
		l.downloaded = true
		if l.total > 0 {
			l.current = l.total
		}
		// The containerd image store says nothing more of a layer
		// (no "Extracting", no "Pull complete"): it unpacks the image
		// once every layer is in.
		if m.ProgressDetail.HideCounts {
			l.done = true
		}
	case "Extracting":
		l.downloaded = true
		if l.total == 0 {
			l.total = m.ProgressDetail.Total
		}
		l.current = l.total
	case "Pull complete":
		l.downloaded, l.done = true, true
		l.current = l.total
	case "Already exists":
		l.downloaded, l.done, l.skipped = true, true, true
	}
}

// StreamResult is what DecodeStream learned.
type StreamResult struct {
	Digest   digest.Digest // manifest digest the daemon reported
	Status   string        // the final "Status: …" line
	Progress Progress
}

// DecodeStream reads the pull stream to its end, calling onProgress after
// each message (whether or not it changed the progress). It returns a *StreamError for an error
// message in the stream, and an error for a stream that is not JSON or ends
// early.
func DecodeStream(r io.Reader, onProgress func(Progress)) (StreamResult, error) {
	var res StreamResult
	layers := map[string]*layerState{}
	var order []string
	dec := json.NewDecoder(r)
	for {
		var m streamMessage
		if err := dec.Decode(&m); err != nil {
			if errors.Is(err, io.EOF) {
				break
			}
			return res, fmt.Errorf("reading the daemon's pull stream: %w", err)
		}
		if m.Error != "" || m.ErrorDetail != nil {
			msg := m.Error
			if msg == "" {
				msg = m.ErrorDetail.Message
			}
			return res, &StreamError{Message: msg}
		}
		switch {
		case strings.HasPrefix(m.Status, "Digest: "):
			if d, err := digest.Parse(strings.TrimSpace(strings.TrimPrefix(m.Status, "Digest: "))); err == nil {
				res.Digest = d
			}
		case strings.HasPrefix(m.Status, "Status: "):
			res.Status = strings.TrimPrefix(m.Status, "Status: ")
		case m.ID == "" || strings.HasPrefix(m.Status, "Pulling from "):
		default:
			l, ok := layers[m.ID]
			if !ok {
				l = &layerState{}
				layers[m.ID] = l
				order = append(order, m.ID)
			}
			l.apply(m)
			res.Progress = summarize(layers, order)
		}
		if onProgress != nil {
			onProgress(res.Progress)
		}
	}
	if res.Status == "" && res.Digest == "" {
		return res, errors.New("the daemon's pull stream ended without a final status; the pull did not complete")
	}
	return res, nil
}

func summarize(layers map[string]*layerState, order []string) Progress {
	p := Progress{Layers: len(order), Phase: PhaseResolving}
	allDownloaded := len(order) > 0
	for _, id := range order {
		l := layers[id]
		if l.skipped {
			p.LayersDone++
			continue
		}
		p.Current += l.current
		p.Total += l.total
		if l.done {
			p.LayersDone++
		}
		if !l.downloaded {
			allDownloaded = false
		}
	}
	switch {
	case len(order) == 0:
	case allDownloaded:
		p.Phase = PhaseExtracting
	default:
		p.Phase = PhaseDownloading
	}
	return p
}
