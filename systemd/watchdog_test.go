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

// handTicker stands for RunWatchdog's ticker: the test ticks it by hand.
type handTicker struct {
	interval chan time.Duration
	c        chan time.Time
}

func useHandTicker(t *testing.T) *handTicker {
	h := &handTicker{interval: make(chan time.Duration, 1), c: make(chan time.Time)}
	old := newTicker
	newTicker = func(d time.Duration) (<-chan time.Time, func()) {
		h.interval <- d
		return h.c, func() {}
	}
	t.Cleanup(func() { newTicker = old })
	return h
}

// tick delivers one tick (RunWatchdog waits for it, so this returns once
// it was taken).
func (h *handTicker) tick(t *testing.T) {
	t.Helper()
	select {
	case h.c <- time.Now():
	case <-time.After(5 * time.Second):
		t.Fatal("RunWatchdog did not wait for the next tick")
	}
}

// ping waits for one WATCHDOG=1.
func (f *fakeNotifySocket) ping() {
	f.t.Helper()
	msg, err := f.read(5 * time.Second)
	if err != nil || msg != "WATCHDOG=1" {
		f.t.Fatalf("want a ping: %q, %v", msg, err)
	}
}

// The watchdog pings at once, then at every tick of a ticker at half of
// WATCHDOG_USEC, and not after its context is cancelled. The ticker is
// ticked by hand: no bound on the scheduler's timing (the 1-second count
// this replaced failed under load).
func TestRunWatchdogCadence(t *testing.T) {
	sock := newFakeNotifySocket(t)
	h := useHandTicker(t)
	t.Setenv("WATCHDOG_USEC", "200000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))

	stop := startWatchdog(t, func() error { return nil })
	if d := <-h.interval; d != 100*time.Millisecond {
		t.Fatalf("ticker interval %v with WATCHDOG_USEC=200000, want 100ms", d)
	}
	sock.ping()
	for range 5 {
		h.tick(t)
		sock.ping()
	}
	// One ping per tick, none between.
	if extra := sock.countPings(50 * time.Millisecond); extra != 0 {
		t.Errorf("%d pings without a tick", extra)
	}
	if err := stop(); err != nil {
		t.Fatal(err)
	}
	if extra := sock.countPings(100 * time.Millisecond); extra != 0 {
		t.Errorf("%d pings after cancel, want 0", extra)
	}
}

// An unhealthy daemon (TPM not answering) must stop feeding the watchdog, so
// that systemd restarts it; healthy is still asked at every tick, so a
// recovery is seen.
func TestRunWatchdogUnhealthy(t *testing.T) {
	sock := newFakeNotifySocket(t)
	h := useHandTicker(t)
	t.Setenv("WATCHDOG_USEC", "200000")
	t.Setenv("WATCHDOG_PID", strconv.Itoa(os.Getpid()))

	var sick atomic.Bool
	checks := make(chan struct{}, 16)
	stop := startWatchdog(t, func() error {
		checks <- struct{}{}
		if sick.Load() {
			return errors.New("TPM does not answer")
		}
		return nil
	})
	<-h.interval
	<-checks
	sock.ping()
	sick.Store(true)
	for range 3 {
		h.tick(t)
		select {
		case <-checks:
		case <-time.After(5 * time.Second):
			t.Fatal("healthy was not called again while unhealthy; recovery would never be seen")
		}
	}
	if got := sock.countPings(50 * time.Millisecond); got != 0 {
		t.Errorf("%d pings while unhealthy, want 0", got)
	}
	sick.Store(false)
	h.tick(t)
	<-checks
	sock.ping()
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
