package attest_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509/pkix"
	"encoding/asn1"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest"
	"github.com/provd/provd/test/swtpmtest"
)

// TestReview51FailedKindExact: Held: a failed event (its digests the failed
// measurement) passes CheckProvdEvent only with a text of FailedText and
// exactly one of FailureKinds: a kind with a trailing newline, U+2028,
// NUL, a space, a case change, two kinds, or nothing after the prefix is
// refused (ErrBadEvidence).
func TestReview51FailedKindExact(t *testing.T) {
	ev := func(text string) attest.Event {
		return attest.Event{PCR: 12, Type: attest.EVEventTag, Data: attest.TaggedEvent(text),
			Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: attest.FailedMeasurement(crypto.SHA256)}}}
	}
	for _, k := range attest.FailureKinds {
		if err := attest.CheckProvdEvent(ev(attest.FailedText + k)); err != nil {
			t.Errorf("kind %q refused: %v", k, err)
		}
	}
	for _, s := range []string{"", "image digest\n", "image digest\u2028PCR 12 verified", "image digest\x00", "image digest ",
		"Image digest", "image digestrollback", " rollback", "rollback\r", "TPM or I/O error\x1b[2K"} {
		if err := attest.CheckProvdEvent(ev(attest.FailedText + s)); !errors.Is(err, attest.ErrBadEvidence) {
			t.Errorf("failed text %q: %v, want ErrBadEvidence", attest.FailedText+s, err)
		}
	}
}

// TestReview51EKHandledCriticalExtensions: Held (regression check of the
// review 50 mend): an EK certificate whose critical extensions are all ones
// x509 handles (key usage, basic constraints, extended key usage with the
// TCG EK OID, certificate policies) beside a critical TCG SAN is still
// accepted by ParseEKCertificate with its TPM identity; and swtpm's real EK
// certificates (critical TCG SAN) still parse.
func TestReview51EKHandledCriticalExtensions(t *testing.T) {
	root := newCA(t, "review 51 root", nil)
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	mustDER := func(v any) []byte {
		b, err := asn1.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	type policyInfo struct{ ID asn1.ObjectIdentifier }
	exts := []pkix.Extension{
		sanExt(true, san(t, tcgDirName(t))),
		{Id: oid(2, 5, 29, 15), Critical: true, Value: mustDER(asn1.BitString{Bytes: []byte{0x20}, BitLength: 3})},
		{Id: oid(2, 5, 29, 19), Critical: true, Value: mustDER(struct{}{})},
		{Id: oid(2, 5, 29, 37), Critical: true, Value: mustDER([]asn1.ObjectIdentifier{oid(2, 23, 133, 8, 1)})},
		{Id: oid(2, 5, 29, 32), Critical: true, Value: mustDER([]policyInfo{{oid(2, 23, 133, 2, 1)}})},
	}
	der := newEK(t, root, k.Public(), testNow.AddDate(-1, 0, 0), testNow.AddDate(10, 0, 0), exts...)
	ek, err := attest.ParseEKCertificate(der)
	if err != nil {
		t.Fatalf("only handled critical extensions and a critical TCG SAN: %v", err)
	}
	if ek.Manufacturer == "" || !ek.HasEKUsage() {
		t.Errorf("identity %q %q %q, EK usage %v", ek.Manufacturer, ek.Model, ek.Version, ek.HasEKUsage())
	}
	if _, err := attest.VerifyEKCertificate(der, attest.Options{Now: at(testNow), Roots: root.pool}); err != nil {
		t.Errorf("VerifyEKCertificate: %v", err)
	}

	env := swtpmtest.Start(t)
	for _, nv := range []tpm2.TPMHandle{0x01c00002, 0x01c00016} {
		der, err := env.TPM.ReadNV(nv)
		if err != nil {
			t.Fatalf("read NV 0x%08x: %v", uint32(nv), err)
		}
		ek, err := attest.ParseEKCertificate(der)
		if err != nil {
			t.Errorf("swtpm's EK certificate at 0x%08x: %v", uint32(nv), err)
			continue
		}
		if ek.Manufacturer == "" || ek.Model == "" {
			t.Errorf("swtpm EK 0x%08x identity %q %q", uint32(nv), ek.Manufacturer, ek.Model)
		}
	}
}
