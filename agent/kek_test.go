package agent_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/keywrap"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// ceremony is a KEK import's components (size bytes each) with their KCVs
// and the combined key's: what the custodians bring.
type ceremony struct {
	components [][]byte
	kcvs       []string
	kcv        string
	key        []byte // the combined key, for the tests' independent checks
}

func newCeremony(t *testing.T, n, size int) ceremony {
	t.Helper()
	var c ceremony
	for range n {
		comp := make([]byte, size)
		rand.Read(comp)
		kcv, err := keywrap.KCV(comp)
		if err != nil {
			t.Fatal(err)
		}
		c.components = append(c.components, comp)
		c.kcvs = append(c.kcvs, hex.EncodeToString(kcv[:]))
	}
	key, err := keywrap.Combine(c.components)
	if err != nil {
		t.Fatal(err)
	}
	kcv, _ := keywrap.KCV(key)
	c.key, c.kcv = key, hex.EncodeToString(kcv[:])
	return c
}

// request is the import request; each call gets its own copy of the
// components (the agent's caller clears them).
func (c ceremony) request(name string) api.KEKImportRequest {
	return c.requestFor(name, "")
}

// requestFor is request for a KEK of usage ("": wrap).
func (c ceremony) requestFor(name, usage string) api.KEKImportRequest {
	req := api.KEKImportRequest{Name: name, KCVs: append([]string(nil), c.kcvs...), KCV: c.kcv, Usage: usage}
	for _, comp := range c.components {
		req.Components = append(req.Components, bytes.Clone(comp))
	}
	return req
}

func keyNames(t *testing.T, ag *agent.Agent) []string {
	t.Helper()
	keys, err := ag.ListKeys(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, k := range keys {
		names = append(names, k.Name)
	}
	return names
}

// TestKEKCeremonyRefusesWrongComponents: a mistyped component, a wrong KCV,
// a swapped combined KCV, one component or two equal ones import nothing,
// and say so with exit code 16 (or 2 for malformed input); the right ones
// import a KEK whose KCV, computed by the TPM, is the custodians'.
func TestKEKCeremonyRefusesWrongComponents(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag := signingAgent(t, env)
	c := newCeremony(t, 3, 32)
	before := keyNames(t, ag)
	cases := []struct {
		name string
		edit func(r *api.KEKImportRequest)
		exit int
	}{
		{"mistyped component", func(r *api.KEKImportRequest) { r.Components[1][5] ^= 0x10 }, api.ExitKCV},
		{"wrong component KCV", func(r *api.KEKImportRequest) { r.KCVs[2] = "000000" }, api.ExitKCV},
		{"wrong combined KCV", func(r *api.KEKImportRequest) { r.KCV = r.KCVs[0] }, api.ExitKCV},
		{"components swapped with their KCVs not", func(r *api.KEKImportRequest) {
			r.Components[0], r.Components[1] = r.Components[1], r.Components[0]
		}, api.ExitKCV},
		{"one component", func(r *api.KEKImportRequest) { r.Components, r.KCVs = r.Components[:1], r.KCVs[:1] }, api.ExitUsage},
		{"KCV not hex", func(r *api.KEKImportRequest) { r.KCV = "xyz" }, api.ExitUsage},
		{"sizes differ", func(r *api.KEKImportRequest) {
			r.Components[2] = r.Components[2][:16]
			k, _ := keywrap.KCV(r.Components[2])
			r.KCVs[2] = hex.EncodeToString(k[:])
		}, api.ExitUsage},
	}
	for _, tc := range cases {
		req := c.request("kek")
		tc.edit(&req)
		_, err := ag.ImportKEK(ctx, req)
		if err == nil || api.ExitCode(err) != tc.exit {
			t.Errorf("%s: %v (exit %d), want exit %d", tc.name, err, api.ExitCode(err), tc.exit)
		}
		if got := keyNames(t, ag); len(got) != len(before) {
			t.Fatalf("%s: keys %v after a refused import, before %v", tc.name, got, before)
		}
	}
	info, err := ag.ImportKEK(ctx, c.request("kek"))
	if err != nil {
		t.Fatal(err)
	}
	if info.Kind != api.KindKEK || info.Type != "aes-256" || info.KCV != c.kcv {
		t.Fatalf("KEK %+v, want kind kek, aes-256, KCV %s", info, c.kcv)
	}
	// A KEK only wraps.
	if _, err := ag.Sign(ctx, "kek", make([]byte, 32), api.SignOptions{}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("signing with a KEK: %v", err)
	}
	if _, err := ag.ExportKey(ctx, api.KeyExportRequest{Name: "kek", KEK: "kek"}); !errors.Is(err, api.ErrNotExtractable) {
		t.Fatalf("exporting a KEK: %v", err)
	}
}

// TestExportImportBetweenTwoTPMs: an extractable RSA and ECC key exported
// from TPM A under a KEK the custodians entered on A, with the officer's
// approval, unwraps in software with the combined key to a PKCS#8 key whose
// public key is A's; imported on TPM B (the same ceremony there), it signs,
// and the signature verifies with A's public key. Neither the KEK nor the
// private key crosses either bus in the clear.
func TestExportImportBetweenTwoTPMs(t *testing.T) {
	t.Parallel()
	recA, recB := new(swtpmtest.Recorder), new(swtpmtest.Recorder)
	envA := swtpmtest.Start(t, swtpmtest.WithRecorder(recA))
	envB := swtpmtest.Start(t, swtpmtest.WithRecorder(recB))
	ctx := context.Background()
	a, b := signingAgent(t, envA), signingAgent(t, envB)
	c := newCeremony(t, 3, 32)
	if _, err := a.ImportKEK(ctx, c.request("kek")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.ImportKEK(ctx, c.requestFor("kek", "unwrap")); err != nil {
		t.Fatal(err)
	}
	for _, typ := range []string{"ecc-p256", "ecc-p384", "rsa-2048"} {
		t.Run(typ, func(t *testing.T) {
			if _, err := a.CreateKey(ctx, api.CreateRequest{Name: typ, Type: typ, Extractable: true}); err != nil {
				t.Fatal(err)
			}
			pubA, _, err := a.KeyPublic(ctx, typ)
			if err != nil {
				t.Fatal(err)
			}
			// No approval, or one for another key: refused before the TPM.
			if _, err := a.ExportKey(ctx, api.KeyExportRequest{Name: typ, KEK: "kek"}); !errors.Is(err, api.ErrNotPermitted) {
				t.Fatalf("export without approval: %v", err)
			}
			if _, err := a.ExportKey(ctx, api.KeyExportRequest{Name: typ, KEK: "kek", Approval: officertest.ApproveExport(t, ctx, a, "sig", "kek")}); !errors.Is(err, api.ErrNotPermitted) {
				t.Fatalf("export with another key's approval: %v", err)
			}
			recA.Reset()
			wrapped, err := a.ExportKey(ctx, api.KeyExportRequest{Name: typ, KEK: "kek", Approval: officertest.ApproveExport(t, ctx, a, typ, "kek")})
			if err != nil {
				t.Fatal(err)
			}
			der, err := keywrap.Unwrap(c.key, wrapped)
			if err != nil {
				t.Fatalf("unwrapping provd's export with the combined key: %v", err)
			}
			priv, err := x509.ParsePKCS8PrivateKey(der)
			if err != nil {
				t.Fatal(err)
			}
			if !priv.(crypto.Signer).Public().(interface{ Equal(crypto.PublicKey) bool }).Equal(pubA) {
				t.Fatal("the exported private key is not the key's")
			}
			for i, secret := range append(privateParts(t, priv), c.key) {
				if off := recA.Leak(secret); off >= 0 {
					t.Fatalf("secret %d (the last is the KEK) crossed A's bus in the clear (at %d)", i, off)
				}
			}

			recB.Reset()
			info, err := b.ImportKey(ctx, api.KeyImportRequest{Name: typ, KEK: "kek", Wrapped: wrapped})
			if err != nil {
				t.Fatal(err)
			}
			if info.Kind != api.KindImported || info.Extractable || info.Type != typ {
				t.Fatalf("imported %+v", info)
			}
			for i, secret := range append(privateParts(t, priv), c.key) {
				if off := recB.Leak(secret); off >= 0 {
					t.Fatalf("secret %d (the last is the KEK) crossed B's bus in the clear (at %d)", i, off)
				}
			}
			digest := sha256.Sum256([]byte("signed on B"))
			h := crypto.SHA256
			if typ == "ecc-p384" {
				d := crypto.SHA384.New()
				d.Write([]byte("signed on B"))
				digest2 := d.Sum(nil)
				sig, err := b.Sign(ctx, typ, digest2, api.SignOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if !ecdsa.VerifyASN1(pubA.(*ecdsa.PublicKey), digest2, sig) {
					t.Fatal("B's signature does not verify with A's public key")
				}
				return
			}
			sig, err := b.Sign(ctx, typ, digest[:], api.SignOptions{})
			if err != nil {
				t.Fatal(err)
			}
			switch p := pubA.(type) {
			case *ecdsa.PublicKey:
				if !ecdsa.VerifyASN1(p, digest[:], sig) {
					t.Fatal("B's signature does not verify with A's public key")
				}
			case *rsa.PublicKey:
				if err := rsa.VerifyPKCS1v15(p, h, digest[:], sig); err != nil {
					t.Fatalf("B's signature does not verify with A's public key: %v", err)
				}
			}
			// Imported without --extractable, it does not leave B.
			if _, err := b.ExportKey(ctx, api.KeyExportRequest{Name: typ, KEK: "kek", Approval: officertest.ApproveExport(t, ctx, b, typ, "kek")}); !errors.Is(err, api.ErrNotExtractable) {
				t.Fatalf("exporting a key imported without --extractable: %v", err)
			}
		})
	}
}

// privateParts are the key's private scalar, or primes and private
// exponent, to look for on the bus (its PKCS#8 also holds the public key,
// which crosses the bus by right).
func privateParts(t *testing.T, k crypto.PrivateKey) [][]byte {
	switch k := k.(type) {
	case *ecdsa.PrivateKey:
		b, err := k.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		return [][]byte{b}
	case *rsa.PrivateKey:
		return [][]byte{k.Primes[0].Bytes(), k.Primes[1].Bytes(), k.D.Bytes()}
	}
	t.Fatalf("a %T", k)
	return nil
}

// TestExportRefusals: a key created without --extractable and a derived
// key are refused before the TPM is asked (nothing crosses the bus); a KEK
// weaker than the key is refused; a changed or foreign backup imports
// nothing.
func TestExportRefusals(t *testing.T) {
	t.Parallel()
	rec := new(swtpmtest.Recorder)
	env := swtpmtest.Start(t, swtpmtest.WithRecorder(rec))
	ctx := context.Background()
	ag := signingAgent(t, env)
	c128, c256 := newCeremony(t, 2, 16), newCeremony(t, 2, 32)
	for _, r := range []api.KEKImportRequest{c128.request("kek128"), c256.request("kek256"), c128.requestFor("kek128u", "unwrap"), c256.requestFor("kek256u", "unwrap")} {
		if _, err := ag.ImportKEK(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	for _, r := range []api.CreateRequest{{Name: "p384", Type: "ecc-p384", Extractable: true}, {Name: "p256", Type: "ecc-p256", Extractable: true}} {
		if _, err := ag.CreateKey(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	ap := officertest.ApproveExport(t, ctx, ag, "sig", "kek256")
	pub, _, err := ag.KeyPublic(ctx, "sig")
	if err != nil {
		t.Fatal(err)
	}
	rec.Reset()
	_, err = ag.ExportKey(ctx, api.KeyExportRequest{Name: "sig", KEK: "kek256", Approval: ap})
	if !errors.Is(err, api.ErrNotExtractable) || api.ExitCode(err) != api.ExitNotPermitted {
		t.Fatalf("exporting a key created without --extractable: %v", err)
	}
	// The audit record of the refusal is the only TPM traffic: the key is
	// not even loaded (its public key, which TPM2_Load carries, never
	// crosses the bus), let alone duplicated.
	if rec.Sent(tpm2.TPMCCDuplicate) || rec.Leak(publicBytes(t, pub)) >= 0 {
		t.Fatal("the refusal loaded or duplicated the key; it must come before the TPM is asked")
	}
	if _, err := ag.ExportKey(ctx, api.KeyExportRequest{Name: "p384", KEK: "kek128", Approval: officertest.ApproveExport(t, ctx, ag, "p384", "kek128")}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("a P-384 key under an AES-128 KEK: %v", err)
	}
	wrapped, err := ag.ExportKey(ctx, api.KeyExportRequest{Name: "p256", KEK: "kek128", Approval: officertest.ApproveExport(t, ctx, ag, "p256", "kek128")})
	if err != nil {
		t.Fatalf("a P-256 key under an AES-128 KEK: %v", err)
	}
	before := keyNames(t, ag)
	bad := bytes.Clone(wrapped)
	bad[len(bad)/2] ^= 1
	for what, w := range map[string][]byte{"changed": bad, "short": wrapped[:8], "ragged": wrapped[:len(wrapped)-3], "huge": make([]byte, 64<<10)} {
		if _, err := ag.ImportKey(ctx, api.KeyImportRequest{Name: "back", KEK: "kek128u", Wrapped: w}); err == nil {
			t.Fatalf("a %s backup was imported", what)
		}
	}
	// A KEK works in its one direction: one that wraps does not open a
	// backup, one that unwraps does not make one.
	if _, err := ag.ImportKey(ctx, api.KeyImportRequest{Name: "back", KEK: "kek128", Wrapped: wrapped}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("import under a wrapping KEK: %v", err)
	}
	if _, err := ag.ExportKey(ctx, api.KeyExportRequest{Name: "p256", KEK: "kek128u", Approval: officertest.ApproveExport(t, ctx, ag, "p256", "kek128u")}); !errors.Is(err, api.ErrNotPermitted) {
		t.Fatalf("export under an unwrapping KEK: %v", err)
	}
	_, err = ag.ImportKey(ctx, api.KeyImportRequest{Name: "back", KEK: "kek256u", Wrapped: wrapped})
	if !errors.Is(err, keywrap.ErrIntegrity) || api.ExitCode(err) != api.ExitTampered {
		t.Fatalf("a backup under another KEK: %v (exit %d)", err, api.ExitCode(err))
	}
	if got := keyNames(t, ag); len(got) != len(before) {
		t.Fatalf("keys %v after refused imports, before %v", got, before)
	}
	if _, err := ag.ImportKey(ctx, api.KeyImportRequest{Name: "back", KEK: "kek128u", Wrapped: wrapped, Extractable: true}); err != nil {
		t.Fatal(err)
	}
	// Imported --extractable, it can be backed up again, and it is the
	// same key.
	again, err := ag.ExportKey(ctx, api.KeyExportRequest{Name: "back", KEK: "kek256", Approval: officertest.ApproveExport(t, ctx, ag, "back", "kek256")})
	if err != nil {
		t.Fatal(err)
	}
	der, err := keywrap.Unwrap(c256.key, again)
	if err != nil {
		t.Fatal(err)
	}
	k, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		t.Fatal(err)
	}
	pub, _, _ = ag.KeyPublic(ctx, "p256")
	if !k.(*ecdsa.PrivateKey).PublicKey.Equal(pub) {
		t.Fatal("the re-exported key is not the original")
	}
}

// publicBytes is an ECC public key's uncompressed point.
func publicBytes(t *testing.T, pub crypto.PublicKey) []byte {
	b, err := pub.(*ecdsa.PublicKey).Bytes()
	if err != nil {
		t.Fatal(err)
	}
	return b[1:]
}
