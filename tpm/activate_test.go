package tpm_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// rsaEKTemplate is the TCG L-1 RSA EK template provd recreates
// (agent.ekPublic): RSAEKTemplate with a 256-byte zero unique.
func rsaEKTemplate() tpm2.TPMTPublic {
	tmpl := tpm2.RSAEKTemplate
	tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)})
	return tmpl
}

// createEK creates the RSA EK with authValue auth: a primary of the
// endorsement seed, whose key and name do not depend on the authValue.
func createEK(t *testing.T, tp *tpm.TPM, auth []byte) tpm.Object {
	t.Helper()
	rsp, err := (tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHEndorsement, Auth: tpm2.PasswordAuth(nil)},
		InSensitive:   tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{UserAuth: tpm2.TPM2BAuth{Buffer: auth}}},
		InPublic:      tpm2.New2B(rsaEKTemplate()),
	}).Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		t.Fatal(err)
	}
	return tpm.Object{Handle: rsp.ObjectHandle, Name: rsp.Name, Public: *pub}
}

// activateSetup pins the SRK and loads a gate key (userWithAuth: its ADMIN
// role takes its authValue) as the credential's object.
func activateSetup(t *testing.T, tp *tpm.TPM) (srk, obj tpm.Object, auth []byte) {
	t.Helper()
	srk, blob, auth := pinnedGateBlob(t, tp)
	obj, err := tp.Load(srk, nil, blob)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = tp.Flush(obj.Handle) })
	return srk, obj, auth
}

func credentialTo(t *testing.T, ek tpm.Object, name, secret []byte) (idObject, encSecret []byte) {
	t.Helper()
	encap, err := tpm2.ImportEncapsulationKey(&ek.Public)
	if err != nil {
		t.Fatal(err)
	}
	idObject, encSecret, err = tpm2.CreateCredential(rand.Reader, encap, name, secret)
	if err != nil {
		t.Fatal(err)
	}
	return idObject, encSecret
}

// An EK's authValue is not part of its key or its name: an EK re-created
// with one (by whoever holds owner and endorsement authorization, empty by
// default) is the certified key, and provd's check takes it. Activation
// still gives the credential's secret: it comes back in an encryption
// session of its own, whose key is the salt's alone. (The EK's policy
// session encrypting it instead, one session fewer, gave a silently
// garbled secret: the TPM keys a policy session's encryption with the
// entity's authValue; found by review.)
func TestActivateCredentialWithAnEKAuthValue(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	srk, obj, auth := activateSetup(t, tp)
	secret := bytes.Repeat([]byte{0x5a}, 48)
	persisted, err := tp.ReadPublic(tpm.RSAEKHandle)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		ekAuth []byte
	}{
		{"the EK's authValue empty (TCG template)", nil},
		{"the EK's authValue not empty", []byte("endorsement key authorization")},
	} {
		t.Run(c.name, func(t *testing.T) {
			ek := createEK(t, tp, c.ekAuth)
			defer tp.Flush(ek.Handle)
			if !bytes.Equal(ek.Name.Buffer, persisted.Name.Buffer) {
				t.Fatalf("the recreated EK is named %x, the persistent one %x", ek.Name.Buffer, persisted.Name.Buffer)
			}
			idObject, encSecret := credentialTo(t, ek, obj.Name.Buffer, secret)
			activateAuth := tpm2.HMAC(tpm2.TPMAlgSHA256, 16, tpm2.Auth(auth), tpm2.Salted(srk.Handle, srk.Public))
			got, err := tp.ActivateCredential(obj, activateAuth, ek, idObject, encSecret)
			if err != nil {
				t.Fatalf("ActivateCredential: %v", err)
			}
			if !bytes.Equal(got, secret) {
				t.Errorf("ActivateCredential gave %x, the credential carries %x", got, secret)
			}
		})
	}
	_ = tp.Flush(obj.Handle)
	nothingLeft(t, tp, "after activation")
}

// A1 flips the encrypt or continueSession bit of each of
// TPM2_ActivateCredential's sessions (the object's authorization, the EK's
// policy session, the encryption session), so that the TPM would answer
// the secret in the clear or keep a session provd flushes: every session's
// command HMAC is keyed by a salt and covers its attributes, so the TPM
// refuses; the secret never crosses the bus, nothing is left, and the
// lockout counter does not move (the EK is DA-protected).
func TestActivateCredentialChangedSessionBits(t *testing.T) {
	rec := &swtpmtest.Recorder{}
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithRecorder(rec), swtpmtest.WithBus(bus))
	tp := env.TPM
	srk, obj, auth := activateSetup(t, tp)
	ek := persistedEK(t, tp)
	secret := make([]byte, 48)
	_, _ = rand.Read(secret)
	for session, who := range []string{"the object's", "the EK's", "the encryption"} {
		for bit, what := range map[byte]string{0x40: "encrypt", 0x01: "continueSession"} {
			t.Run(fmt.Sprintf("%s session's %s flipped", who, what), func(t *testing.T) {
				changed := false
				bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
					if swtpmtest.CommandCode(cmd) != tpm2.TPMCCActivateCredential {
						return nil, nil, false
					}
					cmd = bytes.Clone(cmd)
					cmd[swtpmtest.SessionAttrOffset(cmd, 2, session)] ^= bit
					changed = true
					rsp, err := next.Send(cmd)
					return rsp, err, true
				})
				rec.Reset()
				idObject, encSecret := credentialTo(t, ek, obj.Name.Buffer, secret)
				activateAuth := tpm2.HMAC(tpm2.TPMAlgSHA256, 16, tpm2.Auth(auth), tpm2.Salted(srk.Handle, srk.Public))
				got, err := tp.ActivateCredential(obj, activateAuth, ek, idObject, encSecret)
				bus.Set(nil)
				if !changed {
					t.Fatal("the attack did not run")
				}
				if err == nil {
					t.Errorf("a changed command was answered: %x", got)
				} else if !errors.Is(err, tpm.ErrResponseForged) && !errors.Is(err, tpm2.TPMRCSymmetric) {
					// Encrypt set on a session with no cipher is refused
					// before its HMAC is checked (TPM_RC_SYMMETRIC);
					// every other change fails the HMAC: forged.
					t.Errorf("refused, not as forged: %v", err)
				}
				if off := rec.Leak(secret); off >= 0 {
					t.Errorf("the secret crossed the bus in the clear at %d", off)
				}
				sweptAsAsked(t, tp, obj.Handle)
			})
		}
	}
	info, err := tp.Info()
	if err != nil {
		t.Fatal(err)
	}
	if info.Lockout.Counter != 0 {
		t.Errorf("the lockout counter is %d", info.Lockout.Counter)
	}
}
