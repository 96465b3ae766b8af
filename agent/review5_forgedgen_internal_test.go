package agent

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// review5ForgedGeneration is A1 moving provd's generation with no TPM
// event, once: the record's NV_Extend answered TPM_RC_INITIALIZE (not sent
// on), provd's Startup(CLEAR) answered SUCCESS (not sent on), the resend
// passed; with drop, the resend's answer is lost too (the extend made, not
// known to provd).
func review5ForgedGeneration(drop bool) swtpmtest.Hook {
	stage := 0
	return func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		switch cc := swtpmtest.CommandCode(cmd); {
		case stage == 0 && cc == tpm2.TPMCCNVExtend:
			stage = 1
			return swtpmtest.ErrorAnswer(tpm2.TPMRCInitialize), nil, true
		case stage == 1 && cc == tpm2.TPMCCStartup:
			stage = 2
			return swtpmtest.ErrorAnswer(tpm2.TPMRCSuccess), nil, true
		case stage == 2 && cc == tpm2.TPMCCNVExtend && drop:
			stage = 3
			return swtpmtest.ErrorAnswer(tpm2.TPMRCRetry + 0x100), nil, true // an error of no meaning
		}
		return nil, nil, false
	}
}

// The daemon (exclusive swtpm: the sweep runs), its records' extends under
// a generation A1 moved (two forged answers; a third loses the extend's
// answer). GatedExtend.Close forgets the session (0c2fd49) rather than
// flush it: held when nothing is left unheld after each operation (the
// sweep takes it), every record is in the trail once or pending, and the
// daemon goes on (no slot exhausted). The time each record costs is
// logged: the lost answer's Close sleeps out the proof (the witness sees
// the session the TPM never lost).
func TestReview5DaemonRecordsUnderForgedGeneration(t *testing.T) {
	env, b, a := recordingDaemon(t)
	_ = env
	ctx := api.WithCaller(context.Background(), api.Caller{UID: 5})
	for i, drop := range []bool{false, false, false, true, false} {
		b.Set(review5ForgedGeneration(drop))
		start := time.Now()
		err := a.RecordRefusal(ctx, "key-delete", fmt.Sprintf("review5-%d", i))
		b.Set(nil)
		t.Logf("record %d (answer lost %v): %v in %v", i, drop, err, time.Since(start))
		if left := unheldLeft(t, a); len(left) > 0 {
			t.Errorf("record %d: left unheld in the TPM: %x", i, left)
		}
	}
	if err := a.RecordRefusal(ctx, "key-delete", "review5-after"); err != nil {
		t.Errorf("a record with A1 gone: %v", err)
	}
	if _, err := a.AuditVerify(context.Background()); err != nil {
		t.Logf("audit verify: %v", err)
	}
	for i := range 5 {
		if n := trailLines(t, a, fmt.Sprintf("review5-%d", i)); n > 1 {
			t.Errorf("record %d in the trail %d times", i, n)
		}
	}
}
