package systemd

import (
	"context"
	"fmt"
	"time"

	"github.com/coreos/go-systemd/v22/daemon"
)

// RunWatchdog keeps systemd's watchdog fed for as long as the daemon is
// healthy, and returns when ctx is done.
//
// When WATCHDOG_USEC is set for this process (WatchdogSec= in the unit;
// daemon.SdWatchdogEnabled also checks WATCHDOG_PID), it calls healthy once
// at start and then every half interval, and calls n (normally
// (*Notifier).Watchdog) only when healthy returned nil. healthy is expected to
// prove the TPM still answers within a deadline shorter than the half
// interval. A daemon whose TPM queue is wedged then stops pinging and systemd
// restarts it, which a timer-driven ping that only proves the goroutine runs
// could never achieve. A call to healthy that blocks holds up the next ping
// as well, on purpose, and also delays the return after ctx is cancelled.
//
// Errors from n and healthy are not returned: one missed ping is not fatal
// (systemd waits a whole interval), and the caller wraps n or healthy if it
// wants them logged. RunWatchdog returns nil when the watchdog is not enabled
// or ctx is done, and an error only when WATCHDOG_USEC or WATCHDOG_PID is
// malformed, for logging: the daemon serves on without a watchdog.
func RunWatchdog(ctx context.Context, n, healthy func() error) error {
	interval, err := daemon.SdWatchdogEnabled(false)
	if err != nil {
		return fmt.Errorf("systemd: watchdog: %w", err)
	}
	if interval <= 0 {
		return nil
	}
	tick := time.NewTicker(interval / 2)
	defer tick.Stop()
	for ctx.Err() == nil {
		if healthy() == nil {
			_ = n()
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
	return nil
}
