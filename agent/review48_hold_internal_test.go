package agent

// Review 48: the install's hold (.hold.lock) against another provd process
// that holds it.

import (
	"context"
	"errors"
	"reflect"
	"testing"
	"time"

	"github.com/provd/provd/api"
	"github.com/provd/provd/store"
	"github.com/provd/provd/test/swtpmtest"
)

// Held: another process holds .hold.lock (an install that is slow, or
// stuck): an install here waits, then fails with store.ErrLocked
// (state_locked) after the lock timeout, having written nothing and moved
// no counter; a caller's cancellation ends its wait at once; other
// commands (a key's creation under the installed policy, status) are not
// held up; once released, the install goes through.
func TestReview48InstallWaitsForAnotherHolderAndTouchesNothing(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	dir := t.TempDir() + "/state"
	a := review8Agent(t, env.TPM, dir)
	_, c0, signed := review46Signed(t, a, "")
	if _, err := a.InstallPolicy(ctx, signed(c0, "")); err != nil {
		t.Fatal(err)
	}
	other, err := store.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	unhold, err := other.Hold(ctx)
	if err != nil {
		t.Fatal(err)
	}
	before := review46Record(t, a)
	start := time.Now()
	_, err = a.InstallPolicy(ctx, signed(c0+1, ""))
	el := time.Since(start)
	if !errors.Is(err, store.ErrLocked) {
		t.Errorf("an install while another process holds .hold.lock: %v, want store.ErrLocked", err)
	}
	t.Logf("refused after %s: %v", el, err)
	if el > 3*store.DefaultLockTimeout {
		t.Errorf("the install waited %s", el)
	}
	if c, err := a.readCounter(); err != nil || c != c0 {
		t.Errorf("the counter after the refused install: %d, %v; want %d", c, err, c0)
	}
	if after := review46Record(t, a); !reflect.DeepEqual(after, before) {
		t.Errorf("the PK's policy record changed under a refused install")
	}
	// Other commands are not held up by the hold.
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256"}); err != nil {
		t.Errorf("a key's creation while .hold.lock is held: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	go func() { time.Sleep(100 * time.Millisecond); cancel() }()
	start = time.Now()
	if _, err := a.InstallPolicy(cctx, signed(c0+1, "")); !errors.Is(err, context.Canceled) {
		t.Errorf("a cancelled install waiting for the hold: %v", err)
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("the cancelled install returned after %s", el)
	}
	unhold()
	res, err := a.InstallPolicy(ctx, signed(c0+1, ""))
	if err != nil || res.Counter != c0+1 {
		t.Errorf("the install once the hold is released: %+v, %v", res, err)
	}
}
