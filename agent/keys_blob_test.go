package agent

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm/keyfile"
)

// TestCheckImportPublic: import-blob accepts exactly the public areas provd
// creates (every creatable type and usage, extractable or not, whatever
// key their unique field holds) and refuses each single deviation, in particular the ones a
// key made outside the TPM and brought in with TPM2_Import carries
// (sensitiveDataOrigin clear) and the attributes the earlier check never
// looked at (adminWithPolicy, noDA, stClear, schemes, exponent).
func TestCheckImportPublic(t *testing.T) {
	signer, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	pk := pkInputs{expr: policy.Policy{policy.Authorize{Signer: signer.Public(), PolicyRef: pkPolicyRef}}, officer: officertest.Public()}
	digest := func(extractable bool, use ...tpm2.TPMCC) []byte {
		cc := tpm2.TPMCCSign
		if len(use) > 0 {
			cc = use[0]
		}
		expr, err := keyPolicy(pk, cc, extractable)
		if err != nil {
			t.Fatal(err)
		}
		d, err := expr.Digest(tpm2.TPMAlgSHA256)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	// Each type's key, as the TPM gives it: TypeOf reads the point or
	// modulus (review 58), so each refusal below is its deviation's.
	made := map[string]tpm2.TPMUPublicID{}
	uniques := func(kt catalog.Type) tpm2.TPMUPublicID {
		if u, ok := made[kt.Name]; ok {
			return u
		}
		var priv crypto.PrivateKey
		var err error
		switch kt.Name {
		case "ecc-p256":
			priv, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		case "ecc-p384":
			priv, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
		default:
			priv, err = rsa.GenerateKey(rand.Reader, kt.Bits)
		}
		if err != nil {
			t.Fatal(err)
		}
		_, _, u, err := catalog.FromPrivate(priv)
		if err != nil {
			t.Fatal(err)
		}
		made[kt.Name] = u
		return u
	}
	for _, kt := range catalog.Types() {
		if !kt.Create {
			continue
		}
		for _, usage := range kt.Usages {
			for _, ext := range []bool{false, true} {
				cc, _ := useCommand(kt.Alg, usage)
				pub := kt.CreatedTemplate(usage, digest(ext, cc), ext)
				pub.Unique = uniques(kt)
				gkt, gu, tmpl, err := checkImportPublic(pub, pk)
				if err != nil || gkt.Name != kt.Name || gu != usage || tmpl.ObjectAttributes.FixedTPM == ext {
					t.Errorf("%s %s extractable=%v: %s %s %v", kt.Name, usage, ext, gkt.Name, gu, err)
				}
			}
		}
	}

	p256, _ := lookupType("ecc-p256", false)
	rsa2048, _ := lookupType("rsa-2048", false)
	fixed := func() tpm2.TPMTPublic {
		p := p256.CreatedTemplate(catalog.UsageSign, digest(false), false)
		p.Unique = uniques(p256)
		return p
	}
	ext := func() tpm2.TPMTPublic {
		p := p256.CreatedTemplate(catalog.UsageSign, digest(true), true)
		p.Unique = uniques(p256)
		return p
	}
	for _, c := range []struct {
		name string
		pub  func() tpm2.TPMTPublic
	}{
		{"TPM2_Import: sensitiveDataOrigin clear", func() tpm2.TPMTPublic {
			p := ext()
			p.ObjectAttributes.SensitiveDataOrigin = false
			return p
		}},
		{"adminWithPolicy clear", func() tpm2.TPMTPublic { p := fixed(); p.ObjectAttributes.AdminWithPolicy = false; return p }},
		{"noDA clear", func() tpm2.TPMTPublic { p := fixed(); p.ObjectAttributes.NoDA = false; return p }},
		{"stClear", func() tpm2.TPMTPublic { p := fixed(); p.ObjectAttributes.STClear = true; return p }},
		{"userWithAuth", func() tpm2.TPMTPublic { p := fixed(); p.ObjectAttributes.UserWithAuth = true; return p }},
		{"restricted", func() tpm2.TPMTPublic { p := fixed(); p.ObjectAttributes.Restricted = true; return p }},
		{"fixedTPM without fixedParent", func() tpm2.TPMTPublic { p := fixed(); p.ObjectAttributes.FixedParent = false; return p }},
		{"extractable with encryptedDuplication (an earlier provd's)", func() tpm2.TPMTPublic {
			p := ext()
			p.ObjectAttributes.EncryptedDuplication = true
			return p
		}},
		{"fixed with encryptedDuplication", func() tpm2.TPMTPublic {
			p := fixed()
			p.ObjectAttributes.EncryptedDuplication = true
			return p
		}},
		{"extractable with the fixed policy", func() tpm2.TPMTPublic { p := ext(); p.AuthPolicy.Buffer = digest(false); return p }},
		{"fixed with the extractable policy", func() tpm2.TPMTPublic { p := fixed(); p.AuthPolicy.Buffer = digest(true); return p }},
		{"nameAlg sha384", func() tpm2.TPMTPublic { p := fixed(); p.NameAlg = tpm2.TPMAlgSHA384; return p }},
		{"ECDSA scheme fixed in the key", func() tpm2.TPMTPublic {
			p := fixed()
			p.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
				Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
				Scheme: tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA,
					Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA1})},
				CurveID: tpm2.TPMECCNistP256,
				KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
			})
			return p
		}},
		{"RSA exponent 3", func() tpm2.TPMTPublic {
			p := rsa2048.CreatedTemplate(catalog.UsageSign, digest(false), false)
			p.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
				Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
				Scheme:    tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull},
				KeyBits:   2048, Exponent: 3,
			})
			p.Unique = uniques(rsa2048)
			return p
		}},
		{"sign and decrypt", func() tpm2.TPMTPublic { p := fixed(); p.ObjectAttributes.Decrypt = true; return p }},
	} {
		if _, _, _, err := checkImportPublic(c.pub(), pk); !errors.Is(err, api.ErrNotPermitted) {
			t.Errorf("%s: %v, want api.ErrNotPermitted", c.name, err)
		} else {
			t.Logf("%s: %v", c.name, err)
		}
	}
}

// TestImportRefusesForeignOrigin: a key file whose public area says the key
// was not generated by the TPM (sensitiveDataOrigin clear, as a key brought
// in with TPM2_Import has) is refused by provd's check, before the TPM
// is asked to load it.
func TestImportRefusesForeignOrigin(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	a := testAgent(t, env, &api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}})
	if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "ext", Type: "ecc-p256", Extractable: true}); err != nil {
		t.Fatal(err)
	}
	// An extractable key has no key file (its authValue is its own):
	// the file is made here from its blob, as an attacker with the state
	// would.
	ks, err := a.readKeyState(ctx, "ext", true)
	if err != nil {
		t.Fatal(err)
	}
	pemData, err := blobKeyFile(ks.keyBlob)
	if err != nil {
		t.Fatal(err)
	}
	kf, err := keyfile.ParsePEM(pemData)
	if err != nil {
		t.Fatal(err)
	}
	p2b, err := tpm2.Unmarshal[tpm2.TPM2BPublic](kf.Public)
	if err != nil {
		t.Fatal(err)
	}
	pub, err := p2b.Contents()
	if err != nil {
		t.Fatal(err)
	}
	pub.ObjectAttributes.SensitiveDataOrigin = false
	kf.Public = tpm2.Marshal(tpm2.New2B(*pub))
	edited, err := kf.EncodePEM()
	if err != nil {
		t.Fatal(err)
	}
	// A refusal before any TPM work costs what auditing it costs.
	before := env.TPM.Stats()
	if _, err := a.ImportKeyBlob(ctx, ".bad-name", pemData); !errors.Is(err, api.ErrBadInput) {
		t.Fatal(err)
	}
	audit := env.TPM.Stats().Sub(before).Commands
	before = env.TPM.Stats()
	if _, err := a.ImportKeyBlob(ctx, "foreign", edited); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("import of a key not generated by the TPM: %v, want api.ErrNotPermitted", err)
	}
	if n := env.TPM.Stats().Sub(before).Commands; n != audit {
		t.Errorf("refusal sent %d TPM commands, auditing alone %d: the TPM was asked to load it", n, audit)
	}
	if _, err := a.ImportKeyBlob(ctx, "again", pemData); err != nil {
		t.Fatalf("the genuine file: %v", err)
	}
}
