package agent_test

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// attest now keeps the quote's shared session over the endpoint's round
// trip (agent.Agent.Share). Another holder of the TPM flushes it then and
// starts a session of its own, which the TPM puts in the freed slot: the
// same number provd holds. Held when provd's record is not reported as a
// wrong value (exit 11) and provd does not flush the other holder's
// session by the number it still holds.
func TestReview3AttestNowSharedSlotTakenByAnother(t *testing.T) {
	q := startQuoteEnv(t)
	var theirs tpm2.TPMHandle
	flushedTheirs := false
	_, err := quoteThenRecord(q, func() {
		left, err := q.env.TPM.Leftovers()
		if err != nil || len(left) != 1 {
			panic(fmt.Sprintf("want the shared session alone loaded: %x %v", left, err))
		}
		ours := left[0]
		done := false
		q.bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
			if !done {
				done = true
				flush := binary.BigEndian.AppendUint32([]byte{0x80, 0x01, 0, 0, 0, 14, 0, 0, 0x01, 0x65}, uint32(ours))
				if rsp, err := next.Send(flush); err != nil || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
					panic(fmt.Sprintf("the other's flush: %x %v", rsp, err))
				}
				nc := make([]byte, 16)
				rsp, err := (tpm2.StartAuthSession{TPMKey: tpm2.TPMRHNull, Bind: tpm2.TPMRHNull, NonceCaller: tpm2.TPM2BNonce{Buffer: nc},
					SessionType: tpm2.TPMSEHMAC, Symmetric: tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull}, AuthHash: tpm2.TPMAlgSHA256}).Execute(next)
				if err != nil {
					panic(err)
				}
				theirs = rsp.SessionHandle
			}
			if swtpmtest.CommandCode(cmd) == tpm2.TPMCCFlushContext && len(cmd) >= 14 &&
				tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14]))&0xffffff == theirs&0xffffff && theirs != 0 {
				flushedTheirs = true
			}
			return nil, nil, false
		})
	})
	q.bus.Set(nil)
	t.Logf("the record with the shared session's slot another's: %v (exit %d); theirs 0x%08x", err, api.ExitCode(err), uint32(theirs))
	if errors.Is(err, tpm.ErrBadAuth) {
		t.Errorf("FAIL: reported as a wrong value (exit 11)")
	}
	left, _ := q.env.TPM.Leftovers()
	if flushedTheirs && !slices.Contains(left, theirs) {
		t.Logf("provd flushed the other holder's session 0x%08x by the number it held (a sweep or its own flush)", uint32(theirs))
	}
	t.Logf("SUMMARY forged=%v exit=%d flushedTheirs=%v left=%x", errors.Is(err, tpm.ErrResponseForged), api.ExitCode(err), flushedTheirs, left)
}
