package agent_test

import (
	"context"
	"crypto/sha256"
	"errors"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// The TPM gone for good under a running provd (swtpm killed, never started
// again): the first operation waits out the redial window (3 s) and fails
// with no_tpm; the ones queued behind it and after it try one dial and fail
// at once, not 3 s each in turn (found by review: four queued requests took
// 12 s, holding the queue, whatever their deadlines). Once the TPM is back,
// the next request succeeds.
func TestTPMGoneFailsFast(t *testing.T) {
	env := swtpmtest.Start(t)
	env.RequireSimulator()
	env.NoLeakCheck() // the TPM is gone: there is nothing to check
	ctx := context.Background()
	ag := signingAgent(t, env)
	if err := syscall.Kill(env.Pid, syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	d := sha256.Sum256([]byte("m"))
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs[i] = ag.Sign(ctx, "sig", d[:], api.SignOptions{})
		}()
	}
	wg.Wait()
	_, serr := ag.Status(ctx)
	waited := 0
	for i, err := range append(errs, serr) {
		if !errors.Is(err, tpm.ErrNoTPM) || api.ExitCode(err) != api.ExitNoTPM {
			t.Errorf("request %d with the TPM gone: %v (exit %d), want no_tpm, exit 6", i, err, api.ExitCode(err))
			continue
		}
		// Which path failed it: the redial window, or one dial at once.
		if strings.Contains(err.Error(), "dialing it again failed for") {
			waited++
		} else if !strings.Contains(err.Error(), "has not answered since") {
			t.Errorf("request %d: %v", i, err)
		}
	}
	if waited != 1 {
		t.Errorf("%d of 5 requests waited out the redial window, want 1", waited)
	}
	// The TPM back (started again on its address): the next request
	// dials, starts it up and succeeds.
	env.PowerCut()
	if _, err := ag.Sign(ctx, "sig", d[:], api.SignOptions{}); err != nil {
		t.Fatalf("sign once the TPM is back: %v", err)
	}
}
