package attest_test

import (
	"bytes"
	"crypto"
	"crypto/elliptic"
	"crypto/x509"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest"
)

// Every parser of untrusted bytes has a fuzz target seeded from its table.
// Each must never panic and never accept what it then cannot account for.

func FuzzParseEventLog(f *testing.F) {
	for _, c := range malformedLogs() {
		f.Add(c.log)
	}
	for _, loc := range []byte{0, 3} {
		b, err := sampleLog(f, loc).MarshalBinary()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		l, err := attest.ParseEventLog(b)
		if err != nil {
			if !errors.Is(err, attest.ErrBadEvidence) {
				t.Fatalf("ParseEventLog error without a sentinel: %v", err)
			}
			if _, oerr := attest.ParseOwnedEventLog(bytes.Clone(b)); oerr == nil {
				t.Fatal("ParseOwnedEventLog takes what ParseEventLog refuses")
			}
			return
		}
		// What parses marshals back to exactly the same bytes: nothing in
		// the input is skipped or reinterpreted.
		again, err := l.MarshalBinary()
		if err != nil || !bytes.Equal(again, b) {
			t.Fatalf("round trip differs (%v)", err)
		}
		// Parsed in place, the same log.
		owned, err := attest.ParseOwnedEventLog(bytes.Clone(b))
		if err != nil {
			t.Fatalf("ParseOwnedEventLog refuses what ParseEventLog takes: %v", err)
		}
		if again, err := owned.MarshalBinary(); err != nil || !bytes.Equal(again, b) {
			t.Fatalf("owned round trip differs (%v)", err)
		}
		for _, opts := range []attest.Options{{}, {AllowSHA1: true}} {
			if vals, err := l.Replay(opts); err == nil {
				for bank, pcrs := range vals {
					if len(pcrs) != 24 {
						t.Fatalf("bank %v replayed %d PCRs", bank, len(pcrs))
					}
				}
			}
		}
	})
}

// FuzzVerifyAttest signs each input with a fixed AK, so that the fuzzed
// bytes get past the signature check and reach the TPMS_ATTEST parser and
// every check after it.
func FuzzVerifyAttest(f *testing.F) {
	ak := newECCAK(f, elliptic.P256(), tpm2.TPMAlgSHA256)
	nonce := bytes.Repeat([]byte{0x4e}, 32)
	for _, c := range quoteCases(f, false) {
		f.Add(c.attest)
	}
	for _, c := range certifyCases(f) {
		f.Add(c.attest)
	}
	// Structures of this AK with this nonce, so that mutations start from
	// evidence that verifies.
	v := pcrVals()[tpm2.TPMAlgSHA256]
	f.Add(tpm2.Marshal(attestFor(f, ak, nonce, tpm2.TPMSTAttestQuote,
		quoteInfo(selection(tpm2.TPMAlgSHA256, 0, 7), pcrDigest(f, crypto.SHA256, v[0], v[7])))))
	f.Add(tpm2.Marshal(attestFor(f, ak, nonce, tpm2.TPMSTAttestCertify, certifyInfo(ak.name(f)))))
	f.Fuzz(func(t *testing.T, a []byte) {
		sig := ak.sign(t, a, 0)
		q, err := attest.VerifyQuote(ak.pub, a, sig, nonce, attest.Options{AllowSHA1: true})
		if err == nil {
			if q.Attest.Type != tpm2.TPMSTAttestQuote || len(q.Digest) != 32 {
				t.Fatalf("accepted quote %+v", q)
			}
			_ = q.CheckPCRs(pcrVals())
			_ = attest.ComparePCRs(q.Selection, pcrVals(), pcrVals())
		}
		c, err := attest.VerifyCertify(ak.pub, a, sig, nonce, ak.pub, attest.Options{})
		if err == nil && !bytes.Equal(c.Name, ak.name(t)) {
			t.Fatalf("accepted certification of %x", c.Name)
		}
	})
}

func FuzzVerifySignature(f *testing.F) {
	ak := newECCAK(f, elliptic.P256(), tpm2.TPMAlgSHA256)
	msg := []byte("signed by a TPM")
	f.Add(ak.sign(f, msg, 0))
	f.Add(ak.sign(f, msg, tpm2.TPMAlgSHA384))
	f.Add(ak.sign(f, msg, tpm2.TPMAlgSHA1))
	for _, c := range quoteCases(f, false) {
		f.Add(c.sig)
	}
	f.Fuzz(func(t *testing.T, sig []byte) {
		_ = attest.VerifySignature(ak.priv.Public(), msg, sig)
	})
}

func FuzzParseTCGSAN(f *testing.F) {
	for _, der := range [][]byte{swtpmEKRSA, swtpmEKECC} {
		cert, err := x509.ParseCertificate(der)
		if err != nil {
			f.Fatal(err)
		}
		for _, e := range cert.Extensions {
			if e.Id.Equal(oidSAN) {
				f.Add(e.Value)
			}
		}
	}
	f.Add(san(f, tcgDirName(f)))
	f.Add(san(f, tcgDirName(f), tcgDirName(f)))
	f.Add(san(f, dirName(f, oidManufacturer, "id:1", oidModel, 7, oidVersion, "v")))
	f.Fuzz(func(t *testing.T, ext []byte) {
		m, mo, v, err := attest.ParseTCGSAN(ext)
		if err != nil && (m != "" || mo != "" || v != "") {
			t.Fatalf("identity %q %q %q reported with %v", m, mo, v, err)
		}
	})
}

func FuzzVerifyEKCertificate(f *testing.F) {
	f.Add(swtpmEKRSA)
	f.Add(swtpmEKECC)
	for _, c := range ekCases(f) {
		f.Add(c.der)
	}
	roots, err := attest.CertPoolFromPEM(swtpmRootPEM)
	if err != nil {
		f.Fatal(err)
	}
	issuers, err := attest.CertPoolFromPEM(swtpmIssuerPEM)
	if err != nil {
		f.Fatal(err)
	}
	opts := attest.Options{Now: at(testNow), Roots: roots, Intermediates: issuers}
	f.Fuzz(func(t *testing.T, der []byte) {
		ek, err := attest.VerifyEKCertificate(der, opts)
		if err == nil && (ek.PublicKey == nil || len(ek.Chain) < 2) {
			t.Fatalf("accepted %+v", ek)
		}
	})
}

// FuzzCheckEvent: a provd event's data comes from a log anyone with root may
// edit: CheckEvent never panics, and refuses with attest.ErrBadEvidence.
func FuzzCheckEvent(f *testing.F) {
	f.Add([]byte("FDVP\x10\x00\x00\x00provd firmware v"), []byte{1})
	f.Add([]byte("FDVP\x2a\x00\x00\x00provd firmware anchor: officer 00, class a"), make([]byte, 32))
	f.Add([]byte("FDVP\x00\x00\x00\x00"), make([]byte, 32))
	f.Fuzz(func(t *testing.T, data, digest []byte) {
		e := attest.Event{PCR: 12, Type: attest.EVEventTag, Data: data, Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: digest}}}
		if err := attest.CheckProvdEvent(e); err != nil && !errors.Is(err, attest.ErrBadEvidence) {
			t.Fatalf("error without ErrBadEvidence: %v", err)
		}
	})
}
