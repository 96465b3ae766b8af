package fleet_test

// Found by a fourth review: kept as a test (it broke before coversBoot).

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/attest/fleet"
	"github.com/provd/provd/attest/fleetapi"
	"github.com/provd/provd/test/swtpmtest"
)

// TestResettablePCRDoesNotCountAsOS: withhold() delivers once the class's
// SHA-256 golden values name any PCR besides 12, but PCR 16 (debug) and 23
// are resettable by any process at locality 0 (17..22 by DRTM localities):
// they say nothing of which OS ran the hook. Policy {12: hook's good value,
// 16: a value}: an OS that skipped the hook (PCR 4 changed) extends PCR 12
// by hand, resets PCR 16 and replays its value, passes, gets the secret
// delivered sealed to this boot, and unseals it (root holds provd's state,
// hence the AK's authValue).
func TestResettablePCRDoesNotCountAsOS(t *testing.T) {
	env := swtpmtest.Start(t)
	f := reviewEndpoint(t, env)
	ctx := context.Background()
	d := newReviewDevice(t, env)
	manifest := sha256.Sum256([]byte("the allowed release"))
	ev := verifiedEvent(fleet.HookPCR, "gateway", manifest[:])
	debug := sha256.Sum256([]byte("debug policy of the good image"))
	golden := map[int]string{
		fleet.HookPCR: hex.EncodeToString(extendSHA256(make([]byte, 32), ev.Digests[0].Digest)),
		16:            hex.EncodeToString(extendSHA256(make([]byte, 32), debug[:])),
	}
	if err := f.st.SetPolicy(ctx, fleet.Policy{Class: "gateway", PCRs: map[string]map[int]string{"sha256": golden}, Manifests: []string{hex.EncodeToString(manifest[:])}}); err != nil {
		t.Fatal(err)
	}
	secret := []byte("gateway wifi psk")
	if err := f.st.PutSecret(ctx, fleet.Secret{Class: "gateway", Name: "wifi", Value: secret, UpdatedAt: time.Now()}); err != nil {
		t.Fatal(err)
	}
	id, err := d.enroll(f, "gateway", d.certs[:1])
	if err != nil {
		t.Fatal(err)
	}
	evilKernel := sha256.Sum256([]byte("a kernel without the hook"))
	d.extend(4, evilKernel[:])
	d.extend(16, sha256.New().Sum(nil)) // whatever it held...
	if _, err := (tpm2.PCRReset{PCRHandle: tpm2.AuthHandle{Handle: 16, Auth: tpm2.PasswordAuth(nil)}}).Execute(env.TPM); err != nil {
		t.Fatal(err)
	}
	d.extend(16, debug[:])                        // ...reset and replayed
	d.extend(fleet.HookPCR, ev.Digests[0].Digest) // by hand, as root
	v := f.attest(t, d, id, func(r *fleetapi.AttestRequest) {
		r.MeasurementLog = logOf(t, ev)
		r.Fetch = true
	})
	if !v.Pass || len(v.Deliveries) == 0 {
		t.Logf("held: %+v", v)
		return
	}
	got := unsealDelivery(t, d, v.Deliveries[0])
	if string(got) == string(secret) {
		t.Fatalf("policy {12, 16}: an OS that skipped the hook (PCR 4 changed, PCR 12 by hand, PCR 16 reset and replayed) passed, got %q sealed to PCRs %v of that boot and unsealed %q", v.Deliveries[0].Name, v.Deliveries[0].PCRs, got)
	}
}

// unsealDelivery imports a delivery under the device's RSA EK and unseals
// it with PolicyPCR (the PCRs as they are now), PolicySecret(its AK: the
// review device's has an empty authValue; on a provd device root reads it
// from the state) and PolicyCommandCode(Unseal), with go-tpm directly: what
// root on that device can do.
func unsealDelivery(t *testing.T, d *reviewDevice, dl fleetapi.Delivery) []byte {
	t.Helper()
	tp := d.env.TPM
	if _, err := x509.ParseCertificate(d.certs[0]); err != nil {
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
		Auth: tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(tp transport.TPM, h tpm2.TPMISHPolicy, n tpm2.TPM2BNonce) error {
			if _, err := (tpm2.PolicyPCR{PolicySession: h, Pcrs: sel}).Execute(tp); err != nil {
				return err
			}
			if _, err := (tpm2.PolicySecret{AuthHandle: tpm2.AuthHandle{Handle: d.ak, Name: d.name, Auth: tpm2.PasswordAuth(nil)}, PolicySession: h, NonceTPM: n}).Execute(tp); err != nil {
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
