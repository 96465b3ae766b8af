package catalog

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// Held: the stricter TypeOf (review 58) still takes every public area
// provd's keys have: each creatable type and usage, created (fixed) and
// extractable, under a fixed and a movable PK (fixedTPM clear,
// encryptedDuplication set), with a peer rule's encryptedDuplication, an
// imported key's sensitiveDataOrigin clear; RSA with the exponent the TPM
// writes (0) and with 65537 written out (Public); an ECC point whose X
// coordinate a TPM wrote without its leading zero byte. It names the
// type and usage provd recorded for each.
func TestReview60TypeOfTakesProvdsKeys(t *testing.T) {
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	r2048, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	keys := map[string]any{"ecc-p256": p256, "ecc-p384": p384, "rsa-2048": r2048}
	policy := make([]byte, 32)
	for name, k := range keys {
		kt, err := Lookup(name, false)
		if err != nil {
			t.Fatal(err)
		}
		_, _, unique, err := FromPrivate(k)
		if err != nil {
			t.Fatal(err)
		}
		for _, usage := range kt.Usages {
			for _, extractable := range []bool{false, true} {
				for _, movable := range []bool{false, true} {
					for _, imported := range []bool{false, true} {
						pub := UnderMovable(kt.CreatedTemplate(usage, policy, extractable), movable)
						pub.ObjectAttributes.EncryptedDuplication = pub.ObjectAttributes.EncryptedDuplication || extractable
						pub.ObjectAttributes.SensitiveDataOrigin = !imported
						pub.Unique = unique
						got, u, err := TypeOf(pub)
						if err != nil || got.Name != name || u != usage {
							t.Errorf("%s %s (extractable %v, movable %v, imported %v): %s %s %v", name, usage, extractable, movable, imported, got.Name, u, err)
						}
					}
				}
			}
		}
	}
	// RSA's exponent written out, as Public writes an odd one.
	kt, _ := Lookup("rsa-2048", false)
	area := kt.CreatedTemplate(UsageSign, policy, false)
	parms, _ := area.Parameters.RSADetail()
	parms.Exponent = 65537
	area.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, parms)
	_, _, unique, _ := FromPrivate(r2048)
	area.Unique = unique
	if _, _, err := TypeOf(area); err != nil {
		t.Errorf("RSA with its exponent 65537 written out: %v", err)
	}
	// A P-256 point whose X has a leading zero byte, written short.
	var short *ecdsa.PrivateKey
	for short == nil {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		if b, _ := k.PublicKey.Bytes(); b[1] == 0 {
			short = k
		}
	}
	b, _ := short.PublicKey.Bytes()
	kt, _ = Lookup("ecc-p256", false)
	area = kt.CreatedTemplate(UsageSign, policy, false)
	area.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: b[2:33]}, Y: tpm2.TPM2BECCParameter{Buffer: b[33:]}})
	if _, _, err := TypeOf(area); err != nil {
		t.Errorf("a P-256 point with a short X: %v", err)
	}
}
