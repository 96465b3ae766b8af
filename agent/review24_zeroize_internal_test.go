package agent

// The twenty-fourth review: 7fa279a, the mend of review 23 (zeroize --srk
// makes no move once it holds its gate: finishMove refuses with
// errMoveUnfinished while a.heldGate is set; trailAnchor.withGate uses the
// held gate only for audit.gate's own gate).
//
// FLAW (failed before the mend): TestReview24ZeroizeSRKLoadsAMovedTrailsGateUnderTheEvictedSRK,
// TestReview24ZeroizeSRKRefusalSaysWhatItLeft (here);
// TestReview24LineAfterTheArchiveWentIsArchived (review24_anchormove_test.go)
// and its unit form audit.TestReview24ALineBesideALostArchiveIsArchivedAsTheOldTrail.
// HELD: TestReview24ZeroizeSRKAgainWritesTheWaitingRecordOnce (here);
// audit.TestReview24EmptyArchiveOfAnEmptyLog,
// audit.TestReview24NoArchiveYetArchivesTheLogOrItsContinuation.

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// FLAW (failed before the mend): TestReview24ZeroizeSRKLoadsAMovedTrailsGateUnderTheEvictedSRK
// (another process's completed move, plus A1 or a full TPM).
//
// Attack: zeroize --srk holds its trail's gate (holdGate) and starts
// destroying. Meanwhile another process (the officer's one-shot `audit
// reanchor`, on its own connection) completes a move of the trail to a new
// gate (review 23's TestZeroizeSRKAfterAMoveCompletedWhileItDestroys). Since
// 7fa279a the held gate proves only its own gate's extends, so zeroize's
// last record, written after the SRK's eviction, proves the new gate as any
// record does (withGate): the persistent one, or loaded from its blob
// (loadGate: a.t.SRK()). Two ways to the load:
//   - transient: the new gate could not be made persistent (here A1 on the
//     officer's bus answers its EvictControl of the gate TPM_RC_NV_SPACE,
//     as a TPM with no persistent slot left does): audit.gate names no
//     persistent handle;
//   - refused-proof: A1 answers the persistent gate's PolicySecret in
//     zeroize's last record with an error (withGate then loads the gate
//     from its blob, as designed for an evicted persistent gate).
//
// Expected: zeroize --srk never creates the SRK it evicted: it reports
// srk_evicted only with nothing at 0x81000001 after it (the threat model's
// "What zeroize reports removed is removed"), its last record waiting
// (errMoveUnfinished-like) rather than putting the SRK back.
//
// Observed: loadGate calls a.t.SRK(), which (the SRK pinned, its handle
// empty) runs TPM2_CreatePrimary and EvictControl: the SRK zeroize had
// evicted is at 0x81000001 again, while zeroize succeeds, reports
// srk_evicted true and its record says so: review 23's "SRK put back",
// through the path 7fa279a sends a moved trail's gate to.
//
// Suggested mend: once EvictSRK has run in this process (tpm.TPM's
// srkEvicted), SRK() refuses to create or persist it again (an error,
// until PinSRK by a new provision); zeroize's last record then waits
// (pending) and zeroize says so; or zeroize --srk, finding audit.gate no
// longer its held gate at its last record, refuses it as under a mark
// (errMoveUnfinished: zeroize run again records and removes it all).
func TestReview24ZeroizeSRKLoadsAMovedTrailsGateUnderTheEvictedSRK(t *testing.T) {
	for _, way := range []string{"transient", "refused-proof"} {
		t.Run(way, func(t *testing.T) {
			review24MovedGateUnderEvictedSRK(t, way)
		})
	}
}

func review24MovedGateUnderEvictedSRK(t *testing.T, way string) {
	env, bz, dir, g1, rtp, rbus := twoProcessesMount(t)
	ctx := context.Background()
	if way == "transient" {
		// The new gate's persistence refused (no slot left): only the
		// EvictControl that makes a transient object persistent.
		rbus.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
			if swtpmtest.CommandCode(cmd) == tpm2.TPMCCEvictControl && len(cmd) >= 18 &&
				binary.BigEndian.Uint32(cmd[14:18])>>24 == 0x80 {
				return swtpmtest.ErrorAnswer(tpm2.TPMRCNVSpace), nil, true
			}
			return nil, nil, false
		})
	}
	var mu sync.Mutex
	extends, moved, refused := 0, false, 0
	var rerr error
	var g2 *gateRecord
	bz.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		cc := swtpmtest.CommandCode(cmd)
		if cc == tpm2.TPMCCNVExtend {
			extends++
		}
		if extends == 1 && cc == tpm2.TPMCCGetCapability && !moved {
			moved = true
			officer := review8Agent(t, rtp, dir)
			_, rerr = officer.AuditReanchor(ctx)
			rerr = errors.Join(rerr, officer.Close())
			g2, _ = (&trailAnchor{dir: dir}).gate()
		}
		if way == "refused-proof" && moved && cc == tpm2.TPMCCPolicySecret && len(cmd) >= 14 &&
			tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == AuditGateHandle {
			refused++
			return swtpmtest.ErrorAnswer(tpm2.TPMRCHandle), nil, true
		}
		return nil, nil, false
	})
	z := review8Agent(t, env.TPM, dir)
	res, zerr := z.Zeroize(ctx, api.ZeroizeOptions{SRK: true})
	bz.Set(nil)
	rbus.Set(nil)
	mu.Lock()
	ok, oerr, nref, g := moved, rerr, refused, g2
	mu.Unlock()
	if !ok || oerr != nil {
		t.Fatalf("not mounted: the officer's reanchor while zeroize destroys: ran %v, %v", ok, oerr)
	}
	if g == nil || g.Name == g1.Name || g.Moving != nil {
		t.Fatalf("not mounted: the trail did not move to a new gate: %+v", g)
	}
	if way == "transient" && g.Persistent != 0 {
		t.Fatalf("not mounted: the moved trail's gate is persistent (0x%08x)", g.Persistent)
	}
	t.Logf("zeroize: %v; srk_evicted %v; archived %q; indices removed %v; PolicySecret refused %d times", zerr, res.SRKEvicted, filepath.Base(res.AuditLog), res.NVIndices, nref)
	if way == "refused-proof" && nref == 0 {
		t.Fatalf("not mounted: no proof of the persistent gate was refused")
	}
	if x, err := env.TPM.ReadPublic(tpm.SRKHandle); err == nil {
		t.Errorf("after zeroize --srk (error %v, srk_evicted %v) the SRK is at 0x%08x again (name %x): its last record loaded the moved trail's gate under it",
			zerr, res.SRKEvicted, uint32(tpm.SRKHandle), x.Name.Buffer)
		if res.AuditLog != "" {
			if recs, err := audit.ReadRecords(res.AuditLog); err == nil && len(recs) > 0 {
				t.Logf("the archived trail's last record: %s %v", recs[len(recs)-1].Op, recs[len(recs)-1].Objects)
			}
		}
	}
}

// FLAW (failed before the mend): TestReview24ZeroizeSRKRefusalSaysWhatItLeft (two honest officer
// processes and one crash: review23MarkWhileDestroying; one-shot and
// daemon).
//
// Attack: the officer's reanchor marks its move and is killed while zeroize
// --srk destroys. 7fa279a's finishMove refuses (a.heldGate set): zeroize's
// last record waits in audit.pending and Zeroize returns the error of the
// record. The CLI prints only that error (cmd/provd/cli zeroize: no result
// on error).
//
// Expected: as review 22's refusal under a mark (removeGate: "the keys are
// destroyed and recorded, the audit trail is not removed: ...; run provd
// zeroize again"), the refusal says what zeroize did (the keys destroyed,
// the SRK evicted) and what it did not finish (the trail, its anchor and
// gate not removed, its record waiting), and that zeroize (--srk) must be
// run again: the threat model's way out ("zeroize run again makes the
// move").
//
// Observed: the error is the bare errMoveUnfinished of an audited
// operation: "audit trail (see provd audit verify): the audit trail was
// moving ... the next audited operation, or provd audit repair, makes the
// move again (the record is kept ...)". Nothing says the keys are destroyed
// nor that zeroize must be run again; following it (audit repair) makes
// the move, which puts the evicted SRK back (newGatedAnchor: a.t.SRK()),
// and leaves the trail, its anchor, its gate and the SRK in place with no
// further word (logged below).
//
// Suggested mend: in Zeroize, a last record refused with errMoveUnfinished
// (errors.Is) is reported as removeGate's refusal is: "the keys are
// destroyed, their record waits, the audit trail is not removed: ...; run
// provd zeroize --srk again".
func TestReview24ZeroizeSRKRefusalSaysWhatItLeft(t *testing.T) {
	for _, daemon := range []bool{false, true} {
		t.Run(fmt.Sprintf("daemon=%v", daemon), func(t *testing.T) {
			ctx := context.Background()
			env, dir, _, _, res, zerr, _ := review23MarkWhileDestroying(t, daemon, true)
			if !errors.Is(zerr, errMoveUnfinished) {
				t.Fatalf("not mounted: zeroize --srk under a mark placed while it destroys: %v", zerr)
			}
			if !res.SRKEvicted {
				t.Fatalf("not mounted: the SRK was not evicted")
			}
			msg := zerr.Error()
			if !strings.Contains(msg, "zeroize") || !strings.Contains(msg, "again") {
				t.Errorf("zeroize --srk's refusal does not tell to run zeroize again: %q", msg)
			}
			if !strings.Contains(msg, "destroyed") {
				t.Errorf("zeroize --srk's refusal does not say the keys are destroyed: %q", msg)
			}
			// What following the message leads to (logged only).
			_, rerr := review8Agent(t, env.TPM, dir).AuditRepair(ctx, false)
			_, serr := env.TPM.ReadPublic(tpm.SRKHandle)
			_, aerr := env.TPM.ReadNVPublic(AuditAnchorHandle)
			t.Logf("after the way the message names (audit repair: %v): the SRK at its handle %v, an anchor defined %v, the live log there %v",
				rerr, serr == nil, aerr == nil, fileExists(filepath.Join(dir, audit.FileName)))
		})
	}
}

// HELD: TestReview24ZeroizeSRKAgainWritesTheWaitingRecordOnce (one-shot and
// daemon). After 7fa279a's refusal (a mark placed while zeroize --srk
// destroys), zeroize --srk run again makes the move at its open, writes
// the first zeroize's waiting record into the moved trail once, after the
// move's record and before its own zeroize-start, and removes it all: the
// archive holds two zeroize records (the first: srk_evicted true), the
// pending file is gone, nothing is left at the handles, the SRK gone.
func TestReview24ZeroizeSRKAgainWritesTheWaitingRecordOnce(t *testing.T) {
	for _, daemon := range []bool{false, true} {
		t.Run(fmt.Sprintf("daemon=%v", daemon), func(t *testing.T) {
			ctx := context.Background()
			env, dir, z, g2, _, zerr, _ := review23MarkWhileDestroying(t, daemon, true)
			if !errors.Is(zerr, errMoveUnfinished) {
				t.Fatalf("not mounted: %v", zerr)
			}
			if !fileExists(z.pendingPath()) {
				t.Fatalf("zeroize's last record is not waiting in %s", filepath.Base(z.pendingPath()))
			}
			again := z
			if !daemon {
				again = review8Agent(t, env.TPM, dir)
			}
			res, err := again.Zeroize(ctx, api.ZeroizeOptions{SRK: true})
			if err != nil {
				t.Fatalf("zeroize --srk again: %v", err)
			}
			recs, err := audit.ReadRecords(res.AuditLog)
			if err != nil {
				t.Fatal(err)
			}
			var zs, starts []int
			moveAt := -1
			for i, r := range recs {
				switch {
				case r.Op == audit.OpAnchor && r.Objects["gate_key"] == g2.Name:
					moveAt = i
				case r.Op == "zeroize":
					zs = append(zs, i)
				case r.Op == opZeroizeStart:
					starts = append(starts, i)
				}
			}
			t.Logf("archive: move at %d, zeroize-start at %v, zeroize at %v (of %d)", moveAt, starts, zs, len(recs))
			if len(zs) != 2 || len(starts) != 2 {
				t.Fatalf("the archive holds zeroize records at %v and zeroize-start at %v, want two each", zs, starts)
			}
			if moveAt < 0 || !(starts[0] < moveAt && moveAt < zs[0] && zs[0] < starts[1] && starts[1] < zs[1]) {
				t.Errorf("order: move %d, starts %v, zeroize %v; want start, move, the waiting zeroize, start, zeroize", moveAt, starts, zs)
			}
			if recs[zs[0]].Objects["srk_evicted"] != "true" {
				t.Errorf("the waiting zeroize record: %v", recs[zs[0]].Objects)
			}
			if fileExists(z.pendingPath()) {
				t.Errorf("%s is still there", filepath.Base(z.pendingPath()))
			}
			review23AllGone(t, env, dir, g2, true)
		})
	}
}
