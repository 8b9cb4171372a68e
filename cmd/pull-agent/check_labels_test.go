package main

import (
	"testing"

	"github.com/molecule-ai/pull-agent/agent/pull"
)

// The labels are check's output format (table and --json): they must not
// change with the enum behind them.
func TestParityLabels(t *testing.T) {
	for p, want := range map[pull.Parity]string{
		pull.ParitySame: "same", pull.ParityDiffers: "differs", pull.ParityMissingP: "missing in P",
		pull.ParityMissingQ: "missing in Q", pull.ParityMissingB: "missing in both", pull.ParityUnknown: "unknown", 0: "-",
	} {
		if got := parityLabel(p); got != want {
			t.Errorf("parityLabel(%d) = %q, want %q", p, got, want)
		}
	}
	if got := parityLabels(map[string]pull.Comparison{"codex": {Parity: pull.ParityDiffers}}); got["codex"] != "differs" || len(got) != 1 {
		t.Errorf("parityLabels = %v", got)
	}
	if parityLabels(nil) != nil {
		t.Error("parityLabels(nil) is not nil: --json would print an empty parity")
	}
}
