package main

import (
	"bufio"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"
)

// transfer is one blob GET the registry served: its request log's
// "response completed" line carries the end time, the duration and the
// bytes written.
type transfer struct {
	Digest     string
	Start, End time.Time
	Bytes      int64
}

var (
	blobGet  = regexp.MustCompile(`^time="([^"]+)".*msg="response completed".*http\.request\.method=GET .*http\.request\.uri="?/v2/[^" ]+/blobs/(sha256:[0-9a-f]{64})`)
	written  = regexp.MustCompile(`http\.response\.written=(\d+)`)
	duration = regexp.MustCompile(`http\.response\.duration="?([0-9.]+[a-zµ]+)`)
)

// blobTransfers reads the blob GETs that ended in [from, to] from the
// registry's log.
func blobTransfers(logPath string, from, to time.Time) ([]transfer, error) {
	f, err := os.Open(logPath)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []transfer
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		m := blobGet.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		end, err := time.Parse(time.RFC3339Nano, m[1])
		if err != nil || end.Before(from) || end.After(to) {
			continue
		}
		w, d := written.FindStringSubmatch(line), duration.FindStringSubmatch(line)
		if w == nil || d == nil {
			continue
		}
		n, _ := strconv.ParseInt(w[1], 10, 64)
		dur, err := time.ParseDuration(strings.ReplaceAll(d[1], "µ", "u"))
		if err != nil {
			continue
		}
		out = append(out, transfer{Digest: m[2], Start: end.Add(-dur), End: end, Bytes: n})
	}
	return out, sc.Err()
}

// linkUse is where the time of a warm-up went, from its blob transfers.
type linkUse struct {
	// IdleShare is the part of [start, end] with no blob in flight.
	IdleShare float64 `json:"idle_share"`
	// FirstBlob is the time from start to the first blob's first byte;
	// Tail from the last blob's end to end (extraction, tagging).
	FirstBlob float64 `json:"first_blob_s"`
	Tail      float64 `json:"tail_s"`
	// Bytes is every blob byte served.
	Bytes int64 `json:"blob_bytes"`
	// MaxLayers is the most layer blobs (over 64 KiB) in flight at once,
	// across all pulls.
	MaxLayers int `json:"max_layers_in_flight"`
}

// useOf measures the link's use over [start, end] by ts.
func useOf(ts []transfer, start, end time.Time) linkUse {
	span := end.Sub(start)
	if len(ts) == 0 || span <= 0 {
		return linkUse{IdleShare: 1}
	}
	s := slices.Clone(ts)
	slices.SortFunc(s, func(a, b transfer) int { return a.Start.Compare(b.Start) })
	var busy time.Duration
	var u linkUse
	curS, curE := s[0].Start, s[0].End
	last := s[0].End
	for _, t := range s {
		u.Bytes += t.Bytes
		last = later(last, t.End)
		if t.Start.After(curE) {
			busy += clip(curS, curE, start, end)
			curS, curE = t.Start, t.End
			continue
		}
		curE = later(curE, t.End)
	}
	busy += clip(curS, curE, start, end)
	u.IdleShare = 1 - busy.Seconds()/span.Seconds()
	u.FirstBlob = s[0].Start.Sub(start).Seconds()
	u.Tail = end.Sub(last).Seconds()
	u.MaxLayers = maxInFlight(s)
	return u
}

// maxInFlight is the most transfers of over 64 KiB (layers, not configs)
// in flight at once; one that ends as another starts does not overlap it.
func maxInFlight(ts []transfer) int {
	type edge struct {
		at time.Time
		d  int
	}
	var es []edge
	for _, t := range ts {
		if t.Bytes > 64<<10 {
			es = append(es, edge{t.Start, 1}, edge{t.End, -1})
		}
	}
	slices.SortFunc(es, func(a, b edge) int {
		if c := a.at.Compare(b.at); c != 0 {
			return c
		}
		return a.d - b.d
	})
	n, most := 0, 0
	for _, e := range es {
		n += e.d
		most = max(most, n)
	}
	return most
}

func later(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}

// clip is the length of [s, e] within [lo, hi].
func clip(s, e, lo, hi time.Time) time.Duration {
	if s.Before(lo) {
		s = lo
	}
	if e.After(hi) {
		e = hi
	}
	return max(0, e.Sub(s))
}

// series is each image's bytes received over time (seconds from start),
// every blob's bytes spread evenly between its start and end; a blob
// shared by several images counts for the first in order that has it.
func series(ts []transfer, start time.Time, order []string, lay Layout, step time.Duration, until time.Duration) map[string][]float64 {
	owner := map[string]string{}
	for i := len(order) - 1; i >= 0; i-- {
		for _, b := range lay.Images[order[i]].all() {
			owner[b.Digest] = order[i]
		}
	}
	n := int(until/step) + 1
	out := map[string][]float64{}
	for _, rt := range order {
		out[rt] = make([]float64, n)
	}
	for _, t := range ts {
		rt, ok := owner[t.Digest]
		if !ok {
			continue
		}
		s, e := t.Start.Sub(start).Seconds(), t.End.Sub(start).Seconds()
		for k := range n {
			x := float64(k) * step.Seconds()
			switch {
			case x >= e:
				out[rt][k] += float64(t.Bytes)
			case x > s && e > s:
				out[rt][k] += float64(t.Bytes) * (x - s) / (e - s)
			}
		}
	}
	return out
}
