package agent_test

// The twenty-second review: the mends of review 21 (b907b41..0f8e04d):
// TPM.Close under the queue's lock; trailAnchor.Prepare refusing under
// another's move mark; the move made again over its own written index
// (unrecorded_nv_value); audit.Reanchor keeping an archive only for an
// empty log or the archive's own bytes, archiving a continuation anew and
// refusing anything else as tampered; zeroize's gate removal and archive
// under one hold of the lock; a log begun anew chowned to the old log's
// owner.
//
// FLAW (failed before the mend): TestReview22TornFreshRecordIsADeadEnd (here; its unit form
// audit.TestReview22KeptArchiveAndATornFirstRecord; passed before
// review 21's mend of Reanchor), TestReview22ZeroizeDropsAMoveMarkedBeforeItsHold
// (review22_zeroize_internal_test.go).
// HELD: TestReview22ZeroizeAfterAnInterruptedFreshMove (here),
// TestReview22RecordOfAnOpenedLogAfterAnInterruptedMove (internal),
// audit.TestReview22ContinuationArchivedWhole, audit.TestReview22EditedContinuationRefused,
// tpm.TestReview22CloseWhileA1HoldsAnAnswer, tpm.TestReview22CloseInsideShare.

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/test/swtpmtest"
)

// review22FreshMoveCut is a provisioned state (one seal, then a line
// edited: the officer's reanchor archives the log) whose officer's
// reanchor went as far as writing the archive and beginning the log anew,
// then failed before its record's line: every TPM2_PolicySecret after its
// NV_DefineSpace is refused (the record's gate proof). It returns the
// env, the state directory, the archive's path and the mark's digest.
func review22FreshMoveCut(t *testing.T) (*swtpmtest.Env, string, string, string) {
	t.Helper()
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	env, ag, dir := provisionedBehind(t, b)
	mustSeal(t, ag)
	mustSeal(t, ag)
	review17EditLine(t, dir)
	before, err := os.ReadFile(filepath.Join(dir, audit.FileName))
	if err != nil {
		t.Fatal(err)
	}
	b.Set(swtpmtest.RefuseAfter(tpm2.TPMCCNVDefineSpace, tpm2.TPMCCPolicySecret, tpm2.TPMRCNVSpace))
	_, rerr := newAgent(t, env, dir).AuditReanchor(ctx)
	b.Set(nil)
	mark := review18MarkRecord(t, dir)
	if rerr == nil || mark == nil || mark["archived_log"] == nil {
		t.Fatalf("not mounted: the reanchor: %v, the mark: %v", rerr, mark)
	}
	archive := filepath.Join(dir, mark["archived_log"].(string))
	want, _ := mark["archived_sha256"].(string)
	got, err := os.ReadFile(archive)
	sum := sha256.Sum256(before)
	if err != nil || hex.EncodeToString(sum[:]) != want || sha256.Sum256(got) != sum {
		t.Fatalf("not mounted: the archive %s (%v) is not the log's bytes the mark names", archive, err)
	}
	if fi, err := os.Stat(filepath.Join(dir, audit.FileName)); err != nil || fi.Size() != 0 {
		t.Fatalf("not mounted: the log was to be begun anew and empty: %v %v", fi, err)
	}
	t.Logf("the officer's reanchor: %v; archive %s kept, the log begun anew, the mark set", rerr, filepath.Base(archive))
	return env, dir, archive, want
}

// FLAW (failed before the mend): TestReview22TornFreshRecordIsADeadEnd (honest: one power cut).
//
// Attack: the officer's reanchor of a log its anchor contradicts
// (Move.Archive, Fresh) writes its mark, defines the new index, writes
// the archive (whole, renamed into place, fsynced), begins the log anew
// (an empty file renamed over it), and the power goes while the move's
// audit-anchor record is written as the new log's first line: a torn
// line, the bytes a crash in a write leaves, which everything else in the
// trail treats as never acknowledged and cuts (audit.Repair,
// Reanchor's discarded_bytes, the torn record's bytes "cut only once the
// new anchor stands"). Here the test fails the record's gate proof
// (TPM2_PolicySecret refused after the define) so that the state up to
// the line is the real one, then puts the torn bytes where the line was
// being written.
//
// Expected: not a dead end (threat-model.md "A crash or a fault while
// the trail moves to a new anchor is not a dead end"): the next audited
// operation, audit repair, or at least the officer's reanchor makes the
// move again, the archive kept (its SHA-256 is the mark's), the torn
// bytes cut and named.
//
// Observed: review 21's mend in audit.Reanchor keeps an archive only for
// an empty log or one whose bytes are the archive's; the torn first line
// is neither and no continuation of the archive, so every move made
// again is refused as tampered ("the log holds lines that are not in
// audit-....log and do not follow them: it is not cut", exit 14): the
// next seal, audit repair and the officer's own reanchor (which keeps
// the mark's archive and its digest). Only removing audit.log by hand
// gets the state out. Before the mend the torn bytes were dropped with
// the cut.
//
// Mend: in Reanchor, a log with no complete line (only a torn tail: the
// interrupted record of a move that began it anew) is the empty log of
// the archive's move: keep the archive and cut the bytes, named in the
// record (discarded_bytes); more generally, a log that is neither the
// archive nor its continuation could be archived under a name of its own
// for the officer (LostOK) rather than refused to everyone.
func TestReview22TornFreshRecordIsADeadEnd(t *testing.T) {
	ctx := context.Background()
	env, dir, archive, _ := review22FreshMoveCut(t)
	torn := []byte(`{"seq":1,"prev":"0000000000000000000000000000000000000000000000000000000000000000","time":"2026-12-07T02:45:`)
	if err := os.WriteFile(filepath.Join(dir, audit.FileName), torn, 0o600); err != nil {
		t.Fatal(err)
	}
	_, serr := newAgent(t, env, dir).Seal(ctx, api.SealRequest{Data: []byte("after the power cut")})
	t.Logf("the next seal: %v (exit %d)", serr, api.ExitCode(serr))
	_, perr := newAgent(t, env, dir).AuditRepair(ctx, false)
	t.Logf("audit repair: %v (exit %d)", perr, api.ExitCode(perr))
	res, oerr := newAgent(t, env, dir).AuditReanchor(ctx)
	t.Logf("the officer's reanchor: %v (exit %d)", oerr, api.ExitCode(oerr))
	if serr != nil && perr != nil && oerr != nil {
		t.Errorf("a dead end: the move made again after a power cut in its record's write is refused to the next seal (%v), "+
			"to audit repair (%v) and to the officer's reanchor (%v)", serr, perr, oerr)
	}
	if oerr != nil && errors.Is(oerr, api.ErrTampered) {
		t.Errorf("the officer's reanchor calls an honest torn record tampered: %v", oerr)
	}
	if oerr == nil {
		t.Logf("reanchored: %v", res.Record.Objects)
	}
	if _, err := newAgent(t, env, dir).Seal(ctx, api.SealRequest{Data: []byte("later")}); err != nil {
		t.Errorf("a seal after: %v", err)
	}
	if _, err := newAgent(t, env, dir).AuditVerify(ctx); err != nil {
		t.Errorf("verify: %v", err)
	}
	if _, err := os.Stat(archive); err != nil {
		t.Errorf("the archive: %v", err)
	}
}

// HELD: TestReview22ZeroizeAfterAnInterruptedFreshMove. Zeroize under an
// interrupted fresh move's mark (the archive written, the log begun anew
// and empty): its first record makes the move again (the archive kept),
// it zeroizes, and the state is one a new provision takes; the archive
// and the zeroized log are both kept.
func TestReview22ZeroizeAfterAnInterruptedFreshMove(t *testing.T) {
	ctx := context.Background()
	env, dir, archive, want := review22FreshMoveCut(t)
	res, err := newAgent(t, env, dir).Zeroize(ctx, api.ZeroizeOptions{})
	if err != nil {
		t.Fatalf("zeroize: %v", err)
	}
	recs, err := audit.ReadRecords(res.AuditLog)
	if err != nil || len(recs) == 0 {
		t.Fatalf("the zeroized log %s: %d records, %v", res.AuditLog, len(recs), err)
	}
	if recs[0].Op != audit.OpAnchor || recs[0].Objects["archived_sha256"] != want || recs[len(recs)-1].Op != "zeroize" {
		t.Errorf("the zeroized log: first %s %v, last %s", recs[0].Op, recs[0].Objects, recs[len(recs)-1].Op)
	}
	got, err := os.ReadFile(archive)
	if sum := sha256.Sum256(got); err != nil || hex.EncodeToString(sum[:]) != want {
		t.Errorf("the fresh move's archive changed: %v", err)
	}
	ag := newAgent(t, env, dir)
	provision(t, ag, 7)
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Errorf("verify after a new provision: %v", err)
	}
}
