package agent_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// A record in a process that keeps its trail open (the daemon) reads the
// anchor and proves the gate in one session (issue 14): an audited refusal
// costs 8 TPM commands (StartAuthSession, NV_Read, StartAuthSession,
// PolicySecret of the persistent gate, PolicyCommandCode, the shared
// session's flush, NV_Extend, the policy session's flush), where reading and
// preparing apart took 12 and the gate's load and flush 2 more, and the
// trail verifies after each.
func TestRecordSharesOneSessionForReadAndGate(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag := newAgent(t, env, stateDir(t))
	if _, err := ag.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		before := env.TPM.Stats()
		if _, err := ag.ImportKeyBlob(ctx, ".bad-name", nil); !errors.Is(err, api.ErrBadInput) {
			t.Fatal(err)
		}
		if n := env.TPM.Stats().Sub(before).Commands; n != 8 {
			t.Errorf("record %d of an audited refusal: %d TPM commands, want 8", i, n)
		}
		if _, err := ag.AuditVerify(ctx); err != nil {
			t.Fatalf("verify after record %d: %v", i, err)
		}
	}
}

// In a process that keeps its trail open (the daemon), an operation's
// record reads the anchor and proves the gate in the operation's shared
// session when it is still started (issue 14: no keyed session of the
// record's own, its StartAuthSession and flush: 2 commands): a warm seal's
// record reads the anchor in the session that read the PCRs it seals to,
// and the seal starts two sessions (the shared one, the creation's policy
// session, which then proves the record's gate: tpm.PolicySession.Spare;
// three before issue 14's spare). The trail verifies and nothing is left.
func TestWarmRecordReadsInTheSharedSession(t *testing.T) {
	b := &swtpmtest.Bus{}
	env, ag := auditedAgent(t, b)
	ctx := context.Background()
	var mu sync.Mutex
	var codes []tpm2.TPMCC
	last := map[tpm2.TPMCC]tpm2.TPMHandle{}
	b.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		cc := swtpmtest.CommandCode(cmd)
		codes = append(codes, cc)
		if nh, ok := map[tpm2.TPMCC]int{tpm2.TPMCCPCRRead: 0, tpm2.TPMCCNVRead: 2}[cc]; ok {
			last[cc] = swtpmtest.LastSession(cmd, nh)
		}
		return nil, nil, false
	})
	_, err := ag.Seal(ctx, api.SealRequest{Data: []byte("the disk key"), PCRs: []int{7}})
	b.Set(nil)
	if err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if last[tpm2.TPMCCNVRead] == 0 || last[tpm2.TPMCCNVRead] != last[tpm2.TPMCCPCRRead] {
		t.Errorf("the record read the anchor in session 0x%08x, the PCRs were read in 0x%08x: want the shared one",
			uint32(last[tpm2.TPMCCNVRead]), uint32(last[tpm2.TPMCCPCRRead]))
	}
	if n := swtpmtest.Count(codes, tpm2.TPMCCStartAuthSession); n != 2 {
		t.Errorf("%d StartAuthSessions, want 2: %v", n, codes)
	}
	if left, err := env.TPM.Leftovers(); err != nil || len(left) != 0 {
		t.Fatalf("left in the TPM: %v (%v)", left, err)
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Fatal(err)
	}
}

// The shared session's read is the TPM's: a changed NV_Read answer fails
// the record as forged (exit 15), extends nothing, and the trail verifies
// on an honest bus with the refusal's record written late.
func TestSharedAnchorReadIsAuthenticated(t *testing.T) {
	f := &forger{index: agent.AuditAnchorHandle}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(f.wrap))
	ctx := context.Background()
	ag := newAgent(t, env, stateDir(t))
	if _, err := ag.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	anchor := func() []byte {
		t.Helper()
		v, err := env.TPM.Anchor(agent.AuditAnchorHandle).Read()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	was := anchor()
	f.on.Store(true)
	_, err := ag.ImportKeyBlob(ctx, ".bad-name", nil)
	f.on.Store(false)
	if f.hits.Load() == 0 {
		t.Fatal("no anchor read changed: the attack is not mounted")
	}
	if !errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) != api.ExitIdentity {
		t.Fatalf("record with a changed anchor read: %v (exit %d), want tpm_response_forged", err, api.ExitCode(err))
	}
	if !bytes.Equal(anchor(), was) {
		t.Fatal("the anchor moved although its read was forged")
	}
	if _, err := ag.ImportKeyBlob(ctx, ".bad-name", nil); !errors.Is(err, api.ErrBadInput) {
		t.Fatalf("the next refusal on an honest bus: %v", err)
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Fatalf("verify on an honest bus: %v", err)
	}
}

// The gate's authValue never crosses the bus when one session reads the
// anchor and proves the gate (nor anything the session's bind could give
// away: its key is the salt's), over a daemon's records and a verify
// (checked by review).
func TestGateAuthNeverCrossesTheBusInARecord(t *testing.T) {
	rec := &swtpmtest.Recorder{}
	env := swtpmtest.Start(t, swtpmtest.WithRecorder(rec))
	ctx := context.Background()
	dir := stateDir(t)
	ag := newAgent(t, env, dir)
	if _, err := ag.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := ag.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 100 + i}), "key-delete", "x"); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "audit.gate"))
	if err != nil {
		t.Fatal(err)
	}
	var g struct {
		Auth string `json:"gate_auth"`
	}
	if err := json.Unmarshal(b, &g); err != nil {
		t.Fatal(err)
	}
	auth, err := hex.DecodeString(g.Auth)
	if err != nil || len(auth) != 32 {
		t.Fatalf("gate auth %q: %v", g.Auth, err)
	}
	if off := rec.Leak(auth); off >= 0 {
		t.Errorf("the gate's authValue crossed the bus (from byte %d)", off)
	}
}

// A2 with the owner hierarchy open undefines the anchor and defines it
// again with provd's exact public area (same policy, so the same name once
// written) between a record's shared read and its extend. The extend goes
// with the written name the read proved (no NV_ReadPublic), so the TPM
// refuses it, and the read that follows finds the anchor neither before
// nor after the line: the record is not reported written, and verify says
// tampered, never intact on top of a recreated anchor (checked by review).
func TestAnchorRecreatedBetweenReadAndExtend(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	ctx := context.Background()
	ag := newAgent(t, env, stateDir(t))
	if _, err := ag.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	if err := ag.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 1}), "key-delete", "warm"); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	done := false
	var aerr error
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		if done || swtpmtest.CommandCode(cmd) != tpm2.TPMCCNVExtend || tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) != agent.AuditAnchorHandle {
			return nil, nil, false
		}
		done = true
		rp, err := (tpm2.NVReadPublic{NVIndex: agent.AuditAnchorHandle}).Execute(next)
		if err != nil {
			aerr = err
			return nil, nil, false
		}
		pub, err := rp.NVPublic.Contents()
		if err != nil {
			aerr = err
			return nil, nil, false
		}
		if _, err := (tpm2.NVUndefineSpace{AuthHandle: tpm2.TPMRHOwner, NVIndex: tpm2.NamedHandle{Handle: agent.AuditAnchorHandle, Name: rp.NVName}}).Execute(next); err != nil {
			aerr = err
			return nil, nil, false
		}
		pub.Attributes.Written = false
		if _, err := (tpm2.NVDefineSpace{AuthHandle: tpm2.TPMRHOwner, PublicInfo: tpm2.New2B(*pub)}).Execute(next); err != nil {
			aerr = err
		}
		return nil, nil, false
	})
	err := ag.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 4242}), "key-delete", "under attack")
	b.Set(nil)
	if aerr != nil || !done {
		t.Fatalf("attack not mounted: %v", aerr)
	}
	t.Logf("record with the anchor recreated under it: %v", err)
	_, verr := ag.AuditVerify(ctx)
	t.Logf("verify: %v (exit %d)", verr, api.ExitCode(verr))
	if err == nil {
		t.Error("the record was reported written and anchored on a recreated anchor")
	}
	if !errors.Is(verr, api.ErrTampered) {
		t.Errorf("verify after the anchor was recreated: %v, want tampered", verr)
	}
}
