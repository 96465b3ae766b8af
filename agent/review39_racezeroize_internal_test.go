package agent

// Review 39: another program's zeroize --srk between a running daemon's
// state read and its PK's use, within the operation that set
// tpm.PersistMissingSRK (ffce622).
//
// FLAW (mended since: srkrace_internal_test.go,
// TestZeroizeSRKRacingAPKUseLeavesItEvicted, which fails on ffce622): a
// daemon whose PK context is not kept creates a key; after its state read
// (the flag set by withLoadedPKGuard) and before the PK's TPM2_Load under
// the cached SRK, another program runs zeroize --srk through /dev/tpmrm0
// (state wiped, SRK evicted). The load meets the empty handle, srkAgain
// persists the SRK (PersistMissingSRK), and the SRK was back at 0x81000001
// in a state with no PK. The operation's end now reads the state again and
// evicts it (Agent.evictSRKUnowed), and what the operation made is not
// recorded in the wiped state (updateUnderPK, updatePinned).
//
// HELD: TestReview39ZeroizeSRKDuringWarmDaemonSign — the same zeroize
// lands just before the warm daemon's TPM2_Sign (PK context and key kept):
// nothing later in the sign names the SRK, and it stays evicted.
import (
	"context"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// review39ZeroizeOnce is a hook that, before the first command cc, does
// what another program's zeroize --srk does to what the daemon relies on:
// the state in dir wiped (its own store), the SRK evicted (its own
// connection: next).
func review39ZeroizeOnce(t *testing.T, dir string, cc tpm2.TPMCC, done *bool) swtpmtest.Hook {
	return swtpmtest.BeforeOnce(swtpmtest.Code(cc), done, func(next transport.TPM) { review40Wipe(t, dir, next, true) })
}

func TestReview39ZeroizeSRKDuringWarmDaemonSign(t *testing.T) {
	env, b, a, digest := review35WarmDaemon(t, false)
	done := false
	b.Set(review39ZeroizeOnce(t, a.dir, tpm2.TPMCCSign, &done))
	_, err := a.Sign(context.Background(), "k", digest, api.SignOptions{})
	b.Set(nil)
	if !done {
		t.Fatalf("not mounted: no TPM2_Sign (%v)", err)
	}
	t.Logf("sign with zeroize --srk before TPM2_Sign: %v", err)
	if review26SRKThere(env) {
		t.Errorf("the SRK is at 0x81000001 again after another program's zeroize --srk")
	}
}
