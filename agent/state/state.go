package state

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/molecule-ai/pull-agent/internal/safetext"
)

// SchemaVersion is the version of the state document. A reader refuses a
// document from a newer schema.
const SchemaVersion = 2

// StateFileName is the saved state document in the state directory.
const StateFileName = "state.json"

// The states of an image (ImageDoc.State).
const (
	Pending = "pending"
	Pulling = "pulling"
	Warm    = "warm"
	Failed  = "failed"
	// Stale: the image is present, but the registry now serves
	// another digest that could not be pulled.
	Stale = "stale"
)

// maxErrorRunes bounds a text field of a document read back, as the agent
// bounds the errors it keeps in the state.
const maxErrorRunes = 512

// StateDoc is the agent's state as served on the status socket and saved to
// state.json. The README documents every field.
type StateDoc struct {
	SchemaVersion int        `json:"schema_version"`
	WrittenAt     time.Time  `json:"written_at"`
	Agent         AgentDoc   `json:"agent"`
	Hosts         []HostDoc  `json:"hosts"`
	Images        []ImageDoc `json:"images"`
}

// AgentDoc describes the agent process and its configuration.
type AgentDoc struct {
	Version        string     `json:"version"`
	PID            int        `json:"pid"`
	StartedAt      time.Time  `json:"started_at"`
	EnvFile        string     `json:"env_file"`
	Prefix         string     `json:"prefix"`
	Fallbacks      []string   `json:"fallbacks,omitempty"`
	Platform       string     `json:"platform,omitempty"`
	ConfigLoadedAt *time.Time `json:"config_loaded_at,omitempty"`
	ConfigOK       bool       `json:"config_ok"`
	ConfigError    string     `json:"config_error,omitempty"`
	DockerUp       bool       `json:"docker_up"`
	LastReconcile  *time.Time `json:"last_reconcile,omitempty"`
	NextRefresh    *time.Time `json:"next_refresh,omitempty"`
	Warm           int        `json:"warm"`
	Total          int        `json:"total"`
	// Flip is a prefix change scheduled by MOLECULE_FLIP_SPREAD: the
	// images of Prefix stay warm until At, then To's are pulled.
	Flip *FlipDoc `json:"flip,omitempty"`
}

// FlipDoc is a scheduled flip.
type FlipDoc struct {
	To string    `json:"to"`
	At time.Time `json:"at"`
}

// HostDoc describes one registry host.
type HostDoc struct {
	Host             string     `json:"host"`
	CredentialSource string     `json:"credential_source"`
	TokenExpiresAt   *time.Time `json:"token_expires_at,omitempty"`
	CooldownUntil    *time.Time `json:"cooldown_until,omitempty"`
}

// ImageDoc describes one image.
type ImageDoc struct {
	Runtime        string       `json:"runtime"`
	Image          string       `json:"image"`
	State          string       `json:"state"`
	PinnedDigest   string       `json:"pinned_digest,omitempty"`
	Alias          string       `json:"alias,omitempty"`
	LocalDigest    string       `json:"local_digest,omitempty"`
	RemoteDigest   string       `json:"remote_digest,omitempty"`
	ImageID        string       `json:"image_id,omitempty"`
	SizeBytes      int64        `json:"size_bytes,omitempty"`
	Progress       *ProgressDoc `json:"progress,omitempty"`
	LastAttempt    *time.Time   `json:"last_attempt,omitempty"`
	LastSuccess    *time.Time   `json:"last_success,omitempty"`
	Attempts       int          `json:"attempts"`
	LastDurationS  float64      `json:"last_duration_s,omitempty"`
	LastBytes      int64        `json:"last_bytes,omitempty"`
	LastErrorClass string       `json:"last_error_class,omitempty"`
	LastError      string       `json:"last_error,omitempty"`
	NextAttempt    *time.Time   `json:"next_attempt,omitempty"`
	// Source is where the image's content came from: "primary", or
	// "fallback <prefix>" (MOLECULE_IMAGE_FALLBACK_REGISTRY); empty
	// until the image was pulled. While it is a fallback, LastError and
	// LastErrorClass tell why the primary did not serve it.
	Source string `json:"source,omitempty"`
	// FallbackImage is the reference pulled from the fallback, which the
	// primary name now points at.
	FallbackImage string `json:"fallback_image,omitempty"`
}

// SourcePrimary is ImageDoc.Source for content from the primary prefix.
const SourcePrimary = "primary"

// SourceFallback is the ImageDoc.Source of content from fallback prefix p.
func SourceFallback(p string) string { return "fallback " + p }

// FromFallback reports whether the image's content came from a fallback.
func (i ImageDoc) FromFallback() bool { return strings.HasPrefix(i.Source, "fallback ") }

// ProgressDoc is a pull in progress.
type ProgressDoc struct {
	Phase      string `json:"phase"`
	Bytes      int64  `json:"bytes"`
	TotalBytes int64  `json:"total_bytes"`
	Layers     int    `json:"layers"`
	LayersDone int    `json:"layers_done"`
}

// Healthy reports whether every image is warm, the configuration valid
// and no flip waits for its time (MOLECULE_FLIP_SPREAD):
// what 'pull-agent status' exits 0 for.
func (d StateDoc) Healthy() bool {
	if !d.Agent.ConfigOK || len(d.Images) == 0 || d.Agent.Flip != nil {
		return false
	}
	for _, i := range d.Images {
		if i.State != Warm {
			return false
		}
	}
	return true
}

// WriteStateFile writes doc to path atomically: a temp file in the same
// directory, fsync, rename, fsync of the directory. A crash at any point
// leaves either the old file or the new one.
func WriteStateFile(path string, doc StateDoc) error {
	data, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return err
	}
	return WriteFileAtomic(path, append(data, '\n'), 0o644)
}

// WriteFileAtomic writes data to path through a temp file, fsync and
// rename, then fsyncs the directory.
func WriteFileAtomic(path string, data []byte, mode os.FileMode) error {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, ".state-*.tmp")
	if err != nil {
		return fmt.Errorf("writing state: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // gone after a successful rename
	if _, err := f.Write(data); err != nil {
		f.Close()
		return fmt.Errorf("writing state: %w", err)
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return fmt.Errorf("writing state: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("writing state: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("writing state: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("writing state: %w", err)
	}
	if d, err := os.Open(dir); err == nil {
		_ = d.Sync()
		d.Close()
	}
	return nil
}

// ErrNoState is returned by ReadStateFile when nothing was saved.
var ErrNoState = errors.New("no saved state")

// ReadStateFile reads a saved state document.
func ReadStateFile(path string) (StateDoc, error) {
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		return StateDoc{}, fmt.Errorf("%s: %w", path, ErrNoState)
	}
	if err != nil {
		return StateDoc{}, err
	}
	defer f.Close()
	return DecodeState(path, f)
}

// DecodeState parses a state document; name is used in errors.
func DecodeState(name string, r io.Reader) (StateDoc, error) {
	data, err := io.ReadAll(io.LimitReader(r, 16<<20))
	if err != nil {
		return StateDoc{}, fmt.Errorf("reading %s: %w", name, err)
	}
	var probe struct {
		SchemaVersion *int `json:"schema_version"`
	}
	if err := json.Unmarshal(data, &probe); err != nil || probe.SchemaVersion == nil {
		return StateDoc{}, fmt.Errorf("%s is not a pull-agent state document", name)
	}
	if *probe.SchemaVersion > SchemaVersion {
		return StateDoc{}, fmt.Errorf("%s has schema_version %d, newer than this pull-agent understands (%d); upgrade pull-agent", name, *probe.SchemaVersion, SchemaVersion)
	}
	var doc StateDoc
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		return StateDoc{}, fmt.Errorf("%s: %s", name, safetext.Line(err.Error(), 200))
	}
	// Whoever wrote the file or answers on the socket, what is printed
	// from the document is plain text.
	safetext.Strings(&doc, maxErrorRunes)
	return doc, nil
}

// LockStateDir takes an exclusive lock on dir/lock for the life of the
// process, so that two agents never share a state directory. It fails,
// naming the holder, when another process has it. The lock file is opened
// without following a symbolic link and must be a regular file; it is
// written (the holder's pid) only once the lock is held.
func LockStateDir(dir string) (release func(), err error) {
	path := filepath.Join(dir, "lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|syscall.O_NOFOLLOW|syscall.O_CLOEXEC, 0o600)
	if errors.Is(err, syscall.ELOOP) {
		return nil, fmt.Errorf("locking the state directory: %s is a symbolic link; remove it (the agent never follows one there)", path)
	}
	if err != nil {
		return nil, fmt.Errorf("locking the state directory: %w", err)
	}
	if st, err := f.Stat(); err != nil || !st.Mode().IsRegular() {
		f.Close()
		return nil, fmt.Errorf("locking the state directory: %s is not a regular file; remove it", path)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := io.ReadAll(io.LimitReader(f, 32))
		f.Close()
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return nil, fmt.Errorf("another pull-agent (pid %s) is running with the state directory %s; stop it first, or give this one its own --state-dir", safetext.Line(string(holder), 16), dir)
		}
		return nil, fmt.Errorf("locking the state directory: %w", err)
	}
	_ = f.Truncate(0)
	_, _ = f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	return func() { f.Close() }, nil
}

// PrepareStateDir creates dir (0750) when it is missing, and refuses one
// that group or others can write: whoever can write there can replace
// state.json, the ECR token cache and the lock. A directory the agent
// creates gets its mode whatever the umask.
func PrepareStateDir(dir string) error {
	st, err := os.Lstat(dir)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o750); err != nil {
			return fmt.Errorf("creating the state directory: %w", err)
		}
		if err := os.Chmod(dir, 0o750); err != nil {
			return fmt.Errorf("creating the state directory: %w", err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("state directory: %w", err)
	}
	if !st.IsDir() {
		return fmt.Errorf("state directory %s is not a directory (a symbolic link or a file); give --state-dir a directory", dir)
	}
	if st.Mode().Perm()&0o022 != 0 {
		return fmt.Errorf("state directory %s is writable by group or others (mode %04o); run chmod go-w %s, or give --state-dir a private directory", dir, st.Mode().Perm(), dir)
	}
	return nil
}
