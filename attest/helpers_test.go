package attest_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// softAK is an attestation key held in software: its TPM public area (with
// the attributes a TPM AK has) and a signer that makes TPMT_SIGNATUREs as
// the TPM would. It lets tests build evidence that the TPM cannot be made to
// produce (a wrong magic, a foreign type, trailing bytes) and sign it.
type softAK struct {
	pub  tpm2.TPMTPublic
	priv crypto.Signer
	alg  tpm2.TPMAlgID // signature scheme
	hash tpm2.TPMIAlgHash
}

// akAttributes are those of a TPM attestation key.
func akAttributes() tpm2.TPMAObject {
	return tpm2.TPMAObject{
		FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true,
		UserWithAuth: true, Restricted: true, SignEncrypt: true, NoDA: true,
	}
}

func newECCAK(t testing.TB, curve elliptic.Curve, hash tpm2.TPMIAlgHash) softAK {
	t.Helper()
	k, err := ecdsa.GenerateKey(curve, rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	id := tpm2.TPMECCNistP256
	if curve == elliptic.P384() {
		id = tpm2.TPMECCNistP384
	}
	size := (curve.Params().BitSize + 7) / 8
	return softAK{
		priv: k, alg: tpm2.TPMAlgECDSA, hash: hash,
		pub: tpm2.TPMTPublic{
			Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256, ObjectAttributes: akAttributes(),
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
				Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
				Scheme: tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA,
					Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: hash})},
				CurveID: id,
				KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
				X: tpm2.TPM2BECCParameter{Buffer: k.X.FillBytes(make([]byte, size))},
				Y: tpm2.TPM2BECCParameter{Buffer: k.Y.FillBytes(make([]byte, size))},
			}),
		},
	}
}

func newRSAAK(t testing.TB, scheme tpm2.TPMAlgID, hash tpm2.TPMIAlgHash) softAK {
	t.Helper()
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	var details tpm2.TPMUAsymScheme
	if scheme == tpm2.TPMAlgRSAPSS {
		details = tpm2.NewTPMUAsymScheme(scheme, &tpm2.TPMSSigSchemeRSAPSS{HashAlg: hash})
	} else {
		details = tpm2.NewTPMUAsymScheme(scheme, &tpm2.TPMSSigSchemeRSASSA{HashAlg: hash})
	}
	return softAK{
		priv: k, alg: scheme, hash: hash,
		pub: tpm2.TPMTPublic{
			Type: tpm2.TPMAlgRSA, NameAlg: tpm2.TPMAlgSHA256, ObjectAttributes: akAttributes(),
			Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
				Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
				Scheme:    tpm2.TPMTRSAScheme{Scheme: scheme, Details: details},
				KeyBits:   2048,
			}),
			Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: k.N.Bytes()}),
		},
	}
}

// sign returns the marshalled TPMT_SIGNATURE of msg under the AK's scheme,
// or under hash when it is not zero.
func (ak softAK) sign(t testing.TB, msg []byte, hash tpm2.TPMIAlgHash) []byte {
	t.Helper()
	if hash == 0 {
		hash = ak.hash
	}
	h, err := hash.Hash()
	if err != nil {
		t.Fatal(err)
	}
	hh := h.New()
	hh.Write(msg)
	digest := hh.Sum(nil)
	var sig tpm2.TPMTSignature
	switch k := ak.priv.(type) {
	case *ecdsa.PrivateKey:
		r, s, err := ecdsa.Sign(rand.Reader, k, digest)
		if err != nil {
			t.Fatal(err)
		}
		size := (k.Curve.Params().BitSize + 7) / 8
		sig = tpm2.TPMTSignature{SigAlg: tpm2.TPMAlgECDSA, Signature: tpm2.NewTPMUSignature(tpm2.TPMAlgECDSA, &tpm2.TPMSSignatureECC{
			Hash:       hash,
			SignatureR: tpm2.TPM2BECCParameter{Buffer: r.FillBytes(make([]byte, size))},
			SignatureS: tpm2.TPM2BECCParameter{Buffer: s.FillBytes(make([]byte, size))},
		})}
	case *rsa.PrivateKey:
		var b []byte
		if ak.alg == tpm2.TPMAlgRSAPSS {
			b, err = rsa.SignPSS(rand.Reader, k, h, digest, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
		} else {
			b, err = rsa.SignPKCS1v15(rand.Reader, k, h, digest)
		}
		if err != nil {
			t.Fatal(err)
		}
		sig = tpm2.TPMTSignature{SigAlg: ak.alg, Signature: tpm2.NewTPMUSignature(ak.alg, &tpm2.TPMSSignatureRSA{
			Hash: hash, Sig: tpm2.TPM2BPublicKeyRSA{Buffer: b},
		})}
	}
	return tpm2.Marshal(sig)
}

// name returns the AK's name, which stands in for its qualified name in
// structures built in software (same algorithm, same size).
func (ak softAK) name(t testing.TB) []byte {
	t.Helper()
	n, err := tpm2.ObjectName(&ak.pub)
	if err != nil {
		t.Fatal(err)
	}
	return n.Buffer
}

// attestFor builds a TPMS_ATTEST as a TPM would for ak.
func attestFor(t testing.TB, ak softAK, nonce []byte, typ tpm2.TPMST, u tpm2.TPMUAttest) tpm2.TPMSAttest {
	return tpm2.TPMSAttest{
		Magic:           tpm2.TPMGeneratedValue,
		Type:            typ,
		QualifiedSigner: tpm2.TPM2BName{Buffer: ak.name(t)},
		ExtraData:       tpm2.TPM2BData{Buffer: nonce},
		ClockInfo:       tpm2.TPMSClockInfo{Clock: 1234, ResetCount: 1, RestartCount: 0, Safe: true},
		FirmwareVersion: 0x2019102300000000,
		Attested:        u,
	}
}

func quoteInfo(sel tpm2.TPMLPCRSelection, digest []byte) tpm2.TPMUAttest {
	return tpm2.NewTPMUAttest(tpm2.TPMSTAttestQuote, &tpm2.TPMSQuoteInfo{PCRSelect: sel, PCRDigest: tpm2.TPM2BDigest{Buffer: digest}})
}

func certifyInfo(name []byte) tpm2.TPMUAttest {
	return tpm2.NewTPMUAttest(tpm2.TPMSTAttestCertify, &tpm2.TPMSCertifyInfo{
		Name:          tpm2.TPM2BName{Buffer: name},
		QualifiedName: tpm2.TPM2BName{Buffer: name},
	})
}

// selection builds a one-bank PCR selection of 3 bytes, as TPMs return.
func selection(bank tpm2.TPMIAlgHash, pcrs ...int) tpm2.TPMLPCRSelection {
	bits := make([]byte, 3)
	for _, p := range pcrs {
		bits[p/8] |= 1 << (p % 8)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{Hash: bank, PCRSelect: bits}}}
}

// pcrDigest computes a quote's PCR digest independently of the package.
func pcrDigest(t testing.TB, hash crypto.Hash, vals ...[]byte) []byte {
	t.Helper()
	h := hash.New()
	for _, v := range vals {
		h.Write(v)
	}
	return h.Sum(nil)
}

func mustNonce(t testing.TB) []byte {
	t.Helper()
	n := make([]byte, 32)
	if _, err := rand.Read(n); err != nil {
		t.Fatal(err)
	}
	return n
}

func flip(b []byte, i int) []byte {
	c := append([]byte(nil), b...)
	if i < 0 {
		i += len(c)
	}
	c[i] ^= 0x01
	return c
}
