package agent

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review27ReplaceAnchor is A2 (the owner hierarchy open: status warns of
// it) removing the trail's anchor and defining an index of its own at the
// handle, the case whose documented way out is the officer's reanchor
// ("A stray write is not a dead end"). It needs no SRK.
func review27ReplaceAnchor(t *testing.T, tp *tpm.TPM) {
	t.Helper()
	if err := tp.UndefineNV(AuditAnchorHandle); err != nil && !errors.Is(err, tpm.ErrNotFound) {
		t.Fatalf("not mounted: A2's undefine of the anchor: %v", err)
	}
	pub := tpm2.TPMSNVPublic{
		NVIndex: AuditAnchorHandle,
		NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{NT: tpm2.TPMNTExtend, OwnerWrite: true, OwnerRead: true, AuthWrite: true, AuthRead: true,
			NoDA: true},
		DataSize: 32,
	}
	if _, err := tp.DefineNV(pub); err != nil {
		t.Fatalf("not mounted: A2's index at the anchor's handle: %v", err)
	}
}

// review27Waiting reads the zeroize-op records waiting in dir's pending file.
func review27Waiting(t *testing.T, dir string) []audit.Record {
	t.Helper()
	b, err := os.ReadFile((&Agent{dir: dir}).pendingPath())
	if err != nil {
		return nil
	}
	recs, err := readPending(b)
	if err != nil {
		t.Fatal(err)
	}
	var zs []audit.Record
	for _, r := range recs {
		if r.Op == opZeroize {
			zs = append(zs, r)
		}
	}
	return zs
}

// FLAW (failed before the mend): TestReview27RefusedZeroizeRequestBlocksTheOfficersWayOut (any local
// client the daemon serves, with no role at all, plus A2 or any fault that
// keeps a record from the trail).
//
// Attack: the trail cannot take a record for a while: here A2 replaces the
// anchor index (owner hierarchy open), the case the threat model answers
// with the officer's `provd audit reanchor` ("A stray write is not a dead
// end"); a TPM fault, a marked move, or the log's lock held by another
// process lead to the same pending records. Meanwhile a local client asks
// the daemon to zeroize (POST /v1/zeroize) without the officer role: the
// server refuses it and records the refusal (server.refuse ->
// Agent.RecordRefusal(ctx, ep.Op = "zeroize", why)); the trail refusing it,
// the refusal record waits in audit.pending with op "zeroize".
// zeroizeWaits (waitingZeroize) counts every pending record whose op is
// "zeroize" as zeroize's last record.
//
// Expected: a refused zeroize request destroyed nothing and is no zeroize:
// the officer's reanchor takes the replaced anchor as it does without it
// (control subtest), and no message says the keys are destroyed.
//
// Observed: the officer's reanchor is refused with errZeroizeUnfinished ("a
// zeroize destroyed the keys and left the audit trail ... provd zeroize run
// again finishes"), and so is every audited operation (finishMove, under
// any later mark); the only way out it names is to zeroize for real, which
// its zeroize-start record, refused by the replaced anchor, does not even
// allow: nothing moves the trail, and the message tells the officer to
// destroy every key. (A recovered panic's record, RecordFault(ctx,
// "zeroize", ...), and a failed zeroize's own record with the keys intact
// are counted the same.)
//
// Suggested mend: mark zeroize's waiting last record unmistakably (its own
// op, e.g. "zeroize-left-trail", or a field only Zeroize writes after its
// keys are destroyed, checked with Result "ok" or srk/objects present), or
// keep a separate marker file zeroize alone writes and clears; and let the
// officer's reanchor go on where zeroize run again cannot (see
// TestReview27WaitingZeroizeAndAReplacedAnchorIsADeadEnd).
func TestReview27RefusedZeroizeRequestBlocksTheOfficersWayOut(t *testing.T) {
	ctx := context.Background()
	for _, refusedZeroize := range []bool{false, true} {
		name := "control"
		if refusedZeroize {
			name = "a refused zeroize request waits"
		}
		t.Run(name, func(t *testing.T) {
			env := swtpmtest.Start(t)
			dir := t.TempDir() + "/state"
			d, err := New(Config{TPM: env.TPM, StateDir: dir, KeepSession: true})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close() })
			if _, err := d.Provision(ctx, review8Req()); err != nil {
				t.Fatal(err)
			}
			if _, err := d.Seal(ctx, api.SealRequest{Data: []byte("kept")}); err != nil {
				t.Fatal(err)
			}
			review27ReplaceAnchor(t, env.TPM)
			if refusedZeroize {
				rerr := d.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 1000}), "zeroize", "zeroize needs the officer role; uid 1000 holds none")
				if rerr == nil || len(review27Waiting(t, dir)) != 1 {
					t.Fatalf("not mounted: the refusal's record: %v, zeroize-op records waiting %d", rerr, len(review27Waiting(t, dir)))
				}
				t.Logf("the refusal's record: %v", rerr)
			}
			_, serr := d.Seal(ctx, api.SealRequest{Data: []byte("x")})
			t.Logf("a seal after: %v", serr)
			if serr != nil && strings.Contains(serr.Error(), "destroyed the keys") {
				t.Errorf("no key was destroyed, and a seal's refusal says a zeroize destroyed the keys: %v", serr)
			}
			res, err := d.AuditReanchor(ctx)
			if err != nil {
				t.Fatalf("the officer's audit reanchor, the way out of a replaced anchor, is refused: %v", err)
			}
			t.Logf("reanchor: found %q", res.Found)
			if _, err := d.Seal(ctx, api.SealRequest{Data: []byte("y")}); err != nil {
				t.Errorf("a seal after the officer's reanchor: %v", err)
			}
		})
	}
}

// FLAW (failed before the mend): TestReview27WaitingZeroizeAndAReplacedAnchorIsADeadEnd (the
// officer's killed reanchor and zeroize --srk of review 23's mount, then A2
// with the owner hierarchy open; or any fault that keeps zeroize's last
// record, and then A2).
//
// Attack: review26Mount (zeroize --srk destroyed the keys, evicted the
// SRK, its last record waits, the officer's interrupted move marked). A2
// then puts an index of its own at the anchor's handle.
//
// Expected: some way out: the officer's reanchor (the way out of a replaced
// anchor everywhere else: it records what it found, archives or keeps the
// trail, and anchors anew), or zeroize run again, which then records the
// tampering and finishes.
//
// Observed: zeroize run again is refused, nothing destroyed (its open
// makes the move, finds A2's index: tampering); the officer's reanchor is
// refused with errZeroizeUnfinished, which names zeroize run again; audit
// repair too. Nothing moves the trail; every audited operation is refused
// for good (only editing audit.pending by hand gets out).
//
// Suggested mend: the officer's reanchor refuses under a waiting zeroize
// only while zeroize run again can finish; where the trail is tampered
// (the move's handle holds another's index, the log contradicts its
// anchor) it reanchors without the SRK zeroize evicted (a gate loaded under
// no SRK, or an ungated anchor recorded as such, or the SRK created and
// evicted again in the same operation, recorded), writes the waiting
// zeroize record into the new trail and removes it as zeroize would; or
// zeroize run again, in that case, archives the trail as evidence and
// removes it (recording what it found at the handle).
func TestReview27WaitingZeroizeAndAReplacedAnchorIsADeadEnd(t *testing.T) {
	ctx := context.Background()
	env, dir, a, _ := review26Mount(t, false)
	review27ReplaceAnchor(t, env.TPM)
	_, zerr := a.Zeroize(ctx, api.ZeroizeOptions{SRK: true})
	t.Logf("zeroize --srk again: %v", zerr)
	if zerr == nil {
		return
	}
	o := review8Agent(t, env.TPM, dir)
	_, rerr := o.AuditReanchor(ctx)
	t.Logf("the officer's reanchor: %v", rerr)
	if rerr == nil {
		return
	}
	_, perr := o.AuditRepair(ctx, false)
	t.Logf("audit repair: %v", perr)
	if perr == nil {
		return
	}
	t.Errorf("zeroize's record waits and A2 replaced the anchor: zeroize again (%v), the officer's reanchor (%v) and audit repair (%v) are all refused: no way out",
		zerr, rerr, perr)
	if review26SRKThere(env) {
		t.Errorf("and the SRK is back")
	}
}

// FLAW (the same root as TestReview27RefusedZeroizeRequestBlocksTheOfficersWayOut):
// TestReview27RefusedZeroizeRequestUnderAMarkBlocksEveryOperation (an
// honest officer's reanchor interrupted by a fault, one more fault, and a
// local client with no role).
//
// Attack: the officer's reanchor fails after its mark (its NV_UndefineSpace
// refused: a fault), leaving the move for the next audited operation. A
// local client asks the daemon to zeroize without the officer role; the
// refusal's record makes the move again, which a fault fails (here its
// NV_DefineSpace answered TPM_RC_NV_SPACE): the refusal waits in
// audit.pending with op "zeroize".
//
// Expected: the next audited operation makes the move again and goes on (as
// it does after any interrupted move: TestInterruptedAnchorMove), the
// refusal's record written into the trail.
//
// Observed: every audited operation (here a seal), audit repair and the
// officer's reanchor are refused with errZeroizeUnfinished ("a zeroize
// destroyed the keys ... provd zeroize run again finishes"): no key was
// destroyed, and the only way out left is to destroy them all.
//
// Suggested mend: as TestReview27RefusedZeroizeRequestBlocksTheOfficersWayOut.
func TestReview27RefusedZeroizeRequestUnderAMarkBlocksEveryOperation(t *testing.T) {
	bz := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bz))
	ctx := context.Background()
	dir := t.TempDir() + "/state"
	first := review8Agent(t, env.TPM, dir)
	if _, err := first.Provision(ctx, review8Req()); err != nil {
		t.Fatal(err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	fail := func(cc tpm2.TPMCC, rc tpm2.TPMRC) swtpmtest.Hook {
		return func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
			if swtpmtest.CommandCode(cmd) == cc {
				return swtpmtest.ErrorAnswer(rc), nil, true
			}
			return nil, nil, false
		}
	}
	bz.Set(fail(tpm2.TPMCCNVUndefineSpace, tpm2.TPMRCNVLocked))
	officer := review8Agent(t, env.TPM, dir)
	_, rerr := officer.AuditReanchor(ctx)
	bz.Set(nil)
	if err := officer.Close(); err != nil {
		t.Fatal(err)
	}
	if g := review21Gate(t, dir); rerr == nil || g.Moving == nil {
		t.Fatalf("not mounted: the reanchor %v", rerr)
	}
	d, err := New(Config{TPM: env.TPM, StateDir: dir, KeepSession: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	bz.Set(fail(tpm2.TPMCCNVDefineSpace, tpm2.TPMRCNVSpace))
	ferr := d.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 1000}), "zeroize", "zeroize needs the officer role; uid 1000 holds none")
	bz.Set(nil)
	if ferr == nil || len(review27Waiting(t, dir)) != 1 {
		t.Fatalf("not mounted: the refusal's record %v; zeroize-op records waiting %d", ferr, len(review27Waiting(t, dir)))
	}
	t.Logf("the refusal's record: %v", ferr)
	_, serr := d.Seal(ctx, api.SealRequest{Data: []byte("x")})
	_, perr := d.AuditRepair(ctx, false)
	_, aerr := d.AuditReanchor(ctx)
	t.Logf("seal: %v; audit repair: %v; the officer's reanchor: %v", serr, perr, aerr)
	for what, err := range map[string]error{"a seal": serr, "audit repair": perr, "the officer's reanchor": aerr} {
		if errors.Is(err, errZeroizeUnfinished) {
			t.Errorf("no key destroyed, a refused zeroize request's record waiting: %s is refused as if a zeroize had destroyed the keys: %v", what, err)
		}
	}
}
