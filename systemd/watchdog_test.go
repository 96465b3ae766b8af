package systemd

import (
	"context"
	"errors"
	"os"
	"strconv"
	"sync/atomic"
	"testing"
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

func startWatchdog(t *testing.T, healthy func() error) (stop func() error) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	n := NewNotifier()
	go func() { done <- RunWatchdog(ctx, n.Watchdog, healthy) }()
	return func() error {
		cancel()
		select {
		case err := <-done:
			return err
		case <-time.After(5 * time.Second):
			t.Fatal("RunWatchdog did not return after cancel")
			return nil
		}
	}
}

func TestRunWatchdogCadence(t *testing.T) {
	sock := newFakeNotifySocket(t)
	t.Setenv("WATCHDOG_USEC", "200000") // 200ms: a ping about every 100ms
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))

	stop := startWatchdog(t, func() error { return nil })
	got := sock.countPings(time.Second)
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	// About 11 in one second; the bounds only catch "never", "at the full
	// interval" and "in a tight loop", not scheduling noise.
	if got < 6 || got > 20 {
		t.Errorf("%d pings in 1s with WATCHDOG_USEC=200000, want about 10", got)
	}
	// Pings sent before RunWatchdog returned may still sit in the socket.
	sock.countPings(10 * time.Millisecond)
	if extra := sock.countPings(300 * time.Millisecond); extra != 0 {
		t.Errorf("%d pings after cancel, want 0", extra)
	}
}

// An unhealthy daemon (TPM not answering) must stop feeding the watchdog, so
// that systemd restarts it.
func TestRunWatchdogUnhealthy(t *testing.T) {
	sock := newFakeNotifySocket(t)
	t.Setenv("WATCHDOG_USEC", "200000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))

	var sick atomic.Bool
	var checks atomic.Int32
	stop := startWatchdog(t, func() error {
		checks.Add(1)
		if sick.Load() {
			return errors.New("TPM does not answer")
		}
		return nil
	})
	if got := sock.countPings(500 * time.Millisecond); got < 2 {
		t.Errorf("%d pings while healthy, want several", got)
	}
	sick.Store(true)
	sock.countPings(150 * time.Millisecond) // drain a ping already in flight
	before := checks.Load()
	if got := sock.countPings(500 * time.Millisecond); got != 0 {
		t.Errorf("%d pings while unhealthy, want 0", got)
	}
	if checks.Load() == before {
		t.Error("healthy was not called again while unhealthy; recovery would never be seen")
	}
	sick.Store(false)
	if got := sock.countPings(500 * time.Millisecond); got < 2 {
		t.Errorf("%d pings after recovery, want several", got)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
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
