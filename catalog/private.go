package catalog

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/rsa"
	"errors"
	"fmt"
	"math/big"

	"github.com/google/go-tpm/tpm2"
)

// ErrKeyMismatch: a private part that is not the public key's.
var ErrKeyMismatch = errors.New("the private key does not belong to the public key")

// PrivateKey puts a key's public area and its sensitive area (from a
// duplicate: provd key export) together into a Go private key: RSA from the
// modulus and the one prime the TPM keeps, ECC from the scalar. It checks
// that the private part is the public key's. The result holds secrets: the
// caller drops it as soon as it is marshalled.
func PrivateKey(pub tpm2.TPMTPublic, sens *tpm2.TPMTSensitive) (crypto.Signer, error) {
	want, err := PublicKey(pub)
	if err != nil {
		return nil, err
	}
	if sens == nil || sens.SensitiveType != pub.Type {
		return nil, fmt.Errorf("%w: the sensitive area is of another type", ErrKeyMismatch)
	}
	switch w := want.(type) {
	case *rsa.PublicKey:
		p, err := sens.Sensitive.RSA()
		if err != nil {
			return nil, err
		}
		return rsaFromPrime(w, new(big.Int).SetBytes(p.Buffer))
	case *ecdsa.PublicKey:
		d, err := sens.Sensitive.ECC()
		if err != nil {
			return nil, err
		}
		k, err := ecdsa.ParseRawPrivateKey(w.Curve, leftPad(d.Buffer, (w.Curve.Params().BitSize+7)/8))
		if err != nil {
			return nil, fmt.Errorf("%w: %v", ErrKeyMismatch, err)
		}
		if !k.PublicKey.Equal(w) {
			return nil, ErrKeyMismatch
		}
		return k, nil
	}
	return nil, fmt.Errorf("%w: a %T key", ErrNotApproved, want)
}

// rsaFromPrime rebuilds an RSA private key from its public key and one
// prime factor, and validates it.
func rsaFromPrime(pub *rsa.PublicKey, p *big.Int) (*rsa.PrivateKey, error) {
	one := big.NewInt(1)
	if p.Cmp(one) <= 0 || p.Cmp(pub.N) >= 0 {
		return nil, ErrKeyMismatch
	}
	q, r := new(big.Int).QuoRem(pub.N, p, new(big.Int))
	if r.Sign() != 0 {
		return nil, ErrKeyMismatch
	}
	phi := new(big.Int).Mul(new(big.Int).Sub(p, one), new(big.Int).Sub(q, one))
	d := new(big.Int).ModInverse(big.NewInt(int64(pub.E)), phi)
	if d == nil {
		return nil, ErrKeyMismatch
	}
	k := &rsa.PrivateKey{PublicKey: *pub, D: d, Primes: []*big.Int{p, q}}
	if err := k.Validate(); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrKeyMismatch, err)
	}
	k.Precompute()
	return k, nil
}

// PrivateType is the approved catalog type of a private key (PKCS#8 from a
// backup), or ErrNotApproved.
func PrivateType(k crypto.PrivateKey) (Type, error) {
	var name, what string
	switch k := k.(type) {
	case *rsa.PrivateKey:
		name, what = fmt.Sprintf("rsa-%d", k.N.BitLen()), fmt.Sprintf("an RSA key of %d bits", k.N.BitLen())
	case *ecdsa.PrivateKey:
		switch k.Curve.Params().Name {
		case "P-256":
			name = "ecc-p256"
		case "P-384":
			name = "ecc-p384"
		}
		what = "an ECC key on " + k.Curve.Params().Name
	default:
		what = fmt.Sprintf("a %T key", k)
	}
	kt, err := Lookup(name, false)
	if err != nil {
		return Type{}, fmt.Errorf("%w: %s", ErrNotApproved, what)
	}
	return kt, nil
}

// FromPrivate is the catalog type of a private key (PKCS#8 from a backup),
// with the sensitive area and the unique field of its public area that
// TPM2_Import takes: RSA keeps one prime, ECC the scalar. Only approved
// types pass (ErrNotApproved); RSA's exponent must be 65537, the only one
// provd's templates carry. The caller clears the sensitive area.
func FromPrivate(k crypto.PrivateKey) (Type, *tpm2.TPMTSensitive, tpm2.TPMUPublicID, error) {
	kt, err := PrivateType(k)
	if err != nil {
		return Type{}, nil, tpm2.TPMUPublicID{}, err
	}
	switch k := k.(type) {
	case *rsa.PrivateKey:
		if len(k.Primes) != 2 {
			return Type{}, nil, tpm2.TPMUPublicID{}, fmt.Errorf("%w: an RSA key with %d primes", ErrNotApproved, len(k.Primes))
		}
		// FIPS 186-5 primes are half the modulus each, and a TPM keeps one
		// of them in a buffer of that size (found by review: unbalanced
		// primes reached the TPM, which refused them).
		if k.Primes[0].BitLen() != kt.Bits/2 || k.Primes[1].BitLen() != kt.Bits/2 {
			return Type{}, nil, tpm2.TPMUPublicID{}, fmt.Errorf("%w: an RSA-%d key whose primes are %d and %d bits, not %d each", ErrNotApproved, kt.Bits, k.Primes[0].BitLen(), k.Primes[1].BitLen(), kt.Bits/2)
		}
		if k.E != 65537 {
			return Type{}, nil, tpm2.TPMUPublicID{}, fmt.Errorf("%w: RSA public exponent %d (provd's keys use 65537)", ErrNotApproved, k.E)
		}
		if err := k.Validate(); err != nil {
			return Type{}, nil, tpm2.TPMUPublicID{}, fmt.Errorf("%w: %v", ErrKeyMismatch, err)
		}
		size := (kt.Bits + 7) / 8
		sens := &tpm2.TPMTSensitive{
			SensitiveType: tpm2.TPMAlgRSA,
			Sensitive:     tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgRSA, &tpm2.TPM2BPrivateKeyRSA{Buffer: leftPad(k.Primes[0].Bytes(), size/2)}),
		}
		return kt, sens, tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: leftPad(k.N.Bytes(), size)}), nil
	case *ecdsa.PrivateKey:
		d, err := k.Bytes()
		if err != nil {
			return Type{}, nil, tpm2.TPMUPublicID{}, fmt.Errorf("%w: %v", ErrKeyMismatch, err)
		}
		point, err := k.PublicKey.Bytes() // 0x04 || X || Y
		if err != nil {
			clear(d)
			return Type{}, nil, tpm2.TPMUPublicID{}, fmt.Errorf("%w: %v", ErrKeyMismatch, err)
		}
		n := (len(point) - 1) / 2
		sens := &tpm2.TPMTSensitive{
			SensitiveType: tpm2.TPMAlgECC,
			Sensitive:     tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgECC, &tpm2.TPM2BECCParameter{Buffer: d}),
		}
		return kt, sens, tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: point[1 : 1+n]},
			Y: tpm2.TPM2BECCParameter{Buffer: point[1+n:]},
		}), nil
	}
	return Type{}, nil, tpm2.TPMUPublicID{}, fmt.Errorf("%w: a %T key", ErrNotApproved, k)
}

// leftPad returns b left-padded with zeros to n bytes (b when longer).
func leftPad(b []byte, n int) []byte {
	if len(b) >= n {
		return b
	}
	return append(bytes.Repeat([]byte{0}, n-len(b)), b...)
}
