package agent_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/agent"
	"github.com/provd/provd/api"
	"github.com/provd/provd/test/swtpmtest"
)

// Gated commands A1 holds on the bus (found by the second and third
// reviews): A1 keeps provd's first NV_Extend of the audit anchor, or
// NV_Increment of the policy counter (genuine commands: provd's session and
// HMAC, the proof bound to them), answers them as lost, and sends them
// later. provd spends a failed command's proof before it retries: the
// session flushed and confirmed gone through the TPM's authenticated
// handle lists (loaded by handle, saved by slot), or, where A1 keeps that
// from the TPM, the proof's 10-second expiry waited out.

// flushes is what commandHolder does to flushes of the held command's
// session.
type flushes int

const (
	passFlushes  flushes = iota
	forgeFirst           // provd's first flush of it answered "flushed", not sent
	forgeAllSlot         // every flush of its slot (0x02… or 0x03…) so answered
)

// holding is how commandHolder attacks.
type holding struct {
	// save: the session is context-saved (no authorization needed) before
	// the command is answered as lost.
	save    bool
	flushes flushes
	// keepList: the witness's first handle list after a forged flush is
	// kept from the TPM (an error), so that provd cannot confirm.
	keepList bool
	// atRetry: the held command is sent just before provd's second one.
	atRetry bool
}

// commandHolder is A1 holding the first command cc on index.
type commandHolder struct {
	holding
	cc    tpm2.TPMCC
	index tpm2.TPMHandle

	mu                sync.Mutex
	held              []byte
	sess              tpm2.TPMHandle
	saved             *tpm2.TPMSContext
	seen              int
	dropped, listKept bool
	replayRC          tpm2.TPMRC
	heldAt            time.Time
}

func (h *commandHolder) hook(next transport.TPM, cmd []byte) ([]byte, error, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	cc := swtpmtest.CommandCode(cmd)
	switch {
	case cc == h.cc && len(cmd) >= 26 && tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == h.index:
		h.seen++
		switch {
		case h.seen == 1:
			h.heldAt = time.Now()
			h.held = bytes.Clone(cmd)
			h.sess = tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[22:26]))
			if h.save {
				rsp, err := (tpm2.ContextSave{SaveHandle: tpm2.TPMIDHContext(h.sess)}).Execute(next)
				if err != nil {
					return nil, err, true
				}
				h.saved = &rsp.Context
			}
			return nil, errors.New("A1: answer lost on the bus"), true
		case h.seen == 2 && h.atRetry:
			h.replayLocked(next)
		}
	case cc == tpm2.TPMCCFlushContext && h.sess != 0 && len(cmd) >= 14 && h.forges(tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14]))):
		h.dropped = true
		return []byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0}, nil, true
	case cc == tpm2.TPMCCGetCapability && h.keepList && h.dropped && !h.listKept:
		h.listKept = true
		return nil, errors.New("A1: answer lost on the bus"), true
	}
	return nil, nil, false
}

// forges reports whether a flush of handle f is to be answered by A1.
func (h *commandHolder) forges(f tpm2.TPMHandle) bool {
	switch h.flushes {
	case forgeFirst:
		return !h.dropped && f == h.sess
	case forgeAllSlot:
		return f>>24 <= 0x03 && f&0x00ffffff == h.sess&0x00ffffff
	}
	return false
}

// replay sends the held command (its session loaded back first when A1
// saved it), as A1 may at any time.
func (h *commandHolder) replay(t *testing.T, env *swtpmtest.Env, next transport.TPM) tpm2.TPMRC {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.saved != nil {
		ld, err := (tpm2.ContextLoad{Context: *h.saved}).Execute(next)
		if err != nil {
			t.Logf("A1's ContextLoad of the saved session: %v", err)
			return tpm2.TPMRCHandle
		}
		defer env.TPM.Flush(ld.LoadedHandle)
	} else {
		// The session, if it lives (continueSession set), is A1's to
		// clean up, so that the harness's leak check sees nothing of it.
		defer env.TPM.Flush(h.sess)
	}
	h.replayLocked(next)
	return h.replayRC
}

func (h *commandHolder) replayLocked(next transport.TPM) {
	rsp, err := next.Send(h.held)
	if err == nil && len(rsp) >= 10 {
		h.replayRC = tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
	}
}

// auditedAgent is a provisioned agent behind bus b whose trail holds a
// record and verifies.
func auditedAgent(t *testing.T, b *swtpmtest.Bus) (*swtpmtest.Env, *agent.Agent) {
	t.Helper()
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
	return env, ag
}

// An audit anchor extend A1 holds never runs beside provd's retry or
// later: sent at the retry (the first session flushed by then), after the
// next record with provd's flush of its session forged, with its
// session context-saved and every flush of its slot forged (the witness
// finds it by slot; expired), and after a resume (Shutdown(STATE),
// TPM_Init, Startup(STATE), the witness's list kept from the TPM: still
// expired). Each time the record is written once and the trail verifies.
func TestHeldExtendNeverRunsTwice(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name   string
		how    holding
		resume bool
	}{
		{name: "sent at the retry", how: holding{atRetry: true}},
		{name: "sent later, its session's flush forged", how: holding{flushes: forgeFirst}},
		{name: "its session context-saved, every flush of the slot forged", how: holding{save: true, flushes: forgeAllSlot}},
		{name: "after a resume, the witness's list kept", how: holding{save: true, flushes: forgeAllSlot, keepList: true}, resume: true},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := &swtpmtest.Bus{}
			env, ag := auditedAgent(t, b)
			ctx := context.Background()
			h := &commandHolder{holding: c.how, cc: tpm2.TPMCCNVExtend, index: agent.AuditAnchorHandle}
			b.Set(h.hook)
			_, err := ag.ImportKeyBlob(ctx, ".bad-name", nil)
			b.Set(nil)
			t.Logf("the record through A1: %v", err)
			if h.seen != 2 || (h.flushes != passFlushes && !h.dropped) || (h.keepList && !h.listKept) {
				t.Fatalf("attack not mounted: %d extends, flush forged %v, list kept %v", h.seen, h.dropped, h.listKept)
			}
			if !h.atRetry {
				// Any time later: a record in between changes nothing.
				if _, err := ag.ImportKeyBlob(ctx, ".bad-name", nil); !errors.Is(err, api.ErrBadInput) {
					t.Fatalf("the next record: %v", err)
				}
				if c.resume {
					// An orderly shutdown (no authorization), the reset
					// or suspend that follows, and the resume.
					if _, err := (tpm2.Shutdown{ShutdownType: tpm2.TPMSUState}).Execute(b.Next); err != nil {
						t.Fatalf("Shutdown(STATE): %v", err)
					}
					env.Reset()
					if _, err := (tpm2.Startup{StartupType: tpm2.TPMSUState}).Execute(b.Next); err != nil {
						t.Fatalf("Startup(STATE): %v", err)
					}
				}
				h.replay(t, env, b.Next)
			}
			t.Logf("the held extend, %v after it was held: %v", time.Since(h.heldAt).Round(time.Millisecond), h.replayRC)
			if h.replayRC == tpm2.TPMRCSuccess {
				t.Errorf("the held extend ran after provd's own: the anchor is extended twice with one head")
			}
			if _, err := ag.AuditVerify(ctx); err != nil {
				t.Errorf("a genuine trail, after A1 held one extend: verify: %v", err)
			}
		})
	}
}

// A policy counter increment A1 holds never runs after the officer's
// retry, which would revoke the policy just installed: with provd's flush
// of its session forged, and with its session context-saved and every
// flush of the slot forged.
func TestHeldIncrementNeverRunsLater(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name string
		how  holding
	}{
		{name: "its session's flush forged", how: holding{flushes: forgeFirst}},
		{name: "its session context-saved, every flush of the slot forged", how: holding{save: true, flushes: forgeAllSlot}},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			b := &swtpmtest.Bus{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(b))
			ctx := context.Background()
			ag, signer, res := signedPolicyAgent(t, env)
			signed := signedPCR7(t, env, signer)
			v := *res.Counter + 1
			h := &commandHolder{holding: c.how, cc: tpm2.TPMCCNVIncrement, index: agent.PolicyCounterHandle}
			b.Set(h.hook)
			_, err := ag.InstallPolicy(ctx, signed(v))
			b.Set(nil)
			if h.held == nil || !h.dropped {
				t.Fatalf("attack not mounted (held %v, flush forged %v): %v", h.held != nil, h.dropped, err)
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
			rc := h.replay(t, env, b.Next)
			n, err := env.TPM.ReadCounter(agent.PolicyCounterHandle)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("the held increment: %v; the counter: %d (installed version %d)", rc, n, v)
			if n != v {
				t.Errorf("the policy counter is %d after A1's held increment, the installed policy is version %d", n, v)
			}
			if _, err := ag.Unseal(ctx, blob); err != nil {
				t.Errorf("unseal under the installed version %d: %v", v, err)
			}
		})
	}
}
