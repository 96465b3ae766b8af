package catalog

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"fmt"
	"math"
	"math/big"

	"github.com/google/go-tpm/tpm2"
)

// PublicKey converts a TPM public area to a Go public key (*ecdsa.PublicKey
// or *rsa.PublicKey). Not go-tpm's tpm2.Pub: that neither checks that an ECC
// point is on its curve (a public area comes from a state file or a peer)
// nor refuses keys outside approved mode (ErrNotApproved).
func PublicKey(pub tpm2.TPMTPublic) (crypto.PublicKey, error) {
	switch pub.Type {
	case tpm2.TPMAlgECC:
		parms, err := pub.Parameters.ECCDetail()
		if err != nil {
			return nil, err
		}
		pt, err := pub.Unique.ECC()
		if err != nil {
			return nil, err
		}
		var curve elliptic.Curve
		switch parms.CurveID {
		case tpm2.TPMECCNistP256:
			curve = elliptic.P256()
		case tpm2.TPMECCNistP384:
			curve = elliptic.P384()
		default:
			return nil, fmt.Errorf("curve %v: %w", parms.CurveID, ErrNotApproved)
		}
		size := (curve.Params().BitSize + 7) / 8
		if len(pt.X.Buffer) > size || len(pt.Y.Buffer) > size {
			return nil, fmt.Errorf("ECC point larger than the curve")
		}
		raw := make([]byte, 1+2*size)
		raw[0] = 4
		copy(raw[1+size-len(pt.X.Buffer):1+size], pt.X.Buffer)
		copy(raw[1+2*size-len(pt.Y.Buffer):], pt.Y.Buffer)
		return ecdsa.ParseUncompressedPublicKey(curve, raw)
	case tpm2.TPMAlgRSA:
		parms, err := pub.Parameters.RSADetail()
		if err != nil {
			return nil, err
		}
		n, err := pub.Unique.RSA()
		if err != nil {
			return nil, err
		}
		e := int(parms.Exponent)
		if e == 0 {
			e = 65537
		}
		k := &rsa.PublicKey{N: new(big.Int).SetBytes(n.Buffer), E: e}
		if k.N.BitLen() != int(parms.KeyBits) {
			return nil, fmt.Errorf("RSA modulus of %d bits in a %d-bit key", k.N.BitLen(), parms.KeyBits)
		}
		if err := checkRSA(k); err != nil {
			return nil, err
		}
		return k, nil
	}
	what := "symmetric"
	if kt, _, err := TypeOf(pub); err == nil {
		what = kt.Name
	}
	return nil, fmt.Errorf("a %s key is symmetric: it has no public key: %w", what, ErrNotApproved)
}

// CheckPublicKey accepts a Go public key of approved mode: ECDSA on P-256
// or P-384 (on its curve), RSA of 2048 bits or more with an odd public
// exponent of at least 65537 that the TPM can hold. Anything else is
// ErrNotApproved (a malformed key, another error).
func CheckPublicKey(pub crypto.PublicKey) error {
	_, err := Public(pub, PublicOptions{NameAlg: tpm2.TPMAlgSHA256})
	return err
}

// checkRSA refuses an RSA key outside approved mode: a modulus under 2048
// bits, or a public exponent that is even, below 65537 or larger than the
// TPM's 32 bits.
func checkRSA(k *rsa.PublicKey) error {
	if bits := k.N.BitLen(); bits < 2048 {
		return fmt.Errorf("RSA key of %d bits: %w (use 2048 or more)", bits, ErrNotApproved)
	}
	if k.E < 65537 || k.E > math.MaxUint32 || k.E%2 == 0 {
		return fmt.Errorf("RSA public exponent %d: %w", k.E, ErrNotApproved)
	}
	return nil
}

// PublicOptions say how Public writes a public area: what the key is for,
// which the key itself cannot say.
type PublicOptions struct {
	// NameAlg gives the key's name (and, for a PolicyAuthorize signer, the
	// hash its approvals are computed with).
	NameAlg tpm2.TPMIAlgHash
	Attrs   tpm2.TPMAObject
	// Scheme (TPM_ALG_ECDSA, TPM_ALG_RSAPSS, TPM_ALG_RSASSA, or
	// TPM_ALG_NULL) and its hash.
	Scheme tpm2.TPMAlgID
	Hash   tpm2.TPMIAlgHash
}

// checkScheme accepts o's scheme for pub: none (TPM_ALG_NULL, or unset),
// or a signing scheme of pub's type with an approved hash.
func (o PublicOptions) checkScheme(pub crypto.PublicKey) error {
	if o.Scheme == tpm2.TPMAlgNull || o.Scheme == 0 {
		return nil
	}
	var ok bool
	switch pub.(type) {
	case *ecdsa.PublicKey:
		ok = o.Scheme == tpm2.TPMAlgECDSA
	case *rsa.PublicKey:
		ok = o.Scheme == tpm2.TPMAlgRSAPSS || o.Scheme == tpm2.TPMAlgRSASSA
	}
	if !ok {
		return fmt.Errorf("scheme 0x%04x for a %T: %w", uint16(o.Scheme), pub, ErrNotApproved)
	}
	if _, err := HashByAlg(o.Hash); err != nil {
		return fmt.Errorf("the scheme's hash: %w", err)
	}
	return nil
}

// Public is the TPMT_PUBLIC of a Go public key (ECDSA P-256 or P-384, RSA of
// 2048 bits or more), as TPM2_LoadExternal takes it. The same structure
// yields the key's TPM name, so it is written the one way the TPM would:
// ECC coordinates padded to the field size, an RSA exponent of 65537 as 0
// (the TPM's default). A point off its curve, another curve or a weak RSA
// key is refused (ErrNotApproved).
//
// The options are held to approved mode too (found by review 58: a SHA-1
// nameAlg or an ECDSA-SHA-1 scheme was written, and an RSA key given an
// ECDSA scheme silently got none): the nameAlg an approved hash, the
// scheme TPM_ALG_NULL or one of the key type's signing schemes with an
// approved hash.
func Public(pub crypto.PublicKey, o PublicOptions) (tpm2.TPMTPublic, error) {
	t := tpm2.TPMTPublic{NameAlg: o.NameAlg, ObjectAttributes: o.Attrs}
	if _, err := HashByAlg(o.NameAlg); err != nil {
		return t, fmt.Errorf("nameAlg: %w", err)
	}
	if err := o.checkScheme(pub); err != nil {
		return t, err
	}
	null := tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull}
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k == nil || k.Curve == nil {
			return t, fmt.Errorf("nil ECDSA key")
		}
		var curve tpm2.TPMECCCurve
		switch k.Curve {
		case elliptic.P256():
			curve = tpm2.TPMECCNistP256
		case elliptic.P384():
			curve = tpm2.TPMECCNistP384
		default:
			return t, fmt.Errorf("curve %s: %w (use P-256 or P-384)", k.Curve.Params().Name, ErrNotApproved)
		}
		// ECDH() also checks that the point is on the curve.
		ek, err := k.ECDH()
		if err != nil {
			return t, fmt.Errorf("ECDSA key: %w", err)
		}
		raw := ek.Bytes() // 0x04 || X || Y, fixed size
		size := (len(raw) - 1) / 2
		scheme := tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull}
		if o.Scheme != tpm2.TPMAlgNull && o.Scheme != 0 {
			scheme = tpm2.TPMTECCScheme{
				Scheme:  o.Scheme,
				Details: tpm2.NewTPMUAsymScheme(o.Scheme, &tpm2.TPMSSigSchemeECDSA{HashAlg: o.Hash}),
			}
		}
		t.Type = tpm2.TPMAlgECC
		t.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: null,
			Scheme:    scheme,
			CurveID:   curve,
			KDF:       tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		})
		t.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: raw[1 : 1+size]},
			Y: tpm2.TPM2BECCParameter{Buffer: raw[1+size:]},
		})
		return t, nil
	case *rsa.PublicKey:
		if k == nil || k.N == nil {
			return t, fmt.Errorf("nil RSA key")
		}
		if err := checkRSA(k); err != nil {
			return t, err
		}
		bits := k.N.BitLen()
		exp := uint32(k.E)
		if exp == 65537 {
			exp = 0
		}
		scheme := tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull}
		switch o.Scheme {
		case tpm2.TPMAlgRSAPSS:
			scheme = tpm2.TPMTRSAScheme{Scheme: o.Scheme, Details: tpm2.NewTPMUAsymScheme(o.Scheme, &tpm2.TPMSSigSchemeRSAPSS{HashAlg: o.Hash})}
		case tpm2.TPMAlgRSASSA:
			scheme = tpm2.TPMTRSAScheme{Scheme: o.Scheme, Details: tpm2.NewTPMUAsymScheme(o.Scheme, &tpm2.TPMSSigSchemeRSASSA{HashAlg: o.Hash})}
		}
		t.Type = tpm2.TPMAlgRSA
		t.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Symmetric: null,
			Scheme:    scheme,
			KeyBits:   tpm2.TPMKeyBits(bits),
			Exponent:  exp,
		})
		t.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{
			Buffer: k.N.FillBytes(make([]byte, (bits+7)/8)),
		})
		return t, nil
	}
	return t, fmt.Errorf("key type %T: %w", pub, ErrNotApproved)
}
