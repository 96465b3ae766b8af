package agent

import (
	"context"
	"encoding/binary"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// A1 passes the shared NV_Read of the anchor on and answers TPM_RC_RETRY;
// the resend meets the moved nonces. The record must not extend on top of
// a value it did not authenticate, must not be called tampered (exit 14)
// or a wrong value (exit 11); forged (exit 15), or the read apart that
// succeeds, are both acceptable. The trail verifies on an honest bus.
func TestReview2WarmSealSharedReadForgedRetry(t *testing.T) {
	_, b, a := recordingDaemon(t)
	ctx := context.Background()
	if _, err := a.Seal(ctx, api.SealRequest{Data: []byte("warm"), PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	n := 0
	h := swtpmtest.RanThenAnswered(tpm2.TPMCCNVRead, tpm2.TPMRCRetry, &n)
	b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) != tpm2.TPMCCNVRead || len(cmd) < 14 || binary.BigEndian.Uint32(cmd[10:14]) != uint32(AuditAnchorHandle) {
			return nil, nil, false
		}
		return h(next, cmd)
	})
	_, err := a.Seal(ctx, api.SealRequest{Data: []byte("the disk key"), PCRs: []int{7}})
	b.Set(nil)
	t.Logf("anchor read sent %d: %v; exit %d", n, err, api.ExitCode(err))
	if n == 0 {
		t.Fatal("not mounted")
	}
	if c := api.ExitCode(err); err != nil && c != api.ExitIdentity {
		t.Errorf("a forged RETRY on the shared anchor read: exit %d, want %d or success", c, api.ExitIdentity)
	}
	if left := unheldLeft(t, a); len(left) > 0 {
		t.Errorf("left after the operation: %x", left)
	}
	if _, err := a.Seal(ctx, api.SealRequest{Data: []byte("next"), PCRs: []int{7}}); err != nil {
		t.Errorf("the next seal: %v", err)
	}
	if _, err := a.AuditVerify(ctx); err != nil {
		t.Errorf("the trail: %v", err)
	}
}
