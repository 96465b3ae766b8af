package tpm_test

import (
	"bytes"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// sessionTypeOf is the sessionType of a TPM2_StartAuthSession command.
func sessionTypeOf(cmd []byte) (tpm2.TPMSE, bool) {
	off := 10 + 8 // header, tpmKey, bind
	for range 2 { // nonceCaller, encryptedSalt
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

// policySessionThief is A1 answering provd's next policy StartAuthSession
// with a session it started itself (unsalted: it needs no key to use it).
// The answer has no HMAC, so provd proves the gate into A1's session.
type policySessionThief struct {
	mu     sync.Mutex
	armed  bool
	stolen tpm2.TPMHandle
}

func (s *policySessionThief) hook(next transport.TPM, cmd []byte) ([]byte, error, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.armed || swtpmtest.CommandCode(cmd) != tpm2.TPMCCStartAuthSession {
		return nil, nil, false
	}
	if st, ok := sessionTypeOf(cmd); !ok || st != tpm2.TPMSEPolicy {
		return nil, nil, false
	}
	s.armed = false
	rsp, err := startOwnPolicySession(next)
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
}

func startOwnPolicySession(t transport.TPM) (*tpm2.StartAuthSessionResponse, error) {
	nc := make([]byte, 16)
	rand.Read(nc)
	return (tpm2.StartAuthSession{TPMKey: tpm2.TPMRHNull, Bind: tpm2.TPMRHNull, NonceCaller: tpm2.TPM2BNonce{Buffer: nc},
		SessionType: tpm2.TPMSEPolicy, Symmetric: tpm2.TPMTSymDef{Algorithm: tpm2.TPMAlgNull}, AuthHash: tpm2.TPMAlgSHA256}).Execute(t)
}

// ownSessionExtend is TPM2_NV_Extend of h authorized by the unsalted
// policy session ps with an empty HMAC, as A1 sends it.
func ownSessionExtend(next transport.TPM, h, ps tpm2.TPMHandle, data []byte) (tpm2.TPMRC, error) {
	var b []byte
	b = binary.BigEndian.AppendUint16(b, uint16(tpm2.TPMSTSessions))
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(tpm2.TPMCCNVExtend))
	b = binary.BigEndian.AppendUint32(b, uint32(h))
	b = binary.BigEndian.AppendUint32(b, uint32(h))
	b = binary.BigEndian.AppendUint32(b, 4+2+1+2)
	b = binary.BigEndian.AppendUint32(b, uint32(ps))
	b = append(b, 0, 0, 0, 0, 0) // nonceCaller empty, attributes 0, empty HMAC
	b = binary.BigEndian.AppendUint16(b, uint16(len(data)))
	b = append(b, data...)
	binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
	rsp, err := next.Send(b)
	if err != nil {
		return 0, err
	}
	return tpm2.TPMRC(binary.BigEndian.Uint32(rsp[6:10])), nil
}

// The gate's proof is bound to the one extend provd prepared (found by
// review: A1 answered the policy session's StartAuthSession with a session
// of its own, received the proof, and extended the audit anchor with data
// of its own). A1 holding the session extends nothing else: its data is
// refused (TPM_RC_POLICY_FAIL, the cpHash), and provd's own head, the one
// extend the proof allows, is all it can make. Through both ways of
// preparing: the shared read's session and PrepareGatedExtend.
func TestStolenGateProofExtendsOnlyProvdsHead(t *testing.T) {
	for _, shared := range []bool{true, false} {
		name := "PrepareGatedExtend"
		if shared {
			name = "ReadPrepareGatedExtend"
		}
		t.Run(name, func(t *testing.T) {
			b := &swtpmtest.Bus{}
			thief := &policySessionThief{}
			env := swtpmtest.Start(t, swtpmtest.WithBus(b))
			tp := env.TPM
			srk, err := tp.SRK()
			if err != nil {
				t.Fatal(err)
			}
			if err := tp.PinSRK(srk.Public); err != nil {
				t.Fatal(err)
			}
			auth := newGateAuth(t)
			blob, err := tp.CreateGate(srk, auth)
			if err != nil {
				t.Fatal(err)
			}
			gate, err := tp.LoadGate(srk, blob, auth)
			if err != nil {
				t.Fatal(err)
			}
			defer tp.Flush(gate.Handle)
			pub, err := tpm.GatedExtendPublic(testGatedHandle, gate.Name.Buffer, false)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tp.DefineNV(pub); err != nil {
				t.Fatal(err)
			}
			undefineAtEnd(t, tp, testGatedHandle)
			first := sha256.Sum256([]byte("head"))
			if err := tp.NVExtendGated(testGatedHandle, first[:], gate); err != nil {
				t.Fatal(err)
			}
			x, err := tp.ReadNVPublic(testGatedHandle)
			if err != nil {
				t.Fatal(err)
			}
			head := sha256.Sum256([]byte("provd's next head"))
			b.Set(thief.hook)
			thief.mu.Lock()
			thief.armed = true
			thief.mu.Unlock()
			var ge *tpm.GatedExtend
			if shared {
				_, ge, err = tp.ReadPrepareGatedExtend(x, gate, head[:])
			} else {
				ge, err = tp.PrepareGatedExtend(testGatedHandle, gate, head[:])
			}
			b.Set(nil)
			if err != nil {
				t.Fatalf("prepare through A1: %v", err)
			}
			if thief.stolen == 0 {
				t.Fatal("attack not mounted")
			}
			defer ge.Close()
			was, err := tp.Anchor(testGatedHandle).Read()
			if err != nil {
				t.Fatal(err)
			}
			evil := sha256.Sum256([]byte("A1 was here"))
			if rc, err := ownSessionExtend(b.Next, testGatedHandle, thief.stolen, evil[:]); err != nil || rc == tpm2.TPMRCSuccess {
				t.Fatalf("A1's data through the stolen proof: %v %v, want a refusal", rc, err)
			} else {
				t.Logf("A1's data through the stolen proof: %v", rc)
			}
			if now, _ := tp.Anchor(testGatedHandle).Read(); !bytes.Equal(now, was) {
				t.Fatal("the anchor moved")
			}
			if rc, err := ownSessionExtend(b.Next, testGatedHandle, thief.stolen, head[:]); err != nil || rc != tpm2.TPMRCSuccess {
				t.Fatalf("provd's head through the stolen proof: %v %v", rc, err)
			}
			want := sha256.Sum256(append(was, head[:]...))
			if now, _ := tp.Anchor(testGatedHandle).Read(); !bytes.Equal(now, want[:]) {
				t.Fatalf("anchor %x, want provd's extend %x", now, want)
			}
		})
	}
}
