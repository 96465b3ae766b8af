package agent

import (
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// The daemon's kept policy session holds a session slot while a key use
// with an extractable key (its own authValue: opPolicy gives no session)
// starts its own policy session and, for secrets, an encryption session:
// three sessions, which swtpm holds (only ECC and RSA keys are created
// extractable; ECDH is the worst case). Every use works.
func TestExtractableUsesBesideTheKeptSession(t *testing.T) {
	env := swtpmtest.Start(t)
	a := keptAgent(t, env)
	ctx := context.Background()
	for _, r := range []api.CreateRequest{
		{Name: "xs", Type: "ecc-p256", Extractable: true},
		{Name: "xdh", Type: "ecc-p256", Usage: "ecdh", Extractable: true},
		{Name: "xrsa", Type: "rsa-2048", Usage: "decrypt", Extractable: true},
	} {
		if _, err := a.CreateKey(ctx, r); err != nil {
			t.Fatalf("create %s: %v", r.Name, err)
		}
	}
	peer, _ := ecdh.P256().GenerateKey(rand.Reader)
	d := sha256.Sum256([]byte("x"))
	ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, rsaPubOf(t, a, "xrsa"), []byte("secret"), nil)
	if err != nil {
		t.Fatal(err)
	}
	uses := map[string]func() error{
		"sign xs":      func() error { _, err := a.Sign(ctx, "xs", d[:], api.SignOptions{}); return err },
		"ecdh xdh":     func() error { _, err := a.ECDH(ctx, "xdh", peer.PublicKey()); return err },
		"decrypt xrsa": func() error { _, err := a.Decrypt(ctx, "xrsa", ct, crypto.SHA256); return err },
	}
	for _, name := range []string{"sign xs", "ecdh xdh", "decrypt xrsa"} {
		for i := 0; i < 2; i++ {
			if _, err := signK(a); err != nil {
				t.Fatalf("sign k: %v", err)
			}
			err := uses[name]()
			t.Logf("%s (try %d, kept session %x): %v", name, i, a.opHandle(), err)
			if err != nil {
				t.Errorf("%s after a kept session: %v", name, err)
			}
		}
	}
}

func rsaPubOf(t *testing.T, a *Agent, name string) *rsa.PublicKey {
	t.Helper()
	pub, _, err := a.KeyPublic(context.Background(), name)
	if err != nil {
		t.Fatal(err)
	}
	return pub.(*rsa.PublicKey)
}

// Derived keys (derivation: PK, D and the result loaded, an extra salted
// encryption session for CreateLoaded) and HMAC sequences, each used for the
// first time in a daemon whose kept session already holds a slot.
//
// On swtpm (3 object and 3 session slots): every use works.
func TestDerivedUsesBesideTheKeptSession(t *testing.T) {
	env := swtpmtest.Start(t)
	a := keptAgent(t, env)
	ctx := context.Background()
	st, err := a.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []api.DeriveRequest{
		{Name: "mac", Label: "mac", Type: "hmac-sha256"},
		{Name: "aes", Label: "aes", Type: "aes-256"},
		{Name: "dh", Label: "dh", Type: "ecc-p256", Usage: "ecdh"},
	} {
		r.Approval = officertest.Approve(t, st.PolicyDigest, r)
		if _, err := a.DeriveKey(ctx, r); err != nil {
			t.Fatalf("derive %s: %v", r.Name, err)
		}
	}
	dir := a.dir
	a.Close()
	big := make([]byte, 8192)
	peer, _ := ecdh.P256().GenerateKey(rand.Reader)
	for _, use := range []struct {
		name string
		fn   func(b *Agent) error
	}{
		{"hmac small", func(b *Agent) error { _, err := b.HMAC(ctx, "mac", []byte("x")); return err }},
		{"hmac sequence", func(b *Agent) error { _, err := b.HMAC(ctx, "mac", big); return err }},
		{"encrypt", func(b *Agent) error {
			env, err := b.EncryptData(ctx, "aes", big)
			if err != nil {
				return err
			}
			_, err = b.DecryptData(ctx, "aes", env)
			return err
		}},
		{"ecdh", func(b *Agent) error { _, err := b.ECDH(ctx, "dh", peer.PublicKey()); return err }},
	} {
		b, err := New(Config{TPM: env.TPM, StateDir: dir, KeepSession: true})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := signK(b); err != nil {
			t.Fatal(err)
		}
		for i := 0; i < 2; i++ {
			if err := use.fn(b); err != nil {
				t.Errorf("%s (try %d) with a kept session: %v", use.name, i, err)
			}
			if _, err := signK(b); err != nil {
				t.Errorf("sign after %s: %v", use.name, err)
			}
		}
		b.Close()
	}
}
