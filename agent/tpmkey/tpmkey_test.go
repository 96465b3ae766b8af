package tpmkey

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"fmt"
	"sync"
	"testing"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/test/swtpmtest"
)

// TestConcurrentUse: Keys over one in-process Agent share its lock, and
// concurrent Sign and Decrypt calls on several Keys (as Go's TLS stack makes
// them) all succeed and are race-free (run with -race).
func TestConcurrentUse(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: t.TempDir() + "/state"})
	if err != nil {
		t.Fatal(err)
	}
	defer ag.Close()
	if _, err := ag.Provision(ctx, agent.ProvisionRequest{PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.DeriveKey(ctx, agent.DeriveRequest{Name: "ec", Label: "ec", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.CreateKey(ctx, agent.CreateRequest{Name: "rsa", Type: "rsa-2048", Usage: agent.UsageDecrypt}); err != nil {
		t.Fatal(err)
	}
	ec, err := New(ctx, ag, "ec")
	if err != nil {
		t.Fatal(err)
	}
	dec, err := New(ctx, ag, "rsa")
	if err != nil {
		t.Fatal(err)
	}
	if ec.mu == nil || ec.mu != dec.mu {
		t.Fatalf("Keys over one Agent must share one lock: %p %p", ec.mu, dec.mu)
	}
	ag2, err := agent.New(agent.Config{TPM: env.TPM, StateDir: t.TempDir() + "/state2"})
	if err != nil {
		t.Fatal(err)
	}
	defer ag2.Close()
	if lockFor(ag2) == ec.mu {
		t.Error("two Agents share a lock")
	}

	const workers, rounds = 8, 4
	var wg sync.WaitGroup
	errs := make(chan error, workers*rounds)
	for w := range workers {
		wg.Go(func() {
			for i := range rounds {
				msg := fmt.Appendf(nil, "worker %d round %d", w, i)
				if w%2 == 0 {
					d := sha256.Sum256(msg)
					sig, err := ec.Sign(rand.Reader, d[:], crypto.SHA256)
					if err != nil {
						errs <- err
						continue
					}
					if !ecdsa.VerifyASN1(ec.Public().(*ecdsa.PublicKey), d[:], sig) {
						errs <- fmt.Errorf("worker %d: signature does not verify", w)
					}
					continue
				}
				ct, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, dec.Public().(*rsa.PublicKey), msg, nil)
				if err != nil {
					errs <- err
					continue
				}
				pt, err := dec.Decrypt(rand.Reader, ct, &rsa.OAEPOptions{Hash: crypto.SHA256})
				if err != nil {
					errs <- err
					continue
				}
				if string(pt) != string(msg) {
					errs <- fmt.Errorf("worker %d: decrypted %q", w, pt)
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}
