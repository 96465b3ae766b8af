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

// incrementHolder is A1 on one policy install: it holds provd's
// TPM2_NV_Increment of the policy counter (answering "lost") and answers
// the FlushContext of its policy session with success it invented
// (FlushContext has no session). The session stays loaded with a gate
// proof bound (cpHashA) to "an increment of this counter": the same cpHash
// for every increment, so the held command is good at any later time.
type incrementHolder struct {
	mu      sync.Mutex
	held    []byte
	sess    tpm2.TPMHandle
	dropped bool
}

func (h *incrementHolder) hook(next transport.TPM, cmd []byte) ([]byte, error, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch cc := swtpmtest.CommandCode(cmd); {
	case cc == tpm2.TPMCCNVIncrement && h.held == nil && anchorLike(cmd, agent.PolicyCounterHandle):
		h.held = bytes.Clone(cmd)
		h.sess = tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[22:26]))
		return nil, errors.New("A1: answer lost on the bus"), true
	case cc == tpm2.TPMCCFlushContext && h.sess != 0 && !h.dropped && len(cmd) >= 14 &&
		tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == h.sess:
		h.dropped = true
		return []byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0}, nil, true
	}
	return nil, nil, false
}

func anchorLike(cmd []byte, h tpm2.TPMHandle) bool {
	return len(cmd) >= 26 && tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == h
}

// A policy counter increment A1 holds (answering it as lost, and its
// session's flush with a success it invented) never runs later (found by
// review: replayed after the officer's retry, it revoked the policy just
// installed). The failed install spends the proof: its session confirmed
// gone through the TPM's authenticated handle lists, or, where that cannot
// be confirmed, the proof's expiry waited out.
func TestHeldIncrementNeverRunsLater(t *testing.T) {
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
	h := &incrementHolder{}
	b.Set(h.hook)
	_, err = ag.InstallPolicy(ctx, signed(v))
	b.Set(nil)
	if h.held == nil || !h.dropped {
		t.Fatalf("attack not mounted (held %v, flush dropped %v): %v", h.held != nil, h.dropped, err)
	}
	t.Logf("install through A1: %v", err)
	// The officer tries again on an honest bus: it works.
	if r, err := ag.InstallPolicy(ctx, signed(v)); err != nil || r.Counter != v {
		t.Fatalf("install of version %d: %+v, %v", v, r, err)
	}
	blob, err := ag.Seal(ctx, api.SealRequest{Data: []byte("secret")})
	if err != nil {
		t.Fatal(err)
	}
	// Any time later, A1 spends the held increment.
	rsp, err := b.Next.Send(h.held)
	var rc tpm2.TPMRC
	if err == nil && len(rsp) >= 10 {
		rc = tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
	}
	_ = env.TPM.Flush(h.sess)
	c, _ := env.TPM.ReadCounter(agent.PolicyCounterHandle)
	t.Logf("the held increment: %v; the counter: %d (installed version %d)", rc, c, v)
	if c != v {
		t.Errorf("the policy counter is %d after A1's held increment, the installed policy is version %d", c, v)
	}
	if _, err := ag.Unseal(ctx, blob); err != nil {
		t.Errorf("unseal under the installed version %d: %v", v, err)
	}
}
