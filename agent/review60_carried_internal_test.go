package agent

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"math/big"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/tpm"
)

// review60Inputs is a movable PK's inputs (DupBy: an authority) with an
// officer, for records built as createKey and importKeyBlob write them.
func review60Inputs(t *testing.T) (pkInputs, *ecdsa.PrivateKey) {
	t.Helper()
	officerKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	authority, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	authPEM, err := policy.MarshalPublicKeyPEM(authority.Public())
	if err != nil {
		t.Fatal(err)
	}
	expr := policy.Policy{policy.AuthValue{}}
	d, err := expr.Digest(tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	in := pkInputs{state: pkState{Policy: policyRecord{Kind: PolicySigned, Digest: hex.EncodeToString(d)}, DupBy: string(authPEM)},
		expr: expr, officer: &officerKey.PublicKey}
	return in, authority
}

// review60Unique is the public key of a fresh key of type kt, as the TPM
// writes it.
func review60Unique(t *testing.T, kt catalog.Type) tpm2.TPMUPublicID {
	t.Helper()
	var k crypto.PrivateKey
	var err error
	switch kt.Name {
	case "ecc-p256":
		k, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	case "ecc-p384":
		k, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	default:
		k, err = rsa.GenerateKey(rand.Reader, kt.Bits)
	}
	if err != nil {
		t.Fatal(err)
	}
	_, _, unique, err := catalog.FromPrivate(k)
	if err != nil {
		t.Fatal(err)
	}
	return unique
}

// Held: checkCarried (review 58's mend) still adopts every created key
// provd writes under a movable PK, whatever its duplication rule: keys made
// by createKey extractable under the officer's rule, bound at birth to a
// peer (--duplicable-to: encryptedDuplication, the PolicyDuplicationSelect
// branch), approved by an authority (--duplicable-by), not extractable;
// and keys brought in by import-blob (checkImportPublic's template, record
// without a rule); for ecc-p256, ecc-p384 and rsa-2048 (exponent 0 in the
// area, as the TPM writes it). And it refuses each of them when the record
// names a rule other than the key's policy's (another authority, another
// peer, no rule) or when the area's nameAlg is SHA-384 with a SHA-384
// policy (an approved hash TypeOf takes, but not provd's template).
func TestReview60CarriedKeysWithRulesAreAdopted(t *testing.T) {
	in, _ := review60Inputs(t)
	other, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	otherPEM, _ := policy.MarshalPublicKeyPEM(other.Public())
	authPEM := in.state.DupBy
	peer := append([]byte{0x00, 0x0b}, make([]byte, 32)...)
	peer[5] = 7
	otherPeer := append([]byte{0x00, 0x0b}, make([]byte, 32)...)

	type rule struct {
		name         string
		extractable  bool
		dupTo, dupBy string
	}
	rules := []rule{
		{"not extractable", false, "", ""},
		{"extractable (officer)", true, "", ""},
		{"--duplicable-to", true, hex.EncodeToString(peer), ""},
		{"--duplicable-by", true, "", authPEM},
	}
	// made is the key createKey writes: its template and record.
	made := func(kt catalog.Type, r rule) (keyRecord, tpm2.TPMTPublic) {
		rec := keyRecord{Name: "k", Kind: api.KindCreated, Type: kt.Name, Usage: catalog.UsageSign, Extractable: r.extractable,
			PK: "000b00", DupTo: r.dupTo, DupBy: r.dupBy}
		dr, err := rec.rule()
		if err != nil {
			t.Fatal(err)
		}
		expr, err := keyPolicyFor(in, rec.useCommand(), r.extractable, dr, nil)
		if err != nil {
			t.Fatal(err)
		}
		digest, err := expr.Digest(tpm2.TPMAlgSHA256)
		if err != nil {
			t.Fatal(err)
		}
		tmpl := kt.CreatedTemplate(catalog.UsageSign, digest, r.extractable)
		tmpl.ObjectAttributes.EncryptedDuplication = dr.set()
		tmpl = in.state.child(tmpl)
		return rec, tmpl
	}
	// finish fills the record from the key's area, as commitKey keeps it.
	finish := func(rec keyRecord, pub tpm2.TPMTPublic) (keyRecord, *tpm.Blob) {
		name, err := tpm2.ObjectName(&pub)
		if err != nil {
			t.Fatal(err)
		}
		blob := &tpm.Blob{Public: tpm2.New2B(pub)}
		rec.Object, rec.Public, rec.Policy = hex.EncodeToString(name.Buffer), tpm2.Marshal(blob.Public), hex.EncodeToString(pub.AuthPolicy.Buffer)
		if rec.Extractable {
			rec.Auth = strings.Repeat("ab", objectAuthSize)
		}
		return rec, blob
	}
	for _, typ := range []string{"ecc-p256", "ecc-p384", "rsa-2048"} {
		kt, err := catalog.Lookup(typ, false)
		if err != nil {
			t.Fatal(err)
		}
		unique := review60Unique(t, kt)
		for _, r := range rules {
			rec, tmpl := made(kt, r)
			tmpl.Unique = unique
			rec, blob := finish(rec, tmpl)
			if err := rec.checkCarried(blob, in); err != nil {
				t.Errorf("%s %s: a key createKey made is refused: %v", typ, r.name, err)
			}
			if !r.extractable {
				continue
			}
			// The record names another rule than the key's policy.
			for _, edit := range []struct{ what, to, by string }{
				{"another authority", "", string(otherPEM)},
				{"another peer", hex.EncodeToString(otherPeer), ""},
				{"no rule", "", ""},
			} {
				if edit.to == rec.DupTo && edit.by == rec.DupBy {
					continue
				}
				bad := rec
				bad.DupTo, bad.DupBy = edit.to, edit.by
				if err := bad.checkCarried(blob, in); err == nil {
					t.Errorf("%s %s: a record naming %s was adopted", typ, r.name, edit.what)
				}
			}
		}
		// import-blob: the template checkImportPublic holds the file to.
		for _, extractable := range []bool{false, true} {
			expr, err := keyPolicy(in, tpm2.TPMCCSign, extractable)
			if err != nil {
				t.Fatal(err)
			}
			digest, _ := expr.Digest(tpm2.TPMAlgSHA256)
			pub := in.state.child(kt.CreatedTemplate(catalog.UsageSign, digest, extractable))
			pub.Unique = unique
			if _, _, _, err := checkImportPublic(pub, in); err != nil {
				t.Fatalf("%s: checkImportPublic: %v", typ, err)
			}
			rec, blob := finish(keyRecord{Name: "k", Kind: api.KindCreated, Type: kt.Name, Usage: catalog.UsageSign, Extractable: extractable, PK: "000b00"}, pub)
			rec.Auth = "" // importKeyBlob keeps none
			if err := rec.checkCarried(blob, in); err != nil {
				t.Errorf("%s import-blob (extractable %v): refused: %v", typ, extractable, err)
			}
		}
		// A SHA-384 nameAlg and policy: TypeOf's approved hash, not provd's.
		sha384 := policy.Policy{policy.AuthValue{}}
		d384, err := officer384(sha384)
		if err != nil {
			t.Fatal(err)
		}
		pub := in.state.child(kt.CreatedTemplate(catalog.UsageSign, d384, false))
		pub.NameAlg = tpm2.TPMAlgSHA384
		pub.Unique = unique
		if _, _, err := catalog.TypeOf(pub); err != nil {
			t.Logf("%s: TypeOf refuses a SHA-384 nameAlg: %v", typ, err)
		}
		rec, blob := finish(keyRecord{Name: "k", Kind: api.KindCreated, Type: kt.Name, Usage: catalog.UsageSign, PK: "000b00"}, pub)
		if err := rec.checkCarried(blob, in); err == nil {
			t.Errorf("%s: a SHA-384 nameAlg key was adopted", typ)
		}
		if _, _, _, err := checkImportPublic(pub, in); err == nil {
			t.Errorf("%s: import-blob took a SHA-384 nameAlg key", typ)
		}
	}
}

// officer384 is p's digest under SHA-384.
func officer384(p policy.Policy) ([]byte, error) { return p.Digest(tpm2.TPMAlgSHA384) }

// FLAW (a regression of a679d3a; failed before the mend): a duplication authority's key kept in the state by the release
// before review 58's mend is refused as tampered after the upgrade.
// `key create --duplicable-by FILE` and `provision --duplicable-by FILE`
// store the file as given (pkState.DupBy, keyRecord.DupBy, and the dup
// file's and the moved state's copies), and the rule is parsed again at
// every use of the key (useKeyIn), of the PK (loadedPK.usePolicy) and at
// every duplication. Before a679d3a ParsePublicKeyPEM (onePEM:
// pem.Decode) took a PUBLIC KEY block after lines of text, as OpenSSL does
// (a comment naming the authority, `openssl pkey -text_pub` style notes,
// "subject=..." lines), and such a file was accepted and stored;
// internal/pemblock now refuses anything but whitespace before the block.
// Attacker: none (the operator's own upgrade, A3 not needed); gain for
// nobody, loss for the fleet: every key born --duplicable-by such a file,
// and on a PK provisioned --duplicable-by such a file every key of the
// device, fails as ErrTampered (exit 14) until the state is rebuilt,
// though the file holds one block and OpenSSL reads the same key. The
// text before the block is not what review 58 refused (a hidden second
// block). Fix: store the authority's key re-encoded (MarshalPublicKeyPEM)
// at birth, and read a stored rule with the old rule (text before the
// one block allowed) or migrate it once; more generally let pemblock allow
// text without "-----" before the single BEGIN line, as OpenSSL does.
func TestReview60StoredDupByOfThePreviousRelease(t *testing.T) {
	authority, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	clean, err := policy.MarshalPublicKeyPEM(authority.Public())
	if err != nil {
		t.Fatal(err)
	}
	stored := "# fleet duplication authority, key 2026-1\n" + string(clean)
	// What the release before a679d3a accepted: onePEM.
	blk, rest := pem.Decode([]byte(stored))
	if blk == nil || blk.Type != "PUBLIC KEY" || strings.TrimSpace(string(rest)) != "" {
		t.Fatal("the stored authority file is not one the previous release took")
	}
	if _, err := (keyRecord{Name: "k", DupBy: stored}).rule(); err != nil {
		t.Errorf("a key's duplication authority stored by the previous release: %v; every use of the key now fails", err)
	}
	if _, err := (pkState{DupBy: stored}).rule(); err != nil {
		t.Errorf("a movable PK's duplication authority stored by the previous release: %v; every key of the device now fails", err)
	}
}

// FLAW (a regression of a679d3a; failed before the mend): an EK certificate file written by `openssl x509 -text -out ek.pem`
// (the certificate's dump, then its one CERTIFICATE block), which OpenSSL
// and the release before a679d3a read (pem.Decode skipped the text), is
// refused by `provd tpm identity --ek-cert` (ekCertificate: "data before
// the PEM block", exit 2). Attacker: none; loss: the operator's EK
// certificate as a manufacturer's portal or a colleague's openssl command
// gave it. One BEGIN line and nothing after the block already keep a
// second, hidden certificate out (review 58). Fix: pemblock.Decode allows
// text without "-----" before the single BEGIN line, as OpenSSL does.
func TestReview60EKCertWrittenWithOpenSSLText(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ek"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, k.Public(), k)
	if err != nil {
		t.Fatal(err)
	}
	dump := "Certificate:\n    Data:\n        Version: 3 (0x2)\n        Serial Number: 1 (0x1)\n        Signature Algorithm: ecdsa-with-SHA256\n        Subject: CN = ek\n"
	file := append([]byte(dump), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
	got, _, err := ekCertificate(nil, file)
	if err != nil {
		t.Fatalf("an `openssl x509 -text` EK certificate file: %v", err)
	}
	if !bytes.Equal(got, der) {
		t.Fatal("another certificate than the file's")
	}
}

// FLAW (low; failed before the mend): checkCarried still adopts created-key records provd never
// writes under a movable PK, as long as the blob is a key provd makes:
// kind "imported" (importKey refuses a movable PK: errMovableBackup; so a
// moved PK never has one), a duplication rule (DupTo, DupBy) on a key that
// never leaves (createKey makes every key with a rule extractable), and an
// authorization value of its own on it (only extractable keys have one).
// Attacker: root on the origin (A4) editing the records before dup export
// --pk. Gain: the receiver's key list says a TPM-born key came from a
// PKCS#8 backup (its private part once outside a TPM: what an officer
// reads when deciding what a compromise exposed) and export-blob refuses
// it; a key with an Auth fails at its first use as tampered, long after
// the state was taken as provd's (the standard review 57 set). Fix: in
// checkCarried refuse any kind but created (and derived) for a key with a
// blob, DupTo/DupBy unless Extractable, and require Auth to be
// objectAuthSize bytes of hex exactly when Extractable and "" otherwise
// (import-blob keys aside: record them as extractable with no Auth, or
// hold Auth to the blob's origin).
func TestReview60CarriedRecordsProvdNeverWrites(t *testing.T) {
	in, _ := review60Inputs(t)
	kt, err := catalog.Lookup("ecc-p256", false)
	if err != nil {
		t.Fatal(err)
	}
	expr, err := keyPolicyFor(in, tpm2.TPMCCSign, false, dupRule{}, nil)
	if err != nil {
		t.Fatal(err)
	}
	digest, _ := expr.Digest(tpm2.TPMAlgSHA256)
	pub := in.state.child(kt.CreatedTemplate(catalog.UsageSign, digest, false))
	pub.Unique = review60Unique(t, kt)
	name, _ := tpm2.ObjectName(&pub)
	blob := &tpm.Blob{Public: tpm2.New2B(pub)}
	good := keyRecord{Name: "k", Kind: api.KindCreated, Type: kt.Name, Usage: catalog.UsageSign, PK: "000b00",
		Object: hex.EncodeToString(name.Buffer), Public: tpm2.Marshal(blob.Public), Policy: hex.EncodeToString(digest)}
	if err := good.checkCarried(blob, in); err != nil {
		t.Fatalf("the key as createKey records it: %v", err)
	}
	for what, edit := range map[string]func(*keyRecord){
		"kind imported":                      func(r *keyRecord) { r.Kind = api.KindImported },
		"a bound peer on a fixed key":        func(r *keyRecord) { r.DupTo = hex.EncodeToString(append([]byte{0, 0x0b}, make([]byte, 32)...)) },
		"an authority on a fixed key":        func(r *keyRecord) { r.DupBy = in.state.DupBy },
		"an authorization value of its own":  func(r *keyRecord) { r.Auth = strings.Repeat("cd", objectAuthSize) },
		"an authorization value of no shape": func(r *keyRecord) { r.Auth = "zz" },
	} {
		r := good
		edit(&r)
		if err := r.checkCarried(blob, in); err == nil {
			t.Errorf("a record with %s, which provd never writes under a movable PK, was adopted", what)
		}
	}
}
