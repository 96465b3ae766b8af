package agent_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// ranThenRetryNth passes the nth command cc (from 1) for which match says
// yes on to the TPM (it runs) and answers TPM_RC_RETRY in its place: A1's
// forged warning. forged false answers RETRY without passing it on (an
// honest warning: the TPM never saw it). sent counts the matching
// commands sent.
func ranThenRetryNth(cc tpm2.TPMCC, nth int, match func(cmd []byte) bool, forged bool, sent *int) swtpmtest.Hook {
	seen := 0
	return func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		if swtpmtest.CommandCode(cmd) != cc || (match != nil && !match(cmd)) {
			return nil, nil, false
		}
		*sent++
		seen++
		if seen != nth {
			return nil, nil, false
		}
		if forged {
			if _, err := next.Send(cmd); err != nil {
				return nil, err, true
			}
		}
		return swtpmtest.ErrorAnswer(tpm2.TPMRCRetry), nil, true
	}
}

// A PK use outside agent.policyUse: the unseal's own policy session
// authorizes the sealed object's TPM2_Load under the PK (the PK's policy)
// and the TPM2_Unseal (the object's). A1 passes one of its commands on
// (the TPM runs it) and answers RETRY; provd resends it and the copy
// meets the session the first run used: TPM_RC_POLICY_FAIL. That is the
// class d665d43 reports as forged (exit 15) for key uses and the seal's
// creation; the unseal must not report it as a platform that fails its
// policy (exit 3) on a platform that satisfies it. An honest RETRY is
// resent and the unseal works.
func TestUnsealForgedRetryIsForgedNotPolicy(t *testing.T) {
	t.Parallel()
	bus := &swtpmtest.Bus{}
	env, ag, dir := provisionedBehind(t, bus)
	ctx := context.Background()
	secret := []byte("a secret A1 answers RETRY for")
	blob, err := ag.Seal(ctx, api.SealRequest{Data: secret, PCRs: []int{7}})
	if err != nil {
		t.Fatal(err)
	}
	ag.Close()
	underTransient := func(cmd []byte) bool { // the sealed object's load (under the PK), not the PK's (under the SRK)
		return len(cmd) >= 14 && binary.BigEndian.Uint32(cmd[10:14])>>24 == 0x80
	}
	for _, c := range []struct {
		name  string
		cc    tpm2.TPMCC
		nth   int
		match func([]byte) bool
	}{
		{"the sealed object's Load", tpm2.TPMCCLoad, 1, underTransient},
		{"Unseal", tpm2.TPMCCUnseal, 1, nil},
		{"the PK policy's PolicyPCR", tpm2.TPMCCPolicyPCR, 1, nil},
		{"the object policy's PolicyPCR", tpm2.TPMCCPolicyPCR, 2, nil},
		{"the object policy's PolicyAuthValue", tpm2.TPMCCPolicyAuthValue, 2, nil},
	} {
		for _, forged := range []bool{true, false} {
			t.Run(fmt.Sprintf("%s/forged=%v", c.name, forged), func(t *testing.T) {
				ag := newAgent(t, env, dir) // one-shot
				defer ag.Close()
				n := 0
				bus.Set(ranThenRetryNth(c.cc, c.nth, c.match, forged, &n))
				got, err := ag.Unseal(ctx, blob)
				bus.Set(nil)
				t.Logf("sent %d: %v; exit %d", n, err, api.ExitCode(err))
				if n < c.nth {
					t.Fatal("not mounted")
				}
				switch {
				case !forged && (err != nil || !bytes.Equal(got, secret)):
					t.Errorf("an honest RETRY: %v", err)
				case forged && api.ExitCode(err) != api.ExitIdentity:
					t.Errorf("A1's forged RETRY after the TPM ran %s: exit %d (%v), want %d (forged); exit %d says the platform fails its policy",
						c.name, api.ExitCode(err), err, api.ExitIdentity, api.ExitPolicy)
				}
			})
		}
	}
}
