package policy

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	_ "embed"
	"encoding/binary"
	"encoding/pem"
	"hash"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// rsaTestKeyPEM is a throw-away RSA-3072 key used only by tests.
//
//go:embed testdata/rsa3072-test-only.pem
var rsaTestKeyPEM []byte

// Test keys are made once per test binary.
var (
	keysOnce sync.Once
	keyP256  *ecdsa.PrivateKey
	keyP384  *ecdsa.PrivateKey
	keyRSA   *rsa.PrivateKey
)

func testKeys(t testing.TB) (p256, p384 *ecdsa.PrivateKey, rsa3072 *rsa.PrivateKey) {
	t.Helper()
	keysOnce.Do(func() {
		var err error
		if keyP256, err = ecdsa.GenerateKey(elliptic.P256(), rand.Reader); err != nil {
			panic(err)
		}
		if keyP384, err = ecdsa.GenerateKey(elliptic.P384(), rand.Reader); err != nil {
			panic(err)
		}
		// A fixed RSA key: generating 3072-bit keys takes seconds, which
		// every fuzz worker would pay at start-up.
		block, _ := pem.Decode(rsaTestKeyPEM)
		if block == nil {
			panic("testdata/rsa3072-test-only.pem: no PEM block")
		}
		if keyRSA, err = x509.ParsePKCS1PrivateKey(block.Bytes); err != nil {
			panic(err)
		}
	})
	return keyP256, keyP384, keyRSA
}

type namedSigner struct {
	name   string
	signer crypto.Signer
}

func testSigners(t testing.TB) []namedSigner {
	p256, p384, r := testKeys(t)
	return []namedSigner{{"ecdsa-p256", p256}, {"ecdsa-p384", p384}, {"rsapss-3072", r}}
}

// newHash returns the hash for a session algorithm, independently of the
// package's own mapping.
func newHash(t testing.TB, alg tpm2.TPMIAlgHash) func() hash.Hash {
	t.Helper()
	switch alg {
	case tpm2.TPMAlgSHA256:
		return sha256.New
	case tpm2.TPMAlgSHA384:
		return sha512.New384
	}
	t.Fatalf("no hash for 0x%04x", alg)
	return nil
}

// h computes H(parts...) with the session algorithm.
func h(t testing.TB, alg tpm2.TPMIAlgHash, parts ...[]byte) []byte {
	t.Helper()
	hh := newHash(t, alg)()
	for _, p := range parts {
		hh.Write(p)
	}
	return hh.Sum(nil)
}

func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }
func u16(v uint16) []byte { return binary.BigEndian.AppendUint16(nil, v) }

func fill(b byte, n int) []byte { return bytes.Repeat([]byte{b}, n) }

// testName returns a syntactically valid SHA-256 TPM name.
func testName(b byte) []byte { return append([]byte{0x00, 0x0b}, fill(b, 32)...) }

var testCounter = NVCounterRef{Handle: 0x01500010, Name: testName(0xc0)}

func testValues(bank Bank, pcrs ...int) PCRValues {
	v := PCRValues{Bank: bank, Values: map[int][]byte{}}
	for _, p := range pcrs {
		v.Values[p] = fill(byte(p+1), bank.Hash().Size())
	}
	return v
}
