package tpmkey

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"fmt"
	"io"
	"strings"
)

// CSR builds a PKCS#10 certificate request for subject and DNS names,
// signed inside the TPM by k; the signature ends with ctx.
func CSR(ctx context.Context, k *Key, subject pkix.Name, dns []string) ([]byte, error) {
	tmpl := &x509.CertificateRequest{Subject: subject, DNSNames: dns}
	return x509.CreateCertificateRequest(rand.Reader, tmpl, contextSigner{ctx, k})
}

// contextSigner lends one call's context to the crypto.Signer that x509
// drives; it lives for that call only.
type contextSigner struct {
	ctx context.Context
	k   *Key
}

func (s contextSigner) Public() crypto.PublicKey { return s.k.Public() }

func (s contextSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	return s.k.SignContext(s.ctx, digest, opts)
}

// Attribute types ParseSubject knows.
var subjectOIDs = map[string]asn1.ObjectIdentifier{
	"CN":           {2, 5, 4, 3},
	"SERIALNUMBER": {2, 5, 4, 5},
	"C":            {2, 5, 4, 6},
	"L":            {2, 5, 4, 7},
	"ST":           {2, 5, 4, 8},
	"STREET":       {2, 5, 4, 9},
	"O":            {2, 5, 4, 10},
	"OU":           {2, 5, 4, 11},
}

// ParseSubject parses a subject written "CN=device-42,O=Acme,OU=Fleet": comma
// separated TYPE=value pairs, types CN, O, OU, C, L, ST, STREET and
// SERIALNUMBER, "\," for a comma inside a value. Attributes keep their order.
func ParseSubject(s string) (pkix.Name, error) {
	var name pkix.Name
	var parts []string
	var cur strings.Builder
	for i := 0; i < len(s); i++ {
		switch {
		case s[i] == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
		case s[i] == ',':
			parts = append(parts, cur.String())
			cur.Reset()
		default:
			cur.WriteByte(s[i])
		}
	}
	parts = append(parts, cur.String())
	var rdn pkix.RDNSequence
	for _, p := range parts {
		p = strings.TrimSpace(p)
		typ, val, ok := strings.Cut(p, "=")
		typ, val = strings.ToUpper(strings.TrimSpace(typ)), strings.TrimSpace(val)
		oid, known := subjectOIDs[typ]
		if !ok || !known || val == "" {
			return name, fmt.Errorf("subject %q: %q is not TYPE=value with TYPE one of CN, O, OU, C, L, ST, STREET, SERIALNUMBER", s, p)
		}
		rdn = append(rdn, pkix.RelativeDistinguishedNameSET{{Type: oid, Value: val}})
	}
	name.FillFromRDNSequence(&rdn)
	// Keep the order as written (FillFromRDNSequence sorts by type).
	name.ExtraNames = nil
	for _, set := range rdn {
		name.ExtraNames = append(name.ExtraNames, set...)
	}
	name.CommonName, name.Organization, name.OrganizationalUnit, name.Country = "", nil, nil, nil
	name.Locality, name.Province, name.StreetAddress, name.SerialNumber = nil, nil, nil, ""
	name.Names = nil
	return name, nil
}
