package pemblock

import (
	"bytes"
	"encoding/pem"
	"errors"
	"testing"
)

var good = pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte("the key's DER")})

// A file is its one block, text before it (OpenSSL's dumps) and whitespace
// after it; anything that would let two readers see two different blocks
// is refused (review 58: pem.Decode
// skips a block that does not decode and returns the next one).
func TestDecode(t *testing.T) {
	for _, in := range [][]byte{good, append(append([]byte("\n\r\n"), good...), " \t\r\n\n"...),
		append([]byte("Public-Key: (256 bit)\n    04:ab:cd\n"), good...)} { // openssl -text's dump before the block (review 60)
		blk, err := Decode(in, "PRIVATE KEY", "PUBLIC KEY")
		if err != nil || string(blk.Bytes) != "the key's DER" {
			t.Errorf("%q: %v", in, err)
		}
	}
	other := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: []byte("a hidden key")})
	withHeaders := pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: []byte("x")})
	for name, in := range map[string]string{
		"empty":                    "",
		"no block":                 "the key's DER",
		"text after":               string(good) + "trailer\n",
		"two blocks":               string(good) + string(other),
		"a broken BEGIN first":     "-----BEGIN JUNK\n" + string(other),
		"a corrupt block first":    "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n" + string(other),
		"a mismatched END first":   "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END CERTIFICATE-----\n" + string(other),
		"a block that won't parse": "-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n",
		"another type":             string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte("x")})),
		"headers":                  string(withHeaders),
	} {
		if blk, err := Decode([]byte(in), "PUBLIC KEY"); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: %v, %v; want ErrFormat", name, blk, err)
		}
	}
}

// FuzzDecode: never a panic; what is taken is the one block the input
// holds, and the input's only BEGIN line is its own.
func FuzzDecode(f *testing.F) {
	f.Add(good)
	f.Add(append([]byte("-----BEGIN JUNK\n"), good...))
	f.Add(append(append([]byte{}, good...), good...))
	f.Fuzz(func(t *testing.T, data []byte) {
		blk, err := Decode(data, "PUBLIC KEY")
		if err != nil {
			return
		}
		if n := bytes.Count(data, []byte("-----BEGIN")); n != 1 {
			t.Fatalf("taken with %d BEGIN lines", n)
		}
		again, err := Decode(pem.EncodeToMemory(blk), "PUBLIC KEY")
		if err != nil || !bytes.Equal(again.Bytes, blk.Bytes) {
			t.Fatalf("the block written again reads %v, %v", again, err)
		}
	})
}

// DER takes a file given as DER or as one PEM block, and holds the PEM
// form to Decode's rules.
func TestDER(t *testing.T) {
	if b, err := DER([]byte("raw DER"), "PUBLIC KEY"); err != nil || string(b) != "raw DER" {
		t.Errorf("DER of DER: %q, %v", b, err)
	}
	if b, err := DER(good, "PUBLIC KEY"); err != nil || string(b) != "the key's DER" {
		t.Errorf("DER of PEM: %q, %v", b, err)
	}
	if _, err := DER(append(append([]byte{}, good...), good...), "PUBLIC KEY"); !errors.Is(err, ErrFormat) {
		t.Errorf("DER of two blocks: %v, want ErrFormat", err)
	}
}
