package audit

// The twenty-first review: the move of the trail to a new anchor
// (Reanchor, Move{Reset, Done, Archive, Fresh, LostOK}, lockedLog,
// stillAtPath, beginAnew, archived) after the mends of review 20.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// review21Tmpfs mounts a tmpfs at dir with room for inodes files and
// directories (the test runs as root, as make test does), unmounted at
// cleanup.
func review21Tmpfs(t *testing.T, dir string, inodes int) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", fmt.Sprintf("size=8m,nr_inodes=%d,mode=0700", inodes), "tmpfs", dir).CombinedOutput(); err != nil {
		t.Fatalf("mount a tmpfs (the test needs root, as make test runs): %v %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", dir).Run() })
}

// review21FillInodes creates empty files in dir until the file system
// has no inode left, then removes free of them; it returns the rest.
func review21FillInodes(t *testing.T, dir string, free int) []string {
	t.Helper()
	var files []string
	for i := 0; ; i++ {
		p := filepath.Join(dir, fmt.Sprintf("filler-%d", i))
		f, err := os.OpenFile(p, os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
		if err != nil {
			if !errors.Is(err, syscall.ENOSPC) {
				t.Fatal(err)
			}
			break
		}
		f.Close()
		files = append(files, p)
	}
	for range free {
		if err := os.Remove(files[len(files)-1]); err != nil {
			t.Fatal(err)
		}
		files = files[:len(files)-1]
	}
	return files
}

// FLAW (failed before the mend): TestReview21KeptArchiveCutsLinesAppendedSince.
//
// Attack (a fault, then two honest processes): the officer's reanchor of a
// log its anchor contradicts (a Fresh move with an Archive) writes its
// mark (Reset), writes the archive, and fails before the log is begun
// anew: here beginAnew's CreateTemp finds no inode left (ENOSPC: the
// archive took the last one); a crash or a power cut between writeArchive
// and beginAnew is the same. Another process whose Log was opened before
// the move (a one-shot seal, or a daemon's first request after its open:
// agent.TestReview21OpenedAppendExtendsAnUnfinishedMovesAnchor shows the
// agent lets such an append through under the mark) appends its record:
// the line goes to the live log, after the bytes the archive holds. The
// move made again (finishMove: the mark's archived_log and
// archived_sha256) finds a file at the archive's path whose SHA-256 is the
// record's, keeps it, and begins the log anew.
//
// Observed: the appended line is in neither the archive nor the new log;
// the trail verifies, and the move's record names an archive whose digest
// matches: the cut is silent.
//
// Expected: an archive is kept only when it holds every byte of the log
// about to be cut (the log empty, or its bytes the archive's); otherwise
// the log's bytes are archived (again, under another name, both named in
// the record), or the move is refused.
//
// Mend: in Reanchor's archive step, keep the archive only if len(data)==0
// or sha256(data) equals the recorded digest; and let no append through
// under a marked move (the agent test's mend).
func TestReview21KeptArchiveCutsLinesAppendedSince(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	review21Tmpfs(t, dir, 64)
	path := filepath.Join(dir, FileName)
	m := &MemoryAnchor{}
	l, err := Open(path, Options{Anchor: m, Now: fixedClock()})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := l.Append(Record{Op: "seal", Objects: map[string]string{"n": fmt.Sprint(i)}, Result: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	// The other process opens the trail (the anchor read at its open).
	other, err := Open(path, Options{Anchor: m, Now: fixedClock()})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()

	archive := filepath.Join(dir, "audit-20261207T000000.000000000Z.log")
	newAnchor := func(Record) (map[string]string, error) {
		m.mu.Lock()
		m.value = nil // the new index, never extended
		m.mu.Unlock()
		return nil, nil
	}
	var mark map[string]string
	fillers := review21FillInodes(t, dir, 1)
	_, err = Reanchor(path, Options{Anchor: m, Now: fixedClock()}, Record{Objects: map[string]string{"reason": "reanchor"}}, Move{
		Reset: func(rec Record) (map[string]string, error) {
			mark = map[string]string{}
			for k, v := range rec.Objects {
				mark[k] = v
			}
			return newAnchor(rec)
		},
		Archive: archive,
	})
	if err == nil || !strings.Contains(err.Error(), "begin anew") || mark["archived_sha256"] == "" {
		t.Fatalf("not mounted: the first move was to fail after its archive, before its cut: %v (mark %v)", err, mark)
	}
	if _, serr := os.Stat(archive); serr != nil {
		t.Fatalf("not mounted: no archive: %v", serr)
	}
	t.Logf("the first move: %v", err)
	for _, f := range fillers {
		os.Remove(f)
	}

	// The other process's record.
	if err := other.Append(Record{Op: "seal", Objects: map[string]string{"n": "review21-after-the-archive"}, Result: "ok"}); err != nil {
		t.Fatalf("not mounted: the other process's append: %v", err)
	}
	live, _ := os.ReadFile(path)
	if !bytes.Contains(live, []byte("review21-after-the-archive")) {
		t.Fatal("not mounted: the appended line is not in the log")
	}

	// The move made again, with the mark's record.
	if _, err := Reanchor(path, Options{Anchor: m, Now: fixedClock()}, Record{Objects: mark}, Move{
		Reset: newAnchor, Archive: archive, Fresh: true,
	}); err != nil {
		t.Fatalf("the move made again: %v", err)
	}
	kept := false
	for _, p := range append(review21Archives(t, dir), path) {
		if b, _ := os.ReadFile(p); bytes.Contains(b, []byte("review21-after-the-archive")) {
			kept = true
		}
	}
	_, verr := Verify(path, m)
	t.Logf("after the move made again: verify %v", verr)
	if !kept {
		t.Errorf("a line appended after the archive was written and before the log was begun anew is in no file (the archive kept for its digest, the log cut); verify: %v", verr)
	}
}

// review21Archives lists the archives (audit-*.log) in dir.
func review21Archives(t *testing.T, dir string) []string {
	t.Helper()
	g, err := filepath.Glob(filepath.Join(dir, "audit-*.log"))
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// HELD: TestReview21RepairWaitingForANonFreshMove.
//
// Attack (two honest processes): audit repair --anchor-last waits for the
// log's lock while another process's move that keeps the lines (no
// archive: the officer's reanchor of a healthy trail, provision's move)
// appends its audit-anchor record and extends the new anchor with it. The
// file is the same (stillAtPath holds), so the repair then reads the
// log with the move's record and verifies it against the new anchor.
//
// Held: the repair finds nothing to repair (no extend of the new anchor
// with the old, unanchored line), and the trail verifies.
func TestReview21RepairWaitingForANonFreshMove(t *testing.T) {
	path, m, l := newLog(t, 0)
	if err := l.Append(Record{Op: "seal", Result: "ok"}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	m.mu.Lock()
	m.value = nil // the last line's extend lost
	m.mu.Unlock()
	if _, err := Verify(path, m); !errors.Is(err, ErrUnanchored) {
		t.Fatalf("not mounted: %v", err)
	}
	inReset, goOn, done := make(chan struct{}), make(chan struct{}), make(chan error, 1)
	go func() {
		_, err := Reanchor(path, Options{Anchor: m, Now: fixedClock()}, Record{Objects: map[string]string{"reason": "reanchor"}}, Move{
			Reset: func(Record) (map[string]string, error) {
				close(inReset)
				<-goOn
				m.mu.Lock()
				m.value = nil
				m.mu.Unlock()
				return nil, nil
			},
		})
		done <- err
	}()
	<-inReset
	repaired := make(chan error, 1)
	go func() {
		_, err := Repair(path, m, RepairOptions{AnchorLast: true, Now: fixedClock()})
		repaired <- err
	}()
	time.Sleep(300 * time.Millisecond) // the repair waits for the lock
	close(goOn)
	if err := <-done; err != nil {
		t.Fatalf("not mounted: the move: %v", err)
	}
	rerr := <-repaired
	recs, _ := ReadRecords(path)
	t.Logf("repair: %v; %d records", rerr, len(recs))
	if rerr != nil {
		t.Errorf("repair after another's move that kept the lines: %v", rerr)
	}
	if _, err := Verify(path, m); err != nil {
		t.Errorf("the trail after the move and the repair that waited: %v", err)
	}
	for _, r := range recs {
		if r.Op == "audit-repair" {
			t.Errorf("the repair that waited repaired something in a trail the move had anchored: %v", r.Objects)
		}
	}
}

// A move made again whose recorded archive is there whole while the log
// holds lines that neither are the archive nor follow it (the log edited,
// or another trail's put in its place) is refused as tampering: nothing
// is reset, the log is not cut and the archive is left as it was.
func TestReview21KeptArchiveOfAnotherLogIsNotACut(t *testing.T) {
	path, m, l := newLog(t, 0)
	for i := range 2 {
		if err := l.Append(Record{Op: "seal", Objects: map[string]string{"n": fmt.Sprint(i)}, Result: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	logBefore, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(filepath.Dir(path), "audit-20261207T000000.000000000Z.log")
	other := []byte(`{"seq":1,"other":"trail"}` + "\n")
	if err := os.WriteFile(archive, other, 0o600); err != nil {
		t.Fatal(err)
	}
	reset := false
	_, err = Reanchor(path, Options{Anchor: m, Now: fixedClock()},
		Record{Objects: map[string]string{"archived_log": filepath.Base(archive), "archived_sha256": sha256Hex(other)}},
		Move{Reset: func(Record) (map[string]string, error) { reset = true; return nil, nil }, Archive: archive, Fresh: true})
	if !errors.Is(err, ErrTampered) {
		t.Errorf("the move made again over a log that is not its archive's: %v, want tampering", err)
	}
	if reset {
		t.Error("the anchor was reset")
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, logBefore) {
		t.Error("the log changed")
	}
	if b, _ := os.ReadFile(archive); !bytes.Equal(b, other) {
		t.Error("the archive changed")
	}
}

// A log begun anew keeps the old log's owner and group (the test
// runs as root, as make test does): the officer's reanchor, run as root,
// of the log of a daemon that runs as another user leaves that user able
// to append. Failed before the mend: the new log was root's.
func TestBeginAnewKeepsTheLogsOwnerAndMode(t *testing.T) {
	path, m, l := newLog(t, 2)
	l.Close()
	const uid, gid = 65534, 65533
	if err := os.Chown(path, uid, gid); err != nil {
		t.Fatalf("chown (the test needs root, as make test runs): %v", err)
	}
	archive := filepath.Join(filepath.Dir(path), "audit-20261207T000000.000000000Z.log")
	if _, err := Reanchor(path, Options{Anchor: m, Now: fixedClock()}, Record{Objects: map[string]string{"reason": "reanchor"}},
		Move{Reset: func(Record) (map[string]string, error) { m.mu.Lock(); m.value = nil; m.mu.Unlock(); return nil, nil }, Archive: archive}); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	if st.Uid != uid || st.Gid != gid || fi.Mode().Perm() != 0o600 {
		t.Errorf("the log begun anew: uid %d gid %d mode %v, want %d %d -rw-------", st.Uid, st.Gid, fi.Mode().Perm(), uid, gid)
	}
	if _, err := Verify(path, m); err != nil {
		t.Errorf("verify: %v", err)
	}
}
