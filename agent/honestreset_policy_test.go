package agent_test

import (
	"context"
	"crypto/sha256"
	"fmt"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// resetBeforeNth resets the TPM (a platform reset the host survives:
// swtpm's TPM_Init, the connection stays; with cut, a power cut: swtpm
// killed and started again) just before the nth command cc of the
// operation, then passes that command on: the TPM answers
// TPM_RC_INITIALIZE, provd starts it up and sends the command again,
// which since 0da610b counts as a retry (tpm.Stats.Retries).
func resetBeforeNth(env *swtpmtest.Env, cut bool, cc tpm2.TPMCC, nth int, done *bool) swtpmtest.Hook {
	seen := 0
	return func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		if *done || swtpmtest.CommandCode(cmd) != cc {
			return nil, nil, false
		}
		if seen++; seen == nth {
			*done = true
			if cut {
				env.PowerCut()
			} else {
				env.Reset()
			}
		}
		return nil, nil, false
	}
}

// An honest platform reset or power cut inside a key use or an unseal, on a platform
// whose PCR 7 was extended before provisioning: after the reset PCR 7 is
// back to zero and the platform genuinely fails the PK's policy. Counting
// the resend after INITIALIZE as a retry (0da610b) must not turn that into
// a forged answer (exit 15): nothing is on the bus. What must hold: at no
// reset point is the outcome exit 15, and where the policy is evaluated
// after the reset it is exit 3 naming PCR 7.
func TestHonestResetMidOperationIsNotForged(t *testing.T) {
	t.Parallel()
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	env.RequireSimulator()
	ctx := context.Background()
	ev := sha256.Sum256([]byte("boot event"))
	extend7 := func() {
		t.Helper()
		if err := env.TPM.PCRExtend(7, tpm2.TPMAlgSHA256, ev[:]); err != nil {
			t.Fatal(err)
		}
	}
	extend7()
	ag, dir := signingState(t, env)
	blob, err := ag.Seal(ctx, api.SealRequest{Data: []byte("s")})
	if err != nil {
		t.Fatal(err)
	}
	ag.Close()
	d := sha256.Sum256([]byte("d"))
	ops := map[string]func(a signUnsealer) error{
		"sign": func(a signUnsealer) error {
			_, err := a.Sign(ctx, "sig", d[:], api.SignOptions{})
			return err
		},
		"unseal": func(a signUnsealer) error {
			_, err := a.Unseal(ctx, blob)
			return err
		},
	}
	// The commands each operation sends on this platform (it fails at a
	// step: PCR 7 differs): the faults go before those only.
	sent := map[string][]tpm2.TPMCC{}
	for name, op := range ops {
		a := newAgent(t, env, dir)
		log := &swtpmtest.CommandLog{}
		bus.Set(log.Hook)
		log.Start()
		_ = op(a)
		sent[name] = log.Stop()
		bus.Set(nil)
		a.Close()
	}
	for _, c := range []struct {
		name string
		cut  bool
	}{{"reset", false}, {"powercut", true}} {
		for _, opName := range []string{"sign", "unseal"} {
			for _, p := range []struct {
				cc  tpm2.TPMCC
				nth int
			}{
				{tpm2.TPMCCStartAuthSession, 1}, {tpm2.TPMCCStartAuthSession, 2},
				{tpm2.TPMCCLoad, 1}, {tpm2.TPMCCLoad, 2},
				{tpm2.TPMCCPolicyPCR, 1}, {tpm2.TPMCCPolicyPCR, 2},
				{tpm2.TPMCCPolicyAuthValue, 1}, {tpm2.TPMCCPolicyAuthValue, 2},
				{tpm2.TPMCCSign, 1}, {tpm2.TPMCCUnseal, 1}, {tpm2.TPMCCFlushContext, 1},
			} {
				if swtpmtest.Count(sent[opName], p.cc) < p.nth {
					continue // not in this operation
				}
				t.Run(fmt.Sprintf("%s/%s/%v#%d", c.name, opName, p.cc, p.nth), func(t *testing.T) {
					a := newAgent(t, env, dir) // one-shot
					defer a.Close()
					done := false
					bus.Set(resetBeforeNth(env, c.cut, p.cc, p.nth, &done))
					err := ops[opName](a)
					bus.Set(nil)
					if !done {
						t.Fatalf("%v #%d, sent in the clean run, not reached", p.cc, p.nth)
					}
					t.Logf("%s before %v #%d: exit %d: %v", c.name, p.cc, p.nth, api.ExitCode(err), err)
					if api.ExitCode(err) == api.ExitIdentity {
						t.Errorf("an honest %s before %v #%d reported as forged (exit 15): %v", c.name, p.cc, p.nth, err)
					}
					extend7() // PCR 7 as the platform boots it, for the next case
				})
			}
		}
	}
}
