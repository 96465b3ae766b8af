package attest

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"fmt"

	"github.com/provd/provd/catalog"
)

// maxEKCertSize bounds an EK certificate as read from NV. Real ones are 1-2 KB;
// TPMs cap an NV index at a few KB.
const maxEKCertSize = 16 << 10

// EKCertificate is an endorsement key certificate whose chain verified.
type EKCertificate struct {
	// Cert is the parsed certificate.
	Cert *x509.Certificate
	// Chain is the verified chain: Cert first, a trusted root last.
	Chain []*x509.Certificate
	// PublicKey is the EK's public key: *rsa.PublicKey or *ecdsa.PublicKey.
	PublicKey crypto.PublicKey
	// Manufacturer, Model and Version identify the TPM, from the subject
	// alternative name's directoryName (TCG EK Credential Profile, 3.2.9):
	// Manufacturer is "id:" and eight hex digits (TPM_PT_MANUFACTURER),
	// Version is "id:" and the firmware version. Empty when the certificate
	// carries no TCG SAN.
	Manufacturer, Model, Version string
}

// OIDs of the TCG EK Credential Profile and of X.509. Functions rather than
// variables: an ObjectIdentifier is a slice, and a package-level slice is
// mutable state.
func oidSubjectAltName() asn1.ObjectIdentifier   { return asn1.ObjectIdentifier{2, 5, 29, 17} }
func oidTPMManufacturer() asn1.ObjectIdentifier  { return asn1.ObjectIdentifier{2, 23, 133, 2, 1} }
func oidTPMModel() asn1.ObjectIdentifier         { return asn1.ObjectIdentifier{2, 23, 133, 2, 2} }
func oidTPMVersion() asn1.ObjectIdentifier       { return asn1.ObjectIdentifier{2, 23, 133, 2, 3} }
func oidEKCertificateEKU() asn1.ObjectIdentifier { return asn1.ObjectIdentifier{2, 23, 133, 8, 1} }

// VerifyEKCertificate verifies an EK certificate (DER, as read from the TPM's
// NV index or sent by a device) against opts.Roots and opts.Intermediates at
// opts.Now, and returns it with its key and the TPM's identity.
//
// TPM EK certificates mark their subject alternative name critical and put in
// it only a directoryName of TPM attributes, which Go's x509 reports as an
// unhandled critical extension. VerifyEKCertificate parses that SAN itself and
// marks it handled only when it is exactly the TCG form and no other critical
// extension is unhandled; any other unhandled critical extension still fails
// verification. The chain is verified for any extended key usage, since EK
// certificates carry the TCG EK usage (2.23.133.8.1) or none.
//
// The key must be RSA >= 2048 or ECC P-256/P-384 (ErrUnsupportedAlgorithm).
// Trailing 0x00 or 0xFF bytes, with which some TPMs pad the NV index, are
// ignored; any other trailing data is refused.
func VerifyEKCertificate(der []byte, opts Options) (*EKCertificate, error) {
	ek, err := ParseEKCertificate(der)
	if err != nil {
		return nil, err
	}
	cert := ek.Cert
	if opts.Roots == nil {
		// x509 would fall back to the system roots, which never vouch for a TPM.
		return nil, fmt.Errorf("%w: no EK roots configured", ErrUntrustedEK)
	}
	chains, err := cert.Verify(x509.VerifyOptions{
		Roots:         opts.Roots,
		Intermediates: opts.Intermediates,
		CurrentTime:   opts.now(),
		KeyUsages:     []x509.ExtKeyUsage{x509.ExtKeyUsageAny},
	})
	if err != nil {
		if len(cert.UnhandledCriticalExtensions) > 0 {
			return nil, fmt.Errorf("%w: %w: %v", ErrUntrustedEK, err, cert.UnhandledCriticalExtensions)
		}
		return nil, fmt.Errorf("%w: %w", ErrUntrustedEK, err)
	}
	ek.Chain = chains[0]
	return ek, nil
}

// ParseEKCertificate reads an EK certificate strictly (as VerifyEKCertificate
// does: size, padding, approved key, the TCG SAN) without deciding whether
// any manufacturer vouches for it: for trust on first use, where the caller
// records that no chain was verified. Chain is nil.
func ParseEKCertificate(der []byte) (*EKCertificate, error) {
	if len(der) > maxEKCertSize {
		return nil, fmt.Errorf("%w: EK certificate of %d bytes (limit %d)", ErrBadEvidence, len(der), maxEKCertSize)
	}
	der, err := trimNVPadding(der)
	if err != nil {
		return nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("%w: EK certificate: %w", ErrBadEvidence, err)
	}
	if err := checkPublicKey(cert.PublicKey); err != nil {
		return nil, fmt.Errorf("EK certificate key: %w", err)
	}
	ek := &EKCertificate{Cert: cert, PublicKey: cert.PublicKey}
	if err := ek.takeTCGSAN(); err != nil {
		return nil, err
	}
	return ek, nil
}

// HasEKUsage reports whether the certificate names the TCG EK certificate
// extended key usage (2.23.133.8.1). Not every vendor sets it, so
// VerifyEKCertificate does not require it; a policy may.
func (ek *EKCertificate) HasEKUsage() bool {
	for _, u := range ek.Cert.UnknownExtKeyUsage {
		if u.Equal(oidEKCertificateEKU()) {
			return true
		}
	}
	return false
}

// takeTCGSAN fills the TPM identity from the SAN and decides whether a
// critical SAN that x509 left unhandled is handled here; any other
// critical extension x509 left unhandled refuses the certificate.
func (ek *EKCertificate) takeTCGSAN() error {
	cert := ek.Cert
	var san []byte
	for _, e := range cert.Extensions {
		if e.Id.Equal(oidSubjectAltName()) {
			san = e.Value
		}
	}
	sanUnhandled := false
	for _, oid := range cert.UnhandledCriticalExtensions {
		if !oid.Equal(oidSubjectAltName()) {
			// Refused here, not only by cert.Verify: ParseEKCertificate
			// (trust on first use) verifies no chain (found by review 50:
			// it kept such a certificate as an EK; RFC 5280, 4.2).
			return fmt.Errorf("%w: critical extension %v is not understood: %w", ErrUntrustedEK, oid, x509.UnhandledCriticalExtension{})
		}
		sanUnhandled = true
	}
	if san == nil {
		return nil
	}
	id, err := parseTCGSAN(san)
	if !sanUnhandled {
		// Non-critical, or x509 understood it (it holds DNS names or the
		// like): the TPM identity, if present, is informative only.
		if err == nil {
			ek.Manufacturer, ek.Model, ek.Version = id.manufacturer, id.model, id.version
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("%w: critical subject alternative name is not the TCG form: %w", ErrUntrustedEK, err)
	}
	ek.Manufacturer, ek.Model, ek.Version = id.manufacturer, id.model, id.version
	cert.UnhandledCriticalExtensions = nil // the SAN, handled here
	return nil
}

type tpmIdentity struct{ manufacturer, model, version string }

// parseTCGSAN parses a subjectAltName extension value that holds exactly one
// GeneralName, a directoryName whose attributes are the TPM manufacturer,
// model and version, each once and as a string, and nothing else.
func parseTCGSAN(ext []byte) (tpmIdentity, error) {
	var id tpmIdentity
	var names asn1.RawValue
	rest, err := asn1.Unmarshal(ext, &names)
	if err != nil {
		return tpmIdentity{}, fmt.Errorf("%w: GeneralNames: %w", ErrBadEvidence, err)
	}
	if len(rest) != 0 || names.Class != asn1.ClassUniversal || names.Tag != asn1.TagSequence || !names.IsCompound {
		return tpmIdentity{}, fmt.Errorf("%w: GeneralNames is not one SEQUENCE", ErrBadEvidence)
	}
	var dn asn1.RawValue
	rest, err = asn1.Unmarshal(names.Bytes, &dn)
	if err != nil {
		return tpmIdentity{}, fmt.Errorf("%w: GeneralName: %w", ErrBadEvidence, err)
	}
	if len(rest) != 0 {
		return tpmIdentity{}, fmt.Errorf("%w: more than one GeneralName", ErrBadEvidence)
	}
	// directoryName is [4], explicitly tagged because Name is a CHOICE.
	if dn.Class != asn1.ClassContextSpecific || dn.Tag != 4 || !dn.IsCompound {
		return tpmIdentity{}, fmt.Errorf("%w: GeneralName is not a directoryName", ErrBadEvidence)
	}
	var rdns pkix.RDNSequence
	rest, err = asn1.Unmarshal(dn.Bytes, &rdns)
	if err != nil {
		return tpmIdentity{}, fmt.Errorf("%w: directoryName: %w", ErrBadEvidence, err)
	}
	if len(rest) != 0 {
		return tpmIdentity{}, fmt.Errorf("%w: data after directoryName", ErrBadEvidence)
	}
	var seen [3]bool
	for _, rdn := range rdns {
		for _, atv := range rdn {
			var slot int
			var dst *string
			switch {
			case atv.Type.Equal(oidTPMManufacturer()):
				slot, dst = 0, &id.manufacturer
			case atv.Type.Equal(oidTPMModel()):
				slot, dst = 1, &id.model
			case atv.Type.Equal(oidTPMVersion()):
				slot, dst = 2, &id.version
			default:
				return tpmIdentity{}, fmt.Errorf("%w: directoryName attribute %v is not a TPM attribute", ErrBadEvidence, atv.Type)
			}
			s, ok := atv.Value.(string)
			if !ok {
				return tpmIdentity{}, fmt.Errorf("%w: TPM attribute %v is not a string", ErrBadEvidence, atv.Type)
			}
			if seen[slot] {
				return tpmIdentity{}, fmt.Errorf("%w: TPM attribute %v repeated", ErrBadEvidence, atv.Type)
			}
			seen[slot], *dst = true, s
		}
	}
	if !seen[0] || !seen[1] || !seen[2] {
		return tpmIdentity{}, fmt.Errorf("%w: directoryName lacks TPM manufacturer, model or version", ErrBadEvidence)
	}
	return id, nil
}

// trimNVPadding cuts the 0x00 or 0xFF bytes with which an NV index is padded
// after the certificate's DER; the DER's own length says where it ends.
func trimNVPadding(b []byte) ([]byte, error) {
	var raw asn1.RawValue
	rest, err := asn1.Unmarshal(b, &raw)
	if err != nil {
		return nil, fmt.Errorf("%w: EK certificate: %w", ErrBadEvidence, err)
	}
	if len(rest) > 0 && len(bytes.Trim(rest, "\x00")) > 0 && len(bytes.Trim(rest, "\xff")) > 0 {
		return nil, fmt.Errorf("%w: EK certificate: %d bytes of data after the DER", ErrBadEvidence, len(rest))
	}
	return b[:len(b)-len(rest)], nil
}

// checkPublicKey accepts the approved asymmetric keys (catalog.CheckPublicKey).
func checkPublicKey(pub crypto.PublicKey) error {
	if err := catalog.CheckPublicKey(pub); err != nil {
		return fmt.Errorf("%w: %w", ErrUnsupportedAlgorithm, err)
	}
	return nil
}

// CertPoolFromPEM reads a bundle of PEM certificates (a manufacturer's roots
// or intermediates) into a pool. Text between blocks is ignored, as bundle
// files carry comments; a block of another type, a certificate that does not
// parse, or a bundle without any certificate is an error.
func CertPoolFromPEM(bundle []byte) (*x509.CertPool, error) {
	pool := x509.NewCertPool()
	n := 0
	rest := bundle
	for {
		var block *pem.Block
		block, rest = pem.Decode(rest)
		if block == nil {
			break
		}
		if block.Type != "CERTIFICATE" || len(block.Headers) != 0 {
			return nil, fmt.Errorf("attest: PEM bundle: block %d is %q, want CERTIFICATE", n+1, block.Type)
		}
		cert, err := x509.ParseCertificate(block.Bytes)
		if err != nil {
			return nil, fmt.Errorf("attest: PEM bundle: certificate %d: %w", n+1, err)
		}
		pool.AddCert(cert)
		n++
	}
	if bytes.Contains(rest, []byte("-----BEGIN")) {
		return nil, errors.New("attest: PEM bundle: a block does not decode")
	}
	if n == 0 {
		return nil, errors.New("attest: PEM bundle holds no certificate")
	}
	return pool, nil
}
