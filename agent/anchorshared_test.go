package agent_test

import (
	"bytes"
	"context"
	"errors"
	"testing"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// A record in a process that keeps its trail open (the daemon) reads the
// anchor and proves the gate in one session (issue 14): an audited refusal
// costs 10 TPM commands (the gate's load and flush, StartAuthSession,
// NV_Read, StartAuthSession, PolicySecret, PolicyCommandCode, the shared
// session's flush, NV_Extend, the policy session's flush), where reading and
// preparing apart took 12, and the trail verifies after each.
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
		if n := env.TPM.Stats().Sub(before).Commands; n != 10 {
			t.Errorf("record %d of an audited refusal: %d TPM commands, want 10", i, n)
		}
		if _, err := ag.AuditVerify(ctx); err != nil {
			t.Fatalf("verify after record %d: %v", i, err)
		}
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
