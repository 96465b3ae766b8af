package agent

// The eighth review: attacks on the mends of the persistent audit gate
// (fa6e30e, b9b6874): persistGate/persistGateOnce/ownGate (a new trail
// takes 0x81007601 only when it is empty, a gate of provd's, or under a
// provision that was done, recorded as replaced_gate_name; tried again
// when the TPM generation moved), trailAnchor.persistAgain (a refused
// re-persistence rewrites audit.gate without gate_handle, under the
// trail's flock, if unchanged), every gate load in withGate asking for the
// sweep (holdGate no longer does), and zeroize's new order (the gate
// evicted before the anchor is undefined; holdGate only with --srk).
//
// A1 is the bus (swtpmtest.Bus), A2 another local process with the
// owner's empty authorization (commands on the test's own connection), A4
// root editing audit.gate. Two provd processes on one TPM (the daemon and
// a one-shot CLI, each behind /dev/tpmrm0) are two tpm.TPM connections
// over one swtpm (review8Wire, review8Client): one can be held in a
// command while the other runs.
//
// Tests that FAIL on the code under review (b9b6874) show a flaw:
//   - TestReview8PersistGateForgedGenerationLeaksBehindAResourceManager
//     (new with b9b6874: persistGateOnce never flushes a load whose
//     generation moved, and behind a resource manager there is no sweep)
//   - TestReview8ZeroizeSRKHeldGateRenamedLeaks (reopened by b9b6874:
//     holdGate no longer asks for the sweep; zeroize's flush of leftovers
//     is not always there to stand in for it)
//   - TestReview8ForeignKeyEvictedInATryAnEventEndedIsNotRecorded (new
//     with b9b6874: the retry drops the first try's replaced name)
//   - TestReview8ZeroizeTakesAConcurrentNewTrailsGateAndAnchor (not new:
//     zeroize's last steps act on whatever holds the handles; the new
//     order neither opens nor closes it, and ownGate's archived gate_key
//     is what lets the concurrent trail take the handle)
// The others are attacks that held; they assert the property.

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
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

// ---------------------------------------------------------------------
// Helpers.

func review8Req() api.ProvisionRequest {
	return api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}
}

// review8AfterAnchorDefine is h, under mu, for the commands after the
// audit anchor's TPM2_NV_DefineSpace (newGatedAnchor's, right before
// persistGate); the commands before it pass.
func review8AfterAnchorDefine(mu *sync.Mutex, h swtpmtest.Hook) swtpmtest.Hook {
	defined := false
	return func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		if review8IsAnchorDefine(cmd) {
			defined = true
			return nil, nil, false
		}
		if !defined {
			return nil, nil, false
		}
		return h(next, cmd)
	}
}

// review8IsAnchorDefine: cmd is the TPM2_NV_DefineSpace of the audit
// anchor (newGatedAnchor's, right before persistGate).
func review8IsAnchorDefine(cmd []byte) bool {
	if swtpmtest.CommandCode(cmd) != tpm2.TPMCCNVDefineSpace {
		return false
	}
	off := swtpmtest.ParamsOffset(cmd, 1)
	if len(cmd) < off+2 {
		return false
	}
	off += 2 + int(binary.BigEndian.Uint16(cmd[off:])) // auth
	off += 2                                           // publicInfo's size
	return len(cmd) >= off+4 && tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[off:])) == AuditAnchorHandle
}

// review8IsGateEvict: cmd is a TPM2_EvictControl of the object persistent
// at 0x81007601 (its removal).
func review8IsGateEvict(cmd []byte) bool {
	return swtpmtest.CommandCode(cmd) == tpm2.TPMCCEvictControl && len(cmd) >= 18 &&
		tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[14:18])) == AuditGateHandle
}

// review8IsGatePersist: cmd is a TPM2_EvictControl making a transient
// object persistent at 0x81007601.
func review8IsGatePersist(cmd []byte) bool {
	return swtpmtest.CommandCode(cmd) == tpm2.TPMCCEvictControl && len(cmd) >= 22 &&
		binary.BigEndian.Uint32(cmd[14:18])>>24 == 0x80 &&
		tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[len(cmd)-4:])) == AuditGateHandle
}

// review8IsReadPublicOf: cmd is a TPM2_ReadPublic of h.
func review8IsReadPublicOf(cmd []byte, h tpm2.TPMHandle) bool {
	return swtpmtest.CommandCode(cmd) == tpm2.TPMCCReadPublic && len(cmd) >= 14 &&
		tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == h
}

// review8IsNVReadPublicOf: cmd is a TPM2_NV_ReadPublic of h.
func review8IsNVReadPublicOf(cmd []byte, h tpm2.TPMHandle) bool {
	return swtpmtest.CommandCode(cmd) == tpm2.TPMCCNVReadPublic && len(cmd) >= 14 &&
		tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == h
}

// review8IsTransientList: cmd is a TPM2_GetCapability of the transient
// handles sent in a session (the witness's Leftovers).
func review8IsTransientList(cmd []byte) bool {
	if swtpmtest.CommandCode(cmd) != tpm2.TPMCCGetCapability ||
		tpm2.TPMISTCommandTag(binary.BigEndian.Uint16(cmd[0:2])) != tpm2.TPMSTSessions {
		return false
	}
	off := swtpmtest.ParamsOffset(cmd, 0)
	return len(cmd) >= off+8 && tpm2.TPMCap(binary.BigEndian.Uint32(cmd[off:])) == tpm2.TPMCapHandles &&
		binary.BigEndian.Uint32(cmd[off+4:]) == uint32(tpm.TransientHandles)
}

// review8Loaded reports whether the TPM lists h among its transient
// objects.
func review8Loaded(t *testing.T, tp *tpm.TPM, h tpm2.TPMHandle) bool {
	t.Helper()
	hs, err := tp.Handles(tpm.TransientHandles)
	if err != nil {
		t.Fatal(err)
	}
	return slices.Contains(hs, h)
}

// review8Gate reads audit.gate's JSON ("" fields absent); nil when there
// is none.
func review8GateFile(t *testing.T, dir string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, gateFile))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// review8Names reports whether any record of the trail at dir (live and
// archived) or its pending file names name.
func review8Names(t *testing.T, dir, name string) bool {
	t.Helper()
	logs, _ := filepath.Glob(filepath.Join(dir, "audit*.log"))
	for _, p := range logs {
		recs, _ := audit.ReadRecords(p)
		for _, r := range recs {
			for _, v := range r.Objects {
				if strings.Contains(v, name) {
					return true
				}
			}
		}
	}
	if b, err := os.ReadFile(filepath.Join(dir, pendingFile)); err == nil && bytes.Contains(b, []byte(name)) {
		return true
	}
	return false
}

// review8Wire is the one channel to swtpm that several provd processes'
// connections share (swtpm serves one connection at a time): each
// command goes through whole, one at a time, as /dev/tpmrm0 passes them.
// A hook above it (a Bus) may hold one process in a command while the
// others go on.
type review8Wire struct {
	mu   sync.Mutex
	next transport.TPM
}

func (w *review8Wire) Send(cmd []byte) ([]byte, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.next.Send(cmd)
}

func (w *review8Wire) wrap(next transport.TPM) transport.TPM { w.next = next; return w }

// review8Client is another provd process's connection to the TPM behind w,
// as behind /dev/tpmrm0 (ResourceManager: no flush of others' handles at
// open, no sweep), with its own bus (nothing hooked at first). tpm.Open
// dials a listener that only holds the connection; every command goes
// to w.
func review8Client(t *testing.T, w *review8Wire) (*tpm.TPM, *swtpmtest.Bus) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var conns []net.Conn
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
	})
	b := &swtpmtest.Bus{Next: w}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tp, err := tpm.Open(ctx, tpm.Options{Spec: "swtpm://" + ln.Addr().String(), Timeout: 30 * time.Second, ResourceManager: true,
		Wrap: func(transport.TPM) transport.TPM { return b }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tp.Close() })
	return tp, b
}

// review8Agent is an agent on tp and dir, closed at the test's end.
func review8Agent(t *testing.T, tp *tpm.TPM, dir string) *Agent {
	t.Helper()
	a, err := New(Config{TPM: tp, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	return a
}

// ---------------------------------------------------------------------
// persistGate's retry.

// FLAW (new with b9b6874). persistGateOnce uses the gate's load handle
// "only in its generation": when the generation moved during the load
// (errGenerationMoved) or during the EvictControls, the load is not
// flushed, and a.t.Unheld() is all that stands for it. Behind a resource
// manager (/dev/tpmrm0, the device provd tries first) there is no sweep
// (sweepLeaks returns at once: tpm.Exclusive is false), and a number there
// is the connection's own: tpm.ForgetsStale says such a handle is flushed
// by its number, as review 5 found for the gated extend's session
// ("forgotten there, two forged answers leaked a session each until the
// connection's three were gone"). A1 moves the generation with no TPM
// event (swtpmtest.ForgedGeneration: TPM_RC_INITIALIZE forged on the
// command, provd's TPM2_Startup answered success, the resend passed on)
// on persistGate's TPM2_Load or on its first TPM2_EvictControl, in an
// officer's audit reanchor in the daemon. The gate's load stays in the
// connection's space, held by nobody, for the daemon's life: one of the
// three object slots /dev/tpmrm0 gives a connection (each try of the
// three can lose one). Held when no load of the new gate is left.
func TestReview8PersistGateForgedGenerationLeaksBehindAResourceManager(t *testing.T) {
	for _, tc := range []struct {
		name string
		cc   tpm2.TPMCC
	}{{"TPM2_Load", tpm2.TPMCCLoad}, {"TPM2_EvictControl", tpm2.TPMCCEvictControl}} {
		cc := tc.cc
		t.Run(tc.name, func(t *testing.T) {
			b := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(b), swtpmtest.WithResourceManager())
			// The flaw leaves a load behind: checked and flushed here.
			env.NoLeakCheck()
			req := review8Req()
			a := testAgent(t, env, &req)
			ctx := context.Background()
			var mu sync.Mutex
			var loads []tpm2.TPMHandle
			forge := swtpmtest.ForgedGeneration(cc, false)
			b.Set(review8AfterAnchorDefine(&mu, func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				if rsp, err, ok := forge(next, cmd); ok {
					return rsp, err, true
				}
				if swtpmtest.CommandCode(cmd) == tpm2.TPMCCLoad {
					rsp, err := next.Send(cmd)
					if err == nil && len(rsp) >= 14 && binary.BigEndian.Uint32(rsp[6:10]) == 0 {
						loads = append(loads, tpm2.TPMHandle(binary.BigEndian.Uint32(rsp[10:14])))
					}
					return rsp, err, true
				}
				return nil, nil, false
			}))
			gen := a.t.Generation()
			_, err := a.AuditReanchor(ctx)
			b.Set(nil)
			mu.Lock()
			got := slices.Clone(loads)
			mu.Unlock()
			t.Logf("reanchor with the generation forged on %v: %v; gate loads %x; generation %d to %d", cc, err, got, gen, a.t.Generation())
			if len(got) == 0 || a.t.Generation() == gen {
				t.Fatal("not mounted")
			}
			if err != nil {
				t.Fatalf("reanchor: %v", err)
			}
			gate := hex.EncodeToString(mustGateName(t, a))
			var leaked []tpm2.TPMHandle
			for _, h := range got {
				if !review8Loaded(t, env.TPM, h) {
					continue
				}
				if pub, err := env.TPM.ReadPublic(h); err == nil && hex.EncodeToString(pub.Name.Buffer) == gate {
					leaked = append(leaked, h)
				}
			}
			if left := unheldLeft(t, a); len(left) > 0 {
				t.Logf("held by nobody after the reanchor: %x", left)
				for _, h := range left {
					_ = env.TPM.Flush(h)
				}
			}
			if len(leaked) > 0 {
				t.Errorf("behind a resource manager (no sweep) the new gate's load 0x%08x stays in the connection's space, held by nobody: "+
					"persistGateOnce does not flush a load whose generation moved (ForgetsStale says flush it by its number there)", uint32(leaked[0]))
			}
			if _, err := a.AuditVerify(ctx); err != nil {
				t.Errorf("audit verify: %v", err)
			}
		})
	}
}

// FLAW (new with b9b6874). persistGate keeps the name of what a try
// evicted (replaced) only from the try that succeeds. A plain provision in
// a fresh state directory over another application's key at 0x81007601
// (the provision was done: Agent.replaceAnchor) evicts that key and then
// the TPM resets (honest: a platform reset between the EvictControl that
// evicted it and the one that persists the gate). The load is gone, the
// persistence fails, the generation moved: tried again, the handle is
// empty, the gate is persisted, and the try returns no replaced name. The
// key is gone and no record names it: the sixth review's flaw ("a new
// trail evicted another application's key there, with no trace"), back
// through the seventh's retry. Held when the key is still there or some
// record (live, archived, pending) names it.
func TestReview8ForeignKeyEvictedInATryAnEventEndedIsNotRecorded(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	env.RequireSimulator()
	// Another application's key, persistent at 0x81007601 before provd
	// ever ran here: an ECC signing primary in the owner hierarchy.
	otherName := PlantAnotherApplicationsKey(t, b.Next, env.TPM)
	var mu sync.Mutex
	fired := false
	b.Set(review8AfterAnchorDefine(&mu, func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if fired || !review8IsGateEvict(cmd) {
			return nil, nil, false
		}
		fired = true
		rsp, err := next.Send(cmd) // the key is evicted
		env.Event("reset")         // and the platform resets
		return rsp, err, true
	}))
	dir := t.TempDir() + "/state"
	a := review8Agent(t, env.TPM, dir)
	_, perr := a.Provision(context.Background(), review8Req())
	b.Set(nil)
	mu.Lock()
	f := fired
	mu.Unlock()
	now := review6AtGateHandle(t, env.TPM)
	t.Logf("provision (no --force) over another application's key %s at 0x%08x, a reset after its eviction: %v; 0x%08x now holds %q",
		otherName, uint32(AuditGateHandle), perr, uint32(AuditGateHandle), now)
	if !f {
		t.Fatal("not mounted: no eviction of 0x81007601 after the anchor's define")
	}
	if now == otherName {
		return // kept: held
	}
	if review8Names(t, dir, otherName) {
		return // recorded: held
	}
	t.Errorf("the new trail evicted another application's key %s from 0x%08x (a reset came between the eviction and the persistence); "+
		"no record names it: persistGate returns only the last try's replaced name", otherName, uint32(AuditGateHandle))
}

// ---------------------------------------------------------------------
// zeroize --srk: holdGate no longer asks for the sweep.

// FLAW (reopened by b9b6874). holdGate loads the gate for zeroize --srk
// through loadGate, which no longer asks for the sweep (fa6e30e had it
// there; b9b6874 moved it into withGate, "Zeroize's held gate needs none:
// zeroize flushes every handle but it"). A1 renames the load's answer to
// a copy of the gate it loaded itself (the same TPM2_Load sent twice: a
// password session has no nonce), as the sixth review did for withGate:
// provd holds A1's copy, its own load is nobody's. Zeroize's flush of
// leftovers would take it, but that list is read in the witness, and A1
// answers its first TPM2_GetCapability with an error (an error has no
// HMAC): nothing is flushed, zeroize goes on and fails at the end, and its
// deferred flush takes A1's copy. provd's own load of the gate stays in
// the TPM, and no sweep is asked for: in the daemon, until a later
// failure happens to ask for one. Held when no load of the gate is left
// after zeroize and one more operation.
func TestReview8ZeroizeSRKHeldGateRenamedLeaks(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	// The flaw leaves provd's load of the gate behind: checked and
	// flushed here.
	env.NoLeakCheck()
	a, _ := review6State(t, env, nil)
	ctx := context.Background()
	var mu sync.Mutex
	stage := 0
	var copyH, made tpm2.TPMHandle
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case stage == 0 && swtpmtest.CommandCode(cmd) == tpm2.TPMCCLoad && swtpmtest.LastSession(cmd, 1) == tpm2.TPMRSPW:
			stage = 1
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
		case stage == 1 && review8IsTransientList(cmd):
			stage = 2
			return swtpmtest.ErrorAnswer(tpm2.TPMRCValue + 0x040 + 0x100), nil, true
		}
		return nil, nil, false
	})
	res, err := a.Zeroize(ctx, api.ZeroizeOptions{SRK: true})
	b.Set(nil)
	mu.Lock()
	st, c, m := stage, copyH, made
	mu.Unlock()
	t.Logf("zeroize --srk, holdGate's load renamed to A1's copy 0x%08x (provd's 0x%08x), the witness's first list refused: %+v %v", uint32(c), uint32(m), res, err)
	if st != 2 || m == 0 {
		t.Fatalf("not mounted (stage %d)", st)
	}
	after := review8Loaded(t, env.TPM, m)
	// One more operation: the sweep, had it been asked for, runs at its
	// end at the latest.
	if _, err := a.TPMInfo(ctx); err != nil {
		t.Fatal(err)
	}
	still := review8Loaded(t, env.TPM, m)
	t.Logf("provd's load of the gate 0x%08x loaded after zeroize: %v, after one more operation: %v", uint32(m), after, still)
	if left := unheldLeft(t, a); len(left) > 0 {
		for _, h := range left {
			_ = a.t.Flush(h)
		}
	}
	if still {
		t.Errorf("provd's own load of the audit gate (0x%08x) stays in the TPM after zeroize --srk, held by nobody, and no sweep was asked for: "+
			"holdGate's load is the bus's word and only zeroize's flush of leftovers, which A1 can refuse, stands for the sweep", uint32(m))
	}
}

// ---------------------------------------------------------------------
// Zeroize's last steps and a concurrent new trail.

// FLAW (not new with the mends; in the steps fa6e30e reordered). Zeroize's
// last steps run after its last record, outside the trail's flock, with
// audit.gate removed and the log archived: the gate's eviction
// (evictVerified: ReadPublic of 0x81007601, then EvictControl of whatever
// that named) and the anchor's removal (undefineVerified: NV_ReadPublic,
// then NV_UndefineSpace of whatever that named). Another provd process on
// the same state (the daemon, which writes a record for any request a
// caller with no role sends, A3) begins a new trail in that window: the
// archived trail's nv_name lets it replace the anchor (foreignAnchor) and
// ownGate lets it take the gate's handle (the replaced anchor's policy,
// or the archive's gate_key). Zeroize then evicts the new trail's gate and
// undefines its anchor, and says so (gate_evicted, nv_indices_removed):
// the new trail, its records written, verifies no more ("the anchor is
// gone", tampered) and every audited operation is refused until an
// officer's reanchor. Whichever step the daemon's record comes before. Held
// when the new trail verifies after zeroize.
func TestReview8ZeroizeTakesAConcurrentNewTrailsGateAndAnchor(t *testing.T) {
	for _, at := range []string{"the gate's eviction", "the anchor's removal"} {
		t.Run(at, func(t *testing.T) {
			w := &review8Wire{}
			bz := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithWrap(w.wrap), swtpmtest.WithBus(bz), swtpmtest.WithResourceManager())
			ctx := context.Background()
			dir := t.TempDir() + "/state"
			z := review8Agent(t, env.TPM, dir) // the officer's one-shot zeroize
			if _, err := z.Provision(ctx, review8Req()); err != nil {
				t.Fatal(err)
			}
			rtp, _ := review8Client(t, w)
			r := review8Agent(t, rtp, dir) // the daemon
			a3 := api.WithCaller(ctx, api.Caller{UID: 4242})
			if err := r.RecordRefusal(a3, "key-delete", "review8-before"); err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			evicted, fired := false, false
			var rerr error
			bz.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				mu.Lock()
				defer mu.Unlock()
				if fired {
					return nil, nil, false
				}
				hold := false
				switch at {
				case "the gate's eviction":
					hold = review8IsReadPublicOf(cmd, AuditGateHandle)
				default:
					if review8IsGateEvict(cmd) {
						evicted = true
					}
					hold = evicted && review8IsNVReadPublicOf(cmd, AuditAnchorHandle)
				}
				if !hold {
					return nil, nil, false
				}
				fired = true
				// Zeroize is held in its command; a caller with no
				// role asks the daemon for something meanwhile.
				rerr = r.RecordRefusal(a3, "key-delete", "review8-during")
				return nil, nil, false
			})
			res, zerr := z.Zeroize(ctx, api.ZeroizeOptions{})
			bz.Set(nil)
			mu.Lock()
			f, re := fired, rerr
			mu.Unlock()
			t.Logf("zeroize: %+v %v; the daemon's record while zeroize was held before %s: %v", res, zerr, at, re)
			if !f {
				t.Fatal("not mounted")
			}
			if re != nil {
				t.Fatalf("the daemon's record during zeroize: %v", re)
			}
			recs, _ := audit.ReadRecords(filepath.Join(dir, audit.FileName))
			t.Logf("the live trail holds %d records; audit.gate present: %v; 0x%08x holds %q", len(recs), review8GateFile(t, dir) != nil,
				uint32(AuditGateHandle), review6AtGateHandle(t, env.TPM))
			_, verr := review8Agent(t, env.TPM, dir).AuditVerify(ctx)
			nerr := r.RecordRefusal(a3, "key-delete", "review8-after")
			t.Logf("the new trail after zeroize: verify %v (exit %d); the daemon's next record: %v", verr, api.ExitCode(verr), nerr)
			if verr != nil {
				t.Errorf("zeroize, held before %s, then evicted the gate and undefined the anchor of the trail the daemon began meanwhile "+
					"(its records are written): the new trail does not verify: %v", at, verr)
			}
		})
	}
}

// ---------------------------------------------------------------------
// persistAgain: a refused re-persistence and its rewrite of audit.gate.

// A1 forges the refusal of the re-persistence (TPM_RC_NV_SPACE for the
// TPM2_EvictControl that makes the loaded gate persistent again, after A2
// evicted it): not sent, or sent and the TPM's success replaced. provd
// drops gate_handle from audit.gate. Held, as a cost only: the record is
// written once (one extend), nothing is left, the trail verifies; the
// next records load the gate at once (the PK's load and the gate's, no
// proof on 0x81007601, no EvictControl: the cost of a trail from before
// the persistent gate); where the TPM did persist it, zeroize still
// evicts it; and audit.gate's other fields are what they were.
func TestReview8ForgedRepersistRefusalIsACostOnly(t *testing.T) {
	for _, sent := range []bool{false, true} {
		name := "not sent"
		if sent {
			name = "sent, the success replaced"
		}
		t.Run(name, func(t *testing.T) {
			b := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(b))
			_, dir := review6State(t, env, nil)
			before := review6Gate(t, dir, nil)
			if err := env.TPM.Evict(AuditGateHandle); err != nil { // A2
				t.Fatal(err)
			}
			a := review6Reopen(t, env, dir, nil)
			var mu sync.Mutex
			fired, extends := false, 0
			b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				mu.Lock()
				defer mu.Unlock()
				if swtpmtest.CommandCode(cmd) == tpm2.TPMCCNVExtend {
					extends++
				}
				if fired || !review8IsGatePersist(cmd) {
					return nil, nil, false
				}
				fired = true
				if sent {
					if _, err := next.Send(cmd); err != nil {
						return nil, err, true
					}
				}
				return swtpmtest.ErrorAnswer(tpm2.TPMRCNVSpace), nil, true
			})
			err := review6Seal(a, "review8-forged-refusal")
			b.Set(nil)
			mu.Lock()
			f, n := fired, extends
			mu.Unlock()
			if !f {
				t.Fatal("not mounted")
			}
			if err != nil {
				t.Fatalf("seal: %v (exit %d)", err, api.ExitCode(err))
			}
			review6NotMisreported(t, "seal", err)
			if n != 1 {
				t.Errorf("%d extends", n)
			}
			g := review6Gate(t, dir, nil)
			t.Logf("audit.gate after the forged refusal: gate_handle %v; 0x%08x holds %q", g["gate_handle"], uint32(AuditGateHandle), review6AtGateHandle(t, env.TPM))
			if g["gate_handle"] != nil {
				t.Errorf("audit.gate still names gate_handle %v", g["gate_handle"])
			}
			for k, v := range before {
				if k != "gate_handle" && g[k] != v {
					t.Errorf("audit.gate's %s changed by the rewrite: %v to %v", k, v, g[k])
				}
			}
			if left := unheldLeft(t, a); len(left) > 0 {
				t.Errorf("left: %x", left)
			}
			// The next record, A1 gone: the cost of a gate loaded per
			// record, no more.
			log := &swtpmtest.CommandLog{}
			var proved []tpm2.TPMHandle
			b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				if swtpmtest.CommandCode(cmd) == tpm2.TPMCCPolicySecret && len(cmd) >= 14 {
					mu.Lock()
					proved = append(proved, tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])))
					mu.Unlock()
				}
				return log.Hook(next, cmd)
			})
			log.Start()
			err = review6Seal(review6Reopen(t, env, dir, nil), "review8-after")
			cmds := log.Stop()
			b.Set(nil)
			t.Logf("the next one-shot seal: %v, %d commands (%d Load, %d EvictControl), proofs on %x", err, len(cmds),
				swtpmtest.Count(cmds, tpm2.TPMCCLoad), swtpmtest.Count(cmds, tpm2.TPMCCEvictControl), proved)
			if err != nil {
				t.Fatalf("the next seal: %v", err)
			}
			if swtpmtest.Count(cmds, tpm2.TPMCCLoad) != 2 || swtpmtest.Count(cmds, tpm2.TPMCCEvictControl) != 0 || slices.Contains(proved, AuditGateHandle) {
				t.Errorf("the next seal: %d loads, %d EvictControl, proofs on %x: want the PK's and the gate's load, nothing more",
					swtpmtest.Count(cmds, tpm2.TPMCCLoad), swtpmtest.Count(cmds, tpm2.TPMCCEvictControl), proved)
			}
			if _, err := a.AuditVerify(context.Background()); err != nil {
				t.Errorf("audit verify: %v", err)
			}
			res, err := review6Reopen(t, env, dir, nil).Zeroize(context.Background(), api.ZeroizeOptions{})
			if err != nil || !res.GateEvicted {
				t.Errorf("zeroize: %+v %v", res, err)
			}
			if got := review6AtGateHandle(t, env.TPM); got != "" {
				t.Errorf("0x%08x holds %s after zeroize", uint32(AuditGateHandle), got)
			}
		})
	}
}

// persistAgain rewrites audit.gate only if it is still the record the
// record read, and while the trail's flock keeps other writers out. Three
// writers come while a one-shot record (A2 evicted the gate) is in its
// re-persistence, which A1 refuses (forged TPM_RC_NV_SPACE): A4 removes
// audit.gate (as zeroize does, outside the flock), A4 writes another gate
// record, and another provd process (the daemon, as behind /dev/tpmrm0)
// runs an officer's audit reanchor, which waits for the flock. Held: the
// removed file is not brought back, the other record is not overwritten,
// and the reanchor's new gate is what audit.gate names after both, the
// gate there persistent and the trail verifying.
func TestReview8RewriteOnlyTheRecordItRead(t *testing.T) {
	for _, writer := range []string{"A4 removes audit.gate", "A4 writes another record", "a reanchor in another process"} {
		t.Run(writer, func(t *testing.T) {
			w := &review8Wire{}
			b := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithWrap(w.wrap), swtpmtest.WithBus(b), swtpmtest.WithResourceManager())
			ctx := context.Background()
			dir := t.TempDir() + "/state"
			if _, err := review8Agent(t, env.TPM, dir).Provision(ctx, review8Req()); err != nil {
				t.Fatal(err)
			}
			var q *Agent
			if writer == "a reanchor in another process" {
				qtp, _ := review8Client(t, w)
				q = review8Agent(t, qtp, dir)
			}
			if err := env.TPM.Evict(AuditGateHandle); err != nil { // A2
				t.Fatal(err)
			}
			var other []byte
			var mu sync.Mutex
			fired := false
			var qerr error
			qdone := make(chan struct{})
			b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				mu.Lock()
				defer mu.Unlock()
				if fired || !review8IsGatePersist(cmd) {
					return nil, nil, false
				}
				fired = true
				switch writer {
				case "A4 removes audit.gate":
					if err := os.Remove(filepath.Join(dir, gateFile)); err != nil {
						t.Error(err)
					}
				case "A4 writes another record":
					g, err := (&trailAnchor{dir: dir}).gate()
					if err != nil || g == nil {
						t.Errorf("audit.gate: %v", err)
						break
					}
					g.SRK = strings.Repeat("00", 34)
					if err := writeGateRecord(dir, *g); err != nil {
						t.Error(err)
					}
					other = review8GateFile(t, dir)
				default:
					go func() {
						defer close(qdone)
						_, qerr = q.AuditReanchor(ctx)
					}()
					time.Sleep(500 * time.Millisecond)
					select {
					case <-qdone:
						t.Errorf("the reanchor ended while the record held the trail's flock: %v", qerr)
					default:
					}
				}
				return swtpmtest.ErrorAnswer(tpm2.TPMRCNVSpace), nil, true
			})
			err := review6Seal(review8Agent(t, env.TPM, dir), "review8-rewrite")
			mu.Lock()
			f := fired
			mu.Unlock()
			if !f {
				t.Fatal("not mounted")
			}
			t.Logf("seal (%s during its re-persistence): %v", writer, err)
			switch writer {
			case "A4 removes audit.gate":
				if got := review8GateFile(t, dir); got != nil {
					t.Errorf("audit.gate, removed during the re-persistence, was written again: %s", got)
				}
			case "A4 writes another record":
				if got := review8GateFile(t, dir); !bytes.Equal(got, other) {
					t.Errorf("audit.gate, rewritten during the re-persistence, was overwritten: %s, want %s", got, other)
				}
			default:
				if err != nil {
					t.Errorf("seal: %v", err)
				}
				<-qdone
				b.Set(nil)
				if qerr != nil {
					t.Fatalf("reanchor: %v", qerr)
				}
				g := review6Gate(t, dir, nil)
				t.Logf("after both: audit.gate names %v (gate_handle %v); 0x%08x holds %q", g["gate_name"], g["gate_handle"], uint32(AuditGateHandle), review6AtGateHandle(t, env.TPM))
				if h, _ := g["gate_handle"].(float64); uint32(h) != uint32(AuditGateHandle) || review6AtGateHandle(t, env.TPM) != g["gate_name"] {
					t.Errorf("after the reanchor audit.gate names gate %v, gate_handle %v; 0x%08x holds %q",
						g["gate_name"], g["gate_handle"], uint32(AuditGateHandle), review6AtGateHandle(t, env.TPM))
				}
				if _, err := review8Agent(t, env.TPM, dir).AuditVerify(ctx); err != nil {
					t.Errorf("audit verify: %v", err)
				}
				if err := review6Seal(review8Agent(t, env.TPM, dir), "review8-next"); err != nil {
					t.Errorf("the next seal: %v", err)
				}
			}
			b.Set(nil)
		})
	}
}

// ---------------------------------------------------------------------
// persistGate's read of the handle under A1.

// A1 answers persistGate's TPM2_ReadPublic of 0x81007601 (no HMAC) in an
// officer's reanchor, to have provd keep the old gate it should evict:
// "no object" (provd then persists without evicting, and the TPM refuses:
// the handle is taken) or the SRK's public (an object not provd's: left
// as it is). Held, as a cost: the reanchor works, the new gate stays
// transient (audit.gate names no handle) and nothing is left loaded; the
// next record loads the gate and proves nothing at 0x81007601; the trail
// verifies; the old trail's gate, kept at 0x81007601, is taken by zeroize
// (which evicts what is there), the handle ending empty. Logged, not
// asserted: a second reanchor with A1 gone does not take the handle back
// either (the gate there is this live trail's earlier one, which ownGate
// does not know: not the current gate, not the replaced anchor's, not an
// archive's), so one forged answer leaves the trail transient until
// zeroize or provision --force.
func TestReview8A1OnPersistGatesReadKeepsTheOldGate(t *testing.T) {
	for _, answer := range []string{"no object", "the SRK's public"} {
		t.Run(answer, func(t *testing.T) {
			b := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(b))
			a, dir := review6State(t, env, nil)
			old := review6AtGateHandle(t, env.TPM)
			var mu sync.Mutex
			fired := false
			b.Set(review8AfterAnchorDefine(&mu, func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				if fired || !review8IsReadPublicOf(cmd, AuditGateHandle) {
					return nil, nil, false
				}
				fired = true
				if answer == "no object" {
					return swtpmtest.ErrorAnswer(tpm2.TPMRCHandle + 0x100), nil, true
				}
				c := bytes.Clone(cmd)
				binary.BigEndian.PutUint32(c[10:14], uint32(tpm.SRKHandle))
				rsp, err := next.Send(c)
				return rsp, err, true
			}))
			_, err := a.AuditReanchor(context.Background())
			b.Set(nil)
			mu.Lock()
			f := fired
			mu.Unlock()
			if !f {
				t.Fatal("not mounted")
			}
			g := review6Gate(t, dir, nil)
			t.Logf("reanchor, A1 answering persistGate's read %s: %v; gate_handle %v; 0x%08x holds %q (the old gate %s, the new %v)",
				answer, err, g["gate_handle"], uint32(AuditGateHandle), review6AtGateHandle(t, env.TPM), old, g["gate_name"])
			if err != nil {
				t.Fatalf("reanchor: %v (exit %d)", err, api.ExitCode(err))
			}
			review6NotMisreported(t, "reanchor", err)
			if g["gate_handle"] != nil {
				t.Errorf("audit.gate names gate_handle %v, the persistence having been refused", g["gate_handle"])
			}
			if left := unheldLeft(t, a); len(left) > 0 {
				t.Errorf("left: %x", left)
			}
			var proved []tpm2.TPMHandle
			b.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
				if swtpmtest.CommandCode(cmd) == tpm2.TPMCCPolicySecret && len(cmd) >= 14 {
					mu.Lock()
					proved = append(proved, tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])))
					mu.Unlock()
				}
				return nil, nil, false
			})
			err = review6Seal(review6Reopen(t, env, dir, nil), "review8-after")
			b.Set(nil)
			if err != nil {
				t.Fatalf("the next seal: %v", err)
			}
			if slices.Contains(proved, AuditGateHandle) {
				t.Errorf("the next seal proved 0x%08x, which audit.gate does not name", uint32(AuditGateHandle))
			}
			if _, err := a.AuditVerify(context.Background()); err != nil {
				t.Errorf("audit verify: %v", err)
			}
			// Another reanchor, A1 gone: the handle holds this trail's
			// earlier gate, which ownGate does not know (not the current
			// gate, not the replaced anchor's, not an archive's).
			if _, err := review6Reopen(t, env, dir, nil).AuditReanchor(context.Background()); err != nil {
				t.Fatalf("the second reanchor: %v", err)
			}
			g = review6Gate(t, dir, nil)
			t.Logf("a second reanchor, A1 gone: gate_handle %v; 0x%08x holds %q (the first gate %s)", g["gate_handle"],
				uint32(AuditGateHandle), review6AtGateHandle(t, env.TPM), old)
			res, err := review6Reopen(t, env, dir, nil).Zeroize(context.Background(), api.ZeroizeOptions{})
			if err != nil || !res.GateEvicted {
				t.Errorf("zeroize: %+v %v", res, err)
			}
			if got := review6AtGateHandle(t, env.TPM); got != "" {
				t.Errorf("0x%08x holds %s after zeroize", uint32(AuditGateHandle), got)
			}
		})
	}
}
