package agent

// Review 32: signed policy installs and provision --force with the SRK
// another program evicted.
//
// FLAW (failed before the mend): none in this file.
//
// HELD: TestReview32PolicyInstallWithTheSRKEvicted: a signed policy's
// install (the counter gate loaded under the SRK, its increment, the
// audit gate's extend) and provision --force, each in a new process after
// another program evicted the SRK of a provisioned state, one-shot and a
// daemon (KeepSession), on an exclusive TPM and behind a resource manager:
// each works, nothing is left loaded that the agent does not hold.
import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

func TestReview32PolicyInstallWithTheSRKEvicted(t *testing.T) {
	t.Parallel()
	for _, rm := range []bool{false, true} {
		for _, daemon := range []bool{false, true} {
			t.Run(review26Mode(daemon)+map[bool]string{false: "/exclusive", true: "/resource manager"}[rm], func(t *testing.T) {
				ctx := context.Background()
				b := &swtpmtest.Bus{}
				opts := []swtpmtest.Option{swtpmtest.WithBus(b)}
				if rm {
					opts = append(opts, swtpmtest.WithResourceManager())
				}
				env := swtpmtest.Start(t, opts...)
				s := &review32Steps{t: t, env: env, b: b, dir: t.TempDir() + "/state", daemon: daemon}
				s.open()
				signer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
				req := api.ProvisionRequest{Officer: officertest.Public(), TrustOnFirstUse: true, Signer: signer.Public()}
				if _, err := s.a.Provision(ctx, req); err != nil {
					t.Fatal(err)
				}
				cur, err := env.TPM.PCRRead(tpm2.TPMAlgSHA256, []int{7})
				if err != nil {
					t.Fatal(err)
				}
				signed := func(v uint64) []byte {
					sp, err := SignPKPolicy(signer, policy.PCRValues{Bank: policy.BankSHA256, Values: cur}, v, "", true)
					if err != nil {
						t.Fatal(err)
					}
					b, _ := sp.MarshalJSON()
					return b
				}
				c, err := env.TPM.ReadCounter(PolicyCounterHandle)
				if err != nil {
					t.Fatal(err)
				}
				s.step("policy install", func(a *Agent) error { _, err := a.InstallPolicy(ctx, signed(c+1)); return err })
				s.step("policy install again", func(a *Agent) error { _, err := a.InstallPolicy(ctx, signed(c+2)); return err })
				s.step("policy show", func(a *Agent) error { _, err := a.ShowPolicy(ctx); return err })
				s.step("seal", func(a *Agent) error { _, err := a.Seal(ctx, api.SealRequest{Data: []byte("x")}); return err })
				req.Force = true
				s.step("provision --force", func(a *Agent) error { _, err := a.Provision(ctx, req); return err })
				if !review26SRKThere(env) {
					t.Errorf("provision --force left the SRK evicted")
				}
				_ = tpm.SRKHandle
			})
		}
	}
}
