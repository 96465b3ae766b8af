package agent_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/swtpmtest"
)

// savedIncrementHolder is incrementHolder with a TPM2_ContextSave of the
// session before it answers "lost", and every flush of the session's slot
// answered "flushed" without being passed on.
type savedIncrementHolder struct {
	mu      sync.Mutex
	held    []byte
	sess    tpm2.TPMHandle
	saved   *tpm2.TPMSContext
	dropped bool
}

func (h *savedIncrementHolder) hook(next transport.TPM, cmd []byte) ([]byte, error, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch cc := swtpmtest.CommandCode(cmd); {
	case cc == tpm2.TPMCCNVIncrement && h.held == nil && anchorLike(cmd, agent.PolicyCounterHandle):
		h.held = bytes.Clone(cmd)
		h.sess = tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[22:26]))
		rsp, err := (tpm2.ContextSave{SaveHandle: tpm2.TPMIDHContext(h.sess)}).Execute(next)
		if err != nil {
			return nil, err, true
		}
		h.saved = &rsp.Context
		return nil, errors.New("A1: answer lost on the bus"), true
	case cc == tpm2.TPMCCFlushContext && h.sess != 0 && len(cmd) >= 14 &&
		binary.BigEndian.Uint32(cmd[10:14])>>24 <= 0x03 && binary.BigEndian.Uint32(cmd[10:14])&0x00ffffff == uint32(h.sess)&0x00ffffff:
		h.dropped = true
		return []byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0}, nil, true
	}
	return nil, nil, false
}

// A held increment whose session A1 context-saved never runs after the
// officer's retry (found by review: the witness did not see the saved
// session, and the policy just installed was revoked).
func TestSavedIncrementSessionDoesNotEscape(t *testing.T) {
	b := &swtpmtest.Bus{}
	env := swtpmtest.Start(t, swtpmtest.WithBus(b))
	ctx := context.Background()
	ag := newAgent(t, env, stateDir(t))
	signer, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	res, err := ag.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, Signer: signer.Public()})
	if err != nil {
		t.Fatal(err)
	}
	cur, _ := env.TPM.PCRRead(tpm2.TPMAlgSHA256, []int{7})
	signed := func(v uint64) []byte {
		sp, err := agent.SignPKPolicy(signer, policy.PCRValues{Bank: policy.BankSHA256, Values: cur}, v, "", true)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := sp.MarshalJSON()
		return b
	}
	v := *res.Counter + 1
	h := &savedIncrementHolder{}
	b.Set(h.hook)
	_, err = ag.InstallPolicy(ctx, signed(v))
	b.Set(nil)
	if h.saved == nil || !h.dropped {
		t.Fatalf("attack not mounted (saved %v, flush dropped %v): %v", h.saved != nil, h.dropped, err)
	}
	t.Logf("install through A1: %v", err)
	if r, err := ag.InstallPolicy(ctx, signed(v)); err != nil || r.Counter != v {
		t.Fatalf("install of version %d: %+v, %v", v, r, err)
	}
	blob, err := ag.Seal(ctx, api.SealRequest{Data: []byte("secret")})
	if err != nil {
		t.Fatal(err)
	}
	ld, err := (tpm2.ContextLoad{Context: *h.saved}).Execute(b.Next)
	if err != nil {
		t.Fatalf("ContextLoad: %v", err)
	}
	rsp, err := b.Next.Send(h.held)
	var rc tpm2.TPMRC
	if err == nil && len(rsp) >= 10 {
		rc = tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
	}
	_ = env.TPM.Flush(ld.LoadedHandle)
	c, _ := env.TPM.ReadCounter(agent.PolicyCounterHandle)
	t.Logf("the held increment: %v; the counter: %d (installed version %d)", rc, c, v)
	if c != v {
		t.Errorf("the policy counter is %d after A1's held increment, the installed policy is version %d", c, v)
	}
	if _, err := ag.Unseal(ctx, blob); err != nil {
		t.Errorf("unseal under the installed version %d: %v", v, err)
	}
}
