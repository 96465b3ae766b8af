// Package keywrap is the key material of an HSM-style key ceremony, in pure
// Go with no TPM and no state: AES key wrap with padding (RFC 5649, NIST SP
// 800-38F KWP, what PKCS#11's CKM_AES_KEY_WRAP_PAD and OpenSSL's
// id-aes256-wrap-pad speak), the key check values custodians compare (the
// first 3 bytes of AES-ECB(key, zero block), as HSMs print them), and the
// XOR of key components.
//
// It exists apart from the agent so that an air-gapped recovery host (provd
// key recover) and the device compute exactly the same bytes, and so that a
// test can hold it against OpenSSL and another HSM byte for byte. Callers
// own every buffer they pass and get back, and clear the secret ones.
package keywrap

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
)

// Errors: a wrapped key that fails its integrity check, input that is not
// a key of an accepted size, and key components that cancel each other.
var (
	ErrIntegrity = errors.New("keywrap: integrity check failed (wrong KEK, or the wrapped key was changed)")
	ErrSize      = errors.New("keywrap: bad size")
	// ErrComponents: key components of which some cancel each other.
	ErrComponents = errors.New("keywrap: components cancel each other")
)

// aiv is RFC 5649's alternative initial value, before the 32-bit length.
const aiv = 0xA65959A6

// MaxPlaintext bounds what Wrap takes: a PKCS#8 RSA-4096 key is about 2.4 KB;
// 64 KiB is far above every key and far below anything that would make the
// wrap's 6n block operations a burden.
const MaxPlaintext = 64 << 10

// checkKEK accepts AES-128 and AES-256 keys (the approved sizes provd uses).
func checkKEK(kek []byte) error {
	if len(kek) != 16 && len(kek) != 32 {
		return fmt.Errorf("%w: a KEK is 16 or 32 bytes (AES-128 or AES-256), not %d", ErrSize, len(kek))
	}
	return nil
}

// Block is the AES block cipher a wrap runs on, one 16-byte block per call:
// crypto/aes in software (Wrap, Unwrap), or a KEK that never leaves a TPM
// (one TPM2_EncryptDecrypt2 in ECB mode per block). A wrap of n 8-byte
// blocks takes 6n calls, one after the other.
type Block interface {
	Encrypt(dst, src []byte) error
	Decrypt(dst, src []byte) error
}

// softBlock is a software AES key as a Block.
type softBlock struct{ b cipher.Block }

func (s softBlock) Encrypt(dst, src []byte) error { s.b.Encrypt(dst, src); return nil }
func (s softBlock) Decrypt(dst, src []byte) error { s.b.Decrypt(dst, src); return nil }

func newSoft(kek []byte) (Block, error) {
	b, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	return softBlock{b}, nil
}

// Wrap wraps plaintext (1..MaxPlaintext bytes) under kek with AES key wrap
// with padding (RFC 5649 section 4.1).
func Wrap(kek, plaintext []byte) ([]byte, error) {
	if err := checkKEK(kek); err != nil {
		return nil, err
	}
	return wrap(kek, plaintext)
}

func wrap(kek, plaintext []byte) ([]byte, error) {
	b, err := newSoft(kek)
	if err != nil {
		return nil, err
	}
	return WrapBlock(b, plaintext)
}

// WrapBlock is Wrap with the KEK as a Block.
func WrapBlock(b Block, plaintext []byte) ([]byte, error) {
	if len(plaintext) == 0 || len(plaintext) > MaxPlaintext {
		return nil, fmt.Errorf("%w: wraps 1..%d bytes, not %d", ErrSize, MaxPlaintext, len(plaintext))
	}
	padded := (len(plaintext) + 7) / 8 * 8
	out := make([]byte, 8+padded)
	binary.BigEndian.PutUint32(out[0:4], aiv)
	binary.BigEndian.PutUint32(out[4:8], uint32(len(plaintext)))
	copy(out[8:], plaintext)
	if padded == 8 {
		// One block: a single AES encryption of AIV || P (section 4.1).
		if err := b.Encrypt(out, out); err != nil {
			clear(out)
			return nil, err
		}
		return out, nil
	}
	var block [16]byte
	defer clear(block[:])
	n := padded / 8
	for j := range 6 {
		for i := 1; i <= n; i++ {
			copy(block[:8], out[:8])
			copy(block[8:], out[8*i:8*i+8])
			if err := b.Encrypt(block[:], block[:]); err != nil {
				clear(out)
				return nil, err
			}
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(out[:8], binary.BigEndian.Uint64(block[:8])^t)
			copy(out[8*i:], block[8:])
		}
	}
	return out, nil
}

// Unwrap reverses Wrap: it checks the integrity value, the length and the
// zero padding, and returns the plaintext (to be cleared by the caller), or
// ErrIntegrity with nothing of it.
func Unwrap(kek, wrapped []byte) ([]byte, error) {
	if err := checkKEK(kek); err != nil {
		return nil, err
	}
	return unwrap(kek, wrapped)
}

func unwrap(kek, wrapped []byte) ([]byte, error) {
	b, err := newSoft(kek)
	if err != nil {
		return nil, err
	}
	return UnwrapBlock(b, wrapped)
}

// CheckWrapped refuses what cannot be an RFC 5649 output before any block
// operation: under 16 bytes, not whole 8-byte blocks, or above the bound.
func CheckWrapped(wrapped []byte) error {
	if len(wrapped) < 16 || len(wrapped)%8 != 0 || len(wrapped) > MaxPlaintext+16 {
		return fmt.Errorf("%w: a wrapped key is 16..%d bytes in 8-byte steps, not %d", ErrSize, MaxPlaintext+16, len(wrapped))
	}
	return nil
}

// UnwrapBlock is Unwrap with the KEK as a Block.
func UnwrapBlock(b Block, wrapped []byte) ([]byte, error) {
	if err := CheckWrapped(wrapped); err != nil {
		return nil, err
	}
	buf := make([]byte, len(wrapped))
	copy(buf, wrapped)
	n := len(buf)/8 - 1
	if n == 1 {
		if err := b.Decrypt(buf, buf); err != nil {
			clear(buf)
			return nil, err
		}
	} else {
		var block [16]byte
		defer clear(block[:])
		for j := 5; j >= 0; j-- {
			for i := n; i >= 1; i-- {
				t := uint64(n*j + i)
				binary.BigEndian.PutUint64(block[:8], binary.BigEndian.Uint64(buf[:8])^t)
				copy(block[8:], buf[8*i:8*i+8])
				if err := b.Decrypt(block[:], block[:]); err != nil {
					clear(buf)
					return nil, err
				}
				copy(buf[:8], block[:8])
				copy(buf[8*i:], block[8:])
			}
		}
	}
	// Section 4.2: the AIV, a length in the last block's reach, zero padding;
	// judged together, so that a failure says nothing of which.
	mli := int(binary.BigEndian.Uint32(buf[4:8]))
	var want [4]byte
	binary.BigEndian.PutUint32(want[:], aiv)
	ok := subtle.ConstantTimeCompare(buf[0:4], want[:])
	lenOK := mli > 8*(n-1) && mli <= 8*n
	if lenOK {
		var pad byte
		for _, c := range buf[8+mli:] {
			pad |= c
		}
		lenOK = pad == 0
	}
	if ok != 1 || !lenOK {
		clear(buf)
		return nil, ErrIntegrity
	}
	out := make([]byte, mli)
	copy(out, buf[8:8+mli])
	clear(buf)
	return out, nil
}

// KCV is the key check value of an AES key as HSMs print it: the first 3
// bytes of AES-ECB(key, zero block).
func KCV(key []byte) ([3]byte, error) {
	var kcv [3]byte
	if err := checkKEK(key); err != nil {
		return kcv, err
	}
	b, err := newSoft(key)
	if err != nil {
		return kcv, err
	}
	return KCVBlock(b)
}

// CheckValue is the whole block a KCV is cut from: AES-ECB(key, zero
// block). Kept with a KEK, it lets a KEK that only decrypts be checked too
// (its decryption must give the zero block), with 128 bits where a KCV has
// 24.
func CheckValue(key []byte) ([16]byte, error) {
	var block [16]byte
	b, err := newSoft(key)
	if err != nil {
		return block, err
	}
	err = b.Encrypt(block[:], block[:])
	return block, err
}

// KCVBlock is KCV of a KEK held as a Block: for a key inside a TPM, the
// proof that the TPM holds the key the custodians combined.
func KCVBlock(b Block) ([3]byte, error) {
	var kcv [3]byte
	var block [16]byte
	if err := b.Encrypt(block[:], block[:]); err != nil {
		return kcv, err
	}
	copy(kcv[:], block[:3])
	return kcv, nil
}

// MaxComponents bounds how many custodians a key is split among; it also
// bounds Combine's check that no components cancel (2^n - 1 subsets).
const MaxComponents = 16

// Combine XORs key components into the key they share (split knowledge:
// no custodian alone knows it). It takes 2 to MaxComponents components of
// one size, 16 or 32 bytes, and refuses components of which some cancel
// each other: no non-empty subset may XOR to zero. That refuses a
// component of all zeros, two equal components, a combined key of all
// zeros, and the key equal to one component (or the XOR of some), where
// fewer custodians than all would know the key (review 45: two equal
// components of three made the key the third custodian's alone). The
// check visits every subset in constant time: it takes no branch on the
// components' bytes, and its error does not say which ones cancel. The
// caller clears the components and the result.
func Combine(components [][]byte) ([]byte, error) {
	if len(components) < 2 || len(components) > MaxComponents {
		return nil, fmt.Errorf("%w: a key from components takes 2 to %d, not %d", ErrSize, MaxComponents, len(components))
	}
	size := len(components[0])
	if err := checkKEK(components[0]); err != nil {
		return nil, err
	}
	for i, c := range components {
		if len(c) != size {
			return nil, fmt.Errorf("%w: component %d is %d bytes, the first %d", ErrSize, i+1, len(c), size)
		}
	}
	if cancel(components) {
		return nil, fmt.Errorf("%w (a component of all zeros, two equal, or one the XOR of others): fewer custodians than all would know the key", ErrComponents)
	}
	key := make([]byte, size)
	for _, c := range components {
		subtle.XORBytes(key, key, c)
	}
	return key, nil
}

// cancel reports whether a non-empty subset of cs (equal sizes) XORs to
// zero. In Gray-code order each step XORs one component into acc, which
// then holds the XOR of the next subset; every subset comes once. The
// steps depend only on len(cs), never on the bytes.
func cancel(cs [][]byte) bool {
	acc := make([]byte, len(cs[0]))
	defer clear(acc)
	zero := 0
	for i := uint(1); i < 1<<len(cs); i++ {
		subtle.XORBytes(acc, acc, cs[bits.TrailingZeros(i)])
		var or byte
		for _, b := range acc {
			or |= b
		}
		zero |= subtle.ConstantTimeByteEq(or, 0)
	}
	return zero == 1
}
