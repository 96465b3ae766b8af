package attest_test

import (
	"bytes"
	"crypto"
	"crypto/elliptic"
	"encoding/binary"
	"errors"
	"math/big"
	"runtime"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest"
)

// Review 50: forged or malformed quotes from a remote device (or A1).

// review50Quote marshals a quote by ak over sel with the given digest.
func review50Quote(t *testing.T, ak softAK, nonce []byte, sel tpm2.TPMLPCRSelection, digest []byte) []byte {
	t.Helper()
	return tpm2.Marshal(attestFor(t, ak, nonce, tpm2.TPMSTAttestQuote, quoteInfo(sel, digest)))
}

// Held: a quote over the SHA-1 bank is refused when the options do not
// allow SHA-1, even when the SHA-256 bank is also quoted; a bank selected
// twice (with different bitmaps, so that CheckPCRs and Covers could read
// different ones) and a bitmap naming PCR 24 or above are refused.
func TestReview50QuoteSelectionShapes(t *testing.T) {
	ak := newECCAK(t, elliptic.P256(), tpm2.TPMAlgSHA256)
	nonce := mustNonce(t)
	d := pcrDigest(t, crypto.SHA256, make([]byte, 32))
	sel := func(s ...tpm2.TPMSPCRSelection) tpm2.TPMLPCRSelection {
		return tpm2.TPMLPCRSelection{PCRSelections: s}
	}
	for _, tc := range []struct {
		name string
		sel  tpm2.TPMLPCRSelection
		opts attest.Options
		want error
	}{
		{"SHA-1 only", sel(tpm2.TPMSPCRSelection{Hash: tpm2.TPMAlgSHA1, PCRSelect: []byte{0x80, 0, 0}}), attest.Options{}, attest.ErrUnsupportedAlgorithm},
		{"SHA-1 beside SHA-256", sel(
			tpm2.TPMSPCRSelection{Hash: tpm2.TPMAlgSHA256, PCRSelect: []byte{0x80, 0, 0}},
			tpm2.TPMSPCRSelection{Hash: tpm2.TPMAlgSHA1, PCRSelect: []byte{0, 0, 0}}), attest.Options{}, attest.ErrUnsupportedAlgorithm},
		{"SHA-256 twice, different bitmaps", sel(
			tpm2.TPMSPCRSelection{Hash: tpm2.TPMAlgSHA256, PCRSelect: []byte{0x80, 0, 0}},
			tpm2.TPMSPCRSelection{Hash: tpm2.TPMAlgSHA256, PCRSelect: []byte{0x01, 0, 0}}), attest.Options{}, attest.ErrBadEvidence},
		{"SHA-256 twice, second empty", sel(
			tpm2.TPMSPCRSelection{Hash: tpm2.TPMAlgSHA256, PCRSelect: []byte{0x80, 0, 0}},
			tpm2.TPMSPCRSelection{Hash: tpm2.TPMAlgSHA256}), attest.Options{}, attest.ErrBadEvidence},
		{"bitmap of 4 bytes naming PCR 24", sel(tpm2.TPMSPCRSelection{Hash: tpm2.TPMAlgSHA256, PCRSelect: []byte{0x80, 0, 0, 1}}), attest.Options{}, attest.ErrBadEvidence},
		{"bitmap of 4 bytes, last zero", sel(tpm2.TPMSPCRSelection{Hash: tpm2.TPMAlgSHA256, PCRSelect: []byte{0x80, 0, 0, 0}}), attest.Options{}, attest.ErrBadEvidence},
		{"unknown bank", sel(tpm2.TPMSPCRSelection{Hash: 0x0099, PCRSelect: []byte{0x80, 0, 0}}), attest.Options{}, attest.ErrUnsupportedAlgorithm},
		{"only empty bitmaps", sel(tpm2.TPMSPCRSelection{Hash: tpm2.TPMAlgSHA256, PCRSelect: []byte{0, 0, 0}}), attest.Options{}, attest.ErrBadEvidence},
	} {
		a := review50Quote(t, ak, nonce, tc.sel, d)
		if _, err := attest.VerifyQuote(ak.pub, a, ak.sign(t, a, 0), nonce, tc.opts); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
	}
}

// Held: RequirePCRs names a bank: PCR 7 quoted in SHA-384 does not cover
// SHA-256 PCR 7, and an index outside 0..23 can never be covered.
func TestReview50RequiredPCRInAnotherBank(t *testing.T) {
	ak := newECCAK(t, elliptic.P256(), tpm2.TPMAlgSHA256)
	nonce := mustNonce(t)
	a := review50Quote(t, ak, nonce, selection(tpm2.TPMAlgSHA384, 7), pcrDigest(t, crypto.SHA256, make([]byte, 48)))
	sig := ak.sign(t, a, 0)
	for _, req := range []map[tpm2.TPMIAlgHash][]int{
		{tpm2.TPMAlgSHA256: {7}},
		{tpm2.TPMAlgSHA384: {7, 24}},
		{tpm2.TPMAlgSHA384: {-1}},
	} {
		if _, err := attest.VerifyQuote(ak.pub, a, sig, nonce, attest.Options{RequirePCRs: req}); !errors.Is(err, attest.ErrPCRMismatch) {
			t.Errorf("require %v: %v, want ErrPCRMismatch", req, err)
		}
	}
	if _, err := attest.VerifyQuote(ak.pub, a, sig, nonce, attest.Options{RequirePCRs: map[tpm2.TPMIAlgHash][]int{tpm2.TPMAlgSHA384: {7}}}); err != nil {
		t.Errorf("the covered requirement: %v", err)
	}
}

// Held: a signed structure whose magic is not TPM_GENERATED_VALUE, or whose
// type is not ST_ATTEST_QUOTE (a certify structure, or a quote-shaped body
// under another type), is refused by VerifyQuote though its signature is
// good.
func TestReview50QuoteMagicAndType(t *testing.T) {
	ak := newECCAK(t, elliptic.P256(), tpm2.TPMAlgSHA256)
	nonce := mustNonce(t)
	good := review50Quote(t, ak, nonce, selection(tpm2.TPMAlgSHA256, 7), pcrDigest(t, crypto.SHA256, make([]byte, 32)))
	badMagic := bytes.Clone(good)
	binary.BigEndian.PutUint32(badMagic, 0xff544346)
	typed := func(typ tpm2.TPMST) []byte {
		b := bytes.Clone(good)
		binary.BigEndian.PutUint16(b[4:], uint16(typ))
		return b
	}
	certify := tpm2.Marshal(attestFor(t, ak, nonce, tpm2.TPMSTAttestCertify, certifyInfo(ak.name(t))))
	for name, a := range map[string][]byte{
		"magic off by one":               badMagic,
		"certify structure":              certify,
		"quote body, type session audit": typed(tpm2.TPMSTAttestSessionAudit),
		"quote body, type 0":             typed(0),
		"quote body, type certify":       typed(tpm2.TPMSTAttestCertify),
	} {
		if _, err := attest.VerifyQuote(ak.pub, a, ak.sign(t, a, 0), nonce, attest.Options{}); !errors.Is(err, attest.ErrBadEvidence) {
			t.Errorf("%s: %v, want ErrBadEvidence", name, err)
		}
	}
	if _, err := attest.VerifyQuote(ak.pub, good, ak.sign(t, good, 0), nonce, attest.Options{}); err != nil {
		t.Fatalf("the good quote: %v", err)
	}
}

// Held: nonces of 15 and 65 bytes are refused before anything else, and a
// quote whose extraData is the nonce plus one byte, or a prefix of it, is
// ErrNonce.
func TestReview50QuoteNonceLengths(t *testing.T) {
	ak := newECCAK(t, elliptic.P256(), tpm2.TPMAlgSHA256)
	d := pcrDigest(t, crypto.SHA256, make([]byte, 32))
	sel := selection(tpm2.TPMAlgSHA256, 7)
	for _, n := range []int{0, 15, 65, 1024} {
		nonce := bytes.Repeat([]byte{7}, n)
		a := review50Quote(t, ak, nonce, sel, d)
		if _, err := attest.VerifyQuote(ak.pub, a, ak.sign(t, a, 0), nonce, attest.Options{}); !errors.Is(err, attest.ErrNonce) {
			t.Errorf("nonce of %d bytes: %v, want ErrNonce", n, err)
		}
	}
	nonce := mustNonce(t)
	for name, extra := range map[string][]byte{
		"nonce and a byte": append(bytes.Clone(nonce), 0),
		"nonce's prefix":   nonce[:16],
		"empty":            nil,
	} {
		a := review50Quote(t, ak, extra, sel, d)
		if _, err := attest.VerifyQuote(ak.pub, a, ak.sign(t, a, 0), nonce, attest.Options{}); !errors.Is(err, attest.ErrNonce) {
			t.Errorf("%s: %v, want ErrNonce", name, err)
		}
	}
}

// ecdsaSig marshals an ECDSA TPMT_SIGNATURE with the given r and s bytes.
func ecdsaSig(hash tpm2.TPMIAlgHash, r, s []byte) []byte {
	return tpm2.Marshal(tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgECDSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
		Hash: hash, SignatureR: tpm2.TPM2BECCParameter{Buffer: r}, SignatureS: tpm2.TPM2BECCParameter{Buffer: s}})})
}

// Held: r or s of 0, equal to the curve order, or r+n/s+n (the same value
// modulo n, longer than the curve), a 33-byte r with a leading zero, and a
// signature under another hash than the key's scheme, are all refused. A
// high-S signature (r, n-s) of the genuine structure verifies, as Go's ECDSA
// allows (malleability of the signature, not a forgery: freshness rests on
// the nonce), but it does not verify any other structure.
func TestReview50ECDSAEncodings(t *testing.T) {
	ak := newECCAK(t, elliptic.P256(), tpm2.TPMAlgSHA256)
	nonce := mustNonce(t)
	a := review50Quote(t, ak, nonce, selection(tpm2.TPMAlgSHA256, 7), pcrDigest(t, crypto.SHA256, make([]byte, 32)))
	good := ak.sign(t, a, 0)
	sig, err := tpm2.Unmarshal[tpm2.TPMTSignature](good)
	if err != nil {
		t.Fatal(err)
	}
	e, _ := sig.Signature.ECDSA()
	r, s := e.SignatureR.Buffer, e.SignatureS.Buffer
	n := elliptic.P256().Params().N
	num := func(b []byte) *big.Int { return new(big.Int).SetBytes(b) }
	add := func(b []byte, v *big.Int) []byte { return new(big.Int).Add(num(b), v).Bytes() }
	zero32 := make([]byte, 32)
	for name, bad := range map[string][]byte{
		"r = 0":               ecdsaSig(tpm2.TPMAlgSHA256, zero32, s),
		"s = 0":               ecdsaSig(tpm2.TPMAlgSHA256, r, zero32),
		"r empty":             ecdsaSig(tpm2.TPMAlgSHA256, nil, s),
		"r = n":               ecdsaSig(tpm2.TPMAlgSHA256, n.FillBytes(make([]byte, 32)), s),
		"s = n":               ecdsaSig(tpm2.TPMAlgSHA256, r, n.FillBytes(make([]byte, 32))),
		"r + n":               ecdsaSig(tpm2.TPMAlgSHA256, add(r, n), s),
		"s + n":               ecdsaSig(tpm2.TPMAlgSHA256, r, add(s, n)),
		"r with a leading 00": ecdsaSig(tpm2.TPMAlgSHA256, append([]byte{0}, r...), s),
		"hash SHA-384":        ecdsaSig(tpm2.TPMAlgSHA384, r, s),
		"hash SHA-1":          ecdsaSig(tpm2.TPMAlgSHA1, r, s),
		"trailing byte":       append(bytes.Clone(good), 0),
	} {
		if _, err := attest.VerifyQuote(ak.pub, a, bad, nonce, attest.Options{}); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	highS := ecdsaSig(tpm2.TPMAlgSHA256, r, new(big.Int).Sub(n, num(s)).FillBytes(make([]byte, 32)))
	if _, err := attest.VerifyQuote(ak.pub, a, highS, nonce, attest.Options{}); err != nil {
		t.Errorf("(r, n-s) of the genuine quote: %v", err)
	}
	other := review50Quote(t, ak, nonce, selection(tpm2.TPMAlgSHA256, 7, 23), pcrDigest(t, crypto.SHA256, make([]byte, 32), bytes.Repeat([]byte{0xff}, 32)))
	if _, err := attest.VerifyQuote(ak.pub, other, highS, nonce, attest.Options{}); !errors.Is(err, attest.ErrSignature) {
		t.Errorf("(r, n-s) over another quote: %v, want ErrSignature", err)
	}
	// A P-384 AK's signature with r and s of P-256's size but P-384's
	// value range is still only a signature of its own structure.
	ak384 := newECCAK(t, elliptic.P384(), tpm2.TPMAlgSHA384)
	a384 := review50Quote(t, ak384, nonce, selection(tpm2.TPMAlgSHA256, 7), pcrDigest(t, crypto.SHA384, make([]byte, 32)))
	if _, err := attest.VerifyQuote(ak384.pub, a384, good, nonce, attest.Options{}); err == nil {
		t.Error("a P-256 signature accepted for a P-384 AK")
	}
}

// Held: a PCR digest of another size than the scheme's hash is refused; a
// selection count of 2^32-1 in a signed structure is refused without
// allocating for it; values hashed in another order than the selection's
// (PCRs swapped) do not match the digest.
func TestReview50QuoteDigestAndCounts(t *testing.T) {
	ak := newECCAK(t, elliptic.P256(), tpm2.TPMAlgSHA256)
	nonce := mustNonce(t)
	sel := selection(tpm2.TPMAlgSHA256, 0, 7)
	for _, size := range []int{0, 20, 31, 33, 48, 64} {
		a := review50Quote(t, ak, nonce, sel, make([]byte, size))
		if _, err := attest.VerifyQuote(ak.pub, a, ak.sign(t, a, 0), nonce, attest.Options{}); !errors.Is(err, attest.ErrBadEvidence) {
			t.Errorf("digest of %d bytes: %v, want ErrBadEvidence", size, err)
		}
	}

	// The selection count sits after magic, type, the two TPM2Bs, the
	// clock info (17) and the firmware version (8).
	a := review50Quote(t, ak, nonce, sel, make([]byte, 32))
	off := 6 + 2 + len(ak.name(t)) + 2 + len(nonce) + 17 + 8
	if binary.BigEndian.Uint32(a[off:]) != 1 {
		t.Fatalf("count not at %d", off)
	}
	huge := bytes.Clone(a)
	binary.BigEndian.PutUint32(huge[off:], 0xffffffff)
	hugeSig := ak.sign(t, huge, 0)
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := attest.VerifyQuote(ak.pub, huge, hugeSig, nonce, attest.Options{})
	runtime.ReadMemStats(&after)
	if !errors.Is(err, attest.ErrBadEvidence) {
		t.Errorf("count 2^32-1: %v, want ErrBadEvidence", err)
	}
	if grew := after.TotalAlloc - before.TotalAlloc; grew > 1<<20 {
		t.Errorf("count 2^32-1 allocated %d bytes", grew)
	}

	v0, v7 := bytes.Repeat([]byte{1}, 32), bytes.Repeat([]byte{2}, 32)
	a = review50Quote(t, ak, nonce, sel, pcrDigest(t, crypto.SHA256, v0, v7))
	q, err := attest.VerifyQuote(ak.pub, a, ak.sign(t, a, 0), nonce, attest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := q.CheckPCRs(attest.PCRValues{tpm2.TPMAlgSHA256: {0: v0, 7: v7}}); err != nil {
		t.Fatalf("the quoted values: %v", err)
	}
	if err := q.CheckPCRs(attest.PCRValues{tpm2.TPMAlgSHA256: {0: v7, 7: v0}}); !errors.Is(err, attest.ErrPCRMismatch) {
		t.Errorf("PCRs 0 and 7 swapped: %v, want ErrPCRMismatch", err)
	}
	if err := q.CheckPCRs(attest.PCRValues{tpm2.TPMAlgSHA384: {0: v0, 7: v7}}); !errors.Is(err, attest.ErrBadEvidence) {
		t.Errorf("the values under another bank: %v, want ErrBadEvidence", err)
	}
}
