package attest

import (
	"bytes"
	"crypto/subtle"
	"fmt"

	"github.com/google/go-tpm/tpm2"
)

// maxAttestSize bounds a TPMS_ATTEST; a TPM's whole response is at most a
// few KB (TPM_PT_MAX_RESPONSE_SIZE is 4096 on the TPMs we know).
const maxAttestSize = 4096

// Certification is a verified TPM2_Certify.
type Certification struct {
	// Attest is the signed structure (clock, reset and restart counts,
	// firmware version, the signer's qualified name).
	Attest *tpm2.TPMSAttest
	// Name is the certified object's name; it equals the name of the public
	// area given to VerifyCertify. QualifiedName is as the TPM reported it.
	Name, QualifiedName []byte
}

// VerifyCertify verifies the result of TPM2_Certify: attest is the
// TPMS_ATTEST the TPM signed (the contents of the TPM2B_ATTEST it returned,
// without the size, rsp.CertifyInfo.Bytes() in go-tpm), sig the marshalled
// TPMT_SIGNATURE, nonce the qualifying data the caller sent. It checks the
// signer is an attestation key (CheckAKPublic), the signature under signer's
// scheme, the magic and type, the nonce (ErrNonce), and that the certified
// object's name is the name of certified (ErrNameMismatch).
//
// On success the object whose public area is certified is resident in the
// same TPM as the signer, at the time of the nonce. No option relaxes these
// checks; opts is taken so that every verifier has the same shape.
func VerifyCertify(signer tpm2.TPMTPublic, attest, sig, nonce []byte, certified tpm2.TPMTPublic, opts Options) (*Certification, error) {
	if _, err := bankHash(certified.NameAlg, false); err != nil {
		return nil, fmt.Errorf("certified object nameAlg: %w", err)
	}
	name, err := tpm2.ObjectName(&certified)
	if err != nil {
		return nil, fmt.Errorf("%w: certified public area: %w", ErrBadEvidence, err)
	}
	a, _, err := verifyAttest(signer, attest, sig, nonce, tpm2.TPMSTAttestCertify)
	if err != nil {
		return nil, err
	}
	info, err := a.Attested.Certify()
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBadEvidence, err)
	}
	if !bytes.Equal(info.Name.Buffer, name.Buffer) {
		return nil, fmt.Errorf("%w: the TPM certified %x, the public area's name is %x", ErrNameMismatch, info.Name.Buffer, name.Buffer)
	}
	return &Certification{Attest: a, Name: info.Name.Buffer, QualifiedName: info.QualifiedName.Buffer}, nil
}

// verifyAttest does the checks common to every attestation structure, in an
// order that trusts nothing early: the signer's attributes, the signature
// over the raw bytes, then the parse, magic, type, signer and nonce. It
// returns the structure and the hash of the signing scheme.
func verifyAttest(signer tpm2.TPMTPublic, attest, sig, nonce []byte, typ tpm2.TPMST) (*tpm2.TPMSAttest, tpm2.TPMIAlgHash, error) {
	if len(nonce) < MinNonceSize || len(nonce) > MaxNonceSize {
		return nil, 0, fmt.Errorf("%w: expected nonce of %d bytes (want %d..%d)", ErrNonce, len(nonce), MinNonceSize, MaxNonceSize)
	}
	if err := CheckAKPublic(signer); err != nil {
		return nil, 0, err
	}
	key, scheme, hash, err := signerKey(signer)
	if err != nil {
		return nil, 0, err
	}
	if len(attest) > maxAttestSize {
		return nil, 0, fmt.Errorf("%w: attestation of %d bytes (limit %d)", ErrBadEvidence, len(attest), maxAttestSize)
	}
	s, err := parseSignature(sig)
	if err != nil {
		return nil, 0, err
	}
	// A key with a scheme signs with that scheme only; anything else was not
	// made by the TPM with this key.
	sigHash, err := signatureHash(s)
	if err != nil {
		return nil, 0, err
	}
	if s.SigAlg != scheme || sigHash != hash {
		return nil, 0, fmt.Errorf("%w: signature scheme 0x%04x/0x%04x, the key's is 0x%04x/0x%04x",
			ErrSignature, uint16(s.SigAlg), uint16(sigHash), uint16(scheme), uint16(hash))
	}
	if err := verifySignature(key, attest, s); err != nil {
		return nil, 0, err
	}
	a, err := parseAttest(attest)
	if err != nil {
		return nil, 0, err
	}
	if a.Magic != tpm2.TPMGeneratedValue {
		return nil, 0, fmt.Errorf("%w: magic 0x%08x is not TPM_GENERATED_VALUE", ErrBadEvidence, uint32(a.Magic))
	}
	if a.Type != typ {
		return nil, 0, fmt.Errorf("%w: attestation type 0x%04x, want 0x%04x", ErrBadEvidence, uint16(a.Type), uint16(typ))
	}
	// The qualified signer is a name under the signer's nameAlg; its value
	// depends on the signer's parents, which the verifier does not know.
	hs, _ := signer.NameAlg.Hash() // CheckAKPublic approved it
	q := a.QualifiedSigner.Buffer
	if len(q) != 2+hs.Size() || tpm2.TPMAlgID(uint16(q[0])<<8|uint16(q[1])) != signer.NameAlg {
		return nil, 0, fmt.Errorf("%w: qualified signer is not a name under the signer's nameAlg", ErrBadEvidence)
	}
	if subtle.ConstantTimeCompare(a.ExtraData.Buffer, nonce) != 1 {
		return nil, 0, ErrNonce
	}
	return a, hash, nil
}
