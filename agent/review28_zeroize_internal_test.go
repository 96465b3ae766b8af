package agent

// The twenty-eighth review: 3c5ccad (a waiting zeroize is zeroize's own
// last record, keys_destroyed; the officer's reanchor is refused under it
// only while zeroize run again can finish, zeroizeCanFinish, and
// otherwise records zeroize_waiting) and the waiting-record design it
// completes (f6536d5, 7fa279a, aa859f5, 3472264, 1480019).
//
// FLAW (failed before the mend): TestReview28OneFailedReadLetsTheReanchorPutTheSRKBack,
// TestReview28ReanchoredWaitingZeroizeIsWrittenAndTheSRKStays,
// TestReview28ZeroizeAgainThatFailsForgetsTheEviction.
//
// HELD: TestReview28RoleLessCallerCannotMakeAWaitingZeroize,
// TestReview28WrittenForeignIndexUnderAWaitingZeroizeHasAWayOut,
// TestReview28ZeroizeAgainFailingBeforeItsStartRecordKeepsTheEviction.

import (
	"context"
	"encoding/binary"
	"errors"
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

// review28Mount is review23MarkWhileDestroying with --srk, one-shot, that
// also returns its bus (A1's hooks for the steps after): the officer's
// reanchor interrupted after its mark, the mark placed while zeroize --srk
// destroys; the keys destroyed, the SRK evicted, zeroize's last record
// (keys_destroyed) waiting, the mark in audit.gate. The agent returned is
// a new one-shot process's.
func review28Mount(t *testing.T) (*swtpmtest.Env, *swtpmtest.Bus, string, *Agent) {
	t.Helper()
	bz := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bz))
	dir := t.TempDir() + "/state"
	_, _, _, mark := zeroizeMarkMount(t, env, bz, dir)
	z := review8Agent(t, env.TPM, dir)
	res, ok, zerr := zeroizePlacingMark(t, bz, z, dir, mark, true)
	if err := z.Close(); err != nil {
		t.Fatal(err)
	}
	if waits, evicted := waitingZeroize(dir); !ok || !errors.Is(zerr, errZeroizeUnfinished) || !res.SRKEvicted || review26SRKThere(env) || !waits || !evicted {
		t.Fatalf("not mounted: zeroize --srk under a mark placed while it destroys: %v (mark placed %v, srk_evicted %v, SRK there %v, waiting %v/%v)",
			zerr, ok, res.SRKEvicted, review26SRKThere(env), waits, evicted)
	}
	if g := review21Gate(t, dir); g.Moving == nil {
		t.Fatalf("not mounted: no mark after zeroize")
	}
	return env, bz, dir, review8Agent(t, env.TPM, dir)
}

// review28ForeignWrittenIndex is A2 (owner hierarchy open) removing the
// trail's anchor and putting an index of its own there, which it extends
// once (TPMA_NV_WRITTEN set), on the raw channel.
func review28ForeignWrittenIndex(t *testing.T, raw transport.TPM) {
	t.Helper()
	if pub, err := (tpm2.NVReadPublic{NVIndex: AuditAnchorHandle}).Execute(raw); err == nil {
		if _, err := (tpm2.NVUndefineSpace{AuthHandle: tpm2.TPMRHOwner, NVIndex: tpm2.NamedHandle{Handle: AuditAnchorHandle, Name: pub.NVName}}).Execute(raw); err != nil {
			t.Fatalf("not mounted: A2's undefine: %v", err)
		}
	}
	pub := tpm2.TPMSNVPublic{
		NVIndex: AuditAnchorHandle,
		NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{NT: tpm2.TPMNTExtend, OwnerWrite: true, OwnerRead: true, AuthWrite: true, AuthRead: true,
			NoDA: true},
		DataSize: 32,
	}
	if _, err := (tpm2.NVDefineSpace{AuthHandle: tpm2.TPMRHOwner, PublicInfo: tpm2.New2B(pub)}).Execute(raw); err != nil {
		t.Fatalf("not mounted: A2's define: %v", err)
	}
	// TPM2_NV_Extend by the owner (empty password): authHandle owner,
	// nvIndex, one password session (TPM_RS_PW), data "A2".
	var b []byte
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMSTSessions))
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMCCNVExtend))
	b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMRHOwner))
	b = binary.BigEndian.AppendUint32(b, uint32(AuditAnchorHandle))
	b = binary.BigEndian.AppendUint32(b, 4+2+1+2)
	b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMRSPW))
	b = append(b, 0, 0, 0, 0, 0)
	b = binary.BigEndian.AppendUint16(b, 2)
	b = append(b, 'A', '2')
	binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
	rsp, err := raw.Send(b)
	if err != nil || len(rsp) < 10 || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
		t.Fatalf("not mounted: A2's extend: %v %x", err, rsp)
	}
	if rp, err := (tpm2.NVReadPublic{NVIndex: AuditAnchorHandle}).Execute(raw); err != nil {
		t.Fatal(err)
	} else if p, err := rp.NVPublic.Contents(); err != nil || !p.Attributes.Written {
		t.Fatalf("not mounted: A2's index not written: %v", err)
	}
}

// HELD: TestReview28WrittenForeignIndexUnderAWaitingZeroizeHasAWayOut (A2,
// the owner hierarchy open, after an honest fault: review 27's dead end
// with one more step on A2's side).
//
// Attack: review28Mount (zeroize --srk destroyed the keys, evicted the SRK,
// its record waits, the officer's interrupted move marked). A2 puts an
// index of its own at the anchor's handle, as in review 27's
// TestReview27WaitingZeroizeAndAReplacedAnchorIsADeadEnd, and extends it
// once (TPMA_NV_WRITTEN set), so that the zeroized state (no PK, a mark)
// might be taken for a directory with no trail beside another state's
// anchor (foreignAnchor).
//
// Held: zeroize again is refused (tampering), but the officer's reanchor
// goes on (a log with lines is a trail, foreignAnchor is not asked), its
// record says zeroize_waiting, and zeroize run again (without --srk)
// finishes: no audit.gate, no live log, the SRK evicted again
// (srk_because). Were the reanchor refused, audit repair, provision and
// provision --force are tried and the test fails if all are refused.
func TestReview28WrittenForeignIndexUnderAWaitingZeroizeHasAWayOut(t *testing.T) {
	ctx := context.Background()
	env, bz, dir, a := review28Mount(t)
	review28ForeignWrittenIndex(t, bz.Next)
	_, zerr := a.Zeroize(ctx, api.ZeroizeOptions{SRK: true})
	t.Logf("zeroize --srk again: %v", zerr)
	if zerr == nil {
		return
	}
	o := review8Agent(t, env.TPM, dir)
	rres, rerr := o.AuditReanchor(ctx)
	t.Logf("the officer's reanchor: %v (record %v)", rerr, rres.Record.Objects)
	if rerr == nil {
		if err := o.Close(); err != nil {
			t.Fatal(err)
		}
		zres, zerr := review8Agent(t, env.TPM, dir).Zeroize(ctx, api.ZeroizeOptions{})
		t.Logf("zeroize again after the reanchor: %v (srk_evicted %v)", zerr, zres.SRKEvicted)
		if zerr != nil || review26SRKThere(env) || fileExists(filepath.Join(dir, gateFile)) || fileExists(filepath.Join(dir, audit.FileName)) {
			t.Errorf("after the officer's reanchor zeroize run again does not finish: %v (SRK there %v)", zerr, review26SRKThere(env))
		}
		return
	}
	_, perr := review8Agent(t, env.TPM, dir).AuditRepair(ctx, false)
	t.Logf("audit repair: %v", perr)
	if perr == nil {
		return
	}
	_, verr := review8Agent(t, env.TPM, dir).Provision(ctx, review8Req())
	t.Logf("provision: %v", verr)
	if verr == nil {
		return
	}
	force := review8Req()
	force.Force = true
	_, ferr := review8Agent(t, env.TPM, dir).Provision(ctx, force)
	t.Logf("provision --force: %v", ferr)
	if ferr == nil {
		return
	}
	t.Errorf("zeroize's record waits and A2 put a written index at the anchor's handle: zeroize again, the officer's reanchor, audit repair, provision and provision --force are all refused: no way out")
}

// review28Zeroizes counts the zeroize-op records waiting in dir.
func review28Zeroizes(t *testing.T, dir string) int { return len(review27Waiting(t, dir)) }

// FLAW (failed before the mend): TestReview28OneFailedReadLetsTheReanchorPutTheSRKBack (A1 for one
// command, or one TPM fault: TPM_RC_RETRY / TPM_RC_MEMORY on an
// unauthenticated read).
//
// Attack: review28Mount (a waiting zeroize --srk, the SRK evicted, the
// officer's move marked; the handle holds the trail's own anchor, so
// zeroize run again can finish: review 23 and 26 show it). The officer runs
// `provd audit reanchor`; its first NV_ReadPublic of the anchor's handle
// (zeroizeCanFinish's) fails once on the bus.
//
// Expected: 3c5ccad's rule: the reanchor is refused while zeroize run again
// can finish (errZeroizeUnfinished), or fails on the read's error; the SRK
// zeroize --srk evicted stays evicted (review 26's
// TestReview26OfficersReanchorPutsTheEvictedSRKBack).
//
// Observed: zeroizeCanFinish takes any read error for "cannot finish"; the
// reanchor goes on (the trail is not tampered: verify says only that the
// move is unfinished), reads the handle again (the genuine answer), makes
// the move, creates and persists the SRK again (tpm.TPM.SRK in
// newGatedAnchor), and succeeds: the SRK is back while the waiting record
// says srk_evicted true.
//
// Suggested mend: zeroizeCanFinish returns the read's error (the reanchor
// fails, nothing moves) and decides "cannot" only on an answer naming
// another's index; better, decide under the log's lock with the read the
// move itself makes, and never create the SRK in a move under a waiting
// zeroize that evicted it (evict it again in the same operation, recorded).
func TestReview28OneFailedReadLetsTheReanchorPutTheSRKBack(t *testing.T) {
	ctx := context.Background()
	env, bz, dir, _ := review28Mount(t)
	var mu sync.Mutex
	failed := 0
	bz.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) != tpm2.TPMCCNVReadPublic {
			return nil, nil, false
		}
		mu.Lock()
		defer mu.Unlock()
		if failed > 0 {
			return nil, nil, false
		}
		failed++
		return swtpmtest.ErrorAnswer(tpm2.TPMRCMemory), nil, true
	})
	o := review8Agent(t, env.TPM, dir)
	res, rerr := o.AuditReanchor(ctx)
	bz.Set(nil)
	t.Logf("the officer's reanchor with one NV_ReadPublic failed: %v (found %q, record %v)", rerr, res.Found, res.Record.Objects["zeroize_waiting"])
	if rerr == nil {
		t.Errorf("zeroize run again could finish (the handle holds the trail's own anchor), and one failed read let the officer's reanchor go on")
	}
	if review26SRKThere(env) {
		t.Errorf("the SRK zeroize --srk evicted is back after the officer's reanchor (the waiting record says srk_evicted true)")
	}
}

// FLAW (failed before the mend): TestReview28ReanchoredWaitingZeroizeIsWrittenAndTheSRKStays (A2
// replacing the anchor, as review 27's mount, then any local client with no
// role at all).
//
// Attack: review28Mount; A2 puts an (unwritten) index of its own at the
// anchor's handle (review27ReplaceAnchor). As 3c5ccad means, the officer's
// reanchor goes on: it creates the SRK again and its record says
// zeroize_waiting "... (it evicted the SRK, which this reanchor may have
// created again: zeroize run again evicts it)". Before the officer runs
// zeroize again, a role-less client's request is refused by the daemon and
// its refusal recorded (RecordRefusal): record() writes the pending
// records first (writePending), zeroize's waiting record among them. Then
// the officer runs zeroize again without --srk, as the reanchor's record
// says.
//
// Expected: what the reanchor's record promised: zeroize run again evicts
// the SRK the waiting zeroize evicted (srk_because), so that at the end the
// SRK is gone as the zeroize record (srk_evicted true) says; or the waiting
// record stays waiting (only zeroize writes it) until then.
//
// Observed: nothing keeps the waiting record for zeroize once no mark is
// left: any audited operation's record writes it into the trail (recorded
// late), waitingZeroize is then false, zeroize again evicts nothing, and
// the SRK stays at 0x81000001 while the trail says zeroize --srk evicted
// it.
//
// Suggested mend: writePending leaves a keys_destroyed zeroize record
// pending for zeroize run again (or zeroize's start record carries the
// eviction forward from the trail too: the last zeroize record with
// srk_evicted true and no complete zeroize after it, read from the log as
// well as from audit.pending); or the officer's reanchor under a waiting
// zeroize that evicted the SRK evicts it again once its move is made.
func TestReview28ReanchoredWaitingZeroizeIsWrittenAndTheSRKStays(t *testing.T) {
	ctx := context.Background()
	env, _, dir, _ := review28Mount(t)
	review27ReplaceAnchor(t, env.TPM)
	o := review8Agent(t, env.TPM, dir)
	res, rerr := o.AuditReanchor(ctx)
	if rerr != nil || !strings.Contains(res.Record.Objects["zeroize_waiting"], "zeroize run again evicts it") {
		t.Fatalf("not mounted: the officer's reanchor beside A2's index: %v (zeroize_waiting %q)", rerr, res.Record.Objects["zeroize_waiting"])
	}
	if err := o.Close(); err != nil {
		t.Fatal(err)
	}
	t.Logf("after the reanchor: SRK there %v, zeroize records waiting %d", review26SRKThere(env), review28Zeroizes(t, dir))
	d, err := New(Config{TPM: env.TPM, StateDir: dir, KeepSession: true})
	if err != nil {
		t.Fatal(err)
	}
	ferr := d.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 1000}), "key-create", "key-create needs the officer role; uid 1000 holds none")
	if err := d.Close(); err != nil {
		t.Fatal(err)
	}
	waits, _ := waitingZeroize(dir)
	t.Logf("a role-less caller's refusal recorded: %v; zeroize still waiting: %v", ferr, waits)
	if zeroizeWithoutSRK(t, env, dir) {
		t.Errorf("after zeroize run again, as the reanchor's record said, the SRK zeroize --srk evicted is back at 0x%08x (the waiting record was written into the trail by a role-less caller's refusal: still waiting %v)",
			uint32(tpm.SRKHandle), waits)
	}
}

// FLAW (failed before the mend): TestReview28ZeroizeAgainThatFailsForgetsTheEviction (one TPM fault,
// or A1 for one command, or a power cut, in zeroize run again after its
// start record).
//
// Attack: review28Mount. The officer runs zeroize again without --srk (the
// waiting record says srk_evicted: srk_because makes it --srk). Its start
// record's open makes the marked move (creating the SRK again), writes the
// pending records into the trail, zeroize's waiting record among them
// (writePending), and writes zeroize-start; then one command fails (here
// the first TPM2_StartAuthSession or TPM2_Load after the start record's
// extend: in the run, holdGate's TPM2_Load of the gate key, TPM_RC_
// SESSION_MEMORY): zeroize is refused, "nothing destroyed". The officer runs zeroize again, without --srk.
//
// Expected: the eviction the first zeroize did is still owed: the last
// zeroize evicts the SRK (srk_because), or the failed one's refusal keeps
// the waiting record (it is still the only record of a zeroize not done).
//
// Observed: the waiting record was consumed by the failed attempt's start
// record; waitingZeroize is false, the last zeroize evicts nothing, and
// the SRK the move created again stays, while the trail's zeroize record
// says srk_evicted true.
//
// Suggested mend: as TestReview28ReanchoredWaitingZeroizeIsWrittenAndTheSRKStays:
// carry the eviction in the trail (a zeroize-start with srk_because true
// and no zeroize record after it, or the last keys_destroyed zeroize record
// with srk_evicted true and no complete zeroize after it) as well as in
// audit.pending; or keep the waiting record pending until zeroize's own
// last record is written.
func TestReview28ZeroizeAgainThatFailsForgetsTheEviction(t *testing.T) {
	env, bz, dir, a := review28Mount(t)
	ok, zerr := zeroizeFailingPastItsStart(t, bz, dir, a)
	waits, _ := waitingZeroize(dir)
	t.Logf("zeroize again with one fault after its start record: %v (fault injected %v); SRK there %v; zeroize still waiting %v", zerr, ok, review26SRKThere(env), waits)
	if !ok || zerr == nil {
		t.Fatalf("not mounted: the fault after the start record")
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if zeroizeWithoutSRK(t, env, dir) {
		t.Errorf("zeroize --srk's eviction is forgotten after a zeroize again that failed once past its start record: the SRK is at 0x%08x after zeroize ran to its end (waiting record consumed: %v)",
			uint32(tpm.SRKHandle), !waits)
	}
}

// HELD: TestReview28RoleLessCallerCannotMakeAWaitingZeroize (a local client
// of the daemon with no role; a recovered panic in a zeroize request).
//
// Attack: with the trail unable to take a record (A2 replaced the anchor),
// a role-less caller's zeroize request is refused and its refusal waits in
// audit.pending with op zeroize; so does a recovered fault's record in a
// zeroize request. The refusal's reason is the server's text, not the
// caller's: no object of the caller's choice (keys_destroyed) reaches it.
//
// Held: neither is a waiting zeroize (waitingZeroize false), and the
// officer's reanchor is not refused with errZeroizeUnfinished.
func TestReview28RoleLessCallerCannotMakeAWaitingZeroize(t *testing.T) {
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
	review27ReplaceAnchor(t, env.TPM)
	caller := api.WithCaller(ctx, api.Caller{UID: 1000})
	_ = d.RecordRefusal(caller, "zeroize", `zeroize needs the officer role; uid 1000 holds none","keys_destroyed":"true`)
	_ = d.RecordFault(caller, "zeroize", "keys_destroyed")
	if n := review28Zeroizes(t, dir); n != 2 {
		t.Fatalf("not mounted: zeroize-op records waiting %d, want 2", n)
	}
	if waits, _ := waitingZeroize(dir); waits {
		t.Errorf("a refused zeroize request's or a fault's record is taken for zeroize's own last record")
	}
	if _, err := d.AuditReanchor(ctx); err != nil {
		t.Errorf("the officer's reanchor: %v", err)
	}
}

// HELD: TestReview28ZeroizeAgainFailingBeforeItsStartRecordKeepsTheEviction
// (one TPM fault, or A1 for one command, in zeroize run again before its
// start record is in).
//
// Attack: review28Mount; zeroize again without --srk, whose start record's
// open makes the marked move; the first TPM2_StartAuthSession after the
// move's record is extended fails (the open's read of the new anchor).
//
// Held: zeroize is refused with nothing destroyed, the waiting record still
// waits (writePending not reached), and zeroize run again, without --srk,
// finishes and evicts the SRK the move created again (srk_because).
func TestReview28ZeroizeAgainFailingBeforeItsStartRecordKeepsTheEviction(t *testing.T) {
	ctx := context.Background()
	env, bz, dir, a := review28Mount(t)
	var mu sync.Mutex
	armed, failed := false, false
	bz.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		switch cc := swtpmtest.CommandCode(cmd); {
		case failed:
		case cc == tpm2.TPMCCNVExtend:
			armed = true
		case armed && cc == tpm2.TPMCCStartAuthSession:
			failed = true
			return swtpmtest.ErrorAnswer(tpm2.TPMRCSessionMemory), nil, true
		}
		return nil, nil, false
	})
	_, zerr := a.Zeroize(ctx, api.ZeroizeOptions{})
	bz.Set(nil)
	mu.Lock()
	ok := failed
	mu.Unlock()
	waits, evicted := waitingZeroize(dir)
	t.Logf("zeroize again with one fault before its start record: %v (fault injected %v); SRK there %v; waiting %v/%v", zerr, ok, review26SRKThere(env), waits, evicted)
	if !ok || zerr == nil {
		t.Fatalf("not mounted: the fault before the start record")
	}
	if !waits || !evicted {
		t.Errorf("zeroize's waiting record (srk_evicted) is gone after a zeroize again refused before its start record")
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	zres, zerr := review8Agent(t, env.TPM, dir).Zeroize(ctx, api.ZeroizeOptions{})
	t.Logf("zeroize again (without --srk): %v; srk_evicted %v", zerr, zres.SRKEvicted)
	if zerr != nil || review26SRKThere(env) || fileExists(filepath.Join(dir, gateFile)) || fileExists(filepath.Join(dir, audit.FileName)) {
		t.Errorf("zeroize run again after the fault: %v; the SRK there %v", zerr, review26SRKThere(env))
	}
}

// zeroizeWithoutSRK runs zeroize without --srk on dir in a new agent (a
// one-shot process), which must finish, and reports whether the SRK is
// at its handle after it.
func zeroizeWithoutSRK(t *testing.T, env *swtpmtest.Env, dir string) (srkThere bool) {
	t.Helper()
	res, err := review8Agent(t, env.TPM, dir).Zeroize(context.Background(), api.ZeroizeOptions{})
	t.Logf("zeroize without --srk: %v; srk_evicted %v", err, res.SRKEvicted)
	if err != nil {
		t.Fatalf("zeroize: %v", err)
	}
	return review26SRKThere(env)
}

// zeroizeFailingPastItsStart runs zeroize without --srk with a, one
// command failing (TPM_RC_SESSION_MEMORY: the first StartAuthSession or
// Load) once its zeroize-start line is in dir's log; it returns whether
// the fault came, and zeroize's error.
func zeroizeFailingPastItsStart(t *testing.T, bz *swtpmtest.Bus, dir string, a *Agent) (faulted bool, err error) {
	t.Helper()
	logPath := filepath.Join(dir, audit.FileName)
	startLine := `"op":"` + opZeroizeStart + `"`
	before, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	starts := strings.Count(string(before), startLine)
	var mu sync.Mutex
	armed, failed := false, false
	bz.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		cc := swtpmtest.CommandCode(cmd)
		if failed {
			return nil, nil, false
		}
		if cc == tpm2.TPMCCNVExtend {
			rsp, err := next.Send(cmd)
			if b, rerr := os.ReadFile(logPath); rerr == nil && strings.Count(string(b), startLine) > starts {
				armed = true
			}
			return rsp, err, true
		}
		if armed && (cc == tpm2.TPMCCStartAuthSession || cc == tpm2.TPMCCLoad) {
			failed = true
			return swtpmtest.ErrorAnswer(tpm2.TPMRCSessionMemory), nil, true
		}
		return nil, nil, false
	})
	_, zerr := a.Zeroize(context.Background(), api.ZeroizeOptions{})
	bz.Set(nil)
	mu.Lock()
	defer mu.Unlock()
	return failed, zerr
}
