package policy

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"math"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/catalog"
	"github.com/provd/provd/internal/pemblock"
)

// signerScheme is what an approved policy-signer key implies: the TPM
// signature scheme, its hash and (for ECC) the size of a signature's
// coordinates.
type signerScheme struct {
	sigAlg    tpm2.TPMAlgID // TPMAlgECDSA or TPMAlgRSAPSS
	hash      tpm2.TPMIAlgHash
	coordSize int
}

// signerNameAlg is the nameAlg of every signer key as loaded into the TPM. It
// fixes both the key's name and the aHash that the signature covers
// (aHash = H_nameAlg(approvedPolicy || policyRef)).
const signerNameAlg = tpm2.TPMAlgSHA256

// schemeFor checks that pub is an approved policy signer: ECDSA P-256 or
// P-384, or RSA with a 3072- or 4096-bit modulus and a public exponent the
// TPM can hold. Everything else is catalog.ErrNotApproved.
func schemeFor(pub crypto.PublicKey) (signerScheme, error) {
	switch k := pub.(type) {
	case *ecdsa.PublicKey:
		if k == nil || k.Curve == nil {
			return signerScheme{}, fmt.Errorf("policy: nil ECDSA key")
		}
		switch k.Curve {
		case elliptic.P256():
			return signerScheme{sigAlg: tpm2.TPMAlgECDSA, hash: tpm2.TPMAlgSHA256, coordSize: 32}, nil
		case elliptic.P384():
			return signerScheme{sigAlg: tpm2.TPMAlgECDSA, hash: tpm2.TPMAlgSHA384, coordSize: 48}, nil
		}
		return signerScheme{}, fmt.Errorf("policy: signer curve %s: %w (use P-256 or P-384)", k.Curve.Params().Name, catalog.ErrNotApproved)
	case *rsa.PublicKey:
		if k == nil || k.N == nil {
			return signerScheme{}, fmt.Errorf("policy: nil RSA key")
		}
		if bits := k.N.BitLen(); bits != 3072 && bits != 4096 {
			return signerScheme{}, fmt.Errorf("policy: RSA signer of %d bits: %w (use 3072 or 4096)", bits, catalog.ErrNotApproved)
		}
		if k.E < 65537 || k.E > math.MaxUint32 || k.E%2 == 0 {
			return signerScheme{}, fmt.Errorf("policy: RSA public exponent %d: %w", k.E, catalog.ErrNotApproved)
		}
		return signerScheme{sigAlg: tpm2.TPMAlgRSAPSS, hash: tpm2.TPMAlgSHA256}, nil
	}
	return signerScheme{}, fmt.Errorf("policy: signer key type %T: %w", pub, catalog.ErrNotApproved)
}

// SignerPublic returns the TPMT_PUBLIC under which the policy signer key is
// loaded with TPM2_LoadExternal: nameAlg SHA-256, sign and userWithAuth set,
// scheme ECDSA (with the curve's hash) or RSASSA-PSS with SHA-256. The same
// structure yields the key's name, so it must be byte-for-byte what the TPM
// is given at use: catalog.Public writes it the one way the TPM would.
func SignerPublic(pub crypto.PublicKey) (tpm2.TPMTPublic, error) {
	sch, err := schemeFor(pub)
	if err != nil {
		return tpm2.TPMTPublic{}, err
	}
	tp, err := catalog.Public(pub, catalog.PublicOptions{
		NameAlg: signerNameAlg,
		Attrs:   tpm2.TPMAObject{SignEncrypt: true, UserWithAuth: true},
		Scheme:  sch.sigAlg,
		Hash:    sch.hash,
	})
	if err != nil {
		return tpm2.TPMTPublic{}, fmt.Errorf("policy: signer: %w", err)
	}
	return tp, nil
}

// SignerName returns the TPM name of the signer key as SignerPublic loads it:
// the keySign that TPM2_PolicyAuthorize extends into the policy digest.
func SignerName(pub crypto.PublicKey) ([]byte, error) {
	tp, err := SignerPublic(pub)
	if err != nil {
		return nil, err
	}
	n, err := tpm2.ObjectName(&tp)
	if err != nil {
		return nil, fmt.Errorf("policy: signer name: %w", err)
	}
	return n.Buffer, nil
}

// ParsePublicKeyPEM parses one PEM "PUBLIC KEY" block (PKIX) holding an
// approved policy-signer key. The file is the one block alone
// (internal/pemblock), so it cannot carry a second, unnoticed key.
func ParsePublicKeyPEM(data []byte) (crypto.PublicKey, error) {
	block, err := pemblock.Decode(data, "PUBLIC KEY")
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	pub, err := x509.ParsePKIXPublicKey(block.Bytes)
	if err != nil {
		return nil, fmt.Errorf("policy: public key: %w", err)
	}
	if _, err := SignerPublic(pub); err != nil {
		return nil, err
	}
	return pub, nil
}

// MarshalPublicKeyPEM writes pub as a PEM "PUBLIC KEY" block.
func MarshalPublicKeyPEM(pub crypto.PublicKey) ([]byte, error) {
	if _, err := schemeFor(pub); err != nil {
		return nil, err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return nil, fmt.Errorf("policy: public key: %w", err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ParseSignerPEM parses a policy-signing private key: "PRIVATE KEY" (PKCS#8),
// "EC PRIVATE KEY" (SEC1) or "RSA PRIVATE KEY" (PKCS#1). Encrypted legacy PEM
// is refused (decrypt it with a tool that does it properly), and the key must
// be an approved signer.
func ParseSignerPEM(data []byte) (crypto.Signer, error) {
	block, err := pemblock.Decode(data, "PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY")
	if err != nil {
		return nil, fmt.Errorf("policy: %w", err)
	}
	var key any
	switch block.Type {
	case "PRIVATE KEY":
		key, err = x509.ParsePKCS8PrivateKey(block.Bytes)
	case "EC PRIVATE KEY":
		key, err = x509.ParseECPrivateKey(block.Bytes)
	case "RSA PRIVATE KEY":
		key, err = x509.ParsePKCS1PrivateKey(block.Bytes)
	default:
		return nil, fmt.Errorf("policy: PEM block %q, want PRIVATE KEY, EC PRIVATE KEY or RSA PRIVATE KEY", block.Type)
	}
	if err != nil {
		return nil, fmt.Errorf("policy: private key: %w", err)
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("policy: private key type %T: %w", key, catalog.ErrNotApproved)
	}
	if _, err := schemeFor(signer.Public()); err != nil {
		return nil, err
	}
	return signer, nil
}
