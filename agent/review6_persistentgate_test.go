package agent

// The sixth review: attacks on the persistent audit gate (0x81007601,
// AuditGateHandle): newGatedAnchor's persistGate, the proof in place
// (tpm.PersistentGate), withGate's fallback and its re-persistence, and
// zeroize's eviction. A1 is the bus (swtpmtest.Bus), A2 another local
// process with the owner's empty authorization (commands sent on the test's
// own connection), A4 root editing audit.gate.
//
// Tests that FAIL on the code under review (a9ad628) show a flaw:
//   - TestReview6PersistGateLoadRenamedLeavesNothing (new with the change)
//   - TestReview6NewTrailKeepsOrRecordsAForeignPersistentObject (new)
//   - TestReview6FallbackLoadRenamedToACopyOfTheGate (pre-existing class,
//     still open on the new fallback path)
// The others are attacks that held; they assert the property.

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/audit"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review6State is a one-shot process's agent on a fresh state directory,
// provisioned (PCR 7, trust on first use), with its directory. log, when
// not nil, receives the agent's debug log.
func review6State(t *testing.T, env *swtpmtest.Env, log *slog.Logger) (*Agent, string) {
	t.Helper()
	dir := t.TempDir() + "/state"
	a, err := New(Config{TPM: env.TPM, StateDir: dir, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if _, err := a.Provision(context.Background(), api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	return a, dir
}

// review6Reopen is a new one-shot process's agent on dir (nothing loaded,
// nothing kept).
func review6Reopen(t *testing.T, env *swtpmtest.Env, dir string, log *slog.Logger) *Agent {
	t.Helper()
	a, err := New(Config{TPM: env.TPM, StateDir: dir, Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// review6Gate reads audit.gate, and rewrites it through edit when edit is
// not nil.
func review6Gate(t *testing.T, dir string, edit func(g map[string]any)) map[string]any {
	t.Helper()
	p := filepath.Join(dir, gateFile)
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var g map[string]any
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	if edit != nil {
		edit(g)
		if b, err = json.Marshal(g); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return g
}

// review6AtGateHandle is the name (hex) of what 0x81007601 holds, "" when
// it is empty.
func review6AtGateHandle(t *testing.T, tp *tpm.TPM) string {
	t.Helper()
	pub, err := tp.ReadPublic(AuditGateHandle)
	if errors.Is(err, tpm.ErrNotFound) {
		return ""
	}
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(pub.Name.Buffer)
}

// review6Seal is a seal (an audited one-shot operation).
func review6Seal(a *Agent, data string) error {
	_, err := a.Seal(context.Background(), api.SealRequest{Data: []byte(data), PCRs: []int{7}})
	return err
}

// isGateProof: cmd is a TPM2_PolicySecret of the entity at 0x81007601.
func isGateProof(cmd []byte) bool {
	return swtpmtest.CommandCode(cmd) == tpm2.TPMCCPolicySecret && len(cmd) >= 18 &&
		tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == AuditGateHandle
}

// review6NotMisreported fails t when err says forged (exit 15) or a wrong
// value (exit 11).
func review6NotMisreported(t *testing.T, what string, err error) {
	t.Helper()
	if errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) == api.ExitIdentity {
		t.Errorf("%s: called forged (exit %d): %v", what, api.ExitCode(err), err)
	}
	if errors.Is(err, tpm.ErrBadAuth) || api.ExitCode(err) == api.ExitBadAuth {
		t.Errorf("%s: called a wrong value (exit %d): %v", what, api.ExitCode(err), err)
	}
}

// FLAW. A1 renames the answer of persistGate's TPM2_Load (the new gate
// loaded under the SRK's password to be made persistent: its handle has
// no HMAC, tpm.LoadGate checks only the name, which A1 keeps) to an object
// of its own. Unlike every other gate load, no proof follows that would
// show the rename: persistGate makes persistent whatever the renamed
// handle holds (EvictControl with the owner's password names no name; for
// A1's NULL-hierarchy decoy the TPM refuses, so the gate silently stays
// transient), flushes A1's handle, and never asks for the sweep
// (tpm.Unheld). The real gate key, which the TPM did load, is held by
// nobody and stays loaded: one of swtpm's three object slots, for as long
// as the process runs (a daemon: until a slot shortage forces a sweep).
// withGate, LoadGate's other callers and the AK ask for the sweep in the
// same case (TestRecordGateLoadRenamedLeavesNothing).
func TestReview6PersistGateLoadRenamedLeavesNothing(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	// The flaw leaves the real gate loaded; this test checks it itself
	// and flushes it, so that the harness's check does not repeat it.
	env.NoLeakCheck()
	decoy := swtpmtest.Decoy(t, b.Next)
	var mu sync.Mutex
	defined := false
	var realGate tpm2.TPMHandle
	rename := swtpmtest.RenamedLoad(func(cmd []byte) bool { return swtpmtest.LastSession(cmd, 1) == tpm2.TPMRSPW }, decoy, &realGate)
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		if swtpmtest.CommandCode(cmd) == tpm2.TPMCCNVDefineSpace {
			// The new anchor's define comes right before persistGate.
			off := swtpmtest.ParamsOffset(cmd, 1)
			off += 2 + int(binary.BigEndian.Uint16(cmd[off:])) // auth
			off += 2                                           // publicInfo's size
			if len(cmd) >= off+4 && tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[off:])) == AuditAnchorHandle {
				defined = true
			}
			return nil, nil, false
		}
		if !defined {
			return nil, nil, false
		}
		return rename(next, cmd)
	})
	dir := t.TempDir() + "/state"
	a, err := New(Config{TPM: env.TPM, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	_, err = a.Provision(context.Background(), api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	b.Set(nil)
	_, _ = (tpm2.FlushContext{FlushHandle: decoy}).Execute(b.Next) // A1's, if provd left it
	mu.Lock()
	got := realGate
	mu.Unlock()
	t.Logf("provision with persistGate's load renamed to A1's 0x%08x (the gate loaded at 0x%08x): %v; gate_handle %v",
		uint32(decoy), uint32(got), err, review6Gate(t, dir, nil)["gate_handle"])
	if got == 0 {
		t.Fatal("not mounted: no gate load after the anchor's define")
	}
	if err != nil {
		t.Fatalf("provision: %v", err)
	}
	// Two more operations: the sweep, if it had been asked for, would
	// have run by now.
	for i := range 2 {
		if err := review6Seal(a, fmt.Sprint("after ", i)); err != nil {
			t.Fatalf("seal %d: %v", i, err)
		}
	}
	if left := unheldLeft(t, a); len(left) > 0 {
		t.Errorf("after provision and two seals the TPM holds %x that provd does not (the gate persistGate loaded: 0x%08x): "+
			"persistGate's renamed load is never swept", left, uint32(got))
		for _, h := range left {
			_ = a.t.Flush(h)
		}
	}
	if _, err := a.AuditVerify(context.Background()); err != nil {
		t.Errorf("audit verify: %v", err)
	}
}

// FLAW (low). A new trail makes its gate persistent at 0x81007601 after
// evicting whatever is there (persistGate), with no check that it is a
// gate of provd's and no trace of what it evicted: a plain provision in a
// fresh state directory (no --force, no anchor there, so foreignAnchor
// lets it through) destroys another application's persistent key that
// happens to sit at 0x81007601 (owner storage range, where any tss member
// may persist keys), and the new trail's audit-anchor record says nothing
// of it. For the anchor's handle provd refuses another trail's index
// without --force and records the name and value of what it replaces
// (replaced_nv_name, replaced_nv_value); for the gate's handle it does
// neither. Held when the object is still there after provision, or the new
// trail names it.
func TestReview6NewTrailKeepsOrRecordsAForeignPersistentObject(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	// Another application's key, persistent at 0x81007601 before provd
	// ever ran here: an ECC signing primary in the owner hierarchy.
	otherName := PlantAnotherApplicationsKey(t, b.Next, env.TPM)
	a, dir := review6State(t, env, nil)
	now := review6AtGateHandle(t, env.TPM)
	gate := review6Gate(t, dir, nil)["gate_name"]
	t.Logf("0x%08x held another application's key %s; after provision it holds %s (the gate %v)", uint32(AuditGateHandle), otherName, now, gate)
	if now == otherName {
		return // kept: held
	}
	recs, err := audit.ReadRecords(a.auditPath())
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range recs {
		for _, v := range r.Objects {
			if strings.Contains(v, otherName) {
				return // recorded: held
			}
		}
	}
	t.Errorf("provision (no --force) evicted another application's persistent key %s from 0x%08x, and no record of the new trail names it", otherName, uint32(AuditGateHandle))
}

// A2 takes the persistent gate away from a daemon behind Linux's resource
// manager (swtpmtest.SessionLimit: a fourth session fails the device's
// write and the kernel flushes the connection's every session), after a
// warm sign (its key use's policy session kept), in the record path of
// tpm.ReadPrepareGatedExtend (provd's keyed session): evicted, a noDA key
// of its own, a DA-protected one. The refused proof's spend (its witness)
// and the fallback must fit beside the kept session. Held: no refusal for
// want of a slot, the seal works and is never called forged or a wrong
// value, one extend, nothing left, the next sign works (the kept session
// survived), the gate persistent again, at most one DA count per plant,
// the trail verifies.
func TestReview6DaemonBehindTheSessionLimitWhenA2TakesTheGate(t *testing.T) {
	l := &swtpmtest.SessionLimit{}
	env, b, a := recordingDaemon(t, swtpmtest.WithWrap(l.Wrap), swtpmtest.WithResourceManager())
	ctx := context.Background()
	gate := hex.EncodeToString(mustGateName(t, a))
	for _, take := range []string{"evicted", "noDA key", "DA key"} {
		if _, err := signK(a); err != nil {
			t.Fatalf("%s: warm sign: %v", take, err)
		}
		before, err := env.TPM.Info()
		if err != nil {
			t.Fatal(err)
		}
		switch take {
		case "evicted":
			if err := env.TPM.Evict(AuditGateHandle); err != nil {
				t.Fatal(err)
			}
		case "noDA key":
			PlantGateKey(t, env.TPM, true)
		case "DA key":
			PlantGateKey(t, env.TPM, false)
		}
		log := &swtpmtest.CommandLog{}
		b.Set(log.Answered)
		log.Start()
		l.Take()
		err = review6Seal(a, take)
		cmds := log.Stop()
		b.Set(nil)
		refused, lcmds := l.Take()
		t.Logf("%s: seal %v; %d commands, %d PolicySecret, %d refusals", take, err, len(cmds), swtpmtest.Count(cmds, tpm2.TPMCCPolicySecret), refused)
		if err != nil {
			t.Errorf("%s: seal: %v (exit %d)", take, err, api.ExitCode(err))
		}
		review6NotMisreported(t, take, err)
		if refused > 0 {
			t.Errorf("%s: %d refusals for want of a session slot in %v", take, refused, lcmds)
		}
		if n := swtpmtest.Count(cmds, tpm2.TPMCCNVExtend); n != 1 {
			t.Errorf("%s: %d extends", take, n)
		}
		if left := unheldLeft(t, a); len(left) > 0 {
			t.Errorf("%s: left: %x", take, left)
		}
		if got := review6AtGateHandle(t, env.TPM); got != gate {
			t.Errorf("%s: 0x%08x holds %q after the seal, the gate is %s", take, uint32(AuditGateHandle), got, gate)
		}
		after, err := env.TPM.Info()
		if err != nil {
			t.Fatal(err)
		}
		if d := after.Lockout.Counter - before.Lockout.Counter; d > 1 {
			t.Errorf("%s: the DA counter moved by %d", take, d)
		}
		l.Take()
		if _, err := signK(a); err != nil {
			t.Errorf("%s: the next sign: %v", take, err)
		}
		if refused, lcmds := l.Take(); refused > 0 {
			t.Errorf("%s: the next sign met %d refusals in %v", take, refused, lcmds)
		}
	}
	if _, err := a.AuditVerify(ctx); err != nil {
		t.Errorf("audit verify: %v", err)
	}
}

func mustGateName(t *testing.T, a *Agent) []byte {
	t.Helper()
	g, err := a.trailAnchor().gate()
	if err != nil || g == nil {
		t.Fatalf("audit.gate: %v %v", g, err)
	}
	n, err := g.name()
	if err != nil {
		t.Fatal(err)
	}
	return n
}

// A TPM event at the worst time for the proof in place: the TPM ran the
// persistent gate's TPM2_PolicySecret (its proof is in the policy session,
// bound to the record's extend), and then a power cut (everything
// transient gone) or a migration (the TPM kept the session, with the
// proof) took the answer with the connection. provd goes to the fallback,
// which proves again in a new session and extends: the first proof must
// be spent first (a migrated TPM still holds it), and the session flushed
// by its number must be that one. In a one-shot process (the proof in the
// shared session) and in a daemon (the keyed record session). Held: the
// record written, never called forged or a wrong value, the anchor
// extended once (the trail verifies), nothing left, the next operation
// works.
func TestReview6PersistentProofAnswerLostInAnEvent(t *testing.T) {
	t.Parallel()
	for _, mode := range []string{"one-shot", "daemon"} {
		for _, ev := range []string{"power cut", "migrate"} {
			t.Run(mode+"/"+ev, func(t *testing.T) {
				var env *swtpmtest.Env
				var b *swtpmtest.Bus
				var a *Agent
				if mode == "daemon" {
					env, b, a = recordingDaemon(t)
				} else {
					b = &swtpmtest.Bus{}
					env = swtpmtest.Start(t, swtpmtest.WithBus(b))
					_, dir := review6State(t, env, nil)
					a = review6Reopen(t, env, dir, nil)
				}
				ctx := context.Background()
				var mu sync.Mutex
				fired, extends := false, 0
				b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
					mu.Lock()
					defer mu.Unlock()
					if swtpmtest.CommandCode(cmd) == tpm2.TPMCCNVExtend {
						extends++
					}
					if fired || !isGateProof(cmd) {
						return nil, nil, false
					}
					fired = true
					if _, err := next.Send(cmd); err != nil {
						return nil, err, true
					}
					env.Event(ev)
					return nil, errors.New("the answer went down with the connection"), true
				})
				marker := "review6-event-" + strings.ReplaceAll(ev, " ", "-")
				err := a.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 4242}), "key-delete", marker)
				b.Set(nil)
				t.Logf("%s: record with a %s after the TPM ran the proof in place: %v (exit %d); %d extends", mode, ev, err, api.ExitCode(err), extends)
				if !fired {
					t.Fatal("not mounted: no proof in place")
				}
				review6NotMisreported(t, ev, err)
				if err != nil {
					t.Errorf("the record: %v", err)
				}
				if extends != 1 {
					t.Errorf("%d extends sent", extends)
				}
				if left := unheldLeft(t, a); len(left) > 0 {
					t.Errorf("left after the record: %x", left)
				}
				if n := trailLines(t, a, marker); n != 1 {
					t.Errorf("the record is in the trail %d times", n)
				}
				if err := review6Seal(a, "after"); err != nil {
					t.Errorf("the next operation: %v", err)
				}
				if _, err := a.AuditVerify(ctx); err != nil {
					t.Errorf("audit verify: %v", err)
				}
			})
		}
	}
}

// A TPM event in the fallback's re-persistence (A2 evicted the gate):
// a reset, power cut or migration right before the TPM2_EvictControl that
// makes the loaded gate persistent again, between the proof that
// prepared the record's extend and the extend. Held: the record written
// once, never called forged or a wrong value, nothing left, the trail
// verifies, and after the next operation the gate is persistent again.
func TestReview6EventInTheRepersistence(t *testing.T) {
	t.Parallel()
	for _, ev := range swtpmtest.Events {
		t.Run(ev, func(t *testing.T) {
			b := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(b))
			_, dir := review6State(t, env, nil)
			gate := review6Gate(t, dir, nil)["gate_name"]
			if err := env.TPM.Evict(AuditGateHandle); err != nil {
				t.Fatal(err)
			}
			a := review6Reopen(t, env, dir, nil)
			ctx := context.Background()
			var mu sync.Mutex
			fired := false
			b.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
				mu.Lock()
				defer mu.Unlock()
				if fired || swtpmtest.CommandCode(cmd) != tpm2.TPMCCEvictControl || len(cmd) < 18 ||
					binary.BigEndian.Uint32(cmd[14:18])>>24 != 0x80 ||
					tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[len(cmd)-4:])) != AuditGateHandle {
					return nil, nil, false
				}
				fired = true
				env.Event(ev)
				return nil, nil, false
			})
			marker := "review6-repersist-" + strings.ReplaceAll(ev, " ", "-")
			err := a.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 4242}), "key-delete", marker)
			b.Set(nil)
			t.Logf("record with a %s before the re-persistence: %v (exit %d)", ev, err, api.ExitCode(err))
			if !fired {
				t.Fatal("not mounted: no re-persistence")
			}
			review6NotMisreported(t, ev, err)
			if err != nil {
				t.Errorf("the record: %v", err)
			}
			if left := unheldLeft(t, a); len(left) > 0 {
				t.Errorf("left: %x", left)
			}
			if n := trailLines(t, a, marker); n != 1 {
				t.Errorf("the record is in the trail %d times", n)
			}
			if err := review6Seal(a, "after"); err != nil {
				t.Errorf("the next operation: %v", err)
			}
			if got := review6AtGateHandle(t, env.TPM); got != gate {
				t.Errorf("0x%08x holds %q after the next operation, the gate is %v", uint32(AuditGateHandle), got, gate)
			}
			if _, err := a.AuditVerify(ctx); err != nil {
				t.Errorf("audit verify: %v", err)
			}
		})
	}
}

// FLAW (pre-existing; the fallback keeps it). A1 answers the proof in
// place with an error (not passed on), so that the record loads the gate
// from its blob, and renames that load's answer to a copy of the gate it
// loaded itself (replaying a gate load it saw: a password-authorized
// TPM2_Load replays as it is). The name is the gate's, so tpm.LoadGate
// takes it, the proof succeeds, the re-persistence makes A1's copy
// persistent (the same key: no harm), and withGate flushes A1's handle.
// provd's own copy, which the TPM loaded, is held by nobody and no sweep
// is asked for (tpm.Unheld is called only on a failure): it stays loaded
// for the life of the process. A response handle is never covered by an
// HMAC, so no check of the loaded object can tell a copy from provd's:
// only a sweep can.
func TestReview6FallbackLoadRenamedToACopyOfTheGate(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	// The flaw leaves provd's copy of the gate loaded: checked and
	// flushed below.
	env.NoLeakCheck()
	_, dir := review6State(t, env, nil)
	a := review6Reopen(t, env, dir, nil)
	var mu sync.Mutex
	var copyH, made tpm2.TPMHandle
	stage := 0
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case stage == 0 && isGateProof(cmd):
			stage = 1
			return swtpmtest.ErrorAnswer(tpm2.TPMRCHandle + 0x100), nil, true
		case stage == 1 && swtpmtest.CommandCode(cmd) == tpm2.TPMCCLoad && swtpmtest.LastSession(cmd, 1) == tpm2.TPMRSPW:
			stage = 2
			r1, err := next.Send(bytes.Clone(cmd)) // A1's copy
			if err != nil || len(r1) < 14 || binary.BigEndian.Uint32(r1[6:10]) != 0 {
				return r1, err, true
			}
			copyH = tpm2.TPMHandle(binary.BigEndian.Uint32(r1[10:14]))
			rsp, err := next.Send(cmd)
			if err != nil || len(rsp) < 14 || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
				return rsp, err, true
			}
			made = tpm2.TPMHandle(binary.BigEndian.Uint32(rsp[10:14]))
			r := bytes.Clone(rsp)
			binary.BigEndian.PutUint32(r[10:14], uint32(copyH))
			return r, nil, true
		}
		return nil, nil, false
	})
	err := a.RecordRefusal(api.WithCaller(context.Background(), api.Caller{UID: 4242}), "key-delete", "review6-copy")
	b.Set(nil)
	mu.Lock()
	c, m := copyH, made
	mu.Unlock()
	t.Logf("record with the fallback's load renamed to A1's copy 0x%08x (provd's 0x%08x): %v", uint32(c), uint32(m), err)
	if m == 0 {
		t.Fatal("not mounted")
	}
	if err != nil {
		t.Fatalf("record: %v", err)
	}
	if err := review6Seal(a, "after"); err != nil {
		t.Fatalf("the next operation: %v", err)
	}
	if left := unheldLeft(t, a); len(left) > 0 {
		t.Errorf("after the record and the next operation the TPM holds %x that provd does not (its own copy of the gate: 0x%08x): never swept", left, uint32(m))
		for _, h := range left {
			_ = a.t.Flush(h)
		}
	}
	if _, err := a.AuditVerify(context.Background()); err != nil {
		t.Errorf("audit verify: %v", err)
	}
}

// A1 lets the daemon's proof in place run in the TPM (the proof is in the
// policy session, bound to the record's extend), answers it TPM_RC_BAD_AUTH,
// and drops the FlushContext that spends the session, answering success
// itself: the session stays loaded with the proof. The fallback proves
// again in a new session. Held: provd does not go on while that first
// proof can still authorize (it is gone, or its 10-second lifetime is
// over, when the record returns), the anchor is extended once, the record
// is in the trail once, nothing left, the trail verifies.
func TestReview6HeldPersistentProofIsDeadBeforeTheFallback(t *testing.T) {
	t.Parallel()
	env, b, a := recordingDaemon(t)
	ctx := context.Background()
	var mu sync.Mutex
	var held tpm2.TPMHandle
	var ranAt time.Time
	dropped, extends := false, 0
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		switch cc := swtpmtest.CommandCode(cmd); {
		case cc == tpm2.TPMCCNVExtend:
			extends++
		case held == 0 && isGateProof(cmd):
			held = tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[14:18]))
			if _, err := next.Send(cmd); err != nil {
				return nil, err, true
			}
			ranAt = time.Now()
			return swtpmtest.ErrorAnswer(tpm2.TPMRCBadAuth + 0x100), nil, true
		case held != 0 && !dropped && cc == tpm2.TPMCCFlushContext && len(cmd) >= 14 &&
			tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == held:
			dropped = true
			return swtpmtest.ErrorAnswer(tpm2.TPMRCSuccess), nil, true
		}
		return nil, nil, false
	})
	marker := "review6-held-proof"
	err := a.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 4242}), "key-delete", marker)
	returned := time.Now()
	b.Set(nil)
	mu.Lock()
	h, d, n, at := held, dropped, extends, ranAt
	mu.Unlock()
	t.Logf("record: %v (exit %d); proof held in 0x%08x, its flush dropped %v; %d extends; returned %s after the proof ran", err, api.ExitCode(err), uint32(h), d, n, returned.Sub(at))
	if h == 0 || !d {
		t.Fatal("not mounted")
	}
	if err != nil {
		t.Errorf("record: %v", err)
	}
	if n != 1 {
		t.Errorf("%d extends", n)
	}
	loaded, lerr := env.TPM.Handles(tpm.PolicySessions)
	if lerr != nil {
		t.Fatal(lerr)
	}
	stillThere := false
	for _, x := range loaded {
		if x == h {
			stillThere = true
		}
	}
	if stillThere && returned.Sub(at) < 10*time.Second {
		t.Errorf("the record returned %s after the proof ran, with the session holding it (0x%08x) still loaded", returned.Sub(at), uint32(h))
	}
	if stillThere {
		_ = env.TPM.Flush(h) // A1's leftover
	}
	if left := unheldLeft(t, a); len(left) > 0 {
		t.Errorf("left: %x", left)
	}
	if c := trailLines(t, a, marker); c != 1 {
		t.Errorf("the record is in the trail %d times", c)
	}
	if _, err := a.AuditVerify(ctx); err != nil {
		t.Errorf("audit verify: %v", err)
	}
}

// Only gate_handle = 0x81007601 is proved in place. A state from before
// the change (no gate_handle) with A2's DA-protected key at 0x81007601:
// the record never names that handle, A2's key stays (provd evicts nothing
// it did not persist for this trail), no DA count. A4 naming another
// handle in gate_handle (the EK's, the counter authorizer's neighbour, a
// transient handle): no proof on it, the seal works.
func TestReview6OnlyTheRecordedHandleIsProved(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		handle *float64 // nil: gate_handle removed
		plant  bool
	}{
		{"no gate_handle, A2's DA key at 0x81007601", nil, true},
		{"gate_handle names the EK", ptr(float64(0x81010001)), false},
		{"gate_handle names 0x81007602", ptr(float64(0x81007602)), false},
		{"gate_handle names a transient handle", ptr(float64(0x80000000)), false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(b))
			_, dir := review6State(t, env, nil)
			review6Gate(t, dir, func(g map[string]any) {
				if tc.handle == nil {
					delete(g, "gate_handle")
				} else {
					g["gate_handle"] = *tc.handle
				}
			})
			var planted string
			if tc.plant {
				planted = PlantGateKey(t, env.TPM, false)
			}
			before, err := env.TPM.Info()
			if err != nil {
				t.Fatal(err)
			}
			a := review6Reopen(t, env, dir, nil)
			var mu sync.Mutex
			var proved []tpm2.TPMHandle
			b.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
				if swtpmtest.CommandCode(cmd) == tpm2.TPMCCPolicySecret && len(cmd) >= 14 {
					mu.Lock()
					proved = append(proved, tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])))
					mu.Unlock()
				}
				return nil, nil, false
			})
			err = review6Seal(a, tc.name)
			b.Set(nil)
			if err != nil {
				t.Fatalf("seal: %v (exit %d)", err, api.ExitCode(err))
			}
			for _, h := range proved {
				if h>>24 == 0x81 {
					t.Errorf("a proof named the persistent handle 0x%08x (proved %x)", uint32(h), proved)
				}
			}
			if tc.plant {
				if got := review6AtGateHandle(t, env.TPM); got != planted {
					t.Errorf("A2's key at 0x%08x is now %q", uint32(AuditGateHandle), got)
				}
				after, err := env.TPM.Info()
				if err != nil {
					t.Fatal(err)
				}
				if after.Lockout.Counter != before.Lockout.Counter {
					t.Errorf("the DA counter moved from %d to %d", before.Lockout.Counter, after.Lockout.Counter)
				}
				_ = env.TPM.Evict(AuditGateHandle)
			}
			if _, err := a.AuditVerify(context.Background()); err != nil {
				t.Errorf("audit verify: %v", err)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }

// Zeroize's eviction of the persistent gate under A1: the unauthenticated
// TPM2_ReadPublic of 0x81007601 answered "no object" or with another
// object's public (the SRK's), or the witnessed TPM2_EvictControl dropped
// and answered success. Held: zeroize says forged (exit 15), never a wrong
// value (exit 11), and does not report the gate evicted. And A2 putting
// its own key there just before zeroize: zeroize works, the handle ends
// empty and says so.
func TestReview6ZeroizeGateEvictionUnderA1AndA2(t *testing.T) {
	t.Parallel()
	readPublicOfGate := func(cmd []byte) bool {
		return swtpmtest.CommandCode(cmd) == tpm2.TPMCCReadPublic && len(cmd) >= 14 &&
			tpm2.TPMISTCommandTag(binary.BigEndian.Uint16(cmd[0:2])) == tpm2.TPMSTNoSessions &&
			tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == AuditGateHandle
	}
	for _, tc := range []struct {
		name string
		a1   func(fired *bool) swtpmtest.Hook
		a2   bool
	}{
		{"ReadPublic answered: no object", func(fired *bool) swtpmtest.Hook {
			return func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
				if *fired || !readPublicOfGate(cmd) {
					return nil, nil, false
				}
				*fired = true
				return swtpmtest.ErrorAnswer(tpm2.TPMRCHandle + 0x100), nil, true
			}
		}, false},
		{"ReadPublic answered with the SRK's public", func(fired *bool) swtpmtest.Hook {
			return func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				if *fired || !readPublicOfGate(cmd) {
					return nil, nil, false
				}
				*fired = true
				c := bytes.Clone(cmd)
				binary.BigEndian.PutUint32(c[10:14], uint32(tpm.SRKHandle))
				rsp, err := next.Send(c)
				return rsp, err, true
			}
		}, false},
		{"EvictControl dropped, success answered", func(fired *bool) swtpmtest.Hook {
			return func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
				if *fired || swtpmtest.CommandCode(cmd) != tpm2.TPMCCEvictControl || len(cmd) < 18 ||
					tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[14:18])) != AuditGateHandle {
					return nil, nil, false
				}
				*fired = true
				return swtpmtest.ErrorAnswer(tpm2.TPMRCSuccess), nil, true
			}
		}, false},
		{"A2's key there before zeroize", nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(b))
			a, _ := review6State(t, env, nil)
			if tc.a2 {
				PlantGateKey(t, env.TPM, false)
			}
			fired := false
			var mu sync.Mutex
			if tc.a1 != nil {
				h := tc.a1(&fired)
				b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
					mu.Lock()
					defer mu.Unlock()
					return h(next, cmd)
				})
			}
			res, err := a.Zeroize(context.Background(), api.ZeroizeOptions{})
			b.Set(nil)
			t.Logf("zeroize: %+v %v (exit %d)", res, err, api.ExitCode(err))
			if tc.a1 == nil {
				if err != nil || !res.GateEvicted || !res.Authenticated {
					t.Errorf("zeroize with A2's key at the handle: %+v %v", res, err)
				}
				if got := review6AtGateHandle(t, env.TPM); got != "" {
					t.Errorf("0x%08x holds %s after zeroize", uint32(AuditGateHandle), got)
				}
				return
			}
			if !fired {
				t.Fatal("not mounted")
			}
			if api.ExitCode(err) == api.ExitBadAuth {
				t.Errorf("A1 on the gate's eviction reported as a wrong value (exit %d)", api.ExitCode(err))
			}
			if !errors.Is(err, tpm.ErrResponseForged) {
				t.Errorf("A1 on the gate's eviction: %v (exit %d), want forged", err, api.ExitCode(err))
			}
			stays := review6AtGateHandle(t, env.TPM) != ""
			if res.GateEvicted && stays {
				t.Errorf("zeroize reports the gate evicted; 0x%08x still holds an object", uint32(AuditGateHandle))
			}
			if stays {
				_ = env.TPM.Evict(AuditGateHandle)
			}
		})
	}
}

// The debug logs the change added print the errors of the proof in place,
// of the re-persistence and of persistGate. Driven through each (A2
// evicting the gate, A2's DA key in its place, A1 answering the proof in
// place after the TPM ran it, A1 refusing the re-persistence's and
// persistGate's EvictControl at a reanchor), the log never holds any gate
// authorization value of the trail (hex either case, raw, base64).
func TestReview6LogsNeverHoldTheGateAuth(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	var buf bytes.Buffer
	var bmu sync.Mutex
	log := slog.New(slog.NewTextHandler(&lockedWriter{w: &buf, mu: &bmu}, &slog.HandlerOptions{Level: slog.LevelDebug}))
	_, dir := review6State(t, env, log)
	auths := map[string]bool{}
	noteAuth := func() {
		if s, _ := review6Gate(t, dir, nil)["gate_auth"].(string); s != "" {
			auths[s] = true
		}
	}
	noteAuth()
	evictControlRefused := func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) == tpm2.TPMCCEvictControl && len(cmd) >= 4 &&
			tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[len(cmd)-4:])) == AuditGateHandle {
			return swtpmtest.ErrorAnswer(tpm2.TPMRCNVSpace), nil, true
		}
		return nil, nil, false
	}
	steps := []struct {
		name   string
		before func()
		hook   swtpmtest.Hook
		run    func(a *Agent) error
	}{
		{"A2 evicted the gate", func() { _ = env.TPM.Evict(AuditGateHandle) }, nil, func(a *Agent) error { return review6Seal(a, "1") }},
		{"A2's DA key in its place", func() { PlantGateKey(t, env.TPM, false) }, nil, func(a *Agent) error { return review6Seal(a, "2") }},
		{"A1 answers the proof in place after it ran", nil, func() swtpmtest.Hook {
			fired := false
			return func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				if fired || !isGateProof(cmd) {
					return nil, nil, false
				}
				fired = true
				_, _ = next.Send(cmd)
				return swtpmtest.ErrorAnswer(tpm2.TPMRCHandle + 0x100), nil, true
			}
		}(), func(a *Agent) error { return review6Seal(a, "3") }},
		{"the re-persistence refused", func() { _ = env.TPM.Evict(AuditGateHandle) }, evictControlRefused, func(a *Agent) error { return review6Seal(a, "4") }},
		{"persistGate refused at a reanchor", nil, evictControlRefused, func(a *Agent) error { _, err := a.AuditReanchor(context.Background()); return err }},
	}
	for _, s := range steps {
		if s.before != nil {
			s.before()
		}
		a := review6Reopen(t, env, dir, log)
		b.Set(s.hook)
		err := s.run(a)
		b.Set(nil)
		if err != nil {
			t.Errorf("%s: %v", s.name, err)
		}
		a.Close()
		noteAuth()
	}
	bmu.Lock()
	out := buf.String()
	bmu.Unlock()
	if !strings.Contains(out, "did not prove") || !strings.Contains(out, "could not be made persistent again") || !strings.Contains(out, "stays transient") {
		t.Errorf("not every new debug log was reached:\n%s", out)
	}
	for h := range auths {
		raw, err := hex.DecodeString(h)
		if err != nil {
			t.Fatal(err)
		}
		for _, form := range []string{h, strings.ToUpper(h), string(raw), base64.StdEncoding.EncodeToString(raw), base64.RawURLEncoding.EncodeToString(raw), fmt.Sprint(raw)} {
			if strings.Contains(out, form) {
				t.Errorf("the debug log holds a gate authorization value")
			}
		}
	}
	t.Logf("%d gate values looked for in %d bytes of debug log", len(auths), len(out))
}

type lockedWriter struct {
	w  *bytes.Buffer
	mu *sync.Mutex
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}
