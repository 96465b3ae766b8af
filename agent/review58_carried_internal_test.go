package agent

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/hex"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/tpm"
)

// FLAW (failed before the mend: checkCarried held a created key's record
// to its blob alone): a moved PK's created key was adopted whatever its
// attributes and policy, as long as the record repeated them. Root on the
// origin (A4 there, before dup export --pk) satisfies the PK's policy on a
// good boot and creates a child of the PK of its own making: userWithAuth
// set (usable with its authValue alone, no PK policy, by any process on the
// receiver that holds the blob), or an empty policy, or a restricted key;
// its record repeats the blob's type, usage, policy and extractability, and
// the receiver adopted it as one of its keys. Review 58 (TypeOf approved an
// exponent-3 RSA key or a SHA-1 nameAlg) led here. Mend: checkCarried
// holds the key to what createKey gives a key under this PK: the policy of
// the record's extractability and duplication rule, and, its point aside,
// the created template under a movable PK.
func TestReview58CarriedKeyIsOneProvdMakes(t *testing.T) {
	officerKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	expr := policy.Policy{policy.AuthValue{}} // the PK's policy P: any will do
	pDigest, err := expr.Digest(tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	in := pkInputs{state: pkState{Policy: policyRecord{Kind: PolicySigned, Digest: hex.EncodeToString(pDigest)}}, expr: expr, officer: &officerKey.PublicKey}
	kt, err := catalog.Lookup("ecc-p256", false)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	_, _, unique, err := catalog.FromPrivate(key)
	if err != nil {
		t.Fatal(err)
	}
	policyOf := func(extractable bool) []byte {
		e, err := keyPolicyFor(in, tpm2.TPMCCSign, extractable, dupRule{}, nil)
		if err != nil {
			t.Fatal(err)
		}
		d, err := e.Digest(tpm2.TPMAlgSHA256)
		if err != nil {
			t.Fatal(err)
		}
		return d
	}
	// carried is the record and blob of pub, as the origin wrote them.
	carried := func(pub tpm2.TPMTPublic, extractable bool) (keyRecord, *tpm.Blob) {
		pub.Unique = unique
		name, err := tpm2.ObjectName(&pub)
		if err != nil {
			t.Fatal(err)
		}
		blob := &tpm.Blob{Public: tpm2.New2B(pub)}
		return keyRecord{Name: "k", Kind: api.KindCreated, Type: kt.Name, Usage: catalog.UsageSign, Extractable: extractable,
			Object: hex.EncodeToString(name.Buffer), Public: tpm2.Marshal(blob.Public), Policy: hex.EncodeToString(pub.AuthPolicy.Buffer)}, blob
	}
	made := func(extractable bool) tpm2.TPMTPublic {
		return catalog.UnderMovable(kt.CreatedTemplate(catalog.UsageSign, policyOf(extractable), extractable), true)
	}
	for _, extractable := range []bool{false, true} {
		if err := func() error { r, b := carried(made(extractable), extractable); return r.checkCarried(b, in) }(); err != nil {
			t.Fatalf("a key provd made (extractable %v): %v", extractable, err)
		}
	}
	for name, edit := range map[string]func(*tpm2.TPMTPublic){
		"userWithAuth":     func(p *tpm2.TPMTPublic) { p.ObjectAttributes.UserWithAuth = true },
		"restricted":       func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Restricted = true },
		"no noDA":          func(p *tpm2.TPMTPublic) { p.ObjectAttributes.NoDA = false },
		"empty policy":     func(p *tpm2.TPMTPublic) { p.AuthPolicy.Buffer = nil },
		"the PK's policy":  func(p *tpm2.TPMTPublic) { p.AuthPolicy.Buffer = pDigest },
		"another's policy": func(p *tpm2.TPMTPublic) { p.AuthPolicy.Buffer = policyOf(true) },
	} {
		pub := made(false)
		edit(&pub)
		r, b := carried(pub, false)
		if err := r.checkCarried(b, in); err == nil {
			t.Errorf("a carried key with %s, its record repeating it, was adopted", name)
		}
	}
}
