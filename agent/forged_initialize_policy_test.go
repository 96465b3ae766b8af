package agent_test

import (
	"context"
	"crypto/sha256"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// The other resend counting makes: after TPM_RC_INITIALIZE it sends
// TPM2_Startup(CLEAR) and, when the Startup is answered success, the
// command again (a power cycle under provd); that resend is not counted in
// tpm.Stats().Retries. A1 passes a command of a key use on (the TPM runs
// it), answers TPM_RC_INITIALIZE, and answers provd's Startup success
// without passing it on: the copy meets the policy session the first run
// used (the Sign's digest reset, or a step extended twice): POLICY_FAIL,
// which agent.policyUse reports as a platform that fails the policy (exit
// 3) because Retries did not move. What must hold: exit 15 (forged), as
// for the forged RETRY (TestProbeSignForgedRetryExit).
func TestForgedInitializeResendIsForgedNotPolicy(t *testing.T) {
	ctx := context.Background()
	d := sha256.Sum256([]byte("d"))
	for name, cc := range map[string]tpm2.TPMCC{"Sign": tpm2.TPMCCSign, "PolicyPCR": tpm2.TPMCCPolicyPCR, "PolicyAuthValue": tpm2.TPMCCPolicyAuthValue} {
		t.Run(name, func(t *testing.T) {
			bus := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
			ag, dir := signingState(t, env)
			ag.Close()
			ag = newAgent(t, env, dir) // one-shot
			sent, startups, answered := 0, 0, false
			bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				switch swtpmtest.CommandCode(cmd) {
				case cc:
					sent++
					if answered {
						return nil, nil, false
					}
					answered = true
					if _, err := next.Send(cmd); err != nil {
						return nil, err, true
					}
					return swtpmtest.ErrorAnswer(tpm2.TPMRCInitialize), nil, true
				case tpm2.TPMCCStartup:
					startups++
					return swtpmtest.ErrorAnswer(tpm2.TPMRCSuccess), nil, true
				}
				return nil, nil, false
			})
			_, err := ag.Sign(ctx, "sig", d[:], api.SignOptions{})
			bus.Set(nil)
			t.Logf("%s sent %d, Startup answered by A1 %d: %v; exit %d", name, sent, startups, err, api.ExitCode(err))
			if !answered || startups == 0 {
				t.Fatal("not mounted")
			}
			if api.ExitCode(err) != api.ExitIdentity {
				t.Errorf("A1's forged INITIALIZE after the TPM ran %s: exit %d (%v), want %d (forged), not %d (the platform fails its policy)",
					name, api.ExitCode(err), err, api.ExitIdentity, api.ExitPolicy)
			}
		})
	}
}
