package cli

import (
	"bytes"
	"encoding/hex"
	"testing"
)

// FuzzParseComponent: a custodian's typing never panics the parser, and
// what it accepts is 16 or 32 bytes, the hex digits of the input in order.
func FuzzParseComponent(f *testing.F) {
	f.Add([]byte("00112233 44556677 8899aabb ccddeeff"))
	f.Add([]byte("0011-2233-4455-6677-8899-aabb-ccdd-eeff-0011-2233-4455-6677-8899-aabb-ccdd-eeff\r\n"))
	f.Add([]byte("zz"))
	f.Fuzz(func(t *testing.T, in []byte) {
		out, err := parseComponent(in)
		if err != nil {
			if out != nil {
				t.Fatal("a refused component returned bytes")
			}
			return
		}
		if len(out) != 16 && len(out) != 32 {
			t.Fatalf("accepted a %d-byte component", len(out))
		}
		if hex.EncodeToString(out) != string(bytes.ToLower(strip(in))) {
			t.Fatalf("%q parsed to %x", in, out)
		}
	})
}

func strip(in []byte) []byte {
	var out []byte
	for _, c := range in {
		if c != ' ' && c != '-' && c != '\t' && c != '\r' && c != '\n' {
			out = append(out, c)
		}
	}
	return out
}
