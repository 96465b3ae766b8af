package audit

// The nineteenth review: audit.Log.Stale (b1d54f9, review 18's mend: an
// open log that another process archived or began anew is opened again
// by its owner). The FLAW test failed before the mend that follows it
// (Fresh begins the log in a new file renamed over the old one).

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FLAW (an audited operation acts, then fails its record: the agent's
// daemon beside another process's archiving reanchor; see
// agent.TestReview19DaemonAfterAFreshMoveByAnotherOfALongerRecord).
// Stale tells a log begun anew in place (Move.Fresh: the same file cut
// and its first line the move's record) only by its size being below
// what the open Log read. A record at least as long as that makes the
// file no shorter: Stale says false, and the owner's next Append catches
// up from its old offset into the middle of the record, "tampered".
// Mend: compare what was read (the line ending at l.size, or the file's
// first line), not the size alone.
func TestReview19StaleMissesALogBegunAnewLonger(t *testing.T) {
	path, a, l := newLog(t, 1)
	if l.Stale() {
		t.Fatal("not mounted: a log nobody touched is stale")
	}
	archive := filepath.Join(filepath.Dir(path), "audit-20261207T000000.000000000Z.log")
	rec := Record{Objects: map[string]string{"archived_because": strings.Repeat("the anchor does not match the log; ", 10)}}
	if _, err := Reanchor(path, Options{Anchor: a, Now: fixedClock()}, rec, Move{
		Reset: func(Record) (map[string]string, error) {
			a.mu.Lock()
			a.value = nil // a new anchor
			a.mu.Unlock()
			return nil, nil
		},
		Archive: archive,
	}); err != nil {
		t.Fatalf("not mounted: %v", err)
	}
	if !l.Stale() {
		t.Errorf("the open log, begun anew in place by another move (its record longer than the log that was read), is not stale")
		if err := l.Append(Record{Op: "seal", Result: "ok"}); err != nil {
			t.Logf("and its next Append: %v", err)
		}
	}
}

// Held (audit-level; see agent/review19_anchormove_test.go for the summary). A crash after a Fresh move's archive (whole, renamed) and its cut,
// before its record: the move made again, with the record's
// archived_sha256, keeps the archive as it is and begins the empty log
// with its record.
func TestReview19CrashAfterTheCutMadeAgain(t *testing.T) {
	path, _, l := newLog(t, 5)
	l.Close()
	data, _ := os.ReadFile(path)
	sum := sha256.Sum256(data)
	archive := filepath.Join(filepath.Dir(path), "audit-20261207T000000.000000000Z.log")
	if err := os.WriteFile(archive, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Truncate(path, 0); err != nil {
		t.Fatal(err)
	}
	rec := Record{Objects: map[string]string{"archived_log": filepath.Base(archive), "archived_sha256": hex.EncodeToString(sum[:])}}
	a := &MemoryAnchor{}
	if _, err := Reanchor(path, Options{Anchor: a, Now: fixedClock()}, rec, Move{
		Reset: func(Record) (map[string]string, error) { return nil, nil }, Archive: archive, Fresh: true,
	}); err != nil {
		t.Fatalf("the move made again: %v", err)
	}
	if got, _ := os.ReadFile(archive); !bytes.Equal(got, data) {
		t.Errorf("the archive changed: %d bytes, was %d", len(got), len(data))
	}
	recs, err := ReadRecords(path)
	if err != nil || len(recs) != 1 || recs[0].Op != OpAnchor || recs[0].Objects["archived_sha256"] != hex.EncodeToString(sum[:]) {
		t.Errorf("the live log: %v %v", recs, err)
	}
	if _, err := Verify(path, a); err != nil {
		t.Errorf("verify: %v", err)
	}
}
