package agent_test

// The twenty-third review: the mends of review 22 (f6536d5, 9eed23f):
// zeroize leaving the trail whole under another's unfinished move mark
// (errMoveUnfinished), and audit.Reanchor cutting a log with no complete
// line beside a kept archive (discarded_bytes).
//
// FLAW (failed before the mend): TestReview23TornFirstRecordAfterTheArchiveWentIsArchived (here;
// its unit form audit.TestReview23TornFirstRecordBesideALostArchive);
// TestReview23ZeroizeSRKMovesWithTheHeldGate
// (review23_zeroize_internal_test.go).
// HELD: TestReview23ZeroizeRefusedUnderAMarkHasWaysOut and
// TestReview23ZeroizeUnderAMarkPlacedWhileItDestroys
// (review23_zeroize_internal_test.go); audit.TestReview23CompleteLinesAndATornTailNotCut,
// audit.TestReview23ContinuationWithATornTailArchivedWhole,
// audit.TestReview23UnterminatedRecordIsNeverAcknowledged,
// audit.TestReview23ByteForAnEmptyLogGainsNothing.

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
)

// FLAW (failed before the mend): TestReview23TornFirstRecordAfterTheArchiveWentIsArchived (honest:
// a power cut in the move's first record, and the archive removed, say by
// a clean-up of old audit-*.log files; or another process of the same uid
// with one byte, no power cut).
//
// Attack: the officer's reanchor of a log its anchor contradicts writes
// the archive, begins the log anew and is cut off before its record is
// whole (review22FreshMoveCut: the record's gate proof refused; then the
// torn bytes the power cut leaves). The archive the mark names is then
// removed. Or: with no power cut, another process of the same uid
// removes the archive and writes one byte into the empty log.
//
// Expected: as with an empty log (the "empty" case here, which holds):
// the archive the record names is not there whole and the log's lines
// are in no file, so the next seal's move made again is refused as
// tampering (exit 14) and the officer's reanchor records archive_lost.
//
// Observed: the next seal makes the move again and succeeds: audit.Reanchor
// finds no kept archive, and a log of torn bytes falls to its default
// case: the torn bytes are written as the archive (the old trail's
// archive), the record's archived_sha256 is theirs, not the mark's, no
// archive_lost; the trail verifies, and the old trail's lines are in no
// file, with nothing in the trail saying so. One byte bypasses the empty
// log's refusal.
//
// Suggested mend: audit.Reanchor: a log with no complete line whose
// SHA-256 is not the recorded archived_sha256 is the empty log of that
// move (refused unless LostOK; then archive_lost and discarded_bytes),
// never archived in the archive's place; more generally, with a recorded
// digest and no kept archive, archive only a log with that digest.
func TestReview23TornFirstRecordAfterTheArchiveWentIsArchived(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		log  []byte
	}{
		{"empty", nil},
		{"torn-first-record", []byte(`{"seq":1,"prev":"0000000000000000000000000000000000000000000000000000000000000000","time":"2026-12-07T03:`)},
		{"one-byte", []byte("x")},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			env, dir, archive, want := review22FreshMoveCut(t)
			if err := os.Remove(archive); err != nil {
				t.Fatal(err)
			}
			logPath := filepath.Join(dir, audit.FileName)
			if err := os.WriteFile(logPath, c.log, 0o600); err != nil {
				t.Fatal(err)
			}
			_, serr := newAgent(t, env, dir).Seal(ctx, api.SealRequest{Data: []byte("after")})
			t.Logf("the next seal: %v (exit %d)", serr, api.ExitCode(serr))
			if serr != nil {
				if !errors.Is(serr, api.ErrTampered) && !errors.Is(serr, audit.ErrTampered) {
					t.Errorf("the next seal: %v, want refused as tampering", serr)
				}
				res, oerr := newAgent(t, env, dir).AuditReanchor(ctx)
				if oerr != nil {
					t.Fatalf("the officer's reanchor: %v", oerr)
				}
				if res.Record.Objects["archive_lost"] == "" {
					t.Errorf("the officer's record names no archive lost: %v", res.Record.Objects)
				}
				return
			}
			recs, _ := audit.ReadRecords(logPath)
			var anchor audit.Record
			for _, r := range recs {
				if r.Op == audit.OpAnchor {
					anchor = r
					break
				}
			}
			got, _ := os.ReadFile(archive)
			sum := sha256.Sum256(got)
			_, verr := newAgent(t, env, dir).AuditVerify(ctx)
			t.Logf("the move's record: %v; the file at %s: %d bytes; verify: %v", anchor.Objects, filepath.Base(archive), len(got), verr)
			t.Errorf("the next seal succeeded though the archive the mark names (SHA-256 %s…) is gone and the log held no line of it: "+
				"the record names archived_sha256 %s… (the file now holds %q, %d bytes: the log's torn bytes), archive_lost %q; verify: %v",
				want[:12], anchor.Objects["archived_sha256"][:min(12, len(anchor.Objects["archived_sha256"]))], got[:min(16, len(got))], len(got), anchor.Objects["archive_lost"], verr)
			if bytes.Equal(got, c.log) && hex.EncodeToString(sum[:]) == anchor.Objects["archived_sha256"] {
				t.Errorf("the log's %d torn bytes were archived as the old trail", len(c.log))
			}
		})
	}
}
