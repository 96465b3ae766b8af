package attest_test

import (
	"bytes"
	"crypto"
	"crypto/elliptic"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest"
)

// quoteCase is one piece of quote evidence built in software, and what
// VerifyQuote must say of it.
type quoteCase struct {
	name    string
	signer  tpm2.TPMTPublic // the AK the verifier believes in
	attest  []byte
	sig     []byte
	nonce   []byte // expected nonce
	opts    attest.Options
	wantErr error
}

// pcrVals are the PCR values the software quotes cover: sha256 PCRs 0 and 7.
func pcrVals() attest.PCRValues {
	return attest.PCRValues{tpm2.TPMAlgSHA256: {
		0: bytes.Repeat([]byte{0xa0}, 32),
		7: bytes.Repeat([]byte{0xa7}, 32),
	}}
}

// quoteCases builds the table: genuine quotes under each approved scheme,
// then tampered or foreign evidence. rsa adds the RSA schemes (slow keys).
func quoteCases(t testing.TB, rsaKeys bool) []quoteCase {
	t.Helper()
	aks := map[string]softAK{
		"ecdsa-p256": newECCAK(t, elliptic.P256(), tpm2.TPMAlgSHA256),
		"ecdsa-p384": newECCAK(t, elliptic.P384(), tpm2.TPMAlgSHA384),
	}
	if rsaKeys {
		aks["rsassa-2048"] = newRSAAK(t, tpm2.TPMAlgRSASSA, tpm2.TPMAlgSHA256)
		aks["rsapss-2048"] = newRSAAK(t, tpm2.TPMAlgRSAPSS, tpm2.TPMAlgSHA384)
	}
	nonce := mustNonce(t)
	sel := selection(tpm2.TPMAlgSHA256, 0, 7)
	v := pcrVals()[tpm2.TPMAlgSHA256]
	var cases []quoteCase
	for name, ak := range aks {
		h, _ := ak.hash.Hash()
		a := tpm2.Marshal(attestFor(t, ak, nonce, tpm2.TPMSTAttestQuote, quoteInfo(sel, pcrDigest(t, h, v[0], v[7]))))
		cases = append(cases, quoteCase{name: name, signer: ak.pub, attest: a, sig: ak.sign(t, a, 0), nonce: nonce})
	}
	ak := aks["ecdsa-p256"]
	other := newECCAK(t, elliptic.P256(), tpm2.TPMAlgSHA256)
	d := pcrDigest(t, crypto.SHA256, v[0], v[7])
	good := tpm2.Marshal(attestFor(t, ak, nonce, tpm2.TPMSTAttestQuote, quoteInfo(sel, d)))
	goodSig := ak.sign(t, good, 0)
	signed := func(a tpm2.TPMSAttest) ([]byte, []byte) {
		b := tpm2.Marshal(a)
		return b, ak.sign(t, b, 0)
	}
	add := func(name string, a, sig []byte, wantErr error) {
		cases = append(cases, quoteCase{name: name, signer: ak.pub, attest: a, sig: sig, nonce: nonce, wantErr: wantErr})
	}

	add("flipped signature byte", good, flip(goodSig, -1), attest.ErrSignature)
	add("flipped attest byte", flip(good, 40), goodSig, attest.ErrSignature)
	add("signature of another AK", good, other.sign(t, good, 0), attest.ErrSignature)
	add("hash other than the key's scheme", good, ak.sign(t, good, tpm2.TPMAlgSHA384), attest.ErrSignature)
	add("truncated signature", good, goodSig[:len(goodSig)-1], attest.ErrBadEvidence)
	add("signature with trailing byte", good, append(append([]byte{}, goodSig...), 0), attest.ErrBadEvidence)
	add("empty signature", good, nil, attest.ErrBadEvidence)
	add("SHA-1 signature by a SHA-256 key", good, ak.sign(t, good, tpm2.TPMAlgSHA1), attest.ErrSignature)

	wrongNonce := append([]byte{}, nonce...)
	wrongNonce[0] ^= 0xff
	cases = append(cases,
		quoteCase{name: "wrong nonce", signer: ak.pub, attest: good, sig: goodSig, nonce: wrongNonce, wantErr: attest.ErrNonce},
		quoteCase{name: "nonce too short", signer: ak.pub, attest: good, sig: goodSig, nonce: nonce[:8], wantErr: attest.ErrNonce},
		quoteCase{name: "nonce prefix", signer: ak.pub, attest: good, sig: goodSig, nonce: append(append([]byte{}, nonce...), 1), wantErr: attest.ErrNonce},
	)

	// The magic's last byte changed after marshalling: TPM_GENERATED_VALUE
	// is what tells a TPM-made structure from data the AK was asked to sign.
	b := tpm2.Marshal(attestFor(t, ak, nonce, tpm2.TPMSTAttestQuote, quoteInfo(sel, d)))
	b[3] ^= 0x0f
	add("wrong magic", b, ak.sign(t, b, 0), attest.ErrBadEvidence)
	cb, cs := signed(attestFor(t, ak, nonce, tpm2.TPMSTAttestCertify, certifyInfo(ak.name(t))))
	add("certify structure as quote", cb, cs, attest.ErrBadEvidence)
	tb := append(append([]byte{}, good...), 0)
	add("trailing byte in attest", tb, ak.sign(t, tb, 0), attest.ErrBadEvidence)
	add("truncated attest", good[:len(good)-1], ak.sign(t, good[:len(good)-1], 0), attest.ErrBadEvidence)
	a := attestFor(t, ak, nonce, tpm2.TPMSTAttestQuote, quoteInfo(sel, d))
	a.QualifiedSigner.Buffer = a.QualifiedSigner.Buffer[:10]
	qb, qs := signed(a)
	add("qualified signer not a name", qb, qs, attest.ErrBadEvidence)
	db, ds := signed(attestFor(t, ak, nonce, tpm2.TPMSTAttestQuote, quoteInfo(sel, d[:20])))
	add("PCR digest of the wrong size", db, ds, attest.ErrBadEvidence)
	s1 := selection(tpm2.TPMAlgSHA1, 0)
	s1b, s1s := signed(attestFor(t, ak, nonce, tpm2.TPMSTAttestQuote, quoteInfo(s1, d)))
	add("SHA-1 bank selected", s1b, s1s, attest.ErrUnsupportedAlgorithm)
	cases = append(cases, quoteCase{name: "SHA-1 bank selected, allowed", signer: ak.pub, attest: s1b, sig: s1s, nonce: nonce,
		opts: attest.Options{AllowSHA1: true}})
	s4 := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: tpm2.TPMAlgSHA256, PCRSelect: []byte{1, 0, 0, 1}}}}
	s4b, s4s := signed(attestFor(t, ak, nonce, tpm2.TPMSTAttestQuote, quoteInfo(s4, d)))
	add("PCR 24 selected", s4b, s4s, attest.ErrBadEvidence)
	s2 := tpm2.TPMLPCRSelection{PCRSelections: append(sel.PCRSelections, sel.PCRSelections...)}
	s2b, s2s := signed(attestFor(t, ak, nonce, tpm2.TPMSTAttestQuote, quoteInfo(s2, d)))
	add("bank selected twice", s2b, s2s, attest.ErrBadEvidence)

	notAK := func(name string, mod func(p *tpm2.TPMTPublic), wantErr error) {
		p := ak.pub
		mod(&p)
		cases = append(cases, quoteCase{name: name, signer: p, attest: good, sig: goodSig, nonce: nonce, wantErr: wantErr})
	}
	notAK("signer not restricted", func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Restricted = false }, attest.ErrKeyAttributes)
	notAK("signer not fixedTPM", func(p *tpm2.TPMTPublic) { p.ObjectAttributes.FixedTPM = false }, attest.ErrKeyAttributes)
	notAK("signer not fixedParent", func(p *tpm2.TPMTPublic) { p.ObjectAttributes.FixedParent = false }, attest.ErrKeyAttributes)
	notAK("signer key imported", func(p *tpm2.TPMTPublic) { p.ObjectAttributes.SensitiveDataOrigin = false }, attest.ErrKeyAttributes)
	notAK("signer decrypts", func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Decrypt = true }, attest.ErrKeyAttributes)
	notAK("signer cannot sign", func(p *tpm2.TPMTPublic) { p.ObjectAttributes.SignEncrypt = false }, attest.ErrKeyAttributes)
	notAK("signer nameAlg SHA-1", func(p *tpm2.TPMTPublic) { p.NameAlg = tpm2.TPMAlgSHA1 }, attest.ErrUnsupportedAlgorithm)
	notAK("signer without scheme", func(p *tpm2.TPMTPublic) {
		parms, _ := p.Parameters.ECCDetail()
		c := *parms
		c.Scheme = tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull}
		p.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &c)
	}, attest.ErrKeyAttributes)
	notAK("signer scheme SHA-1", func(p *tpm2.TPMTPublic) {
		parms, _ := p.Parameters.ECCDetail()
		c := *parms
		c.Scheme = tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA,
			Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA1})}
		p.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &c)
	}, attest.ErrUnsupportedAlgorithm)
	notAK("signer point off the curve", func(p *tpm2.TPMTPublic) {
		pt, _ := p.Unique.ECC()
		c := *pt
		c.Y = tpm2.TPM2BECCParameter{Buffer: flip(pt.Y.Buffer, -1)}
		p.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &c)
	}, attest.ErrBadEvidence)
	notAK("signer on P-521", func(p *tpm2.TPMTPublic) {
		parms, _ := p.Parameters.ECCDetail()
		c := *parms
		c.CurveID = tpm2.TPMECCNistP521
		p.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &c)
	}, attest.ErrUnsupportedAlgorithm)
	return cases
}

func TestVerifyQuote(t *testing.T) {
	for _, c := range quoteCases(t, true) {
		t.Run(c.name, func(t *testing.T) {
			q, err := attest.VerifyQuote(c.signer, c.attest, c.sig, c.nonce, c.opts)
			if !errors.Is(err, c.wantErr) || (c.wantErr == nil) != (err == nil) {
				t.Fatalf("VerifyQuote = %v, want %v", err, c.wantErr)
			}
			if err != nil {
				return
			}
			if q.Attest.ClockInfo.Clock != 1234 || len(q.Selection.PCRSelections) != 1 {
				t.Errorf("quote = %+v", q)
			}
			if q.Selection.PCRSelections[0].Hash == tpm2.TPMAlgSHA256 {
				if err := q.CheckPCRs(pcrVals()); err != nil {
					t.Errorf("CheckPCRs: %v", err)
				}
			}
		})
	}
}

// CheckPCRs recomputes the digest over claimed values: a changed value, a
// missing one and one of the wrong size are refused, each as what it is.
func TestQuoteCheckPCRs(t *testing.T) {
	ak := newECCAK(t, elliptic.P256(), tpm2.TPMAlgSHA256)
	nonce := mustNonce(t)
	v := pcrVals()[tpm2.TPMAlgSHA256]
	a := tpm2.Marshal(attestFor(t, ak, nonce, tpm2.TPMSTAttestQuote,
		quoteInfo(selection(tpm2.TPMAlgSHA256, 0, 7), pcrDigest(t, crypto.SHA256, v[0], v[7]))))
	q, err := attest.VerifyQuote(ak.pub, a, ak.sign(t, a, 0), nonce, attest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name    string
		mod     func(v attest.PCRValues)
		wantErr error
	}{
		{"same values", func(attest.PCRValues) {}, nil},
		{"extra unquoted PCR ignored", func(v attest.PCRValues) { v[tpm2.TPMAlgSHA256][3] = make([]byte, 32) }, nil},
		{"PCR 7 changed", func(v attest.PCRValues) { v[tpm2.TPMAlgSHA256][7] = flip(v[tpm2.TPMAlgSHA256][7], 0) }, attest.ErrPCRMismatch},
		{"PCRs swapped", func(v attest.PCRValues) {
			b := v[tpm2.TPMAlgSHA256]
			b[0], b[7] = b[7], b[0]
		}, attest.ErrPCRMismatch},
		{"PCR 0 missing", func(v attest.PCRValues) { delete(v[tpm2.TPMAlgSHA256], 0) }, attest.ErrBadEvidence},
		{"bank missing", func(v attest.PCRValues) { delete(v, tpm2.TPMAlgSHA256) }, attest.ErrBadEvidence},
		{"PCR 7 short", func(v attest.PCRValues) { v[tpm2.TPMAlgSHA256][7] = v[tpm2.TPMAlgSHA256][7][:20] }, attest.ErrBadEvidence},
	} {
		t.Run(c.name, func(t *testing.T) {
			vals := pcrVals()
			c.mod(vals)
			err := q.CheckPCRs(vals)
			if !errors.Is(err, c.wantErr) || (c.wantErr == nil) != (err == nil) {
				t.Fatalf("CheckPCRs = %v, want %v", err, c.wantErr)
			}
		})
	}
}

func TestComparePCRs(t *testing.T) {
	sel := tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{
		{Hash: tpm2.TPMAlgSHA256, PCRSelect: []byte{0x81, 0, 0}}, // 0, 7
		{Hash: tpm2.TPMAlgSHA384, PCRSelect: []byte{0x10, 0, 0}}, // 4
	}}
	quoted := attest.PCRValues{
		tpm2.TPMAlgSHA256: {0: bytes.Repeat([]byte{1}, 32), 7: bytes.Repeat([]byte{7}, 32)},
		tpm2.TPMAlgSHA384: {4: bytes.Repeat([]byte{4}, 48)},
	}
	same := attest.PCRValues{
		tpm2.TPMAlgSHA256: {0: bytes.Repeat([]byte{1}, 32), 7: bytes.Repeat([]byte{7}, 32), 9: make([]byte, 32)},
		tpm2.TPMAlgSHA384: {4: bytes.Repeat([]byte{4}, 48)},
	}
	if err := attest.ComparePCRs(sel, quoted, same); err != nil {
		t.Fatalf("equal values: %v", err)
	}
	diff := attest.PCRValues{
		tpm2.TPMAlgSHA256: {0: bytes.Repeat([]byte{1}, 32), 7: bytes.Repeat([]byte{8}, 32)},
	}
	err := attest.ComparePCRs(sel, quoted, diff)
	var me *attest.PCRMismatchError
	if !errors.Is(err, attest.ErrPCRMismatch) || !errors.As(err, &me) {
		t.Fatalf("ComparePCRs = %v, want a *PCRMismatchError", err)
	}
	got := map[int]tpm2.TPMIAlgHash{}
	for _, m := range me.Mismatches {
		got[m.Index] = m.Bank
	}
	if len(got) != 2 || got[7] != tpm2.TPMAlgSHA256 || got[4] != tpm2.TPMAlgSHA384 {
		t.Errorf("mismatches = %+v, want sha256 PCR 7 and sha384 PCR 4 (no replayed sha384 bank)", me.Mismatches)
	}
	delete(quoted[tpm2.TPMAlgSHA256], 0)
	if err := attest.ComparePCRs(sel, quoted, same); !errors.Is(err, attest.ErrBadEvidence) {
		t.Errorf("missing quoted value: %v, want ErrBadEvidence", err)
	}
}

// certifyCase is TPM2_Certify evidence built in software.
type certifyCase struct {
	name      string
	signer    tpm2.TPMTPublic
	certified tpm2.TPMTPublic
	attest    []byte
	sig       []byte
	nonce     []byte
	wantErr   error
}

func certifyCases(t testing.TB) []certifyCase {
	t.Helper()
	ak := newECCAK(t, elliptic.P256(), tpm2.TPMAlgSHA256)
	key := newECCAK(t, elliptic.P384(), tpm2.TPMAlgSHA384) // the certified object
	keyName, err := tpm2.ObjectName(&key.pub)
	if err != nil {
		t.Fatal(err)
	}
	nonce := mustNonce(t)
	good := tpm2.Marshal(attestFor(t, ak, nonce, tpm2.TPMSTAttestCertify, certifyInfo(keyName.Buffer)))
	goodSig := ak.sign(t, good, 0)
	other := newECCAK(t, elliptic.P384(), tpm2.TPMAlgSHA384)
	sha1Pub := key.pub
	sha1Pub.NameAlg = tpm2.TPMAlgSHA1
	v := pcrVals()[tpm2.TPMAlgSHA256]
	qa := tpm2.Marshal(attestFor(t, ak, nonce, tpm2.TPMSTAttestQuote,
		quoteInfo(selection(tpm2.TPMAlgSHA256, 0, 7), pcrDigest(t, crypto.SHA256, v[0], v[7]))))
	wrongNonce := flip(nonce, 3)
	return []certifyCase{
		{"genuine", ak.pub, key.pub, good, goodSig, nonce, nil},
		{"another object's public area", ak.pub, other.pub, good, goodSig, nonce, attest.ErrNameMismatch},
		{"public area with a changed attribute", ak.pub, func() tpm2.TPMTPublic {
			p := key.pub
			p.ObjectAttributes.FixedTPM = false
			return p
		}(), good, goodSig, nonce, attest.ErrNameMismatch},
		{"certified nameAlg SHA-1", ak.pub, sha1Pub, good, goodSig, nonce, attest.ErrUnsupportedAlgorithm},
		{"wrong nonce", ak.pub, key.pub, good, goodSig, wrongNonce, attest.ErrNonce},
		{"flipped signature", ak.pub, key.pub, good, flip(goodSig, 10), nonce, attest.ErrSignature},
		{"signed by the certified key", key.pub, key.pub, good, goodSig, nonce, attest.ErrSignature},
		{"quote as certify", ak.pub, key.pub, qa, ak.sign(t, qa, 0), nonce, attest.ErrBadEvidence},
	}
}

func TestVerifyCertify(t *testing.T) {
	for _, c := range certifyCases(t) {
		t.Run(c.name, func(t *testing.T) {
			cert, err := attest.VerifyCertify(c.signer, c.attest, c.sig, c.nonce, c.certified, attest.Options{})
			if !errors.Is(err, c.wantErr) || (c.wantErr == nil) != (err == nil) {
				t.Fatalf("VerifyCertify = %v, want %v", err, c.wantErr)
			}
			if err == nil {
				n, _ := tpm2.ObjectName(&c.certified)
				if !bytes.Equal(cert.Name, n.Buffer) {
					t.Errorf("Name = %x, want %x", cert.Name, n.Buffer)
				}
			}
		})
	}
}

// VerifySignature takes keys as crypto keys; weak ones are refused before
// any signature is looked at.
func TestVerifySignature(t *testing.T) {
	ak := newECCAK(t, elliptic.P256(), tpm2.TPMAlgSHA256)
	rsaAK := newRSAAK(t, tpm2.TPMAlgRSASSA, tpm2.TPMAlgSHA256)
	msg := []byte("signed by a TPM")
	sig := ak.sign(t, msg, 0)
	for _, c := range []struct {
		name    string
		pub     crypto.PublicKey
		msg     []byte
		sig     []byte
		wantErr error
	}{
		{"ecdsa", ak.priv.Public(), msg, sig, nil},
		{"ecdsa sha384", ak.priv.Public(), msg, ak.sign(t, msg, tpm2.TPMAlgSHA384), nil},
		{"rsassa", rsaAK.priv.Public(), msg, rsaAK.sign(t, msg, 0), nil},
		{"other message", ak.priv.Public(), []byte("other"), sig, attest.ErrSignature},
		{"ecdsa signature, RSA key", rsaAK.priv.Public(), msg, sig, attest.ErrSignature},
		{"rsa signature, ECC key", ak.priv.Public(), msg, rsaAK.sign(t, msg, 0), attest.ErrSignature},
		{"sha1", ak.priv.Public(), msg, ak.sign(t, msg, tpm2.TPMAlgSHA1), attest.ErrUnsupportedAlgorithm},
		{"garbage", ak.priv.Public(), msg, []byte{0, 0x18, 0, 0x0b}, attest.ErrBadEvidence},
		{"not a key", "key", msg, sig, attest.ErrUnsupportedAlgorithm},
	} {
		t.Run(c.name, func(t *testing.T) {
			err := attest.VerifySignature(c.pub, c.msg, c.sig)
			if !errors.Is(err, c.wantErr) || (c.wantErr == nil) != (err == nil) {
				t.Fatalf("VerifySignature = %v, want %v", err, c.wantErr)
			}
		})
	}
}

func TestNewNonce(t *testing.T) {
	n, err := attest.NewNonce(attest.Options{Rand: bytes.NewReader(bytes.Repeat([]byte{9}, 64))})
	if err != nil || !bytes.Equal(n, bytes.Repeat([]byte{9}, attest.NonceSize)) {
		t.Fatalf("NewNonce = %x, %v: want the injected bytes", n, err)
	}
	if _, err := attest.NewNonce(attest.Options{Rand: bytes.NewReader(nil)}); err == nil {
		t.Fatal("NewNonce from an empty source succeeded")
	}
	a, _ := attest.NewNonce(attest.Options{})
	b, _ := attest.NewNonce(attest.Options{})
	if len(a) != attest.NonceSize || bytes.Equal(a, b) {
		t.Fatalf("default nonces %x %x", a, b)
	}
}

// The device chooses what it quotes: a quote of no PCR is refused, and a
// verifier that rests a decision on PCRs 0 and 7 requires them, so a quote
// of PCR 23 alone cannot vouch for a log's claims about them.
func TestQuoteMustCoverRequiredPCRs(t *testing.T) {
	ak := newECCAK(t, elliptic.P256(), tpm2.TPMAlgSHA256)
	nonce := mustNonce(t)
	zero := make([]byte, 32)
	quote := func(sel tpm2.TPMLPCRSelection, vals ...[]byte) []byte {
		return tpm2.Marshal(attestFor(t, ak, nonce, tpm2.TPMSTAttestQuote, quoteInfo(sel, pcrDigest(t, crypto.SHA256, vals...))))
	}
	require := attest.Options{RequirePCRs: map[tpm2.TPMIAlgHash][]int{tpm2.TPMAlgSHA256: {0, 7}}}
	for _, tc := range []struct {
		name string
		a    []byte
		opts attest.Options
		want error
	}{
		{"no PCR selected", quote(tpm2.TPMLPCRSelection{}), attest.Options{}, attest.ErrBadEvidence},
		{"PCR 23 only, 0 and 7 required", quote(selection(tpm2.TPMAlgSHA256, 23), zero), require, attest.ErrPCRMismatch},
		{"PCR 0 only, 0 and 7 required", quote(selection(tpm2.TPMAlgSHA256, 0), zero), require, attest.ErrPCRMismatch},
		{"PCRs 0 and 7, required", quote(selection(tpm2.TPMAlgSHA256, 0, 7), zero, zero), require, nil},
	} {
		q, err := attest.VerifyQuote(ak.pub, tc.a, ak.sign(t, tc.a, 0), nonce, tc.opts)
		if !errors.Is(err, tc.want) || (tc.want == nil && err != nil) {
			t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
		}
		if err == nil {
			if err := q.Covers(tpm2.TPMAlgSHA256, 7); err != nil {
				t.Errorf("%s: Covers(7): %v", tc.name, err)
			}
			if err := q.Covers(tpm2.TPMAlgSHA384, 7); !errors.Is(err, attest.ErrPCRMismatch) {
				t.Errorf("%s: Covers(sha384 7): %v", tc.name, err)
			}
		}
	}
}
