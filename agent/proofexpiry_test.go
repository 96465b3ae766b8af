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

// resumeHolder: A1 holds provd's first anchor extend, context-saves its
// session, forges the flush, and keeps the witness's first list from the
// TPM (an error), so that provd takes the slow path: it sleeps until the
// proof's expiry (+1 s) and then extends again. The proof's expiry is
// counted in the TPM's Time, which restarts at every TPM_Init: A1 sends
// TPM2_Shutdown(STATE) (no authorization), a platform reset (or the
// host's own suspend-to-RAM) follows, Startup(STATE) resumes, and the
// saved session loads again with its proof alive, long after provd's wall
// clock says it died.
type resumeHolder struct {
	mu        sync.Mutex
	held      []byte
	sess      tpm2.TPMHandle
	saved     *tpm2.TPMSContext
	extends   int
	dropped   bool
	capFailed bool
	t0        time.Time
}

func (h *resumeHolder) hook(next transport.TPM, cmd []byte) ([]byte, error, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	cc := swtpmtest.CommandCode(cmd)
	switch {
	case cc == tpm2.TPMCCNVExtend && len(cmd) >= 26 && tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == agent.AuditAnchorHandle:
		h.extends++
		if h.extends == 1 {
			h.t0 = time.Now()
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
		binary.BigEndian.Uint32(cmd[10:14])&0x00ffffff == uint32(h.sess)&0x00ffffff:
		// provd's flush of 0x03..., and the sweep's of the saved 0x02...
		h.dropped = true
		return []byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0}, nil, true
	case cc == tpm2.TPMCCGetCapability && h.dropped && !h.capFailed:
		h.capFailed = true
		return nil, errors.New("A1: answer lost on the bus"), true
	}
	return nil, nil, false
}

// A gate proof's expiry holds across Shutdown(STATE), TPM_Init and
// Startup(STATE): a held extend whose session A1 saved, with every flush of
// it forged and the witness's first list kept from the TPM (provd waits
// the expiry out and extends again), loads again after the resume but is
// refused, TPM_RC_EXPIRED (checked by review).
func TestProofExpiryHoldsAcrossResume(t *testing.T) {
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
	h := &resumeHolder{}
	b.Set(h.hook)
	start := time.Now()
	_, err := ag.ImportKeyBlob(ctx, ".bad-name", nil)
	b.Set(nil)
	t.Logf("the record through A1: %v (took %v; extends %d, flush dropped %v, witness list kept %v)", err, time.Since(start), h.extends, h.dropped, h.capFailed)
	if h.saved == nil || !h.dropped || !h.capFailed || h.extends < 2 {
		t.Fatal("attack not mounted")
	}
	// A1: an orderly shutdown (no authorization), the platform reset or
	// the suspend that follows, and the resume.
	if _, err := (tpm2.Shutdown{ShutdownType: tpm2.TPMSUState}).Execute(b.Next); err != nil {
		t.Fatalf("Shutdown(STATE): %v", err)
	}
	env.Reset()
	if _, err := (tpm2.Startup{StartupType: review3StartupType}).Execute(b.Next); err != nil {
		t.Fatalf("Startup(STATE): %v", err)
	}
	ld, err := (tpm2.ContextLoad{Context: *h.saved}).Execute(b.Next)
	if err != nil {
		t.Fatalf("ContextLoad after resume: %v", err)
	}
	rsp, err := b.Next.Send(h.held)
	if err != nil {
		t.Fatal(err)
	}
	rc := tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
	_ = env.TPM.Flush(ld.LoadedHandle)
	t.Logf("the held extend, %v after it was held, replayed after resume: %v", time.Since(h.t0), rc)
	if rc == tpm2.TPMRCSuccess {
		t.Errorf("the held extend ran after provd waited out its proof's expiry and extended again: the anchor is extended twice with one head")
	}
	if _, err := ag.AuditVerify(ctx); err != nil {
		t.Errorf("a genuine trail, after A1 held one extend: verify: %v", err)
	}
}

var review3StartupType = tpm2.TPMSUState
