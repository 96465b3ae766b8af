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

// signUnsealer is the agent as these tests use it.
type signUnsealer interface {
	Sign(context.Context, string, []byte, api.SignOptions) ([]byte, error)
	Unseal(context.Context, []byte) ([]byte, error)
}

// docs/threat-model.md (the policy-failure row) says "No copy is ever sent
// a third time". A1 passes a key use's Sign, and an unseal's Unseal, on to
// the TPM (it runs once) and answers TPM_RC_RETRY in place of every
// answer, the copies' too (each copy is passed on; the TPM refuses it,
// POLICY_FAIL, and A1 answers RETRY again). counting resends on every
// RETRY up to maxRetries (8): what must hold, as the row says: each
// command is sent at most twice. (The copies cannot run: the policy
// session was spent by the first. The outcome is exit 1, "the TPM was not
// able to start the command", although it ran once and a signature was
// made; an honest TPM busy nine times reads the same.)
func TestForgedRetriesSendNoThirdCopy(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	ctx := context.Background()
	dir := stateDir(t)
	ag := newAgent(t, env, dir)
	provision(t, ag, 7)
	if _, err := ag.CreateKey(ctx, api.CreateRequest{Name: "sig", Type: "ecc-p256"}); err != nil {
		t.Fatal(err)
	}
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
			sent := 0
			bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				if swtpmtest.CommandCode(cmd) != c.cc {
					return nil, nil, false
				}
				sent++
				if _, err := next.Send(cmd); err != nil {
					return nil, err, true
				}
				return swtpmtest.ErrorAnswer(tpm2.TPMRCRetry), nil, true
			})
			err := c.op(a)
			bus.Set(nil)
			t.Logf("%s sent %d times: exit %d: %v", c.name, sent, api.ExitCode(err), err)
			if sent > 2 {
				t.Errorf("%s sent %d times (the threat model: no copy is ever sent a third time)", c.name, sent)
			}
		})
	}
}
