package agent

// Review 35: provision and provision --force on a TPM whose SRK handle
// is empty, where the SRK's TPM2_EvictControl is refused (no persistent
// slot left: TPM_RC_NV_SPACE), with a signed policy (the counter gate is
// created and loaded under the SRK's transient copy before PersistSRK).
//
// FLAW (failed before the mend): none in this file.
//
// HELD: TestReview35ProvisionWithTheSRKPersistRefused: fresh and --force,
// one-shot and daemon, exclusive and behind a resource manager: the
// provision fails, the SRK stays unpersisted, nothing is left loaded that
// the agent does not hold (no SRK copy), the state is not provisioned,
// and the same provision without the refusal succeeds.
import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/officertest"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review35RefuseSRKPersist answers every TPM2_EvictControl that persists
// at 0x81000001 with TPM_RC_NV_SPACE in the TPM's place, and counts them.
func review35RefuseSRKPersist(n *int) swtpmtest.Hook {
	return func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) != tpm2.TPMCCEvictControl {
			return nil, nil, false
		}
		off := swtpmtest.ParamsOffset(cmd, 2)
		if len(cmd) < off+4 || binary.BigEndian.Uint32(cmd[off:off+4]) != uint32(tpm.SRKHandle) {
			return nil, nil, false
		}
		*n++
		return swtpmtest.ErrorAnswer(tpm2.TPMRCNVSpace), nil, true
	}
}

func TestReview35ProvisionWithTheSRKPersistRefused(t *testing.T) {
	t.Parallel()
	for _, force := range []bool{false, true} {
		for _, rm := range []bool{false, true} {
			for _, daemon := range []bool{false, true} {
				name := fmt.Sprintf("force=%v/rm=%v/%s", force, rm, review26Mode(daemon))
				t.Run(name, func(t *testing.T) {
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
					if force {
						if _, err := s.a.Provision(ctx, req); err != nil {
							t.Fatal(err)
						}
						req.Force = true
					}
					// A new process after another program evicted the SRK.
					review31EvictSRK(t, env, b)
					if err := s.a.Close(); err != nil {
						t.Fatal(err)
					}
					env.Reopen()
					s.open()
					if review26SRKThere(env) {
						t.Fatal("not mounted: the SRK is there")
					}
					refused := 0
					b.Set(review35RefuseSRKPersist(&refused))
					_, err := s.a.Provision(ctx, req)
					b.Set(nil)
					t.Logf("provision with the SRK's persist refused (%d refusals): %v", refused, err)
					if refused == 0 {
						t.Fatalf("not mounted: no EvictControl of the SRK (provision: %v)", err)
					}
					if err == nil {
						t.Errorf("provision reported done with the SRK not persisted")
					}
					if review26SRKThere(env) {
						t.Errorf("the SRK is at 0x81000001 after its persist was refused")
					}
					review32Unheld(t, env, s.a, "the refused provision")
					if _, err := s.a.Status(ctx); err != nil {
						t.Logf("status after the refused provision: %v", err)
					}
					if _, err := s.a.Provision(ctx, req); err != nil {
						t.Errorf("provision again, the persist allowed: %v", err)
					}
					if !review26SRKThere(env) {
						t.Errorf("provision again left the SRK unpersisted")
					}
					review32Unheld(t, env, s.a, "provision again")
				})
			}
		}
	}
}
