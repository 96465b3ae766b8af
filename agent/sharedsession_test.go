package agent_test

import (
	"context"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// upTo is the codes before the first cc.
func upTo(cmds []tpm2.TPMCC, cc tpm2.TPMCC) []tpm2.TPMCC {
	if i := slices.Index(cmds, cc); i >= 0 {
		return cmds[:i]
	}
	return cmds
}

// A one-shot seal reads the audit anchor, loads the PK and reads the PCRs
// it seals to in one audit session (tpm.TPM.Share; issue 14: 23 commands,
// was 27): one StartAuthSession before the creation's policy session, no
// FlushContext of a session before it, and the blob unseals.
func TestOneShotSealSharesOneAuditSession(t *testing.T) {
	b := &swtpmtest.Bus{}
	env, ag, _ := oneShot(t, b)
	log := &swtpmtest.CommandLog{}
	b.Set(log.Hook)
	log.Start()
	ctx := context.Background()
	blob, err := ag.Seal(ctx, api.SealRequest{Data: []byte("the disk key"), PCRs: []int{7, 16}, AllowResettable: true})
	cmds := log.Stop()
	b.Set(nil)
	if err != nil {
		t.Fatal(err)
	}
	before := upTo(cmds, tpm2.TPMCCPolicyPCR)
	if n := swtpmtest.Count(before, tpm2.TPMCCStartAuthSession); n != 2 {
		t.Errorf("before the creation's policy: %v; want 2 StartAuthSession (the shared one, the creation's)", before)
	}
	for _, cc := range []tpm2.TPMCC{tpm2.TPMCCNVRead, tpm2.TPMCCLoad, tpm2.TPMCCPCRRead} {
		if swtpmtest.Count(before, cc) != 1 {
			t.Errorf("before the creation's policy: %v; want one %v", before, cc)
		}
	}
	if n := swtpmtest.Count(before, tpm2.TPMCCFlushContext); n != 0 {
		t.Errorf("before the creation's policy: %v; want no flush (one session for the reads and the load)", before)
	}
	// 23 in a new process, with the open's four (GetTestResult, two
	// GetCapability, the SRK's ReadPublic); the TPM is open here.
	if n := len(cmds); n != 19 {
		t.Errorf("a one-shot seal sent %d commands, want 19: %v", n, cmds)
	}
	got, err := ag.Unseal(ctx, blob)
	if err != nil || string(got) != "the disk key" {
		t.Fatalf("unseal: %q, %v", got, err)
	}
	if left, err := env.TPM.Leftovers(); err != nil || len(left) != 0 {
		t.Fatalf("left in the TPM: %v (%v)", left, err)
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Fatal(err)
	}
}

// attest now loads the AK and reads the PCRs it quoted in one audit
// session: the quote's own session (keyed by the AK's authValue) and that
// one, where three were (issue 14).
func TestAttestQuoteSharesOneAuditSession(t *testing.T) {
	q := startQuoteEnv(t)
	log := &swtpmtest.CommandLog{}
	q.bus.Set(log.Hook)
	log.Start()
	nonce := []byte("a nonce of twenty bytes.")
	res, err := q.ag.AttestQuote(context.Background(), api.AttestQuoteRequest{Nonce: nonce, PCRs: map[string][]int{"sha256": {0, 7, 16}}})
	if err != nil {
		t.Fatal(err)
	}
	q.quoted(t, nonce, res)
	if cmds := log.Stop(); swtpmtest.Count(cmds, tpm2.TPMCCStartAuthSession) != 2 {
		t.Errorf("attest quote: %v; want 2 StartAuthSession", cmds)
	}
	q.noLeftovers(t)
}
