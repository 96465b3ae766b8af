// Package officertest is the crypto officer of provd's tests: one approval
// key per test binary, its public half for provision --officer-key, and the
// approvals of derivation recipes a real officer would sign offline. It
// exists so that tests outside package agent derive keys the way a device
// does, through an approval, not around it.
package officertest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/officer"
	"github.com/provd/provd/policy"
)

var key = sync.OnceValue(func() *ecdsa.PrivateKey {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
})

// Key is the officer's private key.
func Key() *ecdsa.PrivateKey { return key() }

// Public is the officer's public key, for api.ProvisionRequest.Officer.
func Public() *ecdsa.PublicKey { return &key().PublicKey }

// Files writes the officer's private and public keys (PEM) into dir and
// returns their paths, for CLI tests.
func Files(t testing.TB, dir string) (private, public string) {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(Key())
	if err != nil {
		t.Fatal(err)
	}
	pub, err := policy.MarshalPublicKeyPEM(Public())
	if err != nil {
		t.Fatal(err)
	}
	private, public = filepath.Join(dir, "officer.key.pem"), filepath.Join(dir, "officer.pub.pem")
	if err := os.WriteFile(private, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(public, pub, 0o644); err != nil {
		t.Fatal(err)
	}
	return private, public
}

// Approve is the officer's approval of req's recipe for a PK with policy
// digest pkPolicy (hex, as provd status reports it), or nil for a recipe the
// officer's tool refuses (a type that cannot be derived, a bad label): the
// device must then refuse it too, which the caller's test checks.
func Approve(t testing.TB, pkPolicy string, req api.DeriveRequest) *policy.Approval {
	t.Helper()
	d, err := hex.DecodeString(pkPolicy)
	if err != nil || len(d) != 32 {
		return nil // not provisioned: the device says so
	}
	ap, err := officer.ApproveDerive(Key(), d, officer.Recipe{Type: req.Type, Usage: req.Usage, Label: req.Label, Context: req.Context})
	if err != nil {
		return nil
	}
	return ap
}

// Derive derives req's key on svc with the officer's approval of its recipe
// for svc's PK (read from svc.Status).
func Derive(t testing.TB, ctx context.Context, svc api.Service, req api.DeriveRequest) (api.KeyInfo, error) {
	t.Helper()
	st, err := svc.Status(ctx)
	if err != nil {
		return api.KeyInfo{}, err
	}
	req.Approval = Approve(t, st.PolicyDigest, req)
	return svc.DeriveKey(ctx, req)
}

// ApproveExport is the officer's approval to export key name from svc as a
// backup under KEK kek (provd key approve --export --kek-object-name), for
// svc's PK and the key's and the KEK's TPM names.
func ApproveExport(t testing.TB, ctx context.Context, svc api.Service, name, kek string) *api.ExportApproval {
	t.Helper()
	st, err := svc.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	keys, err := svc.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	names := map[string]string{}
	for _, k := range keys {
		names[k.Name] = k.ObjectName
	}
	pk, err1 := hex.DecodeString(st.PolicyDigest)
	obj, err2 := hex.DecodeString(names[name])
	kekName, err3 := hex.DecodeString(names[kek])
	if err1 != nil || err2 != nil || err3 != nil {
		t.Fatalf("status policy digest %q, object names %q", st.PolicyDigest, names)
	}
	dup, kekPart, err := officer.ApproveExport(Key(), pk, obj, kekName)
	if err != nil {
		t.Fatal(err)
	}
	return &api.ExportApproval{Duplication: dup, KEK: kekPart}
}
