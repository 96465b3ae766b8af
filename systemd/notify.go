package systemd

import (
	"fmt"
	"strconv"
	"strings"

	"github.com/coreos/go-systemd/v22/daemon"
	"golang.org/x/sys/unix"
)

// Notifier tells the service manager about the daemon's life cycle over the
// sd_notify protocol (NOTIFY_SOCKET).
//
// It satisfies the agent's Notifier interface structurally, so the agent
// never imports this package. The zero value is ready to use. Every method is
// a no-op returning nil when NOTIFY_SOCKET is unset (not under systemd, or
// Type= is not notify); otherwise a failed send is returned so the caller can
// log it. A failure is never a reason to stop serving: the worst systemd does
// with a missed READY=1 is time the start-up out, which is the right outcome
// for a daemon that cannot even reach its manager.
//
// NOTIFY_SOCKET is left in the environment (go-systemd re-reads it on every
// send). Child processes inherit it, but the unit's default NotifyAccess=main
// makes systemd ignore anything they send.
type Notifier struct{}

// NewNotifier returns a Notifier. It exists so call sites read like the rest
// of the daemon's wiring; Notifier{} works as well.
func NewNotifier() *Notifier { return &Notifier{} }

// Ready sends READY=1: start-up (or a reload) is complete. The daemon sends it
// only once the TPM is open, self-tested and the listener bound, because
// systemd starts units ordered after provd as soon as it arrives.
func (n *Notifier) Ready() error { return notify(daemon.SdNotifyReady) }

// Reloading sends RELOADING=1 together with MONOTONIC_USEC, the current
// CLOCK_MONOTONIC time in microseconds. systemd >= 253 uses the timestamp to
// tell this reload apart from one it asked for earlier, and requires it for
// Type=notify-reload; older versions ignore it. Ready must follow once the
// configuration and policies are re-read.
func (n *Notifier) Reloading() error {
	usec, err := monotonicUsec()
	if err != nil {
		// Still say RELOADING=1: systemd < 253 needs nothing more, and
		// a reload that systemd does not see is worse than one without
		// a timestamp.
		if nerr := notify(daemon.SdNotifyReloading); nerr != nil {
			return nerr
		}
		return fmt.Errorf("systemd: MONOTONIC_USEC: %w", err)
	}
	return notify(daemon.SdNotifyReloading + "\nMONOTONIC_USEC=" + strconv.FormatUint(usec, 10))
}

// Stopping sends STOPPING=1 at the start of the graceful drain, so systemd
// shows the unit as deactivating rather than hung while in-flight requests
// finish and the TPM is shut down cleanly.
func (n *Notifier) Stopping() error { return notify(daemon.SdNotifyStopping) }

// Status sends STATUS=<s>, the one-line text `systemctl status provd` shows.
// Line breaks are replaced by spaces: sd_notify messages are newline-separated
// assignments, and a status built from an error message must not be able to
// smuggle in READY=1 or another assignment.
func (n *Notifier) Status(s string) error {
	s = strings.Map(func(r rune) rune {
		if r == '\n' || r == '\r' {
			return ' '
		}
		return r
	}, s)
	return notify("STATUS=" + s)
}

// Watchdog sends WATCHDOG=1, resetting the unit's WatchdogSec= timer. Use
// RunWatchdog rather than calling it directly: the ping must depend on the
// daemon being healthy, not merely on a goroutine being scheduled.
func (n *Notifier) Watchdog() error { return notify(daemon.SdNotifyWatchdog) }

// notify sends one datagram. unsetEnvironment is false so that every later
// notification still finds NOTIFY_SOCKET.
func notify(state string) error {
	if _, err := daemon.SdNotify(false, state); err != nil {
		first, _, _ := strings.Cut(state, "\n")
		return fmt.Errorf("systemd: sd_notify %s: %w", first, err)
	}
	return nil
}

// monotonicUsec reads CLOCK_MONOTONIC directly: Go's time package keeps a
// monotonic reading inside time.Time but never exposes its absolute value,
// and systemd compares MONOTONIC_USEC against its own clock.
func monotonicUsec() (uint64, error) {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0, err
	}
	return uint64(ts.Sec)*1e6 + uint64(ts.Nsec)/1e3, nil
}
