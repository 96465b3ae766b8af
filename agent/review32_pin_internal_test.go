package agent

// Review 32: provision's first contact pins the SRK (pinIdentity, PinSRK)
// in the middle of an operation; tpm.TestReview32PinSRKForgetsTheCopyUnflushed
// shows PinSRK forgetting a held copy unflushed.
//
// FLAW (failed before the mend): none in this file.
//
// HELD: TestReview32ProvisionLeavesNoSRKCopy: a role-less caller's refused
// request then provision, in a daemon (KeepSession) on a fresh TPM and
// after a complete zeroize --srk, exclusive and behind a resource manager:
// no copy of the SRK is made before first contact's pin, nothing is left
// loaded that the agent does not hold, and provision persists the SRK.

import (
	"context"
	"testing"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

func TestReview32ProvisionLeavesNoSRKCopy(t *testing.T) {
	t.Parallel()
	for _, rm := range []bool{false, true} {
		for _, zeroized := range []bool{false, true} {
			name := map[bool]string{false: "exclusive", true: "resource manager"}[rm] + map[bool]string{false: "/fresh", true: "/after zeroize --srk"}[zeroized]
			t.Run(name, func(t *testing.T) {
				ctx := context.Background()
				b := &swtpmtest.Bus{}
				var env *swtpmtest.Env
				var a *Agent
				if zeroized {
					env, a = review31Evicted(t, b, rm)
				} else {
					opts := []swtpmtest.Option{swtpmtest.WithBus(b)}
					if rm {
						opts = append(opts, swtpmtest.WithResourceManager())
					}
					env = swtpmtest.Start(t, opts...)
					var err error
					a, err = New(Config{TPM: env.TPM, StateDir: t.TempDir() + "/state", KeepSession: true})
					if err != nil {
						t.Fatal(err)
					}
					t.Cleanup(func() { a.Close() })
				}
				err := a.RecordRefusal(api.WithCaller(ctx, api.Caller{UID: 4242}), "key-delete", "no role")
				t.Logf("a refused request: %v", err)
				review32Unheld(t, env, a, "a refused request")
				if _, err := a.Provision(ctx, review8Req()); err != nil {
					t.Fatal(err)
				}
				review32Unheld(t, env, a, "provision")
				if !review26SRKThere(env) {
					t.Errorf("provision left the SRK evicted")
				}
			})
		}
	}
}
