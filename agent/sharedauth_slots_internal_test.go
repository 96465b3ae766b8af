package agent

import (
	"context"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// The daemon's agent (KeepSession) behind swtpmtest.SessionLimit, started
// afresh on a provisioned state so that its first record is the opened
// trail's (Prepare: the gate's proof in the shared session, kept over the
// policy session's start) with the key use's policy session kept beside
// it: a warm sign, then sign, seal, key create, attest identity, attest
// quote and status. No operation meets a refusal for want of a session or
// object slot, each records, and the trail verifies.
func TestDaemonRecordsBehindTheSessionLimit(t *testing.T) {
	l := &swtpmtest.SessionLimit{}
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b), swtpmtest.WithWrap(l.Wrap))
	ctx := context.Background()
	dir := t.TempDir() + "/state"
	a, err := New(Config{TPM: env.TPM, StateDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AttestIdentity(ctx); err != nil {
		t.Fatal(err)
	}
	a.Close()
	a, err = New(Config{TPM: env.TPM, StateDir: dir, KeepSession: true})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	log := &swtpmtest.CommandLog{}
	b.Set(log.Hook)
	l.Take()
	sign := func() error { _, err := signK(a); return err }
	nonce := make([]byte, 32)
	for _, op := range []struct {
		name string
		fn   func() error
	}{
		{"sign (cold)", sign},
		{"sign (warm)", sign},
		{"seal", func() error { _, err := a.Seal(ctx, api.SealRequest{Data: []byte("x"), PCRs: []int{7}}); return err }},
		{"sign (after seal)", sign},
		{"key create", func() error { _, err := a.CreateKey(ctx, api.CreateRequest{Name: "k2", Type: "ecc-p256"}); return err }},
		{"sign (before attest)", sign},
		{"attest quote", func() error {
			_, err := a.AttestQuote(ctx, api.AttestQuoteRequest{Nonce: nonce, PCRs: map[string][]int{"sha256": {0, 7}}})
			return err
		}},
		{"status", func() error { _, err := a.Status(ctx); return err }},
	} {
		log.Start()
		err := op.fn()
		cmds := log.Stop()
		refused, _ := l.Take()
		if err != nil {
			t.Errorf("%s: %v", op.name, err)
		}
		if refused > 0 {
			t.Errorf("%s: %d refusals for want of a slot in %v", op.name, refused, cmds)
		}
		t.Logf("%s: %d commands, %d PolicySecret", op.name, len(cmds), swtpmtest.Count(cmds, tpm2.TPMCCPolicySecret))
	}
	b.Set(nil)
	if _, err := a.AuditVerify(ctx); err != nil {
		t.Errorf("audit verify: %v", err)
	}
}
