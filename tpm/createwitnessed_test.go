package tpm_test

import (
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/tpm"
)

// TestCreateWitnessedNeedsASaltedSession: the creation data is the TPM's
// word only in an answer a session salted to the SRK authenticates; with
// a password, or no session, CreateWitnessed sends nothing.
func TestCreateWitnessedNeedsASaltedSession(t *testing.T) {
	var none *tpm.TPM // any command sent would fail on it
	for name, s := range map[string]tpm2.Session{"no session": nil, "a password": tpm2.PasswordAuth(nil)} {
		if _, err := none.CreateWitnessed(tpm.Object{}, s, tpm.SealTemplate(nil), tpm.Sensitive{}, tpm2.TPMLPCRSelection{}, nil); err == nil {
			t.Errorf("%s: witnessed", name)
		}
	}
}
