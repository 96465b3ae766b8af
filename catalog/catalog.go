// Package catalog is provd's vocabulary of keys and algorithms: the approved
// key types with the TPM templates provd makes them from, the approved
// hashes, and the conversions between a TPM public area (TPMT_PUBLIC) and a
// Go public key, in both directions.
//
// It exists so that everything that must agree on what a key is agrees by
// construction: the agent creates and recognizes keys with it, the policy
// package builds the public area a policy signer is loaded under, and the
// attestation verifier and the fleet endpoint read public areas with it,
// none of them through the agent. It is pure: no TPM I/O, nothing of provd
// below it, so it can be imported from anywhere.
//
// Approved mode (FIPS 140-3): RSA of 2048 bits and more, ECC P-256 and P-384,
// HMAC-SHA-256, AES-256, SHA-256 and SHA-384. Everything else is
// ErrNotApproved.
package catalog

import (
	"crypto"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/google/go-tpm/tpm2"
)

// Sentinels. The agent maps them to its error kinds (a refusal, exit 5; a
// bad usage, exit 2); the command line adds the command to use instead.
var (
	// ErrNotApproved: an algorithm, key type, curve or size outside
	// approved mode.
	ErrNotApproved = errors.New("algorithm not approved")
	// ErrNotDerivable: an approved type that a TPM cannot derive (RSA).
	ErrNotDerivable = errors.New("key type cannot be derived inside a TPM")
	// ErrNotCreatable: an approved type that provd derives only.
	ErrNotCreatable = errors.New("key type is derived, not created")
	// ErrUsage: a usage the key type does not allow.
	ErrUsage = errors.New("usage not allowed for the key type")
)

// Key usages. A key has exactly one: provd keeps signing and decryption
// keys apart.
const (
	UsageSign    = "sign"
	UsageECDH    = "ecdh"
	UsageDecrypt = "decrypt"
	UsageHMAC    = "hmac"
)

// Type is one approved key type.
type Type struct {
	Name  string
	Alg   tpm2.TPMAlgID
	Curve tpm2.TPMECCCurve // ECC only
	Bits  int
	// Derive: derivable under a derivation parent; Create: creatable (the
	// TPM generates it) under a storage parent.
	Derive, Create bool
	// Usages allowed; the first is the default.
	Usages []string
	// Hash is the default hash of a signature (and of HMAC).
	Hash crypto.Hash
}

// types are the approved types. RSA cannot be derived by a TPM.
var types = []Type{
	{Name: "ecc-p256", Alg: tpm2.TPMAlgECC, Curve: tpm2.TPMECCNistP256, Bits: 256, Derive: true, Create: true, Usages: []string{UsageSign, UsageECDH}, Hash: crypto.SHA256},
	{Name: "ecc-p384", Alg: tpm2.TPMAlgECC, Curve: tpm2.TPMECCNistP384, Bits: 384, Derive: true, Create: true, Usages: []string{UsageSign, UsageECDH}, Hash: crypto.SHA384},
	{Name: "rsa-2048", Alg: tpm2.TPMAlgRSA, Bits: 2048, Create: true, Usages: []string{UsageSign, UsageDecrypt}, Hash: crypto.SHA256},
	{Name: "rsa-3072", Alg: tpm2.TPMAlgRSA, Bits: 3072, Create: true, Usages: []string{UsageSign, UsageDecrypt}, Hash: crypto.SHA256},
	{Name: "rsa-4096", Alg: tpm2.TPMAlgRSA, Bits: 4096, Create: true, Usages: []string{UsageSign, UsageDecrypt}, Hash: crypto.SHA256},
	{Name: "hmac-sha256", Alg: tpm2.TPMAlgKeyedHash, Bits: 256, Derive: true, Usages: []string{UsageHMAC}, Hash: crypto.SHA256},
	{Name: "aes-256", Alg: tpm2.TPMAlgSymCipher, Bits: 256, Derive: true, Usages: []string{UsageDecrypt}},
}

// Types returns the approved key types, in the catalog's order.
func Types() []Type {
	out := slices.Clone(types)
	for i := range out {
		out[i].Usages = slices.Clone(out[i].Usages)
	}
	return out
}

// Names lists the names of the types ok accepts, comma-separated.
func Names(ok func(Type) bool) string {
	var n []string
	for _, kt := range types {
		if ok(kt) {
			n = append(n, kt.Name)
		}
	}
	return strings.Join(n, ", ")
}

// Lookup finds an approved type by name. For derivation (derive true) a type
// a TPM cannot derive is ErrNotDerivable; for creation a derived-only type
// is ErrNotCreatable; an unknown name is ErrNotApproved.
func Lookup(name string, derive bool) (Type, error) {
	i := slices.IndexFunc(types, func(kt Type) bool { return kt.Name == name })
	if i < 0 {
		return Type{}, fmt.Errorf("key type %q: %w (approved: %s)", name, ErrNotApproved, Names(func(Type) bool { return true }))
	}
	kt := types[i]
	if derive && !kt.Derive {
		return kt, fmt.Errorf("%s: %w (derivable: %s)", name, ErrNotDerivable, Names(func(k Type) bool { return k.Derive }))
	}
	if !derive && !kt.Create {
		return kt, fmt.Errorf("%s: %w (creatable: %s)", name, ErrNotCreatable, Names(func(k Type) bool { return k.Create }))
	}
	return kt, nil
}

// Usage picks the default usage ("") or checks the one asked for
// (ErrUsage). For ECC keys "decrypt" means ECDH.
func (kt Type) Usage(u string) (string, error) {
	if u == "" {
		return kt.Usages[0], nil
	}
	if u == UsageDecrypt && kt.Alg == tpm2.TPMAlgECC {
		u = UsageECDH
	}
	if !slices.Contains(kt.Usages, u) {
		return "", fmt.Errorf("%w: %q for a %s key (allowed: %s)", ErrUsage, u, kt.Name, strings.Join(kt.Usages, ", "))
	}
	return u, nil
}

// DefaultHash is the default signature hash of the type name: SHA-384 for
// P-384 keys, SHA-256 for the others (and for a name not in the catalog).
func DefaultHash(name string) crypto.Hash {
	if i := slices.IndexFunc(types, func(kt Type) bool { return kt.Name == name }); i >= 0 && types[i].Hash != 0 {
		return types[i].Hash
	}
	return crypto.SHA256
}

// TPMHash maps an approved hash to the TPM's algorithm; any other is
// ErrNotApproved.
func TPMHash(h crypto.Hash) (tpm2.TPMIAlgHash, error) {
	x, err := HashOf(h)
	return x.Alg, err
}

// Hash is a hash under its three names: the one files, flags and the wire
// use, the TPM's algorithm and Go's. Approved says whether provd uses it.
type Hash struct {
	Name     string
	Alg      tpm2.TPMIAlgHash
	Crypto   crypto.Hash
	Approved bool
}

// hashes are the hashes provd knows: the approved ones, and the ones it
// names in order to refuse them (ErrNotApproved, not "unknown").
var hashes = []Hash{
	{"sha256", tpm2.TPMAlgSHA256, crypto.SHA256, true},
	{"sha384", tpm2.TPMAlgSHA384, crypto.SHA384, true},
	{"sha1", tpm2.TPMAlgSHA1, crypto.SHA1, false},
	{"sha512", tpm2.TPMAlgSHA512, crypto.SHA512, false},
	{"sha224", tpm2.TPMAlgNull, crypto.SHA224, false},
	{"md5", tpm2.TPMAlgNull, crypto.MD5, false},
}

// ErrUnknownHash: a hash name that names no hash at all.
var ErrUnknownHash = errors.New("unknown hash name")

// approved returns h when it is approved, else ErrNotApproved.
func (h Hash) approved() (Hash, error) {
	if !h.Approved {
		return Hash{}, fmt.Errorf("hash %s: %w (sha256, sha384)", h.Name, ErrNotApproved)
	}
	return h, nil
}

// HashByName finds an approved hash by its canonical name ("sha256",
// "sha384"): a known hash outside approved mode is ErrNotApproved, anything
// else ErrUnknownHash. Names are exact; a front end that accepts other
// spellings normalizes them first.
func HashByName(s string) (Hash, error) {
	if i := slices.IndexFunc(hashes, func(h Hash) bool { return h.Name == s }); i >= 0 {
		return hashes[i].approved()
	}
	return Hash{}, fmt.Errorf("%w %q (sha256, sha384)", ErrUnknownHash, s)
}

// HashByAlg finds an approved hash by its TPM algorithm (ErrNotApproved).
func HashByAlg(alg tpm2.TPMIAlgHash) (Hash, error) {
	if i := slices.IndexFunc(hashes, func(h Hash) bool { return h.Alg == alg && alg != tpm2.TPMAlgNull }); i >= 0 {
		return hashes[i].approved()
	}
	return Hash{}, fmt.Errorf("hash algorithm 0x%04x: %w", uint16(alg), ErrNotApproved)
}

// HashOf finds an approved hash by Go's identifier (ErrNotApproved).
func HashOf(h crypto.Hash) (Hash, error) {
	if i := slices.IndexFunc(hashes, func(x Hash) bool { return x.Crypto == h }); i >= 0 {
		return hashes[i].approved()
	}
	return Hash{}, fmt.Errorf("hash %v: %w (sha256, sha384)", h, ErrNotApproved)
}

// HashName is the name of a TPM hash algorithm, approved or not (sha1 for
// an event log's SHA-1 bank), else its number (0x0012), for messages and
// files that echo it. Naming a hash approves nothing.
func HashName(alg tpm2.TPMIAlgHash) string {
	if i := slices.IndexFunc(hashes, func(h Hash) bool { return h.Alg == alg && alg != tpm2.TPMAlgNull }); i >= 0 {
		return hashes[i].Name
	}
	return fmt.Sprintf("0x%04x", uint16(alg))
}

// CryptoHashName is the name of a Go hash, approved or not, so that a
// refusal travels by name (sha512) and is refused the same way on the other
// side; "" for one provd does not know.
func CryptoHashName(h crypto.Hash) string {
	if i := slices.IndexFunc(hashes, func(x Hash) bool { return x.Crypto == h }); i >= 0 {
		return hashes[i].Name
	}
	return ""
}
