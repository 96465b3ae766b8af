package policy

import (
	"crypto"
	"fmt"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/catalog"
)

// Bank is a PCR hash bank. Only the approved banks exist as values; the zero
// Bank is invalid so that a forgotten field is caught rather than defaulted.
type Bank tpm2.TPMAlgID

// The approved PCR banks.
const (
	BankSHA256 = Bank(tpm2.TPMAlgSHA256)
	BankSHA384 = Bank(tpm2.TPMAlgSHA384)
)

// ParseBank parses a bank name as used in files and flags ("sha256",
// "sha384"). "sha1" and every other name are refused with catalog.ErrNotApproved, so a
// config cannot quietly fall back to a broken hash.
func ParseBank(s string) (Bank, error) {
	h, err := catalog.HashByName(s)
	if err != nil {
		return 0, fmt.Errorf("policy: PCR bank %q: %w (use sha256 or sha384)", s, catalog.ErrNotApproved)
	}
	return Bank(h.Alg), nil
}

// String returns the bank's name as ParseBank accepts it.
func (b Bank) String() string {
	if h, err := catalog.HashByAlg(tpm2.TPMIAlgHash(b)); err == nil {
		return h.Name
	}
	return fmt.Sprintf("Bank(0x%04x)", uint16(b))
}

// Valid reports whether b is an approved bank.
func (b Bank) Valid() bool { return b == BankSHA256 || b == BankSHA384 }

// Alg returns the TPM algorithm ID of the bank, as used in PCR selections.
func (b Bank) Alg() tpm2.TPMIAlgHash { return tpm2.TPMIAlgHash(b) }

// Hash returns the Go hash of the bank; it is crypto.Hash(0) for an invalid
// bank, which has no Size and so cannot be mistaken for a real one.
func (b Bank) Hash() crypto.Hash {
	h, _ := catalog.HashByAlg(tpm2.TPMIAlgHash(b))
	return h.Crypto
}

// MarshalText implements encoding.TextMarshaler so banks appear by name in JSON.
func (b Bank) MarshalText() ([]byte, error) {
	if !b.Valid() {
		return nil, fmt.Errorf("policy: marshal %v: %w", b, catalog.ErrNotApproved)
	}
	return []byte(b.String()), nil
}

// UnmarshalText implements encoding.TextUnmarshaler with ParseBank.
func (b *Bank) UnmarshalText(text []byte) error {
	v, err := ParseBank(string(text))
	if err != nil {
		return err
	}
	*b = v
	return nil
}

// sessionHash returns the Go hash for a policy session (digest) algorithm,
// refusing everything but SHA-256 and SHA-384.
func sessionHash(alg tpm2.TPMIAlgHash) (crypto.Hash, error) {
	h, err := catalog.HashByAlg(alg)
	if err != nil {
		return 0, fmt.Errorf("policy: session %w", err)
	}
	return h.Crypto, nil
}
