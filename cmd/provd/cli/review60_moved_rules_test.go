package cli_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"os"
	"strings"
	"testing"
)

// Held: review 58's stricter checkCarried (the key's policy for its
// record's rule, the created template under a movable PK) and TypeOf
// (approved nameAlg, NULL scheme, a public key PublicKey takes) still
// adopt, through the command tree, the created keys provd makes under a
// movable PK with each duplication rule: bound at birth to the peer that
// receives the PK (--duplicable-to, encryptedDuplication and the
// PolicyDuplicationSelect branch), approved by an authority
// (--duplicable-by, on a P-384 key), extractable under the officer (an
// RSA-2048 key, exponent 0 in its area), and one that never leaves. B
// adopts the PK with provision --from, lists each key, serves A's public
// key for it and signs with it in its TPM.
func TestReview60MovedKeysWithRulesAreAdopted(t *testing.T) {
	t.Parallel()
	f, _ := review57Fleet(t)
	a, b, p := f.a, f.b, f.p
	stA := f.provision(t, a, "a", append([]string{"--ek-ca", f.caAB, "--duplicable-to", p("b.peer.json"), "--peer-pk", f.stB.PKName}, f.proven...)...)

	authority, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, _ := x509.MarshalPKIXPublicKey(authority.Public())
	f.write(t, "authority.pem", pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))

	a(0, append([]string{"key", "create", "bound", "--type", "ecc-p256", "--duplicable-to", p("b.peer.json"), "--peer-pk", f.stB.PKName, "--ek-ca", f.caB}, f.proven...)...)
	a(0, "key", "create", "byauth", "--type", "ecc-p384", "--extractable", "--duplicable-by", p("authority.pem"))
	a(0, "key", "create", "rsaext", "--type", "rsa-2048", "--extractable")
	a(0, "key", "create", "fixed", "--type", "ecc-p256")
	keys := []string{"bound", "byauth", "rsaext", "fixed"}
	for _, k := range keys {
		a(0, "key", "pub", k, "--out", p(k+".a.pem"))
	}
	a(0, append([]string{"key", "approve", "--officer", f.officerKey, "--pk-policy", stA.PolicyDigest, "--dup-to", p("b.peer.json"), "--peer-pk", f.stB.PKName,
		"--object-name", stA.PKName, "--out", p("pk.take.json")}, f.proven...)...)
	a(0, "dup", "export", "--pk", "--to", p("b.peer.json"), "--peer-pk", f.stB.PKName, "--ek-ca", f.caB, "--out", p("pk.dup"))
	b(0, "provision", "--from", p("pk.dup"), "--approval", p("pk.take.json"), "--force")

	list := b(0, "key", "list")
	f.write(t, "msg", []byte("signed on B with a moved key"))
	for _, k := range keys {
		if !strings.Contains(list, k) {
			t.Errorf("%s not adopted:\n%s", k, list)
			continue
		}
		b(0, "key", "pub", k, "--out", p(k+".b.pem"))
		ka, _ := os.ReadFile(p(k + ".a.pem"))
		kb, _ := os.ReadFile(p(k + ".b.pem"))
		if string(ka) != string(kb) {
			t.Errorf("%s: B serves another public key than A's", k)
		}
		b(0, "key", "sign", k, "--in", p("msg"), "--out", p(k+".sig"))
	}
}
