package agent_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// signUnsealer is the agent as these tests use it.
type signUnsealer interface {
	Sign(context.Context, string, []byte, api.SignOptions) ([]byte, error)
	Unseal(context.Context, []byte) ([]byte, error)
}

// A1 passes a key use's Sign, and an unseal's Unseal, on to the TPM and
// answers TPM_RC_RETRY in place of every answer, the copies' too (each
// copy is passed on; the TPM refuses it, POLICY_FAIL, and A1 answers RETRY
// again). counting resends on every RETRY, up to maxRetries (8): an honest
// TPM may answer RETRY or TESTING many times. What must hold (the threat
// model's policy-failure row): no copy runs a second time, since each
// meets the policy session the first run used; the operation fails. (The
// outcome is exit 1, "the TPM was not able to start the command", as for
// an honest TPM busy nine times.)
func TestForgedRetriesRunNoSecondCopy(t *testing.T) {
	t.Parallel()
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	ctx := context.Background()
	ag, dir := signingState(t, env)
	blob, err := ag.Seal(ctx, api.SealRequest{Data: []byte("s")})
	if err != nil {
		t.Fatal(err)
	}
	ag.Close()
	d := sha256.Sum256([]byte("d"))
	for _, c := range []struct {
		name string
		cc   tpm2.TPMCC
		op   func(a signUnsealer) error
	}{
		{"sign", tpm2.TPMCCSign, func(a signUnsealer) error {
			_, err := a.Sign(ctx, "sig", d[:], api.SignOptions{})
			return err
		}},
		{"unseal", tpm2.TPMCCUnseal, func(a signUnsealer) error {
			_, err := a.Unseal(ctx, blob)
			return err
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			a := newAgent(t, env, dir)
			defer a.Close()
			sent, ran := 0, 0
			bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				if swtpmtest.CommandCode(cmd) != c.cc {
					return nil, nil, false
				}
				sent++
				rsp, err := next.Send(cmd)
				if err != nil {
					return nil, err, true
				}
				if binary.BigEndian.Uint32(rsp[6:10]) == uint32(tpm2.TPMRCSuccess) {
					ran++
				}
				return swtpmtest.ErrorAnswer(tpm2.TPMRCRetry), nil, true
			})
			err := c.op(a)
			bus.Set(nil)
			t.Logf("%s sent %d times, ran %d: exit %d: %v", c.name, sent, ran, api.ExitCode(err), err)
			if sent < 2 || ran != 1 {
				t.Errorf("%s sent %d times and ran %d, want it sent again and run once", c.name, sent, ran)
			}
			if err == nil {
				t.Errorf("%s succeeded on A1's answers", c.name)
			}
		})
	}
}
