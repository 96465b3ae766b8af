package agent

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// The daemon (exclusive swtpm: the sweep runs), its records' extends under
// a generation A1 moved (two forged answers; a third loses the extend's
// answer). GatedExtend.Close forgets the session (0c2fd49) rather than
// flush it: held when nothing is left unheld after each operation (the
// sweep takes it), every record is in the trail once or pending, and the
// daemon goes on (no slot exhausted). The time each record costs is
// logged: the lost answer's Close sleeps out the proof (the witness sees
// the session the TPM never lost).
func TestReview5DaemonRecordsUnderForgedGeneration(t *testing.T) {
	t.Parallel()
	env, b, a := recordingDaemon(t)
	_ = env
	ctx := api.WithCaller(context.Background(), api.Caller{UID: 5})
	for i, drop := range []bool{false, false, false, true, false} {
		b.Set(swtpmtest.ForgedGeneration(tpm2.TPMCCNVExtend, drop))
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
