package tpm_test

import (
	"crypto/sha256"
	"fmt"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/test/swtpmtest"
)

// On a TPM behind a resource manager (/dev/tpmrm0: Exclusive false, and
// agent.sweepLeaks sweeps nothing there), a connection's space holds three
// sessions (SessionLimit). A1 forges two answers (INITIALIZE to a gated
// extend, SUCCESS to provd's Startup) and leaves: the TPM was never reset,
// provd's generation moved, the extend is made in the resend, and Close,
// seeing the generation moved, forgets the session instead of flushing it
// (0c2fd49; before, a done extend's session was flushed by its number,
// which on tpmrm0 is the connection's own). Twice, and the space is full
// of provd's forgotten sessions: provd holds if, A1 gone and with no sweep
// (none runs on tpmrm0), its next gated extend still works.
func TestReview5ForgottenSessionsFillTheRMSpace(t *testing.T) {
	l := &swtpmtest.SessionLimit{}
	r := newSharedAuthEnv(t, swtpmtest.WithWrap(l.Wrap), swtpmtest.WithResourceManager())
	for i := range 2 {
		head := sha256.Sum256([]byte(fmt.Sprintf("review5 rm %d", i)))
		ge, err := r.tp.PrepareGatedExtendOf(r.x, r.gate, head[:])
		if err != nil {
			t.Fatalf("round %d: prepare: %v", i, err)
		}
		r.bus.Set(swtpmtest.ForgedGeneration(tpm2.TPMCCNVExtend, false))
		eerr := ge.Extend()
		r.bus.Set(nil)
		t.Logf("round %d: extend %v, done %v", i, eerr, ge.Done())
		if err := ge.Close(); err != nil {
			t.Logf("round %d: close: %v", i, err)
		}
		left, _ := r.tp.Leftovers()
		t.Logf("round %d: loaded after Close: %x", i, left)
	}
	// A1 is gone. No sweep (tpmrm0): provd's next record.
	head := sha256.Sum256([]byte("review5 rm after"))
	ge, err := r.tp.PrepareGatedExtendOf(r.x, r.gate, head[:])
	if err == nil {
		err = ge.Extend()
		if cerr := ge.Close(); err == nil {
			err = cerr
		}
	}
	refused, _ := l.Take()
	if err != nil {
		t.Errorf("after two forged Startups and A1 gone, a gated extend on a tpmrm0-like space fails (%d refused for want of a slot): %v", refused, err)
	}
	sweptAsAsked(t, r.tp, r.gate.Handle)
}
