package agent

// The twenty-third review: f6536d5, zeroize's refusal under another's
// unfinished move mark (errMoveUnfinished: the keys destroyed and
// recorded, the trail whole; zeroize again finishes the move at its open
// and removes the trail).
//
// FLAW (failed before the mend): TestReview23ZeroizeSRKMovesWithTheHeldGate.
// HELD: TestReview23ZeroizeRefusedUnderAMarkHasWaysOut,
// TestReview23ZeroizeUnderAMarkPlacedWhileItDestroys.

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
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

// HELD: TestReview23ZeroizeRefusedUnderAMarkHasWaysOut. Review 22's
// attack (the officer's reanchor of the trail marks its move between
// zeroize's last record and zeroize's hold of the log's lock, and is
// killed), in the states the mend must hold in:
//   - the move killed before it removed the old index (the mark only), or
//     after it removed the old index and defined its own (here done on
//     the bus, right after zeroize's last record's extend: the handle
//     holds the mark's own unwritten index, the trail's anchor gone);
//   - zeroize one-shot or in the daemon (KeepSession, a request served
//     first: its open log and kept session), with --srk (the SRK evicted
//     and the trail's gate held, a.heldGate) or without;
//   - the way out after the refusal: zeroize again (the daemon's own
//     agent), audit repair then zeroize, the officer's reanchor then
//     zeroize, or a new provision (the zeroized state has no PK, its trail
//     has lines: no never-begun drop) then zeroize.
//
// Held: zeroize refuses with errMoveUnfinished, audit.gate and the log
// left in place; each way out finishes the move (its record, naming the
// mark's gate, is in a file of the state directory; the officer's
// reanchor copies it, interrupted_move.*, which names no gate) and the last zeroize
// removes it all: no audit.gate, no live log, nothing at the anchor's or
// the gate's handle, the SRK gone after --srk.
func TestReview23ZeroizeRefusedUnderAMarkHasWaysOut(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		daemon, srk, defined bool
		way                  string
	}{
		{false, false, true, "zeroize"},
		{false, true, true, "zeroize"},
		{true, false, false, "zeroize"},
		{true, true, true, "zeroize"},
		{false, false, true, "repair"},
		{false, true, false, "reanchor"},
		{false, true, true, "reanchor"},
		{false, true, true, "provision"},
		{true, false, true, "provision"},
	} {
		t.Run(fmt.Sprintf("daemon=%v/srk=%v/defined=%v/%s", c.daemon, c.srk, c.defined, c.way), func(t *testing.T) {
			review23ZeroizeWayOut(t, c.daemon, c.srk, c.defined, c.way)
		})
	}
}

func review23ZeroizeWayOut(t *testing.T, daemon, srk, defined bool, way string) {
	bz := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bz))
	ctx := context.Background()
	dir := t.TempDir() + "/state"
	_, g2, _, mark := zeroizeMarkMount(t, env, bz, dir)
	gatePath := filepath.Join(dir, gateFile)
	gn, err := hex.DecodeString(g2.Name)
	if err != nil {
		t.Fatal(err)
	}
	movePub, err := tpm.GatedExtendPublic(AuditAnchorHandle, gn, false)
	if err != nil {
		t.Fatal(err)
	}

	var z *Agent
	if daemon {
		var err error
		if z, err = New(Config{TPM: env.TPM, StateDir: dir, KeepSession: true}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { z.Close() })
		if _, err := z.Seal(ctx, api.SealRequest{Data: []byte("served")}); err != nil {
			t.Fatal(err)
		}
	} else {
		z = review8Agent(t, env.TPM, dir)
	}

	var mu sync.Mutex
	extends, placed := 0, false
	var placeErr error
	bz.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) != tpm2.TPMCCNVExtend {
			return nil, nil, false
		}
		rsp, err := next.Send(cmd)
		mu.Lock()
		defer mu.Unlock()
		extends++
		if extends != 2 || placed {
			return rsp, err, true
		}
		placed = true
		if placeErr = os.WriteFile(gatePath, mark, 0o600); placeErr != nil || !defined {
			return rsp, err, true
		}
		// The move went on: the old index removed, its own defined.
		pub, perr := (tpm2.NVReadPublic{NVIndex: AuditAnchorHandle}).Execute(next)
		if perr != nil {
			placeErr = perr
			return rsp, err, true
		}
		if _, perr := (tpm2.NVUndefineSpace{AuthHandle: tpm2.TPMRHOwner, NVIndex: tpm2.NamedHandle{Handle: AuditAnchorHandle, Name: pub.NVName}}).Execute(next); perr != nil {
			placeErr = perr
			return rsp, err, true
		}
		_, placeErr = (tpm2.NVDefineSpace{AuthHandle: tpm2.TPMRHOwner, PublicInfo: tpm2.New2B(movePub)}).Execute(next)
		return rsp, err, true
	})
	res, zerr := z.Zeroize(ctx, api.ZeroizeOptions{SRK: srk})
	bz.Set(nil)
	mu.Lock()
	ok, perr := placed, placeErr
	mu.Unlock()
	if !ok || perr != nil {
		t.Fatalf("not mounted: the mark placed %v (%v) after zeroize's last record (%d extends): %v", ok, perr, extends, zerr)
	}
	t.Logf("zeroize: %v; archived %q", zerr, res.AuditLog)
	if !errors.Is(zerr, errMoveUnfinished) {
		t.Fatalf("zeroize under the unfinished move's mark: %v, want errMoveUnfinished", zerr)
	}
	if g := review21Gate(t, dir); g.Moving == nil || g.Name != g2.Name || !fileExists(filepath.Join(dir, audit.FileName)) {
		t.Fatalf("after the refusal: the mark %v, the log there %v", g.Moving, fileExists(filepath.Join(dir, audit.FileName)))
	}
	if x, err := env.TPM.ReadNVPublic(AuditAnchorHandle); err != nil || defined != g2.ownsIndex(x.Name.Buffer) {
		t.Fatalf("not mounted: the anchor's handle after the refusal: %v", err)
	}
	again := func() *Agent {
		if daemon {
			return z
		}
		return review8Agent(t, env.TPM, dir)
	}
	switch way {
	case "repair":
		if _, err := review8Agent(t, env.TPM, dir).AuditRepair(ctx, false); err != nil {
			t.Fatalf("audit repair after the refusal: %v", err)
		}
	case "reanchor":
		if _, err := review8Agent(t, env.TPM, dir).AuditReanchor(ctx); err != nil {
			t.Fatalf("the officer's reanchor after the refusal: %v", err)
		}
	case "provision":
		p := again()
		if _, err := p.Provision(ctx, review8Req()); err != nil {
			t.Fatalf("a new provision after the refusal: %v", err)
		}
		if _, err := p.Seal(ctx, api.SealRequest{Data: []byte("new")}); err != nil {
			t.Fatalf("a seal after the new provision: %v", err)
		}
		if _, err := p.AuditVerify(ctx); err != nil {
			t.Fatalf("verify after the new provision: %v", err)
		}
	}
	if _, err := review8Agent(t, env.TPM, dir).AuditVerify(ctx); err != nil {
		t.Logf("verify before the last zeroize: %v", err)
	}
	res, zerr = again().Zeroize(ctx, api.ZeroizeOptions{SRK: srk})
	if zerr != nil {
		t.Fatalf("zeroize after %s: %v", way, zerr)
	}
	t.Logf("zeroize after %s: archived %s; indices removed %v", way, filepath.Base(res.AuditLog), res.NVIndices)

	var holders []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		// The move's record: made again, it names the mark's gate; taken
		// over by the officer's reanchor, its record is copied
		// (interrupted_move.*: the officer's uid, what it replaced).
		taken := strings.Contains(string(b), `"interrupted_move.uid"`) && strings.Contains(string(b), g2.Moving.Objects["replaced_nv_name"])
		if err == nil && (strings.Contains(string(b), g2.Name) || taken) {
			holders = append(holders, e.Name())
		}
	}
	if len(holders) == 0 {
		t.Errorf("the unfinished move's record (gate %s…) is in no file", g2.Name[:16])
	}
	review23NothingLeft(t, env, dir, srk)
}

// review23MarkWhileDestroying is review 22's attack one step earlier:
// the officer's reanchor of the trail marks its move (its NV_UndefineSpace
// refused, as it is killed there) while zeroize destroys: here the mark is
// put in place as the first TPM2_GetCapability after zeroize-start's
// extend goes out (the witness's read of leftovers: after zeroize-start
// and, with --srk, the held gate; before the SRK's eviction). Zeroize's
// last record then opens the trail again (openAudit sees the mark) and
// makes the move again in the middle of zeroize. It returns the env, the
// state directory, the zeroizing agent, the mark's gate, zeroize's result
// and error, and whether the SRK is at its handle after it.
func review23MarkWhileDestroying(t *testing.T, daemon, srk bool) (*swtpmtest.Env, string, *Agent, *gateRecord, api.ZeroizeResult, error, bool) {
	t.Helper()
	bz := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bz))
	ctx := context.Background()
	dir := t.TempDir() + "/state"
	_, g2, _, mark := zeroizeMarkMount(t, env, bz, dir)
	var z *Agent
	if daemon {
		var err error
		if z, err = New(Config{TPM: env.TPM, StateDir: dir, KeepSession: true}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { z.Close() })
		if _, err := z.Seal(ctx, api.SealRequest{Data: []byte("served")}); err != nil {
			t.Fatal(err)
		}
	} else {
		z = review8Agent(t, env.TPM, dir)
	}
	res, ok, zerr := zeroizePlacingMark(t, bz, z, dir, mark, srk)
	if !ok {
		t.Fatalf("not mounted: the mark was not placed: %v", zerr)
	}
	_, serr := env.TPM.ReadPublic(tpm.SRKHandle)
	t.Logf("zeroize: %v; srk_evicted %v; archived %q; indices removed %v; the SRK at its handle after: %v", zerr, res.SRKEvicted, filepath.Base(res.AuditLog), res.NVIndices, serr == nil)
	return env, dir, z, g2, res, zerr, serr == nil
}

// review23AllGone checks that nothing of the trail is left after a
// zeroize that succeeded: the mark's record in a file, no audit.gate, no
// live log, nothing at the anchor's or the gate's handle, no SRK after
// --srk.
func review23AllGone(t *testing.T, env *swtpmtest.Env, dir string, g2 *gateRecord, srk bool) {
	t.Helper()
	var holders []string
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if b, err := os.ReadFile(filepath.Join(dir, e.Name())); err == nil && strings.Contains(string(b), g2.Name) {
			holders = append(holders, e.Name())
		}
	}
	if len(holders) == 0 {
		t.Errorf("the unfinished move's record (gate %s…) is in no file", g2.Name[:16])
	}
	review23NothingLeft(t, env, dir, srk)
}

// review23NothingLeft checks that a zeroize left nothing of the trail in
// dir and the TPM: no audit.gate, no live log, nothing at the anchor's or
// the gate's handle, and no SRK after --srk.
func review23NothingLeft(t *testing.T, env *swtpmtest.Env, dir string, srk bool) {
	t.Helper()
	for _, f := range []string{gateFile, audit.FileName} {
		if fileExists(filepath.Join(dir, f)) {
			t.Errorf("after zeroize %s is still there", f)
		}
	}
	if x, err := env.TPM.ReadNVPublic(AuditAnchorHandle); err == nil {
		t.Errorf("after zeroize an index is at the anchor's handle (name %x)", x.Name.Buffer)
	}
	if x, err := env.TPM.ReadPublic(AuditGateHandle); err == nil {
		t.Errorf("after zeroize a persistent gate is at 0x%08x (name %x)", uint32(AuditGateHandle), x.Name.Buffer)
	}
	if _, err := env.TPM.ReadPublic(tpm.SRKHandle); srk && err == nil {
		t.Errorf("after zeroize --srk the SRK is at 0x%08x", uint32(tpm.SRKHandle))
	}
}

// HELD: TestReview23ZeroizeUnderAMarkPlacedWhileItDestroys (without
// --srk; one-shot and daemon). The officer's reanchor marks its move and
// is killed while zeroize destroys (review23MarkWhileDestroying): zeroize's
// last record makes the move again (the trail's own gate, persistent,
// proves the new anchor's first extend, as any record), the zeroize
// record follows it into the trail, and zeroize removes the trail, its
// new anchor and gate.
func TestReview23ZeroizeUnderAMarkPlacedWhileItDestroys(t *testing.T) {
	for _, daemon := range []bool{false, true} {
		t.Run(fmt.Sprintf("daemon=%v", daemon), func(t *testing.T) {
			env, dir, _, g2, _, zerr, _ := review23MarkWhileDestroying(t, daemon, false)
			if zerr != nil {
				t.Fatalf("zeroize: %v", zerr)
			}
			review23AllGone(t, env, dir, g2, false)
		})
	}
}

// FLAW (failed before the mend): TestReview23ZeroizeSRKMovesWithTheHeldGate (two honest officer
// processes and one crash, as review 22's; zeroize --srk).
//
// Attack: zeroize --srk writes zeroize-start, loads and holds the trail's
// gate key (holdGate: a.heldGate, for its last record once the SRK is
// gone) and starts destroying. Meanwhile the officer's one-shot `audit
// reanchor` of the trail takes the log's lock (free while zeroize
// destroys), writes its move's mark and is killed before it removes the
// old index (review23MarkWhileDestroying). Zeroize evicts the SRK, then
// writes its last record: its openAudit sees the mark and makes the move
// again (finishMove), in the middle of zeroize.
//
// Expected: the move made again is finished (its new anchor's first
// extend proven by the move's own gate) and the zeroize record follows
// it, then zeroize removes the trail; or zeroize leaves the move to its
// next run (errMoveUnfinished, as f6536d5 does under its hold). Either
// way zeroize --srk ends with no SRK at its handle, as its record says
// (srk_evicted), and no officer is needed.
//
// Observed: trailAnchor.withGate takes the held gate whatever the gate
// record asks for: the move's audit-anchor record is proven with the old
// trail's gate against the new index, TPM_RC_POLICY_FAIL: "line N written
// but not anchored". Zeroize fails (its record pending), and every
// zeroize after it is refused, nothing destroyed ("lines at the end of the
// log are not anchored") until the officer's audit repair --anchor-last:
// a fault provd made itself, which the threat model leaves to a lost
// extend (a crash, A1). And newGatedAnchor's a.t.SRK() put the SRK zeroize
// had just evicted back at 0x81000001 (TPM2_CreatePrimary, EvictControl),
// while zeroize reports srk_evicted and its pending record says so.
//
// Suggested mend: withGate uses a.heldGate only for the gate it was loaded
// from (compare the held gate's name with g.Name; otherwise load g's as
// usual); and zeroize does not make a move at all once it has begun to
// destroy: its last record under another's mark is kept pending (as
// Prepare already refuses it) and zeroize ends with errMoveUnfinished, or
// finishMove refuses to persist an SRK a zeroize --srk evicted (the TPM's
// srkEvicted).
func TestReview23ZeroizeSRKMovesWithTheHeldGate(t *testing.T) {
	for _, daemon := range []bool{false, true} {
		t.Run(fmt.Sprintf("daemon=%v", daemon), func(t *testing.T) {
			ctx := context.Background()
			env, dir, z, g2, res, zerr, srkBack := review23MarkWhileDestroying(t, daemon, true)
			if srkBack {
				t.Errorf("after zeroize --srk (srk_evicted %v, error %v) the SRK is at 0x%08x again", res.SRKEvicted, zerr, uint32(tpm.SRKHandle))
			}
			if zerr != nil && !errors.Is(zerr, errMoveUnfinished) {
				t.Errorf("zeroize --srk under a mark placed while it destroys: %v; want it done, or errMoveUnfinished", zerr)
			}
			again := func() *Agent {
				if daemon {
					return z
				}
				return review8Agent(t, env.TPM, dir)
			}
			if zerr != nil {
				res, zerr = again().Zeroize(ctx, api.ZeroizeOptions{SRK: true})
				t.Logf("zeroize again: %v", zerr)
			}
			if zerr != nil {
				t.Errorf("zeroize again refused: %v", zerr)
				_, rerr := review8Agent(t, env.TPM, dir).AuditRepair(ctx, true)
				t.Logf("the officer's audit repair --anchor-last: %v", rerr)
				res, zerr = again().Zeroize(ctx, api.ZeroizeOptions{SRK: true})
				t.Logf("zeroize after it: %v", zerr)
			}
			if zerr != nil {
				t.Fatalf("zeroize: %v", zerr)
			}
			review23AllGone(t, env, dir, g2, true)
		})
	}
}

// Zeroize --srk holds its trail's gate for its last records (holdGate);
// another process's move that completes while zeroize destroys (the
// officer's reanchor, on its own connection, run when zeroize reads the
// TPM's leftovers) gives the trail a new gate. Zeroize's last record is
// proved with the new trail's gate, not with the held one: zeroize
// completes, and nothing is left. Failed before the mend (the held gate
// used for whatever gate audit.gate named): the record's extend was
// refused (TPM_RC_POLICY_FAIL), its line left unanchored, and every later
// zeroize refused until the officer's audit repair.
func TestZeroizeSRKAfterAMoveCompletedWhileItDestroys(t *testing.T) {
	env, bz, dir, g1, rtp, _ := twoProcessesMount(t)
	ctx := context.Background()
	var mu sync.Mutex
	extends, moved := 0, false
	var rerr error
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
		}
		return nil, nil, false
	})
	z := review8Agent(t, env.TPM, dir)
	res, zerr := z.Zeroize(ctx, api.ZeroizeOptions{SRK: true})
	bz.Set(nil)
	mu.Lock()
	ok, oerr := moved, rerr
	mu.Unlock()
	if !ok || oerr != nil {
		t.Fatalf("not mounted: the officer's reanchor while zeroize destroys: ran %v, %v", ok, oerr)
	}
	t.Logf("zeroize: %v; archived %q; indices removed %v", zerr, filepath.Base(res.AuditLog), res.NVIndices)
	if zerr != nil {
		t.Fatalf("zeroize after another's completed move: %v", zerr)
	}
	recs, err := audit.ReadRecords(res.AuditLog)
	if err != nil {
		t.Fatal(err)
	}
	var moveAt, zeroizeAt = -1, -1
	for i, r := range recs {
		switch {
		case r.Op == audit.OpAnchor && r.Objects["gate_key"] != g1.Name:
			moveAt = i
		case r.Op == "zeroize":
			zeroizeAt = i
		}
	}
	if moveAt < 0 || zeroizeAt < moveAt {
		t.Errorf("the archived trail: the move's record at %d, zeroize's at %d; want zeroize's after the move's", moveAt, zeroizeAt)
	}
	review23NothingLeft(t, env, dir, true)
}

// zeroizePlacingMark runs z's zeroize (--srk with srk), putting mark in
// dir's audit.gate as its first TPM2_GetCapability after zeroize-start's
// extend goes out (the witness's read of leftovers: after zeroize-start
// and, with --srk, the held gate; before the SRK's eviction): another
// process's move marked while zeroize destroys. It returns zeroize's
// result, whether the mark was placed, and zeroize's error.
func zeroizePlacingMark(t *testing.T, bz *swtpmtest.Bus, z *Agent, dir string, mark []byte, srk bool) (api.ZeroizeResult, bool, error) {
	t.Helper()
	gatePath := filepath.Join(dir, gateFile)
	var mu sync.Mutex
	placed, extends := false, 0
	bz.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		cc := swtpmtest.CommandCode(cmd)
		if cc == tpm2.TPMCCNVExtend {
			extends++
		}
		if extends == 1 && cc == tpm2.TPMCCGetCapability && !placed {
			placed = os.WriteFile(gatePath, mark, 0o600) == nil
		}
		return nil, nil, false
	})
	res, zerr := z.Zeroize(context.Background(), api.ZeroizeOptions{SRK: srk})
	bz.Set(nil)
	mu.Lock()
	defer mu.Unlock()
	return res, placed, zerr
}
