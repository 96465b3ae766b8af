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

// gateThief is A1 on a record's extend: after provd's read of the anchor
// it answers the policy StartAuthSession with an unsalted session of its
// own (swtpmtest.PolicySessionThief), so provd proves the gate into it;
// when provd's NV_Extend comes in that session, A1 first extends the anchor
// through it, with data of its own (evil) or with provd's head read from
// provd's command, then passes provd's command on.
type gateThief struct {
	swtpmtest.PolicySessionThief
	evil bool
	mu   sync.Mutex
	used bool
	rc   tpm2.TPMRC
}

func newGateThief(evil bool) *gateThief {
	g := &gateThief{evil: evil}
	g.After = func(cmd []byte) bool {
		return swtpmtest.CommandCode(cmd) == tpm2.TPMCCNVRead && len(cmd) >= 14 &&
			tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == agent.AuditAnchorHandle
	}
	return g
}

func (s *gateThief) hook(next transport.TPM, cmd []byte) ([]byte, error, bool) {
	if rsp, err, ok := s.PolicySessionThief.Hook(next, cmd); ok {
		return rsp, err, ok
	}
	stolen := s.Stolen()
	s.mu.Lock()
	defer s.mu.Unlock()
	if stolen == 0 || s.used || swtpmtest.CommandCode(cmd) != tpm2.TPMCCNVExtend || len(cmd) < 26 ||
		tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[22:26])) != stolen {
		return nil, nil, false
	}
	s.used = true
	data := []byte("A1 was here, 32 bytes of its own")
	if !s.evil {
		// provd's head: the parameters after the authorization area.
		p := 22 + int(binary.BigEndian.Uint32(cmd[18:22]))
		data = cmd[p+2 : p+2+int(binary.BigEndian.Uint16(cmd[p:]))]
	}
	s.rc, _ = swtpmtest.OwnSessionExtend(next, agent.AuditAnchorHandle, stolen, data)
	return nil, nil, false // provd's own extend goes on
}

// A1 holding the policy session of a daemon's record (found by review: it
// extended the audit anchor with data of its own, provd reported the
// record written, and the trail no longer verified) gets nothing: its own
// data is refused by the TPM, and provd's extend, refused in a session A1
// used or that is not provd's, is made again only if the anchor has not
// moved. Either way the record is written once and the trail verifies.
func TestStolenRecordSessionExtendsNothingElse(t *testing.T) {
	for _, evil := range []bool{true, false} {
		name := "provd's head"
		if evil {
			name = "A1's data"
		}
		t.Run(name, func(t *testing.T) {
			b := &swtpmtest.Bus{}
			env, ag := auditedAgent(t, b)
			ctx := context.Background()
			thief := newGateThief(evil)
			b.Set(thief.hook)
			_, err := ag.ImportKeyBlob(ctx, ".bad-name", nil)
			b.Set(nil)
			if thief.Stolen() == 0 || !thief.used {
				t.Fatal("attack not mounted")
			}
			t.Logf("A1's extend through the stolen session: %v; the refusal's answer: %v", thief.rc, err)
			if evil == (thief.rc == tpm2.TPMRCSuccess) {
				t.Errorf("A1's extend with %s: %v", name, thief.rc)
			}
			if !errors.Is(err, api.ErrBadInput) {
				t.Fatalf("the refusal's record through A1: %v, want it written (bad_input only)", err)
			}
			rep, err := ag.AuditVerify(ctx)
			if err != nil {
				t.Fatalf("verify after it: %v", err)
			}
			anchor, err := env.TPM.Anchor(agent.AuditAnchorHandle).Read()
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(anchor, rep.Anchor) {
				t.Fatalf("anchor %x, the trail's %x", anchor, rep.Anchor)
			}
			if _, err := ag.ImportKeyBlob(ctx, ".bad-name", nil); !errors.Is(err, api.ErrBadInput) {
				t.Fatalf("the next record: %v", err)
			}
			if _, err := ag.AuditVerify(ctx); err != nil {
				t.Fatalf("verify after the next record: %v", err)
			}
		})
	}
}
