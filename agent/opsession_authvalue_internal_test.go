package agent

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"math/big"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
)

// pwSession authorizes a command through a policy session handle with the
// object's authValue in the clear, as a policy session that ran
// TPM2_PolicyPassword takes it: no HMAC, so no session key (salt) needed.
type pwSession struct {
	h     tpm2.TPMHandle
	auth  []byte
	nonce tpm2.TPM2BNonce
}

func (s *pwSession) Init(transport.TPM) error           { return nil }
func (s *pwSession) CleanupFailure(transport.TPM) error { return nil }
func (s *pwSession) NonceTPM() tpm2.TPM2BNonce          { return tpm2.TPM2BNonce{} }
func (s *pwSession) IsEncryption() bool                 { return false }
func (s *pwSession) IsDecryption() bool                 { return false }
func (s *pwSession) Encrypt([]byte) error               { return nil }
func (s *pwSession) Decrypt([]byte) error               { return nil }
func (s *pwSession) Handle() tpm2.TPMHandle             { return s.h }
func (s *pwSession) NewNonceCaller() error              { _, err := rand.Read(s.nonce.Buffer); return err }
func (s *pwSession) Validate(tpm2.TPMRC, tpm2.TPMCC, []byte, []tpm2.TPM2BName, int, *tpm2.TPMSAuthResponse) error {
	return nil
}
func (s *pwSession) Authorize(tpm2.TPMCC, []byte, []byte, []tpm2.TPM2BName, int) (*tpm2.TPMSAuthCommand, error) {
	return &tpm2.TPMSAuthCommand{Handle: s.h, Nonce: s.nonce, Attributes: tpm2.TPMASession{ContinueSession: true}, Authorization: tpm2.TPM2BData{Buffer: s.auth}}, nil
}

// Found by review of issue 14: the threat model said the daemon's kept
// session serves provd alone even against whoever holds the objects'
// authValue (A2 with A6's copy of the state), because its HMAC key holds a
// salt. But TPM2_PolicyPassword extends the policy digest exactly as
// PolicyAuthValue does and turns the session's HMAC into a plain
// comparison with the authValue: with it, the salt is never needed. The
// claim is corrected: against an authValue holder on a good boot the
// barrier is the PCRs alone, through a session of its own as through
// provd's; the kept session adds nothing to that, and without the
// authValue (A1) it cannot be used.
func TestKeptSessionGivesNothingBeyondTheAuthValue(t *testing.T) {
	env := swtpmtest.Start(t)
	a := keptAgent(t, env)
	ctx := context.Background()
	if _, err := signK(a); err != nil {
		t.Fatal(err)
	}
	ks, err := a.readKeyState(ctx, "k", true)
	if err != nil {
		t.Fatal(err)
	}
	key, ok, err := a.keys.Get("k", ks.rec.cacheID())
	if err != nil || !ok {
		t.Fatalf("the key is not resident: %v %v", ok, err)
	}
	auth, err := ks.objectAuth() // A6: from the copy of the state directory
	if err != nil {
		t.Fatal(err)
	}
	pub, _, err := a.KeyPublic(ctx, "k")
	if err != nil {
		t.Fatal(err)
	}
	mine := sha256.Sum256([]byte("the attacker's message"))
	sel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: tpm2.PCClientCompatible.PCRs(7, 16)}}}
	signThrough := func(h tpm2.TPMHandle, pw []byte) error {
		if _, err := (tpm2.PolicyPCR{PolicySession: h, Pcrs: sel}).Execute(env.TPM); err != nil {
			return err
		}
		// TPM2_PolicyPassword (go-tpm v0.9.8 has none): 0x8001, 14 bytes, 0x18C, the session.
		cmd := []byte{0x80, 0x01, 0, 0, 0, 14, 0, 0, 0x01, 0x8c, 0, 0, 0, 0}
		binary.BigEndian.PutUint32(cmd[10:], uint32(h))
		if rsp, err := env.TPM.Send(cmd); err != nil || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
			t.Fatalf("PolicyPassword: %x %v", rsp, err)
		}
		rsp, err := (tpm2.Sign{
			KeyHandle:  tpm2.AuthHandle{Handle: key.Handle, Name: key.Name, Auth: &pwSession{h: h, auth: pw, nonce: tpm2.TPM2BNonce{Buffer: make([]byte, 16)}}},
			Digest:     tpm2.TPM2BDigest{Buffer: mine[:]},
			InScheme:   tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgECDSA, Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256})},
			Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
		}).Execute(env.TPM)
		if err != nil {
			return err
		}
		sig, err := rsp.Signature.Signature.ECDSA()
		if err != nil {
			return err
		}
		if !ecdsa.Verify(pub.(*ecdsa.PublicKey), mine[:], new(big.Int).SetBytes(sig.SignatureR.Buffer), new(big.Int).SetBytes(sig.SignatureS.Buffer)) {
			t.Fatal("the signature does not verify under provd's key")
		}
		return nil
	}
	// Without the authValue (A1): provd's kept session is of no use.
	wrong := make([]byte, len(auth))
	copy(wrong, auth)
	wrong[0] ^= 1
	if err := signThrough(a.op.ps.Handle(), wrong); err == nil {
		t.Fatal("the kept session signed for a wrong authValue")
	}
	// With it: a session of the attacker's own signs, as provd's would.
	own, err := env.TPM.StartPolicySession(false)
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	if err := signThrough(own.Handle(), auth); err != nil {
		t.Fatalf("the authValue holder's own session: %v (then the kept session would be the only way)", err)
	}
	// The attempt left the kept session's policy digest spoiled: provd's
	// next sign fails once in it (a failure of the command is never run
	// again: TestForgedFailureIsNotRunTwice), drops it, and the one after
	// works. Whoever can reach provd's session can drop its requests anyway.
	if _, err := signK(a); err == nil {
		t.Log("the next sign worked at once")
	}
	if _, err := signK(a); err != nil {
		t.Fatalf("provd's sign after the attempt: %v", err)
	}
}
