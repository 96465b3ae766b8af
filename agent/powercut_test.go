package agent_test

import (
	"context"
	"crypto/sha256"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// A power cut under a running provd (swtpm killed and started again on the
// same address, no TPM2_Startup) while provd is idle: the next operations
// dial again, start the TPM up, load what they need again (the cached keys
// and their handles are gone) and succeed, the first one included; the state
// and the audit trail stay whole.
func TestPowerCutUnderProvd(t *testing.T) {
	t.Parallel()
	env := swtpmtest.Start(t)
	env.RequireSimulator()
	ctx := context.Background()
	ag := signingAgent(t, env)
	if _, err := officertest.Derive(t, ctx, ag, api.DeriveRequest{Name: "mac", Label: "mac", Type: "hmac-sha256"}); err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("m"))
	if _, err := ag.Sign(ctx, "sig", d[:], api.SignOptions{}); err != nil {
		t.Fatal(err)
	}
	blob, err := ag.Seal(ctx, api.SealRequest{Data: []byte("across the cut")})
	if err != nil {
		t.Fatal(err)
	}

	for cut := range 3 {
		// A mark the power cut must wipe: PCR 23 extended.
		mark := sha256.Sum256([]byte("before the cut"))
		if err := env.TPM.PCRExtend(23, tpm2.TPMAlgSHA256, mark[:]); err != nil {
			t.Fatal(err)
		}
		env.PowerCut()
		// The connection's end is noticed before the next command is
		// written: not even the first operation after the cut fails.
		if _, err := ag.Sign(ctx, "sig", d[:], api.SignOptions{}); err != nil {
			t.Fatalf("cut %d: the first sign after it: %v", cut, err)
		}
		if _, err := ag.HMAC(ctx, "mac", make([]byte, 2000)); err != nil {
			t.Fatalf("cut %d: HMAC (the derived key again): %v", cut, err)
		}
		if got, err := ag.Unseal(ctx, blob); err != nil || string(got) != "across the cut" {
			t.Fatalf("cut %d: unseal: %q %v", cut, got, err)
		}
		st, err := ag.Status(ctx)
		if err != nil || !st.Provisioned || st.AuditError != "" {
			t.Fatalf("cut %d: status %+v %v", cut, st, err)
		}
		if _, err := ag.AuditVerify(ctx); err != nil {
			t.Fatalf("cut %d: audit verify: %v", cut, err)
		}
		vals, err := env.TPM.PCRRead(tpm2.TPMAlgSHA256, []int{23})
		if err != nil || string(vals[23]) != string(make([]byte, 32)) {
			t.Fatalf("cut %d: PCR 23 is %x (%v): the TPM was not power-cycled", cut, vals[23], err)
		}
	}
}
