package agent_test

// The seventeenth review: attacks and faults on the mend of review 16
// (b960137: the never-begun drop only without a PK, its record kept
// pending as audit-anchor-dropped; the officer's reanchor keeps an
// unfinished move's record; a move made again reuses its mark's gate; an
// open log finishes another process's move first).
//
// Tests marked FLAW failed on the code under review (each, before the
// mend that follows it: the archive written by audit.Reanchor under the
// log's lock once the mark names it, the log then begun anew; a stale mark
// cleared before the officer's reanchor; the dropped record kept once; the
// gate reused unpinned too); tests marked Held passed. The mounts of
// TestReview17ReanchorFaultAfterArchiveLosesIt and TestReview17StaleMarkAndArchiveFaultBlessAnEmptyTrail,
// and of review 15's and 16's archive tests, changed with the mend: a
// fault before the mark archives nothing, and one after it leaves the
// archive named by the mark (archivedOrMarked).
//
// FLAW: TestReview17ReanchorFaultAfterArchiveLosesIt (the officer's
// reanchor archives the log before its mark: a TPM fault or crash in
// between leaves the archive named nowhere and the trail "tampered"),
// TestReview17StaleMarkAndArchiveFaultBlessAnEmptyTrail (the same with a
// stale mark: the next seal reuses the finished move's gate, begins the
// trail anew over its own anchor, and the tampered log's archive is named
// nowhere), TestReview17DroppedRecordKeptTwiceAfterACrash (a crash between
// keepPending and audit.gate's removal: the dropped record twice in the
// next trail), TestReview17UnpinnedFailingMoveStillGrowsTheMark (review
// 16's growth, with no SRK pinned), TestReview17StaleMarkRecordedAsAnInterruptedMove
// (a finished move copied as interrupted_move.* by the officer's reanchor).
// Held: TestReview17DroppedRecordReachesTheNextTrailOnce (op name taken
// by Append, readPending, AuditRecords), TestReview17ZeroizeWithAMarkedMove
// (nothing / the old index / its own index at the handle, --srk),
// TestReview17DaemonRequestsRestAndRepairUnderAMark (-race: one move made
// again, every seal recorded).

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
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

// review17Refuse is a hook answering every command cc rc in the TPM's
// place (it never reaches the TPM); n counts them.
func review17Refuse(cc tpm2.TPMCC, rc tpm2.TPMRC, n *int) swtpmtest.Hook {
	var mu sync.Mutex
	return func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) != cc {
			return nil, nil, false
		}
		mu.Lock()
		*n++
		mu.Unlock()
		return swtpmtest.ErrorAnswer(rc), nil, true
	}
}

// review17EditLine changes the first seal line of dir's log (A4, or
// whoever can write audit.log): the officer's reanchor then archives it.
func review17EditLine(t *testing.T, dir string) {
	t.Helper()
	editAuditLog(t, dir, func(data []byte) []byte {
		return bytes.Replace(data, []byte(`"op":"seal"`), []byte(`"op":"sEal"`), 1)
	})
}

// editAuditLog rewrites dir's audit.log with edit (A4, or whoever can
// write it); the edit must change it.
func editAuditLog(t *testing.T, dir string, edit func([]byte) []byte) {
	t.Helper()
	p := filepath.Join(dir, audit.FileName)
	data, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	edited := edit(data)
	if bytes.Equal(edited, data) {
		t.Fatal("not mounted: the log is unchanged")
	}
	if err := os.WriteFile(p, edited, 0o600); err != nil {
		t.Fatal(err)
	}
}

// review17Named reports whether any record of dir's live trail, of its
// pending records or of audit.gate's mark names the archive (base name).
func review17Named(t *testing.T, dir, archive string) bool {
	t.Helper()
	recs, _ := audit.ReadRecords(filepath.Join(dir, audit.FileName))
	for _, r := range recs {
		for _, v := range r.Objects {
			if v == archive {
				return true
			}
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, "audit.pending")); err == nil && bytes.Contains(b, []byte(archive)) {
		return true
	}
	if b, err := os.ReadFile(filepath.Join(dir, "audit.gate")); err == nil && bytes.Contains(b, []byte(archive)) {
		return true
	}
	return false
}

// FLAW (evidence, and a stuck trail; an honest TPM fault, or A1 refusing
// one command). The officer's reanchor of a trail whose log no longer
// verifies against its own anchor archives the log (os.Rename) before the
// move writes its mark: between the two it reads the handle, the old
// index's value and the SRK, and creates the new gate key (TPM2_Create).
// A fault there (TPM_RC_OBJECT_MEMORY on the Create: the TPM's object
// slots held by another application) fails the reanchor with the log
// already renamed and nothing written about it: audit.gate is the old
// gate, unmarked. Every audited operation is then refused as tampered
// (the anchor holds a value, the live log is gone), and the officer's
// reanchor run again records "log_missing": the archive it made, its
// digest and why it was archived are named nowhere (no record, no pending
// record, no mark). The same window is a kill or a power cut between the
// rename and the mark's write (several TPM commands long). Mend: archive
// after the mark is written (inside Reset, once audit.gate carries
// archived_log), or put the log back when the move fails before its mark.
func TestReview17ReanchorFaultAfterArchiveLosesIt(t *testing.T) {
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	_, ag, dir := provisionedBehind(t, b)
	mustSeal(t, ag)
	review17EditLine(t, dir)
	creates := 0
	b.Set(review17Refuse(tpm2.TPMCCCreate, tpm2.TPMRCObjectMemory, &creates))
	logBefore, _ := os.ReadFile(filepath.Join(dir, audit.FileName))
	_, err := ag.AuditReanchor(ctx)
	b.Set(nil)
	if err == nil || creates == 0 {
		t.Fatalf("not mounted: reanchor %v (%d creates refused)", err, creates)
	}
	// After the mend the log is archived only once the move's mark names
	// the archive: a fault before it leaves the log in place, and no
	// archive nobody names.
	archives, _ := filepath.Glob(filepath.Join(dir, "audit-*.log"))
	if logNow, _ := os.ReadFile(filepath.Join(dir, audit.FileName)); len(archives) != 0 || !bytes.Equal(logNow, logBefore) {
		t.Errorf("a reanchor failed before its mark left archives %v, the log changed: %v", archives, !bytes.Equal(logNow, logBefore))
	}
	archive := ""
	if len(archives) > 0 {
		archive = filepath.Base(archives[0])
	}
	t.Logf("the reanchor with its Create refused: %v; the mark: %v", err, review16Moving(t, dir))
	_, serr := ag.Seal(ctx, api.SealRequest{Data: []byte("after")})
	t.Logf("the next seal: %v (exit %d)", serr, api.ExitCode(serr))
	if serr != nil {
		if _, rerr := ag.AuditReanchor(ctx); rerr != nil {
			t.Fatalf("the officer's reanchor again: %v", rerr)
		}
		recs, _ := ag.AuditRecords(ctx)
		t.Logf("the second reanchor's record: %v", lastAnchorRecord(t, recs).Objects)
	}
	if archive == "" {
		// The second reanchor archived the log: named by its record.
		archives, _ = filepath.Glob(filepath.Join(dir, "audit-*.log"))
		if len(archives) != 1 {
			t.Fatalf("after the second reanchor: archives %v, want one", archives)
		}
		archive = filepath.Base(archives[0])
	}
	if !review17Named(t, dir, archive) {
		t.Errorf("the officer's reanchor archived the tampered log as %s, a TPM fault after the archive and before the move's mark failed it, "+
			"and no record, pending record or mark names the archive, its digest or why (next seal: %v)", archive, serr)
	}
}

// review17NoPKMarked is a fresh state directory (x, xdir) whose refused
// provision (no trust on first use) began a trail whose first move's
// NV_DefineSpace was refused (a mark, the handle empty), and another state
// directory provisioned on the TPM since (its anchor at the handle).
func review17NoPKMarked(t *testing.T) (*swtpmtest.Env, *agent.Agent, string, *agent.Agent) {
	t.Helper()
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
	if err == nil || sent != 1 || review16Moving(t, xdir) == nil {
		t.Fatalf("not mounted: %v (%d defines), mark %v", err, sent, review16Moving(t, xdir))
	}
	y := newAgent(t, env, t.TempDir()+"/other")
	if _, err := y.Provision(ctx, review7Req(false)); err != nil {
		t.Fatalf("the other state's provision: %v", err)
	}
	return env, x, xdir, y
}

// review17Dropped counts the audit-anchor-dropped records waiting in dir's
// audit.pending and in its live trail.
func review17Dropped(t *testing.T, dir string) (pending, trail int) {
	t.Helper()
	if b, err := os.ReadFile(filepath.Join(dir, "audit.pending")); err == nil {
		for _, l := range bytes.Split(b, []byte("\n")) {
			var r audit.Record
			if json.Unmarshal(l, &r) == nil && r.Op == "audit-anchor-dropped" {
				pending++
			}
		}
	}
	recs, _ := audit.ReadRecords(filepath.Join(dir, audit.FileName))
	for _, r := range recs {
		if r.Op == "audit-anchor-dropped" {
			trail++
		}
	}
	return pending, trail
}

// FLAW (a record twice; a crash). finishMove's never-begun drop keeps the
// mark's record pending (keepPending, fsynced) and then removes
// audit.gate. A crash between the two (stood in for by putting audit.gate
// back as it was: the removal never reached the disk) leaves the record
// pending and the mark in place: the next operation drops the mark again
// and keeps a second audit-anchor-dropped record of the same move; the
// trail the state begins later (provision --force) carries both, as if
// two moves had been dropped. The drop is not idempotent: nothing ties
// the pending record to the mark (the gate's name is in neither), so it
// cannot tell it kept it already.
func TestReview17DroppedRecordKeptTwiceAfterACrash(t *testing.T) {
	ctx := context.Background()
	_, x, xdir, _ := review17NoPKMarked(t)
	gate, err := os.ReadFile(filepath.Join(xdir, "audit.gate"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := x.AuditRepair(ctx, false); err == nil {
		t.Log("repair after the other state's provision passed")
	}
	if p, _ := review17Dropped(t, xdir); p != 1 || review16Moving(t, xdir) != nil {
		t.Fatalf("not mounted: %d dropped records pending, mark %v", p, review16Moving(t, xdir))
	}
	// The crash right after keepPending: audit.gate not removed.
	if err := os.WriteFile(filepath.Join(xdir, "audit.gate"), gate, 0o600); err != nil {
		t.Fatal(err)
	}
	_, _ = x.AuditRepair(ctx, false)
	if _, err := x.Provision(ctx, review7Req(true)); err != nil {
		t.Fatalf("provision --force: %v", err)
	}
	p, tr := review17Dropped(t, xdir)
	t.Logf("audit-anchor-dropped records: %d pending, %d in the trail", p, tr)
	if p+tr != 1 {
		t.Errorf("one interrupted move was dropped once, and %d audit-anchor-dropped records of it reached the trail (%d still pending)", tr, p)
	}
}

// Held. The dropped record reaches the trail of the state's next trail
// once, recorded late, with the op name intact: audit.Append takes the op
// (only audit-anchor is refused), readPending takes it, and the records
// read back with it (AuditRecords, as `audit show` prints them). The
// other state's trail is untouched.
func TestReview17DroppedRecordReachesTheNextTrailOnce(t *testing.T) {
	ctx := context.Background()
	_, x, xdir, y := review17NoPKMarked(t)
	if _, err := x.Provision(ctx, review7Req(true)); err != nil {
		t.Fatalf("provision --force: %v", err)
	}
	recs, err := x.AuditRecords(ctx)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, r := range recs {
		if r.Op == "audit-anchor-dropped" {
			n++
			if r.Objects["recorded_late"] != "true" || r.Objects["dropped_because"] == "" {
				t.Errorf("the dropped record: %v", r.Objects)
			}
		}
	}
	if n != 1 {
		t.Errorf("%d audit-anchor-dropped records in the new trail, want 1", n)
	}
	if _, err := x.AuditVerify(ctx); err != nil {
		t.Errorf("verify: %v", err)
	}
	if p, _ := review17Dropped(t, xdir); p != 0 {
		t.Errorf("%d still pending", p)
	}
	// The other state's anchor was replaced (--force): its verify says so,
	// as for any provision --force; nothing of x went into its trail.
	yrecs, _ := y.AuditRecords(ctx)
	for _, r := range yrecs {
		if r.Op == "audit-anchor-dropped" {
			t.Errorf("the other state's trail has the dropped record")
		}
	}
}

// FLAW (minor: growth, and a new gate key per request, where review 16's
// mend reuses the gate only when an SRK is pinned). In a state with no PK
// and no pinned SRK (a refused provision began its trail: first contact
// refused the TPM), a move whose NV_DefineSpace keeps failing (A1, or A2
// who filled the NV space with the handle empty) is made again by every
// refused request's record with a new gate (TPM2_Create: moveGate needs
// cur.SRK, "" before first contact) and a mark whose known_nv_names adds
// its two names each time: audit.gate grows without bound. In the daemon
// any local caller's refused request (RecordRefusal) is such a record.
func TestReview17UnpinnedFailingMoveStillGrowsTheMark(t *testing.T) {
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	xdir := stateDir(t)
	x := newAgent(t, env, xdir)
	_ = env
	req := review7Req(false)
	req.TrustOnFirstUse = false
	defines := 0
	b.Set(review17Refuse(tpm2.TPMCCNVDefineSpace, tpm2.TPMRCNVSpace, &defines))
	var sizes []int
	gates := map[string]bool{}
	for range 5 {
		if _, err := x.Provision(ctx, req); err == nil {
			t.Fatal("not mounted: the provision worked")
		}
		mv := review16Moving(t, xdir)
		if mv == nil {
			t.Fatal("not mounted: no mark")
		}
		k, _ := mv["known_nv_names"].([]any)
		sizes = append(sizes, len(k))
		gates[editGate(t, xdir, nil)["gate_name"].(string)] = true
	}
	b.Set(nil)
	t.Logf("%d defines refused; %d distinct gates; known_nv_names per request: %v", defines, len(gates), sizes)
	// Held after the mend: one gate, and the mark's names stay those of
	// the trail's gate from the first move made again on (0, then 2).
	if sizes[len(sizes)-1] > sizes[1] || len(gates) > 1 {
		t.Errorf("each refused request's move made again makes a new gate key (%d gates) and adds its names to the mark: %v", len(gates), sizes)
	}
}

// FLAW (evidence: a finished move recorded as interrupted). A crash after
// a move's record is anchored and before the mark's clearing (stood in for
// by putting the mark back as the move wrote it) leaves a stale mark whose
// record is in the log. The officer's reanchor run next (an operator
// repeating the killed command) does not clear it (it reads the trail
// with Verify, which does not clear, and does not run finishMove), and
// copies it into its own record as interrupted_move.*: the trail says a
// move was interrupted that finished, with its record two lines up.
func TestReview17StaleMarkRecordedAsAnInterruptedMove(t *testing.T) {
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	env, ag, dir := provisionedBehind(t, b)
	r1 := review17StaleMark(t, env, ag, dir)
	if _, err := ag.AuditReanchor(ctx); err != nil {
		t.Fatalf("the officer's reanchor again: %v", err)
	}
	recs, err := ag.AuditRecords(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r2 := lastAnchorRecord(t, recs)
	t.Logf("the second reanchor's record: %v", r2.Objects)
	for k := range r2.Objects {
		if strings.HasPrefix(k, "interrupted_move.") {
			t.Errorf("the second reanchor records the first as an interrupted move (%s), while its record (line %d) is in the trail, anchored", k, r1.Seq)
			break
		}
	}
}

// Held. Zeroize with a move marked, in each state the move can leave the
// handle in (nothing: its define refused; the old index: its undefine
// never reached the TPM; its own unwritten index: the define ran, its
// answer lost): zeroize-start's open makes the move again (reusing the
// mark's gate), zeroize goes through, and nothing of the trail stays in
// the TPM (no anchor, no persistent gate); the archive's trail has the
// made-again record and verifies up to the zeroize record. With --srk
// too, where the gate was made through the SRK zeroize evicts.
func TestReview17ZeroizeWithAMarkedMove(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		hook func(n *int) swtpmtest.Hook
		srk  bool
	}{
		{"nothing there", func(n *int) swtpmtest.Hook {
			return swtpmtest.AnsweredOnce(tpm2.TPMCCNVDefineSpace, tpm2.TPMRCNVSpace, n)
		}, false},
		{"the old index", func(n *int) swtpmtest.Hook {
			return swtpmtest.AnsweredOnce(tpm2.TPMCCNVUndefineSpace, tpm2.TPMRCNVSpace, n)
		}, false},
		{"its own index", func(n *int) swtpmtest.Hook {
			return swtpmtest.RanThenAnswered(tpm2.TPMCCNVDefineSpace, tpm2.TPMRCNVSpace, n)
		}, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			ctx := context.Background()
			b := &swtpmtest.Bus{}
			env, ag, dir := provisionedBehind(t, b)
			mustSeal(t, ag)
			n := 0
			b.Set(c.hook(&n))
			_, err := newAgent(t, env, dir).AuditReanchor(ctx)
			b.Set(nil)
			if err == nil || n == 0 || review16Moving(t, dir) == nil {
				t.Fatalf("not mounted: %v (%d), mark %v", err, n, review16Moving(t, dir))
			}
			res, err := ag.Zeroize(ctx, api.ZeroizeOptions{SRK: c.srk})
			if err != nil {
				t.Fatalf("zeroize with the mark: %v", err)
			}
			if !res.GateEvicted {
				t.Errorf("gate not evicted: %+v", res)
			}
			if _, err := env.TPM.ReadNVPublic(agent.AuditAnchorHandle); !errors.Is(err, tpm.ErrNotFound) {
				t.Errorf("the anchor's handle after zeroize: %v", err)
			}
			if _, err := env.TPM.ReadPublic(agent.AuditGateHandle); !errors.Is(err, tpm.ErrNotFound) {
				t.Errorf("the gate's handle after zeroize: %v", err)
			}
			recs, err := audit.ReadRecords(res.AuditLog)
			if err != nil {
				t.Fatal(err)
			}
			again := 0
			for _, r := range recs {
				if r.Op == audit.OpAnchor && r.Objects["made_again"] != "" {
					again++
				}
			}
			if again != 1 || recs[len(recs)-1].Op != "zeroize" {
				t.Errorf("the archived trail: %d made-again records, last op %s", again, recs[len(recs)-1].Op)
			}
			if _, err := audit.VerifyLinks(res.AuditLog); err != nil {
				t.Errorf("the archive's links: %v", err)
			}
			// The next trail in the directory begins as any.
			provision(t, newAgent(t, env, dir), 7)
		})
	}
}

// Held (run with -race). The daemon (one Agent, its log open, serving
// seals from several goroutines while it rests between them) and a
// one-shot process's interrupted reanchor (its mark, the handle empty),
// then a second one-shot process's audit repair: the move is made again
// once, every seal succeeds, and the trail verifies.
func TestReview17DaemonRequestsRestAndRepairUnderAMark(t *testing.T) {
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	env, daemon, dir := provisionedBehind(t, b)
	mustSeal(t, daemon)
	sent := 0
	b.Set(swtpmtest.AnsweredOnce(tpm2.TPMCCNVDefineSpace, tpm2.TPMRCNVSpace, &sent))
	if _, err := newAgent(t, env, dir).AuditReanchor(ctx); err == nil || review16Moving(t, dir) == nil {
		t.Fatalf("not mounted: %v", err)
	}
	b.Set(nil)
	repairer := newAgent(t, env, dir)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 2 {
				if _, err := daemon.Seal(ctx, api.SealRequest{Data: []byte{byte(i)}}); err != nil {
					errs <- err
				}
				if err := daemon.Rest(); err != nil {
					errs <- err
				}
			}
		}()
	}
	wg.Wait()
	// The other process's repair after them: two agents on one
	// *tpm.TPM are not two processes (each has its own connection), and
	// run at once they share its unlocked session fields (found by make
	// test's -race: SharedHandle in one agent's sweep beside the other's
	// Share), so the one-shot repair does not run beside the daemon here.
	if _, err := repairer.AuditRepair(ctx, false); err != nil {
		errs <- err
	}
	close(errs)
	for err := range errs {
		t.Errorf("under the mark: %v", err)
	}
	recs, err := audit.ReadRecords(filepath.Join(dir, audit.FileName))
	if err != nil {
		t.Fatal(err)
	}
	again, seals := 0, 0
	for _, r := range recs {
		if r.Op == audit.OpAnchor && r.Objects["made_again"] != "" {
			again++
		}
		if r.Op == "seal" {
			seals++
		}
	}
	if again != 1 || seals != 1+8 {
		t.Errorf("%d moves made again (want 1), %d seal records (want 9)", again, seals)
	}
	if _, err := newAgent(t, env, dir).AuditVerify(ctx); err != nil {
		t.Errorf("verify: %v", err)
	}
}

// FLAW (a tampered log swept away by an ordinary seal; two honest faults
// and whoever edited the log). As TestReview17ReanchorFaultAfterArchiveLosesIt,
// on a trail that also has a stale mark (a crash after a move's record was
// anchored and before its mark's clearing: stood in for by putting the
// mark back; the officer's reanchor does not clear it). The officer's
// reanchor archives the edited log and fails on TPM2_Create before its
// own mark. The next seal, any caller's, finds the stale mark, its record
// not in the (new, empty) live log and the handle holding the mark's gate's
// own written index: it makes "the interrupted move" again, reusing the
// mark's gate (moveGate), so the new trail's first record has the very
// gate_key and nv_name of the archive's last audit-anchor record. The seal
// succeeds, verify passes, and no record says the log was tampered with
// or archived: the trail begins anew over the trail's own written anchor,
// recorded as "a crash or a fault interrupted this move". The reused gate
// lets a finished move pass for an interrupted one once its record left
// the live log; the mark's record is only looked for there.
func TestReview17StaleMarkAndArchiveFaultBlessAnEmptyTrail(t *testing.T) {
	ctx := context.Background()
	b := &swtpmtest.Bus{}
	env, ag, dir := provisionedBehind(t, b)
	mustSeal(t, ag)
	review17StaleMark(t, env, ag, dir)
	review17EditLine(t, dir)
	creates := 0
	b.Set(review17Refuse(tpm2.TPMCCCreate, tpm2.TPMRCObjectMemory, &creates))
	_, err := newAgent(t, env, dir).AuditReanchor(ctx)
	b.Set(nil)
	// After the mend a Create refused before the mark archives nothing:
	// the log stays, tampered, for the officer.
	if archives, _ := filepath.Glob(filepath.Join(dir, "audit-*.log")); err == nil || creates == 0 || len(archives) != 0 {
		t.Fatalf("not mounted: reanchor %v (%d creates refused), archives %v", err, creates, archives)
	}
	_, serr := newAgent(t, env, dir).Seal(ctx, api.SealRequest{Data: []byte("any caller")})
	if serr == nil {
		t.Fatalf("an ordinary seal on a log edited since its last anchor worked")
	}
	if _, err := newAgent(t, env, dir).AuditReanchor(ctx); err != nil {
		t.Fatalf("the officer's reanchor again: %v", err)
	}
	archives := archivedOrMarked(t, dir)
	if len(archives) != 1 {
		t.Fatalf("after the officer's reanchor: archives %v, want one", archives)
	}
	recs, _ := audit.ReadRecords(filepath.Join(dir, audit.FileName))
	var first audit.Record
	if len(recs) > 0 {
		first = recs[0]
	}
	arecs, _ := audit.ReadRecords(archives[0])
	alast := lastAnchorRecord(t, arecs)
	t.Logf("the next seal: %v; the live trail's first record: %s %v; the archive's last audit-anchor: gate %s nv %s",
		serr, first.Op, first.Objects, alast.Objects["gate_key"], alast.Objects["nv_name"])
	if serr == nil && !review17Named(t, dir, filepath.Base(archives[0])) {
		t.Errorf("an ordinary seal began the trail anew over its own anchor (gate_key %s reused: the archive's last anchor record has it too) "+
			"and nothing names the tampered log's archive %s", first.Objects["gate_key"], filepath.Base(archives[0]))
	}
}

// archivedOrMarked lists the archive files in dir, or, where none is
// written yet, the one a marked move names (after review 17's mend the
// officer's reanchor writes the archive once the move's mark names it,
// and the move made again writes it if a crash came first).
func archivedOrMarked(t *testing.T, dir string) []string {
	t.Helper()
	archives, _ := filepath.Glob(filepath.Join(dir, "audit-*.log"))
	if len(archives) > 0 {
		return archives
	}
	if mv := review16Moving(t, dir); mv != nil {
		if r, _ := mv["record"].(map[string]any); r != nil {
			if n, _ := r["archived_log"].(string); n != "" {
				return []string{filepath.Join(dir, n)}
			}
		}
	}
	return nil
}

// review17StaleMark runs the officer's reanchor on ag's trail in dir and
// puts its move's mark back as the move wrote it: a crash after the move's
// record was anchored and before the mark's clearing.
func review17StaleMark(t *testing.T, env *swtpmtest.Env, ag *agent.Agent, dir string) audit.Record {
	t.Helper()
	ctx := context.Background()
	old, err := env.TPM.ReadNVPublic(agent.AuditAnchorHandle)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ag.AuditReanchor(ctx); err != nil {
		t.Fatal(err)
	}
	recs, err := ag.AuditRecords(ctx)
	if err != nil {
		t.Fatal(err)
	}
	r1 := lastAnchorRecord(t, recs)
	obj := map[string]any{}
	for k, v := range r1.Objects {
		if k != "nv_name" && k != "gate_key" {
			obj[k] = v
		}
	}
	editGate(t, dir, func(g map[string]any) {
		g["moving"] = map[string]any{"record": obj, "uid": r1.UID, "known_nv_names": []string{hex.EncodeToString(old.Name.Buffer)}}
	})
	return r1
}
