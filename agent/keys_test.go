package agent_test

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/sha256"
	"testing"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/test/swtpmtest"
)

func provision(t *testing.T, ag *agent.Agent, pcrs ...int) {
	t.Helper()
	if len(pcrs) == 0 {
		pcrs = []int{7, 16}
	}
	if _, err := ag.Provision(context.Background(), agent.ProvisionRequest{PCRs: pcrs}); err != nil {
		t.Fatalf("provision: %v", err)
	}
}

func TestDeriveSmoke(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag := newAgent(t, env, stateDir(t))
	provision(t, ag)
	for _, typ := range []string{"ecc-p256", "ecc-p384", "hmac-sha256", "aes-256"} {
		if _, err := ag.DeriveKey(ctx, agent.DeriveRequest{Name: typ, Label: "l", Type: typ}); err != nil {
			t.Fatalf("derive %s: %v", typ, err)
		}
	}
	d := sha256.Sum256([]byte("hello"))
	before := env.TPM.Stats()
	sig, err := ag.Sign(ctx, "ecc-p256", d[:], agent.SignOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("sign: %d commands", env.TPM.Stats().Sub(before).Commands)
	pub, _, err := ag.KeyPublic(ctx, "ecc-p256")
	if err != nil || !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), d[:], sig) {
		t.Fatal("verify", err)
	}
	before = env.TPM.Stats()
	if _, err := ag.Sign(ctx, "ecc-p256", d[:], agent.SignOptions{Hash: crypto.SHA256}); err != nil {
		t.Fatal(err)
	}
	t.Logf("hot sign: %d commands", env.TPM.Stats().Sub(before).Commands)
	if _, err := ag.HMAC(ctx, "hmac-sha256", []byte("x")); err != nil {
		t.Fatal(err)
	}
	e, err := ag.EncryptData(ctx, "aes-256", []byte("secret"))
	if err != nil {
		t.Fatal(err)
	}
	p, err := ag.DecryptData(ctx, "aes-256", e)
	if err != nil || string(p) != "secret" {
		t.Fatal(err)
	}
	if err := ag.Close(); err != nil {
		t.Fatal(err)
	}
}
