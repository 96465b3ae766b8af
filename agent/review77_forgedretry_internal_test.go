package agent

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review77LoadUnderT is a match for the TPM2_Load of a key under a
// transfer key through T's policy: a transient parent, authorized by a
// policy session.
func review77LoadUnderT(cmd []byte) bool {
	if swtpmtest.CommandCode(cmd) != tpm2.TPMCCLoad || len(cmd) < 22 {
		return false
	}
	parent := binary.BigEndian.Uint32(cmd[10:14])
	session := binary.BigEndian.Uint32(cmd[18:22]) // after authorizationSize
	return parent>>24 == 0x80 && session>>24 == 0x03
}

// Held: A1 on the receiver's bus lets the TPM2_Load of a transferred key
// under the new T (T's policy session, its Load branch) run, and answers
// TPM_RC_RETRY in the TPM's place; provd sends it again, the TPM (which
// reset the session after the load it ran) refuses the policy
// (TPM_RC_POLICY_FAIL), and usedPolicy tells that from a platform that
// fails a policy: ErrResponseForged (exit 15), not exit 3. Nothing is left
// in the TPM (the object the first copy loaded is swept), and the next
// sign works. An honest RETRY (the command never reached the TPM) is sent
// again and the sign works.
func TestReview77ForgedRetryOnTheLoadUnderT(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	bus := &swtpmtest.Bus{}
	envB, b, a, _, dup := movedKey(t, swtpmtest.WithBus(bus))
	if _, err := b.DupImport(ctx, api.DupImportRequest{Name: "k", Dup: dup}); err != nil {
		t.Fatal(err)
	}
	sign := func() error {
		if err := b.keys.Drop("k"); err != nil {
			t.Fatal(err)
		}
		d := sha256.Sum256([]byte("m"))
		_, err := b.Sign(ctx, "k", d[:], api.SignOptions{})
		return err
	}
	ran := 0
	done := false
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if !review77LoadUnderT(cmd) {
			return nil, nil, false
		}
		ran++
		if done {
			return nil, nil, false
		}
		done = true
		if _, err := next.Send(cmd); err != nil {
			return nil, err, true
		}
		return swtpmtest.ErrorAnswer(tpm2.TPMRCRetry), nil, true
	})
	err := sign()
	bus.Set(nil)
	t.Logf("Load under T sent %d times: %v (exit %d)", ran, err, api.ExitCode(err))
	if ran < 2 {
		t.Fatalf("the Load under T was not sent again (%d): %v", ran, err)
	}
	if !errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) != api.ExitIdentity {
		t.Errorf("forged RETRY after the TPM loaded under T: %v (exit %d), want ErrResponseForged (exit %d)", err, api.ExitCode(err), api.ExitIdentity)
	}
	if errors.Is(err, tpm.ErrPolicyNotSatisfied) {
		t.Error("reported as a policy the platform does not satisfy")
	}
	if err := b.keys.EvictResident(); err != nil {
		t.Fatal(err)
	}
	if left, err := envB.TPM.Leftovers(); err != nil || len(left) != 0 {
		t.Errorf("left in the TPM: %v (%v)", left, err)
	}
	if err := sign(); err != nil {
		t.Fatalf("the next sign: %v", err)
	}

	// An honest warning: the Load never reached the TPM.
	sent := 0
	bus.Set(func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		if !review77LoadUnderT(cmd) {
			return nil, nil, false
		}
		if sent++; sent > 1 {
			return nil, nil, false
		}
		return swtpmtest.ErrorAnswer(tpm2.TPMRCRetry), nil, true
	})
	err = sign()
	bus.Set(nil)
	if err != nil || sent != 2 {
		t.Errorf("an honest RETRY of the Load under T (sent %d): %v", sent, err)
	}
	signVerifies(t, a, b, "k")
}
