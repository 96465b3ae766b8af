package agent

import (
	"context"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// testAgent is an Agent on env's TPM with a fresh state directory, closed at
// the end of the test; provisioned with req when req is not nil.
func testAgent(t testing.TB, env *swtpmtest.Env, req *api.ProvisionRequest) *Agent {
	t.Helper()
	a, err := New(Config{TPM: env.TPM, StateDir: t.TempDir() + "/state"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if req != nil {
		if _, err := a.Provision(context.Background(), *req); err != nil {
			t.Fatal(err)
		}
	}
	return a
}

// ParseSealed exposes the sealed-blob parser to the fuzz target.
func ParseSealed(data []byte) error {
	_, _, err := parseSealed(data)
	return err
}

// PlantGateKey is A2 putting a key of its own at 0x81007601 (whatever
// was there evicted first), DA-protected unless noDA; it returns the key's
// name.
func PlantGateKey(t testing.TB, tp *tpm.TPM, noDA bool) string {
	t.Helper()
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	tmpl := tpm.GateTemplate()
	tmpl.ObjectAttributes.NoDA = noDA
	auth := []byte("A2's own value")
	blob, err := tp.Create(srk, nil, tmpl, tpm.Sensitive{UserAuth: auth})
	if err != nil {
		t.Fatal(err)
	}
	k, err := tp.LoadGate(srk, blob, auth)
	if err != nil {
		t.Fatal(err)
	}
	if err := tp.Evict(AuditGateHandle); err != nil && !errors.Is(err, tpm.ErrNotFound) {
		t.Fatal(err)
	}
	if err := errors.Join(tp.Persist(k.Object, AuditGateHandle), tp.Flush(k.Handle)); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(k.Name.Buffer)
}

// PlantAnotherApplicationsKey is another application's key, persistent at
// 0x81007601 before provd ever ran here: an ECC signing primary in the
// owner hierarchy, made through tr (past a test's bus hooks), made
// persistent through tp; it returns its name.
func PlantAnotherApplicationsKey(t testing.TB, tr transport.TPM, tp *tpm.TPM) string {
	t.Helper()
	tmpl := tpm2.ECCSRKTemplate
	tmpl.ObjectAttributes = tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true, UserWithAuth: true, SignEncrypt: true}
	tmpl.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Scheme:  tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})},
		CurveID: tpm2.TPMECCNistP256,
	})
	rsp, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tmpl)}).Execute(tr)
	if err != nil {
		t.Fatal(err)
	}
	other := tpm.Object{Handle: rsp.ObjectHandle, Name: rsp.Name}
	if err := errors.Join(tp.Persist(other, AuditGateHandle), tp.Flush(other.Handle)); err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(rsp.Name.Buffer)
}
