package systemd

import (
	"context"
	"errors"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"
)

// countPings reads the fake socket for d and counts WATCHDOG=1 datagrams.
func (f *fakeNotifySocket) countPings(d time.Duration) int {
	f.t.Helper()
	n := 0
	end := time.Now().Add(d)
	for {
		left := time.Until(end)
		if left <= 0 {
			return n
		}
		msg, err := f.read(left)
		if err != nil {
			return n
		}
		if msg != "WATCHDOG=1" {
			f.t.Errorf("unexpected notification %q", msg)
			continue
		}
		n++
	}
}

// watch runs RunWatchdog inside a synctest bubble (the production ticker on
// a fake clock: the cadence is exact, with no dependence on the scheduler;
// the 1-second count this replaced failed under load) for d of fake time,
// then cancels it and waits for it to return. It counts pings and health
// checks; healthy decides each check by the number of checks before it.
func watch(t *testing.T, d time.Duration, healthy func(check int32) error) (pings, checks int32) {
	t.Helper()
	t.Setenv("WATCHDOG_USEC", "200000") // a ping every 100 ms
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))
	synctest.Test(t, func(t *testing.T) {
		var p, c atomic.Int32
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() {
			done <- RunWatchdog(ctx, func() error { p.Add(1); return nil }, func() error { return healthy(c.Add(1) - 1) })
		}()
		time.Sleep(d)
		synctest.Wait()
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		// Nothing after the cancel: the bubble's fake time runs on.
		before := p.Load()
		time.Sleep(time.Second)
		synctest.Wait()
		if p.Load() != before {
			t.Errorf("%d pings after cancel", p.Load()-before)
		}
		pings, checks = p.Load(), c.Load()
	})
	return pings, checks
}

// The watchdog pings at once, then at every half of WATCHDOG_USEC, and not
// after its context is cancelled.
func TestRunWatchdogCadence(t *testing.T) {
	pings, checks := watch(t, time.Second+50*time.Millisecond, func(int32) error { return nil })
	if pings != 11 || checks != 11 {
		t.Errorf("%d pings, %d checks in 1.05 s with WATCHDOG_USEC=200000, want 11 (one at start, one per 100 ms)", pings, checks)
	}
}

// An unhealthy daemon (TPM not answering) must stop feeding the watchdog, so
// that systemd restarts it, from the start too; healthy is still asked at
// every tick, so a recovery is seen and the pings resume.
func TestRunWatchdogUnhealthy(t *testing.T) {
	sick := errors.New("TPM does not answer")
	pings, checks := watch(t, 550*time.Millisecond, func(int32) error { return sick })
	if pings != 0 || checks != 6 {
		t.Errorf("unhealthy from the start: %d pings (want 0), %d checks (want 6)", pings, checks)
	}
	// Healthy, sick for checks 2..5, healthy again: pings at 0, 1, 6, 7.
	pings, checks = watch(t, 750*time.Millisecond, func(c int32) error {
		if c >= 2 && c <= 5 {
			return sick
		}
		return nil
	})
	if pings != 4 || checks != 8 {
		t.Errorf("sick for four checks: %d pings (want 4), %d checks (want 8)", pings, checks)
	}
}

func TestRunWatchdogDisabled(t *testing.T) {
	tests := []struct {
		name, usec, pid string
		wantErr         bool
	}{
		{"no WATCHDOG_USEC", "", "", false},
		{"other pid", "200000", strconv.Itoa(os.Getpid() + 1), false},
		{"malformed", "soon", "", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sock := newFakeNotifySocket(t)
			t.Setenv("WATCHDOG_USEC", tt.usec)
			t.Setenv("WATCHDOG_PID", tt.pid)
			done := make(chan error, 1)
			go func() {
				done <- RunWatchdog(context.Background(), NewNotifier().Watchdog, func() error { return nil })
			}()
			select {
			case err := <-done:
				if (err != nil) != tt.wantErr {
					t.Errorf("err = %v, want error: %v", err, tt.wantErr)
				}
			case <-time.After(5 * time.Second):
				t.Fatal("RunWatchdog did not return at once with the watchdog off")
			}
			if got := sock.countPings(100 * time.Millisecond); got != 0 {
				t.Errorf("%d pings with the watchdog off", got)
			}
		})
	}
}
