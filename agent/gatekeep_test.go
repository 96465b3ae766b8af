package agent_test

import (
	"context"
	"errors"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// What can happen to the TPM between provision's two records, while the
// new trail's gate and its first extend's policy session are kept for the
// second (gateKeep): a reset, a power cut or a migration before the
// trail's open reads the anchor, before the second proof's PolicySecret,
// or before the second extend. Nothing is called forged or a wrong value,
// nothing is left in the TPM, the trail verifies (at once, or after the
// next operation, which writes a record that had to wait), and the next
// operation works.
func TestProvisionEventsBetweenItsRecords(t *testing.T) {
	t.Parallel()
	points := []struct {
		name string
		cc   tpm2.TPMCC
	}{
		{"the anchor's read", tpm2.TPMCCNVRead},
		{"the second proof", tpm2.TPMCCPolicySecret},
		{"the second extend", tpm2.TPMCCNVExtend},
	}
	for _, ev := range swtpmtest.Events {
		for _, p := range points {
			t.Run(ev+"/before "+p.name, func(t *testing.T) {
				b := &swtpmtest.Bus{}
				env := swtpmtest.Start(t, swtpmtest.WithBus(b))
				ag := newAgent(t, env, stateDir(t))
				ctx := context.Background()
				var mu sync.Mutex
				extends, fired := 0, false
				b.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
					mu.Lock()
					defer mu.Unlock()
					cc := swtpmtest.CommandCode(cmd)
					if extends == 1 && !fired && cc == p.cc {
						fired = true
						env.Event(ev)
					}
					if cc == tpm2.TPMCCNVExtend {
						extends++
					}
					return nil, nil, false
				})
				_, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}, AllowResettable: true})
				b.Set(nil)
				t.Logf("provision with a %s before %s: %v (exit %d)", ev, p.name, err, api.ExitCode(err))
				if !fired {
					t.Fatal("not mounted")
				}
				if errors.Is(err, tpm.ErrResponseForged) || errors.Is(err, tpm.ErrBadAuth) {
					t.Errorf("an honest %s called forged or a wrong value", ev)
				}
				if left, lerr := env.TPM.Leftovers(); lerr != nil || len(left) > 0 {
					t.Errorf("left in the TPM: %x %v", left, lerr)
				}
				if err != nil {
					// Provision again, as an operator would.
					if _, err := ag.Provision(ctx, api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, PCRs: []int{7}, AllowResettable: true, Force: true}); err != nil {
						t.Fatalf("provision again: %v", err)
					}
				}
				if _, err := ag.Seal(ctx, api.SealRequest{Data: []byte("next"), PCRs: []int{7}}); err != nil {
					t.Fatalf("the next operation: %v", err)
				}
				if _, err := ag.AuditVerify(ctx); err != nil {
					t.Fatalf("the trail: %v", err)
				}
			})
		}
	}
}
