package agent_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// 0da610b wraps the whole of an unseal (the PK's guarded load, its
// policy, the sealed object's load, the object's policy, the unseal and
// the envelope) in agent.policyUse: a TPM_RC_POLICY_FAIL after any resend
// since the start is reported as forged (exit 15). An honest warning
// (swtpmtest.AnsweredOnce: the TPM never saw the command) earlier in the
// operation changes nothing on the platform, so it must not change how a
// genuine failure is reported. Each failure below is run without and
// with an honest TPM_RC_RETRY on each command kind the unseal sends; what
// must hold: the same exit code both ways, and never exit 15. Found
// failing for a blob whose policy record is another seal's (an edited or
// mixed-up blob file: nothing authenticates the record against the
// object's authPolicy before the TPM): exit 3 with no PCR named without a
// warning, exit 15 ("changed between provd and the TPM") after an honest
// RETRY of StartAuthSession, Load, PolicyPCR or PolicyAuthValue. The
// genuine platform failures (PCR 16 extended), a changed envelope and a
// blob of another PK hold. Since, the record is checked against the
// object's authPolicy before any TPM command: exit 14 both ways.
func TestUnsealHonestWarningKeepsTheFailuresExit(t *testing.T) {
	t.Parallel()
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	ctx := context.Background()
	dir := stateDir(t)
	ag := newAgent(t, env, dir)
	provision(t, ag, 7, 16) // PCR 16 resettable (AllowResettable)
	seal := func(req api.SealRequest) []byte {
		t.Helper()
		b, err := ag.Seal(ctx, req)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	plain := seal(api.SealRequest{Data: []byte("s")})
	pcr8 := seal(api.SealRequest{Data: []byte("s"), PCRs: []int{8}})
	big := seal(api.SealRequest{Data: make([]byte, 4096)}) // envelope
	// The blob's policy record of another seal (PCR 8, whose values hold)
	// over this object (sealed to the PK's record): the steps pass, the
	// TPM refuses the unseal's digest.
	var a, b map[string]json.RawMessage
	_ = json.Unmarshal(plain, &a)
	_ = json.Unmarshal(pcr8, &b)
	a["policy"] = b["policy"]
	swapped, _ := json.Marshal(a)
	// The envelope's ciphertext changed: GCM fails.
	var e map[string]json.RawMessage
	_ = json.Unmarshal(big, &e)
	var env2 struct {
		Alg        string `json:"alg"`
		Nonce      []byte `json:"nonce"`
		Ciphertext []byte `json:"ciphertext"`
	}
	_ = json.Unmarshal(e["envelope"], &env2)
	env2.Ciphertext[0] ^= 1
	e["envelope"], _ = json.Marshal(env2)
	badEnvelope, _ := json.Marshal(e)
	// Sealed under another PK (another device's).
	other := newAgent(t, swtpmtest.Start(t), stateDir(t))
	provision(t, other, 7)
	foreign, err := other.Seal(ctx, api.SealRequest{Data: []byte("s")})
	if err != nil {
		t.Fatal(err)
	}
	other.Close()
	ag.Close()
	ev := sha256.Sum256([]byte("debug"))
	cases := []struct {
		name   string
		blob   []byte
		before func()
		after  func()
	}{
		{"PCR 16 extended", plain, func() { _ = env.TPM.PCRExtend(16, tpm2.TPMAlgSHA256, ev[:]) }, func() {
			_, _ = (tpm2.PCRReset{PCRHandle: tpm2.AuthHandle{Handle: 16, Auth: tpm2.PasswordAuth(nil)}}).Execute(env.TPM)
		}},
		{"policy record swapped", swapped, nil, nil},
		{"envelope changed", badEnvelope, nil, nil},
		{"sealed under another PK", foreign, nil, nil},
	}
	for _, c := range cases {
		log := &swtpmtest.CommandLog{}
		run := func(warn tpm2.TPMCC) (int, int, error) {
			if c.before != nil {
				c.before()
				defer c.after()
			}
			a := newAgent(t, env, dir) // one-shot
			defer a.Close()
			n := 0
			if warn != 0 {
				bus.Set(swtpmtest.AnsweredOnce(warn, tpm2.TPMRCRetry, &n))
			} else {
				bus.Set(log.Hook)
				log.Start()
			}
			_, err := a.Unseal(ctx, c.blob)
			bus.Set(nil)
			return api.ExitCode(err), n, err
		}
		base, _, berr := run(0)
		sent := log.Stop()
		t.Logf("%s: exit %d: %v", c.name, base, berr)
		if base == 0 || base == api.ExitIdentity {
			t.Fatalf("%s without a warning: exit %d (%v)", c.name, base, berr)
		}
		for _, cc := range []tpm2.TPMCC{tpm2.TPMCCReadPublic, tpm2.TPMCCStartAuthSession, tpm2.TPMCCLoad, tpm2.TPMCCPolicyPCR, tpm2.TPMCCPolicyAuthValue, tpm2.TPMCCPCRRead, tpm2.TPMCCNVRead} {
			if swtpmtest.Count(sent, cc) == 0 {
				continue // the failure comes before this command kind
			}
			t.Run(fmt.Sprintf("%s/RETRY on %v", c.name, cc), func(t *testing.T) {
				got, n, err := run(cc)
				if n == 0 {
					t.Fatalf("%v, sent without the warning, not sent with it", cc)
				}
				if got != base {
					t.Errorf("%s with an honest RETRY of %v earlier: exit %d (%v), without it exit %d", c.name, cc, got, err, base)
				}
			})
		}
	}
}
