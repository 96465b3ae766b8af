package keyfile

import (
	"bytes"
	"encoding/hex"
	"errors"
	"strings"
	"testing"
)

func sample() Key {
	return Key{
		EmptyAuth: true,
		Parent:    ParentSRK,
		Public:    []byte{0, 3, 1, 2, 3},
		Private:   []byte{0, 2, 9, 9},
	}
}

func TestRoundTrip(t *testing.T) {
	for _, k := range []Key{sample(), {Parent: ParentOwner, Public: []byte{0, 1, 7}, Private: []byte{0, 1, 8}, Description: "provd key tls"}} {
		p, err := k.EncodePEM()
		if err != nil {
			t.Fatal(err)
		}
		got, err := ParsePEM(p)
		if err != nil {
			t.Fatalf("parse: %v\n%s", err, p)
		}
		if got.EmptyAuth != k.EmptyAuth || got.Parent != k.Parent || got.Description != k.Description ||
			!bytes.Equal(got.Public, k.Public) || !bytes.Equal(got.Private, k.Private) {
			t.Errorf("round trip: %+v != %+v", got, k)
		}
	}
}

// TestKnownEncoding pins the encoding that tpm2_encodeobject (OpenSSL's
// TSSPRIVKEY template) produces for the same fields; DER's TRUE (0xff)
// parses too.
func TestKnownEncoding(t *testing.T) {
	der, err := sample().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	want := "3021" + "06066781050a0103" + "a003010101" + "020500" + "81000001" + "0405000301" + "0203" + "04040002" + "0909"
	if hex.EncodeToString(der) != want {
		t.Errorf("der = %x\nwant  %s", der, want)
	}
	k, err := Parse(hexb(strings.Replace(want, "a003010101", "a0030101ff", 1)))
	if err != nil || !k.EmptyAuth {
		t.Errorf("DER TRUE: %+v %v", k, err)
	}
}

func TestRejects(t *testing.T) {
	good, _ := sample().Marshal()
	mut := func(f func([]byte) []byte) []byte { return f(bytes.Clone(good)) }
	for name, der := range map[string][]byte{
		"empty":       {},
		"trailing":    append(bytes.Clone(good), 0),
		"importable":  mut(func(b []byte) []byte { b[10] = 4; return b }),
		"not 2B":      mut(func(b []byte) []byte { b[len(b)-3] = 5; return b }),
		"policy [1]":  seq("06066781050a0103" + "a100" + "020140" + "0405000301" + "0203" + "04040002" + "0909"),
		"bad parent":  seq("06066781050a0103" + "0201ff" + "0405000301" + "0203" + "04040002" + "0909"),
		"no privkey":  seq("06066781050a0103" + "020140" + "0405000301" + "0203"),
		"tag reorder": seq("06066781050a0103" + "a403" + "0c0178" + "a003010101" + "020140" + "0405000301" + "0203" + "04040002" + "0909"),
	} {
		if _, err := Parse(der); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
	p, _ := sample().EncodePEM()
	for name, data := range map[string][]byte{
		"other type":            bytes.Replace(p, []byte("TSS2 PRIVATE KEY"), []byte("PRIVATE KEY"), 2),
		"a broken block before": append([]byte("-----BEGIN TSS2 PRIVATE KEY\n"), p...), // text before is allowed: internal/pemblock
		"second block":          append(bytes.Clone(p), p...),
	} {
		if _, err := ParsePEM(data); !errors.Is(err, ErrFormat) {
			t.Errorf("%s: err = %v", name, err)
		}
	}
}

// seq wraps hex-encoded fields in a SEQUENCE.
func seq(fields ...string) []byte {
	var b []byte
	for _, f := range fields {
		b = append(b, hexb(f)...)
	}
	return append([]byte{0x30, byte(len(b))}, b...)
}

func hexb(s string) []byte {
	b, err := hex.DecodeString(s)
	if err != nil {
		panic(err)
	}
	return b
}

func FuzzParsePEM(f *testing.F) {
	p, _ := sample().EncodePEM()
	f.Add(p)
	der, _ := sample().Marshal()
	f.Add(der)
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, parse := range []func([]byte) (Key, error){ParsePEM, Parse} {
			k, err := parse(data)
			if err != nil {
				continue
			}
			// Whatever parses must encode and parse back to itself.
			again, err := k.Marshal()
			if err != nil {
				t.Fatalf("parsed key does not marshal: %v", err)
			}
			k2, err := Parse(again)
			if err != nil || k2.Parent != k.Parent || !bytes.Equal(k2.Public, k.Public) || !bytes.Equal(k2.Private, k.Private) || k2.Description != k.Description || k2.EmptyAuth != k.EmptyAuth {
				t.Fatalf("re-parse: %v", err)
			}
		}
	})
}
