package tpm_test

import (
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/test/swtpmtest"
)

// A fact the kept-handle findings rest on (swtpm, as the reference code):
// HMAC and policy sessions share one slot space, and a FlushContext names
// the slot whatever the handle's type says. A flush of a stale policy
// session's number (0x03xxxxxx) therefore ends whatever session now holds
// that slot, an HMAC session (0x02xxxxxx) included. Logged, not asserted
// beyond the slot's holder being gone or not.
func TestReview3FlushByStaleNumberTakesTheSlotsHolder(t *testing.T) {
	env := swtpmtest.Start(t)
	rsp, err := swtpmtest.StartOwnPolicySession(env.TPM)
	if err != nil {
		t.Fatal(err)
	}
	pol := rsp.SessionHandle
	if _, err := (tpm2.FlushContext{FlushHandle: pol}).Execute(env.TPM); err != nil {
		t.Fatal(err)
	}
	nc := make([]byte, 16)
	hs, err := (tpm2.StartAuthSession{TPMKey: tpm2.TPMRHNull, Bind: tpm2.TPMRHNull, NonceCaller: tpm2.TPM2BNonce{Buffer: nc},
		SessionType: tpm2.TPMSEHMAC, Symmetric: tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull}, AuthHash: tpm2.TPMAlgSHA256}).Execute(env.TPM)
	if err != nil {
		t.Fatal(err)
	}
	hmac := hs.SessionHandle
	t.Logf("policy session was 0x%08x, the HMAC session started after its flush is 0x%08x", uint32(pol), uint32(hmac))
	if uint32(hmac)&0xffffff != uint32(pol)&0xffffff {
		t.Fatalf("not the same slot: cannot say")
	}
	_, ferr := (tpm2.FlushContext{FlushHandle: pol}).Execute(env.TPM)
	t.Logf("FlushContext(0x%08x, the stale policy number): %v", uint32(pol), ferr)
	_, ferr2 := (tpm2.FlushContext{FlushHandle: hmac}).Execute(env.TPM)
	t.Logf("FlushContext(0x%08x, the HMAC session): %v", uint32(hmac), ferr2)
	if ferr == nil && ferr2 != nil {
		t.Logf("FACT: the stale policy-session number flushed the live HMAC session in its slot")
	}
}
