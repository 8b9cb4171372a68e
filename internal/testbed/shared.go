package testbed

import (
	"context"
	"os"
	"sync"
	"testing"
)

// Shared is one bed for all the tests of a package: started on first use,
// stopped by Main after the tests ran. Declare it next to TestMain:
//
//	var bed testbed.Shared
//	func TestMain(m *testing.M) { os.Exit(bed.Main(m)) }
type Shared struct {
	once sync.Once
	bed  *Bed
	err  error
}

// Main runs the tests and stops the bed if one was started.
func (s *Shared) Main(m *testing.M) int {
	code := m.Run()
	if s.bed != nil {
		if err := s.bed.Stop(); err != nil {
			os.Stderr.WriteString("testbed: stopping: " + err.Error() + "\n")
		}
	}
	return code
}

// Get returns the running bed with a registry named "main", starting it on
// first use. Under -short the test is skipped and nothing starts; where
// the bed cannot run, the test is skipped, unless CI is set: then a
// missing bed is a failure (see Require).
func (s *Shared) Get(t testing.TB) *Bed {
	t.Helper()
	Require(t)
	s.once.Do(func() {
		ctx := context.Background()
		s.bed, s.err = Start(ctx, Options{Logf: func(f string, a ...any) { t.Logf("testbed: "+f, a...) }})
		if s.err != nil {
			return
		}
		if _, s.err = s.bed.StartRegistry(ctx, "main", RegistryOptions{}); s.err != nil {
			s.bed.Stop()
			s.bed = nil
		}
	})
	if s.err != nil {
		t.Fatalf("starting the test bed: %v", s.err)
	}
	return s.bed
}
