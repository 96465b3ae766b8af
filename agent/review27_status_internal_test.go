package agent

import (
	"context"
	"encoding/binary"
	"strings"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// review27HideSRK is A1 answering every TPM2_ReadPublic of 0x81000001 "no
// such handle" (an error answer has no HMAC), so that SRKIfThere says the
// pinned SRK is not there and status reads TPMA_PERMANENT unauthenticated,
// where A1 could then answer its own bits (owner and lockout auth set,
// no lockout: the warnings gone). It counts the GetCapability reads of
// TPM_PT_PERMANENT sent with no session (tag TPM_ST_NO_SESSIONS).
func review27HideSRK(mu *sync.Mutex, unauthenticated *int) swtpmtest.Hook {
	return func(_ transport.TPM, cmd []byte) ([]byte, error, bool) {
		mu.Lock()
		defer mu.Unlock()
		tag := binary.BigEndian.Uint16(cmd[0:2])
		switch swtpmtest.CommandCode(cmd) {
		case tpm2.TPMCCReadPublic:
			if len(cmd) >= 14 && tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == tpm.SRKHandle {
				return swtpmtest.ErrorAnswer(tpm2.TPMRCHandle | tpm2.TPMRC(0x080)), nil, true
			}
		case tpm2.TPMCCGetCapability:
			if tag == uint16(tpm2.TPMSTNoSessions) && len(cmd) >= 18 &&
				binary.BigEndian.Uint32(cmd[10:14]) == uint32(tpm2.TPMCapTPMProperties) &&
				binary.BigEndian.Uint32(cmd[14:18]) == uint32(tpm2.TPMPTPermanent) {
				*unauthenticated++
			}
		}
		return nil, nil, false
	}
}

// HELD: TestReview27StatusReadIsNotDowngradedInAProvisionedState (A1).
//
// Attack: in a provisioned, pinned state, A1 answers status's
// TPM2_ReadPublic of the SRK's handle "no such handle", so that 1480019's
// PermanentStateAsIs (SRKIfThere: ErrNotFound) reads TPMA_PERMANENT with no
// session, whose answer A1 could then forge to hide the warnings (owner
// auth unset, lockout auth unset and clear enabled, lockout).
//
// Expected and observed: the downgrade does not happen unseen: a one-shot
// process pins the SRK at its open (agent.New: pinIdentity, tpm.TPM.SRK,
// which A1's "no such handle" makes create the primary and fail its
// persist: the open fails), a daemon, or a one-shot process A1 joins after
// the open, has the SRK cached (status's policy check loads the PK under
// it first), and the read goes in a session salted to it; where it went
// unauthenticated the warning "read without authentication" is there.
func TestReview27StatusReadIsNotDowngradedInAProvisionedState(t *testing.T) {
	ctx := context.Background()
	for _, c := range []string{"one-shot, A1 after the open", "one-shot, A1 from the open", "daemon"} {
		t.Run(c, func(t *testing.T) {
			bz := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(bz))
			dir := t.TempDir() + "/state"
			p := review8Agent(t, env.TPM, dir)
			if _, err := p.Provision(ctx, review8Req()); err != nil {
				t.Fatal(err)
			}
			if err := p.Close(); err != nil {
				t.Fatal(err)
			}
			var mu sync.Mutex
			n := 0
			var a *Agent
			switch c {
			case "daemon":
				var err error
				if a, err = New(Config{TPM: env.TPM, StateDir: dir, KeepSession: true}); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { a.Close() })
				if _, err := a.Seal(ctx, api.SealRequest{Data: []byte("served")}); err != nil {
					t.Fatal(err)
				}
				bz.Set(review27HideSRK(&mu, &n))
			case "one-shot, A1 after the open":
				a = review8Agent(t, env.TPM, dir)
				bz.Set(review27HideSRK(&mu, &n))
			default:
				// A1 present when the process opens the state: agent.New
				// pins the SRK and checks it at its handle (pinIdentity).
				bz.Set(review27HideSRK(&mu, &n))
				var err error
				a, err = New(Config{TPM: env.TPM, StateDir: dir})
				if err != nil {
					t.Logf("the open under A1: %v (refused: visible)", err)
					return
				}
				t.Cleanup(func() { a.Close() })
			}
			s, err := a.Status(ctx)
			bz.Set(nil)
			mu.Lock()
			unauth := n
			mu.Unlock()
			warned := false
			for _, w := range s.Warnings {
				if strings.Contains(w, "without authentication") {
					warned = true
				}
			}
			t.Logf("status: %v; provisioned %v; unauthenticated TPM_PT_PERMANENT reads %d; warned %v", err, s.Provisioned, unauth, warned)
			if err == nil && unauth > 0 && !warned {
				t.Errorf("A1 hid the SRK: status read TPMA_PERMANENT with no session (%d) in a provisioned state and did not say so", unauth)
			}
		})
	}
}
