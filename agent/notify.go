package agent

import (
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// Notifier tells the service manager about the agent's state (sd_notify).
type Notifier interface {
	// Notify sends one or more newline-separated KEY=VALUE assignments.
	Notify(state string) error
	// WatchdogInterval is the service's watchdog timeout, or 0 when the
	// watchdog is off.
	WatchdogInterval() time.Duration
}

// SystemdNotifier speaks sd_notify to the socket in NOTIFY_SOCKET; without
// it every call does nothing.
type SystemdNotifier struct{}

// Notify implements Notifier.
func (SystemdNotifier) Notify(state string) error {
	_, err := daemon.SdNotify(false, state)
	return err
}

// WatchdogInterval implements Notifier. It reads WATCHDOG_USEC (and
// WATCHDOG_PID) as systemd sets them.
func (SystemdNotifier) WatchdogInterval() time.Duration {
	d, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		return 0
	}
	return d
}

type nopNotifier struct{}

func (nopNotifier) Notify(string) error             { return nil }
func (nopNotifier) WatchdogInterval() time.Duration { return 0 }
