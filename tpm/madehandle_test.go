package tpm_test

import (
	"bytes"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// A1 flips the top byte of the handle in the answer of a command that
// makes one, so that it names a persistent object (0x81...: the SRK's
// range), which a flush leaves alone: the answer is refused as forged, and
// the sweep is asked for, which finds what the TPM made. Before, a load's
// object or a session stayed loaded (found by review, with the AK's load).
func TestMadeHandleOfAnotherKindIsForged(t *testing.T) {
	for name, cc := range map[string]tpm2.TPMCC{"Load": tpm2.TPMCCLoad, "StartAuthSession": tpm2.TPMCCStartAuthSession} {
		t.Run(name, func(t *testing.T) {
			bus := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
			tp := env.TPM
			srk, blob, _ := pinnedGateBlob(t, tp)
			tp.NeedsSweep()
			flipped := false
			bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
				if flipped || swtpmtest.CommandCode(cmd) != cc {
					return nil, nil, false
				}
				rsp, err := next.Send(cmd)
				if err != nil || len(rsp) < 14 {
					return rsp, err, true
				}
				flipped = true
				rsp = bytes.Clone(rsp)
				rsp[10] = 0x81
				return rsp, nil, true
			})
			var err error
			if cc == tpm2.TPMCCLoad {
				_, err = tp.LoadGate(srk, blob, nil)
			} else {
				_, _, err = tpm2.HMACSession(tp, tpm2.TPMAlgSHA256, 16)
			}
			bus.Set(nil)
			if !flipped {
				t.Fatal("the attack did not run")
			}
			if !errors.Is(err, tpm.ErrResponseForged) {
				t.Errorf("an answer naming a persistent handle: %v, want ErrResponseForged", err)
			}
			if !tp.NeedsSweep() {
				t.Error("no sweep asked for")
			}
			left, lerr := tp.Leftovers()
			if lerr != nil || len(left) != 1 {
				t.Fatalf("the sweep's list: %v (%v), want what the TPM made", left, lerr)
			}
			if err := tp.Flush(left[0]); err != nil {
				t.Fatal(err)
			}
		})
	}
}
