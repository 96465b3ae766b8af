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

// extendHolder is A1 on a record's anchor extend. It holds provd's first
// TPM2_NV_Extend of the anchor (the command is genuine: provd's session,
// provd's HMAC, bound by cpHashA to provd's head) and answers it with an
// error. provd then reads the anchor (authenticated, honest: it has not
// moved), finds the value before its line, prepares a second session and
// extends again. A1 passes the second extend on and, before provd flushes
// the first session (or, with dropFlush, at any later time: the flush's
// success is forged), sends the held command to the TPM: the first
// session's nonce has not rolled, its proof is for this very extend, and
// the TPM runs it. The anchor is extended twice with the same head.
type extendHolder struct {
	mu        sync.Mutex
	dropFlush bool
	held      []byte
	sess      tpm2.TPMHandle
	extends   int
	replayRC  tpm2.TPMRC
	replayed  bool
	flushDrop bool
}

func (h *extendHolder) hook(next transport.TPM, cmd []byte) ([]byte, error, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	cc := swtpmtest.CommandCode(cmd)
	switch {
	case cc == tpm2.TPMCCNVExtend && len(cmd) >= 26 && tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == agent.AuditAnchorHandle:
		h.extends++
		switch h.extends {
		case 1: // hold it; tell provd its answer was lost
			h.held = bytes.Clone(cmd)
			h.sess = tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[22:26]))
			return nil, errors.New("A1: answer lost on the bus"), true
		case 2: // provd's retry goes through; the held one goes first
			if !h.dropFlush {
				h.replay(next)
			}
		}
	case cc == tpm2.TPMCCFlushContext && h.dropFlush && h.sess != 0 && len(cmd) >= 14 &&
		tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == h.sess:
		h.flushDrop = true
		return []byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0}, nil, true // "flushed"
	}
	return nil, nil, false
}

func (h *extendHolder) replay(next transport.TPM) {
	rsp, err := next.Send(h.held)
	h.replayed = true
	if err == nil && len(rsp) >= 10 {
		h.replayRC = tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
	}
}

// An extend A1 holds and answers as lost never runs beside provd's retry
// (found by review: the first session was still loaded and satisfied when
// the record prepared the second; both ran, the anchor was extended twice,
// and a genuine trail read as tampered). The record releases the first
// extend's session, confirmed gone through the TPM's authenticated handle
// lists, before it extends again; where A1 keeps the flush from the TPM
// (every flush of that session, forged), the record waits until the proof
// has expired. The held extend, sent after the retry or later, is refused,
// and the trail verifies.
func TestHeldExtendNeverRunsTwice(t *testing.T) {
	for _, dropFlush := range []bool{false, true} {
		name := "replayed before the first session's flush"
		if dropFlush {
			name = "replayed later, every flush of its session forged"
		}
		t.Run(name, func(t *testing.T) {
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
			h := &extendHolder{dropFlush: dropFlush}
			b.Set(h.hook)
			_, err := ag.ImportKeyBlob(ctx, ".bad-name", nil)
			b.Set(nil)
			if h.extends != 2 {
				t.Fatalf("attack not mounted: %d extends", h.extends)
			}
			t.Logf("the record through A1: %v", err)
			if dropFlush {
				if !h.flushDrop {
					t.Fatal("the first session's flush was not seen")
				}
				// Any time later: a record in between changes nothing.
				if _, err := ag.ImportKeyBlob(ctx, ".bad-name", nil); !errors.Is(err, api.ErrBadInput) {
					t.Fatalf("the next record: %v", err)
				}
				h.replay(b.Next)
				// The session (continueSession set) stays loaded: flush it
				// so that the harness's leak check sees nothing of A1's.
				_ = env.TPM.Flush(h.sess)
			}
			t.Logf("the held extend, replayed: %v", h.replayRC)
			if h.replayRC == tpm2.TPMRCSuccess {
				t.Errorf("the held extend ran in the TPM after provd's own retry: the anchor is extended twice with one head")
			}
			if _, err := ag.AuditVerify(ctx); err != nil {
				t.Errorf("a genuine trail, after A1 held one extend: verify: %v", err)
			}
		})
	}
}
