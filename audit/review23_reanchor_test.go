package audit

// The twenty-third review: review 22's mend of Reanchor (9eed23f): beside
// a kept archive (the file at the marked path whose SHA-256 is the
// recorded one), a log that holds no complete line (the move's own first
// record, torn by a crash once the log was begun anew) is cut and its
// bytes named (discarded_bytes) instead of refused as tampering.
//
// FLAW (failed before the mend): TestReview23TornFirstRecordBesideALostArchive.
// HELD: TestReview23CompleteLinesAndATornTailNotCut,
// TestReview23ContinuationWithATornTailArchivedWhole,
// TestReview23UnterminatedRecordIsNeverAcknowledged,
// TestReview23ByteForAnEmptyLogGainsNothing.

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// review23Torn is the torn first line of a log begun anew: the bytes a
// power cut leaves while the move's audit-anchor record is written.
var review23Torn = []byte(`{"seq":1,"prev":"0000000000000000000000000000000000000000000000000000000000000000","time":"2026-12-07T02:`)

// review23MadeAgain makes the fresh move at path again with the mark's
// record (archived_log, archived_sha256 want), as finishMove (lostOK
// false) or the officer's reanchor (lostOK true) does. It returns the
// error and how often Reset was called.
func review23MadeAgain(path string, m *MemoryAnchor, archive, want string, lostOK bool) (int, error) {
	calls := 0
	_, err := Reanchor(path, Options{Anchor: m, Now: fixedClock()},
		Record{Objects: map[string]string{"reason": "reanchor", "made_again": "yes", "archived_log": filepath.Base(archive), "archived_sha256": want}},
		Move{Reset: review22Reset(m, &calls), Archive: archive, Fresh: true, LostOK: lostOK})
	return calls, err
}

// FLAW (failed before the mend): TestReview23TornFirstRecordBesideALostArchive (honest: a power
// cut, then the archive removed or changed; or another process of the
// same uid, with one byte).
//
// Attack: a fresh move (the officer's reanchor of a log its anchor
// contradicts) wrote its archive, began the log anew and was cut off
// while its own first record was written: the log holds a torn line, no
// complete one. Then the archive at the marked path is no longer the
// recorded one: removed (a clean-up of old audit-*.log files, or someone
// hiding the trail's lines), or replaced by a file that is not whole (its
// own lines edited, one removed). Another process of the same uid needs
// no power cut: it removes the archive and writes one byte into the
// empty log.
//
// Expected: as for the empty log beside an archive not there whole
// (reanchor.go: "its lines are in no file"): the move made again
// (finishMove, no LostOK) is refused as tampering, nothing reset and
// neither file changed; the officer's reanchor (LostOK) records the
// archive lost (archive_lost) and names the torn bytes discarded, and
// leaves whatever file is at the archive's path (the evidence) alone.
// Never the torn bytes recorded as the old log's archive.
//
// Observed: the new case of 9eed23f applies only to a kept archive; with
// none kept, a log of torn bytes falls through to the default case: the
// torn bytes are written as the archive (renamed over the changed file,
// the evidence gone), the record's archived_sha256 is replaced by theirs
// (the mark's digest of the old lines in no record of the move made
// again), no archive_lost, no officer needed: the old trail's lines are
// in no file and the new trail verifies. The empty-log refusal is
// bypassed by one byte.
//
// Suggested mend: in the switch, a log with no complete line whose
// SHA-256 is not the recorded one (want != "") is the empty log of that
// move: treat it as len(data) == 0 (refused unless LostOK; with LostOK
// archive_lost, and its bytes cut and named discarded_bytes), never
// archived in the archive's place. More generally, when want != "" and no
// archive is kept, archive only a log whose SHA-256 is want (the crash
// came before writeArchive); anything else is not the log the mark
// archives.
func TestReview23TornFirstRecordBesideALostArchive(t *testing.T) {
	for _, c := range []struct {
		name         string
		edit, lostOK bool
	}{
		{"removed/made-again", false, false},
		{"removed/officer", false, true},
		{"edited/made-again", true, false},
		{"edited/officer", true, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			recs, want, err := review23BesideLostArchive(t, review23Torn, c.edit, c.lostOK)
			if !c.lostOK {
				return
			}
			if err != nil {
				t.Fatalf("the officer's reanchor: %v", err)
			}
			if len(recs) != 1 {
				t.Fatalf("the log after: %v", recs)
			}
			o := recs[0].Objects
			if o["archive_lost"] == "" {
				t.Errorf("the record names no archive lost: %v", o)
			}
			if o["archived_sha256"] != "" && o["archived_sha256"] != want && o["archive_lost"] == "" {
				t.Errorf("the record's archived_sha256 is %s…, not the mark's %s…, and nothing says the mark's archive is lost", o["archived_sha256"][:12], want[:12])
			}
			if o["discarded_bytes"] != strconv.Itoa(len(review23Torn)) {
				t.Errorf("the record names discarded_bytes %q, want %d", o["discarded_bytes"], len(review23Torn))
			}
		})
	}
}

// HELD: TestReview23CompleteLinesAndATornTailNotCut. Beside a kept
// archive, a log that holds a complete line that is not the archive's
// and a torn tail after it (someone's record, then a crash) is no "log
// with no complete line": refused as tampering, nothing reset, neither
// file changed.
func TestReview23CompleteLinesAndATornTailNotCut(t *testing.T) {
	path, m, archive, data := review22Archived(t, 3)
	other, om, _ := newLog(t, 0)
	if err := (func() error {
		l, err := Open(other, Options{Anchor: om, Now: fixedClock()})
		if err != nil {
			return err
		}
		defer l.Close()
		return l.Append(Record{Op: "seal", Objects: map[string]string{"n": "acknowledged"}, Result: "ok"})
	})(); err != nil {
		t.Fatal(err)
	}
	line, err := os.ReadFile(other)
	if err != nil || bytes.Count(line, []byte{'\n'}) != 1 {
		t.Fatalf("not mounted: %q %v", line, err)
	}
	log := append(append([]byte{}, line...), review23Torn...)
	if err := os.WriteFile(path, log, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, lostOK := range []bool{false, true} {
		calls, err := review23MadeAgain(path, m, archive, sha256Hex(data), lostOK)
		t.Logf("LostOK %v: %v", lostOK, err)
		if !errors.Is(err, ErrTampered) || calls != 0 {
			t.Errorf("LostOK %v: %v (Reset called %d times), want refused as tampering", lostOK, err, calls)
		}
		if b, _ := os.ReadFile(path); !bytes.Equal(b, log) {
			t.Error("the log changed")
		}
		if b, _ := os.ReadFile(archive); !bytes.Equal(b, data) {
			t.Error("the archive changed")
		}
	}
}

// HELD: TestReview23ContinuationWithATornTailArchivedWhole. A log that
// went on after the kept archive and ends in a torn tail (the archive's
// bytes, a line appended, then a crash in the next line's write) has
// complete lines: archived anew whole, the torn bytes with it (in a
// file, not cut unnamed), the record naming the new digest.
func TestReview23ContinuationWithATornTailArchivedWhole(t *testing.T) {
	path, m, archive, data := review22Archived(t, 2)
	l, err := Open(path, Options{Anchor: m, Now: fixedClock()})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Append(Record{Op: "seal", Objects: map[string]string{"n": "review23-after-the-archive"}, Result: "ok"}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(review23Torn); err != nil {
		t.Fatal(err)
	}
	f.Close()
	whole, _ := os.ReadFile(path)
	if _, err := review23MadeAgain(path, m, archive, sha256Hex(data), false); err != nil {
		t.Fatalf("the move made again: %v", err)
	}
	got, _ := os.ReadFile(archive)
	if !bytes.Equal(got, whole) {
		t.Errorf("the archive after: %d bytes, want the whole log, %d bytes", len(got), len(whole))
	}
	recs, _ := ReadRecords(path)
	if len(recs) != 1 || recs[0].Objects["archived_sha256"] != sha256Hex(whole) {
		t.Errorf("the log after: %v", recs)
	}
	if _, err := Verify(path, m); err != nil {
		t.Errorf("verify: %v", err)
	}
}

// HELD: TestReview23UnterminatedRecordIsNeverAcknowledged. A log whose
// only content is a whole record, chained and well formed, without its
// newline (a crash after the line's bytes and before the '\n' reached
// the disk: commit writes line and newline in one write, and fsyncs
// before it acknowledges) is a torn tail to every reader (VerifyLinks,
// Verify, ReadRecords): beside a kept archive it is cut and named
// (discarded_bytes, its length), the archive unchanged, as Repair cuts
// it. No acknowledged record is cut.
func TestReview23UnterminatedRecordIsNeverAcknowledged(t *testing.T) {
	path, m, archive, data := review22Archived(t, 2)
	other, om, _ := newLog(t, 0)
	l, err := Open(other, Options{Anchor: om, Now: fixedClock()})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Append(Record{Op: "seal", Objects: map[string]string{"n": "whole"}, Result: "ok"}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	line, _ := os.ReadFile(other)
	unterminated := bytes.TrimSuffix(line, []byte{'\n'})
	if bytes.Contains(unterminated, []byte{'\n'}) {
		t.Fatalf("not mounted: %q", line)
	}
	if err := os.WriteFile(path, unterminated, 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := VerifyLinks(path); !errors.Is(err, ErrTornTail) {
		t.Errorf("VerifyLinks of an unterminated record: %v, want a torn tail", err)
	}
	if recs, _ := ReadRecords(path); len(recs) != 0 {
		t.Errorf("ReadRecords reads the unterminated record: %v", recs)
	}
	if _, err := review23MadeAgain(path, m, archive, sha256Hex(data), false); err != nil {
		t.Fatalf("the move made again: %v", err)
	}
	recs, _ := ReadRecords(path)
	if len(recs) != 1 || recs[0].Objects["discarded_bytes"] != strconv.Itoa(len(unterminated)) {
		t.Errorf("the log after: %v", recs)
	}
	if b, _ := os.ReadFile(archive); !bytes.Equal(b, data) {
		t.Error("the archive changed")
	}
	if _, err := Verify(path, m); err != nil {
		t.Errorf("verify: %v", err)
	}
}

// HELD: TestReview23ByteForAnEmptyLogGainsNothing (A4). After a fresh
// move (archive kept, the move's record and two lines in the new log),
// someone who can write the state directory and set the mark again (A4:
// threat-model.md, "Not stopped: A4 ... setting or editing the mark")
// replaces the log with bytes that hold no newline: the lines go, named
// only as discarded_bytes. That is no more than the same A4 had before
// 9eed23f with an empty log (kept archive, len(data) == 0: cut, named
// nothing at all): the mend gives A4 nothing it lacked, and the byte
// count is at least named in the record.
func TestReview23ByteForAnEmptyLogGainsNothing(t *testing.T) {
	for _, junk := range [][]byte{nil, []byte("x")} {
		path, m, archive, data := review22Archived(t, 2)
		want := sha256Hex(data)
		if _, err := review23MadeAgain(path, m, archive, want, false); err != nil {
			t.Fatal(err)
		}
		l, err := Open(path, Options{Anchor: m, Now: fixedClock()})
		if err != nil {
			t.Fatal(err)
		}
		for _, n := range []string{"a", "b"} {
			if err := l.Append(Record{Op: "seal", Objects: map[string]string{"n": n}, Result: "ok"}); err != nil {
				t.Fatal(err)
			}
		}
		l.Close()
		if err := os.WriteFile(path, junk, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err = review23MadeAgain(path, m, archive, want, false)
		recs, _ := ReadRecords(path)
		t.Logf("log %q, the mark set again: %v; %d records, %v", junk, err, len(recs), recs)
		if err != nil || len(recs) != 1 {
			t.Errorf("log %q: %v, %d records: the empty and the one-byte log are not handled alike", junk, err, len(recs))
			continue
		}
		if got := recs[0].Objects["discarded_bytes"]; len(junk) > 0 && got != strconv.Itoa(len(junk)) {
			t.Errorf("log %q: discarded_bytes %q", junk, got)
		}
	}
}

// review23BesideLostArchive is a move made again (review23MadeAgain) over
// a log holding log, its recorded archive (of three lines) removed or,
// with edit, cut to its first line. The file at the archive's path must
// stay as it was, never log; without the officer (lostOK false) the move
// must be refused as tampering, nothing reset and the log unchanged. It
// returns the log's records after, the recorded digest and the move's
// error.
func review23BesideLostArchive(t *testing.T, log []byte, edit, lostOK bool) ([]Record, string, error) {
	t.Helper()
	path, m, archive, data := review22Archived(t, 3)
	want := sha256Hex(data)
	if err := os.WriteFile(path, log, 0o600); err != nil {
		t.Fatal(err)
	}
	if edit {
		if err := os.WriteFile(archive, data[:bytes.IndexByte(data, '\n')+1], 0o600); err != nil {
			t.Fatal(err)
		}
	} else if err := os.Remove(archive); err != nil {
		t.Fatal(err)
	}
	before, _ := os.ReadFile(archive)
	calls, err := review23MadeAgain(path, m, archive, want, lostOK)
	after, _ := os.ReadFile(archive)
	recs, _ := ReadRecords(path)
	t.Logf("the move made again (LostOK %v): %v (Reset called %d times)", lostOK, err, calls)
	if len(recs) > 0 {
		t.Logf("its record: %v", recs[len(recs)-1].Objects)
	}
	if bytes.Equal(after, log) {
		t.Errorf("the log's %d bytes were written as the archive of the old log's %d bytes, at %s", len(log), len(data), filepath.Base(archive))
	}
	if !bytes.Equal(after, before) {
		t.Errorf("the file at the archive's path changed: %d bytes before, %d after", len(before), len(after))
	}
	if !lostOK {
		if !errors.Is(err, ErrTampered) || calls != 0 {
			t.Errorf("the move made again without the officer: %v (Reset called %d times), want refused as tampering: the old lines are in no file", err, calls)
		}
		if b, _ := os.ReadFile(path); !bytes.Equal(b, log) {
			t.Errorf("the log changed: %q", b)
		}
	}
	return recs, want, err
}
