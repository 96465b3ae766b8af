package store

// Review 48: Store.Hold (.hold.lock), attacked by another provd process and
// by A4 (root with the state directory) planting things at .hold.lock.

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

func review48Stores(t *testing.T, timeout time.Duration) (a, b *Store) {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "state")
	var err error
	if a, err = OpenOptions(dir, Options{LockTimeout: timeout}); err != nil {
		t.Fatal(err)
	}
	if b, err = OpenOptions(dir, Options{LockTimeout: timeout}); err != nil {
		t.Fatal(err)
	}
	return a, b
}

// review48HoldWithin runs s.Hold and fails the test if it does not return
// within d (a hang at A4's plant).
func review48HoldWithin(t *testing.T, s *Store, d time.Duration) (func(), error) {
	t.Helper()
	type r struct {
		un  func()
		err error
	}
	ch := make(chan r, 1)
	go func() {
		un, err := s.Hold(context.Background())
		ch <- r{un, err}
	}()
	select {
	case x := <-ch:
		return x.un, x.err
	case <-time.After(d):
		t.Fatalf("Hold did not return within %s", d)
		return nil, nil
	}
}

// Held: two Stores on one directory (two processes: flock is per open file
// description, so it excludes within one process too): the second Hold waits
// and fails with ErrLocked after the lock timeout, not before and not
// forever; once released it is taken. Neither View nor Update waits for the
// hold: only a sequence that takes Hold is serialised by it, so a slow
// install makes no other command fail with ErrLocked.
func TestReview48HoldExcludesAnotherHolderButNoTransaction(t *testing.T) {
	a, b := review48Stores(t, 300*time.Millisecond)
	un, err := a.Hold(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if _, err := b.Hold(context.Background()); !errors.Is(err, ErrLocked) {
		t.Fatalf("a second Hold while the first is held: %v, want ErrLocked", err)
	}
	if el := time.Since(start); el < 250*time.Millisecond || el > 3*time.Second {
		t.Errorf("the second Hold failed after %s, want about the lock timeout (300ms)", el)
	}
	// Transactions of either store do not wait for the hold.
	for _, s := range []*Store{a, b} {
		if err := s.Update(context.Background(), func(tx *Tx) error { return tx.Put("k", map[string]string{"a": "b"}) }); err != nil {
			t.Errorf("Update while .hold.lock is held: %v", err)
		}
		if err := s.View(context.Background(), func(*Tx) error { return nil }); err != nil {
			t.Errorf("View while .hold.lock is held: %v", err)
		}
	}
	// A Hold taken inside a transaction of the same store does not deadlock
	// (Hold has no in-process semaphore), even though its doc forbids it.
	un()
	if err := a.Update(context.Background(), func(*Tx) error {
		u2, err := b.Hold(context.Background())
		if err != nil {
			return err
		}
		u2()
		return nil
	}); err != nil {
		t.Errorf("Hold inside Update: %v", err)
	}
	un2, err := b.Hold(context.Background())
	if err != nil {
		t.Fatalf("Hold after the first released it: %v", err)
	}
	un2()
	// A caller's cancellation ends the wait at once, as its own error.
	un, _ = a.Hold(context.Background())
	defer un()
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(50 * time.Millisecond); cancel() }()
	if _, err := b.Hold(ctx); !errors.Is(err, context.Canceled) {
		t.Errorf("a cancelled wait for the hold: %v, want context.Canceled", err)
	}
}

// FLAW (failed before the mend): the error of a Hold that timed out reads exactly as the store
// lock's: "store: another provd process holds the state lock: <dir> (waited
// 5s)". An operator whose `provd policy install` fails so looks for a stuck
// transaction (.lock) and finds none: what holds it is another policy
// install (.hold.lock), which may still be moving the counter, and the
// message neither names the file nor says that an install holds it. Mend
// (store/store.go:279, flock's ErrLocked): name the lock file that was
// waited for (filepath.Join(s.dir, name)), and for HoldFile say that
// another process runs the held sequence (a signed policy install).
func TestReview48HoldTimeoutSaysWhatHoldsIt(t *testing.T) {
	a, b := review48Stores(t, 100*time.Millisecond)
	un, err := a.Hold(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer un()
	_, err = b.Hold(context.Background())
	if !errors.Is(err, ErrLocked) {
		t.Fatalf("%v, want ErrLocked", err)
	}
	msg := err.Error()
	t.Logf("the timed-out Hold says: %s", msg)
	if !strings.Contains(msg, HoldFile) && !strings.Contains(strings.ToLower(msg), "install") {
		t.Errorf("the timed-out Hold names neither %s nor the install holding it: %q", HoldFile, msg)
	}
}

// Held: A4 plants a symlink at .hold.lock (to a file of its choosing, or to
// the store's own .lock): Hold refuses it at once (O_NOFOLLOW), names the
// file, and does not create or lock the target.
func TestReview48HoldRefusesASymlink(t *testing.T) {
	a, _ := review48Stores(t, 200*time.Millisecond)
	p := filepath.Join(a.Dir(), HoldFile)
	for _, target := range []string{filepath.Join(t.TempDir(), "elsewhere"), filepath.Join(a.Dir(), LockFile)} {
		os.Remove(p)
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
		un, err := review48HoldWithin(t, a, 5*time.Second)
		if err == nil {
			un()
			t.Fatalf("Hold through a symlink to %s was taken", target)
		}
		if !errors.Is(err, syscall.ELOOP) || !strings.Contains(err.Error(), HoldFile) {
			t.Errorf("Hold through a symlink: %v, want ELOOP naming %s", err, HoldFile)
		}
		if strings.HasSuffix(target, "elsewhere") {
			if _, err := os.Lstat(target); err == nil {
				t.Errorf("Hold created the symlink's target %s", target)
			}
		}
	}
	// The store's own lock is not taken through it either: a transaction
	// still runs.
	if err := a.View(context.Background(), func(*Tx) error { return nil }); err != nil {
		t.Errorf("View after the refused Hold: %v", err)
	}
}

// Held: A4 plants a directory at .hold.lock: Hold fails at once with an
// error naming it (EISDIR), never hangs; an install refuses rather than
// running unserialised.
func TestReview48HoldRefusesADirectory(t *testing.T) {
	a, _ := review48Stores(t, 200*time.Millisecond)
	p := filepath.Join(a.Dir(), HoldFile)
	if err := os.Mkdir(p, 0o700); err != nil {
		t.Fatal(err)
	}
	un, err := review48HoldWithin(t, a, 5*time.Second)
	if err == nil {
		un()
		t.Fatal("Hold on a directory was taken")
	}
	if !strings.Contains(err.Error(), HoldFile) {
		t.Errorf("the error does not name %s: %v", HoldFile, err)
	}
}

// Held: A4 plants a FIFO at .hold.lock (an open of a FIFO for reading or
// writing alone blocks until a peer opens it): Hold opens it O_RDWR, which
// does not block on Linux, so it neither hangs nor stops serialising: a
// second holder still waits and gets ErrLocked. The same for a character
// device (/dev/null's numbers, made by A4 as root).
func TestReview48HoldOnAFIFOOrDeviceNeitherHangsNorStopsExcluding(t *testing.T) {
	for _, kind := range []string{"fifo", "chardev"} {
		t.Run(kind, func(t *testing.T) {
			a, b := review48Stores(t, 200*time.Millisecond)
			p := filepath.Join(a.Dir(), HoldFile)
			var err error
			if kind == "fifo" {
				err = syscall.Mkfifo(p, 0o600)
			} else {
				err = syscall.Mknod(p, syscall.S_IFCHR|0o600, int(1<<8|3))
			}
			if err != nil {
				t.Fatalf("planting a %s (tests run as root): %v", kind, err)
			}
			un, err := review48HoldWithin(t, a, 5*time.Second)
			if err != nil {
				t.Logf("Hold on a %s: %v (refused: no install runs unserialised)", kind, err)
				return
			}
			defer un()
			done := make(chan error, 1)
			go func() {
				u, err := b.Hold(context.Background())
				if err == nil {
					u()
				}
				done <- err
			}()
			select {
			case err := <-done:
				if !errors.Is(err, ErrLocked) {
					t.Errorf("a second Hold on the %s while the first holds it: %v, want ErrLocked", kind, err)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("the second Hold on the %s hangs", kind)
			}
		})
	}
}

// Held: A4 makes .hold.lock unreadable (mode 000, or owned by another
// uid). provd as root opens it anyway and the lock works; a provd not root
// would get EACCES at once, naming the file: a refusal, not a hang and not
// an install run unserialised. Here (root) only the first is checked.
func TestReview48HoldOnAnUnreadableFile(t *testing.T) {
	a, b := review48Stores(t, 200*time.Millisecond)
	p := filepath.Join(a.Dir(), HoldFile)
	if err := os.WriteFile(p, nil, 0); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(p, 0); err != nil {
		t.Fatal(err)
	}
	un, err := review48HoldWithin(t, a, 5*time.Second)
	if err != nil {
		if !strings.Contains(err.Error(), HoldFile) {
			t.Errorf("refused without naming %s: %v", HoldFile, err)
		}
		return
	}
	defer un()
	if _, err := b.Hold(context.Background()); !errors.Is(err, ErrLocked) {
		t.Errorf("a second Hold on the mode-000 file: %v, want ErrLocked", err)
	}
}

// Held: Wipe (zeroize, provision --force's wipe) keeps .hold.lock, so an
// install holding it across another process's wipe still excludes the
// next install: a removed and recreated file would let two hold "the" lock.
func TestReview48WipeKeepsTheHoldFile(t *testing.T) {
	a, b := review48Stores(t, 200*time.Millisecond)
	un, err := a.Hold(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer un()
	if err := b.Wipe(context.Background(), WipeOptions{Audit: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(filepath.Join(a.Dir(), HoldFile)); err != nil {
		t.Fatalf("after Wipe: %v", err)
	}
	if _, err := b.Hold(context.Background()); !errors.Is(err, ErrLocked) {
		t.Errorf("a Hold after another's Wipe, while the first still holds: %v, want ErrLocked", err)
	}
}
