package keywrap_test

import (
	"bytes"
	"crypto/aes"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/provd/provd/keywrap"
)

// review45Raw is RFC 3394's W (n >= 2) or one ECB block (n == 1) over iv and
// padded, both the forger's choice: a wrap that passes AES under the right
// KEK and breaks one RFC 5649 check at a time.
func review45Raw(t *testing.T, kek []byte, iv [8]byte, padded []byte) []byte {
	t.Helper()
	b, err := aes.NewCipher(kek)
	if err != nil {
		t.Fatal(err)
	}
	out := append(iv[:], padded...)
	n := len(padded) / 8
	if n == 1 {
		b.Encrypt(out, out)
		return out
	}
	var block [16]byte
	for j := range 6 {
		for i := 1; i <= n; i++ {
			copy(block[:8], out[:8])
			copy(block[8:], out[8*i:8*i+8])
			b.Encrypt(block[:], block[:])
			binary.BigEndian.PutUint64(out[:8], binary.BigEndian.Uint64(block[:8])^uint64(n*j+i))
			copy(out[8*i:], block[8:])
		}
	}
	return out
}

func review45AIV(prefix, mli uint32) [8]byte {
	var iv [8]byte
	binary.BigEndian.PutUint32(iv[:4], prefix)
	binary.BigEndian.PutUint32(iv[4:], mli)
	return iv
}

// Held: wraps made with the right KEK that break exactly one of RFC 5649
// section 4.2's checks are refused with ErrIntegrity and no plaintext, in
// the one-block case (ECB) and the many-block case (W): the AIV (also RFC
// 3394's IV, A6A6A6A6A6A6A6A6), an MLI of zero, past the last block, a
// whole block short (a short plaintext wrapped by W instead of ECB), or
// 2^32-1, and one non-zero padding byte in each position. The control,
// the same construction with every check met, is byte for byte Wrap's.
func TestReview45UnwrapChecksEachField(t *testing.T) {
	const a = 0xA65959A6
	for _, size := range []int{16, 32} {
		kek := make([]byte, size)
		rand.Read(kek)
		for _, plen := range []int{1, 5, 8, 9, 20, 138} {
			p := make([]byte, plen)
			rand.Read(p)
			padded := append(bytes.Clone(p), make([]byte, (8-plen%8)%8)...)
			n := len(padded) / 8
			want, err := keywrap.Wrap(kek, p)
			if err != nil {
				t.Fatal(err)
			}
			if got := review45Raw(t, kek, review45AIV(a, uint32(plen)), padded); !bytes.Equal(got, want) {
				t.Fatalf("control: the raw construction is not Wrap's (%d bytes)", plen)
			}
			cases := map[string][]byte{
				"AIV changed":   review45Raw(t, kek, review45AIV(a^1, uint32(plen)), padded),
				"RFC 3394 IV":   review45Raw(t, kek, [8]byte{0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6}, padded),
				"MLI zero":      review45Raw(t, kek, review45AIV(a, 0), padded),
				"MLI past":      review45Raw(t, kek, review45AIV(a, uint32(8*n+1)), padded),
				"MLI 2^32-1":    review45Raw(t, kek, review45AIV(a, 0xFFFFFFFF), padded),
				"MLI 2^31+len":  review45Raw(t, kek, review45AIV(a, 0x80000000|uint32(plen)), padded),
				"a block short": review45Raw(t, kek, review45AIV(a, uint32(8*(n-1))), padded),
			}
			for i := plen; i < len(padded); i++ {
				bad := bytes.Clone(padded)
				bad[i] = 0x80
				cases["padding byte "+string(rune('0'+i-plen))] = review45Raw(t, kek, review45AIV(a, uint32(plen)), bad)
			}
			if n >= 2 {
				// A plaintext of at most 8 bytes wrapped by W over two
				// blocks (the padding a whole block) instead of ECB.
				cases["short plaintext by W"] = review45Raw(t, kek, review45AIV(a, 8), append(make([]byte, 8), make([]byte, 8)...))
			}
			for what, w := range cases {
				got, err := keywrap.Unwrap(kek, w)
				if !errors.Is(err, keywrap.ErrIntegrity) || got != nil {
					t.Errorf("AES-%d, %d bytes, %s: %x %v, want ErrIntegrity and nothing", 8*size, plen, what, got, err)
				}
				got, err = keywrap.UnwrapBlock(keywrap.SoftBlock(t, kek), w)
				if !errors.Is(err, keywrap.ErrIntegrity) || got != nil {
					t.Errorf("AES-%d, %d bytes, %s (as a Block): %x %v", 8*size, plen, what, got, err)
				}
			}
			if got, err := keywrap.Unwrap(kek, want); err != nil || !bytes.Equal(got, p) {
				t.Fatalf("control unwrap: %v", err)
			}
		}
	}
}
