package keywrap

import "testing"

// WrapAnySize and UnwrapAnySize are Wrap and Unwrap without the KEK size
// check, for RFC 5649's vectors (an AES-192 KEK, which provd does not use).
var (
	WrapAnySize   = wrap
	UnwrapAnySize = unwrap
)

// SoftBlock is kek as a software Block.
func SoftBlock(t testing.TB, kek []byte) Block {
	b, err := newSoft(kek)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
