package agent_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
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

// sessionTypeOf is the sessionType of a TPM2_StartAuthSession command.
func sessionTypeOf(cmd []byte) (tpm2.TPMSE, bool) {
	off := 10 + 8
	for range 2 {
		if len(cmd) < off+2 {
			return 0, false
		}
		off += 2 + int(binary.BigEndian.Uint16(cmd[off:]))
	}
	if len(cmd) <= off {
		return 0, false
	}
	return tpm2.TPMSE(cmd[off]), true
}

// gateThief is A1 on a record's extend: after provd's read of the anchor
// it answers the policy StartAuthSession with an unsalted session of its
// own (the answer has no HMAC), so provd proves the gate into it; when
// provd's NV_Extend comes in that session, A1 first extends the anchor
// through it, with data of its own (evil) or with provd's head read from
// provd's command, then passes provd's command on.
type gateThief struct {
	mu      sync.Mutex
	evil    bool
	sawRead bool
	stolen  tpm2.TPMHandle
	used    bool
	rc      tpm2.TPMRC
}

func (s *gateThief) hook(next transport.TPM, cmd []byte) ([]byte, error, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	switch cc := swtpmtest.CommandCode(cmd); {
	case cc == tpm2.TPMCCNVRead && len(cmd) >= 14 && tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[10:14])) == agent.AuditAnchorHandle:
		s.sawRead = true
	case cc == tpm2.TPMCCStartAuthSession && s.sawRead && s.stolen == 0:
		if st, ok := sessionTypeOf(cmd); !ok || st != tpm2.TPMSEPolicy {
			return nil, nil, false
		}
		nc := make([]byte, 16)
		rand.Read(nc)
		rsp, err := (tpm2.StartAuthSession{TPMKey: tpm2.TPMRHNull, Bind: tpm2.TPMRHNull, NonceCaller: tpm2.TPM2BNonce{Buffer: nc},
			SessionType: tpm2.TPMSEPolicy, Symmetric: tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull}, AuthHash: tpm2.TPMAlgSHA256}).Execute(next)
		if err != nil {
			return nil, err, true
		}
		s.stolen = rsp.SessionHandle
		var b []byte
		b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMSTNoSessions))
		b = binary.BigEndian.AppendUint32(b, 0)
		b = binary.BigEndian.AppendUint32(b, 0)
		b = binary.BigEndian.AppendUint32(b, uint32(rsp.SessionHandle))
		b = binary.BigEndian.AppendUint16(b, uint16(len(rsp.NonceTPM.Buffer)))
		b = append(b, rsp.NonceTPM.Buffer...)
		binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
		return b, nil, true
	case cc == tpm2.TPMCCNVExtend && s.stolen != 0 && !s.used && len(cmd) >= 26 &&
		tpm2.TPMHandle(binary.BigEndian.Uint32(cmd[22:26])) == s.stolen:
		s.used = true
		data := []byte("A1 was here, 32 bytes of its own")
		if !s.evil {
			// provd's head: the parameters after the authorization area.
			p := 22 + int(binary.BigEndian.Uint32(cmd[18:22]))
			data = cmd[p+2 : p+2+int(binary.BigEndian.Uint16(cmd[p:]))]
		}
		var b []byte
		b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMSTSessions))
		b = binary.BigEndian.AppendUint32(b, 0)
		b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMCCNVExtend))
		b = binary.BigEndian.AppendUint32(b, uint32(agent.AuditAnchorHandle))
		b = binary.BigEndian.AppendUint32(b, uint32(agent.AuditAnchorHandle))
		b = binary.BigEndian.AppendUint32(b, 9)
		b = binary.BigEndian.AppendUint32(b, uint32(s.stolen))
		b = append(b, 0, 0, 0, 0, 0) // continueSession clear: the TPM flushes it after use
		b = binary.BigEndian.AppendUint16(b, uint16(len(data)))
		b = append(b, data...)
		binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
		rsp, err := next.Send(b)
		if err == nil && len(rsp) >= 10 {
			s.rc = tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10]))
		}
		return nil, nil, false // provd's own extend goes on
	}
	return nil, nil, false
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
			env := swtpmtest.Start(t, swtpmtest.WithBus(b))
			ctx := context.Background()
			ag := newAgent(t, env, stateDir(t))
			if _, err := ag.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, PCRs: []int{7}}); err != nil {
				t.Fatal(err)
			}
			if _, err := ag.ImportKeyBlob(ctx, ".bad-name", nil); !errors.Is(err, api.ErrBadInput) {
				t.Fatal(err)
			}
			thief := &gateThief{evil: evil}
			b.Set(thief.hook)
			_, err := ag.ImportKeyBlob(ctx, ".bad-name", nil)
			b.Set(nil)
			if thief.stolen == 0 || !thief.used {
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
			_ = sha256.Size
		})
	}
}
