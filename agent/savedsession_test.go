package agent_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// savedHolder is A1 holding provd's first anchor extend, as extendHolder,
// but before answering "lost" it context-saves provd's policy session
// (TPM2_ContextSave needs no authorization), and it answers every flush of
// that session's slot (provd's, the sweep's) "flushed" without passing it
// on. The TPM lists a saved session under 0x02xxxxxx whatever its type
// (found by review: spend looked for the policy handle 0x03xxxxxx, took
// the session for gone and did not wait). After provd's retry, A1 loads
// the context back, if it still can, and sends the held extend.
type savedHolder struct {
	mu      sync.Mutex
	held    []byte
	sess    tpm2.TPMHandle
	saved   *tpm2.TPMSContext
	extends int
	dropped bool
	caps    [][]tpm2.TPMHandle
}

func (h *savedHolder) hook(next transport.TPM, cmd []byte) ([]byte, error, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	cc := swtpmtest.CommandCode(cmd)
	switch {
	case cc == tpm2.TPMCCNVExtend && len(cmd) >= 26 && tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == agent.AuditAnchorHandle:
		h.extends++
		if h.extends == 1 {
			h.held = bytes.Clone(cmd)
			h.sess = tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[22:26]))
			rsp, err := (tpm2.ContextSave{SaveHandle: tpm2.TPMIDHContext(h.sess)}).Execute(next)
			if err != nil {
				return nil, err, true
			}
			h.saved = &rsp.Context
			return nil, errors.New("A1: answer lost on the bus"), true
		}
	case cc == tpm2.TPMCCFlushContext && h.sess != 0 && len(cmd) >= 14 &&
		binary.BigEndian.Uint32(cmd[10:14])>>24 <= 0x03 && binary.BigEndian.Uint32(cmd[10:14])&0x00ffffff == uint32(h.sess)&0x00ffffff:
		h.dropped = true
		return []byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0}, nil, true
	}
	return nil, nil, false
}

// A held extend whose session A1 context-saved never runs after provd's
// retry: the witness finds the saved session in its slot, and provd waits
// until the proof has expired before it extends again (found by review).
func TestSavedSessionDoesNotEscapeTheWitness(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	ctx := context.Background()
	ag := newAgent(t, env, stateDir(t))
	if _, err := ag.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ag.ImportKeyBlob(ctx, ".bad-name", nil); !errors.Is(err, api.ErrBadInput) {
		t.Fatal(err)
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Fatalf("verify before the attack: %v", err)
	}
	h := &savedHolder{}
	b.Set(h.hook)
	_, err := ag.ImportKeyBlob(ctx, ".bad-name", nil)
	b.Set(nil)
	t.Logf("the record through A1: %v (extends seen %d, flush dropped %v)", err, h.extends, h.dropped)
	if h.saved == nil || !h.dropped {
		t.Fatal("attack not mounted")
	}
	if h.extends < 2 {
		t.Fatalf("provd did not extend again; extends %d", h.extends)
	}
	if hs, err := env.TPM.Handles(0x03000000); err == nil {
		t.Logf("TPM's saved-session list: %#x (provd's session was %#x)", hs, h.sess)
	}
	ld, err := (tpm2.ContextLoad{Context: *h.saved}).Execute(b.Next)
	if err != nil {
		t.Fatalf("ContextLoad: %v", err)
	}
	rsp, err := b.Next.Send(h.held)
	if err != nil {
		t.Fatal(err)
	}
	rc := tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
	_ = env.TPM.Flush(ld.LoadedHandle)
	t.Logf("the held extend, replayed after ContextLoad (handle %#x): %v", uint32(ld.LoadedHandle), rc)
	if rc == tpm2.TPMRCSuccess {
		t.Errorf("the held extend ran in the TPM after provd's own retry: the anchor is extended twice with one head")
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Errorf("a genuine trail, after A1 held one extend: verify: %v", err)
	}
}
