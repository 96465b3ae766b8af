package audit

// The twentieth review: a log begun anew in a new file renamed over the
// old one (1a18499, Log.beginAnew) and the check under the lock that a
// Log's file is still the one at its path (4836ff2, stillAtPath,
// ErrMoved). Append, Reanchor and Locked check; Repair and Open
// (openVerified) do not: they lock the file they opened, which another
// process's move may have replaced meanwhile, and act on it.
//
// Tests marked FLAW failed on the code under review, before the mend that
// follows it (Repair and openVerified check too, and the agent opens once
// more on ErrMoved); Held ones passed.

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// blockingAnchor is a shared anchor (one TPM index) whose Extend, once
// armed, waits until released: the window a TPM anchor's record leaves
// between beginAnew's unlock of the old file and the extend (Prepare:
// a gate load and a policy session, tens of milliseconds).
type blockingAnchor struct {
	*MemoryAnchor
	entered, release chan struct{}
}

func (b *blockingAnchor) Extend(head []byte) error {
	close(b.entered)
	<-b.release
	return b.MemoryAnchor.Extend(head)
}

// movingAway starts another process's archiving reanchor of the log at
// path on the shared anchor m (its Reset: a new anchor, nothing in it),
// held in Reset (the old file's lock taken) until the returned go is
// closed; its record's extend then waits for extendGo. done gets its
// error.
func movingAway(t *testing.T, path string, m *MemoryAnchor, extendGo chan struct{}) (inReset, goOn chan struct{}, extending chan struct{}, done chan error) {
	t.Helper()
	inReset, goOn, done = make(chan struct{}), make(chan struct{}), make(chan error, 1)
	b := &blockingAnchor{MemoryAnchor: m, entered: make(chan struct{}), release: extendGo}
	archive := filepath.Join(filepath.Dir(path), "audit-20261208T000000.000000000Z.log")
	go func() {
		_, err := Reanchor(path, Options{Anchor: b, Now: fixedClock()}, Record{Objects: map[string]string{"reason": "officer"}}, Move{
			Reset: func(Record) (map[string]string, error) {
				close(inReset)
				<-goOn
				m.mu.Lock()
				m.value = nil // the new index, never extended
				m.mu.Unlock()
				return nil, nil
			},
			Archive: archive,
		})
		done <- err
	}()
	select {
	case <-inReset:
	case err := <-done:
		t.Fatalf("not mounted: %v", err)
	}
	return inReset, goOn, b.entered, done
}

// FLAW (the officer's audit repair --anchor-last, beside another
// process's archiving reanchor: the new trail is broken for good).
// Repair opens the log, waits for its lock, and once it has it reads,
// verifies and repairs the file it opened, never checking that it is
// still the log at the path (Append, Reanchor and Locked do). Another
// process's Fresh move held the lock: it archived the log, put a new
// file at the path (beginAnew), let the old file's lock go, and is
// about to extend the new anchor with its record. Repair takes the old
// file's lock in that window, reads the new, never extended anchor,
// finds the old file's one line "not covered", and, AnchorLast, extends
// the NEW anchor with the OLD file's line. The move's extend then comes
// on top: the new trail at the path (its one audit-anchor line) no
// longer gives its anchor, tampered, and nothing but another officer's
// reanchor (archiving a log that was never touched) takes it back.
// Repair itself then fails its Append (ErrMoved): it acted, then
// failed. Mend: stillAtPath under Repair's lock (and openVerified's),
// ErrMoved before anything is read or extended.
func TestReview20RepairOnALogAnotherBeganAnewExtendsTheNewAnchor(t *testing.T) {
	path, m, l := newLog(t, 0)
	// One line written, its extend lost (a crash between write and
	// extend): the officer inspects it and runs repair --anchor-last.
	if err := l.Append(Record{Op: "seal", Result: "ok"}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	m.mu.Lock()
	m.value = nil
	m.mu.Unlock()
	if _, err := Verify(path, m); !errors.Is(err, ErrUnanchored) {
		t.Fatalf("not mounted: %v", err)
	}
	extendGo := make(chan struct{})
	_, goOn, extending, moved := movingAway(t, path, m, extendGo)
	repaired := make(chan error, 1)
	go func() {
		_, err := Repair(path, m, RepairOptions{AnchorLast: true, UID: 0, Now: fixedClock()})
		repaired <- err
	}()
	time.Sleep(300 * time.Millisecond) // Repair has opened the old file and waits for its lock
	close(goOn)
	select {
	case <-extending: // the move's record is in the new file; its extend waits
	case err := <-moved:
		t.Fatalf("not mounted: the move: %v", err)
	}
	var rerr error
	select {
	case rerr = <-repaired:
	case <-time.After(3 * time.Second):
		// Repair still waits (a lock on the new file, after the mend):
		// the move goes on first.
	}
	close(extendGo)
	if err := <-moved; err != nil {
		t.Fatalf("not mounted: the move: %v", err)
	}
	if rerr == nil {
		select {
		case rerr = <-repaired:
		case <-time.After(10 * time.Second):
			t.Fatal("Repair hangs")
		}
	}
	t.Logf("Repair: %v", rerr)
	if _, err := Verify(path, m); err != nil {
		t.Errorf("the new trail at the path, begun by the move (one audit-anchor line), no longer verifies after the repair that waited for the old file's lock: %v", err)
	}
	if rerr != nil && !errors.Is(rerr, ErrMoved) {
		t.Errorf("Repair of a log another process began anew: %v, want ErrMoved (try again) or a repair of the trail at the path", rerr)
	}
}

// FLAW (a false report of tampering: exit 14 to a daemon's client or
// the CLI, for a trail that verifies). Open locks the file it opened and
// verifies it against the anchor, never checking that it is still the
// log at the path: one that waited for the lock while another process
// began the log anew reads the old file against the new anchor and says
// "tampered" (the agent: api.ErrTampered, "see provd audit verify"),
// where ErrMoved (try again) or the trail at the path is right.
func TestReview20OpenWaitingDuringABeginAnewSaysTampered(t *testing.T) {
	path, m, l := newLog(t, 3)
	l.Close()
	extendGo := make(chan struct{})
	close(extendGo)
	_, goOn, _, moved := movingAway(t, path, m, extendGo)
	opened := make(chan error, 1)
	go func() {
		l, err := Open(path, Options{Anchor: m, Now: fixedClock()})
		if err == nil {
			// Whatever it opened must be the trail: its append goes in.
			err = l.Append(Record{Op: "seal", Result: "ok"})
			l.Close()
		}
		opened <- err
	}()
	time.Sleep(300 * time.Millisecond) // Open has opened the old file and waits for its lock
	close(goOn)
	if err := <-moved; err != nil {
		t.Fatalf("not mounted: the move: %v", err)
	}
	err := <-opened
	t.Logf("Open: %v", err)
	if _, verr := Verify(path, m); verr != nil {
		t.Fatalf("not mounted: the trail at the path: %v", verr)
	}
	if errors.Is(err, ErrTampered) {
		t.Errorf("Open that waited for the lock of a log another process began anew reports tampering for a trail that verifies: %v", err)
	}
}

// Held. A crash between beginAnew's CreateTemp and its rename leaves an
// empty ".audit.log.*.new" beside the log (nothing is written to it
// before the rename): no archive glob (audit-*.log) and no store sweep
// (".tmp-") matches it, and the move made again, and appends after it,
// neither trip on it. It is never cleaned up (a crash per leftover).
func TestReview20LeftoverNewFileIsInert(t *testing.T) {
	path, m, l := newLog(t, 2)
	l.Close()
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+FileName+".*.new")
	if err != nil {
		t.Fatal(err)
	}
	f.Close()
	if g, _ := filepath.Glob(filepath.Join(dir, "audit-*.log")); len(g) != 0 {
		t.Errorf("an archive glob matches %v", g)
	}
	if strings.HasPrefix(filepath.Base(f.Name()), ".tmp-") {
		t.Errorf("the store's sweep would take %s", f.Name())
	}
	if _, err := Reanchor(path, Options{Anchor: m, Now: fixedClock()}, Record{}, Move{
		Reset:   func(Record) (map[string]string, error) { m.mu.Lock(); m.value = nil; m.mu.Unlock(); return nil, nil },
		Archive: filepath.Join(dir, "audit-x.log"),
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(path, m); err != nil {
		t.Error(err)
	}
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("the log begun anew: %v %v, want mode 0600", fi.Mode(), err)
	}
}
