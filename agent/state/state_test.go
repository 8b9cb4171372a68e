package state

import (
	"strings"
	"testing"
)

// FuzzDecodeState: a saved state file of any content is decoded or refused
// with a message naming it; never a panic.
func FuzzDecodeState(f *testing.F) {
	for _, s := range []string{`{"schema_version":1}`, `{"schema_version":99}`, `{"hello":1}`, `{"schema_version":1,"images":[{"runtime":"codex"}]}`, "\x00"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		doc, err := DecodeState("state.json", strings.NewReader(string(data)))
		if err != nil {
			if !strings.Contains(err.Error(), "state.json") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		if doc.SchemaVersion > SchemaVersion {
			t.Fatalf("accepted schema %d", doc.SchemaVersion)
		}
		_ = doc.Healthy()
	})
}
