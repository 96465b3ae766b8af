package attest_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509/pkix"
	"errors"
	"testing"

	"github.com/provd/provd/attest"
)

// Review 50: critical extensions of EK certificates.

// FLAW (failed before the mend): ParseEKCertificate, the trust-on-first-use reader ("strictly, as
// VerifyEKCertificate does"), accepts an EK certificate carrying a critical
// extension nobody understands, with or without the TCG SAN, and returns
// it as an EK; docs/threat-model.md says any unhandled critical extension
// other than the TCG SAN is refused (RFC 5280 4.2: a certificate with an
// unrecognized critical extension must be rejected). VerifyEKCertificate
// refuses it only because x509's Verify does, so the TOFU path, which
// never verifies, keeps it (agent/identity.go, agent/peer.go).
func TestReview50ParseEKCertificateUnknownCritical(t *testing.T) {
	root := newCA(t, "review 50 root", nil)
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	from, until := testNow.AddDate(-1, 0, 0), testNow.AddDate(10, 0, 0)
	otherCritical := pkix.Extension{Id: oid(1, 3, 6, 1, 4, 1, 99999, 50), Critical: true, Value: []byte{5, 0}}
	tcg := sanExt(true, san(t, tcgDirName(t)))
	for name, der := range map[string][]byte{
		"unknown critical extension alone":    newEK(t, root, k.Public(), from, until, otherCritical),
		"TCG SAN and an unknown critical one": newEK(t, root, k.Public(), from, until, tcg, otherCritical),
	} {
		// The verifying path refuses it (held).
		if _, err := attest.VerifyEKCertificate(der, attest.Options{Now: at(testNow), Roots: root.pool}); !errors.Is(err, attest.ErrUntrustedEK) {
			t.Errorf("%s: VerifyEKCertificate: %v, want ErrUntrustedEK", name, err)
		}
		// The parse-only path must refuse it too.
		if ek, err := attest.ParseEKCertificate(der); err == nil {
			t.Errorf("%s: ParseEKCertificate accepted it (unhandled critical extensions %v)", name, ek.Cert.UnhandledCriticalExtensions)
		}
	}
}
