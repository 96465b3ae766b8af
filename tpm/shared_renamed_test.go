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

// A Load in the shared audit session whose answer is renamed to a
// persistent handle is refused at the channel before go-tpm sees the
// session's answer (the TPM's nonce moved, go-tpm's did not): the shared
// session is dropped (flushed), the next read in the same Share works on a
// new one, and after the Share only the object the TPM loaded is left,
// with the sweep asked for.
func TestShareLoadRenamedToAPersistentHandle(t *testing.T) {
	bus := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(bus))
	tp := env.TPM
	srk, blob, _ := pinnedGateBlob(t, tp)
	tp.NeedsSweep()
	log := &swtpmtest.CommandLog{}
	flipped := false
	bus.Set(func(next transport.TPM, cmd []byte) ([]byte, error, bool) {
		log.Hook(next, cmd)
		if flipped || swtpmtest.CommandCode(cmd) != tpm2.TPMCCLoad {
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
	log.Start()
	var loadErr, readErr error
	err := tp.Share(func() error {
		if _, err := tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7}); err != nil {
			return err
		}
		_, loadErr = tp.Load(srk, nil, blob)
		_, readErr = tp.PCRReadAuthenticated(tpm2.TPMAlgSHA256, []int{7})
		return nil
	})
	bus.Set(nil)
	cmds := log.Stop()
	t.Logf("commands: %v", cmds)
	if err != nil || !flipped {
		t.Fatalf("share: %v, flipped %v", err, flipped)
	}
	if !errors.Is(loadErr, tpm.ErrResponseForged) {
		t.Errorf("load: %v, want ErrResponseForged", loadErr)
	}
	if readErr != nil {
		t.Errorf("the read after the refused load, in the same Share: %v", readErr)
	}
	if !tp.NeedsSweep() {
		t.Error("no sweep asked for")
	}
	left, _ := tp.Leftovers()
	if len(left) != 1 || left[0]>>24 != 0x80 {
		t.Errorf("left after the Share: %x, want only the loaded object", left)
	}
	for _, h := range left {
		_ = tp.Flush(h)
	}
}
