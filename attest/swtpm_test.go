package attest_test

import (
	"crypto/ecdsa"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"os"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/attest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// Evidence from a real TPM (a fresh swtpm per test): what the TPM produces
// verifies, and what is changed after it does not.

// swtpmRoots reads the harness's CA bundle: the root, then the issuing CA.
func swtpmRoots(t *testing.T, env *swtpmtest.Env) attest.Options {
	t.Helper()
	env.RequireSimulator() // a real TPM's EK roots are its manufacturer's, not the harness's
	if len(env.CABundle) < 2 {
		t.Fatalf("the harness gave no EK CA bundle: %v", env.CABundle)
	}
	var pools [2]*x509.CertPool
	for i, f := range env.CABundle[:2] {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if pools[i], err = attest.CertPoolFromPEM(b); err != nil {
			t.Fatal(err)
		}
	}
	return attest.Options{Roots: pools[0], Intermediates: pools[1]}
}

func flush(t *testing.T, tp *tpm.TPM, h tpm2.TPMHandle) {
	t.Helper()
	if err := tp.Flush(h); err != nil {
		t.Errorf("flush 0x%08x: %v", uint32(h), err)
	}
}

// The EK certificates swtpm_setup wrote to NV verify against the harness's
// CA, and certify the EKs this TPM really has (the primaries its endorsement
// seed gives for the TCG templates are the keys in the certificates).
func TestSwtpmEKCertificates(t *testing.T) {
	env := swtpmtest.Start(t)
	opts := swtpmRoots(t, env)
	for _, c := range []struct {
		name string
		nv   tpm2.TPMHandle
		ek   tpm2.TPMHandle // persistent EK
	}{
		{"RSA-2048", 0x01c00002, 0x81010001},
		{"ECC P-384", 0x01c00016, 0x81010016},
	} {
		t.Run(c.name, func(t *testing.T) {
			der, err := env.TPM.ReadNV(c.nv)
			if err != nil {
				t.Fatalf("read NV 0x%08x: %v", uint32(c.nv), err)
			}
			ek, err := attest.VerifyEKCertificate(der, opts)
			if err != nil {
				t.Fatal(err)
			}
			if ek.Manufacturer == "" || ek.Model == "" || ek.Version == "" || !ek.HasEKUsage() {
				t.Errorf("EK identity = %q %q %q", ek.Manufacturer, ek.Model, ek.Version)
			}
			obj, err := env.TPM.ReadPublic(c.ek)
			if errors.Is(err, tpm.ErrNotFound) {
				t.Fatalf("no persistent EK at 0x%08x to compare with: swtpm_setup makes one", uint32(c.ek))
			}
			if err != nil {
				t.Fatal(err)
			}
			pub, err := tpm2.Pub(obj.Public)
			if err != nil {
				t.Fatal(err)
			}
			same := false
			switch k := ek.PublicKey.(type) {
			case *rsa.PublicKey:
				same = k.Equal(pub)
			case *ecdsa.PublicKey:
				same = k.Equal(pub)
			}
			if !same {
				t.Errorf("the certificate's key is not the TPM's EK at 0x%08x", uint32(c.ek))
			}

			if _, err := attest.VerifyEKCertificate(der, attest.Options{Roots: opts.Intermediates}); err != nil {
				t.Errorf("issuing CA as the trust anchor: %v", err)
			}
			if _, err := attest.VerifyEKCertificate(der, attest.Options{Roots: opts.Roots}); !errors.Is(err, attest.ErrUntrustedEK) {
				t.Errorf("without the issuing CA: %v, want ErrUntrustedEK", err)
			}
			if _, err := attest.VerifyEKCertificate(der, attest.Options{}); !errors.Is(err, attest.ErrUntrustedEK) {
				t.Errorf("zero Options: %v, want ErrUntrustedEK", err)
			}
		})
	}
}

// akTemplate is a restricted ECC P-256 ECDSA-SHA256 signing key, as an AK.
func akTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type: tpm2.TPMAlgECC, NameAlg: tpm2.TPMAlgSHA256, ObjectAttributes: akAttributes(),
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme: tpm2.TPMTECCScheme{Scheme: tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256})},
			CurveID: tpm2.TPMECCNistP256,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
	}
}

// signingKeyTemplate is an ordinary (unrestricted) ECC P-256 signing key,
// the kind of object whose residence Certify proves.
func signingKeyTemplate() tpm2.TPMTPublic {
	p := akTemplate()
	p.ObjectAttributes.Restricted = false
	return p
}

// loadUnderSRK creates a key from tmpl under the SRK and loads it; the
// caller flushes it.
func loadUnderSRK(t *testing.T, tp *tpm.TPM, tmpl tpm2.TPMTPublic) tpm.Object {
	t.Helper()
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	blob, err := tp.Create(srk, nil, tmpl, tpm.Sensitive{})
	if err != nil {
		t.Fatal(err)
	}
	obj, err := tp.Load(srk, nil, blob)
	if err != nil {
		t.Fatal(err)
	}
	return obj
}

// A swtpm quote over PCRs extended from an event log built in code verifies;
// the TPM's PCR values match its digest; the replayed log matches the
// values; and each tampering is caught as what it is.
func TestSwtpmQuoteAndEventLog(t *testing.T) {
	env := swtpmtest.Start(t)
	env.RequireSimulator() // extends PCRs 0..7
	tp := env.TPM

	l, err := attest.NewEventLog(tpm2.TPMAlgSHA256)
	if err != nil {
		t.Fatal(err)
	}
	appendEvent := func(pcr int, typ attest.EventType, data string) {
		t.Helper()
		e, err := l.Append(pcr, typ, []byte(data))
		if err != nil {
			t.Fatal(err)
		}
		if typ == attest.EVNoAction {
			return
		}
		if err := tp.PCRExtend(pcr, tpm2.TPMAlgSHA256, e.Digest(tpm2.TPMAlgSHA256)); err != nil {
			t.Fatal(err)
		}
	}
	appendEvent(0, attest.EVNoAction, "StartupLocality\x00\x00") // swtpm starts at locality 0
	appendEvent(0, attest.EVSCRTMVersion, "swtpm CRTM")
	appendEvent(4, attest.EVIPL, "bootloader")
	for pcr := 0; pcr <= 7; pcr++ {
		appendEvent(pcr, attest.EVSeparator, "\x00\x00\x00\x00")
	}
	appendEvent(7, attest.EVEFIAction, "Exit Boot Services Invocation")

	ak := loadUnderSRK(t, tp, akTemplate())
	defer flush(t, tp, ak.Handle)
	if err := attest.CheckAKPublic(ak.Public); err != nil {
		t.Fatalf("the TPM's AK: %v", err)
	}

	nonce, err := attest.NewNonce(attest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	pcrs := []int{0, 1, 2, 3, 4, 5, 6, 7}
	sel := selection(tpm2.TPMAlgSHA256, pcrs...)
	quote := func() (attestBytes, sig []byte) {
		t.Helper()
		rsp, err := tpm2.Quote{
			SignHandle:     ak.Auth(tpm2.PasswordAuth(nil)),
			QualifyingData: tpm2.TPM2BData{Buffer: nonce},
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
			PCRSelect:      sel,
		}.Execute(tp)
		if err != nil {
			t.Fatalf("TPM2_Quote: %v", err)
		}
		return rsp.Quoted.Bytes(), tpm2.Marshal(rsp.Signature)
	}
	qa, qs := quote()
	q, err := attest.VerifyQuote(ak.Public, qa, qs, nonce, attest.Options{})
	if err != nil {
		t.Fatalf("VerifyQuote: %v", err)
	}
	vals, err := tp.PCRRead(tpm2.TPMAlgSHA256, pcrs)
	if err != nil {
		t.Fatal(err)
	}
	quoted := attest.PCRValues{tpm2.TPMAlgSHA256: vals}
	if err := q.CheckPCRs(quoted); err != nil {
		t.Fatalf("CheckPCRs with the TPM's values: %v", err)
	}
	logBytes, err := l.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := attest.ParseEventLog(logBytes)
	if err != nil {
		t.Fatal(err)
	}
	replayed, err := parsed.Replay(attest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if err := attest.ComparePCRs(q.Selection, quoted, replayed); err != nil {
		t.Fatalf("replayed log vs quote: %v", err)
	}

	t.Run("tampered", func(t *testing.T) {
		wrongNonce := flip(nonce, 0)
		for _, c := range []struct {
			name        string
			attest, sig []byte
			nonce       []byte
			wantErr     error
		}{
			{"flipped signature byte", qa, flip(qs, -1), nonce, attest.ErrSignature},
			{"flipped quote byte", flip(qa, len(qa)-1), qs, nonce, attest.ErrSignature},
			{"wrong nonce", qa, qs, wrongNonce, attest.ErrNonce},
		} {
			if _, err := attest.VerifyQuote(ak.Public, c.attest, c.sig, c.nonce, attest.Options{}); !errors.Is(err, c.wantErr) {
				t.Errorf("%s: VerifyQuote = %v, want %v", c.name, err, c.wantErr)
			}
		}
		other := loadUnderSRK(t, tp, akTemplate())
		defer flush(t, tp, other.Handle)
		if _, err := attest.VerifyQuote(other.Public, qa, qs, nonce, attest.Options{}); !errors.Is(err, attest.ErrSignature) {
			t.Errorf("another AK: %v, want ErrSignature", err)
		}

		claimed := attest.PCRValues{tpm2.TPMAlgSHA256: map[int][]byte{}}
		for i, v := range vals {
			claimed[tpm2.TPMAlgSHA256][i] = v
		}
		claimed[tpm2.TPMAlgSHA256][4] = flip(vals[4], 0)
		if err := q.CheckPCRs(claimed); !errors.Is(err, attest.ErrPCRMismatch) {
			t.Errorf("claimed PCR 4 changed: %v, want ErrPCRMismatch", err)
		}

		// The device measures one more event than its log shows: the new
		// quote holds, the old values no longer do, and the log's replay
		// names the PCR it is missing from.
		if err := tp.PCRExtend(5, tpm2.TPMAlgSHA256, make([]byte, 32)); err != nil {
			t.Fatal(err)
		}
		qa2, qs2 := quote()
		q2, err := attest.VerifyQuote(ak.Public, qa2, qs2, nonce, attest.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := q2.CheckPCRs(quoted); !errors.Is(err, attest.ErrPCRMismatch) {
			t.Errorf("old values against the new quote: %v, want ErrPCRMismatch", err)
		}
		now, err := tp.PCRRead(tpm2.TPMAlgSHA256, pcrs)
		if err != nil {
			t.Fatal(err)
		}
		nowVals := attest.PCRValues{tpm2.TPMAlgSHA256: now}
		if err := q2.CheckPCRs(nowVals); err != nil {
			t.Fatalf("CheckPCRs: %v", err)
		}
		err = attest.ComparePCRs(q2.Selection, nowVals, replayed)
		var me *attest.PCRMismatchError
		if !errors.As(err, &me) || len(me.Mismatches) != 1 || me.Mismatches[0].Index != 5 {
			t.Errorf("ComparePCRs = %v, want PCR 5 named", err)
		}
	})
}

// TPM2_Certify by a swtpm AK proves a key (and the persistent SRK) resident
// in the same TPM; another public area, or another nonce, does not verify.
func TestSwtpmCertify(t *testing.T) {
	env := swtpmtest.Start(t)
	tp := env.TPM
	srk, err := tp.SRK()
	if err != nil {
		t.Fatal(err)
	}
	ak := loadUnderSRK(t, tp, akTemplate())
	defer flush(t, tp, ak.Handle)
	key := loadUnderSRK(t, tp, signingKeyTemplate())
	defer flush(t, tp, key.Handle)

	certify := func(obj tpm.Object, nonce []byte) (a, sig []byte) {
		t.Helper()
		rsp, err := tpm2.Certify{
			ObjectHandle:   obj.Auth(tpm2.PasswordAuth(nil)),
			SignHandle:     ak.Auth(tpm2.PasswordAuth(nil)),
			QualifyingData: tpm2.TPM2BData{Buffer: nonce},
			InScheme:       tpm2.TPMTSigScheme{Scheme: tpm2.TPMAlgNull},
		}.Execute(tp)
		if err != nil {
			t.Fatalf("TPM2_Certify: %v", err)
		}
		return rsp.CertifyInfo.Bytes(), tpm2.Marshal(rsp.Signature)
	}
	nonce, err := attest.NewNonce(attest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	ka, ks := certify(key, nonce)
	sa, ss := certify(srk, nonce)
	for _, c := range []struct {
		name      string
		signer    tpm2.TPMTPublic
		a, sig    []byte
		nonce     []byte
		certified tpm2.TPMTPublic
		wantErr   error
	}{
		{"key", ak.Public, ka, ks, nonce, key.Public, nil},
		{"SRK", ak.Public, sa, ss, nonce, srk.Public, nil},
		{"key's certification, SRK's public area", ak.Public, ka, ks, nonce, srk.Public, attest.ErrNameMismatch},
		{"SRK's certification, AK's public area", ak.Public, sa, ss, nonce, ak.Public, attest.ErrNameMismatch},
		{"wrong nonce", ak.Public, ka, ks, flip(nonce, 5), key.Public, attest.ErrNonce},
		{"flipped signature", ak.Public, ka, flip(ks, 8), nonce, key.Public, attest.ErrSignature},
		{"signed by a key that is not an AK", key.Public, ka, ks, nonce, key.Public, attest.ErrKeyAttributes},
	} {
		t.Run(c.name, func(t *testing.T) {
			cert, err := attest.VerifyCertify(c.signer, c.a, c.sig, c.nonce, c.certified, attest.Options{})
			if !errors.Is(err, c.wantErr) || (c.wantErr == nil) != (err == nil) {
				t.Fatalf("VerifyCertify = %v, want %v", err, c.wantErr)
			}
			if err == nil && string(cert.Name) != string(mustName(t, c.certified)) {
				t.Errorf("Name = %x", cert.Name)
			}
		})
	}
}

func mustName(t *testing.T, p tpm2.TPMTPublic) []byte {
	t.Helper()
	n, err := tpm2.ObjectName(&p)
	if err != nil {
		t.Fatal(err)
	}
	return n.Buffer
}
