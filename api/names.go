package api

import (
	"crypto"
	"crypto/ecdh"
	"errors"
	"fmt"
	"strings"

	"github.com/provd/provd/catalog"
	"github.com/provd/provd/policy"
)

// The names of algorithms as they cross the wire and the command line. Each
// is parsed here and nowhere else; what is approved for a use is decided by
// the agent (a name that parses is not yet an approved choice).

// Signature schemes.
const (
	SchemeECDSA  = "ecdsa"
	SchemeRSASSA = "rsassa"
	SchemeRSAPSS = "rsapss"
)

// HashName is the wire name of a hash ("" for 0, the key's default).
func HashName(h crypto.Hash) string {
	if h == 0 {
		return ""
	}
	if name := catalog.CryptoHashName(h); name != "" {
		return name
	}
	return fmt.Sprintf("hash-%d", int(h))
}

// ParseHash reads a hash name (catalog.HashByName), in any case and with or
// without the dash (sha-256); "" is 0 (the key's default). A hash outside
// approved mode (SHA-1, SHA-512, ...) is not permitted (exit 5); a name that
// is no hash is ErrBadInput.
func ParseHash(s string) (crypto.Hash, error) {
	if s == "" {
		return 0, nil
	}
	h, err := catalog.HashByName(strings.ReplaceAll(strings.ToLower(s), "-", ""))
	switch {
	case errors.Is(err, catalog.ErrNotApproved):
		return 0, fmt.Errorf("%w: %w", ErrNotPermitted, err)
	case err != nil:
		return 0, fmt.Errorf("%w: %w", ErrBadInput, err)
	}
	return h.Crypto, nil
}

// CurveName is the name of an ECDH curve.
func CurveName(c ecdh.Curve) string {
	switch c {
	case ecdh.P256():
		return "P-256"
	case ecdh.P384():
		return "P-384"
	case ecdh.P521():
		return "P-521"
	}
	return fmt.Sprint(c)
}

// ParsePeer rebuilds an ECDH peer key from its curve's name and its
// uncompressed point; a bad curve or point is ErrBadInput.
func ParsePeer(curve string, point []byte) (*ecdh.PublicKey, error) {
	var c ecdh.Curve
	switch curve {
	case "P-256":
		c = ecdh.P256()
	case "P-384":
		c = ecdh.P384()
	case "P-521":
		c = ecdh.P521()
	default:
		return nil, fmt.Errorf("%w: curve %q: want P-256 or P-384", ErrBadInput, curve)
	}
	pub, err := c.NewPublicKey(point)
	if err != nil {
		return nil, fmt.Errorf("%w: peer public key: %v", ErrBadInput, err)
	}
	return pub, nil
}

// bankName is a PCR bank's wire name ("" for the default).
func bankName(b policy.Bank) string {
	if b == 0 {
		return ""
	}
	return b.String()
}

// parseBank reads a bank name ("" for the default); others are ErrBadInput.
func parseBank(s string) (policy.Bank, error) {
	if s == "" {
		return 0, nil
	}
	b, err := policy.ParseBank(s)
	if err != nil {
		return 0, fmt.Errorf("%w: bank: %v", ErrBadInput, err)
	}
	return b, nil
}

// signerPEM is the wire form of a policy signer ("" for none).
func signerPEM(pub crypto.PublicKey) (string, error) {
	if pub == nil {
		return "", nil
	}
	b, err := policy.MarshalPublicKeyPEM(pub)
	return string(b), err
}

// parseSigner reads a PEM policy signer ("" for none).
func parseSigner(pemText string) (crypto.PublicKey, error) {
	if pemText == "" {
		return nil, nil
	}
	pub, err := policy.ParsePublicKeyPEM([]byte(pemText))
	if err != nil {
		return nil, fmt.Errorf("%w: policy_signer: %v", ErrBadInput, err)
	}
	return pub, nil
}
