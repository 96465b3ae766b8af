package fleet_test

// Found by a third adversarial review of the fleet endpoint; each broke
// it before its fix and is kept as a test.

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/attest"
	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/test/swtpmtest"
)

// TestTOFUPassGetsNoSecrets: the operator has put a secret for
// class "gateway" (fleet secret put), no golden values yet. Any genuine TPM
// (here one whose boot changed: PCR 7 extended with "evil") enrolls itself as
// "gateway" (the class is the device's say) and attests first with Fetch: the
// trust-on-first-use verdict counts as a pass, the endpoint seals the secret
// to the attacker's TPM and its evil PCRs, and the attacker unseals it. The
// genuine gateway attesting after it then fails (the evil boot is the
// baseline) and gets nothing.
func TestTOFUPassGetsNoSecrets(t *testing.T) {
	envA, envB := swtpmtest.Start(t), swtpmtest.Start(t)
	f := reviewEndpoint(t, envA, envB)
	ctx := context.Background()
	secret := []byte("gateway wifi psk: correct horse")
	if err := f.st.PutSecret(ctx, fleet.Secret{Class: "gateway", Name: "wifi", Value: secret, UpdatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	evil, good := newReviewDevice(t, envA), newReviewDevice(t, envB)
	evilDigest := sha256.Sum256([]byte("evil bootloader"))
	evil.extend(7, evilDigest[:])
	idEvil, err := evil.enroll(f, "gateway", evil.certs[:1])
	if err != nil {
		t.Fatal(err)
	}
	idGood, err := good.enroll(f, "gateway", good.certs[:1])
	if err != nil {
		t.Fatal(err)
	}
	v := f.attest(t, evil, idEvil, func(r *fleetapi.AttestRequest) { r.Fetch = true })
	t.Logf("attacker's verdict: pass=%v reasons=%+v deliveries=%d", v.Pass, v.Reasons, len(v.Deliveries))
	if !v.Pass || len(v.Deliveries) == 0 {
		t.Logf("held: no delivery on a TOFU verdict")
		return
	}
	got := unsealDelivery(t, evil, v.Deliveries[0])
	vg := f.attest(t, good, idGood, func(r *fleetapi.AttestRequest) { r.Fetch = true })
	t.Logf("genuine gateway afterwards: pass=%v deliveries=%d reasons=%+v", vg.Pass, len(vg.Deliveries), vg.Reasons)
	if string(got) == string(secret) {
		t.Fatalf("BREAK: a TPM with a changed boot (PCR 7 = evil) that enrolled itself into class gateway got and unsealed the class's secret %q on a trust-on-first-use 'pass' (reason %s); the genuine gateway then fails: pass=%v", got, v.Reasons[0].Code, vg.Pass)
	}
}

// unsealDelivery imports a delivery under the device's RSA EK and unseals it
// with PolicyPCR (the PCRs as they are now) and PolicyCommandCode(Unseal),
// with go-tpm directly: what root on that device can do.
func unsealDelivery(t *testing.T, d *reviewDevice, dl fleetapi.Delivery) []byte {
	t.Helper()
	tp := d.env.TPM
	cert, err := x509.ParseCertificate(d.certs[0])
	if err != nil {
		t.Fatal(err)
	}
	if _, err := attest.EKPublic(cert.PublicKey); err != nil {
		t.Fatal(err)
	}
	tmpl := tpm2.RSAEKTemplate
	tmpl.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: make([]byte, 256)})
	ek, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHEndorsement, InPublic: tpm2.New2B(tmpl)}).Execute(tp)
	if err != nil {
		t.Fatal(err)
	}
	defer (tpm2.FlushContext{FlushHandle: ek.ObjectHandle}).Execute(tp)
	ekAuth := func() tpm2.AuthHandle {
		return tpm2.AuthHandle{Handle: ek.ObjectHandle, Name: ek.Name,
			Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(tp transport.TPM, h tpm2.TPMISHPolicy, n tpm2.TPM2BNonce) error {
				_, err := (tpm2.PolicySecret{AuthHandle: tpm2.TPMRHEndorsement, PolicySession: h, NonceTPM: n}).Execute(tp)
				return err
			})}
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](dl.Public)
	if err != nil {
		t.Fatal(err)
	}
	imp, err := (tpm2.Import{ParentHandle: ekAuth(), ObjectPublic: tpm2.New2B(*pub), Duplicate: tpm2.TPM2BPrivate{Buffer: dl.Duplicate},
		InSymSeed: tpm2.TPM2BEncryptedSecret{Buffer: dl.Seed}, Symmetric: tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull}}).Execute(tp)
	if err != nil {
		t.Fatalf("import: %v", err)
	}
	ld, err := (tpm2.Load{ParentHandle: ekAuth(), InPrivate: imp.OutPrivate, InPublic: tpm2.New2B(*pub)}).Execute(tp)
	if err != nil {
		t.Fatalf("load: %v", err)
	}
	defer (tpm2.FlushContext{FlushHandle: ld.ObjectHandle}).Execute(tp)
	bitmap := make([]byte, 3)
	for _, i := range dl.PCRs["sha256"] {
		bitmap[i/8] |= 1 << (i % 8)
	}
	sel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: bitmap}}}
	rsp, err := (tpm2.Unseal{ItemHandle: tpm2.AuthHandle{Handle: ld.ObjectHandle, Name: ld.Name,
		Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(tp transport.TPM, h tpm2.TPMISHPolicy, _ tpm2.TPM2BNonce) error {
			if _, err := (tpm2.PolicyPCR{PolicySession: h, Pcrs: sel}).Execute(tp); err != nil {
				return err
			}
			_, err := (tpm2.PolicyCommandCode{PolicySession: h, Code: tpm2.TPMCCUnseal}).Execute(tp)
			return err
		})}}).Execute(tp)
	if err != nil {
		t.Fatalf("unseal: %v", err)
	}
	return rsp.OutData.Buffer
}
