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
// was 27), flushed when the creation's policy session starts, and the
// blob unseals.
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
	want := []tpm2.TPMCC{tpm2.TPMCCStartAuthSession, tpm2.TPMCCNVRead, tpm2.TPMCCLoad, tpm2.TPMCCPCRRead,
		tpm2.TPMCCFlushContext, tpm2.TPMCCStartAuthSession}
	if before := upTo(cmds, tpm2.TPMCCPolicyPCR); !slices.Equal(before, want) {
		t.Errorf("before the creation's policy: %v, want %v (one session for the reads and the load)", before, want)
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
