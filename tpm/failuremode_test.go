package tpm_test

import (
	"context"
	"encoding/binary"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// failing answers as a TPM in failure mode does once armed: TPM_RC_FAILURE
// to every command but TPM2_GetTestResult (whose testResult says
// TPM_RC_FAILURE) and TPM2_GetCapability (passed on).
type failing struct {
	next  transport.TPM
	armed atomic.Bool
}

func (f *failing) Send(cmd []byte) ([]byte, error) {
	cc := tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
	if !f.armed.Load() || cc == tpm2.TPMCCGetCapability {
		return f.next.Send(cmd)
	}
	rsp := binary.BigEndian.AppendUint16(nil, uint16(tpm2.TPMSTNoSessions))
	rsp = binary.BigEndian.AppendUint32(rsp, 0)
	if cc == tpm2.TPMCCGetTestResult {
		rsp = binary.BigEndian.AppendUint32(rsp, 0)
		rsp = binary.BigEndian.AppendUint16(rsp, 0) // outData
		rsp = binary.BigEndian.AppendUint32(rsp, uint32(tpm2.TPMRCFailure))
	} else {
		rsp = binary.BigEndian.AppendUint32(rsp, uint32(tpm2.TPMRCFailure))
	}
	binary.BigEndian.PutUint32(rsp[2:6], uint32(len(rsp)))
	return rsp, nil
}

// A TPM in failure mode is ErrFailureMode (exit 9: api's kinds table; swtpm does not enter
// failure mode on request: the interposer answers as one does); one
// command's TPM_RC_FAILURE from a TPM whose test result is fine is not
// (agent.TestDecryptRefusesBadCiphertexts).
func TestFailureModeIsTyped(t *testing.T) {
	f := &failing{}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(func(next transport.TPM) transport.TPM { f.next = next; return f }))
	f.armed.Store(true)
	defer f.armed.Store(false)
	_, err := (tpm2.GetRandom{BytesRequested: 8}).Execute(env.TPM)
	err = tpm.Wrap("TPM2_GetRandom", err)
	if !errors.Is(err, tpm.ErrFailureMode) {
		t.Fatalf("a TPM in failure mode: %v, want ErrFailureMode", err)
	}
}

// A one-shot open (no full self-test: every open but the daemon's, the
// boot hook's included since issue 14) refuses a TPM in failure mode, so
// fw verify extends nothing on such a TPM (the review of that change).
func TestOneShotOpenRefusesFailureMode(t *testing.T) {
	env := swtpmtest.Start(t)
	env.CloseTPM()
	f := &failing{}
	f.armed.Store(true)
	_, err := tpm.Open(context.Background(), tpm.Options{Spec: env.Spec, Timeout: 30 * time.Second,
		Wrap: func(next transport.TPM) transport.TPM { f.next = next; return f }})
	if !errors.Is(err, tpm.ErrFailureMode) {
		t.Fatalf("a one-shot open of a TPM in failure mode: %v, want ErrFailureMode", err)
	}
	f.armed.Store(false)
	env.Reopen()
}
