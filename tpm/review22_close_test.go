package tpm_test

// The twenty-second review of b907b41 (TPM.Close closes the channel under
// the command queue's lock; a command after Close fails, ErrTransport,
// and never dials the TPM again).
//
// HELD: TestReview22CloseWhileA1HoldsAnAnswer, TestReview22CloseInsideShare.

import (
	"errors"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// HELD: TestReview22CloseWhileA1HoldsAnAnswer. A1 holds the answer of a
// command in flight (a daemon stopping with a request on the bus): Close
// neither closes the connection under it nor deadlocks; it returns once
// the answer comes, the command gets it, and a command after Close fails
// as the TPM closed. (Not stopped, and not new: A1 holding the answer
// holds Close until the transport's timeout, as it holds every caller.)
func TestReview22CloseWhileA1HoldsAnAnswer(t *testing.T) {
	tp, release, answered := heldGetRandom(t)
	closed := make(chan error, 1)
	go func() { closed <- tp.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while a command was in flight: it closed the channel under it", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	select {
	case err := <-closed:
		if err != nil {
			t.Errorf("Close: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Close never returned after the answer came: a deadlock")
	}
	if err := <-answered; err != nil {
		t.Errorf("the command Close met: %v, want its answer", err)
	}
	if _, err := (tpm2.GetRandom{BytesRequested: 8}).Execute(tp); !errors.Is(err, tpm.ErrTransport) {
		t.Errorf("a command after Close: %v, want the TPM closed", err)
	}
}

// HELD: TestReview22CloseInsideShare. Another goroutine closes the TPM
// while an operation is inside a Share between two commands (the
// daemon's shutdown beside a request): Close returns at once (no command
// in flight), the operation's next read fails as the TPM closed, and the
// Share's own flush at its end fails without hanging or dialing again.
func TestReview22CloseInsideShare(t *testing.T) {
	env := swtpmtest.Start(t)
	env.NoLeakCheck() // closed inside the test
	tp := env.TPM
	pinnedGateBlob(t, tp)
	inside, closedCh := make(chan struct{}), make(chan error, 1)
	shared := make(chan error, 1)
	var second error
	go func() {
		shared <- tp.Share(func() error {
			if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7}); err != nil {
				return err
			}
			close(inside)
			if err := <-closedCh; err != nil {
				return err
			}
			_, second = tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7})
			return second
		})
	}()
	select {
	case <-inside:
	case err := <-shared:
		t.Fatalf("not mounted: %v", err)
	}
	start := time.Now()
	err := tp.Close()
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v with no command in flight", d)
	}
	closedCh <- err
	select {
	case err := <-shared:
		if !errors.Is(second, tpm.ErrTransport) {
			t.Errorf("a read inside the Share after Close: %v (Share: %v), want the TPM closed", second, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the Share never returned after Close")
	}
	env.TPM = nil
}

// A second Close beside the first (a signal handler's and a deferred one)
// returns once the channel is closed, not before: while a command's
// answer is held, both wait; after, a command fails as the TPM closed.
// Failed before (found by review 25): the second returned nil at once,
// the channel still open.
func TestSecondCloseWaitsForTheFirst(t *testing.T) {
	tp, release, answered := heldGetRandom(t)
	closed := make(chan error, 2)
	go func() { closed <- tp.Close() }()
	time.Sleep(100 * time.Millisecond) // the first Close waits for the queue
	go func() { closed <- tp.Close() }()
	select {
	case err := <-closed:
		t.Errorf("a Close returned (%v) while the first waited for the command in flight", err)
	case <-time.After(300 * time.Millisecond):
	}
	close(release)
	if err := <-answered; err != nil {
		t.Errorf("the command in flight: %v", err)
	}
	for range 2 {
		select {
		case err := <-closed:
			if err != nil {
				t.Errorf("Close: %v", err)
			}
		case <-time.After(20 * time.Second):
			t.Fatal("a Close never returned")
		}
	}
	if _, err := (tpm2.GetRandom{BytesRequested: 8}).Execute(tp); !errors.Is(err, tpm.ErrTransport) {
		t.Errorf("a command after Close: %v, want the TPM closed", err)
	}
}

// heldGetRandom is a TPM on its own swtpm (closed by the test) with a
// TPM2_GetRandom in flight whose answer A1 holds until release is closed;
// answered gets the command's error.
func heldGetRandom(t *testing.T) (tp *tpm.TPM, release chan struct{}, answered <-chan error) {
	t.Helper()
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	env.NoLeakCheck() // closed inside the test
	tp = env.TPM
	held, release := make(chan struct{}), make(chan struct{})
	bus.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) == tpm2.TPMCCGetRandom {
			select {
			case <-held:
			default:
				close(held)
				<-release
			}
		}
		return nil, nil, false
	})
	got := make(chan error, 1)
	go func() {
		_, err := (tpm2.GetRandom{BytesRequested: 8}).Execute(tp)
		got <- err
	}()
	select {
	case <-held:
	case <-time.After(20 * time.Second):
		t.Fatal("not mounted: the command never reached the bus")
	}
	return tp, release, got
}
