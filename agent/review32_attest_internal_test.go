package agent

// Review 32: attestation after zeroize --srk (the AK's load persists the
// SRK: tpm.PersistSRK in withAttestKey and newAttestKey, ab759d5).
//
// FLAW (failed before the mend): none in this file.
//
// HELD: TestReview32AttestAfterZeroizeSRK: after a complete zeroize --srk
// of an enrolled state (AK made), attest quote, sign and secret in the
// daemon that zeroized are refused before the AK's load: none persists the
// SRK, nothing is left loaded.
import (
	"context"
	"crypto/sha256"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

func TestReview32AttestAfterZeroizeSRK(t *testing.T) {
	ctx := context.Background()
	env := swtpmtest.Start(t)
	a, err := New(Config{TPM: env.TPM, StateDir: t.TempDir() + "/state", KeepSession: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close() })
	if _, err := a.Provision(ctx, review8Req()); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AttestIdentity(ctx); err != nil { // makes the AK
		t.Fatal(err)
	}
	res, err := a.Zeroize(ctx, api.ZeroizeOptions{SRK: true})
	if err != nil || !res.SRKEvicted || review26SRKThere(env) {
		t.Fatalf("not mounted: zeroize --srk: %v", err)
	}
	d := sha256.Sum256([]byte("m"))
	for _, op := range []struct {
		name string
		run  func() error
	}{
		{"attest identity", func() error { _, err := a.AttestIdentity(ctx); return err }},
		{"attest quote", func() error {
			_, err := a.AttestQuote(ctx, api.AttestQuoteRequest{Nonce: make([]byte, 16), PCRs: map[string][]int{"sha256": {7}}})
			return err
		}},
		{"attest sign", func() error { _, err := a.AttestSign(ctx, "k", d[:], api.SignOptions{}); return err }},
		{"attest secret", func() error { _, err := a.AttestSecret(ctx, api.AttestSecretRequest{Name: "wifi"}); return err }},
	} {
		err := op.run()
		t.Logf("%s after zeroize --srk: %v", op.name, err)
		if review26SRKThere(env) {
			t.Fatalf("%s after zeroize --srk persisted the SRK", op.name)
		}
		srkCopyLeft(t, env, op.name)
	}
}
