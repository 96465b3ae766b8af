package attest_test

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	_ "embed"
	"encoding/asn1"
	"encoding/pem"
	"errors"
	"math/big"
	"testing"
	"time"

	"github.com/provd/provd/attest"
)

var (
	//go:embed testdata/swtpm-ek-rsa2048.der
	swtpmEKRSA []byte
	//go:embed testdata/swtpm-ek-eccp384.der
	swtpmEKECC []byte
	//go:embed testdata/swtpm-localca-root.pem
	swtpmRootPEM []byte
	//go:embed testdata/swtpm-localca-issuer.pem
	swtpmIssuerPEM []byte
)

// testNow is the clock of the certificates built in code.
var testNow = time.Date(2030, 6, 1, 12, 0, 0, 0, time.UTC)

func at(t time.Time) func() time.Time { return func() time.Time { return t } }

func oid(ids ...int) asn1.ObjectIdentifier { return asn1.ObjectIdentifier(ids) }

// certAuthority is a CA built in code.
type certAuthority struct {
	cert *x509.Certificate
	key  crypto.Signer
	pool *x509.CertPool
}

func newCA(t testing.TB, name string, parent *certAuthority) *certAuthority {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: testNow.AddDate(-5, 0, 0), NotAfter: testNow.AddDate(20, 0, 0),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	issuer, signer := tmpl, crypto.Signer(k)
	if parent != nil {
		issuer, signer = parent.cert, parent.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer, k.Public(), signer)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(cert)
	return &certAuthority{cert: cert, key: k, pool: pool}
}

// san marshals a subjectAltName: GeneralNames holding the given names.
func san(t testing.TB, names ...asn1.RawValue) []byte {
	t.Helper()
	var inner []byte
	for _, n := range names {
		b, err := asn1.Marshal(n)
		if err != nil {
			t.Fatal(err)
		}
		inner = append(inner, b...)
	}
	b, err := asn1.Marshal(asn1.RawValue{Class: asn1.ClassUniversal, Tag: asn1.TagSequence, IsCompound: true, Bytes: inner})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// dirName is a directoryName GeneralName with one attribute per RDN, as
// swtpm and TPM vendors write it, values as UTF8String unless given raw.
func dirName(t testing.TB, attrs ...any) asn1.RawValue {
	t.Helper()
	var rdns pkix.RDNSequence
	for i := 0; i < len(attrs); i += 2 {
		v := attrs[i+1]
		if s, ok := v.(string); ok {
			v = asn1.RawValue{Tag: asn1.TagUTF8String, Bytes: []byte(s)}
		}
		rdns = append(rdns, pkix.RelativeDistinguishedNameSET{{Type: attrs[i].(asn1.ObjectIdentifier), Value: v}})
	}
	b, err := asn1.Marshal(rdns)
	if err != nil {
		t.Fatal(err)
	}
	return asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 4, IsCompound: true, Bytes: b}
}

var (
	oidManufacturer = oid(2, 23, 133, 2, 1)
	oidModel        = oid(2, 23, 133, 2, 2)
	oidVersion      = oid(2, 23, 133, 2, 3)
	oidSAN          = oid(2, 5, 29, 17)
)

func tcgDirName(t testing.TB) asn1.RawValue {
	return dirName(t, oidManufacturer, "id:50524F56", oidModel, "provd-test", oidVersion, "id:00010002")
}

func sanExt(critical bool, value []byte) pkix.Extension {
	return pkix.Extension{Id: oidSAN, Critical: critical, Value: value}
}

// newEK issues an EK certificate for pub as TPM vendors do: empty subject,
// keyEncipherment, the TCG EK usage, and the extensions given.
func newEK(t testing.TB, issuer *certAuthority, pub crypto.PublicKey, notBefore, notAfter time.Time, exts ...pkix.Extension) []byte {
	t.Helper()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(42), NotBefore: notBefore, NotAfter: notAfter,
		KeyUsage:              x509.KeyUsageKeyEncipherment,
		UnknownExtKeyUsage:    []asn1.ObjectIdentifier{oid(2, 23, 133, 8, 1)},
		BasicConstraintsValid: true,
		ExtraExtensions:       exts,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, issuer.cert, pub, issuer.key)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

type ekCase struct {
	name    string
	der     []byte
	opts    attest.Options
	wantErr error
	wantAs  func(err error) bool // an x509 error the sentinel must carry
	tcg     bool                 // the TPM identity must be reported
}

// ekCases builds the table of certificates made in code.
func ekCases(t testing.TB) []ekCase {
	t.Helper()
	root := newCA(t, "provd test EK root", nil)
	issuing := newCA(t, "provd test EK issuing CA", root)
	other := newCA(t, "someone else's root", nil)
	rsaKey, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	rsa1024, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	edPub, _, _ := ed25519.GenerateKey(rand.Reader)

	from, until := testNow.AddDate(-1, 0, 0), testNow.AddDate(10, 0, 0)
	tcg := sanExt(true, san(t, tcgDirName(t)))
	opts := attest.Options{Now: at(testNow), Roots: root.pool}
	withIntermediate := attest.Options{Now: at(testNow), Roots: root.pool, Intermediates: issuing.pool}
	ek := func(pub crypto.PublicKey, exts ...pkix.Extension) []byte {
		return newEK(t, root, pub, from, until, exts...)
	}
	good := ek(rsaKey.Public(), tcg)
	unhandled := func(err error) bool { return errors.As(err, new(x509.UnhandledCriticalExtension)) }
	expired := func(err error) bool {
		var ci x509.CertificateInvalidError
		return errors.As(err, &ci) && ci.Reason == x509.Expired
	}
	unknownCA := func(err error) bool { return errors.As(err, new(x509.UnknownAuthorityError)) }
	otherCritical := pkix.Extension{Id: oid(1, 3, 6, 1, 4, 1, 99999, 1), Critical: true, Value: []byte{5, 0}}

	return []ekCase{
		{name: "critical TCG SAN, RSA-2048", der: good, opts: opts, tcg: true},
		{name: "critical TCG SAN, ECC P-256", der: ek(p256.Public(), tcg), opts: opts, tcg: true},
		{name: "critical TCG SAN, ECC P-384", der: ek(p384.Public(), tcg), opts: opts, tcg: true},
		{name: "non-critical TCG SAN", der: ek(rsaKey.Public(), sanExt(false, san(t, tcgDirName(t)))), opts: opts, tcg: true},
		{name: "no SAN", der: ek(rsaKey.Public()), opts: opts},
		{name: "via an intermediate", der: newEK(t, issuing, p256.Public(), from, until, tcg), opts: withIntermediate, tcg: true},
		{name: "NV padding of 0xff", der: append(append([]byte{}, good...), 0xff, 0xff, 0xff), opts: opts, tcg: true},
		{name: "NV padding of zeros", der: append(append([]byte{}, good...), make([]byte, 100)...), opts: opts, tcg: true},

		{name: "TCG SAN and another critical extension", der: ek(rsaKey.Public(), tcg, otherCritical), opts: opts,
			wantErr: attest.ErrUntrustedEK, wantAs: unhandled},
		{name: "unknown critical extension alone", der: ek(rsaKey.Public(), otherCritical), opts: opts,
			wantErr: attest.ErrUntrustedEK, wantAs: unhandled},
		{name: "critical SAN with a common name", der: ek(rsaKey.Public(), sanExt(true, san(t, dirName(t,
			oidManufacturer, "id:50524F56", oidModel, "m", oidVersion, "id:1", oid(2, 5, 4, 3), "cn")))), opts: opts,
			wantErr: attest.ErrUntrustedEK},
		{name: "critical SAN without version", der: ek(rsaKey.Public(), sanExt(true, san(t, dirName(t,
			oidManufacturer, "id:50524F56", oidModel, "m")))), opts: opts, wantErr: attest.ErrUntrustedEK},
		{name: "critical SAN with manufacturer twice", der: ek(rsaKey.Public(), sanExt(true, san(t, dirName(t,
			oidManufacturer, "id:50524F56", oidManufacturer, "id:50524F57", oidModel, "m", oidVersion, "id:1")))), opts: opts,
			wantErr: attest.ErrUntrustedEK},
		{name: "critical SAN with an integer model", der: ek(rsaKey.Public(), sanExt(true, san(t, dirName(t,
			oidManufacturer, "id:50524F56", oidModel, 7, oidVersion, "id:1")))), opts: opts, wantErr: attest.ErrUntrustedEK},
		{name: "critical SAN with two directoryNames", der: ek(rsaKey.Public(), sanExt(true, san(t, tcgDirName(t), tcgDirName(t)))),
			opts: opts, wantErr: attest.ErrUntrustedEK},
		{name: "critical SAN with a registeredID", der: ek(rsaKey.Public(), sanExt(true, san(t,
			asn1.RawValue{Class: asn1.ClassContextSpecific, Tag: 8, Bytes: []byte{0x2a, 0x03}}))), opts: opts,
			wantErr: attest.ErrUntrustedEK},

		{name: "wrong root", der: good, opts: attest.Options{Now: at(testNow), Roots: other.pool},
			wantErr: attest.ErrUntrustedEK, wantAs: unknownCA},
		{name: "no roots", der: good, opts: attest.Options{Now: at(testNow)}, wantErr: attest.ErrUntrustedEK},
		{name: "intermediate not given", der: newEK(t, issuing, p256.Public(), from, until, tcg), opts: opts,
			wantErr: attest.ErrUntrustedEK, wantAs: unknownCA},
		{name: "intermediate given as the only root", der: newEK(t, issuing, p256.Public(), from, until, tcg),
			opts: attest.Options{Now: at(testNow), Roots: issuing.pool}, tcg: true},
		{name: "expired", der: good, opts: attest.Options{Now: at(until.Add(time.Second)), Roots: root.pool},
			wantErr: attest.ErrUntrustedEK, wantAs: expired},
		{name: "not yet valid", der: good, opts: attest.Options{Now: at(from.Add(-time.Second)), Roots: root.pool},
			wantErr: attest.ErrUntrustedEK, wantAs: expired},

		{name: "RSA-1024", der: ek(rsa1024.Public(), tcg), opts: opts, wantErr: attest.ErrUnsupportedAlgorithm},
		{name: "ECC P-224", der: ek(p224.Public(), tcg), opts: opts, wantErr: attest.ErrUnsupportedAlgorithm},
		{name: "Ed25519", der: ek(edPub, tcg), opts: opts, wantErr: attest.ErrUnsupportedAlgorithm},

		{name: "trailing data", der: append(append([]byte{}, good...), 1), opts: opts, wantErr: attest.ErrBadEvidence},
		{name: "truncated", der: good[:len(good)-1], opts: opts, wantErr: attest.ErrBadEvidence},
		{name: "not DER", der: []byte("-----BEGIN CERTIFICATE-----"), opts: opts, wantErr: attest.ErrBadEvidence},
		{name: "empty", der: nil, opts: opts, wantErr: attest.ErrBadEvidence},
		{name: "too large", der: append(append([]byte{}, good...), make([]byte, 16<<10)...), opts: opts, wantErr: attest.ErrBadEvidence},
	}
}

func TestVerifyEKCertificate(t *testing.T) {
	for _, c := range ekCases(t) {
		t.Run(c.name, func(t *testing.T) {
			ek, err := attest.VerifyEKCertificate(c.der, c.opts)
			if !errors.Is(err, c.wantErr) || (c.wantErr == nil) != (err == nil) {
				t.Fatalf("VerifyEKCertificate = %v, want %v", err, c.wantErr)
			}
			if c.wantAs != nil && !c.wantAs(err) {
				t.Fatalf("VerifyEKCertificate = %v: not the x509 error expected", err)
			}
			if err != nil {
				return
			}
			if c.tcg != (ek.Manufacturer == "id:50524F56" && ek.Model == "provd-test" && ek.Version == "id:00010002") {
				t.Errorf("TPM identity = %q %q %q, want it reported: %v", ek.Manufacturer, ek.Model, ek.Version, c.tcg)
			}
			if !ek.HasEKUsage() || len(ek.Chain) < 2 || ek.Chain[0] != ek.Cert || ek.PublicKey == nil {
				t.Errorf("EK = %+v", ek)
			}
		})
	}
}

// swtpm's certificates, kept as golden files: Go's verifier alone refuses
// them for the critical SAN; VerifyEKCertificate accepts them, and only them.
func TestGoldenSwtpmEKCertificates(t *testing.T) {
	roots, err := attest.CertPoolFromPEM(swtpmRootPEM)
	if err != nil {
		t.Fatal(err)
	}
	issuers, err := attest.CertPoolFromPEM(swtpmIssuerPEM)
	if err != nil {
		t.Fatal(err)
	}
	valid := time.Date(2027, 1, 1, 0, 0, 0, 0, time.UTC)
	for _, c := range []struct {
		name string
		der  []byte
		key  func(crypto.PublicKey) bool
	}{
		{"RSA EK", swtpmEKRSA, func(k crypto.PublicKey) bool { r, ok := k.(*rsa.PublicKey); return ok && r.N.BitLen() == 2048 }},
		{"ECC EK", swtpmEKECC, func(k crypto.PublicKey) bool { e, ok := k.(*ecdsa.PublicKey); return ok && e.Curve == elliptic.P384() }},
	} {
		t.Run(c.name, func(t *testing.T) {
			cert, err := x509.ParseCertificate(c.der)
			if err != nil {
				t.Fatal(err)
			}
			_, err = cert.Verify(x509.VerifyOptions{Roots: roots, Intermediates: issuers, CurrentTime: valid,
				KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
			if !errors.As(err, new(x509.UnhandledCriticalExtension)) {
				t.Fatalf("plain x509 verification = %v, want UnhandledCriticalExtension (else this test proves nothing)", err)
			}
			ek, err := attest.VerifyEKCertificate(c.der, attest.Options{Now: at(valid), Roots: roots, Intermediates: issuers})
			if err != nil {
				t.Fatal(err)
			}
			if ek.Manufacturer != "id:00001014" || ek.Model != "swtpm" || ek.Version != "id:20191023" || !c.key(ek.PublicKey) {
				t.Errorf("EK = %q %q %q %T", ek.Manufacturer, ek.Model, ek.Version, ek.PublicKey)
			}
			for _, bad := range []attest.Options{
				{Now: at(valid), Roots: roots}, // issuing CA missing
				{Now: at(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)), Roots: roots, Intermediates: issuers}, // before issue
				{Now: at(valid), Intermediates: issuers},                                                     // no roots
			} {
				if _, err := attest.VerifyEKCertificate(c.der, bad); !errors.Is(err, attest.ErrUntrustedEK) {
					t.Errorf("VerifyEKCertificate(%+v) = %v, want ErrUntrustedEK", bad, err)
				}
			}
		})
	}
}

func TestCertPoolFromPEM(t *testing.T) {
	keyPEM := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: []byte{1, 2, 3}})
	for _, c := range []struct {
		name   string
		bundle []byte
		ok     bool
	}{
		{"two certificates with comments", append(append([]byte("# swtpm root\n"), swtpmRootPEM...), append([]byte("subject=CN=issuer\n"), swtpmIssuerPEM...)...), true},
		{"one certificate", swtpmRootPEM, true},
		{"empty", nil, false},
		{"text only", []byte("no certificates here\n"), false},
		{"private key block", append(append([]byte{}, swtpmRootPEM...), keyPEM...), false},
		{"broken block", append(append([]byte{}, swtpmRootPEM...), []byte("-----BEGIN CERTIFICATE-----\nAAAA\n")...), false},
		{"certificate that does not parse", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: []byte{0x30, 0}}), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			pool, err := attest.CertPoolFromPEM(c.bundle)
			if c.ok != (err == nil) || c.ok != (pool != nil) {
				t.Fatalf("CertPoolFromPEM = %v, %v; want ok=%v", pool, err, c.ok)
			}
		})
	}
}
