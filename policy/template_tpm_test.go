package policy_test

import (
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/catalog"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// derivationParent is a keyedHash derivation parent (XOR, KDF1-SP800-108)
// with authPolicy and userWithAuth clear.
func derivationParent(authPolicy []byte) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgKeyedHash,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true,
			AdminWithPolicy: true, NoDA: true, Restricted: true, Decrypt: true},
		AuthPolicy: tpm2.TPM2BDigest{Buffer: authPolicy},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{
				Scheme: tpm2.TPMAlgXOR,
				Details: tpm2.NewTPMUSchemeKeyedHash(tpm2.TPMAlgXOR, &tpm2.TPMSSchemeXOR{
					HashAlg: tpm2.TPMAlgSHA256, KDF: tpm2.TPMAlgKDF1SP800108,
				}),
			},
		}),
	}
}

// derivedData is a derived keyedHash data object (sign and decrypt clear):
// what an attacker derives to TPM2_Unseal a derived secret.
func derivedData(label string) tpm2.TPMTTemplate {
	return catalog.DeriveTemplate(tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgKeyedHash,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, UserWithAuth: true, NoDA: true},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull},
		}),
	}, []byte(label), nil)
}

// derivedHMAC is a derived HMAC-SHA256 key: what the parent's policy allows.
func derivedHMAC(label string) tpm2.TPMTTemplate {
	return catalog.DeriveTemplate(tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgKeyedHash,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{FixedTPM: true, FixedParent: true, UserWithAuth: true, NoDA: true, SignEncrypt: true},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{
				Scheme:  tpm2.TPMAlgHMAC,
				Details: tpm2.NewTPMUSchemeKeyedHash(tpm2.TPMAlgHMAC, &tpm2.TPMSSchemeHMAC{HashAlg: tpm2.TPMAlgSHA256}),
			},
		}),
	}, []byte(label), nil)
}

// A derivation parent whose policy holds PolicyTemplate derives the one
// template approved and nothing else: the same label as a data object (to
// TPM2_Unseal the secret) fails inside the TPM, and so does another label.
func TestPolicyTemplateBindsDerivation(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	ok := derivedHMAC("tls")
	h, err := policy.TemplateHash(tpm2.TPMAlgSHA256, ok)
	if err != nil {
		t.Fatal(err)
	}
	pol := policy.Policy{policy.Template{Hash: h}}
	digest, err := pol.Digest(tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	blob, err := tp.Create(srk, nil, derivationParent(digest), tpm.Sensitive{})
	if err != nil {
		t.Fatal(err)
	}
	d, err := tp.Load(srk, nil, blob)
	if err != nil {
		t.Fatal(err)
	}
	defer tp.Flush(d.Handle)

	derive := func(tmpl tpm2.TPMTTemplate) error {
		ps, err := tp.StartPolicySession(false)
		if err != nil {
			t.Fatal(err)
		}
		defer ps.Close()
		if err := pol.Apply(ps, policy.ApplyOptions{}); err != nil {
			t.Fatal(err)
		}
		obj, err := tp.CreateLoaded(d, ps.Session(), tmpl, tpm.Sensitive{})
		if err == nil {
			tp.Flush(obj.Handle)
		}
		return err
	}
	if err := derive(ok); err != nil {
		t.Fatalf("the approved template: %v", err)
	}
	for name, tmpl := range map[string]tpm2.TPMTTemplate{
		"same label as a data object": derivedData("tls"),
		"another label":               derivedHMAC("tls2"),
	} {
		err := derive(tmpl)
		if !errors.Is(err, tpm2.TPMRCPolicyFail) {
			t.Errorf("%s: %v, want TPM_RC_POLICY_FAIL from the TPM", name, err)
		}
	}
}
