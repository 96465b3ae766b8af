package audit

// The twenty-fourth review: 7fa279a's Reanchor (with a recorded
// archived_sha256 and no archive there whole, a log with no complete line
// whose SHA-256 is not the recorded one is the archive lost: refused as
// tampering, or with LostOK recorded as archive_lost and discarded_bytes).
//
// FLAW (failed before the mend): TestReview24ALineBesideALostArchiveIsArchivedAsTheOldTrail.
// HELD: TestReview24EmptyArchiveOfAnEmptyLog,
// TestReview24NoArchiveYetArchivesTheLogOrItsContinuation.

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// review24Line is one complete, well-formed line of another log (an
// acknowledged record elsewhere), not a line of the archived trail.
func review24Line(t *testing.T) []byte {
	t.Helper()
	other, om, _ := newLog(t, 0)
	l, err := Open(other, Options{Anchor: om, Now: fixedClock()})
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Append(Record{Op: "seal", Objects: map[string]string{"n": "elsewhere"}, Result: "ok"}); err != nil {
		t.Fatal(err)
	}
	l.Close()
	line, err := os.ReadFile(other)
	if err != nil || bytes.Count(line, []byte{'\n'}) != 1 {
		t.Fatalf("not mounted: %q %v", line, err)
	}
	return line
}

// FLAW (failed before the mend): TestReview24ALineBesideALostArchiveIsArchivedAsTheOldTrail
// (review 23's attack with a newline: a power cut once a fresh move began
// the log anew, then another process of the same uid; or that process
// alone where the log is empty).
//
// Attack: a fresh move (the officer's reanchor of a log its anchor
// contradicts) wrote its archive, began the log anew and was cut off
// before its record was in (the log empty, or its torn first record).
// Another process of the same uid removes the archive (or edits it) and
// writes one complete line into the log: "x\n", or a well-formed line of
// another log. Review 23's one byte is now refused (7fa279a's "no complete
// line" case); two bytes, one of them a newline, are not.
//
// Expected: as for the empty or torn log beside the lost archive: the move
// made again (finishMove, no LostOK) is refused as tampering, nothing
// reset and neither file changed; the officer's reanchor (LostOK) records
// the archive lost (archive_lost) or refuses, and never writes the new
// bytes as the old trail's archive. A log whose SHA-256 is not the
// recorded one and that the recorded archive cannot be the start of is not
// the log the mark archives.
//
// Observed: the log holds a newline, so 7fa279a's case does not apply: it
// falls to the default, the line is written as the archive at the marked
// path (renamed over an edited archive: the evidence gone), the record's
// archived_sha256 is replaced by the line's, no archive_lost, no officer
// needed; the old trail's lines are in no file and the new trail verifies.
//
// Suggested mend: where want != "" and no archive is kept, archive only a
// log of which some prefix ending at a line boundary (or the whole log)
// has SHA-256 want (the crash came before writeArchive: the log itself, or
// its continuation); anything else is the archive lost (refused unless
// LostOK, and then archive_lost, its bytes not written as the archive: a
// log with complete lines refused as tampering even to the officer, as
// beside a kept archive, TestReview23CompleteLinesAndATornTailNotCut).
func TestReview24ALineBesideALostArchiveIsArchivedAsTheOldTrail(t *testing.T) {
	for _, c := range []struct {
		name   string
		lostOK bool
		edit   bool
		json   bool
	}{
		{"removed/made-again/x", false, false, false},
		{"removed/made-again/line", false, false, true},
		{"edited/made-again/x", false, true, false},
		{"removed/officer/line", true, false, true},
		{"edited/officer/x", true, true, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			junk := []byte("x\n")
			if c.json {
				junk = review24Line(t)
			}
			recs, _, err := review23BesideLostArchive(t, junk, c.edit, c.lostOK)
			if !c.lostOK {
				return
			}
			if err == nil && (len(recs) != 1 || recs[0].Objects["archive_lost"] == "") {
				t.Errorf("the officer's reanchor went on and names no archive lost: %v", recs)
			}
		})
	}
}

// HELD: TestReview24EmptyArchiveOfAnEmptyLog. want is the SHA-256 of an
// empty log (the officer's reanchor of a log emptied: its anchor
// contradicts it, it is archived, empty) and the archive is removed:
//   - the log still empty (the crash before the archive was written): the
//     move made again writes the archive anew, empty, no archive_lost, as
//     nothing of it is lost;
//   - the log begun anew with the move's torn first record: no complete
//     line, refused to the move made again (nothing reset, nothing cut),
//     and the officer's reanchor records archive_lost with the torn bytes
//     discarded. Conservative (the lost archive held nothing; a kept empty
//     archive would have let the bytes be cut, review 22), and nothing
//     acknowledged is cut.
func TestReview24EmptyArchiveOfAnEmptyLog(t *testing.T) {
	empty := sha256Hex(nil)
	t.Run("empty", func(t *testing.T) {
		path, m, _ := newLog(t, 0)
		archive := filepath.Join(filepath.Dir(path), "audit-20261207T000000.000000000Z.log")
		calls, err := review23MadeAgain(path, m, archive, empty, false)
		if err != nil || calls != 1 {
			t.Fatalf("the move made again: %v (Reset called %d times)", err, calls)
		}
		if b, err := os.ReadFile(archive); err != nil || len(b) != 0 {
			t.Errorf("the archive after: %q %v, want written, empty", b, err)
		}
		recs, _ := ReadRecords(path)
		if len(recs) != 1 || recs[0].Objects["archive_lost"] != "" || recs[0].Objects["archived_sha256"] != empty {
			t.Errorf("the log after: %v", recs)
		}
		if _, err := Verify(path, m); err != nil {
			t.Errorf("verify: %v", err)
		}
	})
	for _, lostOK := range []bool{false, true} {
		t.Run("torn/lostOK="+strconv.FormatBool(lostOK), func(t *testing.T) {
			path, m, _ := newLog(t, 0)
			archive := filepath.Join(filepath.Dir(path), "audit-20261207T000000.000000000Z.log")
			if err := os.WriteFile(path, review23Torn, 0o600); err != nil {
				t.Fatal(err)
			}
			calls, err := review23MadeAgain(path, m, archive, empty, lostOK)
			t.Logf("LostOK %v: %v (Reset %d)", lostOK, err, calls)
			if _, err := os.Lstat(archive); err == nil {
				t.Errorf("an archive was written at %s", filepath.Base(archive))
			}
			if !lostOK {
				if !errors.Is(err, ErrTampered) || calls != 0 {
					t.Errorf("%v (Reset %d), want refused as tampering", err, calls)
				}
				if b, _ := os.ReadFile(path); !bytes.Equal(b, review23Torn) {
					t.Errorf("the log changed: %q", b)
				}
				return
			}
			recs, _ := ReadRecords(path)
			if err != nil || len(recs) != 1 || recs[0].Objects["archive_lost"] == "" || recs[0].Objects["discarded_bytes"] != strconv.Itoa(len(review23Torn)) {
				t.Errorf("the officer's reanchor: %v, %v", err, recs)
			}
		})
	}
}

// HELD: TestReview24NoArchiveYetArchivesTheLogOrItsContinuation. The
// crash came after the mark and before writeArchive: no file at the
// archive's path, the log still the old one (its SHA-256 the recorded
// one), or the old one and a line after it (a process whose log was open
// before the move): archived whole, never called lost, the record's
// digest the archive's.
func TestReview24NoArchiveYetArchivesTheLogOrItsContinuation(t *testing.T) {
	for _, more := range []bool{false, true} {
		t.Run("continued="+strconv.FormatBool(more), func(t *testing.T) {
			path, m, archive, data := review22Archived(t, 3)
			want := sha256Hex(data)
			if err := os.Remove(archive); err != nil {
				t.Fatal(err)
			}
			if more {
				l, err := Open(path, Options{Anchor: m, Now: fixedClock()})
				if err != nil {
					t.Fatal(err)
				}
				if err := l.Append(Record{Op: "seal", Objects: map[string]string{"n": "after-the-mark"}, Result: "ok"}); err != nil {
					t.Fatal(err)
				}
				l.Close()
			}
			whole, _ := os.ReadFile(path)
			calls, err := review23MadeAgain(path, m, archive, want, false)
			if err != nil || calls != 1 {
				t.Fatalf("the move made again: %v (Reset %d)", err, calls)
			}
			if b, _ := os.ReadFile(archive); !bytes.Equal(b, whole) {
				t.Errorf("the archive: %d bytes, want the log's %d", len(b), len(whole))
			}
			recs, _ := ReadRecords(path)
			if len(recs) != 1 || recs[0].Objects["archive_lost"] != "" || recs[0].Objects["archived_sha256"] != sha256Hex(whole) {
				t.Errorf("the log after: %v", recs)
			}
			if _, err := Verify(path, m); err != nil {
				t.Errorf("verify: %v", err)
			}
		})
	}
}
