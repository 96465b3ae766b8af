package agent

// The twenty-fifth review: aa859f5, the mend of review 24 (zeroize's error
// once the keys are destroyed and the trail left: zeroizeLeftTrail), and
// today's work as one piece.
//
// FLAW (failed before the mend): TestReview25ZeroizeSRKRefusalStillSendsToRepair,
// TestReview25DaemonsNextRequestPutsTheEvictedSRKBack.

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/provd/provd/audit"
	"github.com/provd/provd/tpm"
)

// FLAW (failed before the mend): TestReview25ZeroizeSRKRefusalStillSendsToRepair (two honest officer
// processes and one crash, as review 24's
// TestReview24ZeroizeSRKRefusalSaysWhatItLeft: review23MarkWhileDestroying,
// one-shot and daemon).
//
// Attack: the officer's reanchor marks its move and is killed while
// zeroize --srk destroys. zeroize's last record waits (finishMove refuses
// while the gate is held), and aa859f5 wraps the error in
// zeroizeLeftTrail: "the keys are destroyed, the audit trail is not
// removed: <errMoveUnfinished>; run provd zeroize again (with the same
// options) to finish". errMoveUnfinished's own text is still inside it:
// "the next audited operation, or provd audit repair, makes the move
// again". The operator follows the first way the message names (audit
// repair; or any audited operation, e.g. provd status --verify or a seal).
//
// Expected: review 24's finding ("its advice, audit repair, put the
// evicted SRK back") mended whole: zeroize's refusal names only zeroize run
// again as the way out; and whichever way it names, the SRK zeroize
// evicted, and reported and recorded evicted (srk_evicted true, in the
// waiting record), stays gone (the threat model: "What zeroize reports
// removed is removed").
//
// Observed: the message still names provd audit repair and the next
// audited operation as the way; audit repair makes the move
// (newGatedAnchor: a.t.SRK() creates and persists the SRK again), then
// writes the waiting zeroize record (srk_evicted true) into the trail: the
// SRK is at 0x81000001 again while the trail records it evicted, and the
// repair succeeded, so nothing tells the operator that zeroize is still to
// be run.
//
// Suggested mend: zeroizeLeftTrail must not carry errMoveUnfinished's
// text (a zeroize-specific error that still matches errors.Is
// errMoveUnfinished, its text naming only provd zeroize again); and a
// move made again (finishMove) where a waiting zeroize record says
// srk_evicted true, or where this TPM's SRK was evicted, refuses to
// create the SRK (the record waits for zeroize run again), or re-evicts
// and records it.
func TestReview25ZeroizeSRKRefusalStillSendsToRepair(t *testing.T) {
	for _, daemon := range []bool{false, true} {
		t.Run(fmt.Sprintf("daemon=%v", daemon), func(t *testing.T) {
			ctx := context.Background()
			env, dir, _, _, res, zerr, srkBack := review23MarkWhileDestroying(t, daemon, true)
			if !errors.Is(zerr, errMoveUnfinished) || !res.SRKEvicted || srkBack {
				t.Fatalf("not mounted: zeroize --srk under a mark placed while it destroys: %v (srk_evicted %v, SRK there %v)", zerr, res.SRKEvicted, srkBack)
			}
			msg := zerr.Error()
			for _, way := range []string{"audit repair", "next audited operation"} {
				if strings.Contains(msg, way) {
					t.Errorf("zeroize --srk's refusal still names %q as a way out (it makes the move, which needs the evicted SRK): %q", way, msg)
				}
			}
			// Follow the way the message names first.
			_, rerr := review8Agent(t, env.TPM, dir).AuditRepair(ctx, false)
			_, serr := env.TPM.ReadPublic(tpm.SRKHandle)
			var evicted []string
			if recs, err := audit.ReadRecords(dir + "/" + audit.FileName); err == nil {
				for _, r := range recs {
					if r.Op == "zeroize" && r.Objects["srk_evicted"] == "true" {
						evicted = append(evicted, r.Op)
					}
				}
			}
			t.Logf("audit repair as the message says: %v; the SRK at its handle after: %v; zeroize records saying srk_evicted true in the live trail: %d", rerr, serr == nil, len(evicted))
			if serr == nil {
				t.Errorf("after zeroize --srk (reported srk_evicted true) and the audit repair its message names (%v), the SRK is at 0x%08x again; the live trail holds %d zeroize record(s) saying it was evicted",
					rerr, uint32(tpm.SRKHandle), len(evicted))
			}
		})
	}
}

// FLAW (failed before the mend): TestReview25DaemonsNextRequestPutsTheEvictedSRKBack (the same
// crash, in the daemon; no operator step at all).
//
// Attack: as TestReview25ZeroizeSRKRefusalStillSendsToRepair, zeroize
// --srk runs in the daemon and is refused its last record under the
// mark placed while it destroyed (keys destroyed, SRK evicted, the record
// waiting). The daemon goes on serving: the next request any local
// client sends (here one the daemon refuses for its role, which it
// records: RecordRefusal, agent/server) is an audited operation.
//
// Expected: the SRK the daemon's zeroize evicted, reported and recorded
// evicted, stays gone until zeroize is run again (or a new provision);
// the request's record waits as zeroize's does.
//
// Observed: the request's record opens the trail, finishMove makes the
// move (the gate is no longer held: zeroize returned), newGatedAnchor's
// a.t.SRK() creates and persists the SRK again, and the waiting zeroize
// record (srk_evicted true) is written into the moved trail: any local
// process undoes zeroize --srk's eviction by sending one request, and the
// trail says the SRK was evicted while it is there.
//
// Suggested mend: as above: a move made again refuses to create an SRK
// this process evicted (tpm.TPM's srkEvicted) or that a waiting zeroize
// record says is evicted; the record waits for zeroize run again.
func TestReview25DaemonsNextRequestPutsTheEvictedSRKBack(t *testing.T) {
	ctx := context.Background()
	env, _, z, _, res, zerr, srkBack := review23MarkWhileDestroying(t, true, true)
	if !errors.Is(zerr, errMoveUnfinished) || !res.SRKEvicted || srkBack {
		t.Fatalf("not mounted: %v (srk_evicted %v, SRK there %v)", zerr, res.SRKEvicted, srkBack)
	}
	rerr := z.RecordRefusal(ctx, "seal", "not in the sealers group")
	_, serr := env.TPM.ReadPublic(tpm.SRKHandle)
	t.Logf("the daemon's next (refused) request: its record %v; the SRK at its handle after: %v", rerr, serr == nil)
	if serr == nil {
		t.Errorf("zeroize --srk in the daemon reported srk_evicted true; one refused request later the SRK is at 0x%08x again", uint32(tpm.SRKHandle))
	}
}
