package fleet_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/attest/fleetapi"
)

// FuzzAttest: whatever a device sends as evidence (quote, signature, PCR
// values, logs), an appraisal ends in a verdict that does not pass, or in
// a store error, never a panic; and the nonce is spent either way.
func FuzzAttest(f *testing.F) {
	ctx := context.Background()
	st, err := fleet.Open(ctx, "sqlite://"+filepath.Join(f.TempDir(), "fleet.db"))
	if err != nil {
		f.Fatal(err)
	}
	defer st.Close()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		f.Fatal(err)
	}
	ecdh, _ := k.PublicKey.ECDH()
	raw := ecdh.Bytes()
	ak := tpm2.TPMTPublic{Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true, Restricted: true, SignEncrypt: true},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Scheme:  tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})},
			CurveID: tpm2.TPMECCNistP256}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: raw[1:33]}, Y: tpm2.TPM2BECCParameter{Buffer: raw[33:]}})}
	secret := sha256.Sum256([]byte("s"))
	if err := st.PutPending(ctx, fleet.Device{ID: "d", Class: "gateway", EKPublic: []byte{1}, EKCert: []byte{1}, AKPublic: tpm2.Marshal(ak), SecretHash: secret[:], EnrolledAt: time.Now()}); err != nil {
		f.Fatal(err)
	}
	if _, err := st.Activate(ctx, "d", secret[:], time.Now()); err != nil {
		f.Fatal(err)
	}
	e := fleet.New(fleet.Config{Store: st})
	f.Add([]byte{0xff, 0x54, 0x43, 0x47, 0x80, 0x18}, []byte{0, 0x18}, "00", []byte{}, []byte{})
	f.Fuzz(func(t *testing.T, quote, sig []byte, pcr0 string, fwLog, measLog []byte) {
		ch, err := e.Challenge(ctx, fleetapi.ChallengeRequest{DeviceID: "d"})
		if err != nil {
			t.Fatal(err)
		}
		req := fleetapi.AttestRequest{DeviceID: "d", Nonce: ch.Nonce, Quote: quote, Signature: sig,
			PCRs: map[string]map[string]string{"sha256": {"0": pcr0}}, FirmwareLog: fwLog, MeasurementLog: measLog}
		v, err := e.Attest(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		if v.Pass {
			t.Fatalf("forged evidence passed: %+v", v)
		}
		if v2, err := e.Attest(ctx, req); err != nil || v2.Pass || v2.Reasons[0].Code != fleet.CodeNonceUnknown {
			t.Fatalf("the nonce again: %+v %v", v2, err)
		}
	})
}
