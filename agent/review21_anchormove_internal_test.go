package agent

// The twenty-first review: the move of the audit trail to a new anchor
// and the last mends of review 20 (4836ff2..90d15ab: an append, an open
// and a repair check under the log's lock that their file is still the
// log at the path, audit.ErrMoved, the agent opening once more on it;
// markedArchive; lockedLog).
//
// Two provd processes on one state directory and one TPM (review8Wire,
// review8Client): the officer's one-shot `provd audit reanchor` and a
// user's one-shot `provd seal` (or a daemon's first request after it
// opened the trail), each held in a command on its own bus while the
// other runs.
//
// FLAW (failed before the mend): TestReview21OpenedAppendExtendsAnUnfinishedMovesAnchor (here);
// audit.TestReview21KeptArchiveCutsLinesAppendedSince (its consequence
// for a fresh move: a line in no file, the trail verifying).
// HELD: audit.TestReview21RepairWaitingForANonFreshMove.

import (
	"bytes"
	"context"
	"encoding/hex"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review21Gate reads dir's audit.gate (fatal when there is none).
func review21Gate(t *testing.T, dir string) *gateRecord {
	t.Helper()
	g, err := (&trailAnchor{dir: dir}).gate()
	if err != nil || g == nil {
		t.Fatalf("audit.gate: %v %v", g, err)
	}
	return g
}

// FLAW (failed before the mend): TestReview21OpenedAppendExtendsAnUnfinishedMovesAnchor.
//
// Attack (honest processes, one fault): a user's one-shot seal (or the
// daemon's first request after it opened the trail) opens the trail
// (audit.Open reads the anchor: the Log's "opened" read) and runs. The
// officer's one-shot `audit reanchor` of the healthy trail takes the
// log's lock as the seal's record reads audit.gate (no mark yet) and
// waits for that lock. The reanchor writes its mark, removes the old
// index, defines its own, and fails before its record's line (here a
// refused TPM2_PolicySecret of the record's extend; a crash or a power
// cut there is the same): the mark stays, the new index unwritten.
//
// Observed: the seal's Append takes the lock and, since its Log was
// opened in this operation and nothing was appended since, skips the
// anchor read (audit.Log's opened fast path), which is where
// trailAnchor.ReadPrepare checks the mark (moveUnfinished). Its Prepare
// reads audit.gate, finds the move's new gate and extends the move's new,
// never-extended index with the seal's line: the seal succeeds while the
// move is unfinished, and the move's index is extended first by a line
// that is not its audit-anchor record, which threat-model.md says never
// happens ("While no complete line of the log is the move's record, the
// trail is verified against no index"; "the index defined is an's to
// extend first"). The move made again by the next operation then finds
// its own index written, takes it for an anchor it replaces, and names it
// (replaced_nv_name/value): the trail's anchor before the move, which the
// interrupted move had recorded in the mark as the evidence of what the
// trail was pinned to, is in no record any more. With a fresh move (the
// officer's reanchor of a log its anchor contradicts) interrupted between
// its archive and its cut, the same append goes to the log after the
// archive was written; the move made again keeps that archive (its
// SHA-256 is the mark's) and begins the log anew: the seal's line is in
// no file and the trail verifies (audit.TestReview21KeptArchiveCutsLinesAppendedSince).
//
// Expected: an append under a marked move neither writes nor extends: the
// record goes pending (errMoveUnfinished) or the move is finished first;
// the move made again names the trail's anchor before the move.
//
// Mend: Append's opened fast path must not skip what ReadPrepare checks:
// trailAnchor.Prepare (or write) refuses while audit.gate marks an
// unfinished move, or a Log remembers the gate it was opened with and
// reads the anchor when audit.gate changed; and the move made again
// carries the mark's replaced_nv_* when it finds its own index written
// by no record of its own.
func TestReview21OpenedAppendExtendsAnUnfinishedMovesAnchor(t *testing.T) {
	env, bz, dir, g1, rtp, bb := twoProcessesMount(t)
	ctx := context.Background()
	_, g1Written, err := g1.expectedNames()
	if err != nil {
		t.Fatal(err)
	}
	officer := review8Agent(t, env.TPM, dir) // the officer's one-shot reanchor
	user := review8Agent(t, rtp, dir)        // the user's one-shot seal

	// The seal opens the trail and is held in its TPM2_Create.
	var mu sync.Mutex
	bLast := time.Now()
	bFired := false
	bAt, bGo := make(chan struct{}), make(chan struct{})
	bb.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		bLast = time.Now()
		hold := !bFired && swtpmtest.CommandCode(cmd) == tpm2.TPMCCCreate
		if hold {
			bFired = true
		}
		mu.Unlock()
		if hold {
			close(bAt)
			<-bGo
		}
		return nil, nil, false
	})
	sealed := make(chan error, 1)
	go func() {
		_, err := user.Seal(ctx, api.SealRequest{Data: []byte("review21-during")})
		sealed <- err
	}()
	select {
	case <-bAt:
	case err := <-sealed:
		t.Fatalf("not mounted: the seal ended before its create: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("not mounted: the seal never sent TPM2_Create")
	}

	// The reanchor takes the log's lock and is held in its gate's
	// TPM2_Create (before the mark); after its define, every
	// TPM2_PolicySecret is refused: its record's line is never written.
	// (On swtpm the record's policy session may find no slot first, the
	// seal's shared session held while it waits: TPM_RC_SESSION_MEMORY,
	// the same failure at the same step.)
	aFired, defined, refused := false, false, 0
	aAt, aGo := make(chan struct{}), make(chan struct{})
	bz.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		cc := swtpmtest.CommandCode(cmd)
		mu.Lock()
		switch {
		case !aFired && cc == tpm2.TPMCCCreate:
			aFired = true
			mu.Unlock()
			close(aAt)
			<-aGo
			return nil, nil, false
		case cc == tpm2.TPMCCNVDefineSpace:
			defined = true
		case defined && cc == tpm2.TPMCCPolicySecret:
			refused++
			mu.Unlock()
			return swtpmtest.ErrorAnswer(tpm2.TPMRCNVSpace), nil, true
		}
		mu.Unlock()
		return nil, nil, false
	})
	reanchored := make(chan error, 1)
	go func() {
		_, err := officer.AuditReanchor(ctx)
		reanchored <- err
	}()
	select {
	case <-aAt:
	case err := <-reanchored:
		close(bGo)
		t.Fatalf("not mounted: the reanchor ended before its gate's create: %v", err)
	case <-time.After(30 * time.Second):
		close(bGo)
		t.Fatal("not mounted: the reanchor never sent TPM2_Create")
	}
	// The seal goes on: its record reads audit.gate (no mark) and waits
	// for the log's lock; its bus goes quiet.
	close(bGo)
	for deadline := time.Now().Add(20 * time.Second); ; {
		time.Sleep(50 * time.Millisecond)
		mu.Lock()
		quiet := time.Since(bLast) > 400*time.Millisecond
		mu.Unlock()
		if quiet {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("not mounted: the seal's bus never went quiet")
		}
	}
	close(aGo)
	rerr := <-reanchored
	serr := <-sealed
	bz.Set(nil)
	bb.Set(nil)
	mu.Lock()
	d, n := defined, refused
	mu.Unlock()
	t.Logf("the reanchor: %v (define sent %v, %d PolicySecret refused); the seal meanwhile: %v", rerr, d, n, serr)
	if rerr == nil || !d {
		t.Fatalf("not mounted: the reanchor was to fail after its define: %v", rerr)
	}
	g2 := review21Gate(t, dir)
	if g2.Moving == nil || g2.Name == g1.Name {
		t.Fatalf("not mounted: audit.gate marks no move to a new gate: %+v", g2)
	}
	markReplaced := g2.Moving.Objects["replaced_nv_name"]
	if markReplaced != hex.EncodeToString(g1Written) {
		t.Fatalf("not mounted: the mark names %q replaced, the trail's anchor is %x", markReplaced, g1Written)
	}
	x, err := officer.t.ReadNVPublic(AuditAnchorHandle)
	if err != nil {
		t.Fatalf("the anchor's handle: %v", err)
	}
	recorded := moveRecorded(filepath.Join(dir, audit.FileName), g2.Name)
	t.Logf("after the seal: the move's record in the log %v; the move's index written %v", recorded, x.Public.Attributes.Written)
	if !recorded && x.Public.Attributes.Written {
		t.Errorf("the seal's record (%v) extended the new index of an unfinished move (audit.gate marks it, its audit-anchor record is in no line): "+
			"the opened Log's append skipped the anchor read where the mark is checked", serr)
	}

	// The next operation makes the move again.
	moved := review21SealMovesAgain(t, env.TPM, dir)
	if _, err := review8Agent(t, env.TPM, dir).AuditVerify(ctx); err != nil {
		t.Errorf("verify: %v", err)
	}
	if got := moved.Objects["replaced_nv_name"]; got != markReplaced {
		t.Errorf("the move made again names %s replaced, its own index that the seal's line extended; the trail's anchor before the move (%s, in the mark) is in no record",
			got, markReplaced)
	}
}

// An interrupted move whose own index was then extended by no record of
// its own (no honest path since the mend of review 21; here the test
// extends it as the move's anchor would): the move made again keeps
// naming the trail's anchor before the move, the mark's, and names the
// value found in its own index (unrecorded_nv_value). Failed before the
// mend: the move made again named its own index replaced, and the
// trail's previous anchor was in no record.
func TestReview21MoveMadeAgainOverItsOwnWrittenIndex(t *testing.T) {
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
	g1 := review21Gate(t, dir)
	_, g1Written, err := g1.expectedNames()
	if err != nil {
		t.Fatal(err)
	}
	// The officer's reanchor fails after its define: every
	// TPM2_PolicySecret after it is refused.
	bz.Set(swtpmtest.RefuseAfter(tpm2.TPMCCNVDefineSpace, tpm2.TPMCCPolicySecret, tpm2.TPMRCNVSpace))
	officer := review8Agent(t, env.TPM, dir)
	_, rerr := officer.AuditReanchor(ctx)
	bz.Set(nil)
	if rerr == nil {
		t.Fatal("not mounted: the reanchor was to fail after its define")
	}
	if err := officer.Close(); err != nil {
		t.Fatal(err)
	}
	g2 := review21Gate(t, dir)
	if g2.Moving == nil || g2.Moving.Objects["replaced_nv_name"] != hex.EncodeToString(g1Written) {
		t.Fatalf("not mounted: the mark: %+v", g2.Moving)
	}
	// The move's own index extended with no record.
	stray := make([]byte, 32)
	stray[0] = 0x21
	an := &trailAnchor{t: env.TPM, dir: dir, move: g2.Name, held: new(*tpm.Gate), kept: &gateKeep{}}
	if err := an.Extend(stray); err != nil {
		t.Fatalf("not mounted: the stray extend: %v", err)
	}
	x, err := env.TPM.ReadNVPublic(AuditAnchorHandle)
	if err != nil {
		t.Fatal(err)
	}
	value, err := env.TPM.ReadExtendIndex(x)
	if err != nil {
		t.Fatal(err)
	}

	moved := review21SealMovesAgain(t, env.TPM, dir)
	if got := moved.Objects["replaced_nv_name"]; got != hex.EncodeToString(g1Written) {
		t.Errorf("the move made again names %s replaced, want the trail's anchor before the move, %x", got, g1Written)
	}
	if got := moved.Objects["unrecorded_nv_value"]; got != hex.EncodeToString(value) {
		t.Errorf("unrecorded_nv_value %q, want the value found in the move's own index, %x", got, value)
	}
	if _, err := review8Agent(t, env.TPM, dir).AuditVerify(ctx); err != nil {
		t.Errorf("verify: %v", err)
	}
}

// Zeroize removes audit.gate and archives the log under one hold of the
// log's lock: no other process's record lands between the two. The test
// watches the state directory (inotify) and, the moment audit.gate goes,
// tries the log's lock without waiting: it must be held (by zeroize).
// FLAW (found by review 21, failed before the mend in most runs: the
// watcher won the lock while zeroize fsynced the directory): the gate
// file went outside the lock, and a record in that window moved the
// trail to a new gate ("moved from an ungated anchor"), whose record
// zeroize then archived, leaving the new gate's anchor with no log.
func TestReview21ZeroizeRemovesTheGateUnderTheLogsLock(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	dir := t.TempDir() + "/state"
	ag := review8Agent(t, env.TPM, dir)
	if _, err := ag.Provision(ctx, review8Req()); err != nil {
		t.Fatal(err)
	}
	logf, err := os.OpenFile(filepath.Join(dir, audit.FileName), os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	in, err := syscall.InotifyInit1(syscall.IN_CLOEXEC)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := syscall.InotifyAddWatch(in, dir, syscall.IN_DELETE); err != nil {
		syscall.Close(in)
		t.Fatal(err)
	}
	unlocked := make(chan bool, 1)
	go func() {
		defer syscall.Close(in)
		buf := make([]byte, 4096)
		for {
			n, err := syscall.Read(in, buf)
			if err != nil || n <= 0 {
				unlocked <- false
				return
			}
			for off := 0; off+syscall.SizeofInotifyEvent <= n; {
				ev := (*syscall.InotifyEvent)(unsafe.Pointer(&buf[off]))
				name := string(bytes.TrimRight(buf[off+syscall.SizeofInotifyEvent:off+syscall.SizeofInotifyEvent+int(ev.Len)], "\x00"))
				off += syscall.SizeofInotifyEvent + int(ev.Len)
				if name != gateFile {
					continue
				}
				// The lock free and the log still at its path (checked
				// under the lock: an event read late, after zeroize let
				// the lock go with the log archived, proves nothing).
				got := syscall.Flock(int(logf.Fd()), syscall.LOCK_EX|syscall.LOCK_NB) == nil
				if got {
					mine, _ := logf.Stat()
					at, err := os.Stat(filepath.Join(dir, audit.FileName))
					got = err == nil && os.SameFile(mine, at)
					syscall.Flock(int(logf.Fd()), syscall.LOCK_UN)
				}
				unlocked <- got
				return
			}
		}
	}()
	if _, err := ag.Zeroize(ctx, api.ZeroizeOptions{}); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-unlocked:
		if got {
			t.Error("audit.gate went while the log's lock was free: another process's record could land between the gate's removal and the log's archive")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("not mounted: no removal of audit.gate seen")
	}
}

// review21SealMovesAgain is the next operation after an interrupted move
// (a one-shot seal on dir, which makes the move again): the trail's last
// audit-anchor record after it.
func review21SealMovesAgain(t *testing.T, tp *tpm.TPM, dir string) audit.Record {
	t.Helper()
	if _, err := review8Agent(t, tp, dir).Seal(context.Background(), api.SealRequest{Data: []byte("review21-after")}); err != nil {
		t.Fatalf("the next seal: %v", err)
	}
	recs, err := audit.ReadRecords(filepath.Join(dir, audit.FileName))
	if err != nil {
		t.Fatal(err)
	}
	var moved audit.Record
	for _, r := range recs {
		if r.Op == audit.OpAnchor {
			moved = r
		}
	}
	t.Logf("the move made again: %v", moved.Objects)
	return moved
}

// twoProcessesMount is a provisioned state directory on a TPM that two
// provd processes reach, as behind /dev/tpmrm0: env's connection (its bus
// bz) and another (review8Client, its own bus); g1 is the trail's gate.
func twoProcessesMount(t *testing.T) (env *swtpmtest.Env, bz *swtpmtest.Bus, dir string, g1 *gateRecord, other *tpm.TPM, otherBus *swtpmtest.Bus) {
	t.Helper()
	w := &review8Wire{}
	bz = &swtpmtest.Bus{}
	env = swtpmtest.Start(t, swtpmtest.WithWrap(w.wrap), swtpmtest.WithBus(bz), swtpmtest.WithResourceManager())
	dir = t.TempDir() + "/state"
	first := review8Agent(t, env.TPM, dir)
	if _, err := first.Provision(context.Background(), review8Req()); err != nil {
		t.Fatal(err)
	}
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	other, otherBus = review8Client(t, w)
	return env, bz, dir, review21Gate(t, dir), other, otherBus
}
