package officer

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api/errkind"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/policy"
)

// The digests approvals are computed from a PK policy digest (the officer
// has no PK expression); they must equal the digests of the expressions the
// device executes, for PK policies of both kinds.
func TestApprovedDigestsMatchTheExpressions(t *testing.T) {
	signer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	v := sha256.Sum256([]byte("pcr 7"))
	pks := map[string]policy.Policy{
		"pcr":    {policy.PCR{Values: policy.PCRValues{Bank: policy.BankSHA256, Values: map[int][]byte{7: v[:]}}}},
		"signed": {policy.Authorize{Signer: signer.Public(), PolicyRef: []byte("provd/pk/lab")}},
	}
	name := append([]byte{0, 0x0b}, bytes.Repeat([]byte{7}, 32)...)
	parent := append([]byte{0, 0x0b}, bytes.Repeat([]byte{9}, 32)...)
	for kind, pk := range pks {
		pkDigest, err := pk.Digest(tpm2.TPMAlgSHA256)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range []Recipe{{Type: "ecc-p256", Label: "tls", Context: "d"}, {Type: "hmac-sha256", Label: "m"}, {Type: "aes-256", Label: "m"}, {Type: "ecc-p384", Usage: "ecdh", Label: "x"}} {
			r, kt, err := r.Check()
			if err != nil {
				t.Fatal(err)
			}
			got, err := DeriveApproved(kt, r, pkDigest)
			if err != nil {
				t.Fatal(err)
			}
			expr, err := DeriveApprovedExpr(pk, kt, r, pkDigest)
			if err != nil {
				t.Fatal(err)
			}
			if want, err := expr.Digest(tpm2.TPMAlgSHA256); err != nil || !bytes.Equal(got, want) {
				t.Errorf("%s %v: derive approval digest %x, expression %x (%v)", kind, r, got, want, err)
			}
		}
		want, err := DupApprovedExpr(pk, name, parent).Digest(tpm2.TPMAlgSHA256)
		if err != nil || !bytes.Equal(DupApproved(pkDigest, name, parent), want) {
			t.Errorf("%s: duplication approval digest differs from its expression (%v)", kind, err)
		}
	}
}

// The recipe decides the key: type and usage enter the derivation label, and
// text that would make two recipes look alike is refused.
func TestRecipes(t *testing.T) {
	label := func(r Recipe) []byte {
		r, _, err := r.Check()
		if err != nil {
			t.Fatal(err)
		}
		return deriveLabel(r)
	}
	base := Recipe{Type: "ecc-p256", Label: "tls"}
	for _, other := range []Recipe{
		{Type: "ecc-p256", Usage: catalog.UsageECDH, Label: "tls"},
		{Type: "ecc-p384", Label: "tls"},
		{Type: "ecc-p256", Label: "tl", Context: "s"},
		{Type: "ecc-p256", Label: "tls", Context: "x"},
	} {
		if bytes.Equal(label(base), label(other)) {
			t.Errorf("%v and %v derive with one label", base, other)
		}
	}
	if bytes.Equal(label(Recipe{Type: "hmac-sha256", Label: "k"}), label(Recipe{Type: "aes-256", Label: "k"})) {
		t.Error("hmac-sha256 and aes-256 share a label")
	}
	if !bytes.Equal(label(base), label(Recipe{Type: "ecc-p256", Usage: catalog.UsageSign, Label: "tls"})) {
		t.Error("the default usage is not the type's first")
	}
	for _, bad := range []Recipe{
		{Type: "ecc-p256"}, {Type: "ecc-p256", Label: string(bytes.Repeat([]byte{'a'}, 33))},
		{Type: "ecc-p256", Label: "tls\x00"}, {Type: "ecc-p256", Label: "a", Context: "\u0085"},
		{Type: "ecc-p256", Label: "\xff"}, {Type: "ecc-p256", Usage: catalog.UsageHMAC, Label: "a"},
		// Look-alikes (found by review): zero-width, format, separator and
		// homoglyph characters, and spaces.
		{Type: "ecc-p256", Label: "tls\u200b"}, {Type: "ecc-p256", Label: "tls\u2060"}, {Type: "ecc-p256", Label: "t\u202els"},
		{Type: "ecc-p256", Label: "tls\u00a0"}, {Type: "ecc-p256", Label: "tls\ufeff"}, {Type: "ecc-p256", Label: "tl\u0455"},
		{Type: "ecc-p256", Label: "tls "}, {Type: "ecc-p256", Label: "a", Context: "b c"},
	} {
		if _, _, err := bad.Check(); !errors.Is(err, errkind.ErrBadInput) {
			t.Errorf("%+v: %v, want ErrBadInput", bad, err)
		}
	}
	if _, _, err := (Recipe{Type: "rsa-2048", Label: "a"}).Check(); !errors.Is(err, catalog.ErrNotDerivable) || !errors.Is(err, errkind.ErrNotPermitted) {
		t.Errorf("rsa-2048: %v", err)
	}
}

// An approval survives its file form, and verifies only against its signer.
func TestApprovalRoundTrip(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	pk := sha256.Sum256([]byte("pk policy"))
	ap, err := ApproveDerive(k, pk[:], Recipe{Type: "ecc-p256", Label: "tls"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := json.Marshal(ap)
	if err != nil {
		t.Fatal(err)
	}
	var back policy.Approval
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if err := back.Verify(k.Public()); err != nil || !bytes.Equal(back.ApprovedPolicy, ap.ApprovedPolicy) || !bytes.Equal(back.PolicyRef, DeriveRef) {
		t.Fatalf("round trip: %v", err)
	}
	other, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err := back.Verify(other.Public()); err == nil {
		t.Error("an approval verified against another key")
	}
	b[len(b)/2] ^= 1
	if err := json.Unmarshal(b, &back); err == nil {
		t.Error("a changed approval file parsed")
	}
	if _, err := ApproveDerive(k, pk[:5], Recipe{Type: "ecc-p256", Label: "tls"}); !errors.Is(err, errkind.ErrBadInput) {
		t.Errorf("short PK digest: %v", err)
	}
}

// TestNoApprovalWithoutAPKPolicy: a PK policy digest of zeros is a fresh
// session's, so an approval over it would hold on any platform state
// (found by review: an authority approval so made moved a movable PK on a
// bad boot): refused for every kind of approval.
func TestNoApprovalWithoutAPKPolicy(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	zero := make([]byte, 32)
	name := append([]byte{0, 0x0b}, make([]byte, 32)...)
	if _, err := ApproveDuplication(k, zero, name, name); !errors.Is(err, errkind.ErrBadInput) {
		t.Errorf("duplication: %v", err)
	}
	if _, _, err := ApproveExport(k, zero, name, name); !errors.Is(err, errkind.ErrBadInput) {
		t.Errorf("export: %v", err)
	}
	if _, err := ApproveDerive(k, zero, Recipe{Type: "ecc-p256", Label: "a"}); !errors.Is(err, errkind.ErrBadInput) {
		t.Errorf("derive: %v", err)
	}
}
