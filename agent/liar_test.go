package agent_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"sync/atomic"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/provd/provd/api"
	"github.com/provd/provd/policy"
	"github.com/provd/provd/test/swtpmtest"
	"github.com/provd/provd/tpm"
)

// busLiar is A1: while on, it answers TPM2_PolicyPCR with success without
// sending it, rewrites every digest of a TPM2_PCR_Read response to pcr, and
// answers TPM2_EvictControl and TPM2_NV_UndefineSpace (password sessions:
// no response HMAC) with success without sending them.
type busLiar struct {
	next    transport.TPM
	on      atomic.Bool
	pcr     []byte
	forged  atomic.Int32
	dropCCs map[tpm2.TPMCC]bool
}

func (x *busLiar) wrap(next transport.TPM) transport.TPM { x.next = next; return x }

func (x *busLiar) Send(cmd []byte) ([]byte, error) {
	if !x.on.Load() || len(cmd) < 10 {
		return x.next.Send(cmd)
	}
	cc := tpm2.TPMCC(binary.BigEndian.Uint32(cmd[6:10]))
	switch {
	case cc == tpm2.TPMCCPolicyPCR:
		x.forged.Add(1)
		return []byte{0x80, 0x01, 0, 0, 0, 10, 0, 0, 0, 0}, nil
	case x.dropCCs[cc]:
		// success with one password session in the response:
		// parameterSize 0, nonce empty, continueSession, hmac empty.
		x.forged.Add(1)
		return []byte{0x80, 0x02, 0, 0, 0, 19, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0}, nil
	case cc == tpm2.TPMCCPCRRead && x.pcr != nil:
		rsp, err := x.next.Send(cmd)
		if err != nil || len(rsp) < 10 || binary.BigEndian.Uint32(rsp[6:10]) != 0 {
			return rsp, err
		}
		rsp = append([]byte(nil), rsp...)
		off := 10
		if binary.BigEndian.Uint16(rsp[0:2]) == uint16(tpm2.TPMSTSessions) {
			off += 4 // parameterSize
		}
		off += 4 // pcrUpdateCounter
		nsel := int(binary.BigEndian.Uint32(rsp[off:]))
		off += 4
		for i := 0; i < nsel; i++ {
			off += 2
			off += 1 + int(rsp[off])
		}
		nd := int(binary.BigEndian.Uint32(rsp[off:]))
		off += 4
		for i := 0; i < nd; i++ {
			n := int(binary.BigEndian.Uint16(rsp[off:]))
			copy(rsp[off+2:off+2+n], x.pcr)
			off += 2 + n
		}
		x.forged.Add(1)
		return rsp, nil
	}
	return x.next.Send(cmd)
}

// What provd reports about the PCRs and the PK's policy is the TPM's word,
// not the bus's. Found by review: policy show ran the policy in a session
// that authorized no command, and read Current with a plain PCR_Read, so an
// interposer answering PolicyPCR with success and rewriting PCR_Read made
// it say "satisfied" on a platform that was not. Now both come from reads
// whose response HMAC is keyed by a session salted to the pinned SRK.
func TestPolicyShowIsTheTPMsWord(t *testing.T) {
	evil := bytes.Repeat([]byte{0xa5}, 32)
	x := &busLiar{pcr: evil}
	env := swtpmtest.Start(t, swtpmtest.WithWrap(x.wrap))
	ctx := context.Background()
	ag := newAgent(t, env, stateDir(t))
	vals := policy.PCRValues{Bank: policy.BankSHA256, Values: map[int][]byte{0: evil, 7: evil}}
	if _, err := ag.Provision(ctx, api.ProvisionRequest{TrustOnFirstUse: true, Values: &vals}); err != nil {
		t.Fatal(err)
	}
	honest, err := ag.ShowPolicy(ctx)
	if err != nil || honest.Satisfied || len(honest.Differ) != 2 {
		t.Fatalf("honest bus: satisfied %v differ %v (%v), want false [0 7]", honest.Satisfied, honest.Differ, err)
	}
	x.on.Store(true)
	lied, err := ag.ShowPolicy(ctx)
	x.on.Store(false)
	if x.forged.Load() == 0 {
		t.Fatal("the liar forged nothing: the attack was not mounted")
	}
	if err == nil && lied.Satisfied {
		t.Fatalf("policy show through the liar: satisfied, differ %v", lied.Differ)
	}
	if err != nil && !errors.Is(err, tpm.ErrResponseForged) {
		t.Fatalf("policy show through the liar: %v, want a forged response or not satisfied", err)
	}
	// The status that shows it says the same.
	x.on.Store(true)
	st, err := ag.Status(ctx)
	x.on.Store(false)
	if err == nil && st.Policy != nil && st.Policy.Satisfied {
		t.Fatal("status through the liar: policy satisfied")
	}
}
