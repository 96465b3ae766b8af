package agent

// The twenty-ninth review: feeeb9a (zeroizeCanFinish returns a failed
// read's error; srkEvictionOwed carries the SRK eviction a zeroize owes
// from its waiting record or from that record written late into the live
// trail, until a zeroize evicts it or a provision).
//
// FLAW (failed before the mend): TestReview29ForcedEvictionThatFailsForgetsTheEviction,
// TestReview29ProvisionWhoseRecordWaitsLeavesTheEvictionOwed.
//
// HELD: TestReview29CompleteZeroizeSRKThenProvisionEvictsNothing,
// TestReview29LateRecordOutlivesRoleLessRecords,
// TestReview29TornTailUnderAWaitingZeroizeIsNoDeadEnd.

import (
	"context"
	"encoding/binary"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review29IsSRKEviction reports whether cmd is TPM2_EvictControl of the
// persistent SRK (objectHandle 0x81000001: an eviction, not a persist).
func review29IsSRKEviction(cmd []byte) bool {
	return swtpmtest.CommandCode(cmd) == tpm2.TPMCCEvictControl && len(cmd) >= 18 &&
		tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[14:18])) == tpm.SRKHandle
}

// review29LateRecordMount is review28Mount, then zeroize run again (without
// --srk) failing once after its start record (review 28's
// TestReview28ZeroizeAgainThatFailsForgetsTheEviction): the keys
// destroyed, zeroize --srk's record (srk_evicted true) written late into
// the live trail, nothing waiting. Before review 30 the move zeroize again
// made created the SRK again and persisted it; no move does since
// (tpm.TransientSRKOnly), and with legacySRK the mount puts it back as
// that provd did (review30PutSRKBack): the state a device upgraded from it
// may hold, whose owed eviction srkEvictionOwed still settles.
func review29LateRecordMount(t *testing.T, legacySRK bool) (*swtpmtest.Env, *swtpmtest.Bus, string) {
	t.Helper()
	env, bz, dir, a := review28Mount(t)
	ok, zerr := zeroizeFailingPastItsStart(t, bz, dir, a)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if review26SRKThere(env) {
		t.Fatalf("the move zeroize again made put the SRK zeroize --srk evicted back at 0x%08x", uint32(tpm.SRKHandle))
	}
	if legacySRK {
		review30PutSRKBack(t, bz.Next)
	}
	if waits, _ := waitingZeroize(dir); !ok || zerr == nil || waits || !(&Agent{dir: dir}).srkEvictionOwed() {
		t.Fatalf("not mounted: zeroize again failing past its start record: %v (fault %v, waiting %v, SRK there %v)", zerr, ok, waits, review26SRKThere(env))
	}
	return env, bz, dir
}

// FLAW (failed before the mend): TestReview29ForcedEvictionThatFailsForgetsTheEviction (one TPM
// fault, or A1 for one command: TPM2_EvictControl answered with an error,
// or its success forged and the read-back showing the SRK still there).
//
// Attack: review28Mount (zeroize --srk evicted the SRK and left its trail,
// its record waiting). The officer runs zeroize again without --srk:
// srkEvictionOwed makes it --srk (srk_because); its start record's open
// makes the marked move, creating the SRK again. Its one TPM2_EvictControl
// of the SRK fails (TPM_RC_MEMORY here). Zeroize's last record is written
// into the live trail: op zeroize, keys_destroyed false, srk true,
// srk_because, srk_evicted false. The officer runs zeroize again, without
// --srk, as the first error says ("with the same options").
//
// Expected: the doc's rule ("carried until a zeroize evicts it or a
// provision"): no zeroize evicted it, so the last zeroize evicts the SRK
// (srk_because) and at the end no SRK is at 0x81000001, as the trail's
// zeroize --srk record says.
//
// Observed: srkEvictionOwed's backwards scan stops at the newest zeroize
// record with keys_destroyed (any value) and takes its srk_evicted
// ("false": the eviction failed) for "a zeroize that kept the SRK"; the
// last zeroize evicts nothing and the SRK the move created again stays.
//
// Suggested mend: a zeroize record ends the debt only if it evicted the
// SRK (srk_evicted true: then it is paid) or was not asked to (srk false
// with no srk_because, which srkEvictionOwed never lets happen while the
// debt stands); a zeroize that was asked to evict and failed (srk true,
// srk_evicted false) carries it on: keep scanning past it.
func TestReview29ForcedEvictionThatFailsForgetsTheEviction(t *testing.T) {
	ctx := context.Background()
	env, bz, dir, a := review28Mount(t)
	review30PutSRKBack(t, bz.Next) // as zeroize again's move did before review 30
	var mu sync.Mutex
	failed := false
	bz.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		if failed || !review29IsSRKEviction(cmd) {
			return nil, nil, false
		}
		failed = true
		return swtpmtest.ErrorAnswer(tpm2.TPMRCMemory), nil, true
	})
	res, zerr := a.Zeroize(ctx, api.ZeroizeOptions{})
	bz.Set(nil)
	mu.Lock()
	ok := failed
	mu.Unlock()
	t.Logf("zeroize again (made --srk by srk_because), its SRK eviction failed once: %v (fault %v, srk_evicted %v, SRK there %v)", zerr, ok, res.SRKEvicted, review26SRKThere(env))
	if !ok || zerr == nil || !review26SRKThere(env) {
		t.Fatalf("not mounted: the forced eviction did not fail")
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	owed := (&Agent{dir: dir}).srkEvictionOwed()
	if zeroizeWithoutSRK(t, env, dir) {
		t.Errorf("zeroize --srk's eviction is forgotten after a zeroize that was made --srk for it and whose eviction failed once: the SRK is at 0x%08x after zeroize ran to its end (srkEvictionOwed %v)",
			uint32(tpm.SRKHandle), owed)
	}
}

// FLAW (failed before the mend): TestReview29ProvisionWhoseRecordWaitsLeavesTheEvictionOwed (one
// TPM fault, or A1 for one command, on a provision's record: its extend).
//
// Attack: review29LateRecordMount (zeroize --srk's record, srk_evicted
// true, written late into the live trail; keys destroyed; the SRK there
// again). The officer provisions anew; the provision succeeds (PK
// committed, the SRK pinned as the new PK's parent), but its record's
// gate proof fails (its TPM2_PolicySecret, then the retry's reads,
// TPM2_StartAuthSession, answered TPM_RC_SESSION_MEMORY: four commands), so the record (op
// provision, result ok) waits in audit.pending, no line written. Later the officer runs
// zeroize without --srk.
//
// Expected: the doc's rule: "carried until ... a provision makes the SRK
// the new PK's": a provision did, its record is in the state directory
// (waiting: it is written before the next record, after every line of the
// log); zeroize without --srk keeps the SRK, as asked.
//
// Observed: srkEvictionOwed reads the pending file for zeroize records only
// and the log backwards; the waiting provision record is not looked at, the
// old zeroize --srk record is the newest it finds, and zeroize without
// --srk evicts the new PK's SRK (srk_because "a zeroize that left its
// trail evicted the SRK"), which nobody asked for.
//
// Suggested mend: scan the records in the order they will stand in the
// trail: the log's lines, then the pending records (waitingZeroize's and
// the provision's), newest first; a provision ok among the pending records
// newer than the zeroize record ends the debt.
func TestReview29ProvisionWhoseRecordWaitsLeavesTheEvictionOwed(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	env, bz, dir := review29LateRecordMount(t, true)
	manifest := filepath.Join(dir, "manifest.json")
	before, _ := os.ReadFile(manifest)
	var mu sync.Mutex
	extends := 0
	bz.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		if now, _ := os.ReadFile(manifest); string(now) == string(before) {
			return nil, nil, false // the provision has not committed yet
		}
		if cc := swtpmtest.CommandCode(cmd); cc != tpm2.TPMCCStartAuthSession && cc != tpm2.TPMCCPolicySecret {
			return nil, nil, false
		}
		mu.Lock()
		defer mu.Unlock()
		extends++
		return swtpmtest.ErrorAnswer(tpm2.TPMRCSessionMemory), nil, true
	})
	p := review8Agent(t, env.TPM, dir)
	_, perr := p.Provision(ctx, review8Req())
	bz.Set(nil)
	has, herr := p.hasPK(ctx)
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	b, _ := os.ReadFile((&Agent{dir: dir}).pendingPath())
	waiting, _ := readPending(b)
	provOK := false
	for _, r := range waiting {
		provOK = provOK || r.Op == "provision" && r.Result == "ok"
	}
	mu.Lock()
	n := extends
	mu.Unlock()
	t.Logf("provision with its record's gate proof failed: %v (commands refused %d, PK %v/%v, provision ok waiting %v, SRK there %v)", perr, n, has, herr, provOK, review26SRKThere(env))
	if !has || !provOK || !review26SRKThere(env) {
		t.Fatalf("not mounted: a provision that happened, its record waiting")
	}
	owed := (&Agent{dir: dir}).srkEvictionOwed()
	if !zeroizeWithoutSRK(t, env, dir) {
		t.Errorf("a provision made the SRK the new PK's (its record waiting), yet zeroize without --srk evicted it (srkEvictionOwed %v: the waiting provision record is not seen)", owed)
	}
}

// HELD: TestReview29CompleteZeroizeSRKThenProvisionEvictsNothing (no
// attacker; then a role-less local client of the daemon).
//
// Attack: a complete zeroize --srk (its record archived with the log),
// a new provision, role-less callers' refused zeroize and provision
// requests recorded (their reasons the server's text with an object of the
// caller's choice in it), a recovered fault in a provision; zeroize
// without --srk.
//
// Held: nothing is owed (the archived trail is not read, the refusals are
// not zeroize's last record nor a provision's), and zeroize without --srk
// keeps the SRK.
func TestReview29CompleteZeroizeSRKThenProvisionEvictsNothing(t *testing.T) {
	ctx := context.Background()
	env := swtpmtest.Start(t)
	dir := t.TempDir() + "/state"
	a := review8Agent(t, env.TPM, dir)
	if _, err := a.Provision(ctx, review8Req()); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Zeroize(ctx, api.ZeroizeOptions{SRK: true}); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	d, err := New(Config{TPM: env.TPM, StateDir: dir, KeepSession: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	if _, err := d.Provision(ctx, review8Req()); err != nil {
		t.Fatal(err)
	}
	caller := api.WithCaller(ctx, api.Caller{UID: 1000})
	_ = d.RecordRefusal(caller, "zeroize", `zeroize needs the officer role; uid 1000 holds none","keys_destroyed":"true","srk_evicted":"true`)
	_ = d.RecordRefusal(caller, "provision", "provision needs the officer role; uid 1000 holds none")
	_ = d.RecordFault(caller, "zeroize", "keys_destroyed")
	if d.srkEvictionOwed() {
		t.Errorf("after a complete zeroize --srk, a provision and role-less records, an SRK eviction is owed")
	}
	if _, err := d.Zeroize(ctx, api.ZeroizeOptions{}); err != nil {
		t.Fatal(err)
	}
	if !review26SRKThere(env) {
		t.Errorf("zeroize without --srk evicted the SRK after a complete zeroize --srk and a new provision")
	}
}

// HELD: TestReview29LateRecordOutlivesRoleLessRecords (a role-less local
// client of the daemon, after review 28's fault).
//
// Attack: review29LateRecordMount (zeroize --srk's record written late, the
// SRK there again). A role-less caller's refused provision and zeroize
// requests are recorded after it (op provision, result an error; op
// zeroize without keys_destroyed), to end the debt the backwards scan
// carries.
//
// Held: the debt stands (neither is a provision ok nor zeroize's own
// record), and zeroize without --srk evicts the SRK (srk_because).
func TestReview29LateRecordOutlivesRoleLessRecords(t *testing.T) {
	ctx := context.Background()
	env, _, dir := review29LateRecordMount(t, true)
	d, err := New(Config{TPM: env.TPM, StateDir: dir, KeepSession: true})
	if err != nil {
		t.Fatal(err)
	}
	caller := api.WithCaller(ctx, api.Caller{UID: 1000})
	for _, op := range []string{"provision", "zeroize"} {
		if err := d.RecordRefusal(caller, op, op+" needs the officer role; uid 1000 holds none"); err != nil {
			t.Logf("%s refusal: %v", op, err)
		}
	}
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	if !(&Agent{dir: dir}).srkEvictionOwed() {
		t.Errorf("role-less refusals recorded after the late zeroize --srk record ended the eviction it owes")
	}
	if zeroizeWithoutSRK(t, env, dir) {
		t.Errorf("the SRK zeroize --srk evicted is back after the last zeroize")
	}
}

// HELD: TestReview29TornTailUnderAWaitingZeroizeIsNoDeadEnd (a crash, or
// another local process of the same uid, leaving bytes without a newline
// at the log's end).
//
// Attack: review28Mount (a waiting zeroize --srk, the officer's move
// marked); a torn record is appended to audit.log. zeroizeCanFinish now
// returns errors; is the officer refused while zeroize again cannot
// finish either?
//
// Held: zeroizeCanFinish says zeroize again can finish (no error), the
// officer's reanchor is refused with errZeroizeUnfinished, and zeroize
// run again without --srk finishes and evicts the SRK (srk_because).
func TestReview29TornTailUnderAWaitingZeroizeIsNoDeadEnd(t *testing.T) {
	ctx := context.Background()
	env, _, dir, a := review28Mount(t)
	f, err := os.OpenFile(filepath.Join(dir, audit.FileName), os.O_APPEND|os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"seq":9,"op":"zer`); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	can, cerr := a.zeroizeCanFinish()
	_, rerr := a.AuditReanchor(ctx)
	t.Logf("zeroizeCanFinish %v %v; the officer's reanchor: %v", can, cerr, rerr)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	zres, zerr := review8Agent(t, env.TPM, dir).Zeroize(ctx, api.ZeroizeOptions{})
	t.Logf("zeroize again: %v (srk_evicted %v)", zerr, zres.SRKEvicted)
	if zerr != nil && rerr != nil {
		t.Errorf("a torn tail under a waiting zeroize: zeroize again (%v) and the officer's reanchor (%v) both refused", zerr, rerr)
	}
	if zerr == nil && review26SRKThere(env) {
		t.Errorf("zeroize again finished and the SRK is back")
	}
}
