package agent

import (
	"context"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// Held: an honest platform whose policy PCR (7, the PK's) is extended by
// another program (a boot-time measurement, IMA) after provd's PolicyPCR
// step passed and before the key's command, on a key loaded just now (the
// case review 79's new verdict is about: a fresh load, every step passed,
// the command refused). The TPM answers TPM_RC_PCR_CHANGED, not
// TPM_RC_POLICY_FAIL, so it is not taken for a renamed load: exit 3 (the
// platform's state), not forged (exit 15); nothing is left held by nobody.
// The same for a created key used one-shot and in a daemon with a kept
// policy session.
func TestReview80PCRExtendedBetweenStepAndUseIsNotForged(t *testing.T) {
	t.Parallel()
	for _, daemon := range []bool{false, true} {
		name := "one-shot"
		if daemon {
			name = "daemon"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			bus := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
			a := provisioned(t, env)
			if daemon {
				dir := a.dir
				a.Close()
				d, err := New(Config{TPM: env.TPM, StateDir: dir, KeepSession: true})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { d.Close() })
				a = d
			}
			if _, err := a.CreateKey(ctx, api.CreateRequest{Name: "c", Type: "ecc-p256"}); err != nil {
				t.Fatal(err)
			}
			signVerifies(t, a, a, "c")
			if err := a.keys.Drop("c"); err != nil {
				t.Fatal(err)
			}
			done := false
			bus.Set(swtpmtest.BeforeOnce(swtpmtest.Code(tpm2.TPMCCSign), &done, func(next transport.TPM) {
				m := sha256.Sum256([]byte("another program's measurement"))
				if _, err := (tpm2.PCRExtend{
					PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(7), Auth: tpm2.PasswordAuth(nil)},
					Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: m[:]}}},
				}).Execute(next); err != nil {
					t.Errorf("extend: %v", err)
				}
			}))
			dg := sha256.Sum256([]byte("c"))
			_, err := a.Sign(ctx, "c", dg[:], api.SignOptions{})
			bus.Set(nil)
			t.Logf("PCR 7 extended between the steps and the sign: %v (exit %d)", err, api.ExitCode(err))
			if !done {
				t.Fatal("not mounted: no sign")
			}
			if err == nil {
				t.Fatal("signed with PCR 7 moved")
			}
			if errors.Is(err, tpm.ErrResponseForged) || api.ExitCode(err) != api.ExitPolicy {
				t.Errorf("an honest PCR extend between the policy's steps and the command: exit %d, want %d (policy), not forged", api.ExitCode(err), api.ExitPolicy)
			}
			if left := unheldLeft(t, a); len(left) != 0 {
				t.Errorf("held by nobody: %v", left)
			}
		})
	}
}
