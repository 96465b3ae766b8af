package attest

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"errors"
	"fmt"
	"math/big"
	"strings"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/catalog"
)

// maxSignatureSize bounds a marshalled TPMT_SIGNATURE: an RSA-8192 signature
// and its header fit with room to spare.
const maxSignatureSize = 2048

// CheckAKPublic checks that pub is an attestation key, so that what it signs
// can only be a structure its TPM made: restricted (the TPM refuses to sign
// a digest that could pass for a TPM_GENERATED structure), sign and not
// decrypt, fixedTPM and fixedParent (it cannot leave the TPM),
// sensitiveDataOrigin (the TPM made the private key, nobody chose it). Its
// key must be approved, its nameAlg SHA-256/384 and its signing scheme ECDSA,
// RSASSA or RSAPSS with SHA-256/384.
//
// Whether pub really is the public area of a key in a genuine TPM is not
// something a public area can say; the caller establishes that (credential
// activation against a verified EK, or certification by a trusted AK).
func CheckAKPublic(pub tpm2.TPMTPublic) error {
	a := pub.ObjectAttributes
	var bad []string
	for _, c := range []struct {
		ok   bool
		what string
	}{
		{a.Restricted, "restricted clear"},
		{a.SignEncrypt, "sign clear"},
		{!a.Decrypt, "decrypt set"},
		{a.FixedTPM, "fixedTPM clear"},
		{a.FixedParent, "fixedParent clear"},
		{a.SensitiveDataOrigin, "sensitiveDataOrigin clear"},
	} {
		if !c.ok {
			bad = append(bad, c.what)
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%w: not an attestation key: %s", ErrKeyAttributes, strings.Join(bad, ", "))
	}
	if _, err := bankHash(pub.NameAlg, false); err != nil {
		return fmt.Errorf("AK nameAlg: %w", err)
	}
	_, scheme, _, err := signerKey(pub)
	if err != nil {
		return err
	}
	if scheme == tpm2.TPMAlgNull {
		return fmt.Errorf("%w: attestation key without a signing scheme", ErrKeyAttributes)
	}
	return nil
}

// signerKey converts a signing key's public area into its crypto key and
// the scheme and hash it fixes (TPM_ALG_NULL when the key leaves the scheme
// to each command).
func signerKey(pub tpm2.TPMTPublic) (key crypto.PublicKey, scheme, hash tpm2.TPMAlgID, err error) {
	scheme, hash = tpm2.TPMAlgNull, tpm2.TPMAlgNull
	var s tpm2.TPMUAsymScheme
	switch pub.Type {
	case tpm2.TPMAlgECC, tpm2.TPMAlgRSA:
	default:
		return nil, 0, 0, fmt.Errorf("%w: key type 0x%04x cannot sign attestations", ErrUnsupportedAlgorithm, uint16(pub.Type))
	}
	key, err = catalog.PublicKey(pub)
	switch {
	case errors.Is(err, catalog.ErrNotApproved):
		return nil, 0, 0, fmt.Errorf("%w: %w", ErrUnsupportedAlgorithm, err)
	case err != nil:
		return nil, 0, 0, fmt.Errorf("%w: signing key: %w", ErrBadEvidence, err)
	}
	switch pub.Type {
	case tpm2.TPMAlgECC:
		parms, err := pub.Parameters.ECCDetail()
		if err != nil {
			return nil, 0, 0, fmt.Errorf("%w: ECC key parameters: %w", ErrBadEvidence, err)
		}
		scheme, s = parms.Scheme.Scheme, parms.Scheme.Details
		switch scheme {
		case tpm2.TPMAlgNull:
		case tpm2.TPMAlgECDSA:
			d, err := s.ECDSA()
			if err != nil {
				return nil, 0, 0, fmt.Errorf("%w: ECDSA scheme: %w", ErrBadEvidence, err)
			}
			hash = d.HashAlg
		default:
			return nil, 0, 0, fmt.Errorf("%w: ECC signing scheme 0x%04x", ErrUnsupportedAlgorithm, uint16(scheme))
		}
	case tpm2.TPMAlgRSA:
		parms, err := pub.Parameters.RSADetail()
		if err != nil {
			return nil, 0, 0, fmt.Errorf("%w: RSA key parameters: %w", ErrBadEvidence, err)
		}
		scheme, s = parms.Scheme.Scheme, parms.Scheme.Details
		switch scheme {
		case tpm2.TPMAlgNull:
		case tpm2.TPMAlgRSASSA:
			d, err := s.RSASSA()
			if err != nil {
				return nil, 0, 0, fmt.Errorf("%w: RSASSA scheme: %w", ErrBadEvidence, err)
			}
			hash = d.HashAlg
		case tpm2.TPMAlgRSAPSS:
			d, err := s.RSAPSS()
			if err != nil {
				return nil, 0, 0, fmt.Errorf("%w: RSAPSS scheme: %w", ErrBadEvidence, err)
			}
			hash = d.HashAlg
		default:
			return nil, 0, 0, fmt.Errorf("%w: RSA signing scheme 0x%04x", ErrUnsupportedAlgorithm, uint16(scheme))
		}
	}
	if scheme != tpm2.TPMAlgNull {
		if _, err := bankHash(hash, false); err != nil {
			return nil, 0, 0, fmt.Errorf("signing scheme: %w", err)
		}
	}
	return key, scheme, hash, nil
}

// VerifySignature verifies a TPM signature (a marshalled TPMT_SIGNATURE:
// ECDSA, RSASSA or RSAPSS over SHA-256/384) of signed under pub, for keys
// known as crypto keys rather than TPM public areas. It proves nothing about
// where the key lives.
func VerifySignature(pub crypto.PublicKey, signed, sig []byte) error {
	if err := checkPublicKey(pub); err != nil {
		return err
	}
	s, err := parseSignature(sig)
	if err != nil {
		return err
	}
	return verifySignature(pub, signed, s)
}

// signatureHash returns the scheme's hash named in a signature.
func signatureHash(s *tpm2.TPMTSignature) (tpm2.TPMIAlgHash, error) {
	switch s.SigAlg {
	case tpm2.TPMAlgECDSA:
		e, err := s.Signature.ECDSA()
		if err != nil {
			return 0, fmt.Errorf("%w: %w", ErrBadEvidence, err)
		}
		return e.Hash, nil
	case tpm2.TPMAlgRSASSA, tpm2.TPMAlgRSAPSS:
		r, err := rsaSignature(s)
		if err != nil {
			return 0, err
		}
		return r.Hash, nil
	}
	return 0, fmt.Errorf("%w: signature algorithm 0x%04x", ErrUnsupportedAlgorithm, uint16(s.SigAlg))
}

func rsaSignature(s *tpm2.TPMTSignature) (*tpm2.TPMSSignatureRSA, error) {
	var r *tpm2.TPMSSignatureRSA
	var err error
	if s.SigAlg == tpm2.TPMAlgRSASSA {
		r, err = s.Signature.RSASSA()
	} else {
		r, err = s.Signature.RSAPSS()
	}
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadEvidence, err)
	}
	return r, nil
}

// verifySignature checks s over signed with pub. The hash must be SHA-256
// or SHA-384, whatever Options say: a signature is never taken on SHA-1.
func verifySignature(pub crypto.PublicKey, signed []byte, s *tpm2.TPMTSignature) error {
	alg, err := signatureHash(s)
	if err != nil {
		return err
	}
	h, err := bankHash(alg, false)
	if err != nil {
		return fmt.Errorf("signature: %w", err)
	}
	hh := h.New()
	hh.Write(signed)
	digest := hh.Sum(nil)
	switch s.SigAlg {
	case tpm2.TPMAlgECDSA:
		k, ok := pub.(*ecdsa.PublicKey)
		if !ok {
			return fmt.Errorf("%w: ECDSA signature for a %T key", ErrSignature, pub)
		}
		e, _ := s.Signature.ECDSA() // signatureHash checked the selector
		size := (k.Curve.Params().BitSize + 7) / 8
		if len(e.SignatureR.Buffer) > size || len(e.SignatureS.Buffer) > size {
			return fmt.Errorf("%w: ECDSA signature longer than the curve", ErrSignature)
		}
		r := new(big.Int).SetBytes(e.SignatureR.Buffer)
		ss := new(big.Int).SetBytes(e.SignatureS.Buffer)
		if !ecdsa.Verify(k, digest, r, ss) {
			return ErrSignature
		}
		return nil
	default: // RSASSA or RSAPSS, as signatureHash allows no other
		k, ok := pub.(*rsa.PublicKey)
		if !ok {
			return fmt.Errorf("%w: RSA signature for a %T key", ErrSignature, pub)
		}
		r, _ := rsaSignature(s)
		if s.SigAlg == tpm2.TPMAlgRSASSA {
			err = rsa.VerifyPKCS1v15(k, h, digest, r.Sig.Buffer)
		} else {
			// TPMs use a salt as long as the hash or the longest that fits;
			// the salt length is read from the signature.
			err = rsa.VerifyPSS(k, h, digest, r.Sig.Buffer, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto})
		}
		if err != nil {
			return fmt.Errorf("%w: %w", ErrSignature, err)
		}
		return nil
	}
}

// unmarshalStrict unmarshals a TPM structure and accepts it only when it
// marshals back to exactly the same bytes: no trailing data, no second
// encoding of the same value. go-tpm's reflection-based decoder is not
// written for hostile input, so a panic in it is turned into an error.
func unmarshalStrict[T tpm2.Marshallable, P interface {
	*T
	tpm2.Unmarshallable
}](what string, b []byte) (v *T, err error) {
	defer func() {
		if r := recover(); r != nil {
			v, err = nil, fmt.Errorf("%w: %s: %v", ErrBadEvidence, what, r)
		}
	}()
	v, err = tpm2.Unmarshal[T, P](b)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %w", ErrBadEvidence, what, err)
	}
	if !bytes.Equal(tpm2.Marshal(*v), b) {
		return nil, fmt.Errorf("%w: %s: trailing or non-canonical bytes", ErrBadEvidence, what)
	}
	return v, nil
}
