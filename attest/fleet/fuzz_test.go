package fleet_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/catalog"
)

// FuzzAttest: whatever a device sends as evidence (quote, signature, PCR
// values, logs), an appraisal ends in a verdict that does not pass, or in
// a store error, never a panic; and evidence that does not pass never
// passes when sent again.
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
		v2, err := e.Attest(ctx, req)
		if err != nil || v2.Pass || len(v2.Reasons) == 0 || (v.AppraisalID != "" && v2.Reasons[0].Code != fleet.CodeNonceUnknown) {
			t.Fatalf("the same evidence again: %+v %v", v2, err)
		}
	})
}

// FuzzPeerFile: whatever peer identity file a device's quote vouches for,
// the endpoint's check refuses it with ErrRejected or accepts one whose
// transfer key is exactly a provd transfer key bound to the PK it names,
// under that key's name; never a panic.
func FuzzPeerFile(f *testing.F) {
	pkName := append([]byte{0, 0x0b}, make([]byte, 32)...)
	pub := catalog.TransferTemplate(catalog.TransferPolicy(pkName))
	pub.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)}, Y: tpm2.TPM2BECCParameter{Buffer: make([]byte, 32)}})
	name, err := tpm2.ObjectName(&pub)
	if err != nil {
		f.Fatal(err)
	}
	good, err := json.Marshal(map[string]any{"format": 1, "ek_certificates": [][]byte{{1}}, "parent": tpm2.Marshal(tpm2.New2B(pub)),
		"parent_name": hex.EncodeToString(name.Buffer), "pk_name": hex.EncodeToString(pkName), "pk_policy": strings.Repeat("42", 32),
		"officer": hex.EncodeToString(pkName), "created_at": time.Now().UTC()})
	if err != nil {
		f.Fatal(err)
	}
	if _, _, err := fleet.CheckPeerFile(good); err != nil {
		f.Fatalf("the seed: %v", err)
	}
	f.Add(good)
	f.Add([]byte(`{"format":1}`))
	f.Add([]byte(`{"format":1,"format":1}`))
	f.Add(append(bytes.Clone(good), ' ', '{', '}'))
	f.Fuzz(func(t *testing.T, b []byte) {
		p, tName, err := fleet.CheckPeerFile(b)
		if err != nil {
			if !errors.Is(err, fleet.ErrRejected) {
				t.Fatalf("an error that is not a rejection: %v", err)
			}
			return
		}
		var f struct {
			Parent []byte `json:"parent"`
			PKName string `json:"pk_name"`
		}
		if err := json.Unmarshal(b, &f); err != nil {
			t.Fatalf("accepted a file that does not parse: %v", err)
		}
		pub2b, err := tpm2.Unmarshal[tpm2.TPM2BPublic](f.Parent)
		if err != nil {
			t.Fatal(err)
		}
		pub, err := pub2b.Contents()
		if err != nil {
			t.Fatal(err)
		}
		pk, _ := hex.DecodeString(f.PKName)
		n, err := tpm2.ObjectName(pub)
		if err != nil || !catalog.IsTransferKey(*pub, pk) || !bytes.Equal(n.Buffer, tName) || p.ParentName != hex.EncodeToString(tName) {
			t.Fatalf("accepted a transfer key that is not one: %x", f.Parent)
		}
	})
}
