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
	"github.com/provd/provd/api"
	"github.com/provd/provd/catalog"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
)

// TestConcurrentUse: concurrent Sign and Decrypt calls on several Keys over
// one in-process Agent (as Go's TLS stack makes them) all succeed and are
// race-free (run with -race): the Agent itself is safe for concurrent use.
func TestConcurrentUse(t *testing.T) {
	env := swtpmtest.Start(t)
	ctx := context.Background()
	ag, err := agent.New(agent.Config{TPM: env.TPM, StateDir: t.TempDir() + "/state"})
	if err != nil {
		t.Fatal(err)
	}
	defer ag.Close()
	if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	if _, err := officertest.Derive(t, ctx, ag, api.DeriveRequest{Name: "ec", Label: "ec", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: "rsa", Type: "rsa-2048", Usage: catalog.UsageDecrypt}); err != nil {
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
