package agent

import (
	"context"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// A dup import's TPM2_ActivateCredential is authorized in T's ADMIN role by
// a policy session provd satisfied (PolicySecret of its PK, authorized by
// the PK's own policy, then PolicyCommandCode): a policy session's one
// command, outside agent.policyUse. A1 on B's bus passes it on (the TPM
// activates) and answers RETRY; provd resends it and the copy meets the
// session the first run reset: TPM_RC_POLICY_FAIL. That is no platform
// failing its policy (exit 3: "the PCRs do not satisfy the key's policy")
// but something on the bus answering for the TPM (exit 15), as d665d43
// reports it for key and PK uses. An honest RETRY is resent and the
// import works.
func TestDupImportActivateForgedRetryIsForged(t *testing.T) {
	t.Parallel()
	busB := &swtpmtest.Bus{}
	_, b, dup := dupForPeer(t, busB)
	ctx := context.Background()
	for _, forged := range []bool{true, false} {
		n := 0
		hook := swtpmtest.RanThenAnswered(tpm2.TPMCCActivateCredential, tpm2.TPMRCRetry, &n)
		if !forged {
			hook = func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
				if swtpmtest.CommandCode(cmd) != tpm2.TPMCCActivateCredential {
					return nil, nil, false
				}
				if n++; n > 1 {
					return nil, nil, false
				}
				return swtpmtest.ErrorAnswer(tpm2.TPMRCRetry), nil, true
			}
		}
		busB.Set(hook)
		_, err := b.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup})
		busB.Set(nil)
		t.Logf("forged=%v: ActivateCredential sent %d: %v; exit %d", forged, n, err, api.ExitCode(err))
		if n == 0 {
			t.Fatal("not mounted")
		}
		switch {
		case !forged && err != nil:
			t.Errorf("an honest RETRY: %v", err)
		case forged && api.ExitCode(err) != api.ExitIdentity:
			t.Errorf("A1's forged RETRY after the TPM activated: exit %d (%v), want %d (forged), not %d (the platform fails its policy)",
				api.ExitCode(err), err, api.ExitIdentity, api.ExitPolicy)
		}
	}
}
