package agent

// The thirtieth review: review 29's mend (srkEvictionOwed reads the records
// as they will stand in the trail, pending then live log, newest first).
//
// The mend: the root of reviews 25 to 30, provd creating and persisting a
// missing SRK for any operation that needed it, is gone: the agent's
// connection persists it only in provision and for the load of a PK that
// lives under it (tpm.TransientSRKOnly, tpm.PersistSRK); elsewhere a
// transient copy serves the operation and is flushed when it ends. The
// owed eviction (srkEvictionOwed) stays for a state an older provd left
// with the SRK back (review30PutSRKBack mounts it), and the officer's
// reanchor that archives the log carries it into the new trail
// (srk_eviction_owed: the first flaw, with that state).
//
// FLAW (failed before the mend): TestReview30ReanchorArchivingATornLogForgetsTheEviction,
// TestReview30ArchivingReanchorPutsTheSRKBackUnowed,
// TestReview30RoleLessRefusalAfterCompleteZeroizeSRK.
//
// HELD: TestReview30TornTailAfterTheLateRecordKeepsTheEviction,
// TestReview30ProvisionWhileZeroizeDecidesTheOwedEviction,
// TestReview30ReanchorKeepingTheLinesCarriesTheEviction.

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review30TearLog appends a torn record (bytes without a newline) to dir's
// log: a crash in the middle of an append.
func review30TearLog(t *testing.T, dir string) {
	t.Helper()
	f, err := os.OpenFile(filepath.Join(dir, audit.FileName), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"seq":99,"op":"ke`); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}

// FLAW (failed before the mend): TestReview30ReanchorArchivingATornLogForgetsTheEviction
// (no attacker: one TPM fault, then a crash tearing the log's last line,
// then the officer's documented way out).
//
// Attack: review29LateRecordMount (zeroize --srk's record, srk_evicted
// true, written late into the live log by a zeroize again that then failed
// past its start record; the keys destroyed, the SRK created again by the
// move, the eviction owed, nothing waiting). A crash tears the log's last
// line. The officer runs audit reanchor, which archives a torn log as
// evidence and begins the trail anew (its first record names the archive).
// Later the officer runs zeroize without --srk.
//
// Expected: the doc's rule, "the SRK eviction a zeroize owes is carried
// until a zeroize evicts it or a provision makes the SRK the new PK's":
// neither happened, so zeroize evicts the SRK (srk_because) and none is at
// 0x81000001 at the end, as the trail's zeroize --srk record says.
//
// Observed: srkEvictionOwed reads only the live log and the pending file;
// the late zeroize --srk record is now in the archive, the debt vanishes,
// and zeroize without --srk leaves the SRK the move created again, with no
// record saying it came back.
//
// Mend: a trail begun anew must carry the debt: the move that archives a
// log (audit reanchor, or a move made again that archives) records the
// owed eviction in its record (srkEvictionOwed then reads it, as a
// zeroize's srk_evicted true), or srkEvictionOwed follows the new trail's
// first record to the archive it names.
func TestReview30ReanchorArchivingATornLogForgetsTheEviction(t *testing.T) {
	t.Parallel()
	for _, legacy := range []bool{false, true} {
		t.Run(fmt.Sprintf("SRK put back by an older provd: %v", legacy), func(t *testing.T) {
			ctx := context.Background()
			env, _, dir := review29LateRecordMount(t, legacy)
			review30TearLog(t, dir)
			r := review8Agent(t, env.TPM, dir)
			res, err := r.AuditReanchor(ctx)
			if err != nil {
				t.Fatalf("not mounted: the officer's reanchor of a torn log: %v", err)
			}
			if err := r.Close(); err != nil {
				t.Fatal(err)
			}
			t.Logf("reanchor: archived %q, found %q; SRK there %v", res.ArchivedLog, res.Found, review26SRKThere(env))
			if res.ArchivedLog == "" || review26SRKThere(env) != legacy {
				t.Fatalf("not mounted: the torn log was not archived, or the reanchor put the SRK back")
			}
			owed := (&Agent{dir: dir}).srkEvictionOwed()
			if zeroizeWithoutSRK(t, env, dir) {
				t.Errorf("the SRK zeroize --srk evicted is at 0x%08x after the last zeroize: the officer's reanchor archived the log holding the owed eviction's record, and it was forgotten (srkEvictionOwed %v)",
					uint32(tpm.SRKHandle), owed)
			}
		})
	}
}

// HELD: TestReview30TornTailAfterTheLateRecordKeepsTheEviction (a crash
// tearing the log's last line after review 28's fault).
//
// Attack: review29LateRecordMount, then a torn tail on the log: does
// srkEvictionOwed (which drops audit.ReadRecords' error) lose the live
// log's records, and does the way out (zeroize, or audit repair then
// zeroize) forget the eviction?
//
// Held: ReadRecords returns the lines before the torn tail, the debt
// stands, and zeroize without --srk (after audit repair, when refused)
// evicts the SRK.
func TestReview30TornTailAfterTheLateRecordKeepsTheEviction(t *testing.T) {
	ctx := context.Background()
	env, _, dir := review29LateRecordMount(t, true)
	review30TearLog(t, dir)
	if !(&Agent{dir: dir}).srkEvictionOwed() {
		t.Errorf("a torn tail on the live log ended the eviction the late zeroize --srk record owes")
	}
	z := review8Agent(t, env.TPM, dir)
	zres, zerr := z.Zeroize(ctx, api.ZeroizeOptions{})
	t.Logf("zeroize without --srk over a torn tail: %v (srk_evicted %v)", zerr, zres.SRKEvicted)
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	if zerr != nil {
		rp := review8Agent(t, env.TPM, dir)
		_, rerr := rp.AuditRepair(ctx, false)
		t.Logf("audit repair: %v", rerr)
		if err := rp.Close(); err != nil {
			t.Fatal(err)
		}
		if zeroizeWithoutSRK(t, env, dir) {
			t.Errorf("after audit repair, zeroize without --srk left the SRK back")
		}
		return
	}
	if review26SRKThere(env) {
		t.Errorf("zeroize without --srk over a torn tail left the SRK back")
	}
}

// review30UnanchoredZeroize runs zeroize --srk on the provisioned dir
// with the extend of its last record's line failing, and its retry
// (TPM_RC_MEMORY, twice): the keys destroyed, the SRK evicted, the line
// (keys_destroyed true, srk_evicted true) in the log and not anchored.
func review30UnanchoredZeroize(t *testing.T, env *swtpmtest.Env, bz *swtpmtest.Bus, dir string) {
	t.Helper()
	ctx := context.Background()
	z := review8Agent(t, env.TPM, dir)
	var mu sync.Mutex
	evicted, failed := false, 0
	bz.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		if review29IsSRKEviction(cmd) {
			evicted = true
			return nil, nil, false
		}
		if evicted && failed < 2 && swtpmtest.CommandCode(cmd) == tpm2.TPMCCNVExtend {
			failed++
			return swtpmtest.ErrorAnswer(tpm2.TPMRCMemory), nil, true
		}
		return nil, nil, false
	})
	zres, zerr := z.Zeroize(ctx, api.ZeroizeOptions{SRK: true})
	bz.Set(nil)
	mu.Lock()
	n := failed
	mu.Unlock()
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	owed := (&Agent{dir: dir}).srkEvictionOwed()
	t.Logf("zeroize --srk, TPM2_NV_Extend answered TPM_RC_MEMORY %d time(s): %v (srk_evicted %v, owed %v, SRK there %v)", n, zerr, zres.SRKEvicted, owed, review26SRKThere(env))
	if zerr == nil || !owed || review26SRKThere(env) {
		t.Fatalf("not mounted: zeroize --srk's last record is not in the trail")
	}
}

// FLAW (failed before the mend): TestReview30ArchivingReanchorPutsTheSRKBackUnowed
// (no attacker: a TPM fault, TPM_RC_MEMORY on two TPM2_NV_Extend, then
// the officer's documented way out).
//
// Attack: a provisioned state; zeroize --srk evicts the SRK, and the
// extend of its last record's line fails, and its retry: the line (keys_destroyed
// true, srk_evicted true) is in the log, not anchored, and zeroize says to
// run it again. Zeroize run again (without --srk: srkEvictionOwed makes it
// --srk) is refused, "lines at the end of the log are not anchored". The
// officer runs audit reanchor: the trail's own anchor disagrees with the
// log, so the log is archived as evidence and the trail begun anew with a
// new gate key, created under the SRK, which the reanchor creates and
// persists again. Then zeroize without --srk.
//
// Expected: the SRK stays evicted, or comes back only with a record that
// owes its eviction, which the next zeroize pays (srkEvictionOwed: "carried
// until a zeroize evicts it or a provision").
//
// Observed: the reanchor puts the SRK back (its record says nothing of
// it), the owed eviction's record is in the archive only, srkEvictionOwed
// is false, and zeroize without --srk leaves the SRK there.
//
// Mend: a move that begins the trail anew (archive) carries the owed
// eviction into the new trail (its record says the SRK eviction is owed,
// e.g. srk_eviction_owed true, which srkEvictionOwed reads as a zeroize's
// srk_evicted true; or srkEvictionOwed follows the archive the new trail's
// first record names); and a reanchor that owes an eviction says in its
// record that it created the SRK again (as zeroize_waiting does).
func TestReview30ArchivingReanchorPutsTheSRKBackUnowed(t *testing.T) {
	ctx := context.Background()
	bz := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bz))
	dir := t.TempDir() + "/state"
	if _, err := review8Agent(t, env.TPM, dir).Provision(ctx, review8Req()); err != nil {
		t.Fatal(err)
	}
	review30UnanchoredZeroize(t, env, bz, dir)
	again := review8Agent(t, env.TPM, dir)
	ares, aerr := again.Zeroize(ctx, api.ZeroizeOptions{})
	if err := again.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("zeroize again, as the error says: %v (srk_evicted %v, SRK there %v)", aerr, ares.SRKEvicted, review26SRKThere(env))
	r := review8Agent(t, env.TPM, dir)
	res, err := r.AuditReanchor(ctx)
	if err != nil {
		t.Fatalf("not mounted: the officer's reanchor of a torn log: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	back := review26SRKThere(env)
	owed := (&Agent{dir: dir}).srkEvictionOwed()
	t.Logf("reanchor: archived %q; its record %v; SRK there %v, owed %v", res.ArchivedLog, res.Record.Objects, back, owed)
	if res.ArchivedLog == "" {
		t.Fatalf("not mounted: the torn log was not archived")
	}
	if zeroizeWithoutSRK(t, env, dir) {
		t.Errorf("the SRK zeroize --srk evicted is at 0x%08x after the last zeroize (put back by the reanchor: %v; srkEvictionOwed after it %v)",
			uint32(tpm.SRKHandle), back, owed)
	}
}

// FLAW (failed before the mend): TestReview30RoleLessRefusalAfterCompleteZeroizeSRK
// (a role-less local client of the daemon: any local user who can reach
// its socket).
//
// Attack: the daemon provisions, then the officer's zeroize --srk
// completes (SRK evicted, trail archived, anchor and gate removed). A
// role-less caller sends any request; the daemon records the refusal
// (refusals are always recorded: nothingToActOn), which begins a new trail:
// its gate key is created under the SRK, which tpm.SRK (pinnedSRK(true),
// or SRK with nothing pinned) creates and persists again. Both in the
// daemon that zeroized (its pin kept) and in one started again on the
// zeroized directory (nothing pinned).
//
// Expected: the design: after zeroize --srk the SRK stays evicted; provd
// does not put it back without a record saying so (only provision may make
// it again). The residual-risk bullet names an operator's one-shot tpm pcr
// read and a race with zeroize, not an unprivileged caller after it.
//
// Observed: the new trail's lines are audit-anchor (reason "new trail")
// and the refusal; neither says the SRK was created; the SRK is at
// 0x81000001 again, by a caller with no role; nothing owes its eviction
// (srkEvictionOwed reads the new trail only), so zeroize without --srk
// leaves it.
//
// Mend: a trail begun where the SRK's handle is empty creates its gate key
// under a transient primary (CreatePrimary of the SRK template, flushed,
// never persisted), or a refusal in a state with no PK and no trail waits
// in audit.pending (as in a fresh directory beside another's anchor)
// instead of beginning a trail; at the least the new trail's record says
// it created the SRK.
func TestReview30RoleLessRefusalAfterCompleteZeroizeSRK(t *testing.T) {
	for _, restarted := range []bool{false, true} {
		t.Run(fmt.Sprintf("restarted=%v", restarted), func(t *testing.T) {
			ctx := context.Background()
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
			if _, err := d.Zeroize(ctx, api.ZeroizeOptions{SRK: true}); err != nil {
				t.Fatal(err)
			}
			if review26SRKThere(env) {
				t.Fatalf("not mounted: the SRK is there after zeroize --srk")
			}
			if restarted {
				// The daemon started again on the zeroized directory:
				// nothing pinned.
				if err := d.Close(); err != nil {
					t.Fatal(err)
				}
				if d, err = New(Config{TPM: env.TPM, StateDir: dir, KeepSession: true}); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { d.Close() })
			}
			caller := api.WithCaller(ctx, api.Caller{UID: 1000})
			rerr := d.RecordRefusal(caller, "key-create", "key create needs the operator role; uid 1000 holds none")
			recs, _ := audit.ReadRecords(filepath.Join(dir, audit.FileName))
			t.Logf("refusal recorded: %v; the new trail: %d line(s); SRK there %v", rerr, len(recs), review26SRKThere(env))
			for _, r := range recs {
				t.Logf("  %s %v %s", r.Op, r.Objects, r.Result)
			}
			if review26SRKThere(env) {
				t.Errorf("a role-less caller's refused request after a complete zeroize --srk put the SRK back at 0x%08x", uint32(tpm.SRKHandle))
			}
		})
	}
}

// HELD: TestReview30ProvisionWhileZeroizeDecidesTheOwedEviction (two provd
// processes on one TPM behind a resource manager: the officer's one-shot
// zeroize and another process's provision; attack idea: srkEvictionOwed is
// decided before zeroize's start record, outside the log's lock).
//
// Attack: the owed eviction in the live log (zeroize --srk's last record,
// its extends failed twice, anchored by audit repair --anchor-last; the
// SRK evicted). Zeroize without --srk decides the SRK eviction is owed;
// at its first TPM command after that decision another process starts a
// provision (creating the SRK again, a new PK under it), to have zeroize
// evict a new PK's SRK, or leave it back.
//
// Held: between the decision and the start record zeroize sends the TPM
// nothing; its first TPM command comes with the log's lock held
// (openAudit), so the provision waits 5 s and is refused (nothing made),
// and zeroize evicts the SRK with records saying so (srk true,
// srk_because, srk_evicted true). Whatever the interleaving, the test
// checks that no PK is left whose SRK was evicted and no SRK is back with
// no PK. (The window itself, file reads only, is not reached by a bus
// hook; a record written in it by another process is the residual risk
// the threat model names.)
func TestReview30ProvisionWhileZeroizeDecidesTheOwedEviction(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env, bz, dir, _, other, _ := twoProcessesMount(t)
	review30UnanchoredZeroize(t, env, bz, dir)
	rp := review8Agent(t, env.TPM, dir)
	_, rerr := rp.AuditRepair(ctx, true)
	if err := rp.Close(); err != nil {
		t.Fatal(err)
	}
	if rerr != nil || review26SRKThere(env) || !(&Agent{dir: dir}).srkEvictionOwed() {
		t.Fatalf("not mounted: repair --anchor-last %v, SRK there %v", rerr, review26SRKThere(env))
	}
	done := make(chan error, 1)
	var once sync.Once
	bz.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		// Not the read of 0x81000001 this connection's SRKBack sends as
		// the operation begins (the connection evicted the SRK above: a
		// one-shot zeroize's own would not), before the decision: a
		// provision there comes before the zeroize whole, and its record
		// ends the debt (the SRK stays, as provision put it back).
		if swtpmtest.CommandCode(cmd) == tpm2.TPMCCReadPublic {
			return nil, nil, false
		}
		once.Do(func() {
			go func() {
				p, err := New(Config{TPM: other, StateDir: dir})
				if err != nil {
					done <- err
					return
				}
				_, perr := p.Provision(ctx, review8Req())
				done <- errors.Join(perr, p.Close())
			}()
			select {
			case err := <-done:
				done <- err
			case <-time.After(60 * time.Second):
			}
		})
		return nil, nil, false
	})
	zres, zerr := review8Agent(t, env.TPM, dir).Zeroize(ctx, api.ZeroizeOptions{})
	bz.Set(nil)
	perr := <-done
	has, herr := review8Agent(t, env.TPM, dir).hasPK(ctx)
	t.Logf("provision in the other process: %v; zeroize: %v (srk_evicted %v, archive %q); PK %v/%v, SRK there %v", perr, zerr, zres.SRKEvicted, zres.AuditLog, has, herr, review26SRKThere(env))
	if zres.AuditLog != "" {
		recs, _ := audit.ReadRecords(zres.AuditLog)
		for _, r := range recs[max(0, len(recs)-4):] {
			t.Logf("  %s %v %s", r.Op, r.Objects, r.Result)
		}
	}
	if has && !review26SRKThere(env) {
		t.Errorf("a PK is left whose SRK zeroize evicted")
	}
	if !has && review26SRKThere(env) {
		t.Errorf("the SRK is back after zeroize, which owed its eviction")
	}
}

// HELD: TestReview30ReanchorKeepingTheLinesCarriesTheEviction (one TPM
// fault, then the operator's and the officer's ways out).
//
// Attack: review30UnanchoredZeroize, then audit repair --anchor-last (the
// operator accepts zeroize's last line: the owed eviction's record in the
// live log, the SRK evicted). The officer's reanchor of that intact trail
// moves it to a new gate key, created under the SRK, which it creates
// again; its record says nothing of it (zeroize_waiting is only for a
// waiting record).
//
// Held: the reanchor keeps the lines (no archive), so the owed eviction
// stays in the live trail, and zeroize without --srk evicts the SRK again
// (srk_because).
func TestReview30ReanchorKeepingTheLinesCarriesTheEviction(t *testing.T) {
	ctx := context.Background()
	bz := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bz))
	dir := t.TempDir() + "/state"
	if _, err := review8Agent(t, env.TPM, dir).Provision(ctx, review8Req()); err != nil {
		t.Fatal(err)
	}
	review30UnanchoredZeroize(t, env, bz, dir)
	rp := review8Agent(t, env.TPM, dir)
	_, rerr := rp.AuditRepair(ctx, true)
	if err := rp.Close(); err != nil {
		t.Fatal(err)
	}
	if rerr != nil || review26SRKThere(env) {
		t.Fatalf("not mounted: repair --anchor-last %v, SRK there %v", rerr, review26SRKThere(env))
	}
	r := review8Agent(t, env.TPM, dir)
	res, err := r.AuditReanchor(ctx)
	if err != nil {
		t.Fatalf("the officer's reanchor: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	owed := (&Agent{dir: dir}).srkEvictionOwed()
	t.Logf("reanchor: archived %q; SRK there %v, owed %v", res.ArchivedLog, review26SRKThere(env), owed)
	if !owed {
		t.Errorf("the officer's reanchor of an intact trail ended the owed SRK eviction")
	}
	if zeroizeWithoutSRK(t, env, dir) {
		t.Errorf("the SRK zeroize --srk evicted is back after the last zeroize")
	}
}

// review30PutSRKBack persists the SRK at 0x81000001 on the raw channel, as
// provd before review 30 did for any operation that needed a missing SRK
// (the move zeroize again made, the officer's reanchor, a new trail's
// gate): the state a device upgraded from that provd may hold.
func review30PutSRKBack(t *testing.T, raw transport.TPM) {
	t.Helper()
	rsp, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm.SRKTemplate)}.Execute(raw)
	if err != nil {
		t.Fatalf("not mounted: the SRK's CreatePrimary: %v", err)
	}
	defer func() {
		if _, err := (tpm2.FlushContext{FlushHandle: rsp.ObjectHandle}).Execute(raw); err != nil {
			t.Fatal(err)
		}
	}()
	if _, err := (tpm2.EvictControl{Auth: tpm2.TPMRHOwner, ObjectHandle: tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name},
		PersistentHandle: tpm.SRKHandle}).Execute(raw); err != nil {
		t.Fatalf("not mounted: the SRK's EvictControl: %v", err)
	}
}
