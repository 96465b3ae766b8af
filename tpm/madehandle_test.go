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

// A1 changes the top byte of the handle in the answer of a command that
// makes one, so that it names a persistent object (0x81...: the SRK's
// range), which a flush leaves alone, or a session of the other kind: the
// answer is refused as forged, and the sweep is asked for, which finds
// what the TPM made. Before, a load's object or a session stayed loaded
// (found by review, with the AK's load).
func TestMadeHandleOfAnotherKindIsForged(t *testing.T) {
	for name, tc := range map[string]struct {
		cc     tpm2.TPMCC
		rename func(kind byte) byte
	}{
		"Load, persistent":             {tpm2.TPMCCLoad, func(byte) byte { return 0x81 }},
		"StartAuthSession, persistent": {tpm2.TPMCCStartAuthSession, func(byte) byte { return 0x81 }},
		// An HMAC session answered as a policy session (the same slot): the
		// flush would work, but its use would fail as a stale handle
		// (found by review).
		"StartAuthSession, the other kind": {tpm2.TPMCCStartAuthSession, func(k byte) byte { return k ^ 0x01 }},
	} {
		cc := tc.cc
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
				rsp[10] = tc.rename(rsp[10])
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
