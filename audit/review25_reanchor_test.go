package audit

// The twenty-fifth review: aa859f5's Reanchor (the archive decision over
// keep, lines, holdsRecorded, lost and neither) and today's work as one
// piece.
//
// HELD: TestReview25ArchiveDecisionEveryCase,
// TestReview25NeitherThenTheOfficersWayOut.

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// review25Trail is a log of four records: the first three are the recorded
// log (the mark's archived_sha256), the fourth a line after it.
func review25Trail(t *testing.T) (path string, m *MemoryAnchor, archive string, recorded, extra []byte) {
	t.Helper()
	path, m, l := newLog(t, 4)
	l.Close()
	all, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	cut := 0
	for range 3 {
		cut += bytes.IndexByte(all[cut:], '\n') + 1
	}
	archive = filepath.Join(filepath.Dir(path), "audit-20261207T000000.000000000Z.log")
	return path, m, archive, all[:cut:cut], all[cut:]
}

// HELD: TestReview25ArchiveDecisionEveryCase. The move made again (a
// fresh move with archived_log and archived_sha256 in its record) over
// each state a crash, another process or the officer can leave: the
// archive kept whole, none there, a partial one; the log empty, the
// move's torn first record, the recorded log, its continuation (with a
// torn tail), a line of another log, the start of the recorded log; with
// and without LostOK. Checked: nothing acknowledged is cut silently (a
// move that goes on leaves every complete line of the log it read in the
// file at the archive's path, or its record names the archive lost or
// the bytes discarded); a refusal changes neither file and resets
// nothing; what the record says is what happened.
func TestReview25ArchiveDecisionEveryCase(t *testing.T) {
	type want int
	const (
		keptAsIs  want = iota // the archive already there stays, the log is begun anew
		archived              // the log, whole, is the archive
		discarded             // the archive stays, the torn bytes are named
		lost                  // archive_lost (and the torn bytes)
		refused               // tampering, nothing changes
	)
	for _, c := range []struct {
		name    string
		archive string // kept, none, partial
		log     string // empty, torn, recorded, continued, continued+torn, foreign, start
		lostOK  bool
		want    want
	}{
		{"kept/empty", "kept", "empty", false, keptAsIs},
		{"kept/recorded", "kept", "recorded", false, keptAsIs},
		{"kept/torn", "kept", "torn", false, discarded},
		{"kept/continued", "kept", "continued", false, archived},
		{"kept/continued+torn", "kept", "continued+torn", false, archived},
		{"kept/foreign/officer", "kept", "foreign", true, refused},
		{"kept/start/officer", "kept", "start", true, refused},
		{"none/recorded", "none", "recorded", false, archived},
		{"none/recorded+torn", "none", "recorded+torn", false, archived},
		{"none/continued", "none", "continued", false, archived},
		{"partial/recorded", "partial", "recorded", false, archived},
		{"partial/continued", "partial", "continued", false, archived},
		{"none/foreign", "none", "foreign", false, refused},
		{"none/foreign/officer", "none", "foreign", true, refused},
		{"none/start", "none", "start", false, refused},
		{"none/start/officer", "none", "start", true, refused},
		{"partial/foreign/officer", "partial", "foreign", true, refused},
		{"none/empty", "none", "empty", false, refused},
		{"none/empty/officer", "none", "empty", true, lost},
		{"none/torn", "none", "torn", false, refused},
		{"none/torn/officer", "none", "torn", true, lost},
		{"partial/empty/officer", "partial", "empty", true, lost},
	} {
		t.Run(c.name, func(t *testing.T) {
			path, m, archive, recorded, extra := review25Trail(t)
			var data []byte
			switch c.log {
			case "empty":
			case "torn":
				data = review23Torn
			case "recorded":
				data = recorded
			case "recorded+torn":
				data = append(append([]byte{}, recorded...), review23Torn...)
			case "continued":
				data = append(append([]byte{}, recorded...), extra...)
			case "continued+torn":
				data = append(append(append([]byte{}, recorded...), extra...), review23Torn...)
			case "foreign":
				data = review24Line(t)
			case "start":
				data = recorded[:bytes.IndexByte(recorded, '\n')+1]
			}
			if err := os.WriteFile(path, data, 0o600); err != nil {
				t.Fatal(err)
			}
			switch c.archive {
			case "kept":
				if err := writeArchive(archive, recorded); err != nil {
					t.Fatal(err)
				}
			case "partial":
				if err := os.WriteFile(archive, recorded[:len(recorded)/2], 0o600); err != nil {
					t.Fatal(err)
				}
			}
			archiveBefore, _ := os.ReadFile(archive)
			calls, err := review23MadeAgain(path, m, archive, sha256Hex(recorded), c.lostOK)
			archiveAfter, aerr := os.ReadFile(archive)
			logAfter, _ := os.ReadFile(path)
			if c.want == refused {
				if !errors.Is(err, ErrTampered) || calls != 0 {
					t.Errorf("%v (Reset called %d times), want refused as tampering", err, calls)
				}
				if !bytes.Equal(logAfter, data) || !bytes.Equal(archiveAfter, archiveBefore) {
					t.Errorf("refused, yet a file changed: the log %d bytes (was %d), the archive %d bytes (was %d)", len(logAfter), len(data), len(archiveAfter), len(archiveBefore))
				}
				return
			}
			if err != nil || calls != 1 {
				t.Fatalf("the move made again: %v (Reset called %d times)", err, calls)
			}
			recs, rerr := ReadRecords(path)
			if rerr != nil || len(recs) != 1 || recs[0].Op != OpAnchor {
				t.Fatalf("the log after: %v %v, want begun anew with the move's record", recs, rerr)
			}
			if _, err := Verify(path, m); err != nil {
				t.Errorf("verify after: %v", err)
			}
			o := recs[0].Objects
			// Nothing acknowledged cut silently: every complete line the
			// log held is in the archive, unless the record says lost.
			complete := data[:bytes.LastIndexByte(data, '\n')+1]
			if o["archive_lost"] == "" && (aerr != nil || !bytes.HasPrefix(archiveAfter, complete)) {
				t.Errorf("the log's %d bytes of complete lines are not in the archive (%d bytes, %v), and the record names nothing lost: %v", len(complete), len(archiveAfter), aerr, o)
			}
			switch c.want {
			case keptAsIs:
				if !bytes.Equal(archiveAfter, recorded) || o["archived_sha256"] != sha256Hex(recorded) || o["discarded_bytes"] != "" || o["archive_lost"] != "" {
					t.Errorf("archive %d bytes, record %v", len(archiveAfter), o)
				}
			case archived:
				if !bytes.Equal(archiveAfter, data) || o["archived_sha256"] != sha256Hex(data) || o["archive_lost"] != "" || o["discarded_bytes"] != "" {
					t.Errorf("archive %d bytes (the log %d), record %v", len(archiveAfter), len(data), o)
				}
			case discarded:
				if !bytes.Equal(archiveAfter, recorded) || o["discarded_bytes"] != strconv.Itoa(len(data)) || o["archive_lost"] != "" {
					t.Errorf("archive %d bytes, record %v", len(archiveAfter), o)
				}
			case lost:
				if o["archive_lost"] == "" || !bytes.Equal(archiveAfter, archiveBefore) {
					t.Errorf("archive %d bytes (was %d), record %v", len(archiveAfter), len(archiveBefore), o)
				}
				if len(data) > 0 && o["discarded_bytes"] != strconv.Itoa(len(data)) {
					t.Errorf("the torn bytes are not named: %v", o)
				}
			}
		})
	}
}

// HELD: TestReview25NeitherThenTheOfficersWayOut. A log of lines that are
// neither the recorded log nor its continuation, beside no archive (or a
// kept one), is refused to the officer too ("keep it aside as evidence
// (move it out of the state directory), then provd audit reanchor"). The
// officer does so: the reanchor (LostOK) then goes on over the missing
// log, records the archive lost when none is there whole (or keeps the
// kept one), and the evidence is untouched: the way out the message names
// is no dead end.
func TestReview25NeitherThenTheOfficersWayOut(t *testing.T) {
	for _, kept := range []bool{false, true} {
		t.Run("kept="+strconv.FormatBool(kept), func(t *testing.T) {
			path, m, archive, recorded, _ := review25Trail(t)
			line := review24Line(t)
			if err := os.WriteFile(path, line, 0o600); err != nil {
				t.Fatal(err)
			}
			if kept {
				if err := writeArchive(archive, recorded); err != nil {
					t.Fatal(err)
				}
			}
			calls, err := review23MadeAgain(path, m, archive, sha256Hex(recorded), true)
			var ve *VerifyError
			if !errors.As(err, &ve) || ve.Kind != ErrTampered || calls != 0 || !bytes.Contains([]byte(ve.Reason), []byte("keep it aside")) {
				t.Fatalf("not mounted: %v (Reset %d)", err, calls)
			}
			evidence := filepath.Join(t.TempDir(), "evidence.log")
			if err := os.Rename(path, evidence); err != nil {
				t.Fatal(err)
			}
			calls, err = review23MadeAgain(path, m, archive, sha256Hex(recorded), true)
			if err != nil || calls != 1 {
				t.Fatalf("the officer's reanchor once the log is aside: %v (Reset %d)", err, calls)
			}
			recs, _ := ReadRecords(path)
			if len(recs) != 1 {
				t.Fatalf("the log after: %v", recs)
			}
			o := recs[0].Objects
			if kept != (o["archive_lost"] == "") {
				t.Errorf("kept %v, the record: %v", kept, o)
			}
			if b, _ := os.ReadFile(evidence); !bytes.Equal(b, line) {
				t.Errorf("the evidence changed")
			}
			if b, _ := os.ReadFile(archive); kept && !bytes.Equal(b, recorded) {
				t.Errorf("the kept archive changed")
			}
			if _, err := Verify(path, m); err != nil {
				t.Errorf("verify: %v", err)
			}
		})
	}
}
