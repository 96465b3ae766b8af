package agent_test

import (
	"encoding/binary"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// flipSessionHMAC returns cmd (a command with nh handles) with the last
// byte of its i-th session's HMAC (from 1) flipped, and whether it had one.
func flipSessionHMAC(cmd []byte, nh, i int) ([]byte, bool) {
	out := append([]byte(nil), cmd...)
	off := 10 + 4*nh
	if len(out) < off+4 {
		return nil, false
	}
	end := off + 4 + int(binary.BigEndian.Uint32(out[off:]))
	off += 4
	for n := 1; off < end; n++ {
		off += 4
		off += 2 + int(binary.BigEndian.Uint16(out[off:]))
		off++
		size := int(binary.BigEndian.Uint16(out[off:]))
		off += 2 + size
		if n == i {
			if size == 0 {
				return nil, false
			}
			out[off-1] ^= 1
			return out, true
		}
	}
	return nil, false
}

// Exit 11 (ErrBadAuth) says a refused authorization "does not count
// against lockout: provd's objects and indices are noDA" (0594647). The EK
// is not provd's: the TCG templates leave noDA clear, and provd authorizes
// it (its USER role, PolicySecret(endorsement), in a policy session salted
// to the SRK) for attest activate's TPM2_ActivateCredential. A1 changes
// only that session's HMAC in the command: the TPM refuses it with
// TPM_RC_AUTH_FAIL, the dictionary-attack counter moves, and provd reports
// exit 11 with the claim that nothing counted. What must hold: a refusal
// that counted (AUTH_FAIL) is never reported as one that did not; A1
// changing the command is forged (exit 15), as for the other sessions of
// the command (tpm.guarded).
func TestEKAuthFailIsNotReportedAsUncounted(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env, ag, _ := provisionedBehind(t, bus)
	before := swtpmtest.LockoutCounter(t, bus.Next)
	mounted := false
	fleetFlow(t, env, ag, []byte("psk"), func(name string, fn func() error) {
		t.Helper()
		if name != "attest activate" {
			if err := fn(); err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			return
		}
		bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
			if mounted || swtpmtest.CommandCode(cmd) != tpm2.TPMCCActivateCredential {
				return nil, nil, false
			}
			changed, ok := flipSessionHMAC(cmd, 2, 2) // the EK's session
			if !ok {
				return nil, nil, false
			}
			mounted = true
			rsp, err := next.Send(changed)
			return rsp, err, true
		})
		err := fn()
		bus.Set(nil)
		after := swtpmtest.LockoutCounter(t, bus.Next)
		t.Logf("attest activate, the EK session's HMAC changed: %v; exit %d; lockout counter %d -> %d", err, api.ExitCode(err), before, after)
		if !mounted {
			t.Fatal("not mounted")
		}
		if err == nil {
			t.Fatal("activated with a changed command")
		}
		if after != before && (errors.Is(err, tpm.ErrBadAuth) || api.ExitCode(err) == api.ExitBadAuth) {
			t.Errorf("the refusal counted against lockout (%d -> %d) and is reported as exit %d, whose text says it does not: %v", before, after, api.ExitCode(err), err)
		}
		if api.ExitCode(err) != api.ExitIdentity {
			t.Errorf("A1 changed the command: exit %d, want %d (forged)", api.ExitCode(err), api.ExitIdentity)
		}
		if err := fn(); err != nil { // the flow goes on
			t.Fatalf("%s again: %v", name, err)
		}
	})
}
