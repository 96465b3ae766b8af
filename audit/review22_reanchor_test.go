package audit

// The twenty-second review: review 21's mend of Reanchor's kept archive
// (an archive at the marked path kept only for an empty log or the
// archive's own bytes; a log that continues it archived anew, whole;
// anything else refused as tampering).
//
// FLAW (failed before the mend): TestReview22KeptArchiveAndATornFirstRecord (the unit form of
// agent.TestReview22TornFreshRecordIsADeadEnd).
// HELD: TestReview22ContinuationArchivedWhole, TestReview22EditedContinuationRefused.

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"
)

// review22Archived is a log of n lines and its archive written whole, as a
// fresh move leaves them after writeArchive: the log's path, its anchor,
// the archive's path and the log's bytes.
func review22Archived(t *testing.T, n int) (string, *MemoryAnchor, string, []byte) {
	t.Helper()
	path, m, l := newLog(t, 0)
	for i := range n {
		if err := l.Append(Record{Op: "seal", Objects: map[string]string{"n": fmt.Sprint(i)}, Result: "ok"}); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	archive := filepath.Join(filepath.Dir(path), "audit-20261207T000000.000000000Z.log")
	if err := writeArchive(archive, data); err != nil {
		t.Fatal(err)
	}
	return path, m, archive, data
}

// review22Reset is a Reset that replaces m's value with a new, never
// extended anchor, and counts its calls.
func review22Reset(m *MemoryAnchor, calls *int) func(Record) (map[string]string, error) {
	return func(Record) (map[string]string, error) {
		*calls++
		m.mu.Lock()
		m.value = nil
		m.mu.Unlock()
		return nil, nil
	}
}

// FLAW (failed before the mend): TestReview22KeptArchiveAndATornFirstRecord (honest: a power cut).
//
// Attack: a fresh move (the officer's reanchor of a log its anchor
// contradicts) writes its archive whole, begins the log anew (a new empty
// file renamed over it) and the power goes while its audit-anchor record
// is written as the new log's first line: the log holds a torn line, no
// complete one. The move is made again with the mark's record
// (archived_log, archived_sha256).
//
// Expected: the archive is kept (it is the mark's, whole), the torn bytes
// (never acknowledged) are cut and named (discarded_bytes), the record is
// the log's first line and the trail verifies: the torn tail every other
// path cuts (Repair, a non-fresh Reanchor).
//
// Observed: refused as tampering ("the log holds lines that are not in
// ... and do not follow them: it is not cut"), Reset never called; the
// same refusal on every try and for the officer (LostOK changes nothing):
// a dead end. Before review 21's mend the torn bytes went with the cut.
//
// Mend: a log whose bytes hold no complete line (VerifyLinks: no line,
// only a torn tail) is the empty log of the kept archive's move: keep the
// archive, name the bytes discarded (discarded_bytes) and cut them.
func TestReview22KeptArchiveAndATornFirstRecord(t *testing.T) {
	path, m, archive, data := review22Archived(t, 3)
	torn := []byte(`{"seq":1,"prev":"0000000000000000000000000000000000000000000000000000000000000000","time":"2026-12-`)
	if err := os.WriteFile(path, torn, 0o600); err != nil {
		t.Fatal(err)
	}
	calls := 0
	_, err := Reanchor(path, Options{Anchor: m, Now: fixedClock()},
		Record{Objects: map[string]string{"reason": "reanchor", "archived_log": filepath.Base(archive), "archived_sha256": sha256Hex(data)}},
		Move{Reset: review22Reset(m, &calls), Archive: archive, Fresh: true, LostOK: true})
	t.Logf("the move made again: %v (Reset called %d times)", err, calls)
	if err != nil {
		t.Errorf("the move made again over a log that holds only its own torn first record: %v", err)
		return
	}
	recs, _ := ReadRecords(path)
	if len(recs) != 1 || recs[0].Op != OpAnchor || recs[0].Objects["archived_sha256"] != sha256Hex(data) {
		t.Errorf("the log after: %v", recs)
	}
	if b, _ := os.ReadFile(archive); !bytes.Equal(b, data) {
		t.Error("the archive changed")
	}
	if _, err := Verify(path, m); err != nil {
		t.Errorf("verify: %v", err)
	}
}

// HELD: TestReview22ContinuationArchivedWhole. A log that went on after
// the archive was written (a line appended between the archive and the
// cut) is archived anew, whole, before the cut: the line is in the
// archive, the record names the new digest, the archive's old bytes are
// its prefix, and the trail verifies.
func TestReview22ContinuationArchivedWhole(t *testing.T) {
	path, m, archive, data := review22Archived(t, 2)
	l, err := Open(path, Options{Anchor: m, Now: fixedClock()})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Append(Record{Op: "seal", Objects: map[string]string{"n": "review22-after-the-archive"}, Result: "ok"}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	whole, _ := os.ReadFile(path)
	calls := 0
	if _, err := Reanchor(path, Options{Anchor: m, Now: fixedClock()},
		Record{Objects: map[string]string{"reason": "reanchor", "archived_log": filepath.Base(archive), "archived_sha256": sha256Hex(data)}},
		Move{Reset: review22Reset(m, &calls), Archive: archive, Fresh: true}); err != nil {
		t.Fatalf("the move made again: %v", err)
	}
	got, _ := os.ReadFile(archive)
	if !bytes.Equal(got, whole) || !bytes.Contains(got, []byte("review22-after-the-archive")) {
		t.Errorf("the archive after: %d bytes, want the whole log (%d bytes) with the line appended since", len(got), len(whole))
	}
	recs, _ := ReadRecords(path)
	if len(recs) != 1 || recs[0].Objects["archived_sha256"] != sha256Hex(whole) {
		t.Errorf("the log after: %v", recs)
	}
	if _, err := Verify(path, m); err != nil {
		t.Errorf("verify: %v", err)
	}
}

// HELD: TestReview22EditedContinuationRefused. A log as long as the
// archive and more whose first bytes are not the archive's (a line of
// it edited, then a line appended) is no continuation: refused as
// tampering, nothing reset, neither file changed.
func TestReview22EditedContinuationRefused(t *testing.T) {
	path, m, archive, data := review22Archived(t, 2)
	l, err := Open(path, Options{Anchor: m, Now: fixedClock()})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Append(Record{Op: "seal", Result: "ok"}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	live, _ := os.ReadFile(path)
	edited := bytes.Replace(live, []byte(`"n":"0"`), []byte(`"n":"9"`), 1)
	if bytes.Equal(edited, live) {
		t.Fatal("not mounted: nothing edited")
	}
	if err := os.WriteFile(path, edited, 0o600); err != nil {
		t.Fatal(err)
	}
	calls := 0
	_, err = Reanchor(path, Options{Anchor: m, Now: fixedClock()},
		Record{Objects: map[string]string{"archived_log": filepath.Base(archive), "archived_sha256": sha256Hex(data)}},
		Move{Reset: review22Reset(m, &calls), Archive: archive, Fresh: true})
	if !errors.Is(err, ErrTampered) || calls != 0 {
		t.Errorf("an edited continuation: %v (Reset called %d times), want tampering and no reset", err, calls)
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, edited) {
		t.Error("the log changed")
	}
	if b, _ := os.ReadFile(archive); !bytes.Equal(b, data) {
		t.Error("the archive changed")
	}
}
