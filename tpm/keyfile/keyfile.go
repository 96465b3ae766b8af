// Package keyfile reads and writes TPM 2.0 key files in the "TSS2 PRIVATE
// KEY" PEM format of tpm2-tools (tpm2_encodeobject), tpm2-openssl and
// openssl_tpm2_engine: a TPM-wrapped key (its TPM2B_PUBLIC and TPM2B_PRIVATE)
// with the handle of the parent it loads under. The private part is encrypted
// by the parent inside the TPM: a key file is no secret on its own. It lives
// beside tpm, with no TPM I/O, so that the fleet endpoint and offline tools
// read and write key files without the agent.
//
//	TPMKey ::= SEQUENCE {
//	    type        OBJECT IDENTIFIER,        -- 2.23.133.10.1.3 loadable key
//	    emptyAuth   [0] EXPLICIT BOOLEAN OPTIONAL,
//	    policy      [1] EXPLICIT SEQUENCE OF TPMPolicy OPTIONAL,
//	    secret      [2] EXPLICIT OCTET STRING OPTIONAL,
//	    authPolicy  [3] EXPLICIT SEQUENCE OF TPMAuthPolicy OPTIONAL,
//	    description [4] EXPLICIT UTF8String OPTIONAL,
//	    rsaParent   [5] EXPLICIT BOOLEAN OPTIONAL,
//	    parent      INTEGER,
//	    pubkey      OCTET STRING,             -- TPM2B_PUBLIC, size included
//	    privkey     OCTET STRING              -- TPM2B_PRIVATE, size included
//	}
//
// tpm2-tools 5.4 and tpm2-openssl write type, emptyAuth, parent, pubkey and
// privkey; Marshal writes exactly those, the way they do (emptyAuth TRUE as
// the octet 0x01), so its output is byte-for-byte what tpm2_encodeobject
// writes for the same parts (tested against tpm2-tools). Parse also accepts
// description and rsaParent, and refuses keys that carry policies or an
// import secret (fields [1] to [3]): provd would not honour them.
package keyfile

import (
	"bytes"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/provd/provd/internal/pemblock"
)

// PEMType is the PEM block type of a key file.
const PEMType = "TSS2 PRIVATE KEY"

// OIDLoadableKey is the type of a key loadable with TPM2_Load.
var OIDLoadableKey = asn1.ObjectIdentifier{2, 23, 133, 10, 1, 3}

// OIDImportableKey is the type of a key that must be TPM2_Import-ed first.
var OIDImportableKey = asn1.ObjectIdentifier{2, 23, 133, 10, 1, 4}

// Well-known parent handles.
const (
	// ParentOwner: tpm2_encodeobject writes it for a parent that is not
	// persistent ("a primary generated on the fly" in the tools' reading).
	ParentOwner uint32 = 0x40000001
	// ParentSRK is the TCG SRK's persistent handle.
	ParentSRK uint32 = 0x81000001
)

// ErrFormat: the input is not a well-formed key file.
var ErrFormat = errors.New("not a TSS2 PRIVATE KEY file")

// Key is a parsed key file.
type Key struct {
	EmptyAuth   bool   // the key's own authValue is empty
	Parent      uint32 // parent handle
	Public      []byte // TPM2B_PUBLIC (2-byte size, then TPMT_PUBLIC)
	Private     []byte // TPM2B_PRIVATE
	Description string // optional
}

// Marshal encodes k as DER.
func (k Key) Marshal() ([]byte, error) {
	if err := check2B(k.Public); err != nil {
		return nil, fmt.Errorf("keyfile: pubkey: %w", err)
	}
	if err := check2B(k.Private); err != nil {
		return nil, fmt.Errorf("keyfile: privkey: %w", err)
	}
	var body []byte
	add := func(v any, params string) error {
		b, err := asn1.MarshalWithParams(v, params)
		body = append(body, b...)
		return err
	}
	errs := []error{add(OIDLoadableKey, "")}
	if k.EmptyAuth {
		// [0] { BOOLEAN 0x01 }: OpenSSL's TSSPRIVKEY template, which
		// tpm2-tools, tpm2-openssl and openssl_tpm2_engine share, writes
		// the C value 1 as is, not DER's 0xff. Written the same way, the
		// file is byte for byte theirs; every parser takes either.
		body = append(body, 0xa0, 0x03, 0x01, 0x01, 0x01)
	}
	if k.Description != "" {
		errs = append(errs, add(k.Description, "explicit,tag:4,utf8"))
	}
	errs = append(errs, add(int64(k.Parent), ""), add(k.Public, ""), add(k.Private, ""))
	if err := errors.Join(errs...); err != nil {
		return nil, fmt.Errorf("keyfile: %w", err)
	}
	return asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true, Bytes: body})
}

// EncodePEM encodes k as a PEM "TSS2 PRIVATE KEY" block.
func (k Key) EncodePEM() ([]byte, error) {
	der, err := k.Marshal()
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: PEMType, Bytes: der}), nil
}

// ParsePEM reads exactly one "TSS2 PRIVATE KEY" block (surrounding
// whitespace allowed, nothing else: internal/pemblock).
func ParsePEM(data []byte) (Key, error) {
	blk, err := pemblock.Decode(data, PEMType)
	if err != nil {
		return Key{}, fmt.Errorf("%w: %w", ErrFormat, err)
	}
	return Parse(blk.Bytes)
}

// Parse decodes the DER of a key file.
func Parse(der []byte) (Key, error) {
	var k Key
	var seq asn1.RawValue
	rest, err := asn1.Unmarshal(der, &seq)
	if err != nil || len(rest) != 0 || seq.Class != asn1.ClassUniversal || seq.Tag != asn1.TagSequence || !seq.IsCompound {
		return k, fmt.Errorf("%w: not one DER SEQUENCE", ErrFormat)
	}
	fields := seq.Bytes
	next := func() (asn1.RawValue, bool) {
		var v asn1.RawValue
		r, err := asn1.Unmarshal(fields, &v)
		if err != nil {
			return v, false
		}
		fields = r
		return v, true
	}
	v, ok := next()
	var oid asn1.ObjectIdentifier
	if !ok || v.Class != asn1.ClassUniversal || v.Tag != asn1.TagOID {
		return k, fmt.Errorf("%w: no type OID", ErrFormat)
	}
	if r, err := asn1.Unmarshal(v.FullBytes, &oid); err != nil || len(r) != 0 {
		return k, fmt.Errorf("%w: bad type OID", ErrFormat)
	}
	switch {
	case oid.Equal(OIDLoadableKey):
	case oid.Equal(OIDImportableKey):
		return k, fmt.Errorf("%w: an importable key (2.23.133.10.1.4); only loadable keys (2.23.133.10.1.3) are supported", ErrFormat)
	default:
		return k, fmt.Errorf("%w: type %v", ErrFormat, oid)
	}
	// Optional explicitly tagged fields, in increasing tag order, then the
	// parent INTEGER.
	last := -1
	for {
		if v, ok = next(); !ok {
			return k, fmt.Errorf("%w: truncated", ErrFormat)
		}
		if v.Class != asn1.ClassContextSpecific {
			break
		}
		n := v.Tag
		if !v.IsCompound || n <= last {
			return k, fmt.Errorf("%w: unexpected field [%d]", ErrFormat, n)
		}
		last = n
		switch n {
		case 0, 5:
			// BER BOOLEAN: any non-zero octet is TRUE (see Marshal).
			if len(v.Bytes) != 3 || v.Bytes[0] != 0x01 || v.Bytes[1] != 0x01 {
				return k, fmt.Errorf("%w: [%d] is not a BOOLEAN", ErrFormat, n)
			}
			if n == 0 {
				k.EmptyAuth = v.Bytes[2] != 0
			}
		case 4:
			var s string
			if r, err := asn1.UnmarshalWithParams(v.Bytes, &s, "utf8"); err != nil || len(r) != 0 || !utf8.ValidString(s) {
				return k, fmt.Errorf("%w: [4] description is not a UTF8String", ErrFormat)
			}
			k.Description = s
		case 1, 2, 3:
			return k, fmt.Errorf("%w: the key carries a policy or an import secret (field [%d]), which provd does not honour", ErrFormat, n)
		default:
			return k, fmt.Errorf("%w: unknown field [%d]", ErrFormat, n)
		}
	}
	var parent int64
	if v.Class != asn1.ClassUniversal || v.Tag != asn1.TagInteger {
		return k, fmt.Errorf("%w: no parent INTEGER", ErrFormat)
	}
	if r, err := asn1.Unmarshal(v.FullBytes, &parent); err != nil || len(r) != 0 || parent < 0 || parent > 0xffffffff {
		return k, fmt.Errorf("%w: parent is not a 32-bit handle", ErrFormat)
	}
	k.Parent = uint32(parent)
	for _, dst := range []*[]byte{&k.Public, &k.Private} {
		v, ok := next()
		if !ok || v.Class != asn1.ClassUniversal || v.Tag != asn1.TagOctetString || v.IsCompound {
			return k, fmt.Errorf("%w: pubkey and privkey OCTET STRINGs", ErrFormat)
		}
		*dst = bytes.Clone(v.Bytes)
	}
	if len(fields) != 0 {
		return k, fmt.Errorf("%w: trailing fields", ErrFormat)
	}
	if err := check2B(k.Public); err != nil {
		return k, fmt.Errorf("%w: pubkey: %v", ErrFormat, err)
	}
	if err := check2B(k.Private); err != nil {
		return k, fmt.Errorf("%w: privkey: %v", ErrFormat, err)
	}
	return k, nil
}

// check2B checks a TPM2B: a 2-byte big-endian size, then exactly that many
// bytes, at least one.
func check2B(b []byte) error {
	if len(b) < 3 {
		return fmt.Errorf("%d bytes, too short", len(b))
	}
	if n := int(b[0])<<8 | int(b[1]); n != len(b)-2 {
		return fmt.Errorf("size field %d, %d bytes follow", n, len(b)-2)
	}
	return nil
}
