package agent_test

// A fleet delivery's unseal
// (withDelivery: StartSecretPolicySession(EncryptOut, nil), provd's own
// session type since issue 14) still works and stays encrypted, and A1
// cannot have it answered in the clear.

import (
	"bytes"
	"context"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

func TestAttestSecretStaysEncryptedOnTheBus(t *testing.T) {
	bus := &swtpmtest.Bus{}
	rec := &swtpmtest.Recorder{}
	env, ag, _ := provisionedBehind(t, bus, swtpmtest.WithRecorder(rec))
	secret := []byte("the fleet's wifi pre-shared key, 40 bytes")
	rec.Reset()
	_, got := fleetFlow(t, env, ag, bytes.Clone(secret), func(name string, fn func() error) {
		t.Helper()
		if err := fn(); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	})
	if !bytes.Equal(got, secret) {
		t.Fatalf("attest secret: %q", got)
	}
	if off := rec.Leak(secret); off >= 0 {
		t.Errorf("the delivered secret crossed the bus in the clear at %d", off)
	}
	// A1 clears the unseal's encrypt bit, or changes the answer: nothing
	// comes back as the secret, and nothing crosses in the clear.
	for name, tamper := range map[string]func(cmd, rsp []byte) ([]byte, []byte){
		"the encrypt bit cleared": func(cmd, rsp []byte) ([]byte, []byte) {
			if rsp != nil {
				return nil, rsp
			}
			cmd = bytes.Clone(cmd)
			cmd[swtpmtest.SessionAttrOffset(cmd, 1, 0)] &^= 1 << 6
			return cmd, nil
		},
		"the encrypted secret changed": func(cmd, rsp []byte) ([]byte, []byte) {
			if rsp == nil {
				return nil, nil
			}
			rsp = bytes.Clone(rsp)
			if len(rsp) > 16 {
				rsp[16] ^= 1 // the first byte of outData
			}
			return nil, rsp
		},
	} {
		t.Run(name, func(t *testing.T) {
			ran := false
			rec.Reset()
			bus.Set(swtpmtest.Tamper(func(cmd []byte) bool { return swtpmtest.CommandCode(cmd) == tpm2.TPMCCUnseal }, tamper, &ran))
			res, err := ag.AttestSecret(context.Background(), api.AttestSecretRequest{Name: "wifi"})
			bus.Set(nil)
			if !ran {
				t.Fatal("the attack did not run")
			}
			if err == nil || res.Secret != nil {
				t.Errorf("attest secret: %q, %v; want a failure", res.Secret, err)
			}
			t.Logf("attest secret: %v", err)
			if off := rec.Leak(secret); off >= 0 {
				t.Errorf("the secret crossed the bus in the clear at %d", off)
			}
			if left, err := env.TPM.Leftovers(); err != nil || len(left) != 0 {
				t.Errorf("left in the TPM: %x %v", left, err)
			}
		})
	}
	if res, err := ag.AttestSecret(context.Background(), api.AttestSecretRequest{Name: "wifi"}); err != nil || !bytes.Equal(res.Secret, secret) {
		t.Errorf("attest secret after the attacks: %q, %v", res.Secret, err)
	}
}
