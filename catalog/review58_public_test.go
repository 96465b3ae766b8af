package catalog

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"errors"
	"math/big"
	mrand "math/rand/v2"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

// review58RSA is one RSA-2048 key for the tests of this file.
var review58RSA = func() *rsa.PrivateKey {
	k, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		panic(err)
	}
	return k
}()

// review58RSAArea is an RSA public area of modulus n with exponent e (0:
// the TPM's default), written by hand: Public never writes an exponent it
// refuses, a peer or a state file can.
func review58RSAArea(n *big.Int, bits int, e uint32, attrs tpm2.TPMAObject) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:             tpm2.TPMAlgRSA,
		NameAlg:          tpm2.TPMAlgSHA256,
		ObjectAttributes: attrs,
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgRSA, &tpm2.TPMSRSAParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme:    tpm2.TPMTRSAScheme{Scheme: tpm2.TPMAlgNull},
			KeyBits:   tpm2.TPMKeyBits(bits),
			Exponent:  e,
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgRSA, &tpm2.TPM2BPublicKeyRSA{Buffer: n.Bytes()}),
	}
}

// review58Wire sends pub through its wire form, as a peer, a file or the
// bus hands it over.
func review58Wire(t *testing.T, pub tpm2.TPMTPublic) tpm2.TPMTPublic {
	t.Helper()
	back, err := tpm2.Unmarshal[tpm2.TPMTPublic](tpm2.Marshal(pub))
	if err != nil {
		t.Fatal(err)
	}
	return *back
}

// FLAW (failed before the mend): TypeOf decides "approved" from the type, the curve or key size and
// the sign/decrypt bits alone. A public area of RSA-2048 with public
// exponent 3 (which PublicKey, in the same package, refuses as
// ErrNotApproved), or of P-256 with a SHA-1 nameAlg or a fixed ECDSA-SHA-1
// scheme, is "ecc-p256"/"rsa-2048", approved, with a usage. The package
// says approved mode is SHA-256/384 and RSA with e >= 65537, "everything
// else is ErrNotApproved". Attacker: a hostile origin device (its root
// editing the state a moved PK carries, docs/threat-model.md review 57):
// agent.keyRecord.checkCarried accepts a created/imported key on TypeOf
// alone (with the record's own policy and extractability, no template
// comparison), so the receiver records as an approved rsa-2048 / ecc-p256
// key one whose exponent, nameAlg, scheme (or userWithAuth) provd never
// creates. Fix: TypeOf refuses what PublicKey refuses (run PublicKey for
// ECC/RSA), an unapproved nameAlg, and a non-NULL scheme or symmetric
// definition that provd's templates never carry; checkCarried compares the
// blob's public area with CreatedTemplate as checkImportPublic does.
func TestReview58TypeOfApprovesUnapprovedKeys(t *testing.T) {
	signAttrs := tpm2.TPMAObject{SignEncrypt: true, AdminWithPolicy: true, NoDA: true, FixedTPM: true, FixedParent: true, SensitiveDataOrigin: true}
	e3 := review58Wire(t, review58RSAArea(review58RSA.N, 2048, 3, signAttrs))
	if _, err := PublicKey(e3); !errors.Is(err, ErrNotApproved) {
		t.Fatalf("PublicKey of an exponent-3 key: %v, want ErrNotApproved", err)
	}

	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	sha1Name, err := Public(&p256.PublicKey, PublicOptions{NameAlg: tpm2.TPMAlgSHA256, Attrs: signAttrs})
	if err != nil {
		t.Fatal(err)
	}
	sha1Name.NameAlg = tpm2.TPMAlgSHA1
	// Written by hand: Public refuses the scheme now (TestReview58PublicWritesUnapprovedOptions).
	sha1Scheme, err := Public(&p256.PublicKey, PublicOptions{NameAlg: tpm2.TPMAlgSHA256, Attrs: signAttrs})
	if err != nil {
		t.Fatal(err)
	}
	sha1Scheme.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
		Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
		Scheme:    tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA, Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA1})},
		CurveID:   tpm2.TPMECCNistP256,
		KDF:       tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
	})
	for _, tc := range []struct {
		name string
		pub  tpm2.TPMTPublic
	}{
		{"rsa-2048 exponent 3", e3},
		{"p256 nameAlg sha1", review58Wire(t, sha1Name)},
		{"p256 scheme ecdsa-sha1", review58Wire(t, sha1Scheme)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kt, usage, err := TypeOf(tc.pub)
			if !errors.Is(err, ErrNotApproved) {
				t.Errorf("TypeOf = %s %q, %v; want ErrNotApproved", kt.Name, usage, err)
			}
		})
	}
}

// FLAW (failed before the mend): Public writes whatever nameAlg and scheme hash it is given: a
// SHA-1 nameAlg, an ECDSA-SHA-1 or RSASSA-SHA-512 scheme come out as a
// public area without error, and an RSA key given a scheme that is not
// RSASSA/RSAPSS (ECDSA, say) silently gets TPM_ALG_NULL, i.e. any scheme at
// use. The package promises "everything else is ErrNotApproved" and Public
// is the one writer of the public area whose name a PolicyAuthorize
// approval binds. Attacker: none today (policy.SignerPublic passes
// constants); it is the claim that breaks, and the next caller (an offline
// tool building a signer's name from a flag) inherits a SHA-1 name or an
// unbound scheme silently. Fix: Public checks NameAlg and Hash with
// HashByAlg and refuses a scheme that is neither NULL nor one of the key
// type's signing schemes.
func TestReview58PublicWritesUnapprovedOptions(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	for _, tc := range []struct {
		name string
		pub  crypto.PublicKey
		o    PublicOptions
	}{
		{"nameAlg sha1", &p256.PublicKey, PublicOptions{NameAlg: tpm2.TPMAlgSHA1}},
		{"ecdsa sha1", &p256.PublicKey, PublicOptions{NameAlg: tpm2.TPMAlgSHA256, Scheme: tpm2.TPMAlgECDSA, Hash: tpm2.TPMAlgSHA1}},
		{"rsassa sha512", &review58RSA.PublicKey, PublicOptions{NameAlg: tpm2.TPMAlgSHA256, Scheme: tpm2.TPMAlgRSASSA, Hash: tpm2.TPMAlgSHA512}},
		{"rsa given ecdsa", &review58RSA.PublicKey, PublicOptions{NameAlg: tpm2.TPMAlgSHA256, Scheme: tpm2.TPMAlgECDSA, Hash: tpm2.TPMAlgSHA256}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tp, err := Public(tc.pub, tc.o)
			if err == nil {
				t.Errorf("Public wrote %x: want a refusal", tpm2.Marshal(tp))
			}
		})
	}
}

// Held: PublicKey reads an RSA or ECC public area into the key the TPM
// uses, or refuses it. Tried as a peer, a state file or the bus would hand
// it over: exponent 0 is 65537 (and an explicit 65537 the same key); an
// exponent of 3, an even one, 65535, or 1 is refused; a modulus whose size
// is not keyBits, or under 2048 bits, is refused; ECC coordinates with
// their leading zero bytes stripped are the same point (the TPM reads them
// as numbers too); coordinates longer than the field, a coordinate >= p,
// the point (0,0), a point off the curve, P-521 or BN-256 are refused;
// symmetric keys have no public key.
func TestReview58PublicKeyReadsWhatTheTPMUses(t *testing.T) {
	n := review58RSA.N
	for _, e := range []uint32{0, 65537} {
		k, err := PublicKey(review58Wire(t, review58RSAArea(n, 2048, e, tpm2.TPMAObject{})))
		if err != nil {
			t.Fatalf("exponent %d: %v", e, err)
		}
		if r := k.(*rsa.PublicKey); r.E != 65537 || r.N.Cmp(n) != 0 {
			t.Fatalf("exponent %d: read as e=%d", e, r.E)
		}
	}
	for _, e := range []uint32{1, 3, 65535, 65538, 0x10000} {
		if _, err := PublicKey(review58Wire(t, review58RSAArea(n, 2048, e, tpm2.TPMAObject{}))); !errors.Is(err, ErrNotApproved) {
			t.Errorf("exponent %d: %v, want ErrNotApproved", e, err)
		}
	}
	if _, err := PublicKey(review58Wire(t, review58RSAArea(n, 3072, 0, tpm2.TPMAObject{}))); err == nil {
		t.Error("a 2048-bit modulus under keyBits 3072 was taken")
	}
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	if _, err := PublicKey(review58Wire(t, review58RSAArea(small.N, 1024, 0, tpm2.TPMAObject{}))); !errors.Is(err, ErrNotApproved) {
		t.Errorf("RSA-1024: %v", err)
	}

	// A P-256 key whose X starts with a zero byte.
	var p256 *ecdsa.PrivateKey
	for {
		p256, _ = ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if raw, _ := p256.PublicKey.Bytes(); raw[1] == 0 {
			break
		}
	}
	base, err := Public(&p256.PublicKey, PublicOptions{NameAlg: tpm2.TPMAlgSHA256})
	if err != nil {
		t.Fatal(err)
	}
	ecc := func(x, y []byte, curve tpm2.TPMECCCurve) tpm2.TPMTPublic {
		p := base
		p.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme:    tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
			CurveID:   curve,
			KDF:       tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		})
		p.Unique = tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{X: tpm2.TPM2BECCParameter{Buffer: x}, Y: tpm2.TPM2BECCParameter{Buffer: y}})
		return review58Wire(t, p)
	}
	raw, _ := p256.PublicKey.Bytes()
	x, y := raw[1:33], raw[33:]
	k, err := PublicKey(ecc(x[1:], y, tpm2.TPMECCNistP256))
	if err != nil || !k.(*ecdsa.PublicKey).Equal(&p256.PublicKey) {
		t.Errorf("X without its leading zero: %v", err)
	}
	pField := elliptic.P256().Params().P
	xPlusP := new(big.Int).Add(new(big.Int).SetBytes(x), pField)
	yBad := new(big.Int).Add(new(big.Int).SetBytes(y), big.NewInt(1)).FillBytes(make([]byte, 32))
	for _, tc := range []struct {
		name string
		pub  tpm2.TPMTPublic
	}{
		{"X of 33 bytes", ecc(append([]byte{0}, x...), y, tpm2.TPMECCNistP256)},
		{"X + p", ecc(xPlusP.Bytes(), y, tpm2.TPMECCNistP256)},
		{"(0,0)", ecc(nil, nil, tpm2.TPMECCNistP256)},
		{"off the curve", ecc(x, yBad, tpm2.TPMECCNistP256)},
		{"p-521", ecc(x, y, tpm2.TPMECCNistP521)},
		{"bn-256", ecc(x, y, tpm2.TPMECCBNP256)},
		{"on P-384 as given", ecc(x, y, tpm2.TPMECCNistP384)},
	} {
		if _, err := PublicKey(tc.pub); err == nil {
			t.Errorf("%s: taken", tc.name)
		}
	}
	for _, name := range []string{"hmac-sha256", "aes-256"} {
		kt, err := Lookup(name, true)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := PublicKey(kt.Template(kt.Usages[0], nil)); !errors.Is(err, ErrNotApproved) {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// Held: the templates are what the docs claim. A created key not born
// extractable is fixedTPM|fixedParent with sensitiveDataOrigin; an
// extractable one neither; every operational key has userWithAuth clear
// and adminWithPolicy set (only its policy authorizes it), one usage, NULL
// schemes; under a movable PK fixedParent is kept. The KEK cannot leave
// (fixedTPM|fixedParent, empty policy, adminWithPolicy clear) and does
// one direction. The transfer key is a restricted decrypt storage key born
// in the TPM, and IsTransferKey refuses it with any attribute, policy or
// parameter changed.
func TestReview58TemplatesHoldTheirClaims(t *testing.T) {
	pol := make([]byte, 32)
	for _, kt := range Types() {
		if !kt.Create {
			continue
		}
		for _, u := range kt.Usages {
			for _, ext := range []bool{false, true} {
				for _, mov := range []bool{false, true} {
					a := UnderMovable(kt.CreatedTemplate(u, pol, ext), mov).ObjectAttributes
					if a.UserWithAuth || !a.AdminWithPolicy || !a.SensitiveDataOrigin || a.SignEncrypt == a.Decrypt || a.Restricted {
						t.Errorf("%s %s ext=%v movable=%v: %+v", kt.Name, u, ext, mov, a)
					}
					if a.FixedParent == ext || (!mov && a.FixedTPM == ext) || (mov && (a.FixedTPM || !a.EncryptedDuplication)) {
						t.Errorf("%s %s ext=%v movable=%v: extractability %+v", kt.Name, u, ext, mov, a)
					}
				}
			}
		}
	}
	for _, u := range []string{UsageWrap, UsageUnwrap} {
		k := KEKTemplate(256, u)
		a := k.ObjectAttributes
		if !a.FixedTPM || !a.FixedParent || a.AdminWithPolicy || len(k.AuthPolicy.Buffer) != 0 || a.SignEncrypt == a.Decrypt || a.SignEncrypt != (u == UsageWrap) {
			t.Errorf("KEK %s: %+v", u, a)
		}
	}
	pkName := append([]byte{0, 0x0b}, make([]byte, 32)...)
	tr := TransferTemplate(TransferPolicy(pkName))
	if a := tr.ObjectAttributes; !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin || !a.Restricted || !a.Decrypt || a.SignEncrypt {
		t.Errorf("transfer key: %+v", a)
	}
	if !IsTransferKey(review58Wire(t, tr), pkName) {
		t.Fatal("the transfer template is not a transfer key")
	}
	other := append([]byte{0, 0x0b}, make([]byte, 32)...)
	other[2] = 1
	if IsTransferKey(tr, other) {
		t.Error("a transfer key bound to another PK was taken")
	}
	for name, edit := range map[string]func(p *tpm2.TPMTPublic){
		"fixedTPM clear":    func(p *tpm2.TPMTPublic) { p.ObjectAttributes.FixedTPM = false },
		"restricted clear":  func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Restricted = false },
		"nameAlg sha384":    func(p *tpm2.TPMTPublic) { p.NameAlg = tpm2.TPMAlgSHA384 },
		"sensitive clear":   func(p *tpm2.TPMTPublic) { p.ObjectAttributes.SensitiveDataOrigin = false },
		"userWithAuth only": func(p *tpm2.TPMTPublic) { p.ObjectAttributes.AdminWithPolicy = false },
		"p384": func(p *tpm2.TPMTPublic) {
			p.Parameters = tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
				Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgAES, KeyBits: tpm2.NewTPMUSymKeyBits(tpm2.TPMAlgAES, tpm2.TPMKeyBits(128)), Mode: tpm2.NewTPMUSymMode(tpm2.TPMAlgAES, tpm2.TPMAlgCFB)},
				Scheme:    tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgNull},
				CurveID:   tpm2.TPMECCNistP384,
				KDF:       tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
			})
		},
	} {
		p := TransferTemplate(TransferPolicy(pkName))
		edit(&p)
		if IsTransferKey(review58Wire(t, p), pkName) {
			t.Errorf("%s: taken as a transfer key", name)
		}
	}
}

// Held: hostile bytes where a public or sensitive area is read never panic
// and never give a key: 20,000 mutations (flips, truncations, extensions)
// of marshalled P-256, P-384 and RSA public areas go through PublicKey,
// TypeOf, IsTransferKey and PrivateKey (with sensitive areas of the wrong
// type, a zero scalar, a scalar >= n, RSA "primes" 1, N, N-1 and a
// non-divisor), and what PublicKey accepts is on its curve or an approved
// RSA key. Attacker: a hostile peer file, fleet device or bus answer.
func TestReview58HostileAreasDoNotPanic(t *testing.T) {
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	var seeds [][]byte
	for _, k := range []crypto.PublicKey{&p256.PublicKey, &p384.PublicKey, &review58RSA.PublicKey} {
		scheme := tpm2.TPMAlgECDSA
		if _, ok := k.(*rsa.PublicKey); ok {
			scheme = tpm2.TPMAlgNull
		}
		p, err := Public(k, PublicOptions{NameAlg: tpm2.TPMAlgSHA256, Scheme: scheme, Hash: tpm2.TPMAlgSHA256})
		if err != nil {
			t.Fatal(err)
		}
		seeds = append(seeds, tpm2.Marshal(p))
	}
	unmarshal := func(b []byte) (p *tpm2.TPMTPublic) {
		defer func() {
			if recover() != nil { // go-tpm's own parser, not the catalog
				p = nil
			}
		}()
		p, err := tpm2.Unmarshal[tpm2.TPMTPublic](b)
		if err != nil {
			return nil
		}
		return p
	}
	pkName := append([]byte{0, 0x0b}, make([]byte, 32)...)
	rng := mrand.New(mrand.NewPCG(58, 58))
	parsed := 0
	for i := range 20000 {
		b := append([]byte(nil), seeds[i%len(seeds)]...)
		switch rng.IntN(3) {
		case 0:
			for range 1 + rng.IntN(4) {
				b[rng.IntN(len(b))] ^= byte(1 + rng.IntN(255))
			}
		case 1:
			b = b[:rng.IntN(len(b))]
		case 2:
			j := rng.IntN(len(b))
			b[j] = byte(rng.IntN(256))
			b = append(b, make([]byte, rng.IntN(64))...)
		}
		p := unmarshal(b)
		if p == nil {
			continue
		}
		parsed++
		k, err := PublicKey(*p)
		if err != nil {
			k = nil // (a refused ECC point comes back as a typed nil)
		}
		switch k := k.(type) {
		case *ecdsa.PublicKey:
			if _, err := k.ECDH(); err != nil { // ECDH checks the point is on its curve
				t.Fatalf("mutation %d: a point off its curve taken", i)
			}
		case *rsa.PublicKey:
			if k.N.BitLen() < 2048 || k.E < 65537 || k.E%2 == 0 {
				t.Fatalf("mutation %d: an unapproved RSA key taken", i)
			}
		case nil:
			if err == nil {
				t.Fatalf("mutation %d: no key and no error", i)
			}
		}
		TypeOf(*p)
		IsTransferKey(*p, pkName)
		if _, err := PrivateKey(*p, nil); err == nil {
			t.Fatalf("mutation %d: a private key without a sensitive area", i)
		}
	}
	if parsed < 1000 {
		t.Fatalf("only %d mutations parsed: the test proves little", parsed)
	}

	ecPub, _ := Public(&p256.PublicKey, PublicOptions{NameAlg: tpm2.TPMAlgSHA256})
	rsaPub, _ := Public(&review58RSA.PublicKey, PublicOptions{NameAlg: tpm2.TPMAlgSHA256})
	eccSens := func(d []byte) *tpm2.TPMTSensitive {
		return &tpm2.TPMTSensitive{SensitiveType: tpm2.TPMAlgECC, Sensitive: tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgECC, &tpm2.TPM2BECCParameter{Buffer: d})}
	}
	rsaSens := func(p *big.Int) *tpm2.TPMTSensitive {
		return &tpm2.TPMTSensitive{SensitiveType: tpm2.TPMAlgRSA, Sensitive: tpm2.NewTPMUSensitiveComposite(tpm2.TPMAlgRSA, &tpm2.TPM2BPrivateKeyRSA{Buffer: p.Bytes()})}
	}
	n := review58RSA.N
	d256, err := p256.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	d384, err := p384.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	for name, tc := range map[string]struct {
		pub  tpm2.TPMTPublic
		sens *tpm2.TPMTSensitive
	}{
		"ecc scalar 0":      {ecPub, eccSens(nil)},
		"ecc scalar n":      {ecPub, eccSens(elliptic.P256().Params().N.Bytes())},
		"ecc scalar 33B":    {ecPub, eccSens(append([]byte{0}, d256...))},
		"ecc other scalar":  {ecPub, eccSens(d384[:32])},
		"ecc given rsa":     {ecPub, rsaSens(review58RSA.Primes[0])},
		"rsa given ecc":     {rsaPub, eccSens(d256)},
		"rsa prime 1":       {rsaPub, rsaSens(big.NewInt(1))},
		"rsa prime N":       {rsaPub, rsaSens(n)},
		"rsa prime N-1":     {rsaPub, rsaSens(new(big.Int).Sub(n, big.NewInt(1)))},
		"rsa non-divisor":   {rsaPub, rsaSens(big.NewInt(65537))},
		"rsa other's prime": {rsaPub, rsaSens(new(big.Int).Add(review58RSA.Primes[0], big.NewInt(2)))},
	} {
		if k, err := PrivateKey(tc.pub, tc.sens); err == nil {
			t.Errorf("%s: gave a private key %T", name, k)
		}
	}
	// And the genuine parts do give the key.
	if k, err := PrivateKey(rsaPub, rsaSens(review58RSA.Primes[1])); err != nil || !k.Public().(*rsa.PublicKey).Equal(&review58RSA.PublicKey) {
		t.Errorf("genuine RSA parts: %v", err)
	}
}

// FLAW (failed before the mend): IsTransferKey panics on any well-formed public area that is not
// ECC: it copies the ECC template's unique field into pub and marshals it,
// and go-tpm panics on an RSA (or keyedHash, symcipher) area carrying an
// ECC unique ("incorrect union tag"). Attacker: a hostile peer file, i.e.
// anyone who hands a sender a peer identity whose "parent" is an RSA public
// area: provd dup export/create --duplicable-to (cli readPeer ->
// api.PeerIdentity.TransferKey) dies with a stack trace, the daemon's
// request ends in its panic handler (500, a fault in the audit trail); and
// an enrolled device that passes attestation (root on a good boot) and
// sends such a peer file makes the fleet endpoint's attest handler panic
// (checkPeerFile from peerChallenge), after its appraisal was recorded,
// the connection dropped instead of a verdict. ARCHITECTURE: "Bad input
// never panics". Fix: in IsTransferKey, return false unless pub.Type ==
// want.Type (and compare with the unique field cleared only then), or
// compare everything but the unique field field by field.
func TestReview58AnotherTypeIsNoTransferKey(t *testing.T) {
	pkName := append([]byte{0, 0x0b}, make([]byte, 32)...)
	aes, err := Lookup("aes-256", true)
	if err != nil {
		t.Fatal(err)
	}
	hm, err := Lookup("hmac-sha256", true)
	if err != nil {
		t.Fatal(err)
	}
	rsaStorage := review58RSAArea(review58RSA.N, 2048, 0, TransferTemplate(nil).ObjectAttributes)
	for name, pub := range map[string]tpm2.TPMTPublic{
		"rsa storage key": review58Wire(t, rsaStorage),
		"aes key":         review58Wire(t, aes.Template(UsageDecrypt, nil)),
		"hmac key":        review58Wire(t, hm.Template(UsageHMAC, nil)),
	} {
		t.Run(name, func(t *testing.T) {
			var ok bool
			func() {
				defer func() {
					if p := recover(); p != nil {
						t.Errorf("IsTransferKey panicked: %v", p)
					}
				}()
				ok = IsTransferKey(pub, pkName)
			}()
			if ok {
				t.Error("taken as a transfer key")
			}
		})
	}
}

// A transfer key made before review 74 is no transfer key (no sender
// sends to it) and a new one is no legacy one; the activation branch is
// the legacy key's whole policy, and one of the new key's branches.
func TestLegacyTransferKeyIsNoTransferKey(t *testing.T) {
	pkName := append([]byte{0, 0x0b}, make([]byte, 32)...)
	legacy := LegacyTransferTemplate(ActivationPolicy(pkName))
	cur := TransferTemplate(TransferPolicy(pkName))
	if IsTransferKey(legacy, pkName) || !IsLegacyTransferKey(legacy, pkName) {
		t.Error("a legacy transfer key taken as a transfer key, or not as a legacy one")
	}
	if !IsTransferKey(cur, pkName) || IsLegacyTransferKey(cur, pkName) {
		t.Error("a transfer key not taken as one, or taken as a legacy one")
	}
	if cur.ObjectAttributes.UserWithAuth || !legacy.ObjectAttributes.UserWithAuth {
		t.Error("userWithAuth: set on the transfer key, or clear on the legacy one")
	}
	if b := TransferBranches(pkName); len(b) != 3 || string(b[0]) != string(ActivationPolicy(pkName)) {
		t.Errorf("the transfer key's branches: %d, the first not the activation's", len(b))
	}
}
