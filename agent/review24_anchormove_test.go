package agent_test

// The twenty-fourth review: 7fa279a's audit.Reanchor "archive lost" case,
// end to end (its unit form audit.TestReview24ALineBesideALostArchiveIsArchivedAsTheOldTrail).
//
// FLAW (failed before the mend): TestReview24LineAfterTheArchiveWentIsArchived.

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
)

// FLAW (failed before the mend): TestReview24LineAfterTheArchiveWentIsArchived (review 23's attack
// with a newline: the officer's reanchor of a log its anchor contradicts
// is cut off after it began the log anew, review22FreshMoveCut; another
// process of the same uid removes the archive the mark names and writes
// one complete line into the empty log: "x\n", two bytes where review 23
// used one).
//
// Expected: as review 23's "empty", "torn-first-record" and "one-byte"
// cases (held since 7fa279a): the archive the record names is not there
// whole and the log holds no line of it, so the next seal's move made
// again is refused as tampering (exit 14), and the officer's reanchor
// records archive_lost.
//
// Observed: the log holds a newline, so 7fa279a's "no complete line" case
// does not apply: the next seal makes the move again and succeeds, the
// two bytes are written as the old trail's archive, the move's record
// names their SHA-256 as archived_sha256 (not the mark's), no
// archive_lost: the old trail's lines are in no file and nothing in the
// trail says so.
//
// Suggested mend: audit.Reanchor, where a digest is recorded and no archive
// is kept: archive only a log that is the recorded one or its
// continuation (a prefix ending at a line boundary has the recorded
// SHA-256); anything else is the archive lost (refused unless LostOK).
func TestReview24LineAfterTheArchiveWentIsArchived(t *testing.T) {
	ctx := context.Background()
	env, dir, archive, want := review22FreshMoveCut(t)
	if err := os.Remove(archive); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(dir, audit.FileName)
	junk := []byte("x\n")
	if err := os.WriteFile(logPath, junk, 0o600); err != nil {
		t.Fatal(err)
	}
	_, serr := newAgent(t, env, dir).Seal(ctx, api.SealRequest{Data: []byte("after")})
	t.Logf("the next seal: %v (exit %d)", serr, api.ExitCode(serr))
	if serr != nil {
		if !errors.Is(serr, api.ErrTampered) && !errors.Is(serr, audit.ErrTampered) {
			t.Errorf("the next seal: %v, want refused as tampering", serr)
		}
		res, oerr := newAgent(t, env, dir).AuditReanchor(ctx)
		if oerr == nil && res.Record.Objects["archive_lost"] == "" {
			t.Errorf("the officer's record names no archive lost: %v", res.Record.Objects)
		}
		t.Logf("the officer's reanchor: %v", oerr)
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
	_, verr := newAgent(t, env, dir).AuditVerify(ctx)
	t.Errorf("the next seal succeeded though the archive the mark names (SHA-256 %s…) is gone and the log held no line of it: "+
		"the move's record %v; the file at %s holds %q; verify: %v", want[:12], anchor.Objects, filepath.Base(archive), got, verr)
}
