package agent_test

// The sixteenth review: attacks and faults on the mend of review 15
// (9153b05: the move's whole record and the names its handle may hold in
// the mark, decided and cleared under the log's lock; the "never begun"
// drop of a mark on a trail with no line).
//
// Tests marked FLAW failed on the code under review (each, before the
// mend that follows it: the drop only for a state without a PK, its mark's
// record kept pending; the officer's reanchor keeps an unfinished move's
// record; a move made again reuses its mark's gate; an open log is closed
// and the move finished when audit.gate is marked); tests marked Held
// passed and assert the property that held.
//
// FLAW: TestReview16NeverBegunDropLosesTheOfficersArchive (the "never
// begun" drop takes an officer's archiving reanchor for a new trail: its
// findings vanish), TestReview16DroppedMarkLetsAProvisionedStateActAndReportFailure
// (after that drop every audited request acts, then fails its record),
// TestReview16MarkedTrailThatReplacedAnUnwrittenIndexIsStuck (no PK, no
// line: provision --force refused as tampered, reanchor as foreign),
// TestReview16FailingMoveGrowsTheMarkEveryRequest (a new gate and two more
// known names per request while the define fails),
// TestReview16DaemonActsUnderAnotherProcesssMark (the open log skips the
// mark: the op runs, then its record fails).
// Held: TestReview16RepairUnderAnOpenLogTakesTheLockOnce (no deadlock,
// one move made again); the command counts (TestReview7CommandCountsAsClaimed,
// TestKeyCosts pass: no mark, no extra read or command).

import (
	"context"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review16Moving is audit.gate's mark ("moving"), nil when there is none
// or no audit.gate.
func review16Moving(t *testing.T, dir string) map[string]any {
	t.Helper()
	if _, err := os.Stat(filepath.Join(dir, "audit.gate")); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	m, _ := editGate(t, dir, nil)["moving"].(map[string]any)
	return m
}

// FLAW (evidence; A2 with the owner hierarchy open, and an honest fault).
// finishMove's "never begun" rule drops the mark of a trail with no line
// whose move replaced nothing, taking the mark for a new trail's. But the
// officer's reanchor of a trail whose anchor A2 removed and whose log has a
// torn tail (a crash while a line was written) archives the log first
// (VerifyLinks: torn tail), so the live log is empty, and the handle holds
// nothing: its mark names nothing replaced, and carries only the officer's
// findings (archived_log, archived_sha256, archived_because, verify_error).
// Its NV_DefineSpace refused (TPM_RC_NV_SPACE), and another state
// directory provisions on the empty handle (no --force needed): the next
// seal in the first directory drops audit.gate as "never begun". The
// officer's findings are gone: no record of any trail names the archive,
// its digest or why it was archived; audit.gate is gone too, and the
// directory reads as a fresh one beside another state's anchor. The rule
// looks at replaced_nv_name, replaced_gate_name and evicting only; a mark
// whose record carries archived_log or log_missing was a begun trail.
func TestReview16NeverBegunDropLosesTheOfficersArchive(t *testing.T) {
	ctx := context.Background()
	x, xdir, archive := review16DroppedMount(t)
	_, serr := x.Seal(ctx, api.SealRequest{Data: []byte("after")})
	t.Logf("the first directory's seal after: %v (exit %d); audit.gate's mark: %v", serr, api.ExitCode(serr), review16Moving(t, xdir))
	named := false
	if mv := review16Moving(t, xdir); mv != nil {
		r, _ := mv["record"].(map[string]any)
		named = r["archived_log"] == archive
	}
	recs, _ := audit.ReadRecords(filepath.Join(xdir, audit.FileName))
	for _, r := range recs {
		named = named || r.Objects["archived_log"] == archive
	}
	if !named {
		t.Errorf("the officer's reanchor archived %s as evidence (torn log, anchor removed); after one refused define and another state's provision, "+
			"the mark was dropped as a trail never begun and nothing names the archive, its digest or the officer's findings any more", archive)
	}
}

// FLAW (follows from the drop). Mounted as
// TestReview16NeverBegunDropLosesTheOfficersArchive, with a key "k". The
// dropped mark leaves a provisioned directory with no gate beside another
// state's anchor: openAudit passes (no gate, no line: an empty anchor),
// the operation runs, and only its record's ensureGated refuses
// (errForeignAnchor), the record pending. Every audited request now acts
// and is reported failed: a key delete deletes the key. With the mark kept
// (tampered), openAudit refused before acting.
func TestReview16DroppedMarkLetsAProvisionedStateActAndReportFailure(t *testing.T) {
	ctx := context.Background()
	x, xdir, _ := review16DroppedMountWith(t, func(ag *agent.Agent) {
		if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256"}); err != nil {
			t.Fatal(err)
		}
	})
	derr := x.DeleteKey(ctx, "k")
	_, _, perr := x.KeyPublic(ctx, "k")
	pend, _ := os.ReadFile(filepath.Join(xdir, "audit.pending"))
	t.Logf("key delete after the drop: %v (exit %d); the key after: %v; audit.pending: %d bytes", derr, api.ExitCode(derr), perr, len(pend))
	if derr != nil && perr != nil {
		t.Errorf("after the mark's drop the key delete ran (the key is gone) and was reported failed: %v", derr)
	}
}

// review16DroppedMount is TestReview16NeverBegunDropLosesTheOfficersArchive's
// state before its seal: a provisioned directory (x, xdir) whose officer's
// reanchor archived its torn log (archive) with the anchor gone, its define
// refused, and another state provisioned on the empty handle.
func review16DroppedMount(t *testing.T) (*agent.Agent, string, string) {
	return review16DroppedMountWith(t, nil)
}

func review16DroppedMountWith(t *testing.T, before func(*agent.Agent)) (*agent.Agent, string, string) {
	t.Helper()
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	env, x, xdir := provisionedBehind(t, b)
	if before != nil {
		before(x)
	}
	mustSeal(t, x)
	// A crash while a line was written: a torn tail.
	p := filepath.Join(xdir, audit.FileName)
	f, err := os.OpenFile(p, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	f.WriteString(`{"seq":9,"op":"key-delete","uid":0,"obj`)
	f.Close()
	// A2 removes the trail's anchor (owner hierarchy open).
	old, err := env.TPM.ReadNVPublic(agent.AuditAnchorHandle)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.TPM.UndefineNVIndex(old); err != nil {
		t.Fatal(err)
	}
	// The officer's reanchor, its NV_DefineSpace refused.
	sent := 0
	b.Set(swtpmtest.AnsweredOnce(tpm2.TPMCCNVDefineSpace, tpm2.TPMRCNVSpace, &sent))
	_, err = x.AuditReanchor(ctx)
	b.Set(nil)
	archives := archivedOrMarked(t, xdir)
	mv := review16Moving(t, xdir)
	if err == nil || sent != 1 || len(archives) != 1 || mv == nil {
		t.Fatalf("not mounted: reanchor %v (%d defines), archives %v, mark %v", err, sent, archives, mv)
	}
	rec, _ := mv["record"].(map[string]any)
	t.Logf("the mark's record: %v", rec)
	if rec["archived_log"] != filepath.Base(archives[0]) {
		t.Fatalf("not mounted: the mark does not name the archive: %v", rec)
	}
	// Another state directory provisions on the empty handle.
	y := newAgent(t, env, stateDir(t))
	provision(t, y, 7)
	return x, xdir, filepath.Base(archives[0])
}

// FLAW (stuck; A2 or another state directory's leftover, and an honest
// fault). A fresh state directory's first move (the record of a refused
// provision) replaces an index at the anchor's handle that was never
// extended (foreignAnchor takes it without --force: another directory's
// power-cut define, or A2's), and is interrupted after that index's
// removal (its NV_DefineSpace refused). Another state directory then
// provisions on the empty handle. The first directory has no PK and no
// line; its mark names an index replaced, so finishMove calls the trail
// tampered rather than never begun: provision --force is refused as
// tampered (exit 14), and the officer's reanchor, the way out the message
// names, is refused as another state's anchor (no PK, a marked trail
// with no line: review 15's guard). Nothing but removing audit.gate by
// hand gets the directory out (review 15's
// TestReview15MarkedTrailWithoutPKTakesAnotherStatesAnchor, with the
// replaced index named).
func TestReview16MarkedTrailThatReplacedAnUnwrittenIndexIsStuck(t *testing.T) {
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	u := defineOtherAnchor(t, env.TPM) // never extended
	xdir := stateDir(t)
	x := newAgent(t, env, xdir)
	req := review7Req(false)
	req.TrustOnFirstUse = false
	sent := 0
	b.Set(swtpmtest.AnsweredOnce(tpm2.TPMCCNVDefineSpace, tpm2.TPMRCNVSpace, &sent))
	_, err := x.Provision(ctx, req)
	b.Set(nil)
	mv := review16Moving(t, xdir)
	if err == nil || sent != 1 || mv == nil {
		t.Fatalf("not mounted: %v (%d defines), mark %v", err, sent, mv)
	}
	if rec, _ := mv["record"].(map[string]any); rec["replaced_nv_name"] != hex.EncodeToString(u.Name.Buffer) {
		t.Fatalf("not mounted: the mark does not name the unwritten index replaced: %v", mv)
	}
	if _, err := env.TPM.ReadNVPublic(agent.AuditAnchorHandle); !errors.Is(err, tpm.ErrNotFound) {
		t.Fatalf("not mounted: the handle holds something: %v", err)
	}
	y := newAgent(t, env, t.TempDir()+"/other")
	if _, err := y.Provision(ctx, review7Req(false)); err != nil {
		t.Fatalf("the other state's provision: %v", err)
	}

	_, perr := x.Provision(ctx, review7Req(true))
	t.Logf("provision --force in the first directory: %v (exit %d)", perr, api.ExitCode(perr))
	if perr == nil {
		return
	}
	_, rerr := x.AuditReanchor(ctx)
	_, verr := y.AuditVerify(ctx)
	t.Logf("its audit reanchor: %v; the other state's verify: %v", rerr, verr)
	if errors.Is(perr, api.ErrTampered) && rerr != nil {
		t.Errorf("a directory with no PK and no line, whose interrupted first move replaced an index never extended, is stuck: "+
			"provision --force refused as tampered (%v) and audit reanchor refused (%v)", perr, rerr)
	}
}

// FLAW (minor: growth, and a new gate per request). While a move's
// NV_DefineSpace keeps failing (A1 on the bus, or A2 who filled the NV
// space once the old index was removed), every audited request makes the
// move again with a new gate key (TPM2_Create) and a new mark whose Known
// adds the failed gate's two index names to every earlier one: audit.gate
// grows without bound, two names a request. The move made again could keep
// the mark's gate (its index never defined, or its own: both are Known).
func TestReview16FailingMoveGrowsTheMarkEveryRequest(t *testing.T) {
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	_, ag, dir := provisionedBehind(t, b)
	var mu sync.Mutex
	defines := 0
	b.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) != tpm2.TPMCCNVDefineSpace {
			return nil, nil, false
		}
		mu.Lock()
		defines++
		mu.Unlock()
		return swtpmtest.ErrorAnswer(tpm2.TPMRCNVSpace), nil, true
	})
	if _, err := ag.AuditReanchor(ctx); err == nil {
		t.Fatal("not mounted: the reanchor worked")
	}
	gates := map[string]bool{}
	var sizes []int
	for range 6 {
		_, err := ag.Seal(ctx, api.SealRequest{Data: []byte("x")})
		if err == nil {
			t.Fatal("not mounted: a seal worked with every define refused")
		}
		g := editGate(t, dir, nil)
		gates[g["gate_name"].(string)] = true
		k, _ := g["moving"].(map[string]any)["known_nv_names"].([]any)
		sizes = append(sizes, len(k))
	}
	b.Set(nil)
	t.Logf("%d defines refused; %d distinct gates; known_nv_names per request: %v", defines, len(gates), sizes)
	if _, err := ag.Seal(ctx, api.SealRequest{Data: []byte("after")}); err != nil {
		t.Fatalf("seal once the fault is gone: %v", err)
	}
	if sizes[len(sizes)-1] > sizes[0] {
		t.Errorf("each request's move made again adds its gate's names to the mark: %v names after %d requests (audit.gate grows without bound)",
			sizes, len(sizes))
	}
}

// FLAW (pre-existing window the mark could close). "An operation whose
// record cannot be written must not happen" (openAudit). The daemon's log
// is open; an officer's one-shot reanchor is interrupted after its mark
// and the old index's removal (its NV_DefineSpace refused). The mark on
// disk says the trail can take no line until finishMove, but openAudit
// returns at once for an open log, so the daemon's next key delete runs,
// deletes the key, and then is reported failed (its record refused:
// errMoveUnfinished), its record pending. The caller is told a deletion
// failed that happened. ensureGated reads audit.gate anyway: the mark
// could send the daemon to finishMove before it acts.
func TestReview16DaemonActsUnderAnotherProcesssMark(t *testing.T) {
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	env, daemon, dir := provisionedBehind(t, b)
	if _, err := daemon.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	mustSeal(t, daemon) // the daemon's log is open
	cli := newAgent(t, env, dir)
	sent := 0
	b.Set(swtpmtest.AnsweredOnce(tpm2.TPMCCNVDefineSpace, tpm2.TPMRCNVSpace, &sent))
	_, err := cli.AuditReanchor(ctx)
	b.Set(nil)
	if err == nil || review16Moving(t, dir) == nil {
		t.Fatalf("not mounted: %v", err)
	}
	derr := daemon.DeleteKey(ctx, "k")
	_, _, perr := daemon.KeyPublic(ctx, "k")
	t.Logf("the daemon's key delete under the mark: %v; the key after: %v", derr, perr)
	if derr != nil && perr != nil {
		t.Errorf("the daemon deleted the key under another process's unfinished move and reported the deletion failed (%v)", derr)
	}
	if _, err := daemon.Seal(ctx, api.SealRequest{Data: []byte("next")}); err != nil {
		t.Errorf("the daemon's next request: %v", err)
	}
	if _, err := daemon.AuditVerify(ctx); err != nil {
		t.Errorf("verify: %v", err)
	}
}

// Held. A daemon whose log is open runs audit repair while another
// process's interrupted move is marked: finishMove takes the log's lock
// on a file description of its own (audit.Locked, then audit.Reanchor)
// while the daemon's Log is open and unlocked; no deadlock, no
// LockTimeout; the move is made once, and a second process's repair
// meanwhile finds nothing to do.
func TestReview16RepairUnderAnOpenLogTakesTheLockOnce(t *testing.T) {
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	env, daemon, dir := provisionedBehind(t, b)
	mustSeal(t, daemon)
	cli := newAgent(t, env, dir)
	sent := 0
	b.Set(swtpmtest.AnsweredOnce(tpm2.TPMCCNVDefineSpace, tpm2.TPMRCNVSpace, &sent))
	if _, err := cli.AuditReanchor(ctx); err == nil {
		t.Fatal("not mounted")
	}
	b.Set(nil)
	start := time.Now()
	// One after the other: two agents on one *tpm.TPM are not two
	// processes, and run at once they share its unlocked session fields
	// (found by make test's -race in review 17's like test); two
	// processes at once, each on its own connection, are
	// TestReview15ConcurrentProcessMakesTheMoveAgain's.
	errs := make([]error, 2)
	for i, ag := range []*agent.Agent{daemon, newAgent(t, env, dir)} {
		_, errs[i] = ag.AuditRepair(ctx, false)
	}
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("the repairs took %v (a lock waited for)", d)
	}
	for _, e := range errs {
		if e != nil {
			t.Errorf("repair: %v", e)
		}
	}
	recs, err := audit.ReadRecords(filepath.Join(dir, audit.FileName))
	if err != nil {
		t.Fatal(err)
	}
	again := 0
	for _, r := range recs {
		if r.Op == audit.OpAnchor && strings.Contains(r.Objects["made_again"], "interrupted") {
			again++
		}
	}
	if again != 1 {
		t.Errorf("%d moves made again, want 1", again)
	}
	if _, err := daemon.Seal(ctx, api.SealRequest{Data: []byte("x")}); err != nil {
		t.Errorf("the daemon's seal after: %v", err)
	}
	if _, err := newAgent(t, env, dir).AuditVerify(ctx); err != nil {
		t.Errorf("verify: %v", err)
	}
}
