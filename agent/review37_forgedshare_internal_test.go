package agent

// Review 37: c35f235's ErrResponseForged for a TPM_RC_HANDLE answer to a
// command naming the cached SRK while 0x81000001 holds it, inside the warm
// daemon's operations (a Share with the kept shared session, the PK's
// saved context, the key uses' kept policy session, a resident key).
//
// FLAW (failed before the mend): none.
//
// HELD: TestReview37ForgedSRKHandleInTheWarmDaemon — A1 lets the TPM run
// the first StartAuthSession salted to the SRK of a seal (armed
// again: of a key create, of a status; two rounds) and answers TPM_RC_HANDLE for handle
// 1: the request fails tpm_response_forged (that nothing is sent again is
// review 36's tpm-level test; not counted here), the
// SRK stays at its handle, nothing is left loaded that the agent does not
// hold, and the next requests (seal, sign) work on a TPM provd has to
// itself (the sweep flushes what the TPM made under the forged answer).
// Behind a resource manager the sessions made under forged answers fill
// the connection's space (TPM_RC_SESSION_MEMORY after two rounds): the
// threat model's known limit for any error A1 forges after the TPM made a
// session (review 36), not tested here.
import (
	"context"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review37RanThenHandle1 is A1 passing the first cc naming the SRK to the
// TPM, then answering TPM_RC_HANDLE for handle 1; *sent counts every cc
// naming the SRK (later ones of the same operation among them).
func review37RanThenHandle1(cc tpm2.TPMCC, sent *int) swtpmtest.Hook {
	done := false
	return func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) != cc || len(cmd) < 14 || tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) != tpm.SRKHandle {
			return nil, nil, false
		}
		*sent++
		if done {
			return nil, nil, false
		}
		done = true
		if _, err := next.Send(cmd); err != nil {
			return nil, err, true
		}
		return swtpmtest.ErrorAnswer(tpm2.TPMRCHandle + 0x100), nil, true
	}
}

func TestReview37ForgedSRKHandleInTheWarmDaemon(t *testing.T) {
	{
		{
			ctx := context.Background()
			env, b, a, digest := review35WarmDaemon(t, false)
			attacks := []struct {
				name string
				run  func() error
			}{
				{"seal", func() error { _, err := a.Seal(ctx, api.SealRequest{Data: []byte("x")}); return err }},
				{"key create", func() error {
					_, err := a.CreateKey(ctx, api.CreateRequest{Name: "k2", Type: "ecc-p256"})
					return err
				}},
				{"status", func() error { _, err := a.Status(ctx); return err }},
			}
			for round := 0; round < 2; round++ {
				for _, at := range attacks {
					sent := 0
					b.Set(review37RanThenHandle1(tpm2.TPMCCStartAuthSession, &sent))
					err := at.run()
					b.Set(nil)
					t.Logf("%s with a forged TPM_RC_HANDLE for the SRK (%d sent naming it): %v", at.name, sent, err)
					if sent > 0 && err != nil && !errors.Is(err, tpm.ErrResponseForged) {
						t.Errorf("%s: %v, want tpm_response_forged", at.name, err)
					}
					if !review26SRKThere(env) {
						t.Fatalf("%s: the SRK is gone", at.name)
					}
					review32Unheld(t, env, a, at.name+" (forged)")
					for _, next := range attacks[:1] {
						if err := next.run(); err != nil {
							t.Errorf("after %s's forged answer, %s: %v", at.name, next.name, err)
						}
					}
					if _, err := a.Sign(ctx, "k", digest[:], api.SignOptions{}); err != nil {
						t.Errorf("after %s's forged answer, sign: %v", at.name, err)
					}
					review32Unheld(t, env, a, at.name+" then the next requests")
				}
			}
		}
	}
}
