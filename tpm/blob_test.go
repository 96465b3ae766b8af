package tpm_test

import (
	"bytes"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/tpm"
)

func testBlob() tpm.Blob {
	return tpm.Blob{
		Public:  tpm2.New2B(tpm.SealTemplate([]byte("0123456789abcdef0123456789abcdef"))),
		Private: tpm2.TPM2BPrivate{Buffer: bytes.Repeat([]byte{7}, 40)},
	}
}

func TestBlobRoundTrip(t *testing.T) {
	b := testBlob()
	enc := b.Marshal()
	got, err := tpm.UnmarshalBlob(enc)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Marshal(), enc) {
		t.Fatal("round trip differs")
	}
	for _, bad := range [][]byte{nil, {0}, {0, 0}, enc[:len(enc)-1], append(enc, 0), {0, 5, 1, 2}} {
		if _, err := tpm.UnmarshalBlob(bad); err == nil {
			t.Errorf("UnmarshalBlob(%x) accepted", bad)
		}
	}
}

func FuzzUnmarshalBlob(f *testing.F) {
	enc := testBlob().Marshal()
	f.Add(enc)
	f.Add(enc[:10])
	f.Add([]byte{0, 2, 0, 0, 0, 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		b, err := tpm.UnmarshalBlob(data)
		if err != nil {
			return
		}
		// Whatever is accepted re-encodes to itself.
		if !bytes.Equal(b.Marshal(), data) {
			t.Fatalf("accepted %x but re-encodes to %x", data, b.Marshal())
		}
	})
}

// RandomAuth never puts a zero byte in an authValue: go-tpm v0.9.8 cuts an
// authValue at its last zero when it keys an HMAC, so such a value would fail
// every session it keys (about one random 32-byte value in eight).
func TestRandomAuthHasNoZeroByte(t *testing.T) {
	for range 2000 {
		a, err := tpm.RandomAuth(32)
		if err != nil || len(a) != 32 {
			t.Fatalf("RandomAuth: %d bytes, %v", len(a), err)
		}
		for _, b := range a {
			if b == 0 {
				t.Fatalf("a zero byte in %x", a)
			}
		}
	}
}

// FuzzOpenInnerDuplicate: a duplicate from the bus (or a file) never panics
// the opener, and whatever it accepts passed the integrity digest, which a
// fuzzer cannot forge under a key it does not know: here the key is known,
// so an accepted input must re-encode to a sensitive area whose digest
// with the name is the one inside.
func FuzzOpenInnerDuplicate(f *testing.F) {
	key := bytes.Repeat([]byte{9}, 16)
	f.Add([]byte{0, 32}, []byte("name"))
	f.Add(bytes.Repeat([]byte{1}, 80), []byte{0, 0xb})
	f.Fuzz(func(t *testing.T, dup, name []byte) {
		s, err := tpm.OpenInnerDuplicate(key, name, dup)
		if err != nil {
			if s != nil {
				t.Fatal("a refused duplicate returned a sensitive area")
			}
			return
		}
		tpm.ClearSensitive(s)
	})
}
