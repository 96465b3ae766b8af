package keyfile

import (
	"bytes"
	"encoding/asn1"
	"encoding/pem"
	mrand "math/rand/v2"
	"testing"
)

// review58Key is a key file as provd writes one (blobKeyFile).
func review58Key() Key {
	return Key{EmptyAuth: true, Parent: ParentOwner, Public: []byte{0, 3, 1, 2, 3}, Private: []byte{0, 2, 9, 9}}
}

// FLAW (failed before the mend): ParsePEM promises "exactly one TSS2 PRIVATE KEY block (surrounding
// whitespace allowed, nothing else)" but Go's pem.Decode skips whatever
// does not decode as a block and takes the next one: a file that opens
// with a broken BEGIN line, or with a first TSS2 PRIVATE KEY block whose
// base64 is corrupt (or whose END line names another type), followed by a
// second, well-formed block, is read as that second key. The check for
// leading junk only looks before the first "-----BEGIN". Attacker: whoever
// hands an operator a key file for provd key import-blob (a hostile file):
// OpenSSL-based tools (tpm2-tools, tpm2-openssl) stop at the first block
// and report an error or another key, provd imports the hidden one, so
// what the operator inspected is not what provd imported. The TPM's load
// under the PK still bounds what can be imported (impact: a parser
// differential, not a key provd did not wrap). Fix: in ParsePEM, require
// that the block pem.Decode returns starts where the first "-----BEGIN"
// is (data[i:] begins with the block's own BEGIN line, i.e. rest and the
// consumed length account for all bytes), or refuse any input with more
// than one "-----BEGIN".
func TestReview58ParsePEMTakesAHiddenSecondBlock(t *testing.T) {
	good, err := review58Key().EncodePEM()
	if err != nil {
		t.Fatal(err)
	}
	for name, in := range map[string]string{
		"broken BEGIN line first": "-----BEGIN JUNK\nthis is not whitespace\n" + string(good),
		"corrupt first block":     "-----BEGIN TSS2 PRIVATE KEY-----\n!!!! not base64 !!!!\n-----END TSS2 PRIVATE KEY-----\n" + string(good),
		"first block END mismatch": "-----BEGIN TSS2 PRIVATE KEY-----\n" +
			"MCECBggr\n-----END RSA PRIVATE KEY-----\n" + string(good),
	} {
		t.Run(name, func(t *testing.T) {
			if k, err := ParsePEM([]byte(in)); err == nil {
				t.Errorf("read a key (parent %#x) from a file that is not one PEM block alone", k.Parent)
			}
		})
	}
}

// Held: Parse takes only the documented structure, strictly, and never
// panics. Tried: the fields provd does not honour ([1] policy, [2] secret,
// [3] authPolicy) and an importable key refused; fields out of order or
// repeated, a primitive [0], a BOOLEAN of two octets, a parent that is
// negative, over 32 bits or non-minimally encoded, BER indefinite and
// long-form lengths, TPM2B sizes that do not match, an empty TPM2B, a
// constructed OCTET STRING, trailing data inside and after the SEQUENCE;
// every truncation of a good file and 20,000 random byte flips. What
// parses round-trips: Parse(Marshal(k)) is k, and Marshal(Parse(der)) is
// der for provd's (tpm2-tools') encoding.
func TestReview58ParseIsStrict(t *testing.T) {
	good, err := review58Key().Marshal()
	if err != nil {
		t.Fatal(err)
	}
	seq := func(fields ...[]byte) []byte {
		b, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true, Bytes: bytes.Join(fields, nil)})
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	mk := func(v any, params string) []byte {
		b, err := asn1.MarshalWithParams(v, params)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	oid := mk(OIDLoadableKey, "")
	empty := []byte{0xa0, 0x03, 0x01, 0x01, 0x01}
	parent := mk(int64(ParentOwner), "")
	pub := mk([]byte{0, 3, 1, 2, 3}, "")
	priv := mk([]byte{0, 2, 9, 9}, "")
	if !bytes.Equal(seq(oid, empty, parent, pub, priv), good) {
		t.Fatalf("the test's encoder is not Marshal's")
	}
	ctx := func(tag int, inner []byte) []byte {
		return mk(asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: tag, IsCompound: true, Bytes: inner}, "")
	}
	boolTrue := []byte{0x01, 0x01, 0xff}
	for name, der := range map[string][]byte{
		"policy [1]":           seq(oid, empty, ctx(1, seq()), parent, pub, priv),
		"secret [2]":           seq(oid, empty, ctx(2, mk([]byte{1}, "")), parent, pub, priv),
		"authPolicy [3]":       seq(oid, empty, ctx(3, seq()), parent, pub, priv),
		"importable":           seq(mk(OIDImportableKey, ""), empty, parent, pub, priv),
		"other OID":            seq(mk(asn1.ObjectIdentifier{2, 23, 133, 10, 1, 5}, ""), parent, pub, priv),
		"[5] before [0]":       seq(oid, ctx(5, boolTrue), empty, parent, pub, priv),
		"[0] twice":            seq(oid, empty, empty, parent, pub, priv),
		"[0] primitive":        seq(oid, []byte{0x80, 0x01, 0x01}, parent, pub, priv),
		"[0] two octets":       seq(oid, ctx(0, []byte{0x01, 0x02, 0x00, 0x01}), parent, pub, priv),
		"[0] not BOOLEAN":      seq(oid, ctx(0, mk(1, "")), parent, pub, priv),
		"[6]":                  seq(oid, ctx(6, boolTrue), parent, pub, priv),
		"[4] not a string":     seq(oid, ctx(4, mk(7, "")), parent, pub, priv),
		"application tag":      seq(oid, mk(asn1.RawValue{Class: asn1.ClassApplication, Tag: 0, IsCompound: true, Bytes: boolTrue}, ""), parent, pub, priv),
		"parent -1":            seq(oid, mk(int64(-1), ""), pub, priv),
		"parent 2^32":          seq(oid, mk(int64(1)<<32, ""), pub, priv),
		"parent non-minimal":   seq(oid, []byte{0x02, 0x06, 0x00, 0x00, 0x40, 0x00, 0x00, 0x01}, pub, priv),
		"parent missing":       seq(oid, pub, priv),
		"pub size wrong":       seq(oid, parent, mk([]byte{0, 4, 1, 2, 3}, ""), priv),
		"pub size short":       seq(oid, parent, mk([]byte{0, 2, 1, 2, 3}, ""), priv),
		"pub empty 2B":         seq(oid, parent, mk([]byte{0, 0}, ""), priv),
		"priv missing":         seq(oid, parent, pub),
		"priv constructed":     seq(oid, parent, pub, mk(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagOctetString, IsCompound: true, Bytes: priv}, "")),
		"field after privkey":  seq(oid, parent, pub, priv, priv),
		"trailing after SEQ":   append(bytes.Clone(good), 0x00, 0x00),
		"indefinite length":    append(append([]byte{0x30, 0x80}, good[2:]...), 0x00, 0x00),
		"long-form length":     append([]byte{0x30, 0x81, good[1]}, good[2:]...),
		"SET not SEQUENCE":     append([]byte{0x31}, good[1:]...),
		"description bad utf8": seq(oid, ctx(4, []byte{0x0c, 0x02, 0xff, 0xfe}), parent, pub, priv),
	} {
		if k, err := Parse(der); err == nil {
			t.Errorf("%s: parsed as %+v", name, k)
		}
	}
	for i := range len(good) {
		if _, err := Parse(good[:i]); err == nil {
			t.Errorf("truncated to %d bytes: parsed", i)
		}
	}
	rng := mrand.New(mrand.NewPCG(5, 8))
	for range 20000 {
		b := bytes.Clone(good)
		for range 1 + rng.IntN(3) {
			b[rng.IntN(len(b))] ^= byte(1 + rng.IntN(255))
		}
		k, err := Parse(b)
		if err != nil {
			continue
		}
		// What parses must be a file Marshal writes back as a valid one.
		again, err := k.Marshal()
		if err != nil {
			t.Fatalf("%x parsed but does not marshal: %v", b, err)
		}
		if k2, err := Parse(again); err != nil || k2.Parent != k.Parent || !bytes.Equal(k2.Public, k.Public) || !bytes.Equal(k2.Private, k.Private) || k2.EmptyAuth != k.EmptyAuth {
			t.Fatalf("%x: not a round trip: %+v %+v %v", b, k, k2, err)
		}
	}
	for _, k := range []Key{review58Key(), {Parent: ParentSRK, Public: []byte{0, 1, 7}, Private: []byte{0, 1, 8}, Description: "τ key, \u202e"}} {
		der, err := k.Marshal()
		if err != nil {
			t.Fatal(err)
		}
		got, err := Parse(der)
		if err != nil || got.EmptyAuth != k.EmptyAuth || got.Parent != k.Parent || got.Description != k.Description ||
			!bytes.Equal(got.Public, k.Public) || !bytes.Equal(got.Private, k.Private) {
			t.Errorf("Parse(Marshal(%+v)) = %+v, %v", k, got, err)
		}
		if again, _ := got.Marshal(); !bytes.Equal(again, der) {
			t.Errorf("Marshal(Parse(der)) is not der")
		}
	}
	// The PEM layer adds no header and nothing but whitespace after; text
	// before the one BEGIN line is OpenSSL's dump, allowed since review 60
	// (internal/pemblock: with one BEGIN line there is no other block).
	p, _ := review58Key().EncodePEM()
	withHeader := pem.EncodeToMemory(&pem.Block{Type: PEMType, Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: good})
	for name, in := range map[string][]byte{
		"text after":    append(bytes.Clone(p), "junk"...),
		"two blocks":    append(bytes.Clone(p), p...),
		"header":        withHeader,
		"other type":    pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: good}),
		"no PEM at all": good,
	} {
		if _, err := ParsePEM(in); err == nil {
			t.Errorf("%s: parsed", name)
		}
	}
	if _, err := ParsePEM(append(append([]byte("\n \t\n"), p...), "\n\n"...)); err != nil {
		t.Errorf("whitespace around: %v", err)
	}
	if _, err := ParsePEM(append([]byte("key:\n"), p...)); err != nil {
		t.Errorf("text before: %v", err)
	}
}
