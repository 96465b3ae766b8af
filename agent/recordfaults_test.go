package agent_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
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

// busFault is one A1 fault on the nth command cc of a record.
type busFault struct {
	cc   tpm2.TPMCC
	nth  int
	kind string // forge, forgeWarn, passForge, lose, flip
	// always: every such command from the nth on, for the whole record
	// (its retry and the fallback's reads included), not only the nth.
	always bool
}

func (f busFault) hook() swtpmtest.Hook {
	var mu sync.Mutex
	seen, done := 0, false
	return func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		if done || swtpmtest.CommandCode(cmd) != f.cc {
			return nil, nil, false
		}
		if seen++; seen < f.nth || seen > f.nth && !f.always {
			return nil, nil, false
		}
		done = !f.always
		rc := func(v uint16) []byte { return []byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, byte(v >> 8), byte(v)} }
		switch f.kind {
		case "forge":
			return rc(0x9a2), nil, true // BAD_AUTH, session 1
		case "forgeWarn":
			return rc(0x903), nil, true // SESSION_MEMORY
		case "passForge":
			_, _ = next.Send(cmd)
			return rc(0x9a2), nil, true
		case "lose":
			_, _ = next.Send(cmd)
			return nil, errors.New("answer lost on the bus"), true
		case "rehandle": // the handle the TPM made, changed in its (unauthenticated) answer
			rsp, err := next.Send(cmd)
			if err != nil || len(rsp) < 14 || rsp[6]|rsp[7]|rsp[8]|rsp[9] != 0 {
				return rsp, err, true
			}
			rsp = bytes.Clone(rsp)
			rsp[13] ^= 0x10
			return rsp, nil, true
		case "flip":
			rsp, err := next.Send(cmd)
			if err != nil || len(rsp) <= 10 {
				return rsp, err, true
			}
			rsp = bytes.Clone(rsp)
			rsp[len(rsp)-1] ^= 1
			return rsp, nil, true
		}
		return nil, nil, false
	}
}

// A1 on every command of a daemon's record (gate load, the shared session,
// its NV_Read, the policy session, PolicySecret, PolicyCommandCode, the
// flushes, the extend): each forged, refused after the TPM ran it, its
// answer lost, changed, or naming another handle. Held: nothing is left
// loaded after the operation (provd's sweep included), the record is in
// the trail or waits in audit.pending exactly once, and the trail verifies
// on an honest bus, an officer's repair --anchor-last needed only where the
// extend's own outcome could not be read. Found by review: a FlushContext
// answered with a forged error, a StartAuthSession or Load answer naming
// another handle (provd flushed the wrong one), and a Load answer that did
// not parse left the session, the gate or the policy session loaded, with
// no sweep asked for.
func TestRecordUnderBusFaults(t *testing.T) {
	t.Parallel()
	runFaultMatrix(t, []faultTarget{
		{tpm2.TPMCCLoad, 1}, {tpm2.TPMCCStartAuthSession, 1}, {tpm2.TPMCCNVRead, 1}, {tpm2.TPMCCStartAuthSession, 2},
		{tpm2.TPMCCPolicySecret, 1}, {tpm2.TPMCCPolicyCommandCode, 1}, {tpm2.TPMCCFlushContext, 1},
		{tpm2.TPMCCFlushContext, 2}, {tpm2.TPMCCNVExtend, 1}, {tpm2.TPMCCFlushContext, 3},
	}, recordUnderFault)
}

// faultTarget is the nth command of code cc an operation sends.
type faultTarget struct {
	cc  tpm2.TPMCC
	nth int
}

// runFaultMatrix runs op, in parallel subtests, under each fault A1 can
// put on each target: its answer forged (an error, or a warning), the
// command passed on and a failure answered, the answer lost or changed,
// and, for StartAuthSession and Load, another handle named; once, and on
// every try but for flushes (A1 dropping every flush, the sweep's too,
// fills the slots: nothing to learn).
func runFaultMatrix(t *testing.T, targets []faultTarget, op func(*testing.T, busFault)) {
	for _, tg := range targets {
		kinds := []string{"forge", "forgeWarn", "passForge", "lose", "flip"}
		if tg.cc == tpm2.TPMCCStartAuthSession || tg.cc == tpm2.TPMCCLoad {
			kinds = append(kinds, "rehandle")
		}
		for _, kind := range kinds {
			for _, always := range []bool{false, true} {
				if always && tg.cc == tpm2.TPMCCFlushContext {
					continue
				}
				f := busFault{cc: tg.cc, nth: tg.nth, kind: kind, always: always}
				name := fmt.Sprintf("%s%d-%s", faultCCName[tg.cc], tg.nth, kind)
				if always {
					name += "-always"
				}
				t.Run(name, func(t *testing.T) {
					t.Parallel()
					op(t, f)
				})
			}
		}
	}
}

var faultCCName = map[tpm2.TPMCC]string{
	tpm2.TPMCCLoad: "Load", tpm2.TPMCCStartAuthSession: "StartAuthSession", tpm2.TPMCCNVRead: "NVRead",
	tpm2.TPMCCPolicySecret: "PolicySecret", tpm2.TPMCCPolicyCommandCode: "PolicyCommandCode",
	tpm2.TPMCCFlushContext: "Flush", tpm2.TPMCCNVExtend: "NVExtend", tpm2.TPMCCNVReadPublic: "NVReadPublic",
	tpm2.TPMCCPCRRead: "PCRRead", tpm2.TPMCCPolicyPCR: "PolicyPCR", tpm2.TPMCCPolicyAuthValue: "PolicyAuthValue",
	tpm2.TPMCCCreate: "Create",
}

func recordUnderFault(t *testing.T, f busFault) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	ctx := context.Background()
	dir := stateDir(t)
	ag := newAgent(t, env, dir)
	if _, err := ag.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	if err := ag.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 1}), "key-delete", "warm"); err != nil {
		t.Fatal(err)
	}
	checkRecordUnderFault(t, b, env, ag, dir, f)
}

// checkRecordUnderFault records a refusal (UID 4242) with fault f on bus
// b, then checks on an honest bus: nothing left loaded, the record in the
// trail or pending exactly once, the trail verifying (repair
// --anchor-last only after a fault on the extend itself).
func checkRecordUnderFault(t *testing.T, b *swtpmtest.Bus, env *swtpmtest.Env, ag *agent.Agent, dir string, f busFault) {
	t.Helper()
	ctx := context.Background()
	b.Set(f.hook())
	err := ag.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 4242}), "key-delete", "under attack")
	b.Set(nil)
	_, pst := os.Stat(filepath.Join(dir, "audit.pending"))
	t.Logf("record under the fault: %v", err)
	t.Logf("SUMMARY %s exit=%d pending=%v forged=%v tampered=%v", t.Name(), api.ExitCode(err), pst == nil, errors.Is(err, tpm.ErrResponseForged), errors.Is(err, api.ErrTampered))
	if left, lerr := env.TPM.Leftovers(); lerr != nil || len(left) != 0 {
		t.Errorf("left in the TPM after the faulted record: %x %v", left, lerr)
	}
	checkTrailAfterFault(t, env, ag, dir, f, "")
}

// checkTrailAfterFault checks, on an honest bus after an operation of UID
// 4242 under fault f: the trail verifies (after the repairs an operator
// would run; --anchor-last only after a fault on the extend itself), the
// operation's record (of op, or any op when op is "") is in the trail or
// pending exactly once, and nothing is left loaded.
func checkTrailAfterFault(t *testing.T, env *swtpmtest.Env, ag *agent.Agent, dir string, f busFault, op string) {
	t.Helper()
	ctx := context.Background()
	herr := ag.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 5}), "key-delete", "honest")
	_, verr := ag.AuditVerify(ctx)
	repaired := false
	if herr != nil || verr != nil {
		t.Logf("honest record: %v; verify: %v", herr, verr)
		if errors.Is(verr, audit.ErrUnanchored) || errors.Is(herr, audit.ErrUnanchored) {
			// Records waiting in audit.pending: a plain repair writes them.
			_, rerr := ag.AuditRepair(ctx, false)
			t.Logf("repair: %v", rerr)
			if _, v2 := ag.AuditVerify(ctx); v2 != nil {
				if _, rerr := ag.AuditRepair(ctx, true); rerr != nil {
					t.Logf("repair --anchor-last: %v", rerr)
				}
				repaired = true
			}
			_ = ag.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 6}), "key-delete", "honest after repair")
		}
		_, verr = ag.AuditVerify(ctx)
	}
	if verr != nil {
		t.Errorf("the trail does not verify on an honest bus after the fault (repaired: %v): %v", repaired, verr)
	}
	recs, _ := audit.ReadRecords(filepath.Join(dir, audit.FileName))
	n := 0
	for _, r := range recs {
		if r.UID == 4242 && (op == "" || r.Op == op) {
			n++
		}
	}
	p, _ := os.ReadFile(filepath.Join(dir, "audit.pending"))
	for _, l := range strings.Split(string(p), "\n") {
		if strings.Contains(l, `"uid":4242`) && (op == "" || strings.Contains(l, `"op":"`+op+`"`)) {
			n++
		}
	}
	if n != 1 {
		t.Errorf("the attacked record is in the trail or pending %d times, want 1", n)
	}
	if repaired && f.cc != tpm2.TPMCCNVExtend {
		t.Errorf("a fault on %v (before any line was written) needed an officer's repair --anchor-last", f.cc)
	}
	if left, lerr := env.TPM.Leftovers(); lerr != nil || len(left) != 0 {
		t.Errorf("left in the TPM at the end: %x %v", left, lerr)
	}
}
