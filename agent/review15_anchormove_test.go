package agent_test

// The fifteenth review: attacks and faults on the mend "a crash or a fault
// while the trail moves to a new anchor is not a dead end" (ea5eade:
// gateRecord.Moving, finishMove, moveUnfinished, endMove; 6463338:
// audit.Reanchor cuts a torn tail).
//
// Tests marked FLAW failed on the code under review (each, before the
// mend that follows it: the move's whole record and the names the handle
// may hold kept in the mark, the decision and the mark's clearing under
// the log's lock, audit.Reanchor's cut after the new anchor stands); tests
// marked Held passed and assert the property that held.
//
// FLAW: TestReview15HiddenIndexInAMoveLeavesATamperedTrailForGood (A1, one
// forged NV_ReadPublic: stuck for the officer), TestReview15CrashInTheMoveMadeAgain
// (a crash in finishMove's own move: stuck), TestReview15MarkLeftByAKilledCLIUnderAnOpenDaemonLog
// (the daemon appends under a stale mark: verification off, a spurious
// move), TestReview15MarkedTrailWithoutPKTakesAnotherStatesAnchor (the
// third review's no-trail-no-PK rule bypassed), TestReview15MoveMadeAgainDropsTheOfficersFindings,
// TestReview15StaleMarkNamesTheWrongReplacedIndex, TestReview15KilledAfterEvictingAForeignKeyLosesItsName
// (evidence), TestReview15ConcurrentProcessMakesTheMoveAgain
// (review15_concurrent_internal_test.go), audit.TestReview15ReanchorCutBeforeAFailedResetIsNotRecorded.
// Held: TestReview15OfficersReanchorArchivesATornLog, TestReview15StaleMarkIsClearedNotMoved,
// audit.TestReview15ReanchorLeavesABrokenLogUntouched; no gate value in
// any error (in TestReview15CrashInTheMoveMadeAgain); the command counts
// (TestReview7CommandCountsAsClaimed, TestKeyCosts pass).

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review15IsAnchorNVReadPublic: cmd is TPM2_NV_ReadPublic of the audit
// anchor's handle.
func review15IsAnchorNVReadPublic(cmd []byte) bool {
	return len(cmd) >= 14 && swtpmtest.CommandCode(cmd) == tpm2.TPMCCNVReadPublic &&
		tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == agent.AuditAnchorHandle
}

// review15HideAnchorOnce is A1 answering one TPM2_NV_ReadPublic of the
// anchor's handle "no such index" (TPM_RC_HANDLE, handle 1: the answer has
// no HMAC), once armed returns true (nil: at once). hidden counts it.
func review15HideAnchorOnce(armed func(cmd []byte) bool, hidden *int) swtpmtest.Hook {
	var mu sync.Mutex
	on := armed == nil
	return func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		if !on {
			on = armed(cmd)
			return nil, nil, false
		}
		if *hidden > 0 || !review15IsAnchorNVReadPublic(cmd) {
			return nil, nil, false
		}
		*hidden++
		return swtpmtest.ErrorAnswer(tpm2.TPMRCHandle + 0x100), nil, true
	}
}

// FLAW. A1 answers the one TPM2_NV_ReadPublic a move makes of the anchor's
// handle (newGatedAnchor's; no HMAC) "no such index", once, and is gone
// after. The move writes audit.gate with the new gate and the mark, its
// evidence "nothing was there" (replaced_nv_name empty), removes nothing,
// and its NV_DefineSpace fails (the old index is there: TPM_RC_NV_DEFINED).
// From then on finishMove finds the old index at the handle, which is
// neither "nothing" (the mark's evidence) nor the move's own, and refuses
// every audited operation as tampered, for good: only the officer's
// reanchor gets out. Before the mend the same answer was a refusal only
// (audit.gate was written after the define: nothing had changed), which is
// what the threat model still says ("A1 hiding the index makes the move's
// own define fail, a refusal only"). Shown for the officer's reanchor and
// for provision's move of a trail begun before first contact (then no
// provision works: provision is refused as tampered too).
func TestReview15HiddenIndexInAMoveLeavesATamperedTrailForGood(t *testing.T) {
	t.Run("officer's reanchor", func(t *testing.T) {
		ctx := context.Background()
		b := &swtpmtest.Bus{}
		_, ag, dir := provisionedBehind(t, b)
		hidden := 0
		b.Set(review15HideAnchorOnce(nil, &hidden))
		_, err := ag.AuditReanchor(ctx)
		b.Set(nil)
		if hidden != 1 || err == nil {
			t.Fatalf("not mounted: reanchor with the anchor hidden once: %v (%d hidden)", err, hidden)
		}
		t.Logf("the reanchor with the anchor hidden: %v; audit.gate's moving: %v", err, editGate(t, dir, nil)["moving"])
		_, serr := ag.Seal(ctx, api.SealRequest{Data: []byte("after A1 left")})
		_, rerr := ag.AuditRepair(ctx, false)
		_, verr := ag.AuditVerify(ctx)
		t.Logf("after A1 left: seal %v (exit %d); audit repair %v; verify %v", serr, api.ExitCode(serr), rerr, verr)
		if serr != nil {
			t.Errorf("one forged NV_ReadPublic in a move, A1 gone: the next seal is refused (%v, exit %d) and audit repair does not help (%v): "+
				"the trail is stuck for the officer, where it was a refusal only before the mark", serr, api.ExitCode(serr), rerr)
		}
	})
	t.Run("provision's move of a trail begun before first contact", func(t *testing.T) {
		ctx := context.Background()
		b := &swtpmtest.Bus{}
		env := swtpmtest.Start(t, swtpmtest.WithBus(b))
		dir := stateDir(t)
		ag := newAgent(t, env, dir)
		req := review7Req(false)
		req.TrustOnFirstUse = false
		if _, err := ag.Provision(ctx, req); err == nil {
			t.Fatal("not mounted: provision without trust in the TPM worked")
		}
		if g := editGate(t, dir, nil); g["gate_name"] == nil || g["srk_name"] != nil {
			t.Fatalf("not mounted: audit.gate is %v, want a gate made before first contact", g)
		}
		// Armed at the first contact's CreatePrimary: the next read of the
		// anchor's public is the move's (gateThroughPinnedSRK).
		hidden := 0
		b.Set(review15HideAnchorOnce(func(cmd []byte) bool { return swtpmtest.CommandCode(cmd) == tpm2.TPMCCCreatePrimary }, &hidden))
		_, err := ag.Provision(ctx, review7Req(false))
		b.Set(nil)
		if hidden != 1 || err == nil {
			t.Fatalf("not mounted: provision with the anchor hidden once in its move: %v (%d hidden)", err, hidden)
		}
		t.Logf("provision with the anchor hidden: %v; audit.gate's moving: %v", err, editGate(t, dir, nil)["moving"])
		_, perr := ag.Provision(ctx, review7Req(false))
		_, rerr := ag.AuditRepair(ctx, false)
		t.Logf("after A1 left: provision %v (exit %d); audit repair %v", perr, api.ExitCode(perr), rerr)
		if perr != nil {
			t.Errorf("one forged NV_ReadPublic in provision's move, A1 gone: provision is refused (%v, exit %d), audit repair does not help (%v)",
				perr, api.ExitCode(perr), rerr)
		}
	})
}

// FLAW. A crash in the move made again. The officer's reanchor is cut off
// right after its NV_DefineSpace ran (the answer lost: the index is the
// move's own, unwritten); the next operation makes the move again
// (finishMove accepts the move's own index), and that move is cut off
// right after it wrote audit.gate with its own new gate and mark, before
// its NV_UndefineSpace reached the TPM (stood in for by an error answer
// the TPM never saw). The mark's evidence is the first move's (what the
// first move replaced), so the handle now holds the first move's index,
// which is neither that evidence nor the second move's own index:
// finishMove says tampered, every audited operation is refused, and
// audit repair cannot help: only the officer's reanchor. One crash point
// of a move (the recovery's own) after which the state does not recover.
// The errors never carry the gate's authorization value (held).
func TestReview15CrashInTheMoveMadeAgain(t *testing.T) {
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	env, ag, dir := provisionedBehind(t, b)
	sent := 0
	b.Set(swtpmtest.RanThenAnswered(tpm2.TPMCCNVDefineSpace, tpm2.TPMRCNVSpace, &sent))
	_, err := ag.AuditReanchor(ctx)
	b.Set(nil)
	if err == nil || sent != 1 {
		t.Fatalf("not mounted: reanchor with its define's answer lost: %v", err)
	}
	x, rerr := env.TPM.ReadNVPublic(agent.AuditAnchorHandle)
	if rerr != nil {
		t.Fatalf("not mounted: the first move's index is not there: %v", rerr)
	}
	first := editGate(t, dir, nil)
	auths := []string{first["gate_auth"].(string)}

	undef := 0
	b.Set(swtpmtest.AnsweredOnce(tpm2.TPMCCNVUndefineSpace, tpm2.TPMRCNVLocked, &undef))
	_, err1 := ag.Seal(ctx, api.SealRequest{Data: []byte("the move made again is cut off")})
	b.Set(nil)
	if err1 == nil || undef != 1 {
		t.Fatalf("not mounted: the move made again with its undefine cut off: %v (%d undefines)", err1, undef)
	}
	second := editGate(t, dir, nil)
	auths = append(auths, second["gate_auth"].(string))
	if y, _ := env.TPM.ReadNVPublic(agent.AuditAnchorHandle); !bytes.Equal(y.Name.Buffer, x.Name.Buffer) {
		t.Fatalf("not mounted: the handle no longer holds the first move's index")
	}
	t.Logf("the handle holds the first move's index %x; audit.gate marks %v", x.Name.Buffer, second["moving"])

	_, err2 := ag.Seal(ctx, api.SealRequest{Data: []byte("after")})
	_, err3 := ag.AuditRepair(ctx, true)
	_, err4 := ag.Seal(ctx, api.SealRequest{Data: []byte("after repair")})
	t.Logf("next seal: %v (exit %d); audit repair --anchor-last: %v; seal after: %v", err2, api.ExitCode(err2), err3, err4)
	for _, e := range []error{err, err1, err2, err3, err4} {
		for _, a := range auths {
			if e != nil && strings.Contains(strings.ToLower(e.Error()), a) {
				t.Errorf("an error carries the gate's authorization value: %v", e)
			}
		}
	}
	if err2 != nil && err4 != nil {
		t.Errorf("a crash in the move made again (after its mark, before its undefine) left a trail that neither the next operation (%v) "+
			"nor audit repair (%v) recovers: only the officer's reanchor", err2, err3)
	}
}

// FLAW (evidence). The officer's reanchor of a trail whose lines were
// edited archives the log and begins a new trail whose first record names
// the archive, its SHA-256, why, and what verify found. A fault after the
// archive and the mark (its NV_DefineSpace refused) leaves a marked move;
// the next seal makes it again by itself, and its record, the new trail's
// first, names none of that: only "a move ... made again" and the replaced
// index. Nothing in the live trail says the old log was archived as
// evidence, nor where, nor that the officer found it tampered. The mark
// keeps the replaced index only (gateRecord.Moving), not the officer's
// objects.
func TestReview15MoveMadeAgainDropsTheOfficersFindings(t *testing.T) {
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	_, ag, dir := provisionedBehind(t, b)
	mustSeal(t, ag)
	p := filepath.Join(dir, audit.FileName)
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	edited := bytes.Replace(data, []byte(`"op":"seal"`), []byte(`"op":"sEal"`), 1)
	if bytes.Equal(edited, data) {
		t.Fatal("not mounted: no seal line to edit")
	}
	if err := os.WriteFile(p, edited, 0o600); err != nil {
		t.Fatal(err)
	}
	sent := 0
	b.Set(swtpmtest.AnsweredOnce(tpm2.TPMCCNVDefineSpace, tpm2.TPMRCNVSpace, &sent))
	_, err = ag.AuditReanchor(ctx)
	b.Set(nil)
	if err == nil || sent != 1 {
		t.Fatalf("not mounted: reanchor with its define refused: %v", err)
	}
	archives := archivedOrMarked(t, dir)
	if len(archives) != 1 {
		t.Fatalf("not mounted: archives %v", archives)
	}
	if _, err := ag.Seal(ctx, api.SealRequest{Data: []byte("after")}); err != nil {
		t.Fatalf("seal after the fault: %v", err)
	}
	if _, err := os.Stat(archives[0]); err != nil {
		t.Errorf("the move made again did not write the archive its mark names: %v", err)
	}
	recs, err := ag.AuditRecords(ctx)
	if err != nil {
		t.Fatal(err)
	}
	first := lastAnchorRecord(t, recs)
	t.Logf("the new trail's audit-anchor record: uid %d %v", first.UID, first.Objects)
	for _, k := range []string{"archived_log", "archived_sha256", "verify_error"} {
		if first.Objects[k] == "" {
			t.Errorf("the move made again after the officer's reanchor archived %s: its record has no %s (the officer's findings are lost)",
				filepath.Base(archives[0]), k)
		}
	}
}

// FLAW (evidence). A crash after a move's record is anchored and before
// its mark is cleared (endMove) leaves audit.gate exactly as the move
// wrote it: the mark with the evidence of the index the move replaced.
// Here the officer's reanchor is run again next (an operator repeating a
// command that was killed): it removes the trail's current anchor, but its
// record names the index the earlier move replaced, and its value, as what
// it replaced (newGatedAnchor swaps in the mark's evidence whenever the
// handle holds the mark's own index, written or not).
func TestReview15StaleMarkNamesTheWrongReplacedIndex(t *testing.T) {
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	env, ag, dir := provisionedBehind(t, b)
	if _, err := ag.AuditReanchor(ctx); err != nil {
		t.Fatal(err)
	}
	recs, err := ag.AuditRecords(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r1 := lastAnchorRecord(t, recs)
	// The crash before endMove: audit.gate as the move left it.
	editGate(t, dir, func(g map[string]any) {
		g["moving"] = map[string]any{"replaced_nv_name": r1.Objects["replaced_nv_name"], "replaced_nv_value": r1.Objects["replaced_nv_value"]}
	})
	cur, err := env.TPM.ReadNVPublic(agent.AuditAnchorHandle)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ag.AuditReanchor(ctx); err != nil {
		t.Fatalf("the officer's reanchor again: %v", err)
	}
	recs, err = ag.AuditRecords(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r2 := lastAnchorRecord(t, recs)
	t.Logf("the second reanchor removed %x; its record says replaced %s", cur.Name.Buffer, r2.Objects["replaced_nv_name"])
	if r2.Objects["replaced_nv_name"] != hex.EncodeToString(cur.Name.Buffer) {
		t.Errorf("the reanchor removed the trail's anchor %x but its record names %s (the earlier move's replaced index) as replaced",
			cur.Name.Buffer, r2.Objects["replaced_nv_name"])
	}
}

// FLAW. A state directory without a PK whose trail has no line yet (a
// refused provision's record began it) and whose first move a fault
// interrupted (NV_DefineSpace refused: the handle stays empty) is left
// with a marked audit.gate. Another state directory then provisions on the
// same TPM (the handle was empty: it is taken without --force, as it should
// be). The first directory now reads as "tampered", not "another state's
// anchor", and provision --force there is refused as tampered; the way out
// the message names, the officer's audit reanchor, is no longer refused
// ("a directory with no trail and no PK has nothing to reanchor": the
// third review's rule looks only at whether audit.gate exists) and takes
// the other state's anchor over: that trail no longer verifies.
func TestReview15MarkedTrailWithoutPKTakesAnotherStatesAnchor(t *testing.T) {
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	xdir := stateDir(t)
	x := newAgent(t, env, xdir)
	req := review7Req(false)
	req.TrustOnFirstUse = false
	sent := 0
	b.Set(swtpmtest.AnsweredOnce(tpm2.TPMCCNVDefineSpace, tpm2.TPMRCNVSpace, &sent))
	_, err := x.Provision(ctx, req)
	b.Set(nil)
	if err == nil || sent != 1 {
		t.Fatalf("not mounted: %v (%d defines)", err, sent)
	}
	if g := editGate(t, xdir, nil); g["moving"] == nil {
		t.Fatalf("not mounted: audit.gate is %v, want a marked move", g)
	}
	if _, err := env.TPM.ReadNVPublic(agent.AuditAnchorHandle); !errors.Is(err, tpm.ErrNotFound) {
		t.Fatalf("not mounted: the handle holds something: %v", err)
	}

	ydir := t.TempDir() + "/other"
	y := newAgent(t, env, ydir)
	if _, err := y.Provision(ctx, review7Req(false)); err != nil {
		t.Fatalf("the other state's provision: %v", err)
	}
	if _, err := y.AuditVerify(ctx); err != nil {
		t.Fatal(err)
	}

	_, perr := x.Provision(ctx, review7Req(true))
	t.Logf("provision --force in the first directory: %v (exit %d)", perr, api.ExitCode(perr))
	if errors.Is(perr, api.ErrTampered) {
		t.Errorf("provision --force in a directory with no PK and no line is refused as tampered: %v", perr)
	}
	if perr == nil {
		t.Logf("(provision --force took the handle over, as told)")
		return
	}
	_, rerr := x.AuditReanchor(ctx)
	_, verr := y.AuditVerify(ctx)
	t.Logf("the first directory's audit reanchor: %v; the other state's verify after it: %v", rerr, verr)
	if rerr == nil || verr != nil {
		t.Errorf("audit reanchor in a directory with no PK and no trail line took another state's anchor over (%v); that trail: %v", rerr, verr)
	}
}

// Held. The officer's reanchor never blesses a torn log, even with the
// cut audit.Reanchor now makes: a trail whose own anchor is intact and
// whose last line is torn is archived (VerifyLinks reports the torn tail),
// not cut in place; the archive keeps the torn bytes.
func TestReview15OfficersReanchorArchivesATornLog(t *testing.T) {
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	_, ag, dir := provisionedBehind(t, b)
	p := filepath.Join(dir, audit.FileName)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	torn := `{"seq":9,"op":"key-delete","uid":0,"obj`
	f.WriteString(torn)
	f.Close()
	res, err := ag.AuditReanchor(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if res.ArchivedLog == "" {
		t.Fatalf("a torn log was kept in place by the officer's reanchor: %+v", res)
	}
	data, err := os.ReadFile(res.ArchivedLog)
	if err != nil || !bytes.HasSuffix(data, []byte(torn)) {
		t.Errorf("the archive lost the torn bytes: %v", err)
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Fatal(err)
	}
}

// Held. The mark alone (A4 setting "moving" in audit.gate, or a crash
// right after a move's record was anchored) does not make provd move a
// trail whose last line is its move's record: the mark is cleared and the
// trail verifies against its own anchor; with a line edited meanwhile the
// trail is still tampered (the mark does not stop verification once the
// record is in). The officer's findings aside, a mark on a trail whose
// last line is not the move's record does skip verification: that is A4's
// (documented).
func TestReview15StaleMarkIsClearedNotMoved(t *testing.T) {
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	env, ag, dir := provisionedBehind(t, b)
	if _, err := ag.AuditReanchor(ctx); err != nil {
		t.Fatal(err)
	}
	before, err := env.TPM.ReadNVPublic(agent.AuditAnchorHandle)
	if err != nil {
		t.Fatal(err)
	}
	editGate(t, dir, func(g map[string]any) { g["moving"] = map[string]any{"replaced_nv_name": "00"} })
	p := filepath.Join(dir, audit.FileName)
	data, _ := os.ReadFile(p)
	edited := bytes.Replace(data, []byte(`"op":"provision"`), []byte(`"op":"provisioN"`), 1)
	if bytes.Equal(edited, data) {
		t.Fatal("not mounted")
	}
	os.WriteFile(p, edited, 0o600)
	// A new process (the agent above keeps its log open, as the daemon).
	_, err = newAgent(t, env, dir).Seal(ctx, api.SealRequest{Data: []byte("x")})
	if !errors.Is(err, api.ErrTampered) {
		t.Errorf("a trail edited under a stale mark: seal %v, want tampered", err)
	}
	if after, _ := env.TPM.ReadNVPublic(agent.AuditAnchorHandle); !bytes.Equal(after.Name.Buffer, before.Name.Buffer) {
		t.Errorf("the stale mark made provd move the anchor")
	}
	if g := editGate(t, dir, nil); g["moving"] != nil {
		t.Errorf("the stale mark was not cleared: %v", g["moving"])
	}
}

// FLAW. Two provd processes on one state directory: the daemon, its log
// open, and a one-shot `provd audit reanchor` killed after its move's
// record was anchored and before endMove cleared the mark (audit.gate then
// is exactly as the move wrote it: stood in for by putting the mark back).
// The daemon never runs finishMove while its log is open (openAudit
// returns at once), so its next record goes in under the mark: the move's
// record is no longer the log's last line, and from then on the trail,
// intact and anchored, is "moving": audit verify and status check nothing
// against the anchor, and the next process to open the trail makes a move
// nobody interrupted, over the trail's own anchor (accepted as "the move's
// own index"), recorded as "a crash or a fault interrupted" it, and
// blesses every line since without comparing them with the anchor.
func TestReview15MarkLeftByAKilledCLIUnderAnOpenDaemonLog(t *testing.T) {
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	env, daemon, dir := provisionedBehind(t, b)
	mustSeal(t, daemon) // the daemon's log is open
	cli := newAgent(t, env, dir)
	if _, err := cli.AuditReanchor(ctx); err != nil {
		t.Fatal(err)
	}
	recs, err := cli.AuditRecords(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r1 := lastAnchorRecord(t, recs)
	editGate(t, dir, func(g map[string]any) {
		g["moving"] = map[string]any{"replaced_nv_name": r1.Objects["replaced_nv_name"], "replaced_nv_value": r1.Objects["replaced_nv_value"]}
	})
	if _, err := daemon.Seal(ctx, api.SealRequest{Data: []byte("the daemon's next request")}); err != nil {
		t.Fatalf("the daemon's seal: %v", err)
	}
	before, _ := env.TPM.ReadNVPublic(agent.AuditAnchorHandle)
	_, verr := newAgent(t, env, dir).AuditVerify(ctx)
	t.Logf("verify of the intact trail after the daemon's record: %v", verr)
	if verr != nil {
		t.Errorf("an intact, anchored trail is not verified (%v): the mark a killed CLI left outlived the move's record in the daemon", verr)
	}
	if _, err := newAgent(t, env, dir).Seal(ctx, api.SealRequest{Data: []byte("a new process")}); err != nil {
		t.Fatalf("seal in a new process: %v", err)
	}
	after, _ := env.TPM.ReadNVPublic(agent.AuditAnchorHandle)
	recs, _ = audit.ReadRecords(filepath.Join(dir, audit.FileName))
	if last := lastAnchorRecord(t, recs); !bytes.Equal(before.Name.Buffer, after.Name.Buffer) || strings.Contains(last.Objects["reason"], "interrupted") {
		t.Errorf("a new process moved the trail off its intact anchor, recorded as an interrupted move: %v", last.Objects)
	}
}

// FLAW (evidence). A provision in a fresh state directory, where another
// application's key is persistent at 0x81007601, begins its trail (the
// provision was done, so the new trail takes the handle and names what it
// evicted: replaced_gate_name). Killed right after persistGate's
// TPM2_EvictControl removed that key, before the move's record: the next
// operation makes the move again by itself (the mend), but its record
// does not name the evicted key; the name was only in the killed
// process's memory (gateRecord.Moving keeps the replaced index, not the
// replaced gate). The other application's key is gone with no trace in
// any trail. (The eighth review's TestReview8ForeignKeyEvictedInATryAnEventEndedIsNotRecorded,
// for a kill instead of a TPM event.)
func TestReview15KilledAfterEvictingAForeignKeyLosesItsName(t *testing.T) {
	env := swtpmtest.Start(t)
	env.RequireSimulator()
	ctx := context.Background()
	dir := stateDir(t)
	foreign := agent.PlantGateKey(t, env.TPM, true)
	// define-anchor, then ReadPublic, Load, EvictControl (the foreign key):
	// killed after the third command after the define.
	review7RunKilled(t, env, dir, "provision", "define-anchor", 3)
	if hs := review7Persistent(t, env.TPM); slices.Contains(hs, agent.AuditGateHandle) {
		t.Logf("0x%08x is occupied after the kill: %x", uint32(agent.AuditGateHandle), hs)
	}
	withAgent(t, env, dir, "after the kill", func(ag *agent.Agent) {
		if _, err := ag.Seal(ctx, api.SealRequest{Data: []byte("after"), PCRs: []int{7}}); err != nil {
			t.Fatalf("seal after the kill: %v", err)
		}
		recs, err := ag.AuditRecords(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ops := []string{}
		for _, r := range recs {
			ops = append(ops, r.Op)
		}
		t.Logf("the trail after recovery: %v", ops)
		named := false
		for _, r := range recs {
			if r.Op == audit.OpAnchor {
				t.Logf("audit-anchor record: %v", r.Objects)
				named = named || r.Objects["replaced_gate_name"] == foreign
			}
		}
		if !named {
			t.Errorf("the foreign key %s evicted by the killed move is named in no record of the trail", foreign)
		}
	})
}
