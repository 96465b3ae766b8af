package catalog

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"math/big"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// A Go public key goes to a TPM public area and back unchanged, for every
// approved kind; the name go-tpm computes is stable for the same key.
func TestPublicRoundTrip(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	r2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	for _, tc := range []struct {
		name string
		pub  crypto.PublicKey
		o    PublicOptions
	}{
		{"p256 ecdsa", &p256.PublicKey, PublicOptions{NameAlg: tpm2.TPMAlgSHA256, Scheme: tpm2.TPMAlgECDSA, Hash: tpm2.TPMAlgSHA256}},
		{"p384 null", &p384.PublicKey, PublicOptions{NameAlg: tpm2.TPMAlgSHA384}},
		{"rsa pss", &r2048.PublicKey, PublicOptions{NameAlg: tpm2.TPMAlgSHA256, Scheme: tpm2.TPMAlgRSAPSS, Hash: tpm2.TPMAlgSHA256}},
		{"rsa ssa", &r2048.PublicKey, PublicOptions{NameAlg: tpm2.TPMAlgSHA256, Scheme: tpm2.TPMAlgRSASSA, Hash: tpm2.TPMAlgSHA384}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tp, err := Public(tc.pub, tc.o)
			if err != nil {
				t.Fatal(err)
			}
			// Through the wire form, as a peer or a state file hands it over.
			back, err := tpm2.Unmarshal[tpm2.TPMTPublic](tpm2.Marshal(tp))
			if err != nil {
				t.Fatal(err)
			}
			got, err := PublicKey(*back)
			if err != nil {
				t.Fatal(err)
			}
			if !got.(interface{ Equal(crypto.PublicKey) bool }).Equal(tc.pub) {
				t.Errorf("round trip gives another key")
			}
			n1, err1 := tpm2.ObjectName(&tp)
			n2, err2 := tpm2.ObjectName(back)
			if err1 != nil || err2 != nil || string(n1.Buffer) != string(n2.Buffer) {
				t.Errorf("names differ: %x %x", n1.Buffer, n2.Buffer)
			}
		})
	}
}

// Keys outside approved mode are refused in both directions with
// ErrNotApproved.
func TestPublicRefusesUnapproved(t *testing.T) {
	p224, _ := ecdsa.GenerateKey(elliptic.P224(), rand.Reader)
	p521, _ := ecdsa.GenerateKey(elliptic.P521(), rand.Reader)
	r1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	r2048, _ := rsa.GenerateKey(rand.Reader, 2048)
	even := &rsa.PublicKey{N: r2048.N, E: 65538}
	small := &rsa.PublicKey{N: r2048.N, E: 3}
	for name, pub := range map[string]crypto.PublicKey{
		"P-224": &p224.PublicKey, "P-521": &p521.PublicKey, "RSA-1024": &r1024.PublicKey,
		"even exponent": even, "exponent 3": small, "ed25519-like": []byte{1},
	} {
		if _, err := Public(pub, PublicOptions{NameAlg: tpm2.TPMAlgSHA256}); !errors.Is(err, ErrNotApproved) {
			t.Errorf("Public(%s): %v, want ErrNotApproved", name, err)
		}
	}
	// TPM to Go: a weak RSA key and a curve outside the catalog.
	r := tpm2.TPMTPublic{Type: tpm2.TPMAlgRSA, NameAlg: tpm2.TPMAlgSHA256,
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{KeyBits: 1024}),
		Unique:     tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: r1024.N.Bytes()})}
	if _, err := PublicKey(r); !errors.Is(err, ErrNotApproved) {
		t.Errorf("PublicKey(RSA-1024): %v", err)
	}
	e := tpm2.TPMTPublic{Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256,
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{CurveID: tpm2.TPMECCNistP521}),
		Unique:     tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{})}
	if _, err := PublicKey(e); !errors.Is(err, ErrNotApproved) {
		t.Errorf("PublicKey(P-521): %v", err)
	}
}

// A point that is not on its curve is refused, whichever way it comes.
func TestPointOffCurve(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tp, err := Public(&k.PublicKey, PublicOptions{NameAlg: tpm2.TPMAlgSHA256})
	if err != nil {
		t.Fatal(err)
	}
	pt, _ := tp.Unique.ECC()
	y := new(big.Int).SetBytes(pt.Y.Buffer)
	y.Add(y, big.NewInt(1))
	tp.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: pt.X, Y: tpm2.TPM2BECCParameter{Buffer: y.FillBytes(make([]byte, 32))}})
	if _, err := PublicKey(tp); err == nil {
		t.Fatal("a point off the curve was accepted")
	}
}

// uniqueOf is the unique field of a new key of type kt, as the TPM gives
// it: TypeOf reads the key.
func uniqueOf(t *testing.T, kt Type) tpm2.TPMUPublicID {
	t.Helper()
	var priv crypto.PrivateKey
	var err error
	switch kt.Alg {
	case tpm2.TPMAlgECC:
		curve := map[tpm2.TPMECCCurve]elliptic.Curve{tpm2.TPMECCNistP256: elliptic.P256(), tpm2.TPMECCNistP384: elliptic.P384()}[kt.Curve]
		priv, err = ecdsa.GenerateKey(curve, rand.Reader)
	case tpm2.TPMAlgRSA:
		priv, err = rsa.GenerateKey(rand.Reader, kt.Bits)
	}
	if err != nil {
		t.Fatal(err)
	}
	_, _, unique, err := FromPrivate(priv)
	if err != nil {
		t.Fatal(err)
	}
	return unique
}

// Every creatable type's template is recognized again with its usage;
// derived-only and unknown types are refused with their own sentinels.
func TestTypes(t *testing.T) {
	for _, kt := range Types() {
		if !kt.Create {
			continue
		}
		unique := uniqueOf(t, kt)
		for _, u := range kt.Usages {
			tmpl := kt.CreatedTemplate(u, nil, false)
			tmpl.Unique = unique
			got, gu, err := TypeOf(tmpl)
			if err != nil || got.Name != kt.Name || gu != u {
				t.Errorf("%s %s: TypeOf = %s %s %v", kt.Name, u, got.Name, gu, err)
			}
		}
	}
	for _, tc := range []struct {
		name   string
		derive bool
		want   error
	}{
		{"rsa-2048", true, ErrNotDerivable},
		{"hmac-sha256", false, ErrNotCreatable},
		{"aes-256", false, ErrNotCreatable},
		{"rsa-1024", false, ErrNotApproved},
		{"ecc-p521", true, ErrNotApproved},
	} {
		if _, err := Lookup(tc.name, tc.derive); !errors.Is(err, tc.want) {
			t.Errorf("Lookup(%s, derive=%v): %v, want %v", tc.name, tc.derive, err, tc.want)
		}
	}
	kt, _ := Lookup("ecc-p256", true)
	if u, err := kt.Usage("decrypt"); err != nil || u != UsageECDH {
		t.Errorf("ECC decrypt usage: %s %v", u, err)
	}
	if _, err := kt.Usage("hmac"); !errors.Is(err, ErrUsage) {
		t.Errorf("ECC hmac usage: %v", err)
	}
	both := kt.CreatedTemplate(UsageSign, nil, false)
	both.Unique = uniqueOf(t, kt)
	both.ObjectAttributes.Decrypt = true
	if _, _, err := TypeOf(both); !errors.Is(err, ErrUsage) {
		t.Errorf("sign+decrypt key: %v", err)
	}
	if _, err := TPMHash(crypto.SHA1); !errors.Is(err, ErrNotApproved) {
		t.Errorf("SHA-1: %v", err)
	}
	if DefaultHash("ecc-p384") != crypto.SHA384 || DefaultHash("rsa-2048") != crypto.SHA256 {
		t.Error("default hashes")
	}
}

// FuzzPublicKey: PublicKey reads public areas from state files and peers; on
// any bytes it never panics, and what it accepts converts back to the same
// TPM key.
func FuzzPublicKey(f *testing.F) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	r, _ := rsa.GenerateKey(rand.Reader, 2048)
	for _, pub := range []crypto.PublicKey{&k.PublicKey, &r.PublicKey} {
		tp, err := Public(pub, PublicOptions{NameAlg: tpm2.TPMAlgSHA256})
		if err != nil {
			f.Fatal(err)
		}
		f.Add(tpm2.Marshal(tp))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		tp, err := tpm2.Unmarshal[tpm2.TPMTPublic](b)
		if err != nil {
			return
		}
		pub, err := PublicKey(*tp)
		if err != nil {
			return
		}
		if _, err := Public(pub, PublicOptions{NameAlg: tpm2.TPMAlgSHA256}); err != nil {
			t.Fatalf("accepted %x as %T, which does not convert back: %v", b, pub, err)
		}
	})
}

// FuzzFromPKCS8: what a backup unwraps to (PKCS#8 from another HSM, or
// garbage under the right KEK) never panics the conversion to a TPM
// sensitive area, and an accepted RSA or ECC key round-trips: the
// sensitive area and unique field give back the same private key.
func FuzzFromPKCS8(f *testing.F) {
	for _, k := range testKeys(f) {
		der, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(der)
	}
	f.Fuzz(func(t *testing.T, der []byte) {
		k, err := x509.ParsePKCS8PrivateKey(der)
		if err != nil {
			return
		}
		kt, sens, unique, err := FromPrivate(k)
		if err != nil {
			return
		}
		pub := kt.CreatedTemplate(UsageSign, nil, true)
		pub.Unique = unique
		back, err := PrivateKey(pub, sens)
		if err != nil {
			t.Fatalf("an accepted %s key does not come back from its sensitive area: %v", kt.Name, err)
		}
		if !back.Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(k.(crypto.Signer).Public()) {
			t.Fatal("the key that comes back is another")
		}
	})
}

// testKeys are an RSA-2048, a P-256 and a P-384 key.
func testKeys(f *testing.F) []crypto.Signer {
	r, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		f.Fatal(err)
	}
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	return []crypto.Signer{r, p256, p384}
}

// TestFromPrivateRefusesUnbalancedPrimes: an RSA-2048 key whose primes are
// not 1024 bits each (found by review: 256/1792, 768/1280, 1000/1048 bits
// reached the TPM, which refused them with TPM_RC_SIZE) is refused before
// the TPM; a balanced one passes.
func TestFromPrivateRefusesUnbalancedPrimes(t *testing.T) {
	build := func(pBits, qBits int) *rsa.PrivateKey {
		for {
			p, _ := rand.Prime(rand.Reader, pBits)
			q, _ := rand.Prime(rand.Reader, qBits)
			n := new(big.Int).Mul(p, q)
			if n.BitLen() != 2048 {
				continue
			}
			one := big.NewInt(1)
			phi := new(big.Int).Mul(new(big.Int).Sub(p, one), new(big.Int).Sub(q, one))
			d := new(big.Int).ModInverse(big.NewInt(65537), phi)
			if d == nil {
				continue
			}
			k := &rsa.PrivateKey{PublicKey: rsa.PublicKey{N: n, E: 65537}, D: d, Primes: []*big.Int{p, q}}
			k.Precompute()
			return k
		}
	}
	for _, bits := range [][2]int{{256, 1792}, {768, 1280}, {1000, 1048}} {
		if _, _, _, err := FromPrivate(build(bits[0], bits[1])); !errors.Is(err, ErrNotApproved) {
			t.Errorf("primes of %d and %d bits: %v", bits[0], bits[1], err)
		}
	}
	if _, _, _, err := FromPrivate(build(1024, 1024)); err != nil {
		t.Errorf("balanced primes: %v", err)
	}
}
